"""Training: exact resume, DDP with 2 CPU processes, and a tiny pretrain -> fine-tune -> eval beating chance."""
import json
import os
import re
import subprocess

import pytest
import torch

from imagebert_testlib import REPO, lait_runs_command, loss_columns, read_loss_log, train_config_dict
from model.config import ConfigError, load_config
from model.train import load_checkpoint, train


_base = train_config_dict
_log = read_loss_log
_losses = loss_columns


@pytest.mark.parametrize("masking, buckets", [("bernoulli", None), ("exact", None), ("exact", [2, 2])])
def test_resume_is_exact(synth_dir, tmp_path, masking, buckets):
    full_dir, resumed_dir = str(tmp_path / "full"), str(tmp_path / "resumed")
    config = load_config(base=_base(synth_dir, full_dir, checkpoint_every=2, num_workers=1, masking=masking,
                                    length_buckets=buckets))
    config.finetune.loss, config.finetune.dual_encoder = "triplet", 0.5
    train(config)
    checkpoint = os.path.join(full_dir, "checkpoints", "stage1-step2.pt")
    state = load_checkpoint(checkpoint)  # weights_only=True inside: plain tensors and containers only
    assert state["step"] == 2 and not state["stage_done"] and "optimizer" in state and "scheduler" in state
    assert state["data"]["batches"] == 2 and isinstance(state["tokenizer"], str)

    resumed = load_config(base=_base(synth_dir, resumed_dir, checkpoint_every=2, num_workers=1, masking=masking,
                                     length_buckets=buckets))
    resumed.finetune.loss, resumed.finetune.dual_encoder = "triplet", 0.5
    train(resumed, resume=checkpoint)
    full_log = _log(os.path.join(full_dir, "logs", "stage1.csv"))
    resumed_log = _log(os.path.join(resumed_dir, "logs", "stage1.csv"))
    assert sorted(resumed_log) == [3, 4], "the resumed run starts at the step after the checkpoint"
    for step in (3, 4):
        assert _losses(resumed_log[step]) == _losses(full_log[step]), f"step {step} differs after resume"
    assert _log(os.path.join(resumed_dir, "logs", "finetune.csv")).keys() == {1, 2, 3}
    assert {"triplet", "dual_encoder"} <= set(_log(os.path.join(resumed_dir, "logs", "finetune.csv"))[1])
    for step, row in _log(os.path.join(resumed_dir, "logs", "finetune.csv")).items():
        assert _losses(row) == _losses(_log(os.path.join(full_dir, "logs", "finetune.csv"))[step])
    final_full = load_checkpoint(os.path.join(full_dir, "checkpoints", "final.pt"))["model"]
    final_resumed = load_checkpoint(os.path.join(resumed_dir, "checkpoints", "final.pt"))["model"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)

    # Resuming a run whose stages are all done trains nothing and keeps the model (its stages are listed as done).
    again = load_config(base=_base(synth_dir, full_dir))
    again.finetune.loss, again.finetune.dual_encoder = "triplet", 0.5  # the run's: a finished stage resumes as it ran
    again = train(again, resume="auto")
    assert [(s["name"], s["done_before_resume"]) for s in again["stages"]] == [("stage1", True), ("finetune", True)]


def test_config_errors_name_the_key(synth_dir, tmp_path):
    base = _base(synth_dir, str(tmp_path))
    with pytest.raises(ConfigError, match="pretrain.0.tasks"):
        load_config(base=base, overrides=["pretrain.0.tasks={mlm: 1, jigsaw: 1}"])
    with pytest.raises(ConfigError, match="finetune.loss"):
        load_config(base=base, overrides=["finetune.loss=hinge"])
    with pytest.raises(ConfigError, match="steps or epochs"):
        load_config(base=base, overrides=["pretrain.0.epochs=1"])
    config = load_config(base=base, overrides=["pretrain.0.steps=7", "model.hidden_size=48", "finetune.lr=2e-3"])
    assert config.pretrain[0].steps == 7 and config.model.hidden_size == 48 and config.finetune.lr == 0.002


DDP_RUNS = {"random-batches": None, "length-buckets": [2, 2]}


@pytest.fixture(scope="module")
def ddp_runs(synth_dir, tmp_path_factory):
    """Each configuration of ``DDP_RUNS`` trained by ``lait -v train`` under torchrun with 2 CPU processes on gloo:
    one launch runs them in turn in the same two processes (starting them is most of a launch's cost). Returns
    the launch's stderr and, by configuration, its out_dir and the stdout of each process (by rank)."""
    import yaml

    folder = tmp_path_factory.mktemp("ddp")
    runs, dirs = [], {}
    for name, buckets in DDP_RUNS.items():
        out_dir = dirs[name] = folder / name
        # accumulation runs DDP's no_sync path; with buckets, the ranks' batches may differ in shape at one step
        config = _base(synth_dir, str(out_dir), log_every=2, grad_accum=2, length_buckets=buckets)
        del config["pretrain"][0]["steps"]
        config["pretrain"][0]["epochs"] = 0.3  # 0.3 x 320 pairs / (8 per rank x 2 ranks x 2 accumulated) = 3 steps
        config["finetune"].update(steps=2, loss="multiclass")
        config["eval"] = {"regions": f"{synth_dir}/regions", "captions": f"{synth_dir}/captions", "split": "test"}
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        runs.append((["-v", "train", "--config", str(path), "--no-progress"], folder / f"{name}.stdout"))
    # a rank that aborts (a rare SIGABRT at the stage-to-eval boundary was seen twice) prints its Python stack
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONFAULTHANDLER="1")
    proc = subprocess.run(lait_runs_command(folder, runs), capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-8000:]
    return proc.stderr, {name: (dirs[name], [(folder / f"{name}.stdout.{rank}").read_text() for rank in (0, 1)])
                         for name in DDP_RUNS}


@pytest.mark.parametrize("name", DDP_RUNS)
def test_ddp_two_cpu_processes_on_gloo(ddp_runs, name):
    stderr, runs = ddp_runs
    out_dir, stdout = runs[name]
    # each process logs its checksum once per run, the runs in the order of DDP_RUNS
    checksums = {}
    for rank, checksum in re.findall(r"rank (\d): final parameter checksum (\S+)", stderr):
        checksums.setdefault(int(rank), []).append(float(checksum))
    assert set(checksums) == {0, 1} and all(len(c) == len(DDP_RUNS) for c in checksums.values()), stderr[-2000:]
    run = list(DDP_RUNS).index(name)
    assert checksums[0][run] == checksums[1][run], "DDP replicas diverged"
    assert (stdout[0].count("checkpoint:"), stdout[1].count("checkpoint:")) == (1, 0), "only the first process reports"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert [s["name"] for s in summary["stages"]] == ["stage1", "finetune"]
    # Global samples/s counts both ranks' batches.
    assert (out_dir / "checkpoints" / "final.pt").exists()
    assert set(_log(str(out_dir / "logs" / "stage1.csv"))) == {2, 3}
    assert "multiclass" in next(iter(_log(str(out_dir / "logs" / "finetune.csv")).values()))
    # The final eval: both processes scored a share of the pairs, the first wrote eval.json.
    result = json.loads((out_dir / "eval.json").read_text())
    assert result["processes"] == 2 and result["pairs_scored"] == result["num_captions"] * result["num_images"] > 0


