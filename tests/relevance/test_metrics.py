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


def test_an_unscorable_pair_counts_as_removed_whatever_the_threshold():
    """As the filter rejects it (image_undecodable), even at a cut of 0 where its minimum score would pass."""
    scores = np.array([0.9, 0.0, 0.8, 0.1])
    is_match = np.array([True, True, False, False])
    r = mismatch_report(scores, is_match, 0.0, scorable=np.array([True, False, True, True]))
    assert r["unscorable"] == 1 and r["true_kept"] == 0.5
    assert r["mismatch_precision"] == 0.0 and r["mismatched_removed"] == 0.0
    assert mismatch_report(scores, is_match, 0.0)["unscorable"] == 0


def test_eval_counts_undecodable_images_as_removed_and_reports_them(tmp_path, capsys):
    import json

    from lait import cli
    from tests.relevance.conftest import save_tiny_model, write_pairs
    from tests.relevance.scenes import make_pairs

    rows = make_pairs(2, seed=13, mismatch_rate=0.0)  # 8 true pairs
    for r in rows[:2]:
        r["image_bytes"] = b"not an image"
    labelled = write_pairs(rows, str(tmp_path / "lab"), labelled=True)
    model = save_tiny_model(str(tmp_path / "m"))
    assert cli.main(["relevance", "eval", "--model", model, "--input", labelled, "--threshold", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unscorable"] == 2 and report["true_kept"] == 6 / 8  # as `score --threshold 0` keeps 6
