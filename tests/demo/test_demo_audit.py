"""`lait audit`: balanced books pass; each kind of imbalance fails with a named check."""
import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from demo import audit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




def _cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "lait", "audit", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def _failed(result):
    return {(s["name"], c["check"]) for s in result["stages"] for c in s["checks"] if not c["ok"]}


def test_balanced_run_passes_every_check(good_run, tmp_path):
    # A stats.json that is not a funnel (a model's training figures) is not a stage.
    os.makedirs(os.path.join(good_run, "relevance_model"), exist_ok=True)
    with open(os.path.join(good_run, "relevance_model", "stats.json"), "w") as f:
        json.dump({"epochs": 3, "loss": 0.2}, f)
    result = audit.audit_run(good_run)
    assert [s["name"] for s in result["stages"]] == ["crawl", "filter", "features"]
    assert result["ok"], _failed(result)
    checks = {c["check"] for s in result["stages"] for c in s["checks"]}
    assert {"pairs_candidate_ids_upstream", "rejected_candidate_ids_upstream", "regions_image_ids_upstream",
            "in_equals_upstream_kept", "rejected_reasons_match"} <= checks
    proc = _cli(good_run, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True


def _edit_stats(run_dir, stage, **changes):
    path = os.path.join(run_dir, stage, "stats.json")
    stats = json.load(open(path))
    stats.update(changes)
    json.dump(stats, open(path, "w"))


def test_stats_that_do_not_add_up_fail(run_copy):
    stats = json.load(open(run_copy / "filter" / "stats.json"))
    _edit_stats(run_copy, "filter", **{"in": stats["in"] + 1})
    result = audit.audit_run(str(run_copy))
    assert not result["ok"]
    assert ("filter", "in_equals_kept_plus_rejected") in _failed(result)
    assert ("filter", "in_equals_upstream_kept") in _failed(result)
    proc = _cli(str(run_copy))
    assert proc.returncode == 1 and "NOT BALANCED" in proc.stdout and "in_equals_kept_plus_rejected" in proc.stdout


def test_rows_on_disk_must_match_stats(run_copy):
    # A rejected row vanished from disk (a lost record), while the stats still count it.
    path = str(run_copy / "filter" / "rejected")
    table = schemas.read_table(path, "rejected")
    shutil.rmtree(path)
    schemas.write_table(table.slice(1), os.path.join(path, "part-00000.parquet"), "rejected")
    failed = _failed(audit.audit_run(str(run_copy)))
    assert ("filter", "rejected_rows_match") in failed and ("filter", "rejected_reasons_match") in failed


def test_ids_downstream_must_exist_upstream(run_copy):
    regions = schemas.read_table(str(run_copy / "features" / "regions"), "regions")
    ids = regions.column("image_id").to_pylist()
    ids[0] = "f" * 64  # an image the filter never kept
    regions = regions.set_column(regions.schema.get_field_index("image_id"), regions.schema.field("image_id"), [ids])
    shutil.rmtree(run_copy / "features" / "regions")
    schemas.write_table(regions, str(run_copy / "features" / "regions" / "part-00000.parquet"), "regions")
    pairs = schemas.read_table(str(run_copy / "filter" / "pairs"), "pairs")
    cids = pairs.column("candidate_id").to_pylist()
    cids[1] = "not-a-candidate"
    cids[2] = cids[3]
    pids = pairs.column("pair_id").to_pylist()
    pids[4] = pids[5]
    pairs = pairs.set_column(pairs.schema.get_field_index("candidate_id"), pairs.schema.field("candidate_id"), [cids])
    pairs = pairs.set_column(pairs.schema.get_field_index("pair_id"), pairs.schema.field("pair_id"), [pids])
    shutil.rmtree(run_copy / "filter" / "pairs")
    schemas.write_table(pairs, str(run_copy / "filter" / "pairs" / "part-00000.parquet"), "pairs")
    result = audit.audit_run(str(run_copy))
    failed = _failed(result)
    assert ("features", "regions_image_ids_upstream") in failed
    assert ("filter", "pairs_candidate_ids_upstream") in failed and ("filter", "unique_pair_id") in failed
    assert ("crawl", "unique_candidate_id") not in failed
    text = audit.format_audit(result)
    assert "regions_image_ids_upstream: 1 missing in filter" in text


def test_missing_or_empty_run_folder(tmp_path):
    assert _cli(str(tmp_path / "absent")).returncode == 2
    assert _cli(str(tmp_path)).returncode == 2
    (tmp_path / "crawl").mkdir()
    (tmp_path / "crawl" / "stats.json").write_text("{not json")
    result = audit.audit_run(str(tmp_path))
    assert not result["ok"] and ("crawl", "stats_readable") in _failed(result)


def test_an_unreadable_dataset_is_a_failed_check(run_copy):
    (run_copy / "crawl" / "candidates" / "part-00000.parquet").write_bytes(b"not parquet at all")
    result = audit.audit_run(str(run_copy))
    assert ("crawl", "datasets_readable") in _failed(result)
    proc = _cli(str(run_copy))
    assert proc.returncode == 1 and "datasets_readable" in proc.stdout and "Traceback" not in proc.stderr


def _move_crawl_aside(run_copy):
    """The filter's real input moved to other/crawl; RUN/crawl (the convention) becomes a decoy missing a row."""
    shutil.copytree(run_copy / "crawl", run_copy / "other" / "crawl")
    path = str(run_copy / "crawl" / "candidates")
    table = schemas.read_table(path, "candidates")
    shutil.rmtree(path)
    schemas.write_table(table.slice(1), os.path.join(path, "part-00000.parquet"), "candidates")


def _filter_checks(result):
    stage = next(s for s in result["stages"] if s["name"] == "filter")
    return stage["upstream"], {c["check"] for c in stage["checks"] if not c["ok"]}


def test_audit_follows_the_input_the_filter_names(run_copy):
    _move_crawl_aside(run_copy)
    # the filter's own stats keep --input as typed under settings (before: only this, which the audit missed)
    _edit_stats(run_copy, "filter", settings={"input": str(run_copy / "other" / "crawl")})
    assert _filter_checks(audit.audit_run(str(run_copy))) == ("other/crawl", set())
    # and now name it at the top, relative to the run folder
    _edit_stats(run_copy, "filter", input="other/crawl", settings={"input": "/elsewhere/typed/crawl"})
    assert _filter_checks(audit.audit_run(str(run_copy))) == ("other/crawl", set())
    # a named input that is gone is a failed check, not lineage against whatever RUN/crawl holds
    _edit_stats(run_copy, "filter", input="gone/crawl")
    assert _filter_checks(audit.audit_run(str(run_copy))) == (None, {"upstream_found"})


def test_repeated_candidate_rows_are_counted_as_read(run_copy):
    # a crawl that wrote one candidate twice: the filter reads both rows and rejects the repeat
    path = str(run_copy / "crawl" / "candidates")
    table = schemas.read_table(path, "candidates")
    shutil.rmtree(path)
    schemas.write_table(pa.concat_tables([table, table.slice(0, 1)]), os.path.join(path, "part-00000.parquet"),
                        "candidates")
    first = table.slice(0, 1).to_pylist()[0]
    rejected = schemas.read_table(str(run_copy / "filter" / "rejected"), "rejected")
    extra = schemas.to_table([schemas.rejected_row("filter", "duplicate_candidate", "repeat",
                                                   candidate_id=first["candidate_id"])], "rejected")
    shutil.rmtree(run_copy / "filter" / "rejected")
    schemas.write_table(pa.concat_tables([rejected, extra]),
                        str(run_copy / "filter" / "rejected" / "part-00000.parquet"), "rejected")
    stats = json.load(open(run_copy / "filter" / "stats.json"))
    reasons = {**stats["rejected_by_reason"], "duplicate_candidate": 1}
    _edit_stats(run_copy, "filter", **{"in": stats["in"] + 1, "rejected": stats["rejected"] + 1,
                                       "rejected_by_reason": reasons})
    assert "in_equals_upstream_kept" not in _filter_checks(audit.audit_run(str(run_copy)))[1]


def test_invalid_utf8_in_a_dataset_is_not_a_crash(run_copy):
    path = str(run_copy / "crawl" / "candidates")
    table = schemas.read_table(path, "candidates")
    ids = [v.encode() for v in table.column("candidate_id").to_pylist()]
    ids[0] = b"c-\xc3"  # the filter rejects such a row as invalid_utf8, with the id decoded with U+FFFD
    table = table.set_column(0, table.schema.field(0), pa.array(ids, pa.binary()).view(pa.string()))
    pq.write_table(table, os.path.join(path, "part-00000.parquet"))
    result = audit.audit_run(str(run_copy))
    assert not any(check == "datasets_readable" for _, check in _failed(result))
    proc = _cli(str(run_copy))
    assert "Traceback" not in proc.stderr and "audit of" in proc.stdout


def test_an_import_is_audited_by_its_captions_not_its_pairs(tmp_path):
    """An import counts captions as kept; its pairs/ holds one row per image. Two captions of one image
    balanced in the stats but failed the audit, which counted pairs."""
    from PIL import Image

    from model.captions_import import CaptionRecord, import_captions

    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("one.png", "red"), ("two.png", "blue")):
        Image.new("RGB", (8, 6), colour).save(images / name)
    records = [CaptionRecord("r1", "one.png", "a red square", "train"),
               CaptionRecord("r2", "one.png", "a small red picture", "train"),
               CaptionRecord("r3", "two.png", "a blue square", "train")]
    stats = import_captions(records, str(images), str(tmp_path / "run" / "captions_import"))
    assert stats["kept"] == 3
    assert schemas.read_table(str(tmp_path / "run" / "captions_import" / "pairs"), "pairs").num_rows == 2
    assert (tmp_path / "run" / "captions_import" / "rejected").is_dir()  # empty: nothing was rejected
    report = audit.audit_stage(str(tmp_path / "run"), "captions_import")
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["ok"], failed
    assert any(c["check"] == "kept_rows_match" and "3 rows in captions" in c["detail"] for c in report["checks"])


