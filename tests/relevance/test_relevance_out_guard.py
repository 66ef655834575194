"""`lait relevance train --out`: what it may replace (an earlier relevance model, with --overwrite), that a failed save
leaves the earlier model whole, and the settings it refuses up front."""
import json
import os
import subprocess
import sys

import pytest

from filters.relevance.config import TrainConfig
from tests.relevance.conftest import ROOT, save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs

TINY = ["--epochs", "1", "--members", "1", "--image-size", "32"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(make_pairs(6, seed=4, size=64), str(tmp_path_factory.mktemp("pairs")))


def _snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _train_cli(pairs, out, *extra, env, limit_kb=None):
    command = [sys.executable, "-m", "lait", "relevance", "train", "--input", pairs, "--out", str(out), *TINY, *extra]
    if limit_kb is not None:  # a full disk: writes past this size fail with EFBIG ("File too large")
        command = ["bash", "-c", f'ulimit -f {limit_kb} && exec "$@"', "train", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def _one_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]  # besides the progress bar
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_an_imagebert_run_folder_is_refused_and_left_as_it_was(pairs, tmp_path, cli_env):
    run = tmp_path / "imagebert"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"out_dir": str(run), "pretrain": []}))
    (run / "summary.json").write_text("{}")
    before = _snapshot(run)
    _one_error(_train_cli(pairs, run, "--overwrite", env=cli_env), "not a relevance model", "summary.json")
    assert _snapshot(run) == before
    os.remove(run / "summary.json")  # a config.json alone, of another kind
    before = _snapshot(run)
    _one_error(_train_cli(pairs, run, "--overwrite", env=cli_env), "not a relevance model", "config.json")
    assert _snapshot(run) == before


def test_an_earlier_relevance_model_is_replaced_only_with_overwrite(pairs, tmp_path, cli_env):
    model = save_tiny_model(str(tmp_path / "model"), threshold=0.123)
    before = _snapshot(model)
    _one_error(_train_cli(pairs, model, env=cli_env), "already holds a relevance model", "--overwrite")
    assert _snapshot(model) == before
    proc = _train_cli(pairs, model, "--overwrite", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(open(os.path.join(model, "config.json")).read())
    assert config["threshold"] != 0.123 and config["model"]["image_size"] == 32
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left beside it


def test_a_full_disk_leaves_the_earlier_model_whole_and_no_new_folder(pairs, tmp_path, cli_env):
    model = save_tiny_model(str(tmp_path / "model"), threshold=0.123)  # weights of a few kB
    before = _snapshot(model)
    _one_error(_train_cli(pairs, model, "--overwrite", env=cli_env, limit_kb=1024), "not saved", "File too large")
    assert _snapshot(model) == before  # the old weights with the old config, not new weights with it
    _one_error(_train_cli(pairs, tmp_path / "new" / "model", env=cli_env, limit_kb=1024), "not saved")
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no empty or partial folder, no temporary one


@pytest.mark.parametrize("options, words", [
    (["--members", "1", "--processes", "4"], ["processes 4 is more than members 1"]),
    (["--image-size", "50000"], ["image_size must be at most 1024", "50000"]),
])
def test_settings_training_cannot_use_are_refused_in_one_line(pairs, tmp_path, cli_env, options, words):
    proc = subprocess.run([sys.executable, "-m", "lait", "relevance", "train", "--input", pairs,
                           "--out", str(tmp_path / "m"), "--epochs", "1", *options],
                          capture_output=True, text=True, cwd=ROOT, env=cli_env, timeout=120)
    _one_error(proc, *words)
    assert not (tmp_path / "m").exists()


def test_train_refuses_more_processes_than_members_but_takes_as_many(pairs, tmp_path):
    from filters.relevance.train import train

    with pytest.raises(ValueError, match="processes 2 is more than members 1"):
        train(pairs, str(tmp_path / "m"), TrainConfig(epochs=1, members=1, processes=2, image_size=32))
    summary = train(pairs, str(tmp_path / "m"), TrainConfig(epochs=1, members=1, processes=1, image_size=32))
    assert summary["members"] == 1 and sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]


SAVE_BIGGER_MODEL = """
import sys
from model.relevance import RelevanceConfig, RelevanceModel, save_model
try:
    save_model(RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=1 << 16)),
               sys.argv[1], {"threshold": 0.9, "vocabulary": []})
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def test_save_model_on_a_full_disk_replaces_nothing(tmp_path, cli_env):
    """save_model wrote the weights in place, then config.json: weights that failed midway (or a config.json that
    failed after them) left the new weights with the old threshold and vocabulary."""
    model = save_tiny_model(str(tmp_path / "model"), threshold=0.123)
    before = _snapshot(model)
    proc = subprocess.run(["bash", "-c", 'ulimit -f 1024 && exec "$@"', "save", sys.executable, "-c", SAVE_BIGGER_MODEL,
                           model], capture_output=True, text=True, cwd=ROOT, env=cli_env, timeout=120)
    _one_error(proc, "not saved", "File too large")
    assert _snapshot(model) == before and sorted(os.listdir(tmp_path)) == ["model"]
