"""Benchmark: reading LAIT's Parquet files written with pyarrow's default encoding against LAIT's.

pyarrow (and Beam's Parquet sink) dictionary-encode every column by default; ``schemas.write_table``
and ``pipeline.parquet_beam.WriteToParquet`` dictionary-encode only the string columns
(``schemas.dictionary_columns``). The same tables are written both ways in one process and read back
(a whole row group, as the training loader and the features stage read them), best of three::

    python benchmarks/bench_parquet.py

``--pages`` compares page layouts of the ``image_bytes`` tables instead. pyarrow's writer checks the page size
only every ``write_batch_size`` values (1,024 by default), so a 1,024-row group of 200 kB images is one page of
200 MB, and a reader decompresses a page whole. Each layout writes the same tables (2 x 1,024 rows of 200 kB
random bytes, then of small real JPEGs) and reads them back whole (``read_row_group``, through a file handle
as the filter does, ``pq.read_table``, ``ParquetDataset``, ``schemas.read_table``), layouts in turn, best of
``--repeats``; then it streams each file (``iter_batches`` of 16 rows, no pre-buffering, 4 MiB reads, as
``pipeline.features.RowGroupStream`` does) and reads it whole, each in a fresh process, for Arrow's peak memory::

    python benchmarks/bench_parquet.py --pages --repeats 5

``--beam-row-group`` measures one work item of the features stage's Beam form (``pipeline.features_beam.ReadRowGroupsFn``:
one row group's ``image_id`` + ``image_bytes`` rows, taken one by one as Beam hands them on), streamed as it reads
now (``RowGroupStream``, batches of ``piece_size(--batch-size)`` rows) against the group read whole as it read
before (``read_row_group``, then all its rows as Python objects). One row group of ``--images`` (256) rows of
``--image-kb`` (100) kB random bytes, written by ``schemas.write_table`` (pages of 64 rows) and in one page (files
written before pages of 64). Memory: each way in a fresh process, Arrow's peak and the rise of the peak resident
size; speed: ways in turn in this process, best of ``--repeats``::

    python benchmarks/bench_parquet.py --beam-row-group --repeats 5
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_io import reset_peak_rss, resident_mb as _resident_mb, write_json  # noqa: E402  (this folder: the script's own)

import schemas  # noqa: E402
from model.synthetic import write_synthetic  # noqa: E402


def pairs_table(n: int, seed: int = 0, sizes: tuple[int, int] = (20_000, 80_000), images: list[bytes] | None = None):
    """``n`` pairs with JPEG-sized random image bytes (``sizes``, 20-80 kB), or the JPEGs ``images``."""
    rng = np.random.default_rng(seed)
    if images is None:
        images = [rng.integers(0, 255, int(rng.integers(*sizes)), dtype=np.uint8).tobytes() for _ in range(n)]
    rows = [{"pair_id": f"p{i}", "candidate_id": f"c{i}", "image_id": f"{i:064x}", "caption": f"caption {i}",
             "text_source": "alt", "page_url": f"http://127.0.0.1/{i // 10}.html", "image_url": f"http://127.0.0.1/{i}.jpg",
             "image_bytes": images[i], "image_width": 640, "image_height": 480, "lang": "en"} for i in range(n)]
    return schemas.to_table(rows, "pairs")


def small_jpegs(n: int, seed: int = 0, size: tuple[int, int] = (128, 96)) -> list[bytes]:
    """``n`` distinct small JPEGs (PIL, quality 85): smooth colour fields with a little noise, a few kB each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-8, 8, (size[1], size[0], 3))
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def time_read(path: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        pq.ParquetFile(path).read_row_group(0)
        best = min(best, time.perf_counter() - start)
    return best


#: The layouts ``--pages`` compares: pyarrow writer options over LAIT's (zstd, 1,024-row groups, dictionary on the
#: strings). The first is what ``schemas.write_table`` writes; the last changes the row groups, not the pages.
PAGE_LAYOUTS = {
    "one page per 1,024 values": {},
    "write_batch_size=16": {"write_batch_size": 16},
    "write_batch_size=64": {"write_batch_size": 64},
    "max_rows_per_page=16": {"max_rows_per_page": 16},
    "row_group_size=64": {"row_group_size": 64},
}


def _whole_reads(path: str) -> dict:
    """The ways LAIT's stages read a file whole, each a function of no arguments."""
    def row_groups():
        parquet = pq.ParquetFile(path)
        return [parquet.read_row_group(g) for g in range(parquet.num_row_groups)]

    def row_groups_from_handle():  # pipeline.filter.ReadRowGroupsDoFn: a Python file object (Beam's FileSystems)
        with open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            return [parquet.read_row_group(g) for g in range(parquet.num_row_groups)]

    return {"read_row_group": row_groups, "read_row_group (file handle)": row_groups_from_handle,
            "pq.read_table": lambda: pq.read_table(path), "ParquetDataset": lambda: pq.ParquetDataset(path).read(),
            "schemas.read_table": lambda: schemas.read_table(path)}


def _arrow_peak(path: str, streamed: bool) -> float:
    """Arrow's peak memory (MB) reading ``path``'s ``image_id`` + ``image_bytes`` a row group at a time, keeping
    nothing: streamed in batches of 16 rows (no pre-buffering, 4 MiB reads: ``pipeline.features.RowGroupStream``)
    or each group whole (``read_row_group``). Run in a fresh process: the pool's peak cannot be reset."""
    columns = ["image_id", "image_bytes"]
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=4 << 20) if streamed else pq.ParquetFile(path)
    before = pa.total_allocated_bytes()
    for group in range(parquet.num_row_groups):
        if streamed:
            for _ in parquet.iter_batches(batch_size=16, row_groups=[group], columns=columns):
                pass
        else:
            parquet.read_row_group(group, columns=columns)
    return round((pa.default_memory_pool().max_memory() - before) / 2**20, 1)