def test_init_fine_tunes_a_trained_checkpoint_in_a_new_run(synth_dir, tiny_checkpoint, tmp_path):
    from model.synthetic import write_synthetic

    data = {"regions": f"{synth_dir}/regions", "captions": f"{synth_dir}/captions", "split": "train"}
    config = {"out_dir": str(tmp_path / "ft"), "init": tiny_checkpoint, "log_every": 1,
              # lr 0: the weights must come out as they went in, the checkpoint's
              "finetune": {"name": "flickr", "datasets": [data], "steps": 2, "batch_size": 8, "lr": 0.0}}
    summary = train(load_config(base=config))
    assert [s["name"] for s in summary["stages"]] == ["flickr"]
    start, end = load_checkpoint(tiny_checkpoint), load_checkpoint(summary["checkpoint"])
    assert end["tokenizer"] == start["tokenizer"] == (tmp_path / "ft" / "tokenizer.json").read_text()
    assert end["model_config"] == start["model_config"]
    for name, tensor in start["model"].items():
        assert torch.equal(end["model"][name], tensor), name
    shipped = os.path.join(REPO, "configs", "finetune.yaml")
    os.environ.pop("LAIT_INIT", None)
    with pytest.raises(ConfigError, match="init: .* unset environment variable"):
        load_config(shipped, [f"finetune.datasets.0.regions={synth_dir}/regions",
                              f"finetune.datasets.0.captions={synth_dir}/captions", "eval=null"])
    loaded = load_config(shipped, [f"init={tiny_checkpoint}", f"finetune.datasets.0.regions={synth_dir}/regions",
                                   f"finetune.datasets.0.captions={synth_dir}/captions", "eval=null"])
    assert loaded.init == tiny_checkpoint and not loaded.pretrain and loaded.finetune.loss == "binary"
    with pytest.raises(ConfigError, match="drop bert \\("):
        load_config(base={**config, "bert": "/models/bert", "model": {"hidden_size": 64}})
    with pytest.raises(ConfigError, match="model.hidden_size 48, the checkpoint's 64; drop model.hidden_size"):
        train(load_config(base={**config, "out_dir": str(tmp_path / "other"), "model": {"hidden_size": 48}}))
    write_synthetic(str(tmp_path / "wide"), images=12, feature_dim=24, test_images=2, seed=3)
    wide = {"regions": str(tmp_path / "wide" / "regions"), "captions": str(tmp_path / "wide" / "captions"),
            "split": "train"}
    with pytest.raises(ValueError, match="width 24"):
        train(load_config(base={**config, "out_dir": str(tmp_path / "wide-ft"),
                                "finetune": {**config["finetune"], "datasets": [wide]}}))


def test_tiny_pretrain_finetune_eval_beats_chance(trained_run):
    out_dir, stdout = trained_run
    result = json.loads(open(os.path.join(out_dir, "eval.json")).read())
    summary = json.loads(open(os.path.join(out_dir, "summary.json")).read())
    assert [s["name"] for s in summary["stages"]] == ["stage1", "stage2", "finetune"]
    assert summary["stages"][0]["data"]["pairs"] == 320
    pretrain_log = _log(os.path.join(out_dir, "logs", "stage1.csv"))
    assert {"mlm", "moc", "mrfr", "itm"} <= set(next(iter(pretrain_log.values())))
    finetune_log = _log(os.path.join(out_dir, "logs", "finetune.csv"))
    first, last = min(finetune_log), max(finetune_log)
    assert float(finetune_log[last]["loss"]) < float(finetune_log[first]["loss"]) - 0.1
    for direction in ("image_retrieval", "sentence_retrieval"):
        scores = result[direction]
        # 40 held-out images: chance R@1 is 2.5%; measured 27-39% (11x-15x chance, seeds 0-2).
        assert scores["R@1"] >= 3 * scores["chance_R@1"], (direction, scores)
        assert scores["R@10"] >= 0.5, (direction, scores)
    assert "image retrieval" in stdout and "checkpoint:" in stdout
    assert os.path.exists(os.path.join(out_dir, "tokenizer.json"))


