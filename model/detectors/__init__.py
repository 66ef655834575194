"""Region detectors behind one interface, chosen by name.

``build_detector(name, weights=..., random_init=...)`` returns a ``RegionDetector``: uint8 images
at its input size in, bottom-up-attention regions (boxes, float16 pooled features, top class and
top-k class distribution) out. Names: ``vg-r101-c4`` (bottom-up attention, 1600 VG classes, 2048-d),
``coco-r50-fpn`` / ``coco-r50-fpn-v2`` (torchvision COCO, 1024-d), ``demo`` (small, 256-d).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os

import torch

from model.detectors.base import DetectorSpec, RegionDetector, Regions, check_input_sizes
from model.detectors.selection import BoxSelection, select_boxes, select_boxes_batched
# where BERT's loading reads it too, without torchvision (re-exported here: "unreadable_weights" in __all__)
from model.weights_errors import unreadable_weights

logger = logging.getLogger(__name__)

DETECTORS = ("vg-r101-c4", "coco-r50-fpn", "coco-r50-fpn-v2", "demo")
FEATURE_DIMS = {"vg-r101-c4": 2048, "coco-r50-fpn": 1024, "coco-r50-fpn-v2": 1024}
# File names of the published VG weights, looked for in the weights home when --weights is absent.
VG_WEIGHT_FILES = (
    "faster_rcnn_from_caffe_attr_original.pkl",
    "faster_rcnn_from_caffe_attr.pkl",
    "faster_rcnn_from_caffe.pkl",
    "pytorch_model.bin",
)
#: The seed of ``random_init`` weights: the same options build the same random model, so a resumed run, another
#: ``--part`` or a Beam worker computes with the weights the run began with (``build_detector(seed=...)``).
RANDOM_INIT_SEED = 0


class WeightsNotFoundError(FileNotFoundError):
    """A detector was asked for without weights it can find; the message says where to put them."""


def weights_home(name: str) -> str:
    """Where a detector's weights are looked for by default: ``$LAIT_DETECTOR_HOME/NAME``."""
    root = os.environ.get("LAIT_DETECTOR_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "lait", "detectors")
    return os.path.join(root, name)


def read_class_names(path: str) -> list[str]:
    """Class names from a text file (one per line; ``a,b`` synonyms keep the first) or a JSON list (or a
    ``classes.json`` with ``class_names``); ``ValueError`` naming the file when it holds none."""
    try:
        # utf-8-sig: a file saved with a byte-order mark (Windows editors) named class 0 '\ufeffyes', and a JSON
        # list with one was no JSON at all; the mark is no part of the names.
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: class names file is not UTF-8 text ({exc})") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON file ({exc})") from None
        if isinstance(data, dict):
            if "class_names" not in data:
                raise ValueError(f"{path}: a JSON object without 'class_names'; give a list of names or "
                                 f"{{\"class_names\": [...]}}")
            data = data["class_names"]
        if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
            raise ValueError(f"{path}: class names must be a JSON list of strings")
        names = list(data)
    else:
        names = [line.split(",")[0].strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    return names


@contextlib.contextmanager
def _reading(path: str):
    """A weights file that cannot be read (truncated, text, not the format its name says) as one ``ValueError``
    naming it and saying what is wrong (``unreadable_weights``), not the loader's own error; missing files,
    refused pickles and errors naming the file pass."""
    try:
        yield
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError) or path in str(exc):
            raise
        raise unreadable_weights(path, exc) from None
    except Exception as exc:  # safetensors, torch.load and unpickling each fail their own way on a bad file
        raise unreadable_weights(path, exc) from None


@contextlib.contextmanager
def _seeded(seed: int):
    """Random weights drawn from ``seed``, leaving the caller's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def feature_dim_of(name: str, weights: str | None = None) -> int:
    """The feature width of a detector, without building it."""
    if name == "demo":
        if not weights:
            from model.detectors.demo import DEFAULT_CONFIG

            return DEFAULT_CONFIG["feature_dim"]
        from model.detectors.demo import read_config

        with _reading(weights):
            return int(read_config(weights)["feature_dim"])
    if name not in FEATURE_DIMS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return FEATURE_DIMS[name]


def attribute_count(name: str, weights: str | None = None) -> int:
    """How many attributes a detector's weights predict (0: no attribute head), without building it."""
    if name != "vg-r101-c4" or not weights:
        return 0
    from model.detectors.weights import tensor_shape

    with _reading(weights):
        shape = tensor_shape(weights, ("roi_heads.box_predictor.attr_score.weight",
                                       "roi_heads.attribute_head.attr_score.weight"))
    return int(shape[0]) - 1 if shape is not None else 0


