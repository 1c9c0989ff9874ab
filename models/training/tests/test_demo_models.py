"""The committed demo models, with onnxruntime only: files, tensor shapes, output ranges, and
the held-out metrics recomputed on a freshly generated held-out set."""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pneumotriage_models import evaluate, manifest, preprocess
from pneumotriage_models.generate import generate

MODELS = Path(__file__).resolve().parents[2]
MANIFEST = MODELS / "manifest.toml"


@pytest.fixture(scope="module")
def demo():
    return manifest.load(MANIFEST)


def test_files_match_their_sha256(demo):
    assert manifest.verify_files(demo) == []


def test_demo_models_are_a_few_mb(demo):
    total = sum((MODELS / m.file).stat().st_size for m in demo.models)
    assert total < 8_000_000, f"{total} bytes"


@pytest.mark.parametrize("role", ["classifier", "segmenter"])
def test_tensor_names_and_shapes_follow_the_manifest(demo, role):
    spec = demo.model(role)
    session = ort.InferenceSession(str(MODELS / spec.file), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == spec.input and out.name == spec.output
    assert inp.shape[1:] == [spec.channels, spec.height, spec.width]
    assert not isinstance(inp.shape[0], int), "the batch dimension is dynamic"
    x = np.random.default_rng(0).normal(0, 1, size=(3, spec.channels, spec.height, spec.width)).astype(np.float32)
    (y,) = session.run([spec.output], {spec.input: x})
    expected = (3, 1) if role == "classifier" else (3, 1, spec.height, spec.width)
    assert y.shape == expected
    assert np.isfinite(y).all()


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, demo):
    """The held-out set the manifest's metrics were measured on, generated afresh from its seed
    (or the copy scripts/test generated for this version of the generator)."""
    info = json.loads((MODELS / "demo" / "metrics.json").read_text())
    shared = os.environ.get("PNEUMOTRIAGE_HELDOUT")
    if shared and (Path(shared) / "train-rle.csv").is_file():
        return Path(shared)
    out = tmp_path_factory.mktemp("heldout")
    generate(out, info["heldout_n"], info["heldout_seed"], jobs=2)
    return out


def test_outputs_span_both_classes_on_real_inputs(demo, heldout):
    models = evaluate.open_models(demo)
    import pydicom

    probs = []
    for path in sorted(heldout.rglob("*.dcm"))[:40]:
        display = preprocess.display_image(pydicom.dcmread(path))
        p = models["classifier"].probabilities(preprocess.to_tensor(display, models["classifier"].pre))
        probs.append(float(p.reshape(-1)[0]))
    probs = np.array(probs)
    assert ((0 <= probs) & (probs <= 1)).all()
    assert probs.min() < 0.1 and probs.max() > 0.9, probs


def test_heldout_metrics_are_reproduced_and_meet_the_targets(demo, heldout):
    result = evaluate.evaluate(MANIFEST, heldout, heldout / "train-rle.csv")
    c, s = result["classifier"], result["segmenter"]
    recorded_c, recorded_s = demo.model("classifier").metrics, demo.model("segmenter").metrics
    for key in ("recall", "precision", "specificity", "auc"):
        assert c[key] == pytest.approx(recorded_c[key], abs=0.01), key
    assert s["mean_dice_positives"] == pytest.approx(recorded_s["mean_dice_positives"], abs=0.01)
    assert c["recall"] >= 0.95 and c["specificity"] >= 0.8
    assert s["mean_dice_positives"] >= 0.7
