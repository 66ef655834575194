"""Beam transforms: ScoreRelevance through RunInference, ThresholdRelevance, and the standalone run."""
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

import pipeline.relevance as relevance_module
import schemas
from pipeline.outputs import RUN_MARKER
from demo import audit
from filters.relevance import load
from pipeline.relevance import UNSCORABLE_KEY, ScoreRelevance, ThresholdRelevance, run
from tests.relevance.conftest import write_pairs
from tests.relevance.scenes import make_pairs

OPTIONS = ["--runner=DirectRunner"]


def _scored(scores):
    return [{"pair_id": f"p{i}", "candidate_id": f"c{i}", "image_id": f"i{i}", "caption": f"cap {i}",
             "page_url": "https://s.test/", "image_url": f"https://s.test/{i}.jpg", "relevance": s}
            for i, s in enumerate(scores)]


def test_fixed_threshold_splits_and_summarises():
    rows = _scored([0.05, 0.2, 0.5, 0.51, 0.9, None])
    with BeamTestPipeline(options=PipelineOptions(OPTIONS)) as p:
        out = p | beam.Create(rows) | ThresholdRelevance(threshold=0.5)
        assert_that(out.kept | "KeptIds" >> beam.Map(lambda d: d["pair_id"]), equal_to(["p2", "p3", "p4"]),
                    label="kept")
        assert_that(out["rejected"] | "Rej" >> beam.Map(lambda r: (r["pair_id"], r["stage"], r["reason"], r["caption"])),
                    equal_to([(f"p{i}", "relevance", "low_relevance", f"cap {i}") for i in (0, 1, 5)]),
                    label="rejected")

        def check_summary(summaries):
            (s,) = summaries
            if (s["threshold"], s["in"], s["kept"], s["rejected"]) != (0.5, 6, 3, 3):
                raise BeamAssertException(f"summary {s}")
            if s["keep_rate"] != 0.5 or sum(s["histogram"]["counts"]) != 5:
                raise BeamAssertException(f"summary {s}")
            if s["histogram"]["edges"][0] != 0.0 or len(s["histogram"]["edges"]) != len(s["histogram"]["counts"]) + 1:
                raise BeamAssertException(f"histogram {s['histogram']}")

        assert_that(out.summary, check_summary, label="summary")


def test_keep_rate_threshold_is_the_score_quantile():
    scores = list(np.linspace(-0.5, 0.5, 200))  # cosines: negative scores are allowed
    with BeamTestPipeline(options=PipelineOptions(OPTIONS)) as p:
        out = p | beam.Create(_scored(scores)) | ThresholdRelevance(keep_rate=0.25)

        def check(summaries):
            (s,) = summaries
            if not (48 <= s["kept"] <= 52 and s["kept"] + s["rejected"] == 200):
                raise BeamAssertException(f"kept {s['kept']} of 200 at keep_rate 0.25")
            if not 0.2 <= s["threshold"] <= 0.3 or s["histogram"]["edges"][0] != -1.0:
                raise BeamAssertException(f"summary {s}")

        assert_that(out.summary, check)


@pytest.mark.parametrize("scores,keep_rate,kept", [
    ([i / 10 for i in range(10)], 0.5, 5),
    ([i / 10 for i in range(10)], 0.25, 3),  # 2.5 rounds up
    ([i / 10 for i in range(7)], 0.5, 4),
    ([i / 10 for i in range(3)], 0.34, 1),
    ([i / 10 for i in range(10)], 0.04, 0),  # 0.4 of a pair: none
    ([0.1, 0.5, 0.5, 0.5, 0.9], 0.4, 4),  # the cut (0.5) is tied: its ties are kept too
])
def test_keep_rate_keeps_the_rounded_share(scores, keep_rate, kept):
    """On small inputs too, a keep rate r of n pairs keeps round(r x n) of them (more only on ties at the cut)."""
    with BeamTestPipeline(options=PipelineOptions(OPTIONS)) as p:
        out = p | beam.Create(_scored(scores)) | ThresholdRelevance(keep_rate=keep_rate)

        def check(summaries):
            (s,) = summaries
            if s["kept"] != kept or s["kept"] + s["rejected"] != len(scores):
                raise BeamAssertException(f"kept {s['kept']} of {len(scores)} at keep_rate {keep_rate}, not {kept}")

        assert_that(out.summary, check)
        assert_that(out.kept | beam.combiners.Count.Globally(), equal_to([kept]), label="kept rows")


