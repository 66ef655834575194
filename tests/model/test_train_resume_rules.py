"""What a resume may change, what a config may say, and how bad input is reported, through `lait train` and
`python -m model.train`: a resume with other stage losses, another model section or other settings for a finished
stage is refused before anything is written (the loss log, config.json and tokenizer.json kept), one with other masking
or sampling warns, the stages not yet started may change, init: may set the model keys its checkpoint's weights do not
depend on (and the others to the checkpoint's values: a run's config.json reruns with init), config.json and
summary.json are replaced whole, dropouts are probabilities below 1, a split filter that leaves no caption (or only
blank ones) says so, a stage's `kind` is its section's, and the native form reports bad input in one line."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from imagebert_testlib import REPO, loss_columns, read_loss_log, train_config_dict
from model.config import ConfigError, load_config
from model.train import LossLog, load_checkpoint, train

OUTPUTS = ("logs/stage1.csv", "logs/finetune.csv", "config.json", "tokenizer.json", "summary.json")


def _base(synth_dir: str, out_dir: str, **extra) -> dict:
    """The shared tiny config, checkpointing every 2 steps, its finetune stage with a dual-encoder loss."""
    config = train_config_dict(synth_dir, out_dir, checkpoint_every=2)
    config["finetune"].update(loss="binary", dual_encoder=0.5)
    config.update(extra)
    return config


_log = read_loss_log
_losses = loss_columns


def _snapshot(out) -> dict:
    return {name: (out / name).read_bytes() for name in OUTPUTS if (out / name).exists()}


@pytest.fixture(scope="module")
def finished_run(synth_dir, tmp_path_factory):
    """A run of stage1 (4 steps) and fine-tuning (3 steps), checkpointed every 2 steps, and its YAML config."""
    root = tmp_path_factory.mktemp("resume-rules")
    out = root / "run"
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(out))))
    train(load_config(str(config)))
    return out, config


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run (its out_dir moved: the config given with --out-dir) to resume into."""
    out, config = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy, config


def _train(capsys, config, out, *argv) -> tuple[int, str]:
    from lait.cli import main

    status = main(["train", "--config", str(config), "--out-dir", str(out), "--no-progress", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("checkpoint, override, named", [
    ("stage1-step2.pt", "pretrain.0.tasks={mlm: 1, itm: 1}", "stage1.tasks {'mlm': 1.0, 'itm': 1.0}, the checkpoint's"),
    # The order too: it orders the saved loss window's sums (and the terms of the total loss)
    ("stage1-step2.pt", "pretrain.0.tasks={itm: 1, mrfr: 1, moc: 1, mlm: 1}", "(the same tasks in another order)"),
    ("finetune-step2.pt", "finetune.loss=triplet", "finetune.loss 'triplet', the checkpoint's 'binary'"),
    ("finetune-step2.pt", "finetune.dual_encoder=0", "finetune.dual_encoder 0.0, the checkpoint's 0.5"),
    # The same moc column, another quantity (KL on the detector's distribution, not CE on its label)
    ("stage1-step2.pt", "moc_loss=kl", "moc_loss 'kl', the checkpoint's 'ce'"),
], ids=["fewer-tasks", "task-order", "finetune-loss", "dual-encoder-off", "moc-loss"])
def test_a_resume_with_other_stage_losses_is_refused_before_anything_is_written(run_copy, capsys, checkpoint,
                                                                                override, named):
    """It used to fail in the csv writer (``dict contains fields not in fieldnames``) after truncating the stage's
    loss log to its header and rewriting config.json and tokenizer.json."""
    out, config = run_copy
    before = _snapshot(out)
    status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / checkpoint), "--set", override)
    assert status == 2, error
    assert error.startswith(f"lait train: {out / 'checkpoints' / checkpoint}: stage ") and error.count("\n") == 1, error
    assert "with other losses than the checkpoint's" in error and named in error and "init:" in error, error
    assert _snapshot(out) == before, "nothing written"
    # The same resume with the checkpoint's losses runs, and keeps the stage's rows up to the checkpoint.
    stage = checkpoint.split("-")[0]
    old = _log(out / "logs" / f"{stage}.csv")
    status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / checkpoint))
    assert status == 0, error
    new = _log(out / "logs" / f"{stage}.csv")
    assert sorted(new) == sorted(old) and all(_losses(new[step]) == _losses(old[step]) for step in old)


