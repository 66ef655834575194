"""Web image bytes to detector input: decode any odd-but-valid image, orient it, resize it.

Odd inputs handled: CMYK, 16-bit and 32-bit grayscale, palette with transparency, alpha (composited
on white), animated files (first frame), WebP/AVIF (Pillow codecs), EXIF-rotated photos (boxes are
reported in the oriented image), tiny images (upscaled to the network size). Large JPEGs are decoded
at a reduced DCT scale (``draft``) when the network wants fewer pixels anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from filters import imageio

# The detector's reject reasons for the safe opener's reasons.
_REASONS = {"missing_bytes": "image_missing", "decompression_bomb": "image_too_large"}


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


def decode_for_detector(data: bytes | None, input_size: Callable[[int, int], tuple[int, int]]) -> DetectorInput:
    """Decode, orient and resize image bytes; raise ``ImageRejected`` with a reason when impossible."""
    try:
        # Pillow's hard limit, not its warning limit: the crawl and filter stages apply the stricter one.
        with imageio.open_image(data, max_pixels=imageio.HARD_MAX_PIXELS) as image:
            width, height = imageio.oriented_size(image)
            if width < 1 or height < 1:
                raise ImageRejected("image_empty", f"{width}x{height} pixels")
            target_w, target_h = input_size(width, height)
            # Decode at the smallest DCT scale still at least the network size: far less work.
            draft = (target_w, target_h) if image.mode in ("RGB", "L") else None
            image = imageio.decode(image, draft_size=draft, orient=True)
    except imageio.ImageError as exc:
        raise ImageRejected(_REASONS.get(exc.reason, "image_undecodable"), exc.detail) from None
    if image.size != (target_w, target_h):
        image = image.resize((target_w, target_h), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return DetectorInput(pixels=pixels, width=width, height=height)
