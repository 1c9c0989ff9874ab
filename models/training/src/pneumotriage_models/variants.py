"""Cheaper variants of a manifest's models, for ONNX Runtime: int8 (static QDQ quantisation,
for the CPU) and fp16 (half-precision weights and activations, for CUDA).

Each variant is written with a manifest of its own: the same thresholds and preprocessing, each
model's version marked (`0.1.0-int8`), its sha256, and, given a labelled set, its metrics
measured again. Run it as a shadow version (`[[inference.shadow]]`) before it replaces
production: `pneumotriage shadow-report` then says what it changes on the site's own images.

int8 calibrates on images that are not the held-out set's (activations' ranges, MinMax), with
per-channel int8 weights of a reduced (7-bit) range and uint8 activations. The reduced range is
what makes the variant portable: on x86 CPUs without VNNI (AVX2 or AVX-512 only, e.g. AMD EPYC
Zen 2 and 3), ONNX Runtime's u8s8 kernels add pairs of products into 16 bits (VPMADDUBSW), which
saturate with full-range weights; there the demo classifier quantised at full range called every
positive negative. fp16 keeps float32 inputs and outputs, so the
node feeds it as before. Both need the `onnx` package (onnxruntime's quantisation tools).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom

from . import manifest as manifest_mod
from . import preprocess

KINDS = ("int8", "fp16")


def calibration_tensors(model: manifest_mod.Model, images: list[Path]) -> np.ndarray:
    """The model's inputs for `images`, preprocessed exactly as for evaluation (N x C x H x W)."""
    pre = preprocess.Preprocess(height=model.height, width=model.width, channels=model.channels, mean=model.mean, std=model.std)
    return np.concatenate([preprocess.to_tensor(preprocess.display_image(pydicom.dcmread(p)), pre) for p in images])


def _int8(source: Path, target: Path, model: manifest_mod.Model, calibration: list[Path]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    tensors = calibration_tensors(model, calibration)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{model.input: tensors[i : i + 1]} for i in range(len(tensors))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=True,
        calibrate_method=CalibrationMethod.MinMax,
    )


def _fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _in_topological_order(converted.graph)
    onnx.save(converted, str(target))
    onnx.checker.check_model(str(target))


def _in_topological_order(graph) -> None:
    """Puts each node after the nodes whose outputs it reads: the converter appends the casts of
    the float32 inputs at the end, which ONNX Runtime accepts and the ONNX checker does not."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        node = next((n for n in pending if all(i in ready for i in n.input)), None)
        if node is None:
            raise ValueError("the converted graph has a cycle or an input nothing makes")
        pending.remove(node)
        ordered.append(node)
        ready.update(node.output)
    del graph.node[:]
    graph.node.extend(ordered)


def make_variant(manifest_path: Path, kind: str, out_dir: Path, calibration: list[Path] | None = None) -> manifest_mod.Manifest:
    """Writes `kind` variants of the manifest's models and their manifest under `out_dir`."""
    if kind not in KINDS:
        raise ValueError(f"unknown variant {kind!r}: one of {', '.join(KINDS)}")
    if kind == "int8" and not calibration:
        raise ValueError("int8 needs calibration images (not the held-out set's)")
    source = manifest_mod.load(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = []
    for model in source.models:
        src = model.path(manifest_path.parent)
        file = f"{Path(model.file).stem}.{kind}.onnx"
        target = out_dir / file
        if kind == "int8":
            _int8(src, target, model, calibration)
        else:
            _fp16(src, target)
        models.append(dataclasses.replace(
            model,
            version=f"{model.version}-{kind}",
            file=file,
            sha256=manifest_mod.sha256_of(target),
            metrics={},
        ))
    variant = manifest_mod.Manifest(models=models, thresholds=source.thresholds, notice=source.notice, path=out_dir / "manifest.toml")
    manifest_mod.save(variant, variant.path)
    return variant


def measure(variant: manifest_mod.Manifest, images: Path, masks: Path, dataset: str) -> dict:
    """Evaluates the variant on a labelled set and records the figures in its manifest."""
    from .evaluate import evaluate

    result = evaluate(variant.path, images, masks)
    variant.model("classifier").metrics = {"dataset": dataset, **{k: result["classifier"][k] for k in ("threshold", "recall", "precision", "specificity", "auc")}}
    variant.model("segmenter").metrics = {
        "dataset": dataset,
        "mask_threshold": result["segmenter"]["mask_threshold"],
        "mean_dice_positives": result["segmenter"]["mean_dice_positives"],
        "cascade_kaggle_mean_dice": result["cascade"]["kaggle_mean_dice"],
    }
    manifest_mod.save(variant, variant.path)
    return result
