"""The Beam forms of the relevance and features stages: a retried write adds no rows, Beam options are checked (and
refused in one line) before the output is touched, a worker's error is one line, and a module path to Beam's own
DirectRunner is local for every check, as ``make_runner`` runs it."""
import os
import shutil

import apache_beam as beam
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

import pipeline.parquet_beam as parquet_beam
import pipeline.relevance as relevance
import schemas
from pipeline.options import beam_options
from tests.relevance.conftest import save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs

BEAM_DIRECT_RUNNER = "apache_beam.runners.direct.direct_runner.DirectRunner"


@pytest.fixture()
def pairs(tmp_path):
    """A tiny model that keeps every pair (threshold 0), and a filter folder of 10 pairs: (model, filter folder)."""
    model = save_tiny_model(str(tmp_path / "m"), threshold=0.0)
    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(3, seed=2)][:10]
    write_pairs(rows, str(tmp_path / "filter" / "pairs"))
    return model, str(tmp_path / "filter")


def _fail_once_after(counter, real):
    """``real``, raising an OSError the first time it is called (``counter``, a file, counts across attempts) once
    it has done its work: a worker lost after writing its file, whose bundle the runner then retries."""

    def flaky(*args, **kwargs):
        result = real(*args, **kwargs)
        with open(counter, "a") as handle:
            handle.write("x")
        if os.path.getsize(counter) == 1:
            raise OSError("transient failure after the write (simulated)")
        return result

    return flaky


def test_a_retried_write_adds_no_rows(pairs, tmp_path, monkeypatch):
    """A bundle retried after its pairs file was written (BundleBasedDirectRunner retries a failed bundle, as
    Dataflow does) used to leave that file in pairs/ beside the retry's: 20 rows on disk, 10 in stats.json."""
    model, folder = pairs
    counter = str(tmp_path / "calls")
    real_write_table, real_close = schemas.write_table, parquet_beam._Sink.close

    def write_table(table, path, kind=None, *args, **kwargs):  # the stage's own shard writer, if it writes one
        write = _fail_once_after(counter, real_write_table) if kind == "pairs" else real_write_table
        return write(table, path, kind, *args, **kwargs)

    def close(self, writer):  # Beam's Parquet sink closing a shard
        pairs_sink = self.file_path_prefix.get().endswith("pairs/part")
        return (_fail_once_after(counter, real_close) if pairs_sink else real_close)(self, writer)

    monkeypatch.setattr(schemas, "write_table", write_table)
    monkeypatch.setattr(parquet_beam._Sink, "close", close)
    out = tmp_path / "out"
    summary = relevance.run(["--input", folder, "--output", str(out), "--model", model],
                            test_pipeline=beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions([])))
    assert os.path.getsize(counter) >= 2  # the write failed once, and was retried
    kept = schemas.read_table(str(out / "pairs"), "pairs")
    assert summary["kept"] == kept.num_rows == 10
    assert len(set(kept.column("pair_id").to_pylist())) == 10  # each pair once
    assert schemas.read_table(str(out / "rejected"), "rejected").num_rows == 0  # there, and empty


def test_an_empty_output_still_has_its_folders(pairs, tmp_path):
    """Nothing kept (a keep rate below one pair) and nothing rejected elsewhere: pairs/ is there, with no rows."""
    model, folder = pairs
    out = tmp_path / "out"
    summary = relevance.run(["--input", folder, "--output", str(out), "--model", model, "--keep-rate", "0.01",
                             "--runner=DirectRunner"])
    assert summary["kept"] == 0
    assert schemas.read_table(str(out / "pairs"), "pairs").num_rows == 0
    assert schemas.read_table(str(out / "rejected"), "rejected").num_rows == 10
    assert sorted(os.listdir(out)) == ["pairs", "rejected", "stats.json"]


