"""Hostile input and bad options through the real filter stage (Beam's local runner): repeated and missing
ids, ids and sizes the crawler's columns get wrong, options that must fail before the output is touched,
outputs that overlap the input, and the tools (audit, inspect) on what the filter rejects."""
import hashlib
import io
import json
import logging
import os
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import schemas
from demo import audit
from filters.synthetic import candidate, make_image
from lait import cli
from pipeline import filter as filter_stage
from pipeline.outputs import RUN_MARKER, OutputExistsError
from tests.relevance.conftest import broken_models, save_tiny_model


def _cand(image, alt, index, **columns):
    row = candidate(image, alt, index, page=index)
    row.update(columns)
    return row


def _write(folder, rows, nullable=False):
    """A candidates file; ``nullable`` writes nulls where the contract forbids them (a careless writer)."""
    schema = schemas.candidates_schema()
    if nullable:
        schema = pa.schema([f.with_nullable(True) for f in schema])
    table = pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)
    path = folder / "candidates" / "part-00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return folder


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A run folder RUN/crawl (candidates with bad ids) and RUN/filter (the stage's output)."""
    run = tmp_path_factory.mktemp("run")
    x = make_image(71, 400, 400)
    x2 = io.BytesIO()
    Image.open(io.BytesIO(x)).save(x2, "JPEG", quality=70)  # x re-encoded: a near duplicate of x
    rows = [
        # one candidate_id on two rows, the second an unrelated image (ids written by another tool)
        _cand(x, "a dog on the beach", 0, candidate_id="dup"),
        _cand(make_image(72, 400, 400), "a red bicycle leaning against a brick wall", 1, candidate_id="dup"),
        _cand(x2.getvalue(), "a brown dog running along the sandy beach at sunset with the waves", 2,
              candidate_id="better"),
        # two different images claiming one (wrong) image_id
        _cand(make_image(23, 400, 400), "two children playing football in a park", 3, candidate_id="same-1",
              image_id="deadbeef"),
        _cand(make_image(24, 400, 400), "an old lighthouse on a rocky coast at night", 4, candidate_id="same-2",
              image_id="deadbeef"),
        # the crawler's size columns say 5000x10; the image is 400x400
        _cand(make_image(25, 400, 400), "fresh vegetables on a wooden kitchen table", 5, candidate_id="liar",
              width=5000, height=10),
        # ids the contract requires, missing
        _cand(make_image(31, 400, 400), "a cup of coffee next to a laptop", 6, candidate_id=None),
        _cand(make_image(32, 400, 400), "a cat sleeping on a sunny window sill", 7, candidate_id="no-page",
              page_url=None),
        _cand(make_image(33, 400, 400), "a small boat floating on a calm lake", 8, candidate_id="no-image-url",
              image_url=""),
        _cand(make_image(34, 400, 400), "snow covered mountains under a clear blue sky", 9,
              candidate_id="no-image-id", image_id=None),
        # the same candidate twice (a row repeated: crawl folders merged)
        _cand(make_image(35, 400, 400), "a green tractor working in a wide field", 10, candidate_id="twice"),
        _cand(make_image(35, 400, 400), "a green tractor working in a wide field", 10, candidate_id="twice"),
    ]
    _write(run / "crawl", rows, nullable=True)
    stats = filter_stage.run(["--input", str(run / "crawl"), "--output", str(run / "filter")])
    return run, stats


def _read(folder, kind):
    return schemas.read_table(str(folder), kind).to_pylist()


def test_repeated_and_missing_ids_are_counted_rejects(hostile):
    run, stats = hostile
    pairs, rejected = _read(run / "filter" / "pairs", "pairs"), _read(run / "filter" / "rejected", "rejected")
    assert stats["in"] == 12 and stats["in"] == stats["kept"] + stats["rejected"]
    reasons = {(r["candidate_id"], r["reason"]) for r in rejected}
    assert {(None, "missing_id"), ("no-page", "missing_id"), ("no-image-url", "missing_id")} <= reasons
    assert stats["rejected_by_reason"]["missing_id"] == 3
    assert stats["filters"]["input"]["reasons"] == {"missing_id": 3}
    # the repeated row: one pair, one duplicate_candidate
    assert [p["candidate_id"] for p in pairs].count("twice") == 1
    assert [r for r in rejected if r["candidate_id"] == "twice"] == [
        r for r in rejected if r["reason"] == "duplicate_candidate"]
    assert stats["rejected_by_reason"]["duplicate_candidate"] == 1
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    assert all(p["candidate_id"] for p in pairs)
    # one candidate_id on two images is two pairs with two ids: the dog falls to its better-captioned near
    # duplicate, and the unrelated bicycle is not hit by its twin's near-duplicate mark
    assert ("dup", "near_duplicate_image") in reasons and "better" in {p["candidate_id"] for p in pairs}
    assert [p["caption"] for p in pairs if p["candidate_id"] == "dup"] == ["a red bicycle leaning against a brick wall"]


def test_image_id_and_size_are_measured_from_the_bytes(hostile):
    run, _ = hostile
    pairs = {p["candidate_id"]: p for p in _read(run / "filter" / "pairs", "pairs")}
    assert {"same-1", "same-2", "liar", "no-image-id"} <= set(pairs)  # two images never share an id
    for pair in pairs.values():
        assert pair["image_id"] == hashlib.sha256(pair["image_bytes"]).hexdigest()
    assert (pairs["liar"]["width"], pairs["liar"]["height"]) == (400, 400)


def test_audit_of_the_hostile_run_balances(hostile):
    run, stats = hostile
    assert stats["input"] == "crawl"  # relative to the run folder: the audit finds it
    result = audit.audit_run(str(run))
    assert result["ok"], audit.format_audit(result)
    assert result["stages"][0]["upstream"] == "crawl"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A small crawl and a finished filter output beside it (a previous run's), one for the module: the tests
    below leave both as they are (most assert it), or change a copy."""
    root = tmp_path_factory.mktemp("finished")
    crawl = _write(root / "crawl", [_cand(make_image(40, 400, 400), "a brown dog running on the beach", 0)])
    out = root / "filter"
    filter_stage.run(["--input", str(crawl), "--output", str(out)])
    return crawl, out


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_bad_options_fail_before_the_output_is_touched(finished, tmp_path, capsys):
    crawl, out = finished
    before = _listing(out)
    models = broken_models(str(tmp_path / "models"))
    good = save_tiny_model(str(tmp_path / "models" / "tiny"))
    (tmp_path / "empty.txt").write_bytes(b"\xff\xfe not UTF-8")
    bad = [
        (["--relevance", models["no_model"]], "not a LAIT relevance model"),
        (["--relevance", models["bad_json"]], "not a readable JSON config"),
        (["--relevance", models["truncated_weights"]], "unreadable or mismatched weights"),
        (["--relevance", models["no_weights"]], "no weights"),
        (["--relevance", good, "--relevance-keep-rate", "1.5"], "--relevance-keep-rate must be in (0, 1]"),
        (["--relevance", good, "--relevance-keep-rate", "0.5", "--relevance-threshold", "0.2"], "not both"),
        (["--relevance-threshold", "0.2"], "--relevance-threshold needs --relevance MODEL"),
        # every relevance option: its value checked, and refused without --relevance rather than ignored
        (["--relevance-batch-size", "0"], "--relevance-batch-size must be 1 or more, got 0"),
        (["--relevance-device", "tpu"], "--relevance-device must be cpu or gpu, got 'tpu'"),
        (["--relevance-batch-size", "8"], "--relevance-batch-size needs --relevance MODEL"),
        (["--relevance-device", "cpu"], "--relevance-device needs --relevance MODEL"),
        (["--relevance-keep-rate", "0.5", "--relevance-device", "gpu"],
         "--relevance-keep-rate and --relevance-device need --relevance MODEL"),
        (["--vocab", str(tmp_path / "myvocab.txt")], "--vocab"),
        (["--vocab", str(tmp_path / "empty.txt")], "--vocab: cannot read"),
        (["--max-images-per-caption", "-1"], "--max-images-per-caption must be 0 or more"),
        (["--codec", "bogus"], "--codec: 'bogus'"),
        (["--formats", "JPEG,NOPE"], "--formats: 'NOPE'"),
        (["--langs", "english"], "--langs: 'english'"),
        (["--phash-distance", "64"], "--phash-distance"),
    ]
    for extra, message in bad:
        with pytest.raises((ValueError, FileNotFoundError)) as caught:
            filter_stage.run(["--input", str(crawl), "--output", str(out), "--overwrite", *extra])
        assert message in str(caught.value), (extra, caught.value)
        assert _listing(out) == before, extra  # the previous finished run is still there
        assert cli.main(["filter", "--input", str(crawl), "--output", str(out), "--overwrite", *extra]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith("error: ") and message in err[-1] and not any("Traceback" in e for e in err)
    assert _listing(out) == before


def test_relevance_options_at_their_default_values_still_need_relevance(finished, capsys):
    """Given without --relevance, a relevance option is refused at any value, the default one too (it used to
    be refused only when it differed from the parser's default, and else ignored)."""
    crawl, out = finished
    before = _listing(out)
    for extra, message in ((["--relevance-batch-size", "64"], "--relevance-batch-size needs --relevance MODEL"),
                           (["--relevance-device", "cpu", "--relevance-batch-size", "64"],
                            "--relevance-batch-size and --relevance-device need --relevance MODEL")):
        with pytest.raises(ValueError, match=f"^{message}$"):
            filter_stage.run(["--input", str(crawl), "--output", str(out), "--overwrite", *extra])
        assert cli.main(["filter", "--input", str(crawl), "--output", str(out), "--overwrite", *extra]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"error: {message}"
    assert _listing(out) == before


@pytest.mark.parametrize("rate", ["0.1", "0.5"])  # 0.5: the default value, given, is as ignored
def test_max_oov_rate_with_vocab_none_is_a_warning_and_the_run_goes_on(finished, tmp_path, caplog, rate):
    crawl, _ = finished
    with caplog.at_level(logging.WARNING, logger="pipeline.filter"):
        assert cli.main(["filter", "--input", str(crawl), "--output", str(tmp_path / "out"), "--vocab", "none",
                         "--max-oov-rate", rate]) == 0
    warned = [r.getMessage() for r in caplog.records if "--max-oov-rate" in r.getMessage()]
    assert warned == [f"--max-oov-rate {rate} is ignored: --vocab none turns the OOV check off"]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["kept"] == 1
    # stats.json records the values the run used: the defaults of the options left out, as before
    assert (stats["settings"]["max_oov_rate"], stats["settings"]["relevance_batch_size"]) == (float(rate), 64)
    if rate != "0.1":
        return  # the run below is the same for every rate: once is enough (a Beam run costs seconds)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.filter"):  # left out, it is not warned of
        assert cli.main(["filter", "--input", str(crawl), "--output", str(tmp_path / "out"), "--overwrite",
                         "--vocab", "none", "--", "--runner", "FnApiRunner"]) == 0
    assert not [r for r in caplog.records if "--max-oov-rate" in r.getMessage()]


def test_local_runner_options_with_a_remote_runner_are_refused(finished, capsys):
    """``--direct_num_workers`` and ``--direct_running_mode`` are read by the local runner only: given with a
    remote one, at any value, they are refused (``lait filter`` used to pass its defaults to every runner), and a
    Beam option given both before and after '--' is refused rather than the first ignored."""
    crawl, out = finished
    before = _listing(out)
    one = "applies to the local runner (DirectRunner) only, and {} would ignore it: leave it out"
    cases = [
        (["--direct_num_workers", "1", "--", "--runner", "DataflowRunner"],
         "--direct_num_workers " + one.format("DataflowRunner")),
        (["--runner", "DataflowRunner", "--direct_running_mode", "in_memory"],
         "--direct_running_mode " + one.format("DataflowRunner")),
        (["--", "--runner", "FlinkRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
         "--direct_num_workers and --direct_running_mode apply to the local runner (DirectRunner) only, and "
         "FlinkRunner would ignore them: leave them out"),
        (["--runner", "FnApiRunner", "--", "--runner", "DataflowRunner"],
         "--runner is given both before and after '--': give it once"),
        (["--direct_num_workers", "2", "--", "--direct_num_workers=4"],
         "--direct_num_workers is given both before and after '--': give it once"),
        # a runner Beam does not know: Beam's own error, not a guess at what it reads
        (["--runner", "NopeRunner", "--direct_num_workers", "2"],
         "Beam options: Unexpected pipeline runner: NopeRunner"),
    ]
    for extra, message in cases:
        assert cli.main(["filter", "--input", str(crawl), "--output", str(out), "--overwrite", *extra]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith(f"error: {message}"), extra
    with pytest.raises(ValueError, match=re.escape("--direct_num_workers " + one.format("DataflowRunner"))):
        filter_stage.run(["--input", str(crawl), "--output", str(out), "--overwrite", "--runner", "DataflowRunner",
                          "--direct_num_workers", "2"])
    # left out, lait filter passes none of them: the runner's own check of its options is what speaks
    assert cli.main(["filter", "--input", str(crawl), "--output", str(out), "--overwrite",
                     "--runner", "DataflowRunner"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and "direct_" not in err[-1] and "project" in err[-1]
    assert _listing(out) == before


def test_option_spellings_are_normalised(finished, tmp_path):
    crawl, _ = finished
    stats = filter_stage.run(["--input", str(crawl), "--output", str(tmp_path / "out"), "--formats", "jpg,png",
                              "--langs", "EN", "--codec", "ZSTD"])
    assert stats["kept"] == 1  # JPG names JPEG: the photo is not image_format_not_allowed


def test_output_overlapping_the_input_or_another_stage_is_refused(finished, tmp_path):
    crawl = tmp_path / "crawl"
    shutil.copytree(finished[0], crawl)  # a copy: its rejected/ and stats.json are written below
    schemas.write_table(schemas.to_table([schemas.rejected_row("crawl", "http_error", "404", page_url="http://x/")],
                                         "rejected"), str(crawl / "rejected" / "part-00000.parquet"), "rejected")
    (crawl / "stats.json").write_text(json.dumps({"stage": "crawl", "in": 2, "kept": 1, "rejected": 1,
                                                  "rejected_by_reason": {"http_error": 1}}))
    before = _listing(crawl)
    for output in (crawl, crawl / "candidates", crawl / "candidates" / "sub"):
        with pytest.raises(OutputExistsError, match="overlaps the input"):
            filter_stage.run(["--input", str(crawl), "--output", str(output), "--overwrite"])
    other = tmp_path / "other_stage"
    other.mkdir()
    (other / "stats.json").write_text(json.dumps({"stage": "crawl", "in": 0, "kept": 0, "rejected": 0}))
    with pytest.raises(OutputExistsError, match="holds a finished crawl run, not a filter run"):
        filter_stage.run(["--input", str(crawl), "--output", str(other), "--overwrite"])
    (tmp_path / "a_file").write_text("hi")
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        filter_stage.run(["--input", str(crawl), "--output", str(tmp_path / "a_file")])
    assert _listing(crawl) == before and (tmp_path / "a_file").read_text() == "hi"


def test_output_inside_the_dataset_a_pattern_or_a_file_reads_is_refused(finished, tmp_path):
    """``--input 'cands/*.parquet'`` or ``--input cands/part-00000.parquet`` with ``--output cands/filter`` wrote
    pairs/ and rejected/ among the candidates (the next ``--input cands`` failed reading them), where
    ``--input cands`` is refused: a pattern reads the folders of the files it matches (any folder below the part
    before its wildcards, for ``**``), a single file its folder."""
    crawl, _ = finished
    cands = crawl / "candidates"
    before = _listing(crawl)
    for given in (cands / "*.parquet", cands / "part-0000?.parquet", cands / "part-00000.parquet",
                  crawl / "**.parquet"):
        for output in (cands / "filter", cands):
            with pytest.raises(OutputExistsError, match="overlaps the input"):
                filter_stage._prepare_output(str(output), True, str(given))
    with pytest.raises(OutputExistsError, match="overlaps the input"):  # where a rerun's ** would read its shards
        filter_stage._prepare_output(str(crawl / "filter"), True, str(crawl / "**.parquet"))
    assert _listing(crawl) == before
    # a pattern over several runs, written beside them: outside every folder it reads
    runs = tmp_path / "runs"
    for name in ("r1", "r2"):
        (runs / name / "candidates").mkdir(parents=True)
        shutil.copy(cands / "part-00000.parquet", runs / name / "candidates")
    filter_stage._prepare_output(str(runs / "merged" / "filter"), False, str(runs / "r*" / "candidates" / "*.parquet"))
    assert os.listdir(runs / "merged" / "filter") == [RUN_MARKER]


def test_empty_candidates_folder_beside_rejected_is_an_empty_run(tmp_path):
    crawl = tmp_path / "crawl"
    (crawl / "candidates").mkdir(parents=True)
    schemas.write_table(schemas.to_table([schemas.rejected_row("crawl", "http_error", "404", page_url="http://x/")],
                                         "rejected"), str(crawl / "rejected" / "part-00000.parquet"), "rejected")
    assert filter_stage.resolve_input(str(crawl)) == []  # not rejected/ taken for candidates
    stats = filter_stage.run(["--input", str(crawl), "--output", str(tmp_path / "filter")])
    assert (stats["in"], stats["kept"], stats["rejected"]) == (0, 0, 0)


def test_invalid_utf8_rejected_by_the_filter_can_be_audited_and_inspected(tmp_path, capsys):
    rows = [_cand(make_image(60 + i, 400, 400), f"a brown dog running along the beach number {i}", i,
                  candidate_id=f"c-{i}") for i in range(3)]
    table = schemas.to_table(rows, "candidates")
    ids = [v.encode() for v in table.column("candidate_id").to_pylist()]
    ids[1] = b"c-\xc3"  # a cut UTF-8 sequence
    table = table.set_column(0, table.schema.field(0), pa.array(ids, pa.binary()).view(pa.string()))
    (tmp_path / "crawl" / "candidates").mkdir(parents=True)
    pq.write_table(table, tmp_path / "crawl" / "candidates" / "part-00000.parquet")
    stats = filter_stage.run(["--input", str(tmp_path / "crawl"), "--output", str(tmp_path / "filter")])
    assert stats["rejected_by_reason"] == {"invalid_utf8": 1}
    result = audit.audit_run(str(tmp_path))
    assert result["ok"], audit.format_audit(result)
    assert cli.main(["inspect", str(tmp_path / "crawl" / "candidates"), "--rows", "3"]) == 0
    assert "c-\ufffd" in capsys.readouterr().out
    (tmp_path / "junk.parquet").write_text("junk")
    assert cli.main(["inspect", str(tmp_path / "junk.parquet")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path / 'junk.parquet'}: ") and err.count("\n") == 1


def test_a_row_group_with_corrupted_pages_leaves_as_counted_rejects(tmp_path, capsys, caplog):
    """Bit rot under an intact footer: the row group's candidates are ``row_group_unreadable`` rejects (from
    their ids, read alone), the books balance; with the ids unreadable too, one line names file and row group."""
    from tests.features.parquet_rot import corrupt_pages

    rows = [_cand(make_image(60 + i, 400, 400), f"a brown dog running along the beach number {i}", i,
                  candidate_id=f"c-{i}") for i in range(4)]
    path = tmp_path / "crawl" / "candidates" / "part-00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(schemas.to_table(rows, "candidates"), path, row_group_size=2)
    corrupt_pages(path, 1, "image_bytes")
    stats = filter_stage.run(["--input", str(tmp_path / "crawl"), "--output", str(tmp_path / "filter")])
    assert stats["in"] == 4 and stats["in"] == stats["kept"] + stats["rejected"]
    assert stats["filters"]["input"]["reasons"] == {"row_group_unreadable": 2}
    rejected = [r for r in _read(tmp_path / "filter" / "rejected", "rejected") if r["reason"] == "row_group_unreadable"]
    assert sorted(r["candidate_id"] for r in rejected) == ["c-2", "c-3"]
    assert all(r["detail"].startswith("row group 1 of part-00000.parquet is unreadable: ") for r in rejected)
    result = audit.audit_run(str(tmp_path))
    assert result["ok"], audit.format_audit(result)
    corrupt_pages(path, 0, "candidate_id", "image_bytes", skip=0)  # page headers and ids too: nothing to count by
    argv = ["filter", "--input", str(tmp_path / "crawl"), "--output", str(tmp_path / "again")]
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {path}: row group 0 is unreadable, its ids too") and not any(
        "Traceback" in line for line in err)
    assert not [r for r in caplog.records if r.name.startswith("apache_beam") and r.exc_info]  # Beam's own log too
    assert not (tmp_path / "again" / "stats.json").exists()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli.main(["-v", *argv[:-1], str(tmp_path / "verbose")]) == 2
    assert [r for r in caplog.records if r.name.startswith("apache_beam") and r.exc_info]  # -v: all of it


def test_a_dead_beam_worker_is_one_line_saying_to_rerun(tmp_path, monkeypatch, capsys):
    """A Beam worker process killed (or out of memory) in multi_processing mode ends the run with a RuntimeError
    (nothing is finished: no stats.json): one line and a non-zero status, the traceback only with -v. A worker's
    own error comes back as its traceback's text: its last line."""
    def raising(message):
        def run_with_args(args, beam_args):
            raise RuntimeError(message)
        return run_with_args

    argv = ["filter", "--input", str(tmp_path / "crawl"), "--output", str(tmp_path / "filter"),
            "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    monkeypatch.setattr(filter_stage, "run_with_args", raising("Channel closed prematurely."))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: a Beam worker process died (killed, or out of memory); nothing was finished "
                       "(no stats.json): rerun the same command") and not any("Traceback" in line for line in err)
    assert cli.main(["-v", *argv]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setattr(filter_stage, "run_with_args", raising(
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in process\n"
        "ValueError: /x/part-0.parquet: row group 0 is unreadable, its ids too [while running 'ReadRows']"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: /x/part-0.parquet: row group 0 is unreadable, its ids too [while running 'ReadRows']"
