"""Tiny synthetic scenes for the features tests: coloured rectangles and circles with known boxes."""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageDraw

import schemas

CLASS_NAMES = ["red_box", "green_box", "blue_circle", "yellow_circle"]
_SHAPES = [("rect", (220, 40, 40)), ("rect", (40, 200, 60)), ("ellipse", (40, 70, 230)), ("ellipse", (230, 210, 40))]


def make_scene(seed: int, size: tuple[int, int] = (128, 96), max_objects: int = 3):
    """A grey-noise background with 1..max_objects shapes; returns (image, boxes [n,4], labels [n])."""
    rng = np.random.default_rng(seed)
    width, height = size
    background = rng.integers(90, 150, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(0, len(_SHAPES)))
        w, h = int(rng.integers(width // 5, width // 2)), int(rng.integers(height // 5, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        kind, colour = _SHAPES[label]
        getattr(draw, "rectangle" if kind == "rect" else "ellipse")([x, y, x + w - 1, y + h - 1], fill=colour)
        boxes.append([x, y, x + w, y + h])
        labels.append(label)
    return image, np.array(boxes, np.float32), np.array(labels, np.int64)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pairs(path, images: list[bytes], duplicate_first: bool = True, row_group_size: int = 1024) -> list[str]:
    """A pairs dataset holding ``images`` (the first one twice, as two captions of one image)."""
    rows = []
    for i, data in enumerate(images):
        rows.append({"pair_id": f"p{i}", "image_id": image_id(data) if data else f"missing{i}",
                     "caption": f"scene {i}", "image_bytes": data})
    if duplicate_first and rows:
        rows.append({**rows[0], "pair_id": "p-dup", "caption": "the same image again"})
    schemas.write_table(schemas.to_table(rows, "pairs"), str(path / "pairs" / "part-00000.parquet"), "pairs",
                        row_group_size=row_group_size)
    return [r["image_id"] for r in rows]