def test_train_cli_reports_bad_input_without_a_traceback(synth_dir, tmp_path, monkeypatch, capsys):
    from lait.cli import main

    config = os.path.join(REPO, "configs", "tiny.yaml")
    assert main(["train", "--config", config]) == 2
    error = capsys.readouterr().err
    assert "LAIT_DATA" in error and "unset environment variable" in error
    monkeypatch.setenv("LAIT_DATA", synth_dir)
    assert main(["train", "--config", config, "--set", f"out_dir={tmp_path}",
                 "--set", f"pretrain.0.datasets.0.regions={tmp_path}/nowhere"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lait train:") and "nowhere" in error and error.count("\n") == 1
    assert main(["train", "--config", config, "--set", "finetune.loss=hinge"]) == 2
    assert "finetune.loss" in capsys.readouterr().err


def test_resuming_with_other_data_order_settings_warns(synth_dir, tmp_path, caplog):
    """A resume replays the consumed batches; with another batching it would replay others: said, not silent."""
    config = load_config(base=_base(synth_dir, str(tmp_path / "run"), checkpoint_every=2))
    config.pretrain[0].steps, config.finetune = 3, None
    train(config)
    checkpoint = os.path.join(tmp_path, "run", "checkpoints", "stage1-step2.pt")
    # each setting named with the checkpoint's value and the new one
    for changes, expected in (({}, None),
                              # 0 and 1 workers both make one data consumer per process: the same batches
                              ({"num_workers": 1}, None),
                              ({"length_buckets": [2, 2], "shuffle_buffer": 64},
                               f"length_buckets ({config.length_buckets!r}, now [2, 2])"),
                              ({"pretrain.0.batch_size": 4}, f"stage1.batch_size ({config.pretrain[0].batch_size!r}, now 4)")):
        again = load_config(base=_base(synth_dir, str(tmp_path / f"again-{len(changes)}-{'-'.join(changes)}"),
                                       checkpoint_every=2),
                            overrides=[f"{k}={v}" for k, v in changes.items()])
        again.pretrain[0].steps, again.finetune = 3, None
        caplog.clear()
        with caplog.at_level("WARNING", logger="model.train"):
            train(again, resume=checkpoint)
        warnings = [r.getMessage() for r in caplog.records if "resuming with other" in r.getMessage()]
        if expected is None:
            assert warnings == []
        else:
            assert len(warnings) == 1 and expected in warnings[0] and "after step 2" in warnings[0], warnings


def test_exact_masking_with_the_whole_model_compiled(synth_dir, tmp_path):
    """The GPU configuration (masking: exact, compile: true -> compile_scope model) trains end to end on the CPU."""
    config = load_config(base=_base(synth_dir, str(tmp_path), masking="exact", compile=True))
    config.pretrain[0].steps, config.finetune.steps = 2, 2
    summary = train(config)
    assert [s["name"] for s in summary["stages"]] == ["stage1", "finetune"]
    pretrain_log = _log(os.path.join(tmp_path, "logs", "stage1.csv"))
    assert sorted(pretrain_log) == [1, 2]
    for row in pretrain_log.values():
        for task in ("mlm", "moc", "mrfr", "itm"):
            assert 0 < float(row[task]) < 100, (task, row)
    finetune_log = _log(os.path.join(tmp_path, "logs", "finetune.csv"))
    assert all(0 < float(row["binary"]) < 10 for row in finetune_log.values())


def test_length_buckets_compile_one_static_graph_per_bucket(synth_dir, tmp_path, monkeypatch, caplog):
    """Synthetic images hold 2 to 5 regions: with buckets of up to 4 and up to 8 regions, the compiled step
    meets two shapes, each a graph of its own, and trains through them. (Traced by AOTAutograd without
    inductor's code generation, which the test above covers: minutes on two cores for each new shape.)"""
    from torch._dynamo.utils import counters

    from model.imagebert import ImageBert

    compile_model = ImageBert.compile_model
    monkeypatch.setattr(ImageBert, "compile_model", lambda self, opaque_layer_norm=False, **options: compile_model(
        self, opaque_layer_norm, **options, backend="aot_eager"))
    config = load_config(base=_base(synth_dir, str(tmp_path), masking="exact", compile=True, length_buckets=[1, 2]))
    config.pretrain[0].steps, config.pretrain[0].batch_size, config.finetune = 6, 4, None
    # what is counted is the graphs, not what is in them: one layer and one task trace in half the time
    config.model.num_layers, config.pretrain[0].tasks = 1, {"mlm": 1.0}
    before = counters["stats"]["unique_graphs"]
    with caplog.at_level("INFO", logger="model.train"):
        train(config)
    assert counters["stats"]["unique_graphs"] - before == 2
    compiles = [r.getMessage() for r in caplog.records if "compiled the step for the bucket" in r.getMessage()]
    assert len(compiles) == 2 and compiles[-1].endswith("(2 of at most 2 shapes)"), compiles
    assert sorted(_log(os.path.join(tmp_path, "logs", "stage1.csv"))) == [1, 2, 3, 4, 5, 6]


def test_config_counts_types_and_overrides_fail_with_the_key(synth_dir, tmp_path):
    base = _base(synth_dir, str(tmp_path))
    for override, message in (("pretrain.0.steps=0", "pretrain.0.steps: 0, need at least 1"),
                              ("finetune.steps=-2", "finetune.steps: -2"),
                              ("log_every=0", "log_every: 0"), ("grad_accum=0", "grad_accum: 0"),
                              ("shuffle_buffer=0", "shuffle_buffer: 0"), ("checkpoint_every=-1", "checkpoint_every"),
                              ("model.num_heads=0", "model.num_heads"), ("mlm_prob=1.5", "mlm_prob"),
                              ("pretrain.0.tasks=mlm", "pretrain.0.tasks: 'mlm' is not a mapping"),
                              ("pretrain.0.tasks={mlm: lots}", "pretrain.0.tasks.mlm"),
                              ("pretrain.0.tasks={mlm: -1, itm: 1}", "negative loss weight"),
                              ("pretrain.0.datasets.0.regions=[a, b]", "datasets.0.regions: .* is not a string"),
                              ("pretrain.0.datasets.0.split=true", "datasets.0.split: True is not a string"),
                              ("model.hidden_size.x=1", "model.hidden_size is 32, not a section"),
                              ("out_dir.sub=1", "out_dir is"), ("finetune.lr=[", "not valid YAML")):
        with pytest.raises(ConfigError, match=message):
            load_config(base=base, overrides=[override])
    with pytest.raises(ConfigError, match="finetune.epochs: 0"):
        load_config(base=base, overrides=["finetune.steps=null", "finetune.epochs=0"])
    # A YAML number where a name is meant (split: 2017) is that name.
    config = load_config(base=base, overrides=["pretrain.0.datasets.0.split=2017"])
    assert config.pretrain[0].datasets[0].split == "2017"
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(str(tmp_path / "list.yaml"))


def test_an_override_changes_one_stage_even_where_yaml_anchors_share_an_entry(synth_dir, tmp_path):
    """YAML loads an anchor and its aliases as one object: an override must still reach one place only."""
    entry = {"regions": f"{synth_dir}/regions", "captions": f"{synth_dir}/captions", "split": "train"}
    (tmp_path / "anchored.yaml").write_text(
        f"out_dir: {tmp_path / 'run'}\n"
        f"pretrain:\n  - name: stage1\n    steps: 2\n    datasets: [&data {json.dumps(entry)}]\n"
        f"  - name: stage2\n    steps: 2\n    datasets: [*data]\n"
        f"finetune:\n  steps: 2\n  datasets: [*data]\n")
    config = load_config(str(tmp_path / "anchored.yaml"), overrides=["pretrain.0.datasets.0.split=test"])
    assert [s.datasets[0].split for s in config.stages()] == ["test", "train", "train"]


def test_data_that_does_not_fit_the_model_is_refused_before_training(synth_dir, tmp_path):
    from model.synthetic import write_synthetic

    write_synthetic(str(tmp_path / "d8"), images=20, feature_dim=8, test_images=4, seed=2)
    wide = {"regions": f"{synth_dir}/regions", "captions": f"{synth_dir}/captions", "split": "train"}
    narrow = {"regions": f"{tmp_path}/d8/regions", "captions": f"{tmp_path}/d8/captions", "split": "train"}
    config = _base(synth_dir, str(tmp_path / "run"))
    config["finetune"]["datasets"] = [wide, narrow]  # one stage mixing D=16 and D=8 regions
    with pytest.raises(ValueError, match=f"{tmp_path}/d8/regions: features of width 8, the model reads 16"):
        train(load_config(base=config))
    config = _base(synth_dir, str(tmp_path / "run"), eval=dict(wide, split="nosuch"))
    with pytest.raises(ValueError, match="eval: .*no captions in split 'nosuch'"):
        train(load_config(base=config))
    assert not os.path.exists(tmp_path / "run" / "checkpoints"), "refused before the first stage"


def test_unreadable_or_mismatched_checkpoints_are_one_line_errors(synth_dir, tmp_path, capsys):
    from lait.cli import main
    from model.train import CHECKPOINT_FORMAT

    bad = {"truncated.pt": None, "text.pt": b"hello\n", "list.pt": [1, 2, 3], "other.pt": {"format": "other"},
           "nomodel.pt": {"format": CHECKPOINT_FORMAT}, "eval.json": b'{"R@1": 0.5}'}
    for name, content in bad.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is None:
            torch.save({"format": CHECKPOINT_FORMAT, "model": {"w": torch.zeros(1000)}}, path)
            path.write_bytes(path.read_bytes()[:300])
        else:
            torch.save(content, path)
    os.mkdir(tmp_path / "folder.pt")
    for name in [*bad, "folder.pt"]:
        with pytest.raises(ValueError, match=f"{name}: not a readable LAIT checkpoint"):
            load_checkpoint(str(tmp_path / name))
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(tmp_path / "run"))))
    (tmp_path / "init.yaml").write_text(yaml.safe_dump({k: v for k, v in _base(synth_dir, str(tmp_path / "run")).items()
                                                        if k != "model"}))
    runs = [["train", "--config", str(config), "--resume", str(tmp_path / "text.pt")],
            ["train", "--config", str(tmp_path / "init.yaml"), "--set", f"init={tmp_path / 'eval.json'}"],
            ["eval", "--checkpoint", str(tmp_path / "folder.pt"), "--data", synth_dir, "--no-progress"],
            ["eval", "--checkpoint", str(tmp_path / "list.pt"), "--data", synth_dir, "--no-progress"]]
    for argv in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "not a readable LAIT checkpoint" in err and "\n" not in err and "Traceback" not in err, err

    # A checkpoint of another run's stages (resumed by mistake): its stage is not this config's.
    state = {"format": CHECKPOINT_FORMAT, "model": {}, "model_config": {}, "tokenizer": "{}", "stage_index": 1,
             "stage_name": "stage2", "step": 5, "stage_done": True,
             "train_config": {"pretrain": [{"name": "stage1"}, {"name": "stage2"}], "finetune": {"name": "finetune"}}}
    torch.save(state, tmp_path / "other-run.pt")
    with pytest.raises(ValueError, match="a checkpoint of stage 'stage2' .* this config's stages are \\['stage1', "
                                         "'finetune'\\]"):
        train(load_config(base=_base(synth_dir, str(tmp_path / "run"))), resume=str(tmp_path / "other-run.pt"))
    only = _base(synth_dir, str(tmp_path / "run"))
    del only["pretrain"]
    state.update(stage_index=0, stage_name="stage1", train_config={"pretrain": [{"name": "stage1"}]})
    torch.save(state, tmp_path / "pretrain-run.pt")
    with pytest.raises(ValueError, match="init:"):  # would have skipped fine-tuning as done
        train(load_config(base=only), resume=str(tmp_path / "pretrain-run.pt"))


