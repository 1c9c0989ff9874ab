"""`pneumotriage-models`: generate synthetic data, train and export the cascade, evaluate models.

    pneumotriage-models generate OUT N [--seed S]
    pneumotriage-models train-demo [--seed S] [--models-dir models]          (needs PyTorch)
    pneumotriage-models train --images DIR --masks CSV --out DIR [...]       (needs PyTorch)
    pneumotriage-models export --full-size OUT                                (needs PyTorch)
    pneumotriage-models evaluate --manifest models/manifest.toml --images DIR --masks CSV [--json]
    pneumotriage-models variant --to int8|fp16 --out DIR [--calibration DIR] [--images DIR --masks CSV]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import DEMO_NOTICE


def _cmd_generate(args) -> int:
    from .generate import generate

    generate(Path(args.out), args.n, args.seed)
    print(f"wrote {args.n} synthetic radiographs and train-rle.csv to {args.out} ({DEMO_NOTICE})")
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    result = evaluate(Path(args.manifest), Path(args.images), Path(args.masks))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    c, s = result["classifier"], result["segmenter"]
    print(f"{result['images']} images, {result['positives']} positive")
    print(
        f"classifier at {c['threshold']:.2f}: recall {c['recall']:.3f}, precision {c['precision']:.3f}, "
        f"specificity {c['specificity']:.3f}, AUC {c['auc']:.3f}"
    )
    for row in result["threshold_sweep"]:
        print(f"  threshold {row['threshold']:.1f}: recall {row['recall']:.3f}, precision {row['precision']:.3f}, specificity {row['specificity']:.3f}")
    print(f"segmenter on positives: Dice {s['mean_dice_positives']:.3f}, IoU {s['mean_iou_positives']:.3f}")
    print(f"cascade Kaggle metric (mean Dice, empty-empty = 1): {result['cascade']['kaggle_mean_dice']:.3f}")
    return 0


def _cmd_train_demo(args) -> int:
    from .demo import train_demo

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="pneumotriage-demo-"))
    train_demo(Path(args.models_dir), work, seed=args.seed, n_train=args.n_train, n_heldout=args.n_heldout, epochs=args.epochs)
    return 0


def _cmd_export(args) -> int:
    if not args.full_size:
        print("nothing to export: the demo models are exported by train-demo, SIIM-trained ones by train; "
              "--full-size exports the seed's architectures with random weights", file=sys.stderr)
        return 2
    from .demo import export_full_size

    export_full_size(Path(args.out))
    return 0


def _cmd_train(args) -> int:
    from .demo import train_real

    train_real(Path(args.images), Path(args.masks), Path(args.out), seed=args.seed, epochs=args.epochs, imagenet_vgg19=args.vgg19_weights)
    return 0


def _cmd_variant(args) -> int:
    from .variants import make_variant, measure

    calibration = sorted(Path(args.calibration).rglob("*.dcm"))[: args.n_calibration] if args.calibration else None
    variant = make_variant(Path(args.manifest), args.to, Path(args.out), calibration)
    print(f"wrote the {args.to} variant and its manifest to {variant.path}")
    if args.images:
        result = measure(variant, Path(args.images), Path(args.masks or Path(args.images) / "train-rle.csv"), args.dataset)
        c, s = result["classifier"], result["segmenter"]
        print(f"on {result['images']} images: classifier recall {c['recall']:.4f}, precision {c['precision']:.4f}, "
              f"specificity {c['specificity']:.4f}, AUC {c['auc']:.5f}; segmenter Dice {s['mean_dice_positives']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumotriage-models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a labelled synthetic set in the SIIM-ACR layout")
    p.add_argument("out")
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("evaluate", help="metrics of the manifest's ONNX models on a labelled set (onnxruntime)")
    p.add_argument("--manifest", default="models/manifest.toml")
    p.add_argument("--images", required=True, help="DICOM tree (searched recursively)")
    p.add_argument("--masks", required=True, help="train-rle.csv")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train-demo", help="train, export and evaluate the demo models on synthetic data")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--work", help="where the synthetic sets go (a temporary directory by default)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-heldout", type=int, default=400)
    p.add_argument("--epochs", type=int, default=8)
    p.set_defaults(func=_cmd_train_demo)

    p = sub.add_parser("train", help="train the seed's architectures on SIIM-ACR data")
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--epochs", type=int, default=17)
    p.add_argument("--vgg19-weights", help="torchvision's vgg19-*.pth (ImageNet), if you have it")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="export ONNX models: --full-size, the seed's architectures with random weights")
    p.add_argument("--full-size", action="store_true", help="VGG19 at 512 and U-Net DenseNet121 at 1024 (benchmarks)")
    p.add_argument("out")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("variant", help="int8 (CPU) or fp16 (CUDA) variants of a manifest's models, with their own manifest")
    p.add_argument("--manifest", default="models/manifest.toml")
    p.add_argument("--to", required=True, choices=["int8", "fp16"])
    p.add_argument("--out", required=True)
    p.add_argument("--calibration", help="DICOM tree for int8 calibration (not the held-out set)")
    p.add_argument("--n-calibration", type=int, default=100)
    p.add_argument("--images", help="a labelled set to measure the variant on")
    p.add_argument("--masks", help="its train-rle.csv (default: in --images)")
    p.add_argument("--dataset", default="labelled set", help="how the manifest names that set")
    p.set_defaults(func=_cmd_variant)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
