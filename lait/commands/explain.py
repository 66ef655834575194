"""`lait explain`: every filter's decision, reason and score on captions (and an image), to tune thresholds."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="show each filter's decision, reason and score on captions and an image",
        description="Run the filter stage's rules on captions given as arguments or one per line in a file "
                    "(--captions), and on an image file if given. Thresholds take the same options as `lait filter`.",
    )
    parser.add_argument("caption", nargs="*", help="captions to explain")
    parser.add_argument("--captions", metavar="FILE", help="a file with one caption per line ('-' for stdin)")
    parser.add_argument("--image", metavar="FILE", help="an image file to run the image rules on")
    parser.add_argument("--page-lang", default=None, help="the page's declared language, as crawled pairs carry it")
    parser.add_argument("--page-text", default=None, help="a sample of the page's text (language evidence)")
    parser.add_argument("--json", action="store_true", help="one JSON object per caption")
    from filters.rules import RuleConfig

    d = RuleConfig()
    parser.add_argument("--min-words", type=int, default=d.min_words, help=f"default {d.min_words}")
    parser.add_argument("--max-words", type=int, default=d.max_words, help=f"default {d.max_words}")
    parser.add_argument("--max-chars", type=int, default=d.max_chars, help=f"default {d.max_chars}")
    parser.add_argument("--vocab", default=d.vocabulary, help="auto, a language code or a word file; 'none' turns OOV off (default auto)")
    parser.add_argument("--max-oov-rate", type=float, default=None,  # None: not given (warned of with --vocab none)
                        help=f"default {d.max_oov_rate}")
    parser.add_argument("--langs", default=",".join(d.langs), help="target languages (default en)")
    parser.add_argument("--lang-threshold", type=float, default=d.lang_threshold, help=f"default {d.lang_threshold}")
    parser.add_argument("--lang-backend", choices=("fasttext", "langdetect"), default=d.lang_backend,
                        help="primary language identifier (default fasttext)")
    parser.add_argument("--no-word-model", action="store_true", help="without the word-frequency identifier")
    parser.add_argument("--no-page-lang", action="store_true",
                        help="ignore the page's declared language and text, as `lait filter --no-page-lang` "
                             "does (not with --page-lang or --page-text)")
    # The image rules' options default to None (not given: warned of without --image); _image_options fills them.
    parser.add_argument("--min-side", type=int, help=f"default {d.min_side}")
    parser.add_argument("--max-aspect", type=float, help=f"default {d.max_aspect}")
    parser.add_argument("--formats", help=f"default {','.join(d.formats)}")
    parser.add_argument("--min-bytes", type=int, help=f"default {d.min_bytes}")
    parser.add_argument("--allow-animated", action="store_true", help="keep animated images")
    parser.add_argument("--min-std", type=float, help=f"default {d.min_std}")
    parser.set_defaults(func=run)


#: The options of the image rules, which run only on an --image FILE.
IMAGE_OPTIONS = ("min_side", "max_aspect", "formats", "min_bytes", "allow_animated", "min_std")


def _image_options(args: argparse.Namespace) -> list[str]:
    """The image rules' options given, as spelt on the command line; the defaults of the others put in ``args``."""
    from filters.rules import RuleConfig

    d = RuleConfig()
    defaults = {**{name: getattr(d, name) for name in IMAGE_OPTIONS}, "formats": ",".join(d.formats)}
    given = []
    for name in IMAGE_OPTIONS:
        value = getattr(args, name)
        if value is None:
            setattr(args, name, defaults[name])
        elif value is not False:  # --allow-animated is a switch: given when True
            given.append("--" + name.replace("_", "-"))
    return given


def _not_utf8(text: str | None) -> bool:
    """Whether a command-line argument held bytes that are not UTF-8 (Python keeps each as a lone surrogate)."""
    return text is not None and any("\udc80" <= ch <= "\udcff" for ch in text)


def _captions(args: argparse.Namespace) -> list[str]:
    """The captions to explain: the arguments, then the non-blank lines of --captions. Text that is not UTF-8
    is a ValueError naming the caption or the file and line: the filter stage would reject such a caption
    (``invalid_utf8``), so explaining what is left of it once the bytes are dropped would mislead."""
    from filters.text import utf8_lines

    captions = list(args.caption)
    for number, caption in enumerate(captions, 1):
        _check(not _not_utf8(caption), f"caption {number} is not UTF-8 text ({caption!r})")
    for option in ("page_lang", "page_text"):
        _check(not _not_utf8(getattr(args, option)), f"--{option.replace('_', '-')} is not UTF-8 text")
    if args.captions:
        name = "<stdin>" if args.captions == "-" else args.captions
        try:
            if args.captions == "-":  # its bytes: how sys.stdin decodes depends on the locale (bad bytes can pass)
                found = [line for line in utf8_lines(sys.stdin.buffer) if line.strip()]
            else:
                with open(args.captions, "rb") as handle:
                    found = [line for line in utf8_lines(handle) if line.strip()]
        except OSError as exc:
            raise ValueError(f"--captions {name}: cannot read it ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise ValueError(f"--captions {name}: {exc}; the filter stage rejects such text (invalid_utf8)") from None
        _check(bool(found) or bool(captions) or bool(args.image), f"--captions {name}: no captions in it (one per line)")
        captions += found
    return captions


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _print_text(result: dict) -> None:
    verdict = "KEEP" if result["keep"] else "REJECT"
    print(f"{verdict}  {result['caption']!r}")
    print(f"  lang {result['lang']} {result['lang_score']:.3f}   text_quality {result['text_quality']:.3f}")
    for name, decision in result["filters"].items():
        mark = "ok  " if decision["keep"] else "FAIL"
        score = "" if decision["score"] is None else f" score={decision['score']}"
        reason = f" {decision['reason']}" if decision["reason"] else ""
        detail = f" ({decision['detail']})" if decision["detail"] else ""
        print(f"  {mark} {name:<12}{reason}{score}{detail}")


def run(args: argparse.Namespace) -> int:
    from filters.rules import RuleFilters
    from pipeline.options import config_from_args, ignored_options

    image_options = _image_options(args)
    try:
        page = [f"--{name.replace('_', '-')}" for name in ("page_lang", "page_text") if getattr(args, name) is not None]
        _check(not (args.no_page_lang and page), f"--no-page-lang ignores the page's language and text: leave out "
                                                 f"{' and '.join(page)}")
        config = config_from_args(args)
        captions = _captions(args)
        image = None
        if args.image:
            try:
                with open(args.image, "rb") as handle:
                    image = handle.read()
            except OSError as exc:
                raise ValueError(f"--image {args.image}: cannot read it ({exc.strerror or exc})") from None
        _check(bool(captions) or image is not None, "give captions, --captions FILE or --image FILE")
    except ValueError as exc:  # a bad option, an unreadable file: one line, not a traceback
        print(f"lait explain: error: {exc}", file=sys.stderr)
        return 2
    warnings = ignored_options(args, config)  # as `lait filter` warns of them
    if image_options and image is None:
        names = ", ".join(image_options)
        warnings.append(f"{names} {'is' if len(image_options) == 1 else 'are'} ignored: the image rules run only "
                        f"on an --image FILE")
    for message in warnings:
        print(f"lait explain: warning: {message}", file=sys.stderr)
    if not captions:
        captions = [""]
    rules = RuleFilters(config)
    for caption in captions:
        result = rules.explain(caption, image, args.page_lang, args.page_text)
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            _print_text(result)
    return 0
