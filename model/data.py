"""Regions + captions as (caption, image) training examples: streamed, sharded, shuffled, collated.

A dataset entry joins a ``regions`` dataset (one row per image, from ``lait features``) with a
``captions`` dataset (one row per caption) on ``image_id``. Captions are small and are held in
memory; regions are large and are streamed Parquet row group by row group. The row groups holding an
image with a caption are dealt to the consumers (DDP ranks x DataLoader workers) so that their shares
of (caption, image) examples are as even as possible; when there are fewer of them than consumers,
every consumer reads all of them and keeps every n-th image. A shuffle buffer mixes examples.
The order depends only on (seed, epoch, rank, worker), so a resumed run sees the same batches.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import random
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import schemas
from schemas.core import check_not_null
from model.config import DatasetConfig, ModelConfig

logger = logging.getLogger(__name__)

REGION_COLUMNS = ["image_id", "image_width", "image_height", "boxes", "features", "class_ids",
                  "topk_class_ids", "topk_class_probs"]


def resolve_dataset_dir(path: str, name: str) -> str:
    """``path/name`` when that folder exists (a stage or run folder), else ``path/features/regions`` for regions
    when that exists (an import folder whose regions ``lait features --output path/features`` added, as
    docs/train.md shows), else ``path`` itself."""
    if "://" in path:
        return path
    for inner in (os.path.join(path, name),) + ((os.path.join(path, "features", name),) if name == "regions" else ()):
        if os.path.isdir(inner):
            return inner
    return path


def stable_key(text: str) -> int:
    """A 60-bit integer id of a string, equal in every process (Python's hash() is salted)."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:15], 16)


def _file_feature_dim(file: str) -> int | None:
    """One regions file's feature width: from its schema's fixed-size list, else from its first region (None
    when it holds none)."""
    try:
        parquet = pq.ParquetFile(file)
        feature_type = parquet.schema_arrow.field("features").type.value_type
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise ValueError(f"{file}: not a readable regions file ({' '.join(str(exc).split())})") from None
    if pa.types.is_fixed_size_list(feature_type) and feature_type.list_size > 1:
        return feature_type.list_size
    for batch in parquet.iter_batches(batch_size=16, columns=["features"]):
        for row in batch.column(0).to_pylist():
            if row:
                return len(row[0])
    return None


def feature_dims(regions_path: str) -> Iterator[tuple[str, int]]:
    """(file, feature width) of every file of a regions dataset that holds regions: from the footer where the type
    carries the width, else from the file's first region. ``model.train.check_data_fits`` checks each against
    the model before training: a dataset merged from two detectors' runs used to fail mid-stage, under DDP on
    the rank that met the other file only."""
    regions_path = resolve_dataset_dir(regions_path, "regions")
    files = schemas.list_parquet_files(regions_path)
    if not files:
        raise FileNotFoundError(f"no Parquet files under {regions_path}")
    for file in files:
        width = _file_feature_dim(file)
        if width is not None:
            yield file, width


def feature_dim_of(regions_path: str) -> int:
    """Region feature width D, that of the first file holding regions."""
    for _, width in feature_dims(regions_path):
        return width
    raise ValueError(f"{resolve_dataset_dir(regions_path, 'regions')}: no region features to tell the feature "
                     f"width from")


#: The most classes a regions dataset's class ids may imply without a ``classes.json`` (ids 0 to 99,999): a
#: detector's vocabulary is far smaller (Visual Genome's 1,600, LVIS's 1,203, OpenImages' ~600), so a larger id
#: is a stray value, not a class. It sized the object-classification head: one id of 1,000,000 made a 1M-class head
#: (GBs of weights, a crawl of a run), one of 2^31 - 1 failed allocating 550 GB.
MAX_INFERRED_CLASSES = 100_000


def num_classes_of(regions_path: str) -> int:
    """Detector class count: ``classes.json`` next to (or inside) ``regions/``, else max class id + 1.

    Without a ``classes.json``, an id implying more than ``MAX_INFERRED_CLASSES`` classes is a ``ValueError``
    naming the file, the column and the id, which asks for a ``classes.json``."""
    regions_path = resolve_dataset_dir(regions_path, "regions")
    if "://" not in regions_path:
        for candidate in (os.path.join(os.path.dirname(os.path.abspath(regions_path)), "classes.json"),
                          os.path.join(regions_path, "classes.json")):
            if os.path.exists(candidate):
                return _classes_json_count(candidate)
    top, where = -1, None
    columns = ["class_ids", "topk_class_ids"]
    for fragment in schemas.open_dataset(regions_path, "regions").get_fragments():
        for batch in fragment.to_batches(columns=columns):
            for name, column in zip(columns, batch.columns):
                flat = pc.list_flatten(column)
                while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
                    flat = pc.list_flatten(flat)
                if len(flat):
                    highest = pc.max(flat).as_py()  # 0 is a class id (a one-class detector's), not "none"
                    if highest is not None and highest > top:
                        top, where = highest, (fragment.path, name)
    if top < 0:
        raise ValueError(f"{regions_path}: no class ids and no classes.json to tell the class count from")
    if top >= MAX_INFERRED_CLASSES:
        raise ValueError(f"{where[0]}: {where[1]} holds class id {top}, which would make {top + 1:,} detector "
                         f"classes (more than the {MAX_INFERRED_CLASSES:,} inferred without a classes.json): a stray "
                         f"id? Give the detector's class list as classes.json next to the regions folder (a list of "
                         f"names, or {{\"num_classes\": N}})")
    return top + 1


def _classes_json_count(path: str) -> int:
    """The class count a ``classes.json`` gives: a list of names, ``{"classes": [...]}`` (or ``names``), or
    ``{"num_classes": N}``; a ``ValueError`` naming the file for anything else (a number, a string, no list)."""
    try:
        with open(path, encoding="utf-8") as handle:
            classes = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable classes.json ({' '.join(str(exc).split())})") from None
    if isinstance(classes, dict):
        count = classes.get("num_classes")
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{path}: num_classes {count!r} is not a whole number >= 1")
            return count
        classes = classes.get("classes", classes.get("names"))
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: expected a list of class names, {{\"classes\": [...]}} or {{\"num_classes\": N}}, "
                         f"got {json.dumps(classes)[:60]}")
    return len(classes)


def read_captions(path: str, split: str | None) -> pa.Table:
    """The rows of one split (all splits when ``split`` is None) of a captions dataset, as read and checked for
    ``load_captions``: a null id (a dataset written by another tool: lait's writers cannot write one) is a one-line
    ``SchemaMismatchError``, and so is text that is not valid UTF-8 (``check_utf8``)."""
    path = resolve_dataset_dir(path, "captions")
    table = schemas.read_table(path, "captions", columns=["caption_id", "image_id", "caption", "split"])
    check_not_null(table, "captions", path)
    check_utf8(table, path, "captions")
    if split is not None:
        table = table.filter(pc.equal(table.column("split"), split))
    return table


def check_utf8(table: pa.Table, where: str, kind: str) -> None:
    """A ``SchemaMismatchError`` naming the file (of the ``kind`` dataset at ``where``, which ``table`` was read
    from) and the column of the first text that is not valid UTF-8, else nothing.

    Arrow does not check UTF-8 on read: such text (from a writer that does not check it either) failed later, in
    Python, as a bare "'utf-8' codec can't decode byte" naming neither. Training data is curated, so it is refused
    rather than skipped (the filter stage rejects such rows as ``invalid_utf8``). Checking is a pass over the
    text buffers; the files are read again one by one only to name the one at fault.
    """
    for name in table.column_names:
        column_type = table.schema.field(name).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            continue
        try:
            table.column(name).validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        source = where
        for fragment in schemas.open_dataset(where, kind).get_fragments():
            try:
                fragment.to_table(columns=[name]).column(name).validate(full=True)
            except pa.ArrowInvalid:
                source = fragment.path
                break
        raise schemas.SchemaMismatchError(f"{source}: column {name!r} holds text that is not valid UTF-8", name)


def caption_splits(path: str) -> dict[str | None, int]:
    """How many captions each split of a captions dataset holds (None: rows without a split), reading that column
    only: what a stage whose split filter left no caption names."""
    path = resolve_dataset_dir(path, "captions")
    counts = schemas.read_table(path, "captions", columns=["split"]).column("split").value_counts().to_pylist()
    return {item["values"]: int(item["counts"]) for item in counts}


def empty_split(entry: DatasetConfig) -> str | None:
    """Why a dataset entry leaves no caption to train on: its split filter leaves it none (``no captions in split
    'train' of PATH (it holds 240 in split 'val'; split: null takes all)``), or every caption it leaves is blank
    (``split 'train' of PATH holds only blank captions (12, empty or white space)``); None when some are left."""
    counts = caption_splits(entry.captions)
    held = sum(counts.values()) if entry.split is None else counts.get(entry.split, 0)
    if held:
        if load_captions(entry.captions, entry.split):  # (read again only for such an entry)
            return None
        where = entry.captions if entry.split is None else f"split {entry.split!r} of {entry.captions}"
        return f"{where} holds only blank captions ({held}, empty or white space)"
    total = sum(counts.values())
    if not total:
        return f"no captions in {entry.captions}"
    shown = ", ".join(f"{count} in split {split!r}" if split is not None else f"{count} without a split"
                      for split, count in sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))
    return f"no captions in split {entry.split!r} of {entry.captions} (it holds {shown}; `split: null` takes all)"


def first_caption_rows(table: pa.Table) -> tuple[pa.Table, int]:
    """The rows of a ``read_captions`` table that first hold their ``caption_id`` (in its row order), and how many
    rows were left out as repeats: a caption stored twice is trained on and evaluated once, as an image stored twice
    in a regions dataset is (``repeated_image_rows``); read whole, it was trained on and scored twice."""
    ids = table.column("caption_id").to_pylist()
    if len(set(ids)) == len(ids):
        return table, 0
    seen: set[str] = set()
    keep = []
    for caption_id in ids:
        keep.append(caption_id not in seen)
        seen.add(caption_id)
    return table.filter(pa.array(keep, pa.bool_())), len(ids) - len(seen)


def blank_caption(text: str | None) -> bool:
    """Whether a caption has nothing to read: empty, null, or only white space (Unicode Z*), control and format
    characters (Cc, Cf: a byte-order mark, zero-width spaces, right-to-left marks), private-use or unassigned code
    points (Co, Cn) and surrogates. BERT's normaliser drops all of these (or reads them as a space), so such a
    caption was trained on, and scored, as [CLS] [SEP] alone, while ``str.strip`` found it not blank."""
    return not text or all(unicodedata.category(char)[0] in "CZ" for char in text)


def captions_by_image(table: pa.Table) -> dict[str, list[tuple[str, str]]]:
    """image_id -> [(caption_id, caption)] of a ``read_captions`` table, in its row order; blank captions
    (``blank_caption``) are left out."""
    captions: dict[str, list[tuple[str, str]]] = {}
    for caption_id, image_id, caption in zip(*(table.column(c).to_pylist() for c in ("caption_id", "image_id", "caption"))):
        if not blank_caption(caption):
            captions.setdefault(image_id, []).append((caption_id, caption))
    return captions


def load_captions(path: str, split: str | None) -> dict[str, list[tuple[str, str]]]:
    """image_id -> [(caption_id, caption)] of one split (all splits when ``split`` is None). A null id (a dataset
    written by another tool: lait's writers cannot write one) is a one-line ``SchemaMismatchError``."""
    return captions_by_image(first_caption_rows(read_captions(path, split))[0])


def region_image_ids(path: str) -> list[str]:
    """Every image_id of a regions dataset, reading that column only; a null id, or one that is not valid UTF-8, is
    a one-line ``SchemaMismatchError`` naming the file (``check_region_ids``), as ``lait eval`` refuses it. The
    files' row groups are screened for null boxes and feature vectors too (``check_region_vectors``), which
    ``EvalSet`` could not read."""
    path = resolve_dataset_dir(path, "regions")
    table = schemas.read_table(path, "regions", columns=["image_id"])
    check_region_ids(table, path)
    if "://" not in path:
        for file in schemas.list_parquet_files(path):
            parquet = pq.ParquetFile(file)
            check_region_vectors(parquet, file, range(parquet.num_row_groups))
    return table.column("image_id").to_pylist()


def check_region_ids(table: pa.Table, where: str) -> None:
    """A ``SchemaMismatchError`` naming the file of a regions dataset (at ``where``, which ``table``, holding its
    ``image_id`` column, was read from) whose ids hold a null (``schemas.core.check_not_null``) or text that is
    not valid UTF-8 (``check_utf8``), else nothing. A null id (a file written by another tool, whose column is
    nullable) was miscounted as a repeated image, or left the image out of eval silently."""
    if table.column("image_id").null_count:
        source = where
        for fragment in schemas.open_dataset(where, "regions").get_fragments():
            if fragment.to_table(columns=["image_id"]).column("image_id").null_count:
                source = fragment.path
                break
        check_not_null(table, "regions", source)
    check_utf8(table, where, "regions")


#: The regions columns whose entries, one per region, are fixed-size lists: Arrow cannot read such a column whose
#: entry is null (a file written by another tool: the contract's inner lists are nullable), failing with "Expected
#: all lists to be of size=16 but index 1 had size=0", which named neither the file nor the column.
VECTOR_COLUMNS = ("boxes", "features")


def check_region_vectors(parquet: pq.ParquetFile, file: str, groups: Iterable[int]) -> None:
    """A ``ValueError`` naming the file, column and image (``_null_vector``) when a row group of ``groups`` holds a
    region whose box or feature vector is null, found before training rather than as the stage reads it.

    Screened from the footer: a null vector is a null value of its column's leaves, as an empty row is, so a row
    group whose ``boxes`` or ``features`` leaves count more nulls than its ``class_ids`` (one per empty row, and
    per null class id) is read to tell. Without statistics nothing is screened; the read then names it."""
    metadata = parquet.metadata
    for group in groups:
        counts = {}
        meta = metadata.row_group(group)
        for index in range(meta.num_columns):
            column = meta.column(index)
            name = column.path_in_schema.split(".")[0]
            if name in VECTOR_COLUMNS + ("class_ids",) and column.statistics is not None \
                    and column.statistics.has_null_count:
                counts[name] = column.statistics.null_count
        if "class_ids" not in counts:
            continue
        for name in VECTOR_COLUMNS:
            if counts.get(name, 0) > counts["class_ids"]:
                try:
                    parquet.read_row_group(group, columns=[name])
                except pa.ArrowInvalid as exc:
                    raise _null_vector(parquet, file, group, [name], exc) from None


def read_region_rows(file: str, group: int, columns: list[str]) -> pa.Table:
    """One row group of a regions file; a ``ValueError`` naming the file, column and image when a region's box or
    feature vector is null (``_null_vector``), rather than Arrow's error naming neither."""
    parquet = pq.ParquetFile(file)
    try:
        return parquet.read_row_group(group, columns=columns)
    except pa.ArrowInvalid as exc:
        raise _null_vector(parquet, file, group, columns, exc) from None


def _null_vector(parquet: pq.ParquetFile, file: str, group: int, columns: list[str], exc: Exception) -> ValueError:
    """The error for a row group that Arrow could not read: the first of ``columns`` that fails, and the image of
    the row at fault (read one row at a time, only now); the file and Arrow's message when no column alone fails."""
    message = " ".join(str(exc).split())
    for name in columns:
        try:
            parquet.read_row_group(group, columns=[name])
            continue
        except pa.ArrowInvalid:
            pass
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=1, row_groups=[group], columns=[name]):
                row += batch.num_rows
        except pa.ArrowInvalid:
            pass
        ids = parquet.read_row_group(group, columns=["image_id"]).column(0)
        where = f"image {ids[row].as_py()}" if row < len(ids) else f"row group {group}"
        return ValueError(f"{file}: {where}: column {name!r} holds a null entry, a region without its "
                          f"{'box' if name == 'boxes' else 'feature vector'}: each region needs one")
    return ValueError(f"{file}: row group {group} is not readable ({message})")


