"""Evaluating the cascade's ONNX models with onnxruntime (no PyTorch), on a labelled set in the
SIIM-ACR layout: classifier recall, precision, specificity and AUC with a threshold sweep,
segmenter IoU and Dice on positives, and the Kaggle metric of the whole cascade."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydicom

from . import manifest as manifest_mod
from . import metrics, preprocess, siim
from .preprocess import Preprocess


@dataclass
class OnnxModel:
    spec: manifest_mod.Model
    session: ort.InferenceSession

    @property
    def pre(self) -> Preprocess:
        s = self.spec
        return Preprocess(height=s.height, width=s.width, channels=s.channels, mean=s.mean, std=s.std)

    def probabilities(self, tensor: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.spec.output], {self.spec.input: tensor})
        return out if self.spec.output_kind == "probabilities" else preprocess.sigmoid(out)


def open_models(manifest: manifest_mod.Manifest, threads: int = 2) -> dict[str, OnnxModel]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    base = manifest.path.parent
    return {
        m.role: OnnxModel(m, ort.InferenceSession(str(m.path(base)), options, providers=["CPUExecutionProvider"]))
        for m in manifest.models
    }


def evaluate(manifest_path: Path, images_dir: Path, masks_csv: Path) -> dict:
    """Runs both models over every image and returns the metrics as a JSON-ready dict."""
    manifest = manifest_mod.load(manifest_path)
    models = open_models(manifest)
    classifier, segmenter = models["classifier"], models["segmenter"]
    t = manifest.thresholds
    records = siim.load(images_dir, masks_csv).records
    labels, probs, seg_dice, seg_iou, cascade_dice = [], [], [], [], []
    for record in records:
        display = preprocess.display_image(pydicom.dcmread(record.path))
        truth = record.mask(*display.shape)
        p = float(classifier.probabilities(preprocess.to_tensor(display, classifier.pre)).reshape(-1)[0])
        labels.append(bool(truth.any()))
        probs.append(p)
        prob_map = segmenter.probabilities(preprocess.to_tensor(display, segmenter.pre))[0, 0]
        small = prob_map >= t.mask
        if small.sum() < t.min_mask_area_px:
            small[:] = False
        predicted = preprocess.resize(prob_map, *display.shape) >= t.mask if small.any() else np.zeros_like(truth)
        if truth.any():
            seg_dice.append(metrics.dice(predicted, truth))
            seg_iou.append(metrics.iou(predicted, truth))
        cascade = predicted if p >= t.classifier else np.zeros_like(truth)
        cascade_dice.append(metrics.dice(cascade, truth, empty=1.0))
    labels, probs = np.array(labels), np.array(probs)
    at = metrics.classifier_metrics(labels, probs, t.classifier)
    return {
        "images": len(records),
        "positives": int(labels.sum()),
        "classifier": {**at, "threshold": t.classifier, "auc": metrics.roc_auc(labels, probs)},
        "threshold_sweep": metrics.threshold_sweep(labels, probs),
        "segmenter": {
            "mask_threshold": t.mask,
            "mean_dice_positives": float(np.mean(seg_dice)) if seg_dice else None,
            "mean_iou_positives": float(np.mean(seg_iou)) if seg_iou else None,
        },
        "cascade": {"kaggle_mean_dice": float(np.mean(cascade_dice)) if cascade_dice else None},
    }
