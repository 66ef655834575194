"""`lait filter --relevance MODEL` end to end with a real (tiny) relevance model from `lait`'s own trainer.

The filter's relevance hook was built against a stand-in; this runs it with pipeline/relevance.py and
the default relevance model (trained once per test run), with neither --relevance-threshold nor --relevance-keep-rate, so the model's own
threshold (saved when it was trained) must apply.
"""
import json
import os
import subprocess
import sys

import schemas
from filters.relevance import default_threshold
from filters.synthetic import candidate
from tests.relevance.scenes import make_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_lait_filter_with_a_trained_relevance_model_uses_its_threshold(tmp_path, model_dir):
    model = model_dir  # the default recipe's model, trained on other pages (tests/relevance/shared_model.py)
    threshold = default_threshold(model)

    rows = make_pairs(15, mismatch_rate=0.3, seed=12)  # 60 pairs, about 18 of them mismatched
    cands = [candidate(r["image_bytes"], r["caption"], i, page=i // 4, width=r["width"], height=r["height"])
             for i, r in enumerate(rows)]
    truth = {c["candidate_id"]: r["is_match"] for c, r in zip(cands, rows)}
    schemas.write_table(schemas.to_table(cands, "candidates"),
                        str(tmp_path / "crawl" / "candidates" / "part-00000.parquet"), "candidates")

    out = tmp_path / "filter"
    proc = subprocess.run(
        [sys.executable, "-m", "lait", "filter", "--input", str(tmp_path / "crawl"), "--output", str(out),
         "--min-side", "64", "--relevance", model],
        env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    stats = json.loads((out / "stats.json").read_text())
    assert stats["in"] == len(cands) == stats["kept"] + stats["rejected"]
    assert stats["relevance"]["threshold"] == threshold  # the model's own, not a quantile
    assert stats["relevance"]["requested_keep_rate"] is None

    pairs = schemas.read_table(str(out / "pairs"), "pairs").to_pylist()
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert {p["candidate_id"] for p in pairs} | {r["candidate_id"] for r in rejected} == set(truth)
    assert all(p["relevance"] is not None and p["relevance"] >= threshold for p in pairs)
    low = [r for r in rejected if r["reason"] == "low_relevance"]
    assert low and all(r["stage"] == "relevance" for r in low)
    assert stats["rejected_by_reason"]["low_relevance"] == len(low)

    # The model separates: mismatches are removed far more often than true pairs.
    removed = {r["candidate_id"] for r in low}
    mismatches = [cid for cid, ok in truth.items() if not ok]
    matches = [cid for cid, ok in truth.items() if ok]
    mismatch_removed = sum(cid in removed for cid in mismatches) / len(mismatches)
    match_removed = sum(cid in removed for cid in matches) / len(matches)
    assert mismatch_removed >= 0.6 and match_removed <= 0.3, (mismatch_removed, match_removed)
