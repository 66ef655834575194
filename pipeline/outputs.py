"""The output-folder rule of the Beam stages, which cannot resume: ``stats.json``, written last, marks a
finished run; anything else found in the folder is an interrupted run's leftovers, unless the run that marked the
folder (``RUN_MARKER``) is still going: then a second run into it is refused (``run_in_progress``).

Beam names its shards per run (``part-00000-of-00002`` one time, ``-of-00001`` the next), so a rerun into a
folder that still held the previous shards would add its rows to theirs.

Paths are taken as written: a folder named with ``[``, ``*`` or ``?`` (``r7 [v2]/filter``) is that folder, never
a pattern (``is_pattern``, ``literal_pattern``, ``files_under``). Beam is imported on first use, not with
this module.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import os
import posixpath
import shutil
import socket
import tempfile
from typing import Callable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # not Unix: no locks (claim_lock)
    fcntl = None

logger = logging.getLogger(__name__)

#: A stage writes its stats here while it runs and renames the file to stats.json once every shard
#: is written, so a killed run never leaves a stats.json behind.
PENDING_STATS = "_stats.pending.json"
#: Written by ``prepare_output`` as a run starts (``run_marker``: the stage, and the host, pid and start time of
#: the process) and removed once it finished: datasets found beside it without a stats.json are a run's still
#: going (``run_in_progress``), to leave alone, or an interrupted run's, to remove; without it, another tool's.
RUN_MARKER = "_run.started.json"


def _filesystems():
    """Beam's FileSystems, imported when first needed: ``input_reference`` and ``stage_of`` (given its own
    ``read``) serve ``lait features``, which runs without Beam."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


# ---------------------------------------------------------------------------------------------- paths as written

#: What makes a path a pattern to Beam's filesystems (``FileSystems.match``).
GLOB_CHARS = "*?["


def has_glob(path: str) -> bool:
    """Whether Beam would read ``path`` as a pattern of several files: it holds ``*``, ``?`` or ``[``, whether or
    not something lies at it (a sink's output prefix, its temporary folder)."""
    return any(ch in path for ch in GLOB_CHARS)


def _exists(path: str) -> bool:
    """Whether a file or folder lies at ``path`` as written (on an object store: a file, or a prefix of files)."""
    if "://" not in path:
        return os.path.lexists(path)
    return _filesystems().exists(path) or is_folder(path)


def is_pattern(path: str) -> bool:
    """Whether ``path`` is a glob: it has ``*``, ``?`` or ``[`` and nothing lies at it as written. A path that
    exists is that path (``runs/r7 [v2]/crawl``), never a pattern."""
    return has_glob(path) and not _exists(path)


def literal_pattern(path: str) -> str:
    """``path`` as a Beam pattern (Beam's ``translate_pattern`` has no escape character): ``*`` and ``?`` as the
    classes ``[*]`` and ``[?]``, ``[`` as ``[][]``, which matches ``]`` too (``[[]`` would be a set that opens
    with ``[``, which Python warns may one day mean a nested set). ``files_under`` keeps the exact matches."""
    return "".join({"*": "[*]", "?": "[?]", "[": "[][]"}.get(ch, ch) for ch in path)


def files_under(path: str, pattern: str = "", limit: int | None = None) -> list[str]:
    """The files Beam's filesystem lists for ``path`` + ``pattern`` (``""``: the file itself; ``"/**.parquet"``),
    ``path`` taken as written even when it holds ``*``, ``?`` or ``[``."""
    exact = "[" not in path  # else a "]" in its place matches too (``literal_pattern``): check each file
    found = _filesystems().match([literal_pattern(path) + pattern],
                                 limits=[limit if exact else None])[0].metadata_list
    files = [m.path for m in found if exact or m.path.startswith(path)]
    return files[:limit] if limit else files


def is_folder(path: str) -> bool:
    """Whether ``path`` is a folder: a local directory, or on an object store (gs://, s3://: no folders, only
    names) a prefix that names files under it; there ``FileSystems.exists`` is true for files alone."""
    if "://" not in path:
        return os.path.isdir(path)
    return bool(files_under(path.rstrip("/"), "/**", limit=1))


