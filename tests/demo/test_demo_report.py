"""`lait report`: a self-contained HTML page, checked in headless Chromium (no console errors, screenshot)."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import schemas
from demo import planted, report
from demo.site import build_site
from demo_runfolder import make_run
from tests.inprocess import lait_here

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECTION_IDS = [key for key, _, _ in report.SECTIONS]


def _lait(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "lait", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def chromium_render(page, tmp_path, name):
    """Load ``page`` in headless Chromium; return (console lines, screenshot path)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium) or install it yourself")
    shot = tmp_path / f"{name}.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / ('ud-' + name)}",
           "--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1280,2400",
           f"--screenshot={shot}", f"file://{page}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Chromium logs every console message (errors, CSP violations, uncaught exceptions) as CONSOLE lines.
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return console, shot


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    site = build_site(seed=7, scenes=30)
    make_run(run_dir, site)
    planted.write_planted(str(run_dir), site.ledger)
    with open(run_dir / "relevance_eval.json", "w") as f:
        json.dump({"auc": 0.97, "true_kept": 0.96, "mismatched_removed": 0.85}, f)
    lait_here("report", str(run_dir))  # cli.main in this process, as `python -m lait report` runs it: exit status 0
    return run_dir


def test_report_is_self_contained_and_complete(full_run):
    text = (full_run / "report.html").read_text()
    for key in SECTION_IDS:
        assert f'<section id="{key}">' in text
    # Nothing is loaded from anywhere: every src/href is a data: URI, and the CSP forbids the rest.
    assert re.findall(r'(?:src|href)\s*=\s*"(?!data:)', text) == []
    assert "<script" not in text and "default-src 'none'" in text
    assert text.count("data:image/png;base64,") >= 3  # funnel, distributions, losses
    assert text.count("data:image/jpeg;base64,") >= 10  # sample and box thumbnails
    assert text.count('class="missing"') == 1 and "No demo.json" in text  # every input but the demo's own log
    assert "46.3x" in text  # image R@1 0.31 against chance 0.0067
    assert "The books balance." in text and "lang_not_target" in text and "mismatched_removed" in text


def test_report_in_headless_chromium(full_run, tmp_path):
    console, shot = chromium_render(full_run / "report.html", tmp_path, "report")
    assert console == []
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2400, 1280)
    # Charts and thumbnails rendered: far more colours than a blank or text-only page.
    assert len(np.unique(image.reshape(-1, 3)[::7], axis=0)) > 500
    shutil.copy(shot, full_run / "report-screenshot.png")


def test_console_check_catches_errors(tmp_path):
    # The same check on a page with a script error and an external image must report both.
    bad = tmp_path / "bad.html"
    bad.write_text(f'<!doctype html><html><head><meta http-equiv="Content-Security-Policy" content="{report.CSP}">'
                   '</head><body><img src="http://127.0.0.1:9/x.png"><p>x</p></body></html>')
    console, _ = chromium_render(bad, tmp_path, "bad")
    assert any("Content Security Policy" in line for line in console)


def test_missing_inputs_are_said_plainly(tmp_path):
    run_dir = tmp_path / "partial"
    (run_dir / "crawl").mkdir(parents=True)
    with open(run_dir / "crawl" / "stats.json", "w") as f:
        json.dump({"stage": "crawl", "in": 3, "kept": 2, "rejected": 1, "rejected_by_reason": {"image_too_small": 1}}, f)
    text = report.build_report(str(run_dir))
    assert text.count('class="missing"') >= 7
    assert "No kept pairs" in text and "No training logs" in text and "No eval.json" in text
    assert "do NOT balance" in text  # stats say 2 kept, but no candidates dataset exists
    assert _lait("report", str(tmp_path / "absent")).returncode == 2


def test_captions_are_escaped(tmp_path):
    evil = '<script>alert("x")</script><img src=http://127.0.0.1:9/>'
    rows = [{"pair_id": "p", "candidate_id": "c", "image_id": "i", "caption": evil, "image_bytes": b"not an image"}]
    schemas.write_table(schemas.to_table(rows, "pairs"), str(tmp_path / "filter" / "pairs" / "part-00000.parquet"))
    text = report.build_report(str(tmp_path))
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "undecodable" in text  # bad image bytes become a placeholder, not a crash


