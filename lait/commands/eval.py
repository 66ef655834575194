"""`lait eval --checkpoint CKPT --data DIR`: image and sentence retrieval Recall@1/5/10 on a test split."""
from __future__ import annotations

import argparse
import os
import sys

from lait.commands import positive


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="retrieval Recall@1/5/10 (image and sentence retrieval) of a trained ImageBERT checkpoint",
        description="Score every (caption, image) pair of a split with ImageBERT's matching head and report "
                    "Recall@1/5/10 in both directions; writes eval.json and prints a table. Under torchrun "
                    "(torchrun --nproc_per_node N -m lait eval ...) the N processes score a share of the pairs each.",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by lait train (e.g. OUT/checkpoints/final.pt)")
    parser.add_argument("--data", help="folder holding regions/ and captions/")
    parser.add_argument("--regions", help="regions dataset (instead of --data)")
    parser.add_argument("--captions", help="captions dataset (instead of --data)")
    parser.add_argument("--split", default="test", help="captions split to evaluate (default test; 'all' for every row)")
    parser.add_argument("--out", default="eval.json", help="where to write the JSON result (default eval.json)")
    parser.add_argument("--batch-size", type=positive, default=512, help="pairs per forward pass (default 512)")
    parser.add_argument("--two-stage-k", type=positive, default=None, metavar="K",
                        help="pre-rank with single-modality embeddings, re-rank each query's top K with the "
                             "cross-encoder, the rest following in pre-rank order (default: score every pair)")
    parser.add_argument("--folds", type=positive, metavar="K",
                        help="split the images, in the captions' order, into K folds; rank each fold's captions "
                             "against its own images and report the mean (MSCOCO 1K test: --folds 5 on the 5K "
                             "test split imported from the Karpathy JSON)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32", "fp8"),
                        help="auto = bf16 on GPU, fp32 on CPU; fp8 = the encoder's matrix multiplies in float8, the "
                             "rest bf16 (Ada/Hopper GPUs; scores move slightly, check recall) (default auto)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the trunk: for one static shape (batches padded to the set's longest "
                             "caption and region count), or with symbolic lengths on trimmed batches when trimming "
                             "saves >= 15%% of the tokens; faster on large sets on a GPU; compiling takes a while")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from model.distributed import join_process_group, process_device
    from model.eval import evaluate, format_table, read_eval_captions, write_eval
    from model.train import model_from_checkpoint

    regions = args.regions or (os.path.join(args.data, "regions") if args.data else None)
    captions = args.captions or (os.path.join(args.data, "captions") if args.data else None)
    if not regions or not captions:
        return _fail("give --data DIR, or both --regions and --captions")
    for path in (args.checkpoint, regions, captions):
        if "://" not in path and not os.path.exists(path):
            return _fail(f"{path} does not exist")
    problem = _unwritable(args.out)  # checked before scoring, which can take hours
    if problem:
        return _fail(f"--out {args.out}: {problem}")
    try:
        device = process_device(args.device)
    except ValueError as exc:  # gpu, or cuda without one
        return _fail(exc)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, processes = join_process_group(device)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")  # fp8 implies it
    split = None if args.split == "all" else args.split
    try:
        # Read and checked before the model loads (which can take minutes): bad captions, or none in the split,
        # fail first; evaluate scores these, not a second read of them.
        eval_captions = read_eval_captions(captions, split)
        model, state = model_from_checkpoint(args.checkpoint)
        result = evaluate(model.to(device), state["tokenizer"], regions, eval_captions, split,
                          batch_size=args.batch_size, device=device,
                          bf16=bf16, two_stage_k=args.two_stage_k, progress=not args.no_progress,
                          compile=args.compile, fp8=args.precision == "fp8", folds=args.folds)
    except (ValueError, OSError) as exc:  # bad data or checkpoint, an unreadable file: one line
        return _fail(exc)
    finally:
        if processes > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank:  # under torchrun every process scores a share; the first one reports
        return 0
    result["checkpoint"] = args.checkpoint
    try:
        write_eval(result, args.out)
    except OSError as exc:
        print(format_table(result))
        return _fail(f"--out {args.out}: cannot write it ({exc.strerror or exc})")
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0


def _unwritable(path: str) -> str | None:
    """Why ``eval.json`` could not be written to ``path`` (a folder, under a file, a read-only folder), or None."""
    if os.path.isdir(path) or path.endswith(os.sep):
        return "a folder; give the file to write, e.g. " + os.path.join(path, "eval.json")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # write_eval makes the missing folders
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "not writable"
    return None


def _fail(message) -> int:
    print(f"lait eval: {message}", file=sys.stderr)
    return 2
