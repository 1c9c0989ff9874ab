"""The manifest format: what the node relies on is validated, and problems name the key."""

import copy
import tomllib
from pathlib import Path

import pytest

from pneumotriage_models import manifest

MANIFEST = Path(__file__).resolve().parents[2] / "manifest.toml"


def committed() -> dict:
    with open(MANIFEST, "rb") as f:
        return tomllib.load(f)


def test_committed_manifest_is_valid_and_says_demo():
    m = manifest.load(MANIFEST)
    assert {x.role for x in m.models} == {"classifier", "segmenter"}
    assert "not for clinical use" in m.notice
    for model in m.models:
        assert "demo: synthetic data, not for clinical use" in model.intended_use
        assert len(model.sha256) == 64


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["models"][0].pop("sha256"), "models[0].sha256"),
        (lambda d: d["models"][1].update(role="detector"), "models[1].role"),
        (lambda d: d["models"][0].update(height="256"), "models[0].height"),
        (lambda d: d["thresholds"].update(mask=1.5), "thresholds.mask"),
        (lambda d: d["models"][0]["preprocess"].update(std=0), "models[0].preprocess.std"),
        (lambda d: d["models"][0].update(file="../../etc/passwd"), "models[0].file"),
        (lambda d: d.update(format=2), "format"),
    ],
)
def test_problems_name_the_key(edit, key):
    data = copy.deepcopy(committed())
    edit(data)
    with pytest.raises(manifest.ManifestError) as e:
        manifest.parse(data)
    assert key in str(e.value)


def test_round_trip_through_save(tmp_path):
    m = manifest.load(MANIFEST)
    out = tmp_path / "manifest.toml"
    manifest.save(m, out)
    again = manifest.load(out)
    assert again.to_toml() == m.to_toml()


def test_a_changed_file_is_caught(tmp_path):
    m = manifest.load(MANIFEST)
    for model in m.models:
        target = tmp_path / model.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not the model")
    m.path = tmp_path / "manifest.toml"
    problems = manifest.verify_files(m)
    assert len(problems) == 2 and all("sha256" in p for p in problems)
