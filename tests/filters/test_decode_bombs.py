"""Images cheap to send and dear to decode: a JPEG of many scans is a bomb from its bytes (counted, not decoded),
and an image in a mode that needs converting is shrunk before it is converted, not converted at full size."""
import io
import struct

import numpy as np
import pytest
from PIL import Image

from crawler.images import validate_image
from filters import imageio
from filters.image import ImageFilter
from filters.relevance.features import ImageDecodeError, decode_image
from model.detectors.images import ImageRejected, decode_for_detector


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def _scan_bomb(scans: int = 150) -> bytes:
    """A valid 64x64 progressive greyscale JPEG: one DC scan, then ``scans`` AC scans of one byte of data each, an
    end-of-band run over all 64 blocks (each scan, however small, is a pass of the decoder over the whole image)."""
    out = b"\xff\xd8" + _segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _segment(0xC2, struct.pack(">BHHB", 8, 64, 64, 1) + b"\x01\x11\x00")
    one_code = bytes([1] + [0] * 15)  # one Huffman code, '0'
    out += _segment(0xC4, b"\x00" + one_code + b"\x00")  # DC: '0' -> difference 0
    out += _segment(0xC4, b"\x10" + one_code + b"\x60")  # AC: '0' -> EOB6, a run of 64 + (6 extra bits) blocks
    out += _segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + b"\x00" * 8  # a '0' per block
    ac = b"\x01"  # '0', then 000000: a run of 64 blocks, then 1-padding
    out += (_segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + ac) * scans
    return out + b"\xff\xd9"


def _noise(size=(64, 64), mode="RGB", seed=0) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# ---- JPEG scans --------------------------------------------------------------------------------------------------


def test_the_scan_bomb_is_a_jpeg_that_pillow_decodes():
    """The test's bomb is a valid image (what is rejected is its scan count, not broken bytes)."""
    with Image.open(io.BytesIO(_scan_bomb())) as image:
        image.load()
        assert (image.format, image.mode, image.size) == ("JPEG", "L", (64, 64))
    assert imageio.jpeg_scans(_scan_bomb(scans=150)) == 151


def test_too_many_scans_is_a_bomb_from_the_bytes_in_every_stage():
    bomb = _scan_bomb(scans=150)
    with pytest.raises(imageio.ImageError) as opened:
        imageio.open_image(bomb)
    assert opened.value.reason == "decompression_bomb" and "151 scans" in opened.value.detail
    crawl = validate_image(bomb, min_side=32)
    assert (crawl.ok, crawl.reason) == (False, "decompression_bomb") and "151 scans" in crawl.detail
    decision = ImageFilter(min_side=32, min_bytes=0)({"image_bytes": bomb})
    assert decision.reason == "image_corrupt" and decision.detail.startswith("decompression_bomb: JPEG of 151 scans")
    with pytest.raises(ImageRejected) as detector:
        decode_for_detector(bomb, lambda w, h: (w, h))
    assert detector.value.reason == "image_too_large"
    with pytest.raises(ImageDecodeError):
        decode_image(bomb, 32)
    assert imageio.open_image(_scan_bomb(scans=imageio.MAX_JPEG_SCANS - 1)).size == (64, 64)  # at the limit: kept


@pytest.mark.parametrize("mode, scans", [("RGB", 10), ("L", 6)])
def test_a_normal_progressive_jpeg_is_kept(mode, scans):
    data = _encode(_noise(mode=mode), "JPEG", quality=90, progressive=True)
    assert imageio.jpeg_scans(data) == scans  # libjpeg's own progression script
    assert imageio.open_image(data).size == (64, 64)
    assert validate_image(data, min_side=32).ok
    assert ImageFilter(min_side=32, min_bytes=0)({"image_bytes": data}).keep


def test_the_walk_skips_stuffed_bytes_restarts_fill_and_segment_payloads():
    sos = _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    head = b"\xff\xd8" + _segment(0xC0, struct.pack(">BHHB", 8, 8, 8, 1) + b"\x01\x11\x00")
    data = (head + _segment(0xFE, sos * 3)  # scan headers inside a comment are its text, not scans
            + sos + b"\x12\xff\x00\xda\x34\xff\xd0\xda\xff\xd7\x56"  # stuffed 0xFF, restarts: still one scan
            + b"\xff\xff\xff" + sos + b"\x00"  # fill bytes before a marker
            + b"junk" + sos + b"\xff\xff\x00\xda"  # stray bytes where a marker should be (libjpeg skips them)
            + b"\xff\xd9" + sos * 5)  # after EOI: an MPO's next picture
    assert imageio.jpeg_scans(data) == 3
    real = _encode(_noise((256, 256)), "JPEG", quality=95, restart_marker_blocks=1)
    assert real.count(b"\xff\xd0") > 10 and real.count(b"\xff\x00") > 10
    assert imageio.jpeg_scans(real) == 1


def test_the_walk_never_raises_on_cut_or_broken_bytes():
    data = _encode(_noise(), "JPEG", quality=90, progressive=True)
    for cut in range(len(data)):
        assert 0 <= imageio.jpeg_scans(data[:cut]) <= 10
    for broken in (b"\xff\xd8\xff\xda", b"\xff\xd8\xff\xda\x00", b"\xff\xd8\xff\xda\x00\x00", b"\xff\xd8\xff\xc4\x00\x01",
                   b"\xff\xd8" + b"\xff" * 100, b"\xff\xd8" + b"\xff\x00" * 100):
        assert imageio.jpeg_scans(broken) == 0
    assert imageio.jpeg_scans(memoryview(data)) == imageio.jpeg_scans(bytearray(data)) == 10