def test_an_import_whose_pairs_are_gone_fails(tmp_path):
    """An import whose pairs/ was deleted (or lost rows) was BALANCED: the audit counted its captions only. Its pairs/
    must hold one row per image (``images`` in stats.json) and every kept caption's image."""
    from PIL import Image

    from model.captions_import import CaptionRecord, import_captions

    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("one.png", "red"), ("two.png", "blue")):
        Image.new("RGB", (8, 6), colour).save(images / name)
    records = [CaptionRecord("r1", "one.png", "a red square", "train"),
               CaptionRecord("r2", "two.png", "a blue square", "train")]
    import_captions(records, str(images), str(tmp_path / "D"), rows_per_shard=10)
    result = audit.audit_run(str(tmp_path / "D"))
    assert result["ok"], _failed(result)
    assert {"pairs_rows_match", "unique_pairs_image_id", "captions_image_ids_in_pairs"} <= {
        c["check"] for c in result["stages"][0]["checks"]}
    pairs = schemas.read_table(str(tmp_path / "D" / "pairs"), "pairs")
    _rewrite(tmp_path / "D" / "pairs", pairs.slice(1), "pairs")  # a row lost
    assert {check for _, check in _failed(audit.audit_run(str(tmp_path / "D")))} == {
        "pairs_rows_match", "captions_image_ids_in_pairs"}
    shutil.rmtree(tmp_path / "D" / "pairs")
    result = audit.audit_run(str(tmp_path / "D"))
    assert {check for _, check in _failed(result)} == {"pairs_rows_match", "captions_image_ids_in_pairs"}
    text = audit.format_audit(result)
    assert "NOT BALANCED" in text and "pairs_rows_match: 0 rows in no pairs/ (missing) vs images 2 in stats" in text


