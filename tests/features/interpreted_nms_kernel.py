"""The batched greedy NMS kernel (model/detectors/nms_kernel.py), run on the CPU by Triton's interpreter.

Run in its own process by ``test_nms_kernel.py`` (the interpreter must be on before Triton is imported);
the name keeps the main run from collecting it.
"""
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

from model import triton_support  # noqa: E402
from model.detectors import fusion, nms_kernel  # noqa: E402


def _boxes(num: int, count: int, seed: int, spread: float = 200):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, count, 2, generator=g) * spread
    wh = torch.rand(num, count, 2, generator=g) * 60 + 1
    boxes = torch.cat([xy, xy + wh], dim=2)
    scores = torch.rand(num, count, generator=g)
    scores[:, ::7] = scores[:, :1]  # exact ties: both ways break them by position (a stable sort)
    valid = torch.rand(num, count, generator=g) > 0.2
    groups = torch.randint(0, 3, (num, count), generator=g)
    return boxes, scores, valid, groups


def test_interpreter_is_on():
    assert triton_support.INTERPRETED and nms_kernel.kernels_available(torch.zeros(1))


# The interpreter runs each program's loop in Python, milliseconds a box scanned, so the cases scan few boxes:
# two images (two programs), and where the boxes run out before max_keep, 40 of them crowded onto a small
# canvas, so that a few still overlap by more than 0.7 (and the groups change what is kept).
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("threshold, max_keep, count, spread", [(0.5, 40, 300, 200), (0.3, 25, 300, 200),
                                                                (0.7, 64, 40, 20)])
def test_kernel_keeps_what_the_steps_keep(grouped, threshold, max_keep, count, spread):
    boxes, scores, valid, groups = _boxes(2, count, seed=int(threshold * 10) + max_keep, spread=spread)
    groups = groups if grouped else None
    steps = fusion.batched_greedy_nms(boxes, scores, valid, groups, threshold, max_keep)
    kernel = fusion.batched_greedy_nms(boxes, scores, valid, groups, threshold, max_keep, kernel=True)
    assert not fusion._kernel_failed
    assert torch.equal(kernel, steps)
    kept = (steps >= 0).sum(dim=1)
    assert kept.min() > 10  # enough survive for the comparison to mean something
    if max_keep > count:
        assert kept.max() < count  # here the boxes run out before max_keep: the kernel must stop on its own
    else:
        assert (kept == max_keep).all()  # and here it stops at max_keep


def test_empty_and_all_suppressed_images():
    boxes, scores, valid, _ = _boxes(2, 20, seed=3)
    valid[0] = False  # nothing may be kept in the first image
    boxes[1] = torch.tensor([10.0, 10.0, 50.0, 50.0])  # the second: one box, 20 times
    keep = fusion.batched_greedy_nms(boxes, scores, valid, None, 0.5, 10, kernel=True)
    assert (keep[0] == -1).all()
    assert (keep[1, 1:] == -1).all() and valid[1, keep[1, 0]]
    assert keep[1, 0] == scores[1].masked_fill(~valid[1], -1).argmax()


def test_the_rpn_with_the_kernel_proposes_the_same_regions():
    from model.detectors import BoxSelection, build_detector
    from model.detectors.images import decode_for_detector
    from tests.features.scenes import encode, make_scene

    config = {"min_size": 64, "max_size": 96, "channels": [16, 16, 32, 32, 64, 64], "rpn_pre_nms_top_n": 200,
              "rpn_post_nms_top_n": 20, "class_names": ["a", "b", "c"]}
    torch.manual_seed(0)
    detector = build_detector("demo", random_init=True, config=config)
    torch.nn.init.normal_(detector.model.rpn.head.cls_logits.weight, std=0.05)  # spread, unsaturated objectness
    images = [decode_for_detector(encode(make_scene(i, size)[0]), detector.spec.input_size).pixels
              for i, size in enumerate([(80, 64), (96, 64), (90, 64)])]
    selection = BoxSelection(min_boxes=3, max_boxes=6)
    detector.optimize_for("cpu", fuse=False, batched_rpn_nms=True)
    steps = detector(images, selection)
    detector.optimize_for("cpu", fuse=False, batched_rpn_nms=True, nms_kernel=True)
    assert detector.model.rpn.nms_kernel
    kernel = detector(images, selection)
    for a, b in zip(steps, kernel):
        assert torch.equal(torch.as_tensor(a.boxes), torch.as_tensor(b.boxes))
        assert torch.equal(torch.as_tensor(a.features), torch.as_tensor(b.features))


def test_half_precision_boxes_are_compared_in_float32_both_ways():
    """The RPN's boxes are fp16 under autocast: both ways compute IoU in float32 and keep the same boxes."""
    boxes, scores, valid, _ = _boxes(2, 100, seed=9)
    half = boxes.half()
    steps = fusion.batched_greedy_nms(half, scores, valid, None, 0.7, 30)
    kernel = fusion.batched_greedy_nms(half, scores, valid, None, 0.7, 30, kernel=True)
    assert torch.equal(kernel, steps)
    assert torch.equal(steps, fusion.batched_greedy_nms(half.float(), scores, valid, None, 0.7, 30))
