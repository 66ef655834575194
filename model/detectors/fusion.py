"""Inference-only rewrites of a detector that change no result beyond rounding.

- ``fold_frozen_batchnorm``: a ``FrozenBatchNorm2d`` after a convolution is an affine map per
  channel, so it folds into that convolution's weight and bias (one pass over the activations fewer
  per convolution; res5 on 64 x 300 RoIs writes ~15 GB per 2048-channel tensor in fp16).
- ``DilatedAsBatchConv``: a 3x3 convolution with dilation 2 and padding 2 on an even-sized map reads
  only pixels of its own row and column parity, so it equals an ordinary 3x3 convolution (padding 1)
  on the four half-resolution parity grids, stacked in the batch ("space to batch", as atrous
  convolution is often computed). Ordinary 3x3 kernels are the best-tuned ones in cuDNN.
- ``batched_rpn_nms``: the RPN's proposal filtering (clip, small-box and score filters, NMS per
  level, top ``post_nms_top_n``) for all images of a batch in one vectorised greedy NMS on the
  device, instead of one NMS per image with a host round trip each.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

logger = logging.getLogger(__name__)


def _conv_before(name: str) -> str | None:
    """The sibling convolution a batch norm follows: bn2 -> conv2; in a Sequential, "1" -> "0"."""
    if name.startswith("bn"):
        return "conv" + name[2:]
    if name.isdigit() and int(name) > 0:
        return str(int(name) - 1)
    return None


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d that follows a sibling Conv2d into it; returns how many were folded."""
    folded = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            if not isinstance(child, FrozenBatchNorm2d):
                continue
            conv = children.get(_conv_before(name) or "")
            if not isinstance(conv, nn.Conv2d):
                continue
            scale = child.weight * (child.running_var + child.eps).rsqrt()
            shift = child.bias - child.running_mean * scale
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            setattr(parent, name, nn.Identity())
            folded += 1
    return folded


class DilatedAsBatchConv(nn.Module):
    """A 3x3, dilation-2, padding-2, stride-1 convolution computed on the four parity grids."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not (conv.kernel_size == (3, 3) and conv.dilation == (2, 2) and conv.padding == (2, 2)
                and conv.stride == (1, 1) and conv.groups == 1):
            raise ValueError(f"not a 3x3 dilation-2 padding-2 convolution: {conv}")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            return self.conv(x)
        # NHWC views (free for channels-last input), one copy into the grids and one back.
        grids = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c).permute(2, 4, 0, 1, 3, 5)
        grids = grids.reshape(4 * n, h // 2, w // 2, c).permute(0, 3, 1, 2)
        y = F.conv2d(grids, self.conv.weight, self.conv.bias, stride=1, padding=1)
        out = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(2, 2, n, h // 2, w // 2, out).permute(2, 3, 0, 4, 1, 5)
        return y.reshape(n, h, w, out).permute(0, 3, 1, 2)


def dilated_as_batch(module: nn.Module) -> int:
    """Swap every eligible dilated 3x3 convolution for its parity-grid form; returns how many."""
    swapped = 0
    for parent in list(module.modules()):
        if isinstance(parent, DilatedAsBatchConv):  # already swapped (a second call changes nothing)
            continue
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.dilation == (2, 2)
                    and child.padding == (2, 2) and child.stride == (1, 1) and child.groups == 1):
                setattr(parent, name, DilatedAsBatchConv(child))
                swapped += 1
    return swapped


# ----------------------------------------------------------------------------------------------
# RPN proposal filtering for the whole batch at once
# ----------------------------------------------------------------------------------------------


def _greedy_step(ordered: torch.Tensor, areas: torch.Tensor, alive: torch.Tensor, order: torch.Tensor,
                 group: torch.Tensor | None, columns: torch.Tensor,
                 iou_thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One greedy NMS step for every image: the best box still alive is kept and suppresses its overlaps.

    ``columns`` is ``arange(N)``. Returns the new ``alive`` mask and, per image, the kept box's index (-1
    when none was left). Written with gathers and masks only (no indexed writes), so ``torch.compile``
    fuses the step into a few kernels.
    """
    has = alive.any(dim=1)
    first = alive.to(torch.uint8).argmax(dim=1, keepdim=True)  # the best box still alive (the first maximum)
    chosen = torch.where(has, order.gather(1, first).squeeze(1), -1)
    box = ordered.gather(1, first[..., None].expand(-1, 1, 4))  # [B, 1, 4]
    top_left = torch.maximum(ordered[..., :2], box[..., :2])
    bottom_right = torch.minimum(ordered[..., 2:], box[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (areas + areas.gather(1, first) - inter)
    suppress = iou > iou_thresh
    if group is not None:
        suppress &= group == group.gather(1, first)
    return alive & ~suppress & (columns != first), chosen


_compiled_step = None
_compile_failed = False


def _step_function(compiled: bool):
    """``_greedy_step``, compiled once per process when asked and compiling has not failed before."""
    global _compiled_step
    if not compiled or _compile_failed:
        return _greedy_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_greedy_step, fullgraph=True)
    return _compiled_step


_kernel_failed = False


def batched_greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, groups: torch.Tensor | None,
                       iou_thresh: float, max_keep: int, compiled: bool = False, kernel: bool = False) -> torch.Tensor:
    """Greedy NMS of B images at once: ``[B, max_keep]`` kept indices, best first, padded with -1.

    ``boxes`` [B, N, 4] x1y1x2y2, ``scores``/``valid`` [B, N]; only boxes of the same ``group`` (the FPN
    level) suppress each other. The result equals torchvision's ``batched_nms`` on each image's valid
    boxes, cut to ``max_keep`` (up to the order of exactly tied scores, which neither defines). It runs
    ``max_keep`` vectorised steps on the device, where torchvision's NMS reads each image's suppression
    mask back to the host: one synchronisation per image. ``compiled`` runs each step as a
    ``torch.compile``d function (if compiling fails, the steps run eager). Eager, a step is about fourteen
    small kernels, and 300 steps per batch may leave vg-r101-c4's RPN launch-bound (94 ms per batch of 64
    on an H100); compiled, a step is a few fused kernels but pays the compiled call's own overhead, which
    on the CPU made it slower (0.33 vs 0.18 s for 16 x 6,000 boxes). Off by default until a GPU measures it
    (``RegionDetector.optimize_for(compile_nms=True)``, ``bench_features.py --variants rpn-compiled``).
    ``kernel`` instead scans each image's sorted boxes in one Triton program (``nms_kernel``: the same kept
    boxes, one launch; CUDA, or the interpreter); it falls back to the steps once per process if it fails.
    """
    num, count = scores.shape
    keep = torch.full((num, max_keep), -1, dtype=torch.long, device=scores.device)
    if count == 0 or max_keep == 0:
        return keep
    order = scores.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True, stable=True).indices
    # IoU in float32 whatever the boxes' dtype (the RPN's are fp16 under autocast), as torchvision's NMS
    # kernels compute it; the kernel and the steps then make the same decisions.
    ordered = boxes.float().gather(1, order[..., None].expand(-1, -1, 4))
    alive = valid.gather(1, order)
    group = groups.gather(1, order) if groups is not None else None
    global _kernel_failed
    if kernel and not _kernel_failed:
        from model.detectors.nms_kernel import greedy_nms_sorted, kernels_available

        if kernels_available(boxes):
            try:
                positions = greedy_nms_sorted(ordered, alive, group, iou_thresh, max_keep)
                return torch.where(positions >= 0, order.gather(1, positions.clamp(min=0)), -1)
            except Exception as exc:  # noqa: BLE001 - a kernel that does not build must not stop the stage
                _kernel_failed = True
                logger.warning("NMS kernel failed (%s: %s); running the NMS steps", type(exc).__name__, exc)
    areas = (ordered[..., 2] - ordered[..., 0]) * (ordered[..., 3] - ordered[..., 1])
    columns = torch.arange(count, device=scores.device)
    step_function = _step_function(compiled)
    for step in range(min(max_keep, count)):
        if step % 32 == 31 and not bool(alive.any()):  # every image is done (one sync per 32 steps)
            break
        try:
            alive, keep[:, step] = step_function(ordered, areas, alive, order, group, columns, iou_thresh)
        except Exception as exc:  # noqa: BLE001 - a compiler failure must not stop the features stage
            if step_function is _greedy_step:
                raise
            global _compile_failed
            _compile_failed = True  # for the rest of the process: no retry per batch
            logger.warning("compiled NMS step failed (%s: %s); running the steps eager", type(exc).__name__, exc)
            step_function = _greedy_step
            alive, keep[:, step] = step_function(ordered, areas, alive, order, group, columns, iou_thresh)
    return keep