@pytest.mark.parametrize("checkpoint, override, warned", [
    ("stage1-step2.pt", "pretrain.0.tasks={mlm: 2, moc: 1, mrfr: 1, itm: 1}", "resumed with other task weights"),
    ("finetune-step2.pt", "finetune.dual_encoder=0.25", "resumed with another dual_encoder weight"),
], ids=["task-weight", "dual-encoder-weight"])
def test_a_resume_with_other_loss_weights_only_warns(run_copy, capsys, caplog, checkpoint, override, warned):
    """The same loss columns with other weights: the log and the loss window stay valid, so the resume runs (with
    its optimizer state, which init: would drop) and says what changed."""
    out, config = run_copy
    with caplog.at_level(logging.WARNING, logger="model.train"):
        status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / checkpoint),
                               "--set", override)
    assert status == 0, error
    assert any(warned in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_resume_with_other_masking_or_sampling_warns_naming_each_setting(run_copy, capsys, caplog):
    """masking, the *_prob settings and a fine-tuning stage's negatives changed on resume were taken without a word:
    the same losses, computed on other masked items or negatives, so the resume runs and says what changed."""
    out, config = run_copy
    for checkpoint, overrides, named in (
            ("stage1-step2.pt", ["masking=exact", "mlm_prob=0.3", "region_mask_prob=0.2", "region_zero_prob=0.8",
                                 "itm_neg_prob=0.4"],
             ["masking 'exact', the checkpoint's 'bernoulli'", "mlm_prob 0.3, the checkpoint's 0.15",
              "region_mask_prob 0.2, the checkpoint's 0.15", "region_zero_prob 0.8, the checkpoint's 0.9",
              "itm_neg_prob 0.4, the checkpoint's 0.5"]),
            ("finetune-step2.pt", ["finetune.negatives=3"], ["finetune.negatives 3, the checkpoint's 2"])):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="model.train"):
            status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / checkpoint),
                                   *(arg for override in overrides for arg in ("--set", override)))
        assert status == 0, error
        warned = [r.getMessage() for r in caplog.records if "resumed with other settings" in r.getMessage()]
        assert len(warned) == 1 and all(name in warned[0] for name in named), (named, warned)
        assert "the steps after 2 do not train as its run would have" in warned[0], warned


def test_a_resume_compares_only_the_settings_its_stage_reads(run_copy, tmp_path, caplog):
    """A stage is warned about the masking of the tasks it trains (and refused another moc_loss only when it trains
    moc), and about the margin of a triplet loss only (binary and multiclass read none); the checkpoint's run config
    is edited to say what the stage was."""
    from model.train import check_resume_matches

    out, config = run_copy
    pretrain = load_checkpoint(str(out / "checkpoints" / "stage1-step2.pt"))
    pretrain["train_config"]["pretrain"][0]["tasks"] = {"mlm": 1.0}
    finetune = load_checkpoint(str(out / "checkpoints" / "finetune-step2.pt"))
    triplet = load_checkpoint(str(out / "checkpoints" / "finetune-step2.pt"))
    triplet["train_config"]["finetune"].update(loss="triplet")
    elsewhere = f"out_dir={tmp_path / 'other'}"  # no loss log of the run's columns to compare with
    for state, overrides, expected in (
            (pretrain, ["pretrain.0.tasks={mlm: 1}", "itm_neg_prob=0.1", "region_zero_prob=0.1", "moc_loss=kl"], None),
            (pretrain, ["pretrain.0.tasks={mlm: 1}", "mlm_prob=0.2"], "mlm_prob 0.2, the checkpoint's 0.15"),
            (finetune, ["finetune.margin=0.5"], None),
            (triplet, ["finetune.loss=triplet", "finetune.margin=0.5"], "finetune.margin 0.5, the checkpoint's 0.2")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="model.train"):
            check_resume_matches(state, "ckpt.pt", load_config(str(config), [elsewhere, *overrides]))
        warned = [r.getMessage() for r in caplog.records if "resumed with other settings" in r.getMessage()]
        if expected is None:
            assert warned == [], (overrides, warned)
        else:
            assert len(warned) == 1 and expected in warned[0], (overrides, warned)


