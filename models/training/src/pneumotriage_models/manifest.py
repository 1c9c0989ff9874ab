"""The model manifest (`models/manifest.toml`): what each ONNX model is and how to feed it.

The format is documented in models/README.md; the Rust node reads the same file and checks
each model's sha256 and tensor shapes at start-up. `load` validates, `save` writes it back
(export updates sha256 and metrics).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

FORMAT = 1
ROLES = ("classifier", "segmenter")
OUTPUT_KINDS = ("logits", "probabilities")


class ManifestError(ValueError):
    """A problem with a manifest, naming the key."""


@dataclass
class Model:
    role: str
    name: str
    version: str
    architecture: str
    file: str
    sha256: str
    input: str
    output: str
    layout: str
    height: int
    width: int
    channels: int
    output_kind: str
    mean: float
    std: float
    training_data: str
    intended_use: str
    metrics: dict = field(default_factory=dict)

    def path(self, manifest_dir: Path) -> Path:
        return manifest_dir / self.file

    def to_toml(self) -> dict:
        return {
            "role": self.role,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "file": self.file,
            "sha256": self.sha256,
            "input": self.input,
            "output": self.output,
            "layout": self.layout,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "output_kind": self.output_kind,
            "training_data": self.training_data,
            "intended_use": self.intended_use,
            "preprocess": {"voi": "window", "resize": "bilinear", "mean": self.mean, "std": self.std},
            "metrics": self.metrics,
        }


@dataclass
class Thresholds:
    classifier: float = 0.3
    mask: float = 0.5
    min_mask_area_px: int = 0
    triplet_top: float = 0.75
    triplet_min_area_px: int = 40
    triplet_bottom: float = 0.3


@dataclass
class Manifest:
    models: list[Model]
    thresholds: Thresholds
    notice: str
    path: Path | None = None

    def model(self, role: str) -> Model:
        for m in self.models:
            if m.role == role:
                return m
        raise ManifestError(f"no model with role {role!r}")

    def to_toml(self) -> dict:
        t = self.thresholds
        return {
            "format": FORMAT,
            "notice": self.notice,
            "thresholds": {
                "classifier": t.classifier,
                "mask": t.mask,
                "min_mask_area_px": t.min_mask_area_px,
                "triplet_top": t.triplet_top,
                "triplet_min_area_px": t.triplet_min_area_px,
                "triplet_bottom": t.triplet_bottom,
            },
            "models": [m.to_toml() for m in self.models],
        }


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _get(table: dict, key: str, kind, where: str):
    if key not in table:
        raise ManifestError(f"{where}.{key} is missing")
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ManifestError(f"{where}.{key} should be a {kind.__name__}, not {value!r}")
    return value


def parse(data: dict, path: Path | None = None) -> Manifest:
    if data.get("format") != FORMAT:
        raise ManifestError(f"format should be {FORMAT}, not {data.get('format')!r}")
    t = data.get("thresholds", {})
    thresholds = Thresholds(
        classifier=_get(t, "classifier", float, "thresholds"),
        mask=_get(t, "mask", float, "thresholds"),
        min_mask_area_px=_get(t, "min_mask_area_px", int, "thresholds"),
        triplet_top=_get(t, "triplet_top", float, "thresholds"),
        triplet_min_area_px=_get(t, "triplet_min_area_px", int, "thresholds"),
        triplet_bottom=_get(t, "triplet_bottom", float, "thresholds"),
    )
    for key in ("classifier", "mask", "triplet_top", "triplet_bottom"):
        if not 0.0 <= getattr(thresholds, key) <= 1.0:
            raise ManifestError(f"thresholds.{key} is not a probability")
    models = []
    for i, m in enumerate(data.get("models", [])):
        where = f"models[{i}]"
        pre = m.get("preprocess", {})
        model = Model(
            role=_get(m, "role", str, where),
            name=_get(m, "name", str, where),
            version=_get(m, "version", str, where),
            architecture=_get(m, "architecture", str, where),
            file=_get(m, "file", str, where),
            sha256=_get(m, "sha256", str, where),
            input=_get(m, "input", str, where),
            output=_get(m, "output", str, where),
            layout=_get(m, "layout", str, where),
            height=_get(m, "height", int, where),
            width=_get(m, "width", int, where),
            channels=_get(m, "channels", int, where),
            output_kind=_get(m, "output_kind", str, where),
            mean=_get(pre, "mean", float, where + ".preprocess"),
            std=_get(pre, "std", float, where + ".preprocess"),
            training_data=_get(m, "training_data", str, where),
            intended_use=_get(m, "intended_use", str, where),
            metrics=m.get("metrics", {}),
        )
        if model.role not in ROLES:
            raise ManifestError(f"{where}.role should be one of {ROLES}, not {model.role!r}")
        if model.output_kind not in OUTPUT_KINDS:
            raise ManifestError(f"{where}.output_kind should be one of {OUTPUT_KINDS}")
        if model.layout != "NCHW":
            raise ManifestError(f"{where}.layout: only NCHW is supported")
        if model.channels not in (1, 3):
            raise ManifestError(f"{where}.channels should be 1 or 3")
        if pre.get("voi", "window") != "window" or pre.get("resize", "bilinear") != "bilinear":
            raise ManifestError(f"{where}.preprocess: only voi = \"window\" and resize = \"bilinear\" exist")
        if model.std <= 0:
            raise ManifestError(f"{where}.preprocess.std must be positive")
        if "/" in model.file and (model.file.startswith("/") or ".." in Path(model.file).parts):
            raise ManifestError(f"{where}.file must be a path inside the manifest's directory")
        models.append(model)
    roles = [m.role for m in models]
    if sorted(set(roles)) != sorted(roles):
        raise ManifestError("each role may appear once")
    return Manifest(models=models, thresholds=thresholds, notice=data.get("notice", ""), path=path)


def load(path: Path | str) -> Manifest:
    path = Path(path)
    with open(path, "rb") as f:
        return parse(tomllib.load(f), path)


HEADER = """\
# pneumotriage model manifest: what each ONNX model is and how to feed it.
# The format is documented in models/README.md. Written by `pneumotriage-models export`
# (sha256 and metrics are filled in from the exported files and the held-out evaluation).
"""


def save(manifest: Manifest, path: Path | str) -> None:
    path = Path(path)
    path.write_text(HEADER + "\n" + tomli_w.dumps(manifest.to_toml()))


def verify_files(manifest: Manifest) -> list[str]:
    """Problems with the model files: missing, or sha256 different from the manifest's."""
    problems = []
    base = manifest.path.parent if manifest.path else Path(".")
    for m in manifest.models:
        file = m.path(base)
        if not file.is_file():
            problems.append(f"{m.role}: {file} is missing")
        elif sha256_of(file) != m.sha256:
            problems.append(f"{m.role}: {file} has sha256 {sha256_of(file)}, the manifest says {m.sha256}")
    return problems
