"""What a docs-vs-CLI audit found: a reject reason no table names, options accepted and then ignored (or refused in
one spelling that a sibling command takes), a dry run that listed steps it would not run, a progress bar that could
not be turned off, and argparse's own entries in the filter's recorded settings."""
import json

import pytest
from scrapy.exceptions import IgnoreRequest
from twisted.python.failure import Failure

from crawler.spiders.lait import failure_reason
from demo import run as demo_run
from lait import cli
from pipeline import filter as filter_stage


# ---------------------------------------------------------------------------------------------- crawl reasons

def test_an_ignore_request_of_no_known_kind_is_a_fetch_error_with_its_words():
    """Such a request became an `ignored` reject, a reason in no table of docs/crawl.md; the known kinds keep theirs."""
    message = "Ignored request not in cache: <GET http://127.0.0.1:8000/a.png>"  # HTTPCACHE_IGNORE_MISSING's
    assert failure_reason(Failure(IgnoreRequest(message))) == ("fetch_error", f"IgnoreRequest: {message}")
    assert failure_reason(Failure(IgnoreRequest("Forbidden by robots.txt")))[0] == "robots_disallowed"
    assert failure_reason(Failure(IgnoreRequest("max redirections reached")))[0] == "too_many_redirects"


# ---------------------------------------------------------------------------------------------- import-captions

def _import(tmp_path, *extra):
    (tmp_path / "images").mkdir(exist_ok=True)
    source = tmp_path / "dataset_flickr30k.json"
    source.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "val",
                                              "sentences": [{"raw": "a red picture"}]}]}))
    return cli.main(["import-captions", str(source), "--images", str(tmp_path / "images"),
                     "--out", str(tmp_path / "out"), *extra])


def test_import_karpathy_refuses_split_rather_than_ignoring_it(tmp_path, capsys):
    """--split test was ignored: every row kept the split the Karpathy file names."""
    assert _import(tmp_path, "--format", "karpathy", "--split", "test") == 2
    err = capsys.readouterr().err
    assert err.startswith("lait import-captions: --split 'test' is not used with --format karpathy"), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- relevance --device

@pytest.mark.parametrize("given, device", [("gpu", "GPU"), ("GPU", "GPU"), ("cuda", "GPU"), ("Cpu", "CPU")])
def test_relevance_score_device_takes_the_spellings_filter_takes(given, device):
    """--device gpu was an argparse error, while lait filter --relevance-device takes gpu, GPU and cuda."""
    args = cli.build_parser().parse_args(["relevance", "score", "--input", "i", "--output", "o", "--model", "m",
                                          "--device", given])
    assert args.device == device


def test_relevance_score_device_refuses_other_values_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["relevance", "score", "--input", "i", "--output", "o", "--model", "m",
                                       "--device", "tpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: expected CPU or GPU (any case; cuda is GPU), got 'tpu'" in err, err


# ---------------------------------------------------------------------------------------------- demo --dry-run

def test_demo_dry_run_says_which_steps_from_and_stop_after_keep_from_running(tmp_path, capsys):
    """--stop-after filter --dry-run printed the commands of all 12 steps."""
    out = tmp_path / "run"
    assert cli.main(["demo", "--out", str(out), "--from", "crawl", "--stop-after", "filter", "--dry-run"]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert list(lines) == demo_run.step_names()
    assert lines["site"] == "(not run: before --from crawl; its outputs in --out are reused)"
    assert "-m lait crawl" in lines["crawl"] and "-m lait filter" in lines["filter"]
    for name in ("relevance_eval", "detector", "features", "test_features", "captions", "train", "eval"):
        assert lines[name] == "(not run: after --stop-after filter)", name
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- report --no-progress

def test_report_no_progress_writes_no_bar(tmp_path, capsys):
    """lait report had no --no-progress, unlike lait crawl, features, train and eval."""
    assert cli.main(["report", str(tmp_path), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == f"wrote {tmp_path / 'report.html'}\n"


# ---------------------------------------------------------------------------------------------- filter settings

def test_filter_settings_leave_out_lait_own_entries():
    """stats.json's settings recorded "command": "filter" and "verbose": 1, which are no options of the stage."""
    args = cli.build_parser().parse_args(["-v", "filter", "--input", "in", "--output", "out", "--min-words", "3"])
    settings = filter_stage.stage_settings(args)
    assert not {"command", "verbose", "func"} & set(settings), settings
    assert (settings["min_words"], settings["input"]) == (3, "in")