def test_init_may_set_the_model_keys_its_weights_do_not_depend_on(finished_run, synth_dir, tmp_path, capsys):
    """init: refused any model section, so a checkpoint could not be fine-tuned with another dropout. Dropouts,
    max_regions and the like now go over the checkpoint's model (its weights loaded as they are); a size, the
    heads, the vocabulary or the feature width are refused in one line naming each."""
    out, _ = finished_run
    ft = tmp_path / "ft"
    config = tmp_path / "init.yaml"
    config.write_text(yaml.safe_dump({
        "out_dir": str(ft), "init": str(out / "checkpoints" / "final.pt"), "checkpoint_every": 1,
        "model": {"dropout": 0.2, "max_regions": 6},
        # lr 0: the weights come out as they went in, the checkpoint's
        "finetune": {**_base(synth_dir, "")["finetune"], "steps": 2, "lr": 0.0}}))
    # (init_std too: every weight comes from the checkpoint, so the scale of new random ones would do nothing)
    for override, theirs in (("model.hidden_size=64", 32), ("model.num_heads=4", 2), ("model.vocab_size=500", None),
                             ("model.feature_dim=8", 16), ("model.init_std=0.05", 0.02)):
        status, error = _train(capsys, config, ft, "--set", override)
        key, value = override.split("=")
        assert status == 2 and error.count("\n") == 1, error
        assert error.startswith("lait train: init takes the model's weights, their shape and the tokenizer from the "
                                f"checkpoint, and this config's model section differs from its model: {key} {value}, "
                                f"the checkpoint's "), error
        assert f"; drop {key} (over the checkpoint's model, a config may set dropout, attention_dropout, " in error
        assert theirs is None or f"{key} {value}, the checkpoint's {theirs};" in error, error
    assert not ft.exists(), "refused before out_dir is made"
    status, error = _train(capsys, config, ft, "--set", "model.max_text_len=600")  # past the checkpoint's positions
    assert status == 2 and "model.max_text_len: 600, more than the 512 positions of model.max_position" in error, error
    status, error = _train(capsys, config, ft)
    assert status == 0, error
    start = load_checkpoint(str(out / "checkpoints" / "final.pt"))
    end = load_checkpoint(str(ft / "checkpoints" / "final.pt"))
    assert end["model_config"] == {**start["model_config"], "dropout": 0.2, "max_regions": 6}
    assert json.loads((ft / "config.json").read_text())["model"] == end["model_config"]
    import torch

    assert all(torch.equal(end["model"][name], tensor) for name, tensor in start["model"].items())
    # Its resume compares the keys it sets (the others are the init checkpoint's): the same ones resume, others not.
    step1 = str(ft / "checkpoints" / "finetune-step1.pt")
    assert _train(capsys, config, ft, "--resume", step1)[0] == 0
    status, error = _train(capsys, config, ft, "--resume", step1, "--set", "model.dropout=0.3")
    assert status == 2 and "model.dropout 0.3, the checkpoint's 0.2" in error, error