def dataset_report(datasets: list[DatasetConfig]) -> dict:
    """How the join went: pairs usable for training, captions without regions, images without captions, regions
    rows that repeat an image of their dataset (``PairStream`` reads each image once, its first row), blank
    captions, and caption rows that repeat a caption_id of their split (each caption is trained on once, its first
    row: ``first_caption_rows``).
    Counted by ``index_pairs``, the join ``PairStream`` trains on."""
    return index_pairs(datasets, with_captions=False).report


def location_vectors(boxes: np.ndarray, width: float | None, height: float | None) -> np.ndarray:
    """The paper's 5-d location: (x1/W, y1/H, x2/W, y2/H, box area / image area), the corners clipped to the image
    ([0, 1]) and the area that of the clipped box.

    Computed in float64: in float32 a box of finite corners as wide as 4e38 (a detector's garbage) overflowed its
    width to inf, and inf x 0 made a NaN location, which stopped training (``gradient norm is nan``) and made
    eval's scores NaN. The area is the clipped box's: a box wholly outside the image had an area of its own."""
    if len(boxes) == 0:
        return np.zeros((0, 5), np.float32)
    boxes = boxes.astype(np.float64)
    # Missing image size: the boxes' extent stands in for it rather than failing the image.
    width = float(width) if width and width > 0 else max(float(boxes[:, 2].max()), 1.0)
    height = float(height) if height and height > 0 else max(float(boxes[:, 3].max()), 1.0)
    scaled = (boxes / np.array([width, height, width, height])).clip(0.0, 1.0)
    area = (scaled[:, 2] - scaled[:, 0]).clip(0) * (scaled[:, 3] - scaled[:, 1]).clip(0)
    return np.concatenate([scaled, area[:, None]], 1).astype(np.float32)


