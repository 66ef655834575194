"""Run the LAIT spider from Python or the ``lait`` CLI, each crawl in a child process.

Twisted's reactor starts once per process, so ``run_crawl`` starts a fresh interpreter
(``python -m crawler.runner``) for every crawl; a caller may crawl as often as it likes.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from typing import Any

from crawler import images, output
from pipeline.signals import blocked_signals, die_with_parent_hook

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A job folder's record of the crawl it holds: ``{"processes": N, "out": OUT}`` (``out``: ``job_folder_out``).
JOB_FILE = "lait-job.json"
#: The reason of a candidate whose image was never fetched (see LaitSpider.unfetched_rejects).
NOT_FETCHED = "image_not_fetched"
#: The signals that stop a crawl gracefully. A crawl process starts with them blocked, and takes them once Scrapy's
#: handlers are in place (``_accept_stop_signals``): Ctrl-C while it still imports would otherwise kill it with a
#: traceback, and the other processes' books could not be settled.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class JobFolderError(RuntimeError):
    """A job folder that cannot continue this crawl (another number of crawl processes than it was started with)."""


class SettingError(RuntimeError):
    """A setting the crawl cannot run with (found before any crawl process starts)."""


def given_jobdir(jobdir: str, option: str = "--jobdir") -> str:
    """A folder as the command line gave it: ``--jobdir DIR``, or a setting or spider argument such as
    ``-s LAIT_JOBDIR=DIR`` and ``-a jobdir=DIR`` (``scrapy crawl``)."""
    return f"{option}={jobdir}" if option.startswith(("-s ", "-a ")) else f"{option} {jobdir}"


def job_folder_out(out_dir: str) -> str:
    """The output folder as a job folder records it: an object store's URI without its trailing slash, else the
    resolved absolute path, so that a resume naming it another way (relative, a trailing slash, a link) is the
    same folder."""
    if "://" in out_dir:
        return out_dir.rstrip("/")
    return os.path.realpath(out_dir)


def check_job_folder(jobdir: str, processes: int, record: bool = True, option: str = "--jobdir",
                     out: str | None = None, out_option: str = "--out") -> None:
    """Record the number of crawl processes and the output folder in a job folder, or refuse another number or
    another output folder than the one recorded.

    Each process keeps its share of the work there (process K's pending images, its inbox and how far it
    read it), and images go to the process their URL hashes to: with another number, that work would be
    lost. Raises JobFolderError (nothing written). A folder from before the record tells by its files how
    many processes it had (at least: a process that never wrote leaves no file), and is continued with that
    many; one without crawl files is new. ``record`` False only checks (``lait crawl`` before it makes ``--out``:
    a run that fails there must not leave a record behind). ``option``: how the folder was given, for the message
    (``--jobdir``, or the setting ``-s LAIT_JOBDIR``).

    ``out`` (given as ``out_option``): the crawl's output folder. The job folder holds the pages and images its
    crawl has seen, so a crawl into another folder would skip them all and write an incomplete output without a
    word: refused. A record without one (from before it was kept, or written without ``out``) takes this one.
    """
    given = given_jobdir(jobdir, option)
    path = os.path.join(jobdir, JOB_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            job = json.load(handle)
        recorded = int(job["processes"])
        recorded_out = job.get("out")
        if recorded_out is not None and not isinstance(recorded_out, str):
            raise ValueError(f"out is {recorded_out!r}, not a folder")
    except FileNotFoundError:
        job, recorded, recorded_out = None, _processes_by_files(jobdir) or None, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobFolderError(f"{given}: {path} cannot be read ({exc}); use a new {option}") from None
    if recorded is not None and recorded != processes:
        raise JobFolderError(
            f"{given} holds a crawl run with --processes {recorded}, not {processes}: continue it with "
            f"--processes {recorded}, or start over with a new {option} (the work kept for each process would be lost)")
    out = job_folder_out(out) if out else None
    if out is not None and recorded_out is not None and recorded_out != out:
        raise JobFolderError(
            f"{given} holds the crawl into {recorded_out}, not {out}: its seen pages would be skipped and the "
            f"output left incomplete; use a new {option}, or {given_jobdir(recorded_out, out_option)} to continue it, or delete "
            f"{jobdir}")
    if record and (job is None or (out is not None and recorded_out is None)):
        try:
            output.write_json_atomically(path, {"processes": processes, **({"out": out} if out else {})})
        except OSError as exc:
            raise JobFolderError(f"{given}: cannot write {path} ({exc.strerror or exc})") from None


def _processes_by_files(jobdir: str) -> int:
    """How many crawl processes a job folder without a record had at least (1 + its highest process index), 0
    when it holds no crawl's files."""
    from crawler.spiders.lait import STATE_FILE

    indices = [-1]
    if os.path.exists(os.path.join(jobdir, STATE_FILE)):  # process 0's state
        indices.append(0)
    for folder, prefix, suffix in ((jobdir, "lait-state-p", ".pickle"), (os.path.join(jobdir, "inboxes"), "inbox-", ".jsonl")):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        indices += [int(name[len(prefix):-len(suffix)]) for name in names
                    if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix):-len(suffix)].isdigit()]
    return max(indices) + 1


