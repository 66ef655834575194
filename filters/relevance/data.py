"""Reading pairs datasets for the relevance model (a filter run folder or the dataset itself)."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc

import schemas

#: The pairs columns the relevance model reads.
PAIR_COLUMNS = ["pair_id", "candidate_id", "image_id", "caption", "image_bytes", "width", "height",
                "page_url", "image_url"]


def resolve_pairs_path(path: str) -> str:
    """``RUN/filter`` or any folder holding ``pairs/`` -> that ``pairs/``; else the path itself."""
    inner = os.path.join(path, "pairs")
    if "://" not in path and os.path.isdir(inner):
        return inner
    return path


def read_pairs(path: str, extra_columns: tuple[str, ...] = (), limit: int | None = None) -> list[dict]:
    """The pairs of a dataset as dicts (contract-checked), with ``extra_columns`` when present."""
    path = resolve_pairs_path(path)
    dataset = schemas.open_dataset(path, "pairs")
    try:
        return _read(dataset, path, extra_columns, limit)
    except (OSError, pa.ArrowException) as exc:  # a damaged shard: footer fine, pages rotten
        raise ValueError(f"{path}: unreadable Parquet ({' '.join(str(exc).split())[:300]})") from None


def _read(dataset, path: str, extra_columns: tuple[str, ...], limit: int | None) -> list[dict]:
    missing = [c for c in extra_columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a labelled set needs them beside the pairs columns")
    columns = PAIR_COLUMNS + list(extra_columns)
    # Sorted by pair_id, and with a limit the smallest pair_ids: the same pairs in the same order
    # however the upstream stage happened to shard and order them, so a seed fixes the result.
    row_filter = None
    if limit:
        pair_ids = dataset.to_table(columns=["pair_id"]).column("pair_id")
        if len(pair_ids) > limit:
            chosen = pc.array_sort_indices(pair_ids)[:limit]
            row_filter = pc.field("pair_id").isin(pair_ids.take(chosen))
    table = dataset.to_table(columns=columns, filter=row_filter)
    return table.sort_by([("pair_id", "ascending")]).to_pylist()
