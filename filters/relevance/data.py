"""Reading pairs datasets for the relevance model (a filter run folder or the dataset itself)."""
from __future__ import annotations

import os

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
    missing = [c for c in extra_columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a labelled set needs them beside the pairs columns")
    table = dataset.head(limit, columns=PAIR_COLUMNS + list(extra_columns)) if limit else \
        dataset.to_table(columns=PAIR_COLUMNS + list(extra_columns))
    return table.to_pylist()