def test_a_runs_config_json_reruns_as_a_fine_tuning_run_from_its_checkpoint(finished_run, tmp_path, capsys):
    """config.json lists the run's whole model section, and init refused every key its checkpoint's weights depend
    on, whatever its value: the run's own config could not fine-tune its checkpoint. Keys set to the checkpoint's
    values (its model's, or its run's section's, where the data and the tokenizer decided) say nothing new and are
    taken; another value is refused, naming the key with both values, before out_dir is made."""
    out, _ = finished_run
    config, ft, final = out / "config.json", tmp_path / "ft", str(out / "checkpoints" / "final.pt")
    listed = json.loads(config.read_text())["train"]["model"]
    assert {"vocab_size", "hidden_size", "feature_dim", "init_std"} <= set(listed)
    again = ("--set", f"init={final}", "--set", "pretrain=[]", "--set", "finetune.steps=1")
    status, error = _train(capsys, config, ft, *again, "--set", "model.hidden_size=64", "--set", "model.init_std=0.05")
    assert status == 2 and error.count("\n") == 1, error
    assert "differs from its model: model.hidden_size 64, the checkpoint's 32; model.init_std 0.05, the checkpoint's " \
           "0.02; drop model.hidden_size, model.init_std (over" in error, error
    assert not ft.exists()
    status, error = _train(capsys, config, ft, *again)
    assert status == 0, error
    start, end = (load_checkpoint(str(run / "checkpoints" / "final.pt")) for run in (out, ft))
    assert end["model_config"] == start["model_config"]
    written = json.loads((ft / "config.json").read_text())
    assert written["train"]["init"] == final and written["model"] == start["model_config"]
    # Its own config.json resumes it (the model keys it lists are its checkpoint's run's).
    assert _train(capsys, ft / "config.json", ft, "--resume")[0] == 0


@pytest.mark.parametrize("checkpoint", ["stage1.pt", "finetune-step2.pt"])
def test_a_resume_refuses_other_settings_for_a_finished_stage(run_copy, capsys, checkpoint):
    """At a stage boundary (stage1.pt: stage1 done, fine-tuning not begun) a resume compared nothing of the finished
    stage: another lr, step count or dataset was taken, the next stage ran as if stage1 had been trained so, and
    config.json claimed it. A finished stage's settings are now refused, in one line naming each (nothing written);
    part-way through a later stage too."""
    out, config = run_copy
    before = _snapshot(out)
    for override, named in (("pretrain.0.lr=0.002", "stage1.lr 0.002, the checkpoint's 0.001"),
                            ("pretrain.0.steps=6", "stage1.steps 6, the checkpoint's 4"),
                            ("pretrain.0.datasets.0.split=null", "stage1.datasets.0.split None, the checkpoint's "
                                                                 "'train'")):
        status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / checkpoint),
                               "--set", override)
        assert status == 2 and error.count("\n") == 1, error
        assert error.startswith(f"lait train: {out / 'checkpoints' / checkpoint}: stage 'stage1' finished before this "
                                f"checkpoint with other settings than this config's: {named}; "), error
        assert "start a new run from its weights with init:" in error, error
    assert _snapshot(out) == before, "nothing written"


def test_a_resume_at_a_stage_boundary_takes_the_stages_to_come_as_configured(run_copy, capsys, caplog):
    """The stages not yet started may change (their optimizer starts fresh): they run, and config.json records,
    what this config says. A run-wide setting the finished stage trained with (seed) is taken for the stages to
    come, with a warning that the finished one ran with the checkpoint's."""
    out, config = run_copy
    with caplog.at_level(logging.WARNING, logger="model.train"):
        status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / "stage1.pt"),
                               "--set", "finetune.lr=0.002", "--set", "finetune.steps=2", "--set", "seed=1")
    assert status == 0, error
    written = json.loads((out / "config.json").read_text())["train"]
    assert (written["finetune"]["lr"], written["finetune"]["steps"], written["seed"]) == (0.002, 2, 1)
    assert written["pretrain"][0]["lr"] == 0.001 and written["pretrain"][0]["steps"] == 4
    assert sorted(_log(out / "logs" / "finetune.csv")) == [1, 2]
    assert float(_log(out / "logs" / "finetune.csv")[1]["lr"]) == pytest.approx(0.002)  # (warm-up of one step: done)
    warned = [r.getMessage() for r in caplog.records if "run-wide settings" in r.getMessage()]
    assert len(warned) == 1 and "stage(s) stage1 finished before this checkpoint" in warned[0], warned
    assert "seed 1, the checkpoint's 0" in warned[0], warned


