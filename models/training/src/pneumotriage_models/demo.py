"""The end-to-end recipes (PyTorch): the demo models on synthetic data, the seed's architectures on
SIIM-ACR data, and the full-size models with random weights for the benchmarks.

`train_demo` is the one seeded command that reproduces `models/demo/` and `models/manifest.toml`:

    pneumotriage-models train-demo --seed 7
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import DEMO_NOTICE, evaluate, metrics, siim
from . import manifest as manifest_mod
from .export import export
from .generate import generate
from .nets import SmallCNN, SmallUNet, densenet_unet, vgg19_classifier
from .preprocess import Preprocess
from .train import load_arrays, train_classifier, train_segmenter, write_json

DEMO_SIZE = 256
DEMO_MEAN, DEMO_STD = 0.5, 0.25
# The classifier's operating point: the highest threshold that keeps this recall on validation.
TARGET_RECALL = 0.97
HELDOUT_SEED_OFFSET = 1000


def _split(arrays, seed: int):
    """Train and validation by patient (siim.split), as index subsets of the arrays."""
    _, val_records = siim.split(arrays.records, 0.15, seed)
    in_val = {id(r) for r in val_records}
    val_idx = [i for i, r in enumerate(arrays.records) if id(r) in in_val]
    train_idx = [i for i, r in enumerate(arrays.records) if id(r) not in in_val]
    return arrays.subset(train_idx), arrays.subset(val_idx)


def _model_entry(role, name, architecture, file, pre: Preprocess, training_data, *, output) -> manifest_mod.Model:
    return manifest_mod.Model(
        role=role,
        name=name,
        version="0.1.0",
        architecture=architecture,
        file=file,
        sha256="",
        input="image",
        output=output,
        layout="NCHW",
        height=pre.height,
        width=pre.width,
        channels=pre.channels,
        output_kind="logits",
        mean=pre.mean,
        std=pre.std,
        training_data=training_data,
        intended_use=DEMO_NOTICE,
    )


def train_demo(models_dir: Path, work: Path, *, seed: int, n_train: int, n_heldout: int, epochs: int) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    train_dir, heldout_dir = work / "train", work / "heldout"
    heldout_seed = seed + HELDOUT_SEED_OFFSET
    for out, n, s in ((train_dir, n_train, seed), (heldout_dir, n_heldout, heldout_seed)):
        if not (out / "train-rle.csv").is_file():
            print(f"generating {n} synthetic radiographs (seed {s}) into {out}")
            generate(out, n, s)
    pre = Preprocess(height=DEMO_SIZE, width=DEMO_SIZE, channels=1, mean=DEMO_MEAN, std=DEMO_STD)
    print("preprocessing the training set as the node does")
    arrays = load_arrays(train_dir, train_dir / "train-rle.csv", pre)
    train, val = _split(arrays, seed)
    print(f"{len(train.labels)} training images ({int(train.labels.sum())} positive), {len(val.labels)} validation")

    classifier = SmallCNN()
    probs = train_classifier(classifier, train, val, epochs=epochs, lr=3e-3, seed=seed)
    sweep = metrics.threshold_sweep(val.labels, probs)
    threshold = metrics.choose_threshold(sweep, TARGET_RECALL)["threshold"]
    print(f"classifier threshold {threshold:.1f} (recall >= {TARGET_RECALL} on validation)")

    segmenter = SmallUNet()
    pos_train, pos_val = train.subset(np.flatnonzero(train.labels)), val.subset(np.flatnonzero(val.labels))
    val_dice = train_segmenter(segmenter, pos_train, pos_val, epochs=epochs, lr=3e-3, seed=seed, mask_threshold=0.5)

    demo = models_dir / "demo"
    training_data = (
        f"{n_train} synthetic radiographs (pneumotriage_models.synth, seed {seed}; {DEMO_NOTICE}); "
        f"held-out set of {n_heldout} with seed {heldout_seed}"
    )
    entries = [
        _model_entry("classifier", "pneumotriage-demo-classifier", "small-cnn", "demo/classifier.onnx", pre, training_data, output="logit"),
        _model_entry("segmenter", "pneumotriage-demo-segmenter", "small-unet", "demo/segmenter.onnx", pre, training_data, output="mask_logits"),
    ]
    diffs = {}
    for entry, model in zip(entries, (classifier, segmenter)):
        path = models_dir / entry.file
        diffs[entry.role] = export(model, path, channels=1, height=DEMO_SIZE, width=DEMO_SIZE, input_name=entry.input, output_name=entry.output)
        entry.sha256 = manifest_mod.sha256_of(path)
        print(f"exported {path}: max |onnxruntime - PyTorch| = {diffs[entry.role]:.2e}")
    thresholds = manifest_mod.Thresholds(classifier=float(threshold), mask=0.5, min_mask_area_px=10, triplet_top=0.75, triplet_min_area_px=40, triplet_bottom=0.3)
    manifest = manifest_mod.Manifest(models=entries, thresholds=thresholds, notice=DEMO_NOTICE, path=models_dir / "manifest.toml")
    manifest_mod.save(manifest, manifest.path)

    print(f"evaluating the exported models on the held-out set ({heldout_dir}) with onnxruntime")
    result = evaluate.evaluate(manifest.path, heldout_dir, heldout_dir / "train-rle.csv")
    heldout = f"synthetic held-out set: {n_heldout} images, seed {heldout_seed}"
    entries[0].metrics = {"dataset": heldout, **{k: result["classifier"][k] for k in ("threshold", "recall", "precision", "specificity", "auc")}}
    entries[1].metrics = {
        "dataset": heldout,
        "mask_threshold": result["segmenter"]["mask_threshold"],
        "mean_dice_positives": result["segmenter"]["mean_dice_positives"],
        "mean_iou_positives": result["segmenter"]["mean_iou_positives"],
        "cascade_kaggle_mean_dice": result["cascade"]["kaggle_mean_dice"],
    }
    manifest_mod.save(manifest, manifest.path)
    report = {
        "notice": DEMO_NOTICE,
        "seed": seed,
        "heldout_seed": heldout_seed,
        "heldout_n": n_heldout,
        "validation": {"threshold_sweep": sweep, "segmenter_mean_dice": val_dice},
        "export_max_abs_diff": diffs,
        "heldout": result,
        "minutes": round((time.time() - started) / 60, 1),
    }
    write_json(demo / "metrics.json", report)
    c, s = result["classifier"], result["segmenter"]
    print(
        f"held-out: recall {c['recall']:.3f}, specificity {c['specificity']:.3f}, AUC {c['auc']:.3f}, "
        f"segmenter Dice {s['mean_dice_positives']:.3f}, Kaggle {result['cascade']['kaggle_mean_dice']:.3f}"
    )
    return report


def train_real(images: Path, masks: Path, out: Path, *, seed: int, epochs: int, imagenet_vgg19: str | None) -> None:
    """The seed's recipe on SIIM-ACR data: VGG19 classifier at 512, U-Net DenseNet121 at 512."""
    cls_pre = Preprocess(height=512, width=512, channels=3, mean=0.5, std=0.25)
    arrays = load_arrays(images, masks, cls_pre)
    train, val = _split(arrays, seed)
    classifier = vgg19_classifier(imagenet_vgg19)
    probs = train_classifier(classifier, train, val, epochs=epochs, lr=1e-4, seed=seed)
    sweep = metrics.threshold_sweep(val.labels, probs)
    segmenter = densenet_unet()
    pos_train, pos_val = train.subset(np.flatnonzero(train.labels)), val.subset(np.flatnonzero(val.labels))
    dice = train_segmenter(segmenter, pos_train, pos_val, epochs=epochs, lr=1e-4, seed=seed, mask_threshold=0.5)
    out.mkdir(parents=True, exist_ok=True)
    training_data = f"SIIM-ACR layout from {images} and {masks}, split by patient (seed {seed})"
    entries = []
    for role, model, architecture, output in (
        ("classifier", classifier, "vgg19", "logit"),
        ("segmenter", segmenter, "unet-densenet121", "mask_logits"),
    ):
        entry = _model_entry(role, f"siim-{architecture}", architecture, f"{role}.onnx", cls_pre, training_data, output=output)
        entry.intended_use = "research: validate on your own data before any use"
        diff = export(model, out / entry.file, channels=3, height=512, width=512, input_name=entry.input, output_name=output)
        entry.sha256 = manifest_mod.sha256_of(out / entry.file)
        print(f"exported {out / entry.file}: max |onnxruntime - PyTorch| = {diff:.2e}")
        entries.append(entry)
    chosen = metrics.choose_threshold(sweep, TARGET_RECALL)
    entries[0].metrics = {"dataset": "validation split", **{k: chosen[k] for k in ("threshold", "recall", "precision", "specificity")}}
    entries[1].metrics = {"dataset": "validation split (positives)", "mean_dice_positives": dice}
    thresholds = manifest_mod.Thresholds(classifier=float(chosen["threshold"]))
    manifest = manifest_mod.Manifest(models=entries, thresholds=thresholds, notice="trained on SIIM-ACR data")
    manifest_mod.save(manifest, out / "manifest.toml")
    write_json(out / "metrics.json", {"validation_threshold_sweep": sweep, "validation_segmenter_dice": dice})
    print(f"wrote {out}/manifest.toml, classifier.onnx, segmenter.onnx and metrics.json")


