"""A run's config.json holds its config as a config file says it: the ``train`` dict loads back as a config, to the
same resolved config (each stage without the keys of the other kind, no ``lowercase`` beside a tokenizer.json, an
``init`` run's model section the keys it sets), and `lait train --config RUN/config.json` reruns the run."""
import json

import pytest

from imagebert_testlib import loss_columns, read_loss_log, train_config_dict
from model.config import load_config
from model.train import train


def _tiny(synth_dir: str, out_dir: str, **extra) -> dict:
    """The shared tiny config cut to 2 pretraining steps and 1 fine-tuning step, with an eval of the test split."""
    config = train_config_dict(synth_dir, out_dir, eval={"regions": f"{synth_dir}/regions",
                                                         "captions": f"{synth_dir}/captions"})
    config["pretrain"][0]["steps"], config["finetune"]["steps"] = 2, 1
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def first_run(synth_dir, tmp_path_factory):
    """A tiny run from scratch: its resolved config and out_dir."""
    out = tmp_path_factory.mktemp("roundtrip") / "run"
    config = load_config(base=_tiny(synth_dir, str(out)))
    train(config)
    return config, out


def _saved(out) -> dict:
    return json.loads((out / "config.json").read_text())["train"]


def test_a_runs_saved_config_loads_back_as_the_same_config(first_run):
    """It was refused: every stage was saved with the keys of both kinds (`pretrain.0: loss, negatives, margin,
    dual_encoder apply to the finetune stage only`)."""
    config, out = first_run
    saved = _saved(out)
    assert "loss" not in saved["pretrain"][0] and "tasks" not in saved["finetune"]
    again = load_config(base=saved)
    assert again == config and again.to_dict() == saved
    assert again.eval.split == "test" and again.finetune.negatives == 2


def test_lait_train_reruns_a_run_from_its_config_json(first_run, tmp_path, capsys):
    """The whole config.json given to --config: its train dict is the config (the model it built is the run's
    output); the rerun trains the same losses."""
    from lait.cli import main

    config, out = first_run
    rerun = tmp_path / "rerun"
    status = main(["train", "--config", str(out / "config.json"), "--out-dir", str(rerun), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    assert _saved(rerun) == {**_saved(out), "out_dir": str(rerun)}
    for stage in ("stage1", "finetune"):
        first, second = read_loss_log(out / "logs" / f"{stage}.csv"), read_loss_log(rerun / "logs" / f"{stage}.csv")
        assert {step: loss_columns(row) for step, row in first.items()} == \
            {step: loss_columns(row) for step, row in second.items()}, stage


@pytest.mark.parametrize("kind", ["tokenizer-json", "init"])
def test_the_saved_config_of_a_run_from_a_tokenizer_or_a_checkpoint_loads_back(first_run, synth_dir, tmp_path, kind):
    """lowercase was saved beside a tokenizer.json (which decides the case; refused there), and an init run's model
    section whole (init refuses the keys the checkpoint's weights depend on): the saved form leaves out the first
    and holds only the keys set of the second."""
    _, out = first_run
    if kind == "init":
        base = {"out_dir": str(tmp_path / "run"), "init": str(out / "checkpoints" / "final.pt"),
                "model": {"dropout": 0.2}, "finetune": _tiny(synth_dir, "")["finetune"]}
    else:
        base = _tiny(synth_dir, str(tmp_path / "run"), tokenizer=str(out / "tokenizer.json"), finetune=None, eval=None)
    config = load_config(base=base)
    train(config)
    saved = _saved(tmp_path / "run")
    again = load_config(base=saved)
    assert again == config and again.to_dict() == saved
    if kind == "init":  # (the keys set go over the checkpoint's model)
        from model.config import model_keys_set

        assert saved["model"] == {"dropout": 0.2} and model_keys_set(again) == model_keys_set(config) == ["dropout"]
    else:
        assert "lowercase" not in saved and again.tokenizer == str(out / "tokenizer.json")
