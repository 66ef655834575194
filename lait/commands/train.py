"""`lait train --config FILE`: multi-stage ImageBERT pretraining, then retrieval fine-tuning."""
from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train ImageBERT: the configured pretraining stages in order, then retrieval fine-tuning",
        description="Train ImageBERT from regions + captions datasets as a YAML config describes (see docs/train.md). "
                    "Under torchrun the same options run DDP: torchrun --nproc_per_node N -m model.train --config ...",
    )
    from model.config import add_train_arguments  # no torch import: `lait --help` stays fast

    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.train import run_reported

    # bad config, data, checkpoint or path: one line, status 2 (the native `python -m model.train` says the same)
    status, summary = run_reported(args, "lait train")
    if summary is None:
        return status
    if int(os.environ.get("RANK", "0")):  # under torchrun the first process reports
        return 0
    for stage in summary["stages"]:
        if stage.get("done_before_resume"):
            loss = "(no figures: an older checkpoint)" if stage.get("final_loss") is None else f"loss {stage['final_loss']:.4f}"
            print(f"{stage['name']:<16} {stage['kind']:<9} done before the resume  {loss}")
            continue
        print(f"{stage['name']:<16} {stage['kind']:<9} {stage['steps_run']:>6}/{stage['steps']} steps  "
              f"loss {stage['final_loss']:.4f}  {stage['samples_per_s']:,.0f} samples/s  {stage['seconds']:.1f} s")
    print(f"checkpoint: {summary['checkpoint']}")
    if "eval" in summary:
        from model.eval import format_table

        print(format_table(summary["eval"]))
    return 0