def _flat_values(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets and the fully flattened numeric values of a list<...> column."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = column.offsets.to_numpy()
    values = column.values
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    return offsets, values.to_numpy(zero_copy_only=False)


@dataclass
class ImageRegions:
    """One image's regions, as arrays (features stay float16 until collation)."""

    image_id: str
    features: np.ndarray  # [n, D] float16
    locations: np.ndarray  # [n, 5] float32
    class_ids: np.ndarray  # [n] int64
    topk_ids: np.ndarray  # [n, k] int64
    topk_probs: np.ndarray  # [n, k] float32


def decode_regions(table: pa.Table, max_regions: int, feature_dim: int, source: str = "regions") -> list[ImageRegions]:
    """Rows of a regions table as ``ImageRegions``, keeping the first ``max_regions`` boxes (the detector's order).

    ``ValueError`` naming ``source`` when the features are not ``feature_dim`` wide (another detector's
    regions): reshaped anyway, each region would read pieces of its neighbours' features."""
    check_feature_width(table.column("features"), feature_dim, source)
    ids = table.column("image_id").to_pylist()
    widths = table.column("image_width").to_pylist()
    heights = table.column("image_height").to_pylist()
    box_off, box_val = _flat_values(table.column("boxes"))
    feat_off, feat_val = _flat_values(table.column("features"))
    cls_off, cls_val = _flat_values(table.column("class_ids"))
    tk_off, tk_val = _flat_values(table.column("topk_class_ids"))
    tp_off, tp_val = _flat_values(table.column("topk_class_probs"))
    # Inner lists of top-k values: per region k values; the region offsets index region rows.
    tk_inner = _inner_offsets(table.column("topk_class_ids"))
    tp_inner = _inner_offsets(table.column("topk_class_probs"))
    _check_region_lists(ids, feat_off, box_off, cls_off, tk_off, tp_off, tk_inner, tp_inner, source)
    boxes_all = _finite(box_val.reshape(-1, 4).astype(np.float32), "boxes")
    feats_all = _finite(feat_val.reshape(-1, feature_dim), "features")
    tp_val = _non_negative(_finite(tp_val, "topk_class_probs"), "topk_class_probs")
    out = []
    for row, image_id in enumerate(ids):
        start, stop = int(feat_off[row]), int(feat_off[row + 1])
        n = min(stop - start, max_regions)
        boxes = boxes_all[int(box_off[row]): int(box_off[row]) + n]
        classes = cls_val[int(cls_off[row]): int(cls_off[row]) + n].astype(np.int64)
        k_start = int(tk_off[row])
        if tk_inner is not None and int(tk_off[row + 1]) > k_start:
            first, first_prob = int(tk_inner[k_start]), int(tp_inner[int(tp_off[row])])
            k = int(tk_inner[k_start + 1]) - first
            topk_ids = tk_val[first: first + n * k].reshape(n, k).astype(np.int64)
            topk_probs = tp_val[first_prob: first_prob + n * k].reshape(n, k).astype(np.float32)
        else:  # no distribution stored: the top class with probability 1
            topk_ids, topk_probs = classes[:, None], np.ones((n, 1), np.float32)
        out.append(ImageRegions(image_id, feats_all[start: start + n], location_vectors(boxes, widths[row], heights[row]),
                                classes, topk_ids, topk_probs))
    return out


def _check_region_lists(ids: list, feat_off, box_off, cls_off, tk_off, tp_off, tk_inner, tp_inner, source: str) -> None:
    """``ValueError`` naming the file and image when a row's lists do not hold one entry per region (each list is
    read at its own offsets, but as many entries as the row has features: a shorter one would lend a neighbour's
    boxes or classes), or when its top-k ids and probabilities disagree in length."""
    regions = np.diff(feat_off)
    lengths = {"boxes": np.diff(box_off), "class_ids": np.diff(cls_off), "topk_class_ids": np.diff(tk_off),
               "topk_class_probs": np.diff(tp_off)}
    for name, count in lengths.items():
        optional = name.startswith("topk")  # empty: no class distribution stored
        bad = np.flatnonzero((count != regions) & ~((count == 0) if optional else False))
        if bad.size:
            row = int(bad[0])
            raise ValueError(f"{source}: image {ids[row]}: {int(count[row])} {name} for {int(regions[row])} regions "
                             f"(features); each list of a regions row holds one entry per region")
    if tk_inner is None or tp_inner is None:
        if tk_inner is not None or tp_inner is not None:
            raise ValueError(f"{source}: topk_class_ids and topk_class_probs hold different numbers of regions")
        return
    k_ids = np.diff(tk_inner)[int(tk_off[0]): int(tk_off[-1])]  # the k of each region the rows hold
    k_probs = np.diff(tp_inner)[int(tp_off[0]): int(tp_off[-1])]
    row_of = np.repeat(np.arange(len(ids)), lengths["topk_class_ids"])
    row_of_probs = np.repeat(np.arange(len(ids)), lengths["topk_class_probs"])
    if len(k_ids) != len(k_probs) or (row_of != row_of_probs).any():
        raise ValueError(f"{source}: topk_class_ids and topk_class_probs hold different numbers of regions")
    # One k per row (read as an [n, k] block), the same for ids and probabilities.
    bad = np.flatnonzero((k_ids != k_probs) | np.concatenate([[False], (k_ids[1:] != k_ids[:-1]) & (row_of[1:] == row_of[:-1])]))
    if bad.size:
        raise ValueError(f"{source}: image {ids[int(row_of[bad[0]])]}: its regions' top-k class ids and "
                         f"probabilities are not one k long each")


def check_feature_width(column, feature_dim: int, source: str) -> None:
    """``ValueError`` unless every region's feature in a ``features`` column (list<list<...>>) has
    ``feature_dim`` values."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    per_box = column.flatten()
    if not len(per_box):
        return
    if pa.types.is_fixed_size_list(per_box.type):
        widths = {per_box.type.list_size}
    else:
        widths = set(np.unique(np.diff(per_box.offsets.to_numpy())).tolist())
    if widths != {feature_dim}:
        shown = " to ".join(str(w) for w in sorted(widths)[:: max(1, len(widths) - 1)])
        raise ValueError(f"{source}: features of width {shown}, the model reads {feature_dim}")


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` with NaN and +-inf set to 0: one bad detector output must not turn every loss into NaN."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    logger.warning("regions: %d non-finite %s values set to 0", int(bad.sum()), name)
    values = values.copy()
    values[bad] = 0
    return values


def _non_negative(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` with negative ones set to 0: a negative probability (a detector's rounding, or garbage) made the KL
    target's logarithm NaN, reported as a diverged run whose lr was to blame."""
    bad = values < 0
    if not bad.any():
        return values
    logger.warning("regions: %d negative %s values set to 0", int(bad.sum()), name)
    values = values.copy()
    values[bad] = 0
    return values


def _inner_offsets(column) -> np.ndarray | None:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    inner = column.values
    return inner.offsets.to_numpy() if pa.types.is_list(inner.type) and len(inner) else None


def deal_evenly(counts: list[int], consumers: int) -> list[int]:
    """The consumer of each unit, dealt in order to the consumer with the fewest examples so far (ties: the lowest
    index): no two consumers' shares differ by more than the largest unit. Units of one size are dealt in turn."""
    totals = [(0, consumer) for consumer in range(consumers)]  # sorted: a heap already
    owners = []
    for count in counts:
        total, consumer = heapq.heappop(totals)
        owners.append(consumer)
        heapq.heappush(totals, (total + count, consumer))
    return owners


def deal_in_turn(counts: list[int], consumers: int) -> list[int]:
    """The consumer of each unit, dealt in turn whatever its size (the dealing of checkpoints that recorded
    ``row_groups: captioned``, kept for their resume): a consumer dealt small units restarted its epoch sooner, so
    their images were seen more often."""
    return [index % consumers for index in range(len(counts))]


#: How a shuffled epoch's units are dealt to the consumers, by the name a checkpoint records as ``data.row_groups``.
DEALINGS = {"balanced": deal_evenly, "captioned": deal_in_turn}
#: The dealing of new runs.
DEALING = "balanced"


@dataclass(frozen=True)
class UnitPairs:
    """The images of one unit (row group) to train on: their rows, and where their captions lie in the stream's
    caption arrays (those of ``rows[j]`` from ``bounds[j]`` to ``bounds[j + 1]``)."""

    rows: np.ndarray  # [images] int64
    bounds: np.ndarray  # [images + 1] int64

    @property
    def examples(self) -> int:
        """The unit's (caption, image) examples an epoch."""
        return int(self.bounds[-1] - self.bounds[0])


@dataclass(frozen=True)
class PairIndex:
    """The (caption, image) join of a stage's datasets, found in one pass over their captions and the ``image_id``
    column of their regions (``index_pairs``): what ``PairStream`` trains on, and ``report``, its counts
    (``dataset_report``). Made by ``model.train``'s up-front check of a stage and handed to the stage's stream, so
    that it need not read the same data again as the stage starts."""

    datasets: list[DatasetConfig]
    units: list[tuple[int, str, int]]  # (dataset index, file, row group), in a stable order
    pairs: dict[tuple[int, str, int], UnitPairs]
    caption_ids: pa.Array | None  # of the images to train on, in the units' order; None: indexed for the report
    caption_texts: pa.Array | None
    report: dict
    empty: tuple[int, ...] = ()  # the datasets (by index) none of whose captions is left (their split has none)


def index_pairs(datasets: list[DatasetConfig], with_captions: bool = True) -> PairIndex:
    """Each unit's (row group's) images to train on, their caption ids and captions (kept only ``with_captions``),
    and the join's counts, in one pass: each dataset's captions, then its regions files, each file's schema checked
    against the regions contract and its ``image_id`` column read row group by row group.

    An image is trained on with the first row of its dataset that holds it (a regions dataset storing an image
    twice trains on it once), when it has a caption; a caption with the first row of its split that holds its
    caption_id. Found in the units' fixed order, so every consumer reads the
    same rows (and a resumed run too). A unit whose images have no caption has no example and is dealt to no
    consumer: one dealt only such units had nothing to yield."""
    units: list[tuple[int, str, int]] = []
    pairs: dict[tuple[int, str, int], UnitPairs] = {}
    caption_ids: list[str] = []
    caption_texts: list[str] = []
    examples = 0  # the examples so far (len(caption_ids) when they are kept)
    report = {"pairs": 0, "images": 0, "captions_without_regions": 0, "images_without_captions": 0,
              "repeated_image_rows": 0, "blank_captions": 0, "repeated_caption_rows": 0}
    empty = []
    for index, entry in enumerate(datasets):
        table, repeated = first_caption_rows(read_captions(entry.captions, entry.split))
        report["repeated_caption_rows"] += repeated  # caption rows that repeat a caption_id: left out, counted
        captions = captions_by_image(table)
        report["blank_captions"] += table.num_rows - sum(map(len, captions.values()))  # left out, counted
        del table
        if not captions:
            empty.append(index)
        seen: set[str] = set()
        rows_read = 0
        for file in schemas.list_parquet_files(resolve_dataset_dir(entry.regions, "regions")):
            parquet = _regions_file(file)
            for group in range(parquet.num_row_groups):
                unit = (index, file, group)
                units.append(unit)
                ids = parquet.read_row_group(group, columns=["image_id"])
                # Refused as `lait eval` refuses it: an id that is not UTF-8 failed here as a bare codec error
                # naming neither file nor column; null ids were counted as repeats of one image.
                check_not_null(ids, "regions", file)
                check_utf8(ids, file, "regions")
                image_ids = ids.column(0).to_pylist()
                rows_read += len(image_ids)
                rows, bounds = [], [examples]
                for row, image_id in enumerate(image_ids):
                    if image_id in seen:
                        continue
                    seen.add(image_id)
                    if image_id in captions:
                        rows.append(row)
                        for caption_id, caption in captions[image_id]:
                            if with_captions:
                                caption_ids.append(caption_id)
                                caption_texts.append(caption)
                            examples += 1
                        bounds.append(examples)
                if rows:  # a row group the stream reads
                    check_region_vectors(parquet, file, [group])
                pairs[unit] = UnitPairs(np.array(rows, np.int64), np.array(bounds, np.int64))
                report["images"] += len(rows)
        report["captions_without_regions"] += sum(len(v) for k, v in captions.items() if k not in seen)
        report["images_without_captions"] += sum(1 for image_id in seen if image_id not in captions)
        report["repeated_image_rows"] += rows_read - len(seen)
    report["pairs"] = examples
    kept = (pa.array(caption_ids, pa.large_string()), pa.array(caption_texts, pa.large_string())) \
        if with_captions else (None, None)
    return PairIndex(list(datasets), units, pairs, *kept, report, tuple(empty))


def _regions_file(file: str) -> pq.ParquetFile:
    """A regions file, opened, its schema checked against the regions contract (as ``schemas.open_dataset`` checks
    it, with the same errors)."""
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise schemas.SchemaMismatchError(f"{file}: not a readable Parquet file ({exc})") from exc
    schemas.validate_schema(parquet.schema_arrow, "regions", where=file)
    return parquet


class PairStream(IterableDataset):
    """(caption, image regions) examples of one or more datasets, sharded over ranks and workers.

    The captions are read once (``index_pairs``: here, or by the stage's up-front check, which hands its
    ``PairIndex`` on), and those of the images to train on kept in two Arrow arrays in the units' order, which the
    DataLoader workers get with the stream: each worker used to read the captions again into a dict of Python
    strings of its own, whose refcounts would also make forked workers copy shared pages.
    """

    def __init__(self, datasets: list[DatasetConfig], tokenizer_json: str, model_config: ModelConfig,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 2048,
                 infinite: bool = True, shuffle: bool = True, dealing: str = DEALING, index: PairIndex | None = None):
        """``ValueError`` when no image of the datasets has a caption (checked here, not in a worker).

        ``dealing``: a name of ``DEALINGS`` (another than ``DEALING`` to resume a checkpoint of that dealing).
        ``index``: the join of these datasets, already found (``index_pairs``); found here when None."""
        if dealing not in DEALINGS:
            raise ValueError(f"dealing {dealing!r}: not one of {', '.join(DEALINGS)}")
        if index is not None and (index.datasets != list(datasets) or index.caption_ids is None):
            raise ValueError("PairStream: the index given is not one of these datasets with their captions")
        self.datasets = datasets
        self.tokenizer_json = tokenizer_json
        self.model_config = model_config
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer, self.infinite, self.shuffle, self.dealing = shuffle_buffer, infinite, shuffle, dealing
        # Here, once (unless the index was handed on): the DataLoader workers get them with the stream.
        index = index if index is not None else index_pairs(datasets)
        self.units, self.pairs = index.units, index.pairs
        self.caption_ids, self.caption_texts = index.caption_ids, index.caption_texts
        if not any(pairs.examples for pairs in self.pairs.values()):
            raise ValueError(f"no image of {', '.join(entry.regions for entry in datasets)} has a caption in "
                             f"{', '.join(f'{entry.captions} (split {entry.split!r})' for entry in datasets)}: "
                             f"no (caption, image) pair to train on")

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    @property
    def uncaptioned_units(self) -> int:
        """Row groups left out of the dealing: none of their images has a caption."""
        return sum(1 for pairs in self.pairs.values() if not pairs.examples)

    def share(self, epoch: int, consumer: int, consumers: int) -> tuple[list[tuple[int, str, int]], bool]:
        """One consumer's units of an epoch, in reading order, and whether they are every consumer's (fewer units
        with a captioned image than consumers: each consumer then keeps every n-th captioned image)."""
        order = list(self.units)
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
        # Dropped after the shuffle, so data whose every row group has a captioned image keeps its order.
        order = [unit for unit in order if self.pairs[unit].examples]
        if len(order) < consumers:
            return order, True
        owners = DEALINGS[self.dealing]([self.pairs[unit].examples for unit in order], consumers)
        return [unit for unit, owner in zip(order, owners) if owner == consumer], False

    def _examples(self, epoch: int, consumer: int, consumers: int, tokenizer) -> Iterator[dict]:
        mine, stride = self.share(epoch, consumer, consumers)
        image_index = 0
        for unit in mine:
            _, file, group = unit
            pairs = self.pairs[unit]
            keep = [j for j in range(len(pairs.rows)) if not stride or (image_index + j) % consumers == consumer]
            image_index += len(pairs.rows)
            if not keep:
                continue
            table = read_region_rows(file, group, REGION_COLUMNS)
            images = decode_regions(table.take(pairs.rows[keep]), self.model_config.max_regions,
                                    self.model_config.feature_dim, file)
            self._check_class_ids(images, file)
            first = int(pairs.bounds[0])
            caption_ids = self.caption_ids.slice(first, pairs.examples).to_pylist()
            caption_texts = self.caption_texts.slice(first, pairs.examples).to_pylist()
            for j, image in zip(keep, images):
                for k in range(int(pairs.bounds[j]) - first, int(pairs.bounds[j + 1]) - first):
                    encoding = tokenizer.encode(caption_texts[k])
                    yield {"image": image, "caption_id": caption_ids[k], "input_ids": encoding.ids,
                           "special_mask": encoding.special_tokens_mask}

    def _check_class_ids(self, images: list[ImageRegions], file: str) -> None:
        """Warn (once) about class ids the model has no class for: object classification skips those regions
        (a ``classes.json`` listing fewer classes than the detector wrote, or a negative ``class_ids`` entry, a
        detector's "no class"; negative top-k ids are padding, which the KL target drops anyway)."""
        if getattr(self, "_warned_classes", False) or self.model_config.num_classes is None:
            return
        top = max((int(ids.max()) for im in images for ids in (im.class_ids, im.topk_ids) if ids.size), default=-1)
        low = min((int(im.class_ids.min()) for im in images if im.class_ids.size), default=0)
        classes = self.model_config.num_classes
        whys = ([f"class ids up to {top}, but the model classifies {classes} classes (does classes.json list fewer "
                 f"than the detector wrote?)"] if top >= classes else []) \
            + ([f"class ids down to {low}, below the first class 0 (a detector's 'no class'?)"] if low < 0 else [])
        if whys:
            self._warned_classes = True
            logger.warning("%s: %s: masked object classification skips those regions", file, "; ".join(whys))

    def __iter__(self) -> Iterator[dict]:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        tokenizer.enable_truncation(self.model_config.max_text_len)
        tokenizer.no_padding()
        consumer, consumers = self._consumer()
        epoch = 0
        while True:
            rng = random.Random(f"{self.seed}/{epoch}/{consumer}")
            produced = 0
            examples = self._examples(epoch, consumer, consumers, tokenizer)
            for example in (_shuffled(examples, self.shuffle_buffer, rng) if self.shuffle else examples):
                produced += 1
                yield example
            if produced == 0:
                # Fewer captioned images than consumers (``model.train`` refuses that before a stage): every
                # epoch of this consumer would be as empty, so it yields nothing and the others go on.
                logger.warning("data consumer %d of %d has no (caption, image) pair: more consumers (ranks x "
                               "workers) than images with captions", consumer, consumers)
                return
            epoch += 1
            if not self.infinite:
                return


def _shuffled(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer: holds ``size`` items and emits a random one as each new one arrives.

    When the whole epoch fits in the buffer it is sorted by caption id before the shuffle, so the
    order depends on the seed alone, not on the row order of the files (which follows the crawl).
    """
    buffer: list[dict] = []
    emitted = False
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        emitted = True
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    if not emitted:
        buffer.sort(key=lambda example: (example["caption_id"], example["image"].image_id))
    rng.shuffle(buffer)
    yield from buffer


def collate_regions(images: list[ImageRegions], pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of images' regions into batch tensors (region_mask marks the real ones)."""
    size = len(images)
    length = pad_to if pad_to is not None else max([len(im.features) for im in images] + [0])
    dim = images[0].features.shape[1] if images else 0
    k = max([im.topk_ids.shape[1] for im in images if len(im.topk_ids)] + [1])
    features = np.zeros((size, length, dim), np.float16)  # half the bytes to copy; widened on the device
    locations = np.zeros((size, length, 5), np.float32)
    mask = np.zeros((size, length), bool)
    classes = np.full((size, length), -100, np.int64)
    topk_ids = np.full((size, length, k), -1, np.int64)
    topk_probs = np.zeros((size, length, k), np.float32)
    for i, im in enumerate(images):
        n = min(len(im.features), length)
        features[i, :n] = im.features[:n]
        locations[i, :n] = im.locations[:n]
        mask[i, :n] = True
        classes[i, :n] = im.class_ids[:n]
        topk_ids[i, :n, : im.topk_ids.shape[1]] = im.topk_ids[:n]
        topk_probs[i, :n, : im.topk_probs.shape[1]] = im.topk_probs[:n]
    return {
        "region_features": torch.from_numpy(features),
        "region_locations": torch.from_numpy(locations),
        "region_mask": torch.from_numpy(mask),
        "region_classes": torch.from_numpy(classes),
        "region_topk_ids": torch.from_numpy(topk_ids),
        "region_topk_probs": torch.from_numpy(topk_probs),
        "image_keys": torch.tensor([stable_key(im.image_id) for im in images], dtype=torch.long),
    }


def collate_text(token_ids: list[list[int]], special_masks: list[list[int]], pad_id: int = 0,
                 pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad token id lists into ``input_ids``, ``text_mask`` and ``special_mask``."""
    length = pad_to if pad_to is not None else max(len(ids) for ids in token_ids)
    ids = torch.full((len(token_ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), length), dtype=torch.bool)
    special = torch.zeros((len(token_ids), length), dtype=torch.bool)
    for i, (row, spec) in enumerate(zip(token_ids, special_masks)):
        n = min(len(row), length)
        ids[i, :n] = torch.tensor(row[:n])
        mask[i, :n] = True
        special[i, :n] = torch.tensor(spec[:n], dtype=torch.bool)
    return {"input_ids": ids, "text_mask": mask, "special_mask": special}


class Collate:
    """Batch examples of ``PairStream`` (picklable, so DataLoader workers can run it).

    Given a ``(ceilings, examples)`` batch of ``LengthBuckets``, a fixed-shape collate (``text_len`` and
    ``regions_len`` set) pads to the bucket's ceilings instead of the maxima.
    """

    def __init__(self, pad_id: int = 0, text_len: int | None = None, regions_len: int | None = None):
        self.pad_id, self.text_len, self.regions_len = pad_id, text_len, regions_len

    def __call__(self, examples: list[dict] | tuple[tuple[int, int], list[dict]]) -> dict:
        text_len, regions_len = self.text_len, self.regions_len
        if isinstance(examples, tuple):
            ceilings, examples = examples
            if text_len is not None:
                text_len, regions_len = ceilings
        batch = collate_text([e["input_ids"] for e in examples], [e["special_mask"] for e in examples],
                             self.pad_id, text_len)
        batch.update(collate_regions([e["image"] for e in examples], regions_len))
        batch["caption_keys"] = torch.tensor([stable_key(e["caption_id"]) for e in examples], dtype=torch.long)
        return batch


def bucket_ceilings(limit: int, count: int) -> list[int]:
    """``count`` evenly spaced ceilings up to ``limit`` (``limit`` 100 in 4: 25, 50, 75, 100)."""
    return sorted({max(1, -(-limit * (index + 1) // count)) for index in range(count)})


class LengthBuckets(IterableDataset):
    """Batches of ``PairStream`` examples of about one caption length and region count.

    Each example goes to the bucket of the smallest (text, regions) ceilings it fits; a bucket that holds
    ``batch_size`` examples leaves as one batch, ``((text ceiling, region ceiling), examples)``. A batch
    then pads to its bucket's ceilings (fixed shapes: a compiled step sees one shape per bucket) or to its
    own longest member, instead of the longest of a random batch.

    A rare bucket would wait for epochs and then hold copies of one example (no negatives among them).
    So when an example comes round again while its earlier copy still waits, the copy is set aside and its
    bucket is due: as soon as enough examples wait, it leaves filled up with examples of other buckets,
    first those that fit its ceilings, then those that raise them least. The batch pads to the largest
    ceilings among them, still one of the bucket shapes; the copies set aside join their buckets again.
    Only when a batch's worth of copies piles up (a stream of about a batch of examples) does a batch take
    copies, as random batches of such a stream would. A finite stream ends with the partly filled buckets,
    smallest first. The order depends only on the stream's, so a resumed run sees the same batches.
    """

    def __init__(self, stream: PairStream, batch_size: int, text_ceilings: list[int], region_ceilings: list[int]):
        self.stream, self.batch_size = stream, batch_size
        self.text_ceilings, self.region_ceilings = text_ceilings, region_ceilings

    def __iter__(self) -> Iterator[tuple[tuple[int, int], list[dict]]]:
        buckets = _Buckets(self.batch_size, self.text_ceilings, self.region_ceilings)
        for example in self.stream:
            yield from buckets.add(example)
        yield from buckets.leftovers()


class _Buckets:
    """The waiting examples of ``LengthBuckets`` (one pass over a stream)."""

    def __init__(self, batch_size: int, text_ceilings: list[int], region_ceilings: list[int]):
        self.batch_size, self.text_ceilings, self.region_ceilings = batch_size, text_ceilings, region_ceilings
        self.buckets: dict[tuple[int, int], list[dict]] = {}
        self.ids: dict[tuple[int, int], set[tuple[str, str]]] = {}  # the examples of each bucket, by ids
        self.deferred: list[dict] = []  # copies that came round while their earlier copy still waited
        self.due: set[tuple[int, int]] = set()  # buckets to fill up as soon as a batch's worth waits
        self.waiting = 0

    def key(self, example: dict) -> tuple[int, int]:
        ceiling = lambda ceilings, length: next((c for c in ceilings if length <= c), ceilings[-1])
        return (ceiling(self.text_ceilings, len(example["input_ids"])),
                ceiling(self.region_ceilings, len(example["image"].features)))

    def add(self, example: dict) -> Iterator[tuple[tuple[int, int], list[dict]]]:
        """Put ``example`` in its bucket; yield the batches that leave."""
        key = self.key(example)
        if _ids(example) in self.ids.get(key, ()):
            self.due.add(key)
            self.deferred.append(example)
            yield from self._fill_up_due()
            if len(self.deferred) >= self.batch_size > self.waiting:
                yield self._with_copies()
                yield from self._offer_deferred()
            return
        self.buckets.setdefault(key, []).append(example)
        self.ids.setdefault(key, set()).add(_ids(example))
        self.waiting += 1
        if len(self.buckets[key]) == self.batch_size:
            yield key, self._take(key, self.batch_size)
            yield from self._offer_deferred()
        else:
            yield from self._fill_up_due()

    def leftovers(self) -> Iterator[tuple[tuple[int, int], list[dict]]]:
        """The partly filled buckets at the end of a finite stream, smallest first (then any copies)."""
        for key in sorted(self.buckets):
            yield key, self.buckets[key]
        if self.deferred:
            yield self._shape_of(self.deferred), self.deferred

    def _take(self, key: tuple[int, int], count: int) -> list[dict]:
        """The first ``count`` examples of a bucket, out of it."""
        taken, rest = self.buckets[key][:count], self.buckets[key][count:]
        self.waiting -= len(taken)
        if rest:
            self.buckets[key] = rest
            self.ids[key].difference_update(_ids(example) for example in taken)
        else:
            del self.buckets[key], self.ids[key]
            self.due.discard(key)
        return taken

    def _fill_up_due(self) -> Iterator[tuple[tuple[int, int], list[dict]]]:
        while self.due and self.waiting >= self.batch_size:
            key = min(self.due)
            self.due.discard(key)
            if key not in self.buckets:
                continue
            fits = lambda other: other[0] <= key[0] and other[1] <= key[1]
            donors = sorted((k for k in self.buckets if k != key),
                            key=lambda k: (not fits(k), max(k[0], key[0]) + max(k[1], key[1]), k))
            batch = self._take(key, self.batch_size)
            for donor in donors:
                if len(batch) == self.batch_size:
                    break
                batch += self._take(donor, self.batch_size - len(batch))
            yield self._shape_of(batch), batch
            yield from self._offer_deferred()

    def _offer_deferred(self) -> Iterator[tuple[tuple[int, int], list[dict]]]:
        pending, self.deferred = self.deferred, []
        for example in pending:
            yield from self.add(example)

    def _with_copies(self) -> tuple[tuple[int, int], list[dict]]:
        """A batch from a stream of about a batch of examples: the waiting examples (fewer than a batch),
        then copies set aside."""
        batch = [example for key in sorted(self.buckets) for example in self.buckets[key]]
        copies = self.batch_size - len(batch)
        batch += self.deferred[:copies]
        self.deferred = self.deferred[copies:]
        self.buckets, self.ids, self.due, self.waiting = {}, {}, set(), 0
        return self._shape_of(batch), batch

    def _shape_of(self, batch: list[dict]) -> tuple[int, int]:
        keys = [self.key(example) for example in batch]
        return max(k[0] for k in keys), max(k[1] for k in keys)


def _ids(example: dict) -> tuple[str, str]:
    return example["caption_id"], example["image"].image_id


def quiet_interrupted_handoffs(worker_id: int | None = None) -> None:
    """A DataLoader worker's ``worker_init_fn``: a batch handed to the main process broken off by Ctrl-C is not
    reported as an error of the worker.

    A worker hands each batch's tensors over as file descriptors (torch's ``file_descriptor`` sharing), served by
    multiprocessing's resource-sharer thread; when Ctrl-C stops the main process in the middle of that handshake,
    the thread's end of the connection fails (``EOFError``, ``ConnectionError``) and it printed a traceback after
    ``lait train``'s one line. Only those errors, and only outside the worker's main thread, are dropped."""
    import sys
    import threading

    report = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if issubclass(kind, (EOFError, ConnectionError)) and threading.current_thread() is not threading.main_thread():
            return
        report(kind, value, traceback)

    sys.excepthook = hook


def make_loader(datasets: list[DatasetConfig], tokenizer_json: str, model_config: ModelConfig, batch_size: int,
                seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                shuffle_buffer: int = 2048, fixed_shapes: bool = False, infinite: bool = True,
                pin_memory: bool = False, length_buckets: list[int] | None = None,
                dealing: str = DEALING, index: PairIndex | None = None) -> DataLoader:
    """A DataLoader of collated training batches (fixed shapes pad to the maxima, for torch.compile).

    ``length_buckets`` ``[text, regions]``: batches of examples of about one length (``LengthBuckets``,
    that many evenly spaced ceilings each way), padded to their bucket's ceilings with fixed shapes.
    ``dealing``: how the row groups are dealt to the consumers (``DEALINGS``; a resumed checkpoint's).
    ``index``: the datasets' join as the stage's up-front check found it (``index_pairs``), so it is not read again.
    """
    stream = PairStream(datasets, tokenizer_json, model_config, seed=seed, rank=rank, world_size=world_size,
                        shuffle_buffer=shuffle_buffer, infinite=infinite, dealing=dealing, index=index)
    collate = Collate(model_config.pad_token_id, model_config.max_text_len if fixed_shapes else None,
                      model_config.max_regions if fixed_shapes else None)
    prefetch = 4 if num_workers else None
    init = quiet_interrupted_handoffs if num_workers else None
    if length_buckets:
        buckets = LengthBuckets(stream, batch_size, bucket_ceilings(model_config.max_text_len, length_buckets[0]),
                                bucket_ceilings(model_config.max_regions, length_buckets[1]))
        return DataLoader(buckets, batch_size=None, collate_fn=collate, num_workers=num_workers,
                          persistent_workers=False, pin_memory=pin_memory, prefetch_factor=prefetch, worker_init_fn=init)
    return DataLoader(stream, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                      drop_last=infinite, persistent_workers=False, pin_memory=pin_memory, prefetch_factor=prefetch,
                      worker_init_fn=init)
