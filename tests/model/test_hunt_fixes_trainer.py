"""Trainer-side fixes: a resume past its stage's steps is refused (a stage resumed at exactly its steps ends with its
checkpoint and a final loss); a TSV in CSV quotes is unquoted; an empty `pretrain:`, `datasets:` or `tasks:` key reads
as an empty one; eval notes the R@K a small split makes 100% by construction; `lait eval --data DIR` finds an import
folder's `DIR/features/regions`."""
import csv
import json
import math
import os
import shutil

import pytest
import torch
import yaml
from PIL import Image

import schemas
from imagebert_testlib import read_loss_log, train_config_dict
from lait import cli
from model.config import ConfigError, load_config
from model.synthetic import write_synthetic
from model.train import load_checkpoint, train


@pytest.fixture(autouse=True)
def _one_omp_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def finished_run(synth_dir, tmp_path_factory):
    """stage1 (4 steps, a checkpoint at step 2) and fine-tuning (3 steps), and its YAML config."""
    root = tmp_path_factory.mktemp("hunt-trainer")
    out, config = root / "run", root / "c.yaml"
    data = train_config_dict(synth_dir, str(out), checkpoint_every=2)
    data["model"]["num_layers"] = 1
    config.write_text(yaml.safe_dump(data))
    train(load_config(str(config)))
    return out, config


@pytest.fixture
def part_way(finished_run, tmp_path):
    """A copy of the run killed after stage1's step 2: its last.pt that step's checkpoint, no stage1.pt onwards."""
    out, config = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    checkpoints = copy / "checkpoints"
    for name in ("stage1.pt", "finetune.pt", "final.pt", "finetune-step2.pt"):
        (checkpoints / name).unlink()
    shutil.copy(checkpoints / "stage1-step2.pt", checkpoints / "last.pt")
    (copy / "summary.json").unlink()
    return copy, config


