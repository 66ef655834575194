"""End-to-end runs of the filter stage on candidates written by the test: books, outputs, bad input, CLI."""
import json
import os
import pathlib
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import schemas
from filters.synthetic import candidate, make_candidates, make_image
from pipeline import filter as filter_stage

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _write_crawl(folder, rows, rows_per_shard=40):
    with schemas.ShardWriter(str(folder / "candidates"), "candidates", rows_per_shard=rows_per_shard,
                             row_group_size=16) as writer:
        writer.write_many(rows)
    return folder


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    rows = make_candidates(90, seed=3, distinct_images=60)
    # one image on three pages with different texts, and one caption on many images
    shared = make_image(999, 360, 300)
    rows += [candidate(shared, text, 1000 + i, page=200 + i) for i, text in
             enumerate(["a dog", "a small dog asleep in a basket by the fire", "dog in basket by fire"])]
    rows += [candidate(make_image(2000 + i, 320, 320), "Our product in stock", 1100 + i, page=300) for i in range(12)]
    return _write_crawl(tmp_path_factory.mktemp("crawl"), rows)


@pytest.fixture(scope="module")
def result(crawl, tmp_path_factory):
    out = tmp_path_factory.mktemp("filter")
    stats = filter_stage.run(["--input", str(crawl), "--output", str(out), "--runner", "DirectRunner",
                              "--max-images-per-caption", "10"])
    return out, stats


def test_books_balance_and_every_candidate_is_accounted_for(crawl, result):
    out, stats = result
    candidates = schemas.read_table(str(crawl / "candidates"), "candidates", columns=["candidate_id"])
    pairs = schemas.read_table(str(out / "pairs"), "pairs")
    rejected = schemas.read_table(str(out / "rejected"), "rejected")
    assert stats["stage"] == "filter"
    assert stats["in"] == candidates.num_rows == 105
    assert stats["in"] == stats["kept"] + stats["rejected"]
    assert (stats["kept"], stats["rejected"]) == (pairs.num_rows, rejected.num_rows)
    ids_in = set(candidates.column("candidate_id").to_pylist())
    ids_out = pairs.column("candidate_id").to_pylist() + rejected.column("candidate_id").to_pylist()
    assert sorted(ids_out) == sorted(ids_in)  # each candidate leaves exactly once
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["rejected_by_reason"] == stats["rejected_by_reason"]
    counts = {}
    for reason in rejected.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    assert counts == stats["rejected_by_reason"]
    assert set(rejected.column("stage").to_pylist()) == {"filter"}


def test_outputs_hold_what_the_rules_promise(result):
    out, stats = result
    pairs = schemas.read_table(str(out / "pairs"), "pairs").to_pylist()
    assert pairs and all(p["lang"] == "en" and p["relevance"] is None for p in pairs)
    assert all(min(p["width"], p["height"]) >= 300 and len(p["phash"]) == 16 for p in pairs)
    assert len({p["image_id"] for p in pairs}) == len(pairs)  # one text per image
    reasons = stats["rejected_by_reason"]
    for reason in ("lang_not_target", "image_corrupt", "image_too_small", "image_has_better_text",
                   "caption_shared_by_many_images"):
        assert reasons.get(reason, 0) > 0, reason
    best = [p for p in pairs if p["page_url"].startswith("http://127.0.0.1/page/20")]
    assert [p["caption"] for p in best] == ["a small dog asleep in a basket by the fire"]
    assert not any(p["caption"] == "Our product in stock" for p in pairs)
    assert stats["funnel"][0]["in"] == stats["in"] and stats["funnel"][-1]["out"] == stats["kept"]
    assert "kept" in stats["funnel_table"] and "lang_not_target" in stats["funnel_table"]
    assert pq.ParquetFile(next((out / "pairs").glob("*.parquet"))).metadata.row_group(0).column(0).compression == "ZSTD"


def test_two_worker_multiprocessing_run_gives_the_same_pairs(crawl, result, tmp_path):
    out, stats = result
    stats2 = filter_stage.run(["--input", str(crawl / "candidates"), "--output", str(tmp_path), "--runner",
                               "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode",
                               "multi_processing"])
    assert stats2["rejected_by_reason"] == stats["rejected_by_reason"]
    ids = lambda folder: sorted(schemas.read_table(str(folder / "pairs"), "pairs").column("pair_id").to_pylist())
    assert ids(tmp_path) == ids(out)


def test_missing_column_is_a_clear_error(tmp_path):
    table = schemas.to_table([candidate(make_image(1), "a dog on the beach", 0)], "candidates").drop(["image_url"])
    (tmp_path / "candidates").mkdir()
    pq.write_table(table, tmp_path / "candidates" / "part-00000.parquet")
    with pytest.raises(schemas.SchemaMismatchError, match="image_url"):
        filter_stage.run(["--input", str(tmp_path), "--output", str(tmp_path / "out")])
    proc = subprocess.run([sys.executable, "-m", "pipeline.filter", "--input", str(tmp_path), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 2 and "missing column 'image_url'" in proc.stderr


def test_empty_input_and_missing_input(tmp_path):
    schemas.write_table(schemas.schema_for("candidates").empty_table(),
                        str(tmp_path / "crawl" / "candidates" / "part-00000.parquet"))
    stats = filter_stage.run(["--input", str(tmp_path / "crawl"), "--output", str(tmp_path / "out")])
    assert (stats["in"], stats["kept"], stats["rejected"]) == (0, 0, 0)
    assert schemas.count_rows(str(tmp_path / "out" / "pairs"), "pairs") == 0
    with pytest.raises(FileNotFoundError, match="no candidates"):
        filter_stage.run(["--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "out2")])


def test_existing_output_needs_overwrite(result, crawl):
    out, _ = result
    with pytest.raises(FileExistsError, match="--overwrite"):
        filter_stage.run(["--input", str(crawl), "--output", str(out)])


def test_lait_filter_and_explain_cli(crawl, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lait", "filter", "--input", str(crawl), "--output", str(tmp_path),
                           "--min-side", "200", "--langs", "en,de", "--phash-distance", "-1"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kept" in proc.stdout and "step" in proc.stdout
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["settings"]["langs"] == "en,de" and "near_duplicate_image" not in stats["rejected_by_reason"]
    pairs = schemas.read_table(str(tmp_path / "pairs"), "pairs", columns=["lang"]).column("lang").to_pylist()
    assert "de" in pairs  # German captions are now a target
    captions = tmp_path / "captions.txt"
    captions.write_text("a brown dog running on the beach\nein schwarzer Hund\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "lait", "explain", "--captions", str(captions), "--json"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = [json.loads(line) for line in proc.stdout.splitlines()]
    assert first["keep"] and first["lang"] == "en" and first["lang_score"] > 0.9
    assert not second["keep"] and second["filters"]["language"]["reason"] == "lang_not_target"
