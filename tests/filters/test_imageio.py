"""The safe image opener: a reason for every failure, the bomb guard, orientation, draft, modes, frames."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from filters import imageio
from filters.image import ImageFilter
from tests.crawler.mocksite import png_bomb
from tests.features.scenes import encode as _encode
from tests.hardening.hostile_site import with_exif_garbage


def _corners(size=(6, 4)):
    """A small RGB image whose four corners differ: any flip or turn changes it."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[0, 0], array[0, -1], array[-1, 0], array[-1, -1] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
    return Image.fromarray(array, "RGB")


def _error(fn, *args, **kwargs) -> imageio.ImageError:
    with pytest.raises(imageio.ImageError) as info:
        fn(*args, **kwargs)
    assert info.value.reason in imageio.REASONS and isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize("data, reason", [
    (b"", "missing_bytes"),
    (None, "missing_bytes"),
    (b"<html>a page served as an image</html>" * 10, "not_an_image"),
    (png_bomb(30000, 30000), "decompression_bomb"),  # past Pillow's hard limit
    (png_bomb(10000, 10000), "decompression_bomb"),  # past the default limit only
])
def test_open_reasons(data, reason):
    assert _error(imageio.open_image, data).reason == reason


def test_only_web_formats_are_opened():
    """EPS is a format Pillow knows, and loading it runs Ghostscript where one is installed: web bytes never
    reach that plugin (nor the other non-web parsers), they are not an image."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n%%EndComments\nshowpage\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # what an unrestricted open would do
    assert _error(imageio.open_image, eps).reason == "not_an_image"
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        assert imageio.open_image(_encode(Image.new("RGB", (40, 30), (200, 10, 10)), fmt)).format == fmt


def test_truncated_pixels_fail_at_decode_not_at_open():
    data = _encode(_corners((400, 300)), "JPEG", quality=90)
    image = imageio.open_image(data[: len(data) // 3])
    assert image.size == (400, 300)  # the header is intact
    assert _error(imageio.decode, image).reason == "undecodable"


def test_bomb_guard_uses_the_callers_limit_and_silences_pillows_warning():
    small = _encode(Image.new("RGB", (100, 100), (9, 9, 9)), "PNG")
    assert _error(imageio.open_image, small, max_pixels=9999).detail == "100x100 exceeds 9999 pixels"
    assert imageio.open_image(small, max_pixels=10000).size == (100, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test here
        assert imageio.open_image(png_bomb(10000, 10000), max_pixels=imageio.HARD_MAX_PIXELS).size == (10000, 10000)
        assert _error(imageio.open_image, png_bomb(30000, 30000), max_pixels=None).reason == "decompression_bomb"


_STORE = {  # orientation -> how a camera stored the upright image (the inverse of what the viewer applies)
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(_STORE))
def test_every_exif_orientation_comes_out_upright(orientation):
    upright = _corners()
    stored = upright.transpose(_STORE[orientation]) if _STORE[orientation] is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = imageio.open_image(_encode(stored, "PNG", exif=exif.tobytes()))
    assert imageio.exif_orientation(image) == orientation
    assert imageio.oriented_size(image) == upright.size
    assert np.array_equal(np.asarray(imageio.decode(image, orient=True)), np.asarray(upright))


def test_orientation_is_ignored_unless_asked_and_broken_exif_means_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = _corners()
    assert imageio.load_image(_encode(stored, "PNG", exif=exif.tobytes())).size == stored.size
    garbage = with_exif_garbage(_encode(_corners((40, 30)), "JPEG", quality=95))
    image = imageio.open_image(garbage)
    assert imageio.exif_orientation(image) == 1 and imageio.oriented_size(image) == (40, 30)
    assert imageio.decode(image, orient=True).size == (40, 30)


def test_draft_decodes_jpeg_at_reduced_scale_in_the_shown_orientation():
    data = _encode(_corners((800, 600)), "JPEG", quality=90)
    assert imageio.load_image(data).size == (800, 600)
    assert imageio.load_image(data, draft_size=(100, 100)).size == (200, 150)  # scale 1/4: the largest <= 1/6
    grey = imageio.decode(imageio.open_image(data), draft_size=(100, 75), draft_mode="L", rgb=False)
    assert (grey.mode, grey.size) == ("L", (100, 75))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown 600 wide, 800 high: the wanted size is swapped before drafting
    turned = imageio.load_image(_encode(_corners((800, 600)), "JPEG", quality=90, exif=exif.tobytes()),
                                draft_size=(300, 100), orient=True)
    assert turned.size == (300, 400)  # draft (100, 300) on the stored pixels: scale 1/2
    assert imageio.load_image(_encode(_corners((800, 600)), "PNG"), draft_size=(100, 100)).size == (800, 600)


def _wide_grey(mode, value):
    image = Image.fromarray(np.full((4, 5), value, {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert image.mode == mode
    return image


@pytest.mark.parametrize("image, expected", [
    (Image.new("RGBA", (5, 4), (255, 0, 0, 0)), (255, 255, 255)),  # fully transparent: white, not red
    (Image.new("RGBA", (5, 4), (0, 0, 0, 128)), (127, 127, 127)),  # half-transparent black over white
    (Image.new("LA", (5, 4), (0, 0)), (255, 255, 255)),
    (Image.new("CMYK", (5, 4), (0, 255, 255, 0)), (255, 0, 0)),
    (Image.new("L", (5, 4), 77), (77, 77, 77)),
    (Image.new("1", (5, 4), 1), (255, 255, 255)),
    (_wide_grey("I;16", 50000), (195, 195, 195)),  # 16-bit scaled by 1/257, not clipped at 255
    (_wide_grey("I", 65535), (255, 255, 255)),
    (_wide_grey("I", 100), (100, 100, 100)),  # 32-bit holding 8-bit values stays as it is
    (_wide_grey("F", 0.5), (127, 127, 127)),  # float in 0..1
])
def test_modes_become_rgb_as_a_viewer_shows_them(image, expected):
    rgb = np.asarray(imageio.to_rgb(image))
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - expected).max() <= 1


def test_palette_transparency_and_16_bit_png_through_bytes():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 2, 4))
    rgb = np.asarray(imageio.load_image(_encode(image, "PNG", transparency=0)))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 3].tolist() == [255, 255, 255]
    deep = imageio.load_image(_encode(_wide_grey("I;16", 25700), "PNG"))
    assert np.asarray(deep)[0, 0].tolist() == [100, 100, 100]


def test_animation_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    image = imageio.open_image(data)
    assert image.n_frames == 2
    image.seek(1)  # a caller that looked at later frames still gets the first
    assert np.asarray(imageio.decode(image))[0, 0].tolist() == [255, 0, 0]


def test_filter_stage_judges_a_16_bit_photo_by_its_pixels():
    gradient = np.tile(np.linspace(20000, 60000, 320), (320, 1)).astype(np.uint16)  # a grey ramp, all above 255
    data = _encode(Image.fromarray(gradient), "PNG")
    decision = ImageFilter(min_bytes=0)({"image_bytes": data})
    assert decision.keep, decision  # clipped to 255 it would be one white field: image_near_blank


def test_16_bit_scaling_is_exact_in_integers():
    values = np.array([[0, 256, 257, 514, 50000, 65535]], np.uint16)
    expected = np.clip(values / 257.0, 0, 255).astype(np.uint8)  # the float formula it replaces
    assert np.asarray(imageio.to_rgb(Image.fromarray(values)))[..., 0].tolist() == expected.tolist()
    # 32-bit values beyond 16 bits are scaled by int32's range (negatives are 0), not clipped to white
    wide = np.array([[-5, 100, 2**30, 2**31 - 1]], np.int32)
    assert np.asarray(imageio.to_rgb(Image.fromarray(wide)))[..., 0].tolist() == [[0, 0, 128, 255]]


def test_big_16_bit_image_is_shrunk_before_it_is_converted(monkeypatch):
    # A 16-bit PNG has no draft mode: it was converted at full size (9400x9400: a 1.6 GB float copy).
    ramp = np.tile(np.linspace(1000, 60000, 2000), (1600, 1)).astype(np.uint16)
    data = _encode(Image.fromarray(ramp), "PNG")
    sizes = []
    real = imageio.to_rgb
    monkeypatch.setattr(imageio, "to_rgb", lambda image: sizes.append(image.size) or real(image))
    small = imageio.load_image(data, draft_size=(64, 64))
    assert sizes == [(80, 64)] and small.size == (80, 64)  # shrunk by 25 (a whole factor), still >= the draft
    grey = np.asarray(small)[..., 0].astype(int)
    assert abs(grey[:, 0].mean() - 1000 / 257) < 3 and abs(grey[:, -1].mean() - 60000 / 257) < 3
    sizes.clear()
    assert imageio.load_image(data).size == (2000, 1600) and sizes == [(2000, 1600)]  # no draft: full size


def _mpo(size=(800, 600)):
    """A camera's multi-picture JPEG: the photo, then a small preview (Pillow names it MPO, with 2 frames)."""
    return _encode(_corners(size), "MPO", save_all=True, append_images=[_corners((160, 120))])


