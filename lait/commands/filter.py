"""`lait filter`: the Beam filter stage (see pipeline/filter.py and docs/filter.md)."""
from __future__ import annotations

import argparse
import sys
import traceback

#: What a local Beam run (``--direct_running_mode multi_processing``) raises when one of its worker processes
#: died: killed, or by the kernel's out-of-memory killer.
WORKER_DIED_SIGNS = ("Channel closed prematurely", "Worker subprocess exited", "Socket closed")
WORKER_DIED = ("a Beam worker process died (killed, or out of memory); nothing was finished (no stats.json): "
               "rerun the same command")
#: A worker's own error, handed back as its traceback's text, that is bad input (exit status 2), not a bug.
BAD_INPUT_ERRORS = ("ValueError", "SchemaMismatchError", "FileNotFoundError", "FileExistsError", "OutputExistsError")


def run_failures() -> tuple[type[BaseException], ...]:
    """The errors ``failure_line`` reports: RuntimeError, and gRPC's when grpc is importable."""
    try:
        from grpc import RpcError
    except ImportError:
        return (RuntimeError,)
    return RuntimeError, RpcError


def failure_line(exc: BaseException) -> tuple[int, str]:
    """(exit status, one line) for a Beam run that failed with ``exc`` (one of ``run_failures``).

    In ``multi_processing`` mode an error raised in a worker reaches the driver as a RuntimeError holding the
    worker's traceback as text: its last line is the error (status 2 for bad input). A worker that died
    (``WORKER_DIED_SIGNS``, gRPC errors) left no output to keep: the line says to rerun (status 1).
    """
    text = str(exc).strip()
    lines = text.splitlines() or [type(exc).__name__]
    if "Traceback (most recent call last)" in text:
        name, _, message = lines[-1].partition(": ")
        if name.rsplit(".", 1)[-1] in BAD_INPUT_ERRORS:
            return 2, message
        return 1, lines[-1]
    if not isinstance(exc, RuntimeError) or any(sign in text for sign in WORKER_DIED_SIGNS):
        return 1, WORKER_DIED
    return 1, " ".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.options import add_filter_arguments

    parser = subparsers.add_parser(
        "filter",
        help="filter candidates into image-text pairs (language, text, image rules, dedup, aggregation)",
        description="Run the Beam filter stage: INPUT/candidates -> OUTPUT/{pairs,rejected,stats.json}. "
                    "Other Beam options go after '--', e.g. `-- --runner DataflowRunner --project P ...`.",
    )
    add_filter_arguments(parser)
    g = parser.add_argument_group("Beam")
    g.add_argument("--runner", default="DirectRunner", help="Beam runner (default DirectRunner, run locally)")
    g.add_argument("--direct_num_workers", type=int, default=1, help="local workers (default 1)")
    g.add_argument("--direct_running_mode", default="in_memory",
                   choices=("in_memory", "multi_threading", "multi_processing"), help="local mode (default in_memory)")
    g.add_argument("beam_args", nargs=argparse.REMAINDER, help="further Beam options, after '--'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.filter import run_with_args

    beam_args = [a for a in args.beam_args if a != "--"]
    beam_args = [f"--runner={args.runner}", f"--direct_num_workers={args.direct_num_workers}",
                 f"--direct_running_mode={args.direct_running_mode}"] + beam_args
    print(f"lait filter: {args.input} -> {args.output} on {args.runner} ...", file=sys.stderr, flush=True)
    try:
        stats = run_with_args(args, beam_args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # bad input or options; SchemaMismatchError is one
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except run_failures() as exc:  # a worker died, or a worker's error came back as text: one line (-v: all)
        if getattr(args, "verbose", 0):
            traceback.print_exc()
        status, line = failure_line(exc)
        print(f"error: {line}", file=sys.stderr)
        return status
    print(stats["funnel_table"])
    return 0
