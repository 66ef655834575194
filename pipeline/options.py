"""Options of LAIT's pipelines: the filter stage's arguments, and an explicit local runner.

Importing this module does not import Beam, so ``lait --help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging

from filters.rules import RuleConfig
from pipeline.runners import LOCAL_RUNNERS, make_runner  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The filter stage's own options (shared by ``lait filter`` and ``python -m pipeline.filter``)."""
    d = RuleConfig()
    parser.add_argument("--input", required=True, help="crawl folder (with candidates/) or candidates dataset")
    parser.add_argument("--output", required=True, help="output folder: pairs/, rejected/, stats.json")
    parser.add_argument("--overwrite", action="store_true", help="replace pairs/, rejected/ and stats.json if present")
    g = parser.add_argument_group("text")
    g.add_argument("--min-words", type=int, default=d.min_words, help=f"fewest words in a caption (default {d.min_words})")
    g.add_argument("--max-words", type=int, default=d.max_words, help=f"most words in a caption (default {d.max_words})")
    g.add_argument("--max-chars", type=int, default=d.max_chars,
                   help=f"longest caption in characters, checked before any other text rule; 0 turns it off "
                        f"(default {d.max_chars})")
    g.add_argument("--vocab", default=d.vocabulary,
                   help="vocabulary for the OOV rate: 'auto' (the detected language's common words), a "
                        "language code or a word-per-line file; 'none' turns the check off (default auto)")
    g.add_argument("--max-oov-rate", type=float, default=d.max_oov_rate,
                   help=f"highest share of out-of-vocabulary words (default {d.max_oov_rate})")
    g = parser.add_argument_group("language")
    g.add_argument("--langs", default=",".join(d.langs), help="target languages, comma-separated (default en)")
    g.add_argument("--lang-threshold", type=float, default=d.lang_threshold,
                   help=f"lowest combined probability of the target language (default {d.lang_threshold})")
    g.add_argument("--lang-backend", choices=("fasttext", "langdetect"), default=d.lang_backend,
                   help="primary language identifier (default fasttext, the lid.176 compact model)")
    g.add_argument("--no-word-model", action="store_true", help="do not combine with the word-frequency identifier")
    g.add_argument("--no-page-lang", action="store_true", help="ignore the page's declared language and text")
    g = parser.add_argument_group("image")
    g.add_argument("--min-side", type=int, default=d.min_side, help=f"smallest width and height in px (default {d.min_side})")
    g.add_argument("--max-aspect", type=float, default=d.max_aspect,
                   help=f"largest long-side/short-side ratio (default {d.max_aspect})")
    g.add_argument("--formats", default=",".join(d.formats), help="allowed Pillow formats (default %(default)s)")
    g.add_argument("--min-bytes", type=int, default=d.min_bytes, help=f"smallest image file (default {d.min_bytes})")
    g.add_argument("--allow-animated", action="store_true", help="keep animated GIF/PNG/WEBP images")
    g.add_argument("--min-std", type=float, default=d.min_std,
                   help=f"grey-level standard deviation below which an image is blank (default {d.min_std})")
    g = parser.add_argument_group("dedup and aggregation")
    g.add_argument("--max-images-per-caption", type=int, default=10,
                   help="drop a caption found on more distinct images than this; 0 keeps all (default 10)")
    g.add_argument("--phash-distance", type=int, default=4,
                   help="perceptual-hash bits within which images are near duplicates; -1 turns it off (default 4)")
    g = parser.add_argument_group("learned relevance (pipeline.relevance)")
    g.add_argument("--relevance", default=None, help="relevance model spec; scoring is off without it")
    g.add_argument("--relevance-threshold", type=float, default=None, help="drop pairs scoring below this")
    g.add_argument("--relevance-keep-rate", type=float, default=None, help="keep this share of the best-scored pairs")
    g.add_argument("--relevance-batch-size", type=int, default=64, help="pairs per model batch (default 64)")
    g.add_argument("--relevance-device", default=None, help="torch device for the relevance model")
    parser.add_argument("--codec", default="zstd", help="Parquet compression (default zstd)")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _formats(text: str) -> tuple[str, ...]:
    """Pillow format names from a comma list; file extensions (jpg, tif) name their format."""
    from PIL import Image

    Image.init()
    extensions = Image.registered_extensions()
    formats = []
    for name in (f.strip() for f in text.split(",") if f.strip()):
        fmt = name.upper() if name.upper() in Image.OPEN else extensions.get("." + name.lower().lstrip("."))
        _check(fmt is not None, f"--formats: {name!r} is not an image format Pillow reads "
                                f"(e.g. {', '.join(RuleConfig().formats)})")
        formats.append(fmt)
    return tuple(dict.fromkeys(formats))


