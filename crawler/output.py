"""The crawl's run folder: ``candidates/`` and ``rejected/`` Parquet shards and ``stats.json``.

Shared by the spider's item pipeline and the WARC reader. Rows are buffered and written as complete
shards; a resumed crawl appends new shards and never writes a row it already wrote.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
from typing import Any, Iterator

import schemas

logger = logging.getLogger(__name__)

STAGE = "crawl"
CANDIDATES = "candidates"
REJECTED = "rejected"
STATS_FILE = "stats.json"
#: The reason of a reference that repeats a candidate already seen (same page, image and text).
DUPLICATE = "duplicate_candidate"


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


def reject_key(row: dict[str, Any]) -> tuple:
    """What rejected rows of the same kind share (counted, to skip rows a resumed crawl already wrote)."""
    return (row.get("reason"), row.get("page_url"), row.get("image_url"), row.get("candidate_id"))


def _existing(path: str, kind: str, columns: list[str]) -> Iterator[dict[str, Any]]:
    try:
        files = schemas.list_parquet_files(path)
    except FileNotFoundError:
        return
    if not files:
        return
    for batch in schemas.iter_batches(path, kind, columns=columns, batch_size=4096):
        yield from batch.to_pylist()


def iter_existing_images(out_dir: str) -> Iterator[dict[str, Any]]:
    """The images already written to a run folder (image_url, image_id, bytes and facts), for resuming."""
    columns = ["image_url", "image_id", "image_bytes", "width", "height", "format", "num_bytes", "content_type",
               "http_status", "fetched_at"]
    yield from _existing(os.path.join(out_dir, CANDIDATES), "candidates", columns)


class CrawlOutput:
    """Writes candidate and rejected rows of one run folder, skipping rows already present.

    Dedup is against the folder's earlier rows only (a resumed or rerun crawl): within a run every
    record gets its row. A candidate that repeats one of this run (the same image with the same text
    twice on a page) becomes a ``duplicate_candidate`` reject. Rejects are counted per key, since
    several references of one page may share it (two ``data:`` images): a rerun skips as many rows
    of a key as the folder already holds and writes the rest.
    """

    def __init__(self, out_dir: str, rows_per_shard: int = 500, rejected_rows_per_shard: int = 20000,
                 prefix: str = "part"):
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

    def add_candidate(self, row: dict[str, Any]) -> str | None:
        """Buffer a candidate row. Returns what was written: ``CANDIDATES``, ``REJECTED`` (a repeat of a
        candidate of this run, as a ``duplicate_candidate`` reject) or None (already in the folder)."""
        if row["candidate_id"] in self.seen_candidates:
            duplicate = {"reason": DUPLICATE, "detail": "same page, image and text seen before", "caption":
                         row.get("alt") or row.get("title") or row.get("figcaption"),
                         **{k: row.get(k) for k in ("candidate_id", "image_id", "page_url", "image_url")}}
            return REJECTED if self.add_rejected(duplicate) else None
        self.seen_candidates.add(row["candidate_id"])
        if row["candidate_id"] in self.candidate_ids:
            return None
        self.candidate_ids.add(row["candidate_id"])
        self.candidates.write(row)
        self.written["candidates"] += 1
        return CANDIDATES

    def add_rejected(self, row: dict[str, Any]) -> bool:
        """Buffer a rejected row (stage ``crawl``); False when the folder already held it."""
        row = dict(row, stage=STAGE)
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
    """One run's counters from the partial stats of its processes: sums, first start, last response."""
    merged: dict[str, Any] = {"by_process": []}
    for part in parts:
        merged["by_process"].append({k: part.get(k, 0) for k in (
            "lait/run/first_request", "lait/run/last_page", "lait/run/last_response", "lait/page/fetched",
            "lait/image/validated")})
        for key, value in part.items():
            if key == "scrapy":
                merged.setdefault("scrapy_by_process", []).append(value)
            elif key == "lait/run/first_request":
                merged[key] = min(merged.get(key, value), value)
            elif key in ("lait/run/last_response", "lait/run/last_page"):
                merged[key] = max(merged.get(key, value), value)
            elif isinstance(value, (int, float)):
                merged[key] = merged.get(key, 0) + value
    return merged


def write_stats(out_dir: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``stats.json`` (the funnel counted from the output, plus ``extra``) atomically; return it."""
    stats = funnel(out_dir)
    for key, value in (extra or {}).items():
        stats.setdefault(key, value)
    text = json.dumps(stats, indent=2, default=str)
    if "://" in out_dir:  # a Beam/fsspec URL: object stores replace whole objects anyway
        import fsspec

        with fsspec.open(f"{out_dir.rstrip('/')}/{STATS_FILE}", "w", encoding="utf-8") as handle:
            handle.write(text)
        return stats
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".stats.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, os.path.join(out_dir, STATS_FILE))
    return stats