def test_a_flood_of_markers_is_a_bomb_without_walking_it_all():
    """Tiny segments after the last scan cost libjpeg nothing but would cost the walk ~1.6 us each."""
    data = _encode(_noise(), "JPEG", quality=90)
    flood = data[:-2] + _segment(0xFE, b"") * 30 + b"\xff\x01" * 30 + b"\xff\xd9"
    assert imageio.jpeg_scans(flood) == 1
    assert imageio.jpeg_scans(flood, max_markers=40) is None
    huge = data[:-2] + _segment(0xFE, b"") * (imageio.MAX_JPEG_MARKERS + 1) + b"\xff\xd9"
    with pytest.raises(imageio.ImageError) as opened:
        imageio.open_image(huge)
    assert opened.value.reason == "decompression_bomb" and "markers" in opened.value.detail


def test_a_flood_of_markers_before_the_pixels_is_refused_before_pillow_walks_it(monkeypatch):
    """Pillow walks a JPEG's markers before its first scan in Python: 10 MB of tiny segments there took 3.6 s."""
    data = _encode(_noise(), "JPEG", quality=90)
    flood = data[:2] + _segment(0xFE, b"") * (imageio.MAX_JPEG_MARKERS + 1) + data[2:]
    opened = []
    monkeypatch.setattr(imageio.Image, "open", lambda *args, **kwargs: opened.append(args))
    with pytest.raises(imageio.ImageError) as refused:
        imageio.open_image(flood)
    assert refused.value.reason == "decompression_bomb" and "markers" in refused.value.detail and opened == []


# ---- shrinking before converting ---------------------------------------------------------------------------------


def _rgba(size=(400, 300)) -> Image.Image:
    image = _noise(size, "RGBA", seed=1)
    alpha = np.random.default_rng(2).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    image.putalpha(Image.fromarray(alpha, "L"))
    return image


def _odd_modes() -> dict[str, Image.Image]:
    palette = _noise((400, 300), seed=3).quantize(32)
    palette.info["transparency"] = 7
    return {"RGBA": _rgba(), "LA": _rgba().convert("LA"), "P+transparency": palette, "CMYK": _noise((400, 300), "CMYK"),
            "L": _noise((400, 300), "L"), "1": _noise((400, 300), "1")}


@pytest.fixture
def to_rgb_sizes(monkeypatch):
    """The sizes (pixels) of the images ``to_rgb`` converts, with bands of at most 10,000 pixels."""
    sizes: list[int] = []
    original = imageio.to_rgb

    def spy(image):
        sizes.append(image.width * image.height)
        return original(image)

    monkeypatch.setattr(imageio, "to_rgb", spy)
    # a small band, so that a 400x300 image is converted in several (the code before this had no bands: raising=False)
    monkeypatch.setattr(imageio, "_SHRINK_BAND_PIXELS", 10_000, raising=False)
    return sizes


@pytest.mark.parametrize("mode", sorted(_odd_modes()))
def test_odd_modes_are_shrunk_before_they_are_converted(mode, to_rgb_sizes):
    image = _odd_modes()[mode]
    reference = imageio.to_rgb(image).reduce(10)  # converted whole, then averaged over 10x10 blocks
    to_rgb_sizes.clear()
    data = _encode(image, "TIFF" if mode == "CMYK" else "PNG")
    shrunk = imageio.load_image(data, draft_size=(40, 30))
    assert shrunk.mode == "RGB" and shrunk.size == (40, 30)
    assert to_rgb_sizes and max(to_rgb_sizes) <= 10_000  # never the whole 120,000 pixels at once
    assert np.array_equal(np.asarray(shrunk), np.asarray(reference))  # pixel for pixel what converting first gives


def test_images_near_the_target_size_decode_as_before(to_rgb_sizes):
    for mode, image in _odd_modes().items():
        data = _encode(image, "TIFF" if mode == "CMYK" else "PNG")
        expected = np.asarray(imageio.to_rgb(image))
        for draft in (None, (400, 300), (201, 151), (1000, 1000)):  # no whole factor of 2 or more fits
            assert np.array_equal(np.asarray(imageio.load_image(data, draft_size=draft)), expected), (mode, draft)
    rgb = _noise((400, 300))  # nothing to convert: left at full size for the caller's own resize
    assert imageio.load_image(_encode(rgb, "PNG"), draft_size=(40, 30)).size == (400, 300)


def test_the_detector_shrinks_alpha_and_float_images_before_converting(to_rgb_sizes):
    rgba = _encode(_rgba(), "PNG")
    decoded = decode_for_detector(rgba, lambda w, h: (40, 30))
    assert tuple(decoded.pixels.shape) == (3, 30, 40) and (decoded.width, decoded.height) == (400, 300)
    assert max(to_rgb_sizes) <= 10_000
    to_rgb_sizes.clear()
    values = np.linspace(0.0, 1.0, 400 * 300, dtype=np.float32).reshape(300, 400)
    floats = _encode(Image.fromarray(values, "F"), "TIFF")
    decoded = decode_for_detector(floats, lambda w, h: (40, 30))
    assert tuple(decoded.pixels.shape) == (3, 30, 40)
    assert to_rgb_sizes == [40 * 30]  # shrunk by 10 as a float image, then scaled to 0-255
    assert decode_for_detector(floats, lambda w, h: (400, 300)).pixels[0, -1, -1] == 255  # 1.0 is white
