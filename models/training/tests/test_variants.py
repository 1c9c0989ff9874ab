"""int8 and fp16 variants of the demo models (`pneumotriage-models variant`): files the node can
load (float32 inputs and outputs, a dynamic batch, their own versions and sha256) whose
decisions and masks stay those of the float32 models on a labelled set."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pneumotriage_models import evaluate, manifest, variants
from pneumotriage_models.generate import generate

from test_demo_models import MANIFEST


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A calibration set and a separate labelled set to measure on (other seeds than training's
    and the held-out set's)."""
    calibration, labelled = tmp_path_factory.mktemp("calibration"), tmp_path_factory.mktemp("labelled")
    generate(calibration, 24, 5, jobs=2)
    generate(labelled, 48, 11, jobs=2)
    return calibration, labelled


@pytest.fixture(scope="module")
def reference(sets):
    _, labelled = sets
    return evaluate.evaluate(MANIFEST, labelled, labelled / "train-rle.csv")


@pytest.mark.parametrize("kind", variants.KINDS)
def test_a_variant_keeps_the_decisions_and_the_masks(tmp_path, sets, reference, kind):
    calibration, labelled = sets
    images = sorted(calibration.rglob("*.dcm"))
    made = variants.make_variant(MANIFEST, kind, tmp_path, images if kind == "int8" else None)
    loaded = manifest.load(tmp_path / "manifest.toml")
    assert manifest.verify_files(loaded) == []
    for model in loaded.models:
        onnx.checker.check_model(str(tmp_path / model.file))
    source = manifest.load(MANIFEST)
    for model in loaded.models:
        assert model.version == source.model(model.role).version + "-" + kind
        session = ort.InferenceSession(str(tmp_path / model.file), providers=["CPUExecutionProvider"])
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (inp.name, inp.type, out.type) == (model.input, "tensor(float)", "tensor(float)")
        assert not isinstance(inp.shape[0], int), "the batch dimension stays dynamic"
    smaller = sum((tmp_path / m.file).stat().st_size for m in loaded.models)
    assert smaller < 0.6 * sum((MANIFEST.parent / m.file).stat().st_size for m in source.models)

    result = variants.measure(made, labelled, labelled / "train-rle.csv", "seed 11")
    for key in ("recall", "precision", "specificity"):
        assert result["classifier"][key] == reference["classifier"][key], key
    assert abs(result["segmenter"]["mean_dice_positives"] - reference["segmenter"]["mean_dice_positives"]) < 0.01
    assert manifest.load(tmp_path / "manifest.toml").model("segmenter").metrics["dataset"] == "seed 11"


def test_int8_needs_calibration_images(tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        variants.make_variant(MANIFEST, "int8", tmp_path, [])
    assert not np.any([p.suffix == ".onnx" for p in tmp_path.iterdir()])
