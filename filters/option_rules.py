"""The rules of the options more than one stage takes, stated once: ``lait crawl`` (and its ``LAIT_*`` settings),
``lait filter`` (``python -m pipeline.filter``) and ``lait demo``, which passes them on to both and checks them
before its first step.

Each rule is (test, what the value must be); ``check`` raises the one-line ValueError every stage prints, naming
the option or setting as the caller labels it (``--min-side``, ``LAIT_MIN_SIDE``)::

    check("max_aspect", 0.5, "--max-aspect")
    # ValueError: --max-aspect must be 0 (off) or 1 or more (long side over short side), got 0.5

This module imports neither Beam nor Scrapy (nor Pillow until ``read_image_formats`` is called), so that the crawl, the
filter's options and the demo can all import it.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple


class Rule(NamedTuple):
    """What an option's value must be: ``test`` (true for a value the stages accept) and the words for it
    (``must_be``), as in ``{label} must be {must_be}, got {value}``."""

    test: Callable[[Any], bool]
    must_be: str

    def accepts(self, value) -> bool:
        """Whether ``value`` passes ``test``; None (no value read) and a value ``test`` cannot compare never do."""
        if value is None:
            return False
        try:
            return bool(self.test(value))
        except (TypeError, ValueError, ArithmeticError):
            return False

    def refusal(self, label: str, given) -> str:
        """The one-line message refusing ``given`` for the option or setting ``label``."""
        return f"{label} must be {self.must_be}, got {given!r}"


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: The rules of the options the stages share, by option name (``--min-side`` is ``min_side``).
RULES: dict[str, Rule] = {
    # A number of pixels: every stage's command line reads a whole number (a demo run passes it on as text).
    "min_side": Rule(lambda v: _whole(v) and v >= 0, "a whole number of pixels, 0 or more"),
    # 0 turns the check off (as no limit: inf is accepted too); below 1 no image passes; NaN compares false.
    # (A bool is no number here, though Python compares True as 1.)
    "max_aspect": Rule(lambda v: not isinstance(v, bool) and (v == 0 or v >= 1),
                       "0 (off) or 1 or more (long side over short side)"),
    # A share of the scored pairs; NaN compares false. (The demo reads 0 as "the model's own threshold".)
    "relevance_keep_rate": Rule(lambda v: not isinstance(v, bool) and 0 < v <= 1, "in (0, 1]"),
}

_AS_TESTED = object()


def check(rule: str | Rule, value, label: str, *, given: Any = _AS_TESTED) -> None:
    """Raise ValueError, one line naming ``label``, unless ``rule`` (a ``RULES`` name or a ``Rule``) accepts
    ``value``. ``given``: the value as the user wrote it, shown in the message when ``value`` is a reading of it
    (a Scrapy setting read as a number: None when it did not read as one)."""
    rule = RULES[rule] if isinstance(rule, str) else rule
    if not rule.accepts(value):
        raise ValueError(rule.refusal(label, value if given is _AS_TESTED else given))


def read_image_formats(text: str, label: str = "--formats") -> tuple[str, ...]:
    """The image formats a comma list names, in LAIT's names, each one the shared opener reads
    (``filters.imageio.WEB_FORMATS``): any case, a Pillow alias (MPO is JPEG) or a file extension (jpg, tif)
    naming its format. ValueError, one line naming ``label`` (``--formats``, ``LAIT_IMAGE_FORMATS``), for an
    empty list or a format LAIT does not open (either would reject every image)."""
    from PIL import Image

    from filters import imageio
    from filters.image import DEFAULT_FORMATS

    Image.init()
    extensions = Image.registered_extensions()
    names = [f.strip() for f in str(text).split(",") if f.strip()]
    if not names:
        raise ValueError(f"{label}: give at least one image format, e.g. {','.join(DEFAULT_FORMATS)}")
    formats = []
    for name in names:
        fmt = name.upper() if name.upper() in Image.OPEN else extensions.get("." + name.lower().lstrip("."))
        fmt = imageio.FORMAT_ALIASES.get(fmt, fmt)
        # A format Pillow reads but the opener keeps shut (TGA, PSD, EPS) would make every such image corrupt.
        if fmt not in imageio.WEB_FORMATS:
            raise ValueError(f"{label}: {name!r} is not an image format LAIT opens ({', '.join(imageio.WEB_FORMATS)})")
        formats.append(fmt)
    return tuple(dict.fromkeys(formats))
