"""Edge cases of the features stage and its tools: checkpoint constants, lineage counts, report thumbnails,
added input files, wide grayscale decoding."""
import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import schemas
from demo import audit, report
from filters import imageio
from model.detectors import demo
from model.detectors.vg_r101_c4 import convert_detectron2_state
from pipeline.features import FeatureOptions, extract_regions
from tests.features.scenes import CLASS_NAMES, encode, image_id, make_scene
from tests.features.test_weights import _anchor_shapes_detectron2


def _d2_anchors(shapes: np.ndarray) -> torch.Tensor:
    wh = torch.from_numpy(shapes).float()
    return torch.cat([-wh / 2, wh / 2], dim=1)


def test_vg_checkpoint_constants_are_checked_not_loaded():
    anchors = "proposal_generator.anchor_generator.cell_anchors.0"
    ours = {anchors: _d2_anchors(_anchor_shapes_detectron2()),
            "pixel_mean": torch.tensor([102.9801, 115.9465, 122.7717]).view(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}
    assert convert_detectron2_state(ours) == {}  # the model builds these itself
    with pytest.raises(ValueError, match="anchors"):  # other anchor sizes: the RPN would score the wrong boxes
        convert_detectron2_state({anchors: _d2_anchors(_anchor_shapes_detectron2() / 2)})
    with pytest.raises(ValueError, match="anchors"):
        convert_detectron2_state({anchors: torch.zeros(15, 4)})
    with pytest.raises(ValueError, match="normalisation"):  # detectron2's ImageNet means, not the Caffe ones
        convert_detectron2_state({"pixel_mean": torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)})
    with pytest.raises(ValueError, match="normalisation"):
        convert_detectron2_state({"pixel_std": torch.tensor([57.375, 57.120, 58.395]).view(3, 1, 1)})


# ---- lait audit: a features stage's `in` is counted as features counts it ----------------------------------

def _features_books(run, n_in: int, **recorded) -> None:
    (run / "features" / "regions").mkdir(parents=True)  # what marks a per-image stage (its rows not checked here)
    (run / "features" / "stats.json").write_text(json.dumps(
        {"stage": "features", "in": n_in, "kept": n_in, "rejected": 0, "rejected_by_reason": {}, **recorded}))


def _in_check(run) -> dict:
    checks = audit.audit_stage(str(run), "features")["checks"]
    return next(c for c in checks if c["check"] == "in_equals_upstream_kept")


def test_audit_counts_features_in_over_a_crawl_by_distinct_images(tmp_path):
    # One image on two pages: three candidate rows, three candidate ids, two images; features reads two.
    rows = [{"candidate_id": f"c{k}", "image_id": image, "page_url": f"http://a/{k}", "image_url": f"http://a/{k}.png",
             "source": "crawl"} for k, image in enumerate(["i0", "i0", "i1"])]
    schemas.write_table(schemas.to_table(rows, "candidates"), str(tmp_path / "crawl" / "candidates" / "part-0.parquet"),
                        "candidates")
    _features_books(tmp_path, 2, input="crawl")  # lait features --input RUN/crawl
    assert _in_check(tmp_path)["ok"], _in_check(tmp_path)
    (tmp_path / "features").rename(tmp_path / "features_old")
    _features_books(tmp_path, 3, input="crawl")  # a candidate row each: not what features reads
    assert not _in_check(tmp_path)["ok"]


def test_audit_counts_each_features_row_without_an_image_id(tmp_path):
    # Three images, a second caption of one, and three rows without an id (each read and rejected on its own).
    ids = ["i0", "i1", "i2", "i0", "", "", "  "]
    rows = [{"pair_id": f"p{k}", "image_id": image, "caption": "c"} for k, image in enumerate(ids)]
    schemas.write_table(schemas.to_table(rows, "pairs"), str(tmp_path / "filter" / "pairs" / "part-0.parquet"), "pairs")
    _features_books(tmp_path, 6)
    assert _in_check(tmp_path)["ok"], _in_check(tmp_path)
    (tmp_path / "features").rename(tmp_path / "features_old")
    _features_books(tmp_path, 5)  # the blank ids collapsed into one: not what features reads
    assert not _in_check(tmp_path)["ok"]


# ---- lait report: boxes drawn on the image as features saw it ---------------------------------------------

def _thumb_image(html: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(re.search(r'base64,([^"]+)"', html).group(1)))).convert("RGB")


