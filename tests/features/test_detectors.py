"""CPU runs of every architecture on tiny inputs, and the demo detector's training."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from model.detectors import BoxSelection, build_detector, feature_dim_of
from model.detectors.demo import train_demo_detector
from model.detectors.images import decode_for_detector
from tests.features.scenes import CLASS_NAMES, encode, make_scene

# Real architectures, run-time settings shrunk so a CPU test takes a second: small inputs, few proposals.
TINY = {
    "vg-r101-c4": {"min_size": 64, "max_size": 96, "rpn_post_nms_top_n": 4},
    "coco-r50-fpn": {"min_size": 64, "max_size": 96, "rpn_post_nms_top_n": 20},
    "demo": {"min_size": 64, "max_size": 96},
}
# For tests about batching, chunking and rewrites, not about vg's box head itself: its res5 (a CPU second per few
# RoIs at the real 14 x 14) on 6 x 6 RoIs, still even (the parity-grid convs run) with odd halves, as 14's are.
SMALL_ROIS = {"vg-r101-c4": {"pooler_resolution": 6}, "coco-r50-fpn": {}}


@pytest.mark.parametrize("name,dim,classes", [("vg-r101-c4", 2048, 1600), ("coco-r50-fpn", 1024, 90), ("demo", 256, 8)])
def test_architecture_runs_on_cpu(name, dim, classes):
    torch.manual_seed(0)
    detector = build_detector(name, random_init=True, config=TINY[name])
    assert detector.feature_dim == dim == feature_dim_of(name) and len(detector.class_names) == classes
    inputs = [decode_for_detector(encode(make_scene(i, size)[0]), detector.spec.input_size)
              for i, size in enumerate([(50, 80), (96, 64)][: 1 if name == "vg-r101-c4" else 2])]
    assert inputs[0].pixels.shape[1:] == (96, 60)  # short side 64 would make the long side > 96: capped
    out = detector([im.pixels for im in inputs], BoxSelection(min_boxes=3, max_boxes=5), topk=4)
    assert len(out) == len(inputs)
    for regions, image in zip(out, inputs):
        assert 3 <= regions.num_boxes <= 5
        assert regions.features.shape == (regions.num_boxes, dim) and regions.features.dtype == np.float16
        assert np.isfinite(regions.features.astype(np.float32)).all()
        assert regions.topk_class_ids.shape == (regions.num_boxes, 4) and (regions.topk_class_ids < classes).all()
        h, w = image.pixels.shape[1:]
        assert (regions.boxes >= 0).all() and (regions.boxes[:, [0, 2]] <= w).all() and (regions.boxes[:, [1, 3]] <= h).all()


def test_top_class_is_the_best_class_whatever_topk_stores():
    """The top class and its score are the arg-max over the classes: with topk 0 (no distribution stored) they
    were all zeros; a negative topk is refused before any work."""
    torch.manual_seed(0)
    detector = build_detector("demo", random_init=True, config=TINY["demo"])
    image = decode_for_detector(encode(make_scene(1, (96, 64))[0]), detector.spec.input_size).pixels
    selection = BoxSelection(min_boxes=3, max_boxes=3)
    full, none = detector([image], selection, topk=8)[0], detector([image], selection, topk=0)[0]
    assert none.topk_class_ids.shape == none.topk_class_probs.shape == (3, 0)
    np.testing.assert_array_equal(none.class_ids, full.topk_class_ids[:, 0])
    np.testing.assert_allclose(none.class_scores, full.topk_class_probs.max(axis=1))
    assert (none.class_scores > 0).all()
    with pytest.raises(ValueError, match="topk"):
        detector([image], selection, topk=-1)


def test_vg_architecture_is_bottom_up_attention():
    detector = build_detector("vg-r101-c4", random_init=True)
    model = detector.model
    assert detector.spec.min_size == 600 and detector.spec.max_size == 1000 and detector.spec.pixel_std == (1.0, 1.0, 1.0)
    assert model.rpn.head.conv.out_channels == 512 and model.rpn.head.cls_logits.out_channels == 12
    assert model.rpn._post_nms_top_n["testing"] == 300 and model.rpn._pre_nms_top_n["testing"] == 6000
    assert model.roi_heads.box_roi_pool.resolution == 14
    res5 = model.roi_heads.box_head.res5
    assert all(block.conv2.dilation == (2, 2) and block.conv2.stride == (1, 1) for block in res5)
    assert res5[0].conv1.stride == (1, 1) and res5[0].downsample[0].stride == (1, 1)  # res5 keeps the 14x14 grid
    assert model.backbone.layer2[0].conv1.stride == (2, 2) and model.backbone.layer2[0].conv2.stride == (1, 1)
    assert model.roi_heads.box_predictor.cls_score.out_features == 1601
    with torch.no_grad():  # stride 16 with Caffe's ceil-mode stem pool
        assert model.backbone(torch.zeros(1, 3, 64, 96)).shape == (1, 1024, 4, 6)


def _recall(detector, samples):
    found = 0
    for image, boxes, _ in samples:
        inp = decode_for_detector(encode(image), detector.spec.input_size)
        regions = detector([inp.pixels], BoxSelection(min_boxes=1, max_boxes=10))[0]
        sx, sy = inp.scale
        predicted = torch.tensor(regions.boxes) * torch.tensor([sx, sy, sx, sy])
        found += int((box_iou(torch.tensor(boxes), predicted).max(dim=1).values >= 0.5).sum())
    return found


def test_train_demo_detector_learns_and_reloads(tmp_path):
    samples = [make_scene(i, (64, 48), max_objects=2) for i in range(4)]
    config = {"channels": [16, 16, 32, 32, 64, 64], "min_size": 48, "max_size": 64,
              "box_batch_size_per_image": 32, "anchor_sizes": [12, 18, 24, 32]}
    result = train_demo_detector(samples, CLASS_NAMES, str(tmp_path / "demo"), epochs=14, batch_size=2, lr=3e-3, config=config)
    losses = result["losses"]
    assert np.mean(losses[-3:]) < 0.75 * losses[0]
    trained = build_detector("demo", weights=result["path"])  # weights + config (class names) from the file
    untrained = build_detector("demo", weights=result["path"], random_init=True)
    assert trained.class_names == CLASS_NAMES and trained.feature_dim == 256
    ground_truth = sum(len(b) for _, b, _ in samples)
    assert _recall(trained, samples) >= max(2, _recall(untrained, samples) + 1), ground_truth
    with pytest.raises(ValueError, match="labels"):
        train_demo_detector([(samples[0][0], samples[0][1], samples[0][2] + 10)], CLASS_NAMES, str(tmp_path / "x"))


def test_mixed_precision_channels_last_path():
    """The GPU path (autocast + channels-last) run on the CPU with bf16: same interface, finite output."""
    torch.manual_seed(0)
    detector = build_detector("demo", random_init=True, config=TINY["demo"])
    image = decode_for_detector(encode(make_scene(1, (96, 64))[0]), detector.spec.input_size).pixels
    reference = detector([image], BoxSelection(min_boxes=3, max_boxes=3))[0]
    detector.optimize_for("cpu", precision="bf16", channels_last=True)
    mixed = detector([image], BoxSelection(min_boxes=3, max_boxes=3))[0]
    assert mixed.num_boxes == reference.num_boxes == 3
    assert np.isfinite(mixed.features.astype(np.float32)).all() and mixed.boxes.dtype == np.float32
    with pytest.raises(ValueError, match="fp16"):
        detector.optimize_for("cpu", precision="fp16")([image])


@pytest.mark.parametrize("name", ["vg-r101-c4", "coco-r50-fpn"])
def test_box_head_in_chunks_gives_the_same_regions(name):
    """Pooling + box head a few images at a time (bounded memory) changes no box, score or feature."""
    torch.manual_seed(0)
    detector = build_detector(name, random_init=True, config={**TINY[name], **SMALL_ROIS[name]})
    images = [decode_for_detector(encode(make_scene(i, size)[0]), detector.spec.input_size).pixels
              for i, size in enumerate([(50, 80), (96, 64), (80, 80)])]
    selection = BoxSelection(min_boxes=3, max_boxes=5)
    whole = detector(images, selection)
    detector.roi_chunk = 1  # one image per call (a chunk never splits an image)
    chunked = detector(images, selection)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.topk_class_ids, b.topk_class_ids)
        np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["vg-r101-c4", "coco-r50-fpn"])
def test_folded_batchnorm_and_parity_grid_convs_give_the_same_regions(name):
    """The inference rewrites (BN folded into convs, dilated convs on parity grids) keep every result."""
    torch.manual_seed(0)
    detector = build_detector(name, random_init=True, config={**TINY[name], **SMALL_ROIS[name]})
    for module in detector.model.modules():  # non-trivial frozen statistics, so a wrong fold shows
        if type(module).__name__ == "FrozenBatchNorm2d":
            module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 2.0)
    images = [decode_for_detector(encode(make_scene(i, size)[0]), detector.spec.input_size).pixels
              for i, size in enumerate([(50, 80), (96, 64)])]
    selection = BoxSelection(min_boxes=3, max_boxes=5)
    plain = detector(images, selection)
    detector.optimize_for("cpu", fuse=True, dilated_as_batch=True)
    names = {type(m).__name__ for m in detector.model.modules()}
    assert "FrozenBatchNorm2d" not in names
    assert ("DilatedAsBatchConv" in names) == (name == "vg-r101-c4")  # only vg's res5 is dilated
    detector.optimize_for("cpu", fuse=True, dilated_as_batch=True)  # a second call rewrites nothing twice
    fused = detector(images, selection)
    for a, b in zip(plain, fused, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
        np.testing.assert_array_equal(a.topk_class_ids[:, 0], b.topk_class_ids[:, 0])
        np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_parity_grid_conv_equals_dilated_conv():
    from model.detectors.fusion import DilatedAsBatchConv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=2, dilation=2)
    x = torch.randn(3, 6, 14, 10)
    with torch.no_grad():
        np.testing.assert_allclose(DilatedAsBatchConv(conv)(x).numpy(), conv(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(DilatedAsBatchConv(conv)(x[:, :, :13]).numpy(), conv(x[:, :, :13]).numpy(), atol=1e-5)
        cl = x.contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(DilatedAsBatchConv(conv)(cl).numpy(), conv(x).numpy(), atol=1e-5)
    with pytest.raises(ValueError):
        DilatedAsBatchConv(torch.nn.Conv2d(6, 5, 3, padding=1))


def test_batched_greedy_nms_equals_torchvision_per_image():
    """Eager and compiled steps, with and without groups: torchvision's per-image result, cut to max_keep."""
    from torchvision.ops import batched_nms

    from model.detectors.fusion import batched_greedy_nms

    g = torch.Generator().manual_seed(0)
    num, count, max_keep = 3, 400, 60
    xy = torch.rand(num, count, 2, generator=g) * 200
    wh = torch.rand(num, count, 2, generator=g) * 60 + 1
    boxes = torch.cat([xy, xy + wh], dim=2)
    scores = torch.rand(num, count, generator=g)
    valid = torch.rand(num, count, generator=g) > 0.2
    groups = torch.randint(0, 3, (num, count), generator=g)
    for use_groups, compiled in ((True, False), (False, False), (True, True), (False, True)):
        # compiled: each step through torch.compile, as on CUDA (here inductor's CPU code)
        keep = batched_greedy_nms(boxes, scores, valid, groups if use_groups else None, 0.5, max_keep, compiled=compiled)
        for i in range(num):
            index = valid[i].nonzero().squeeze(1)
            ids = groups[i, index] if use_groups else torch.zeros_like(index)
            expected = index[batched_nms(boxes[i, index], scores[i, index], ids, 0.5)][:max_keep]
            got = keep[i][keep[i] >= 0]
            assert len(expected) > 10  # enough survive for the comparison to mean something
            assert got.tolist() == expected.tolist()


