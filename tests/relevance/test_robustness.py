"""Bad input to the relevance commands: a clear one-line error (exit 2) or a counted reject, never a traceback."""
import json
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from filters.relevance import load
from filters.relevance.config import TrainConfig
from filters.relevance.data import read_pairs
from filters.relevance.evaluate import evaluate
from lait import cli
from tests.relevance.conftest import save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs


def _plain(rows):
    return [{k: v for k, v in r.items() if k != "is_match"} for r in rows]


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.split("\r")[-1]  # (after the progress bar, when there was one)
    assert err.startswith(f"lait relevance {command}: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"))


# 5: labels that are not booleans


def _labelled_with(path, values, arrow_type):
    rows = _plain(make_pairs(2, seed=5))[:len(values)]
    table = schemas.to_table(rows, "pairs").append_column("is_match", pa.array(values, arrow_type))
    schemas.write_table(table, str(path / "part-00000.parquet"), "pairs")
    return str(path)


def test_a_string_is_match_column_is_refused_naming_the_column(tiny_model, tmp_path, capsys):
    folder = _labelled_with(tmp_path, ["true", "false", "false", "true"], pa.string())
    with pytest.raises(ValueError, match="'is_match' must be boolean.*str"):
        evaluate(tiny_model, folder)
    assert cli.main(["relevance", "eval", "--input", folder, "--model", tiny_model]) == 2
    assert "is_match" in _one_line_error(capsys, "eval")


def test_integer_zero_one_labels_are_read_as_booleans(tiny_model, tmp_path):
    folder = _labelled_with(tmp_path, [1, 0, 0, 1], pa.int64())
    metrics = evaluate(tiny_model, folder)
    assert (metrics["matches"], metrics["mismatches"]) == (2, 2)
    with pytest.raises(ValueError, match="is_match"):
        evaluate(tiny_model, _labelled_with(tmp_path, [1, 0, 2, 1], pa.int64()))


# 8: nothing to re-pair


def test_identical_captions_and_images_are_an_error_not_a_perfect_auc(tmp_path):
    from filters.relevance.train import train

    rows = _plain(make_pairs(6, seed=3))
    same = [dict(r, caption="the same caption", image_bytes=rows[0]["image_bytes"]) for r in rows]
    with pytest.raises(ValueError, match="no negatives"):
        train(same, str(tmp_path / "m"), TrainConfig(epochs=1, members=1, processes=1))
    assert not (tmp_path / "m" / "config.json").exists()


# 2: a model of another feature version


@pytest.mark.parametrize("change", [{"model": {"num_features": 12}}, {"text_features": ["n_words"]},
                                    {"image_features": ["brightness"]}])
def test_a_model_of_another_feature_version_is_refused_at_load(tmp_path, change):
    folder = save_tiny_model(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    for with_model in (True, False):
        with pytest.raises(ValueError, match="config.json: a model of another feature version"):
            load(folder, device="cpu", with_model=with_model)


# 6 and 7: options


@pytest.mark.parametrize("argv", [
    ["score", "--output", "OUT", "--threshold", "nan"],
    ["score", "--output", "OUT", "--threshold", "inf"],
    ["score", "--output", "OUT", "--batch-size", "0"],
    ["eval", "--threshold", "nan"],
    ["eval", "--batch-size", "0"],
    ["train", "--out", "OUT", "--batch-size", "0"],
    ["train", "--out", "OUT", "--batch-size", "1"],
    ["train", "--out", "OUT", "--image-size", "0"],
    ["train", "--out", "OUT", "--epochs", "0"],
    ["train", "--out", "OUT", "--epochs", "-1"],
    ["train", "--out", "OUT", "--max-pairs", "0"],
    ["train", "--out", "OUT", "--max-pairs", "-5"],
    ["train", "--out", "OUT", "--members", "0"],
])
def test_bad_whole_numbers_and_non_finite_cuts_are_usage_errors(tiny_model, tmp_path, argv, capsys):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    model = [] if argv[0] == "train" else ["--model", tiny_model]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["relevance", *argv, "--input", str(tmp_path), *model])
    assert exit_.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,value", [("--drop-rate", "1.5"), ("--drop-rate", "-0.1"), ("--mismatch-cost", "nan"),
                                          ("--val-fraction", "nan"), ("--val-fraction", "1.5"), ("--lr", "0"),
                                          ("--lr", "inf"), ("--lr", "1e38")])
