"""Options of LAIT's pipelines: the filter stage's arguments, and an explicit local runner.

Importing this module does not import Beam, so ``lait --help`` stays fast.
"""
from __future__ import annotations

import argparse
import difflib
import logging
from typing import Any, Mapping, Sequence

from filters import option_rules
from filters.rules import RuleConfig
from pipeline.runners import LOCAL_RUNNERS, is_local_runner, make_runner  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

#: The compressions Parquet can write (pyarrow's names); ``_codec`` keeps those this pyarrow has built in.
PARQUET_CODECS = ("none", "snappy", "gzip", "brotli", "lz4", "lz4_raw", "zstd")
#: The grey-level standard deviation no image can exceed (half black, half white pixels): a higher
#: ``--min-std`` would call every image blank.
MAX_GREY_STD = 127.5
#: Beam's options of its local runner (``DirectOptions``): only FnApiRunner reads them, which the direct runners
#: run on (and InteractiveRunner, through its default DirectRunner).
LOCAL_RUNNER_OPTIONS = ("--direct_num_workers", "--direct_running_mode")
#: The runners Beam knows that never read ``LOCAL_RUNNER_OPTIONS`` (lower case, as Beam matches them). A name Beam
#: does not know is left to Beam (which refuses it); a module path is judged by its class (``reads_local_options``).
RUNNERS_WITHOUT_LOCAL_OPTIONS = {"dataflowrunner", "testdataflowrunner", "flinkrunner", "sparkrunner",
                                 "portablerunner", "prismrunner", "kafkastreamsrunner", "bundlebaseddirectrunner"}
#: Beam's runner classes that read ``LOCAL_RUNNER_OPTIONS`` (lower case): FnApiRunner and the runners that run on it.
#: ``DirectRunner`` is ``SwitchingDirectRunner`` by its class name.
LOCAL_OPTION_READERS = {"fnapirunner", "switchingdirectrunner", "directrunner", "testdirectrunner", "interactiverunner"}
#: Pairs per relevance-model batch when ``--relevance-batch-size`` is not given.
RELEVANCE_BATCH_SIZE = 64


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The filter stage's own options (shared by ``lait filter`` and ``python -m pipeline.filter``)."""
    d = RuleConfig()
    parser.add_argument("--input", required=True, help="crawl folder (with candidates/) or candidates dataset")
    parser.add_argument("--output", required=True, help="output folder: pairs/, rejected/, stats.json")
    parser.add_argument("--overwrite", action="store_true", help="replace pairs/, rejected/ and stats.json if present")
    g = parser.add_argument_group("text")
    g.add_argument("--min-words", type=int, default=d.min_words, help=f"fewest words in a caption (default {d.min_words})")
    g.add_argument("--max-words", type=int, default=d.max_words,
                   help=f"most words in a caption; 0 turns it off (default {d.max_words})")
    g.add_argument("--max-chars", type=int, default=d.max_chars,
                   help=f"longest caption in characters, checked before any other text rule; 0 turns it off "
                        f"(default {d.max_chars})")
    g.add_argument("--vocab", default=d.vocabulary,
                   help="vocabulary for the OOV rate: 'auto' (the detected language's common words), a "
                        "language code or a word-per-line file (a code is never read as a path: give a file named "
                        "like one as ./en); 'none' turns the check off (default auto)")
    # None when not given (also below): an option the run cannot use is refused or warned of whenever it is
    # given, its default value too; ``fill_defaults`` puts the defaults in once the checks are done.
    g.add_argument("--max-oov-rate", type=float, default=None,
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
                   help=f"largest long-side/short-side ratio, 1 or more; 0 turns it off (default {d.max_aspect})")
    g.add_argument("--formats", default=",".join(d.formats),
                   help="allowed image formats, among those LAIT opens (default %(default)s)")
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
    g.add_argument("--relevance-batch-size", type=int, default=None,
                   help=f"pairs per model batch (default {RELEVANCE_BATCH_SIZE})")
    g.add_argument("--relevance-device", default=None,
                   help="where the relevance model runs: cpu or gpu (cuda); default: the worker's GPU when it has one")
    parser.add_argument("--codec", default="zstd", help=f"Parquet compression: {', '.join(PARQUET_CODECS)} (default zstd)")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


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
    """The --vocab value, its word list loaded now: a bad one is an error here, not on every record.

    'none' turns the check off; 'auto' and language codes are read in any case (EN is en), as --langs are.
    """
    from filters.text import VocabularyFileError, load_vocabulary, wordfreq_languages

    vocab = str(value)
    _check(bool(vocab.strip()), "--vocab: give 'auto', 'none', a language code (en, de, ...) or a word-list file")
    if vocab.lower() == "none":
        return None
    if vocab.lower() == "auto":
        return "auto"
    if vocab.lower() in wordfreq_languages():
        vocab = vocab.lower()
    try:
        load_vocabulary(vocab)
    except OSError as exc:
        raise ValueError(f"--vocab: cannot read {vocab}: {exc.strerror or exc}") from None
    except VocabularyFileError as exc:  # not UTF-8 text, or no words
        raise ValueError(f"--vocab: {exc}") from None
    except ValueError:
        raise ValueError(f"--vocab: {vocab!r} is neither a word-list file nor a language code with a word list "
                         f"('auto', 'none', en, de, ...)") from None
    return vocab


