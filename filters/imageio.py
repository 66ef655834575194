"""Open untrusted image bytes safely: the one place LAIT hands web bytes to Pillow.

Two steps, so that a caller can judge an image from its header before paying for its pixels:
``open_image`` reads the header only (size, format, mode, EXIF) behind a decompression-bomb guard;
``decode`` loads the first frame, at a reduced JPEG DCT scale when asked (``draft``), turned upright by
its EXIF orientation when asked, and converted to 8-bit RGB the way a viewer shows it (alpha composited
on white, 16/32-bit grayscale scaled to 0-255: ``to_rgb``). ``load_image`` does both. Every failure is one
``ImageError`` whose ``reason`` is a snake_case name from ``REASONS``; each stage maps these onto the
reject reasons of its own books.

The crawl (``crawler.images``), the filter stage (``filters.image``), the relevance features
(``filters.relevance.features``) and the detector input (``model.detectors.images``) all use it.
"""
from __future__ import annotations

import codecs
import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Pillow's own decompression-bomb warning limit: a bigger image is a bomb, not a photograph.
DEFAULT_MAX_PIXELS = 89_478_485
#: Pillow refuses outright to open images above twice its warning limit.
HARD_MAX_PIXELS = 2 * DEFAULT_MAX_PIXELS

#: The formats Pillow may open: raster formats that web pages and photo collections serve. Every other
#: plugin stays shut for untrusted bytes: EPS would hand them to Ghostscript (an interpreter) where one
#: is installed, and the rarer parsers (FITS, GRIB, PSD, ...) are attack surface with no pairs to gain.
#: Bytes in another format are ``not_an_image``. (JPEG includes MPO, the multi-picture JPEG of cameras.)
WEB_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "DIB", "ICO", "TIFF", "JPEG2000")
#: Pillow's names for formats LAIT counts as another: MPO, the multi-picture JPEG that cameras write, is a
#: JPEG whose first picture is what a viewer shows (the others are previews or a stereo pair's second view).
FORMAT_ALIASES = {"MPO": "JPEG"}

#: The reasons an ``ImageError`` carries.
REASONS = ("missing_bytes", "not_an_image", "decompression_bomb", "undecodable")

#: Most scans a JPEG may have. Each scan makes the decoder pass over every block of the image again, and
#: libjpeg sets no limit of its own (djpeg has ``-maxscan``; Pillow none): an 8192x8192 progressive JPEG of
#: 2,000 empty scans, 70 bytes each, is 333 KB and ~22 s of decoding. Real progressive JPEGs have about 10
#: (libjpeg's own script: 10 for colour, 6 for grey); a sequential one has one per component at most.
MAX_JPEG_SCANS = 100
#: Most markers ``jpeg_scans`` walks in a JPEG's first picture (restarts within a scan not counted): a real photo
#: has tens (hundreds with a chunked ICC profile). A flood of tiny segments after the pixels costs libjpeg nothing
#: (it stops at the last scan) but ~1.6 us each to walk here: 2.5 million in 10 MB would block the crawl for 4 s.
MAX_JPEG_MARKERS = 20_000
# A JPEG marker: 0xFF, after any 0xFF fill bytes, then a code that is neither 0x00 (a stuffed 0xFF data byte in
# entropy-coded data) nor RST0-7 (restarts within a scan; libjpeg skips them between segments too). One byte of
# look-ahead and no repetition: linear in the bytes, however many 0xFF they hold.
_JPEG_MARKER = re.compile(rb"\xff([^\x00\xd0-\xd7\xff])")
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
_JPEG_PARAMETERLESS = (0x01, 0xD8)  # TEM, SOI: no length follows

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the stored pixels upright (EXIF 2.32, tag 0x0112).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations 5-8 turn by 90 degrees: width and height swap.
_TRANSPOSED = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(ValueError):
    """Bytes that cannot become an image; ``reason`` is one of ``REASONS``, ``detail`` says more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def open_image(data: bytes | None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image's header (size, format, mode, EXIF), pixels not decoded; raises ``ImageError``.

    An image with more than ``max_pixels`` pixels is a ``decompression_bomb`` (None: only Pillow's
    hard limit, ``HARD_MAX_PIXELS``, applies). Pillow's own warning is silenced: this limit decides.
    So is a JPEG of more than ``MAX_JPEG_SCANS`` scans (``jpeg_scans``: its bytes are walked, not decoded).
    Only ``WEB_FORMATS`` are opened.
    """
    if not data:
        raise ImageError("missing_bytes", "no image bytes")
    if data[:2] == b"\xff\xd8":  # a JPEG (or MPO): walked before Pillow, whose own walk of the markers before the
        _check_jpeg_scans(data)  # first scan took 3.6 s over 10 MB of tiny segments
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=WEB_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError("decompression_bomb", str(exc)[:200]) from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "not a recognised image format") from None
    except Exception as exc:  # Pillow's plugins raise many types on hostile headers (OSError, SyntaxError, ...)
        raise ImageError("undecodable", _describe(exc)) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageError("decompression_bomb", f"{width}x{height} exceeds {max_pixels} pixels")
    return image


