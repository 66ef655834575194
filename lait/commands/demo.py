"""`lait demo --out DIR`: the embedded default, from a generated website to retrieval scores and a report."""
from __future__ import annotations

import argparse
import os
import sys

from demo import run as demo_run
from lait.commands import positive


def _checked(name: str, cast: type):
    """An argparse ``type`` for the option ``name``: ``cast`` of the text, which ``demo.run.OPTION_RULES``
    must accept (the rule lait crawl and lait filter apply), else a one-line usage error."""
    ok, must_be = demo_run.OPTION_RULES[name]

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if cast is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {must_be}, got {text}")
        return value

    parse.__name__ = name
    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the subcommand's parser."""
    d = demo_run.DemoConfig()
    parser = subparsers.add_parser(
        "demo",
        help="crawl a generated local website and run every stage to R@1/5/10 and report.html (no internet, no GPU)",
        description=demo_run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=d.out, help=f"run folder: new, empty, or one lait demo made (default {d.out})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of the site, scenes and splits (default {d.seed})")
    parser.add_argument("--scenes", type=positive, default=d.scenes, help=f"good scene images on the site (default {d.scenes})")
    parser.add_argument("--test-scenes", type=positive, default=d.test_scenes,
                        help=f"held-out scenes for retrieval eval (default {d.test_scenes})")
    parser.add_argument("--detector-scenes", type=positive, default=d.detector_scenes,
                        help=f"scenes the demo detector trains on (default {d.detector_scenes})")
    parser.add_argument("--detector-epochs", type=positive, default=d.detector_epochs,
                        help=f"demo detector training epochs (default {d.detector_epochs})")
    parser.add_argument("--min-side", type=_checked("min_side", int), default=d.min_side,
                        help=f"min image side for crawl and filter (default {d.min_side}; scenes are 160-256 px)")
    parser.add_argument("--max-aspect", type=_checked("max_aspect", float), default=d.max_aspect,
                        help=f"max aspect ratio for crawl and filter (default {d.max_aspect})")
    parser.add_argument("--relevance-keep-rate", type=_checked("relevance_keep_rate", float),
                        default=d.relevance_keep_rate,
                        help=f"share of pairs the relevance filter keeps (default {d.relevance_keep_rate}; "
                             "0: the threshold the relevance model chose when it was trained)")
    parser.add_argument("--relevance-epochs", type=positive, default=d.relevance_epochs,
                        help=f"relevance model training epochs (default {d.relevance_epochs})")
    parser.add_argument("--relevance-members", type=positive, default=d.relevance_members,
                        help=f"relevance models averaged into one ensemble (default {d.relevance_members})")
    parser.add_argument("--relevance-image-size", type=positive, default=d.relevance_image_size,
                        help=f"image side the relevance model sees (default {d.relevance_image_size})")
    parser.add_argument("--train-config", default=d.train_config, help="trainer config (default configs/demo.yaml)")
    parser.add_argument("--stop-after", metavar="STEP", choices=demo_run.step_names(),
                        help="run the steps up to STEP only, then planted/audit/report (default: all)")
    parser.add_argument("--from", dest="start_from", metavar="STEP", choices=demo_run.step_names(),
                        help="rerun from STEP, reusing the outputs of the steps before it in --out; the options "
                             "those outputs follow must be the ones they were made with (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--serve", action="store_true", help="only serve the generated site on 127.0.0.1 until Ctrl-C")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    config = demo_run.DemoConfig(
        out=args.out, seed=args.seed, scenes=args.scenes, test_scenes=args.test_scenes,
        detector_scenes=args.detector_scenes, detector_epochs=args.detector_epochs, min_side=args.min_side,
        max_aspect=args.max_aspect, relevance_keep_rate=args.relevance_keep_rate,
        relevance_epochs=args.relevance_epochs, relevance_image_size=args.relevance_image_size,
        relevance_members=args.relevance_members, train_config=args.train_config,
        stop_after=args.stop_after, start_from=args.start_from)
    if args.serve:
        demo_run.serve(args.seed, args.scenes)
        return 0
    try:
        # --from after --stop-after, an --out that is a file or a folder of other data (with --from too): before
        # anything runs
        demo_run.check_from_out(config)
        demo_run.check_config(config)
        if not args.dry_run:
            try:
                os.makedirs(config.out, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"cannot make the run folder --out {config.out}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        print(f"lait demo: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for name, what in demo_run.plan(config):
            print(f"{name:<16} {what}")
        return 0
    try:
        return demo_run.run_demo(config)
    except ValueError as exc:  # raised before any step runs: the earlier run's files cannot be replaced
        print(f"lait demo: error: {exc}", file=sys.stderr)
        return 2
