"""Web image bytes to detector input: decode any odd-but-valid image, orient it, resize it.

Odd inputs handled: CMYK, 16-bit and 32-bit grayscale, palette with transparency, alpha (composited
on white), animated files (first frame), WebP/AVIF (Pillow codecs), EXIF-rotated photos (boxes are
reported in the oriented image), tiny images (upscaled to the network size). Large JPEGs are decoded
at a reduced DCT scale (``draft``) when the network wants fewer pixels anyway, and large images of other
formats are shrunk by a whole factor before their mode is converted (no full-size RGB copy of an RGBA PNG).
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
    """One image ready for a detector: uint8 pixels at network size and its oriented original size.

    An input prepared for decoding on the device (``prepare_for_device_decode``) holds the JPEG bytes
    in ``encoded`` and its network size in ``target`` until ``decode_on_device`` fills ``pixels``.
    """

    pixels: torch.Tensor | None  # uint8 [3, h, w]
    width: int  # original width after EXIF orientation
    height: int
    encoded: torch.Tensor | None = None  # uint8 [n] JPEG bytes
    target: tuple[int, int] | None = None  # (width, height) at network size

    @property
    def network_shape(self) -> tuple[int, int]:
        """(height, width) at network size: from the pixels, or the target size before a device decode."""
        if self.pixels is not None:
            height, width = self.pixels.shape[-2:]
        else:
            width, height = self.target
        return int(height), int(width)

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
            # Decode at the smallest DCT scale still at least the network size (other formats: shrunk by a whole
            # factor before they are converted), whatever the mode: far less work and memory.
            image = imageio.decode(image, draft_size=(target_w, target_h), orient=True)
    except imageio.ImageError as exc:
        raise ImageRejected(_REASONS.get(exc.reason, "image_undecodable"), exc.detail) from None
    if image.size != (target_w, target_h):
        image = image.resize((target_w, target_h), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return DetectorInput(pixels=pixels, width=width, height=height)


def network_size_of(data: bytes | None, input_size: Callable[[int, int], tuple[int, int]]) -> tuple[int, int] | None:
    """(width, height) that ``decode_for_detector`` would resize an image to, from its header alone; None when
    the header cannot be read (decoding will say why)."""
    try:
        with imageio.open_image(data, max_pixels=imageio.HARD_MAX_PIXELS) as image:
            width, height = imageio.oriented_size(image)
    except imageio.ImageError:
        return None
    return input_size(width, height) if width >= 1 and height >= 1 else None


# ----------------------------------------------------------------------------------------------
# JPEG decoding on the detector's device (nvJPEG through torchvision on CUDA)
# ----------------------------------------------------------------------------------------------


def prepare_for_device_decode(data: bytes | None, input_size: Callable[[int, int], tuple[int, int]]) -> DetectorInput:
    """Check an image's header in the worker; plain upright RGB/grayscale JPEGs stay encoded for the device.

    Everything else (other formats, CMYK, EXIF-rotated photos) is decoded here as ``decode_for_detector``
    does, and so are all the checks and reject reasons.
    """
    try:
        with imageio.open_image(data, max_pixels=imageio.HARD_MAX_PIXELS) as image:
            plain_jpeg = (image.format == "JPEG" and image.mode in ("RGB", "L")
                          and imageio.exif_orientation(image) == 1 and image.width >= 1 and image.height >= 1)
            width, height = image.size
    except imageio.ImageError:
        plain_jpeg = False
    if not plain_jpeg:
        return decode_for_detector(data, input_size)
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return DetectorInput(pixels=None, width=width, height=height, encoded=encoded, target=input_size(width, height))


def decode_on_device(inputs: list[DetectorInput], device: torch.device) -> list[ImageRejected | None]:
    """Decode the still-encoded inputs on ``device`` in one batched call and resize them to network size.

    Fills ``pixels`` in place; returns, per input, None or the ``ImageRejected`` of a JPEG that neither
    the device nor Pillow could decode (the device decoder refuses some files Pillow reads: those go
    through ``decode_for_detector``).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    pending = [i for i, item in enumerate(inputs) if item.pixels is None]
    errors: list[ImageRejected | None] = [None] * len(inputs)
    if not pending:
        return errors
    try:
        decoded = decode_jpeg([inputs[i].encoded for i in pending], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batched call: decode one at a time
        decoded = []
        for i in pending:
            try:
                decoded.append(decode_jpeg(inputs[i].encoded, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    for i, pixels in zip(pending, decoded):
        item = inputs[i]
        if pixels is None:
            try:
                fallback = decode_for_detector(item.encoded.numpy().tobytes(), lambda w, h: item.target)
                item.pixels = fallback.pixels
            except ImageRejected as exc:
                errors[i] = exc
            continue
        target_w, target_h = item.target
        if tuple(pixels.shape[1:]) != (target_h, target_w):
            resized = torch.nn.functional.interpolate(pixels[None].float(), size=(target_h, target_w), mode="bilinear",
                                                      antialias=True, align_corners=False)
            pixels = resized[0].round_().clamp_(0, 255).to(torch.uint8)
        item.pixels = pixels
    return errors
