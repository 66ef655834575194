"""Datasets the demo writes itself: the held-out test split and the training captions."""
from __future__ import annotations

import hashlib
import logging
import os
import random

import schemas
from demo.scenes import Scene, captions, encode, generate_scenes, image_id, render

log = logging.getLogger(__name__)


def _caption_id(image: str, caption: str) -> str:
    return hashlib.sha1(f"{image}\n{caption}".encode()).hexdigest()


def heldout_scenes(seed: int, n: int) -> list[Scene]:
    """The held-out scenes: drawn from their own stream, never put on the website."""
    return generate_scenes(seed, n, "test")


def write_test_split(seed: int, n: int, out_dir: str, captions_per_image: int = 5) -> dict[str, int]:
    """Write ``out_dir/pairs`` (one row per image, for ``lait features``) and ``out_dir/captions``.

    Each held-out scene gets up to ``captions_per_image`` distinct true captions (split ``test``).
    Returns the row counts.
    """
    rng = random.Random(f"test-captions:{seed}")
    pair_rows, caption_rows = [], []
    for scene in heldout_scenes(seed, n):
        data = encode(render(scene))
        iid = image_id(data)
        texts = captions(scene, rng, captions_per_image)
        pair_rows.append({"pair_id": _caption_id(iid, texts[0]), "image_id": iid, "caption": texts[0],
                          "text_source": "alt", "lang": "en", "width": scene.width, "height": scene.height,
                          "image_bytes": data, "image_url": f"scene:{scene.scene_id}"})
        caption_rows += [{"caption_id": _caption_id(iid, t), "image_id": iid, "caption": t, "split": "test"}
                         for t in texts]
    schemas.write_table(schemas.to_table(pair_rows, "pairs"), os.path.join(out_dir, "pairs", "part-00000.parquet"), "pairs")
    schemas.write_table(schemas.to_table(caption_rows, "captions"),
                        os.path.join(out_dir, "captions", "part-00000.parquet"), "captions")
    log.info("test split: %d images, %d captions in %s", len(pair_rows), len(caption_rows), out_dir)
    return {"images": len(pair_rows), "captions": len(caption_rows)}


def write_train_captions(pairs_dir: str, out_dir: str, split: str = "train") -> int:
    """Turn kept pairs into a ``captions`` dataset (one caption per kept pair); returns the row count."""
    rows, seen = [], set()
    for batch in schemas.iter_batches(pairs_dir, "pairs", columns=["image_id", "caption"]):
        for iid, text in zip(batch.column("image_id").to_pylist(), batch.column("caption").to_pylist()):
            cid = _caption_id(iid, text)
            if cid not in seen:  # the same (image, caption) kept twice is one caption
                seen.add(cid)
                rows.append({"caption_id": cid, "image_id": iid, "caption": text, "split": split})
    rows.sort(key=lambda row: (row["image_id"], row["caption_id"]))  # by id, not in the crawl's order
    schemas.write_table(schemas.to_table(rows, "captions"), os.path.join(out_dir, "part-00000.parquet"), "captions")
    return len(rows)