def test_a_misspelt_option_is_refused(pairs, tmp_path, capsys):
    """--keep_rate (Beam's spelling) was dropped with a log line: the run kept every pair, not 10%."""
    model, folder = pairs
    out = tmp_path / "out"
    assert relevance.main(["--input", folder, "--output", str(out), "--model", model, "--keep_rate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "python -m pipeline.relevance: error: unknown argument(s) --keep_rate 0.1: neither an option of this stage "
        "nor a Beam option; --keep_rate: did you mean --keep-rate?"]
    assert not out.exists()


@pytest.mark.parametrize("extra,message", [
    (["--direct_num_workers", "abc"], "Beam options: argument --direct_num_workers: invalid int value: 'abc'"),
    (["--runner", "NoSuchRunner"], "Beam options: Unexpected pipeline runner: NoSuchRunner."),
])
def test_bad_beam_options_leave_the_output_untouched(pairs, tmp_path, capsys, extra, message):
    """Beam's options were checked only once the output was prepared (its folder made, a run marker in it), and a
    bad value printed Beam's whole usage text and exited."""
    model, folder = pairs
    out = tmp_path / "out"
    assert relevance.main(["--input", folder, "--output", str(out), "--model", model, *extra]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith(f"python -m pipeline.relevance: error: {message}")
    assert not out.exists()


def test_a_worker_error_in_multi_processing_mode_is_one_line(pairs, tmp_path, capsys):
    """A damaged shard read by a worker process reaches the driver as a RuntimeError holding the worker's
    traceback: it was let through (a traceback, exit status 1), not reported as the bad input it is."""
    from tests.features.parquet_rot import corrupt_pages

    model, folder = pairs
    bad = tmp_path / "rot" / "pairs"
    bad.mkdir(parents=True)
    shutil.copy(os.path.join(folder, "pairs", "part-00000.parquet"), bad / "part-00000.parquet")
    corrupt_pages(str(bad / "part-00000.parquet"), 0, "caption", "pair_id", "image_id", skip=0)
    status = relevance.main(["--input", str(bad.parent), "--output", str(tmp_path / "out"), "--model", model,
                             "--runner=DirectRunner", "--direct_running_mode=multi_processing",
                             "--direct_num_workers=1"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert status == 2
    assert last.startswith(f"python -m pipeline.relevance: error: {bad / 'part-00000.parquet'}: unreadable Parquet")
    assert "Traceback" not in last


def test_a_module_path_to_beams_direct_runner_is_local_for_the_option_check():
    """make_runner runs it here, on FnApiRunner; beam_options took it for a remote runner and only logged an
    argument it did not know, as it must for a third-party runner's own options."""
    with pytest.raises(ValueError, match="unknown argument"):
        beam_options(["--runner=DirectRunner", "--no_such_option=1"])
    with pytest.raises(ValueError, match="unknown argument"):
        beam_options([f"--runner={BEAM_DIRECT_RUNNER}", "--no_such_option=1"])


def test_a_module_path_to_beams_direct_runner_is_local_for_the_device_check(tmp_path, monkeypatch):
    """--device cuda without CUDA is refused before the output is touched with DirectRunner; given by module path,
    the same local runner was taken for a remote one, whose workers may have the GPU: the run went on."""
    from model.detectors import demo
    from pipeline.features import run
    from tests.features.scenes import CLASS_NAMES, encode, make_scene
    from tests.features.scenes import write_pairs as write_image_pairs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.manual_seed(0)
    weights = demo.save(demo.build({"min_size": 64, "max_size": 96, "channels": [16, 16, 32, 32, 64, 64]},
                                   CLASS_NAMES), str(tmp_path / "demo.safetensors"))
    write_image_pairs(tmp_path / "filter", [encode(make_scene(0)[0])])
    for runner in ("DirectRunner", BEAM_DIRECT_RUNNER):
        out = tmp_path / "features"
        with pytest.raises(ValueError, match="--device cuda was asked for, but torch sees no CUDA device"):
            run(["--input", str(tmp_path / "filter"), "--output", str(out), "--detector", "demo",
                 "--weights", weights, "--device", "cuda", "--runner", runner])
        assert not out.exists(), runner


def test_lait_crawl_warc_takes_beams_direct_runner_by_its_module_path():
    """``-s runner=apache_beam.runners.direct.direct_runner.DirectRunner`` runs here as DirectRunner does: it was
    refused as "not a local runner" while make_runner runs it locally."""
    from crawler import warc

    path = "apache_beam.runners.direct.direct_runner.DirectRunner"
    assert warc.setting_options({"runner": path})["runner"] == path
    with pytest.raises(ValueError, match="runner must be a local runner"):
        warc.setting_options({"runner": "DataflowRunner"})
