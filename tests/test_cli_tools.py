"""`lait inspect` on run folders, empty datasets, URLs and unknown kinds; `lait demo` refusing bad options up front."""
import json
import os

import pyarrow.parquet as pq
import pytest

import schemas
from demo import run as demo_run
from lait import cli


def _write_stage(folder, rejected=True):
    pairs = [{"pair_id": f"p{i}", "image_id": f"i{i}", "caption": f"caption {i} of a cat"} for i in range(4)]
    schemas.write_table(schemas.to_table(pairs, "pairs"), str(folder / "pairs" / "part-00000.parquet"))
    if rejected:
        rows = [schemas.rejected_row("filter", "text_too_short", candidate_id="c1")]
        schemas.write_table(schemas.to_table(rows, "rejected"), str(folder / "rejected" / "part-00000.parquet"))
    else:
        (folder / "rejected").mkdir()  # a stage that rejected nothing: an empty rejected/ (lait features)


def _inspect_json(path, capsys):
    status = cli.main(["inspect", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    return status, out if isinstance(out, list) else [out]


def test_inspect_an_empty_dataset_folder_is_zero_rows_not_an_error(tmp_path, capsys):
    """A healthy demo run exited 1: features' empty rejected/ was 'no Parquet files'."""
    _write_stage(tmp_path / "features", rejected=False)
    status, infos = _inspect_json(tmp_path, capsys)
    assert status == 0
    empty = next(i for i in infos if i["path"].endswith("rejected"))
    assert (empty["kind"], empty["rows"], empty["files"]) == ("rejected", 0, 0) and "error" not in empty
    assert cli.main(["inspect", str(tmp_path / "features" / "rejected")]) == 0
    assert "rows: 0" in capsys.readouterr().out
    assert cli.main(["inspect", str(tmp_path / "absent")]) == 1  # only a path where nothing lies is an error


@pytest.mark.parametrize("as_url", ["file", "memory"])
def test_inspect_a_run_folder_given_as_a_url(tmp_path, capsys, as_url):
    """A run folder as file:///... was read as one merged dataset (exit 0 with a schema problem)."""
    if as_url == "file":
        for stage in ("crawl", "filter"):
            _write_stage(tmp_path / stage)
        base = f"file://{tmp_path}"
    else:
        base = "memory://lait-inspect-run"
        for stage in ("crawl", "filter"):
            for kind, rows in (("pairs", [{"pair_id": "p", "image_id": "i", "caption": "a cat"}]),
                               ("rejected", [schemas.rejected_row("filter", "text_too_short")])):
                schemas.write_table(schemas.to_table(rows, kind), f"{base}/{stage}/{kind}/part-00000.parquet")
    status, infos = _inspect_json(base, capsys)
    assert status == 0
    assert [i["path"] for i in infos] == [f"{base}/crawl/pairs", f"{base}/crawl/rejected",
                                          f"{base}/filter/pairs", f"{base}/filter/rejected"]
    assert all(i["schema_problem"] is None for i in infos)


def test_inspect_a_file_of_an_unknown_kind_describes_it(tmp_path, capsys):
    """A lait.schema kind this LAIT does not know was a ValueError (exit 1), not a description."""
    table = schemas.to_table([{"caption_id": "c", "image_id": "i", "caption": "a dog", "split": "train"}], "captions")
    pq.write_table(table.replace_schema_metadata({b"lait.schema": b"captions_v2", b"lait.schema_version": b"1"}),
                   tmp_path / "unknown.parquet")
    status, (info,) = _inspect_json(tmp_path / "unknown.parquet", capsys)
    assert status == 0 and info["kind"] == "captions_v2" and info["rows"] == 1
    assert "unknown kind 'captions_v2'" in info["schema_problem"]
    assert cli.main(["inspect", str(tmp_path / "unknown.parquet")]) == 0
    assert "SCHEMA PROBLEM: unknown kind" in capsys.readouterr().out


def test_demo_out_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        assert cli.main(["demo", "--out", str(out), "--stop-after", "site"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lait demo: error:") and err.count("\n") == 1 and str(out) in err
    with pytest.raises(ValueError, match="is a file"):
        demo_run.Demo(demo_run.DemoConfig(out=str(blocker)), echo=lambda _: None).run()


@pytest.mark.parametrize("option, value", [
    ("--relevance-keep-rate", "1.5"), ("--relevance-keep-rate", "-0.2"), ("--relevance-keep-rate", "nan"),
    ("--min-side", "-1"), ("--min-side", "12.5"), ("--max-aspect", "0.5"), ("--max-aspect", "nan"),
])
def test_demo_refuses_options_lait_filter_would_refuse(tmp_path, capsys, option, value):
    """They failed at step 5 (after the crawl, clearing DIR/filter); now a usage error before anything runs."""
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["demo", "--out", str(tmp_path / "run"), option, value])
    assert exit_info.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_demo_accepts_the_edges_of_each_rule(tmp_path, capsys):
    for option, value in (("--relevance-keep-rate", "0"), ("--relevance-keep-rate", "1"), ("--min-side", "0"),
                          ("--max-aspect", "1"),
                          # 0 turns the check off in the crawl and the filter alike (filters.option_rules): no limit
                          ("--max-aspect", "0"), ("--max-aspect", "inf")):
        assert cli.main(["demo", "--out", str(tmp_path / "run"), option, value, "--dry-run"]) == 0
    capsys.readouterr()


def test_demo_refuses_from_after_stop_after(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "run"), "--from", "train", "--stop-after", "filter"]) == 2
    assert "--from train comes after --stop-after filter" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")
    assert cli.main(["demo", "--out", str(tmp_path / "run"), "--from", "filter", "--stop-after", "filter",
                     "--dry-run"]) == 0
    with pytest.raises(ValueError, match="--relevance-keep-rate must be"):
        demo_run.check_config(demo_run.DemoConfig(relevance_keep_rate=2.0))