def test_a_regions_dataset_of_two_feature_widths_is_refused_before_training(tmp_path):
    """Every file's width is checked up front (footers; a file's first region where the type does not carry
    it): a second file of another width used to pass and fail mid-stage, under DDP on one rank only."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from model.synthetic import write_synthetic

    write_synthetic(str(tmp_path / "d16"), images=20, feature_dim=16, test_images=4, seed=1)
    write_synthetic(str(tmp_path / "d8"), images=20, feature_dim=8, test_images=4, seed=2)
    first, second = (tmp_path / "d16" / "regions" / f"part-0000{i}.parquet" for i in (0, 1))
    shutil.copy(tmp_path / "d8" / "regions" / "part-00000.parquet", second)
    config = _base(str(tmp_path / "d16"), str(tmp_path / "run"))
    for variable in (False, True):
        if variable:  # variable-length lists: the width is in the rows, not the type
            table = pq.read_table(second)
            table = table.set_column(table.schema.get_field_index("features"), "features",
                                     table.column("features").cast(pa.list_(pa.list_(pa.float16()))))
            pq.write_table(table, second)
        with pytest.raises(ValueError, match=f"^{second}: features of width 8, the model reads 16"):
            train(load_config(base=config))
        assert not os.path.exists(tmp_path / "run" / "checkpoints"), "refused before the first stage"
        from model.data import feature_dims

        assert dict(feature_dims(str(tmp_path / "d16"))) == {str(first): 16, str(second): 8}


def test_the_default_device_on_one_gpu_has_an_index(monkeypatch):
    """torch.cuda.set_device refuses a plain torch.device("cuda"): outside torchrun, `lait train` and `lait eval`
    failed on a one-GPU machine with the default device. Simulated without calling CUDA: set_device's own index
    check (torch.cuda._utils._get_device_index) is pure Python."""
    from torch.cuda._utils import _get_device_index

    from model.distributed import process_device

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for wanted, index in (("auto", 0), ("cuda", 0), ("cuda:1", 1)):
        device = process_device(wanted)
        assert device == torch.device("cuda", index) and _get_device_index(device) == index, wanted
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("auto") == torch.device("cuda", 1), "under torchrun: this process's own GPU"
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="cuda:2 does not exist"):
        process_device("cuda:2")
    for wanted in ("gpu", "mps", "cuda:x"):
        with pytest.raises(ValueError, match="not auto, cpu, cuda or cuda:N"):
            process_device(wanted)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        process_device("cuda")


def test_a_device_that_is_not_one_is_a_one_line_error_in_both_clis(synth_dir, tiny_checkpoint, tmp_path, monkeypatch,
                                                                     capsys):
    from lait.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LAIT_DATA", synth_dir)
    config = os.path.join(REPO, "configs", "tiny.yaml")
    with pytest.raises(ConfigError, match="device: 'gpu'"):
        load_config(config, ["device=gpu"])
    for device, message in (("gpu", "'gpu' is not auto, cpu, cuda or cuda:N"), ("cuda", "no CUDA GPU is available")):
        assert main(["train", "--config", config, "--set", f"out_dir={tmp_path / 'run'}", "--set", f"device={device}",
                     "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("lait train:") and message in error and error.count("\n") == 1, error
        assert main(["eval", "--checkpoint", tiny_checkpoint, "--data", synth_dir, "--device", device,
                     "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("lait eval:") and message in error and error.count("\n") == 1, error


def _finetune_only(synth_dir: str, out_dir: str, **extra) -> dict:
    config = _base(synth_dir, out_dir, **extra)
    del config["pretrain"]
    return config


def test_a_loss_that_is_not_finite_stops_training_before_the_update(synth_dir, tmp_path, monkeypatch, capsys):
    """A NaN loss makes every weight NaN at the next update (and then every checkpoint): the run stops first."""
    import yaml

    from model.tasks import FINETUNE_LOSSES
    from model.train import TrainingDiverged

    binary, calls = FINETUNE_LOSSES["binary"], []

    def diverging(scores, valid, margin):
        calls.append(1)
        loss = binary(scores, valid, margin)
        return loss * float("nan") if len(calls) >= 2 else loss

    monkeypatch.setitem(FINETUNE_LOSSES, "binary", diverging)
    config = _finetune_only(synth_dir, str(tmp_path / "run"), checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"stage 'finetune', step 2: the gradient norm is nan \(this process's "
                                               r"losses: loss nan.*stopped before that update"):
        train(load_config(base=config))
    state = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.pt"))
    assert state["step"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "run" / "checkpoints" / "finetune-step2.pt").exists()

    from lait.cli import main

    calls.clear()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_finetune_only(synth_dir, str(tmp_path / "cli"))))
    assert main(["train", "--config", str(path), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("lait train: stage 'finetune', step 2") and error.count("\n") == 1, error


def test_resuming_with_another_world_size_or_schedule_warns(synth_dir, tmp_path, caplog):
    """A checkpoint records how many processes trained it and its stage's step count: another number of processes
    deals other shards (and changes an epoch-based step count), another lr, warm-up or length no longer matches
    the loaded scheduler state."""
    def three_steps(out_dir: str) -> dict:
        config = _base(synth_dir, out_dir, checkpoint_every=2)
        config["pretrain"][0]["steps"], config["finetune"] = 3, None
        return config

    train(load_config(base=three_steps(str(tmp_path / "run"))))
    checkpoint = os.path.join(tmp_path, "run", "checkpoints", "stage1-step2.pt")
    state = load_checkpoint(checkpoint)
    assert state["data"] == {"batches": 2, "world_size": 1, "row_groups": "balanced"} and state["stage_steps"] == 3
    state["data"]["world_size"] = 2
    torch.save(state, tmp_path / "two-processes.pt")
    cases = ((str(tmp_path / "two-processes.pt"), [], "world_size (2 processes, now 1)"),
             (checkpoint, ["pretrain.0.lr=0.01"], "stage1.lr (0.001, now 0.01)"),
             (checkpoint, ["pretrain.0.warmup=2"], "stage1.warmup"),
             (checkpoint, ["pretrain.0.steps=5"], "the stage's step count (3, now 5)"),
             (checkpoint, [], None))
    for number, (path, overrides, expected) in enumerate(cases):
        caplog.clear()
        with caplog.at_level("WARNING", logger="model.train"):
            train(load_config(base=three_steps(str(tmp_path / f"again-{number}")), overrides=overrides), resume=path)
        warnings = [r.getMessage() for r in caplog.records if "resuming with" in r.getMessage()]
        if expected is None:
            assert warnings == []
        else:
            assert len(warnings) == 1 and expected in warnings[0], (expected, warnings)


def test_a_resumed_run_logs_the_same_rows_when_checkpoints_fall_between_them(synth_dir, tmp_path):
    """checkpoint_every 3, log_every 2: the row of step 4 averages steps 3 and 4, and step 3 ran before the
    checkpoint; the loss window is in the checkpoint, so the resumed run logs the same row."""
    config = _base(synth_dir, str(tmp_path / "full"), checkpoint_every=3, log_every=2)
    config["finetune"] = None
    train(load_config(base=config))
    checkpoint = tmp_path / "full" / "checkpoints" / "stage1-step3.pt"
    assert load_checkpoint(str(checkpoint))["loss_window"]["steps"] == 1
    train(load_config(base={**config, "out_dir": str(tmp_path / "resumed")}), resume=str(checkpoint))
    full, resumed = (_log(str(tmp_path / run / "logs" / "stage1.csv")) for run in ("full", "resumed"))
    assert sorted(resumed) == [4] and _losses(resumed[4]) == _losses(full[4])
    # A checkpoint written before the window was saved still resumes (its first row averages fewer steps).
    state = load_checkpoint(str(checkpoint))
    del state["loss_window"]
    torch.save(state, tmp_path / "old.pt")
    train(load_config(base={**config, "out_dir": str(tmp_path / "old")}), resume=str(tmp_path / "old.pt"))
    assert sorted(_log(str(tmp_path / "old" / "logs" / "stage1.csv"))) == [4]


def test_summary_after_a_resume_lists_every_stage(synth_dir, tmp_path, capsys):
    import yaml

    from lait.cli import main

    full = train(load_config(base=_base(synth_dir, str(tmp_path / "full"))))
    checkpoint = str(tmp_path / "full" / "checkpoints" / "stage1.pt")  # stage1 done, fine-tuning not begun
    resumed = train(load_config(base=_base(synth_dir, str(tmp_path / "resumed"))), resume=checkpoint)
    written = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert [s["name"] for s in written["stages"]] == [s["name"] for s in resumed["stages"]] == ["stage1", "finetune"]
    carried = written["stages"][0]
    assert carried.pop("done_before_resume") is True and "done_before_resume" not in written["stages"][1]
    for key in ("kind", "steps", "steps_run", "final_loss", "data"):
        assert carried[key] == full["stages"][0][key], key
    assert written["parameter_checksum"] == full["parameter_checksum"]
    # Resuming the finished run trains nothing and still lists both stages.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base(synth_dir, str(tmp_path / "full"))))
    assert main(["train", "--config", str(path), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("done before the resume") == 2, out


def test_model_sizes_that_do_not_fit_and_numbers_that_are_not_finite_are_refused_with_the_key(synth_dir, tmp_path):
    """Each of these failed mid-run as an index error or an OverflowError (or not at all: a negative position)."""
    base = _base(synth_dir, str(tmp_path))
    for override, message in (("model.max_text_len=600", "model.max_text_len: 600, more than the 512 positions"),
                              ("model.max_position=8", "model.max_text_len: 20, more than the 8 positions"),
                              ("model.region_position_id=512", "model.region_position_id: 512, need a position below"),
                              ("model.region_position_id=-1", "model.region_position_id: -1, need at least 0"),
                              ("model.type_vocab_size=1", "model.type_vocab_size: 1, need at least 2"),
                              ("model.pad_token_id=40000", "model.pad_token_id: 40000, need an id below"),
                              ("model.num_heads=3", "model.hidden_size: 32 is not a multiple of model.num_heads"),
                              ("pretrain.0.lr=.nan", "pretrain.0.lr: nan, need a finite number"),
                              ("grad_clip=.inf", "grad_clip: inf, need a finite number")):
        with pytest.raises(ConfigError, match=message):
            load_config(base=base, overrides=[override])
    for epochs in (".inf", ".nan"):
        with pytest.raises(ConfigError, match="finetune.epochs: .*, need a finite number more than 0"):
            load_config(base=base, overrides=["finetune.steps=null", f"finetune.epochs={epochs}"])
    # The pad id is checked again against the vocabulary the tokenizer gives, before training.
    with pytest.raises(ConfigError, match=r"model.pad_token_id: 150, need an id below model.vocab_size \(\d+\)"):
        train(load_config(base=base, overrides=["model.pad_token_id=150"]))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_keys_a_stage_would_ignore_are_refused_and_those_bert_replaces_are_named(synth_dir, tmp_path, caplog):
    from model.imagebert import read_bert_config
    from model.train import resolve_model_config

    base = _base(synth_dir, str(tmp_path))
    for override, message in (("pretrain.0.loss=triplet", "pretrain.0: loss applies to the finetune stage only"),
                              ("pretrain.0.negatives=7", "pretrain.0: negatives applies to the finetune stage only"),
                              ("pretrain.0.dual_encoder=0.5", "pretrain.0: dual_encoder applies"),
                              ("finetune.tasks={mlm: 1}", "finetune: tasks applies to pretraining stages only")):
        with pytest.raises(ConfigError, match=message):
            load_config(base=base, overrides=[override])
    # bert: its config.json decides the model's shape; a model key set beside it to another value was replaced
    # silently (configs/imagebert-base.yaml spells out BERT-base's shape, and is run with --set bert=...)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps(
        {"vocab_size": 99, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}))
    with caplog.at_level("WARNING", logger="model.train"):
        model = resolve_model_config(load_config(base={**base, "bert": str(tmp_path / "bert")}), 99)
    assert (model.hidden_size, model.vocab_size, model.num_layers) == (8, 99, 2)
    warnings = [r.getMessage() for r in caplog.records if "decides the model's shape" in r.getMessage()]
    assert len(warnings) == 1 and "model.hidden_size 32 by 8" in warnings[0] and "num_layers" not in warnings[0] \
        and "intermediate_size" not in warnings[0], warnings  # equal to BERT's: nothing replaced
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"n_embd": 8}))
    with pytest.raises(ValueError, match="not a BERT config"):
        read_bert_config(str(tmp_path / "bert"))
    # lowercase: a tokenizer.json has its own normaliser
    with pytest.raises(ConfigError, match="lowercase: a tokenizer.json carries its own normaliser"):
        load_config(base={**base, "tokenizer": "run/tokenizer.json", "lowercase": False})
    assert load_config(base={**base, "tokenizer": "bert/vocab.txt", "lowercase": False}).lowercase is False
    # The eval entry scores held-out captions unless told otherwise, as `lait eval` does.
    entry = {"regions": f"{synth_dir}/regions", "captions": f"{synth_dir}/captions"}
    assert load_config(base={**base, "eval": entry}).eval.split == "test"
    assert load_config(base={**base, "eval": {**entry, "split": "val"}}).eval.split == "val"
    assert load_config(base={**base, "finetune": {**base["finetune"], "datasets": [entry]}}).finetune.datasets[0].split \
        == "train"


def test_plausible_path_mistakes_are_one_line_errors(synth_dir, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """A missing or unreadable tokenizer, a folder given as the config, an out_dir that is a file, a bad
    classes.json, `lait eval --out DIR/` (refused before scoring): one line and exit status 2, no traceback."""
    import shutil

    import yaml

    import model.eval
    from lait.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(tmp_path / "run"))))
    (tmp_path / "garbage.json").write_text("{not a tokenizer")
    (tmp_path / "afile").write_text("x")
    shutil.copytree(synth_dir, tmp_path / "data")
    (tmp_path / "data" / "classes.json").write_text("25")
    runs = [(["--set", f"tokenizer={tmp_path}/nowhere/tokenizer.json"], "nowhere/tokenizer.json: no such tokenizer"),
            (["--set", f"tokenizer={tmp_path}/nowhere/vocab.txt"], "nowhere/vocab.txt: no such tokenizer"),
            (["--set", f"tokenizer={tmp_path}/garbage.json"], "garbage.json: not a readable tokenizer.json"),
            (["--set", f"tokenizer={tmp_path}/afile"], "afile: vocabulary lacks the special tokens"),
            (["--set", f"bert={tmp_path}/nowhere", "--set", "model={}"], "nowhere: no such tokenizer file or folder"),
            (["--set", f"out_dir={tmp_path}/afile"], "out_dir: " + str(tmp_path / "afile") + " is a file"),
            (["--set", f"pretrain.0.datasets.0.regions={tmp_path}/data/regions"],
             "classes.json: expected a list of class names")]
    for extra, message in runs:
        assert main(["train", "--config", str(config), *extra, "--no-progress"]) == 2, extra
        error = capsys.readouterr().err
        assert error.startswith("lait train:") and message in error and error.count("\n") == 1, (extra, error)
    assert main(["train", "--config", str(tmp_path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "a folder, not a YAML config file" in error and error.count("\n") == 1, error

    monkeypatch.setattr(model.eval, "evaluate", lambda *a, **k: pytest.fail("scored before checking --out"))
    for out, message in ((f"{tmp_path}/", "a folder; give the file to write"), (f"{tmp_path}/afile/eval.json",
                                                                                 "afile is a file, not a folder")):
        assert main(["eval", "--checkpoint", tiny_checkpoint, "--data", synth_dir, "--out", out, "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("lait eval: --out") and message in error and error.count("\n") == 1, error


def test_fewer_images_than_data_consumers_is_refused_up_front(tmp_path):
    """A DataLoader worker left without an image failed with a worker traceback after the stage had started."""
    from model.synthetic import write_synthetic

    write_synthetic(str(tmp_path / "d"), images=5, feature_dim=8, test_images=2, seed=4)
    config = _base(str(tmp_path / "d"), str(tmp_path / "run"), num_workers=4)
    with pytest.raises(ValueError, match=r"stage 'stage1': 3 image\(s\) with captions for 4 data consumers "
                                         r"\(1 process\(es\) x 4 DataLoader worker\(s\)\).*lower num_workers"):
        train(load_config(base=config))


def _one_row_group_captioned(folder: str) -> None:
    """Synthetic data whose regions lie in row groups of 10 images, with train captions for the first group only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    import schemas
    from model.synthetic import write_synthetic

    write_synthetic(folder, images=60, feature_dim=8, test_images=10, seed=4)
    regions = schemas.read_table(os.path.join(folder, "regions"), "regions")
    os.remove(os.path.join(folder, "regions", "part-00000.parquet"))
    schemas.write_table(regions, os.path.join(folder, "regions", "part-00000.parquet"), "regions", row_group_size=10)
    first = regions.column("image_id").to_pylist()[:10]
    captions = schemas.read_table(os.path.join(folder, "captions"), "captions")
    keep = pc.or_(pc.is_in(captions.column("image_id"), pa.array(first)), pc.equal(captions.column("split"), "test"))
    captions = captions.filter(keep)
    path = os.path.join(folder, "captions", "part-00000.parquet")
    os.remove(path)
    schemas.write_table(captions, path, "captions")