def test_keep_rate_cut_beyond_the_exact_limit_reads_the_quantile_at_the_same_rank():
    """Too many scores to gather: the cut is the approximate quantile at the rank of the exact cut."""
    from pipeline.relevance import _keep_rate_threshold, _ScoresUpTo, kept_count

    n = 1_000_001
    quantiles = [i / 1000 for i in range(1001)]  # scores spread evenly over [0, 1]
    assert kept_count(0.8, n) == 800_001
    assert _keep_rate_threshold((n, None), quantiles, 0.8) == pytest.approx(0.2)
    assert _keep_rate_threshold((n, None), quantiles, 1.0) == 0.0
    assert _keep_rate_threshold((n, None), quantiles, 1e-7) > 1.0  # none kept: just above the highest
    assert _keep_rate_threshold((0, []), [], 0.5) is None
    gather = _ScoresUpTo(3)
    small = gather.add_input(gather.add_input(gather.create_accumulator(), 0.5), 0.1)
    assert gather.extract_output(small) == (2, [0.1, 0.5])
    assert gather.extract_output(gather.merge_accumulators([small, small])) == (4, None)  # over the limit


def test_the_device_asked_for_is_resolved_on_the_worker(model_dir, monkeypatch):
    """--device GPU from a launcher without one (Dataflow GPU workers) stays GPU until a worker loads the model."""
    import torch
    from apache_beam.internal import pickler

    import pipeline.relevance as relevance

    built = []
    monkeypatch.setattr(relevance, "_build_model", lambda spec, device: built.append(device) or torch.nn.Identity())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the launcher
    transform = ScoreRelevance(model_dir, device="GPU")
    assert transform.device == "GPU"
    shipped = pickler.dumps(transform.model_handler())

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU worker
    worker = pickler.loads(shipped)
    worker.load_model()
    assert built == ["cuda"] and worker._unkeyed._device.type == "cuda"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU worker: the batches follow the model
    worker = pickler.loads(shipped)
    worker.load_model()
    assert built[-1] == "cpu" and worker._unkeyed._device.type == "cpu"

    assert ScoreRelevance(model_dir, device="cuda").device == "GPU" and ScoreRelevance(model_dir).device is None
    assert ScoreRelevance(model_dir, device="cpu").device == "CPU"
    with pytest.raises(ValueError, match="CPU or GPU"):
        ScoreRelevance(model_dir, device="tpu")


def test_a_handler_copy_that_did_not_load_the_model_scores_where_the_model_is(model_dir):
    """Threads of a Beam worker share one loaded model (``shared.Shared``): only one copy of the handler runs
    ``load_model``. The others must still send their batches to the model's device, not to the GPU that a
    handler with no device request names before loading."""
    from apache_beam.internal import pickler

    from tests.relevance.scenes import make_pairs

    shipped = pickler.dumps(ScoreRelevance(model_dir).model_handler())  # no device request: GPU if there is one
    loader, other = pickler.loads(shipped), pickler.loads(shipped)
    model = loader.load_model()  # this CPU machine: on the CPU
    prepare = relevance_module._PrepareInputs(model_dir)
    prepare.setup()
    keyed = [next(iter(prepare.process(pair))) for pair in make_pairs(3, seed=1)][:3]
    results = list(other.run_inference(keyed, model))  # `other` never loaded: its device was the GPU's
    assert len(results) == 3 and all(r[1].inference.device.type == "cpu" for r in results)


def test_stats_are_written_through_beam_filesystems(tmp_path, monkeypatch, object_store):
    """stats.json goes where Beam's FileSystems put the output: a gs:// output is never a local "gs:" folder."""
    from pipeline.outputs import PENDING_STATS, finish_output
    from pipeline.relevance import _write_stats, read_stats

    monkeypatch.chdir(tmp_path)
    summary = {"in": 3, "kept": 2, "rejected": 1, "rejected_by_reason": {"low_relevance": 1}, "threshold": 0.5}
    for output, folder in (("laitobj://run/relevance", object_store / "run" / "relevance"),
                           (str(tmp_path / "local" / "relevance"), tmp_path / "local" / "relevance")):
        _write_stats(summary, output, {"model": "m"})
        assert (folder / PENDING_STATS).exists()
        finish_output(output)
        assert read_stats(output)["kept"] == 2 and (folder / "stats.json").exists()
    assert not (tmp_path / "laitobj:").exists()


def test_a_remote_pairs_dataset_is_read_by_url(tmp_path):
    """fsspec lists a URL's files without their scheme; the workers get them back with it."""
    from pipeline.relevance import _pair_files, _read_pairs_file

    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(1, seed=3)]
    url = f"memory://lait-relevance-input-{os.getpid()}/pairs"
    schemas.write_table(schemas.to_table(rows, "pairs"), f"{url}/part-00000.parquet", "pairs")
    (file,) = _pair_files(url)
    assert file.startswith("memory://")
    assert [r["pair_id"] for r in _read_pairs_file(file)] == [r["pair_id"] for r in rows]


