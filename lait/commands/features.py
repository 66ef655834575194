"""`lait features`: Faster R-CNN region features (boxes, pooled features, classes) for every distinct image.

The options are defined once here (``add_arguments``/``options_from_args``) and shared with the Beam
form, ``python -m pipeline.features``; this module stays import-light so ``lait --help`` is fast.
"""
from __future__ import annotations

import argparse
import json
import sys

from lait.commands import non_negative, positive

DETECTOR_CHOICES = ("vg-r101-c4", "coco-r50-fpn", "coco-r50-fpn-v2", "demo")


def add_arguments(parser: argparse.ArgumentParser, local: bool = True) -> None:
    """The features options; ``local`` adds those of the local runner only (workers, shards, progress)."""
    parser.add_argument("--input", required=True, help="filter or crawl folder, or a dataset with image_id + image_bytes")
    parser.add_argument("--output", required=True, help="output folder (RUN/features)")
    parser.add_argument("--detector", required=True, choices=DETECTOR_CHOICES, help="detector architecture")
    parser.add_argument("--weights", help="weights file: detectron2 .pkl / torch .bin/.pth / .safetensors (demo)")
    parser.add_argument("--random-init", action="store_true", help="random weights (tests and pipeline checks)")
    parser.add_argument("--download-weights", action="store_true",
                        help="coco-*: let torchvision download the published weights if they are not cached")
    parser.add_argument("--classes", help="class names file (one per line, or JSON list), e.g. VG objects_vocab.txt")
    parser.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="autocast precision (default auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--batch-size", type=positive, default=8, help="images per detector batch (default 8)")
    # None when not given (FeatureOptions has the defaults), so that --fixed-boxes can refuse them given at all
    parser.add_argument("--min-boxes", type=int, help="fewest boxes per image (default 10)")
    parser.add_argument("--max-boxes", type=int, help="most boxes per image (default 100)")
    parser.add_argument("--fixed-boxes", type=positive, metavar="N",
                        help="exactly N boxes per image (sets min and max: not with --min-boxes or --max-boxes; "
                             "36 is BUTD's fixed mode)")
    parser.add_argument("--score-thresh", type=float, default=0.2, help="keep boxes with best class score >= this (default 0.2)")
    parser.add_argument("--nms-thresh", type=float, default=0.3, help="per-class NMS IoU threshold (default 0.3)")
    parser.add_argument("--topk", type=positive, default=10, help="classes kept per box in the distribution (default 10)")
    parser.add_argument("--min-size", type=positive,
                        help="override the network input short side (vg 600, coco 800, demo: its weights')")
    parser.add_argument("--max-size", type=positive,
                        help="override the network input long-side cap, at least --min-size (vg 1000, coco 1333)")
    if local:
        parser.add_argument("--num-workers", type=non_negative, default=2,
                            help="DataLoader decode workers (default 2; 0 = main process)")
        parser.add_argument("--decode", default="auto", choices=("auto", "workers", "device"),
                            help="where JPEGs are decoded: workers (Pillow) or device (plain upright JPEGs batched "
                                 "through nvJPEG on CUDA; the rest still in the workers); auto (default): device on "
                                 "CUDA, workers elsewhere")
        parser.add_argument("--images-per-shard", type=positive, default=512,
                            help="images per output shard (default 512)")
        # None when not given: with --num-workers 0 or 1 it is refused given at all, 0 too (options_from_args)
        parser.add_argument("--read-window", type=non_negative, metavar="N",
                            help="0 (default): each decode worker takes every n-th piece of the input, and reads "
                                 "every row group; N: workers take blocks of rounds of about N images (4096 is a "
                                 "good start), so each row group is read by few of them, for inputs on an object "
                                 "store; results of about N images then wait in memory. Needs --num-workers 2 or "
                                 "more")
        parser.add_argument("--part", metavar="I/N", type=_part,
                            help="run part I of N (0-based: the shards whose index %% N == I); start the N parts at "
                                 "once (one per GPU, or on machines sharing OUT); the part that completes the run "
                                 "writes stats.json. Under torchrun each process runs the part of its rank on "
                                 "cuda:LOCAL_RANK")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _part(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N), 0 <= I < N."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N, e.g. 0/4") from None
    if parts < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: N, the number of parts, must be at least 1")
    if not 0 <= part < parts:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be 0 to N-1")
    return part, parts