def test_row_groups_without_captions_train_with_workers_and_resume_exactly(tmp_path, caplog):
    """The DataLoader worker dealt the row groups without captions failed the stage with a worker traceback
    (10 captioned images passed the up-front check for 2 workers). Now the captioned row group is shared by
    the workers, past the epoch and the stage boundary, and a resume still replays the same batches."""
    data = str(tmp_path / "d")
    _one_row_group_captioned(data)
    full = _base(data, str(tmp_path / "full"), checkpoint_every=2, num_workers=2)
    full["pretrain"][0]["steps"] = full["finetune"]["steps"] = 6  # 20 pairs, batches of 8: into a second epoch
    train(load_config(base=full))
    checkpoint = str(tmp_path / "full" / "checkpoints" / "stage1-step4.pt")
    assert load_checkpoint(checkpoint)["data"] == {"batches": 4, "world_size": 1, "row_groups": "balanced"}
    train(load_config(base={**full, "out_dir": str(tmp_path / "resumed")}), resume=checkpoint)
    for stage, resumed_steps in (("stage1", [5, 6]), ("finetune", [1, 2, 3, 4, 5, 6])):
        first, again = (_log(str(tmp_path / run / "logs" / f"{stage}.csv")) for run in ("full", "resumed"))
        assert sorted(again) == resumed_steps
        assert all(_losses(again[step]) == _losses(first[step]) for step in resumed_steps), stage
    # A part-way checkpoint of the earlier dealing (uncaptioned row groups dealt too) replays other batches: said.
    state = load_checkpoint(checkpoint)
    del state["data"]["row_groups"]
    torch.save(state, tmp_path / "old.pt")
    with caplog.at_level("WARNING", logger="model.train"):
        train(load_config(base={**full, "out_dir": str(tmp_path / "old")}), resume=str(tmp_path / "old.pt"))
    assert "stage stage1: the checkpoint was written when row groups without a captioned image were still dealt " \
           "to the data consumers (5 here): the batches after step 4" in caplog.text


