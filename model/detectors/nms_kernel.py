"""Greedy NMS for a batch of images as one Triton kernel: one program per image scans its boxes in score order.

``fusion.batched_greedy_nms`` runs greedy NMS for all images of a batch as ``max_keep`` vectorised steps
(about fourteen small kernels each): for vg-r101-c4's RPN, 300 steps and over 4,000 kernel launches per
batch, which left the RPN at 94 ms of a 700 ms batch of 64 on an H100 (``benchmarks/RESULTS_features.md``).
Here each image's program walks its score-sorted boxes once and keeps a box when no box kept so far (of
its group) overlaps it by more than the threshold, the kept boxes held in registers; it stops after
``max_keep`` boxes. That is the same greedy rule, so the kept indices equal the step version's, bit for
bit (same IoU arithmetic, division rounded to nearest): one launch instead of thousands.

Runs on CUDA, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which the tests use.
"""
from __future__ import annotations

import torch

from model.triton_support import kernels_available, tl, triton


if triton is not None:

    @triton.jit
    def _greedy_nms_kernel(boxes_ptr, alive_ptr, group_ptr, keep_ptr, count, max_keep, iou_thresh,
                           KEEP_BLOCK: tl.constexpr, GROUPED: tl.constexpr):
        image = tl.program_id(0)
        lanes = tl.arange(0, KEEP_BLOCK)
        kept_x1 = tl.zeros([KEEP_BLOCK], dtype=tl.float32)
        kept_y1 = tl.zeros([KEEP_BLOCK], dtype=tl.float32)
        kept_x2 = tl.zeros([KEEP_BLOCK], dtype=tl.float32)
        kept_y2 = tl.zeros([KEEP_BLOCK], dtype=tl.float32)
        kept_area = tl.zeros([KEEP_BLOCK], dtype=tl.float32)
        kept_group = tl.zeros([KEEP_BLOCK], dtype=tl.int64)
        kept = tl.zeros([], dtype=tl.int32)
        position = tl.zeros([], dtype=tl.int32)
        base = image.to(tl.int64) * count
        while (position < count) & (kept < max_keep):
            row = base + position
            x1 = tl.load(boxes_ptr + row * 4).to(tl.float32)
            y1 = tl.load(boxes_ptr + row * 4 + 1).to(tl.float32)
            x2 = tl.load(boxes_ptr + row * 4 + 2).to(tl.float32)
            y2 = tl.load(boxes_ptr + row * 4 + 3).to(tl.float32)
            alive = tl.load(alive_ptr + row) != 0
            area = (x2 - x1) * (y2 - y1)
            # as fusion._greedy_step computes it, with the candidate first and the kept box second
            width = tl.maximum(tl.minimum(x2, kept_x2) - tl.maximum(x1, kept_x1), 0.0)
            height = tl.maximum(tl.minimum(y2, kept_y2) - tl.maximum(y1, kept_y1), 0.0)
            inter = width * height
            iou = tl.math.div_rn(inter, (area + kept_area) - inter)
            overlaps = (iou > iou_thresh) & (lanes < kept)
            if GROUPED:
                group = tl.load(group_ptr + row)
                overlaps = overlaps & (kept_group == group)
            keep = alive & (tl.max(overlaps.to(tl.int32), axis=0) == 0)
            slot = (lanes == kept) & keep
            kept_x1 = tl.where(slot, x1, kept_x1)
            kept_y1 = tl.where(slot, y1, kept_y1)
            kept_x2 = tl.where(slot, x2, kept_x2)
            kept_y2 = tl.where(slot, y2, kept_y2)
            kept_area = tl.where(slot, area, kept_area)
            if GROUPED:
                kept_group = tl.where(slot, group, kept_group)
            tl.store(keep_ptr + image.to(tl.int64) * max_keep + kept, position.to(tl.int64), mask=keep)
            kept += keep.to(tl.int32)
            position += 1


def greedy_nms_sorted(ordered: torch.Tensor, alive: torch.Tensor, group: torch.Tensor | None, iou_thresh: float,
                      max_keep: int) -> torch.Tensor:
    """Greedy NMS of B images whose boxes are already in descending score order.

    ``ordered`` [B, N, 4] x1y1x2y2, ``alive`` [B, N] (boxes that may be kept), ``group`` [B, N] or None (only
    boxes of one group suppress each other). Returns ``[B, max_keep]`` positions into N of the kept boxes,
    best first, padded with -1.
    """
    if not kernels_available(ordered):
        raise RuntimeError("the NMS kernel runs on CUDA tensors (or under TRITON_INTERPRET=1)")
    num, count = alive.shape
    keep = torch.full((num, max_keep), -1, dtype=torch.int64, device=ordered.device)
    if num == 0 or count == 0 or max_keep == 0:
        return keep
    if count >= 2 ** 31 or max_keep >= 2 ** 31:
        raise ValueError(f"{count:,} boxes or {max_keep:,} keeps per image: the kernel counts with 32 bits")
    block = triton.next_power_of_2(max_keep)
    groups = group.contiguous() if group is not None else alive  # a placeholder pointer when ungrouped
    _greedy_nms_kernel[(num,)](ordered.contiguous(), alive.contiguous(), groups, keep, count, max_keep,
                               float(iou_thresh), KEEP_BLOCK=block, GROUPED=group is not None,
                               num_warps=1 if block <= 512 else 2)
    return keep