def page_layouts(folder: str, tables: dict, repeats: int, row_group_size: int = 1024) -> dict:
    """Each of ``PAGE_LAYOUTS`` on each table: file size, write and whole-read times (layouts in turn, best of
    ``repeats``; ratios against the first layout, above 1 = slower), and Arrow's peak reading the file streamed
    and whole."""
    results = {}
    for kind, table in tables.items():
        paths = {name: os.path.join(folder, f"{kind}-{i}.parquet") for i, name in enumerate(PAGE_LAYOUTS)}
        encoding = {"compression": "zstd", "row_group_size": row_group_size,
                    "use_dictionary": schemas.dictionary_columns(table.schema)}
        ways = list(_whole_reads(paths[next(iter(PAGE_LAYOUTS))]))
        best = {name: dict.fromkeys(["write"] + ways, float("inf")) for name in PAGE_LAYOUTS}
        for _ in range(repeats):
            for name, options in PAGE_LAYOUTS.items():
                start = time.perf_counter()
                pq.write_table(table, paths[name], **{**encoding, **options})
                best[name]["write"] = min(best[name]["write"], time.perf_counter() - start)
        for _ in range(repeats):
            for name in PAGE_LAYOUTS:
                for way, read in _whole_reads(paths[name]).items():
                    start = time.perf_counter()
                    read()
                    best[name][way] = min(best[name][way], time.perf_counter() - start)
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # a fresh process a task
            peaks = {name: {way: pool.apply(_arrow_peak, (path, way == "streamed")) for way in ("streamed", "whole")}
                     for name, path in paths.items()}
        base = next(iter(PAGE_LAYOUTS))
        results[kind] = {name: {
            "mb": round(os.path.getsize(paths[name]) / 1e6, 3),
            "size_ratio": round(os.path.getsize(paths[name]) / os.path.getsize(paths[base]), 5),
            "ms": {k: round(v * 1e3, 1) for k, v in best[name].items()},
            "time_ratio": {k: round(v / best[base][k], 3) for k, v in best[name].items()},
            "arrow_peak_mb": peaks[name]} for name in PAGE_LAYOUTS}
        print(f"{kind}: {table.num_rows} rows, {table.column('image_bytes').nbytes / 1e6:.0f} MB of image_bytes")
        print(f"  {'layout':<26} {'MB':>9} {'size':>8} " + " ".join(f"{k[:20]:>20}" for k in ["write"] + ways)
              + f" {'Arrow peak, streamed / whole':>29}")
        for name, row in results[kind].items():
            print(f"  {name:<26} {row['mb']:>9.3f} {row['size_ratio']:>8.5f} "
                  + " ".join(f"{row['ms'][k]:>10.1f} ({row['time_ratio'][k]:.3f})" for k in ["write"] + ways)
                  + f" {row['arrow_peak_mb']['streamed']:>11.1f} / {row['arrow_peak_mb']['whole']:.1f} MB")
    return results


def _whole_row_group_rows(dataset: str, file: str, group: int):
    """``ReadRowGroupsFn.process`` before it streamed (the baseline of ``--beam-row-group``): the group read whole,
    the file opened with pyarrow's defaults, then all its rows as Python objects."""
    from pipeline.features import INPUT_COLUMNS, _open_parquet

    yield from _open_parquet(dataset, file).read_row_group(group, columns=INPUT_COLUMNS).to_pylist()


def _beam_rows(way: str, file: str, batch_size: int):
    """One work item's rows, ``streamed`` (``ReadRowGroupsFn`` as the pipeline builds it) or ``whole`` (before)."""
    from pipeline.features import piece_size
    from pipeline.features_beam import ReadRowGroupsFn

    dataset = os.path.dirname(file)
    if way == "streamed":
        return ReadRowGroupsFn(dataset, piece_size(batch_size)).process((file, 0))
    return _whole_row_group_rows(dataset, file, 0)


