"""`lait crawl URL... --out DIR` (the Scrapy spider) or `lait crawl --warc FILE... --out DIR` (Beam)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from crawler import images
from lait.commands import non_negative, positive


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


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


#: The options only the spider reads (dest -> option): `lait crawl --warc` refuses them unless left at their defaults.
SPIDER_OPTIONS = {"allowed_domains": "--allowed-domains", "max_pages": "--max-pages", "depth": "--depth",
                  "processes": "--processes", "jobdir": "--jobdir"}
#: The options only the WARC reader reads (dest -> option), and its Beam settings: a URL crawl refuses them unless
#: left at their defaults, as `--warc` refuses the spider's.
WARC_OPTIONS = {"download": "--download/--no-download", "files_per_part": "--files-per-part"}
WARC_ONLY_SETTINGS = ("runner", "direct_running_mode")
#: What the WARC reader takes instead of a -s setting only the spider reads, where it has one.
WARC_INSTEAD = {"LAIT_MIN_SIDE": "--min-side", "LAIT_MAX_ASPECT": "--max-aspect",
                "LAIT_ALLOW_PRIVATE_NETWORKS": "--allow-private-networks",
                "LAIT_IMAGE_FORMATS": "python -m crawler.warc --image_formats",
                "LAIT_MAX_PIXELS": "python -m crawler.warc --max_pixels",
                "USER_AGENT": "python -m crawler.warc --user_agent"}


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _ignored_by_warc(args: argparse.Namespace, read_settings: tuple[str, ...]) -> str | None:
    """The line refusing what `lait crawl --warc` would ignore without a word: a spider option not at its default
    (an explicit `--depth 0` counts when 0 is not the default), a -s setting the WARC reader does not read."""
    ignored = [option for dest, option in SPIDER_OPTIONS.items() if getattr(args, dest) != args.spider_defaults[dest]]
    settings = [key for key in dict(args.settings) if key not in read_settings]
    ignored += [f"-s {key}" for key in settings]
    if not ignored:
        return None
    instead = [f"{WARC_INSTEAD[key]} for {key}" for key in settings if key in WARC_INSTEAD]
    return (f"{_and(ignored)} appl{'ies' if len(ignored) == 1 else 'y'} to the spider, not to --warc"
            + (f"; use {', '.join(instead)}" if instead else ""))


def _ignored_by_spider(args: argparse.Namespace) -> str | None:
    """The line refusing what a URL crawl would ignore without a word: a WARC-only option not at its default, the
    WARC reader's Beam settings (Scrapy would keep them and nothing would read them)."""
    ignored = [option for dest, option in WARC_OPTIONS.items() if getattr(args, dest) != args.warc_defaults[dest]]
    ignored += [f"-s {key}" for key in dict(args.settings) if key in WARC_ONLY_SETTINGS]
    if not ignored:
        return None
    return f"{_and(ignored)} appl{'ies' if len(ignored) == 1 else 'y'} to --warc, not to a crawl of start URLs"


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
    parser.add_argument("--max-pages", type=non_negative, default=0,
                        help="stop scheduling pages after N (default 0: no cap)")
    parser.add_argument("--depth", type=non_negative, default=0, help="follow links up to N hops from a start URL "
                        "(default 0: no limit)")
    parser.add_argument("--allowed-domains", nargs="+", metavar="DOMAIN",
                        help="domains whose pages are followed, subdomains included; a URL or host:port stands for "
                             "its host (default: the start URLs' hosts)")
    parser.add_argument("--min-side", type=int, default=images.DEFAULT_MIN_SIDE,
                        help=f"early reject: images with a side below N px, 0 or more (default {images.DEFAULT_MIN_SIDE})")
    parser.add_argument("--max-aspect", type=float, default=images.DEFAULT_MAX_ASPECT,
                        help=f"early reject: long side over short side above R, 1 or more; 0 turns it off, as in "
                             f"lait filter (default {images.DEFAULT_MAX_ASPECT})")
    parser.add_argument("--processes", type=positive, default=1,
                        help="crawl processes (default 1); with N > 1, process 0 crawls the pages and all N fetch "
                             "and validate a share of the images (each image still fetched once)")
    parser.add_argument("--jobdir", help="job folder: rerun with the same one to continue an interrupted crawl")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="WARC only: fetch images the WARC files lack (default on)")
    parser.add_argument("--files-per-part", type=non_negative, default=0, metavar="N",
                        help="WARC only: read the sorted files in parts of N, one Beam pipeline each; a rerun with "
                             "the same files and N skips finished parts (default 0: one part, a rerun starts over)")
    parser.add_argument("-s", "--set", dest="settings", action="append", type=_setting, default=[],
                        metavar="KEY=VALUE", help="a Scrapy/LAIT setting (JSON value or text), repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, spider_defaults={dest: parser.get_default(dest) for dest in SPIDER_OPTIONS},
                        warc_defaults={dest: parser.get_default(dest) for dest in WARC_OPTIONS})


def run(args: argparse.Namespace) -> int:
    """Run the crawl or the WARC reader; print the funnel."""
    from crawler import output

    if bool(args.urls) == bool(args.warc):
        print("lait crawl: give start URLs or --warc FILE..., not both and not neither", file=sys.stderr)
        return 2
    from crawler.spiders import lait as spider
    from filters import option_rules

    # Both readers would fail on a bad value later (a crawl process, the WARC reader's own parser), or reject
    # every image, or check none: refused before --out is touched, by the rules lait filter and lait demo apply.
    try:
        option_rules.check("min_side", args.min_side, "--min-side")
        option_rules.check("max_aspect", args.max_aspect, "--max-aspect")
    except ValueError as exc:
        print(f"lait crawl: {exc}", file=sys.stderr)
        return 2
    try:
        spider.check_settings(dict(args.settings))
    except ValueError as exc:
        print(f"lait crawl: -s {exc}", file=sys.stderr)
        return 2
    if args.warc:
        from crawler import warc

        ignored = _ignored_by_warc(args, warc.READ_SETTINGS)
        if ignored:
            print(f"lait crawl: {ignored}", file=sys.stderr)
            return 2
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
        except output.OutputFolderError as exc:
            print(f"lait crawl: --out: {exc}", file=sys.stderr)
            return 2
    else:
        from crawler import runner

        bad = [u for u in args.urls if not u.startswith(("http://", "https://"))]
        if bad:
            print(f"lait crawl: only http(s) start URLs are crawled, not {', '.join(bad)}", file=sys.stderr)
            return 2
        ignored = _ignored_by_spider(args)
        if ignored:
            print(f"lait crawl: {ignored}", file=sys.stderr)
            return 2
        try:
            domains = _page_domains(args.allowed_domains) if args.allowed_domains else None
        except ValueError as exc:
            print(f"lait crawl: {exc}", file=sys.stderr)
            return 2
        try:
            if args.jobdir:  # another crawl's job folder is refused before --out is made
                runner.check_job_folder(args.jobdir, args.processes, record=False)  # recorded once it runs
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
        except RuntimeError as exc:  # a crawl process failed; its own log says why
            print(f"lait crawl: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            hint = f"rerun with --jobdir {args.jobdir} to continue" if args.jobdir else "complete shards are kept"
            print(f"crawl interrupted; {hint}")
            return 130
    print(f"crawl: in {stats['in']:,} = kept {stats['kept']:,} + rejected {stats['rejected']:,}  -> {args.out}")
    for reason, count in list(stats["rejected_by_reason"].items())[:12]:
        print(f"  {count:>8,}  {reason}")
    return 0
