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


def mismatch_report(scores: np.ndarray, is_match: np.ndarray, threshold: float,
                    scorable: np.ndarray | None = None) -> dict:
    """AUC, and precision/recall of mismatch detection when pairs below ``threshold`` are removed.

    A pair not ``scorable`` (its image could not be decoded) is removed whatever the threshold, as the
    filter removes it (``image_undecodable``), and counted as ``unscorable``; the AUC ranks it at its score
    (the scorer's minimum).
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_match = np.asarray(is_match, dtype=bool)
    scorable = np.ones(len(scores), dtype=bool) if scorable is None else np.asarray(scorable, dtype=bool)
    removed = (scores < threshold) | ~scorable
    mismatched = ~is_match
    true_removed = int((removed & mismatched).sum())
    precision = true_removed / int(removed.sum()) if removed.any() else float("nan")
    recall = true_removed / int(mismatched.sum()) if mismatched.any() else float("nan")
    return {
        "pairs": int(len(scores)),
        "matches": int(is_match.sum()),
        "mismatches": int(mismatched.sum()),
        "unscorable": int((~scorable).sum()),
        "threshold": float(threshold),
        "auc": roc_auc(scores, is_match),
        "mismatch_precision": precision,
        "mismatch_recall": recall,
        "true_kept": float((~removed & is_match).sum() / is_match.sum()) if is_match.any() else float("nan"),
        "mismatched_removed": recall,
    }


def noise_rate(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Estimated share of mismatches among crawled "positives", from their scores and known negatives.

    Below the negatives' median score, almost every crawled pair is a mismatch; such pairs are half
    of all mismatches, so twice their share estimates the noise rate (slightly high, i.e. cautious).
    """
    pos = np.asarray(pos_scores, dtype=np.float64)
    median = float(np.median(neg_scores))
    return float(min(0.5, 2.0 * (pos < median).mean()))



def cost_threshold(pos_scores: np.ndarray, neg_scores: np.ndarray, mismatch_cost: float = 0.5) -> float:
    """The cut maximising true pairs kept minus ``mismatch_cost`` x mismatches kept.

    The crawled positives hold a share ``e`` of mismatches (``noise_rate``): their keep rate is
    (1 - e) x true-pair keep rate + e x mismatch keep rate, which is corrected for here. With
    ``mismatch_cost`` 1 this is Youden's J; below 1, losing a true pair weighs more than keeping a
    mismatch.
    """
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))
    neg = np.sort(np.asarray(neg_scores, dtype=np.float64))
    e = min(noise_rate(pos, neg), 0.45)
    candidates = np.unique(np.concatenate([pos, neg]))
    kept_pos = 1.0 - np.searchsorted(pos, candidates, side="left") / len(pos)
    kept_neg = 1.0 - np.searchsorted(neg, candidates, side="left") / len(neg)
    true_kept = (kept_pos - e * kept_neg) / (1.0 - e)
    best = int(np.argmax(true_kept - mismatch_cost * kept_neg))
    lower = candidates[best - 1] if best > 0 else candidates[best] - 1e-3
    return float(0.5 * (candidates[best] + lower))