def torchrun_part(device: str) -> tuple[tuple[int, int] | None, str]:
    """Under torchrun: this process's (rank, world size) part and its device (``model.distributed``: cuda is
    cuda:LOCAL_RANK); else (None, device). A ``device`` other than auto, cpu, cuda or cuda:N is the ValueError it is
    without torchrun, naming --device, before it is read."""
    from model.distributed import process_device, torchrun_place
    from pipeline.features import check_device_name

    check_device_name(device)
    place = torchrun_place()
    if place is None:
        return None, device
    return place[:2], str(process_device(device))


def options_from_args(args: argparse.Namespace):
    """``FeatureOptions`` from parsed ``add_arguments`` options."""
    from pipeline.features import FeatureOptions

    overrides = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v is not None}
    boxes = {k: v for k, v in (("min_boxes", args.min_boxes), ("max_boxes", args.max_boxes)) if v is not None}
    if args.fixed_boxes is not None:
        if boxes:
            given = " and ".join("--" + name.replace("_", "-") for name in boxes)
            raise ValueError(f"--fixed-boxes {args.fixed_boxes} sets both box limits: leave out {given}")
        boxes = {"min_boxes": args.fixed_boxes, "max_boxes": args.fixed_boxes}
    if args.download_weights:  # it fetches coco's published weights, which only a coco run without a file reads
        instead = ("--weights" if args.weights else "--random-init" if args.random_init
                   else None if args.detector.startswith("coco-") else f"--detector {args.detector}")
        if instead:
            raise ValueError(f"--download-weights fetches the published weights of the coco-* detectors, which a run "
                             f"with {instead} does not read: leave it out")
    if getattr(args, "read_window", None) is not None and args.num_workers < 2:  # given at all, 0 too
        starts = "none" if args.num_workers == 0 else "one"
        raise ValueError(f"--read-window {args.read_window} shares the input among decode worker processes, and "
                         f"--num-workers {args.num_workers} starts {starts}: leave --read-window out")
    local = {k: getattr(args, k) for k in ("num_workers", "images_per_shard", "decode", "read_window")
             if getattr(args, k, None) is not None}
    device = args.device
    if hasattr(args, "part"):
        part, device = torchrun_part(device)
        if part is not None and args.part:
            raise ValueError("under torchrun each process runs the part of its rank: leave --part out")
        local["part"], local["parts"] = args.part or part or (0, 1)
    options = FeatureOptions(
        detector=args.detector, weights=args.weights, random_init=args.random_init,
        download_weights=args.download_weights, class_names_file=args.classes, detector_config=overrides,
        device=device, precision=args.precision, batch_size=args.batch_size, score_thresh=args.score_thresh,
        nms_thresh=args.nms_thresh, topk=args.topk, **boxes, **local,
    )
    options.selection  # validates the box limits before any work
    return options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="extract region features (boxes, pooled features, class distributions) with a Faster R-CNN",
        description="Run a Faster R-CNN over every distinct image of a filter folder (pairs/), a crawl folder "
                    "(candidates/) or any Parquet table with image_id + image_bytes; writes OUT/regions/, "
                    "OUT/rejected/, OUT/stats.json and OUT/classes.json. A rerun into the same OUT resumes.",
    )
    add_arguments(parser, local=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import traceback

    import pyarrow as pa

    from model.detectors import WeightsNotFoundError
    from pipeline.features import extract_regions
    from pipeline.runners import error_line

    try:
        options = options_from_args(args)
        stats = extract_regions(args.input, args.output, options, progress=not args.no_progress)
    except (WeightsNotFoundError, OSError, ValueError, RuntimeError, pa.ArrowException) as exc:
        if getattr(args, "verbose", 0):
            traceback.print_exc()
        print(f"lait features: error: {error_line(exc)}", file=sys.stderr)
        return 2
    summary = {k: stats[k] for k in ("in", "kept", "rejected", "rejected_by_reason", "boxes_per_image", "images_per_s")}
    if not stats["complete"]:
        summary = {"part": f"{stats['part']}/{stats['parts']}", "complete": False,
                   "shards_missing": stats["shards_missing"], **summary}
    print(json.dumps(summary, indent=2))
    return 0
