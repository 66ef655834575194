"""Benchmark: reading LAIT's Parquet files written with pyarrow's default encoding against LAIT's.

pyarrow (and Beam's Parquet sink) dictionary-encode every column by default; ``schemas.write_table``
and ``pipeline.parquet_beam.WriteToParquet`` dictionary-encode only the string columns
(``schemas.dictionary_columns``). The same tables are written both ways in one process and read back
(a whole row group, as the training loader and the features stage read them), best of three::

    python benchmarks/bench_parquet.py
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_io import write_json  # noqa: E402  (this folder: the script's own)

import schemas  # noqa: E402
from model.synthetic import write_synthetic  # noqa: E402


def pairs_table(n: int, seed: int = 0):
    """``n`` pairs with JPEG-sized random image bytes (20-80 kB)."""
    rng = np.random.default_rng(seed)
    rows = [{"pair_id": f"p{i}", "candidate_id": f"c{i}", "image_id": f"{i:064x}", "caption": f"caption {i}",
             "text_source": "alt", "page_url": f"http://127.0.0.1/{i // 10}.html", "image_url": f"http://127.0.0.1/{i}.jpg",
             "image_bytes": rng.integers(0, 255, int(rng.integers(20_000, 80_000)), dtype=np.uint8).tobytes(),
             "image_width": 640, "image_height": 480, "lang": "en"} for i in range(n)]
    return schemas.to_table(rows, "pairs")


def time_read(path: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        pq.ParquetFile(path).read_row_group(0)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="rows of each table")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic(os.path.join(folder, "synthetic"), images=args.images, feature_dim=2048, background=98,
                        test_images=0)
        regions = schemas.read_table(os.path.join(folder, "synthetic", "regions"), "regions")
        for kind, table in (("regions (float16 features, 2048-d)", regions), ("pairs (image bytes)", pairs_table(args.images))):
            paths = {}
            for name, dictionary in (("pyarrow default", True), ("lait", schemas.dictionary_columns(table.schema))):
                paths[name] = os.path.join(folder, f"{len(results)}-{name.replace(' ', '_')}.parquet")
                pq.write_table(table, paths[name], compression="zstd", use_dictionary=dictionary, row_group_size=4096)
            seconds = {name: time_read(path) for name, path in paths.items()}
            row = {name: {"read_ms": round(s * 1e3, 1), "rows_per_s": round(table.num_rows / s, 1),
                          "mb": round(os.path.getsize(paths[name]) / 1e6, 1)} for name, s in seconds.items()}
            row["ratio"] = round(seconds["pyarrow default"] / seconds["lait"], 2)
            results[kind] = row
            print(f"{kind:<36} {table.num_rows} rows   pyarrow default {row['pyarrow default']['read_ms']:8.1f} ms "
                  f"({row['pyarrow default']['mb']} MB)   lait {row['lait']['read_ms']:8.1f} ms ({row['lait']['mb']} MB)"
                  f"   {row['ratio']:.1f}x")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
