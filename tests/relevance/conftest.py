"""Shared fixtures: synthetic scene pairs, datasets on disk (the default model, ``model_dir``, and its
``train_rows`` are in ``shared_model.py``, for every test)."""
from __future__ import annotations

import json
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


def edited_model(root, edit: dict):
    """A tiny saved model in ``root``/m whose config.json has ``edit`` applied (``model``'s keys merged into the
    architecture, the others set): (its folder, its config.json path)."""
    folder = save_tiny_model(os.path.join(str(root), "m"))
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    for key, value in edit.items():
        config[key] = {**config[key], **value} if key == "model" else value
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return folder, path


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


#: A tiny open_clip architecture: a model of it builds in a fraction of a second.
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory) -> str:
    """A ``clip:CONFIG:WEIGHTS`` spec of a tiny randomly initialised open_clip model (``TINY_CLIP``), saved here."""
    open_clip = pytest.importorskip("open_clip")  # the `clip` extra; installed in the project venv
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "lait-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("lait-tiny-clip", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    return f"clip:{config}:{folder / 'weights.safetensors'}"
