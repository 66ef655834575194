"""Filter-stage throughput: the Beam pipeline on the local runner against a plain Python loop.

Both apply the same filters (``filters.rules.RuleFilters`` then ``filters.dedup.deduplicate``) to
the same generated candidates, read from and written to Parquet, in the same process. Prints
records/s of each, the pipeline/loop ratio (target >= 0.5), 1 vs 2 workers, and language ID
captions/s (target >= 20,000). ``--near-duplicates`` times the comparison of one crowded band bucket
against its plain-loop definition instead.

    PYTHONPATH=. python benchmarks/bench_filter.py [--n 50000] [--distinct-images 2000] [--out benchmarks/out]
    PYTHONPATH=. python benchmarks/bench_filter.py --near-duplicates [--n 3000] [--distance 16]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import schemas  # noqa: E402
from filters.dedup import deduplicate, near_duplicates, near_duplicates_plain  # noqa: E402
from filters.rules import RuleConfig, RuleFilters  # noqa: E402
from filters.synthetic import make_candidates  # noqa: E402
from pipeline import filter as filter_stage  # noqa: E402


def generate(folder: str, n: int, distinct_images: int) -> float:
    """Write n synthetic candidates as Parquet shards; returns seconds taken."""
    start = time.perf_counter()
    rows = make_candidates(n, seed=42, distinct_images=distinct_images)
    with schemas.ShardWriter(os.path.join(folder, "candidates"), "candidates", rows_per_shard=5000,
                             row_group_size=1000) as writer:
        writer.write_many(rows)
    return time.perf_counter() - start


def plain_loop(crawl: str, out: str) -> dict:
    """The same filters without Beam: read batches, apply rules, dedup in memory, write shards."""
    rules = RuleFilters(RuleConfig())
    pairs, rejected, n_in = [], [], 0
    for batch in schemas.iter_batches(os.path.join(crawl, "candidates"), "candidates", batch_size=1000):
        for candidate in batch.to_pylist():
            n_in += 1
            pair, reject = rules.apply(candidate)
            if pair is not None:
                pairs.append(pair)
            else:
                rejected.append(reject)
    kept, dropped = deduplicate(pairs, max_images_per_caption=10, phash_distance=4)
    rejected += dropped
    with schemas.ShardWriter(os.path.join(out, "pairs"), "pairs", rows_per_shard=20000) as writer:
        writer.write_many(kept)
    with schemas.ShardWriter(os.path.join(out, "rejected"), "rejected", rows_per_shard=20000) as writer:
        writer.write_many(rejected)
    assert n_in == len(kept) + len(rejected)
    return {"in": n_in, "kept": len(kept), "rejected": len(rejected)}


def language_rate(crawl: str, limit: int = 20000) -> tuple[float, float, float]:
    """Captions/s of the language filter, caption only and with page evidence (pages shared as crawled),
    and of fastText alone on the same captions (the machine's reference speed)."""
    from filters.language import FastTextIdentifier, LanguageFilter
    from filters.text import normalize_text

    table = schemas.read_table(os.path.join(crawl, "candidates"), "candidates", columns=["alt", "page_lang", "page_text"])
    rows = [r for r in table.slice(0, limit).to_pylist() if r["alt"]]
    records = [{"caption": normalize_text(r["alt"]), "page_lang": r["page_lang"], "page_text": r["page_text"]}
               for r in rows]
    rates = []
    for use_page in (False, True):
        f = LanguageFilter(use_page=use_page)
        f.identifier.load()
        start = time.perf_counter()
        for record in records:
            f(record)
        rates.append(len(records) / (time.perf_counter() - start))
    fasttext = FastTextIdentifier()
    fasttext.predict("warm up")
    start = time.perf_counter()
    for record in records:
        fasttext.predict(record["caption"])
    return rates[0], rates[1], len(records) / (time.perf_counter() - start)


def near_duplicate_rates(n: int, distance: int) -> None:
    """Prints hashes/s of ``near_duplicates`` on one bucket of n hashes against the plain loop, and checks they agree."""
    import random
    rng = random.Random(0)
    centres = [rng.getrandbits(64) for _ in range(max(1, n // 50))]
    items = []
    for i in range(n):  # clusters of ~50 near copies: some within the distance, most not
        value = centres[i % len(centres)]
        for bit in rng.sample(range(64), rng.randint(0, 2 * distance + 2)):
            value ^= 1 << bit
        items.append((f"p{i:07d}", f"{value:016x}", (rng.random(), f"p{i:07d}")))
    plain, plain_s = timed(near_duplicates_plain, items, distance)
    blocked, blocked_s = timed(near_duplicates, items, distance)
    assert blocked == plain, "near_duplicates disagrees with its definition"
    print(f"near duplicates, one bucket of {n:,} hashes at distance {distance}: plain loop {plain_s:.2f} s, "
          f"numpy blocks {blocked_s:.3f} s ({plain_s / blocked_s:.0f}x), {len(plain):,} marked")


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="candidates to generate (default 50000)")
    parser.add_argument("--distinct-images", type=int, default=2000, help="distinct images among them (default 2000)")
    parser.add_argument("--out", default="benchmarks/out/filter", help="scratch folder (deleted first)")
    parser.add_argument("--language-only", action="store_true", help="generate, then measure language ID only")
    parser.add_argument("--near-duplicates", action="store_true",
                        help="time the near-duplicate comparison of one bucket of --n hashes (no pipeline)")
    parser.add_argument("--distance", type=int, default=16, help="bits, for --near-duplicates (default 16)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.near_duplicates:
        near_duplicate_rates(args.n, args.distance)
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    crawl = os.path.join(args.out, "crawl")
    gen = generate(crawl, args.n, args.distinct_images)
    print(f"generated {args.n:,} candidates ({args.distinct_images:,} distinct images) in {gen:.1f} s")

    lang_caption, lang_page, lang_fasttext = language_rate(crawl)
    print(f"language ID: {lang_caption:,.0f} captions/s caption only, {lang_page:,.0f} captions/s with page "
          f"evidence (fastText alone on the same captions: {lang_fasttext:,.0f}/s)")
    if args.language_only:
        return 0

    loop, loop_s = timed(plain_loop, crawl, os.path.join(args.out, "loop"))
    print(f"plain loop:          {loop_s:7.1f} s  {args.n / loop_s:8,.0f} records/s  kept {loop['kept']:,}")
    results = {}
    for workers, mode in ((1, "in_memory"), (2, "multi_processing")):
        out = os.path.join(args.out, f"beam{workers}")
        stats, seconds = timed(filter_stage.run, ["--input", crawl, "--output", out, "--runner", "DirectRunner",
                                                  f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"])
        assert stats["kept"] == loop["kept"], (stats["kept"], loop["kept"])
        results[workers] = seconds
        print(f"beam {workers} worker(s) {mode:<17}{seconds:7.1f} s  {args.n / seconds:8,.0f} records/s  "
              f"ratio to loop {loop_s / seconds:.2f}")
    print(f"ratio beam(1)/loop = {loop_s / results[1]:.2f} (target >= 0.5); "
          f"2 workers vs 1: {results[1] / results[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
