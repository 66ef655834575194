"""`lait relevance train --out`: what it may replace (an earlier relevance model, with --overwrite), that a failed save
leaves the earlier model whole, and the settings it refuses up front.

The commands run in this process (``cli.main``, which is all ``python -m lait`` runs): a subprocess of each cost
seconds of importing torch for a check that ends before or soon after training starts."""
import contextlib
import json
import os
import resource
import subprocess

import pytest

from filters.relevance.config import TrainConfig
from tests import inprocess
from tests.relevance.conftest import save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs

TINY = ["--epochs", "1", "--members", "1", "--image-size", "32"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(make_pairs(6, seed=4, size=64), str(tmp_path_factory.mktemp("pairs")))


def _snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@contextlib.contextmanager
def _full_disk(limit_kb: int):
    """A full disk for this process: writes past ``limit_kb`` kB of a file fail with EFBIG ("File too large"), as
    under ``ulimit -f`` (Python ignores SIGXFSZ). Only the soft limit is lowered, so it can be put back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kb * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _lait(argv: list[str], limit_kb=None) -> subprocess.CompletedProcess:
    """``lait ARGV`` run here (``tests.inprocess``), on a disk full past ``limit_kb`` kB when given."""
    with _full_disk(limit_kb) if limit_kb is not None else contextlib.nullcontext():
        return inprocess.lait_here(*argv, check=False)


def _train_cli(pairs, out, *extra, limit_kb=None):
    return _lait(["relevance", "train", "--input", pairs, "--out", str(out), *TINY, *extra], limit_kb)


def _one_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]  # besides the progress bar
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_an_imagebert_run_folder_is_refused_and_left_as_it_was(pairs, tmp_path):
    run = tmp_path / "imagebert"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"out_dir": str(run), "pretrain": []}))
    (run / "summary.json").write_text("{}")
    before = _snapshot(run)
    _one_error(_train_cli(pairs, run, "--overwrite"), "not a relevance model",
               "summary.json")
    assert _snapshot(run) == before
    os.remove(run / "summary.json")  # a config.json alone, of another kind
    before = _snapshot(run)
    _one_error(_train_cli(pairs, run, "--overwrite"), "not a relevance model",
               "config.json")
    assert _snapshot(run) == before


def test_an_earlier_relevance_model_is_replaced_only_with_overwrite(pairs, tmp_path):
    model = save_tiny_model(str(tmp_path / "model"), threshold=0.123)
    before = _snapshot(model)
    _one_error(_train_cli(pairs, model), "already holds a relevance model", "--overwrite")
    assert _snapshot(model) == before
    proc = _train_cli(pairs, model, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"relevance model written to {model}\n")
    config = json.loads(open(os.path.join(model, "config.json")).read())
    assert config["threshold"] != 0.123 and config["model"]["image_size"] == 32
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left beside it


def test_a_full_disk_leaves_the_earlier_model_whole_and_no_new_folder(pairs, tmp_path):
    model = save_tiny_model(str(tmp_path / "model"), threshold=0.123)  # weights of a few kB
    before = _snapshot(model)
    _one_error(_train_cli(pairs, model, "--overwrite", limit_kb=1024), "not saved",
               "File too large")
    assert _snapshot(model) == before  # the old weights with the old config, not new weights with it
    _one_error(_train_cli(pairs, tmp_path / "new" / "model", limit_kb=1024), "not saved")
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no empty or partial folder, no temporary one


@pytest.mark.parametrize("options, words", [
    (["--members", "1", "--processes", "4"], ["processes 4 is more than members 1"]),
    (["--image-size", "50000"], ["image_size must be at most 1024", "50000"]),
])
def test_settings_training_cannot_use_are_refused_in_one_line(pairs, tmp_path, options, words):
    proc = _lait(["relevance", "train", "--input", pairs, "--out", str(tmp_path / "m"), "--epochs", "1", *options])
    _one_error(proc, *words)
    assert not (tmp_path / "m").exists()


def test_train_refuses_more_processes_than_members_but_takes_as_many(pairs, tmp_path):
    from filters.relevance.train import train

    with pytest.raises(ValueError, match="processes 2 is more than members 1"):
        train(pairs, str(tmp_path / "m"), TrainConfig(epochs=1, members=1, processes=2, image_size=32))
    summary = train(pairs, str(tmp_path / "m"), TrainConfig(epochs=1, members=1, processes=1, image_size=32))
    assert summary["members"] == 1 and sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]


def test_save_model_on_a_full_disk_replaces_nothing(tmp_path):
    """save_model wrote the weights in place, then config.json: weights that failed midway (or a config.json that
    failed after them) left the new weights with the old threshold and vocabulary."""
    from model.relevance import RelevanceConfig, RelevanceModel, save_model

    model = save_tiny_model(str(tmp_path / "model"), threshold=0.123)
    before = _snapshot(model)
    bigger = RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=1 << 16))
    with pytest.raises(OSError) as failed, _full_disk(1024):
        save_model(bigger, model, {"threshold": 0.9, "vocabulary": []})
    message = str(failed.value)
    assert "not saved" in message and "File too large" in message and "\n" not in message, message  # one line
    assert _snapshot(model) == before and sorted(os.listdir(tmp_path)) == ["model"]