def _check_jpeg_scans(data: bytes) -> None:
    """``ImageError("decompression_bomb")`` for JPEG bytes of more than ``MAX_JPEG_SCANS`` scans or
    ``MAX_JPEG_MARKERS`` markers (``jpeg_scans``)."""
    scans = jpeg_scans(data)
    if scans is None or scans > MAX_JPEG_SCANS:
        detail = (f"JPEG of more than {MAX_JPEG_MARKERS} markers" if scans is None
                  else f"JPEG of {scans} scans exceeds {MAX_JPEG_SCANS} scans")
        raise ImageError("decompression_bomb", detail)


def jpeg_scans(data: bytes, max_markers: int = MAX_JPEG_MARKERS) -> int | None:
    """How many scans (SOS markers) the first picture of JPEG bytes has, from its markers and segment lengths;
    None when it has more than ``max_markers`` markers (restarts within a scan not counted).

    Nothing is decoded: segments are skipped by their length, and entropy-coded data (after each scan's header)
    up to the next marker that is neither a stuffed 0xFF nor a restart, as libjpeg reads them. Stray bytes
    where a marker should be are skipped to the next marker, as libjpeg does. Stops at EOI (an MPO's other
    pictures follow it) and at a truncated or broken segment: never raises on bad bytes.
    """
    scans, markers, pos, end = 0, 0, 2, len(data)  # after SOI
    while (marker := _JPEG_MARKER.search(data, pos)) is not None:
        code, pos = data[marker.start() + 1], marker.end()
        markers += 1
        if markers > max_markers:
            return None
        if code == _JPEG_EOI:
            break
        if code in _JPEG_PARAMETERLESS:
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        if pos + 2 > end or length < 2:
            break  # libjpeg fails here too
        scans += code == _JPEG_SOS
        pos += length
    return scans


def format_name(image: Image.Image) -> str:
    """The format of an opened image as LAIT names it (``FORMAT_ALIASES``: an MPO is a JPEG); '' if unknown."""
    fmt = image.format or ""
    return FORMAT_ALIASES.get(fmt, fmt)


def animation_frames(image: Image.Image) -> int:
    """How many frames the image animates through: 1 for a still image, an MPO's pictures included.

    GIF and WebP count their frames by reading on, so a broken later frame raises here (any exception type).
    """
    if image.format in FORMAT_ALIASES:
        return 1  # an MPO's other pictures are not frames that a viewer plays
    return getattr(image, "n_frames", 1)


#: Signatures specific enough to name a format the opener keeps shut (Pillow's own checks are looser: bytes
#: that begin 01 00 00 00 pass as WMF), as (format, offset, magic bytes).
SIGNATURES = (
    ("PSD", 0, b"8BPS"), ("EPS", 0, b"%!PS"), ("EPS", 0, b"\xc5\xd0\xd3\xc6"), ("ICNS", 0, b"icns"),
    ("DDS", 0, b"DDS "), ("QOI", 0, b"qoif"), ("SUN", 0, b"\x59\xa6\x6a\x95"), ("FITS", 0, b"SIMPLE  ="),
    ("BLP", 0, b"BLP1"), ("BLP", 0, b"BLP2"), ("WMF", 0, b"\xd7\xcd\xc6\x9a"),
    ("HEIF", 4, b"ftypheic"), ("HEIF", 4, b"ftypheix"), ("HEIF", 4, b"ftyphevc"), ("JXL", 0, b"\xff\x0a"),
    ("JXL", 0, b"\x00\x00\x00\x0cJXL \r\n\x87\n"),
)


