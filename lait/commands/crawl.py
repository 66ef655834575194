"""`lait crawl URL... --out DIR` (the Scrapy spider) or `lait crawl --warc FILE... --out DIR` (Beam)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from crawler import images
from lait.commands import non_negative, positive


def _text_setting(key: str) -> bool:
    """Whether ``key`` is a setting of text: one whose default (crawler/settings.py's, else Scrapy's) is text, as
    USER_AGENT's, or a LAIT_* path unset by default (LAIT_JOBDIR). A log level is a name or a number (LOG_LEVEL=10)."""
    from scrapy.settings import default_settings

    from crawler import settings as lait_settings

    if not key.isupper() or key.endswith("LOG_LEVEL"):
        return False
    for module in (lait_settings, default_settings):
        if key in vars(module):  # (not hasattr: a deprecated name of Scrapy's would warn)
            default = vars(module)[key]
            return isinstance(default, str) or (default is None and key.startswith("LAIT_"))
    return False


def _setting(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as JSON where it reads (a number, true/false, a list), else as the text given; a text
    setting takes a number or true/false as the text given too (-s USER_AGENT=5 is "5")."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        read = json.loads(value)
    except json.JSONDecodeError:
        return key, value
    if isinstance(read, (bool, int, float)) and _text_setting(key):
        return key, value
    return key, read


def _page_domains(values: list[str]) -> list[str]:
    """The hosts ``--allowed-domains`` names, with a warning line for each one taken from a URL or host:port;
    ValueError (one line) for a value that names no host."""
    from crawler.spiders.lait import page_domain

    hosts = []
    for value in values:
        try:
            host, taken = page_domain(value)
        except ValueError as exc:
            raise ValueError(f"--allowed-domains: {exc}") from None
        if taken:
            print(f"lait crawl: --allowed-domains: took the host {host} from {value!r}", file=sys.stderr)
        hosts.append(host)
    return list(dict.fromkeys(hosts))


#: The options only the spider reads (dest -> (option, default)): `lait crawl --warc` refuses them when given. Their
#: argparse default is None, resolved to the default here once checked, so that a value given equal to the default
#: (`--depth 0`) counts as given: it would be ignored as much as any other.
SPIDER_OPTIONS = {"allowed_domains": ("--allowed-domains", None), "max_pages": ("--max-pages", 0),
                  "depth": ("--depth", 0), "processes": ("--processes", 1), "jobdir": ("--jobdir", None)}
#: The options only the WARC reader reads (dest -> (option, default)), and its Beam settings: a URL crawl refuses
#: them when given, as `--warc` refuses the spider's.
WARC_OPTIONS = {"download": ("--download/--no-download", True), "files_per_part": ("--files-per-part", 0)}
WARC_ONLY_SETTINGS = ("runner", "direct_running_mode")
#: The options both readers take (dest -> (option, default)), None until resolved as above.
SHARED_OPTIONS = {"min_side": ("--min-side", images.DEFAULT_MIN_SIDE),
                  "max_aspect": ("--max-aspect", images.DEFAULT_MAX_ASPECT)}
#: The -s settings a `lait crawl` option sets (setting -> dest, option): given both, the setting would win over the
#: option without a word (``runner.crawl_settings``, ``warc.read_warcs``). A store_true flag counts as given when set.
OPTION_SETTINGS = {"LAIT_MIN_SIDE": ("min_side", "--min-side"), "LAIT_MAX_ASPECT": ("max_aspect", "--max-aspect"),
                   "LAIT_ALLOW_PRIVATE_NETWORKS": ("allow_private_networks", "--allow-private-networks"),
                   "LAIT_JOBDIR": ("jobdir", "--jobdir"), "LAIT_PROGRESS": ("no_progress", "--no-progress")}
#: The settings `lait crawl` sets itself: the run folder (--out, which is where it reads stats.json from) and, for
#: each of --processes N, the files of that process.
OWN_SETTINGS = ("LAIT_OUT", "LAIT_SHARD_PREFIX", "LAIT_STATS_PART", "LAIT_OUTCOMES_PART", "LAIT_LIVE_COUNTS")
#: Scrapy settings the spider leaves unread, with the option that does their work (it tracks link depth itself:
#: crawler/settings.py turns Scrapy's depth middleware off).
UNREAD_SETTINGS = {"DEPTH_LIMIT": "--depth"}


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _given(args: argparse.Namespace, options: dict[str, tuple[str, object]]) -> list[str]:
    """The options of ``options`` given on the command line (their argparse default is None)."""
    return [option for dest, (option, _) in options.items() if getattr(args, dest) is not None]


def _resolve_defaults(args: argparse.Namespace) -> None:
    """Give the options left out their defaults, once what was given has been checked."""
    for options in (SPIDER_OPTIONS, WARC_OPTIONS, SHARED_OPTIONS):
        for dest, (_, default) in options.items():
            if getattr(args, dest) is None:
                setattr(args, dest, default)


def _set_twice(args: argparse.Namespace) -> str | None:
    """The line refusing a -s setting that an option given beside it sets too, or one `lait crawl` sets itself."""
    settings = dict(args.settings)
    own = [f"-s {key}" for key in settings if key in OWN_SETTINGS]
    if own:
        why = " (the run folder is --out)" if "-s LAIT_OUT" in own else ", for each crawl process"
        return f"{_and(own)} {'is' if len(own) == 1 else 'are'} set by lait crawl itself{why}"
    twice = [(key, option) for key, (dest, option) in OPTION_SETTINGS.items()
             if key in settings and getattr(args, dest) is not None and getattr(args, dest) is not False]
    if twice:
        return "; ".join(f"-s {key} sets what {option} sets: give one of them" for key, option in twice)
    return None


def _ignored_by_warc(args: argparse.Namespace, read_settings: dict[str, str],
                     download_settings: tuple[str, ...]) -> str | None:
    """The line refusing what `lait crawl --warc` would ignore without a word: a spider option given (an explicit
    `--depth 0` too), a -s setting the WARC reader does not read; with --no-download, what only downloads read."""
    ignored = _given(args, SPIDER_OPTIONS)
    settings = dict(args.settings)
    ignored += [f"-s {key}" for key in settings if key not in read_settings]
    if ignored:
        return f"{_and(ignored)} appl{'ies' if len(ignored) == 1 else 'y'} to the spider, not to --warc"
    if args.download is False:
        unused = ["--allow-private-networks"] if args.allow_private_networks else []
        unused += [f"-s {key}" for key in settings if key in download_settings]
        if unused:
            return (f"{_and(unused)} appl{'ies' if len(unused) == 1 else 'y'} to downloading the images the WARC "
                    f"files lack, which --no-download turns off")
    return None


def _ignored_by_spider(args: argparse.Namespace) -> str | None:
    """The line refusing what a URL crawl would ignore without a word: a WARC-only option given (an explicit
    `--download` too), the WARC reader's Beam settings (Scrapy would keep them and nothing would read them), a
    Scrapy setting the spider turned off."""
    ignored = _given(args, WARC_OPTIONS)
    ignored += [f"-s {key}" for key in dict(args.settings) if key in WARC_ONLY_SETTINGS]
    if ignored:
        return f"{_and(ignored)} appl{'ies' if len(ignored) == 1 else 'y'} to --warc, not to a crawl of start URLs"
    unread = [key for key in dict(args.settings) if key in UNREAD_SETTINGS]
    if unread:
        return "; ".join(f"-s {key} is not read (the spider tracks link depth itself): use {UNREAD_SETTINGS[key]}"
                         for key in unread)
    return None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lait crawl` to the CLI."""
    parser = subparsers.add_parser(
        "crawl",
        help="crawl web pages (Scrapy) or read WARC files (Beam) into image+ALT/TITLE candidates",
        description="Crawl sites from start URLs, or read WARC/ARC/WAT files, into DIR/candidates/, "
                    "DIR/rejected/ and DIR/stats.json. Robots.txt is obeyed and private networks are refused.",
    )
    parser.add_argument("urls", nargs="*", metavar="URL", help="start URLs (http or https)")
    parser.add_argument("--warc", nargs="+", metavar="FILE", help="read these WARC/ARC/WAT files (local paths, "
                        "globs, or Beam filesystem URLs) instead of crawling")
    parser.add_argument("--out", required=True, help="output folder (the crawl stage's run folder)")
    parser.add_argument("--allow-private-networks", action="store_true",
                        help="allow fetching private, loopback and link-local addresses (local test sites)")
    parser.add_argument("--max-pages", type=non_negative,
                        help="stop scheduling pages after N (default 0: no cap)")
    parser.add_argument("--depth", type=non_negative, help="follow links up to N hops from a start URL "
                        "(default 0: no limit)")
    parser.add_argument("--allowed-domains", nargs="+", metavar="DOMAIN",
                        help="domains whose pages are followed, subdomains included; a URL or host:port stands for "
                             "its host (default: the start URLs' hosts)")
    parser.add_argument("--min-side", type=int,
                        help=f"early reject: images with a side below N px, 0 or more (default {images.DEFAULT_MIN_SIDE})")
    parser.add_argument("--max-aspect", type=float,
                        help=f"early reject: long side over short side above R, 1 or more; 0 turns it off, as in "
                             f"lait filter (default {images.DEFAULT_MAX_ASPECT})")
    parser.add_argument("--processes", type=positive,
                        help="crawl processes (default 1); with N > 1, process 0 crawls the pages and all N fetch "
                             "and validate a share of the images (each image still fetched once)")
    parser.add_argument("--jobdir", help="job folder: rerun with the same one to continue an interrupted crawl")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction,
                        help="WARC only: fetch images the WARC files lack (default on)")
    parser.add_argument("--files-per-part", type=non_negative, metavar="N",
                        help="WARC only: read the sorted files in parts of N, one Beam pipeline each; a rerun with "
                             "the same files and N skips finished parts (default 0: one part, a rerun starts over)")
    parser.add_argument("-s", "--set", dest="settings", action="append", type=_setting, default=[],
                        metavar="KEY=VALUE", help="a Scrapy/LAIT setting (JSON value or text; a text setting such "
                        "as USER_AGENT takes the text as given), repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # The options that are refused where they do not apply default to None (see SPIDER_OPTIONS).
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the crawl or the WARC reader; print the funnel."""
    from crawler import output

    if bool(args.urls) == bool(args.warc):
        print("lait crawl: give start URLs or --warc FILE..., not both and not neither", file=sys.stderr)
        return 2
    from crawler import runner
    from filters import option_rules

    # Both readers would fail on a bad value later (a crawl process, the WARC reader's own parser), or reject
    # every image, or check none: refused before --out is touched, by the rules lait filter and lait demo apply.
    try:
        for dest, (option, _) in SHARED_OPTIONS.items():
            if getattr(args, dest) is not None:
                option_rules.check(dest, getattr(args, dest), option)
    except ValueError as exc:
        print(f"lait crawl: {exc}", file=sys.stderr)
        return 2
    try:  # the WARC reader checks the Scrapy settings it reads by its own rules (warc.setting_options)
        runner.check_settings(dict(args.settings), scrapy_settings=not args.warc)
    except ValueError as exc:
        print(f"lait crawl: -s {exc}", file=sys.stderr)
        return 2
    twice = _set_twice(args)
    if twice:
        print(f"lait crawl: {twice}", file=sys.stderr)
        return 2
    if args.warc:
        from crawler import warc

        ignored = _ignored_by_warc(args, warc.READ_SETTINGS, warc.DOWNLOAD_SETTINGS)
        if ignored:
            print(f"lait crawl: {ignored}", file=sys.stderr)
            return 2
        _resolve_defaults(args)
        if args.files_per_part and not args.no_progress:  # the parts' progress: one line each
            logging.getLogger("crawler.warc.parts").setLevel(logging.INFO)
        try:  # the inputs and --out are checked before the previous WARC output is cleared
            # --max-aspect 0 turns the check off: the WARC reader's check knows no 0, only no limit.
            stats = warc.read_warcs(args.warc, args.out, allow_private_networks=args.allow_private_networks,
                                    min_side=args.min_side, max_aspect=args.max_aspect or math.inf,
                                    download=args.download, files_per_part=args.files_per_part,
                                    settings=dict(args.settings))
        except (warc.MissingInputError, warc.PartsMismatchError) as exc:
            print(f"lait crawl: {exc}", file=sys.stderr)
            return 2
        except warc.SettingError as exc:
            print(f"lait crawl: -s {exc}", file=sys.stderr)
            return 2
        except output.OutputFolderError as exc:
            print(f"lait crawl: --out: {exc}", file=sys.stderr)
            return 2
    else:
        bad = [u for u in args.urls if not u.startswith(("http://", "https://"))]
        if bad:
            print(f"lait crawl: only http(s) start URLs are crawled, not {', '.join(bad)}", file=sys.stderr)
            return 2
        ignored = _ignored_by_spider(args)
        if ignored:
            print(f"lait crawl: {ignored}", file=sys.stderr)
            return 2
        _resolve_defaults(args)
        if args.jobdir == "":  # read as no job folder: the crawl would run without one, and a rerun start over
            print("lait crawl: --jobdir: give a folder", file=sys.stderr)
            return 2
        try:
            domains = _page_domains(args.allowed_domains) if args.allowed_domains else None
        except ValueError as exc:
            print(f"lait crawl: {exc}", file=sys.stderr)
            return 2
        # The job folder, given as --jobdir or as the setting (both at once are refused above).
        jobdir, jobdir_option = args.jobdir, "--jobdir"
        if jobdir is None and dict(args.settings).get("LAIT_JOBDIR") is not None:
            jobdir, jobdir_option = dict(args.settings)["LAIT_JOBDIR"], "-s LAIT_JOBDIR"
        try:
            if jobdir:  # another crawl's job folder (other processes, another --out) is refused before --out is made
                runner.check_job_folder(jobdir, args.processes, record=False,  # recorded once it runs
                                        option=jobdir_option, out=args.out)
            output.prepare_out_dir(args.out)
        except runner.JobFolderError as exc:
            print(f"lait crawl: {exc}", file=sys.stderr)
            return 2
        except output.OutputFolderError as exc:
            print(f"lait crawl: --out: {exc}", file=sys.stderr)
            return 2
        try:
            stats = runner.run_crawl(
                args.urls, args.out, allowed_domains=domains, max_pages=args.max_pages,
                depth=args.depth, allow_private_networks=args.allow_private_networks, min_side=args.min_side,
                max_aspect=args.max_aspect, jobdir=args.jobdir, progress=not args.no_progress,
                overrides=dict(args.settings), processes=args.processes,
            )
        except runner.JobFolderError as exc:  # --jobdir of another crawl: nothing was touched
            print(f"lait crawl: {exc}", file=sys.stderr)
            return 2
        except output.OutputFolderError as exc:  # --out in use by a crawl still going: nothing was touched
            print(f"lait crawl: --out: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:  # a crawl process failed; its own log says why
            print(f"lait crawl: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            hint = f"rerun with {runner.given_jobdir(jobdir, jobdir_option)} to continue" if jobdir else \
                "complete shards are kept"
            print(f"crawl interrupted; {hint}")
            return 130
    print(f"crawl: in {stats['in']:,} = kept {stats['kept']:,} + rejected {stats['rejected']:,}  -> {args.out}")
    for reason, count in list(stats["rejected_by_reason"].items())[:12]:
        print(f"  {count:>8,}  {reason}")
    return 0