def _uneven_row_groups(folder: str) -> None:
    """Synthetic data in row groups of 10 images, with train captions for 10, 2, 7, 1 and 5 images of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    import schemas
    from model.synthetic import write_synthetic

    write_synthetic(folder, images=60, feature_dim=8, test_images=10, seed=4)
    regions = schemas.read_table(os.path.join(folder, "regions"), "regions")
    os.remove(os.path.join(folder, "regions", "part-00000.parquet"))
    schemas.write_table(regions, os.path.join(folder, "regions", "part-00000.parquet"), "regions", row_group_size=10)
    ids = regions.column("image_id").to_pylist()
    kept = [image for group, count in enumerate([10, 2, 7, 1, 5]) for image in ids[10 * group: 10 * group + count]]
    captions = schemas.read_table(os.path.join(folder, "captions"), "captions")
    captions = captions.filter(pc.or_(pc.is_in(captions.column("image_id"), pa.array(kept)),
                                      pc.equal(captions.column("split"), "test")))
    path = os.path.join(folder, "captions", "part-00000.parquet")
    os.remove(path)
    schemas.write_table(captions, path, "captions")


def test_a_checkpoint_of_the_in_turn_dealing_resumes_with_it_exactly(tmp_path, monkeypatch, caplog):
    """Row groups are now dealt to the consumers by their example counts; a checkpoint of a run that dealt them in
    turn (``row_groups: captioned``) resumes with that dealing, so its batches after the checkpoint are the same."""
    data = str(tmp_path / "d")
    _uneven_row_groups(data)
    config = _base(data, str(tmp_path / "old"), checkpoint_every=2, num_workers=2)
    config["pretrain"][0]["steps"], config["finetune"] = 6, None  # 50 pairs, batches of 8: into a second epoch
    with monkeypatch.context() as patch:
        patch.setattr("model.train.DEALING", "captioned")  # a run of the earlier version
        train(load_config(base=config))
    checkpoint = str(tmp_path / "old" / "checkpoints" / "stage1-step2.pt")
    assert load_checkpoint(checkpoint)["data"] == {"batches": 2, "world_size": 1, "row_groups": "captioned"}
    old = _log(str(tmp_path / "old" / "logs" / "stage1.csv"))
    with caplog.at_level("INFO", logger="model.train"):
        train(load_config(base={**config, "out_dir": str(tmp_path / "resumed")}), resume=checkpoint)
    resumed = _log(str(tmp_path / "resumed" / "logs" / "stage1.csv"))
    assert sorted(resumed) == [3, 4, 5, 6] and all(_losses(resumed[step]) == _losses(old[step]) for step in resumed)
    assert "stage stage1: row groups dealt 'captioned' as the checkpoint's run did, not 'balanced'" in caplog.text
    assert load_checkpoint(str(tmp_path / "resumed" / "checkpoints" / "stage1.pt"))["data"]["row_groups"] == \
        "captioned", "a resume of the resumed run stays exact too"
    # Dealt evenly, the same steps see other batches: the data tells the dealings apart.
    state = load_checkpoint(checkpoint)
    state["data"]["row_groups"] = "balanced"
    torch.save(state, tmp_path / "balanced.pt")
    train(load_config(base={**config, "out_dir": str(tmp_path / "balanced")}), resume=str(tmp_path / "balanced.pt"))
    balanced = _log(str(tmp_path / "balanced" / "logs" / "stage1.csv"))
    assert any(_losses(balanced[step]) != _losses(old[step]) for step in resumed)


def test_a_later_stage_without_pairs_is_refused_before_the_first_trains(synth_dir, tmp_path):
    """Each stage's data was checked when it began: a fine-tuning split without captions failed after the
    pretraining stages had run."""
    config = _base(synth_dir, str(tmp_path / "run"))
    config["finetune"]["datasets"] = [{**config["finetune"]["datasets"][0], "split": "nosuchsplit"}]
    with pytest.raises(ValueError, match="stage 'finetune': no captions in split 'nosuchsplit' of .* \\(it holds 320 "
                                         "in split 'train', 80 in split 'test'; `split: null` takes all\\)"):
        train(load_config(base=config))
    assert not os.path.exists(tmp_path / "run" / "logs" / "stage1.csv")


def test_a_checkpoint_without_stage_summaries_lists_its_stages_without_figures(synth_dir, tmp_path, caplog, capsys):
    """Checkpoints written before they kept ``stage_summaries``: summary.json listed only the stages run after the
    resume. Their stages are listed again from the names and steps the checkpoint holds, marked, and warned about."""
    from lait.cli import main

    train(load_config(base=_base(synth_dir, str(tmp_path / "full"), checkpoint_every=2)))
    for name, resumed in (("stage1.pt", []), ("finetune-step2.pt", ["finetune"])):  # stage1 done; finetune part-way
        state = load_checkpoint(str(tmp_path / "full" / "checkpoints" / name))
        del state["stage_summaries"]
        old = str(tmp_path / f"old-{name}")
        torch.save(state, old)
        out = tmp_path / f"resumed-{name}"
        with caplog.at_level("WARNING", logger="model.train"):
            train(load_config(base=_base(synth_dir, str(out))), resume=old)
        stages = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)["stages"]  # strict JSON
        assert [s["name"] for s in stages] == ["stage1", "finetune"]
        assert stages[0] == {"name": "stage1", "kind": "pretrain", "steps": 4, "final_loss": None,
                             "done_before_resume": True, "without_figures": True}
        assert stages[1]["name"] == "finetune" and "without_figures" not in stages[1]
        assert stages[1].get("resumed_from_step", 0) == (2 if resumed else 0)
        assert f"{old}: written before checkpoints kept their stages' summaries: summary.json lists 'stage1'" \
            in caplog.text
        caplog.clear()
    # `lait train` prints such a stage as done before the resume (its loss unknown), no traceback.
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(tmp_path / "cli"))))
    assert main(["train", "--config", str(config), "--resume", str(tmp_path / "old-stage1.pt"), "--no-progress"]) == 0
    assert "stage1           pretrain  done before the resume  (no figures: an older checkpoint)" in capsys.readouterr().out


def test_train_refuses_an_out_dir_holding_a_run_unless_resumed_or_overwritten(synth_dir, tmp_path, capsys):
    """A second `lait train` into a run's folder without --resume started over: final.pt and last.pt were
    overwritten and checkpoints/ and logs/ mixed both runs' files. It is refused, in one line, before anything
    is written; --resume continues it and --overwrite removes the run's files (only those) first."""
    import yaml

    from lait.cli import main

    out = tmp_path / "run"
    train(load_config(base=_base(synth_dir, str(out), checkpoint_every=2)))
    final = (out / "checkpoints" / "final.pt").read_bytes()
    (out / "notes.txt").write_text("mine")  # not a run's file: never removed
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_base(synth_dir, str(out))))
    fine_tune = tmp_path / "init.yaml"  # a new run from the old one's weights, into its folder
    fine_tune.write_text(yaml.safe_dump({"out_dir": str(out), "init": str(out / "checkpoints" / "final.pt"),
                                         "finetune": _base(synth_dir, str(out))["finetune"]}))
    for path in (config, fine_tune):
        assert main(["train", "--config", str(path), "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"lait train: out_dir: {out} already holds a training run") and error.count("\n") == 1
        assert "--resume" in error and "--overwrite" in error, error
    assert (out / "checkpoints" / "final.pt").read_bytes() == final, "the earlier run is intact"
    with pytest.raises(ValueError, match="already holds a training run"):
        train(load_config(base=_base(synth_dir, str(out))))
    # --resume and --overwrite contradict each other: refused, nothing touched
    assert main(["train", "--config", str(config), "--resume", "--overwrite", "--no-progress"]) == 2
    assert "--resume or --overwrite, not both" in capsys.readouterr().err
    assert (out / "checkpoints" / "stage1-step2.pt").exists()
    # --overwrite: the old run's files go (its periodic checkpoints too), the new run's are alone, notes.txt stays
    assert main(["train", "--config", str(config), "--overwrite", "--no-progress"]) == 0
    assert sorted(os.listdir(out / "checkpoints")) == ["final.pt", "finetune.pt", "last.pt", "stage1.pt"]
    assert (out / "notes.txt").read_text() == "mine"
    # The old run goes once the new one's config, data and init checkpoint (here, the old run's final.pt) are read
    assert main(["train", "--config", str(fine_tune), "--overwrite", "--no-progress"]) == 0
    assert sorted(os.listdir(out / "checkpoints")) == ["final.pt", "finetune.pt", "last.pt"]
    assert not (out / "logs" / "stage1.csv").exists()
    # A run interrupted before its first checkpoint (logs/, tokenizer.json): refused too, resumed with --resume
    interrupted = tmp_path / "interrupted"
    (interrupted / "logs").mkdir(parents=True)
    (interrupted / "tokenizer.json").write_text("{}")
    assert main(["train", "--config", str(config), "--out-dir", str(interrupted), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--out-dir", str(interrupted), "--resume", "--no-progress"]) == 0
    # An empty folder, or one holding other files only, is not a run: training starts there
    (tmp_path / "empty").mkdir()
    train(load_config(base=_base(synth_dir, str(tmp_path / "empty"))))


def test_each_stage_is_checked_up_front_and_the_first_one_and_the_eval_read_their_captions_once(synth_dir, tmp_path,
                                                                                                 monkeypatch):
    """The up-front checks hand on what they read: the first stage's join (its stream reads its data no more) and
    the eval split's captions (the final eval reads them no more). A later stage's captions are read by its check
    and again as it starts: kept, every stage's captions would be held at once for the whole run. The later stages
    are checked before the first one, so its captions are not held while theirs are read."""
    import shutil

    import schemas
    from model.tokenizer import train_wordpiece

    for name in ("a", "b", "c"):  # stage1's, finetune's and the eval's data, told apart by folder
        shutil.copytree(synth_dir, tmp_path / name)
    tokenizer = tmp_path / "tokenizer.json"  # given, so no WordPiece training reads the captions too
    tokenizer.write_text(train_wordpiece(["a small red circle left of a large blue square"] * 3, 80).to_str())
    config = _base(str(tmp_path / "a"), str(tmp_path / "run"), tokenizer=str(tokenizer),
                   eval={"regions": f"{tmp_path}/c/regions", "captions": f"{tmp_path}/c/captions", "split": "test"})
    config["finetune"]["datasets"] = [{"regions": f"{tmp_path}/b/regions", "captions": f"{tmp_path}/b/captions",
                                       "split": "train"}]
    reads = []
    real = schemas.read_table

    def read_table(path, kind=None, columns=None):  # a counting wrapper around the real reader
        if kind == "captions":
            reads.append(os.path.basename(os.path.dirname(path)))
        return real(path, kind, columns)

    monkeypatch.setattr(schemas, "read_table", read_table)
    summary = train(load_config(base=config))
    # eval check; finetune's check; stage1's check, handed to its stream; finetune's stream as it starts.
    assert reads == ["c", "b", "a", "b"], reads
    assert [stage["data"]["pairs"] for stage in summary["stages"]] == [320, 320]
    assert summary["eval"]["num_captions"] == 80


def test_the_first_bad_stage_is_named_though_later_stages_are_checked_first(synth_dir, tmp_path):
    config = _base(synth_dir, str(tmp_path / "run"))
    config["pretrain"][0]["datasets"] = [{**config["pretrain"][0]["datasets"][0], "split": "nosuchsplit"}]
    config["finetune"]["datasets"] = [{**config["finetune"]["datasets"][0], "split": "nosuchsplit"}]
    with pytest.raises(ValueError, match="stage 'stage1': no captions in split 'nosuchsplit'"):
        train(load_config(base=config))
