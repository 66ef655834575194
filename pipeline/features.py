"""Region features: every distinct image of a pairs/candidates table through a Faster R-CNN, to Parquet.

Two runners over the same detector code (``model.detectors``):

* ``extract_regions`` (``lait features``): the local runner. DataLoader worker processes read
  Parquet row groups and decode images; the main process batches them to the device (pinned
  memory, non-blocking copies, fp16 autocast and channels-last on CUDA) and writes one regions
  shard, one rejected shard and one shard stats file per input shard. A rerun skips the shards
  whose stats file exists, so an interrupted run resumes; the file records a hash of the shard's
  image ids, and a rerun whose input gives a shard other images is refused. A batch that runs out
  of GPU memory is split in halves and retried. ``FeatureOptions.part``/``parts`` split a run by
  shard across processes (one per GPU: ``lait features --part I/N``, or under torchrun), all
  writing one folder; a second run of a part still going there is refused (``_claim_output``).

* ``ExtractRegions``: the same stage as a Beam ``PTransform`` around ``RunInference`` (keyed by
  ``image_id``; the rows shuffled once, by a bucket of it), for Dataflow GPU workers. ``run(argv)`` is the pipeline::

      # local
      python -m pipeline.features --input RUN/filter --output RUN/features --detector demo \\
          --weights demo_detector.safetensors --runner DirectRunner
      # Dataflow, GPU workers
      python -m pipeline.features --input gs://BUCKET/run/filter/pairs --output gs://BUCKET/run/features \\
          --detector vg-r101-c4 --weights /weights/faster_rcnn_from_caffe_attr_original.pkl --device cuda \\
          --runner DataflowRunner --project PROJECT --region REGION --temp_location gs://BUCKET/tmp \\
          --sdk_container_image IMAGE_WITH_WEIGHTS \\
          --dataflow_service_options "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" \\
          --experiments use_runner_v2

Outputs (both runners): ``OUT/regions/`` (regions schema, ``feature_dim`` of the detector),
``OUT/rejected/`` (stage ``features``), ``OUT/stats.json`` and ``OUT/classes.json`` (class names).
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import sys
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Hashable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

import schemas
from model.config import check_count
from model.detectors import (RANDOM_INIT_SEED, BoxSelection, Regions, build_detector, check_weights_choice,
                             read_class_names, weights_file)
from model.detectors.base import DetectorSpec, RegionDetector, check_input_sizes, padded_size
from model.detectors.images import (DetectorInput, ImageRejected, decode_for_detector, decode_on_device,
                                    prepare_for_device_decode)
from model.detectors.weights import weights_fingerprint
from pipeline.outputs import (RUN_MARKER, ancestors, claim_lock, input_reference, marker_taken_problem, on_this_host,
                              read_stats, refuse_dataset_or_nested, refuse_empty_paths, run_marker,
                              running_run_problem, stage_of)
from schemas.io import PARQUET_SUFFIX, _filesystem

logger = logging.getLogger(__name__)

STAGE = "features"
INPUT_COLUMNS = ["image_id", "image_bytes"]
#: Type checks of the input columns (string ids, binary bytes; large variants and dictionaries allowed).
INPUT_TYPES = {
    "image_id": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
    or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type)),
    "image_bytes": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
}
SHARD_PREFIX = "part"


# ----------------------------------------------------------------------------------------------
# Options, input and output layout
# ----------------------------------------------------------------------------------------------


@dataclass
class FeatureOptions:
    """Everything that decides what ``lait features`` computes and how."""

    detector: str = "demo"
    weights: str | None = None
    random_init: bool = False
    # the seed random_init draws its weights from: the same seed, the same random model (recorded in run.json, so a
    # resume or another part draws the weights the run began with)
    seed: int = RANDOM_INIT_SEED
    download_weights: bool = False
    class_names_file: str | None = None
    detector_config: dict = field(default_factory=dict)  # architecture/run overrides, e.g. min_size
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    batch_size: int = 8
    num_workers: int = 2
    images_per_shard: int = 512
    min_boxes: int = 10
    max_boxes: int = 100
    score_thresh: float = 0.2
    nms_thresh: float = 0.3
    topk: int = 10
    # workers (Pillow in the DataLoader workers) | device (plain JPEGs on the detector's device) | auto (device
    # on CUDA, where it measured faster end to end, workers elsewhere)
    decode: str = "auto"
    # 0: DataLoader workers take every n-th piece (all read every row group); N: contiguous blocks of rounds of
    # about N images, so a row group is read by few workers (``worker_pieces``: for an object store)
    read_window: int = 0
    # This process runs the shards whose index % parts == part: N processes (one per GPU, or machines
    # sharing the output folder) split a run; the one that completes it writes stats.json.
    part: int = 0
    parts: int = 1

    def __post_init__(self) -> None:
        if not (self.parts >= 1 and 0 <= self.part < self.parts):
            raise ValueError(f"part {self.part} of {self.parts}: need 0 <= part < parts")
        # batch_size/images_per_shard 0 would loop for ever cutting pieces of no images; topk 0 stores no
        # distribution, and a negative one failed only after detection, with run.json already written
        for name in ("batch_size", "images_per_shard", "topk"):
            check_count(name, getattr(self, name))
        check_count("num_workers", self.num_workers, minimum=0)
        check_count("read_window", self.read_window, minimum=0)
        # The window shares the input among DataLoader worker processes: with none, or one, it would do nothing
        if self.read_window and self.num_workers < 2:
            raise ValueError(f"read-window {self.read_window} shares the input among decode worker processes: it "
                             f"needs num-workers 2 or more, got {self.num_workers}")
        sizes = {key: self.detector_config[key] for key in ("min_size", "max_size") if key in self.detector_config}
        for key, value in sizes.items():
            check_count(key, value)
        if len(sizes) == 2:  # one alone is checked against the detector's other when it is built
            check_input_sizes(sizes["min_size"], sizes["max_size"])
        check_weights_choice(self.detector, self.weights, self.random_init)
        check_device_name(self.device)

    @property
    def selection(self) -> BoxSelection:
        """The box-selection rule these options describe (validates the limits)."""
        return BoxSelection(self.nms_thresh, self.score_thresh, self.min_boxes, self.max_boxes)

    def resolved_device(self) -> torch.device:
        """The torch device to run on; a clear error when CUDA is asked for and absent."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
        return device

    def weights_record(self) -> dict:
        """The weights as a run records them: the file's resolved absolute path and its fingerprint (size and
        SHA-256 of the whole file), all None for random weights without a file. ``WeightsNotFoundError`` when
        the file the detector would read is not there."""
        path = weights_file(self.detector, self.weights, self.random_init, self.download_weights)
        if path is None or not os.path.isfile(path):  # random weights; or coco weights still to download
            return {"weights": path and os.path.realpath(path), "weights_sha256": None, "weights_bytes": None}
        fingerprint = weights_fingerprint(path)
        return {"weights": os.path.realpath(path), "weights_sha256": fingerprint["sha256"],
                "weights_bytes": fingerprint["bytes"]}

    def load_detector(self) -> RegionDetector:
        """Build the detector these options name, on its device."""
        names = read_class_names(self.class_names_file) if self.class_names_file else None
        detector = build_detector(
            self.detector, weights=self.weights, random_init=self.random_init,
            config=self.detector_config or None, class_names=names, download=self.download_weights, seed=self.seed,
        )
        return detector.optimize_for(self.resolved_device(), self.precision)


#: The devices the detector runs on: ``--device xpu``, ``meta`` or ``mps`` are torch devices, but failed only once the
#: detector was built (a traceback, or after run.json was written).
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(device: str) -> None:
    """``ValueError`` for a ``--device`` other than auto, cpu, cuda or cuda:N."""
    if not isinstance(device, str) or not DEVICE_NAME.fullmatch(device):
        raise ValueError(f"--device {device!r} is not a torch device lait features runs on (auto, cpu, cuda, cuda:N)")


def check_paths(input_path: str, output_path: str) -> None:
    """Refuse, before anything is read or written, in one line naming the option: an ``--input`` or ``--output``
    that is empty or white space alone (an unset ``$OUT`` in a script: the whole stage was written to, or read
    from, the current folder), an ``--output`` that is a file or lies under one (a cryptic "Not a directory"
    once its run marker was written), and an ``--input`` that is neither a folder nor a Parquet file (a file
    named ``*.parquet``, or one that begins as Parquet: a damaged one is named by ``check_input_file``)."""
    refuse_empty_paths(("--input", input_path, "a filter or crawl folder, or a dataset of images"),
                       ("--output", output_path, "the folder to write the features to"))
    fs, inner = _filesystem(output_path)
    kind = fs.get_file_info(inner).type
    if kind not in (pafs.FileType.NotFound, pafs.FileType.Directory):
        raise ValueError(f"--output {output_path} is a file, not a folder")
    local = _local_path(output_path)
    if kind == pafs.FileType.NotFound and local is not None:
        above = next((folder for folder in ancestors(local) if os.path.exists(folder)), None)
        if above is not None and not os.path.isdir(above):
            raise ValueError(f"--output {output_path}: {above} is a file, not a folder")
    fs, inner = _filesystem(input_path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.File and not inner.endswith(PARQUET_SUFFIX):
        try:
            with fs.open_input_stream(inner) as handle:
                magic = handle.read(4)
        except (OSError, pa.ArrowException):  # unreadable: check_input_file says why
            magic = b"PAR1"
        if magic != b"PAR1":
            raise ValueError(f"--input {input_path} is neither a folder nor a Parquet file")
    elif kind not in (pafs.FileType.File, pafs.FileType.Directory, pafs.FileType.NotFound):
        raise ValueError(f"--input {input_path} is neither a folder nor a Parquet file")


def resolve_input(path: str) -> str:
    """The dataset inside a stage folder (``pairs/`` of a filter run, ``candidates/`` of a crawl), or ``path``.

    ``FileNotFoundError`` when ``path`` is none of them: nothing there, or a folder without ``pairs/``,
    ``candidates/`` or Parquet files (a wrong ``--input`` would otherwise be a run of 0 images). An empty
    ``pairs/`` or ``candidates/`` is an empty run, as in ``lait filter``. A crawl folder's other datasets
    (``rejected/``) are never read as images. A finished crawl that kept nothing and has no ``candidates/``
    (written before crawls always wrote one) gives its ``candidates/`` all the same, which ``input_files``
    reads as empty: an empty run; a crawl whose stats.json counts kept candidates has lost them, an error.
    """
    fs, inner = _filesystem(path)
    for sub in ("pairs", "candidates"):
        info = fs.get_file_info(posixpath.join(inner, sub))
        if info.type.name == "Directory":
            return path.rstrip("/") + "/" + sub
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no input at {path}")
    crawl = _crawl_stats(path)
    if crawl is not None:
        if _kept_nothing(crawl):
            logger.warning("features: %s is a crawl that kept nothing, without candidates/: an empty run", path)
            return path.rstrip("/") + "/candidates"
        raise FileNotFoundError(f"{path} is a crawl folder without candidates/, but its stats.json counts "
                                f"{crawl.get('kept')!r} kept candidates: its candidates/ is missing")
    if fs.get_file_info(posixpath.join(inner, "rejected")).type == pafs.FileType.Directory:
        raise FileNotFoundError(f"no pairs/ or candidates/ under {path}: a run folder (it holds rejected/), "
                                f"not a dataset of images")
    if not schemas.list_parquet_files(path):
        raise FileNotFoundError(f"no pairs/, candidates/ or Parquet files under {path}")
    return path


def input_files(dataset: str) -> list[str]:
    """The Parquet files of the dataset ``resolve_input`` gave: none for the ``candidates/`` of a finished crawl
    that kept nothing and wrote none."""
    if posixpath.basename(dataset) == "candidates" and schemas.path_type(dataset) is None:
        crawl = _crawl_stats(posixpath.dirname(dataset))
        if crawl is not None and _kept_nothing(crawl):
            return []
    return schemas.list_parquet_files(dataset)


def _crawl_stats(folder: str) -> dict | None:
    """The stats.json of a finished crawl in ``folder`` (None when it holds none: no stats.json, one that cannot be
    read, or another stage's)."""
    stats = read_stats(_join(folder, "stats.json"), read=_read_bytes)
    return stats if stats is not None and stats.get("stage") == "crawl" else None


def _kept_nothing(crawl_stats: dict) -> bool:
    kept = crawl_stats.get("kept")
    return type(kept) is int and kept == 0


def _read_bytes(path: str) -> bytes:
    """A file's bytes through this runner's filesystems (pyarrow, fsspec URLs), never Beam's."""
    fs, inner = _filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root.rstrip("/"), *parts) if "://" in root else os.path.join(root, *parts)