def test_loss_logs_long_and_wide(tmp_path):
    train = tmp_path / "train" / "logs"
    train.mkdir(parents=True)
    # Wide: one column per task (the trainer's own layout), with an empty cell and a non-loss column.
    (train / "stage1.csv").write_text("step,lr,loss,mlm,itm,samples_per_s,elapsed_s\n"
                                      "0,0.001,3.0,2.0,1.0,50,1.0\n10,0.001,2.0,1.5,,55,2.0\nsummary,,,,,,\n")
    (tmp_path / "train" / "long.csv").write_text("stage,step,task,loss\nfinetune,0,itm,0.7\nfinetune,5,itm,0.5\n")
    rows = report._loss_rows(report.RunData(str(tmp_path)))
    got = {(r["stage"], r["step"], r["task"]): r["loss"] for r in rows}
    assert got == {("stage1", 0.0, "total"): 3.0, ("stage1", 0.0, "mlm"): 2.0, ("stage1", 0.0, "itm"): 1.0,
                   ("stage1", 10.0, "total"): 2.0, ("stage1", 10.0, "mlm"): 1.5,
                   ("finetune", 0.0, "itm"): 0.7, ("finetune", 5.0, "itm"): 0.5}
    assert "data:image/png;base64," in report.section_losses(report.RunData(str(tmp_path)))


def test_class_names_from_either_classes_json_layout():
    assert report.class_names(["circle", "ring"]) == ["circle", "ring"]
    assert report.class_names({"detector": "demo", "class_names": ["circle", "ring"]}) == ["circle", "ring"]
    assert report.class_names({"detector": "demo"}) is None and report.class_names(None) is None


def test_planted_counts_and_every_json_value_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    (tmp_path / "planted.json").write_text(json.dumps({
        "categories": {evil: {"planted": evil, "caught": [evil], "recall": evil, "precision": 1.0,
                              "caught_by": {evil: evil}}},
        "clean": {"kept": evil, "items": evil}}))
    (tmp_path / "relevance_eval.json").write_text(json.dumps({evil: evil, "auc": 0.9}))
    (tmp_path / "eval.json").write_text(json.dumps({"image_retrieval": {"R@1": evil, "chance_R@1": evil}}))
    text = report.build_report(str(tmp_path))
    assert "<script" not in text and "&lt;script&gt;" in text


