"""Training the cascade (PyTorch).

The images a model trains on go through exactly the preprocessing the node applies
(`preprocess.load`: Modality LUT, VOI window, MONOCHROME1 inversion, antialiased resize,
mean/std), read from DICOM files in the SIIM-ACR layout, so what the model learns is what it
will see. The classifier is trained with binary cross-entropy and its threshold chosen
"recall first" from a sweep 0.1..0.9 on the validation split, as the seed did; the segmenter is
trained on positive images only with BCE + Dice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import metrics, preprocess, siim
from .preprocess import Preprocess


@dataclass
class Arrays:
    """A labelled set, preprocessed: images (N, C, H, W) float16, masks (N, H, W) bool."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    records: list

    def subset(self, index) -> "Arrays":
        index = np.asarray(index)
        return Arrays(self.images[index], self.masks[index], self.labels[index], [self.records[i] for i in index])


def load_arrays(images_dir: Path, masks_csv: Path, pre: Preprocess) -> Arrays:
    """Reads a SIIM-layout set and preprocesses every image for a model of input `pre`."""
    records = siim.load(images_dir, masks_csv).records
    images = np.zeros((len(records), pre.channels, pre.height, pre.width), dtype=np.float16)
    masks = np.zeros((len(records), pre.height, pre.width), dtype=bool)
    for i, record in enumerate(records):
        display, tensor = preprocess.load(record.path, pre)
        images[i] = tensor[0]
        masks[i] = preprocess.resize_mask(record.mask(*display.shape), pre.height, pre.width)
    labels = np.array([r.positive for r in records], dtype=bool)
    return Arrays(images, masks, labels, records)


def _batches(n: int, batch: int, rng: np.random.Generator, shuffle: bool):
    order = rng.permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch):
        yield order[start : start + batch]


def _augment(x: torch.Tensor, y: torch.Tensor | None, rng: np.random.Generator):
    """Horizontal flips (a pneumothorax is as likely on either side) and small intensity jitter."""
    flip = torch.from_numpy(rng.random(x.shape[0]) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if y is not None and y.dim() == 4:
        y = torch.where(flip[:, None, None, None], y.flip(-1), y)
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, size=(x.shape[0], 1, 1, 1)).astype(np.float32))
    bias = torch.from_numpy(rng.uniform(-0.1, 0.1, size=(x.shape[0], 1, 1, 1)).astype(np.float32))
    return x * gain + bias, y


def _optimizer(model: nn.Module, lr: float, epochs: int, batches_per_epoch: int):
    """AdamW with a one-cycle schedule over the whole run."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * batches_per_epoch)


def predict(model: nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits for every image (classifier: (N,), segmenter: (N, H, W))."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch].astype(np.float32))
            out.append(model(x).numpy())
    logits = np.concatenate(out) if out else np.zeros((0, 1))
    return logits[:, 0] if logits.ndim in (2, 4) else logits


def train_classifier(model, train: Arrays, val: Arrays, *, epochs: int, lr: float, seed: int, log=print):
    """Trains with BCE; returns the validation sweep and the threshold chosen for recall."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt, sched = _optimizer(model, lr, epochs, (len(train.labels) + 31) // 32)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        model.train()
        started, total = time.time(), 0.0
        for idx in _batches(len(train.labels), 32, rng, shuffle=True):
            x = torch.from_numpy(train.images[idx].astype(np.float32))
            y = torch.from_numpy(train.labels[idx].astype(np.float32))[:, None]
            x, _ = _augment(x, None, rng)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        probs = preprocess.sigmoid(predict(model, val.images))
        auc = metrics.roc_auc(val.labels, probs)
        log(f"classifier epoch {epoch + 1}/{epochs}: loss {total / len(train.labels):.4f}, val AUC {auc:.4f} ({time.time() - started:.0f} s)")
    probs = preprocess.sigmoid(predict(model, val.images))
    return probs


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)).mean()


def train_segmenter(model, train: Arrays, val: Arrays, *, epochs: int, lr: float, seed: int, mask_threshold: float, log=print):
    """Trains on positives with BCE + Dice; returns the validation mean Dice of positives."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt, sched = _optimizer(model, lr, epochs, (len(train.labels) + 15) // 16)
    bce = nn.BCEWithLogitsLoss()
    dice = 0.0
    for epoch in range(epochs):
        model.train()
        started, total = time.time(), 0.0
        for idx in _batches(len(train.labels), 16, rng, shuffle=True):
            x = torch.from_numpy(train.images[idx].astype(np.float32))
            y = torch.from_numpy(train.masks[idx].astype(np.float32))[:, None]
            x, y = _augment(x, y, rng)
            opt.zero_grad()
            logits = model(x)
            loss = bce(logits, y) + dice_loss(logits, y)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        pred = preprocess.sigmoid(predict(model, val.images)) >= mask_threshold
        dice = metrics.segmentation_metrics(pred, val.masks)["mean_dice"]
        log(f"segmenter epoch {epoch + 1}/{epochs}: loss {total / len(train.labels):.4f}, val Dice {dice:.4f} ({time.time() - started:.0f} s)")
    return dice


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
