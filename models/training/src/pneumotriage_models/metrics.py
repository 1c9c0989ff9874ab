"""Metrics for the cascade, numpy only; every function returns plain ints, floats, lists and
dicts, so results can go straight into ``json.dump``.

Classifier: counts and rates at a threshold (a score ``>= threshold`` is a positive call),
rank-based ROC AUC, the threshold sweep 0.1..0.9 of the seed and its "recall first" choice.
Segmenter: IoU and Dice per image and their means. Cascade: the SIIM-ACR Kaggle metric, the
mean Dice over images where an empty prediction of an empty truth scores 1.

A ratio whose denominator is zero (precision with no positive call, recall with no positive
case, AUC with one class only) is ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "SWEEP_THRESHOLDS",
    "choose_threshold",
    "classifier_metrics",
    "dice",
    "iou",
    "kaggle_dice",
    "roc_auc",
    "segmentation_metrics",
    "threshold_sweep",
]

# The seed's sweep: 0.1, 0.2, ..., 0.9 (rounded, so that they print and compare cleanly).
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den else None


def _labels(y_true: Iterable, scores: Iterable) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            f"y_true and scores must be 1-D of the same length, got {y.shape} and {s.shape}"
        )
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("y_true must be booleans or 0/1")
        y = y.astype(bool)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def classifier_metrics(y_true: Iterable, scores: Iterable, threshold: float = 0.5) -> dict:
    """Counts and rates of a binary classifier calling ``score >= threshold`` positive.

    Keys: threshold, n, positives, negatives, tp, fp, tn, fn, recall (= sensitivity),
    sensitivity, specificity, precision, npv, accuracy, f1.
    """
    y, s = _labels(y_true, scores)
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    tn = int(np.count_nonzero(~pred & ~y))
    recall = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold),
        "n": int(y.size),
        "positives": tp + fn,
        "negatives": tn + fp,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, y.size),
        "f1": f1,
    }


def roc_auc(y_true: Iterable, scores: Iterable) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U): the probability that a random
    positive scores above a random negative, ties counting one half. ``None`` if only one
    class is present."""
    y, s = _labels(y_true, scores)
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    # Average ranks (1-based), ties sharing the mean of their ranks.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # boundaries of groups of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def threshold_sweep(
    y_true: Iterable, scores: Iterable, thresholds: Iterable[float] = SWEEP_THRESHOLDS
) -> list[dict]:
    """``classifier_metrics`` at each threshold (by default 0.1, 0.2, ..., 0.9), in order."""
    y, s = _labels(y_true, scores)
    return [classifier_metrics(y, s, float(t)) for t in thresholds]


def choose_threshold(sweep: Sequence[dict], min_recall: float) -> dict:
    """Recall first, as the seed chose its 0.3: the row of ``sweep`` with the highest threshold
    whose recall is at least ``min_recall``. If none reaches it, the row with the highest
    recall (the lowest threshold among equals). Returns a copy of the row with ``min_recall``
    and ``meets_min_recall`` added."""
    if not sweep:
        raise ValueError("empty sweep")
    if any(row.get("recall") is None for row in sweep):
        raise ValueError("recall is undefined (no positive case): cannot choose a threshold")
    ok = [row for row in sweep if row["recall"] >= min_recall]
    if ok:
        best = max(ok, key=lambda r: r["threshold"])
    else:
        best = max(sweep, key=lambda r: (r["recall"], -r["threshold"]))
    out = dict(best)
    out["min_recall"] = float(min_recall)
    out["meets_min_recall"] = bool(ok)
    return out


def _mask(m, name: str) -> np.ndarray:
    a = np.asarray(m)
    if a.dtype == bool:
        return a
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be a boolean or 0/1 mask (threshold probabilities first)")
    return a.astype(bool)


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = _mask(pred, "pred"), _mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    return p, t


def iou(pred, truth, empty: float = 1.0) -> float:
    """Intersection over union of two masks; ``empty`` when both are empty."""
    p, t = _pair(pred, truth)
    inter = int(np.count_nonzero(p & t))
    union = int(np.count_nonzero(p | t))
    return float(empty) if union == 0 else inter / union


def dice(pred, truth, empty: float = 1.0) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of two masks; ``empty`` when both are empty
    (the Kaggle convention: 1)."""
    p, t = _pair(pred, truth)
    inter = int(np.count_nonzero(p & t))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    return float(empty) if total == 0 else 2.0 * inter / total


def segmentation_metrics(preds: Iterable, truths: Iterable, empty: float = 1.0) -> dict:
    """Per-image IoU and Dice of paired masks and their means:
    ``{"n", "iou", "dice", "mean_iou", "mean_dice"}`` (means ``None`` for no image)."""
    ious: list[float] = []
    dices: list[float] = []
    for p, t in _zip_strict(preds, truths):
        ious.append(iou(p, t, empty))
        dices.append(dice(p, t, empty))
    return {
        "n": len(ious),
        "iou": ious,
        "dice": dices,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "mean_dice": float(np.mean(dices)) if dices else None,
    }


def kaggle_dice(preds: Iterable, truths: Iterable) -> float | None:
    """The SIIM-ACR leaderboard metric: mean over images of the Dice coefficient, an empty
    prediction of an empty truth scoring 1 and any prediction that is empty on one side only
    scoring 0. ``None`` for no image."""
    scores = [dice(p, t, 1.0) for p, t in _zip_strict(preds, truths)]
    return float(np.mean(scores)) if scores else None


def _zip_strict(a: Iterable, b: Iterable):
    # zip(strict=True) raises ValueError when one side is longer, without holding every mask.
    return zip(a, b, strict=True)
