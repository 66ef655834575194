"""The output-folder rule of the Beam stages, which cannot resume: ``stats.json``, written last, marks a
finished run; anything else found in the folder is an interrupted run's leftovers.

Beam names its shards per run (``part-00000-of-00002`` one time, ``-of-00001`` the next; the
relevance writer uses random names), so a rerun into a folder that still held the previous shards
would add its rows to theirs.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
from typing import Sequence

logger = logging.getLogger(__name__)

#: A stage writes its stats here while it runs and renames the file to stats.json once every shard
#: is written, so a killed run never leaves a stats.json behind.
PENDING_STATS = "_stats.pending.json"
#: Written by ``prepare_output`` as a run starts (``{"stage": ...}``) and removed once it finished: datasets
#: found beside it without a stats.json are an interrupted run's, to remove; without it, another tool's.
RUN_MARKER = "_run.started.json"


def _filesystems():
    """Beam's FileSystems, imported when first needed: ``input_reference`` serves ``lait features``, which
    runs without Beam."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


class OutputExistsError(FileExistsError, ValueError):
    """The output folder holds a finished run (a ValueError too, for the CLIs' one-line bad-input errors)."""


def _local(path: str) -> str | None:
    """The absolute, resolved form of a local path (None for a URL such as gs://...)."""
    return None if "://" in path else os.path.realpath(path)


def _overlaps(output: str, source: str) -> bool:
    """Whether two paths are the same, or one holds the other."""
    a, b = _local(output), _local(source)
    if a is None or b is None:
        a, b = output.rstrip("/"), source.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def stage_of(stats_path: str) -> str | None:
    """The ``stage`` a finished run's stats.json names (None when it names none or cannot be read)."""
    try:
        with _filesystems().open(stats_path) as handle:
            stats = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return stats.get("stage") if isinstance(stats, dict) else None


def _present(path: str) -> list[str]:
    """What to delete to remove ``path``: the path itself when it exists (a file, or a local folder, removed
    whole), else the files under it. An object store (gs://, s3://) has no folders, only names: there
    ``exists`` is true for a file alone, and a "folder" is the files whose names begin with it."""
    if "://" not in path:
        return [path] if os.path.lexists(path) else []
    if _filesystems().exists(path):
        return [path]
    from pipeline.filter import files_under  # at call time: pipeline.filter imports this module

    return files_under(path, "/**")  # the name taken as written, even holding "[", "*" or "?"


def delete_exactly(paths: Sequence[str]) -> None:
    """Delete ``paths`` as named (a local folder whole). Beam's local delete reads each name as a pattern, so a
    folder named ``x [1]`` would be no match."""
    for path in paths:
        if "://" in path:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    remote = [path for path in paths if "://" in path]
    if remote:
        _filesystems().delete(remote)


def prepare_output(output: str, stage: str, parts: Sequence[str], overwrite: bool = False,
                   hint: str = "use a new --output", inputs: Sequence[str] = ()) -> None:
    """Refuse a finished run's folder unless ``overwrite``; remove ``parts`` an interrupted run left.

    Refused even with ``overwrite`` (``OutputExistsError``): an output that is a file, that holds another
    stage's finished run (its stats.json names another stage: a crawl folder given as --output), or that
    is, holds or lies inside one of ``inputs`` (the data this run reads).
    """
    if "://" not in output and os.path.exists(output) and not os.path.isdir(output):
        raise OutputExistsError(f"{output} is a file, not a folder; use a new --output")
    for source in inputs:
        if _overlaps(output, source):
            raise OutputExistsError(f"{output} overlaps the input {source}: the {stage} output needs a folder of its "
                                    f"own (e.g. a sibling of the input)")
    found = {name: _present(posixpath.join(output, name)) for name in (*parts, PENDING_STATS, RUN_MARKER, "stats.json")}
    existing = [name for name, paths in found.items() if paths and name != RUN_MARKER]
    stats_path = posixpath.join(output, "stats.json")
    finished = _filesystems().exists(stats_path)
    if finished:
        other = stage_of(stats_path)
        if other is not None and other != stage:
            raise OutputExistsError(f"{output} holds a finished {other} run, not a {stage} run; "
                                    f"use a new --output (--overwrite never replaces another stage's output)")
    if finished and not overwrite:
        raise OutputExistsError(f"{output} already holds a finished {stage} run "
                                f"({', '.join(posixpath.join(output, name) for name in existing)}); {hint}")
    if existing and not finished and not overwrite and _started_by(output) != stage:
        # no stats.json and no marker of this stage's run: datasets another tool or stage wrote (a demo's test/
        # split, captions imported there), not leftovers to clear
        remedy = ("--overwrite to remove them" if "--overwrite" in hint
                  else f"remove them (a run killed before {RUN_MARKER} existed left none)")
        raise OutputExistsError(f"{output} holds {', '.join(existing)} but no {stage} run, finished or interrupted "
                                f"(no stats.json, no {RUN_MARKER}); use a new --output, or {remedy}")
    if existing:
        if not finished:
            logger.warning("%s: removing the partial output of an interrupted run in %s: %s", stage, output,
                           ", ".join(existing))
    delete_exactly([path for paths in found.values() for path in paths])
    _mark_started(output, stage)


def _started_by(output: str) -> str | None:
    """The stage whose run ``RUN_MARKER`` says started in ``output`` (None: no marker, or an unreadable one)."""
    try:
        with _filesystems().open(posixpath.join(output, RUN_MARKER)) as handle:
            marker = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return marker.get("stage") if isinstance(marker, dict) else None


def _mark_started(output: str, stage: str) -> None:
    if "://" not in output:
        os.makedirs(output, exist_ok=True)
    with _filesystems().create(posixpath.join(output, RUN_MARKER)) as handle:
        handle.write(json.dumps({"stage": stage}).encode("utf-8"))


def clear_run_marker(output: str) -> None:
    """Remove ``RUN_MARKER`` once the run's stats.json is written (a finished run needs none)."""
    delete_exactly(_present(posixpath.join(output, RUN_MARKER)))


def finish_output(output: str) -> None:
    """Mark the output finished: the pending stats become stats.json (after every shard is written)."""
    _filesystems().rename([posixpath.join(output, PENDING_STATS)], [posixpath.join(output, "stats.json")])
    clear_run_marker(output)


def input_reference(input_path: str, output: str) -> str:
    """The input as stats.json names it: relative to the run folder (the output's parent) when it lies
    inside it, so that a run folder moved or copied whole still names its own input; else absolute."""
    if "://" in input_path or "://" in output:
        return input_path
    run_dir = os.path.dirname(os.path.abspath(output))
    path = os.path.abspath(input_path)
    return os.path.relpath(path, run_dir) if path.startswith(run_dir + os.sep) else path