#: What may stand before an SVG document's root element: an XML declaration (or other processing instruction), a
#: comment, a doctype (with its internal subset, as Illustrator writes one); each after optional whitespace.
_SVG_PROLOG = re.compile(rb"\s*(?:<\?.*?\?>|<!--.*?-->|<!doctype[^\[>]*(?:\[[^\]]*\]\s*)?>)", re.IGNORECASE | re.DOTALL)
#: An ``<svg>`` root element, with a namespace prefix or without (``<svg:svg>``).
_SVG_ROOT = re.compile(rb"\s*<(?:[a-z_][\w.-]*:)?svg[\s/>]", re.IGNORECASE)
#: How far into the bytes the SVG root element is looked for: its prolog is short (a bound on bytes made to be slow).
SVG_HEAD_BYTES = 4096


def looks_like_svg(data: bytes) -> bool:
    """Whether bytes are an SVG document: an ``<svg>`` root element after the XML prolog (a UTF-8 byte-order mark,
    declaration, comments, doctype). An HTML or XHTML page with an inline ``<svg>`` is not one; nor is gzipped
    SVG (``.svgz``), which stays undecodable bytes."""
    head = bytes(data[:SVG_HEAD_BYTES])
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    pos = 0
    while (prolog := _SVG_PROLOG.match(head, pos)) is not None:
        pos = prolog.end()
    return _SVG_ROOT.match(head, pos) is not None


def sniff_format(data: bytes) -> str | None:
    """The format that bytes the opener refused are in, by a specific signature (``SIGNATURES``, PCX's header, an
    SVG document's root element) and without parsing them: ``"PSD"`` for a Photoshop file, ``"SVG"`` for a
    drawing, None when none matches (corrupt bytes, an HTML page, and formats such as TGA that have no signature)."""
    head = bytes(data[:16])
    for fmt, offset, magic in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return fmt
    if looks_like_svg(data):
        return "SVG"
    # PCX: manufacturer 10, a known version, RLE encoding, and a bit depth that exists
    if len(head) >= 4 and head[0] == 0x0A and head[1] in (0, 2, 3, 4, 5) and head[2] == 1 and head[3] in (1, 2, 4, 8):
        return "PCX"
    return None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent, invalid or unreadable."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is not a broken image
        return 1
    return orientation if orientation in _UPRIGHT else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown, after its EXIF orientation."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _TRANSPOSED else (width, height)


