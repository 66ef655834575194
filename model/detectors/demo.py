"""``demo``: a small Faster R-CNN that trains from scratch on 2 CPU cores in minutes.

A six-conv stride-8 backbone (GroupNorm, so small batches train), one feature map, a 12-anchor RPN,
7x7 RoIAlign and a two-layer MLP head whose 256-d output is the region feature. The demo trains it on
its generated scenes with ``train_demo_detector`` and extracts with ``lait features --detector demo
--weights PATH``; the weights file (safetensors) carries its config, class names included. A file is read as what its
bytes say it is (``model.detectors.weights.weights_format``), whatever its name: safetensors with the config in its
metadata, or a torch checkpoint with the config as JSON beside it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.transforms.functional import pil_to_tensor

import schemas
from model.detectors import _reading
from model.detectors.base import DetectorSpec, RegionDetector
from model.detectors.weights import load_state, weights_format

logger = logging.getLogger(__name__)

CONFIG_KEY = "lait.detector_config"
#: Batches are padded to multiples of this.
SIZE_DIVISIBLE = 32
DEFAULT_CONFIG = {
    "channels": [32, 32, 64, 64, 128, 128],
    "strides": [2, 1, 2, 1, 2, 1],
    "feature_dim": 256,
    "anchor_sizes": [16, 32, 64, 128],
    "aspect_ratios": [0.5, 1.0, 2.0],
    "min_size": 192,
    "max_size": 320,
    "rpn_pre_nms_top_n": 300,
    "rpn_post_nms_top_n": 100,
    "pixel_mean": [127.5, 127.5, 127.5],
    "pixel_std": [64.0, 64.0, 64.0],
}


def _backbone(channels: Sequence[int], strides: Sequence[int]) -> nn.Sequential:
    layers, cin = [], 3
    for cout, stride in zip(channels, strides):
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True)]
        cin = cout
    net = nn.Sequential(*layers)
    net.out_channels = cin
    return net


def build(config: dict | None = None, class_names: Sequence[str] | None = None) -> RegionDetector:
    """The demo architecture for ``class_names`` (from the config when not given), random weights."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    names = list(class_names if class_names is not None else cfg.get("class_names") or [])
    if not names:
        raise ValueError("the demo detector needs its class names (train_demo_detector saves them)")
    cfg["class_names"] = names
    backbone = _backbone(cfg["channels"], cfg["strides"])
    anchors = AnchorGenerator(sizes=(tuple(cfg["anchor_sizes"]),), aspect_ratios=(tuple(cfg["aspect_ratios"]),))
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * 49, cfg["feature_dim"]),
        box_predictor=FastRCNNPredictor(cfg["feature_dim"], len(names) + 1),
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        image_mean=[m / 255 for m in cfg["pixel_mean"]],
        image_std=[s / 255 for s in cfg["pixel_std"]],
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_top_n"],
        rpn_post_nms_top_n_test=cfg["rpn_post_nms_top_n"],
        box_batch_size_per_image=cfg.get("box_batch_size_per_image", 128),
    )
    spec = DetectorSpec(
        name="demo",
        class_names=names,
        feature_dim=cfg["feature_dim"],
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        pixel_mean=tuple(cfg["pixel_mean"]),
        pixel_std=tuple(cfg["pixel_std"]),
        size_divisible=SIZE_DIVISIBLE,
        box_source="regressed",
        config=cfg,
    )
    return RegionDetector(spec, model)


def read_config(path: str) -> dict:
    """The config saved with demo weights: a safetensors file's metadata, else the JSON file beside them.

    Safetensors by the file's bytes, not its name (``weights_format``): one renamed ``.pt`` was read as a torch file,
    its metadata unread, and refused as having no config. ``FileNotFoundError`` naming the file when it is missing or
    has no config; ``ValueError`` (one line naming it, ``unreadable_weights``) when it is no readable weights file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    with _reading(path):
        if weights_format(path) == "safetensors":
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            if CONFIG_KEY in meta:
                return json.loads(meta[CONFIG_KEY])
    side = os.path.splitext(path)[0] + ".json"
    if os.path.exists(side):
        with open(side, encoding="utf-8") as f:
            return json.load(f)
    with _reading(path):
        # An empty, text or cut file has no config either, but what is wrong is the file itself: said so
        # (this reads the weights, on the way to an error only).
        load_state(path)
    raise FileNotFoundError(f"{path}: no demo detector config (neither safetensors metadata nor {side})")


def load(path: str, config: dict | None = None) -> RegionDetector:
    """A trained demo detector from the weights file ``train_demo_detector`` wrote; ``config`` overrides the
    file's run-time settings (``min_size``/``max_size``, proposal counts). The file is read by its bytes
    (``load_state``: safetensors, or a torch checkpoint with its config beside it), whatever its name; errors as
    ``read_config``'s, and a file whose weights do not fit its config is a ``ValueError`` naming it too."""
    path = os.fspath(path)
    cfg = {**read_config(path), **(config or {})}
    detector = build(cfg)
    with _reading(path):
        detector.model.load_state_dict(load_state(path))
    return detector.eval()


