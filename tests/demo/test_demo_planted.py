"""Planted-noise precision and recall on a hand-made run folder with known mistakes."""
import json
import os

import pytest

from demo import planted
from demo.site import CATEGORIES, build_site
from demo_runfolder import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    site = build_site(seed=5, scenes=40)
    run_dir = tmp_path_factory.mktemp("run")
    make_run(run_dir, site, with_training=False)
    return site, str(run_dir)


def test_recall_and_precision_per_category(run):
    site, run_dir = run
    report = planted.write_planted(run_dir, site.ledger)
    assert json.load(open(f"{run_dir}/planted.json")) == report
    counts = site.counts()
    cats = report["categories"]
    assert set(cats) == set(CATEGORIES)
    m = counts["mismatch"]
    # One mismatch was kept (a recall miss); one clean pair was rejected as low_relevance (a false catch).
    assert cats["mismatch"]["caught"] == m - 1 and cats["mismatch"]["recall"] == round((m - 1) / m, 4)
    assert cats["mismatch"]["attributed"] == m and cats["mismatch"]["precision"] == round((m - 1) / m, 4)
    assert cats["mismatch"]["attributed_from"] == {"mismatch": m - 1, "clean": 1}
    # low_relevance also serves reused_caption: mismatches caught by it count as right catches there,
    # the clean pair as a wrong one; the strict figure counts only reused_caption's own items.
    r = counts["reused_caption"]
    assert cats["reused_caption"]["attributed"] == r + m
    assert cats["reused_caption"]["precision"] == round((r + m - 1) / (r + m), 4)
    assert cats["reused_caption"]["precision_strict"] == round(r / (r + m), 4)
    # Boilerplate rejects carry only a candidate id; they are joined back to their page and image.
    assert cats["boilerplate"]["recall"] == 1.0 and cats["boilerplate"]["precision"] == 1.0
    assert cats["boilerplate"]["caught_by"] == {"filter/caption_boilerplate": counts["boilerplate"]}
    # Of the reused image's copies one may survive: all others caught is full recall.
    assert cats["reused_image"]["caught"] == counts["reused_image"] - 1 and cats["reused_image"]["recall"] == 1.0
    # Never-collected categories: caught as not_collected, attributed to their own category.
    for cat in ("decorative", "robots_disallowed"):
        assert cats[cat]["recall"] == 1.0 and cats[cat]["precision"] == 1.0
        assert cats[cat]["caught_by"] == {"not_collected": counts[cat]}
    assert cats["opt_out"]["recall"] == 1.0
    assert cats["opt_out"]["caught_by"]["crawl/opt_out_x_robots_tag"] >= 1
    for cat in ("non_english", "tiny_icon", "banner", "corrupt"):
        assert (cats[cat]["recall"], cats[cat]["precision"]) == (1.0, 1.0), cat
    assert report["clean"]["kept"] == counts["clean"] - 1
    assert report["clean"]["lost_by"] == {"filter/low_relevance": 1}
    assert report["summary"]["min_recall"] == cats["mismatch"]["recall"]
    assert report["summary"]["all_at_least_0_9"] is (cats["mismatch"]["recall"] >= 0.9)


def test_a_write_stopped_midway_leaves_the_earlier_planted_json_whole(run, tmp_path):
    """write_planted wrote planted.json in place: a stop midway (here, a stage named by a path whose text fails as
    the JSON is written) left half a JSON file in place of the earlier one."""

    class Stage:  # the filter stage's folder to the file system, an error as text
        def __fspath__(self):
            return "filter"

        def __str__(self):
            raise RuntimeError("stopped midway")

    site, run_dir = run
    out = tmp_path / "planted.json"
    out.write_text('{"earlier": true}')
    with pytest.raises(RuntimeError, match="stopped midway"):
        planted.write_planted(run_dir, site.ledger, str(out), stages=("crawl", Stage()))
    assert json.loads(out.read_text()) == {"earlier": True} and os.listdir(tmp_path) == ["planted.json"]
    report = planted.write_planted(run_dir, site.ledger, str(out))
    assert json.loads(out.read_text()) == report and os.listdir(tmp_path) == ["planted.json"]


def test_a_lost_clean_item_counts_against_never_collected_categories(run, tmp_path):
    site, run_dir = run
    ledger = [dict(i) for i in site.ledger]
    # An item the crawl never saw, though it should have: pretend the ledger holds one more clean image.
    ledger.append({"page": "/gallery/page-9999.html", "image": "/img/lost.jpg", "caption": "a red circle",
                   "category": "clean", "text_source": "alt", "scene_id": None, "detail": None, "page_lang": "en"})
    report = planted.evaluate(run_dir, ledger)
    d = site.counts()["decorative"]
    assert report["categories"]["decorative"]["precision"] == round(d / (d + 1), 4)
    assert report["clean"]["lost_by"]["not_collected"] == 1


def test_reason_matching_and_empty_run(tmp_path):
    assert planted.reason_matches("non_english", "filter/lang_not_target")
    assert planted.reason_matches("banner", "crawl/aspect_ratio_out_of_range")
    assert not planted.reason_matches("banner", "filter/lang_not_target")
    assert planted.reason_matches("robots_disallowed", "not_collected")
    assert not planted.reason_matches("mismatch", "not_collected")
    site = build_site(seed=1, scenes=10)
    report = planted.evaluate(str(tmp_path), site.ledger)  # nothing ran: everything "not collected"
    assert report["clean"]["kept"] == 0 and report["categories"]["mismatch"]["precision"] is None
    assert "mismatch" in report["summary"]["categories_without_attributed_rejects"]
    assert report["summary"]["all_at_least_0_9"] is False
    assert "mismatch" in planted.format_table(report)


def test_native_cli(run, tmp_path):
    import subprocess
    import sys

    site, run_dir = run
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ledger = tmp_path / "ledger.json"
    ledger.write_text(site.ledger_json())
    env = {**os.environ, "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "demo.planted", run_dir, "--ledger", str(ledger), "--out", str(tmp_path / "p.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "mismatch" in proc.stdout and (tmp_path / "p.json").exists()
    proc = subprocess.run(cmd[:4] + ["--ledger", str(tmp_path / "absent.json")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "FileNotFoundError" in proc.stderr and "Traceback" not in proc.stderr