def _batched_filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
    """``RegionProposalNetwork.filter_proposals`` for inference, with every per-image step batched."""
    from torchvision.models.detection.rpn import RegionProposalNetwork

    if self.training:
        return RegionProposalNetwork.filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level)
    num_images, device = proposals.shape[0], proposals.device
    objectness = objectness.detach().reshape(num_images, -1)
    levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(num_anchors_per_level)])
    levels = levels.reshape(1, -1).expand_as(objectness)
    top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
    batch_idx = torch.arange(num_images, device=device)[:, None]
    scores = torch.sigmoid(objectness[batch_idx, top_n_idx])
    levels = levels[batch_idx, top_n_idx]
    proposals = proposals[batch_idx, top_n_idx]
    # clip_boxes_to_image, remove_small_boxes and the score threshold, as masks instead of per-image gathers
    sizes = torch.tensor(image_shapes, device=device, dtype=proposals.dtype)  # [B, 2] = (height, width)
    limit = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)[:, None, :]
    boxes = torch.minimum(proposals.clamp(min=0), limit)
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    valid = (widths >= self.min_size) & (heights >= self.min_size) & (scores >= self.score_thresh)
    groups = levels if len(num_anchors_per_level) > 1 else None
    keep = batched_greedy_nms(boxes, scores, valid, groups, self.nms_thresh, self.post_nms_top_n(),
                              compiled=getattr(self, "compiled_nms_steps", False),
                              kernel=getattr(self, "nms_kernel", False))
    counts = (keep >= 0).sum(dim=1).tolist()  # the one synchronisation
    final_boxes, final_scores = [], []
    for i, n in enumerate(counts):
        final_boxes.append(boxes[i, keep[i, :n]])
        final_scores.append(scores[i, keep[i, :n]])
    return final_boxes, final_scores


def batched_rpn_nms(model: nn.Module, compiled: bool = False, kernel: bool = False) -> None:
    """Make a torchvision ``FasterRCNN``'s RPN filter the proposals of a batch at once (inference only);
    ``compiled``: its NMS steps through ``torch.compile``; ``kernel``: the NMS as one Triton kernel
    (see ``batched_greedy_nms``)."""
    import types

    model.rpn.filter_proposals = types.MethodType(_batched_filter_proposals, model.rpn)
    model.rpn.compiled_nms_steps = compiled
    model.rpn.nms_kernel = kernel
