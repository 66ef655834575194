"""Runner choice for every LAIT Beam pipeline, and what a remote run's workers would lack."""
import ast
import logging
import pathlib
import re

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from packaging.specifiers import SpecifierSet

from pipeline.runners import WORKER_IMAGE_RECIPE, make_runner, remote_worker_problems

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "r", "--temp_location", "gs://b/tmp"]


def test_local_names_run_in_process():
    # Beam's own direct runner given by module path too: left to Beam, it would try its Prism runner first
    beam_paths = ["apache_beam.runners.direct.direct_runner.DirectRunner",
                  "apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner"]
    for argv in ([], ["--runner", "DirectRunner"], ["--runner", "directrunner"], *(["--runner", p] for p in beam_paths)):
        assert isinstance(make_runner(PipelineOptions(argv)), fn_runner.FnApiRunner), argv


def test_setup_file_alone_leaves_the_workers_without_the_stage_packages():
    problems = remote_worker_problems(PipelineOptions(DATAFLOW + ["--setup_file", "./setup.py"]))
    assert len(problems) == 1 and "without its extras" in problems[0] and WORKER_IMAGE_RECIPE in problems[0]
    assert "no LAIT code" in remote_worker_problems(PipelineOptions(DATAFLOW))[0]
    assert remote_worker_problems(PipelineOptions(DATAFLOW + ["--setup_file", "./setup.py",
                                                              "--sdk_container_image", "r/lait:1"])) == []
    assert remote_worker_problems(PipelineOptions(DATAFLOW + ["--setup_file", "./setup.py",
                                                              "--requirements_file", "req.txt"])) == []
    assert "no LAIT code" in remote_worker_problems(PipelineOptions(DATAFLOW + ["--requirements_file", "req.txt"]))[0]


def test_a_remote_runner_is_left_to_beam_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.runners"):
        assert make_runner(PipelineOptions(DATAFLOW + ["--setup_file", "./setup.py"])) is None
    assert [r.getMessage() for r in caplog.records if "without its extras" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.runners"):
        assert make_runner(PipelineOptions(DATAFLOW + ["--sdk_container_image", "r/lait:1"])) is None
    assert not caplog.records


def _setup_py_extras_and_beam_pin() -> tuple[set[str], str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    req = next(node.value for node in tree.body if isinstance(node, ast.Assign) and node.targets[0].id == "REQ")
    pins = {key.value: value.value for key, value in zip(req.keys, req.values)}
    extras = {key.value for node in tree.body if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EXTRAS"
              for key in node.value.keys}
    return extras, pins["beam"]


def test_the_worker_image_installs_every_beam_stage_with_the_pinned_beam():
    text = (ROOT / WORKER_IMAGE_RECIPE).read_text()
    extras, beam_pin = _setup_py_extras_and_beam_pin()
    installed = set(re.search(r'pip install [^"]*"/opt/lait\[([a-z,]+)\]"', text).group(1).split(","))
    assert {"crawl", "beam", "features"} <= installed <= extras
    version = re.search(r"ARG BEAM_VERSION=(\S+)", text).group(1)
    assert version in SpecifierSet(beam_pin.split("apache-beam", 1)[1]), (version, beam_pin)
    assert re.search(r"FROM apache/beam_python\$\{PYTHON_VERSION\}_sdk:\$\{BEAM_VERSION\}", text)
    assert ".venv/" in (ROOT / ".dockerignore").read_text()


def test_a_pipeline_never_run_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Beam removes a pipeline's folder in the system's temporary folder only at the end of run(): the filter's
    refused output (built, never run) left one behind per attempt."""
    import gc
    import tempfile

    import pytest

    import schemas
    from filters.synthetic import make_candidates
    from pipeline import filter as filter_stage
    from pipeline.runners import make_pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    make_pipeline(PipelineOptions([]))
    gc.collect()
    assert not list(tmp_path.glob("beam-pipeline-temp*"))
    out = tmp_path / "out"
    (out / "pairs").mkdir(parents=True)  # output of something else, not a filter run
    (out / "pairs" / "part-00000.parquet").write_bytes(b"")
    crawl = tmp_path / "crawl"
    with schemas.ShardWriter(str(crawl / "candidates"), "candidates") as writer:
        writer.write_many(make_candidates(4, seed=1))
    with pytest.raises(FileExistsError, match="--overwrite"):
        filter_stage.run(["--input", str(crawl), "--output", str(out)])
    gc.collect()
    assert not list(tmp_path.glob("beam-pipeline-temp*"))
