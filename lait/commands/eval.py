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

    regions = args.regions or (data_regions(args.data) if args.data else None)
    captions = args.captions or (os.path.join(args.data, "captions") if args.data else None)
    if not regions or not captions:
        return _fail("give --data DIR, or both --regions and --captions")
    if not args.regions and "://" not in regions and not os.path.exists(regions):
        return _fail(f"--data {args.data}: neither {regions} nor {os.path.join(args.data, 'features', 'regions')} "
                     f"exists; add the regions with lait features --input {args.data} --output "
                     f"{os.path.join(args.data, 'features')}, or give --regions")
    for path in (args.checkpoint, regions, captions):
        if "://" not in path and not os.path.exists(path):
            return _fail(f"{path} does not exist")
    problem = _unwritable(args.out) or _an_input(args.out, args.checkpoint, regions, captions, args.data)
    if problem:  # checked before scoring, which can take hours
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
        _check_tokenizer(state["tokenizer"], args.checkpoint)
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


def data_regions(data: str) -> str:
    """The regions dataset of ``--data DIR``: ``DIR/regions``, else ``DIR/features/regions`` where only that exists
    (``model.data.resolve_dataset_dir``): the documented import flow (``lait import-captions --out DIR``, then
    ``lait features --input DIR --output DIR/features``) puts them there. ``DIR/regions`` when neither is there,
    for the message."""
    from model.data import resolve_dataset_dir

    found = resolve_dataset_dir(data, "regions")
    return found if found != data else os.path.join(data, "regions")


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


def _an_input(out: str, checkpoint: str, regions: str, captions: str, data: str | None) -> str | None:
    """Why ``out`` would replace what ``lait eval`` reads (``--out ck.pt`` replaced the checkpoint with JSON, ``--out
    DATA/captions/part-00000.parquet`` a captions shard), or None: it must not be the checkpoint, lie inside the
    regions or captions dataset, or, with ``--data DIR``, lie in a folder inside DIR or replace a file there
    other than an earlier eval.json (``demo.audit.out_problem``)."""
    from demo.audit import out_problem, within

    if os.path.exists(checkpoint) and os.path.realpath(out) == os.path.realpath(checkpoint):
        return f"it is the checkpoint {checkpoint} that eval reads"
    for name, path in (("regions", regions), ("captions", captions)):
        if "://" not in path and within(out, path):
            return f"it lies inside the {name} dataset {path} that eval reads"
    if data and "://" not in data and os.path.isdir(data):
        return out_problem(out, data, _is_eval_result, "the --data folder it reads", name="eval.json")
    return None


def _is_eval_result(path: str) -> bool:
    """Whether the file at ``path`` is an earlier eval.json (a JSON object with ``image_retrieval``)."""
    from demo.audit import read_own_json

    return read_own_json(path, ("image_retrieval",))


def _check_tokenizer(tokenizer_json: str, checkpoint: str) -> None:
    """A ValueError naming the checkpoint when its ``tokenizer`` is not a tokenizer's JSON: the tokenizers library
    says so with a bare ``Exception`` ("Model missing"), which was a traceback once scoring began."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # the library's only exception type
        raise ValueError(f"{checkpoint}: its tokenizer is not a tokenizer ({exc})") from None


def _fail(message) -> int:
    print(f"lait eval: {message}", file=sys.stderr)
    return 2