def _codec(value: str) -> str:
    """A Parquet compression this pyarrow writes (Arrow has codecs Parquet cannot use, such as bz2)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    codec = str(value).lower()
    ok = codec in PARQUET_CODECS
    if ok and codec != "none":
        try:  # a codec left out of this pyarrow's build fails on the first write: try one now
            pq.write_table(pa.table({"x": [1]}), pa.BufferOutputStream(), compression=codec)
        except (ValueError, pa.ArrowException):
            ok = False
    _check(ok, f"--codec: {value!r} is not a Parquet compression this pyarrow writes ({', '.join(PARQUET_CODECS)})")
    return codec


def config_from_args(args: argparse.Namespace) -> RuleConfig:
    """The RuleConfig an argument namespace describes; raises ValueError (one line, naming the option) when
    an option is invalid, so that a run fails before it touches its output rather than on every record.

    Options of the pipeline only (``--codec``, ``--max-images-per-caption``, ...) are checked when present,
    and normalised in ``args`` (``--codec``); ``lait explain`` shares the rule options.
    """
    for name in ("min_words", "max_words", "max_chars", "min_bytes", "max_images_per_caption"):
        value = getattr(args, name, None)
        if value is not None:
            _check(value >= 0, f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    # The options `lait crawl` and `lait demo` take too: one rule for all three (filters.option_rules).
    option_rules.check("min_side", args.min_side, "--min-side")
    for name in ("max_oov_rate", "lang_threshold"):
        value = getattr(args, name)
        _check(value is None or 0.0 <= value <= 1.0, f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    # Settings under which no caption or image could pass are refused: they would reject the whole input.
    _check(not args.max_words or args.min_words <= args.max_words,
           f"--min-words {args.min_words} is more than --max-words {args.max_words}: every caption would be rejected")
    option_rules.check("max_aspect", args.max_aspect, "--max-aspect")
    _check(0 <= args.min_std <= MAX_GREY_STD,
           f"--min-std must be in [0, {MAX_GREY_STD}] (grey levels 0-255), got {args.min_std}")
    if getattr(args, "phash_distance", None) is not None:
        _check(-1 <= args.phash_distance < 64,
               f"--phash-distance must be -1 (off) to 63 bits, got {args.phash_distance}")
    if getattr(args, "relevance_keep_rate", None) is not None:  # None: not given (lait explain has no such option)
        option_rules.check("relevance_keep_rate", args.relevance_keep_rate, "--relevance-keep-rate")
    if getattr(args, "codec", None) is not None:
        args.codec = _codec(args.codec)
    max_oov_rate = getattr(args, "max_oov_rate", None)
    return RuleConfig(
        min_words=args.min_words, max_words=args.max_words, max_chars=getattr(args, "max_chars", RuleConfig.max_chars),
        langs=_langs(args.langs, args.lang_backend), lang_threshold=args.lang_threshold, lang_backend=args.lang_backend,
        word_model=not args.no_word_model, use_page=not args.no_page_lang, vocabulary=_vocabulary(args.vocab),
        max_oov_rate=RuleConfig.max_oov_rate if max_oov_rate is None else max_oov_rate, min_side=args.min_side,
        max_aspect=args.max_aspect, formats=option_rules.read_image_formats(args.formats), min_bytes=args.min_bytes,
        allow_animated=args.allow_animated, min_std=args.min_std,
    )


def ignored_options(args: argparse.Namespace, config: RuleConfig) -> list[str]:
    """The options given that the run cannot use, one sentence each: ``--max-oov-rate`` with ``--vocab none``
    (the OOV check is off), whatever its value. Warnings, not errors: the value is harmless, but the user may
    think it applies. ``lait filter`` and ``lait explain`` both say them."""
    if config.vocabulary is None and getattr(args, "max_oov_rate", None) is not None:
        return [f"--max-oov-rate {args.max_oov_rate} is ignored: --vocab none turns the OOV check off"]
    return []


def _filter_defaults() -> dict[str, Any]:
    """The filter stage's options at their parser defaults (None for those told apart when given at their default)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_filter_arguments(parser)
    defaults = vars(parser.parse_args(["--input", "", "--output", ""]))
    return {name: value for name, value in defaults.items() if name not in ("input", "output")}


def complete_options(args: argparse.Namespace) -> None:
    """Give ``args`` each filter option it lacks (a namespace a Python caller made, not ``add_filter_arguments``'
    parser) at the parser's default, None for the options left out; a ValueError when it lacks ``input`` or
    ``output``, which have none. Idempotent: the options it has are left as they are."""
    lacking = [name for name in ("input", "output") if getattr(args, name, None) is None]
    if lacking:
        raise ValueError(f"the filter options lack {' and '.join(lacking)} (--input, --output): they have no default")
    for name, value in _filter_defaults().items():
        if not hasattr(args, name):
            setattr(args, name, value)


