"""`lait relevance train|eval|score`: the learned image-text relevance filter."""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys

from filters.relevance.config import MAX_IMAGE_SIZE, TrainConfig
from lait.commands import count, non_negative, positive

_DEFAULTS = TrainConfig()

def finite(text: str) -> float:
    """An argparse ``type``: a finite number (a NaN cut would pass nothing and write invalid JSON)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def device(text: str) -> str:
    """An argparse ``type``: where the model runs, as ``"CPU"`` or ``"GPU"``, read by the scorer's own rule
    (``pipeline.relevance.device_request``: any case, ``cuda`` is GPU) that ``lait filter --relevance-device``
    values meet too. Imported here, only when the option is given: it pulls in Beam."""
    from pipeline.relevance import device_request

    try:
        return device_request(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU or GPU (any case; cuda is GPU), got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relevance",
        help="train, evaluate or apply the learned image-text relevance model",
        description="The learned image-text relevance filter: a weakly supervised scorer trained on pairs.",
    )
    sub = parser.add_subparsers(dest="relevance_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a relevance model on crawled pairs (weak supervision)",
                           description="Train on pairs: positives as crawled, negatives by re-pairing.")
    train.add_argument("--input", required=True, help="a filter output folder (with pairs/) or a pairs dataset")
    train.add_argument("--out", required=True, help="model folder to write (config.json + model.safetensors): new, "
                                                    "empty, or an earlier relevance model with --overwrite")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the relevance model in --out (once the new one is trained; a folder holding "
                            "anything else is never replaced)")
    train.add_argument("--epochs", type=positive, default=_DEFAULTS.epochs, help=f"default {_DEFAULTS.epochs}")
    train.add_argument("--batch-size", type=count(2), default=_DEFAULTS.batch_size,
                       help="pairs per step, 2 or more: the other pairs of a batch are its negatives "
                            f"(default {_DEFAULTS.batch_size})")
    train.add_argument("--lr", type=float, default=_DEFAULTS.lr, help=f"peak learning rate (default {_DEFAULTS.lr})")
    train.add_argument("--image-size", type=positive, default=_DEFAULTS.image_size,
                       help=f"side of the downscaled image the CNN sees, at most {MAX_IMAGE_SIZE} "
                            f"(default {_DEFAULTS.image_size})")
    train.add_argument("--max-pairs", type=count(2), default=_DEFAULTS.max_pairs,
                       help=f"train on at most this many pairs (default {_DEFAULTS.max_pairs})")
    train.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction,
                       help=f"share of pages held out to set the threshold (default {_DEFAULTS.val_fraction})")
    train.add_argument("--mismatch-cost", type=float, default=_DEFAULTS.mismatch_cost,
                       help="cost of keeping a mismatch relative to losing a true pair, used to set the "
                            f"threshold (1 = Youden's J; default {_DEFAULTS.mismatch_cost})")
    train.add_argument("--drop-rate", type=float, default=_DEFAULTS.drop_rate,
                       help=f"share of each batch's worst-fitting pairs ignored as likely noise (default {_DEFAULTS.drop_rate})")
    train.add_argument("--seed", type=non_negative, default=_DEFAULTS.seed, help=f"default {_DEFAULTS.seed}")
    train.add_argument("--members", type=positive, default=_DEFAULTS.members,
                       help="train this many models from consecutive seeds and save them as one ensemble that "
                            f"averages their scores: steadier cuts, N times the training (default {_DEFAULTS.members})")
    train.add_argument("--processes", type=positive, default=_DEFAULTS.processes,
                       help="members trained side by side, one process each, at most --members (default: one per "
                            "CPU core, up to --members; 1 trains them one after the other; the models are the same "
                            "either way)")
    train.set_defaults(func=run_train)

    ev = sub.add_parser("eval", help="ROC-AUC and mismatch precision/recall on a labelled pairs set",
                        description="LABELLED is a pairs dataset with a boolean is_match column.")
    ev.add_argument("--model", required=True, help="model folder, or clip:ARCH:WEIGHTS")
    ev.add_argument("--input", required=True, help="labelled pairs dataset (pairs columns + is_match)")
    ev.add_argument("--threshold", type=finite, default=None, help="cut to evaluate (default: the model's)")
    ev.add_argument("--json-out", default=None, help="also write the metrics to this JSON file")
    ev.add_argument("--batch-size", type=positive, default=256, help="scoring batch size (default 256)")
    ev.set_defaults(func=run_eval)

    score = sub.add_parser("score", help="score a pairs dataset in Beam and drop low-relevance pairs",
                           description="Runs pipeline.relevance (ScoreRelevance + ThresholdRelevance).")
    add_score_arguments(score)
    score.add_argument("--runner", default="DirectRunner", help="Beam runner (default DirectRunner)")
    score.set_defaults(func=run_score)


def _clear_errors(func):
    """Bad input (missing dataset, wrong schema, unlabelled set, damaged Parquet, an output that cannot be
    written) -> one line on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except Exception as exc:  # noqa: BLE001 - sorted below; anything else goes on as a traceback
            import pyarrow as pa  # (imported here: the CLI starts without it)

            # FileNotFoundError is an OSError, SchemaMismatchError a ValueError
            if not isinstance(exc, (OSError, ValueError, pa.ArrowException)):
                raise
            print(f"lait relevance {args.relevance_command}: error: {exc}", file=sys.stderr)
            return 2

    return wrapper


