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
    """A relevance model trained on ``train_rows`` with the default recipe (read-only for the tests).

    Trained once per test run (about 35 s on 2 cores): pytest-xdist's worker processes each have their own
    session, so the first to get here trains it in the base folder they share, under a lock, and the others
    wait for it and load the same files.
    """
    from filelock import FileLock

    from filters.relevance.config import TrainConfig
    from filters.relevance.train import train

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each worker's base folder lies in the run's own
    out = shared / "relevance-default-model"
    with FileLock(str(shared / "relevance-default-model.lock")):
        if not out.exists():
            partial = shared / "relevance-default-model.partial"
            summary = train(train_rows, str(partial), TrainConfig())
            assert summary["trained_on"] + summary["held_out"] == len(train_rows)
            os.replace(partial, out)
    return str(out)


@pytest.fixture
def cli_env() -> dict:
    """Environment for running ``python -m lait`` on this checkout."""
    return {**os.environ, "PYTHONPATH": ROOT}


def save_tiny_model(folder: str, threshold: float = 0.5) -> str:
    """An untrained relevance model saved as LAIT saves one (for tests of loading, not of scores)."""
    from model.relevance import RelevanceConfig, RelevanceModel, save_model

    save_model(RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=64)),
               folder, {"threshold": threshold, "vocabulary": []})
    return folder


def broken_models(root: str) -> dict[str, str]:
    """Model folders broken in the ways a copy or a disk goes wrong, by name: bad_json, truncated_weights,
    no_weights, not_safetensors, no_model (a folder without config.json)."""
    import shutil

    good = save_tiny_model(os.path.join(root, "good"))
    models = {}
    for name in ("bad_json", "truncated_weights", "no_weights", "not_safetensors"):
        models[name] = shutil.copytree(good, os.path.join(root, name))
    with open(os.path.join(models["bad_json"], "config.json"), "w") as f:
        f.write("{")
    weights = os.path.join(models["truncated_weights"], "model.safetensors")
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    os.remove(os.path.join(models["no_weights"], "model.safetensors"))
    with open(os.path.join(models["not_safetensors"], "model.safetensors"), "wb") as f:
        f.write(b"\x00" * 1000)
    models["no_model"] = os.path.join(root, "absent")
    return models