def test_report_thumbnail_is_oriented_and_boxes_land_on_the_oriented_pixels():
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo: stored 240x120, shown 120x240
    buffer = io.BytesIO()
    Image.new("RGB", (240, 120), (128, 128, 128)).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    # A box in the lower half of the portrait image (features' coordinates): off the stored landscape pixels.
    thumb = _thumb_image(report._thumb(buffer.getvalue(), [[20, 140, 100, 220]], ["x"], side=120))
    assert thumb.size == (60, 120)
    red, green, blue = thumb.getpixel((30, 110))  # on the box's bottom edge (scale 0.5)
    assert red > 180 and green < 120 and blue < 140, (red, green, blue)
    assert max(abs(c - 128) for c in thumb.getpixel((30, 40))) < 20  # above the box: the image itself


def test_report_thumbnail_scales_16_bit_grayscale():
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40), 128 * 257, dtype=np.uint16)).save(buffer, "PNG")  # mid-gray in 16 bits
    value = _thumb_image(report._thumb(buffer.getvalue())).getpixel((20, 20))
    assert all(abs(c - 128) <= 2 for c in value), value


# ---- lait features: a file added after a run whose last shard was not full -----------------------------------

@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    torch.manual_seed(0)
    small = {"min_size": 64, "max_size": 96, "channels": [16, 16, 32, 32, 64, 64]}
    return demo.save(demo.build(small, CLASS_NAMES), str(tmp_path_factory.mktemp("weights") / "demo.safetensors"))


def _pairs_file(folder, name: str, images: list[bytes]) -> None:
    rows = [{"pair_id": f"p{image_id(d)[:8]}", "image_id": image_id(d), "caption": "c", "image_bytes": d} for d in images]
    schemas.write_table(schemas.to_table(rows, "pairs"), str(folder / "pairs" / name), "pairs")


def test_a_file_added_after_a_run_fills_its_last_shard_and_resumes(tmp_path, demo_weights):
    scenes = [encode(make_scene(i, (96, 72))[0]) for i in range(6)]
    options = FeatureOptions(detector="demo", weights=demo_weights, num_workers=0, batch_size=2, min_boxes=2,
                             max_boxes=3, images_per_shard=2)
    _pairs_file(tmp_path / "in", "part-00000.parquet", scenes[:3])  # shard 0 full, shard 1 holds one image
    extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options)
    _pairs_file(tmp_path / "in", "part-00001.parquet", scenes[3:5])  # sorts after: fills shard 1, adds shard 2
    stats = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options)
    assert (stats["in"], stats["kept"], stats["shards_resumed"], stats["images_processed"]) == (5, 5, 1, 3)
    kept = schemas.read_table(str(tmp_path / "out" / "regions"), "regions").column("image_id").to_pylist()
    assert sorted(kept) == sorted(image_id(d) for d in scenes[:5])  # each once: shard 1's old file replaced
    # A shard whose recorded images are not the start of its images now is another input: still refused.
    _pairs_file(tmp_path / "in", "part-00000.parquet", [*scenes[:2], scenes[5]])
    with pytest.raises(ValueError, match="shard 1 of other images"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options)


# ---- filters.imageio: 32-bit and float grayscale scaled, not clipped --------------------------------------------

def _grey_levels(values: np.ndarray) -> list[int]:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "TIFF")  # as a file would bring them: mode I or F
    return np.asarray(imageio.load_image(buffer.getvalue()))[0, :, 0].tolist()


def test_32_bit_integer_grayscale_is_scaled_by_int32s_range():
    ramp = np.array([[0, 2**23, 2**30, 2**31 - 1, -7]], np.int32)
    assert _grey_levels(ramp) == [0, 1, 128, 255, 0]
    # 16-bit data in this mode, and 8-bit data, keep their scale.
    assert _grey_levels(np.array([[0, 257, 50000, 65535]], np.int32)) == [0, 1, 194, 255]
    assert _grey_levels(np.array([[0, 100, 255]], np.int32)) == [0, 100, 255]


def test_float_grayscale_above_255_is_scaled_by_its_maximum():
    assert _grey_levels(np.array([[0, 250, 500, 1000]], np.float32)) == [0, 63, 127, 255]
    assert _grey_levels(np.array([[0, 0.5, 1.0]], np.float32)) == [0, 127, 255]  # 0..1 and 0..255 as before
    assert _grey_levels(np.array([[0, 100, 200]], np.float32)) == [0, 100, 200]
    assert _grey_levels(np.array([[np.nan, np.inf, 500, 1000]], np.float32)) == [0, 255, 127, 255]
