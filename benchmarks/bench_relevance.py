"""Relevance scoring speed: the batched scorer against a naive per-pair baseline, in one process.

    PYTHONPATH=. python benchmarks/bench_relevance.py [--pairs 2000] [--beam] [--train 1500]

Baseline: one pair per forward pass, one thread, full-resolution JPEG decode (how a first
version would score). Contender: ``filters.relevance.load(model).score`` (batches of 256, two
decode threads, JPEG draft decoding). ``--beam`` also times the standalone Beam pipeline
(``pipeline.relevance.run``: Parquet in, ScoreRelevance + ThresholdRelevance, Parquet out);
``--train N`` times the default training recipe on N pairs. The model is randomly initialised:
scoring cost does not depend on the weights. It is an ensemble of ``--members`` models (default: what
``lait relevance train`` writes, ``TrainConfig.members``); a single model's scorer is timed beside it.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from filters.relevance import features as F  # noqa: E402
from filters.relevance import load  # noqa: E402
from filters.relevance.config import TrainConfig  # noqa: E402
from model.relevance import RelevanceConfig, RelevanceEnsemble, RelevanceModel, save_model  # noqa: E402
from tests.relevance.scenes import make_pairs  # noqa: E402


def _random_model(folder: str, members: int) -> str:
    torch.manual_seed(0)
    arch = RelevanceConfig(num_features=len(F.TEXT_FEATURES) + len(F.IMAGE_FEATURES))
    models = [RelevanceModel(arch) for _ in range(members)]
    save_model(models[0] if members == 1 else RelevanceEnsemble(models), folder,
               {"threshold": 0.5, "vocabulary": ["a", "red", "circle"]})
    return folder


def _baseline_score(scorer, pairs: list[dict]) -> np.ndarray:
    """One pair at a time, full decode then resize (no draft), one thread."""
    size = scorer.arch.image_size
    out = np.empty(len(pairs), dtype=np.float32)
    for i, pair in enumerate(pairs):
        with Image.open(io.BytesIO(pair["image_bytes"])) as img:
            pixels = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
        feats = np.concatenate([F.text_features(pair["caption"], scorer.vocabulary, scorer.tokenizer),
                                F.image_features(pixels, pair["width"], pair["height"])])
        tokens = F.subword_ids(pair["caption"], scorer.arch.num_buckets, scorer.arch.max_tokens, scorer.tokenizer)
        with torch.no_grad():
            out[i] = scorer.model(torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None],
                                  torch.from_numpy(tokens)[None], torch.from_numpy(feats)[None]).item()
    return out


def _timed(fn, *args):
    """Result, wall seconds and CPU seconds (all threads of this process) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    _timed.cpu = time.process_time() - cpu
    return result, time.perf_counter() - start


def _beam_rate(model_dir: str, pairs: list[dict], tmp: str) -> tuple[float, float]:
    """Pairs/s of the standalone Beam pipeline (Parquet in, Parquet out), net of its fixed start-up cost.

    Runs it on 20 pairs (fewer when there are under 40) and on all of them; the difference is the per-pair cost.
    """
    import schemas
    from pipeline.relevance import run

    small = min(20, max(1, len(pairs) // 2))
    times = []
    for label, n in (("small", small), ("all", len(pairs))):  # a folder each: a finished run's output is refused
        src = os.path.join(tmp, f"beam-in-{label}")
        schemas.write_table(schemas.to_table(pairs[:n], "pairs"), os.path.join(src, "part-0.parquet"), "pairs")
        start = time.perf_counter()
        run(["--input", src, "--output", os.path.join(tmp, f"beam-out-{label}"), "--model", model_dir,
             "--batch-size", "256", "--device", "CPU", "--runner=DirectRunner"])
        times.append(time.perf_counter() - start)
    return (len(pairs) - small) / (times[1] - times[0]), times[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="pairs to score (default 2000)")
    parser.add_argument("--image-height", type=int, default=200, help="scene height in px (default 200)")
    parser.add_argument("--beam", action="store_true", help="also time ScoreRelevance on the DirectRunner")
    parser.add_argument("--train", type=int, default=0, help="also time training on this many pairs")
    parser.add_argument("--members", type=int, default=TrainConfig().members,
                        help=f"models in the scored ensemble (default {TrainConfig().members}, as lait relevance train)")
    args = parser.parse_args(argv)

    pairs = make_pairs(max(1, args.pairs // 4), images_per_page=4, seed=11, size=args.image_height)[: args.pairs]
    print(f"torch threads: {torch.get_num_threads()}, cpus visible: {os.cpu_count()}, "
          f"load average: {os.getloadavg()[0]:.1f}")
    print(f"{len(pairs)} pairs, JPEG ~{np.mean([len(p['image_bytes']) for p in pairs]) / 1024:.1f} KiB, "
          f"{pairs[0]['width']}x{pairs[0]['height']} px and similar")
    with tempfile.TemporaryDirectory() as tmp:
        scorer = load(_random_model(os.path.join(tmp, "model"), args.members))
        single = load(_random_model(os.path.join(tmp, "single"), 1))
        scorer.score(pairs[:64])  # warm-up: thread pools, lazy inits
        single.score(pairs[:64])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a per-pair forward gains nothing from intra-op threads
        base_scores, base_s = _timed(_baseline_score, scorer, pairs)
        torch.set_num_threads(threads)
        scores, fast_s = _timed(scorer.score, pairs)
        fast_cpu = _timed.cpu
        _, single_s = _timed(single.score, pairs)
        single_cpu = _timed.cpu
        print(f"{args.members} member(s):")
        print(f"baseline (per pair, full decode): {len(pairs) / base_s:8.0f} pairs/s  ({base_s:.2f} s)")
        print(f"scorer.score (batched, draft)   : {len(pairs) / fast_s:8.0f} pairs/s  ({fast_s:.2f} s)")
        print(f"scorer.score, a single model    : {len(pairs) / single_s:8.0f} pairs/s  ({single_s:.2f} s; "
              f"CPU {single_cpu / len(pairs) * 1e6:.0f} us/pair)")
        # On a shared machine the wall rate depends on the neighbours; CPU time per pair does less.
        print(f"scorer.score CPU time: {fast_cpu / len(pairs) * 1e6:.0f} us/pair -> "
              f"{2 * len(pairs) / fast_cpu:.0f} pairs/s if 2 cores were ours alone")
        print(f"ratio: {base_s / fast_s:.2f}x; max score difference {np.abs(scores - base_scores).max():.4f} "
              "(draft decoding changes pixels slightly)")
        if args.beam:
            rate, fixed = _beam_rate(scorer.model_dir, pairs, tmp)
            print(f"Beam pipeline (DirectRunner)    : {rate:8.0f} pairs/s after a fixed {fixed:.1f} s start-up")
        if args.train:
            from filters.relevance.train import train

            rows = make_pairs(max(1, args.train // 4), seed=12, size=args.image_height)
            summary, train_s = _timed(train, rows, os.path.join(tmp, "trained"))
            print(f"training (default recipe, {summary['pairs']} pairs, {summary['trained_on']} trained on): "
                  f"{train_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