# ---------------------------------------------------------------------------------------------- output folders

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


def _glob_prefix(pattern: str) -> str:
    """The folder of a pattern before its first wildcard (``c5/cands`` for ``c5/cands/*.parquet``; ``.`` or the
    bucket when the wildcard comes first)."""
    scheme, sep, rest = pattern.rpartition("://")
    parts = rest.split("/")
    fixed = list(itertools.takewhile(lambda part: not has_glob(part), parts[:-1]))
    folder = "/".join(fixed) or ("/" if rest.startswith("/") else "." if not sep else parts[0])
    return f"{scheme}{sep}{folder}"


def read_folders(source: str) -> list[str]:
    """The folders whose data ``source`` (an input, as given) reads, to keep an output out of: a folder itself; for a
    single file, its folder (a rerun given the folder would read what the output wrote there); for a pattern, the
    folders of the files it matches, and with ``**`` (any depth) the whole folder before its wildcards, where
    any file written would be matched the next time. A folder a single ``*`` spans (``runs/*/candidates``) is
    not read whole: an output beside the runs it names (``runs/merged``) is not among them."""
    if is_pattern(source):
        found = {posixpath.dirname(m.path) for m in _filesystems().match([source])[0].metadata_list}
        return sorted(found | ({_glob_prefix(source)} if "**" in source else set()))
    if "://" not in source:
        return [(os.path.dirname(source) or ".") if os.path.isfile(source) else source]
    return [posixpath.dirname(source.rstrip("/")) if _filesystems().exists(source) else source]


def _same(a: str, b: str) -> bool:
    """Whether two paths name the same folder."""
    return (_local(a) or a.rstrip("/")) == (_local(b) or b.rstrip("/"))


def _read_bytes(path: str) -> bytes:
    with _filesystems().open(path) as handle:
        return handle.read()


def read_stats(stats_path: str, read: Callable[[str], bytes] | None = None) -> dict | None:
    """A finished run's stats.json (None when there is none, or it cannot be read, or holds no JSON object).

    ``read``: how to read the file's bytes (an ``OSError`` when it cannot); by default Beam's FileSystems (the
    Beam stages' paths, gs:// and s3:// included), while the local features runner, which runs without Beam,
    reads through its pyarrow/fsspec filesystems."""
    try:
        stats = json.loads((read or _read_bytes)(stats_path))
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) else None


def stage_of(stats_path: str, read: Callable[[str], bytes] | None = None) -> str | None:
    """The ``stage`` a finished run's stats.json names (None when it names none or cannot be read);
    ``read`` as in ``read_stats``."""
    stats = read_stats(stats_path, read)
    return stats.get("stage") if stats is not None else None


def _present(path: str) -> list[str]:
    """What to delete to remove ``path``: the path itself when it exists (a file, or a local folder, removed
    whole), else the files under it. An object store (gs://, s3://) has no folders, only names: there
    ``exists`` is true for a file alone, and a "folder" is the files whose names begin with it."""
    if "://" not in path:
        return [path] if os.path.lexists(path) else []
    if _filesystems().exists(path):
        return [path]
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


def refuse_empty_paths(*options: tuple[str, object, str], optional: bool = False) -> None:
    """A one-line ValueError for the first path option (``(option, value, what to give)``) that is empty or white
    space alone, e.g. an unset ``$OUT`` in a script, before anything is read or written. An empty path names the
    current folder: a stage's ``pairs/``, ``rejected/`` and ``stats.json`` were the current folder's (removed by
    ``--overwrite``), and an empty ``--input`` read every dataset under it. With ``optional``, ``None`` is an option
    not given; else it is refused as empty too."""
    for option, value, what in options:
        if value is None and optional:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{option} {value!r} is empty; give {what}")