def _beam_work_item_memory(way: str, file: str, batch_size: int) -> dict:
    """One work item read ``way`` in a fresh process, each row dropped as the next comes (as Beam hands it on):
    Arrow's peak over what it held before, and the rise of the peak resident size (``VmHWM``, reset first)."""
    import importlib

    importlib.import_module("pipeline.features_beam")  # Beam and torch imported before the marks are taken

    reset = reset_peak_rss()
    rss, arrow = _resident_mb(), pa.total_allocated_bytes()
    rows = nbytes = 0
    for row in _beam_rows(way, file, batch_size):
        rows, nbytes = rows + 1, nbytes + len(row["image_bytes"])
    return {"arrow_peak_mb": round((pa.default_memory_pool().max_memory() - arrow) / 2**20, 1),
            "peak_rss_growth_mb": round(_resident_mb("VmHWM") - rss, 1), "peak_reset": reset,
            "rows": rows, "image_mb": round(nbytes / 2**20, 1)}


def beam_work_item(folder: str, images: int, image_kb: int, batch_size: int, repeats: int) -> dict:
    """``--beam-row-group``: one work item of the Beam form, streamed (now) against whole (before), on one row group
    as ``schemas.write_table`` writes it and in one page; see the module's docstring."""
    table = pairs_table(images, sizes=(image_kb * 900, image_kb * 1100))
    files = {"as_lait_writes (pages of 64)": os.path.join(folder, "lait", "part-00000.parquet"),
             "one page a group (before pages of 64)": os.path.join(folder, "one-page", "part-00000.parquet")}
    schemas.write_table(table, files["as_lait_writes (pages of 64)"], "pairs", row_group_size=images)
    os.makedirs(os.path.dirname(files["one page a group (before pages of 64)"]))
    pq.write_table(table, files["one page a group (before pages of 64)"], row_group_size=images, compression="zstd",
                   use_dictionary=schemas.dictionary_columns(table.schema))
    ways = ("whole", "streamed")
    results = {}
    print(f"one row group of {images} rows of ~{image_kb} kB ({table.column('image_bytes').nbytes / 2**20:.1f} MB of "
          f"image_bytes); streamed in batches of piece_size({batch_size}); best of {repeats} for speed")
    print(f"  {'file':<38} {'Arrow peak, whole / streamed':>30} {'peak RSS rise, whole / streamed':>33} "
          f"{'ms, whole / streamed (speed ratio)':>36}")
    for label, file in files.items():
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # a fresh process a task
            memory = {way: pool.apply(_beam_work_item_memory, (way, file, batch_size)) for way in ways}
        best = dict.fromkeys(ways, float("inf"))
        for _ in range(repeats):
            for way in ways:
                start = time.perf_counter()
                for _row in _beam_rows(way, file, batch_size):
                    pass
                best[way] = min(best[way], time.perf_counter() - start)
        results[label] = {**memory, "ms": {way: round(best[way] * 1e3, 1) for way in ways},
                          "speed_ratio": round(best["whole"] / best["streamed"], 2)}
        m = {way: memory[way] for way in ways}
        print(f"  {label:<38} {m['whole']['arrow_peak_mb']:>13.1f} / {m['streamed']['arrow_peak_mb']:<6.1f} MB "
              f"{m['whole']['peak_rss_growth_mb']:>16.1f} / {m['streamed']['peak_rss_growth_mb']:<6.1f} MB "
              f"{best['whole'] * 1e3:>16.1f} / {best['streamed'] * 1e3:.1f} ms ({results[label]['speed_ratio']:.2f}x)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="rows of each table (default 256; --pages: 2,048)")
    parser.add_argument("--pages", action="store_true", help="compare page layouts of image_bytes tables instead")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--pages, --beam-row-group: best of this many, layouts or ways in turn")
    parser.add_argument("--beam-row-group", action="store_true",
                        help="one work item of the features stage's Beam form, streamed against read whole")
    parser.add_argument("--image-kb", type=int, default=100, help="--beam-row-group: kB per image (+-10%%)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="--beam-row-group: the features --batch-size (rows streamed: a piece of it)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.beam_row_group:
        with tempfile.TemporaryDirectory() as folder:
            write_json(args.json, beam_work_item(folder, args.images or 256, args.image_kb, args.batch_size,
                                                 args.repeats))
        return 0
    if args.pages:
        n = args.images or 2048
        with tempfile.TemporaryDirectory() as folder:
            tables = {"random_200kB": pairs_table(n, sizes=(180_000, 220_000)),
                      "small_jpegs": pairs_table(n, images=small_jpegs(n))}
            write_json(args.json, page_layouts(folder, tables, args.repeats))
        return 0
    args.images = args.images or 256
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