def _nms_case(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes, scores and an all-true validity mask for two images of ``count`` random boxes."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, count, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(2, count, 2, generator=g) * 30 + 1], dim=2)
    return boxes, torch.rand(2, count, generator=g), torch.ones(2, count, dtype=torch.bool)


def test_batched_greedy_nms_falls_back_to_the_steps_when_the_kernel_fails(monkeypatch, caplog):
    """The Triton NMS kernel (model/detectors/nms_kernel.py; its results: test_nms_kernel.py) failing to build."""
    from model.detectors import fusion, nms_kernel

    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no GPU compiler here")

    monkeypatch.setattr(nms_kernel, "kernels_available", lambda tensor: True)
    monkeypatch.setattr(nms_kernel, "greedy_nms_sorted", broken)
    monkeypatch.setattr(fusion, "_kernel_failed", False)
    boxes, scores, valid = _nms_case(seed=2, count=60)
    expected = fusion.batched_greedy_nms(boxes, scores, valid, None, 0.5, 20)
    with caplog.at_level("WARNING", logger="model.detectors.fusion"):
        first = fusion.batched_greedy_nms(boxes, scores, valid, None, 0.5, 20, kernel=True)
        second = fusion.batched_greedy_nms(boxes, scores, valid, None, 0.5, 20, kernel=True)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(calls) == 1 and "NMS kernel failed" in caplog.text and "no GPU compiler here" in caplog.text


def test_batched_greedy_nms_runs_eager_when_the_compiled_step_fails(monkeypatch, caplog):
    from model.detectors import fusion

    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fusion, "_compiled_step", broken)
    monkeypatch.setattr(fusion, "_compile_failed", False)
    boxes, scores, valid = _nms_case(seed=1, count=50)
    expected = fusion.batched_greedy_nms(boxes, scores, valid, None, 0.5, 20, compiled=False)
    with caplog.at_level("WARNING", logger="model.detectors.fusion"):
        first = fusion.batched_greedy_nms(boxes, scores, valid, None, 0.5, 20, compiled=True)
        second = fusion.batched_greedy_nms(boxes, scores, valid, None, 0.5, 20, compiled=True)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(calls) == 1  # tried once; later steps and batches run eager without trying again
    assert "compiled NMS step failed" in caplog.text and "no compiler here" in caplog.text