def test_an_mpo_is_a_still_jpeg_and_drafts_like_one():
    image = imageio.open_image(_mpo())
    assert (image.format, image.n_frames) == ("MPO", 2)  # what Pillow says
    assert imageio.format_name(image) == "JPEG" and imageio.animation_frames(image) == 1
    assert imageio.decode(image, draft_size=(100, 100)).size == (200, 150)  # scale 1/4, as for a JPEG
    gif = _encode(Image.new("RGB", (8, 8)), "GIF", save_all=True, append_images=[Image.new("RGB", (8, 8), "red")])
    assert imageio.animation_frames(imageio.open_image(gif)) == 2


def test_sniff_names_the_formats_the_opener_keeps_shut():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n%%EndComments\nshowpage\n"
    assert imageio.sniff_format(eps) == "EPS"
    assert imageio.sniff_format(_encode(_corners(), "PCX")) == "PCX"
    assert imageio.sniff_format(b"<html>a page served as an image</html>") is None
    assert imageio.sniff_format(_encode(_corners(), "PNG")) is None  # a format it opens is not "kept shut"
    assert imageio.sniff_format(b"8BPS\x00\x01" + bytes(20)) == "PSD"
    assert imageio.sniff_format(b"\x01\x00\x00\x00" + bytes(60)) is None  # corrupt bytes, not a WMF
    assert imageio.sniff_format(b"\x00\x00\x00\x18ftypheic" + bytes(20)) == "HEIF"
