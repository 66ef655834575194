"""Synthetic regions + captions with a learnable image-text link, for tests, benchmarks and smoke runs.

Each image holds two coloured shapes (plus background regions); its captions name both shapes and
where they stand ("a small red triangle left of a large blue circle"). A shape's region feature is
a fixed random code of its colour, shape and size plus noise, and its class id is shape x colour,
so the regions carry what the caption says, as a detector's would::

    python -m model.synthetic --out /tmp/synth --images 1000
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import schemas

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
SIZES = ["small", "large"]
WIDTH, HEIGHT = 640, 480


def class_names() -> list[str]:
    """Detector class names: one per (shape, colour), then background."""
    return [f"{color} {shape}" for shape in SHAPES for color in COLORS] + ["background"]


def write_synthetic(out_dir: str, images: int = 1000, feature_dim: int = 32, background: int = 3,
                    test_images: int = 100, seed: int = 0, noise: float = 0.3, topk: int = 3) -> dict:
    """Write ``out_dir/regions/``, ``out_dir/captions/`` (train/test splits) and ``out_dir/classes.json``."""
    rng = np.random.default_rng(seed)
    color_code = rng.normal(size=(len(COLORS), feature_dim)).astype(np.float32)
    shape_code = rng.normal(size=(len(SHAPES), feature_dim)).astype(np.float32)
    size_code = rng.normal(size=(len(SIZES), feature_dim)).astype(np.float32)
    background_class = len(class_names()) - 1
    region_rows, caption_rows = [], []
    for index in range(images):
        image_id = f"synthetic-{seed}-{index:06d}"
        split = "test" if index >= images - test_images else "train"
        objects = []
        for _ in range(2):
            color, shape, size = rng.integers(len(COLORS)), rng.integers(len(SHAPES)), rng.integers(len(SIZES))
            side = (60 if size == 0 else 160) * rng.uniform(0.8, 1.2)
            x, y = rng.uniform(0, WIDTH - side), rng.uniform(0, HEIGHT - side)
            feature = color_code[color] + shape_code[shape] + size_code[size] + noise * rng.normal(size=feature_dim)
            objects.append({"color": color, "shape": shape, "size": size, "box": [x, y, x + side, y + side],
                            "feature": feature, "class": int(shape * len(COLORS) + color)})
        boxes, features, classes, topk_ids, topk_probs = [], [], [], [], []
        for obj in objects:
            boxes.append(obj["box"])
            features.append(obj["feature"])
            classes.append(obj["class"])
            others = [c for c in rng.permutation(background_class) if c != obj["class"]][: topk - 1]
            topk_ids.append([obj["class"]] + [int(c) for c in others])
            topk_probs.append([0.8] + [0.2 / (topk - 1)] * (topk - 1))
        for _ in range(int(rng.integers(0, background + 1))):
            x, y = rng.uniform(0, WIDTH - 50), rng.uniform(0, HEIGHT - 50)
            boxes.append([x, y, x + rng.uniform(20, 50), y + rng.uniform(20, 50)])
            features.append(noise * rng.normal(size=feature_dim) * 2)
            classes.append(background_class)
            topk_ids.append([background_class] + [int(c) for c in rng.permutation(background_class)[: topk - 1]])
            topk_probs.append([0.6] + [0.4 / (topk - 1)] * (topk - 1))
        region_rows.append({
            "image_id": image_id, "image_width": WIDTH, "image_height": HEIGHT, "num_boxes": len(boxes),
            "boxes": np.asarray(boxes, np.float32), "features": np.asarray(features, np.float16),
            "class_ids": np.asarray(classes, np.int32), "class_scores": np.full(len(boxes), 0.9, np.float32),
            "topk_class_ids": [list(map(int, t)) for t in topk_ids], "topk_class_probs": topk_probs,
            "detector": "synthetic",
        })
        first, second = objects
        names = [f"{SIZES[o['size']]} {COLORS[o['color']]} {SHAPES[o['shape']]}" for o in objects]
        left = first["box"][0] < second["box"][0]
        relation, inverse = ("left of", "right of") if left else ("right of", "left of")
        for number, text in enumerate([f"a {names[0]} {relation} a {names[1]}", f"a {names[1]} {inverse} a {names[0]}"]):
            caption_rows.append({"caption_id": f"{image_id}-{number}", "image_id": image_id, "caption": text,
                                 "split": split})
    regions_dir = os.path.join(out_dir, "regions")
    schemas.write_table(schemas.to_table(region_rows, "regions", feature_dim=feature_dim),
                        os.path.join(regions_dir, "part-00000.parquet"), "regions", row_group_size=256)
    schemas.write_table(schemas.to_table(caption_rows, "captions"),
                        os.path.join(out_dir, "captions", "part-00000.parquet"), "captions")
    with open(os.path.join(out_dir, "classes.json"), "w", encoding="utf-8") as handle:
        json.dump(class_names(), handle)
    return {"images": images, "captions": len(caption_rows), "test_images": test_images, "feature_dim": feature_dim,
            "num_classes": len(class_names())}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: write a synthetic dataset folder."""
    parser = argparse.ArgumentParser(description="Write a synthetic regions + captions dataset.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--feature-dim", type=int, default=32)
    parser.add_argument("--background", type=int, default=3, help="most background regions per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(write_synthetic(args.out, args.images, args.feature_dim, args.background, args.test_images,
                                     args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