# -- inboxes: process 0 hands each candidate to the process that owns its image ---------------------------

def inbox_path(inbox_dir: str, index: int) -> str:
    """Process ``index``'s inbox: one JSON object a line, appended by process 0."""
    return os.path.join(inbox_dir, f"inbox-{index}.jsonl")


def read_offset_path(inbox_dir: str, index: int) -> str:
    """Where process ``index`` records, when it closes, how far it read its inbox."""
    return os.path.join(inbox_dir, f"inbox-{index}.read")


def read_inbox(path: str, offset: int) -> list[tuple[int, dict | None]]:
    """The lines of an inbox past ``offset`` as (offset after the line, message), the message None for a
    line that is not a JSON object (a writer killed mid-line: the next one starts on a fresh line).

    A last line without its newline is still being written: it is left for a later read.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return []
    lines = []
    for line in chunk[: chunk.rfind(b"\n") + 1].splitlines(keepends=True):
        offset += len(line)
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if line.strip():
            lines.append((offset, message if isinstance(message, dict) else None))
    return lines


def crawl_settings(out_dir: str, *, allow_private_networks: bool = False, min_side: int = images.DEFAULT_MIN_SIDE,
                   max_aspect: float = images.DEFAULT_MAX_ASPECT, jobdir: str | None = None, progress: bool = False,
                   log_level: str = "WARNING", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Scrapy settings of one crawl, on top of ``crawler.settings``."""
    settings = {
        "LAIT_OUT": os.path.abspath(out_dir),
        "LAIT_ALLOW_PRIVATE_NETWORKS": allow_private_networks,
        "LAIT_MIN_SIDE": min_side,
        "LAIT_MAX_ASPECT": max_aspect,
        "LAIT_PROGRESS": progress,
        "LOG_LEVEL": log_level,
    }
    if jobdir:
        settings["LAIT_JOBDIR"] = os.path.abspath(jobdir)
    settings.update(overrides or {})
    return settings


def crawl_in_this_process(urls: list[str], settings: dict[str, Any], allowed_domains: list[str] | None = None,
                          max_pages: int = 0, depth: int = 0, **process_kwargs) -> str | None:
    """Run one crawl in this process (once per process: it starts the Twisted reactor).

    Returns why the output could not be written, or None when it was.
    """
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess
    from scrapy.settings import Settings

    from crawler.spiders.lait import LaitSpider

    scrapy_settings = Settings()
    scrapy_settings.setmodule("crawler.settings", priority="project")
    scrapy_settings.update(settings, priority="cmdline")
    process = CrawlerProcess(scrapy_settings)
    crawler = process.create_crawler(LaitSpider)
    crawler.signals.connect(lambda: _accept_stop_signals(crawler), signal=signals.engine_started, weak=False)
    process.crawl(crawler, urls=urls, allowed_domains=allowed_domains or None, max_pages=max_pages, depth=depth,
                  **process_kwargs)
    process.start()
    return crawler.stats.get_value("lait/out/write_failed")


def run_crawl(urls: list[str], out_dir: str, *, allowed_domains: list[str] | None = None, max_pages: int = 0,
              depth: int = 0, processes: int = 1, **settings_kwargs) -> dict[str, Any]:
    """Crawl ``urls`` into ``out_dir`` in child processes; return the run's stats.json.

    With ``processes > 1``, process 0 crawls the pages and every process fetches and validates the
    images whose URL hashes to it (each image still fetched once), so the crawl uses several cores.
    A job folder started with another number of processes is refused (``JobFolderError``), and so is an
    ``out_dir`` whose crawl run is still going (``output.OutputFolderError``, nothing in it changed): this process
    marks the folder as its run (``output.claim``) until its crawl processes have all ended.
    """
    settings = crawl_settings(out_dir, **settings_kwargs)
    _check_settings(settings)
    if settings.get("LAIT_JOBDIR"):
        given = "-s LAIT_JOBDIR" if "LAIT_JOBDIR" in (settings_kwargs.get("overrides") or {}) else "--jobdir"
        check_job_folder(settings["LAIT_JOBDIR"], max(1, processes), option=given, out=out_dir)
    output.claim(out_dir)
    try:
        return _run_claimed(urls, out_dir, settings, allowed_domains, max_pages, depth, processes)
    finally:
        output.release(out_dir)


