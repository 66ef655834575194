import json
import subprocess
import sys

import pytest

import schemas
from lait import cli


def _subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_registered_module_registers_a_subcommand():
    assert len(_subcommands()) == len(cli.COMMAND_MODULES)
    assert "inspect" in _subcommands()


@pytest.mark.parametrize("name", _subcommands())
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: lait {name}" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "lait", "--help"], capture_output=True, text=True, check=True).stdout
    assert "inspect" in out


def test_captions_after_options_are_explained_and_after_dashes_are_captions(capsys):
    """`lait explain "a" --min-words 2 "b"` explains both; after "--", a caption may start with "-"."""
    assert cli.main(["explain", "--json", "a brown dog running on the beach", "--min-words", "2",
                     "a cat asleep on a sofa", "--", "-a caption with a dash"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["caption"] for r in results] == ["a brown dog running on the beach", "a cat asleep on a sofa",
                                               "-a caption with a dash"]


def test_positionals_among_options_and_the_commands_that_cannot_mix_them():
    """URLs of `lait crawl` may come between its options too; `lait filter` passes everything after "--" to Beam,
    and refuses an unknown option, as before."""
    parse = cli.build_parser().parse_args
    args = parse(["crawl", "http://127.0.0.1:9/a", "--out", "o", "--max-pages", "1", "http://127.0.0.1:9/b"])
    assert (args.urls, args.max_pages, args.out) == (["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"], 1, "o")
    assert parse(["crawl", "--out", "o", "--", "-x"]).urls == ["-x"]
    args = parse(["filter", "--input", "i", "--output", "o", "--", "--runner", "DataflowRunner", "--project", "p"])
    assert args.beam_args == ["--", "--runner", "DataflowRunner", "--project", "p"]
    with pytest.raises(SystemExit):
        parse(["filter", "--input", "i", "--output", "o", "--bogus"])


def _write_run(tmp_path):
    pairs = [{"pair_id": f"p{i}", "image_id": f"i{i}", "caption": f"caption {i} of a cat",
              "image_bytes": b"x" * 100} for i in range(4)]
    schemas.write_table(schemas.to_table(pairs, "pairs"), str(tmp_path / "pairs" / "part-00000.parquet"))
    rejected = [schemas.rejected_row("filter", "text_too_short", candidate_id="c1"),
                schemas.rejected_row("filter", "text_too_short", candidate_id="c2"),
                schemas.rejected_row("filter", "lang_not_target", candidate_id="c3")]
    schemas.write_table(schemas.to_table(rejected, "rejected"), str(tmp_path / "rejected" / "part-00000.parquet"))


def test_inspect_dataset_text(tmp_path, capsys):
    _write_run(tmp_path)
    assert cli.main(["inspect", str(tmp_path / "pairs"), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "kind: pairs v1" in out and "rows: 4" in out
    assert "<100 bytes>" in out  # image bytes are summarised, not dumped
    assert out.count("row ") == 2


def test_inspect_run_folder_json(tmp_path, capsys):
    _write_run(tmp_path)
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    infos = {info["kind"]: info for info in json.loads(capsys.readouterr().out)}
    assert infos["pairs"]["rows"] == 4
    assert infos["rejected"]["rejected_reasons"] == {"filter/text_too_short": 2, "filter/lang_not_target": 1}


def test_inspect_reports_schema_problem_and_missing_path(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = schemas.to_table([{"caption_id": "k", "image_id": "i", "caption": "c"}], "captions")
    bad = table.set_column(table.schema.get_field_index("split"), "split", pa.array([3]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    assert cli.main(["inspect", str(tmp_path / "bad.parquet")]) == 1  # described, but LAIT's readers refuse it
    out = capsys.readouterr().out
    assert "SCHEMA PROBLEM" in out and "column 'split'" in out
    assert cli.main(["inspect", str(tmp_path / "absent")]) == 1
    printed = capsys.readouterr()
    assert "no dataset at" in printed.err and not printed.out  # errors on stderr


def test_inspect_top_level_run_folder_describes_each_stage(tmp_path, capsys):
    """A run folder of stage folders: each stage's datasets apart, not merged into one (nor only the top one)."""
    for stage in ("crawl_like", "filter"):
        _write_run(tmp_path / stage)
        (tmp_path / stage / "stats.json").write_text(json.dumps({"stage": stage, "in": 7, "kept": 4, "rejected": 3,
                                                                  "rejected_by_reason": {}}))
    captions = [{"caption_id": "k1", "image_id": "i1", "caption": "a cat"}]
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "part-00000.parquet"))
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    infos = {info["path"]: info for info in json.loads(capsys.readouterr().out)}
    assert set(infos) == {str(tmp_path / "captions"), str(tmp_path / "crawl_like" / "pairs"),
                          str(tmp_path / "crawl_like" / "rejected"), str(tmp_path / "filter" / "pairs"),
                          str(tmp_path / "filter" / "rejected")}
    assert all(info["schema_problem"] is None and "error" not in info for info in infos.values())
    assert infos[str(tmp_path / "filter" / "pairs")]["rows"] == 4
    with pytest.raises(SystemExit):
        cli.main(["inspect", str(tmp_path), "--rows", "-1"])


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """`lait explain ... | head -1`: the reader closes the pipe; no BrokenPipeError traceback, exit status 1."""
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"a brown dog running on the beach number {i}\n" for i in range(3000)))
    command = subprocess.Popen([sys.executable, "-m", "lait", "explain", "--captions", str(captions)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = command.stdout.readline()
    command.stdout.close()  # as `head -1` does: what the command writes next hits a closed pipe
    err = command.stderr.read().decode()
    assert command.wait(timeout=120) == 1
    assert first.strip() and "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("source", [["http://127.0.0.1:9/"], ["--warc", "missing.warc.gz"]])
def test_crawl_refuses_a_bad_robots_retry_setting_before_anything(tmp_path, capsys, source):
    out = tmp_path / "crawl"
    assert cli.main(["crawl", *source, "--out", str(out), "--no-progress", "-s", "LAIT_ROBOTS_RETRY_AFTER=nan"]) == 2
    assert "LAIT_ROBOTS_RETRY_AFTER must be a number of seconds" in capsys.readouterr().err
    assert not out.exists()


def _train_until_its_first_loss_row(tmp_path, command=("lait", "train")):
    """`lait train` (or ``command``: the native ``model.train``) in a session of its own (a DataLoader worker as
    well), once it logged its first loss row."""
    import os
    import time

    import yaml

    from model.synthetic import write_synthetic

    write_synthetic(str(tmp_path / "data"), images=24, feature_dim=8, test_images=4, seed=2)
    data = {"regions": str(tmp_path / "data" / "regions"), "captions": str(tmp_path / "data" / "captions"),
            "split": "train"}
    config = {"out_dir": str(tmp_path / "run"), "log_every": 1, "num_workers": 1, "cpu_threads": 1,
              "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32,
                        "max_text_len": 16, "max_regions": 8},
              "tokenizer_vocab_size": 100,
              "pretrain": [{"name": "stage1", "datasets": [data], "steps": 100000, "batch_size": 4}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", *command, "--config", str(tmp_path / "c.yaml"),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1"), cwd=root,
                            start_new_session=True)
    log = tmp_path / "run" / "logs" / "stage1.csv"
    deadline = time.monotonic() + 240
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):  # the header and step 1: training
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no loss row in 240 s"
        time.sleep(0.2)
    return proc


def test_ctrl_c_during_training_says_interrupted_in_one_line_and_leaves_no_process(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground group: the command and its DataLoader worker) printed a long
    traceback ending in KeyboardInterrupt; now one line with what to do next, exit status 130, no process left."""
    import os
    import signal
    import time

    proc = _train_until_its_first_loss_row(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines() == ["lait train: interrupted; rerun the same command with --resume to continue "
                                        "from the last checkpoint"], err
    for _ in range(50):  # no DataLoader worker left behind in the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a process of lait train's group outlived it")


def test_ctrl_c_during_native_training_is_one_line_and_status_130(tmp_path):
    """`python -m model.train` (what torchrun runs) ended a Ctrl-C in a traceback; now the line `lait train`
    prints, after its log lines."""
    import os
    import signal

    proc = _train_until_its_first_loss_row(tmp_path, command=("model.train",))
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == ("python -m model.train: interrupted; rerun the same command with "
                                            "--resume to continue from the last checkpoint"), err[-3000:]


@pytest.mark.parametrize("argv, hint", [
    (["filter", "--input", "IN", "--output", "OUT"], "nothing was finished (no stats.json): rerun the same command"),
    (["features", "--input", "IN", "--output", "OUT", "--detector", "demo"],
     "rerun the same command to resume: complete shards are skipped"),
    (["eval", "--checkpoint", "C.pt", "--regions", "R", "--captions", "C"], "rerun the same command"),
    (["crawl", "--warc", "a.warc.gz", "--out", "OUT"], "rerun the same command: it replaces"),
    (["crawl", "--warc", "a.warc.gz", "--out", "OUT", "--files-per-part", "2"], "the finished parts are skipped"),
    (["demo", "--out", "OUT"], "--from STEP"),
])
def test_ctrl_c_in_any_command_is_one_line_and_status_130(argv, hint, monkeypatch, capsys):
    import importlib

    def interrupted(args):
        raise KeyboardInterrupt

    module = importlib.import_module(f"lait.commands.{argv[0]}")
    monkeypatch.setattr(module, "run", interrupted)
    assert cli.main(argv) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith(f"lait {argv[0]}: interrupted") and hint in captured.err, captured.err
