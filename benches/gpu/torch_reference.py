"""PyTorch's time for the full-size cascade's architectures (models/training's nets: VGG19 at 512,
U-Net DenseNet121 at 1024) on a CUDA GPU, per image, at each batch size: the reference the node's
ONNX Runtime figures are read against (benches/gpu/run).

Two figures per batch: the models alone on tensors already on the GPU, and from host memory
(input copied in, output copied out, as the node's sessions do). cuDNN's benchmark mode is on,
the counterpart of the node's exhaustive algorithm search. A line of figures per model and batch, and with
`--json PATH` the same as JSON objects, one per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models/training/src"))
from pneumotriage_models.nets import densenet_unet, vgg19_classifier  # noqa: E402


def per_image_ms(model: torch.nn.Module, x: torch.Tensor, repeat: int, from_host: bool, half: bool) -> float:
    """The mean time of `repeat` runs after three warm-up runs, per image."""
    cuda = x.device.type == "cuda"
    host = (x.cpu().pin_memory() if cuda else x.clone()) if from_host else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def once() -> None:
        inp = host.to(x.device, non_blocking=True) if from_host else x
        with torch.autocast(x.device.type, dtype=torch.float16 if cuda else torch.bfloat16, enabled=half):
            out = model(inp)
        if from_host:
            out.float().cpu()

    with torch.inference_mode():
        for _ in range(3):
            once()
        sync()
        started = time.perf_counter()
        for _ in range(repeat):
            once()
        sync()
    return (time.perf_counter() - started) / repeat / x.shape[0] * 1000.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", default="1,8,16", help="batch sizes, comma-separated")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--device", default="cuda", help="cuda, or cpu to check the script without a GPU")
    p.add_argument("--json", type=Path, help="also write the figures here, a JSON object per line")
    a = p.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name(0) if a.device == "cuda" else "none (cpu)"
    rows = []
    for name, model, size in (("vgg19", vgg19_classifier(), 512), ("unet-densenet121", densenet_unet(), 1024)):
        model = model.to(a.device).eval()
        for batch in [int(b) for b in a.batches.split(",")]:
            x = torch.randn(batch, 3, size, size, device=a.device)
            row = {"gpu": gpu, "torch": torch.__version__, "model": name, "size": size, "batch": batch}
            row["ms_per_image_on_gpu"] = per_image_ms(model, x, a.repeat, from_host=False, half=False)
            row["ms_per_image_from_host"] = per_image_ms(model, x, a.repeat, from_host=True, half=False)
            row["ms_per_image_fp16_autocast"] = per_image_ms(model, x, a.repeat, from_host=False, half=True)
            rows.append(row)
            print(
                f"  {name} @{size}, batch {batch}: {row['ms_per_image_on_gpu']:.1f} ms per image on the {a.device}, "
                f"{row['ms_per_image_from_host']:.1f} from host memory, "
                f"{row['ms_per_image_fp16_autocast']:.1f} with {'fp16' if a.device == 'cuda' else 'bf16'} autocast",
                flush=True,
            )
        del model
        if a.device == "cuda":
            torch.cuda.empty_cache()
    if a.json:
        a.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