def _train(capsys, config, out, *argv) -> tuple[int, str]:
    status = cli.main(["train", "--config", str(config), "--out-dir", str(out), "--no-progress", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("overrides, named", [
    (["pretrain.0.steps=1"], "(stage1.steps 1)"),
    (["pretrain.0.steps=null", "pretrain.0.epochs=0.01"], "(stage1.epochs 0.01, which makes 1 steps"),
], ids=["steps", "epochs"])
def test_a_resume_past_the_stage_steps_is_refused_before_anything_is_written(part_way, capsys, overrides, named):
    """It exited 0 with `-1/1 steps loss nan`, summary.json's steps_run -1 and final_loss NaN, no stage1.pt, and
    config.json, finetune.pt and final.pt claiming the stage's new step count."""
    out, config = part_way
    before = {name: (out / name).read_bytes() for name in ("config.json", "logs/stage1.csv")}
    status, error = _train(capsys, config, out, "--resume", *(a for o in overrides for a in ("--set", o)))
    assert status == 2, error
    assert error.count("\n") == 1 and error.startswith(f"lait train: {out / 'checkpoints' / 'last.pt'}: stage "
                                                       f"'stage1' resumed at step 2, past this config's 1 steps "), error
    assert named in error and "that make 2 steps at least" in error and "init:" in error, error
    assert before == {name: (out / name).read_bytes() for name in before}
    assert sorted(os.listdir(out / "checkpoints")) == ["last.pt", "stage1-step2.pt"]
    assert not (out / "summary.json").exists()


def test_a_resume_at_exactly_the_stage_steps_ends_the_stage_with_its_checkpoint(part_way, capsys):
    """Resumed at step 2 with `steps: 2` the stage has nothing left to train: it wrote no stage1.pt (a later resume
    from last.pt took it as unfinished) and summary.json gave its final_loss as NaN."""
    out, config = part_way
    status, error = _train(capsys, config, out, "--resume", "--set", "pretrain.0.steps=2")
    assert status == 0, error
    state = load_checkpoint(str(out / "checkpoints" / "stage1.pt"))
    assert state["stage_done"] and state["step"] == 2 and state["stage_steps"] == 2
    (stage,) = [s for s in json.loads((out / "summary.json").read_text())["stages"] if s["name"] == "stage1"]
    assert stage["steps"] == 2 and stage["steps_run"] == 0 and stage["resumed_from_step"] == 2
    # log_every 1: the row of step 2 is the stage's last, and its loss the final one.
    assert stage["final_loss"] == pytest.approx(float(read_loss_log(out / "logs" / "stage1.csv")[2]["loss"]))
    assert math.isfinite(stage["final_loss"])


def _tsv_import(tmp_path, rows, **writer):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", 'b "x".png'):
        Image.new("RGB", (16, 16), (255, 0, 0) if name == "a.jpg" else (0, 0, 255)).save(images / name)
    source = tmp_path / "c.tsv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter="\t", **writer).writerows(rows)
    status = cli.main(["import-captions", str(source), "--format", "tsv", "--images", str(images),
                       "--out", str(tmp_path / "out")])
    captions = schemas.read_table(str(tmp_path / "out" / "captions"), "captions").to_pylist()
    return status, json.loads((tmp_path / "out" / "stats.json").read_text()), \
        {row["caption_id"]: row["caption"] for row in captions}


def test_a_tsv_written_by_the_csv_module_is_unquoted(tmp_path):
    """`a sign reading "STOP"` came in with its CSV quotes (the outer ones, and each inner one doubled), counted
    kept, and a quoted file name was image_missing; a `"` inside a field that is not wholly quoted stays as written."""
    status, stats, captions = _tsv_import(tmp_path, [
        ["image_file", "caption"],
        ["a.jpg", 'a sign reading "STOP"'],  # written "a sign reading ""STOP"""
        ['b "x".png', "a blue square"],  # the file name in quotes
        ["a.jpg", "a red\tsquare"],  # a TAB inside quotes: one field (white space, made a space)
    ])
    assert status == 0
    assert stats["in"] == stats["kept"] == 3, stats
    assert captions == {"tsv:2": 'a sign reading "STOP"', "tsv:3": "a blue square", "tsv:4": "a red square"}


def test_a_tsv_quote_inside_an_unquoted_field_stays(tmp_path):
    """Hand-written lines whose fields are not wholly quoted are read as before."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16)).save(images / "a.jpg")
    source = tmp_path / "c.tsv"
    source.write_text('a.jpg\tsay "hi" now\na.jpg\t"Hi" she said\na.jpg\t"unclosed\na.jpg\t"a"\t"b"\n',
                      encoding="utf-8")
    assert cli.main(["import-captions", str(source), "--format", "tsv", "--images", str(images),
                     "--out", str(tmp_path / "out")]) == 0
    captions = schemas.read_table(str(tmp_path / "out" / "captions"), "captions").to_pylist()
    assert {row["caption_id"]: row["caption"] for row in captions} == \
        {"tsv:1": 'say "hi" now', "tsv:2": '"Hi" she said', "tsv:3": '"unclosed'}
    (rejected,) = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()
    assert rejected["reason"] == "record_invalid" and "line 4 has 3 TAB-separated fields" in rejected["detail"]


def _config_file(tmp_path, synth_dir, text: str):
    data = f"{{regions: {synth_dir}/regions, captions: {synth_dir}/captions}}"
    path = tmp_path / "c.yaml"
    path.write_text(f"out_dir: {tmp_path / 'run'}\n{text}\nfinetune: {{name: ft, steps: 1, datasets: [{data}]}}\n"
                    .replace("DATA", data))
    return str(path)


@pytest.mark.parametrize("text, overrides", [
    ("pretrain:\n#  - name: s1", []),
    ("pretrain: [{name: s1, steps: 1, datasets: [DATA]}]", ["pretrain=null"]),
    ("model:", []),
], ids=["empty-key", "set-null", "empty-model"])
def test_an_empty_list_key_reads_as_empty(tmp_path, synth_dir, text, overrides):
    """`pretrain:` with every stage commented out (or --set pretrain=null) stopped with `config.pretrain: a value is
    required`, while `pretrain: []` ran."""
    config = load_config(_config_file(tmp_path, synth_dir, text), overrides)
    assert [stage.name for stage in config.stages()] == ["ft"]


@pytest.mark.parametrize("text, message", [
    ("pretrain: [{name: s1, steps: 1, datasets: }]", "pretrain.0.datasets: at least one dataset is required"),
    ("pretrain: [{name: s1, steps: 1, datasets: [DATA], tasks: }]",
     "pretrain.0.tasks: at least one task needs a positive weight"),
], ids=["datasets", "tasks"])
def test_an_empty_key_that_must_hold_something_says_what(tmp_path, synth_dir, text, message):
    with pytest.raises(ConfigError) as raised:
        load_config(_config_file(tmp_path, synth_dir, text))
    assert str(raised.value) == message


def test_recall_at_k_names_the_k_a_small_split_saturates():
    from model.eval import recall_at_k, saturation_notes

    torch.manual_seed(0)
    three = recall_at_k(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    # 2 other images; an image's 2 captions among 6 leave 4 others: R@5 and R@10 cannot miss either way.
    assert three["rivals"] == {"image_retrieval": 2, "sentence_retrieval": 4}
    assert three["saturated_k"] == {"image_retrieval": [5, 10], "sentence_retrieval": [5, 10]}
    notes = saturation_notes(three)
    assert len(notes) == 2 and notes[0].startswith("image retrieval: R@5, R@10 are 100% by construction"), notes
    one = recall_at_k(torch.randn(2, 1), torch.tensor([0, 0]))
    assert one["saturated_k"] == {"image_retrieval": [1, 5, 10], "sentence_retrieval": [1, 5, 10]}
    many = recall_at_k(torch.randn(24, 12), torch.arange(24) // 2)
    assert many["saturated_k"] == {"image_retrieval": [], "sentence_retrieval": []} and not saturation_notes(many)


def _eval(capsys, checkpoint, data, out) -> tuple[int, str, str]:
    status = cli.main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                       "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_eval_on_a_three_image_split_notes_the_saturated_recalls(finished_run, tmp_path, capsys):
    """R@5 and R@10 of 3 test images were 100% by construction, with nothing to say so."""
    out, _ = finished_run
    data = tmp_path / "small"
    write_synthetic(str(data), images=8, feature_dim=16, test_images=3, seed=1)
    status, stdout, err = _eval(capsys, out / "checkpoints" / "final.pt", data, tmp_path / "eval.json")
    assert status == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert set(result[direction]) == {"R@1", "R@5", "R@10", "chance_R@1"}  # unchanged
        assert result[direction]["R@5"] == result[direction]["R@10"] == 1.0
    assert result["saturated_k"]["image_retrieval"] == [5, 10] and result["rivals"]["image_retrieval"] == 2
    assert len(result["notes"]) == 2 and all(f"note: {note}" in stdout for note in result["notes"]), stdout


def test_eval_data_finds_an_import_folders_features_regions(finished_run, tmp_path, capsys):
    """`lait features --input D --output D/features` puts the regions in D/features/regions, where `lait eval
    --data D` did not look ("D/regions does not exist"); a training config's `regions: D` finds them too."""
    from model.data import resolve_dataset_dir

    out, _ = finished_run
    data = tmp_path / "imported"
    write_synthetic(str(data), images=30, feature_dim=16, test_images=12, seed=1)
    (data / "features").mkdir()
    shutil.move(str(data / "regions"), str(data / "features" / "regions"))
    shutil.move(str(data / "classes.json"), str(data / "features" / "classes.json"))
    assert resolve_dataset_dir(str(data), "regions") == str(data / "features" / "regions")
    assert resolve_dataset_dir(str(data), "captions") == str(data / "captions")
    status, stdout, err = _eval(capsys, out / "checkpoints" / "final.pt", data, tmp_path / "eval.json")
    assert status == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["num_images"] == 12
    # Neither there: one line naming both places.
    shutil.rmtree(data / "features")
    status, _, err = _eval(capsys, out / "checkpoints" / "final.pt", data, tmp_path / "eval2.json")
    assert status == 2 and err.count("\n") == 1 and "features/regions" in err, err
