"""Reading pairs datasets for the relevance model (a filter run folder or the dataset itself)."""
from __future__ import annotations

import hashlib
import heapq
import os
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow as pa

import schemas
from filters.base import location_key

#: The pairs columns the relevance model reads.
PAIR_COLUMNS = ["pair_id", "candidate_id", "image_id", "caption", "image_bytes", "width", "height",
                "page_url", "image_url"]
#: The columns ``content_key`` reads.
CONTENT_COLUMNS = ["image_id", "caption", "page_url", "image_url"]


def content_key(row: dict) -> tuple[str, str, str, str]:
    """What a pair holds and where it was found, never its (URL-hashed) pair id: image id, caption, and page
    and image URL without scheme or port. The training order, and what ``--max-pairs`` chooses by."""
    return (row.get("image_id") or "", row.get("caption") or "", location_key(row.get("page_url")),
            location_key(row.get("image_url")))


def _portless(url: str | None) -> str:
    """A URL with its scheme but without credentials and port (``location_key`` drops the scheme too)."""
    if not url:
        return ""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        return url
    return f"{scheme}://{location_key(url)}" if scheme else location_key(url)


def _sample_key(row: dict) -> tuple[str, tuple[str, str, str, str], str, str, str]:
    """Rank of a pair when only some are taken: a hash of its content (a sample spread over images, captions
    and pages), then the content itself, then its URLs with scheme but without port, and only then its pair id,
    to break ties the same way every time. Rows of one content key differ only in their URLs (a page served by
    http and https; the image id hashes the bytes): the port must not pick between them, and pair ids hash it."""
    key = content_key(row)
    digest = hashlib.sha1("\x1f".join(key).encode()).hexdigest()
    return digest, key, _portless(row.get("page_url")), _portless(row.get("image_url")), row.get("pair_id") or ""


def choose_pairs(rows: list[dict], limit: int | None) -> list[dict]:
    """``rows`` whole, or the ``limit`` of them whose content hashes lowest (in that order): the same pairs
    whatever order they came in and whatever their pair ids, so that a seed fixes the model."""
    rows = list(rows)
    return rows if not limit or len(rows) <= limit else sorted(rows, key=_sample_key)[:limit]


def _keyed_rows(dataset) -> Iterator[tuple[tuple, int]]:
    """(``_sample_key``, row index) of every row of a dataset, read batch by batch (the key columns only)."""
    index = 0
    for batch in dataset.to_batches(columns=CONTENT_COLUMNS + ["pair_id"], use_threads=False):  # in row order
        for row in batch.to_pylist():
            yield _sample_key(row), index
            index += 1


def resolve_pairs_path(path: str) -> str:
    """``RUN/filter`` or any folder holding ``pairs/`` -> that ``pairs/``; else the path itself."""
    inner = os.path.join(path, "pairs")
    if "://" not in path and os.path.isdir(inner):
        return inner
    return path


def read_pairs(path: str, extra_columns: tuple[str, ...] = (), limit: int | None = None) -> list[dict]:
    """The pairs of a dataset as dicts (contract-checked), with ``extra_columns`` when present."""
    return read_pairs_and_count(path, extra_columns, limit)[0]


def read_pairs_and_count(path: str, extra_columns: tuple[str, ...] = (),
                         limit: int | None = None) -> tuple[list[dict], int]:
    """``read_pairs``, and how many pairs the dataset holds: more than it returns where ``limit`` left some out.

    An empty (or white-space) path is a ValueError: it would read every dataset under the current folder."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"pairs path {path!r} is empty; give a filter output folder or a pairs dataset")
    path = resolve_pairs_path(path)
    dataset = schemas.open_dataset(path, "pairs")
    try:
        return _read(dataset, path, extra_columns, limit)
    except (OSError, pa.ArrowException) as exc:  # a damaged shard: footer fine, pages rotten
        raise ValueError(f"{path}: unreadable Parquet ({' '.join(str(exc).split())[:300]})") from None


def _read(dataset, path: str, extra_columns: tuple[str, ...], limit: int | None) -> tuple[list[dict], int]:
    missing = [c for c in extra_columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a labelled set needs them beside the pairs columns")
    columns = PAIR_COLUMNS + list(extra_columns)
    total = dataset.count_rows()
    if limit and total > limit:
        # Chosen by content (``choose_pairs``), from the few columns it needs: pair ids hash the URLs, port
        # included, so the smallest ids would be other pairs for the same site served on another port.
        # Streamed, batch by batch, keeping the ``limit`` lowest keys: memory follows the limit, not the input.
        chosen = heapq.nsmallest(limit, _keyed_rows(dataset), key=lambda item: item[0])
        table = dataset.take(sorted(index for _, index in chosen), columns=columns)
    else:
        table = dataset.to_table(columns=columns)
    # Sorted by pair_id: the same pairs in the same order however the upstream stage sharded them.
    return table.sort_by([("pair_id", "ascending")]).to_pylist(), total
