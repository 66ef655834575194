"""``coco-r50-fpn`` (and ``-v2``): torchvision's COCO Faster R-CNN, 91 classes, 1024-d ``fc7`` features.

The stored boxes are the class-regressed boxes of each selected proposal's top class, and the
features are pooled again at those boxes, so a feature always describes its box.
"""
from __future__ import annotations

import logging
import os

import torch
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)

from model.detectors.base import DetectorSpec, RegionDetector

logger = logging.getLogger(__name__)

VARIANTS = {
    "coco-r50-fpn": (fasterrcnn_resnet50_fpn, FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
    "coco-r50-fpn-v2": (fasterrcnn_resnet50_fpn_v2, FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1),
}
IMAGENET_MEAN = tuple(255 * v for v in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255 * v for v in (0.229, 0.224, 0.225))
#: Batches are padded to multiples of this (the coarsest FPN stride).
SIZE_DIVISIBLE = 32
DEFAULT_CONFIG = {"min_size": 800, "max_size": 1333, "rpn_pre_nms_top_n": 1000, "rpn_post_nms_top_n": 1000}


def build(name: str = "coco-r50-fpn", config: dict | None = None) -> RegionDetector:
    """The torchvision COCO detector with random weights (load the published ones with ``load_state_dict``)."""
    factory, weights = VARIANTS[name]
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    model = factory(
        weights=None,
        weights_backbone=None,
        num_classes=len(weights.meta["categories"]),
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_top_n"],
        rpn_post_nms_top_n_test=cfg["rpn_post_nms_top_n"],
    )
    spec = DetectorSpec(
        name=name,
        class_names=list(weights.meta["categories"][1:]),  # index 0 is __background__
        feature_dim=1024,
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        pixel_mean=IMAGENET_MEAN,
        pixel_std=IMAGENET_STD,
        size_divisible=SIZE_DIVISIBLE,
        box_source="regressed",
        config=cfg,
    )
    return RegionDetector(spec, model)


def published_weights_path(name: str) -> str:
    """Where torchvision caches the published weights of ``name`` (``$TORCH_HOME/hub/checkpoints``)."""
    url = VARIANTS[name][1].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def missing_weights_message(name: str) -> str:
    """What to do when the published weights of ``name`` are not in torchvision's cache."""
    path = published_weights_path(name)
    return (f"no weights for {name}: put {os.path.basename(path)} ({VARIANTS[name][1].url}) at {path}, "
            f"or pass --weights PATH, or --download-weights to let torchvision fetch it, "
            f"or --random-init for a pipeline check")


def published_state(name: str, download: bool = False) -> dict[str, torch.Tensor]:
    """The published COCO weights from torchvision's cache, downloading them only when asked."""
    path = published_weights_path(name)
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    if not download:
        raise FileNotFoundError(missing_weights_message(name))
    logger.info("downloading the %s weights through torchvision", name)
    return VARIANTS[name][1].get_state_dict(progress=True)
