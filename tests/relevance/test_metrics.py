"""AUC, the noise-rate estimate, the threshold rule and the mismatch report."""
import itertools

import numpy as np
import pytest

from filters.relevance.metrics import cost_threshold, mismatch_report, noise_rate, roc_auc


def _pairwise_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))
    assert roc_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert np.isnan(roc_auc([0.1, 0.2], [True, True]))


def test_cost_threshold_separates_and_sees_through_label_noise():
    rng = np.random.default_rng(1)
    neg = rng.uniform(0.0, 0.4, 2000)
    clean = rng.uniform(0.6, 1.0, 850)
    noisy_pos = np.concatenate([clean, rng.uniform(0.0, 0.4, 150)])  # 15% mismatches among positives
    assert noise_rate(noisy_pos, neg) == pytest.approx(0.15, abs=0.03)
    t = cost_threshold(noisy_pos, neg, 1.0)
    assert 0.4 <= t <= 0.6


def test_cost_below_one_favours_keeping_true_pairs():
    rng = np.random.default_rng(2)
    neg, pos = rng.normal(0.3, 0.1, 3000), rng.normal(0.6, 0.1, 3000)  # overlapping
    assert cost_threshold(pos, neg, 0.5) < cost_threshold(pos, neg, 1.0) < cost_threshold(pos, neg, 2.0)


def test_mismatch_report_counts():
    scores = np.array([0.9, 0.8, 0.2, 0.7, 0.1])
    is_match = np.array([True, True, True, False, False])
    r = mismatch_report(scores, is_match, 0.5)
    # removed: 0.2 (a true pair) and 0.1 (a mismatch); kept mismatch: 0.7
    assert r["true_kept"] == pytest.approx(2 / 3)
    assert r["mismatched_removed"] == pytest.approx(0.5) == r["mismatch_recall"]
    assert r["mismatch_precision"] == pytest.approx(0.5)
    assert (r["pairs"], r["matches"], r["mismatches"]) == (5, 3, 2)