def test_bad_training_rates_are_one_line_errors(tmp_path, option, value, capsys):
    write_pairs(_plain(make_pairs(2, seed=5)), str(tmp_path / "pairs"))
    assert cli.main(["relevance", "train", "--input", str(tmp_path / "pairs"), "--out", str(tmp_path / "m"),
                     option, value]) == 2
    error = _one_line_error(capsys, "train")
    assert option[2:].replace("-", "_") in error
    assert ", inf]" not in error  # a bound of inf is no value taken: "a finite number at least 0"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("batch_size", 1), ("image_size", 0),
                                         ("max_pairs", 0),
                                         ("drop_rate", 1.0), ("val_fraction", math.nan), ("mismatch_cost", math.inf),
                                         ("members", 0), ("processes", 0), ("seed", -1), ("epochs", 1.5)])
def test_train_config_checks_its_settings(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_training_that_runs_no_step_is_an_error_not_an_untrained_model():
    """A one-pair batch is skipped (no re-pairing in it): with nothing else, no step ran and nothing was learnt."""
    from filters.relevance import features as F
    from filters.relevance.train import _fit, _prepare
    from model.relevance import RelevanceConfig

    arch = RelevanceConfig(num_features=len(F.TEXT_FEATURES) + len(F.IMAGE_FEATURES))
    ex, _ = _prepare(_plain(make_pairs(1, seed=3)), arch, frozenset())

    class Bar:
        def update(self, n=1):
            pass

        def set_postfix(self, **_):
            pass

    with pytest.raises(ValueError, match="no training step ran"):
        _fit(ex, np.array([0]), arch, TrainConfig(epochs=2, members=1), 0, Bar())


def test_threshold_relevance_refuses_a_nan_cut():
    from pipeline.relevance import ThresholdRelevance

    with pytest.raises(ValueError, match="finite"):
        ThresholdRelevance(threshold=math.nan)


# 3: a damaged shard (valid footer, rotten pages)


def _rotten(folder):
    rows = _plain(make_pairs(3, seed=5))
    write_pairs(rows, str(folder))
    path = folder / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(str(path)).metadata.row_group(0)
    column = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "caption")
    for i in range(column.data_page_offset, column.data_page_offset + 60):
        data[i] = 0xAB
    path.write_bytes(bytes(data))
    return str(folder)


def test_a_damaged_shard_is_one_line_in_every_command(tiny_model, tmp_path, capsys):
    folder = _rotten(tmp_path / "rot")
    with pytest.raises(ValueError, match="unreadable Parquet"):
        read_pairs(folder)
    assert cli.main(["relevance", "train", "--input", folder, "--out", str(tmp_path / "m"), "--epochs", "1"]) == 2
    assert "unreadable Parquet" in _one_line_error(capsys, "train")
    assert cli.main(["relevance", "score", "--input", folder, "--output", str(tmp_path / "s"), "--model", tiny_model,
                     "--device", "CPU"]) == 2
    assert "unreadable Parquet" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "s" / "stats.json").exists()


def _beam_tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("apache_beam") and r.exc_info]


def test_score_shows_no_beam_traceback_unless_verbose(tiny_model, tmp_path, caplog, capsys):
    """Beam logs a worker's error with its whole traceback before LAIT's one line; only -v shows it."""
    folder = _rotten(tmp_path / "rot")
    argv = ["relevance", "score", "--input", folder, "--model", tiny_model, "--device", "CPU"]
    with caplog.at_level(logging.ERROR):
        assert cli.main([*argv, "--output", str(tmp_path / "s")]) == 2
    assert not _beam_tracebacks(caplog)
    assert "unreadable Parquet" in _one_line_error(capsys, "score")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli.main(["-v", *argv, "--output", str(tmp_path / "s2")]) == 2
    assert _beam_tracebacks(caplog)  # verbose: all of it
    assert not logging.getLogger("apache_beam.runners.common").filters  # the filter is gone after the run


