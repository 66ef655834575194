"""The benchmarks a lent GPU runs (benchmarks/gpu_session.sh), at their tiniest on the CPU: each finishes and
writes the JSON fields the RESULTS files are made from, so a step broken by a change elsewhere shows up here,
not in a GPU session's few minutes. Plus the fixes found running every benchmark small."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
SESSION = os.path.join(BENCHMARKS, "gpu_session.sh")


def _benchmark(name, monkeypatch):
    """The script ``benchmarks/NAME.py`` as a module (its ``main(argv)`` is what running it calls)."""
    monkeypatch.syspath_prepend(BENCHMARKS)  # the scripts import bench_io from their own folder
    spec = importlib.util.spec_from_file_location(f"lait_benchmark_{name}", os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def eager_compile():
    """``torch.compile`` runs its functions eagerly, as in a dry run of gpu_session.sh (compiling on a CPU takes
    minutes); the code paths of the compiled variants still run."""
    with torch._dynamo.config.patch(disable=True):
        yield


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_bench_train_writes_every_session_variant(tmp_path, monkeypatch, eager_compile):
    """The variants gpu_session.sh times by default, each with its training and scoring figures."""
    variants = re.search(r"TRAIN_VARIANTS:-([^}]*)}", open(SESSION, encoding="utf-8").read()).group(1).split()
    assert "model+atenln" in variants
    out = tmp_path / "train.json"
    assert _benchmark("bench_train", monkeypatch).main([
        "--preset", "tiny", "--device", "cpu", "--batch-size", "2", "--eval-batch-size", "2", "--steps", "1",
        "--warmup", "0", "--skip-baseline", "--variants", *variants, "--json", str(out)]) == 0
    figures = _read(out)
    assert {"device", "preset", "batch_size", "eval_batch_size", "bf16", "flops_per_sample"} <= set(figures)
    for variant in variants:
        row = figures[variant]
        assert "error" not in row, row
        assert row["eval_pairs_per_s"] > 0 and row["params_m"] > 0 and row["wall_s_with_compile"] >= 0
        scoring_only = "fp8" in variant.split("+")
        assert (row["train_samples_per_s"] is None) == scoring_only
        if not scoring_only:
            assert row["train_samples_per_s"] > 0 and row["train_ms_per_step"] > 0 and "mfu" in row
    assert figures["imagebert"] == figures[variants[2]]  # the last variant that trained


def test_bench_eval_writes_every_section_with_fewer_captions_than_a_batch(tmp_path, monkeypatch, eager_compile):
    """--compile's warm-up paired a batch of images with the first captions alone: with fewer captions than a
    batch (any run smaller than the GPU's) the step died before its compiled, fp8 and trimmed figures."""
    out = tmp_path / "eval_order.json"
    assert _benchmark("bench_eval", monkeypatch).main([
        "--device", "cpu", "--preset", "tiny", "--images", "4", "--batch-size", "16", "--compile", "--fp8",
        "--json", str(out)]) == 0
    figures = _read(out)
    for section in ("given", "by_length", "compiled_fixed_shapes", "fp8", "compiled_trimmed"):
        assert figures[section]["pairs_per_s"] > 0 and "padded_text_tokens_per_pair" in figures[section]
    assert figures["ratio"] > 0 and figures["max_abs_score_difference"] <= 1e-3
    assert figures["lait_eval_compile_shapes"] in ("fixed", "trimmed")
    assert -1 <= figures["fp8"]["spearman_to_unquantised"] <= 1 and figures["fp8"]["compiled"] is True
    assert figures["compiled_trimmed"]["max_abs_score_difference_to_eager"] <= 1e-3


def test_bench_features_writes_model_only_and_end_to_end_figures(tmp_path, monkeypatch):
    """The vg step's options (variants, both decode modes, a profile) on the demo detector (vg-r101-c4 takes
    half a minute on a CPU: the dry run of gpu_session.sh runs it)."""
    out = tmp_path / "features.json"
    assert _benchmark("bench_features", monkeypatch).main([
        "--device", "cpu", "--detectors", "demo", "--images", "2", "--batch-size", "2", "--num-workers", "1",
        "--repeats", "1", "--width", "200", "--height", "150", "--variants", "default", "rpn-kernel",
        "--decode", "device", "workers", "--profile", "2", "--json", str(out)]) == 0
    [row] = _read(out)
    assert row["detector"] == "demo" and "partial" not in row and row["fallbacks"] == []
    for key in ("model_only_ips", "end_to_end_ips", "ratio_e2e_to_model", "end_to_end_after_fill_ips"):
        assert row[key] > 0, key
    assert set(row["variants_model_only_ips"]) == {"default", "rpn-kernel"}
    assert set(row["end_to_end_ips_by_decode"]) == set(row["e2e_detail_by_decode"]) == {"device", "workers"}
    assert {"seconds_to_first_batch", "after_fill_ips", "seconds_by_phase"} <= set(row["e2e_detail_by_decode"]["workers"])
    assert {"backbone", "rpn", "roi_heads", "selection"} <= set(row["ms_per_batch_by_part"])
    assert row["boxes_per_image"]["min"] >= 10 and row["reading"]["blocks"]["ips_per_worker"] > 0


def test_bench_selection_writes_both_selections(tmp_path, monkeypatch):
    out = tmp_path / "selection.json"
    assert _benchmark("bench_selection", monkeypatch).main([
        "--images", "2", "--proposals", "50", "--classes", "100", "--repeats", "1", "--json", str(out)]) == 0
    figures = _read(out)
    for name in ("adaptive 10-100", "fixed 36"):
        row = figures[name]
        assert row["per_image_ms"] > 0 and row["batched_ms"] > 0 and row["ratio"] > 0 and row["boxes_per_image"] > 0


@pytest.mark.slow  # two processes importing torch: ~10 s
def test_gpu_session_dry_run_runs_its_steps_on_the_cpu(tmp_path):
    """LAIT_BENCH_DRY=1: the step's GPU options overridden by tiny CPU ones; env.txt, steps.txt and the JSON."""
    env = dict(os.environ, LAIT_BENCH_DRY="1", STEPS="selection", PYTHON=sys.executable, OUT=str(tmp_path))
    done = subprocess.run(["bash", SESSION], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "steps.txt").read_text() == "selection exit 0 (limit 240 s)\n"
    assert (tmp_path / "env.txt").read_text().startswith("dry run on the CPU (LAIT_BENCH_DRY=1; TORCH_COMPILE_DISABLE=1)")
    figures = _read(tmp_path / "selection.json")
    assert (figures["device"], figures["images"], figures["proposals"]) == ("cpu", 2, 50)
    assert figures["fixed 36"]["boxes_per_image"] > 0


def test_gpu_probe_dry_run_runs_its_steps_with_tiny_options(tmp_path):
    """gpu_probe.sh is gpu_session.sh's steps profile, nomask and coco: a dry run runs each, with its GPU options
    and then the tiny CPU ones (PYTHON here only records its arguments; the steps themselves are tested above)."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(os.environ, LAIT_BENCH_DRY="1", PYTHON=str(fake), OUT=str(tmp_path / "out"))
    env.pop("STEPS", None)
    done = subprocess.run(["bash", os.path.join(BENCHMARKS, "gpu_probe.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "steps.txt").read_text().splitlines() == [
        f"{name} exit 0 (limit 240 s)" for name in ("probe_profile", "probe_nomask", "features_coco")]
    runs = [line for line in calls.read_text().splitlines() if line.startswith("benchmarks/")]
    assert [line.split()[0] for line in runs] == ["benchmarks/bench_train.py"] * 2 + ["benchmarks/bench_features.py"]
    assert "--profile 30" in runs[0] and runs[0].endswith("--profile 3")
    assert "--compile --no-mask" in runs[1] and "--preset tiny --device cpu" in runs[1]
    assert "--detectors coco-r50-fpn" in runs[2] and "--device cpu" in runs[2].split("--detectors")[1]


def test_bench_relevance_beam_timing_with_few_pairs(monkeypatch, capsys):
    """--beam with 20 pairs ran the pipeline twice into one folder (the second run was refused); with fewer it
    subtracted 20 pairs it had not run."""
    assert _benchmark("bench_relevance", monkeypatch).main(["--pairs", "20", "--image-height", "60", "--members", "1",
                                                           "--beam"]) == 0
    assert "Beam pipeline (DirectRunner)" in capsys.readouterr().out


def test_bench_relevance_step_times_both_optimizers_and_finds_the_same_weights(monkeypatch, capsys):
    from filters.relevance import train as relevance_train

    monkeypatch.setattr(relevance_train, "_TABLE_ROWS_ONLY", True)  # the script switches it; restored after
    assert _benchmark("bench_relevance_step", monkeypatch).main(["--train", "40", "--image-height", "60",
                                                                "--epochs", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "optimizer step alone: torch AdamW" in out and "weights bit-identical: True" in out


@pytest.mark.parametrize("option", [["--big-image-mb", "4"], ["--bomb-mb", "16"]])
def test_soak_refuses_hostile_sizes_under_the_crawl_limits(monkeypatch, capsys, option):
    """Under the limits nothing is rejected as too_large: every round reported lost records."""
    with pytest.raises(SystemExit) as exit_:
        _benchmark("soak", monkeypatch).main([*option, "--rounds", "1", "--good-pages", "1", "--nested-mb", "0.01",
                                              "--max-seconds", "30"])
    assert exit_.value.code == 2
    assert f"{option[0]} {option[1]}: must exceed the soak's" in capsys.readouterr().err
