"""The one interface every detector serves: uint8 images in, selected regions with features out.

Each architecture is a torchvision ``FasterRCNN`` (backbone, RPN, RoI heads) plus a ``DetectorSpec``
saying how to feed it. Inference does not use torchvision's post-processing, which returns
per-class detections without their features (vision#4309); instead it runs the parts: backbone,
RPN proposals, pooled proposal features and class scores, bottom-up-attention box selection, and
for detectors whose stored boxes are the regressed ones, pools the features again at those boxes.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from model.config import check_count
from model.detectors.selection import BoxSelection, select_boxes_batched

logger = logging.getLogger(__name__)


@dataclass
class DetectorSpec:
    """How to feed a detector and what it returns."""

    name: str
    class_names: list[str]
    feature_dim: int
    min_size: int  # short side of the network input
    max_size: int  # cap on the long side
    pixel_mean: tuple[float, float, float]  # RGB, in 0-255 units
    pixel_std: tuple[float, float, float]  # RGB, in 0-255 units
    size_divisible: int = 32
    # "proposal": store the RPN proposal boxes (bottom-up attention keeps them unregressed);
    # "regressed": store the class-regressed box of the top class and pool features there.
    box_source: str = "proposal"
    config: dict = field(default_factory=dict)  # what rebuilds the architecture (saved with weights)

    def __post_init__(self) -> None:
        check_input_sizes(self.min_size, self.max_size)

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is resized to before the network."""
        return network_input_size(width, height, self.min_size, self.max_size)


def check_input_sizes(min_size, max_size) -> None:
    """``ValueError`` unless 1 <= min_size <= max_size (whole numbers): a 0 short side, or a long-side cap below
    the short side, gives no meaningful network input."""
    check_count("min_size", min_size)
    check_count("max_size", max_size)
    if min_size > max_size:
        raise ValueError(f"min-size {min_size} is above max-size {max_size} (the network input's short side and "
                         f"its long-side cap); give a max-size of at least {min_size}")


