"""Published-weight loading on stand-in files with the real key names and shapes (never downloaded)."""
import os
import pickle

import numpy as np
import pytest
import torch

from model.detectors import WeightsNotFoundError, build_detector
from model.detectors.weights import UnsafePickleError, load_detectron2_pickle

# ResNet-101 as detectron2 names it: stage -> (blocks, in, bottleneck, out); res5 lives in the RoI head.
_STAGES = {"backbone.res2": (3, 64, 64, 256), "backbone.res3": (4, 256, 128, 512),
           "backbone.res4": (23, 512, 256, 1024), "roi_heads.res5": (3, 1024, 512, 2048)}


def detectron2_vg_state(rng, attributes=True, norm_names=("weight", "bias", "running_mean", "running_var"), he_scale=False):
    """Random arrays under the key names and shapes of py-bottom-up-attention's VG checkpoints.

    ``he_scale`` scales each weight by sqrt(2 / fan-in), so the 101-layer net runs without overflowing.
    """
    shapes = {"backbone.stem.conv1.weight": (64, 3, 7, 7)}
    norms = ["backbone.stem.conv1.norm"]
    norm_width = {"backbone.stem.conv1.norm": 64}
    for stage, (blocks, cin, mid, cout) in _STAGES.items():
        for b in range(blocks):
            first_in = cin if b == 0 else cout
            convs = {"conv1": (mid, first_in, 1, 1), "conv2": (mid, mid, 3, 3), "conv3": (cout, mid, 1, 1)}
            if b == 0:
                convs["shortcut"] = (cout, cin, 1, 1)
            for conv, shape in convs.items():
                shapes[f"{stage}.{b}.{conv}.weight"] = shape
                norms.append(f"{stage}.{b}.{conv}.norm")
                norm_width[norms[-1]] = shape[0]
    shapes.update({
        "proposal_generator.rpn_head.conv.weight": (512, 1024, 3, 3), "proposal_generator.rpn_head.conv.bias": (512,),
        "proposal_generator.rpn_head.objectness_logits.weight": (12, 512, 1, 1),
        "proposal_generator.rpn_head.objectness_logits.bias": (12,),
        "proposal_generator.rpn_head.anchor_deltas.weight": (48, 512, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.bias": (48,),
        "roi_heads.box_predictor.cls_score.weight": (1601, 2048), "roi_heads.box_predictor.cls_score.bias": (1601,),
        "roi_heads.box_predictor.bbox_pred.weight": (6400, 2048), "roi_heads.box_predictor.bbox_pred.bias": (6400,),
    })
    if attributes:
        shapes.update({"roi_heads.box_predictor.cls_embedding.weight": (1601, 256),
                       "roi_heads.box_predictor.fc_attr.weight": (512, 2304), "roi_heads.box_predictor.fc_attr.bias": (512,),
                       "roi_heads.box_predictor.attr_score.weight": (401, 512), "roi_heads.box_predictor.attr_score.bias": (401,)})
    state = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    if he_scale:
        for key, value in state.items():
            if value.ndim > 1 and not key.endswith("cls_embedding.weight"):
                value *= np.sqrt(2.0 / np.prod(value.shape[1:]))
    for norm in norms:
        for leaf in norm_names:
            state[f"{norm}.{leaf}"] = rng.random(norm_width[norm], dtype=np.float32) + 0.5
        if he_scale and norm.endswith("conv3.norm"):  # damp each residual branch, so 33 blocks stay finite
            state[f"{norm}.{norm_names[0]}"] *= 0.1
    return state


@pytest.fixture(scope="module")
def vg_state():
    return detectron2_vg_state(np.random.default_rng(0))


# Run-time sizes of the vg tests that run the loaded model: small inputs, few proposals.
TINY_VG = {"min_size": 64, "max_size": 96, "rpn_post_nms_top_n": 4}


@pytest.fixture(scope="module")
def vg_home(tmp_path_factory, vg_state):
    """A weights home holding the stand-in as detectron2's checkpointer writes it (a protocol-2 pickle): written
    once, as writing ResNet-101's arrays that way takes seconds."""
    home = tmp_path_factory.mktemp("detectors")
    (home / "vg-r101-c4").mkdir()
    with open(home / "vg-r101-c4" / "faster_rcnn_from_caffe_attr.pkl", "wb") as f:
        pickle.dump({"model": vg_state, "__author__": "stand-in", "matching_heuristics": True}, f, protocol=2)
    return home


@pytest.fixture(scope="module")
def vg_from_home(vg_home):
    """``build_detector("vg-r101-c4")`` with no ``--weights``: the checkpoint found in the weights home and loaded
    strictly (every key mapped). Built once (reading the pickle takes seconds); a test that changes it takes a copy."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LAIT_DETECTOR_HOME", str(vg_home))
        return build_detector("vg-r101-c4", config=TINY_VG)


def _check_vg_mapping(model_state, src):
    np.testing.assert_array_equal(model_state["backbone.conv1.weight"].numpy(), src["backbone.stem.conv1.weight"][:, ::-1])
    np.testing.assert_array_equal(model_state["backbone.layer3.22.conv2.weight"].numpy(), src["backbone.res4.22.conv2.weight"])
    np.testing.assert_array_equal(model_state["backbone.layer1.0.downsample.1.running_var"].numpy(),
                                  src["backbone.res2.0.shortcut.norm.running_var"])
    np.testing.assert_array_equal(model_state["roi_heads.box_head.res5.2.bn3.weight"].numpy(), src["roi_heads.res5.2.conv3.norm.weight"])
    cls = model_state["roi_heads.box_predictor.cls_score.weight"].numpy()
    np.testing.assert_array_equal(cls[0], src["roi_heads.box_predictor.cls_score.weight"][1600])  # background first
    np.testing.assert_array_equal(cls[1:], src["roi_heads.box_predictor.cls_score.weight"][:1600])
    reg = model_state["roi_heads.box_predictor.bbox_pred.weight"].numpy()
    assert not reg[:4].any() and np.array_equal(reg[4:], src["roi_heads.box_predictor.bbox_pred.weight"])


def _anchor_shapes_detectron2():
    """detectron2's DefaultAnchorGenerator order: for each size, for each aspect ratio (h/w)."""
    out = []
    for size in (64, 128, 256, 512):
        for ratio in (0.5, 1.0, 2.0):
            w = np.sqrt(size * size / ratio)
            out.append((w, ratio * w))
    return np.array(out)


def _check_rpn_semantics(detector, src):
    """Each of our anchors must get the objectness and deltas detectron2 computes for the same anchor shape."""
    head = detector.model.rpn.head
    x = torch.randn(1, 1024, 3, 3)
    with torch.no_grad():
        ours_logits, ours_deltas = head([x])
        hidden = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(src["proposal_generator.rpn_head.conv.weight"]),
                                                       torch.from_numpy(src["proposal_generator.rpn_head.conv.bias"]), padding=1))
        d2_logits = torch.nn.functional.conv2d(hidden, torch.from_numpy(src["proposal_generator.rpn_head.objectness_logits.weight"]),
                                               torch.from_numpy(src["proposal_generator.rpn_head.objectness_logits.bias"]))
        d2_deltas = torch.nn.functional.conv2d(hidden, torch.from_numpy(src["proposal_generator.rpn_head.anchor_deltas.weight"]),
                                               torch.from_numpy(src["proposal_generator.rpn_head.anchor_deltas.bias"]))
    cell = detector.model.rpn.anchor_generator.cell_anchors[0]
    ours_shapes = (cell[:, 2:] - cell[:, :2]).numpy()
    d2_shapes = _anchor_shapes_detectron2()
    for t, (w, h) in enumerate(ours_shapes):
        d = int(np.argmin(np.abs(d2_shapes - (w, h)).sum(axis=1)))  # torchvision rounds anchors to integers
        assert np.abs(d2_shapes[d] - (w, h)).max() <= 1.0
        torch.testing.assert_close(ours_logits[0][0, t], d2_logits[0, d], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ours_deltas[0][0, 4 * t:4 * t + 4], d2_deltas[0, 4 * d:4 * d + 4], rtol=1e-4, atol=1e-3)