def test_config_json_and_summary_json_are_replaced_whole(run_copy, capsys):
    """Both were rewritten in place (open "w"): a stop midway left half a file, and a copy of the run made with
    hard links (cp -al) had its config.json and summary.json changed by the resume of the original. They are
    written beside and renamed over (schemas.write_json_atomically), and no temporary file is left."""
    out, config = run_copy
    snapshot = out.parent / "snapshot"
    snapshot.mkdir()
    for name in ("config.json", "summary.json"):
        os.link(out / name, snapshot / name)
    before = {name: (snapshot / name).read_bytes() for name in ("config.json", "summary.json")}
    status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / "finetune-step2.pt"),
                           "--set", "checkpoint_every=0")
    assert status == 0, error
    assert json.loads((out / "config.json").read_text())["train"]["checkpoint_every"] == 0
    assert {name: (snapshot / name).read_bytes() for name in before} == before, "the hard-linked copy is its own"
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_a_checkpoint_that_fails_to_save_leaves_the_earlier_one_and_no_temporary_file(tmp_path):
    """save_checkpoint wrote X.pt.tmp and renamed it: a failing torch.save left the half-written X.pt.tmp behind (and a
    second save into the name shared it). The temporary file is unique, synced to disk, and removed on an error."""
    import pickle

    from model.train import save_checkpoint

    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(str(path), {"model": {"w": torch.ones(3)}, "step": 1})
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(str(path), {"model": {"w": torch.zeros(3)}, "step": 2, "bad": lambda: None})
    assert sorted(os.listdir(path.parent)) == ["last.pt"]
    assert torch.load(path, weights_only=True)["step"] == 1


def test_a_relevance_model_config_is_written_by_the_shared_atomic_writer(tmp_path):
    """save_model wrote config.json through a temporary file of a fixed name, .config.json.tmp: two saves into one
    folder shared it, and anything left at that name (here a folder) failed the save. The shared writer's temporary
    file is unique to each write, synced to disk, and removed on an error."""
    from model.relevance import RelevanceConfig, RelevanceModel, read_config, save_model

    folder = tmp_path / "relevance"
    (folder / ".config.json.tmp").mkdir(parents=True)
    save_model(RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=64)),
               str(folder), {"threshold": 0.5, "vocabulary": []})
    assert read_config(str(folder))["threshold"] == 0.5
    assert sorted(os.listdir(folder)) == [".config.json.tmp", "config.json", "model.safetensors"]


def test_a_resume_into_a_log_of_other_columns_is_refused_and_the_log_kept(run_copy, capsys):
    """A checkpoint that does not record its stage's tasks (nothing to compare) resumed into an out_dir whose log
    has other columns: refused up front by the log's header, which is read, not rewritten."""
    out, config = run_copy
    state = load_checkpoint(str(out / "checkpoints" / "stage1-step2.pt"))
    del state["train_config"]["pretrain"][0]["tasks"]
    import torch

    torch.save(state, out / "old.pt")
    before = _snapshot(out)
    status, error = _train(capsys, config, out, "--resume", str(out / "old.pt"),
                           "--set", "pretrain.0.tasks={mlm: 1, itm: 1}")
    assert status == 2 and error.count("\n") == 1, error
    assert f"{out / 'logs' / 'stage1.csv'} logs the losses mlm, moc, mrfr, itm, this stage mlm, itm" in error, error
    assert _snapshot(out) == before


