"""Existing caption sets as LAIT datasets: MSCOCO captions JSON, Karpathy-split JSON, image folder + TSV.

Writes ``OUT/captions/`` (every caption, with its split), ``OUT/pairs/`` (one row per image with its
bytes, so ``lait features --input OUT`` adds the regions), ``OUT/rejected/`` and ``OUT/stats.json``.
An image's id is the SHA-256 of its bytes, as everywhere in LAIT; a caption whose image file is
missing or unreadable, or which is empty, is rejected with a reason.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import schemas

logger = logging.getLogger(__name__)

STAGE = "import_captions"
FORMATS = ("coco", "karpathy", "tsv")


@dataclass
class CaptionRecord:
    """One caption as the source gives it: its own id, the image's file (relative path), the text, the split."""

    source_id: str
    image_file: str
    caption: str
    split: str


def read_coco(path: str, split: str = "train") -> Iterator[CaptionRecord]:
    """MSCOCO ``captions_*.json``: ``images`` (id, file_name) and ``annotations`` (id, image_id, caption)."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    files = {image["id"]: image["file_name"] for image in data.get("images", [])}
    for annotation in data.get("annotations", []):
        yield CaptionRecord(f"coco:{annotation['id']}", files.get(annotation["image_id"], f"<unknown image {annotation['image_id']}>"),
                            annotation.get("caption") or "", split)


def read_karpathy(path: str, split: str | None = None) -> Iterator[CaptionRecord]:
    """Karpathy's ``dataset_{coco,flickr30k}.json``: images with split, filepath/filename and sentences."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    for image in data.get("images", []):
        image_split = image.get("split", "train")
        image_split = "train" if image_split == "restval" else image_split  # the usual practice
        relative = os.path.join(image.get("filepath", ""), image["filename"])
        for sentence in image.get("sentences", []):
            yield CaptionRecord(f"karpathy:{sentence.get('sentid')}", relative, sentence.get("raw") or "", image_split)


def read_tsv(path: str, split: str = "train") -> Iterator[CaptionRecord]:
    """A TSV of ``image_file<TAB>caption`` lines (a header line naming the columns is skipped)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            image_file, _, caption = line.partition("\t")
            if number == 1 and image_file.lower() in ("image", "file", "file_name", "filename", "image_file"):
                continue
            yield CaptionRecord(f"tsv:{number}", image_file, caption, split)


READERS = {"coco": read_coco, "karpathy": read_karpathy, "tsv": read_tsv}


def _inside(folder: str, path: str) -> bool:
    """Whether ``path`` (links resolved) lies inside ``folder``: a caption file must not name
    ``../../etc/passwd`` or an absolute path and have it read into the dataset."""
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _image_info(path: str) -> tuple[bytes, int, int] | str:
    """The image's bytes and size, or a reject reason."""
    if not os.path.isfile(path):
        return "image_missing"
    from PIL import Image

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.verify()
    except Exception:  # any decoder error means the same thing here: not a usable image
        return "image_unreadable"
    return data, width, height


def import_captions(records: Iterable[CaptionRecord], images_dir: str, out_dir: str, rows_per_shard: int = 5000) -> dict:
    """Write captions, pairs (one per image, with bytes), rejected rows and stats; returns the stats."""
    images: dict[str, tuple[str, int, int] | str] = {}  # image file -> (image_id, w, h) or reject reason
    reasons: Counter = Counter()
    counts = {"in": 0, "kept": 0}
    with schemas.ShardWriter(os.path.join(out_dir, "captions"), "captions", rows_per_shard=rows_per_shard) as captions, \
            schemas.ShardWriter(os.path.join(out_dir, "pairs"), "pairs", rows_per_shard=max(1, rows_per_shard // 10)) as pairs, \
            schemas.ShardWriter(os.path.join(out_dir, "rejected"), "rejected", rows_per_shard=rows_per_shard) as rejected:
        for record in records:
            counts["in"] += 1
            caption = " ".join(record.caption.split())
            if record.image_file not in images:
                path = os.path.join(images_dir, record.image_file)
                info = _image_info(path) if _inside(images_dir, path) else "image_path_outside"
                if isinstance(info, str):
                    images[record.image_file] = info
                else:
                    data, width, height = info
                    image_id = hashlib.sha256(data).hexdigest()
                    images[record.image_file] = (image_id, width, height)
                    pairs.write({"pair_id": hashlib.sha1(f"{image_id}|{record.source_id}".encode()).hexdigest(),
                                 "image_id": image_id, "caption": caption or record.image_file, "text_source": "import",
                                 "width": width, "height": height, "image_bytes": data,
                                 "image_url": "file://" + os.path.abspath(path)})
            image = images[record.image_file]
            reason = image if isinstance(image, str) else ("caption_empty" if not caption else None)
            if reason:
                reasons[reason] += 1
                rejected.write(schemas.rejected_row(STAGE, reason, f"{record.source_id}: {record.image_file}",
                                                    image_id=None if isinstance(image, str) else image[0],
                                                    caption=caption or None))
                continue
            captions.write({"caption_id": record.source_id, "image_id": image[0], "caption": caption,
                            "split": record.split})
            counts["kept"] += 1
    stats = {"stage": STAGE, "in": counts["in"], "kept": counts["kept"], "rejected": sum(reasons.values()),
             "rejected_by_reason": dict(reasons),
             "images": sum(1 for v in images.values() if not isinstance(v, str))}
    with open(os.path.join(out_dir, "stats.json"), "w", encoding="utf-8") as handle:
        json.dump(stats, handle, indent=2)
    logger.info("imported %d of %d captions over %d images", stats["kept"], stats["in"], stats["images"])
    return stats
