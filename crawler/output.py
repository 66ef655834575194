"""The crawl's run folder: ``candidates/`` and ``rejected/`` Parquet shards and ``stats.json``.

Shared by the spider's item pipeline and the WARC reader. Rows are buffered and written as complete
shards; a resumed crawl appends new shards and never writes a row it already wrote. A crawl's last step,
``reconcile``, removes the rejected rows a later run's outcome superseded, so each record has one row. A run
marks the folder while it goes (``claim``, ``RUN_MARKER``), and a second run into it meanwhile is refused.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
from typing import Any, Iterator

import schemas
from pipeline import outputs

logger = logging.getLogger(__name__)

STAGE = "crawl"
CANDIDATES = "candidates"
REJECTED = "rejected"
STATS_FILE = "stats.json"
#: The shard ``ensure_candidates`` writes in a crawl's ``candidates/`` when it kept nothing: the schema, no rows.
EMPTY_SHARD = "part-empty.parquet"
#: The reason of a reference that repeats a candidate already seen (same page, image and text).
DUPLICATE = "duplicate_candidate"
#: Reference rejects decided from the page's HTML alone. Each is a record of its own, never superseded:
#: it may share its candidate_id with a kept reference of the page (an absent alt and an empty one hash
#: alike, so ``<img src=x alt="" title=T>`` and ``<img src=x title=T>`` are one id).
OWN_RECORD_REASONS = frozenset({DUPLICATE, "decorative_image", "no_text"})
#: The reasons of a page or image that opts out of AI use (``opt_out_noai``, ...): they withdraw a candidate
#: kept by an earlier run (``withdraw_opted_out``).
OPT_OUT = "opt_out_"
#: Reference rejects without a candidate_id (no usable image URL to hash it from). Every other row
#: without one is a page's (a page that could not be fetched or parsed).
REFERENCE_REASONS_WITHOUT_ID = frozenset({"no_image_url", "data_uri", "invalid_url"})
#: Written as a crawl run starts (``claim``) and removed as it ends (``release``): ``pipeline.outputs.run_marker`` of
#: the process that runs it (``lait crawl``'s own, the parent of its crawl processes), so that a second run into the
#: folder while it goes is refused. Two URL crawls numbered their shards from the same free index and each renamed
#: its shards over the other's (rows lost, books counting rows no longer there); a WARC run deleted the running
#: run's shards as a previous run's. The marker of a run whose process is gone is taken for none.
RUN_MARKER = outputs.RUN_MARKER


class OutputFolderError(OSError):
    """The run folder cannot be created or written to."""


def prepare_out_dir(out_dir: str) -> None:
    """Create the run folder and check that files can be written in it, before any work is done.

    Raises OutputFolderError with a plain message. Object-store URLs are left to their filesystem.
    """
    if "://" in out_dir:
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputFolderError(f"{out_dir} exists and is not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".probe.")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise OutputFolderError(f"cannot create or write to {out_dir}: {exc.strerror or exc}") from None


def _join(base: str, name: str) -> str:
    """Join a local path or a URL with a child name."""
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)


def read_run_marker(out_dir: str) -> dict | None:
    """The folder's ``RUN_MARKER`` (None: none, or an unreadable one). A URL (the WARC reader's) through Beam's
    filesystems; a local one without Beam, which a crawl process never imports."""
    if "://" in out_dir:
        return outputs.read_run_marker(out_dir)
    return outputs.read_local_marker(os.path.join(out_dir, RUN_MARKER))


def _run_of(marker: dict | None) -> bool:
    """Whether ``marker`` names the run this process belongs to: this process, or the ``lait crawl`` that started
    it (a crawl process's parent), still going."""
    if marker is None or not outputs.on_this_host(marker):
        return False
    if marker.get("pid") == os.getpid():
        return True
    return marker.get("pid") == os.getppid() and outputs.run_in_progress(marker) is not None


def refuse_running(out_dir: str, marker: dict | None, option: str = "--out") -> None:
    """OutputFolderError, one line, when ``marker`` (the folder's ``RUN_MARKER``) names a run still going, of this
    host or of another, which cannot be checked from here (``pipeline.outputs.refuse_running``'s rule, but no
    --overwrite: a crawl has none). ``option``: how the folder was given, for the message."""
    stage = (marker or {}).get("stage") or STAGE
    problem = outputs.running_run_problem(out_dir, marker, f"a {stage} run", f"remove {_join(out_dir, RUN_MARKER)}",
                                          option)
    if problem is not None:
        raise OutputFolderError(problem)


def claim(out_dir: str, option: str = "--out") -> None:
    """Mark ``out_dir`` as this process's crawl run (``RUN_MARKER``), or refuse it (OutputFolderError, before
    anything in it changes) while another run goes on there (``refuse_running``). A marker of this run (this
    process's, or its parent ``lait crawl``'s) stays; one of a run that has ended is replaced. Locally the
    marker is written aside and linked to its name (``pipeline.outputs.write_marker``), so of two runs that check
    the folder at once one is refused.
    """
    with contextlib.ExitStack() as held:
        if "://" not in out_dir:
            # Held from reading the marker to writing this run's (``pipeline.outputs.claim_lock``): a run that claimed
            # the folder between the read and the removal below lost its live marker, taken for an ended run's, and
            # both crawled into it. A folder that cannot be made fails where the run writes, and says why.
            with contextlib.suppress(OSError):
                held.enter_context(outputs.claim_lock(out_dir))
        _claim(out_dir, option)


def _claim(out_dir: str, option: str) -> None:
    """``claim``'s steps from reading the folder's marker to writing this run's."""
    marker = read_run_marker(out_dir)
    if _run_of(marker):
        return
    refuse_running(out_dir, marker, option)
    path = _join(out_dir, RUN_MARKER)
    if "://" in out_dir:  # an object store cannot refuse a name taken (write_marker imports Beam for it)
        outputs.write_marker(path, outputs.run_marker(STAGE))
        return
    try:
        if os.path.lexists(path):  # an ended run's, or an unreadable one
            _remove_if_present(path)
        other = outputs.write_marker(path, outputs.run_marker(STAGE))
    except OSError:  # a folder that cannot be made or written to holds nothing to lose: the run fails where it
        return  # writes, and says why, as before
    if other is not None:
        raise OutputFolderError(outputs.marker_taken_problem(out_dir, other, path,
                                                             f"a {other.get('stage') or STAGE} run", option))


def release(out_dir: str) -> None:
    """Remove ``RUN_MARKER`` when it names this process: its run has ended (finished, stopped or failed). A crawl
    process of ``lait crawl`` leaves its parent's, which the parent removes once every crawl process is done."""
    marker = read_run_marker(out_dir)
    if marker is None or marker.get("pid") != os.getpid() or not outputs.on_this_host(marker):
        return
    if "://" in out_dir:
        outputs.clear_run_marker(out_dir)
    else:
        _remove_if_present(os.path.join(out_dir, RUN_MARKER))


def _remove_if_present(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:  # (another run removed it meanwhile)
        pass


def reject_key(row: dict[str, Any]) -> tuple:
    """What rejected rows of the same kind share (counted, to skip rows a resumed crawl already wrote)."""
    return (row.get("reason"), row.get("page_url"), row.get("image_url"), row.get("candidate_id"))


def _outcome_of(candidate_id: str | None, page_url: str | None, reason: str | None) -> tuple[str, str] | None:
    """The record a rejected row gives the outcome of, as ("candidate", id) or ("page", url); None for a
    row that a later outcome never supersedes (``OWN_RECORD_REASONS``, reference rows without an id)."""
    if candidate_id:
        return None if reason in OWN_RECORD_REASONS else ("candidate", candidate_id)
    if not page_url or reason in REFERENCE_REASONS_WITHOUT_ID:
        return None
    return ("page", page_url)


@dataclasses.dataclass
class RunOutcomes:
    """What one crawl run decided, by record, for ``reconcile``: the reasons it gave each candidate and page
    (rows written or already on disk alike) and the pages it fetched and parsed."""

    candidates: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    pages: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    fetched_pages: set[str] = dataclasses.field(default_factory=set)

    def add_reject(self, row: dict[str, Any]) -> None:
        """Note a rejected row of this run (rows that are never superseded are left out)."""
        record = _outcome_of(row.get("candidate_id"), row.get("page_url"), row.get("reason"))
        if record is not None:
            kind, key = record
            (self.candidates if kind == "candidate" else self.pages).setdefault(key, set()).add(row["reason"])

    def update(self, other: "RunOutcomes") -> None:
        """Add another process's outcomes of the same run."""
        for mine, theirs in ((self.candidates, other.candidates), (self.pages, other.pages)):
            for key, reasons in theirs.items():
                mine.setdefault(key, set()).update(reasons)
        self.fetched_pages.update(other.fetched_pages)

    def save(self, path: str) -> None:
        """Write them as JSON, atomically (a crawl process hands them to ``lait crawl`` this way)."""
        write_json_atomically(path, {"candidates": {k: sorted(v) for k, v in self.candidates.items()},
                                     "pages": {k: sorted(v) for k, v in self.pages.items()},
                                     "fetched_pages": sorted(self.fetched_pages)})

    @classmethod
    def load(cls, path: str) -> "RunOutcomes":
        """Outcomes that ``save`` wrote."""
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return cls({k: set(v) for k, v in data["candidates"].items()}, {k: set(v) for k, v in data["pages"].items()},
                   set(data["fetched_pages"]))


def _existing(path: str, kind: str, columns: list[str]) -> Iterator[dict[str, Any]]:
    try:
        files = schemas.list_parquet_files(path)
    except FileNotFoundError:
        return
    if not files:
        return
    for batch in schemas.iter_batches(path, kind, columns=columns, batch_size=4096):
        yield from batch.to_pylist()


def iter_image_bytes(out_dir: str, image_ids: set[str]) -> Iterator[tuple[str, bytes]]:
    """(image_id, bytes) of the wanted images kept in a run folder, each once, for resuming a crawl.

    The ``image_id`` column is read first: only the shards that hold a wanted image have their bytes read.
    """
    wanted = set(image_ids)
    try:
        shards = schemas.list_parquet_files(os.path.join(out_dir, CANDIDATES)) if wanted else []
    except FileNotFoundError:
        return
    for shard in shards:
        ids = schemas.read_table(shard, "candidates", columns=["image_id"]).column("image_id").to_pylist()
        rows = [index for index, image_id in enumerate(ids) if image_id in wanted]
        if not rows:
            continue
        table = schemas.read_table(shard, "candidates", columns=["image_id", "image_bytes"]).take(rows)
        for image_id, data in zip(table.column("image_id").to_pylist(), table.column("image_bytes").to_pylist()):
            if image_id in wanted:
                wanted.discard(image_id)
                yield image_id, data
        if not wanted:
            return


def candidate_reject(candidate: dict[str, Any], reason: str, detail: str | None, image_id: str | None = None) -> dict[str, Any]:
    """The rejected row of one candidate (a reference with its ids and text) for ``reason``."""
    return {"reason": reason, "detail": detail, "candidate_id": candidate["candidate_id"], "image_id": image_id,
            "page_url": candidate.get("page_url"), "image_url": candidate.get("image_url"),
            "caption": candidate.get("alt") or candidate.get("title") or candidate.get("figcaption")}


class CrawlOutput:
    """Writes candidate and rejected rows of one run folder, skipping rows already present.

    Dedup is against the folder's earlier rows only (a resumed or rerun crawl): within a run every
    record gets its row. A candidate that repeats one of this run (the same image with the same text
    twice on a page) becomes a ``duplicate_candidate`` reject. Rejects are counted per key, since
    several references of one page may share it (two ``data:`` images): a rerun skips as many rows
    of a key as the folder already holds and writes the rest. A reject of a candidate already kept is
    not written (a kept candidate stays kept), and ``outcomes`` notes every reject of the run for
    ``reconcile``.
    """

    def __init__(self, out_dir: str, rows_per_shard: int = 500, rejected_rows_per_shard: int = 20000,
                 prefix: str = "part"):
        # Before the shards are numbered: a second run would number its shards from the same free index and
        # overwrite this one's. The native spider's run marks the folder here; a crawl process of `lait crawl`
        # finds its parent's mark. (-s LAIT_OUT: the native spider's way to give it; `lait crawl` checked --out.)
        claim(out_dir, option="-s LAIT_OUT")
        self.out_dir = out_dir
        self.candidates = schemas.ShardWriter(os.path.join(out_dir, CANDIDATES), "candidates", prefix=prefix,
                                              rows_per_shard=rows_per_shard)
        self.rejected = schemas.ShardWriter(os.path.join(out_dir, REJECTED), "rejected", prefix=prefix,
                                            rows_per_shard=rejected_rows_per_shard)
        self.candidate_ids = {r["candidate_id"] for r in _existing(self.candidates.out_dir, "candidates", ["candidate_id"])}
        self.reject_keys = collections.Counter(reject_key(r) for r in _existing(
            self.rejected.out_dir, "rejected", ["reason", "page_url", "image_url", "candidate_id"]))
        self.resumed_rows = len(self.candidate_ids) + sum(self.reject_keys.values())
        self.seen_candidates: set[str] = set()  # candidate ids of this run
        self.written = collections.Counter()
        self.outcomes = RunOutcomes()

    def add_candidate(self, row: dict[str, Any]) -> str | None:
        """Buffer a candidate row. Returns what was written: ``CANDIDATES``, ``REJECTED`` (a repeat of a
        candidate of this run, as a ``duplicate_candidate`` reject) or None (already in the folder)."""
        if row["candidate_id"] in self.seen_candidates:
            duplicate = candidate_reject(row, DUPLICATE, "same page, image and text seen before", row.get("image_id"))
            return REJECTED if self.add_rejected(duplicate) else None
        self.seen_candidates.add(row["candidate_id"])
        if row["candidate_id"] in self.candidate_ids:
            return None
        self.candidate_ids.add(row["candidate_id"])
        self.candidates.write(row)
        self.written["candidates"] += 1
        return CANDIDATES

    def already_kept(self, row: dict[str, Any]) -> bool:
        """Whether a rejected row is the outcome of a candidate kept on disk or in this run (not written).
        An opt-out is written all the same: ``withdraw_opted_out`` then takes the kept row back."""
        reason = row.get("reason") or ""
        return (row.get("candidate_id") in self.candidate_ids and reason not in OWN_RECORD_REASONS
                and not reason.startswith(OPT_OUT))

    def add_rejected(self, row: dict[str, Any]) -> bool:
        """Buffer a rejected row (stage ``crawl``); False when the folder already held it or kept its candidate."""
        row = dict(row, stage=STAGE)
        if self.already_kept(row):
            return False
        self.outcomes.add_reject(row)
        key = reject_key(row)
        if self.reject_keys[key] > 0:
            self.reject_keys[key] -= 1
            return False
        self.rejected.write(row)
        self.written["rejected"] += 1
        return True

    def flush(self) -> None:
        """Write every buffered row as complete shards."""
        self.candidates.flush()
        self.rejected.flush()

    def close(self) -> None:
        self.flush()


def _shard_age(path: str) -> tuple[int, str]:
    """Sort key of shards, oldest first: when the rows were written (a rewrite keeps it), then the name."""
    return os.stat(path).st_mtime_ns, path


def reconcile(out_dir: str, outcomes: RunOutcomes) -> int:
    """Remove the rejected rows that a later outcome superseded; return how many were removed.

    Run once at the end of a crawl, after every crawl process has flushed, with the run's ``outcomes``.
    A reject of a candidate that is now kept goes. Of a candidate's rejects with different reasons, the
    reasons this run gave win; a candidate this run did not reach keeps its newest shard's reason. A
    page's row (could not be fetched or parsed) goes once the page's references have rows or this run
    fetched it; otherwise, like a candidate's, this run's reason or the newest wins. ``OWN_RECORD_REASONS``
    rows and reference rows without an id stay. Only affected shards are rewritten, each atomically (a
    temporary file beside it, then a rename); a shard left empty is removed. Only ids, URLs and reasons
    are read, never image bytes.
    """
    if "://" in out_dir:  # the spider writes to a local folder (``lait crawl`` passes an absolute path)
        logger.warning("%s is not a local folder: rejects superseded by a later run are not removed", out_dir)
        return 0
    rejected_dir = os.path.join(out_dir, REJECTED)
    try:
        shards = sorted(schemas.list_parquet_files(rejected_dir), key=_shard_age)
    except FileNotFoundError:
        return 0
    kept: set[str] = set()
    pages_with_rows: set[str] = set()  # pages whose references have rows: the page is accounted for
    for row in _existing(os.path.join(out_dir, CANDIDATES), "candidates", ["candidate_id", "page_url"]):
        kept.add(row["candidate_id"])
        pages_with_rows.add(row["page_url"])
    columns = ["candidate_id", "page_url", "reason"]

    rows_of: dict[str, list[tuple]] = {}  # shard -> its rows' (candidate_id, page_url, reason), read once
    for shard in shards:
        table = schemas.read_table(shard, "rejected", columns=columns)
        rows_of[shard] = list(zip(*(table.column(c).to_pylist() for c in columns)))

    newest: dict[tuple[str, str], str] = {}  # record -> the reason in its newest shard, for records this run missed
    for shard in shards:
        for candidate_id, page_url, reason in rows_of[shard]:
            record = _outcome_of(candidate_id, page_url, reason)
            if record is not None:
                newest[record] = reason
            # (An invalid_url row without an id may be a link's that could not be requested: no evidence.)
            if page_url and (candidate_id or reason in ("no_image_url", "data_uri")):
                pages_with_rows.add(page_url)

    def superseded(candidate_id: str | None, page_url: str | None, reason: str) -> bool:
        record = _outcome_of(candidate_id, page_url, reason)
        if record is None:
            return False
        kind, key = record
        if kind == "candidate":
            if key in kept:
                return True
            reasons = outcomes.candidates.get(key)
        else:
            if key in pages_with_rows or key in outcomes.fetched_pages:
                return True
            reasons = outcomes.pages.get(key)
        return reason not in reasons if reasons is not None else reason != newest[record]

    removed = 0
    for shard in shards:
        removed += _drop_rows(shard, "rejected", [not superseded(*row) for row in rows_of[shard]])
    if removed:
        logger.info("%d rejected rows superseded by a later outcome removed from %s", removed, rejected_dir)
    return removed


def _drop_rows(shard: str, kind: str, keep: list[bool]) -> int:
    """Rewrite ``shard`` without the rows ``keep`` marks False, atomically (a temporary file in the same folder,
    then a rename), keeping its modification time (its rows are as old as they were); an emptied shard goes.
    Returns how many rows went."""
    if all(keep):
        return 0
    if not any(keep):
        os.remove(shard)
        return len(keep)
    table = schemas.read_table(shard, kind).filter(keep)
    stat = os.stat(shard)
    schemas.write_table(table, shard, kind)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return keep.count(False)


def withdraw_opted_out(out_dir: str, outcomes: RunOutcomes) -> tuple[int, int]:
    """Remove the kept candidates that this run found opted out (``opt_out_*``: the page or the image now
    says noai / noimageai / noimageindex), and the ``duplicate_candidate`` rows of their repeated references:
    this run wrote an opt-out row for each reference. Returns (candidates, duplicate rows) removed.

    An opt-out is the one later outcome that takes back a candidate kept before: a page that withdraws
    its images from AI training must not stay in the data because an earlier crawl was first. Only the
    ids are read to find them; a shard holding one is rewritten whole.
    """
    opted_out = {key for key, reasons in outcomes.candidates.items() if any(r.startswith(OPT_OUT) for r in reasons)}
    if not opted_out or "://" in out_dir:
        return 0, 0
    withdrawn = duplicates = 0
    for sub, kind, columns in ((CANDIDATES, "candidates", ["candidate_id"]),
                               (REJECTED, "rejected", ["candidate_id", "reason"])):
        try:
            shards = schemas.list_parquet_files(os.path.join(out_dir, sub))
        except FileNotFoundError:
            continue
        for shard in shards:
            table = schemas.read_table(shard, kind, columns=columns)
            ids = table.column("candidate_id").to_pylist()
            if kind == "candidates":
                withdrawn += _drop_rows(shard, kind, [candidate_id not in opted_out for candidate_id in ids])
            else:  # the repeats of a withdrawn reference: this run gave each reference its opt-out row
                reasons = table.column("reason").to_pylist()
                duplicates += _drop_rows(shard, kind, [not (reason == DUPLICATE and candidate_id in opted_out)
                                                       for candidate_id, reason in zip(ids, reasons)])
    if withdrawn:
        logger.info("%d candidates kept by an earlier run withdrawn from %s: their pages or images opted out",
                    withdrawn, out_dir)
    return withdrawn, duplicates


def ensure_candidates(out_dir: str) -> str | None:
    """Give a run folder whose ``candidates/`` holds no shard an empty one (the contract's schema, no rows), so
    that a crawl that kept nothing still has a candidates dataset for the stages after it to read (as the
    WARC reader's has); return its path, or None when the folder had a shard. Shards are written on a
    flush of rows, and an empty folder does not exist on an object store.
    """
    folder = _join(out_dir, CANDIDATES)
    try:
        if schemas.list_parquet_files(folder):
            return None
    except FileNotFoundError:
        pass
    return schemas.write_table(schemas.to_table([], "candidates"), _join(folder, EMPTY_SHARD), "candidates")


def settle(out_dir: str, outcomes: RunOutcomes) -> dict[str, int]:
    """A crawl's last step before stats.json, once every crawl process has finished: withdraw the candidates
    that opted out since they were kept, then reconcile the rejects, and leave a candidates dataset even when
    nothing was kept (``ensure_candidates``). Returns the counts for stats.json."""
    withdrawn, duplicates = withdraw_opted_out(out_dir, outcomes)
    superseded = duplicates + reconcile(out_dir, outcomes)
    ensure_candidates(out_dir)
    return {"withdrawn_candidates": withdrawn, "superseded_rejects": superseded}


def funnel(out_dir: str) -> dict[str, Any]:
    """The stage's books from what is on disk: ``in == kept + rejected`` and the rejects by reason."""
    def rows(sub: str, kind: str) -> int:
        try:
            return schemas.count_rows(_join(out_dir, sub), kind) if schemas.list_parquet_files(_join(out_dir, sub)) else 0
        except FileNotFoundError:
            return 0

    kept = rows(CANDIDATES, "candidates")
    rejected = rows(REJECTED, "rejected")
    reasons = collections.Counter(r["reason"] for r in _existing(_join(out_dir, REJECTED), "rejected", ["reason"]))
    return {"stage": STAGE, "in": kept + rejected, "kept": kept, "rejected": rejected,
            "rejected_by_reason": dict(reasons.most_common())}


def merge_process_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's counters from the partial stats of its processes: sums, first start, last response; the
    image rules (``settings``) of the first."""
    merged: dict[str, Any] = {"by_process": []}
    for part in parts:
        merged["by_process"].append({k: part.get(k, 0) for k in (
            "lait/run/first_request", "lait/run/last_page", "lait/run/last_response", "lait/page/fetched",
            "lait/image/validated")})
        for key, value in part.items():
            if key == "scrapy":
                merged.setdefault("scrapy_by_process", []).append(value)
            elif key == "settings":  # the image rules: the same in every process
                merged.setdefault(key, value)
            elif key == "lait/run/first_request":
                merged[key] = min(merged.get(key, value), value)
            elif key in ("lait/run/last_response", "lait/run/last_page"):
                merged[key] = max(merged.get(key, value), value)
            elif isinstance(value, (int, float)):
                merged[key] = merged.get(key, 0) + value
    return merged


def image_settings(min_side: int, max_aspect: float, formats, max_pixels: int) -> dict[str, Any]:
    """The image rules a crawl applied, as its stats.json records them under ``settings`` (as ``lait filter``'s
    stats.json records its options): ``max_aspect`` 0.0 when the check was off (no limit, as the option says it),
    ``image_formats`` the formats compared (a list, or the WARC reader's comma-separated text)."""
    if isinstance(formats, str):
        formats = [name for name in formats.split(",") if name]
    return {"min_side": int(min_side), "max_aspect": 0.0 if math.isinf(max_aspect) else float(max_aspect),
            "image_formats": list(formats), "max_pixels": int(max_pixels)}


def write_stats(out_dir: str, extra: dict[str, Any] | None = None,
                settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``stats.json`` (the funnel counted from the output, plus ``extra`` and the crawl's ``settings``:
    ``image_settings``) atomically, the run's last step: this process's ``RUN_MARKER`` goes (``release``); return
    it."""
    stats = funnel(out_dir)
    for key, value in (extra or {}).items():
        stats.setdefault(key, value)
    if settings is not None:
        stats["settings"] = settings
    if "://" in out_dir:  # a Beam/fsspec URL: object stores replace whole objects anyway
        import fsspec

        with fsspec.open(f"{out_dir.rstrip('/')}/{STATS_FILE}", "w", encoding="utf-8") as handle:
            handle.write(json.dumps(stats, indent=2, default=str))
        release(out_dir)
        return stats
    write_json_atomically(os.path.join(out_dir, STATS_FILE), stats)
    release(out_dir)
    return stats


#: (crawler modules call it by this module; the one writer is schemas')
write_json_atomically = schemas.write_json_atomically