def test_the_loss_log_never_loses_its_rows(tmp_path):
    """LossLog checks the columns before it touches the file, and writes the rows it keeps through a temporary
    file that replaces the log (it used to open the log with "w" first)."""
    path = tmp_path / "logs" / "stage.csv"
    log = LossLog(str(path), ["mlm", "itm"], 0)
    for step in (1, 2, 3):
        log.write({"step": step, "lr": "0.1", "loss": "1.0", "mlm": "0.5", "itm": "0.5"})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="logs the losses mlm, itm, this stage mlm"):
        LossLog(str(path), ["mlm"], 2)
    assert path.read_bytes() == before
    LossLog(str(path), ["itm", "mlm"], 2)  # the same columns in another order: kept, up to the resumed step
    assert sorted(_log(path)) == [1, 2] and _log(path)[2]["mlm"] == "0.5"
    assert os.listdir(path.parent) == ["stage.csv"], "no temporary file left"


@pytest.mark.parametrize("checkpoint", ["stage1-step2.pt", "stage1.pt"])
def test_a_resume_with_another_model_section_is_refused(run_copy, capsys, checkpoint):
    """A resume builds the checkpoint's model: another model section used to be ignored silently (and config.json
    then held both shapes). Refused, naming each key with both values; dropouts too (the checkpoint's model continues
    as it was; init:, a new run, may set them)."""
    out, config = run_copy
    before = _snapshot(out)
    status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / checkpoint),
                           "--set", "model.hidden_size=64", "--set", "model.num_layers=4",
                           "--set", "model.max_regions=16", "--set", "model.dropout=0.2")
    assert status == 2 and error.count("\n") == 1, error
    assert error.startswith(f"lait train: {out / 'checkpoints' / checkpoint}: a resume continues the checkpoint's "
                            f"model"), error
    for named in ("model.hidden_size 64, the checkpoint's 32", "model.num_layers 4, the checkpoint's 2",
                  "model.max_regions 16, the checkpoint's 8", "model.dropout 0.2, the checkpoint's 0.1"):
        assert named in error, (named, error)
    assert _snapshot(out) == before, "nothing written"
    written = json.loads((out / "config.json").read_text())
    assert written["train"]["model"]["hidden_size"] == written["model"]["hidden_size"] == 32


def test_a_resume_may_write_the_model_keys_the_data_decided(run_copy, capsys):
    """The model section is compared with the checkpoint run's and with its model's (feature width, class count
    and vocabulary the data decided): either is the checkpoint's model. A checkpoint without its run's model
    section compares the keys the config sets."""
    out, config = run_copy
    built = load_checkpoint(str(out / "checkpoints" / "stage1-step2.pt"))["model_config"]
    status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / "stage1-step2.pt"),
                           "--set", f"model.feature_dim={built['feature_dim']}",
                           "--set", f"model.num_classes={built['num_classes']}")
    assert status == 0, error
    state = load_checkpoint(str(out / "checkpoints" / "stage1-step2.pt"))
    del state["train_config"]["model"]
    import torch

    torch.save(state, out / "old.pt")
    assert _train(capsys, config, out, "--resume", str(out / "old.pt"))[0] == 0
    status, error = _train(capsys, config, out, "--resume", str(out / "old.pt"), "--set", "model.max_regions=16")
    assert status == 2 and "model.max_regions 16, the checkpoint's 8" in error, error
    # vocab_size is the tokenizer's whatever the section says (no bert): not a difference, even set otherwise
    assert built["vocab_size"] != 500
    status, error = _train(capsys, config, out, "--resume", str(out / "old.pt"), "--set", "model.vocab_size=500")
    assert status == 0, error


@pytest.mark.parametrize("override", ["model.dropout=1.5", "model.attention_dropout=1.5", "model.attention_dropout=1",
                                      "model.dropout=-0.1"])