def test_threshold_arguments_are_checked():
    with pytest.raises(ValueError, match="not both"):
        ThresholdRelevance(threshold=0.5, keep_rate=0.5)
    with pytest.raises(ValueError, match="keep_rate"):
        ThresholdRelevance(keep_rate=1.5)
    with pytest.raises(ValueError, match="needs a threshold"):
        ThresholdRelevance()


def test_score_relevance_matches_the_scoring_api(model_dir, heldout_rows):
    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in heldout_rows[:40]]
    rows[3] = dict(rows[3], image_bytes=b"garbage")
    expected = dict(zip([r["pair_id"] for r in rows], load(model_dir).score(rows).tolist()))

    def check(scored):
        got = dict(scored)
        if got.keys() != expected.keys():
            raise BeamAssertException("pairs lost or invented")
        worst = max(abs(got[k] - expected[k]) for k in got)
        if worst > 1e-5 or got[rows[3]["pair_id"]] != 0.0:
            raise BeamAssertException(f"Beam and API scores differ by {worst}")

    with BeamTestPipeline(options=PipelineOptions(OPTIONS)) as p:
        scored = p | beam.Create(rows) | ScoreRelevance(model_dir, batch_size=16, device="CPU")
        assert_that(scored | beam.Map(lambda d: (d["pair_id"], d["relevance"])), check)
        # the pair dicts come through whole
        # (the unscorable pair also carries the flag that ThresholdRelevance turns into its reason)
        assert_that(scored | "Keys" >> beam.Map(lambda d: sorted(d)),
                    equal_to([sorted(list(rows[0]) + ["relevance"])] * 39
                             + [sorted(list(rows[0]) + ["relevance", UNSCORABLE_KEY])]), label="keys")


def test_standalone_run_keeps_the_books(model_dir, heldout_rows, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in heldout_rows[:60]]
    write_pairs(rows, str(tmp_path / "filter" / "pairs"))
    summary = run(["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "relevance"),
                   "--model", model_dir, "--runner=DirectRunner"])
    stats = json.loads((tmp_path / "relevance" / "stats.json").read_text())
    kept = schemas.read_table(str(tmp_path / "relevance" / "pairs"), "pairs")
    rejected = schemas.read_table(str(tmp_path / "relevance" / "rejected"), "rejected")
    assert stats["stage"] == "relevance" and stats["in"] == 60 == kept.num_rows + rejected.num_rows
    assert stats["kept"] == kept.num_rows and stats["rejected_by_reason"].get("low_relevance", 0) == rejected.num_rows
    threshold = load(model_dir).threshold
    assert summary["threshold"] == pytest.approx(threshold)
    assert min(kept.column("relevance").to_pylist()) >= threshold
    assert set(rejected.column("reason").to_pylist()) <= {"low_relevance"}
    assert set(kept.column("pair_id").to_pylist()) | set(rejected.column("pair_id").to_pylist()) == \
        {r["pair_id"] for r in rows}
    # the input is recorded (relative to the run folder), so the audit checks against it, not a guess
    assert stats["input"] == "filter"
    report = audit.audit_stage(str(tmp_path), "relevance")
    assert report["upstream"] == "filter" and report["ok"], [c for c in report["checks"] if not c["ok"]]
    argv = ["--input", str(tmp_path / "filter"), "--model", model_dir, "--runner=DirectRunner"]
    # A finished output is refused (shards are named per run: a second run would add a second copy).
    with pytest.raises(ValueError, match="already holds a finished relevance run"):
        run(argv + ["--output", str(tmp_path / "relevance")])
    # What a killed run leaves (shards, no stats.json) is cleared; the rerun equals the first run.
    killed = tmp_path / "killed"
    os.makedirs(killed / "pairs")
    shard = next(p for p in os.listdir(tmp_path / "relevance" / "pairs") if p.endswith(".parquet"))
    os.link(tmp_path / "relevance" / "pairs" / shard, killed / "pairs" / shard)
    assert not (killed / "stats.json").exists()
    (killed / RUN_MARKER).write_text('{"stage": "relevance"}')  # the run had started there
    run(argv + ["--output", str(killed)])
    again = schemas.read_table(str(killed / "pairs"), "pairs")
    assert sorted(again.column("pair_id").to_pylist()) == sorted(kept.column("pair_id").to_pylist())
    assert json.loads((killed / "stats.json").read_text())["kept"] == kept.num_rows


