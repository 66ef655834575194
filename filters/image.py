"""Image rules: size, aspect ratio, format, byte count, animation, near-blank, and a perceptual hash.

Defaults follow ImageBERT (both sides at least 300 px) and DataComp (aspect ratio at most 3).
The header is read first (cheap: size and format without decoding); only images that pass the
header rules are decoded, at reduced scale, for the blank check and the perceptual hash.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from filters import imageio
from filters.base import Decision, Filter

logger = logging.getLogger(__name__)

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Decoding bigger images than this is a decompression bomb, not a photograph (Pillow's own default).
MAX_PIXELS = imageio.DEFAULT_MAX_PIXELS


def image_header(data: bytes) -> tuple[int, int, str, int]:
    """(width, height, format, frames) from the header: the size as shown (after the EXIF orientation), the
    format as ``imageio.format_name`` gives it (a camera's MPO is a JPEG) and the frames of an animation (1 for
    a still image); raises ValueError on unreadable bytes."""
    with imageio.open_image(data, MAX_PIXELS) as img:  # imageio.ImageError is a ValueError
        width, height = imageio.oriented_size(img)
        try:
            frames = imageio.animation_frames(img)
        except Exception as exc:  # a broken later frame: Pillow raises many types
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc
        return width, height, imageio.format_name(img), frames


def decode_small(data: bytes, size: int = 64):
    """The image decoded at reduced scale (JPEG draft mode) as an RGB Pillow image, at most ``size`` px, turned
    upright by its EXIF orientation (as ``image_header`` measures it): a viewer's view of it."""
    # JPEG decodes at 1/2..1/8 scale: far cheaper than a full decode. The turn is of the small image.
    image = imageio.load_image(data, max_pixels=MAX_PIXELS, draft_size=(size, size), orient=True)
    image.thumbnail((size, size))
    return image


def perceptual_hash(image) -> str:
    """The 64-bit DCT perceptual hash (imagehash.phash) as 16 hex digits."""
    import imagehash

    return str(imagehash.phash(image))


def hamming(a: str, b: str) -> int:
    """Hamming distance between two hex hashes of equal length."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


class ImageFilter(Filter):
    """Header and content rules for one image (``image_bytes``; the crawler's ``format``, ``num_bytes``,
    ``width`` and ``height`` columns are not trusted: the size is measured, after the EXIF orientation).

    ``min_side`` (300): width and height must both reach it; ``max_aspect`` (3.0): longer side over
    shorter side; ``formats`` (JPEG, PNG, WEBP, GIF, BMP, TIFF; a camera's MPO is JPEG); ``min_bytes``
    (1000): tracking pixels and broken thumbnails are tiny; ``allow_animated`` (False); ``min_std`` (4.0): an image
    whose grey levels vary less than this (0-255) is blank. The decision's detail carries the
    perceptual hash of kept images; ``check`` also returns it with the size and format.
    """

    name = "image"
    reasons = ("missing_image", "image_too_few_bytes", "image_corrupt", "image_format_not_allowed",
               "image_animated", "image_too_small", "aspect_ratio_out_of_range", "image_near_blank")

    def __init__(self, min_side: int = 300, max_aspect: float = 3.0, formats: Iterable[str] = DEFAULT_FORMATS,
                 min_bytes: int = 1000, allow_animated: bool = False, min_std: float = 4.0):
        self.min_side = min_side
        self.max_aspect = max_aspect
        self.formats = tuple(imageio.FORMAT_ALIASES.get(f.upper(), f.upper()) for f in formats)  # MPO is JPEG
        self.min_bytes = min_bytes
        self.allow_animated = allow_animated
        self.min_std = min_std

    def __call__(self, record: Mapping[str, Any]) -> Decision:
        return self.check(record)[0]

    def check(self, record: Mapping[str, Any]) -> tuple[Decision, dict[str, Any]]:
        """The decision and what was read from the image: width, height, format, phash (as far as known)."""
        info: dict[str, Any] = {}
        decision = self._check(record, info)
        return decision, info

    def _check(self, record: Mapping[str, Any], info: dict[str, Any]) -> Decision:
        data = record.get("image_bytes")
        if not data:
            return Decision.reject("missing_image")
        if len(data) < self.min_bytes:
            return Decision.reject("image_too_few_bytes", len(data), f"{len(data)} bytes < {self.min_bytes}")
        try:
            width, height, fmt, frames = image_header(data)
        except ValueError as exc:
            if imageio.looks_like_svg(data):  # (the crawl's ``validate_image`` tells it the same way)
                return Decision.reject("image_format_not_allowed", detail="SVG")
            # Bytes in a format the opener keeps shut are a format, not a corrupt image, when their signature says so.
            other = imageio.sniff_format(data) if getattr(exc, "reason", None) == "not_an_image" else None
            if other is not None:
                return Decision.reject("image_format_not_allowed", detail=other)
            return Decision.reject("image_corrupt", detail=str(exc)[:200])
        info.update(width=width, height=height, format=fmt)
        if self.formats and fmt.upper() not in self.formats:
            return Decision.reject("image_format_not_allowed", detail=fmt or "unknown")
        if frames > 1 and not self.allow_animated:
            return Decision.reject("image_animated", frames, f"{frames} frames")
        if min(width, height) < self.min_side:
            return Decision.reject("image_too_small", min(width, height), f"{width}x{height}, min side {self.min_side}")
        aspect = max(width, height) / max(1, min(width, height))
        if self.max_aspect and aspect > self.max_aspect:
            return Decision.reject("aspect_ratio_out_of_range", round(aspect, 3), f"{width}x{height}")
        try:
            small = decode_small(data)
            std = _grey_std(small)
            phash = perceptual_hash(small)
        except Exception as exc:  # a valid header over truncated or corrupt pixel data
            return Decision.reject("image_corrupt", detail=f"{type(exc).__name__}: {exc}"[:200])
        if std < self.min_std:
            return Decision.reject("image_near_blank", round(std, 3), f"grey std {std:.1f} < {self.min_std}")
        info["phash"] = phash
        return Decision.accept(round(std, 3), f"{width}x{height} {fmt} phash={phash}")


def _grey_std(image) -> float:
    """Standard deviation of the grey levels (0-255) of a small image."""
    from PIL import ImageStat

    return float(ImageStat.Stat(image.convert("L")).stddev[0])