def test_dropouts_are_probabilities_below_one_checked_with_the_config(synth_dir, tmp_path, capsys, override):
    """attention_dropout 1.5 passed the config check and failed with a traceback in the first step, after out_dir
    was written (so the corrected rerun was refused); dropout 1.5 failed after the tokenizer was trained."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(tmp_path / "run"))))
    status, error = _train(capsys, config, tmp_path / "run", "--set", override)
    key = override.split("=")[0]
    assert status == 2 and error.startswith(f"lait train: {key}: ") and error.count("\n") == 1, error
    assert ("need at least 0" if "-" in override else "need a dropout probability from 0 up to, not including, 1") \
        in error, error
    assert not (tmp_path / "run").exists(), "refused as the config is read"
    assert load_config(str(config), ["model.dropout=0.99", "model.attention_dropout=0"]).model.dropout == 0.99


def _captions_of_split(synth_dir: str, out, split, caption: str | None = None) -> int:
    """A copy of the synthetic data whose captions all have ``split`` (and the text ``caption``, when given)."""
    import schemas

    shutil.copytree(f"{synth_dir}/regions", out / "regions")
    rows = schemas.read_table(f"{synth_dir}/captions", "captions").to_pylist()
    with schemas.ShardWriter(str(out / "captions"), "captions") as writer:
        for row in rows:
            writer.write({**row, "split": split, **({"caption": caption} if caption is not None else {})})
    return len(rows)


def test_a_split_filter_that_leaves_no_caption_says_so(synth_dir, tmp_path, capsys, caplog):
    """Captions of split 'val' given to an entry of the default split 'train': the stage said that "no caption
    matches an image of its regions datasets", pointing at the join, while every caption has its image."""
    count = _captions_of_split(synth_dir, tmp_path / "val", "val")
    entry = {"regions": f"{tmp_path}/val/regions", "captions": f"{tmp_path}/val/captions"}
    base = _base(synth_dir, str(tmp_path / "run"))
    base["pretrain"][0]["datasets"] = [entry]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(base))
    status, error = _train(capsys, config, tmp_path / "run")
    assert status == 2 and error.count("\n") == 1, error
    assert error.startswith(f"lait train: stage 'stage1': no captions in split 'train' of {tmp_path}/val/captions "
                            f"(it holds {count} in split 'val'; `split: null` takes all): no (caption, image) pair "
                            f"to train on ({{'pairs': 0, "), error
    assert "'images_without_captions': 200" in error, "the join's counts are kept"
    # Beside a dataset that has captions in the split: trained on the other one, with a warning.
    base["pretrain"][0]["datasets"] = [entry, {**entry, "captions": f"{synth_dir}/captions", "split": "train"}]
    base["finetune"] = None
    with caplog.at_level("WARNING", logger="model.train"):
        summary = train(load_config(base=base))
    assert summary["stages"][0]["data"]["pairs"] == 320
    assert f"stage stage1: no captions in split 'train' of {tmp_path}/val/captions (it holds {count} in split " \
           f"'val'; `split: null` takes all): that dataset adds nothing to the stage" in caplog.text


def test_a_split_of_blank_captions_only_says_so(synth_dir, tmp_path, capsys):
    """Every caption of the split blank (left out, as blank captions are): the stage said that "no caption matches
    an image of its regions datasets", pointing at the join, while every caption has its image."""
    count = _captions_of_split(synth_dir, tmp_path / "blank", "train", caption=" \t")
    base = _base(synth_dir, str(tmp_path / "run"))
    base["pretrain"][0]["datasets"] = [{"regions": f"{tmp_path}/blank/regions",
                                        "captions": f"{tmp_path}/blank/captions"}]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(base))
    status, error = _train(capsys, config, tmp_path / "run")
    assert status == 2 and error.count("\n") == 1, error
    assert error.startswith(f"lait train: stage 'stage1': split 'train' of {tmp_path}/blank/captions holds only "
                            f"blank captions ({count}, empty or white space): no (caption, image) pair to train on "
                            f"({{'pairs': 0, "), error
    assert f"'blank_captions': {count}" in error, "the join's counts are kept"