def test_vg_detectron2_pickle_loads_from_weights_home(tmp_path, monkeypatch, vg_state, vg_from_home):
    monkeypatch.setenv("LAIT_DETECTOR_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "vg-r101-c4")):
        build_detector("vg-r101-c4")
    detector = vg_from_home  # the same call with the checkpoint in the weights home
    _check_vg_mapping(detector.model.state_dict(), vg_state)
    _check_rpn_semantics(detector, vg_state)
    assert detector.feature_dim == 2048 and len(detector.class_names) == 1600


def test_vg_hf_checkpoint_with_gamma_beta_and_caffe_norms(tmp_path, vg_state):
    # frcnn-vg-finetuned style: a torch file, norms named gamma/beta, BN counters, no attribute head.
    state = {}
    for key, value in vg_state.items():
        if any(a in key for a in ("cls_embedding", "fc_attr", "attr_score")):
            continue
        key = key.replace("norm.weight", "norm.gamma").replace("norm.bias", "norm.beta")
        state[key] = torch.from_numpy(value)
    state["backbone.stem.conv1.norm.num_batches_tracked"] = torch.tensor(0)
    # HF's model keeps its (detectron2-ordered, unrounded) cell anchors as parameters; detectron2 its pixel stats.
    shapes = torch.from_numpy(_anchor_shapes_detectron2()).float()
    state["proposal_generator.anchor_generator.cell_anchors.0"] = torch.cat([-shapes / 2, shapes / 2], dim=1)
    state["pixel_mean"] = torch.tensor([102.9801, 115.9465, 122.7717]).view(3, 1, 1)
    state["pixel_std"] = torch.ones(3, 1, 1)
    # Caffe-converted frozen norms may carry only scale and shift.
    del state["backbone.stem.conv1.norm.running_mean"], state["backbone.stem.conv1.norm.running_var"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    detector = build_detector("vg-r101-c4", weights=str(tmp_path / "pytorch_model.bin"))
    ours = detector.model.state_dict()
    _check_vg_mapping(ours, vg_state)
    assert torch.equal(ours["backbone.bn1.running_var"], torch.ones(64))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"x": Exploit()}}, f)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        load_detectron2_pickle(str(tmp_path / "evil.pkl"))
    assert not marker.exists()
    for protocol in (2, 4, 5):  # 5 names another numpy function (arrays as out-of-band-capable buffers): refused before
        with open(tmp_path / "ok.pkl", "wb") as f:
            pickle.dump({"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}}, f, protocol=protocol)
        assert load_detectron2_pickle(str(tmp_path / "ok.pkl"))["a"].tolist() == [[0, 1, 2], [3, 4, 5]], protocol


def test_coco_weights_from_file_and_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match="--download-weights"):
        build_detector("coco-r50-fpn")
    torch.manual_seed(1)
    source = build_detector("coco-r50-fpn", random_init=True)
    path = tmp_path / "coco.pth"
    torch.save(source.model.state_dict(), path)
    loaded = build_detector("coco-r50-fpn", weights=str(path))
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    from model.detectors.coco_r50_fpn import published_weights_path

    cached = published_weights_path("coco-r50-fpn")
    assert cached.startswith(str(tmp_path / "torch"))
    os.makedirs(os.path.dirname(cached))
    os.replace(path, cached)
    cached_model = build_detector("coco-r50-fpn")  # torchvision's cache file, no download
    assert torch.equal(cached_model.model.roi_heads.box_predictor.cls_score.weight,
                       source.model.roi_heads.box_predictor.cls_score.weight)
    assert cached_model.class_names[0] == "person" and cached_model.feature_dim == 1024


def test_demo_needs_weights_or_random_init(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="train_demo_detector"):
        build_detector("demo")
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("yolo")


def test_random_init_with_weights_is_refused_where_the_file_would_be_ignored(tmp_path):
    """vg/coco with --random-init never read --weights (a missing file passed, and run.json recorded it): refused.
    demo takes its architecture, class names and sizes from the file, overridable like its trained weights."""
    from model.detectors import demo
    from model.detectors.base import network_input_size
    from pipeline.features import FeatureOptions

    for name in ("vg-r101-c4", "coco-r50-fpn"):
        with pytest.raises(ValueError, match="--random-init builds .* would be ignored"):
            build_detector(name, weights=str(tmp_path / "nothing.pkl"), random_init=True)
        with pytest.raises(ValueError, match="--random-init"):
            FeatureOptions(detector=name, weights=str(tmp_path / "nothing.pkl"), random_init=True)
    torch.manual_seed(0)
    path = demo.save(demo.build({"min_size": 64, "max_size": 96, "channels": [8, 8, 8, 8, 8, 8]}, ["a", "b"]),
                     str(tmp_path / "demo.safetensors"))
    for random_init in (False, True):  # the file's sizes were kept whatever --min-size/--max-size said
        detector = build_detector("demo", weights=path, random_init=random_init, config={"min_size": 32, "max_size": 48})
        assert (detector.spec.min_size, detector.spec.max_size, detector.spec.config["max_size"]) == (32, 48, 48)
        assert detector.spec.input_size(200, 150) == network_input_size(200, 150, 32, 48) == (43, 32)
        assert detector.class_names == ["a", "b"]
    with pytest.raises(WeightsNotFoundError, match="no weights file at"):
        build_detector("demo", weights=str(tmp_path / "nothing.safetensors"))


def test_class_names_files(tmp_path):
    from model.detectors import read_class_names
    from model.detectors.vg_r101_c4 import build

    (tmp_path / "objects_vocab.txt").write_text("person,man\ncat\n\ndog\n")
    assert read_class_names(str(tmp_path / "objects_vocab.txt")) == ["person", "cat", "dog"]
    (tmp_path / "names.json").write_text('{"class_names": ["a", "b"]}')
    assert read_class_names(str(tmp_path / "names.json")) == ["a", "b"]
    with pytest.raises(ValueError, match="1600 classes"):
        build(class_names=["person", "cat", "dog"])


def test_vg_attribute_head_loads_and_regions_carry_attributes(tmp_path, vg_state, vg_from_home):
    """An attribute checkpoint builds the attribute head; regions and their Parquet rows get top-k attributes."""
    import copy

    import schemas
    from model.detectors import BoxSelection
    from model.detectors.images import decode_for_detector
    from pipeline.features import ImageRegions, classes_info, regions_table
    from tests.features.scenes import encode, make_scene

    tiny = TINY_VG
    detector = copy.deepcopy(vg_from_home)  # faster_rcnn_from_caffe_attr.pkl, loaded; a copy, as this test changes it
    head = detector.model.roi_heads.attribute_head
    src = vg_state["roi_heads.box_predictor.cls_embedding.weight"]
    np.testing.assert_array_equal(head.cls_embedding.weight.detach().numpy()[0], src[1600])  # background first
    np.testing.assert_array_equal(head.cls_embedding.weight.detach().numpy()[1:], src[:1600])
    np.testing.assert_array_equal(head.attr_score.weight.detach().numpy(), vg_state["roi_heads.box_predictor.attr_score.weight"])
    assert detector.spec.config["attributes"] == 400
    # The stand-in's unit-normal convolutions overflow a 101-layer net: run with a random build's sane
    # backbone and box head, keeping the loaded attribute head.
    plain = build_detector("vg-r101-c4", random_init=True, config=tiny)
    missing, _ = detector.model.load_state_dict(plain.model.state_dict(), strict=False)
    assert missing and all(k.startswith("roi_heads.attribute_head.") for k in missing)
    image = decode_for_detector(encode(make_scene(0, (80, 60))[0]), detector.spec.input_size)
    regions = detector([image.pixels], BoxSelection(min_boxes=3, max_boxes=4), topk=5)[0]
    assert regions.topk_attribute_ids.shape == regions.topk_attribute_probs.shape == (regions.num_boxes, 5)
    assert (regions.topk_attribute_ids >= 0).all() and (regions.topk_attribute_ids < 400).all()
    assert (np.diff(regions.topk_attribute_probs, axis=1) <= 0).all() and regions.topk_attribute_probs.sum(1).max() <= 1.0 + 1e-5
    table = regions_table([ImageRegions("img", 80, 60, regions)], "vg-r101-c4", 2048)
    schemas.write_table(table, str(tmp_path / "regions" / "part-00000.parquet"), "regions")
    back = schemas.read_table(str(tmp_path / "regions"), "regions")
    assert back.column("topk_attribute_ids")[0].as_py() == regions.topk_attribute_ids.tolist()
    assert classes_info("vg-r101-c4", detector.spec, 5)["num_attributes"] == 400
    # Without attribute weights: no head, no attribute columns.
    assert getattr(plain.model.roi_heads, "attribute_head", None) is None
    plain_regions = plain([image.pixels], BoxSelection(min_boxes=3, max_boxes=4))[0]
    assert plain_regions.topk_attribute_ids is None
    assert "topk_attribute_ids" not in regions_table([ImageRegions("img", 80, 60, plain_regions)], "vg-r101-c4", 2048).schema.names


def test_tensor_shape_reads_each_format_and_attribute_count_uses_it(tmp_path):
    """The Beam driver learns the attribute head's width from the file without building the detector."""
    from safetensors.torch import save_file

    from model.detectors import attribute_count
    from model.detectors.weights import load_state, tensor_shape

    state = {"roi_heads.attribute_head.attr_score.weight": torch.zeros(11, 512), "other": torch.zeros(3)}
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    torch.save(state, tmp_path / "plain.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    torch.save(state, tmp_path / "torch.safetensors")  # torch.load by path takes the name for the format
    save_file(state, str(tmp_path / "w.safetensors"))
    with open(tmp_path / "d2.pkl", "wb") as f:
        pickle.dump({"model": {"roi_heads.box_predictor.attr_score.weight": np.zeros((401, 512), np.float32)}}, f)
    names = ("roi_heads.box_predictor.attr_score.weight", "roi_heads.attribute_head.attr_score.weight")
    for file in ("wrapped.pth", "plain.bin", "legacy.bin", "torch.safetensors", "w.safetensors"):
        assert tensor_shape(str(tmp_path / file), names) == (11, 512), file
        assert load_state(str(tmp_path / file))[names[1]].shape == (11, 512), file
        assert tensor_shape(str(tmp_path / file), ("missing",)) is None, file
        assert attribute_count("vg-r101-c4", str(tmp_path / file)) == 10  # row 0 is "no attribute"
    assert tensor_shape(str(tmp_path / "d2.pkl"), names) == (401, 512)
    assert attribute_count("vg-r101-c4", str(tmp_path / "d2.pkl")) == 400
    assert attribute_count("coco-r50-fpn", str(tmp_path / "d2.pkl")) == 0  # only vg-r101-c4 predicts attributes
    with pytest.raises(FileNotFoundError, match="no weights file"):
        tensor_shape(str(tmp_path / "nothing.bin"), names)


def test_unreadable_weights_and_class_files_are_one_clear_error(tmp_path):
    from model.detectors import demo, read_class_names

    torch.manual_seed(0)
    good = demo.save(demo.build({"min_size": 64, "max_size": 96, "channels": [8, 8, 8, 8, 8, 8]}, ["a", "b"]),
                     str(tmp_path / "good.safetensors"))
    data = open(good, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.safetensors").write_text("not weights")
    (tmp_path / "text.pth").write_text("not weights either")
    for name, detector in (("cut.safetensors", "demo"), ("text.safetensors", "demo"),
                           ("text.safetensors", "coco-r50-fpn"), ("text.pth", "coco-r50-fpn")):
        with pytest.raises(ValueError, match=f"{name}: not a readable weights file"):
            build_detector(detector, weights=str(tmp_path / name))
    (tmp_path / "classes.json").write_text('{"detector": "demo", "num_classes": 2}')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "numbers.json").write_text("[1, 2]")
    for name, message in (("classes.json", "without 'class_names'"), ("latin1.txt", "not UTF-8"),
                          ("empty.txt", "no class names"), ("numbers.json", "list of strings")):
        with pytest.raises(ValueError, match=f"{name}: .*{message}"):
            read_class_names(str(tmp_path / name))
    # Class names a detector would ignore: its weights (demo) or torchvision's categories (coco) name them.
    with pytest.raises(ValueError, match="--classes"):
        build_detector("demo", weights=good, class_names=["x", "y"])
    with pytest.raises(ValueError, match="--classes"):
        build_detector("coco-r50-fpn", random_init=True, class_names=["x"])
    assert build_detector("demo", random_init=True, class_names=["x", "y"]).spec.class_names == ["x", "y"]


def test_a_weights_file_that_is_no_checkpoint_says_what_it_is(tmp_path, capsys):
    """A text file as --weights failed with 'not a readable weights file (101)': the unpickler's KeyError. Every
    detector that reads a weights file says what is wrong with it now, through the CLI as one line (exit 2)."""
    from lait import cli
    from tests.features.scenes import encode, make_scene, write_pairs

    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])])
    (tmp_path / "notweights.txt").write_text("hello\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    with open(tmp_path / "cut.pkl", "wb") as f:
        pickle.dump({"model": {"a": np.zeros(64, np.float32)}}, f, protocol=2)
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "cut.pkl").read_bytes()[:100])
    (tmp_path / "text.safetensors").write_text("not weights")
    cases = (("vg-r101-c4", "notweights.txt", "not a PyTorch checkpoint or pickle file: it holds text ('hello')"),
             ("coco-r50-fpn", "notweights.txt", "not a PyTorch checkpoint or pickle file: it holds text ('hello')"),
             ("vg-r101-c4", "empty.pth", "not a PyTorch checkpoint or pickle file: the file is empty"),
             ("coco-r50-fpn-v2", "cut.pkl", "a PyTorch checkpoint or pickle file, but it does not load: damaged, or "
                                            "not this detector's (UnpicklingError: pickle data was truncated)"),
             ("demo", "text.safetensors", "not a safetensors file: it holds text ('not weights')"))
    for detector, name, message in cases:
        code = cli.main(["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--detector", detector, "--weights", str(tmp_path / name), "--device", "cpu", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err == f"lait features: error: {tmp_path / name}: not a readable weights file: {message}\n"
    assert not (tmp_path / "out").exists()


def test_random_init_weights_are_drawn_from_a_fixed_seed_leaving_the_callers_random_state():
    from model.detectors import RANDOM_INIT_SEED

    tiny = {"min_size": 32, "max_size": 48, "channels": [8, 8, 8, 8, 8, 8]}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = build_detector("demo", random_init=True, config=tiny).model.state_dict()
    assert torch.equal(torch.rand(3), expected)  # the caller's random state is as it was
    again = build_detector("demo", random_init=True, config=tiny, seed=RANDOM_INIT_SEED).model.state_dict()
    other = build_detector("demo", random_init=True, config=tiny, seed=RANDOM_INIT_SEED + 1).model.state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
    coco = [build_detector("coco-r50-fpn", random_init=True).model.roi_heads.box_predictor.cls_score.weight
            for _ in range(2)]
    assert torch.equal(*coco)
