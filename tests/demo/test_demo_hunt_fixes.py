"""Fixes to `lait demo`, the audit and the report found by a review: an --out holding other data, a relative
--train-config, an audit that let a filter lose candidates, the closing files of a run with no crawl, a caption
that is not UTF-8 in the report's samples, the colour of skipped steps, a --dry-run into an --out that cannot be
made. Run folders are made by hand (``demo_runfolder.make_run``), never by a full demo."""
import json
import os
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from demo import audit, report
from demo import run as demo_run
from demo.run import Demo, DemoConfig
from demo.site import build_site
from lait import cli




def _failed(result):
    return {(s["name"], c["check"]) for s in result["stages"] for c in s["checks"] if not c["ok"]}


# -- lait demo --out ------------------------------------------------------------------------------------------


def _user_folder(path):
    """A folder of the user's own that is no demo run: files under names the demo writes."""
    for rel, text in (("test/notes.txt", "precious"), ("crawl/stats.json", '{"in": 1, "kept": 1, "rejected": 0}'),
                      ("features/x.txt", "keep"), ("report.html", "<p>mine</p>")):
        os.makedirs(os.path.dirname(os.path.join(path, rel)) or path, exist_ok=True)
        with open(os.path.join(path, rel), "w") as f:
            f.write(text)
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)