@_clear_errors
def run_train(args: argparse.Namespace) -> int:
    from pipeline.outputs import refuse_empty_paths  # an empty --input read every dataset under the current folder

    refuse_empty_paths(("--input", args.input, "the filter folder or pairs dataset to train on"),
                       ("--out", args.out, "the folder to write the model to"), optional=True)
    from filters.relevance.train import train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                         max_pairs=args.max_pairs, val_fraction=args.val_fraction, seed=args.seed,
                         mismatch_cost=args.mismatch_cost, drop_rate=args.drop_rate, members=args.members,
                         processes=args.processes)
    summary = train(args.input, args.out, config, progress=True, overwrite=args.overwrite)
    print(f"relevance model written to {args.out}")
    print(json.dumps(summary, indent=2))
    return 0


@_clear_errors
def run_eval(args: argparse.Namespace) -> int:
    from pipeline.outputs import refuse_empty_paths

    refuse_empty_paths(("--model", args.model, "the model folder, or clip:ARCH:WEIGHTS"),
                       ("--input", args.input, "the labelled pairs dataset to evaluate on"),
                       ("--json-out", args.json_out, "the JSON file to write the metrics to, or leave the option out"),
                       optional=True)  # (--json-out left out: None)
    from filters.relevance.evaluate import evaluate

    if args.json_out and os.path.isdir(args.json_out):
        raise ValueError(f"--json-out {args.json_out} is a folder: give a file name")
    metrics = evaluate(args.model, args.input, threshold=args.threshold, batch_size=args.batch_size, progress=True)
    # A metric with nothing to measure (no mismatches, nothing removed) is null, not NaN: NaN is not JSON.
    text = json.dumps(_json_safe(metrics), indent=2, allow_nan=False)
    print(text)
    if args.json_out:
        parent = os.path.dirname(os.path.abspath(args.json_out))
        os.makedirs(parent, exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


def _json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON null)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The scoring options, shared by `lait relevance score` and `python -m pipeline.relevance`."""
    parser.add_argument("--input", required=True, help="a filter output folder (with pairs/) or a pairs dataset")
    parser.add_argument("--output", required=True, help="output folder: pairs/, rejected/, stats.json")
    parser.add_argument("--model", required=True, help="LAIT relevance model folder, or clip:ARCH:WEIGHTS")
    cut = parser.add_mutually_exclusive_group()
    cut.add_argument("--threshold", type=finite, default=None, help="keep relevance >= this (default: the model's)")
    cut.add_argument("--keep-rate", type=float, default=None, help="keep this share of pairs instead")
    parser.add_argument("--batch-size", type=positive, default=64, help="RunInference batch size (default 64)")
    parser.add_argument("--device", type=device, default=None, metavar="{CPU,GPU}",
                        help="CPU or GPU, any case (cuda is GPU), as lait filter --relevance-device takes it "
                             "(default: GPU when present)")


@_clear_errors
def run_score(args: argparse.Namespace) -> int:
    from pipeline.relevance import run

    argv = ["--input", args.input, "--output", args.output, "--model", args.model,
            "--batch-size", str(args.batch_size), f"--runner={args.runner}"]
    if args.threshold is not None:
        argv += ["--threshold", str(args.threshold)]
    if args.keep_rate is not None:
        argv += ["--keep-rate", str(args.keep_rate)]
    if args.device:
        argv += ["--device", args.device]
    from pipeline.runners import failure_line, quiet_beam_tracebacks, run_failures

    try:
        with quiet_beam_tracebacks(verbose=getattr(args, "verbose", 0) > 0):
            summary = run(argv)
    except run_failures() as exc:  # a worker died, or a worker's error came back as text: one line, as lait filter
        status, line = failure_line(exc)
        print(f"lait relevance score: error: {line}", file=sys.stderr)
        return status
    print(f"relevance: kept {summary['kept']:,} of {summary['in']:,} pairs "
          f"(threshold {summary['threshold']}); stats in {os.path.join(args.output, 'stats.json')}")
    return 0