def _write_json(path: str, data: dict, exclusive: bool = False) -> bool:
    """Write JSON atomically (a temporary name of its own, then a rename): a stats file is complete or absent,
    also while parts running at once write the same file. ``exclusive``: only when ``path`` does not exist yet
    (a hard link on a local disk, atomic; elsewhere a check first, best effort); returns whether it wrote."""
    fs, inner = _filesystem(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    tmp = posixpath.join(posixpath.dirname(inner), f".{posixpath.basename(inner)}.{uuid.uuid4().hex}.tmp")
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True).encode())
    if exclusive and isinstance(fs, pafs.LocalFileSystem):
        try:
            os.link(tmp, inner)
            linked = True
        except FileExistsError:
            linked = False
        except OSError:  # a filesystem without hard links: the check below
            linked = None
        if linked is not None:
            os.remove(tmp)
            return linked
    if exclusive and fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_file(tmp)
        return False
    fs.move(tmp, inner)
    return True


def _read_json(path: str) -> dict | None:
    """A JSON object the run wrote (None when absent); ``ValueError`` naming the file when it holds anything else."""
    fs, inner = _filesystem(path)
    if fs.get_file_info(inner).type.name != "File":
        return None
    with fs.open_input_stream(inner) as f:
        data = f.read()
    try:
        value = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc}); the output is damaged: use a new --output") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not the object this run writes; "
                         f"the output is damaged: use a new --output")
    return value


def effective_topk(topk: int, spec: DetectorSpec) -> int:
    """The classes a box stores for ``--topk``: at most the detector's class count (a K above it means all)."""
    return min(topk, len(spec.class_names))


def classes_info(detector_name: str, spec: DetectorSpec, topk: int) -> dict:
    """The ``classes.json`` next to ``regions/``: what ``class_ids`` and ``topk_class_ids`` index (``topk``: the
    classes each box stores, ``effective_topk``)."""
    return {
        "detector": detector_name,
        "feature_dim": spec.feature_dim,
        "num_classes": len(spec.class_names),
        "class_names": spec.class_names,
        "background": "excluded: class id i is class_names[i]; top-k probabilities are of the softmax over classes + background",
        "topk": effective_topk(topk, spec),
        "box_source": spec.box_source,
        **({"num_attributes": int(spec.config["attributes"]),
            "attributes": "topk_attribute_ids index the detector's attributes ('no attribute' excluded)"}
           if spec.config.get("attributes") else {}),
    }


# ----------------------------------------------------------------------------------------------
# Regions rows as Arrow, built from numpy without per-number Python objects
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageRegions:
    """The regions of one image, boxes already in original (EXIF-oriented) pixels."""

    image_id: str
    width: int
    height: int
    regions: Regions


def to_original_pixels(regions: Regions, image: DetectorInput) -> Regions:
    """Map boxes from network-input pixels back to the original image."""
    sx, sy = image.scale
    boxes = regions.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, image.width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, image.height)
    return replace(regions, boxes=boxes.astype(np.float32))