def _is_wide(mode: str) -> bool:
    """16/32-bit integer and float grayscale: the modes Pillow's own conversion clips at 255."""
    return mode in ("I", "F") or mode.startswith("I;16")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB, as a viewer shows it: alpha on white, wide grayscale scaled to 0-255.

    Wide grayscale is scaled to 0-255, not clipped at 255: 16-bit (``I;16``) by 1/257; 32-bit integers
    (``I``) by the range their values fit: as they are up to 255, by 1/257 up to 65535 (16-bit data: Pillow
    has opened 16-bit PNGs in this mode), by int32's range above (the top 8 of 31 value bits); floats (``F``)
    as 0-1 up to 1, as they are up to 255, by the image's maximum above (a float has no range of its own).
    Integers are not stretched to the image's maximum: a level keeps its brightness whatever the other pixels
    hold, as in 16-bit images, and the whole-factor shrink of ``decode`` cannot change the scale.
    """
    mode = image.mode
    if _is_wide(mode):
        # Pillow's own conversion clips these at 255: a 16-bit photo would come out nearly white.
        # Integer modes are scaled in integers (v // 257, as floor(v / 257)): no float copy of a big image.
        values = np.asarray(image)
        if mode == "F":
            values = np.where(np.isnan(values), 0.0, values.astype(np.float64))  # NaN: no value, black
            peak = float(values.max(where=np.isfinite(values), initial=0.0))
            if peak <= 1.0:
                values = values * 255.0
            elif peak > 255.0:
                values = values * (255.0 / peak)
        elif mode.startswith("I;16"):
            values = values // 257
        else:
            peak = values.max(initial=0)
            if peak > 65535:
                values = values >> 23  # int32's 0..2^31-1 onto 0..255
            elif peak > 255:
                values = values // 257
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


#: Pixels per band that ``_shrink`` converts at a time: 4 Mpx, 16 MB as RGBA.
_SHRINK_BAND_PIXELS = 1 << 22


def _shrink(image: Image.Image, factor: int) -> Image.Image:
    """``to_rgb`` of the image, then each ``factor`` x ``factor`` block averaged (the last partial row and column of
    blocks dropped), converted band by band: no full-size copy is made, whatever the mode (alpha composited on
    white, a palette expanded, CMYK) needs. Pixel for pixel what converting whole and then ``reduce`` gives.

    Not for 16/32-bit grayscale: ``to_rgb`` scales a float image by its maximum, which one band does not know.
    """
    width, height = image.width // factor, image.height // factor
    rows = max(1, _SHRINK_BAND_PIXELS // (image.width * factor))  # output rows per band
    out = Image.new("RGB", (width, height))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = image.crop((0, top * factor, width * factor, bottom * factor))
        out.paste(to_rgb(band).reduce(factor), (0, top))
    return out


def decode(image: Image.Image, *, draft_size: tuple[int, int] | None = None, draft_mode: str = "RGB",
           orient: bool = False, rgb: bool = True) -> Image.Image:
    """Decode the first frame of an ``open_image`` result; raises ``ImageError("undecodable")``.

    ``draft_size`` (width, height, in shown orientation when ``orient``): JPEGs decode at the smallest
    DCT scale (1/2..1/8) still at least that big, in ``draft_mode`` ("L" skips the colour work); other
    images that need converting are shrunk by a whole factor to at least that size first (``_shrink``; with
    ``rgb`` False, only 16/32-bit grayscale is). RGB needs no conversion and is left at full size.
    ``orient``: turn the pixels upright by the EXIF orientation. ``rgb``: convert with ``to_rgb``.
    """
    try:
        if image.tell():
            image.seek(0)
        orientation = exif_orientation(image) if orient else 1
        if draft_size is not None:
            width, height = (max(1, side) for side in draft_size)
            if orientation in _TRANSPOSED:
                width, height = height, width  # draft works on the stored pixels
            if format_name(image) == "JPEG":  # an MPO's first picture is a JPEG too
                image.draft(draft_mode, (width, height))
        image.load()
        if draft_size is not None:
            # No draft mode for other formats: shrink by a whole factor, still at least the draft size, before any
            # conversion or turn (a 9400x9400 16-bit PNG is 0.2 MB of file and 177 MB of pixels; converted
            # whole, a 9400x9400 RGBA PNG of 0.4 MB took 2 GB, a float TIFF 2.8 GB).
            factor = min(image.width // width, image.height // height)
            if factor >= 2 and _is_wide(image.mode):
                image = image.resize((image.width // factor, image.height // factor), Image.Resampling.BOX)
            elif factor >= 2 and rgb and image.mode != "RGB":
                image = _shrink(image, factor)
        if orientation in _UPRIGHT:
            image = image.transpose(_UPRIGHT[orientation])
        return to_rgb(image) if rgb else image
    except Exception as exc:  # truncated or corrupt pixel data under a valid header
        raise ImageError("undecodable", _describe(exc)) from None


def load_image(data: bytes | None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft_size: tuple[int, int] | None = None, orient: bool = False) -> Image.Image:
    """``open_image`` then ``decode``: the first frame as 8-bit RGB; raises ``ImageError``."""
    with open_image(data, max_pixels) as image:
        return decode(image, draft_size=draft_size, orient=orient)
