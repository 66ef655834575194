"""Image validation at crawl time: decode to prove the bytes are an image, and the cheap early rejects.

The size and aspect checks read only the image header, so an image the filter stage would drop is
rejected before its pixels are decoded or its bytes stored. The decode itself runs at reduced
scale where the format allows it (JPEG ``draft``): it still proves every block decodes.
"""
from __future__ import annotations

import dataclasses

from filters import imageio

#: Defaults equal to the filter stage's: both sides at least 300 px, long side at most 3x the short.
DEFAULT_MIN_SIDE = 300
DEFAULT_MAX_ASPECT = 3.0
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
#: Pillow's own decompression-bomb threshold; larger images are rejected from their header.
DEFAULT_MAX_PIXELS = imageio.DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    """The outcome of validating one image: its facts when kept, a snake_case reason when not."""

    ok: bool
    reason: str | None = None
    detail: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None


def _reject(reason: str, detail: str, **facts) -> ImageCheck:
    return ImageCheck(False, reason, detail, **facts)


def validate_image(
    data: bytes,
    min_side: int = DEFAULT_MIN_SIDE,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    formats: tuple[str, ...] | None = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageCheck:
    """Check one image's bytes: format, size after EXIF orientation, aspect ratio, then a full decode."""
    if not data:
        return _reject("empty_image", "no bytes")
    try:
        image = imageio.open_image(data, max_pixels)
    except imageio.ImageError as exc:
        # Bytes of a format the opener keeps shut (an SVG drawing, a PSD) are a format, not a broken image: said as
        # the filter stage says it (its image_format_not_allowed), when their signature tells.
        other = imageio.sniff_format(data) if exc.reason == "not_an_image" else None
        if other:
            detail = f"{other} not in {','.join(formats)}" if formats else f"{other} is not a format LAIT opens"
            return _reject("format_not_allowed", detail, format=other)
        return _reject(_reason(exc), exc.detail)
    with image:
        fmt = imageio.format_name(image)  # a camera's multi-picture JPEG (Pillow's MPO) is a JPEG
        if formats and fmt not in formats:
            return _reject("format_not_allowed", f"{fmt} not in {','.join(formats)}", format=fmt)
        width, height = imageio.oriented_size(image)
        facts = {"width": width, "height": height, "format": fmt}
        if min(width, height) < min_side:
            return _reject("image_too_small", f"{width}x{height} < {min_side}", **facts)
        if max(width, height) > max_aspect * min(width, height):
            return _reject("aspect_ratio_out_of_range", f"{width}x{height} > {max_aspect}", **facts)
        try:
            # The smallest DCT scale (1/8), grey: every block is still entropy-decoded (the part a
            # corrupt file fails in) while the IDCT and colour work shrink. ~1.4 ms vs ~3.3 ms here.
            imageio.decode(image, draft_size=(image.width // 8, image.height // 8), draft_mode="L", rgb=False)
        except imageio.ImageError as exc:
            return _reject(_reason(exc), exc.detail, **facts)
    return ImageCheck(True, **facts)


def _reason(exc: imageio.ImageError) -> str:
    """The crawl's reject reason for a failed open or decode."""
    return "decompression_bomb" if exc.reason == "decompression_bomb" else "image_decode_error"
