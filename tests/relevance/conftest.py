"""Shared fixtures: synthetic scene pairs, a relevance model trained once per session, datasets on disk."""
from __future__ import annotations

import os

import pytest

import schemas
from tests.relevance.scenes import make_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_pairs(rows: list[dict], folder: str, labelled: bool = False) -> str:
    """Write rows as a pairs dataset (``is_match`` kept as an extra column when ``labelled``)."""
    import pyarrow as pa

    table = schemas.to_table(rows, "pairs")
    if labelled:
        table = table.append_column("is_match", pa.array([r["is_match"] for r in rows], pa.bool_()))
    path = os.path.join(folder, "part-00000.parquet")
    schemas.write_table(table, path, "pairs")
    return folder


@pytest.fixture(scope="session")
def train_rows() -> list[dict]:
    """600 crawled pairs on 150 pages, 15% of them planted mismatches (weak positives)."""
    return make_pairs(150, seed=1)


@pytest.fixture(scope="session")
def heldout_rows() -> list[dict]:
    """400 pairs of other pages, never seen in training, labelled with ``is_match``."""
    return make_pairs(100, seed=2)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, train_rows) -> str:
    """A relevance model trained on ``train_rows`` with the default recipe."""
    from filters.relevance.config import TrainConfig
    from filters.relevance.train import train

    out = str(tmp_path_factory.mktemp("relevance") / "model")
    summary = train(train_rows, out, TrainConfig())
    assert summary["trained_on"] + summary["held_out"] == len(train_rows)
    return out


@pytest.fixture
def cli_env() -> dict:
    """Environment for running ``python -m lait`` on this checkout."""
    return {**os.environ, "PYTHONPATH": ROOT}
