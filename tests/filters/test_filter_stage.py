"""The filter stage around its rules: options checked before the output is touched (Beam's too), the input
listing and the output folder on an object store, dataset folders named *.parquet, and what stats.json records.

One real Beam run (the module's fixture, through ``lait filter``); every other test fails before Beam runs.
"""
import contextlib
import io
import json
import re

import pytest

import schemas
from filters.synthetic import candidate, make_image
from lait import cli
from pipeline import filter as filter_stage
from pipeline.options import config_from_args
from pipeline.outputs import RUN_MARKER, prepare_output


def _write(folder, rows, kind="candidates", name="part-00000.parquet"):
    schemas.write_table(schemas.to_table(rows, kind), str(folder / name), kind)
    return folder


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _config(*extra):
    return config_from_args(filter_stage.build_parser().parse_args(["--input", "x", "--output", "y", *extra]))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A crawl, and a finished filter output made by ``lait filter`` with a runner named after ``--``."""
    run = tmp_path_factory.mktemp("run")
    crawl = run / "crawl"
    _write(crawl / "candidates", [candidate(make_image(40, 400, 400), "a brown dog running on the beach", 0)])
    out = run / "filter"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main(["filter", "--input", str(crawl), "--output", str(out), "--", "--runner", "FnApiRunner"])
    assert status == 0, err.getvalue()
    return crawl, out, err.getvalue()


# ---------------------------------------------------------------------------------------------- stats.json

def test_stats_record_the_runner_used_and_only_json_settings(finished):
    _, out, err = finished
    text = (out / "stats.json").read_text()
    settings = json.loads(text)["settings"]
    assert settings["runner"] == "FnApiRunner"  # the one after '--', not lait's default DirectRunner
    assert "func" not in settings and "<function" not in text
    assert "on FnApiRunner" in err and "on DirectRunner" not in err


# ---------------------------------------------------------------------------------------------- bad options

@pytest.mark.parametrize("extra, message", [
    (["--", "--runner", "NoSuchRunner"], "Unexpected pipeline runner: NoSuchRunner"),
    (["--", "--min_words", "50"], "--min_words: did you mean --min-words?"),
    (["--", "--direct_num_workers", "-1"], "--direct_num_workers must be 0 (one per CPU) or more"),
    (["--", "--direct_num_workers", "many"], "invalid int value: 'many'"),
    (["--codec", "bz2"], "--codec: 'bz2'"),
])
def test_bad_beam_options_fail_before_a_finished_output_is_replaced(finished, extra, message, capsys):
    crawl, out, _ = finished
    before = _listing(out)
    status = cli.main(["filter", "--input", str(crawl), "--output", str(out), "--overwrite", *extra])
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and err[-1].startswith("error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert _listing(out) == before  # the finished run is still there
    native = [a for a in extra if a != "--"]
    with pytest.raises(ValueError, match=re.escape(message)):
        filter_stage.run(["--input", str(crawl), "--output", str(out), "--overwrite", *native])
    assert _listing(out) == before


def test_lait_filter_refuses_a_negative_worker_count(finished, capsys):
    crawl, out, _ = finished
    with pytest.raises(SystemExit) as exited:
        cli.main(["filter", "--input", str(crawl), "--output", str(out), "--direct_num_workers", "-1"])
    assert exited.value.code == 2 and "must be 0 (one per CPU) or more" in capsys.readouterr().err


def test_an_output_that_cannot_be_made_is_a_one_line_error(finished, tmp_path, capsys):
    crawl, _, _ = finished
    (tmp_path / "a_file").write_text("hi")
    output = tmp_path / "a_file" / "filter"
    with pytest.raises(ValueError, match="cannot prepare the output folder"):
        filter_stage.run(["--input", str(crawl), "--output", str(output)])
    assert cli.main(["filter", "--input", str(crawl), "--output", str(output)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: --output {output}: cannot prepare the output folder"), err
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize("extra, message", [
    (["--codec", "bz2"], "--codec: 'bz2' is not a Parquet compression"),  # Arrow has it, Parquet cannot write it
    (["--formats", "TGA"], "--formats: 'TGA' is not an image format LAIT opens"),  # Pillow reads it, imageio not
    (["--formats", ""], "--formats: give at least one image format"),
    (["--formats", " , "], "--formats: give at least one image format"),
    (["--max-aspect", "0.5"], "--max-aspect must be 0 (off) or 1 or more"),
    (["--min-words", "10", "--max-words", "5"], "--min-words 10 is more than --max-words 5"),
    (["--min-std", "200"], "--min-std must be in [0, 127.5]"),
])
def test_options_that_cannot_work_are_refused(extra, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(*extra)


def test_off_switches_and_format_aliases_are_accepted():
    config = _config("--min-words", "10", "--max-words", "0", "--max-aspect", "0", "--formats", "jpg,MPO,tif,ico")
    assert (config.min_words, config.max_words, config.max_aspect) == (10, 0, 0)
    assert config.formats == ("JPEG", "TIFF", "ICO")  # MPO is a JPEG
    assert _config("--max-aspect", "1").max_aspect == 1
    for codec in ("none", "snappy", "gzip", "zstd", "lz4", "lz4_raw"):
        args = filter_stage.build_parser().parse_args(["--input", "x", "--output", "y", "--codec", codec.upper()])
        config_from_args(args)
        assert args.codec == codec


# ---------------------------------------------------------------------------------------------- inputs

def test_a_dataset_folder_named_parquet_is_read_as_a_folder(tmp_path):
    """Spark and Dask write a dataset as a folder ``NAME.parquet`` of part files (and a _SUCCESS marker)."""
    dataset = tmp_path / "cands.parquet"
    _write(dataset, [candidate(make_image(1, 400, 400), "a small dog playing in the garden", 0)],
           name="part-00000-abc.snappy.parquet")
    (dataset / "_SUCCESS").write_text("")
    files = filter_stage.resolve_input(str(dataset))
    assert files == [str(dataset / "part-00000-abc.snappy.parquet")]
    filter_stage.check_candidates(files)
    single = dataset / "part-00000-abc.snappy.parquet"
    assert filter_stage.resolve_input(str(single)) == [str(single)]


def test_a_crawl_folder_on_an_object_store_is_read_from_candidates_alone(object_store):
    crawl = object_store / "crawl"
    _write(crawl / "candidates", [candidate(make_image(1, 400, 400), "a small dog playing in the garden", 0)])
    _write(crawl / "rejected", [schemas.rejected_row("crawl", "http_error", "404", page_url="http://127.0.0.1/")],
           kind="rejected")
    files = filter_stage.resolve_input("laitobj://crawl")
    assert files == ["laitobj://crawl/candidates/part-00000.parquet"]  # not rejected/ too
    filter_stage.check_candidates(files)
    empty = object_store / "empty"  # a crawl that kept nothing: no candidates/ object at all, only its stats
    _write(empty / "rejected", [schemas.rejected_row("crawl", "http_error", "404", page_url="http://127.0.0.1/")],
           kind="rejected")
    (empty / "stats.json").write_text(json.dumps({"stage": "crawl", "in": 1, "kept": 0, "rejected": 1}))
    assert filter_stage.resolve_input("laitobj://empty") == []  # an empty run, never rejected/


def test_overwrite_on_an_object_store_removes_the_old_shards(object_store):
    out = object_store / "filter"
    for part in ("pairs", "rejected"):
        (out / part / "beam-temp-x").mkdir(parents=True)
        for i in range(2):
            (out / part / f"part-0000{i}-of-00002.parquet").write_text("old")
        (out / part / "beam-temp-x" / "shard").write_text("old")
    (out / "stats.json").write_text(json.dumps({"stage": "filter"}))
    prepare_output("laitobj://filter", "filter", ("pairs", "rejected"), overwrite=True)
    assert [p for p in out.rglob("*") if p.is_file()] == [out / RUN_MARKER]  # the new run's start, alone
    # an interrupted run's shards (its marker, no stats.json) are found the same way
    (out / "pairs" / "part-00000-of-00001.parquet").write_text("partial")
    prepare_output("laitobj://filter", "filter", ("pairs", "rejected"))
    assert [p for p in out.rglob("*") if p.is_file()] == [out / RUN_MARKER]


def test_a_remote_runners_own_options_pass_and_a_misspelt_stage_option_does_not():
    """A runner's options are known to Beam only once its module is imported, after this check: with a runner
    that is not local, unknown arguments are left to it, unless one looks like a misspelt option of the stage."""
    from pipeline.options import beam_options

    beam_options(["--runner=DaskRunner", "--dask_client_address=127.0.0.1:8786"], {"min_words": 3})
    with pytest.raises(ValueError, match="did you mean --min-words"):
        beam_options(["--runner=DaskRunner", "--min_words", "50"], {"min_words": 3})
    with pytest.raises(ValueError, match="unknown argument"):  # locally Beam knows all it will ever know
        beam_options(["--dask_client_address=127.0.0.1:8786"], {"min_words": 3})


@pytest.mark.parametrize("content, message", [
    (b"", "holds no words (one word per line"),
    (b"# my words\n\n", "holds no words (one word per line"),
    (b"\xff\xfed\x00o\x00g\x00", "line 1 is not UTF-8 text (0xff at byte 1"),  # UTF-16
])
def test_lait_filter_refuses_an_unusable_vocabulary_file_before_it_runs(tmp_path, capsys, content, message):
    vocab = tmp_path / "words.txt"
    vocab.write_bytes(content)
    out = tmp_path / "filter"
    # The input does not exist either: the vocabulary is checked first, not on every caption.
    assert cli.main(["filter", "--input", str(tmp_path / "crawl"), "--output", str(out), "--vocab", str(vocab)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: --vocab: ") and str(vocab) in err[-1] and message in err[-1], err
    assert not out.exists()
    with pytest.raises(ValueError, match="--vocab: give 'auto', 'none'"):
        _config("--vocab", "")
    assert _config("--vocab", "DE").vocabulary == "de"
