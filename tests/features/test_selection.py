"""Bottom-up-attention box selection on crafted proposals and scores."""
import pytest
import torch

from model.detectors.selection import BoxSelection, max_confidence, select_boxes, select_boxes_batched


def _reference_max_conf(boxes, scores, thresh):
    """Caffe generate_tsv.py, literally: per-class greedy NMS over the proposals, max over classes."""
    from torchvision.ops import box_iou

    iou = box_iou(boxes, boxes)
    max_conf = torch.zeros(len(boxes))
    for c in range(scores.shape[1]):
        order = torch.argsort(scores[:, c], descending=True, stable=True)
        suppressed = torch.zeros(len(boxes), dtype=torch.bool)
        for i in order.tolist():
            if suppressed[i]:
                continue
            max_conf[i] = max(max_conf[i], scores[i, c])
            suppressed |= iou[i] > thresh
    return max_conf


def test_per_class_nms_suppresses_only_within_a_class():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=torch.float32)
    # Proposals 0 and 1 overlap (IoU 0.82). In class 0 proposal 1 loses to 0; in class 1 it wins alone.
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.5], [0.3, 0.1]])
    conf = max_confidence(boxes, scores, nms_thresh=0.3)
    assert conf.tolist() == pytest.approx([0.9, 0.5, 0.3])
    scores_same_class = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.3, 0.1]])
    assert max_confidence(boxes, scores_same_class, 0.3).tolist() == pytest.approx([0.9, 0.0, 0.3])


def test_threshold_then_min_and_max_clamp():
    boxes = torch.tensor([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], dtype=torch.float32)  # disjoint
    scores = torch.tensor([[0.05], [0.6], [0.3], [0.1], [0.25], [0.02]])
    keep, _ = select_boxes(boxes, scores, BoxSelection(score_thresh=0.2, min_boxes=1, max_boxes=10))
    assert keep.tolist() == [1, 2, 4]  # the three >= 0.2, best first
    keep, _ = select_boxes(boxes, scores, BoxSelection(score_thresh=0.2, min_boxes=5, max_boxes=10))
    assert keep.tolist() == [1, 2, 4, 3, 0]  # filled up to 5 by confidence
    keep, _ = select_boxes(boxes, scores, BoxSelection(score_thresh=0.2, min_boxes=1, max_boxes=2))
    assert keep.tolist() == [1, 2]
    keep, _ = select_boxes(boxes, scores, BoxSelection.fixed(4))
    assert keep.tolist() == [1, 2, 4, 3]
    keep, _ = select_boxes(boxes[:2], scores[:2], BoxSelection(min_boxes=10))
    assert len(keep) == 2  # never more boxes than proposals


def test_floor_shortcut_matches_the_literal_rule_on_random_scores():
    gen = torch.Generator().manual_seed(0)
    for trial in range(5):
        xy = torch.rand(60, 2, generator=gen) * 100
        wh = torch.rand(60, 2, generator=gen) * 40 + 5
        boxes = torch.cat([xy, xy + wh], dim=1)
        logits = torch.randn(60, 31, generator=gen) * 3
        scores = torch.softmax(logits, dim=1)[:, 1:]
        reference = _reference_max_conf(boxes, scores, 0.3)
        for selection in (BoxSelection(min_boxes=10, max_boxes=100), BoxSelection.fixed(36),
                          BoxSelection(score_thresh=0.9, min_boxes=50, max_boxes=60)):
            keep, conf = select_boxes(boxes, scores, selection)
            expected_order = torch.argsort(reference, descending=True, stable=True)
            passing = int((reference >= selection.score_thresh).sum())
            count = min(max(passing, selection.min_boxes), selection.max_boxes, 60)
            assert keep.tolist() == expected_order[:count].tolist(), (trial, selection)
            assert torch.allclose(conf[keep], reference[keep])


def test_whole_batch_selection_equals_image_by_image():
    """select_boxes_batched: the same rows, order and confidences as select_boxes on each image, including
    images with no proposals, images whose candidates above the floor cannot fill min_boxes, and ties."""
    gen = torch.Generator().manual_seed(1)
    for trial in range(8):
        sizes = [0, 45, 3, 60, 0, 25] if trial == 0 else torch.randint(0, 70, (5,), generator=gen).tolist()
        boxes = []
        for size in sizes:
            xy = torch.rand(size, 2, generator=gen) * 100
            boxes.append(torch.cat([xy, xy + torch.rand(size, 2, generator=gen) * 40 + 5], dim=1))
        # flat scores (every pair under the 0.01 floor: the exact pass) on odd trials, peaked ones on even
        logits = torch.randn(sum(sizes), 31, generator=gen) * (3.0 if trial % 2 == 0 else 0.05)
        scores = torch.softmax(logits, dim=1)[:, 1:]
        if trial == 2:
            scores[:10] = 0.5  # exact ties
        for selection in (BoxSelection(), BoxSelection.fixed(36), BoxSelection(score_thresh=0.9, min_boxes=5, max_boxes=8)):
            chosen, conf = select_boxes_batched(boxes, scores, selection)
            assert len(chosen) == len(sizes)
            start = 0
            for image_boxes, rows in zip(boxes, chosen):
                keep, image_conf = select_boxes(image_boxes, scores[start:start + len(image_boxes)], selection)
                assert (rows - start).tolist() == keep.tolist(), (trial, selection)
                assert torch.equal(conf[start:start + len(image_boxes)], image_conf)
                start += len(image_boxes)
    chosen, conf = select_boxes_batched([torch.zeros(0, 4), torch.zeros(0, 4)], torch.zeros(0, 5))
    assert [len(c) for c in chosen] == [0, 0] and conf.numel() == 0


def test_empty_and_invalid():
    keep, conf = select_boxes(torch.zeros(0, 4), torch.zeros(0, 5))
    assert keep.numel() == 0 and conf.numel() == 0
    with pytest.raises(ValueError, match="min_boxes"):
        BoxSelection(min_boxes=20, max_boxes=10)
    with pytest.raises(ValueError, match="min_boxes"):
        BoxSelection(min_boxes=0)