# 4: damaged CLIP weights


@pytest.mark.parametrize("name", ["fake.safetensors", "fake.pt"])
def test_damaged_clip_weights_are_a_value_error_naming_the_file(tmp_path, name):
    pytest.importorskip("open_clip")
    weights = tmp_path / name
    weights.write_text("garbage\n")
    with pytest.raises(ValueError, match=f"{name}: unreadable or mismatched CLIP weights") as caught:
        load(f"clip:ViT-B-32:{weights}", device="cpu")
    assert "\n" not in str(caught.value)


def test_a_clip_spec_without_open_clip_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """Without the `clip` extra, `import open_clip` fails: every command says what to install, in one line."""
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` raises, as when it is not installed
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    spec = f"clip:ViT-B-32:{weights}"
    with pytest.raises(ValueError, match=r"needs open_clip: pip install -e '\.\[clip\]'"):
        load(spec, device="cpu")
    labelled = write_pairs(make_pairs(1, seed=5), str(tmp_path / "lab"), labelled=True)
    assert cli.main(["relevance", "eval", "--input", labelled, "--model", spec]) == 2
    assert "needs open_clip" in _one_line_error(capsys, "eval")
    assert cli.main(["relevance", "score", "--input", labelled, "--output", str(tmp_path / "out"), "--model", spec]) == 2
    assert "needs open_clip" in _one_line_error(capsys, "score") and not (tmp_path / "out").exists()


# 9: an --out that cannot hold the model, found before training


def test_train_out_that_is_a_file_fails_before_training(tmp_path, capsys, monkeypatch):
    from filters.relevance import train as train_module

    write_pairs(_plain(make_pairs(6, seed=5)), str(tmp_path / "pairs"))
    (tmp_path / "afile").write_text("x")

    def no_training(*_, **__):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(train_module, "_fit", no_training)
    assert cli.main(["relevance", "train", "--input", str(tmp_path / "pairs"), "--out", str(tmp_path / "afile"),
                     "--processes", "1", "--members", "1"]) == 2
    assert "is not a folder" in _one_line_error(capsys, "train")


# 10: eval's JSON


def test_eval_json_out_is_valid_json_or_a_one_line_error(tiny_model, tmp_path, capsys):
    rows = make_pairs(2, seed=5)
    all_match = write_pairs([dict(r, is_match=True) for r in rows], str(tmp_path / "all_match"), labelled=True)
    out = tmp_path / "m.json"
    assert cli.main(["relevance", "eval", "--input", all_match, "--model", tiny_model, "--json-out", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["auc"] is None  # null: nothing to rank against
    capsys.readouterr()
    (tmp_path / "adir").mkdir()
    assert cli.main(["relevance", "eval", "--input", all_match, "--model", tiny_model,
                     "--json-out", str(tmp_path / "adir")]) == 2
    assert "is a folder" in _one_line_error(capsys, "eval")
    (tmp_path / "afile").write_text("x")
    assert cli.main(["relevance", "eval", "--input", all_match, "--model", tiny_model,
                     "--json-out", str(tmp_path / "afile" / "m.json")]) == 2
    _one_line_error(capsys, "eval")


def test_eval_of_no_labelled_pairs_is_an_error(tiny_model, tmp_path, capsys):
    table = schemas.to_table([], "pairs").append_column("is_match", pa.array([], pa.bool_()))
    schemas.write_table(table, str(tmp_path / "part-00000.parquet"), "pairs")
    assert cli.main(["relevance", "eval", "--input", str(tmp_path), "--model", tiny_model]) == 2
    assert "no labelled pairs" in _one_line_error(capsys, "eval")