def prepare_output(output: str, stage: str, parts: Sequence[str], overwrite: bool = False,
                   hint: str = "use a new --output", inputs: Sequence[str] = (),
                   other_runs: Callable[[str], None] | None = None) -> None:
    """Refuse a finished run's folder unless ``overwrite``; remove ``parts`` an interrupted run left.

    Refused even with ``overwrite`` (``OutputExistsError``), before anything is written: an output that is a
    file, that holds another stage's finished run (its stats.json names another stage: a crawl folder given as
    --output), that is, holds or lies inside one of ``inputs`` (the data this run reads), that holds Parquet
    files itself (a dataset such as ``RUN/filter/pairs``), or that lies inside a finished stage's folder (one
    whose stats.json names a stage; ``refuse_dataset_or_nested``), or whose run is still going (``refuse_running``:
    its ``RUN_MARKER`` names a live process of this host; one of another host is refused unless ``overwrite``).

    An empty ``output`` (or white space alone: an unset ``$OUT`` in a script) is a ValueError before anything
    is looked at: its parts would be the current folder's ``pairs/``, ``stats.json``, …, deleted here. The
    stages refuse it in their own words first; this is the last line of defence for any other caller.

    From reading the marker to writing this run's, the folder is held (``claim_lock``), so that a run that claims it
    meanwhile waits and then finds this one's marker, rather than have its own removed here as an ended run's.
    ``other_runs(output)``, called while it is held, refuses (``OutputExistsError``) while a run of the stage's
    other form, which marks the folder otherwise, is still going there (the features stage's ``lait features``).
    """
    refuse_empty_paths(("--output", output, f"the folder to write the {stage} output to"))
    if "://" not in output and os.path.exists(output) and not os.path.isdir(output):
        raise OutputExistsError(f"{output} is a file, not a folder; use a new --output")
    for source in inputs:
        for folder in read_folders(source):
            if _overlaps(output, folder):
                held = "" if _same(folder, source) else f" (it reads {folder})"
                raise OutputExistsError(f"{output} overlaps the input {source}{held}: the {stage} output needs a "
                                        f"folder of its own (e.g. a sibling of the input)")
    refuse_dataset_or_nested(output, stage, inputs)
    with claim_lock(output):
        _claim(output, stage, parts, overwrite, hint, other_runs)


def _claim(output: str, stage: str, parts: Sequence[str], overwrite: bool, hint: str,
           other_runs: Callable[[str], None] | None) -> None:
    """``prepare_output``'s steps from reading the folder's marker to writing this run's, in ``claim_lock``."""
    marker = read_run_marker(output)
    refuse_running(output, marker, overwrite, hint)
    if other_runs is not None:
        other_runs(output)
    found = {name: _present(posixpath.join(output, name)) for name in (*parts, PENDING_STATS, RUN_MARKER, "stats.json")}
    existing = [name for name, paths in found.items() if paths and name != RUN_MARKER]
    stats_path = posixpath.join(output, "stats.json")
    finished = _filesystems().exists(stats_path)
    if finished:
        refuse_other_stage(output, stage)
    if finished and not overwrite:
        raise OutputExistsError(f"{output} already holds a finished {stage} run "
                                f"({', '.join(posixpath.join(output, name) for name in existing)}); {hint}")
    started_by = marker.get("stage") if marker is not None else None
    if existing and not finished and not overwrite and started_by != stage:
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


#: Stages whose folder holds other stages' folders by design: the import layout, ``lait import-captions --out D``
#: then ``lait features --input D --output D/features``.
HOLDS_STAGE_FOLDERS = ("import_captions",)


