"""Benchmark of the features stage: images/s end to end against model-only, in one process.

End to end = read Parquet, decode in DataLoader workers, detect, select boxes, write Parquet
(``pipeline.features.extract_regions`` with the detector already loaded). Model only = the same
detector call on images already decoded, resized and on the device. The ratio end-to-end /
model-only says whether the data path keeps the device busy (target >= 0.9). For coco-r50-fpn the
stock torchvision forward (its own transform and post-processing, no features) runs too, as a
reference for what region extraction costs on top.

    # the GPU run (defaults: batch 64, 480x640 scenes, full 600/1000 inputs and 300 proposals)
    python benchmarks/bench_features.py --device cuda --detectors vg-r101-c4 coco-r50-fpn
    # a CPU smoke run at reduced input size
    python benchmarks/bench_features.py --device cpu --images 8 --batch-size 4 --min-size 240 --max-size 400 --proposals 50
    # reading alone (no detector): what 8 DataLoader workers read of 1,024-row groups, pieces taken in blocks
    # against every n-th piece (the data path before), in one process
    python benchmarks/bench_features.py --reading-only --images 4096 --row-group-size 1024 --num-workers 8
    # a worker's memory: one worker's share (of 14, every n-th piece) streamed against read as whole row groups,
    # peak RSS in a fresh process each, and the reading speed of both in this one; on the files lait writes and
    # on the same rows in pages of 16
    python benchmarks/bench_features.py --reading-memory --images 2048 --row-group-size 1024 --num-workers 14 --repeats 3

``--row-group-size`` sets the row groups of the input it writes (default: 4 batches; the pipeline's
own files have 1,024-row groups, the demo's filter output one group); every run reports the reading
figures too (``reading``: images/s per worker, row-group reads, workers per group, read amplification).
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_io import reset_peak_rss, resident_mb as _resident_mb, write_json  # noqa: E402  (this folder: the script's own)

import schemas  # noqa: E402
from model.detectors import BoxSelection, build_detector  # noqa: E402
from model.detectors.images import decode_for_detector  # noqa: E402
from pipeline.features import (INPUT_COLUMNS, READ_WINDOW_IMAGES, FeatureOptions, ShardImages, _open_parquet,  # noqa: E402
                               extract_regions, piece_size, plan_shards, worker_pieces)


# Inference rewrites the benchmark can compare (``RegionDetector.optimize_for`` keywords).
VARIANTS = {
    "default": dict(),  # what optimize_for picks for the device (lait features' setting)
    "plain": dict(fuse=False, batched_rpn_nms=False),
    "fused": dict(fuse=True, batched_rpn_nms=False),
    "fused+parity": dict(fuse=True, dilated_as_batch=True, batched_rpn_nms=False),
    "fused+rpn": dict(fuse=True, batched_rpn_nms=True),
    "rpn-compiled": dict(batched_rpn_nms=True, compile_nms=True),  # the default with the RPN's NMS steps compiled
    "rpn-kernel": dict(batched_rpn_nms=True, nms_kernel=True),  # the default with the RPN's NMS as one Triton kernel
}


def scene_jpeg(seed: int, width: int, height: int) -> bytes:
    """A photo-sized JPEG with a few coloured shapes on noise (JPEG decode cost like a real photo)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        w, h = int(rng.integers(40, width // 3)), int(rng.integers(40, height // 3))
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


#: Aspect ratios (width / height) of web photos and their shares, for ``--aspect-mix``: the common camera and
#: screen formats both ways, and a tail of arbitrary crops (drawn log-uniformly between 1:2 and 2:1).
WEB_ASPECTS = ((4 / 3, 0.30), (3 / 2, 0.15), (16 / 9, 0.15), (1.0, 0.12), (3 / 4, 0.10), (2 / 3, 0.06),
               (9 / 16, 0.02), (None, 0.10))


def web_sizes(count: int, long_side: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` (width, height) pairs with a long side of ``long_side`` and web-like aspect ratios."""
    rng = np.random.default_rng(seed)
    ratios, weights = zip(*WEB_ASPECTS)
    sizes = []
    for pick in rng.choice(len(ratios), size=count, p=np.array(weights) / sum(weights)):
        ratio = ratios[pick] if ratios[pick] is not None else float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        width, height = (long_side, round(long_side / ratio)) if ratio >= 1 else (round(long_side * ratio), long_side)
        sizes.append((max(width, 120), max(height, 120)))
    return sizes


def trained_like_class_scores(detector, spread: float = 2.5, background: float = 4.0):
    """Shape a random-init detector's class logits like a trained detector's; returns the hook's handle.

    Random weights give near-uniform class probabilities: no (proposal, class) pair of vg's 1,600 classes
    clears the selection's 0.01 candidate floor, so box selection falls back to its exact pass over every
    pair (480,000 per image), and torchvision's ``batched_nms`` loops over the classes, one NMS and one
    read-back each. A trained detector's distributions are peaked: a few classes per proposal clear the
    floor, and selection runs one NMS per image. Standardising each row of logits to ``spread`` and adding
    ``background`` to the background column (the distribution ``bench_selection.py`` draws) puts a few
    thousand pairs per image above the floor, as trained weights do. It costs a few elementwise kernels.
    """
    def shape(module, inputs, logits):
        logits = logits.float()
        logits = (logits - logits.mean(dim=1, keepdim=True)) / logits.std(dim=1, keepdim=True).clamp_min(1e-6) * spread
        logits[:, 0] += background
        return logits

    return detector.model.roi_heads.box_predictor.cls_score.register_forward_hook(shape)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(detector, images: list[bytes], batch_size: int, selection: BoxSelection, repeats: int) -> tuple[float, dict]:
    """Images/s of the detector call alone (inputs decoded, resized, on the device), and ms per batch by part."""
    device = detector.device
    pixels = [decode_for_detector(data, detector.spec.input_size).pixels.to(device) for data in images]
    batches = [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]
    detector(batches[0], selection)  # warm-up: cuDNN autotuning, allocator
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            detector(batch, selection)
    _sync(device)
    rate = repeats * len(pixels) / (time.perf_counter() - start)
    timings: dict[str, float] = {}
    for batch in batches:  # a separate, synchronised pass: the split must not slow the timed one
        detector(batch, selection, timings=timings)
    split = {part: round(1000 * seconds / len(batches), 1) for part, seconds in timings.items()}
    return rate, split


def print_profile(detector, images: list[bytes], batch_size: int, selection: BoxSelection, top: int) -> None:
    """The ``top`` kernels (GPU) or ops (CPU) of one model-only batch, by own time."""
    from torch.profiler import ProfilerActivity, profile

    device = detector.device
    batch = [decode_for_detector(data, detector.spec.input_size).pixels.to(device) for data in images[:batch_size]]
    detector(batch, selection)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        detector(batch, selection)
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
    print(f"  profile of one batch of {len(batch)} (own time, top {top}):")
    for e in rows:
        print(f"  {getattr(e, attr, 0) / 1e3:8.2f} ms  {e.count:>5}x  {e.key[:90]}")
    if device.type == "cuda":  # the host side too: syncs (nonzero, .item(), NMS's mask copy) show up here
        host = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        print(f"  host time of the same batch (own CPU time, top {top}):")
        for e in host:
            print(f"  {e.self_cpu_time_total / 1e3:8.2f} ms  {e.count:>5}x  {e.key[:90]}")


def _fallbacks() -> list[str]:
    """The fused NMS paths that failed in this process and fell back to the plain steps (model.detectors.fusion)."""
    from model.detectors import fusion

    return [label for label, failed in (("nms_kernel", fusion._kernel_failed), ("nms_compiled", fusion._compile_failed))
            if failed]


def torchvision_stock(detector, images: list[bytes], batch_size: int, repeats: int) -> float:
    """Images/s of torchvision's own forward (transform + detections, no features) on the detector's model."""
    device = next(detector.model.parameters()).device
    tensors = [torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1).float().div(255).to(device)
               for d in images]
    model = detector.model
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        model(tensors[:batch_size])
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            for i in range(0, len(tensors), batch_size):
                model(tensors[i:i + batch_size])
        _sync(device)
    return repeats * len(tensors) / (time.perf_counter() - start)


def write_input(name: str, images: list[bytes], args, workdir: str) -> str:
    """The pairs dataset the end-to-end runs read (row groups of ``--row-group-size``, default 4 batches)."""
    rows = [{"pair_id": f"p{i}", "image_id": f"{i:08d}", "caption": "x", "image_bytes": data} for i, data in enumerate(images)]
    source = os.path.join(workdir, f"in-{name}")
    if not os.path.exists(source):
        schemas.write_table(schemas.to_table(rows, "pairs"), os.path.join(source, "pairs", "part-00000.parquet"), "pairs",
                            row_group_size=args.row_group_size or args.batch_size * 4)
    return source


class _Blocks(ShardImages):
    """``lait features --read-window 4096``: workers take blocks of pieces, so a row group is read by few of them
    (the default, every n-th piece, is the baseline)."""

    def worker_pieces(self, worker: int, workers: int) -> list[int]:
        return worker_pieces(len(self.pieces), worker, workers, self.piece, READ_WINDOW_IMAGES)


class _WholeGroups(ShardImages):
    """The read before ``RowGroupStream``: a worker reads a whole row group (``read_row_group``, the file opened with
    pyarrow's defaults) and keeps it for its pieces of it (the baseline of ``--reading-memory``)."""

    def _parquet(self, file: str) -> pq.ParquetFile:
        if self._file is None or self._file[0] != file:
            self._file = (file, _open_parquet(self.dataset, file))
        return self._file[1]

    def _rows(self, file: str, group: int, rows: list[int]) -> pa.Table:
        if self._group is None or self._group[0] != (file, group):
            self._group = None  # the previous group's memory goes before the next is read
            self._group = ((file, group), self._parquet(file).read_row_group(group, columns=INPUT_COLUMNS))
        return self._group[1].take(rows)


def _counting(kind: type[ShardImages]) -> type[ShardImages]:
    """``kind`` recording each row group it reads (streams or reads whole), ``((file, group), bytes)``, in
    ``self.reads``: the bytes are the group's input columns, uncompressed (a stream may stop short of its end)."""

    class Counting(kind):
        def _rows(self, file: str, group: int, rows: list[int]):
            cached = self._group
            table = super()._rows(file, group, rows)
            if self._group is not cached:  # not the group it kept: a read
                chunks = self._parquet(file).metadata.row_group(group)
                size = sum(chunks.column(i).total_uncompressed_size for i in range(chunks.num_columns)
                           if chunks.column(i).path_in_schema in INPUT_COLUMNS)
                self.reads.append(((file, group), size))
            return table

    return Counting


def _read_share(images: ShardImages, worker: int, workers: int) -> tuple[int, float]:
    """DataLoader worker ``worker`` of ``workers``' share of ``images`` read in this process, decoding stubbed out:
    (images, seconds)."""
    images.prepare = lambda data, size: None  # reading alone: no decode
    start = time.perf_counter()
    count = sum(len(images._decode(*images.pieces[i]).image_ids) for i in images.worker_pieces(worker, workers))
    return count, time.perf_counter() - start


def _share_memory(kind: type[ShardImages], dataset: str, shards, spec, piece: int, workers: int, window: int) -> dict:
    """Worker 0's share read by ``kind`` in a fresh process (run by ``reading_memory``): how far its peak resident
    memory rose over what it held before (``VmHWM``, reset first, as the imports' peak would hide the reading's;
    not ``ru_maxrss``, which keeps the parent's size from before the exec), Arrow's peak allocation, and images/s."""
    images = kind(dataset, shards, spec, piece, read_window=window)
    reset = reset_peak_rss()
    before = _resident_mb()
    count, seconds = _read_share(images, 0, workers)
    return {"peak_rss_growth_mb": round(_resident_mb("VmHWM") - before, 1),
            "peak_reset": reset, "arrow_peak_mb": round(pa.default_memory_pool().max_memory() / 2**20, 1),
            "images": count, "ips": round(count / seconds, 1)}


def reading_memory(source: str, args, spec) -> dict[str, dict]:
    """A worker's memory and reading speed, streamed (``ShardImages``) against whole row groups (``_WholeGroups``,
    the read before): worker 0 of ``--num-workers`` (every n-th piece, or blocks with ``--read-window``), decode
    stubbed out, on the input as ``schemas.write_table`` writes it (``image_bytes`` in one page per 1,024 values)
    and on the same rows in pages of ``--rows-per-page``. Memory: each way in a fresh process (spawned, as a
    worker's peak is its own). Speed: both ways in this process, in turn, best of ``--repeats``; ``speed_ratio`` is
    streamed / whole."""
    dataset = os.path.join(source, "pairs")
    paged = os.path.join(source + f"-pages-{args.rows_per_page}", "pairs")
    table = pq.read_table(dataset)
    os.makedirs(paged, exist_ok=True)
    pq.write_table(table, os.path.join(paged, "part-00000.parquet"), compression="zstd",
                   row_group_size=args.row_group_size or args.batch_size * 4,
                   use_dictionary=schemas.dictionary_columns(table.schema), max_rows_per_page=args.rows_per_page)
    del table
    piece, workers = piece_size(args.batch_size), max(1, args.num_workers)
    ways = {"whole_row_group": _WholeGroups, "streamed": ShardImages}
    figures = {}
    for label, path in (("as_lait_writes", dataset), (f"pages_of_{args.rows_per_page}_rows", paged)):
        shards, _ = plan_shards(path, args.batch_size * 4)
        figure = {}
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            for way, kind in ways.items():
                figure[way] = pool.apply(_share_memory, (kind, path, shards, spec, piece, workers, args.read_window))
        best = dict.fromkeys(ways, 0.0)
        for _ in range(args.repeats):
            for way, kind in ways.items():
                count, seconds = _read_share(kind(path, shards, spec, piece, read_window=args.read_window), 0, workers)
                best[way] = max(best[way], count / seconds)
        for way in ways:
            figure[way]["ips_best_in_one_process"] = round(best[way], 1)
        figure["speed_ratio"] = round(best["streamed"] / best["whole_row_group"], 2)
        figure["peak_rss_ratio"] = round(figure["streamed"]["peak_rss_growth_mb"]
                                         / max(figure["whole_row_group"]["peak_rss_growth_mb"], 0.1), 3)
        figures[label] = figure
    return figures


def reading_rates(source: str, args, spec, repeats: int = 2) -> dict[str, dict]:
    """What ``--num-workers`` DataLoader workers read, each worker's share run in turn in this process (decoding
    stubbed out), pieces in blocks (``blocks``, ``--read-window 4096``) and every n-th piece (``every_nth_piece``,
    the default):
    images/s per worker (the mean over workers, best of ``repeats``), row-group reads, the workers reading each
    group (mean and most), and the bytes read against the input's (read amplification)."""
    dataset = os.path.join(source, "pairs")
    shards, _ = plan_shards(dataset, args.batch_size * 4)
    workers = max(1, args.num_workers)
    figures = {}
    for label, kind in (("blocks", _Blocks), ("every_nth_piece", ShardImages)):
        best, reads = 0.0, []
        for _ in range(repeats):
            seconds, count, reads = 0.0, 0, []
            for worker in range(workers):
                images = _counting(kind)(dataset, shards, spec, piece_size(args.batch_size))
                images.reads = []
                taken, spent = _read_share(images, worker, workers)
                count, seconds = count + taken, seconds + spent
                reads += [(worker, group, size) for group, size in images.reads]
                del images
            best = max(best, count / seconds)
        readers: dict = {}
        for worker, group, _ in reads:
            readers.setdefault(group, set()).add(worker)
        group_bytes = {group: size for _, group, size in reads}
        figures[label] = {"ips_per_worker": round(best, 1), "row_group_reads": len(reads),
                          "workers_per_row_group_mean": round(sum(map(len, readers.values())) / len(readers), 2),
                          "workers_per_row_group_max": max(map(len, readers.values())),
                          "read_amplification": round(sum(size for *_, size in reads) / sum(group_bytes.values()), 2),
                          "largest_row_group_mb": round(max(group_bytes.values()) / 2**20, 1)}
    return figures


def end_to_end(detector, name: str, images: list[bytes], args, selection: BoxSelection, workdir: str,
               decode: str = "workers", tag: str = "") -> tuple[float, dict]:
    """Images/s of the whole local runner (Parquet in, decode, detect, Parquet out)."""
    source = write_input(name, images, args, workdir)
    options = FeatureOptions(detector=name, random_init=True, batch_size=args.batch_size, num_workers=args.num_workers,
                             images_per_shard=args.batch_size * 4, min_boxes=selection.min_boxes, max_boxes=selection.max_boxes,
                             decode=decode, read_window=args.read_window)
    best, stats = 0.0, {}
    for run in range(args.repeats):
        out = os.path.join(workdir, f"out-{name}-{decode}{tag}-{run}")  # a fresh folder: no shard is resumed
        start = time.perf_counter()
        stats = extract_regions(source, out, options, detector=detector)
        best = max(best, len(images) / (time.perf_counter() - start))
    return best, stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="+", default=["vg-r101-c4", "coco-r50-fpn"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--min-size", type=int, help="network input short side (default: the detector's)")
    parser.add_argument("--max-size", type=int)
    parser.add_argument("--proposals", type=int, help="RPN proposals kept per image (default: the detector's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, help="print the top N kernels of one model-only batch")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="time these inference rewrites model-only first; end to end then uses the fastest")
    parser.add_argument("--decode", nargs="+", default=["workers"], choices=("workers", "device"),
                        help="end to end with JPEGs decoded in the workers and/or on the device (the first is reported)")
    parser.add_argument("--portrait-share", type=float, default=0.0,
                        help="share of the scenes stored portrait (height x width); with it, end to end also runs "
                             "with detector batches in arrival order (the baseline of orientation grouping)")
    parser.add_argument("--aspect-mix", action="store_true",
                        help="scenes with web-like aspect ratios (long side --width; WEB_ASPECTS) instead of one size; "
                             "end to end also runs with detector batches in arrival order (mixed shapes, padded)")
    parser.add_argument("--class-scores", default="trained-like", choices=("trained-like", "random"),
                        help="trained-like: the random-init detector's class logits shaped like a trained one's, so box "
                             "selection does what it does with real weights (trained_like_class_scores); random: as "
                             "the weights give them (near-uniform; figures before 2026-11-28 ran this way)")
    parser.add_argument("--row-group-size", type=int,
                        help="rows per row group of the input it writes (default: 4 batches; lait's own files: 1,024)")
    parser.add_argument("--read-window", type=int, default=0, metavar="N",
                        help="end to end with `lait features --read-window N` (default 0: every n-th piece)")
    parser.add_argument("--reading-only", action="store_true",
                        help="only what the workers read (no detector run): pieces in blocks against every n-th "
                             "piece, images/s per worker, row-group reads and read amplification")
    parser.add_argument("--reading-memory", action="store_true",
                        help="only a worker's memory and reading speed (no detector run): its share streamed "
                             "against read as whole row groups (the read before), on lait's files and on pages of "
                             "--rows-per-page rows")
    parser.add_argument("--rows-per-page", type=int, default=16,
                        help="--reading-memory: rows per page of the second input it writes (max_rows_per_page)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores visible)"
    print(f"device: {device_name}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    # --portrait-share: that share of the scenes (spread evenly) is stored upright, height x width
    portrait = [int((i + 1) * args.portrait_share) > int(i * args.portrait_share) for i in range(args.images)]
    if args.aspect_mix:
        images = [scene_jpeg(i, width, height) for i, (width, height) in enumerate(web_sizes(args.images, args.width))]
    else:
        images = [scene_jpeg(i, *((args.height, args.width) if tall else (args.width, args.height)))
                  for i, tall in enumerate(portrait)]
    selection = BoxSelection(min_boxes=10, max_boxes=100)
    results = []
    if args.reading_memory:
        with tempfile.TemporaryDirectory() as workdir:
            spec = build_detector("demo", random_init=True).spec  # the stubbed decode never uses its sizes
            memory = reading_memory(write_input("memory", images, args, workdir), args, spec)
        row = {"images": args.images, "mean_image_kb": round(sum(map(len, images)) / len(images) / 1024, 1),
               "row_group_size": args.row_group_size or args.batch_size * 4, "piece": piece_size(args.batch_size),
               "workers": args.num_workers, "read_window": args.read_window, "reading_memory": memory}
        print(json.dumps(row))
        write_json(args.json, [row])
        return 0
    if args.reading_only:
        with tempfile.TemporaryDirectory() as workdir:
            spec = build_detector("demo", random_init=True).spec  # the stubbed decode never uses its sizes
            rates = reading_rates(write_input("reading", images, args, workdir), args, spec, args.repeats)
        row = {"images": args.images, "mean_image_kb": round(sum(map(len, images)) / len(images) / 1024, 1),
               "row_group_size": args.row_group_size or args.batch_size * 4, "piece": piece_size(args.batch_size),
               "workers": args.num_workers, "reading": rates,
               "reads_ratio": round(rates["every_nth_piece"]["row_group_reads"] / rates["blocks"]["row_group_reads"], 2),
               "speedup": round(rates["blocks"]["ips_per_worker"] / rates["every_nth_piece"]["ips_per_worker"], 2)}
        print(json.dumps(row))
        write_json(args.json, [row])
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.detectors:
            config = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size),
                                        ("rpn_post_nms_top_n", args.proposals)) if v is not None}
            variants = {}
            for variant in args.variants:  # inference rewrites (model.detectors.fusion), model only; the best goes on
                torch.manual_seed(0)
                candidate = build_detector(name, random_init=True, config=config or None).optimize_for(
                    device, args.precision, **VARIANTS[variant])
                if args.class_scores == "trained-like":
                    trained_like_class_scores(candidate)
                variants[variant] = model_only(candidate, images, args.batch_size, selection, args.repeats)
                fell_back = _fallbacks()
                print(f"{name} {variant}: model only {variants[variant][0]:.2f} img/s, ms per batch {variants[variant][1]}"
                      + (f"  WARNING: fell back to the plain NMS steps ({', '.join(fell_back)})" if fell_back else ""))
                del candidate
                # after each variant: a step stopped by its time limit keeps what it measured
                write_json(args.json, results + [{"detector": name, "partial": True, "fallbacks": fell_back,
                                                  "variants_model_only_ips": {v: round(r[0], 2)
                                                                              for v, r in variants.items()}}])
            best = max(variants, key=lambda v: variants[v][0]) if variants else None
            torch.manual_seed(0)
            detector = build_detector(name, random_init=True, config=config or None).optimize_for(
                device, args.precision, **(VARIANTS[best] if best else {}))
            if args.class_scores == "trained-like":
                trained_like_class_scores(detector)
            model_ips, split = variants[best] if best else model_only(detector, images, args.batch_size, selection, args.repeats)
            if args.profile:
                print_profile(detector, images, args.batch_size, selection, args.profile)
            by_decode = {}
            for mode in args.decode:
                by_decode[mode] = end_to_end(detector, name, images, args, selection, workdir, mode)
                write_json(args.json, results + [{"detector": name, "partial": True, "model_only_ips": round(model_ips, 2),
                                                  "variant": best or "default",
                                                  "variants_model_only_ips": {v: round(r[0], 2) for v, r in variants.items()},
                                                  "end_to_end_ips_by_decode": {m: round(r[0], 2)
                                                                               for m, r in by_decode.items()}}])
            reading = reading_rates(write_input(name, images, args, workdir), args, detector.spec)
            e2e_ips, stats = by_decode[args.decode[0]]
            arrival_order = None
            if args.portrait_share or args.aspect_mix:  # baseline: one queue, batches as the pieces arrive
                import pipeline.features as features_module

                # the old batching: one queue, and each batch detected whole, padded to its largest image
                grouped, by_shape = features_module.padded_shape, features_module.detect_by_shape
                features_module.padded_shape = lambda item, divisible: None
                features_module.detect_by_shape = features_module.detect_splitting_on_oom
                try:
                    arrival_order = end_to_end(detector, name, images, args, selection, workdir, args.decode[0],
                                               tag="-arrival")[0]
                finally:
                    features_module.padded_shape, features_module.detect_by_shape = grouped, by_shape
                print(f"{name}: end to end {e2e_ips:.2f} img/s with each padded shape batched apart, "
                      f"{arrival_order:.2f} in arrival order ({e2e_ips / arrival_order:.2f}x)")
            row = {"detector": name, "device": device_name, "precision": detector.precision,
                   "input": f"{detector.spec.min_size}/{detector.spec.max_size}", "batch": args.batch_size,
                   "images": args.images, "read_window": args.read_window,
                   "model_only_ips": round(model_ips, 2), "end_to_end_ips": round(e2e_ips, 2),
                   "ratio_e2e_to_model": round(e2e_ips / model_ips, 3),
                   # after the pipeline filled: images / (run time - time until the first decoded batch arrived)
                   "end_to_end_after_fill_ips": round(args.images / (stats["seconds"] - stats["seconds_to_first_batch"]), 2),
                   "end_to_end_ips_by_decode": {mode: round(r[0], 2) for mode, r in by_decode.items()},
                   # every decode mode's last run: fill time, rate after the fill and the main loop's phases
                   "e2e_detail_by_decode": {mode: {
                       "seconds_to_first_batch": r[1]["seconds_to_first_batch"],
                       "after_fill_ips": round(args.images / (r[1]["seconds"] - r[1]["seconds_to_first_batch"]), 2),
                       "seconds_by_phase": r[1]["seconds_by_phase"]} for mode, r in by_decode.items()},
                   "e2e_seconds_by_phase": stats["seconds_by_phase"], "e2e_seconds_to_first_batch": stats["seconds_to_first_batch"], "boxes_per_image": stats["boxes_per_image"],
                   "ms_per_batch_by_part": split, "variant": best or "default",
                   "class_scores": args.class_scores,
                   "portrait_share": args.portrait_share, "aspect_mix": args.aspect_mix,
                   "end_to_end_mean_batch": stats.get("mean_batch_size"),
                   "end_to_end_ips_arrival_order": round(arrival_order, 2) if arrival_order else None,
                   "variants_model_only_ips": {v: round(r[0], 2) for v, r in variants.items()},
                   "row_group_size": args.row_group_size or args.batch_size * 4, "reading": reading,
                   # the fused NMS paths fall back to the plain steps (once per process) when they fail: a variant
                   # named rpn-kernel / rpn-compiled that fell back measured the steps
                   "fallbacks": _fallbacks()}
            if device.type == "cuda":
                row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
                torch.cuda.reset_peak_memory_stats(device)
            if name.startswith("coco-"):  # torchvision's forward on a fresh model: no variant's rewrites
                torch.manual_seed(0)
                plain = build_detector(name, random_init=True, config=config or None)
                plain.model.to(device).eval()
                stock = torchvision_stock(plain, images, args.batch_size, args.repeats)
                del plain
                row["torchvision_stock_ips"] = round(stock, 2)
                row["ratio_model_to_stock"] = round(model_ips / stock, 3)
            results.append(row)
            print(json.dumps(row))
            del detector
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\n{'detector':<16}{'device':<28}{'prec':<6}{'input':<10}{'model img/s':>12}{'e2e img/s':>11}{'e2e/model':>10}")
    for r in results:
        print(f"{r['detector']:<16}{r['device'][:27]:<28}{r['precision']:<6}{r['input']:<10}"
              f"{r['model_only_ips']:>12.2f}{r['end_to_end_ips']:>11.2f}{r['ratio_e2e_to_model']:>10.3f}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