def _nested(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


ATTRIBUTE_COLUMNS = (("topk_attribute_ids", np.int32, pa.int32()), ("topk_attribute_probs", np.float32, pa.float32()))


def output_schema(feature_dim: int, attributes: bool) -> pa.Schema:
    """The regions contract, plus the attribute columns (beyond the contract) for a detector with attributes."""
    schema = schemas.schema_for("regions", feature_dim=feature_dim)
    for name, _, arrow in ATTRIBUTE_COLUMNS if attributes else ():
        schema = schema.append(pa.field(name, pa.list_(pa.list_(arrow))))
    return schema


def regions_table(items: Sequence[ImageRegions], detector_name: str, feature_dim: int) -> pa.Table:
    """A regions-schema table (``feature_dim`` wide float16 features) from per-image regions."""
    attributes = bool(items) and items[0].regions.topk_attribute_ids is not None
    schema = output_schema(feature_dim, attributes)
    counts = np.array([it.regions.num_boxes for it in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

    def stack(name: str, dtype, width: int | None = None) -> np.ndarray:
        parts = [getattr(it.regions, name) for it in items]
        shape = (0, width) if width is not None else (0,)
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    boxes = stack("boxes", np.float32, 4).reshape(-1)
    features = stack("features", np.float16, feature_dim).reshape(-1)
    topk = max((it.regions.topk_class_ids.shape[1] for it in items if it.regions.num_boxes), default=0)
    topk_ids = stack("topk_class_ids", np.int32, topk).reshape(-1)
    topk_probs = stack("topk_class_probs", np.float32, topk).reshape(-1)
    box_offsets = np.arange(int(counts.sum()) + 1, dtype=np.int32) * topk
    arrays = [
        pa.array([it.image_id for it in items], pa.string()),
        pa.array([it.width for it in items], pa.int32()),
        pa.array([it.height for it in items], pa.int32()),
        pa.array(counts.astype(np.int32), pa.int32()),
        _nested(offsets, pa.FixedSizeListArray.from_arrays(pa.array(boxes, pa.float32()), 4)),
        _nested(offsets, pa.FixedSizeListArray.from_arrays(pa.array(features, pa.float16()), feature_dim)),
        _nested(offsets, pa.array(stack("class_ids", np.int32), pa.int32())),
        _nested(offsets, pa.array(stack("class_scores", np.float32), pa.float32())),
        _nested(offsets, _nested(box_offsets, pa.array(topk_ids, pa.int32()))),
        _nested(offsets, _nested(box_offsets, pa.array(topk_probs, pa.float32()))),
        pa.array([detector_name] * len(items), pa.string()),
    ]
    if attributes:  # beyond the contract (readers allow extra columns): the attribute head's top-k per box
        width = items[0].regions.topk_attribute_ids.shape[1]
        attr_offsets = np.arange(int(counts.sum()) + 1, dtype=np.int32) * width
        for name, dtype, arrow in ATTRIBUTE_COLUMNS:
            values = stack(name, dtype, width).reshape(-1)
            arrays.append(_nested(offsets, _nested(attr_offsets, pa.array(values, arrow))))
    return pa.Table.from_arrays(arrays, schema=schema)


#: How a device's running out of memory reads in a plain ``RuntimeError``: cuDNN's and cuBLAS's allocation failures
#: (a convolution's or a matmul's workspace) and a CUDA call's ("CUDA error: out of memory") are not
#: ``torch.OutOfMemoryError``, yet splitting the batch helps them as much.
OUT_OF_MEMORY_MESSAGES = ("out of memory", "cudnn_status_not_enough_memory", "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory: ``torch.OutOfMemoryError``, or a ``RuntimeError`` whose
    message is one of ``OUT_OF_MEMORY_MESSAGES`` (any other error is not retried: it would fail again)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in OUT_OF_MEMORY_MESSAGES)


def detect_splitting_on_oom(detector: RegionDetector, images: list[torch.Tensor], selection: BoxSelection,
                            topk: int) -> list[Regions | None]:
    """Run a batch; when the device runs out of memory (``is_out_of_memory``), run its halves instead (None: one
    image did not fit)."""
    if not images:
        return []
    try:
        return detector(images, selection, topk)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
    # (out of the except block: the failed batch's traceback, and the tensors its frames hold, are let go first)
    if detector.device.type == "cuda":
        torch.cuda.empty_cache()
    if len(images) == 1:
        logger.warning("one image does not fit in device memory; rejecting it")
        return [None]
    half = len(images) // 2
    logger.info("out of memory on a batch of %d images; retrying as %d + %d", len(images), half, len(images) - half)
    return (detect_splitting_on_oom(detector, images[:half], selection, topk)
            + detect_splitting_on_oom(detector, images[half:], selection, topk))


def detect_by_shape(detector: RegionDetector, images: list[torch.Tensor], selection: BoxSelection,
                    topk: int) -> list[Regions | None]:
    """``detect_splitting_on_oom`` on the images of each padded shape apart; results in input order.

    A batch pads its images to a common size, and the padding changes an image's regions (normalisation
    statistics, border features, anchors over the padding): split by padded shape, every image is detected
    exactly as it would be alone. ``lait features`` already batches by shape (one group here); Beam's
    RunInference batches whatever arrives together.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        height, width = image.shape[-2:]
        groups.setdefault(padded_size(height, width, detector.spec.size_divisible), []).append(index)
    results: list[Regions | None] = [None] * len(images)
    for indices in groups.values():
        for index, regions in zip(indices, detect_splitting_on_oom(detector, [images[i] for i in indices],
                                                                   selection, topk)):
            results[index] = regions
    return results


# ----------------------------------------------------------------------------------------------
# The local runner
# ----------------------------------------------------------------------------------------------


@dataclass
class Shard:
    """A unit of work and of output: the first occurrences of some images, as (file, row group, rows).

    ``images`` is the fingerprint of its image ids in order (``ShardFingerprint``): recorded in the shard's stats
    file, it tells a resumed run whether a complete shard was computed from the images the input holds now.
    """

    index: int
    pieces: list[tuple[str, int, list[int]]]
    images: str = ""
    legacy_images: str | None = None  # ``ShardFingerprint.legacy_hexdigest``: an older run's record of these ids

    @property
    def size(self) -> int:
        return sum(len(rows) for _, _, rows in self.pieces)


#: Bytes a worker's streamed read (``RowGroupStream``) fetches from the file at a time: about a piece of 16 web
#: images, and few enough requests on an object store (one per 4 MiB of a row group, or per page when larger).
READ_BUFFER_BYTES = 4 << 20


def _open_parquet(path: str, file: str, streamed: bool = False) -> pq.ParquetFile:
    """An input file; ``streamed``: for ``RowGroupStream`` (no pre-buffering, which would fetch a whole row group
    ahead, and buffered reads of ``READ_BUFFER_BYTES``)."""
    fs, _ = _filesystem(path)
    if streamed:
        return pq.ParquetFile(fs.open_input_file(file), pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    return pq.ParquetFile(fs.open_input_file(file))


def check_input_file(dataset: str, file: str) -> pq.ParquetFile:
    """Open one input file and check its ``image_id``/``image_bytes`` columns (footer only).

    Raises ``ValueError`` naming the file: unreadable (empty, truncated, not Parquet), a column
    missing, or of the wrong type, which would otherwise fail only when results are written.
    """
    try:
        parquet = _open_parquet(dataset, file)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{file}: not a readable Parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    for column in INPUT_COLUMNS:
        if column not in names:
            raise schemas.SchemaMismatchError(f"{file}: no {column!r} column; lait features reads image_id + image_bytes", column)
        actual = parquet.schema_arrow.field(column).type
        if not INPUT_TYPES[column](actual):
            expected = "string" if column == "image_id" else "binary"
            raise schemas.SchemaMismatchError(f"{file}: column {column!r} is {actual}, expected {expected}", column)
    return parquet


def _why(exc: BaseException) -> str:
    """An Arrow error as one line (some span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_image_ids(parquet: pq.ParquetFile, file: str, group: int, rows: list[int] | None = None) -> list[str | None]:
    """The ``image_id`` column of one row group (``rows`` of it); ``ValueError`` naming the file and row group
    when even that cannot be read (corrupted pages under an intact footer), or holds text that is not UTF-8."""
    try:
        table = parquet.read_row_group(group, columns=["image_id"])
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(ids_unreadable(file, group, exc)) from None
    try:
        return (table.take(rows) if rows is not None else table).column(0).to_pylist()
    except UnicodeDecodeError:  # Arrow does not check UTF-8 on read; Python's decode named neither file nor column
        raise ValueError(ids_not_utf8(file, group)) from None


def ids_unreadable(file: str, group: int, exc: BaseException) -> str:
    """Why a row group's ``image_id`` column could not be read (``read_image_ids``), as one line."""
    return f"{file}: row group {group} is unreadable, its image ids too ({_why(exc)})"


def ids_not_utf8(file: str, group: int) -> str:
    """Why a row group's ``image_id`` column cannot be read as text (``read_image_ids``), as one line."""
    return f"{file}: row group {group}: column 'image_id' holds text that is not valid UTF-8"


def check_image_ids(parquet: pq.ParquetFile, file: str, group: int) -> None:
    """``read_image_ids``' checks of one row group, its errors worded alike, with the ids left in Arrow: UTF-8 is
    checked there (``validate``), no Python string made. For the Beam form's driver, which stops on them before
    the output is touched, as ``lait features`` does (``plan_shards``), rather than in its workers."""
    try:
        column = parquet.read_row_groups([group], columns=["image_id"]).column(0)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(ids_unreadable(file, group, exc)) from None
    try:
        column.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise ValueError(ids_not_utf8(file, group) if "UTF8" in str(exc) else ids_unreadable(file, group, exc)) \
            from None


class ShardFingerprint:
    """The fingerprint of a shard's image ids in order: ``FINGERPRINT_PREFIX`` and the SHA-256 of each id's UTF-8
    bytes, length-prefixed (8 bytes). Unambiguous: one list of ids, one byte string. Runs before recorded the SHA-256
    of each id followed by ``\\n``, under which ids holding line breaks collide (``["a", "b"]`` and ``["a\\nb"]``), and
    a resume skipped a shard computed from other images. That older form is kept too (``legacy_hexdigest``), for
    the ids where it is unambiguous, so that a run folder of an older version still resumes (``_shard_complete``).
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._legacy = hashlib.sha256()  # None once an id holds a line break

    def add(self, image_id: str) -> None:
        data = image_id.encode("utf-8")
        self._digest.update(len(data).to_bytes(8, "big") + data)
        if self._legacy is not None:
            if b"\n" in data:
                self._legacy = None
            else:
                self._legacy.update(data + b"\n")

    def hexdigest(self) -> str:
        return FINGERPRINT_PREFIX + self._digest.hexdigest()

    def legacy_hexdigest(self) -> str | None:
        """The older form, or None when an id holds a line break (where that form is ambiguous)."""
        return None if self._legacy is None else self._legacy.hexdigest()


#: What begins a shard fingerprint of this encoding (``ShardFingerprint``); an older run's is 64 hex digits alone.
FINGERPRINT_PREFIX = "ids-sha256-v2:"


def plan_shards(dataset: str, images_per_shard: int) -> tuple[list[Shard], int]:
    """Split the distinct images of a dataset into shards, in a stable order; also count null-id rows.

    Only the ``image_id`` column is read here. The order (files sorted, row groups, rows) is the same
    on every run, so shard ``k`` always holds the same images and a rerun can skip finished shards.
    """
    files = input_files(dataset)
    seen: set[str] = set()
    shards: list[Shard] = []
    pieces: list[tuple[str, int, list[int]]] = []
    in_shard = 0
    null_ids = 0
    digest = ShardFingerprint()
    for file in files:
        parquet = check_input_file(dataset, file)
        for group in range(parquet.num_row_groups):
            ids = read_image_ids(parquet, file, group)
            rows: list[int] = []
            for row, image_id in enumerate(ids):
                if schemas.missing_image_id(image_id):  # the audit recounts by the same rule
                    null_ids += 1
                    continue
                if image_id in seen:
                    continue
                seen.add(image_id)
                rows.append(row)
                digest.add(image_id)
                in_shard += 1
                if in_shard == images_per_shard:
                    pieces.append((file, group, rows))
                    shards.append(Shard(len(shards), pieces, digest.hexdigest(), digest.legacy_hexdigest()))
                    pieces, rows, in_shard, digest = [], [], 0, ShardFingerprint()
            if rows:
                pieces.append((file, group, rows))
    if pieces:
        shards.append(Shard(len(shards), pieces, digest.hexdigest(), digest.legacy_hexdigest()))
    return shards, null_ids


@dataclass
class DecodedBatch:
    """What a DataLoader worker hands over: a piece of decoded images (a batch or a part of one), all from one shard."""

    shard: int
    image_ids: list[str]
    inputs: list[DetectorInput | None]
    rejects: list[tuple[str, str, str]]  # (image_id, reason, detail)
    error: str | None = None  # the piece could not be read at all: the run stops with this error

    def pin_memory(self) -> "DecodedBatch":
        """Page-locked pixels, so the copy to the GPU can overlap compute (DataLoader's pin thread calls this)."""
        for item in self.inputs:
            if item.pixels is not None:  # still-encoded JPEGs go to the device decoder as they are
                item.pixels = item.pixels.pin_memory()
        return self


def piece_size(batch_size: int) -> int:
    """Images per worker piece: a quarter batch (at least 16, at most the batch).

    The main process assembles detector batches from pieces, so the first batch waits for four workers
    decoding a quarter each (in parallel) rather than one worker decoding all of it: on an H200 with 14
    workers and batches of 64, a whole-batch piece kept the detector waiting 1.6 s before its first batch.
    """
    return max(min(16, batch_size), -(-batch_size // 4))


def batch_pieces(shards: list[Shard], batch_size: int) -> list[tuple[int, list[tuple[str, int, list[int]]]]]:
    """The shards cut into pieces of ``batch_size`` images (a shard's last one smaller), shard by shard:
    ``(shard index, [(file, row group, rows)])``.

    Pieces, not shards, are what workers take (``worker_pieces``), so all of them decode even when there are
    fewer shards than workers.
    """
    pieces = []
    for shard in shards:
        current: list[tuple[str, int, list[int]]] = []
        count = 0
        for file, group, rows in shard.pieces:
            start = 0
            while start < len(rows):
                take = rows[start:start + batch_size - count]
                current.append((file, group, take))
                count += len(take)
                start += len(take)
                if count == batch_size:
                    pieces.append((shard.index, current))
                    current, count = [], 0
        if current:
            pieces.append((shard.index, current))
    return pieces


#: A ``--read-window`` for inputs where reading costs (an object store): twice the 2,048 images the shape queues
#: hold at batch 64. With 14 workers and pieces of 16, blocks of 18 pieces, so a 1,024-row group is read by 4-6
#: workers instead of 14; with 2 workers, blocks of 2,048 images at pieces of 8: one worker per group.
READ_WINDOW_IMAGES = 4096


def worker_block(workers: int, piece: int, window: int = READ_WINDOW_IMAGES) -> int:
    """Pieces per block of consecutive pieces a worker takes (``worker_pieces``): a round of ``workers`` blocks
    spans about ``window`` images, at least one piece per worker."""
    return max(1, window // (max(1, workers) * piece))


def worker_pieces(count: int, worker: int, workers: int, piece: int, window: int = 0) -> list[int]:
    """The indices of the pieces (``count`` of them, in input order) that DataLoader worker ``worker`` of
    ``workers`` takes: every n-th piece (``window`` 0, the default), or one contiguous block of each round of
    ``window`` images.

    Every n-th piece: all workers work on the same stretch of the input, so shards complete one after another
    and few results wait in memory, but each worker reads every row group (14 workers read a 1,024-row group
    14 times: cheap from a local disk's page cache, 14 times the traffic from an object store).

    The pieces go in rounds of ``workers`` blocks of ``worker_block`` pieces (about ``window`` images), worker
    w taking block w of each round; the last round is cut into ``workers`` near-equal blocks, so a small input
    (one row group, a few pieces per worker) still has every worker decoding, and no worker is left with a
    whole block to decode alone at the end. A worker keeps its last row group, so it reads a group once for
    all the consecutive pieces of a block: a group is read by the workers whose blocks meet it, not by every
    worker, as when each took every n-th piece (14 workers read each 1,024-row group 14 times, ~3 GB).
    Every worker's first block starts within the first round, so all decode from the start and the first
    batch waits for a piece from each of four workers, as before. The DataLoader hands pieces over from the
    workers in turn, so the images in flight (decoded and waiting, or detected with their shard not yet
    complete) span about one round: ``window`` bounds them (14 workers, shards of 512: about 8 shards' results
    wait in host memory instead of about 1, and a stopped run loses as many incomplete shards).
    """
    if window <= 0:
        return list(range(worker, count, workers))
    block = worker_block(workers, piece, window)
    size = workers * block
    mine: list[int] = []
    for start in range(0, count, size):
        length = min(size, count - start)
        mine += range(start + length * worker // workers, start + length * (worker + 1) // workers)
    return mine


def resolved_decode(decode: str, device: torch.device) -> str:
    """``auto`` -> ``device`` on CUDA (nvJPEG; H200: vg 87 vs 75 img/s end to end), else ``workers``."""
    if decode not in ("auto", "workers", "device"):
        raise ValueError(f"decode: {decode!r} is not auto, workers or device")
    if decode == "auto":
        return "device" if device.type == "cuda" else "workers"
    return decode


class RowGroupStream:
    """The input columns of one row group, read front to back in batches of ``batch`` rows
    (``ParquetFile.iter_batches``): a reader holds one batch and the rows it took, not the whole group.

    Pages bound it too: pyarrow reads and decompresses a page whole. Its writer checks the page size only every
    ``write_batch_size`` values: LAIT writes tables of images with 64 (``schemas.io.parquet_options``), so a
    stream holds a page of 64 images at most. Files written before, with pyarrow's 1,024, hold a 1,024-row
    group's ``image_bytes`` in one page, and a stream of them holds that page (compressed and not: twice the
    group) while its rows pass.
    """

    def __init__(self, parquet: pq.ParquetFile, group: int, batch: int):
        self._batches = parquet.iter_batches(batch_size=batch, row_groups=[group], columns=INPUT_COLUMNS)
        self._schema = pa.schema([parquet.schema_arrow.field(name) for name in INPUT_COLUMNS])
        self._batch: pa.RecordBatch | None = None
        self.start = 0  # the row of the group where the batch held starts: rows before it have streamed past

    def take(self, rows: list[int]) -> pa.Table:
        """Rows ``rows`` of the group (increasing, none before ``start``), copied out of the batches as they pass."""
        if rows and rows[0] < self.start:
            raise ValueError(f"row {rows[0]} has streamed past (the stream is at row {self.start})")
        parts, i = [], 0
        while i < len(rows):
            end = self.start + (self._batch.num_rows if self._batch is not None else 0)
            if rows[i] >= end:  # not in the batch held: the next one
                self._batch = None  # its memory goes before the next batch is read
                self._batch = next(self._batches, None)
                self.start = end
                if self._batch is None:
                    raise pa.ArrowIndexError(f"row {rows[i]} is past the end of the row group ({end} rows)")
                continue
            stop = bisect.bisect_left(rows, end, i)
            parts.append(self._batch.take([row - self.start for row in rows[i:stop]]))  # a copy: the batch can go
            i = stop
        return pa.Table.from_batches(parts, self._schema if not parts else None)


class ShardImages(torch.utils.data.IterableDataset):
    """Reads and decodes pieces of ``piece`` images of the shards; each DataLoader worker takes every n-th piece,
    or with a ``read_window`` a contiguous block of pieces per round (``worker_pieces``).

    A worker streams the row group its pieces need (``RowGroupStream``: ``image_id`` + ``image_bytes`` in batches
    of a piece) and keeps the stream for its next pieces, so it reads each row group once for all its consecutive
    pieces of it, not once per piece (1,024-row groups of 221 KB JPEGs, pieces of 8, 2 workers: 74.6 images/s per
    worker reading the group for every piece, 3,340 keeping it; ``benchmarks/bench_features.py --reading-only``).
    Streaming rather than reading the group whole (``read_row_group``, which peaks at three copies of it: ~660 MB
    of Arrow memory per worker at 1,024 JPEGs of 221 KB) bounds a worker's reading memory by the file's pages:
    15 MB in pages of 16 rows, ~32 MB in the pages of 64 LAIT writes, 446 MB in files of one page per group
    (written before); as fast or faster (``--reading-memory``). Taking every n-th piece, every worker reads every group; blocks keep the other
    workers from reading it, at the cost of results held longer (``worker_pieces``).

    A stream that fails (corrupted pages under an intact footer) cannot go on: the rows it handed over before are
    kept, the rest of the group leaves as ``row_group_unreadable`` rejects. In one-page groups that is the whole
    group, as when workers read whole groups.
    """

    def __init__(self, dataset: str, shards: list[Shard], spec: DetectorSpec, piece: int, decode: str = "workers",
                 read_window: int = 0):
        self.dataset = dataset
        self.pieces = batch_pieces(shards, piece)
        self.spec = spec
        self.prepare = prepare_for_device_decode if decode == "device" else decode_for_detector
        self._file: tuple[str, pq.ParquetFile] | None = None
        self._group: tuple[tuple[str, int], RowGroupStream] | None = None
        self._unreadable: tuple[tuple[str, int], str] | None = None  # the last row group that failed, and why
        self.piece = piece
        self.read_window = read_window

    def worker_pieces(self, worker: int, workers: int) -> list[int]:
        """The indices in ``self.pieces`` that worker ``worker`` of ``workers`` reads and decodes, in order."""
        return worker_pieces(len(self.pieces), worker, workers, self.piece, self.read_window)

    def __iter__(self) -> Iterator[DecodedBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        try:
            for index in self.worker_pieces(worker, workers):
                yield self._decode(*self.pieces[index])
        finally:  # the last row group's stream is not kept once the pieces are done
            self._file = self._group = None

    def _parquet(self, file: str) -> pq.ParquetFile:
        """The open input file ``file`` (the last one opened is kept: pieces come file by file)."""
        if self._file is None or self._file[0] != file:
            self._file = (file, _open_parquet(self.dataset, file, streamed=True))
        return self._file[1]

    def _rows(self, file: str, group: int, rows: list[int]) -> pa.Table:
        """Rows ``rows`` of row group ``group`` of ``file`` (its input columns), from one stream of the group for the
        consecutive pieces that need it (a new one only for rows it has passed, which input order never asks)."""
        if self._group is None or self._group[0] != (file, group) or rows[0] < self._group[1].start:
            self._group = None  # the previous stream's memory goes before the next is read
            self._group = ((file, group), RowGroupStream(self._parquet(file), group, self.piece))
        return self._group[1].take(rows)

    def _decode(self, shard: int, parts: list[tuple[str, int, list[int]]]) -> DecodedBatch:
        ids: list[str] = []
        inputs: list[DetectorInput] = []
        rejects: list[tuple[str, str, str]] = []
        for file, group, rows in parts:
            # a stream that failed cannot go on: the group's later rows are rejected with it, not read again
            why = self._unreadable[1] if self._unreadable is not None and self._unreadable[0] == (file, group) else None
            if why is None:
                try:
                    table = self._rows(file, group, rows)
                except (pa.ArrowException, OSError) as exc:  # corrupted pages under an intact footer
                    self._group, why = None, _why(exc)
                    self._unreadable = ((file, group), why)
            if why is not None:
                try:
                    ids_read = read_image_ids(self._parquet(file), file, group, rows)
                except ValueError as error:  # raised in the main process (a worker's error is a traceback there)
                    return DecodedBatch(shard, [], [], [], error=str(error))
                detail = f"{file} row group {group}: {why}"
                rejects += [(image_id, "row_group_unreadable", detail) for image_id in ids_read]
                continue
            for image_id, data in zip(table.column("image_id").to_pylist(), table.column("image_bytes").to_pylist()):
                try:
                    inputs.append(self.prepare(data, self.spec.input_size))
                    ids.append(image_id)
                except ImageRejected as exc:
                    rejects.append((image_id, exc.reason, exc.detail))
        return DecodedBatch(shard, ids, inputs, rejects)


@dataclass
class _Pending:
    """A decoded image waiting for a detector batch, with the shard it counts towards."""

    shard: int
    image_id: str
    input: DetectorInput


#: An image waits at most this many batches' worth of arrivals for others of its padded shape. vg-r101-c4's
#: inputs (600/1000, padded to multiples of 16) of the demo's 1,499 web images (x4) fall into 39 padded
#: shapes: batches of 64 then average 43 images (26 with a wait of 16 batches, 8 with 4; coco's and the demo
#: detector's multiples of 32 make 21 shapes and batches of 55). At most this many batches of images wait
#: at once: 2,048 decoded images at batch 64 (about 3.7 GB of pinned pixels at 600 x 1000 when the workers
#: decode; JPEG bytes only when the device does).
MAX_WAIT_BATCHES = 32


def is_portrait(item: DetectorInput) -> bool:
    """Whether an image's network input is taller than wide (known before decoding for device decodes)."""
    height, width = item.network_shape
    return height > width


def padded_shape(item: DetectorInput, divisible: int) -> tuple[int, int]:
    """(height, width) that ``RegionDetector.batch_images`` pads an image to when it is alone in a batch."""
    return padded_size(*item.network_shape, divisible)


def _batches(pieces: Iterator[DecodedBatch], batch_size: int, on_piece,
             key: Callable[[DetectorInput], Hashable] = is_portrait) -> Iterator[list[_Pending]]:
    """Detector batches of at most ``batch_size`` images assembled from the workers' pieces, one ``key`` per batch.

    A batch is padded to its widest and its tallest image. ``lait features`` keys images by their padded
    shape (``padded_shape``), so every image of a batch is padded exactly as it would be alone: its regions
    do not depend on which images share its batch, on the input order or on where a resumed run restarts,
    and no padding beyond the size divisor is computed. (With batches mixing shapes, the demo detector's
    boxes for 1,499 web images run alone and in batches of 8 differed: only 77% found an IoU > 0.95
    partner; the backbone's border pixels and the RPN's anchors see the padding. Keyed by shape, all of them
    matched and the features were identical, in the same time.) The default key, orientation, only keeps a
    portrait image from padding landscape ones to a square. Images wait in one queue per key, each emitted
    when it holds a batch; an image that has waited for ``MAX_WAIT_BATCHES`` batches' worth of arrivals goes
    out with its queue in a smaller batch, so a rare shape never holds its shard (and the memory of that
    shard's results) for long. The queues' leftovers come last. ``on_piece(piece)`` sees every piece as it
    arrives (its rejects are booked there), before its images join a batch.
    """
    waiting: dict[Hashable, list[tuple[int, _Pending]]] = {}
    arrived = 0
    for piece in pieces:
        on_piece(piece)
        for image_id, item in zip(piece.image_ids, piece.inputs):
            queue = waiting.setdefault(key(item), [])
            queue.append((arrived, _Pending(piece.shard, image_id, item)))
            arrived += 1
            if len(queue) == batch_size:
                yield [pending for _, pending in queue]
                queue.clear()
            for kind, other in list(waiting.items()):
                if other and other[0][0] <= arrived - MAX_WAIT_BATCHES * batch_size:
                    yield [pending for _, pending in other]
                    waiting[kind] = []
    for queue in waiting.values():
        if queue:
            yield [pending for _, pending in queue]


def _decoded_ahead(batches: Iterator[list[_Pending]], device: torch.device,
                   enabled: bool) -> Iterator[tuple[list[_Pending], list[ImageRejected | None], float]]:
    """Each batch with its still-encoded JPEGs decoded on ``device``, the next batch's decode running in a
    background thread (on its own CUDA stream) while the caller detects this one: ``(batch, errors, seconds
    the caller waited for the decode)``, errors as ``decode_on_device`` returns them.

    The batched nvJPEG call and the resizes cost the main loop about a tenth of the detector's time per
    batch on an H100 when they ran inline (``benchmarks/RESULTS_features.md``). Batches are pulled from
    ``batches`` in this (the caller's) thread, so the pieces' bookkeeping stays there; the decoder thread
    touches only the batch's pixels. ``enabled`` False (workers decode) passes batches through.
    """
    if not enabled:
        for batch in batches:
            yield batch, [None] * len(batch), 0.0
        return
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode(batch: list[_Pending]):
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            errors = decode_on_device([item.input for item in batch], device)
            done = None
            if stream is not None:
                done = torch.cuda.Event()
                done.record(stream)
        return batch, errors, done

    def handed_over(future: Future) -> tuple[list[_Pending], list[ImageRejected | None], float]:
        begun = time.perf_counter()
        batch, errors, done = future.result()
        waited = time.perf_counter() - begun
        if done is not None:  # the detector's stream waits for the decode; the pixels' memory for the detector
            current = torch.cuda.current_stream(device)
            current.wait_event(done)
            for item in batch:
                if item.input.pixels is not None and item.input.pixels.is_cuda:
                    item.input.pixels.record_stream(current)
        return batch, errors, waited

    decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lait-features-decoder")
    queued: deque[Future] = deque()
    try:
        for batch in batches:
            queued.append(decoder.submit(decode, batch))
            if len(queued) > 1:  # one batch decoding ahead of the one handed over
                yield handed_over(queued.popleft())
        while queued:
            yield handed_over(queued.popleft())
    finally:
        decoder.shutdown(wait=True, cancel_futures=True)


def _keep(batch: DecodedBatch) -> DecodedBatch:
    """DataLoader collate: pieces are already formed by the dataset."""
    return batch


@dataclass
class _ShardResult:
    regions: list[ImageRegions] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    images: int = 0
    started: float = field(default_factory=time.perf_counter)


def _shard_paths(output: str, index: int) -> dict[str, str]:
    name = f"{SHARD_PREFIX}-{index:05d}"
    return {
        "regions": _join(output, "regions", f"{name}.parquet"),
        "rejected": _join(output, "rejected", f"{name}.parquet"),
        "stats": _join(output, "shards", f"{name}.json"),
    }


def _finish_shard(output: str, shard: Shard, result: _ShardResult, detector_name: str, feature_dim: int) -> dict:
    """Write a shard's regions and rejects, then its stats file, which marks the shard complete."""
    index = shard.index
    paths = _shard_paths(output, index)
    if result.regions:
        schemas.write_table(regions_table(result.regions, detector_name, feature_dim), paths["regions"], "regions")
    if result.rejected:
        schemas.write_table(schemas.to_table(result.rejected, "rejected"), paths["rejected"], "rejected")
    boxes = [it.regions.num_boxes for it in result.regions]
    stats = {
        "shard": index,
        "images": shard.images,
        "in": result.images,
        "kept": len(result.regions),
        "rejected": len(result.rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in result.rejected)),
        "boxes": int(sum(boxes)),
        "boxes_min": min(boxes, default=0),
        "boxes_max": max(boxes, default=0),
        "seconds": round(time.perf_counter() - result.started, 3),
    }
    if stats["in"] != stats["kept"] + stats["rejected"]:
        raise AssertionError(f"shard {index}: {stats['in']} images in, {stats['kept']} kept + {stats['rejected']} rejected")
    _write_json(paths["stats"], stats)
    return stats


def _check_run_config(output: str, run_config: dict, typed_weights: str | None = None,
                      num_classes: int | None = None) -> None:
    """Refuse to resume into a folder written with another detector, weights, random-init seed, precision, decode
    path, selection, top-k, shard size or number of parts (the shards would mix, or some would belong to no part),
    or by the Beam form.

    ``run.json`` is created exclusively and read back: of two parts started at once with other settings, one
    is refused. Weights are compared by content (``_weights_as_now``), ``typed_weights`` (``--weights`` as
    given) serving a ``run.json`` from before weights were fingerprinted. A ``run.json`` from before the
    precision, decode path and seed were recorded is read as ``_as_recorded_now`` says; ``num_classes`` (the
    detector's) reads its ``topk`` as what the boxes stored."""
    path = _join(output, "run.json")
    if _read_json(path) is None:
        # Every part writes (or reads) run.json before its first shard: shards without one are a deleted run.json
        # (looked for again: another part may have just written it)
        fs, inner = _filesystem(output)
        listed = fs.get_file_info(pafs.FileSelector(posixpath.join(inner, "shards"), allow_not_found=True))
        if any(_shard_number(posixpath.basename(f.path)) >= 0 for f in listed) and \
                fs.get_file_info(posixpath.join(inner, "run.json")).type == pafs.FileType.NotFound:
            raise ValueError(f"{output} holds finished shards but no run.json: the settings they were computed with "
                             f"are unknown, and a resume could mix them with others; use a new --output, or delete "
                             f"{output} to start over")
        _write_json(path, run_config, exclusive=True)
    previous = _read_json(path)
    if previous.get("runner") == "beam":
        raise ValueError(f"{output} holds a run of the Beam form (python -m pipeline.features), which lait features "
                         f"cannot resume or add to; use a new --output")
    previous.setdefault("parts", run_config["parts"])  # (a run.json from before parts were recorded)
    if previous["parts"] != run_config["parts"]:
        raise ValueError(f"{output} holds a run split in {previous['parts']} parts (--part I/{previous['parts']}), "
                         f"not {run_config['parts']}: the shards would be split otherwise and some computed by no "
                         f"part; run its parts with N = {previous['parts']}, or use a new --output")
    previous = _as_recorded_now(output, previous, run_config, num_classes)
    previous = _weights_as_now(output, previous, run_config, typed_weights)
    if previous != run_config:
        changed = sorted(k for k in set(previous) | set(run_config) if previous.get(k) != run_config.get(k))
        raise ValueError(f"{output} holds a run with other settings ({', '.join(changed)}); use a new --output")


WEIGHTS_KEYS = ("weights", "weights_sha256", "weights_bytes")
#: What decides the regions' numbers beyond the model and the selection (not recorded by older runs): the autocast
#: precision and where JPEGs are decoded (``--decode device`` gives pixels a few levels off Pillow's), as resolved.
COMPUTE_KEYS = ("precision", "decode")


def _as_recorded_now(output: str, previous: dict, run_config: dict, num_classes: int | None) -> dict:
    """``previous`` (a run.json) with what an older run.json lacks or recorded otherwise read as this code records it.

    * ``precision``/``decode`` absent (a run from before they were recorded): unknown, so accepted as this run's,
      with a warning. The old default, ``auto``, resolved by the device (fp16 and device decode on CUDA, fp32 and
      the workers on the CPU), which run.json never said: taking it for this run's device would refuse a correct
      resume with ``--precision bf16`` as readily as it would catch a wrong one, and would let a CPU resume of a GPU
      run pass all the same.
    * ``random_init_seed`` absent: ``--random-init`` drew unseeded weights then, which no rerun can draw again:
      refused (the resume would mix two random models' regions); without ``--random-init`` the seed is unused.
    * ``topk`` above the class count: the boxes stored all classes, as this run's clamped ``topk`` records.
    """
    previous = dict(previous)
    missing = [key for key in COMPUTE_KEYS if key not in previous]
    if missing:
        logger.warning("%s: run.json predates recording %s; resuming with %s, which cannot be checked against that "
                       "run's", output, " and ".join(missing), ", ".join(f"{k} {run_config[k]}" for k in missing))
        previous.update({key: run_config[key] for key in missing})
    if "random_init_seed" not in previous:
        if previous.get("random_init"):
            raise ValueError(f"{output} holds a run of --random-init weights drawn without a seed (before runs "
                             f"recorded one): no rerun draws the same weights, so its regions would mix two random "
                             f"models'; use a new --output")
        previous["random_init_seed"] = None
    topk = previous.get("topk")
    if num_classes is not None and type(topk) is int and topk > num_classes:
        previous["topk"] = num_classes
    return previous


def _weights_as_now(output: str, previous: dict, run_config: dict, typed_weights: str | None) -> dict:
    """``previous`` (a run.json) with its weights entries replaced by ``run_config``'s when both name the same
    weights, so that only other weights show as a change.

    The same weights are the same content (SHA-256 and size), under any path: a retrained file written over the
    old one is other weights (its regions would mix with the old model's), the same file reached through
    another path or a copy is not. A ``run.json`` from before fingerprints records the path as typed: the same
    path resumes, as it did then, with a warning that the content cannot be checked.
    """
    now = {key: run_config[key] for key in WEIGHTS_KEYS}
    if "weights_sha256" not in previous:
        old = previous.get("weights")
        same = old == now["weights"] or (old is not None and now["weights"] is not None and
                                         (old == typed_weights or os.path.realpath(old) == now["weights"]))
        if same:
            if old is not None:
                logger.warning("%s: run.json predates weights fingerprints; resuming with %s, whose content cannot "
                               "be checked against that run's", output, now["weights"])
            return {**previous, **now}
        return previous
    if (previous.get("weights_sha256"), previous.get("weights_bytes")) == (now["weights_sha256"], now["weights_bytes"]):
        return {**previous, "weights": now["weights"]} if now["weights_sha256"] else previous
    if previous.get("weights_sha256") and now["weights_sha256"]:
        raise ValueError(f"{output} holds a run computed with other weights: {previous.get('weights')} was "
                         f"{previous['weights_sha256'][:16]}... ({previous.get('weights_bytes')} bytes), "
                         f"{now['weights']} is {now['weights_sha256'][:16]}... ({now['weights_bytes']} bytes): "
                         f"retrained or replaced since; its regions would mix two models'. Use a new --output")
    return previous


#: The local runner's rejects of input rows without an ``image_id`` (not in any shard: they have no id to plan by).
INVALID_FILE = "invalid-00000.parquet"
#: What the local runner writes in ``regions/`` and ``rejected/``; any other data file there is another run's. Five
#: digits or more, as ``_shard_paths`` names them (``{index:05d}``: shard 100,000 is ``part-100000``) and
#: ``_shard_number`` reads them: with exactly five, a run of more shards refused its own output on every restart.
OWN_FILES = re.compile(rf"{SHARD_PREFIX}-\d{{5,}}\.parquet|{re.escape(INVALID_FILE)}")


def check_not_in_another_run(output: str) -> None:
    """Refuse an output that is another stage's dataset or lies inside one: a folder holding Parquet files of its
    own (a filter run's ``pairs/``), or a folder below one. The features would be written among that dataset's
    files, and every reader of it would read them too. (A folder beside the datasets of a finished stage is fine:
    ``lait features --input D --output D/features`` on an import, docs/train.md.)"""
    for folder in (output, *ancestors(_local_path(output) or output)):
        data = _parquet_files_in(folder)
        if data:
            where = f"{output} holds" if folder == output else f"{output} is inside {folder}, which holds"
            raise ValueError(f"{where} Parquet files ({', '.join(data[:3])}{', ...' if len(data) > 3 else ''}): "
                             f"a dataset, not an output folder of lait features; use a new --output")


def _parquet_files_in(folder: str) -> list[str]:
    """The names of the Parquet files directly in ``folder`` (none when it is missing), sorted."""
    fs, inner = _filesystem(folder)
    try:
        listed = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except OSError:  # a folder above that cannot be listed (another user's) holds no dataset of this run's
        return []
    return sorted(posixpath.basename(f.path) for f in listed
                  if f.type == pafs.FileType.File and f.path.endswith(".parquet"))


def _check_not_nested(output: str, dataset: str) -> None:
    """The Beam stages' rule too (``pipeline.outputs``, which the Beam form applies): refuse an output inside a
    finished stage's folder (``RUN/filter/features``: the filter's stats.json names a stage), which would then
    hold another stage's folder inside its own; the import layout and the folder of ``dataset`` excepted.

    Local paths (``file://`` URLs too) only: that rule reads an object store through Beam's filesystems, which may
    lack one this runner reads through fsspec (gs:// needs apache-beam[gcp] there); on an object store
    ``check_not_in_another_run`` alone applies."""
    target, source = _local_path(output), _local_path(dataset)
    if target is not None:
        refuse_dataset_or_nested(target, STAGE, (source,) if source is not None else ())


def _check_own_output(output: str, dataset: str) -> None:
    """Refuse an output holding data this runner did not write: the Beam form's shards (``part-00000-of-00001``),
    finished or left by a killed run, or a ``stats.json`` without ``run.json``. Its shards would be skipped by
    name and counted twice by every reader, and its ``stats.json`` overwritten. And one inside another run's
    dataset or finished stage folder (``check_not_in_another_run``, ``_check_not_nested``)."""
    check_not_in_another_run(output)
    _check_not_nested(output, dataset)
    fs, inner = _filesystem(output)
    if fs.get_file_info(posixpath.join(inner, "run.json")).type == pafs.FileType.NotFound and \
            fs.get_file_info(posixpath.join(inner, "stats.json")).type != pafs.FileType.NotFound:
        other = stage_of(_join(output, "stats.json"), read=_read_bytes)
        kind = f"a finished {other} run" if other and other != "features" else \
            "a finished run that lait features did not write (stats.json without run.json: the Beam form's?)"
        raise ValueError(f"{output} holds {kind}; use a new --output")
    foreign = []
    for sub in ("regions", "rejected"):
        folder = posixpath.join(inner, sub)
        if fs.get_file_info(folder).type == pafs.FileType.Directory:
            foreign += [posixpath.relpath(f, inner) for f in schemas.list_parquet_files(_join(output, sub))
                        if not OWN_FILES.fullmatch(posixpath.relpath(f, folder))]
    if foreign:
        raise ValueError(f"{output} holds files lait features did not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}: another run's, e.g. the Beam form's); "
                         f"use a new --output")


def run_marker_name(part: int) -> str:
    """The file that marks a run of part ``part`` (0 without ``--part``) of an output while it goes, for
    ``_claim_output``. The parts of one run go at once by design, each with a marker of its own. (Not the Beam
    form's ``pipeline.outputs.RUN_MARKER``, which that form's ``prepare_output`` reads as a run of its own; each
    form refuses a folder the other's marker names a live run of.)"""
    return f"_run.started.part-{part}.json"


#: The names ``run_marker_name`` gives, which the Beam form looks for (``features_beam.refuse_local_runs``).
RUN_MARKER_NAME = re.compile(r"_run\.started\.part-\d+\.json")


def _read_marker(path: str) -> dict | None:
    """A run marker (None: none, or one that cannot be read, which marks no run)."""
    try:
        marker = json.loads(_read_bytes(path))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _claim_output(output_path: str, part: int, parts: int) -> str:
    """Mark ``output_path`` as this process's run of ``part`` (``run_marker_name``: ``pipeline.outputs.run_marker``,
    the host, pid and start time of this process), or refuse it (``ValueError``, one line, nothing changed) while a
    run of that part is still going there (``pipeline.outputs.run_in_progress``; one of another host, which cannot be
    checked from here, too). Returns the marker's path, for ``_release_output``.

    Two runs of one part computed the same shards side by side, and the second removed, as a killed run's files
    (``_remove_partial_shards``), shards the first finished while the second checked which were complete: the
    first's ``stats.json`` then counted rows no longer on disk. The marker of a run that has ended is replaced;
    written exclusively (``_write_json``), so of two runs started at once one is refused.

    A Beam-form run still going there (``pipeline.outputs.RUN_MARKER``, which its ``prepare_output`` writes a
    moment before its run.json) is refused too: both ran, and every image was in regions/ twice. The claim holds
    the folder (``claim_lock``, which the Beam form's claim takes too) from reading the markers to writing this
    one, so a run claiming it meanwhile waits and then finds this one's marker, rather than have its own removed
    here as an ended run's."""
    path = _join(output_path, run_marker_name(part))
    which = f"features run of --part {part}/{parts}" if parts > 1 else "features run"
    with claim_lock(_local_path(output_path)):
        beam_path = _join(output_path, RUN_MARKER)
        beam = _read_marker(beam_path)
        stage = (beam or {}).get("stage") or STAGE
        what = "a features run of the Beam form (python -m pipeline.features)" if stage == STAGE else f"a {stage} run"
        problem = running_run_problem(output_path, beam, what, f"remove {beam_path}")
        if problem is not None:
            raise ValueError(problem)
        marker = _read_marker(path)
        problem = running_run_problem(output_path, marker, f"a {which}", f"remove {path}")
        if problem is not None:
            raise ValueError(problem)
        # an ended run's, or an unreadable one (on an object store, without the lock, also one written since it was
        # read, as before: such a store cannot refuse a name taken either)
        _delete_if_present(path)
        if not _write_json(path, run_marker(STAGE), exclusive=True):
            raise ValueError(marker_taken_problem(output_path, _read_marker(path), path, f"a {which}"))
    return path


def _release_output(marker_path: str) -> None:
    """Remove this process's run marker (``_claim_output``) once its run has ended: finished, stopped or failed."""
    marker = _read_marker(marker_path)
    if marker is not None and marker.get("pid") == os.getpid() and on_this_host(marker):
        _delete_if_present(marker_path)


def extract_regions(input_path: str, output_path: str, options: FeatureOptions, progress: bool = False,
                    detector: RegionDetector | None = None) -> dict:
    """Run the features stage locally; returns the ``stats.json`` contents."""
    started = time.perf_counter()
    check_paths(input_path, output_path)
    dataset = resolve_input(input_path)
    _check_output_outside(dataset, output_path)
    _check_own_output(output_path, dataset)
    # Everything that can fail on the input or the options fails here, before this run's books (run.json,
    # classes.json) exist: a retry with other settings is not refused because of a run that never started.
    shards, null_ids = plan_shards(dataset, options.images_per_shard)  # checks every input file too
    detector = detector or options.load_detector()
    spec = detector.spec
    device = detector.device
    topk = effective_topk(options.topk, spec)
    if topk < options.topk:
        logger.info("--topk %d is more than %s's %d classes: every box stores all %d (recorded as topk %d)",
                    options.topk, options.detector, topk, topk, topk)
    run_config = {
        "detector": options.detector, "feature_dim": spec.feature_dim, **options.weights_record(),
        "random_init": options.random_init, "random_init_seed": options.seed if options.random_init else None,
        "precision": detector.precision, "decode": resolved_decode(options.decode, device),
        "selection": asdict(options.selection), "topk": topk,
        "detector_config": spec.config, "images_per_shard": options.images_per_shard, "parts": options.parts,
    }
    # Before anything in the folder changes (run.json included): a run of this part still going there is refused
    marker = _claim_output(output_path, options.part, options.parts)
    try:
        _check_run_config(output_path, json.loads(json.dumps(run_config)), options.weights, len(spec.class_names))
        fs, inner = _filesystem(output_path)
        for sub in ("regions", "rejected"):  # present even when every image is rejected, for readers and audit
            fs.create_dir(posixpath.join(inner, sub), recursive=True)
        _write_json(_join(output_path, "classes.json"), classes_info(options.detector, spec, topk))
        _check_no_stale_shards(output_path, dataset, len(shards))
        mine = [s for s in shards if s.index % options.parts == options.part]
        done = {s.index for s in mine if _shard_complete(output_path, s, dataset)}
        todo = [s for s in mine if s.index not in done]
        _remove_partial_shards(output_path, todo, len(shards))
        if options.parts > 1:
            logger.info("part %d of %d: %d of the %d shards", options.part, options.parts, len(mine), len(shards))
        if done:
            logger.info("resuming: %d of %d shards already complete", len(done), len(mine))
        if options.part == 0:  # the rows without an id: this input's, not a previous input's (the file is rewritten)
            invalid = _join(output_path, "rejected", INVALID_FILE)
            if null_ids:
                rows = [schemas.rejected_row(STAGE, "image_id_missing", "input row without image_id")] * null_ids
                schemas.write_table(schemas.to_table(rows, "rejected"), invalid, "rejected")
            else:
                _delete_if_present(invalid)
        workers = options.num_workers
        loader = torch.utils.data.DataLoader(
            ShardImages(dataset, todo, spec, piece_size(options.batch_size), resolved_decode(options.decode, device),
                        options.read_window),
            batch_size=None,
            num_workers=workers,
            collate_fn=_keep,
            prefetch_factor=4 if workers else None,
            pin_memory=device.type == "cuda",
        )
        from tqdm import tqdm

        bar = tqdm(total=sum(s.size for s in todo), desc=f"features {options.detector}", unit="img",
                   disable=not progress)
        pending: dict[int, _ShardResult] = {}
        sizes = {s.index: s.size for s in todo}
        by_index = {s.index: s for s in todo}
        processed = 0
        phases: Counter = Counter()  # wall seconds of the main loop by what it waited on
        batch_sizes: Counter = Counter()  # detector batches by size (one padded shape each: how full they ran)
        first_batch = None
        # Finished shards are written by one background thread, so Parquet encoding overlaps detection;
        # at most two shards wait for it (memory), and its errors surface in the main loop. With a read window and
        # several workers, the shards of a round of their blocks (worker_pieces) complete together at its end: as
        # many may wait, so the detector does not stop while they are written (their results were held anyway).
        most_waiting = 2
        if options.read_window > 0 and workers > 1:
            piece = piece_size(options.batch_size)
            round_images = workers * worker_block(workers, piece, options.read_window) * piece
            most_waiting = max(2, -(-round_images // options.images_per_shard))
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lait-features-writer")
        writes: list[Future] = []

        def finish(index: int, result: _ShardResult) -> float:
            begun = time.perf_counter()
            _finish_shard(output_path, by_index[index], result, options.detector, spec.feature_dim)
            return time.perf_counter() - begun

        def book(index: int, count: int) -> None:
            """``count`` more images of shard ``index`` are done; a complete shard goes to the writer."""
            nonlocal processed
            result = pending.setdefault(index, _ShardResult())
            result.images += count
            processed += count
            bar.update(count)
            if result.images == sizes[index]:  # every image of the shard is in
                writes.append(writer.submit(finish, index, pending.pop(index)))

        def on_piece(piece: DecodedBatch) -> None:
            if piece.error:
                raise ValueError(piece.error)
            result = pending.setdefault(piece.shard, _ShardResult())
            for image_id, reason, detail in piece.rejects:
                result.rejected.append(schemas.rejected_row(STAGE, reason, detail, image_id=image_id))
            if piece.rejects:
                book(piece.shard, len(piece.rejects))

        batches = _batches(iter(loader), options.batch_size, on_piece,
                           key=lambda item: padded_shape(item, spec.size_divisible))
        ready = _decoded_ahead(batches, device,
                               enabled=resolved_decode(options.decode, device) == "device")
        try:
            mark = time.perf_counter()
            for batch, errors, decode_wait in ready:
                now = time.perf_counter()
                phases["waiting_for_data"] += now - mark - decode_wait
                phases["waiting_for_decode"] += decode_wait
                first_batch = now - started if first_batch is None else first_batch
                if any(error is not None for error in errors):  # JPEGs neither the device nor Pillow could decode
                    for item, error in zip(batch, errors):
                        if error is not None:
                            pending[item.shard].rejected.append(
                                schemas.rejected_row(STAGE, error.reason, error.detail, image_id=item.image_id))
                            book(item.shard, 1)
                    batch = [item for item, error in zip(batch, errors) if error is None]
                if batch:  # (a batch whose every JPEG failed to decode leaves nothing to detect)
                    batch_sizes[len(batch)] += 1
                outputs = detect_by_shape(detector, [item.input.pixels for item in batch], options.selection, topk)
                mark = time.perf_counter()
                phases["detecting"] += mark - now
                for item, regions in zip(batch, outputs):
                    result = pending[item.shard]
                    if regions is None:
                        result.rejected.append(schemas.rejected_row(STAGE, "out_of_memory", "did not fit in device memory alone", image_id=item.image_id))
                    elif regions.num_boxes == 0:
                        result.rejected.append(schemas.rejected_row(STAGE, "no_regions", "the detector proposed no boxes", image_id=item.image_id))
                    else:
                        result.regions.append(ImageRegions(item.image_id, item.input.width, item.input.height,
                                                           to_original_pixels(regions, item.input)))
                    book(item.shard, 1)
                while writes and (writes[0].done() or len(writes) > most_waiting):
                    phases["writing_background"] += writes.pop(0).result()
                now = time.perf_counter()
                phases["post_processing"] += now - mark
                mark = now
            for future in writes:
                phases["writing_background"] += future.result()
        finally:
            ready.close()  # stops the decoder thread when the loop ends early
            writer.shutdown(wait=True)
        bar.close()
        # This part's shards are all written now; the run is complete when the other parts' are too.
        missing = [s.index for s in shards if s.index % options.parts != options.part
                   and not _shard_complete(output_path, s, dataset)]
        complete = not missing
        if complete:
            stats = summarize(output_path, shards, null_ids)
        else:  # other parts are still running: this part's books, and no stats.json yet
            stats = summarize(output_path, mine, null_ids if options.part == 0 else 0)
            stats["shards_missing"] = missing_shards(missing, options.parts)
            logger.info("part %d of %d done; the run still lacks %s; the part that completes it writes stats.json",
                        options.part, options.parts, stats["shards_missing"])
        seconds = time.perf_counter() - started

        stats.update({
            "input": input_reference(input_path, output_path),
            "complete": complete,
            "part": options.part,
            "parts": options.parts,
            "detector": options.detector,
            "feature_dim": spec.feature_dim,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": detector.precision,
            "selection": asdict(options.selection),
            "shards_resumed": len(done),
            "images_processed": processed,
            "seconds": round(seconds, 3),
            "seconds_to_first_batch": round(first_batch, 3) if first_batch is not None else None,
            "seconds_by_phase": {k: round(v, 3) for k, v in sorted(phases.items())},
            "batches": sum(batch_sizes.values()),
            "mean_batch_size": (round(sum(n * c for n, c in batch_sizes.items()) / sum(batch_sizes.values()), 2)
                                if batch_sizes else None),
            "images_per_s": round(processed / seconds, 3) if seconds > 0 else None,
        })
        if complete:
            _write_json(_join(output_path, "stats.json"), stats)
        return stats
    finally:
        _release_output(marker)  # (stopped or failed: the run has ended all the same)


def missing_shards(indices: list[int], parts: int, shown: int = 8) -> str:
    """The shards a run still lacks and the part that computes them: ``1, 3 (--part 1/2); 2 (--part 0/2)``."""
    by_part: dict[int, list[int]] = {}
    for index in indices:
        by_part.setdefault(index % parts, []).append(index)
    return "; ".join(", ".join(map(str, found[:shown])) + (f", ... ({len(found)} shards)" if len(found) > shown else "")
                     + f" (--part {part}/{parts})" for part, found in sorted(by_part.items()))


def _shard_complete(output_path: str, shard: Shard, dataset: str) -> bool:
    """Whether ``shard`` was written whole (its stats file, written last, exists), from the images it holds now.

    A shard written from other images (the input changed since: another ``--input``, files added or
    removed) would be skipped, its images never computed and another input's regions kept: refused. Its ids'
    fingerprint (``ShardFingerprint``) and its count must both match. One that only grew (``_shard_grew``: files
    added after the others fill the earlier run's last shard) is not complete: it is computed again.

    A shard fingerprinted by an older run (``FINGERPRINT_PREFIX`` missing: ids hashed each followed by a line
    break) is checked in that form, which is unambiguous when no id of the shard now holds a line break and the
    counts match (the hashed text then splits one way only). Otherwise it cannot be checked against the input:
    refused, as a shard of another input is (use a new --output), rather than skipped unchecked.
    """
    paths = _shard_paths(output_path, shard.index)
    stats = _read_shard_stats(paths["stats"])
    if stats is None:
        return False
    older_form = not stats["images"].startswith(FINGERPRINT_PREFIX)
    expected = shard.legacy_images if older_form else shard.images  # None: ids the older form cannot tell apart
    if expected is None or stats["images"] != expected or stats["in"] != shard.size:
        if _shard_grew(dataset, shard, stats):
            logger.info("shard %d held %d images, and the files added to %s fill it to %d: computed again",
                        shard.index, stats["in"], dataset, shard.size)
            return False
        if older_form:
            raise ValueError(f"{output_path} holds shard {shard.index}, written by an older lait features, of other "
                             f"images than {dataset} gives it now (or of ids holding line breaks, which that "
                             f"version's record cannot tell apart); use a new --output")
        raise ValueError(f"{output_path} holds shard {shard.index} of other images than {dataset} gives it now "
                         f"(another input, or files added or removed since that run); use a new --output")
    problem = _shard_files_problem(paths, stats)
    if problem is not None:  # its books would count rows that are not there (or not count some that are)
        logger.warning("%s: %s; shard %d is computed again", paths["stats"], problem, shard.index)
        return False
    return True


def _shard_grew(dataset: str, shard: Shard, stats: dict) -> bool:
    """Whether a complete shard's recorded images (``stats``) are a strict prefix of the images it holds now: the
    earlier run's last shard, not full, that files added after the others fill up (``plan_shards`` carries the
    fill across files). Its images are the same and in the same place, so computing it again is a resume; any
    other difference is another input, refused by ``_shard_complete``."""
    recorded = stats["in"]  # a shard's stats count every image it held (``_finish_shard``)
    if recorded >= shard.size:
        return False
    digest = ShardFingerprint()
    left = recorded
    for file, group, rows in shard.pieces:
        if not left:
            break
        for image_id in read_image_ids(check_input_file(dataset, file), file, group, rows[:left]):
            digest.add(image_id)
        left -= min(left, len(rows))
    if not stats["images"].startswith(FINGERPRINT_PREFIX):  # an older run's record, in its form where unambiguous
        return digest.legacy_hexdigest() is not None and digest.legacy_hexdigest() == stats["images"]
    return digest.hexdigest() == stats["images"]


def _read_shard_stats(path: str) -> dict | None:
    """A shard's stats file (None when absent); ``ValueError`` naming it when it is not what ``_finish_shard``
    writes (edited by hand: a key missing, a count of another type), which the books cannot add up."""
    stats = _read_json(path)
    problem = None if stats is None else _shard_stats_problem(stats)
    if problem is not None:
        raise ValueError(f"{path}: {problem}; the output is damaged: use a new --output")
    return stats


#: What a shard's stats file holds (``_finish_shard``), as the books read it.
SHARD_COUNTS = ("in", "kept", "rejected", "boxes", "boxes_min", "boxes_max")


def _shard_stats_problem(stats: dict) -> str | None:
    """What makes a shard's stats file unusable for the books (a key missing, a count of another type), or None."""
    if not isinstance(stats.get("images"), str):
        return "no 'images' fingerprint"
    for key in SHARD_COUNTS:
        if type(stats.get(key)) is not int or stats[key] < 0:
            return f"{key!r} is {stats.get(key)!r}, not a count"
    reasons = stats.get("rejected_by_reason")
    if not isinstance(reasons, dict) or any(type(n) is not int or n < 0 for n in reasons.values()):
        return f"'rejected_by_reason' is {reasons!r}, not counts by reason"
    if stats["in"] != stats["kept"] + stats["rejected"] or sum(reasons.values()) != stats["rejected"]:
        return "its counts do not add up"
    return None


def _shard_files_problem(paths: dict[str, str], stats: dict) -> str | None:
    """How a shard's data files differ from its stats (a file deleted, replaced, or left over), or None. The row
    counts come from the Parquet footers alone."""
    for sub, key in (("regions", "kept"), ("rejected", "rejected")):
        fs, inner = _filesystem(paths[sub])
        present = fs.get_file_info(inner).type == pafs.FileType.File
        if not present:
            if stats[key]:
                return f"its {sub} file is missing ({stats[key]} rows counted)"
            continue
        try:
            rows = _open_parquet(paths[sub], inner).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            return f"its {sub} file is unreadable ({_why(exc)})"
        if rows != stats[key]:
            return f"its {sub} file holds {rows} rows, {stats[key]} counted"
    return None


def _check_no_stale_shards(output_path: str, dataset: str, count: int) -> None:
    """Refuse an output holding shards beyond the ``count`` the input makes now (files were removed from it):
    their regions would stay among this run's."""
    fs, inner = _filesystem(output_path)
    listed = fs.get_file_info(pafs.FileSelector(posixpath.join(inner, "shards"), allow_not_found=True))
    stale = sorted((posixpath.basename(f.path) for f in listed if f.path.endswith(".json")
                    and _shard_number(posixpath.basename(f.path)) >= count), key=_shard_number)  # part-99999 first
    if stale:
        raise ValueError(f"{output_path} holds shards {', '.join(stale)}, but {dataset} makes only {count} shards now "
                         f"(files removed since that run, or another input); use a new --output")


def _shard_number(name: str, suffix: str = ".json") -> int:
    """The index in ``part-00012.json`` (``part-00012.parquet`` with that ``suffix``); -1 for any other name."""
    if not name.endswith(suffix):
        return -1
    head, _, number = name[: -len(suffix)].rpartition("-")
    return int(number) if head == SHARD_PREFIX and number.isdigit() else -1


def _delete_if_present(path: str) -> None:
    fs, inner = _filesystem(path)
    try:
        fs.delete_file(inner)
    except FileNotFoundError:
        pass


def _remove_partial_shards(output_path: str, todo: list[Shard], count: int) -> None:
    """Remove the data files a killed run left of the shards this run computes (written before the shard's stats
    file, which marks it complete), and of shards at ``count`` and beyond (which have no stats file either:
    ``_check_no_stale_shards`` refuses those that have one).

    A shard writes only its non-empty files, so an old file would stay beside the new ones: an image kept in one
    run and rejected in the other would be in both ``regions/`` and ``rejected/``, and disk would not match the books.
    """
    for shard in todo:
        paths = _shard_paths(output_path, shard.index)
        _delete_if_present(paths["stats"])  # (one whose data files were lost: the shard is not complete)
        _delete_if_present(paths["regions"])
        _delete_if_present(paths["rejected"])
    fs, inner = _filesystem(output_path)
    for sub in ("regions", "rejected"):
        listed = fs.get_file_info(pafs.FileSelector(posixpath.join(inner, sub), allow_not_found=True))
        for found in listed:
            if _shard_number(posixpath.basename(found.path), ".parquet") >= count:
                _delete_if_present(_join(output_path, sub, posixpath.basename(found.path)))


def _local_path(path: str) -> str | None:
    """``path`` as a local path (``file://`` URLs too); None for a remote URL."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


def _check_output_outside(dataset: str, output_path: str) -> None:
    """Refuse an output folder inside the input dataset (a rerun would read its own regions as input), or one that
    holds it (as the Beam form refuses, ``pipeline.outputs.prepare_output``). A single
    file's dataset is its folder (a rerun given the folder would read them); ``file://`` URLs are local paths."""
    source, target = _local_path(dataset), _local_path(output_path)
    if source is None or target is None:
        return
    source, target = os.path.realpath(source), os.path.realpath(target)
    if os.path.isfile(source):
        source = os.path.dirname(source)
    # (a dataset that is not there: the candidates/ a crawl that kept nothing never wrote, which an output
    # there would create)
    if os.path.commonpath([source, target]) == source:
        raise ValueError(f"--output {output_path} is inside the input {dataset}; write the features elsewhere")
    if os.path.commonpath([source, target]) == target:  # its regions/ and rejected/ beside the dataset it reads
        raise ValueError(f"--output {output_path} holds the input {dataset}; write the features elsewhere")


def summarize(output_path: str, shards: list[Shard], null_ids: int) -> dict:
    """The stage books from the per-shard stats files: in = kept + rejected, reasons, box counts."""
    totals = Counter()
    reasons = Counter({"image_id_missing": null_ids}) if null_ids else Counter()
    box_min, box_max = None, 0
    for shard in shards:
        stats = _read_shard_stats(_shard_paths(output_path, shard.index)["stats"])
        if stats is None:
            raise RuntimeError(f"shard {shard.index} has no stats file; the run did not finish")
        for key in ("in", "kept", "rejected", "boxes"):
            totals[key] += stats[key]
        reasons.update(stats["rejected_by_reason"])
        if stats["kept"]:
            box_min = stats["boxes_min"] if box_min is None else min(box_min, stats["boxes_min"])
            box_max = max(box_max, stats["boxes_max"])
    return {
        "stage": STAGE,
        "in": totals["in"] + null_ids,
        "kept": totals["kept"],
        "rejected": totals["rejected"] + null_ids,
        "rejected_by_reason": dict(reasons),
        "shards": len(shards),
        "boxes_total": totals["boxes"],
        "boxes_per_image": {
            "min": box_min or 0,
            "mean": round(totals["boxes"] / totals["kept"], 3) if totals["kept"] else 0,
            "max": box_max,
        },
    }


# ----------------------------------------------------------------------------------------------
# The same stage as a Beam transform lives in pipeline.features_beam (imported on first use, so the
# local runner needs no Beam); its names stay reachable from here.
# ----------------------------------------------------------------------------------------------

_BEAM_NAMES = ("METRICS_NAMESPACE", "REJECTED", "KeyRowsByImageFn", "DecodeImagesFn", "RegionModelHandler",
               "ToRegionRowsFn", "region_row", "ExtractRegions", "run")


def __getattr__(name: str):
    if name in _BEAM_NAMES:
        from pipeline import features_beam

        return getattr(features_beam, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.features``: the Beam form, its errors as one line (status 2: bad input, options or
    weights; a Beam worker that died: ``failure_line``'s status)."""
    # The Beam module imported by name, so Beam pickles the DoFns as pipeline.features_beam.*, which workers import.
    from pipeline import features_beam
    from pipeline.runners import failure_line, run_failures

    try:
        print(json.dumps(features_beam.run(argv), indent=2))
    except (ValueError, OSError) as exc:  # bad input, options or weights (missing: an OSError): not a traceback
        print(f"python -m pipeline.features: error: {exc}", file=sys.stderr)
        return 2
    except run_failures() as exc:  # a Beam worker died, or its error came back as text: one line
        status, line = failure_line(exc)
        print(f"python -m pipeline.features: error: {line}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