def test_native_train_reports_bad_input_in_one_line(synth_dir, tmp_path):
    """`python -m model.train` (what torchrun runs) printed a traceback where `lait train` prints one line and
    exits 2: the same exceptions are caught, by the same helper."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(tmp_path / "run"))))
    (tmp_path / "held" / "logs").mkdir(parents=True)  # an out_dir holding a run (interrupted before a checkpoint)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for argv, expected in ((["--set", "pretrain.0.stepz=3"], "pretrain.0: unknown key(s) ['stepz']"),
                           (["--out-dir", str(tmp_path / "held")], f"out_dir: {tmp_path / 'held'} already holds a "
                                                                   f"training run (logs/)")):
        proc = subprocess.run([sys.executable, "-m", "model.train", "--config", str(config), "--no-progress", *argv],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if "Warning" not in line and line.strip()]
        assert lines == [line for line in lines if line.startswith("python -m model.train: ")] and len(lines) == 1, \
            proc.stderr
        assert expected in lines[0], lines


def test_a_stage_kind_other_than_its_section_is_refused(synth_dir, tmp_path, capsys):
    """`--set pretrain.0.kind=finetune` was accepted and ignored (the section decides); the unknown-key message
    offered `kind` as a key to set."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(tmp_path / "run"))))
    for override, where, section in (("pretrain.0.kind=finetune", "pretrain.0", "pretrain"),
                                     ("finetune.kind=pretrain", "finetune", "finetune")):
        status, error = _train(capsys, config, tmp_path / "run", "--set", override)
        assert status == 2 and error.count("\n") == 1, error
        assert error.startswith(f"lait train: {where}.kind: ") and f"is a {section} stage" in error, error
        assert "drop kind" in error
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError) as caught:
        load_config(str(config), ["pretrain.0.stepz=3"])
    assert "'kind'" not in str(caught.value) and "'steps'" in str(caught.value)
    # The section's own kind is let be.
    assert load_config(str(config), ["pretrain.0.kind=pretrain", "finetune.kind=finetune"]).finetune.kind == "finetune"


def test_a_resume_warns_that_it_keeps_the_checkpoints_tokenizer(run_copy, capsys, caplog):
    """tokenizer_vocab_size, lowercase, tokenizer and bert changed on resume were ignored without a word: the
    tokenizer is the checkpoint's."""
    out, config = run_copy
    with caplog.at_level(logging.WARNING, logger="model.train"):
        status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / "stage1-step2.pt"),
                               "--set", "tokenizer_vocab_size=99", "--set", "lowercase=false")
    assert status == 0, error
    warned = [r.getMessage() for r in caplog.records if "keeps the checkpoint's tokenizer" in r.getMessage()]
    assert len(warned) == 1 and "tokenizer_vocab_size 99 (the checkpoint's run: 120)" in warned[0], warned
    assert "lowercase False (the checkpoint's run: True)" in warned[0]


def test_a_resume_past_a_finished_stage_with_another_seed_warns_of_it_once(run_copy, capsys, caplog):
    """A stage resumed part-way after a finished one, with another seed: the run-wide warning (stage1 trained with
    the checkpoint's) and the resumed stage's data-order warning both named the seed. One warning names it, and says
    both; another run-wide setting (grad_clip) stays in the run-wide one."""
    out, config = run_copy
    with caplog.at_level(logging.WARNING, logger="model.train"):
        status, error = _train(capsys, config, out, "--resume", str(out / "checkpoints" / "finetune-step2.pt"),
                               "--set", "seed=1", "--set", "grad_clip=0.5")
    assert status == 0, error
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    seed = [message for message in warned if "seed" in message]
    assert len(seed) == 1, warned
    assert "other seed (0, now 1)" in seed[0] and "stage(s) stage1 finished before this checkpoint" in seed[0], seed
    run_wide = [message for message in warned if "run-wide settings" in message]
    assert len(run_wide) == 1 and "grad_clip 0.5, the checkpoint's 1.0" in run_wide[0], warned
