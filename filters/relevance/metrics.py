"""Ranking and threshold metrics of relevance scores (numpy only)."""
from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (Mann-Whitney, ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + e - 1) + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def youden_threshold(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """The cut that maximises kept positives minus kept negatives (Youden's J).

    Label noise among the positives (mismatches crawled as pairs) scales J without moving its
    maximum, which is why this rule suits weak supervision.
    """
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))
    neg = np.sort(np.asarray(neg_scores, dtype=np.float64))
    candidates = np.unique(np.concatenate([pos, neg]))
    tpr = 1.0 - np.searchsorted(pos, candidates, side="left") / len(pos)
    fpr = 1.0 - np.searchsorted(neg, candidates, side="left") / len(neg)
    best = int(np.argmax(tpr - fpr))
    # cut halfway to the next lower score, so a small shift in numbers does not flip the border pair
    lower = candidates[best - 1] if best > 0 else candidates[best] - 1e-3
    return float(0.5 * (candidates[best] + lower))


def mismatch_report(scores: np.ndarray, is_match: np.ndarray, threshold: float) -> dict:
    """AUC, and precision/recall of mismatch detection when pairs below ``threshold`` are removed."""
    scores = np.asarray(scores, dtype=np.float64)
    is_match = np.asarray(is_match, dtype=bool)
    removed = scores < threshold
    mismatched = ~is_match
    true_removed = int((removed & mismatched).sum())
    precision = true_removed / int(removed.sum()) if removed.any() else float("nan")
    recall = true_removed / int(mismatched.sum()) if mismatched.any() else float("nan")
    return {
        "pairs": int(len(scores)),
        "matches": int(is_match.sum()),
        "mismatches": int(mismatched.sum()),
        "threshold": float(threshold),
        "auc": roc_auc(scores, is_match),
        "mismatch_precision": precision,
        "mismatch_recall": recall,
        "true_kept": float((~removed & is_match).sum() / is_match.sum()) if is_match.any() else float("nan"),
        "mismatched_removed": recall,
    }
