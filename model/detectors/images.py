"""Web image bytes to detector input: decode any odd-but-valid image, orient it, resize it.

Odd inputs handled: CMYK, 16-bit and 32-bit grayscale, palette with transparency, alpha (composited
on white), animated files (first frame), WebP/AVIF (Pillow codecs), EXIF-rotated photos (boxes are
reported in the oriented image), tiny images (upscaled to the network size). Large JPEGs are decoded
at a reduced DCT scale (``draft``) when the network wants fewer pixels anyway.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5-8 swap width and height.
_TRANSPOSED = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112


class ImageRejected(Exception):
    """An image that cannot become detector input; ``reason`` is the rejected-row reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DetectorInput:
    """One image ready for a detector: uint8 pixels at network size and its oriented original size."""

    pixels: torch.Tensor  # uint8 [3, h, w]
    width: int  # original width after EXIF orientation
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """Network-input pixels to original pixels, per axis."""
        return self.width / self.pixels.shape[2], self.height / self.pixels.shape[1]


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, keeping what a viewer would show."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 16-bit range to 8-bit
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def decode_for_detector(data: bytes | None, input_size: Callable[[int, int], tuple[int, int]]) -> DetectorInput:
    """Decode, orient and resize image bytes; raise ``ImageRejected`` with a reason when impossible."""
    if not data:
        raise ImageRejected("image_missing", "no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            raw_w, raw_h = image.size
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            width, height = (raw_h, raw_w) if orientation in _TRANSPOSED else (raw_w, raw_h)
            if width < 1 or height < 1:
                raise ImageRejected("image_empty", f"{width}x{height} pixels")
            target_w, target_h = input_size(width, height)
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                # Decode at the smallest DCT scale still at least the network size: far less work.
                want = (target_h, target_w) if orientation in _TRANSPOSED else (target_w, target_h)
                image.draft("RGB", want)
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image_too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = "not a recognised image format" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        raise ImageRejected("image_undecodable", detail) from None
    if image.size != (target_w, target_h):
        image = image.resize((target_w, target_h), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return DetectorInput(pixels=pixels, width=width, height=height)