def export_full_size(out: Path) -> None:
    """VGG19 at 512 and U-Net DenseNet121 at 1024, random weights, with a manifest (not committed)."""
    torch.manual_seed(0)
    entries = []
    specs = (
        ("classifier", vgg19_classifier(), "vgg19", 512, "logit"),
        ("segmenter", densenet_unet(), "unet-densenet121", 1024, "mask_logits"),
    )
    for role, model, architecture, size, output in specs:
        pre = Preprocess(height=size, width=size, channels=3, mean=0.5, std=0.25)
        entry = _model_entry(role, f"full-size-{architecture}", architecture, f"{role}.onnx", pre, "random weights (benchmarks only)", output=output)
        diff = export(model, out / entry.file, channels=3, height=size, width=size, input_name="image", output_name=output)
        entry.sha256 = manifest_mod.sha256_of(out / entry.file)
        entry.intended_use = "performance benchmarks only: random weights"
        entries.append(entry)
        print(f"exported {out / entry.file} ({architecture} at {size}): max |onnxruntime - PyTorch| = {diff:.2e}")
    manifest = manifest_mod.Manifest(models=entries, thresholds=manifest_mod.Thresholds(), notice="random weights: benchmarks only")
    manifest_mod.save(manifest, out / "manifest.toml")
