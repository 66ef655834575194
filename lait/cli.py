"""The ``lait`` command line: one subcommand per stage.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; a subcommand is listed here only once it works.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys

from lait import __version__

# Order is the order of `lait --help`: the stages first, then the tools around them.
COMMAND_MODULES = [
    "lait.commands.crawl",
    "lait.commands.filter",
    "lait.commands.explain",
    "lait.commands.relevance",
    "lait.commands.features",
    "lait.commands.train",
    "lait.commands.eval",
    "lait.commands.import_captions",
    "lait.commands.demo",
    "lait.commands.report",
    "lait.commands.audit",
    "lait.commands.inspect",
]


def _crawl_hint(args: argparse.Namespace) -> str:
    """What rerunning an interrupted ``lait crawl`` does (docs/crawl.md, Resume)."""
    if getattr(args, "warc", None):
        if getattr(args, "files_per_part", 0):
            return "rerun the same command: the finished parts are skipped"
        return "rerun the same command: it replaces the partial WARC output and starts over"
    if getattr(args, "jobdir", None):
        return f"rerun with --jobdir {args.jobdir} to continue"
    return "complete shards are kept: rerun the same command, which skips the rows already written"


#: After Ctrl-C, what rerunning each command does (as docs/<stage>.md say); other commands just stop.
INTERRUPTED_HINTS = {
    "train": lambda args: "rerun the same command with --resume to continue from the last checkpoint",
    "filter": lambda args: "nothing was finished (no stats.json): rerun the same command, which clears the partial "
                           "output and starts over",
    "features": lambda args: "rerun the same command to resume: complete shards are skipped",
    "eval": lambda args: "nothing was written: rerun the same command",
    "crawl": _crawl_hint,
    "demo": lambda args: "rerun with --from STEP to reuse the outputs of the steps before STEP",
}


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser whose positional arguments may come between its options, as argparse's
    ``parse_known_intermixed_args`` takes them: ``lait explain "a" --min-words 2 "b"`` explains both captions (a
    plain parse stops the captions at the first option, and "b" is an unrecognized argument).

    Only a parser with a positional of a varying count (``*``, ``+``, ``?``) parses so; one with a positional
    that takes the rest (``lait filter``'s Beam options after ``--``) or a subcommand cannot, and parses as
    before, as do the others (a single positional is found among options anyway). Everything after ``--`` is
    positional, as in a plain parse (``lait explain -- "-not an option"``): it joins the ``*`` positional.
    """

    _intermixing = False  # while parse_known_intermixed_args runs (Python 3.11's calls parse_known_args twice)

    def _takes_intermixed(self) -> bool:
        positionals = self._get_positional_actions()
        return (any(action.nargs in ("*", "+", "?") for action in positionals)
                and not any(action.nargs in (argparse.REMAINDER, argparse.PARSER) for action in positionals))

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or not self._takes_intermixed():
            return super().parse_known_args(args, namespace)
        args = list(sys.argv[1:] if args is None else args)
        cut = args.index("--") if "--" in args else len(args)
        lists = [action for action in self._get_positional_actions() if action.nargs == "*"]
        if cut < len(args) and len(lists) != 1:  # no one list for what follows "--" to join: a plain parse
            return super().parse_known_args(args, namespace)
        # (argparse would read the arguments after "--" as options here, so they are set aside and joined after)
        self._intermixing = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args[:cut], namespace)
        finally:
            self._intermixing = False
        if cut < len(args):
            dest = lists[0].dest
            setattr(namespace, dest, [*(getattr(namespace, dest) or []), *args[cut + 1:]])
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lait",
        description="LAIT: web image-text pairs to ImageBERT pretraining data, and the ImageBERT trainer.",
    )
    parser.add_argument("--version", action="version", version=f"lait {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        return 1
    except KeyboardInterrupt:  # caught here only, once every context manager and finally below has cleaned up
        hint = INTERRUPTED_HINTS.get(args.command)
        print(f"lait {args.command}: interrupted" + (f"; {hint(args)}" if hint else ""), file=sys.stderr)
        return 130
    return int(result or 0)


def _stdout_closed() -> bool:
    """True when our reader went away (``lait inspect RUN | head``): stdout then points at devnull, so the
    interpreter's last flush does not print a second error, and the command stops quietly as Unix tools do.
    A broken pipe of something else (a child process) is not this, and stays an error."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))  # a pipe with no reader
    except (AttributeError, OSError, ValueError):  # no real stdout (captured, replaced): not a pipe of ours
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return closed

if __name__ == "__main__":
    sys.exit(main())
