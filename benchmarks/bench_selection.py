"""Benchmark: bottom-up-attention box selection for a detector batch, image by image against the whole batch.

``RegionDetector.forward`` used to call ``select_boxes`` once per image; it now calls
``select_boxes_batched`` once per batch. Both run here in one process on the same synthetic proposals
(a batch of images, 300 proposals each, Visual Genome's 1,600 classes, scores from a peaked softmax so
that a few classes per proposal clear the 0.01 candidate floor, as a trained detector's do), with the
same selected rows checked equal. On a GPU every value read back to the host waits for the device,
so the figure that matters there is how many reads a batch costs: with ``--device cuda`` the
benchmark also counts the host's ``cudaStreamSynchronize`` and device-to-host copies per batch
(torch profiler)::

    python benchmarks/bench_selection.py                                  # CPU: times only
    python benchmarks/bench_selection.py --device cuda --images 64        # the vg-r101-c4 batch of gpu_session.sh
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_io import write_json  # noqa: E402  (this folder: the script's own)

from model.detectors.selection import BoxSelection, select_boxes, select_boxes_batched  # noqa: E402


def synthetic_batch(images: int, proposals: int, classes: int, device: torch.device, seed: int = 0):
    """Per-image proposal boxes ([P, 4] in a 1000 x 600 image) and the batch's object-class scores [B*P, K]."""
    gen = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(images):
        xy = torch.rand(proposals, 2, generator=gen) * torch.tensor([900.0, 500.0])
        wh = torch.rand(proposals, 2, generator=gen) * 200 + 10
        boxes.append(torch.cat([xy, xy + wh], dim=1).to(device))
    logits = torch.randn(images * proposals, classes + 1, generator=gen) * 2.5
    logits[:, 0] += 4  # background, as a detector's softmax puts most of the mass there
    scores = torch.softmax(logits, dim=1)[:, 1:].to(device)
    return boxes, scores


def per_image(boxes: list[torch.Tensor], scores: torch.Tensor, selection: BoxSelection) -> list[torch.Tensor]:
    """The previous way: ``select_boxes`` image by image, rows offset to the batch."""
    chosen, start = [], 0
    for b in boxes:
        keep, _ = select_boxes(b, scores[start:start + len(b)], selection)
        chosen.append(keep + start)
        start += len(b)
    return chosen


def timed(fn, device: torch.device, repeats: int) -> tuple[float, list[torch.Tensor]]:
    """Best seconds of ``repeats`` calls of ``fn()`` (device synchronised), and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def host_reads(fn) -> dict[str, int]:
    """CUDA only: the host's synchronisations and device-to-host copies during one call of ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {e.key: e.count for e in prof.key_averages()}
    return {"cudaStreamSynchronize": counts.get("cudaStreamSynchronize", 0),
            "cudaMemcpyAsync": counts.get("cudaMemcpyAsync", 0),
            "aten::_local_scalar_dense": counts.get("aten::_local_scalar_dense", 0),
            "aten::nonzero": counts.get("aten::nonzero", 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=16, help="images per detector batch")
    parser.add_argument("--proposals", type=int, default=300)
    parser.add_argument("--classes", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    boxes, scores = synthetic_batch(args.images, args.proposals, args.classes, device)
    candidates = int((scores >= 0.01).sum())
    print(f"device {device}  {args.images} images x {args.proposals} proposals x {args.classes} classes  "
          f"{candidates / args.images:,.0f} candidate pairs per image")
    results = {"device": str(device), "images": args.images, "proposals": args.proposals, "classes": args.classes,
               "candidate_pairs_per_image": round(candidates / args.images, 1)}
    for name, selection in (("adaptive 10-100", BoxSelection()), ("fixed 36", BoxSelection.fixed(36))):
        baseline_s, expected = timed(lambda: per_image(boxes, scores, selection), device, args.repeats)
        batched_s, (got, _) = timed(lambda: select_boxes_batched(boxes, scores, selection), device, args.repeats)
        assert [g.tolist() for g in got] == [e.tolist() for e in expected], "the two ways chose differently"
        row = {"per_image_ms": round(baseline_s * 1e3, 2), "batched_ms": round(batched_s * 1e3, 2),
               "ratio": round(baseline_s / batched_s, 2), "boxes_per_image": round(sum(map(len, got)) / len(got), 1)}
        if device.type == "cuda":
            row["host_reads_per_image_loop"] = host_reads(lambda: per_image(boxes, scores, selection))
            row["host_reads_batched"] = host_reads(lambda: select_boxes_batched(boxes, scores, selection))
        results[name] = row
        print(f"{name:<16} image by image {row['per_image_ms']:8.2f} ms   whole batch {row['batched_ms']:8.2f} ms   "
              f"{row['ratio']:.2f}x   {row['boxes_per_image']} boxes per image (same rows)")
        if device.type == "cuda":
            print(f"{'':<16} host reads, image by image {row['host_reads_per_image_loop']}; "
                  f"whole batch {row['host_reads_batched']}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
