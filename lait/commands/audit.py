"""`lait audit DIR`: check that every stage's books balance and every id downstream exists upstream."""
from __future__ import annotations

import argparse

from demo import audit


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the subcommand's parser."""
    parser = subparsers.add_parser(
        "audit",
        help="check a run folder: in = kept + rejected per stage, rows match stats, ids trace upstream",
        description=audit.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    return audit.run_cli(args)