def size_divisible(name: str) -> int:
    """What a detector pads its batches to multiples of, without building it."""
    if name == "vg-r101-c4":
        from model.detectors.vg_r101_c4 import SIZE_DIVISIBLE
    elif name.startswith("coco-"):
        from model.detectors.coco_r50_fpn import SIZE_DIVISIBLE
    elif name == "demo":
        from model.detectors.demo import SIZE_DIVISIBLE
    else:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return SIZE_DIVISIBLE


def input_sizes(name: str, weights: str | None = None, config: dict | None = None) -> tuple[int, int]:
    """The (min_size, max_size) a detector resizes images to, without building it (for decode workers)."""
    if name == "vg-r101-c4":
        from model.detectors.vg_r101_c4 import DEFAULT_CONFIG as defaults
    elif name.startswith("coco-"):
        from model.detectors.coco_r50_fpn import DEFAULT_CONFIG as defaults
    elif name == "demo":
        from model.detectors import demo

        with _reading(weights) if weights else contextlib.nullcontext():
            defaults = demo.read_config(weights) if weights else demo.DEFAULT_CONFIG
    else:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    merged = {**defaults, **(config or {})}
    check_input_sizes(merged["min_size"], merged["max_size"])
    return int(merged["min_size"]), int(merged["max_size"])


def check_weights_choice(name: str, weights: str | None, random_init: bool) -> None:
    """Refuse ``--random-init`` with ``--weights`` for a detector that would ignore the file (all but ``demo``,
    which takes its architecture and class names from it): the run would record weights it never used."""
    if random_init and weights and name != "demo":
        raise ValueError(f"--random-init builds {name} with random weights, so --weights {weights} would be ignored: "
                         f"leave out one of them (only demo takes its architecture from --weights with --random-init)")


