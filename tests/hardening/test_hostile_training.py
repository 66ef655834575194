"""Hostile training input: NaN/inf features and boxes, empty captions, images with zero boxes or
zero-area boxes, captions far over the maximum length. Training runs to the end with finite losses."""
import csv
import math
import os

import numpy as np
import torch

import schemas
from model.config import load_config
from model.data import decode_regions
from model.synthetic import write_synthetic
from model.train import train

D = 8


def hostile_dataset(root: str) -> str:
    """A synthetic regions + captions dataset with every hostile case planted in its first images."""
    write_synthetic(root, images=48, feature_dim=D, test_images=8, seed=3)
    regions = schemas.read_table(os.path.join(root, "regions"), "regions").to_pylist()
    regions[0]["features"] = [[float("nan")] * D for _ in regions[0]["features"]]
    regions[1]["features"] = [[float("inf"), -float("inf")] + [1e30] * (D - 2) for _ in regions[1]["features"]]
    regions[2]["boxes"] = [[float("nan"), 0.0, float("inf"), 5.0] for _ in regions[2]["boxes"]]
    for key in ("boxes", "features", "class_ids", "class_scores", "topk_class_ids", "topk_class_probs"):
        regions[3][key] = []  # an image with zero boxes
    regions[3]["num_boxes"] = 0
    regions[4]["boxes"] = [[0.0, 0.0, 0.0, 0.0] for _ in regions[4]["boxes"]]  # zero-area boxes
    regions[4]["image_width"] = regions[4]["image_height"] = 0  # and no image size
    regions[5]["topk_class_probs"] = [[float("nan")] * len(p) for p in regions[5]["topk_class_probs"]]
    schemas.write_table(schemas.to_table(regions, "regions", feature_dim=D),
                        os.path.join(root, "regions", "part-00000.parquet"), "regions")
    captions = schemas.read_table(os.path.join(root, "captions"), "captions").to_pylist()
    captions[0]["caption"] = ""
    captions[1]["caption"] = "   \t\n "
    captions[2]["caption"] = " ".join(["supercalifragilistic word"] * 2000)  # far over max_text_len
    captions[3]["caption"] = "\x00\ufffd\U0001F600 " * 50
    schemas.write_table(schemas.to_table(captions, "captions"), os.path.join(root, "captions", "part-00000.parquet"),
                        "captions")
    return root


def test_decoded_regions_are_finite_whatever_the_file_holds(tmp_path):
    root = hostile_dataset(str(tmp_path / "data"))
    table = schemas.read_table(os.path.join(root, "regions"), "regions")
    for image in decode_regions(table, max_regions=8, feature_dim=D):
        assert np.isfinite(image.features.astype(np.float32)).all(), image.image_id
        assert np.isfinite(image.locations).all(), image.image_id
        assert np.isfinite(image.topk_probs).all(), image.image_id


def test_training_on_hostile_data_ends_with_finite_losses(tmp_path):
    root = hostile_dataset(str(tmp_path / "data"))
    data = {"regions": f"{root}/regions", "captions": f"{root}/captions", "split": "train"}
    out = str(tmp_path / "run")
    config = load_config(base={
        "out_dir": out,
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "dropout": 0.0,
                  "attention_dropout": 0.0, "max_text_len": 16, "max_regions": 8},
        "tokenizer_vocab_size": 120, "log_every": 1, "num_workers": 0,
        # One batch holds every image, so each hostile case is in every step.
        "pretrain": [{"name": "stage1", "datasets": [data], "steps": 3, "batch_size": 96, "lr": 1e-3}],
        "finetune": {"name": "finetune", "datasets": [data], "steps": 2, "batch_size": 16, "lr": 1e-3, "negatives": 2},
    })
    torch.set_num_threads(1)
    train(config)
    for stage in ("stage1", "finetune"):
        with open(os.path.join(out, "logs", f"{stage}.csv"), newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert rows, stage
        for row in rows:
            for key, value in row.items():
                if value not in ("", None) and key not in ("step",):
                    assert math.isfinite(float(value)), (stage, row)
    final = torch.load(os.path.join(out, "checkpoints", "final.pt"), weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in final.values() if t.is_floating_point())


def test_regions_of_another_width_stop_training_with_the_file_named(tmp_path):
    """A regions file of another detector (D + 1 wide) among the dataset's files: reshaped to D, its regions
    would read pieces of each other; training stops with the file named instead."""
    import pytest

    root = str(tmp_path / "data")
    write_synthetic(root, images=24, feature_dim=D, test_images=4, seed=4)
    regions = schemas.read_table(os.path.join(root, "regions"), "regions").to_pylist()
    for row in regions[:12]:
        row["features"] = [list(f) + [0.5] for f in row["features"]]
    schemas.write_table(schemas.to_table(regions[:12], "regions", feature_dim=D + 1),
                        os.path.join(root, "regions", "part-00001.parquet"), "regions")
    schemas.write_table(schemas.to_table(regions[12:], "regions", feature_dim=D),
                        os.path.join(root, "regions", "part-00000.parquet"), "regions")
    data = {"regions": f"{root}/regions", "captions": f"{root}/captions", "split": "train"}
    config = load_config(base={
        "out_dir": str(tmp_path / "run"),
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_text_len": 16,
                  "max_regions": 8},
        "tokenizer_vocab_size": 120, "log_every": 1,
        "finetune": {"name": "finetune", "datasets": [data], "steps": 2, "batch_size": 8, "negatives": 2},
    })
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match=f"part-00001.parquet: features of width {D + 1}, the model reads {D}"):
        train(config)