def test_empty_input_gives_an_empty_summary_not_a_crash():
    with BeamTestPipeline(options=PipelineOptions(OPTIONS)) as p:
        out = p | beam.Create([]) | ThresholdRelevance(keep_rate=0.5)

        def check(summaries):
            (s,) = summaries
            if (s["in"], s["kept"], s["rejected"], s["threshold"]) != (0, 0, 0, None):
                raise BeamAssertException(f"summary {s}")

        assert_that(out.summary, check)
        assert_that(out.kept, equal_to([]), label="nothing kept")


@pytest.mark.parametrize("cut", [{"keep_rate": 0.8}, {"keep_rate": 1.0}, {"threshold": 0.0}])
def test_unscorable_pairs_are_rejected_whatever_the_cut(cut):
    """An undecodable image scores the minimum; a keep-rate quantile or a zero cut must not keep it."""
    rows = _scored([0.0] * 4 + list(np.linspace(0.1, 0.9, 16)))
    for r in rows[:4]:
        r[UNSCORABLE_KEY] = True
    with BeamTestPipeline(options=PipelineOptions(OPTIONS)) as p:
        out = p | beam.Create(rows) | ThresholdRelevance(**cut)
        assert_that(out.kept | "KeptUnscorable" >> beam.Filter(lambda d: d["pair_id"] in ("p0", "p1", "p2", "p3")
                                                              or UNSCORABLE_KEY in d),
                    equal_to([]), label="no unscorable kept")
        assert_that(out.rejected | "Undecodable" >> beam.Filter(lambda r: r["reason"] == "image_undecodable")
                    | beam.Map(lambda r: (r["pair_id"], r["stage"])),
                    equal_to([(f"p{i}", "relevance") for i in range(4)]), label="own reason")

        def check(summaries):
            (s,) = summaries
            if s["in"] != 20 or s["kept"] + s["rejected"] != 20 or sum(s["rejected_by_reason"].values()) != s["rejected"]:
                raise BeamAssertException(f"books do not add up: {s}")
            if s["rejected_by_reason"].get("image_undecodable") != 4 or s["unscorable"] != 4:
                raise BeamAssertException(f"unscorable not counted: {s}")
            if "keep_rate" in cut and not (s["threshold"] > 0.0 and abs(s["kept"] - 16 * cut["keep_rate"]) <= 1):
                raise BeamAssertException(f"quantile not over the scorable pairs: {s}")
            if sum(s["histogram"]["counts"]) != 16:
                raise BeamAssertException(f"histogram counts unscorable pairs: {s}")

        assert_that(out.summary, check, label="summary")


def test_standalone_run_rejects_undecodable_images_at_a_keep_rate(model_dir, heldout_rows, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in heldout_rows[:30]]
    for r in rows[:5]:
        r["image_bytes"] = b"\xff\xd8\xff garbage"
    write_pairs(rows, str(tmp_path / "in" / "pairs"))
    summary = run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", model_dir,
                   "--keep-rate", "1.0", "--runner=DirectRunner"])
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    kept = schemas.read_table(str(tmp_path / "out" / "pairs"), "pairs")
    rejected = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected")
    assert kept.num_rows == 25 == summary["kept"] and stats["rejected_by_reason"] == {"image_undecodable": 5}
    assert not set(kept.column("pair_id").to_pylist()) & {r["pair_id"] for r in rows[:5]}
    assert stats["in"] == kept.num_rows + rejected.num_rows == 30
    assert UNSCORABLE_KEY not in kept.column_names


def test_keep_rate_keeps_the_rounded_share_of_the_rate_as_written():
    """0.7 of 45 pairs is 31.5: 32 kept (the float product, 31.499999999999996, would round to 31)."""
    with BeamTestPipeline(options=PipelineOptions(OPTIONS)) as p:
        out = p | beam.Create(_scored([i / 45 for i in range(45)])) | ThresholdRelevance(keep_rate=0.7)
        assert_that(out.kept | beam.combiners.Count.Globally(), equal_to([32]), label="kept rows")


def test_native_entry_point_reports_an_unwritable_output_in_one_line(tmp_path, cli_env):
    """`python -m pipeline.relevance` with an --output that cannot be created (under a regular file): one line
    on stderr and exit status 2, as `lait relevance score` answers it, not a traceback."""
    import subprocess
    import sys

    from tests.relevance.conftest import ROOT, save_tiny_model

    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(1, seed=3)]
    write_pairs(rows, str(tmp_path / "in" / "pairs"))
    (tmp_path / "file").write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.relevance", "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "file" / "out"), "--model", save_tiny_model(str(tmp_path / "model"))],
        cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m pipeline.relevance: error:"), proc.stderr
    assert str(tmp_path / "file" / "out") in lines[0] and "Traceback" not in proc.stderr