def test_report_out_that_is_a_folder_or_unwritable_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        report.write_report(str(run_dir), str(folder))
    assert not os.path.exists(str(folder) + ".tmp")
    result = _lait("report", str(run_dir), "--out", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "is a folder" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a parent that is a file: the write fails with an OSError
    result = _lait("report", str(run_dir), "--out", str(blocker / "sub" / "r.html"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "lait report: error" in result.stderr
    readonly = tmp_path / "ro"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    try:
        if not os.access(readonly, os.W_OK):  # (root writes anywhere)
            with pytest.raises(OSError):
                report.write_report(str(run_dir), str(readonly / "r.html"))
            assert os.listdir(readonly) == []
    finally:
        os.chmod(readonly, 0o700)


def test_a_section_on_a_bad_dataset_logs_one_line(tmp_path, caplog):
    """Each section touching a damaged dataset logged a full traceback; now one warning line (the traceback
    with `lait -v report`)."""
    import logging

    make_run(tmp_path, build_site(seed=3, scenes=12), with_training=False)
    (tmp_path / "filter" / "pairs" / "part-00000.parquet").write_bytes(b"not parquet at all")
    caplog.set_level(logging.WARNING, logger="demo.report")
    text = report.build_report(str(tmp_path))
    failed = [r for r in caplog.records if "could not be drawn" in r.getMessage()]
    assert failed and all(not r.exc_info and "\n" not in r.getMessage() for r in failed)
    assert "This section could not be drawn: SchemaMismatchError" in text
    caplog.clear()
    caplog.set_level(logging.INFO, logger="demo.report")  # what `lait -v` sets
    report.build_report(str(tmp_path))
    assert all(r.exc_info for r in caplog.records if "could not be drawn" in r.getMessage())
    proc = _lait("report", str(tmp_path))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "could not be drawn" in proc.stderr


def test_samples_read_image_bytes_of_the_shown_rows_only(tmp_path, monkeypatch):
    """The samples read every kept pair's image bytes to show 18 (memory grew with the run)."""
    make_run(tmp_path, build_site(seed=5, scenes=60), with_training=False)
    run = report.RunData(str(tmp_path))
    read, fetched = [], []
    table, image_bytes = report.RunData.table, report.RunData.image_bytes
    monkeypatch.setattr(report.RunData, "table", lambda self, rel, kind, columns, *more, **named:
                        read.append((rel, tuple(columns))) or table(self, rel, kind, columns, *more, **named))
    monkeypatch.setattr(report.RunData, "image_bytes", lambda self, ids: fetched.append(list(ids)) or image_bytes(self, ids))
    text = report.section_samples(run, n=12)
    assert not [r for r in read if "image_bytes" in r[1]], read
    assert fetched and all(len(ids) <= 12 for ids in fetched)
    kept, rejected = text.split("<h3>Rejected</h3>")
    assert kept.count("data:image/jpeg;base64,") == 12
    # round-robin: every reason of the run shows, filter rejects with their image (the boilerplate ones
    # through their candidate id), the crawl's without (it kept no bytes of them)
    on_disk = {f"{r['stage']}/{r['reason']}" for stage in ("crawl", "filter")
               for r in schemas.read_table(str(tmp_path / stage / "rejected"), "rejected").to_pylist()}
    assert set(re.findall(r'class="reason">([^<]+)<', rejected)) == on_disk
    assert rejected.count("data:image/jpeg;base64,") == sum(1 for r in on_disk if r.startswith("filter/"))


class _CaptionsOnly:
    """A RunData stand-in with filter/pairs and filter/rejected captions only (what the caption-length chart reads)."""

    stats: dict = {}
    own_stage = None  # not the import layout

    def __init__(self, kept, rejected):
        import pyarrow as pa

        self.tables = {"filter/pairs": pa.table({"caption": kept}), "filter/rejected": pa.table({"caption": rejected})}

    def table(self, rel, kind, columns, where=None):
        table = self.tables.get(rel)
        return None if table is None else table.select([c for c in columns if c in table.column_names])


def test_caption_length_bins_stay_few_for_a_huge_caption(monkeypatch):
    """One bin per word count up to the longest caption: one 40,000-word alt text drew 40,000 bins (87 s, 1 GB)."""
    import time

    # Normal captions: one bin per word count, as before.
    assert report.length_bins([3, 9, 12]) == (list(range(0, 14)), None)
    assert report.length_bins([100]) == (list(range(0, 102)), None)
    # An outlier: one bin per word up to the 99th percentile, then one overflow bin for the longer ones.
    edges, over = report.length_bins([8, 9, 9, 10, 12, 40_000])
    assert (edges, over) == (list(range(0, 15)), 13)  # 0..12 one per word, then [13, 14): 13 words and more
    # Many long captions: at most MAX_LENGTH_BINS equal bins of whole numbers, and the overflow bin.
    for values in (list(range(1, 300)), [5] * 1000 + [101], [150] * 10, [10**6] * 200 + [10**7]):
        edges, over = report.length_bins(values)
        assert len(edges) - 1 <= report.MAX_LENGTH_BINS + 1 and edges == sorted(set(edges))
        assert all(isinstance(e, int) for e in edges) and edges[0] == 0
        if over is None:
            assert max(values) < edges[-1]
        else:
            assert edges[-2] == over <= max(values) and any(v < over for v in values)

    hist_bins = []
    real_hist = report._plt().Axes.hist
    monkeypatch.setattr(report._plt().Axes, "hist", lambda self, x, bins=None, **kw:
                        hist_bins.append(list(bins)) or real_hist(self, x, bins=bins, **kw))
    kept = [f"a small red square number {i}" for i in range(50)]
    start = time.monotonic()
    text = report.section_distributions(_CaptionsOnly(kept, ["spam " * 40_000]))
    assert time.monotonic() - start < 20
    assert hist_bins == [list(range(0, 9))]  # 6 words: bins 0..6, and the overflow bin [7, 8) for the longer one
    assert "data:image/png;base64," in text
    assert "the last bin (≥7 words) holds the 1 longest caption, up to 40,000 words" in text
    hist_bins.clear()
    text = report.section_distributions(_CaptionsOnly(kept, ["a b c d e f g h i j k l m n o"]))
    assert hist_bins == [list(range(0, 17))] and "the last bin" not in text  # up to 100 words: one bin per word