def _run_claimed(urls: list[str], out_dir: str, settings: dict[str, Any], allowed_domains: list[str] | None,
                 max_pages: int, depth: int, processes: int) -> dict[str, Any]:
    """``run_crawl`` once the folder is this process's run: start the crawl processes, wait for them, settle."""
    job = {"urls": list(urls), "settings": settings, "allowed_domains": allowed_domains or None,
           "max_pages": max_pages, "depth": depth}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    if processes <= 1:
        children = []
        try:
            _start_children([job], env, children)
        except KeyboardInterrupt:
            _wait(children)  # it stops gracefully and writes its books (it got the Ctrl-C too, or `_wait` passes it on)
            raise
        code = _wait(children)[0]
        if code != 0:
            raise RuntimeError(f"the crawl process exited with status {code}")
        return _read_stats(os.path.join(out_dir, output.STATS_FILE))
    return _run_processes(job, out_dir, processes, env)


def as_typed(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with each true or false as the text a command line gives (``scrapy crawl -s X=true``).

    Scrapy's getters read the bool True as the number 1 (``getint``, ``getfloat``), so `lait crawl -s
    LAIT_MIN_SIDE=true` (JSON) would pass for a minimum side of 1 px; as text it is refused as the native spider
    refuses it, and a switch still reads as one (``getbool``)."""
    return {name: ("true" if value else "false") if isinstance(value, bool) else value
            for name, value in settings.items()}


def check_settings(settings: dict[str, Any], scrapy_settings: bool = True) -> None:
    """Raise ValueError, one line naming the setting, for a setting the crawl processes would fail on, or run on to
    no purpose (every image rejected, a check off): ``crawler.spiders.lait.check_settings``, with true and false
    read as text (``as_typed``: no number). ``scrapy_settings`` False leaves Scrapy's own numbers and switches to
    another reader (``lait crawl --warc`` checks those it reads by its own rules)."""
    from crawler.spiders.lait import check_settings as check

    check(as_typed(settings), scrapy_settings)


def _check_settings(settings: dict[str, Any]) -> None:
    """Raise SettingError for a setting the crawl processes would fail on, or run on to no purpose (every image
    rejected, a check off): one clear line, not their tracebacks (``check_settings``)."""
    try:
        check_settings(settings)
    except ValueError as exc:
        raise SettingError(str(exc)) from None


def _read_stats(path: str) -> dict[str, Any]:
    """A stats file a crawl process wrote; RuntimeError when it wrote none (its log says why)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the crawl process wrote no stats ({path}: {exc})") from None


def _accept_stop_signals(crawler) -> None:
    """Take the stop signals the crawl process started with blocked (``STOP_SIGNALS``) once a graceful stop can close
    the spider: Scrapy's handlers are in place (installed as the reactor starts) and the engine runs (its stop does
    nothing before; the process would end without closing the spider, its books unwritten). One that came meanwhile
    is delivered then, and the crawl stops as after Ctrl-C at any later moment."""
    from twisted.internet import reactor

    def when_running() -> None:
        if crawler.engine is not None and crawler.engine.running:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        else:
            reactor.callLater(0.01, when_running)

    reactor.callWhenRunning(reactor.callLater, 0, when_running)


def _child_hook():
    """The pre-exec hook of a crawl process: die with the parent (``pipeline.signals.die_with_parent_hook``), then
    block the stop signals until the crawl can take them (``_accept_stop_signals``; a blocked signal stays pending
    across exec)."""
    die_with_parent = die_with_parent_hook()

    def hook() -> None:
        if die_with_parent is not None:
            die_with_parent()  # first: a parent already gone ends the child at once
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    return hook


def _start_children(jobs: list[dict[str, Any]], env: dict[str, str], children: list[subprocess.Popen]) -> None:
    """Start a crawl process for each of ``jobs``, appending each to ``children`` as it starts. Ctrl-C or SIGTERM
    meanwhile is taken once all have started (KeyboardInterrupt here, after the last), so that none is started
    unrecorded and every one can be waited for."""
    with blocked_signals(STOP_SIGNALS):
        for job in jobs:
            children.append(subprocess.Popen([sys.executable, "-m", "crawler.runner", json.dumps(job)], env=env,
                                             preexec_fn=_child_hook()))


class _LiveBar:
    """The progress bar of a crawl in several processes: the sum of the counts each writes (``LiveCounts``)."""

    def __init__(self, paths: list[str]):
        from tqdm import tqdm

        for path in paths:  # a job folder's counts of an earlier run are not this run's
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self.paths = paths
        self.bar = tqdm(unit=" responses", desc="crawl")

    def show(self) -> None:
        """Show the counts the processes last wrote."""
        from crawler.extensions import read_live_counts, set_bar

        set_bar(self.bar, read_live_counts(self.paths))

    def close(self, settled: dict[str, Any] | None = None) -> None:
        """Show the final counts and end the bar: those of the settled books (``_settle``'s stats, which count
        the rows written for unread inbox lines too) where they have them, else what the processes wrote."""
        from crawler.extensions import BAR_COUNTS, read_live_counts, set_bar

        counts = read_live_counts(self.paths)
        for name, key in BAR_COUNTS.items():
            if isinstance((settled or {}).get(key), int):
                counts[name] = settled[key]
        set_bar(self.bar, counts)
        self.bar.close()


def _wait(children: list[subprocess.Popen], tick=None) -> list[int]:
    """Wait for the crawl processes, calling ``tick`` twice a second meanwhile (the progress bar); on Ctrl-C or
    SIGTERM let them finish their graceful stop, then re-raise."""
    def forward(signum, frame):
        # SIGTERM (a scheduler's stop, `kill PID`) reaches only this process: pass it on, so the
        # crawl processes stop gracefully and save the job state, as after Ctrl-C.
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if in_main else None
    try:
        while tick is not None and any(child.poll() is None for child in children):
            tick()
            try:
                next(child for child in children if child.poll() is None).wait(timeout=0.5)
            except (subprocess.TimeoutExpired, StopIteration):
                pass
        return [child.wait() for child in children]
    except KeyboardInterrupt:
        # The children got the same SIGINT (or the forwarded SIGTERM): Scrapy finishes in-flight
        # requests, flushes complete shards and saves the job state. Waiting keeps the terminal and
        # the folder consistent.
        for child in children:
            child.wait()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _process_job(job: dict[str, Any], index: int, processes: int, inbox_dir: str, run_id: str,
                 live: str | None) -> dict[str, Any]:
    """The job of crawl process ``index`` of ``processes``: its shard prefix, where it writes its counters and
    outcomes, and (``live``) where it writes its counts for the one progress bar."""
    settings = dict(job["settings"], LAIT_SHARD_PREFIX=f"part-p{index}",
                    LAIT_STATS_PART=os.path.join(inbox_dir, f"stats-{index}.json"),
                    LAIT_OUTCOMES_PART=os.path.join(inbox_dir, f"outcomes-{index}.json"))
    if live is not None:
        settings.update(LAIT_PROGRESS=False, LAIT_LIVE_COUNTS=live)
    return dict(job, settings=settings, process_index=index, processes=processes, inbox_dir=inbox_dir, run_id=run_id)


def _run_processes(job: dict[str, Any], out_dir: str, processes: int, env: dict[str, str]) -> dict[str, Any]:
    jobdir = job["settings"].get("LAIT_JOBDIR")
    inbox_dir = os.path.join(jobdir, "inboxes") if jobdir else tempfile.mkdtemp(prefix="lait-crawl-")
    os.makedirs(inbox_dir, exist_ok=True)
    # Without a job folder, what the image processes leave unread in their inboxes becomes rows at the end.
    # Opened before the crawl, so that it skips the rows of earlier runs only, as a crawl process does.
    unread = None if jobdir else output.CrawlOutput(out_dir, prefix="part-inbox")
    run_id = uuid.uuid4().hex
    # One progress bar, here, of every process's counts: process 0's own showed its share of the images only.
    live = [os.path.join(inbox_dir, f"live-{index}.json") for index in range(processes)]
    from scrapy.settings import BaseSettings

    # read as the crawl processes read it: `-s LAIT_PROGRESS=False` arrives as the text "False"
    bar = _LiveBar(live) if BaseSettings({"progress": job["settings"].get("LAIT_PROGRESS")}).getbool("progress") else None
    children, settled = [], None
    try:
        try:
            _start_children([_process_job(job, index, processes, inbox_dir, run_id, live[index] if bar else None)
                             for index in range(processes)], env, children)
            codes = _wait(children, bar.show if bar is not None else None)
        except KeyboardInterrupt:
            # Those started got the signal too (Ctrl-C reaches the group; `_wait` passes SIGTERM on), and stop
            # gracefully even before their crawl began (`STOP_SIGNALS`): wait for them, then settle the books, as a
            # single crawl process does.
            for child in children:
                child.wait()
            codes = [child.returncode for child in children]
            if len(children) < processes or any(codes):
                logger.warning("the interrupted crawl's books are not settled: crawl processes exited with statuses "
                               "%s (of %d)", codes, processes)
            else:
                try:
                    settled = _settle(out_dir, inbox_dir, processes, unread)
                except RuntimeError as exc:
                    logger.warning("the interrupted crawl's books are not settled: %s", exc)
            raise
        if any(codes):
            raise RuntimeError(f"crawl processes exited with statuses {codes}")
        settled = _settle(out_dir, inbox_dir, processes, unread)
        return settled
    finally:
        if bar is not None:
            bar.close(settled)
        if not jobdir:
            shutil.rmtree(inbox_dir, ignore_errors=True)


def _reject_unread(inbox_dir: str, processes: int, unread: output.CrawlOutput) -> dict[str, int]:
    """An ``image_not_fetched`` row for every candidate an image process never read from its inbox (it stopped
    first, or process 0 sent it after); returns the counters. Every candidate sent becomes a row."""
    counts, images_not_fetched = collections.Counter(), set()
    for index in range(1, processes):
        try:
            with open(read_offset_path(inbox_dir, index), encoding="utf-8") as handle:
                offset = int(json.load(handle)["offset"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"crawl process {index} did not record how far it read its inbox ({exc})") from None
        for _, message in read_inbox(inbox_path(inbox_dir, index), offset):
            if message is None:
                counts["lait/inbox/corrupt_lines"] += 1
            elif "done" not in message:
                row = output.candidate_reject(
                    message, NOT_FETCHED, "the crawl stopped before the image's process read the candidate")
                # Counted as the item pipeline counts its rows, so lait/out/* (the progress bar's) add up.
                if unread.add_rejected(row):
                    counts["lait/out/rejected"] += 1
                    counts[f"lait/out/rejected/{NOT_FETCHED}"] += 1
                elif unread.already_kept(row):
                    counts["lait/out/already_kept"] += 1
                else:
                    counts["lait/out/already_written"] += 1
                counts["lait/inbox/unread"] += 1
                images_not_fetched.add(message.get("image_url"))
    counts[f"lait/image/rejected/{NOT_FETCHED}"] = len(images_not_fetched)  # per image, as the spider counts
    unread.close()
    return +counts


def _settle(out_dir: str, inbox_dir: str, processes: int, unread: output.CrawlOutput | None = None) -> dict[str, Any]:
    """Once every crawl process has exited: reject what was left unread in the inboxes (``unread``: without a
    job folder), merge the counters and outcomes, reconcile, write stats.json (with the image rules the
    processes applied, once)."""
    parts = [_read_stats(os.path.join(inbox_dir, f"stats-{index}.json")) for index in range(processes)]
    merged = output.merge_process_stats(parts)
    merged["scrapy"] = merged.pop("scrapy_by_process", [{}])[0]
    merged["processes"] = processes
    outcomes = output.RunOutcomes()
    for index in range(processes):
        path = os.path.join(inbox_dir, f"outcomes-{index}.json")
        try:
            outcomes.update(output.RunOutcomes.load(path))
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"the crawl process wrote no outcomes ({path}: {exc})") from None
    if unread is not None:
        for key, count in _reject_unread(inbox_dir, processes, unread).items():
            merged[key] = merged.get(key, 0) + count
        outcomes.update(unread.outcomes)
    settings = merged.pop("settings", None)
    return output.write_stats(out_dir, dict(merged, **output.settle(out_dir, outcomes), source="crawl"),
                              settings=settings)


def main(argv: list[str] | None = None) -> int:
    """Child-process entry point: one JSON argument describing the crawl."""
    job = json.loads((argv if argv is not None else sys.argv[1:])[0])
    process_kwargs = {k: job[k] for k in ("process_index", "processes", "inbox_dir", "run_id") if k in job}
    failed = crawl_in_this_process(job["urls"], job["settings"], job.get("allowed_domains"), job.get("max_pages", 0),
                                   job.get("depth", 0), **process_kwargs)
    if failed:
        print(f"crawl output not written: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