@pytest.mark.parametrize("stats", [[1, 2], None, "text", {"stage": ["filter"], "in": 0, "kept": 0, "rejected": 0,
                                                           "rejected_by_reason": {}}])
def test_stats_of_the_wrong_shape_fail_stats_readable(tmp_path, stats):
    (tmp_path / "filter").mkdir()
    (tmp_path / "filter" / "stats.json").write_text(json.dumps(stats))
    result = audit.audit_run(str(tmp_path))
    (stage,) = result["stages"]
    assert not result["ok"] and [c["check"] for c in stage["checks"]] == ["stats_readable"]
    cli = _cli(str(tmp_path))
    assert cli.returncode == 1 and "Traceback" not in cli.stderr and "stats_readable" in cli.stdout


def test_audit_out_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "filter").mkdir()
    (tmp_path / "filter" / "stats.json").write_text("[]")
    for out in (str(tmp_path / "missing" / "dir" / "a.json"), str(tmp_path)):
        result = _cli(str(tmp_path), "--out", out)
        assert result.returncode == 2 and "Traceback" not in result.stderr and "lait audit:" in result.stderr


def _tree(folder):
    return {os.path.join(root, name): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def test_audit_and_report_out_never_replace_the_runs_files(run_copy, capsys):
    """`lait audit RUN --out RUN/filter/stats.json` (and `lait report`'s --out) replaced a stage's books with the
    audit's JSON. Refused now, before anything is read: an --out inside a folder of the run, or over a file of the
    run that is not the command's own earlier output, or named as one the run's tools read; one directly in the run
    folder (new, or the earlier audit's / report's) is fine."""
    from demo import report

    run = str(run_copy)
    (run_copy / "eval.json").write_text('{"image_retrieval": {}}')  # lait train's
    before = _tree(run)
    for out, problem in ((f"{run}/filter/stats.json", f"it lies inside {run}/filter/, in the folder it audits"),
                         (f"{run}/filter/new.json", f"it lies inside {run}/filter/, in the folder it audits"),
                         (f"{run}/eval.json", f"it is {run}/eval.json, a file of the folder it audits, not an "
                                              f"earlier output of this command"),
                         (f"{run}/stats.json", f"{run}/stats.json is a name LAIT's tools read in the folder it "
                                               f"audits")):
        assert audit.main([run, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lait audit: --out {out}: {problem}") and err.count("\n") == 1, err
        with pytest.raises(ValueError, match=problem.replace("the folder it audits", "the run folder it reports on")):
            report.write_report(run, out)
    # a stage's folder given alone is audited beside the run's other stages: those are read too
    assert audit.main([f"{run}/filter", "--out", f"{run}/crawl/audit.json"]) == 2
    assert f"it lies inside {run}/crawl/, a stage folder of the run it audits" in capsys.readouterr().err
    assert _tree(run) == before
    # its own earlier output, directly in the run folder, is replaced
    assert audit.main([run, "--out", f"{run}/audit.json"]) == 0 and audit.main([run, "--out", f"{run}/audit.json"]) == 0
    assert report.write_report(run, f"{run}/audit.html") and report.write_report(run, f"{run}/audit.html")
    assert audit.main([f"{run}/filter", "--out", f"{run}/filter/audit.json"]) == 0
    assert {**before, **{p: v for p, v in _tree(run).items() if p not in before}} == _tree(run)


def test_audit_out_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    """--out was opened for writing (emptied) before the JSON was written: a failed write (a full disk,
    `ulimit -f 0`) left the previous audit 0 bytes long."""
    (tmp_path / "filter").mkdir()
    (tmp_path / "filter" / "stats.json").write_text("[]")
    out = tmp_path / "audit.json"
    assert audit.main([str(tmp_path), "--out", str(out)]) == 1
    before = out.read_text()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    assert audit.main([str(tmp_path), "--out", str(out), "--json"]) == 2
    assert "lait audit: cannot write --out" in capsys.readouterr().err
    assert out.read_text() == before and sorted(os.listdir(tmp_path)) == ["audit.json", "filter"]


def _rewrite(path, table, kind):
    shutil.rmtree(path, ignore_errors=True)
    schemas.write_table(table, os.path.join(str(path), "part-00000.parquet"), kind)


def _demo_folders(run_dir):
    """What a demo run holds besides its stages: none of it is a stage (the held-out split is a pairs/ and
    captions/ folder without stats.json, like a stage killed early, but no rejected/)."""
    pairs = schemas.read_table(str(run_dir / "filter" / "pairs"), "pairs").slice(0, 3)
    _rewrite(run_dir / "test" / "pairs", pairs, "pairs")
    captions = schemas.to_table([{"caption_id": f"k{i}", "image_id": i, "caption": "a red circle", "split": "test"}
                                 for i in pairs.column("image_id").to_pylist()], "captions")
    _rewrite(run_dir / "test" / "captions", captions, "captions")
    schemas.write_table(captions, str(run_dir / "captions" / "part-00000.parquet"))
    schemas.write_table(pairs, str(run_dir / "relevance_labelled" / "part-00000.parquet"))
    for folder, name in (("site", "ledger.json"), ("detector", "demo_detector.json"), ("train", "summary.json"),
                         ("relevance_model", "config.json")):
        os.makedirs(run_dir / folder, exist_ok=True)
        (run_dir / folder / name).write_text("{}")


def test_a_stage_without_stats_json_fails(run_copy):
    """A stage killed before writing its books (or a --part features run not finished) was skipped: BALANCED."""
    _demo_folders(run_copy)
    result = audit.audit_run(str(run_copy))
    assert [s["name"] for s in result["stages"]] == ["crawl", "filter", "features"] and result["ok"], _failed(result)
    os.remove(run_copy / "features" / "stats.json")
    (run_copy / "features" / "rejected").mkdir()  # lait features makes it first (make_run writes none)
    # a --part 0/2 run of test_features: regions/, rejected/ (empty) and run.json, no stats.json yet
    shutil.copytree(run_copy / "features" / "regions", run_copy / "test_features" / "regions")
    (run_copy / "test_features" / "rejected").mkdir()
    (run_copy / "test_features" / "run.json").write_text(json.dumps({"parts": 2}))
    result = audit.audit_run(str(run_copy))
    assert [s["name"] for s in result["stages"]] == ["crawl", "filter", "features", "test_features"]
    assert _failed(result) == {("features", "stats_readable"), ("test_features", "stats_readable")}
    proc = _cli(str(run_copy))
    assert proc.returncode == 1 and "no stats.json: the stage did not finish" in proc.stdout


def _relevance_stage(run_dir, fabricate=0, **stats):
    """RUN/relevance as `lait relevance score --input RUN/filter` writes it: two pairs rejected, the rest kept,
    ``fabricate`` of the kept ones replaced by pairs that exist nowhere upstream."""
    pairs = schemas.read_table(str(run_dir / "filter" / "pairs"), "pairs")
    kept, dropped = pairs.slice(2), pairs.slice(0, 2).to_pylist()
    if fabricate:
        fake = kept.slice(0, fabricate).to_pylist()
        for i, row in enumerate(fake):
            row.update(pair_id=f"fabricated-{i}", image_id=f"nonexistent-image-{i}")
        kept = pa.concat_tables([kept.slice(fabricate), schemas.to_table(fake, "pairs")])
    _rewrite(run_dir / "relevance" / "pairs", kept, "pairs")
    rejects = [schemas.rejected_row("relevance", "low_relevance", pair_id=r["pair_id"], image_id=r["image_id"],
                                    candidate_id=r["candidate_id"]) for r in dropped]
    _rewrite(run_dir / "relevance" / "rejected", schemas.to_table(rejects, "rejected"), "rejected")
    (run_dir / "relevance" / "stats.json").write_text(json.dumps(
        {"stage": "relevance", "in": pairs.num_rows, "kept": kept.num_rows, "rejected": 2,
         "rejected_by_reason": {"low_relevance": 2}, **stats}))


def test_a_pairs_to_pairs_stage_keeps_only_upstream_pairs(run_copy):
    _relevance_stage(run_copy, input="filter")
    result = audit.audit_run(str(run_copy))
    assert result["ok"], _failed(result)
    stage = next(s for s in result["stages"] if s["name"] == "relevance")
    assert {"pairs_pair_ids_upstream", "pairs_image_ids_upstream", "rejected_pair_ids_upstream"} <= \
        {c["check"] for c in stage["checks"]}
    _relevance_stage(run_copy, fabricate=3, input="filter")
    result = audit.audit_run(str(run_copy))
    assert {check for name, check in _failed(result) if name == "relevance"} == \
        {"pairs_pair_ids_upstream", "pairs_image_ids_upstream"}
    assert "pairs_pair_ids_upstream: 3 missing in filter (fabricated-0" in audit.format_audit(result)
    # with no input recorded, RUN/relevance reads RUN/filter (lait relevance score's layout), not RUN/crawl
    _relevance_stage(run_copy)
    stage = next(s for s in audit.audit_run(str(run_copy))["stages"] if s["name"] == "relevance")
    assert stage["upstream"] == "filter" and stage["ok"]


def test_features_of_another_input_without_a_recorded_input(run_copy):
    """A features stage named otherwise than features/test_features, with no input in its stats.json, was
    checked against RUN/filter (and failed); its input cannot be known, so lineage is skipped and said so."""
    regions = schemas.read_table(str(run_copy / "features" / "regions"), "regions")
    held_out = ["h" + i[1:] for i in regions.column("image_id").to_pylist()]  # images the filter never kept
    regions = regions.set_column(0, regions.schema.field(0), [held_out])
    _rewrite(run_copy / "features_heldout" / "regions", regions, "regions")
    (run_copy / "features_heldout" / "rejected").mkdir()
    n = regions.num_rows
    (run_copy / "features_heldout" / "stats.json").write_text(json.dumps(
        {"stage": "features", "in": n, "kept": n, "rejected": 0, "rejected_by_reason": {}}))
    result = audit.audit_run(str(run_copy))
    assert result["ok"], _failed(result)
    stage = next(s for s in result["stages"] if s["name"] == "features_heldout")
    assert stage["upstream"] is None and [c["check"] for c in stage["checks"] if c.get("note")] == ["lineage"]
    assert "- lineage: stats.json records no input" in audit.format_audit(result)
    # recorded (lait features now writes it), the input is followed: here the held-out pairs
    pairs = schemas.read_table(str(run_copy / "filter" / "pairs"), "pairs").slice(0, n)
    pairs = pairs.set_column(pairs.schema.get_field_index("image_id"), pairs.schema.field("image_id"), [held_out])
    _rewrite(run_copy / "heldout" / "pairs", pairs, "pairs")
    _edit_stats(run_copy, "features_heldout", input="heldout/pairs")
    stage = next(s for s in audit.audit_run(str(run_copy))["stages"] if s["name"] == "features_heldout")
    assert stage["upstream"] == "heldout" and stage["ok"] and not any(c.get("note") for c in stage["checks"])


def test_an_old_absolute_input_outside_a_copied_run_reads_the_copy(good_run, tmp_path):
    """Only settings.input (the absolute --input as typed) in a run copied elsewhere: the audit read the
    original folder; it now reads RUN/<name> in the copy, and flags an input outside the run otherwise."""
    original = shutil.copytree(good_run, tmp_path / "original")
    copy = shutil.copytree(good_run, tmp_path / "copy")
    _rewrite(original / "crawl" / "candidates",  # the original changed since the copy: its books no longer match
             schemas.read_table(str(original / "crawl" / "candidates"), "candidates").slice(3), "candidates")
    _edit_stats(copy, "filter", settings={"input": str(original / "crawl")})
    result = audit.audit_run(str(copy))
    assert result["ok"], _failed(result)
    assert _filter_checks(result)[0] == "crawl"
    assert "- upstream_in_run: settings.input" in audit.format_audit(result)
    shutil.rmtree(copy / "crawl")  # the copy lacks it: checked against the original, and flagged
    upstream, failed = _filter_checks(audit.audit_run(str(copy)))
    assert upstream == os.path.relpath(original / "crawl", copy) and "upstream_in_run" in failed


def test_a_stage_folder_given_alone_is_audited_as_that_stage(run_copy, tmp_path, capsys):
    """`lait filter --input CRAWL --output r5; lait audit r5`: r5 (a stats.json and rejected/, no stage
    subfolders) is audited as one stage, its input read from its stats.json, not refused as empty."""
    from lait import cli

    result = audit.audit_run(str(run_copy / "filter"))
    assert [s["name"] for s in result["stages"]] == ["filter"] and result["ok"], _failed(result)
    assert result["stages"][0]["upstream"] == "crawl"  # the pipeline's layout, beside it in the run folder
    assert "pairs_candidate_ids_upstream" in {c["check"] for c in result["stages"][0]["checks"]}
    # a filter that rejected every candidate: its folder holds a stats.json and rejected/ only
    r5 = tmp_path / "r5"
    ids = schemas.read_table(str(run_copy / "crawl" / "candidates"), "candidates").column("candidate_id").to_pylist()
    _rewrite(r5 / "rejected", schemas.to_table([schemas.rejected_row("filter", "image_too_small", candidate_id=i)
                                                for i in ids], "rejected"), "rejected")
    (r5 / "stats.json").write_text(json.dumps({"stage": "filter", "input": str(run_copy / "crawl"), "in": len(ids),
                                               "kept": 0, "rejected": len(ids),
                                               "rejected_by_reason": {"image_too_small": len(ids)}}))
    assert sorted(os.listdir(r5)) == ["rejected", "stats.json"]
    assert cli.main(["audit", str(r5)]) == 0
    out = capsys.readouterr().out
    assert "BALANCED" in out and "NOT BALANCED" not in out and "r5" in out
    assert "rejected_candidate_ids_upstream" in {c["check"] for c in audit.audit_run(str(r5))["stages"][0]["checks"]}
    _edit_stats(tmp_path, "r5", kept=1, **{"in": len(ids) + 1})  # books that do not balance still fail
    assert cli.main(["audit", str(r5)]) == 1
    assert "kept_rows_match" in capsys.readouterr().out
    assert cli.main(["audit", str(run_copy / "crawl")]) == 0
    assert "BALANCED" in capsys.readouterr().out


def test_a_null_reason_in_rejected_is_a_failed_check_not_a_crash(run_copy, capsys):
    from lait import cli

    path = run_copy / "filter" / "rejected"
    table = schemas.read_table(str(path), "rejected")
    reasons = table.column("reason").to_pylist()
    reasons[0] = None
    schema = pa.schema([f.with_nullable(True) for f in table.schema])  # as plain pyarrow writes it
    table = pa.Table.from_arrays([*table.columns[:1], pa.array(reasons), *table.columns[2:]], schema=schema)
    shutil.rmtree(path)
    os.makedirs(path)
    pq.write_table(table, str(path / "part-00000.parquet"))
    result = audit.audit_run(str(run_copy))
    assert {("filter", "rejected_rows_labelled"), ("filter", "rejected_reasons_match")} <= _failed(result)
    assert "(null): 1 rows vs 0 in stats" in audit.format_audit(result)
    assert cli.main(["audit", str(run_copy)]) == 1


def test_an_input_dataset_folder_named_parquet_is_read_as_the_dataset(run_copy):
    """`lait filter --input RUN/cands.parquet` (a Spark-style dataset folder: part files and _SUCCESS, no kind
    metadata): the audit cut the folder name as if a file, read the run folder, and failed a correct run."""
    table = schemas.read_table(str(run_copy / "crawl" / "candidates"), "candidates").replace_schema_metadata(None)
    spark = run_copy / "cands.parquet"
    spark.mkdir()
    pq.write_table(table, str(spark / "part-00000-abc.snappy.parquet"))
    (spark / "_SUCCESS").write_text("")
    shutil.rmtree(run_copy / "crawl")
    _edit_stats(run_copy, "filter", input="cands.parquet", settings={"input": str(spark)})
    result = audit.audit_run(str(run_copy))
    assert _filter_checks(result) == ("cands.parquet", set()) and result["ok"], _failed(result)
    assert {"rejected_candidate_ids_upstream", "pairs_candidate_ids_upstream"} <= \
        {c["check"] for s in result["stages"] for c in s["checks"]}
    # a dataset folder named otherwise than its kind, written by hand, likewise
    os.rename(spark, run_copy / "handmade")
    _edit_stats(run_copy, "filter", input="handmade")
    assert _filter_checks(audit.audit_run(str(run_copy))) == ("handmade", set())
