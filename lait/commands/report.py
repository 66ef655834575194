"""`lait report DIR`: one self-contained HTML report of a run folder."""
from __future__ import annotations

import argparse

from demo import report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the subcommand's parser."""
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run: funnel, distributions, samples, boxes, losses, eval, audit",
        description=report.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    return report.run_cli(args)
