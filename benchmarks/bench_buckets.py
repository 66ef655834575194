"""Benchmark: pretraining samples/s with length buckets (``length_buckets``) against random batches.

Both runs are the real ``lait train`` path (``model.train.train``: streamed Parquet, masking, the four
pretraining tasks, AdamW), in one process, on one synthetic dataset whose images hold 2 to ``--max-regions``
regions (uniform, like bottom-up attention's adaptive 10-100 boxes) with captions of about 12 tokens. The
baseline is the paper's setting, random batches, each padded to its longest caption and region list (to
``max_text_len`` / ``max_regions`` when compiled); the variant batches examples of about one length and pads
to their bucket. Prints samples/s of each, the ratio, and the tokens a batch carries per sample::

    python benchmarks/bench_buckets.py                                  # CPU: a small model, eager
    python benchmarks/bench_buckets.py --device cuda --preset base --compile --steps 60   # a GPU, the product setting

The stage time includes starting the loader and, compiled, each bucket's first compile (one graph per
bucket shape): use enough steps that those amortise. Each way runs ``--repeats`` times, alternating,
and the best run counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_io import write_json  # noqa: E402  (this folder: the script's own)

from model.config import DatasetConfig, load_config, model_config_from_dict  # noqa: E402
from model.data import make_loader  # noqa: E402
from model.synthetic import write_synthetic  # noqa: E402
from model.train import train  # noqa: E402

PRESETS = {
    "base": dict(),  # BERT-base
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
}


def run_config(data: str, out: str, args: argparse.Namespace, buckets: list[int] | None) -> dict:
    dataset = {"regions": f"{data}/regions", "captions": f"{data}/captions", "split": "train"}
    model = dict(PRESETS[args.preset], max_text_len=40, max_regions=args.max_regions, dropout=0.1)
    return {
        "out_dir": out, "model": model, "tokenizer_vocab_size": 200, "seed": 0, "device": args.device,
        "compile": args.compile, "masking": "exact" if args.compile else "bernoulli", "length_buckets": buckets,
        "log_every": max(1, args.steps), "num_workers": args.workers, "shuffle_buffer": 4 * args.batch_size,
        "pretrain": [{"name": "pretrain", "datasets": [dataset], "steps": args.steps, "batch_size": args.batch_size,
                      "lr": 1e-4}],
    }


def tokens_per_sample(data: str, tokenizer_json: str, config, batch_size: int, buckets: list[int] | None,
                      fixed: bool, batches: int = 20) -> float:
    """Text + region positions a batch carries per sample (padding included), over ``batches`` batches."""
    loader = iter(make_loader([DatasetConfig(f"{data}/regions", f"{data}/captions", "train")], tokenizer_json, config,
                              batch_size, shuffle_buffer=4 * batch_size, fixed_shapes=fixed, length_buckets=buckets))
    total = 0
    for _ in range(batches):
        batch = next(loader)
        total += batch["input_ids"].shape[1] + batch["region_mask"].shape[1]
    return total / batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="compiled steps (masking: exact), as on a GPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--max-regions", type=int, default=100)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--buckets", type=int, nargs=2, default=[2, 4], metavar=("TEXT", "REGIONS"))
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the best counts")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    results: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                     "preset": args.preset, "compile": args.compile, "batch_size": args.batch_size,
                     "steps": args.steps, "buckets": args.buckets}
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "data")
        write_synthetic(data, images=args.images, feature_dim=args.feature_dim, background=args.max_regions - 2,
                        test_images=0)
        runs = [("random_batches", None), ("length_buckets", args.buckets)] * args.repeats
        for repeat, (name, buckets) in enumerate(runs):  # alternating, so neither gets the warmer machine
            out = os.path.join(folder, f"{name}-{repeat}")
            summary = train(load_config(base=run_config(data, out, args, buckets)), progress=False)
            stage = summary["stages"][0]
            if name in results and results[name]["samples_per_s"] >= stage["samples_per_s"]:
                print(f"{name:>15}: {stage['samples_per_s']:8.1f} samples/s (repeat)", flush=True)
                continue  # the best of the repeats counts
            with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as handle:
                tokenizer_json = handle.read()
            with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
                config = model_config_from_dict(json.load(handle)["model"])  # as trained, data sizes resolved
            results[name] = {"samples_per_s": stage["samples_per_s"], "seconds": stage["seconds"],
                             "tokens_per_sample": round(tokens_per_sample(
                                 data, tokenizer_json, config, args.batch_size, buckets, args.compile), 1)}
            print(f"{name:>15}: {stage['samples_per_s']:8.1f} samples/s  ({stage['seconds']:.1f} s for "
                  f"{args.steps} steps; {results[name]['tokens_per_sample']:.1f} positions per sample)", flush=True)
    ratio = results["length_buckets"]["samples_per_s"] / results["random_batches"]["samples_per_s"]
    results["ratio"] = round(ratio, 3)
    print(f"length buckets / random batches: {ratio:.2f}x on {results['device']}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
