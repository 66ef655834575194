"""Box selection as bottom-up attention does it (``generate_tsv.py::get_detections_from_im``).

For every object class, NMS over the proposals scored by that class; a proposal's confidence is its
best score among the classes where it survived; keep proposals with confidence >= ``score_thresh``,
at least ``min_boxes`` and at most ``max_boxes`` of them, best first. ``min_boxes == max_boxes``
gives the fixed-count features (the 36-box mode).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

# Pairs (proposal, class) scored below this cannot change which proposals pass a 0.2 threshold, so
# NMS skips them; when fewer than ``min_boxes`` proposals are left scored, the exact pass reruns.
CANDIDATE_FLOOR = 0.01


@dataclass(frozen=True)
class BoxSelection:
    """Thresholds of the bottom-up-attention selection rule (defaults: 10-100 adaptive boxes)."""

    nms_thresh: float = 0.3
    score_thresh: float = 0.2
    min_boxes: int = 10
    max_boxes: int = 100

    def __post_init__(self):
        if not 0 < self.min_boxes <= self.max_boxes:
            raise ValueError(f"need 0 < min_boxes <= max_boxes, got {self.min_boxes} and {self.max_boxes}")
        for name, value in (("nms_thresh", self.nms_thresh), ("score_thresh", self.score_thresh)):
            if not 0 <= value <= 1:  # (NaN too) named as the field and as lait features' option
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must lie in [0, 1], got {value!r}")

    @classmethod
    def fixed(cls, count: int = 36, **kwargs) -> "BoxSelection":
        """Exactly ``count`` boxes per image (fewer only when the image has fewer proposals)."""
        return cls(min_boxes=count, max_boxes=count, **kwargs)


def max_confidence(boxes: torch.Tensor, scores: torch.Tensor, nms_thresh: float, floor: float = 0.0) -> torch.Tensor:
    """Per proposal, its best class score among the classes whose per-class NMS kept it (0 if none).

    ``boxes`` [P, 4], ``scores`` [P, K] object classes only (no background). Exact for every value
    >= ``floor``: greedy NMS suppresses a box only by higher-scored boxes, so dropping the pairs
    below the floor does not change the fate of the pairs above it.
    """
    num = boxes.shape[0]
    result = torch.zeros(num, dtype=torch.float32, device=boxes.device)
    if num == 0 or scores.numel() == 0:
        return result
    mask = scores >= floor if floor > 0 else torch.ones_like(scores, dtype=torch.bool)
    proposal_idx, class_idx = torch.nonzero(mask, as_tuple=True)
    if proposal_idx.numel() == 0:
        return result
    pair_scores = scores[proposal_idx, class_idx].float()
    keep = batched_nms(boxes[proposal_idx].float(), pair_scores, class_idx, nms_thresh)
    result.scatter_reduce_(0, proposal_idx[keep], pair_scores[keep], reduce="amax", include_self=True)
    return result


def select_boxes(boxes: torch.Tensor, scores: torch.Tensor, selection: BoxSelection = BoxSelection()) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the selected proposals, best first, and every proposal's confidence (one image)."""
    chosen, conf = select_boxes_batched([boxes], scores, selection)
    return chosen[0], conf


def select_boxes_batched(boxes: list[torch.Tensor], scores: torch.Tensor,
                         selection: BoxSelection = BoxSelection()) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The selection rule for a batch of images at once: per image, the rows of ``scores`` it keeps, best
    first, and the confidences of all rows.

    ``boxes`` holds each image's proposals ([P_i, 4]); ``scores`` [sum P_i, K] are their object-class
    scores, image after image. Each image's result is what it gets alone (``select_boxes``), its indices
    offset by the image's first row. On a GPU every value read back to the host waits for the device: this
    reads back the candidate pairs and the per-image counts for the whole batch (four reads) where an
    image-by-image loop reads four per image, and it keeps one NMS call per image (torchvision's, whose own
    read-back is unavoidable).
    """
    device = scores.device
    sizes = [len(b) for b in boxes]
    total = sum(sizes)
    conf = torch.zeros(total, dtype=torch.float32, device=device)
    if total == 0 or scores.numel() == 0:
        return [torch.zeros(0, dtype=torch.long, device=device) for _ in boxes], conf
    all_boxes = torch.cat(boxes).float()
    image_of_row = torch.repeat_interleave(torch.arange(len(boxes), device=device),
                                           torch.tensor(sizes, device=device), output_size=total)  # no read-back
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    floor = min(CANDIDATE_FLOOR, selection.score_thresh)
    pair_rows, pair_classes = torch.nonzero(scores >= floor, as_tuple=True)  # row-major: image after image
    per_image = torch.bincount(image_of_row[pair_rows], minlength=len(boxes)).tolist()
    kept = []
    start = 0
    for count in per_image:
        if count:
            rows, classes = pair_rows[start:start + count], pair_classes[start:start + count]
            keep = batched_nms(all_boxes[rows], scores[rows, classes].float(), classes, selection.nms_thresh)
            kept.append(start + keep)
        start += count
    if kept:
        kept_pairs = torch.cat(kept)
        conf.scatter_reduce_(0, pair_rows[kept_pairs], scores[pair_rows[kept_pairs], pair_classes[kept_pairs]].float(),
                             reduce="amax", include_self=True)
    # Too few proposals scored above the floor to fill min_boxes exactly: rank that image's proposals all.
    scored = torch.zeros(len(boxes), dtype=torch.long, device=device).index_add_(0, image_of_row, (conf > 0).long())
    for i in torch.nonzero(scored < torch.tensor([min(selection.min_boxes, s) for s in sizes], device=device)).flatten().tolist():
        rows = slice(starts[i], starts[i] + sizes[i])
        conf[rows] = max_confidence(all_boxes[rows], scores[rows], selection.nms_thresh, floor=0.0)
    # Best first within each image: one stable sort on (image, -confidence), exact in float64.
    order = torch.sort(image_of_row.double() * 2 + (1 - conf.double()), stable=True).indices
    passing = torch.zeros(len(boxes), dtype=torch.long, device=device).index_add_(
        0, image_of_row, (conf >= selection.score_thresh).long()).tolist()
    chosen = []
    for start, size, count in zip(starts, sizes, passing):
        chosen.append(order[start:start + min(max(count, selection.min_boxes), selection.max_boxes, size)])
    return chosen, conf
