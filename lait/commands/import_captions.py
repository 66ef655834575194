"""`lait import-captions`: an existing caption set (COCO, Karpathy split, image folder + TSV) as LAIT datasets."""
from __future__ import annotations

import argparse
import os
import sys

#: What a source yielding no caption record holds, by format.
NOTHING = {"coco": "its 'annotations' list is empty", "karpathy": "no image in it has a sentence",
           "tsv": "it is empty, or holds a header or blank lines alone"}
#: The split coco and tsv sources record when no --split is given.
DEFAULT_SPLIT = "train"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-captions",
        help="turn MSCOCO / Karpathy-split / TSV caption sets into captions/ and pairs/ datasets",
        description="Import an existing caption set. Writes OUT/captions/, OUT/pairs/ (one row per image, with its "
                    "bytes: run `lait features --input OUT` next for the regions), OUT/rejected/ and OUT/stats.json.",
    )
    parser.add_argument("source", help="the captions file: COCO captions_*.json, Karpathy dataset_*.json, or a TSV")
    parser.add_argument("--format", required=True, choices=("coco", "karpathy", "tsv"),
                        help="coco: MSCOCO captions JSON; karpathy: Karpathy-split JSON (Flickr30k/COCO); "
                             "tsv: image_file<TAB>caption lines")
    parser.add_argument("--images", required=True, help="folder the image file names are relative to")
    parser.add_argument("--out", required=True, help="output folder")
    # default None: a --split given with --format karpathy is refused rather than ignored (the file names each
    # image's split); coco and tsv get DEFAULT_SPLIT
    parser.add_argument("--split", default=None,
                        help=f"split recorded for coco and tsv sources (default {DEFAULT_SPLIT}; karpathy carries its "
                             f"own, and refuses --split)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what --out holds of a finished import or of another dataset: its captions/, "
                             "pairs/, rejected/ and stats.json (other folders stay)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from model.captions_import import READERS, NoCaptionsError, import_captions

    # An empty path (an unset $OUT in a script) is the current folder: with --overwrite, its pairs/ and stats.json
    # were deleted before the import failed.
    from pipeline.outputs import refuse_empty_paths

    try:
        refuse_empty_paths(("the captions file", args.source, "a COCO, Karpathy or TSV file"),
                           ("--images", args.images, "the folder of the images"),
                           ("--out", args.out, "the folder to write the import to"))
    except ValueError as exc:
        return _fail(str(exc))
    for path in (args.source, args.images):
        if not os.path.exists(path):
            return _fail(f"{path} does not exist")
    if not os.path.isfile(args.source):
        return _fail(f"{args.source} is {'a folder' if os.path.isdir(args.source) else 'not a regular file'}, "
                     f"not a captions file")
    if not os.path.isdir(args.images):
        return _fail(f"--images {args.images} is a file, not the folder the image file names are relative to")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return _fail(f"--out {args.out} is a file, not a folder: the import writes captions/, pairs/, rejected/ and "
                     f"stats.json into a folder")
    if args.format == "karpathy" and args.split is not None:
        return _fail(f"--split {args.split!r} is not used with --format karpathy: the file names each image's split "
                     f"(restval and a missing one are train); leave --split out")
    split = DEFAULT_SPLIT if args.split is None else args.split
    problem = _split_problem(split)
    if problem:
        return _fail(problem)
    try:  # the readers open the file here (the JSON ones load it and check its shape), before --out is
        # touched; bad records become counted rejects
        reader = READERS[args.format]
        records = reader(args.source) if args.format == "karpathy" else reader(args.source, split)
    except ValueError as exc:  # not JSON, not UTF-8, or not the format's shape
        return _fail(f"{args.source} is not a valid {args.format} file ({exc})")
    except OSError as exc:  # unreadable
        return _fail(f"{args.source}: cannot read it ({exc.strerror or exc})")
    try:
        stats = import_captions(records, args.images, args.out, overwrite=args.overwrite)
    except NoCaptionsError:  # refused before --out is touched: imported, it was a finished import of nothing
        return _fail(f"{args.source} holds no captions read as a {args.format} file ({NOTHING[args.format]}); "
                     f"--out is not touched")
    except (ValueError, OSError) as exc:  # a finished import or another dataset in --out, an unwritable --out
        return _fail(exc)
    print(json.dumps(stats, indent=2))
    return 0


def _split_problem(split: str) -> str | None:
    """What is wrong with a ``--split``, or None. It is stored in every caption row, where a training config's
    ``split`` selects it by exact match: text that is not UTF-8 (the argument's bytes, which Arrow cannot store:
    every caption was rejected, in a finished import), a blank one or one with white space around it names no
    split that a config would give."""
    if any("\udc80" <= ch <= "\udcff" for ch in split):  # the bytes Python could not decode from the command line
        shown = split.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return f"--split '{shown}' is not UTF-8 text; give the split as text, such as train, val or test"
    if not split.strip():
        return f"--split {split!r} is empty; give the split the captions belong to, such as train, val or test"
    if split != split.strip():
        return f"--split {split!r} begins or ends with white space; a training config selects the split by its exact text"
    return None


def _fail(message) -> int:
    print(f"lait import-captions: {message}", file=sys.stderr)
    return 2
