"""ONNX export (PyTorch): a dynamic batch dimension, an opset onnxruntime 1.22+ runs, and a check
against PyTorch on sample inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

# onnxruntime 1.22 runs opsets up to 22; 17 covers every operator these networks use.
OPSET = 17


def export(model: torch.nn.Module, path: Path, *, channels: int, height: int, width: int, input_name: str, output_name: str, seed: int = 0) -> float:
    """Writes `model` as ONNX and returns the largest absolute difference between PyTorch and
    onnxruntime outputs on random inputs of batch sizes 1 and 3."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, channels, height, width)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in (1, 3):
        x = rng.normal(0, 1, size=(batch, channels, height, width)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run([output_name], {input_name: x})
        if got.shape != expected.shape:
            raise RuntimeError(f"{path}: onnxruntime gives shape {got.shape}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