def network_input_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Short side to ``min_size`` unless the long side would pass ``max_size`` (Detectron's ResizeShortestEdge)."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def padded_size(height: int, width: int, divisible: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``divisible``: what ``RegionDetector.batch_images`` pads an
    image to when it is alone in a batch."""
    if divisible > 1:
        height, width = -(-height // divisible) * divisible, -(-width // divisible) * divisible
    return int(height), int(width)


@dataclass
class Regions:
    """Selected regions of one image, boxes in the network-input pixels of that image."""

    boxes: np.ndarray  # [n, 4] float32 x1 y1 x2 y2
    features: np.ndarray  # [n, D] float16
    class_ids: np.ndarray  # [n] int32, 0 = first object class (background excluded)
    class_scores: np.ndarray  # [n] float32
    topk_class_ids: np.ndarray  # [n, k] int32
    topk_class_probs: np.ndarray  # [n, k] float32
    # Detectors with an attribute head (vg-r101-c4 with attribute weights): top-k attributes, 0 = first
    # attribute ("none" excluded), probabilities of the softmax over attributes + none. None otherwise.
    topk_attribute_ids: np.ndarray | None = None  # [n, k] int32
    topk_attribute_probs: np.ndarray | None = None  # [n, k] float32

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


def _autocast(device: torch.device, precision: str):
    """fp16/bf16 autocast on CUDA (RoIAlign/RoIPool/NMS keep fp32 through torchvision's autocast kernels)."""
    if precision in ("fp16", "bf16"):
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        if device.type == "cpu" and precision == "fp16":
            raise ValueError("fp16 autocast is a GPU mode; use bf16 or fp32 on the CPU")
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


class _PartClock:
    """Adds the seconds since the last lap to ``timings[name]``; does nothing without ``timings``."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None):
        self.device, self.timings = device, timings
        self.last = self._now() if timings is not None else 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is not None:
            now = self._now()
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
            self.last = now


def _outputs_to_fp32(module, inputs, outputs):
    objectness, deltas = outputs
    return [t.float() for t in objectness], [t.float() for t in deltas]


class RegionDetector(nn.Module):
    """A Faster R-CNN that returns bottom-up-attention regions with pooled features."""

    def __init__(self, spec: DetectorSpec, model: nn.Module):
        super().__init__()
        self.spec = spec
        self.model = model
        self.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.pixel_std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.precision = "fp32"
        # RoIs per box-head call: bounds the memory of the pooled RoIs (vg-r101-c4's res5 at 14x14 on
        # 64 images x 300 proposals would hold ~15 GB at once) without changing any result.
        self.roi_chunk = 4096
        # Under fp16 autocast the RPN head would emit fp16 deltas, and torchvision decodes proposals in
        # the deltas' dtype; fp32 outputs keep proposal coordinates exact to well under a pixel.
        model.rpn.head.register_forward_hook(_outputs_to_fp32)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    def optimize_for(self, device: torch.device | str, precision: str = "auto", channels_last: bool | None = None,
                     fuse: bool | None = None, dilated_as_batch: bool = False,
                     batched_rpn_nms: bool | None = None, compile_nms: bool = False,
                     nms_kernel: bool = False) -> "RegionDetector":
        """Move to ``device``; on CUDA default to fp16 autocast, channels-last convolutions and folded batch norms.

        ``fuse`` folds the frozen batch norms into their convolutions (inference only: the module tree
        changes, so save weights before, not after). ``dilated_as_batch`` computes dilated 3x3
        convolutions on parity grids, ``batched_rpn_nms`` filters the RPN proposals of the whole batch
        in one vectorised NMS (``model.detectors.fusion``); by default on CUDA for a single-level RPN (C4),
        where it measured twice as fast (H200, batch 64: 128 -> 62 ms), and off for FPN's five levels, where
        it measured three times slower. ``compile_nms`` runs that NMS's steps through ``torch.compile``,
        ``nms_kernel`` runs the whole NMS as one Triton kernel (``model.detectors.nms_kernel``; same boxes);
        both experiments, not yet measured on a GPU.
        """
        from model.detectors import fusion

        device = torch.device(device)
        if precision == "auto":
            precision = "fp16" if device.type == "cuda" else "fp32"
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision: {precision!r} is not auto, fp32, fp16 or bf16")
        if precision == "fp16" and device.type == "cpu":  # refused here, before a run records it, not at detection
            raise ValueError("fp16 autocast is a GPU mode; use bf16 or fp32 on the CPU")
        if fuse is None:
            fuse = device.type == "cuda"
        if fuse:
            fusion.fold_frozen_batchnorm(self.model)
        if dilated_as_batch:
            fusion.dilated_as_batch(self.model)
        if batched_rpn_nms is None:  # asking for the NMS kernel asks for the batched NMS it runs in, FPN included
            batched_rpn_nms = device.type == "cuda" and (nms_kernel or _rpn_levels(self.model) == 1)
        if batched_rpn_nms:
            fusion.batched_rpn_nms(self.model, compiled=compile_nms, kernel=nms_kernel)
        self.to(device)
        self.precision = precision
        if channels_last is None:
            channels_last = device.type == "cuda"
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        if device.type == "cuda":
            # Batches are padded to a few distinct sizes (size_divisible), so cuDNN's per-shape autotuning pays off.
            torch.backends.cudnn.benchmark = True
        return self

    def batch_images(self, images: list[torch.Tensor]) -> ImageList:
        """uint8 [3, h, w] images (already at network size) to one normalised, padded float batch."""
        device = self.device
        height, width = padded_size(max(int(im.shape[1]) for im in images), max(int(im.shape[2]) for im in images),
                                    self.spec.size_divisible)
        batch = torch.zeros(len(images), 3, height, width, device=device, dtype=torch.float32)
        for i, im in enumerate(images):
            im = im.to(device, non_blocking=True).float()
            batch[i, :, : im.shape[1], : im.shape[2]] = (im - self.pixel_mean) / self.pixel_std
        if getattr(self, "channels_last", False):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return ImageList(batch, [(int(im.shape[1]), int(im.shape[2])) for im in images])

    def box_features(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                     image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        """Pooled + box-head features of ``boxes`` (one tensor per image), whole images at most ``roi_chunk`` RoIs a call."""
        heads = self.model.roi_heads
        if sum(len(b) for b in boxes) <= self.roi_chunk:
            return heads.box_head(heads.box_roi_pool(features, boxes, image_sizes))
        parts, start = [], 0
        while start < len(boxes):
            end, count = start + 1, len(boxes[start])
            while end < len(boxes) and count + len(boxes[end]) <= self.roi_chunk:
                count += len(boxes[end])
                end += 1
            chunk = OrderedDict((name, level[start:end]) for name, level in features.items())
            parts.append(heads.box_head(heads.box_roi_pool(chunk, boxes[start:end], image_sizes[start:end])))
            start = end
        return torch.cat(parts)

    @torch.inference_mode()
    def forward(self, images: list[torch.Tensor], selection: BoxSelection = BoxSelection(), topk: int = 10,
                timings: dict[str, float] | None = None) -> list[Regions]:
        """Detect regions in uint8 [3, h, w] images already resized to the network input size.

        ``timings``, when given, receives seconds per part (input, backbone, rpn, roi_heads, selection,
        output = re-pooling at regressed boxes + copy to the host), synchronising the device at each
        boundary: for profiling only, it costs throughput.
        """
        if topk < 0:
            raise ValueError(f"topk: {topk!r}, need 0 or more")
        if not images:
            return []
        clock = _PartClock(self.device, timings)
        image_list = self.batch_images(images)
        heads = self.model.roi_heads
        clock.lap("input")
        with _autocast(self.device, self.precision):
            features = self.model.backbone(image_list.tensors)
            if isinstance(features, torch.Tensor):
                features = OrderedDict([("0", features)])
            clock.lap("backbone")
            proposals, _ = self.model.rpn(image_list, features)
            clock.lap("rpn")
            pooled = self.box_features(features, proposals, image_list.image_sizes)
            class_logits, box_deltas = heads.box_predictor(pooled)
        probs = torch.softmax(class_logits.float(), dim=-1)
        clock.lap("roi_heads")
        # The whole batch at once (a handful of reads back from the device, not several per image).
        chosen_rows, _ = select_boxes_batched(proposals, probs[:, 1:], selection)
        kept_counts = [len(rows) for rows in chosen_rows]
        kept_rows = torch.cat(chosen_rows)
        kept_boxes = torch.cat(proposals).float()[kept_rows]
        if self.spec.box_source == "regressed" and len(kept_rows):
            top = probs[kept_rows, 1:].argmax(dim=1) + 1
            deltas = box_deltas[kept_rows].float().view(len(kept_rows), -1, 4)
            deltas = deltas[torch.arange(len(kept_rows), device=deltas.device), top]
            final = heads.box_coder.decode_single(deltas, kept_boxes)
            # clip to each box's own image: x to [0, w], y to [0, h]
            limits = torch.tensor([(w, h, w, h) for h, w in image_list.image_sizes], dtype=final.dtype,
                                  device=final.device)
            limits = torch.repeat_interleave(limits, torch.tensor(kept_counts, device=final.device), dim=0,
                                             output_size=len(kept_rows))
            kept_boxes = torch.minimum(final.clamp(min=0), limits)
        chosen_boxes = list(torch.split(kept_boxes, kept_counts))
        clock.lap("selection")
        if self.spec.box_source == "regressed":
            # The stored features must describe the stored boxes, so pool again at the final boxes.
            with _autocast(self.device, self.precision):
                region_features = self.box_features(features, chosen_boxes, image_list.image_sizes)
            split = torch.split(region_features, [len(b) for b in chosen_boxes])
        else:
            split = [pooled[rows] for rows in chosen_rows]
        # One device-to-host copy per field for the whole batch, not one per image (each copy syncs).
        rows = kept_rows
        object_probs = probs[rows, 1:]
        # The top class comes from the same call as the top-k (so it is column 0 of a top-k, ties included), but
        # always at least one column: with topk 0 it is still the class of the box, not a column that is not there.
        k = min(topk, object_probs.shape[1])
        width = max(k, 1)
        top_probs, top_ids = (object_probs.topk(width, dim=1) if len(rows)
                              else (object_probs[:, :width], object_probs[:, :width].long()))
        region_features = torch.cat(list(split))
        host = {
            "boxes": torch.cat(chosen_boxes).cpu().numpy().astype(np.float32),
            "features": region_features.float().cpu().numpy().astype(np.float16),
            "class_ids": top_ids[:, 0].int().cpu().numpy(),
            "class_scores": top_probs[:, 0].float().cpu().numpy(),
            "topk_class_ids": top_ids[:, :k].int().cpu().numpy(),
            "topk_class_probs": top_probs[:, :k].float().cpu().numpy(),
        }
        attribute_head = getattr(heads, "attribute_head", None)
        if attribute_head is not None:
            with _autocast(self.device, self.precision):
                logits = attribute_head(region_features, probs[rows].argmax(dim=1))
            attribute_probs = torch.softmax(logits.float(), dim=-1)[:, 1:]  # column 0 is "no attribute"
            k_attr = min(topk, attribute_probs.shape[1])
            a_probs, a_ids = attribute_probs.topk(k_attr, dim=1)
            host["topk_attribute_ids"] = a_ids.int().cpu().numpy()
            host["topk_attribute_probs"] = a_probs.cpu().numpy()
        results = []
        start = 0
        for boxes in chosen_boxes:
            part = {name: array[start:start + len(boxes)] for name, array in host.items()}
            start += len(boxes)
            results.append(
                Regions(
                    boxes=part["boxes"],
                    features=part["features"],
                    class_ids=part["class_ids"],
                    class_scores=part["class_scores"],
                    topk_class_ids=part["topk_class_ids"],
                    topk_class_probs=part["topk_class_probs"],
                    topk_attribute_ids=part.get("topk_attribute_ids"),
                    topk_attribute_probs=part.get("topk_attribute_probs"),
                )
            )
        clock.lap("output")
        return results


def _rpn_levels(model: torch.nn.Module) -> int:
    """Feature levels the RPN's anchor generator serves (1 for C4, 5 for FPN; 0 when there is no RPN)."""
    anchors = getattr(getattr(model, "rpn", None), "anchor_generator", None)
    return len(anchors.sizes) if anchors is not None else 0
