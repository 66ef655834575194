"""Odd but valid images decode to the right pixels and size; broken ones get a reason."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model.detectors.images import DetectorInput, ImageRejected, decode_for_detector


def _same_size(width, height):
    return width, height


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _scene(size=(40, 30)):
    """Left half red, right half blue: orientation and colour are checkable."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[:, : size[0] // 2] = (255, 0, 0)
    array[:, size[0] // 2:] = (0, 0, 255)
    return Image.fromarray(array, "RGB")


def _mean(pixels, region):
    return pixels[:, region[1]:region[3], region[0]:region[2]].float().mean(dim=(1, 2)).tolist()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "AVIF"])
def test_common_formats(fmt):
    image = decode_for_detector(_encode(_scene(), fmt, **({"quality": 95} if fmt != "PNG" else {})), _same_size)
    assert (image.width, image.height) == (40, 30) and image.pixels.shape == (3, 30, 40)
    red, blue = _mean(image.pixels, (2, 2, 16, 28)), _mean(image.pixels, (24, 2, 38, 28))
    assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60


def test_cmyk_jpeg_grayscale_and_16_bit():
    cmyk = decode_for_detector(_encode(_scene().convert("CMYK"), "JPEG", quality=95), _same_size)
    assert _mean(cmyk.pixels, (2, 2, 16, 28))[0] > 200
    gray = decode_for_detector(_encode(Image.new("L", (10, 8), 77), "PNG"), _same_size)
    assert gray.pixels.shape == (3, 8, 10) and gray.pixels.float().mean().item() == pytest.approx(77, abs=1)
    wide = Image.fromarray(np.full((8, 10), 50000, np.uint16))  # 16-bit grayscale PNG
    deep = decode_for_detector(_encode(wide, "PNG"), _same_size)
    assert deep.pixels.float().mean().item() == pytest.approx(50000 / 257, abs=1)  # scaled, not clipped to 255


def test_palette_with_transparency_composited_on_white():
    image = Image.new("P", (12, 12), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 6, 12))
    data = _encode(image, "PNG", transparency=0)  # palette entry 0 (black) transparent
    decoded = decode_for_detector(data, _same_size)
    assert _mean(decoded.pixels, (0, 0, 6, 12)) == pytest.approx([255, 0, 0])
    assert _mean(decoded.pixels, (6, 0, 12, 12)) == pytest.approx([255, 255, 255])  # white, not black


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((0, 255, 0), (255, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_for_detector(buffer.getvalue(), _same_size)
    assert _mean(decoded.pixels, (0, 0, 10, 10))[1] > 200


def test_exif_rotation_is_applied_and_reported_size_is_oriented():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    data = _encode(_scene((40, 30)), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_for_detector(data, _same_size)
    assert (decoded.width, decoded.height) == (30, 40) and decoded.pixels.shape == (3, 40, 30)
    # Rotated clockwise: the left (red) half of the stored image is now the top half.
    assert _mean(decoded.pixels, (2, 2, 28, 16))[0] > 200 and _mean(decoded.pixels, (2, 24, 28, 38))[2] > 200


def test_resize_to_network_size_and_tiny_images():
    def network(width, height):
        scale = 64 / min(width, height)
        return round(width * scale), round(height * scale)

    tiny = decode_for_detector(_encode(Image.new("RGB", (2, 1), (9, 9, 9)), "PNG"), network)
    assert (tiny.width, tiny.height) == (2, 1) and tiny.pixels.shape == (3, 64, 128)
    assert tiny.scale == pytest.approx((2 / 128, 1 / 64))
    big = decode_for_detector(_encode(_scene((400, 300)), "JPEG", quality=90), network)  # DCT draft path
    assert (big.width, big.height) == (400, 300) and big.pixels.shape == (3, 64, 85)


def test_broken_inputs_get_reasons():
    cases = {b"": "image_missing", None: "image_missing", b"GIF89a nonsense": "image_undecodable"}
    truncated = _encode(_scene((64, 64)), "PNG")[:120]
    cases[truncated] = "image_undecodable"
    # A PNG header claiming 30000 x 30000 pixels: refused from the header, before any allocation.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    cases[bomb] = "image_too_large"
    for data, reason in cases.items():
        with pytest.raises(ImageRejected) as info:
            decode_for_detector(data, _same_size)
        assert info.value.reason == reason, data[:20] if data else data


def test_device_decode_keeps_plain_jpegs_encoded_and_matches_pillow():
    """--decode device: plain upright JPEGs reach the device encoded; the rest decode in the worker as before."""
    import torch

    from model.detectors.images import decode_on_device, prepare_for_device_decode

    to_net = lambda w, h: (w // 2, h // 2)  # noqa: E731  (a downscale, so the resize is exercised)
    photo = _encode(_scene((120, 90)), "JPEG", quality=95)
    plain = prepare_for_device_decode(photo, to_net)
    assert plain.pixels is None and plain.target == (60, 45) and (plain.width, plain.height) == (120, 90)
    exif = Image.Exif()
    exif[0x0112] = 6
    for other in (_encode(_scene(), "PNG"), _encode(_scene().convert("CMYK"), "JPEG"), _encode(_scene(), "JPEG", exif=exif.tobytes())):
        ready = prepare_for_device_decode(other, to_net)
        assert ready.pixels is not None and ready.encoded is None  # decoded in the worker, oriented
    with pytest.raises(ImageRejected) as rejected:
        prepare_for_device_decode(b"<html>", to_net)
    assert rejected.value.reason == "image_undecodable"

    with pytest.raises(ImageRejected):  # a truncated file is caught by the worker's header check already
        prepare_for_device_decode(photo[: len(photo) // 3], to_net)
    # Bytes that got past the header check but that no decoder can read: rejected, not lost, not a crash.
    cut = DetectorInput(pixels=None, width=120, height=90, encoded=torch.frombuffer(bytearray(b"\xff\xd8junk"), dtype=torch.uint8),
                        target=(60, 45))
    errors = decode_on_device([plain, cut], torch.device("cpu"))  # torchvision's decoder, on the CPU here
    assert errors[0] is None and plain.pixels.shape == (3, 45, 60) and plain.pixels.dtype == torch.uint8
    reference = decode_for_detector(photo, to_net).pixels
    assert (plain.pixels.float() - reference.float()).abs().mean() < 4  # two decoders, two bilinear resizes
    assert errors[1] is not None and errors[1].reason == "image_undecodable" and cut.pixels is None
