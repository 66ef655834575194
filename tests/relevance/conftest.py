"""Shared fixtures: synthetic scene pairs, datasets on disk (the default model, ``model_dir``, and its
``train_rows`` are in ``shared_model.py``, for every test)."""
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
def heldout_rows() -> list[dict]:
    """400 pairs of other pages, never seen in training, labelled with ``is_match``."""
    return make_pairs(100, seed=2)


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
