"""`lait demo --from`: the options of reused outputs read from what their stages recorded (the crawl's settings in
its stats.json, the detector's training record) and the train config compared by its content, on small run folders."""
import json
import os
import shutil

import pytest

from crawler import output
from demo import run as demo_run
from demo.run import Demo, DemoConfig


def _quiet(config):
    return Demo(config, echo=lambda _: None)


def test_from_reads_the_crawls_image_rules_from_its_stats_json(tmp_path):
    """The crawl step's --min-side and --max-aspect came from demo.json only: a crawl folder whose stats.json says it
    was made with --min-side 100 was reused by `--from filter0 --min-side 128` when demo.json said 128 (a demo.json
    from the run before an interrupted one), or when there was no demo.json at all."""
    out = tmp_path / "r"
    # What `lait crawl --min-side 100 --max-aspect 0` writes (crawler.output.write_stats, its settings).
    output.write_stats(str(out / "crawl"), {"source": "crawl"},
                       settings=output.image_settings(100, float("inf"), ["JPEG", "PNG"], 1_000_000))
    assert json.loads((out / "crawl" / "stats.json").read_text())["settings"]["max_aspect"] == 0.0
    assert demo_run.stage_options(str(out), "crawl") == {"min_side": 100, "max_aspect": 0.0}
    with pytest.raises(ValueError, match="^--from filter0 would reuse the outputs of crawl, made with --min-side 100 "
                                         "--max-aspect 0.0, but this run has --min-side 128 --max-aspect 3.0: rerun "
                                         "that step \\(--from crawl\\)"):
        demo_run.check_config(DemoConfig(out=str(out), start_from="filter0", stop_after="filter0"))
    # What the stage recorded wins over demo.json's record of the step.
    demo = _quiet(DemoConfig(out=str(out)))
    crawl = demo.step("crawl")
    crawl.status, crawl.made_with = "ok", {"min_side": 128, "max_aspect": 3.0}
    demo.status = "finished"
    demo.write_log()
    with pytest.raises(ValueError, match="crawl, made with --min-side 100 --max-aspect 0.0"):
        demo_run.check_config(DemoConfig(out=str(out), start_from="filter0", stop_after="filter0"))
    demo_run.check_config(DemoConfig(out=str(out), min_side=100, max_aspect=0.0, start_from="filter0",
                                     stop_after="filter0"))


def test_the_detector_step_records_its_epochs_and_scenes_beside_the_weights(tmp_path):
    """The detector's --seed, --detector-scenes and --detector-epochs came from demo.json only: without one (or
    with one from an earlier run) `--from features` reused a detector of other epochs without a word."""
    out = tmp_path / "r"
    demo = _quiet(DemoConfig(out=str(out), seed=3, detector_scenes=2, detector_epochs=1))
    demo.train_detector()  # the step itself, on two scenes for one epoch
    record = json.loads((out / "detector" / demo_run.DETECTOR_RECORD).read_text())
    assert (record["epochs"], record["samples"]) == (1, 2)
    assert record["source"] == {"stream": "detector", "seed": 3, "scenes": 2}
    assert demo_run.stage_options(str(out), "detector") == {"detector_epochs": 1, "detector_scenes": 2, "seed": 3}
    assert not (out / "demo.json").exists()
    with pytest.raises(ValueError, match="^--from features would reuse the outputs of detector, made with "
                                         "--detector-scenes 2 --detector-epochs 1, but this run has "
                                         "--detector-scenes 400 --detector-epochs 4: rerun that step "
                                         "\\(--from detector\\)"):
        demo_run.check_config(DemoConfig(out=str(out), seed=3, start_from="features", stop_after="features"))
    with pytest.raises(ValueError, match="detector, made with --seed 3, but this run has --seed 4"):
        demo_run.check_config(DemoConfig(out=str(out), seed=4, detector_scenes=2, detector_epochs=1,
                                         start_from="features", stop_after="features"))
    demo_run.check_config(DemoConfig(out=str(out), seed=3, detector_scenes=2, detector_epochs=1,
                                     start_from="features", stop_after="features"))


def _run_train_step(out, train_config):
    """The train step run by the demo (its stage replaced by writing ``train/``), on reused features and captions."""
    for rel in ("features", "captions"):
        os.makedirs(out / rel, exist_ok=True)
    demo = _quiet(DemoConfig(out=str(out), train_config=str(train_config), start_from="train", stop_after="train"))
    demo.step("train").command, demo.step("train").func = None, lambda: os.makedirs(out / "train")
    demo.finish = lambda: None
    demo.run()
    return {s["name"]: s for s in json.load(open(out / "demo.json"))["steps"]}


def test_the_train_config_counts_by_its_content_not_its_path(tmp_path):
    """--train-config was compared by absolute path: the same file edited since was reused silently, and a copy of
    the same file at another path was refused."""
    out = tmp_path / "r"
    shipped = open(DemoConfig().train_config).read()
    config = tmp_path / "mine.yaml"
    config.write_text(shipped)
    steps = _run_train_step(out, config)
    made = steps["train"]["options"]["train_config"]
    assert steps["train"]["status"] == "ok" and made == demo_run.option_value(DemoConfig(train_config=str(config)),
                                                                              "train_config")
    assert made["path"] == str(config) and len(made["sha256"]) == 64

    # A copy of the same content elsewhere (the shipped file too) is the same config: reused.
    copy = tmp_path / "elsewhere" / "copy.yaml"
    copy.parent.mkdir()
    shutil.copy(config, copy)
    for path in (copy, DemoConfig().train_config):
        demo_run.check_config(DemoConfig(out=str(out), train_config=str(path), start_from="eval", stop_after="eval"))
    # The same path, edited since: another config.
    config.write_text(shipped + "# edited\n")
    edited = demo_run.file_sha256(str(config))
    with pytest.raises(ValueError, match=f"^--from eval would reuse the outputs of train, made with --train-config "
                                         f"{config} \\(sha256 {made['sha256'][:12]}\\), but this run has "
                                         f"--train-config {config} \\(sha256 {edited[:12]}\\): rerun that step "
                                         f"\\(--from train\\)"):
        demo_run.check_config(DemoConfig(out=str(out), train_config=str(config), start_from="eval", stop_after="eval"))
    # A file that cannot be read is not the config the outputs were made with.
    with pytest.raises(ValueError, match=f"but this run has --train-config {tmp_path / 'gone.yaml'} \\(unreadable\\)"):
        demo_run.check_config(DemoConfig(out=str(out), train_config=str(tmp_path / "gone.yaml"), start_from="eval",
                                         stop_after="eval"))

    # A demo.json that recorded the path only (before the content was) does not say which content: not checked,
    # and the reused step says that it is not recorded.
    log = json.load(open(out / "demo.json"))
    next(s for s in log["steps"] if s["name"] == "train")["options"]["train_config"] = str(config)
    (out / "demo.json").write_text(json.dumps(log))
    demo_run.check_config(DemoConfig(out=str(out), train_config=str(copy), start_from="eval", stop_after="eval"))
    demo = _quiet(DemoConfig(out=str(out), train_config=str(copy), start_from="eval", stop_after="eval"))
    demo.reuse(demo.step("train"), 11, demo_run.earlier_steps(str(out)))
    assert demo.step("train").made_with == {"train_config": None}
    assert "the --train-config it was made with is not recorded" in demo.step("train").detail