def _langs(text: str, backend: str) -> tuple[str, ...]:
    """Language codes from a comma list, each one the language identifier can name."""
    from filters.language import supported_languages

    langs = tuple(dict.fromkeys(l.strip().lower() for l in text.split(",") if l.strip()))
    _check(bool(langs), "--langs: give at least one language code, e.g. en")
    known = supported_languages(backend)
    unknown = [l for l in langs if l not in known]
    _check(not unknown, f"--langs: {', '.join(map(repr, unknown))} not a language code the {backend} identifier "
                        f"knows (ISO 639 codes such as en, de, fr, zh)")
    return langs


def _vocabulary(value) -> str | None:
    """The --vocab value, its word list loaded now: a bad one is an error here, not on every record."""
    vocab = None if str(value).lower() in ("none", "") else str(value)
    if vocab is None or vocab == "auto":
        return vocab
    from filters.text import load_vocabulary

    try:
        load_vocabulary(vocab)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--vocab: cannot read {vocab}: {exc}") from None
    except ValueError:
        raise ValueError(f"--vocab: {vocab!r} is neither a word-list file nor a language code with a word list "
                         f"('auto', 'none', en, de, ...)") from None
    return vocab


def _codec(value: str) -> str:
    import pyarrow as pa

    codec = str(value).lower()
    try:
        ok = codec == "none" or pa.Codec.is_available(codec)
    except (ValueError, pa.ArrowException):
        ok = False
    _check(ok, f"--codec: {value!r} is not a Parquet compression this pyarrow has "
               f"(none, snappy, gzip, brotli, zstd, lz4)")
    return codec


def config_from_args(args: argparse.Namespace) -> RuleConfig:
    """The RuleConfig an argument namespace describes; raises ValueError (one line, naming the option) when
    an option is invalid, so that a run fails before it touches its output rather than on every record.

    Options of the pipeline only (``--codec``, ``--max-images-per-caption``, ...) are checked when present,
    and normalised in ``args`` (``--codec``); ``lait explain`` shares the rule options.
    """
    for name in ("min_words", "max_words", "max_chars", "min_side", "min_bytes", "max_images_per_caption"):
        value = getattr(args, name, None)
        if value is not None:
            _check(value >= 0, f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    for name in ("max_oov_rate", "lang_threshold"):
        value = getattr(args, name)
        _check(0.0 <= value <= 1.0, f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    _check(args.max_aspect >= 0, f"--max-aspect must be 0 (off) or more, got {args.max_aspect}")
    _check(args.min_std >= 0, f"--min-std must be 0 or more, got {args.min_std}")
    if getattr(args, "phash_distance", None) is not None:
        _check(-1 <= args.phash_distance < 64,
               f"--phash-distance must be -1 (off) to 63 bits, got {args.phash_distance}")
    if getattr(args, "codec", None) is not None:
        args.codec = _codec(args.codec)
    return RuleConfig(
        min_words=args.min_words, max_words=args.max_words, max_chars=getattr(args, "max_chars", RuleConfig.max_chars),
        langs=_langs(args.langs, args.lang_backend), lang_threshold=args.lang_threshold, lang_backend=args.lang_backend,
        word_model=not args.no_word_model, use_page=not args.no_page_lang, vocabulary=_vocabulary(args.vocab),
        max_oov_rate=args.max_oov_rate, min_side=args.min_side, max_aspect=args.max_aspect,
        formats=_formats(args.formats), min_bytes=args.min_bytes, allow_animated=args.allow_animated,
        min_std=args.min_std,
    )
