"""Metrics of the efficacy benchmark, as pure numpy functions (tested on hand-made arrays).

- Segmentation (the DLI paper): per class k, IoU = TP / (TP + FP + FN) with the counts summed over
  the whole validation set (not averaged per image); mean IoU over the K defect classes. Plus the
  share of defect-free validation images with at least one false-positive pixel.
- Classification: macro F1 and balanced accuracy (mean per-class recall).
- Anomaly detection: AUROC (Mann-Whitney, ties count half).
"""

from __future__ import annotations

import numpy as np


def confusion_counts(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(K, 3) int64 [TP, FP, FN] per class of multi-label masks ``truth`` / ``predicted`` (N, K, H, W) bool."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    if truth.shape != predicted.shape or truth.ndim != 4:
        raise ValueError(f"truth and predicted must both be (N, K, H, W), got {truth.shape} and {predicted.shape}")
    axes = (0, 2, 3)
    tp = (truth & predicted).sum(axes)
    fp = (~truth & predicted).sum(axes)
    fn = (truth & ~predicted).sum(axes)
    return np.stack([tp, fp, fn], 1).astype(np.int64)


def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) of (K, 3) summed counts; NaN where a class is absent and never predicted."""
    counts = np.asarray(counts, np.float64)
    denominator = counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, counts[:, 0] / denominator, np.nan)


def free_false_positive_share(predicted: np.ndarray, is_free: np.ndarray) -> float:
    """Share of defect-free images (``is_free``) with any predicted defect pixel; ``predicted`` (N, ...) bool."""
    predicted, is_free = np.asarray(predicted, bool), np.asarray(is_free, bool)
    if not is_free.any():
        return float("nan")
    flagged = predicted.reshape(len(predicted), -1).any(1)
    return float(flagged[is_free].mean())


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(truth, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def classification_scores(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, object]:
    """Macro F1 and balanced accuracy over the classes present in ``truth``; per-class F1 and recall.

    A class never predicted has precision 0 (so F1 0); classes absent from ``truth`` are left out
    of both means (and reported as NaN).
    """
    matrix = confusion_matrix(truth, predicted, num_classes).astype(np.float64)
    tp = np.diag(matrix)
    support, predicted_count = matrix.sum(1), matrix.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted_count > 0, tp / predicted_count, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    f1 = np.where(present, f1, np.nan)
    return {
        "macro_f1": float(np.nanmean(f1[present])),
        "balanced_accuracy": float(np.nanmean(recall[present])),
        "accuracy": float(tp.sum() / max(matrix.sum(), 1)),
        "f1": f1,
        "recall": recall,
    }


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (bool) samples; ties count half."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs positive and negative samples")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # average rank of each distinct value (1-based), so ties share their mean rank
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) ignoring NaN."""
    array = np.asarray([v for v in values if v is not None and not np.isnan(v)], np.float64)
    if array.size == 0:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0