def save(detector: RegionDetector, out_path: str) -> str:
    """Write weights (safetensors, config in its metadata) and the same config as JSON beside them."""
    out_path = os.fspath(out_path)
    if not out_path.endswith(".safetensors"):
        out_path += ".safetensors"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    config = json.dumps({"detector": "demo", **detector.spec.config})
    state = {k: v.detach().contiguous().cpu() for k, v in detector.model.state_dict().items()}
    save_file(state, out_path, metadata={CONFIG_KEY: config})
    with open(os.path.splitext(out_path)[0] + ".json", "w", encoding="utf-8") as f:
        f.write(config)
    return out_path


def _to_target(image: Image.Image, boxes, labels, flip: bool) -> tuple[torch.Tensor, dict]:
    tensor = pil_to_tensor(image.convert("RGB")).float() / 255
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)) + 1  # 0 is background
    if flip:
        width = tensor.shape[2]
        tensor = tensor.flip(2)
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return tensor, {"boxes": boxes, "labels": labels}


def train_demo_detector(
    samples: Sequence[tuple[Image.Image, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    out_path: str,
    epochs: int = 12,
    batch_size: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    config: dict | None = None,
    progress: bool = False,
    source: dict | None = None,
    record_path: str | None = None,
) -> dict:
    """Train the demo detector on (image, boxes [n,4] x1y1x2y2 pixels, labels [n] 0-based) and save it.

    Returns ``{"path": weights file, "losses": mean loss per epoch, "config": ..., "record": ...}``. The network
    input short side defaults to the samples' median short side, so generated scenes are not rescaled. Beside the
    weights, the training record (``record_path``, default ``<weights>.training.json``, written whole or not at
    all): ``epochs``, ``samples``, ``batch_size``, ``lr``, ``seed``, ``losses``, and ``source`` as the caller
    gives it (where the samples came from; the demo: its scenes' seed and count).
    """
    if not samples:
        raise ValueError("train_demo_detector needs at least one sample")
    for i, (_, boxes, labels) in enumerate(samples):
        labels = np.asarray(labels).reshape(-1)
        if len(np.asarray(boxes).reshape(-1, 4)) != len(labels):
            raise ValueError(f"sample {i}: {len(np.asarray(boxes).reshape(-1, 4))} boxes but {len(labels)} labels")
        if len(labels) and not (0 <= labels.min() and labels.max() < len(class_names)):
            raise ValueError(f"sample {i}: labels must lie in [0, {len(class_names)})")
    random.seed(seed)
    torch.manual_seed(seed)
    cfg = dict(config or {})
    if "min_size" not in cfg:
        shorts = sorted(min(image.size) for image, _, _ in samples)
        cfg["min_size"] = int(shorts[len(shorts) // 2])
        cfg.setdefault("max_size", int(max(max(image.size) for image, _, _ in samples)))
    detector = build(cfg, class_names)
    model = detector.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(samples) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(50, total // 10 + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    losses = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="train demo detector", unit="step")
    order = list(range(len(samples)))
    for epoch in range(epochs):
        random.shuffle(order)
        epoch_losses = []
        for start in range(0, len(order), batch_size):
            batch = [_to_target(*samples[i], flip=random.random() < 0.5) for i in order[start:start + batch_size]]
            images, targets = zip(*batch)
            loss_parts = model(list(images), list(targets))
            loss = sum(loss_parts.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            epoch_losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}")
        losses.append(float(np.mean(epoch_losses)))
        logger.info("demo detector epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
    if bar is not None:
        bar.close()
    detector.eval()
    path = save(detector, out_path)
    record = {"epochs": epochs, "samples": len(samples), "batch_size": batch_size, "lr": lr, "seed": seed,
              "losses": losses, "source": source}
    record_path = record_path or os.path.splitext(path)[0] + ".training.json"
    schemas.write_json_atomically(record_path, record)
    return {"path": path, "losses": losses, "config": detector.spec.config, "record": record}
