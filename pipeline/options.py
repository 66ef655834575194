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


def config_from_args(args: argparse.Namespace) -> RuleConfig:
    """The RuleConfig an argument namespace describes."""
    vocab = None if str(args.vocab).lower() in ("none", "") else args.vocab
    return RuleConfig(
        min_words=args.min_words, max_words=args.max_words, langs=tuple(l.strip() for l in args.langs.split(",") if l.strip()),
        lang_threshold=args.lang_threshold, lang_backend=args.lang_backend, word_model=not args.no_word_model,
        use_page=not args.no_page_lang, vocabulary=vocab, max_oov_rate=args.max_oov_rate, min_side=args.min_side,
        max_aspect=args.max_aspect, formats=tuple(f.strip().upper() for f in args.formats.split(",") if f.strip()),
        min_bytes=args.min_bytes, allow_animated=args.allow_animated, min_std=args.min_std,
    )
