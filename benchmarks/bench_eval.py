"""Benchmark: retrieval-eval scoring pairs/s with captions in length order against the given order.

``lait eval`` scores every (caption, image) pair image-major and trims each batch to its longest
caption and largest region count. With captions in the order they come (the baseline, how eval ran
before), a batch of a few hundred captions almost always holds one near the longest, so nearly every
batch pads to it; sorted shortest first, a batch's captions have about one length. Both orders run
here in one process, on the same synthetic test set whose caption lengths follow a web-caption-like
spread (the synthetic caption plus 0-30 words, most 2-8), with the same model. What matters is how
many batches one image's captions fill: Flickr30k's 1k test has 5,000 captions, 5 batches of 1,024;
the CPU default (240 captions, batches of 48) keeps that proportion::

    python benchmarks/bench_eval.py                         # CPU: a tiny model, 120 images x 240 captions
    python benchmarks/bench_eval.py --device cuda --preset base --images 2500 --batch-size 1024
    python benchmarks/bench_eval.py --device cuda --preset base --images 300 --batch-size 256 --compile --fp8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_io import write_json  # noqa: E402  (this folder: the script's own)

import schemas  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.eval import EvalSet, compile_shapes, score_pairs  # noqa: E402
from model.imagebert import ImageBert  # noqa: E402
from model.synthetic import write_synthetic  # noqa: E402
from model.tokenizer import train_wordpiece  # noqa: E402

PRESETS = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, feature_dim=256),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, feature_dim=256),
    "base": dict(feature_dim=2048),
}
FILLER = "a photo of the scene with some people and things seen from the street on a sunny day in town".split()


def varied_captions(folder: str, seed: int) -> None:
    """Rewrite the synthetic captions to web-like lengths: the original words plus 0-30 filler words."""
    import pyarrow as pa

    table = schemas.read_table(os.path.join(folder, "captions"), "captions")
    rng = np.random.default_rng(seed)
    extra = np.clip(rng.gamma(2.0, 2.5, table.num_rows).round().astype(int), 0, 30)
    texts = [text + " " + " ".join(FILLER[j % len(FILLER)] for j in range(n)) if n else text
             for text, n in zip(table.column("caption").to_pylist(), extra)]
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(texts))
    path = os.path.join(folder, "captions", "part-00000.parquet")
    os.remove(path)
    schemas.write_table(table, path, "captions")


def fp8_row(model: ImageBert, data: EvalSet, order: np.ndarray, pair_images: np.ndarray, args, device: torch.device,
            reference: torch.Tensor, results: dict, row, padded) -> None:
    """Time scoring as ``lait eval --precision fp8`` runs it (captions in ``order``), and how its ranking
    agrees with ``reference``'s (the same order's scores without float8): the ``fp8`` entry of ``results``. The
    model is untrained, so its scores lie close together and rounding reorders many of them: the correlation
    is a smoke check here (a trained model's is in ``tests/model/test_model_fp8.py``), the rate is the figure."""
    from model.eval import _calibrate_float8
    from model.fp8 import float8_encoder

    n_captions, n_images = data.shape
    pair_captions = np.tile(order, n_images)
    model.drop_compiled()
    amax = _calibrate_float8(model, data, pair_captions, pair_images, args.batch_size, device)
    with float8_encoder(model, amax):
        if args.compile:
            model.compile_trunk(dynamic=False)
        score_pairs(model, data, pair_captions[:args.batch_size], pair_images[:args.batch_size], args.batch_size,
                    device, True, fixed_shapes=args.compile)  # warm-up (compiles)
        start = time.perf_counter()
        flat = score_pairs(model, data, pair_captions, pair_images, args.batch_size, device, True,
                           fixed_shapes=args.compile)
        seconds = time.perf_counter() - start
    model.drop_compiled()
    matrix = torch.empty(n_images, n_captions)
    matrix[:, torch.from_numpy(order)] = flat.view(n_images, n_captions)
    ranks = lambda m: m.flatten().argsort().argsort().double()  # noqa: E731
    spearman = float(torch.corrcoef(torch.stack([ranks(matrix), ranks(reference)]))[0, 1])
    tokens = float(data.text_lengths.max()) if args.compile else padded(order)
    results["fp8"] = dict(row(seconds, tokens), compiled=args.compile, spearman_to_unquantised=round(spearman, 4))
    print(f"{'fp8':<10} {results['fp8']['pairs_per_s']:>12,.1f} pairs/s   {seconds:7.2f} s   captions shortest first"
          f"{', compiled for one shape' if args.compile else ''}; rank correlation with the unquantised scores "
          f"{spearman:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=120, help="test images")
    parser.add_argument("--batch-size", type=int, default=48,
                        help="pairs per scoring pass (default 48: 5 batches per image here, as 1,024 on Flickr30k's 5,000 captions)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="also time `lait eval --compile`'s way: the trunk compiled, every batch padded to one shape")
    parser.add_argument("--fp8", action="store_true",
                        help="also time `lait eval --precision fp8` (float8 encoder products, static scales calibrated on "
                             "a sample; compiled for one shape with --compile); Ada/Hopper GPUs or the CPU")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    shape = dict(PRESETS[args.preset])
    feature_dim = shape.pop("feature_dim")
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic(folder, images=args.images + 10, test_images=args.images, feature_dim=feature_dim,
                        background=28)
        varied_captions(folder, seed=0)
        texts = schemas.read_table(os.path.join(folder, "captions"), "captions").column("caption").to_pylist()
        tokenizer_json = train_wordpiece(texts, 400).to_str()
        config = ModelConfig(vocab_size=400, feature_dim=feature_dim, num_classes=30, max_text_len=40, max_regions=30,
                             **shape)
        torch.manual_seed(0)
        model = ImageBert(config).to(device).eval()
        data = EvalSet(os.path.join(folder, "regions"), os.path.join(folder, "captions"), "test", tokenizer_json,
                       config.max_text_len, config.max_regions, feature_dim)
    n_captions, n_images = data.shape
    lengths = data.text_lengths
    print(f"device {device}  preset {args.preset}  {n_captions} captions x {n_images} images = {n_captions * n_images:,} pairs"
          f"  caption tokens: mean {lengths.mean():.1f}, max {lengths.max()}  batch {args.batch_size}")
    pair_images = np.repeat(np.arange(n_images), n_captions)
    orders = {"given": np.arange(n_captions), "by_length": np.argsort(lengths, kind="stable")}
    results = {"device": str(device), "preset": args.preset, "pairs": n_captions * n_images,
               "caption_tokens_mean": round(float(lengths.mean()), 2), "caption_tokens_max": int(lengths.max())}
    def run(order: np.ndarray, fixed_shapes: bool = False) -> tuple[torch.Tensor, float]:
        """Score every pair image-major with captions in ``order``: an [image, caption] score matrix
        (captions back in their own order) and the seconds it took."""
        pair_captions = np.tile(order, n_images)
        start = time.perf_counter()
        flat = score_pairs(model, data, pair_captions, pair_images, args.batch_size, device, bf16,
                           fixed_shapes=fixed_shapes)
        seconds = time.perf_counter() - start
        matrix = torch.empty(n_images, n_captions)
        matrix[:, torch.from_numpy(order)] = flat.view(n_images, n_captions)
        return matrix, seconds

    def row(seconds: float, padded_tokens: float) -> dict:
        pairs = n_captions * n_images
        return {"pairs_per_s": round(pairs / seconds, 1), "seconds": round(seconds, 3),
                "padded_text_tokens_per_pair": round(padded_tokens, 2)}

    def padded(order: np.ndarray) -> float:
        """Text tokens per pair after trimming each batch to its longest caption."""
        tiled = lengths[np.tile(order, n_images)]
        return sum(int(tiled[s:s + args.batch_size].max()) * len(tiled[s:s + args.batch_size])
                   for s in range(0, len(tiled), args.batch_size)) / len(tiled)

    scores = {}
    score_pairs(model, data, np.tile(orders["given"], n_images)[:64], pair_images[:64], args.batch_size, device,
                bf16)  # warm-up (pairs as `run` makes them: fewer than 64 captions is fine)
    for name, order in [*orders.items(), *orders.items()]:  # each order twice, interleaved; the faster run counts
        matrix, seconds = run(order)
        if name not in results or seconds < results[name]["seconds"]:
            scores[name], results[name] = matrix, row(seconds, padded(order))
    for name in orders:
        print(f"{name:<10} {results[name]['pairs_per_s']:>12,.1f} pairs/s   {results[name]['seconds']:7.2f} s   "
              f"text tokens per pair after padding {results[name]['padded_text_tokens_per_pair']:.1f}")
    # The two orders pad batches to other lengths: in fp32 their scores agree to rounding, in bf16 to a few of its
    # steps (BERT-base: up to ~0.006). Recorded, and checked against the precision's tolerance; never fatal, so
    # that a GPU session keeps the sections after this one.
    difference = float((scores["by_length"] - scores["given"]).abs().max())
    tolerance = 3e-2 if bf16 else 1e-3
    results["max_abs_score_difference"] = round(difference, 6)
    results["ratio"] = round(results["by_length"]["pairs_per_s"] / results["given"]["pairs_per_s"], 3)
    agree = "same scores" if difference <= tolerance else f"SCORES DIFFER beyond {tolerance:g}"
    print(f"ratio by_length / given: {results['ratio']:.2f}x ({agree}: largest difference {difference:.2g}"
          f"{', bf16' if bf16 else ''})")

    write_json(args.json, results)  # after each section: a run stopped by a time limit keeps what it measured
    by_length = orders["by_length"]
    if args.compile:
        results["lait_eval_compile_shapes"] = compile_shapes(data, np.tile(by_length, n_images), pair_images,
                                                             args.batch_size)
        print(f"`lait eval --compile` would compile for {results['lait_eval_compile_shapes']} shapes on this set")
        # `lait eval --compile`: static shapes (the set's longest caption, largest region count), one compile
        model.compile_trunk(dynamic=False)
        score_pairs(model, data, np.tile(by_length, n_images)[:args.batch_size], pair_images[:args.batch_size],
                    args.batch_size, device, bf16, fixed_shapes=True)  # compiles
        _, seconds = run(by_length, fixed_shapes=True)
        results["compiled_fixed_shapes"] = row(seconds, float(lengths.max()))
        print(f"{'compiled':<10} {results['compiled_fixed_shapes']['pairs_per_s']:>12,.1f} pairs/s   {seconds:7.2f} s   "
              f"every batch padded to {lengths.max()} text tokens and the largest region count")
        write_json(args.json, results)
    if args.fp8:  # before the trimmed compile, the slowest to compile (over a minute for BERT-base on an H100)
        fp8_row(model, data, by_length, pair_images, args, device, scores["by_length"], results, row, padded)
        write_json(args.json, results)
    if args.compile:
        # Trimmed batches under compile: dynamo recompiles with the lengths symbolic (dynamic=None), then
        # every batch runs at its own length. One whole pass compiles every shape it needs; the second is timed.
        model.drop_compiled()
        model.compile_trunk()
        run(by_length)
        matrix, seconds = run(by_length)
        results["compiled_trimmed"] = dict(row(seconds, padded(by_length)), max_abs_score_difference_to_eager=round(
            float((matrix - scores["by_length"]).abs().max()), 5))
        print(f"{'compiled, trimmed':<10} {results['compiled_trimmed']['pairs_per_s']:>5,.1f} pairs/s   {seconds:7.2f} s   "
              f"captions shortest first, lengths symbolic "
              f"(scores within {results['compiled_trimmed']['max_abs_score_difference_to_eager']} of eager)")
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