@pytest.mark.parametrize("name", ["vg-r101-c4", "coco-r50-fpn"])
def test_batched_rpn_nms_gives_the_same_regions(name):
    torch.manual_seed(0)
    # vg's res5 is the CPU's cost: few proposals and small RoIs there; NMS still filters its 6,000 anchors.
    detector = build_detector(name, random_init=True, config={**TINY[name], **SMALL_ROIS[name],
                                                             "rpn_post_nms_top_n": 6 if name == "vg-r101-c4" else 30})
    torch.nn.init.normal_(detector.model.rpn.head.cls_logits.weight, std=0.05)  # spread, unsaturated objectness
    images = [decode_for_detector(encode(make_scene(i, size)[0]), detector.spec.input_size).pixels
              for i, size in enumerate([(50, 80), (96, 64), (80, 80)])]
    selection = BoxSelection(min_boxes=3, max_boxes=6)
    plain = detector(images, selection)
    detector.optimize_for("cpu", fuse=False, batched_rpn_nms=True)
    from model.detectors.fusion import _batched_filter_proposals

    assert detector.model.rpn.filter_proposals.__func__ is _batched_filter_proposals
    batched = detector(images, selection)
    detector.optimize_for("cpu", fuse=False, batched_rpn_nms=True, compile_nms=True)  # its steps compiled
    assert detector.model.rpn.compiled_nms_steps
    compiled = detector(images, selection)
    from model.detectors import fusion

    assert fusion._compiled_step is not None and not fusion._compile_failed  # really compiled, no eager fallback
    for a, b, c in zip(plain, batched, compiled, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(b.boxes, c.boxes)
        np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name, levels", [("vg-r101-c4", 1), ("coco-r50-fpn", 5)])
def test_batched_rpn_nms_default_follows_the_rpn_levels(name, levels):
    """On CUDA the batched RPN NMS is on for one level (C4: measured 2x faster), off for FPN (3x slower); never on CPU."""
    from model.detectors.base import _rpn_levels

    detector = build_detector(name, random_init=True, config=TINY[name])
    assert _rpn_levels(detector.model) == levels
    detector.optimize_for("cpu")
    assert "filter_proposals" not in detector.model.rpn.__dict__, "the CPU keeps torchvision's per-image NMS"
