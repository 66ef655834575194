"""`lait filter`: the Beam filter stage (see pipeline/filter.py and docs/filter.md)."""
from __future__ import annotations

import argparse
import sys
import traceback

from lait.commands import count

#: The Beam options ``lait filter`` takes before '--' (None when not given).
BEAM_OPTIONS = ("runner", "direct_num_workers", "direct_running_mode")


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
    g.add_argument("--runner", default=None, help="Beam runner (default DirectRunner, run locally)")
    g.add_argument("--direct_num_workers", type=count(0, "0 (one per CPU)"), default=None,
                   help="local workers, 0: one per CPU (default 1); local runner only")
    g.add_argument("--direct_running_mode", default=None, choices=("in_memory", "multi_threading", "multi_processing"),
                   help="local mode (default in_memory); local runner only")
    g.add_argument("beam_args", nargs=argparse.REMAINDER, help="further Beam options, after '--'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.filter import check_paths, run_with_args
    from pipeline.options import beam_options, runner_name
    from pipeline.runners import failure_line, quiet_beam_tracebacks, run_failures

    beam_args = [a for a in args.beam_args if a != "--"]
    # Only the Beam options given go to Beam (a remote runner refuses the local runner's, given at all); one given
    # both before and after '--' is refused rather than one of the two ignored.
    after = {arg.split("=", 1)[0] for arg in beam_args}
    own = {name: getattr(args, name) for name in BEAM_OPTIONS if getattr(args, name) is not None}
    twice = [f"--{name}" for name in own if f"--{name}" in after]
    if "runner" not in own and "--runner" not in after:
        own["runner"] = "DirectRunner"
    beam_args = [f"--{name}={value}" for name, value in own.items()] + beam_args
    try:
        check_paths(args.input, args.output)  # before the line below names them (run_with_args checks them too)
        if twice:
            raise ValueError(f"{twice[0]} is given both before and after '--': give it once")
        runner = runner_name(beam_options(beam_args, vars(args)))
        print(f"lait filter: {args.input} -> {args.output} on {runner} ...", file=sys.stderr, flush=True)
        with quiet_beam_tracebacks(verbose=getattr(args, "verbose", 0) > 0):  # the one line below says it
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
