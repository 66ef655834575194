"""One test per image-filter reason, on images drawn by the test."""
import io

import pytest
from PIL import Image

from filters.image import ImageFilter, hamming, image_header
from filters.synthetic import make_image


def _record(data):
    return {"image_bytes": data}


def test_keeps_a_photo_and_reports_size_format_and_phash():
    decision, info = ImageFilter().check(_record(make_image(1, 400, 320)))
    assert decision.keep, decision
    assert (info["width"], info["height"], info["format"]) == (400, 320, "JPEG")
    assert len(info["phash"]) == 16 and int(info["phash"], 16) >= 0


@pytest.mark.parametrize("data,reason", [
    (None, "missing_image"),
    (b"", "missing_image"),
    (b"\xff\xd8tiny", "image_too_few_bytes"),
    (b"not an image at all " * 100, "image_corrupt"),
])
def test_bytes_rejects(data, reason):
    assert ImageFilter()(_record(data)).reason == reason


def test_truncated_pixels_are_corrupt():
    data = make_image(2, 400, 400)
    decision = ImageFilter()(_record(data[: len(data) // 2]))
    assert decision.reason == "image_corrupt"


def test_format_not_allowed():
    data = make_image(3, 320, 320, fmt="PNG")
    assert ImageFilter(formats=("JPEG",))(_record(data)).reason == "image_format_not_allowed"
    assert ImageFilter()(_record(data)).keep


def test_animated():
    frames = [Image.open(io.BytesIO(make_image(s, 320, 320))).convert("P") for s in (4, 5)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert ImageFilter()(_record(out.getvalue())).reason == "image_animated"
    assert ImageFilter(allow_animated=True)(_record(out.getvalue())).keep


def test_too_small_and_aspect():
    small = ImageFilter()(_record(make_image(6, 299, 500)))
    assert (small.reason, small.score) == ("image_too_small", 299)
    wide = ImageFilter()(_record(make_image(7, 1000, 320)))
    assert wide.reason == "aspect_ratio_out_of_range" and wide.score == pytest.approx(3.125)
    assert ImageFilter(max_aspect=3.2)(_record(make_image(7, 1000, 320))).keep
    assert ImageFilter(min_side=200)(_record(make_image(6, 299, 500))).keep


def test_near_blank():
    decision = ImageFilter()(_record(make_image(8, 320, 320, blank=True)))
    assert decision.reason == "image_near_blank" and decision.score < 1.0


def test_header_raises_value_error_on_garbage_and_hamming():
    with pytest.raises(ValueError):
        image_header(b"garbage")
    assert hamming("ff00", "ff01") == 1 and hamming("0000", "ffff") == 16


def _rotated_jpeg(width, height, orientation=6, seed=11):
    image = Image.open(io.BytesIO(make_image(seed, width, height)))
    exif = image.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def test_size_is_measured_as_shown_after_the_exif_orientation():
    data = _rotated_jpeg(600, 400)  # stored 600x400, shown turned: 400x600
    assert image_header(data)[:2] == (400, 600)
    decision, info = ImageFilter(max_aspect=1.4)({"image_bytes": data}), ImageFilter().check(_record(data))[1]
    assert (info["width"], info["height"]) == (400, 600)
    assert decision.reason == "aspect_ratio_out_of_range" and "400x600" in decision.detail


def test_svg_is_a_format_not_a_corrupt_image():
    svg = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400">'
           + b'<rect width="400" height="400" fill="red"/>' * 40 + b"</svg>")
    decision = ImageFilter()(_record(svg))
    assert (decision.reason, decision.detail) == ("image_format_not_allowed", "SVG")
    assert ImageFilter()(_record(b"<!doctype html><html><body>not found</body></html>" * 40)).reason == "image_corrupt"


def test_blank_check_and_phash_see_the_image_upright():
    """A photo stored sideways with an EXIF orientation and the same photo stored upright look the same in a
    viewer: they hash alike, and are near duplicates."""
    from filters import dedup

    stored = Image.open(io.BytesIO(make_image(5, 600, 400)))
    upright = io.BytesIO()
    stored.transpose(Image.Transpose.ROTATE_270).save(upright, "JPEG", quality=92)
    turned = _rotated_jpeg(600, 400, seed=5)
    (a, info_a), (b, info_b) = (ImageFilter().check(_record(data)) for data in (upright.getvalue(), turned))
    assert a.keep and b.keep and (info_a["width"], info_a["height"]) == (info_b["width"], info_b["height"])
    assert hamming(info_a["phash"], info_b["phash"]) <= 4
    pairs = [{"pair_id": pid, "image_id": pid, "caption": caption, "phash": info["phash"], "text_quality": 0.5}
             for pid, caption, info in (("a", "a photo of a garden", info_a), ("b", "another text entirely", info_b))]
    kept, rejected = dedup.deduplicate(pairs)
    assert len(kept) == 1 and [r["reason"] for r in rejected] == ["near_duplicate_image"]


def test_a_camera_mpo_is_kept_as_a_still_jpeg():
    photo, preview = (Image.open(io.BytesIO(make_image(1, w, h))) for w, h in ((640, 480), (160, 120)))
    out = io.BytesIO()
    photo.save(out, "MPO", save_all=True, append_images=[preview])
    assert image_header(out.getvalue()) == (640, 480, "JPEG", 1)
    decision, info = ImageFilter().check(_record(out.getvalue()))
    assert decision.keep and info["format"] == "JPEG", decision
    assert ImageFilter(formats=("PNG",))(_record(out.getvalue())).reason == "image_format_not_allowed"


def test_a_format_the_opener_keeps_shut_is_not_allowed_rather_than_corrupt():
    eps = io.BytesIO()
    Image.open(io.BytesIO(make_image(3, 400, 400))).save(eps, "EPS")  # Pillow reads EPS; LAIT never opens it
    decision = ImageFilter()(_record(eps.getvalue()))
    assert (decision.reason, decision.detail) == ("image_format_not_allowed", "EPS")