def ancestors(output: str) -> list[str]:
    """The folders that hold ``output``, nearest first (local: resolved, up to /; a URL: up to its bucket)."""
    if "://" not in output:
        path, found = os.path.realpath(output), []
        while os.path.dirname(path) != path:
            path = os.path.dirname(path)
            found.append(path)
        return found
    scheme, rest = output.rstrip("/").split("://", 1)
    parts = rest.split("/")
    return [f"{scheme}://" + "/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]


def _finished_stage(folder: str) -> str | None:
    """The stage a stats.json directly in ``folder`` names (None: none there, or not a stage's)."""
    stats_path = posixpath.join(folder, "stats.json") if "://" in folder else os.path.join(folder, "stats.json")
    if "://" not in folder and not os.path.isfile(stats_path):
        return None
    if "://" in folder and not _filesystems().exists(stats_path):
        return None
    stage = stage_of(stats_path, read=None if "://" in folder else _read_local_bytes)  # a local one without Beam
    return stage if isinstance(stage, str) else None


def _read_local_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def refuse_other_stage(output: str, stage: str,
                       remedy: str = "use a new --output (--overwrite never replaces another stage's output)") -> None:
    """``OutputExistsError`` for an output that holds another stage's finished run (its stats.json names that
    stage: a crawl folder given as a filter's --output), ending with ``remedy``."""
    other = _finished_stage(output)
    if other is not None and other != stage:
        raise OutputExistsError(f"{output} holds a finished {other} run, not a {stage} run; {remedy}")


def refuse_dataset_or_nested(output: str, stage: str, inputs: Sequence[str], give: str | None = None,
                             dataset_example: str | None = None) -> None:
    """``OutputExistsError`` for an output that is a dataset (it holds Parquet files: ``RUN/filter/pairs`` given as
    --output, where the run's own pairs/, rejected/ and stats.json would land among its shards and make it
    unreadable as one), or that lies inside another run's finished stage folder (its stats.json names a stage),
    which would then hold a stage folder inside its own. The import layout (``HOLDS_STAGE_FOLDERS``), and a folder
    this run reads (``inputs``), may hold the output.

    ``give`` words the remedy (default: give the STAGE output a folder of its own), ``dataset_example`` the example
    for a dataset (default ``RUN/STAGE``). A local output is checked without Beam (``lait import-captions`` runs
    where Beam is not installed)."""
    give = give or f"give the {stage} output a folder of its own"
    if "://" not in output:
        shards = []
        if os.path.isdir(output):
            with os.scandir(output) as entries:
                shards = sorted(entry.name for entry in entries if entry.name.endswith(".parquet") and entry.is_file())
    else:
        shards = files_under(output, "/*.parquet", limit=1) if is_folder(output) else []
    if shards:
        raise OutputExistsError(f"{output} holds Parquet files ({posixpath.basename(shards[0])}): it is a dataset, "
                                f"not a stage folder; {give} (e.g. {dataset_example or f'RUN/{stage}'})")
    for folder in ancestors(output):
        other = _finished_stage(folder)
        if other is None or other in HOLDS_STAGE_FOLDERS or any(_same(folder, source) for source in inputs):
            continue
        raise OutputExistsError(f"{output} lies inside {folder}, the folder of a finished {other} run (its stats.json); "
                                f"{give} (e.g. a sibling of {folder})")


def read_run_marker(output: str, name: str = RUN_MARKER) -> dict | None:
    """The ``RUN_MARKER`` (or the run marker ``name``) in ``output`` (None: no marker, or an unreadable one), read
    through Beam's FileSystems."""
    try:
        with _filesystems().open(posixpath.join(output, name)) as handle:
            marker = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _boot_id() -> str | None:
    """This boot of the host (Linux), so that a marker written before a reboot names no live process."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> tuple[int, str] | None:
    """When process ``pid`` started (``/proc/PID/stat`` field 22, clock ticks after boot) and its state; None
    when there is no such process, or no /proc to tell (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the name, in parentheses, may hold spaces and ")"
    try:
        return int(fields[19]), fields[0]  # fields 22 and 3: the fields after the name start at field 3
    except (IndexError, ValueError):
        return None


def run_marker(stage: str, pid: int | None = None) -> dict:
    """What ``RUN_MARKER`` holds for a run of ``stage`` by process ``pid`` (this one by default): the host, the pid
    and the process's start time (``pid_started``, ticks after boot ``boot``: None without /proc), so that a pid
    reused by another process is not taken for the run (``run_in_progress``), and ``since``, for people."""
    pid = os.getpid() if pid is None else pid
    started = _process_start(pid)
    return {"stage": stage, "host": socket.gethostname(), "pid": pid,
            "pid_started": started[0] if started else None, "boot": _boot_id(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def on_this_host(marker: dict) -> bool:
    """Whether the run a marker names ran on this host (one with no host named is taken as this one's)."""
    return marker.get("host") in (None, socket.gethostname())


def run_in_progress(marker: object) -> str | None:
    """``"pid N on host H since TIME"`` when the run a run marker (``run_marker``) names may still be going, else
    None: an old marker that names no pid, a process gone, another process under its pid (another start time),
    a marker from before a reboot, or this very process (an earlier run of it that has returned: a process runs
    one stage into a folder at a time).

    On another host (``on_this_host``) the process cannot be checked, so its run may be going: the caller decides
    (``prepare_output`` refuses it unless --overwrite). Without /proc (not Linux) a live pid is taken for the run.
    Any stage that marks its runs may use it: ``marker`` may be any JSON value read from a file."""
    if not isinstance(marker, dict) or type(marker.get("pid")) is not int or marker["pid"] <= 0:
        return None
    pid = marker["pid"]
    described = f"pid {pid} on host {marker.get('host') or socket.gethostname()} since {marker.get('since', '?')}"
    if not on_this_host(marker):
        return described
    if pid == os.getpid() or marker.get("boot") not in (None, _boot_id()):
        return None
    if os.path.isdir("/proc/self"):
        started = _process_start(pid)
        if started is None or started[1] in ("Z", "X"):  # gone, or a zombie not reaped yet: it has ended
            return None
        return described if marker.get("pid_started") in (None, started[0]) else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # another user's process: alive
        pass
    return described


def read_local_marker(path: str) -> dict | None:
    """The run marker in the local file ``path`` (None: none, or an unreadable one), read without Beam: crawl
    processes and ``lait import-captions`` read their markers with it."""
    try:
        with open(path, encoding="utf-8") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def running_run_problem(folder: str, marker: dict | None, what: str, ended: str, option: str = "--output",
                        overwrite_note: str | None = None, overwrite: bool = False) -> str | None:
    """Why ``folder`` is refused while the run its ``marker`` names is still going (``run_in_progress``), as one
    line, or None when it is not. Each stage raises it as its own error; the wording is the same for all.

    ``what``: the run, with its article (``"a crawl run"``, ``"an import"``); ``ended``: what to do once a run of
    another host, which cannot be checked from here, has ended (``"remove PATH"``, ``"pass --overwrite"``);
    ``option``: how the folder was given (``--output``, ``--out``, ``-s LAIT_OUT``); ``overwrite_note``: said in
    parentheses of a run of this host (``"--overwrite never removes a running run"``). With ``overwrite`` a run of
    another host is no problem: the caller removes its output."""
    running = run_in_progress(marker)
    if running is None or marker is None:
        return None
    if on_this_host(marker):
        note = f" ({overwrite_note})" if overwrite_note else ""
        return (f"{folder} is in use by {what} still going ({running}); wait for it to end or stop it, or use a new "
                f"{option}{note}")
    if overwrite:
        return None
    return (f"{folder} holds {what} started on another host ({running}), which cannot be checked from here; use a "
            f"new {option}, or, if it has ended, {ended}")


def marker_taken_problem(folder: str, other: dict | None, path: str, what: str, option: str = "--output") -> str:
    """Why ``folder`` is refused when the marker ``path`` was claimed by another run (``other``: its marker, None or
    ``{}`` when unreadable) that checked the folder at the same time as this one; ``what``, ``option`` as in
    ``running_run_problem``."""
    return (f"{folder} is in use by {what} that started there just now "
            f"({run_in_progress(other) or 'its marker: ' + path}); use a new {option}")


def refuse_running(output: str, marker: dict | None, overwrite: bool = False,
                   hint: str = "use a new --output") -> None:
    """``OutputExistsError`` when ``marker`` (``output``'s ``RUN_MARKER``) names a run still going: removing its
    output would lose its results, --overwrite or not. A run of another host, which cannot be checked, is refused
    unless ``overwrite`` (the error says so), and removed with a warning when given."""
    stage = (marker or {}).get("stage") or "stage"
    remedy = ("pass --overwrite to remove its output" if "--overwrite" in hint
              else f"remove {posixpath.join(output, RUN_MARKER)}")
    problem = running_run_problem(output, marker, f"a {stage} run", remedy,
                                  overwrite_note="--overwrite never removes a running run", overwrite=overwrite)
    if problem is not None:
        raise OutputExistsError(problem)
    running = run_in_progress(marker) if marker is not None and not on_this_host(marker) else None
    if running is not None:  # (another host's: no process to check, so as running_run_problem found it)
        logger.warning("%s: %s holds a run started on another host (%s), which cannot be checked from here: "
                       "--overwrite removes its output", stage, output, running)


def write_marker(path: str, marker: dict) -> dict | None:
    """Write the run marker ``marker`` at ``path``, whole or not at all, unless the name is taken: None once
    written, else the marker found there (``{}``: unreadable, taken all the same).

    A local one is written aside (its folder made if need be) and linked to its name, which fails if a run that
    checked the folder at the same time as this one has claimed it first; a filesystem without hard links gets
    the name created exclusively, claimed all the same if not whole from the start. Without Beam, which crawl
    processes never import. An object store (a URL; through Beam) writes an object whole on close, but cannot
    refuse a name already taken."""
    content = json.dumps(marker).encode("utf-8")
    if "://" in path:
        with _filesystems().create(path) as handle:
            handle.write(content)
        return None
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, written = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        try:
            try:
                os.link(written, path)
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links
                with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as file:
                    file.write(content)
        except FileExistsError:
            return read_local_marker(path) or {}
    finally:
        os.remove(written)
    return None


@contextlib.contextmanager
def claim_lock(folder: str | None) -> Iterator[None]:
    """Hold the local folder ``folder`` (made if need be) against other claims of it while this run claims it: reads
    its run markers, removes an ended run's and writes its own. A claim read the marker, then removed what lay at
    its name as an ended run's, then wrote its own: a run that claimed the folder between the read and the
    removal lost its live marker, and both ran; and a marker of one name (``RUN_MARKER``) checked against one of
    another (``lait features``' ``_run.started.part-I.json``) could be written on both sides before either was read.
    The claims of ``prepare_output`` and ``lait features`` take it (``flock`` on the folder itself: nothing is
    left in it; released when the process ends, however it ends), so one waits for the other, then reads its marker.

    No lock on an object store (``folder`` a URL, or None), without ``fcntl`` (not Unix) or on a filesystem
    that has no ``flock``: there two claims at once are refused only as far as each writes its marker
    exclusively (``write_marker``; an object store cannot refuse a name taken), as before."""
    if folder is None or "://" in folder or fcntl is None:
        yield
        return
    os.makedirs(folder, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a filesystem without flock
            pass
        yield
    finally:
        os.close(handle)  # (releases the lock)


def _mark_started(output: str, stage: str) -> None:
    """Write ``RUN_MARKER`` (``write_marker``), refused, naming that run, if a run that checked the folder at the
    same time as this one has claimed it first."""
    path = posixpath.join(output, RUN_MARKER)
    other = write_marker(path, run_marker(stage))
    if other is not None:
        raise OutputExistsError(marker_taken_problem(output, other, path, f"a {other.get('stage') or 'stage'} run"))


def clear_run_marker(output: str) -> None:
    """Remove ``RUN_MARKER`` once the run's stats.json is written (a finished run needs none)."""
    delete_exactly(_present(posixpath.join(output, RUN_MARKER)))


def finish_output(output: str) -> None:
    """Mark the output finished: the pending stats become stats.json (after every shard is written)."""
    _filesystems().rename([posixpath.join(output, PENDING_STATS)], [posixpath.join(output, "stats.json")])
    clear_run_marker(output)


def input_reference(input_path: str, output: str) -> str:
    """The input as stats.json names it: relative to the run folder (the output's parent) when it lies
    inside it, or is it (``"."``: the import layout, ``--input D --output D/features``), so that a run folder
    moved or copied whole still names its own input; else absolute."""
    if "://" in input_path or "://" in output:
        return input_path
    run_dir = os.path.dirname(os.path.abspath(output))
    path = os.path.abspath(input_path)
    return os.path.relpath(path, run_dir) if path == run_dir or path.startswith(run_dir + os.sep) else path
