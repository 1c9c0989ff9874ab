"""Metrics on hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pneumotriage_models import metrics as M


def test_perfect_classifier():
    y = [1, 1, 0, 0]
    s = [0.9, 0.8, 0.1, 0.2]
    m = M.classifier_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 0, 2, 0)
    assert m["recall"] == m["sensitivity"] == m["specificity"] == m["precision"] == 1.0
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0
    assert (m["n"], m["positives"], m["negatives"], m["threshold"]) == (4, 2, 2, 0.5)
    assert M.roc_auc(y, s) == 1.0


def test_all_wrong_classifier():
    y = [1, 1, 0, 0]
    s = [0.1, 0.2, 0.9, 0.8]
    m = M.classifier_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 2, 0, 2)
    assert m["recall"] == m["specificity"] == m["precision"] == m["accuracy"] == 0.0
    assert M.roc_auc(y, s) == 0.0


def test_counts_by_hand():
    # threshold 0.5: calls = [T, T, F, T, F, F, T, F]
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    s = [0.9, 0.5, 0.4, 0.7, 0.2, 0.1, 0.6, 0.3]
    m = M.classifier_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 2, 2)
    assert m["recall"] == 0.5 and m["specificity"] == 0.5 and m["precision"] == 0.5
    assert m["npv"] == 0.5 and m["accuracy"] == 0.5
    # a score equal to the threshold is a positive call
    assert M.classifier_metrics([1], [0.3], 0.3)["tp"] == 1


def test_undefined_ratios_are_none():
    m = M.classifier_metrics([0, 0, 1], [0.1, 0.2, 0.3], 0.9)  # no positive call
    assert m["precision"] is None and m["recall"] == 0.0 and m["specificity"] == 1.0
    m = M.classifier_metrics([0, 0], [0.1, 0.8], 0.5)  # no positive case
    assert m["recall"] is None and m["sensitivity"] is None
    assert M.roc_auc([0, 0], [0.1, 0.2]) is None
    assert M.roc_auc([True, True], [0.1, 0.2]) is None


def test_auc_known_value():
    # the usual textbook example: 3 of the 4 (positive, negative) pairs are ordered right
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75


def test_auc_ties():
    assert M.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert M.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5
    # pos 0.5 beats 0.2 and ties 0.5 (1.5); pos 0.9 beats both (2) -> 3.5 / 4
    assert M.roc_auc([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9]) == 0.875


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        y = rng.random(n) < 0.4
        if y.all() or not y.any():
            continue
        s = np.round(rng.random(n), 1)  # many ties
        pos, neg = s[y], s[~y]
        pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert math.isclose(M.roc_auc(y, s), pairs / (len(pos) * len(neg)), rel_tol=1e-12)


def test_input_validation():
    with pytest.raises(ValueError):
        M.classifier_metrics([0, 1], [0.1], 0.5)
    with pytest.raises(ValueError):
        M.classifier_metrics([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError):
        M.roc_auc([0, 1], [0.1, float("nan")])


Y8 = [1, 1, 1, 1, 0, 0, 0, 0]
S8 = [0.95, 0.75, 0.55, 0.25, 0.65, 0.35, 0.15, 0.05]


def test_threshold_sweep():
    sweep = M.threshold_sweep(Y8, S8)
    assert [r["threshold"] for r in sweep] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    recalls = [r["recall"] for r in sweep]
    assert recalls == [1.0, 1.0, 0.75, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    specs = [r["specificity"] for r in sweep]
    assert specs == [0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 1.0, 1.0, 1.0]
    json.dumps(sweep, allow_nan=False)


def test_choose_threshold_recall_first():
    sweep = M.threshold_sweep(Y8, S8)
    best = M.choose_threshold(sweep, 1.0)
    assert best["threshold"] == 0.2 and best["recall"] == 1.0 and best["meets_min_recall"]
    best = M.choose_threshold(sweep, 0.75)
    assert best["threshold"] == 0.5 and best["meets_min_recall"] and best["min_recall"] == 0.75
    best = M.choose_threshold(sweep, 0.0)
    assert best["threshold"] == 0.9
    assert "min_recall" not in sweep[0]  # the sweep is not modified


def test_choose_threshold_unreachable_recall():
    sweep = [
        {"threshold": 0.1, "recall": 0.8},
        {"threshold": 0.2, "recall": 0.8},
        {"threshold": 0.3, "recall": 0.6},
    ]
    best = M.choose_threshold(sweep, 0.95)
    assert best["threshold"] == 0.1 and not best["meets_min_recall"]
    with pytest.raises(ValueError):
        M.choose_threshold([], 0.9)
    with pytest.raises(ValueError):
        M.choose_threshold([{"threshold": 0.5, "recall": None}], 0.9)


def masks():
    truth = np.zeros((4, 4), dtype=bool)
    truth[0, 0:3] = True  # 3 pixels
    pred = np.zeros((4, 4), dtype=bool)
    pred[0, 2:4] = True  # 2 pixels, 1 shared
    return pred, truth


def test_iou_dice_by_hand():
    pred, truth = masks()
    assert M.iou(pred, truth) == 0.25  # 1 / 4
    assert M.dice(pred, truth) == 0.4  # 2 * 1 / (2 + 3)
    assert M.iou(truth, truth) == M.dice(truth, truth) == 1.0
    assert M.iou(pred.astype(np.uint8), truth.astype(np.float32)) == 0.25


def test_empty_conventions():
    empty = np.zeros((4, 4), dtype=bool)
    _, truth = masks()
    assert M.dice(empty, empty) == 1.0 and M.iou(empty, empty) == 1.0
    assert M.dice(empty, truth) == 0.0 and M.dice(truth, empty) == 0.0
    assert M.iou(empty, truth) == 0.0
    assert M.dice(empty, empty, empty=0.0) == 0.0


def test_segmentation_metrics_and_kaggle():
    empty = np.zeros((4, 4), dtype=bool)
    pred, truth = masks()
    preds = [empty, empty, pred, truth]
    truths = [empty, truth, truth, truth]
    seg = M.segmentation_metrics(preds, truths)
    assert seg["n"] == 4
    assert seg["dice"] == [1.0, 0.0, 0.4, 1.0]
    assert seg["iou"] == [1.0, 0.0, 0.25, 1.0]
    assert math.isclose(seg["mean_dice"], 2.4 / 4) and math.isclose(seg["mean_iou"], 2.25 / 4)
    assert math.isclose(M.kaggle_dice(preds, truths), 2.4 / 4)
    assert M.kaggle_dice([empty], [empty]) == 1.0
    assert M.kaggle_dice([empty], [truth]) == 0.0
    assert M.kaggle_dice([truth], [empty]) == 0.0
    assert M.kaggle_dice([], []) is None
    assert M.segmentation_metrics([], [])["mean_dice"] is None
    json.dumps(seg, allow_nan=False)


def test_segmentation_validation():
    pred, truth = masks()
    with pytest.raises(ValueError, match="threshold"):
        M.dice(pred * 0.7, truth)
    with pytest.raises(ValueError):
        M.iou(pred, truth[:3])
    with pytest.raises(ValueError):
        M.kaggle_dice([pred, pred], [truth])