def fill_defaults(args: argparse.Namespace, config: RuleConfig | None = None) -> None:
    """Put the default of each option left out (None, so that a given one can be told from a default) in
    ``args``, once the options are checked, so that the run and its stats.json see the values used; the options
    ``args`` lacks altogether first (``complete_options``). ``config``: the rules the run uses, when made already
    (its ``max_oov_rate`` is the one recorded). Idempotent."""
    complete_options(args)
    if getattr(args, "max_oov_rate", None) is None:
        args.max_oov_rate = (config or RuleConfig()).max_oov_rate
    if getattr(args, "relevance_batch_size", 0) is None:
        args.relevance_batch_size = RELEVANCE_BATCH_SIZE


def _refuse_unknown(beam_args: Sequence[str], own: Mapping[str, Any], local: bool = True):
    """An ``add_extra_args_fn`` for Beam's option parser: a ValueError for every argument that neither it nor
    the stage knows (Beam only logs "Discarding unparseable args", so ``--min_words 50`` would be ignored).

    With a runner that is not local (``local`` False), only an argument that looks like a misspelt option of
    the stage is refused: such a runner's own options (``--dask_client_address``) are known to Beam only once
    its module is imported, which happens after this check; the others are left to Beam, which logs them.
    """

    def error(message: str):
        raise ValueError(f"Beam options: {message}")

    def check(parser: argparse.ArgumentParser) -> None:
        parser.error = error  # a bad value (--direct_num_workers abc): one line, not a usage text and an exit
        _, unknown = parser.parse_known_args(list(beam_args))
        if not unknown:
            return
        own_options = ["--" + name.replace("_", "-") for name in own]
        hints = []
        for name in (arg.split("=", 1)[0] for arg in unknown if arg.startswith("--")):
            close = difflib.get_close_matches(name.replace("_", "-"), own_options, n=1, cutoff=0.8)
            if close:
                hints.append(f"{name}: did you mean {close[0]}?")
        if not local and not hints:
            logger.warning("arguments Beam does not know yet, left to the runner: %s", " ".join(unknown))
            return
        raise ValueError(f"unknown argument(s) {' '.join(unknown)}: neither an option of this stage nor a Beam "
                         f"option" + "".join(f"; {hint}" for hint in hints))

    return check


def beam_options(beam_args: Sequence[str], own: Mapping[str, Any] | None = None):
    """Beam's ``PipelineOptions`` for the arguments the stage's parser left over, checked: an argument Beam does
    not know either (a typo such as ``--min_words``), a bad value, ``--direct_num_workers`` below 0, or a local
    runner's option given (at any value) with a runner that never reads it (``RUNNERS_WITHOUT_LOCAL_OPTIONS``) is
    a ValueError. ``own``: the stage's parsed options (``vars(args)``), to suggest the spelling meant."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    options = PipelineOptions(list(beam_args))
    runner = runner_name(options)
    local = is_local_runner(runner)  # a module path to Beam's DirectRunner runs here too, as make_runner runs it
    options.get_all_options(add_extra_args_fn=_refuse_unknown(beam_args, own or {}, local))
    workers = options.view_as(DirectOptions).direct_num_workers
    _check(workers >= 0, f"--direct_num_workers must be 0 (one per CPU) or more, got {workers}")
    given = sorted({arg.split("=", 1)[0] for arg in beam_args} & set(LOCAL_RUNNER_OPTIONS))
    if given and not reads_local_options(runner):
        it, applies = ("it", "applies") if len(given) == 1 else ("them", "apply")
        raise ValueError(f"{' and '.join(given)} {applies} to the local runner (DirectRunner) only, and {runner} "
                         f"would ignore {it}: leave {it} out")
    return options


def reads_local_options(runner) -> bool:
    """Whether the runner ``runner_name`` names reads ``LOCAL_RUNNER_OPTIONS``: not one of
    ``RUNNERS_WITHOUT_LOCAL_OPTIONS``, nor a runner class given by module path (``some.module.MyRunner``) that is
    not one of Beam's ``LOCAL_OPTION_READERS`` or built on one: a third-party runner runs its own way, elsewhere.
    A path is imported to tell (``runners.runner_class``: a ValueError when it cannot be), as Beam imports it to
    build the pipeline. Another name is left to Beam, which refuses one it does not know."""
    from pipeline.runners import runner_class

    name = str(runner).lower()
    if name in RUNNERS_WITHOUT_LOCAL_OPTIONS or name + "runner" in RUNNERS_WITHOUT_LOCAL_OPTIONS:
        return False
    if "." not in name:
        return True
    return any(cls.__module__.split(".")[0] == "apache_beam" and cls.__name__.lower() in LOCAL_OPTION_READERS
               for cls in runner_class(str(runner)).__mro__)


def runner_name(options) -> str:
    """The runner a run with these options uses, by name (none named is LAIT's local DirectRunner)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner is None:
        return "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__