def test_an_out_that_is_not_a_demo_run_is_refused_before_anything_is_touched(tmp_path, capsys):
    """`lait demo --out X` into a folder of the user's own removed its test/, crawl/, features/ and report.html
    (the names of the demo's outputs), exit 0."""
    out = tmp_path / "mine"
    before = _user_folder(out)
    for extra in ([], ["--dry-run"]):
        assert cli.main(["demo", "--out", str(out), "--scenes", "3", "--test-scenes", "2", "--stop-after", "site",
                         *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lait demo: error: --out {out} holds files and is not a lait demo run folder")
        assert err.count("\n") == 1 and "new --out" in err
    with pytest.raises(ValueError, match="is not a lait demo run folder"):
        Demo(DemoConfig(out=str(out), stop_after="site"), echo=lambda _: None).run()
    assert sorted(os.path.relpath(os.path.join(d, n), out) for d, _, names in os.walk(out) for n in names) == before
    assert (out / "test" / "notes.txt").read_text() == "precious"


def test_an_empty_folder_a_new_one_and_a_demo_run_are_taken(tmp_path):
    for out in (tmp_path / "new", tmp_path / "empty"):
        demo_run.check_config(DemoConfig(out=str(out), stop_after="site"))
    (tmp_path / "empty").mkdir()
    demo_run.check_config(DemoConfig(out=str(tmp_path / "empty"), stop_after="site"))
    # a run folder lait demo made: its demo.json (written when a run starts) ...
    made = tmp_path / "made"
    demo = Demo(DemoConfig(out=str(made)), echo=lambda _: None)
    os.makedirs(made / "crawl")
    demo.write_log()
    demo_run.check_config(DemoConfig(out=str(made), stop_after="site"))
    # ... or, its demo.json lost, the ledger its site step wrote
    (made / "demo.json").unlink()
    (made / "site").mkdir()
    (made / "site" / "ledger.json").write_text(build_site(seed=0, scenes=2).ledger_json())
    demo_run.check_config(DemoConfig(out=str(made), stop_after="site"))
    # a demo.json that is not one lait demo wrote does not make a folder a demo run
    (made / "site" / "ledger.json").unlink()
    (made / "demo.json").write_text(json.dumps({"name": "my demo", "version": 2}))
    with pytest.raises(ValueError, match="is not a lait demo run folder"):
        demo_run.check_config(DemoConfig(out=str(made), stop_after="site"))


def test_dry_run_refuses_an_out_that_cannot_be_made(tmp_path, capsys):
    """`--dry-run --out afile/sub` printed the plan, exit 0; the run itself then failed on it."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert cli.main(["demo", "--out", str(blocker / "sub"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lait demo: error: cannot make the run folder --out {blocker / 'sub'}")
    assert err.count("\n") == 1


# -- --train-config -------------------------------------------------------------------------------------------


def test_a_relative_train_config_is_read_from_where_the_user_gave_it(tmp_path, monkeypatch, capsys):
    """Checked from the user's folder at start-up, then given as typed to `lait train`, which runs in the
    repository: the train step failed minutes later, or read another file of that name there."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(DemoConfig().train_config, tmp_path / "mine.yaml")
    config = DemoConfig(out="r", train_config="mine.yaml")
    assert config.train_config == str(tmp_path / "mine.yaml")
    command = Demo(config, echo=lambda _: None).train_command()
    assert command[command.index("--config") + 1] == str(tmp_path / "mine.yaml")
    assert cli.main(["demo", "--out", "r", "--train-config", "mine.yaml", "--dry-run"]) == 0
    train = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("train "))
    assert f"--config {tmp_path / 'mine.yaml'} " in train


# -- the audit ------------------------------------------------------------------------------------------------


def _rewrite(path, table, kind):
    shutil.rmtree(path)
    schemas.write_table(table, os.path.join(path, "part-00000.parquet"), kind)


def test_a_filter_that_lost_candidates_does_not_balance(run_copy):
    """The filter dropped the candidates whose image another had (no rejected row) and counted `in` as the distinct
    images: `in` was accepted as either the rows or the images upstream kept, for every stage: BALANCED."""
    assert audit.audit_run(str(run_copy))["ok"]
    rejected = schemas.read_table(str(run_copy / "filter" / "rejected"), "rejected")
    keep = [r != "duplicate_image_not_best_text" for r in rejected.column("reason").to_pylist()]
    lost = keep.count(False)
    _rewrite(str(run_copy / "filter" / "rejected"), rejected.filter(pa.array(keep)), "rejected")
    stats = json.loads((run_copy / "filter" / "stats.json").read_text())
    del stats["rejected_by_reason"]["duplicate_image_not_best_text"]
    stats.update({"in": stats["in"] - lost, "rejected": stats["rejected"] - lost})
    (run_copy / "filter" / "stats.json").write_text(json.dumps(stats))
    assert stats["in"] == audit._images_read(str(run_copy / "crawl" / "candidates"), "candidates")  # the old escape
    result = audit.audit_run(str(run_copy))
    assert not result["ok"]
    failed = {check for name, check in _failed(result) if name == "filter"}
    assert failed == {"in_equals_upstream_kept", "upstream_ids_kept_or_rejected"}, failed
    assert f"{lost} of the candidate_ids crawl kept neither kept nor rejected" in audit.format_audit(result)


def test_a_candidate_lost_beside_another_rejected_twice_does_not_balance(run_copy):
    """Every count balanced and every id traced upstream: one candidate's rejected row replaced by a second copy of
    another's (same reason). Only the coverage of upstream's ids by the kept and rejected ones finds it."""
    path = str(run_copy / "filter" / "rejected")
    rejected = schemas.read_table(path, "rejected")
    reasons = rejected.column("reason").to_pylist()
    reason = next(r for r, n in Counter(reasons).items() if n >= 2)
    first, second = [i for i, r in enumerate(reasons) if r == reason][:2]
    rows = rejected.to_pylist()
    rows[first] = dict(rows[second])
    _rewrite(path, schemas.to_table(rows, "rejected"), "rejected")
    result = audit.audit_run(str(run_copy))
    assert _failed(result) == {("filter", "upstream_ids_kept_or_rejected")}
    text = audit.format_audit(result)
    assert "1 of the candidate_ids crawl kept neither kept nor rejected" in text
    assert "1 kept or rejected more often than crawl holds" in text


def test_the_features_stage_still_counts_images(run_copy):
    """A per-image stage reads each distinct image once: its `in` is the image count, and its ids cover them."""
    result = audit.audit_run(str(run_copy))
    features = next(s for s in result["stages"] if s["name"] == "features")
    checks = {c["check"]: c["ok"] for c in features["checks"]}
    assert checks["in_equals_upstream_kept"] and checks["upstream_ids_kept_or_rejected"]
    assert result["ok"], _failed(result)


# -- the closing files ----------------------------------------------------------------------------------------


def test_a_run_stopped_after_the_site_scores_and_audits_nothing(tmp_path):
    """`--stop-after site`: planted.json scored every planted item as not collected (min precision 0.068) and
    the summary said the books do NOT balance, while nothing had been crawled."""
    out = tmp_path / "r"
    demo = Demo(DemoConfig(out=str(out), scenes=3, test_scenes=2), echo=lambda _: None)
    demo.make_site()
    demo.server.stop()
    demo.server = None
    said = []
    demo.echo = said.append
    demo.finish()
    assert not (out / "planted.json").exists() and not said
    assert (out / "audit.json").exists() and (out / "report.html").exists()
    text = demo_run.summary(str(out), demo.steps, 1.0)
    assert "audit: nothing to audit yet" in text and "NOT balance" not in text
    assert "planted noise: not scored (nothing was crawled)" in text
    assert "NOTHING TO AUDIT" in audit.format_audit(audit.audit_run(str(out)))


# -- the report -----------------------------------------------------------------------------------------------


def _not_utf8(table):
    captions = [c.encode() for c in table.column("caption").to_pylist()]
    captions[0] = b"caf\xe9 \xff\xfe bad"
    index = table.schema.get_field_index("caption")
    return table.set_column(index, table.schema.field(index), pa.array(captions, pa.binary()).view(pa.string()))


@pytest.mark.parametrize("dataset", ["pairs", "rejected"])
def test_a_caption_that_is_not_utf8_does_not_blank_the_samples(run_copy, dataset):
    """One such caption (kept or rejected) made the whole Samples section "could not be drawn: UnicodeDecodeError"."""
    path = run_copy / "filter" / dataset
    file = next(p for p in path.iterdir() if p.suffix == ".parquet")
    pq.write_table(_not_utf8(pq.read_table(file)), file)
    html = report.section_samples(report.RunData(str(run_copy)))
    assert "caf\ufffd \ufffd\ufffd bad" in html
    assert "could not be drawn" not in report.build_report(str(run_copy))


def test_skipped_and_not_run_steps_are_not_shown_as_ok(tmp_path):
    steps = [{"name": n, "status": s, "seconds": 1.0, "detail": ""}
             for n, s in (("site", "ok"), ("crawl", "failed"), ("filter", "skipped"), ("eval", "not_run"))]
    (tmp_path / "demo.json").write_text(json.dumps({"status": "finished", "steps": steps}))
    html = report.section_steps(report.RunData(str(tmp_path)))
    assert "class='ok'>ok<" in html and "class='bad'>failed<" in html
    assert "class='muted'>skipped<" in html and "class='muted'>not_run<" in html


def test_a_demo_json_whose_status_is_not_text_still_draws_the_steps(run_copy):
    """section_steps looked a list-valued status up in a dict: "unhashable type", and the section was lost."""
    (run_copy / "demo.json").write_text(json.dumps({"status": ["finished"], "seconds": 3.0,
                                                    "steps": [{"name": "crawl", "status": "ok", "seconds": 1.0}]}))
    html = report.section_steps(report.RunData(str(run_copy)))
    assert "crawl" in html and "unhashable" not in html and "Total 3.0 s" in html
