"""``vg-r101-c4``: the bottom-up-attention Faster R-CNN (ResNet-101 C4, Visual Genome 1600 classes).

Built from torchvision parts to match the Caffe model and its detectron2 port (py-bottom-up-attention):
Caffe stem max-pool (no padding, ceil mode), stride in the 1x1 conv of each stage's first block,
C4 features (stride 16, 1024 channels), an RPN with a 512-channel 3x3 conv and 12 anchors
(sizes 64-512 x ratios 0.5/1/2), 14x14 RoI max pooling, the res5 stage as box head with stride 1 and
dilation 2, global average pooling to the 2048-d feature, and 1600 classes + background.
Input: short side 600, long side at most 1000, Caffe pixel means and no std division.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, roi_pool

from model.detectors.base import DetectorSpec, RegionDetector

NUM_VG_CLASSES = 1600
NUM_VG_ATTRIBUTES = 400
ANCHOR_SIZES = (64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Caffe's BGR means, stored here in RGB order: the converter flips the first conv to take RGB.
PIXEL_MEAN_RGB = (122.7717, 115.9465, 102.9801)

#: Batches are padded to multiples of this (the stride of the C4 feature map).
SIZE_DIVISIBLE = 16
DEFAULT_CONFIG = {
    "num_classes": NUM_VG_CLASSES,
    "min_size": 600,
    "max_size": 1000,
    "rpn_pre_nms_top_n": 6000,
    "rpn_post_nms_top_n": 300,
    "rpn_nms_thresh": 0.7,
    "pooler_resolution": 14,
    "attributes": 0,  # > 0: build the attribute head with this many attributes (+ "none"); set by attribute weights
}


class C4RPNHead(nn.Module):
    """RPN head with a hidden width of its own (512 in bottom-up attention; torchvision's keeps the input width)."""

    def __init__(self, in_channels: int, hidden: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.cls_logits = nn.Conv2d(hidden, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(hidden, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = torch.relu(self.conv(x))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class C4RoIPool(nn.Module):
    """RoI max pooling on the single C4 map (the ``roi_pool5`` layer); same call as MultiScaleRoIAlign."""

    def __init__(self, resolution: int = 14, spatial_scale: float = 1 / 16):
        super().__init__()
        self.resolution = resolution
        self.spatial_scale = spatial_scale

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_sizes) -> torch.Tensor:
        # Pool in fp32 whatever the autocast dtype: fp16 box coordinates are off by up to 0.5 px at 1000 px.
        x = features["0"].float()
        boxes = [b.float() for b in proposals]
        return roi_pool(x, boxes, (self.resolution, self.resolution), self.spatial_scale)


class Res5Head(nn.Module):
    """The res5 stage on pooled RoIs, averaged to one 2048-d vector per box (``pool5_flat``)."""

    def __init__(self, res5: nn.Module):
        super().__init__()
        self.res5 = res5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The pooled RoIs come in fp32 and NCHW; cast once to the autocast dtype and the weights' memory
        # format (cuDNN's channels-last kernels), rather than inside every conv.
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if next(self.res5.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.res5(x).mean(dim=(2, 3))


class AttributeHead(nn.Module):
    """Bottom-up attention's attribute predictor (``cls_embedding``, ``fc_attr``, ``attr_score``).

    The region feature, concatenated with a 256-d embedding of the region's arg-max class (background
    included, as the Caffe model's ``ArgMax`` of ``cls_prob``), through a 512-wide hidden layer to the
    attribute logits; index 0 is "no attribute".
    """

    def __init__(self, num_classes: int, num_attributes: int, feature_dim: int = 2048, embed: int = 256, hidden: int = 512):
        super().__init__()
        self.cls_embedding = nn.Embedding(num_classes, embed)
        self.fc_attr = nn.Linear(feature_dim + embed, hidden)
        self.attr_score = nn.Linear(hidden, num_attributes)

    def forward(self, features: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.cls_embedding(class_ids).to(features.dtype)
        return self.attr_score(torch.relu(self.fc_attr(torch.cat([features, embedded], dim=1))))


def add_attribute_head(detector: RegionDetector, num_attributes: int = NUM_VG_ATTRIBUTES) -> None:
    """Give a vg-r101-c4 detector the attribute head (``num_attributes`` + the "none" output)."""
    num_classes = detector.spec.config["num_classes"] + 1
    head = AttributeHead(num_classes, num_attributes + 1, detector.feature_dim)
    detector.model.roi_heads.attribute_head = head.to(detector.device)
    detector.spec.config = {**detector.spec.config, "attributes": num_attributes}


def _caffe_resnet101() -> torchvision.models.ResNet:
    """ResNet-101 laid out like the MSRA/Caffe model the published weights come from."""
    net = torchvision.models.resnet101(weights=None, norm_layer=FrozenBatchNorm2d)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for stage in (net.layer2, net.layer3, net.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    # res5 runs at stride 1 with dilation 2 on the 14x14 pooled RoIs (RES5HALVE False, RES5_DILATION 2).
    for block in net.layer4:
        block.conv1.stride = block.conv2.stride = (1, 1)
        block.conv2.dilation, block.conv2.padding = (2, 2), (2, 2)
    net.layer4[0].downsample[0].stride = (1, 1)
    # Random weights: zero the last scale of each residual branch (torchvision's zero_init_residual), so
    # 33 un-normalised blocks do not blow activations up to inf; published weights overwrite it.
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            block.bn3.weight.zero_()
    return net


def build(config: dict | None = None, class_names: list[str] | None = None) -> RegionDetector:
    """The ``vg-r101-c4`` architecture with random weights (load published ones with ``convert``)."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    names = class_names or [f"vg_class_{i:04d}" for i in range(cfg["num_classes"])]
    if len(names) != cfg["num_classes"]:
        raise ValueError(f"vg-r101-c4 has {cfg['num_classes']} classes, the class-name list has {len(names)}")
    net = _caffe_resnet101()
    backbone = nn.Sequential(
        OrderedDict(
            conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool,
            layer1=net.layer1, layer2=net.layer2, layer3=net.layer3,
        )
    )
    backbone.out_channels = 1024
    anchors = AnchorGenerator(sizes=(ANCHOR_SIZES,), aspect_ratios=(ASPECT_RATIOS,))
    num_anchors = len(ANCHOR_SIZES) * len(ASPECT_RATIOS)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=C4RPNHead(1024, 512, num_anchors),
        box_head=Res5Head(net.layer4),
        box_predictor=FastRCNNPredictor(2048, cfg["num_classes"] + 1),
        rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_top_n"],
        rpn_post_nms_top_n_test=cfg["rpn_post_nms_top_n"],
        rpn_nms_thresh=cfg["rpn_nms_thresh"],
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
    )
    # FasterRCNN only accepts MultiScaleRoIAlign in its constructor; the C4 model max-pools one map.
    model.roi_heads.box_roi_pool = C4RoIPool(cfg["pooler_resolution"], 1 / 16)
    spec = DetectorSpec(
        name="vg-r101-c4",
        class_names=list(names),
        feature_dim=2048,
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        pixel_mean=PIXEL_MEAN_RGB,
        pixel_std=(1.0, 1.0, 1.0),
        size_divisible=SIZE_DIVISIBLE,
        box_source="proposal",
        config=cfg,
    )
    detector = RegionDetector(spec, model)
    if cfg["attributes"]:
        add_attribute_head(detector, int(cfg["attributes"]))
    return detector


# ----------------------------------------------------------------------------------------------
# Published weights: detectron2-format names (py-bottom-up-attention .pkl, HF frcnn-vg-finetuned)
# ----------------------------------------------------------------------------------------------

# detectron2 orders anchors size-major (size, then ratio); torchvision ratio-major.
_ANCHOR_PERM = [s * len(ASPECT_RATIOS) + r for r in range(len(ASPECT_RATIOS)) for s in range(len(ANCHOR_SIZES))]
_STAGES = {"res2": "backbone.layer1", "res3": "backbone.layer2", "res4": "backbone.layer3",
           "res5": "roi_heads.box_head.res5"}
_CONVS = {"conv1": ("conv1", "bn1"), "conv2": ("conv2", "bn2"), "conv3": ("conv3", "bn3"),
          "shortcut": ("downsample.0", "downsample.1")}
_NORM_RENAMES = {"gamma": "weight", "beta": "bias"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
# Constants detectron2 models keep in their state dict (HF's frcnn-vg-finetuned has the anchors, detectron2
# checkpoints may have the pixel statistics) but that our model builds itself: checked, never loaded.
_ANCHOR_KEY = "proposal_generator.anchor_generator.cell_anchors."
_PIXEL_STAT_KEYS = ("pixel_mean", "pixel_std")
ATTRIBUTE_KEYS = ("cls_embedding", "fc_attr", "attr_score")


def is_detectron2_state(state: dict) -> bool:
    """Whether a state dict uses detectron2 module names (``backbone.stem.conv1...``)."""
    return any(k.startswith(("backbone.stem.", "backbone.res2.", "proposal_generator.")) for k in state)


def detectron2_name_to_ours(name: str) -> str:
    """Our parameter name for a detectron2 one (KeyError for a name no part of the model has)."""
    parts = name.split(".")
    if parts[-1] in _NORM_RENAMES:
        parts[-1] = _NORM_RENAMES[parts[-1]]
    leaf = parts[-1]
    if parts[:3] == ["backbone", "stem", "conv1"]:
        return f"backbone.{'bn1' if parts[3] == 'norm' else 'conv1'}.{leaf}"
    stage = parts[1] if parts[0] == "backbone" else parts[1] if parts[0] == "roi_heads" else None
    if stage in _STAGES and len(parts) >= 5:
        block, conv = parts[2], parts[3]
        conv_name, norm_name = _CONVS[conv]
        module = norm_name if parts[4] == "norm" else conv_name
        return f"{_STAGES[stage]}.{block}.{module}.{leaf}"
    if parts[:2] == ["proposal_generator", "rpn_head"]:
        module = {"conv": "conv", "objectness_logits": "cls_logits", "anchor_deltas": "bbox_pred"}[parts[2]]
        return f"rpn.head.{module}.{leaf}"
    if parts[:2] == ["roi_heads", "box_predictor"]:
        if parts[2] in ATTRIBUTE_KEYS:
            return f"roi_heads.attribute_head.{parts[2]}.{leaf}"
        return f"roi_heads.box_predictor.{parts[2]}.{leaf}"
    raise KeyError(f"unexpected parameter {name!r} in a vg-r101-c4 checkpoint")


def _check_built_constant(name: str, value: torch.Tensor) -> None:
    """Refuse (``ValueError``) a stored anchor set or pixel statistic other than the one this model builds.

    Our model makes its own anchors (torchvision's) and normalises with the Caffe means; a checkpoint trained
    with other anchors or other input statistics would load and then silently detect differently. Anchors are
    compared in torchvision's order to within 0.5 px: torchvision rounds its cell anchors, detectron2 does not.
    """
    value = torch.as_tensor(value).float()
    if name.startswith(_ANCHOR_KEY):
        expected = AnchorGenerator(sizes=(ANCHOR_SIZES,), aspect_ratios=(ASPECT_RATIOS,)).cell_anchors[0]
        fits = name == _ANCHOR_KEY + "0" and value.shape == expected.shape
        if not (fits and torch.allclose(value[_ANCHOR_PERM], expected, rtol=0, atol=0.51)):
            raise ValueError(
                f"{name}: the checkpoint's anchors {tuple(value.shape)} are not vg-r101-c4's "
                f"(sizes {ANCHOR_SIZES} x ratios {ASPECT_RATIOS} on one feature map)"
            )
        return
    # detectron2 keeps them in BGR order, as (3, 1, 1) buffers; the Caffe model divides by no std.
    expected = torch.tensor(PIXEL_MEAN_RGB[::-1] if name == "pixel_mean" else (1.0, 1.0, 1.0))
    if value.numel() != 3 or not torch.allclose(value.reshape(-1), expected, rtol=0, atol=1e-3):
        raise ValueError(
            f"{name}: the checkpoint's {[round(v, 4) for v in value.reshape(-1).tolist()]} is not "
            f"vg-r101-c4's Caffe input normalisation (BGR {[round(v, 4) for v in expected.tolist()]})"
        )


def convert_detectron2_state(state: dict[str, torch.Tensor], num_classes: int = NUM_VG_CLASSES) -> dict[str, torch.Tensor]:
    """A detectron2-named VG checkpoint as a state dict of our ``vg-r101-c4`` model.

    Beyond renaming: the first conv is flipped from BGR to RGB input; RPN outputs are reordered to
    torchvision's anchor order; the class scores (and the attribute head's class embedding) move
    background from last (detectron2) to first (torchvision); class-specific box deltas get a zero
    background slot. Stored anchors and pixel statistics are not loaded: they must be the ones our model
    builds itself (``_check_built_constant``).
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name.startswith(_ANCHOR_KEY) or name in _PIXEL_STAT_KEYS:
            _check_built_constant(name, value)
            continue
        ours = detectron2_name_to_ours(name)
        value = torch.as_tensor(value).float()
        if ours == "backbone.conv1.weight":
            value = value[:, [2, 1, 0]]
        elif ours.startswith("rpn.head.cls_logits."):
            value = value[_ANCHOR_PERM]
        elif ours.startswith("rpn.head.bbox_pred."):
            value = value.view(len(_ANCHOR_PERM), 4, *value.shape[1:])[_ANCHOR_PERM].reshape(value.shape)
        elif ours == "roi_heads.attribute_head.cls_embedding.weight":
            value = torch.cat([value[-1:], value[:-1]])  # rows follow the class order: background first
        elif ours.startswith("roi_heads.box_predictor.cls_score."):
            if value.shape[0] != num_classes + 1:
                raise ValueError(f"{name}: {value.shape[0]} class outputs, expected {num_classes + 1}")
            value = torch.cat([value[-1:], value[:-1]])
        elif ours.startswith("roi_heads.box_predictor.bbox_pred."):
            if value.shape[0] == 4 * num_classes:
                value = torch.cat([torch.zeros_like(value[:4]), value])
            elif value.shape[0] == 4:  # class-agnostic regression: the same deltas for every class
                value = value.repeat(num_classes + 1, *([1] * (value.dim() - 1)))
            elif value.shape[0] != 4 * (num_classes + 1):
                raise ValueError(f"{name}: {value.shape[0]} box outputs for {num_classes} classes")
        out[ours] = value
    # Caffe-converted frozen BN may carry only scale and shift: the missing statistics are the identity.
    for key in list(out):
        if key.endswith(".weight") and (key.rsplit(".", 2)[-2].startswith("bn") or key.rsplit(".", 2)[-2] == "1"):
            prefix = key[: -len("weight")]
            out.setdefault(prefix + "running_mean", torch.zeros_like(out[key]))
            out.setdefault(prefix + "running_var", torch.ones_like(out[key]))
    return out
