"""Paths reach the trainer as typed, and a whole-number key given an infinite value is a one-line error."""
import os

import pytest

from model.config import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("folder", ["my run #2", "res: a", "[x]", "plain"])
def test_out_dir_is_the_folder_as_typed(synth_dir, tmp_path, monkeypatch, folder):
    """`--out-dir "my run #2"` trained into `my run` (a --set value is YAML: " #" starts a comment), and
    `--out-dir "res: a"` was refused as a mapping."""
    import argparse

    import model.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, **kwargs: seen.append(config.out_dir) or {})
    monkeypatch.setenv("LAIT_DATA", synth_dir)
    out = str(tmp_path / folder)
    train_module.run_from_args(argparse.Namespace(config=os.path.join(REPO, "configs", "tiny.yaml"), overrides=[],
                                                  out_dir=out, resume=None, no_progress=True, overwrite=False))
    assert seen == [out]


def test_the_demo_train_step_reads_and_writes_inside_a_run_folder_named_with_a_hash(tmp_path):
    from demo.run import train_overrides

    out = str(tmp_path / "demo #1")
    config = load_config(os.path.join(REPO, "configs", "demo.yaml"), train_overrides(out))
    assert config.out_dir == os.path.join(out, "train")
    assert config.pretrain[0].datasets[0].regions == os.path.join(out, "features", "regions")
    assert config.finetune.datasets[0].captions == os.path.join(out, "captions")
    assert config.eval.regions == os.path.join(out, "test_features", "regions")


@pytest.mark.parametrize("key", ["log_every", "pretrain.0.steps", "seed", "num_workers"])
@pytest.mark.parametrize("value", [".inf", "-.inf", "1e400"])
def test_an_infinite_whole_number_is_a_config_error_naming_the_key(synth_dir, monkeypatch, key, value):
    monkeypatch.setenv("LAIT_DATA", synth_dir)
    with pytest.raises(ConfigError, match=key.rsplit(".", 1)[-1]):
        load_config(os.path.join(REPO, "configs", "tiny.yaml"), [f"{key}={value}"])


def test_an_infinite_whole_number_on_the_command_line_is_one_line(synth_dir, monkeypatch, capsys):
    from lait.cli import main

    monkeypatch.setenv("LAIT_DATA", synth_dir)
    assert main(["train", "--config", os.path.join(REPO, "configs", "tiny.yaml"), "--set", "log_every=.inf"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lait train:") and "log_every" in error and error.count("\n") == 1, error


@pytest.mark.parametrize("text", ["/data/regions", "my run #2", "res: a", "[x]", "true", "12", "~", " lead", "a'b",
                                  "{x}", "- y", "ünï/cödé", ""])
def test_override_text_reads_back_as_the_text_and_stays_plain_where_it_can(text):
    from model.config import apply_override, override_text

    data = {}
    apply_override(data, f"key={override_text(text)}")
    assert data["key"] == text
    if text == "/data/regions":
        assert override_text(text) == text  # as typed, where YAML reads it so (the demo's dry run shows it plainly)