def weights_file(name: str, weights: str | None = None, random_init: bool = False, download: bool = False) -> str | None:
    """The local file a detector's weights are read from (None: random weights without a file), without reading it.

    ``weights`` when given (``WeightsNotFoundError`` when it does not exist); else vg-r101-c4's weights home,
    torchvision's cache for coco (its path even before ``download`` fetched it). What a run records and
    fingerprints, and what the Beam driver checks before the workers start.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    check_weights_choice(name, weights, random_init)
    if weights:
        if not os.path.isfile(weights):
            raise WeightsNotFoundError(f"no weights file at {weights}")
        return weights
    if random_init:
        return None
    if name == "vg-r101-c4":
        home = weights_home(name)
        found = [os.path.join(home, f) for f in VG_WEIGHT_FILES if os.path.exists(os.path.join(home, f))]
        if not found:
            raise WeightsNotFoundError(
                f"vg-r101-c4 needs the published bottom-up-attention weights: pass --weights PATH to "
                f"faster_rcnn_from_caffe_attr_original.pkl (10-100 boxes), faster_rcnn_from_caffe[_attr].pkl "
                f"(36 boxes) or the frcnn-vg-finetuned pytorch_model.bin, or put one of them in {home}; "
                f"--random-init builds it with random weights for pipeline checks"
            )
        return found[0]
    if name.startswith("coco-"):
        from model.detectors import coco_r50_fpn

        path = coco_r50_fpn.published_weights_path(name)
        if not os.path.exists(path) and not download:
            raise WeightsNotFoundError(coco_r50_fpn.missing_weights_message(name))
        return path
    raise WeightsNotFoundError(
        "the demo detector needs the weights file train_demo_detector wrote: pass --weights PATH "
        "(or --random-init for a pipeline check)"
    )


def build_detector(
    name: str,
    weights: str | None = None,
    random_init: bool = False,
    config: dict | None = None,
    class_names: list[str] | None = None,
    download: bool = False,
    seed: int = RANDOM_INIT_SEED,
) -> RegionDetector:
    """A detector by name, with published/trained weights from ``weights`` or random ones (``random_init``).

    ``config`` overrides the architecture's settings (e.g. ``min_size``/``max_size``), for demo weights too:
    their file's config is the base. ``random_init`` with ``weights`` is for demo alone (the file's
    architecture, fresh weights); the others refuse it. Random weights are drawn from ``seed`` (default
    ``RANDOM_INIT_SEED``), not from the caller's random state, which is left as it was: the same arguments
    give the same model.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    check_weights_choice(name, weights, random_init)
    if class_names is not None and (name.startswith("coco-") or (name == "demo" and weights)):
        source = "torchvision's COCO categories" if name.startswith("coco-") else "its weights file"
        raise ValueError(f"--classes: {name} takes its class names from {source}; leave --classes out")
    randomly = _seeded(seed) if random_init else contextlib.nullcontext()
    if name == "vg-r101-c4":
        from model.detectors import vg_r101_c4

        with randomly:
            detector = vg_r101_c4.build(config, class_names)
        if random_init:
            return detector
        weights = weights_file(name, weights)
        with _reading(weights):
            load_vg_weights(detector, weights)
        return detector
    if name.startswith("coco-"):
        from model.detectors import coco_r50_fpn
        from model.detectors.weights import load_state

        with randomly:
            detector = coco_r50_fpn.build(name, config)
        if random_init:
            return detector
        # --weights, else torchvision's cache (a damaged download is as unreadable as a damaged --weights)
        source = weights or coco_r50_fpn.published_weights_path(name)
        try:
            with _reading(source) if weights or os.path.exists(source) else contextlib.nullcontext():
                state = load_state(weights) if weights else coco_r50_fpn.published_state(name, download=download)
                detector.model.load_state_dict(state)
        except FileNotFoundError as exc:
            raise WeightsNotFoundError(str(exc)) from None
        return detector
    from model.detectors import demo

    if random_init and not weights:
        with randomly:
            return demo.build(config, class_names or [f"class_{i}" for i in range(8)])
    weights = weights_file(name, weights)
    with _reading(weights):
        merged = {**demo.DEFAULT_CONFIG, **demo.read_config(weights), **(config or {})}
    check_input_sizes(merged["min_size"], merged["max_size"])  # an override's error, not the file's
    with _reading(weights):
        if random_init:  # the trained architecture and class names, fresh weights
            with randomly:
                return demo.build(merged)
        return demo.load(weights, config)


def load_vg_weights(detector: RegionDetector, path: str) -> None:
    """Load a bottom-up-attention checkpoint (detectron2 .pkl, HF frcnn-vg-finetuned .bin, or ours)."""
    from model.detectors.vg_r101_c4 import add_attribute_head, convert_detectron2_state, is_detectron2_state
    from model.detectors.weights import load_state

    state = load_state(path)
    if is_detectron2_state(state):
        state = convert_detectron2_state(state, num_classes=detector.spec.config["num_classes"])
    scores = state.get("roi_heads.attribute_head.attr_score.weight")
    if scores is not None and getattr(detector.model.roi_heads, "attribute_head", None) is None:
        add_attribute_head(detector, int(scores.shape[0]) - 1)  # the checkpoint has one: region attributes too
        logger.info("%s has an attribute head (%d attributes): regions get their top attributes", path, scores.shape[0] - 1)
    missing, unexpected = detector.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit vg-r101-c4: missing {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {sorted(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


__all__ = [
    "BoxSelection",
    "DETECTORS",
    "DetectorSpec",
    "RegionDetector",
    "RANDOM_INIT_SEED",
    "Regions",
    "WeightsNotFoundError",
    "attribute_count",
    "build_detector",
    "check_weights_choice",
    "feature_dim_of",
    "input_sizes",
    "load_vg_weights",
    "read_class_names",
    "select_boxes",
    "select_boxes_batched",
    "unreadable_weights",
    "weights_file",
    "weights_home",
]
