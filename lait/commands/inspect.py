"""`lait inspect PATH`: schema, row count, a few rows and rejected-reason counts of a dataset."""
from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from lait.commands import non_negative

# The subfolders a LAIT run folder may hold, in pipeline order.
RUN_SUBDIRS = ("candidates", "pairs", "regions", "captions", "rejected")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show the schema, row count, sample rows and rejected reasons of a LAIT dataset",
        description="Inspect a LAIT dataset (a Parquet file or folder) or a run folder holding several.",
    )
    parser.add_argument("path", help="a Parquet file, a dataset folder, or a run folder (local path or fsspec URL)")
    parser.add_argument("--rows", type=non_negative, default=3, help="sample rows to show (default 3)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of text: an object for a dataset, a list of them for a stage or run "
                             "folder, even of one (NaN and infinite numbers as null)")
    parser.set_defaults(func=run)


def _short(value, width: int = 72):
    """A printable form of a cell: bytes as their size, long lists as their shape, long text cut."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return f"<list {len(value)}x{len(value[0])}>"
        if len(value) > 8:
            return f"<list of {len(value)}>"
        return value
    if isinstance(value, str) and len(value) > width:
        return value[: width - 1] + "…"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def json_safe(value):
    """``value`` with every NaN or infinite float replaced by None: JSON has no NaN (Python's json writes a bare
    ``NaN`` that strict readers refuse), so ``--json`` prints such cells (``class_scores``, ``lang_score``) as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _pylist(table: pa.Table) -> list[dict]:
    """Rows as dicts, column by column, never failing the inspection over a cell: text that is not valid UTF-8 is
    shown with U+FFFD, and a value Python's types cannot hold (a nanosecond timestamp with digits past the
    microsecond, from pandas or Spark's INT96: pyarrow asks for pandas) as Arrow's text of it."""
    columns = [_values(column) for column in table.columns]
    return [dict(zip(table.column_names, row)) for row in zip(*columns)] if columns else [{}] * table.num_rows


def _values(column: pa.ChunkedArray) -> list:
    """A column's cells as Python values (``_pylist``)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:  # a ValueError too: checked first
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise
        return [v.decode("utf-8", "replace") if v is not None else None for v in column.cast(pa.binary()).to_pylist()]
    except ValueError:
        try:
            return column.cast(pa.string()).to_pylist()
        except pa.ArrowException:  # no text form (a list of such timestamps): the type stands in for each cell
            return [f"<{column.type}>" if cell.is_valid else None for cell in column]


def describe(path: str, rows: int = 3) -> dict:
    """Everything `lait inspect` shows about one dataset, as a dict.

    A folder holding no Parquet files is an empty dataset (rows 0, its kind read from the folder's name:
    a stage's ``rejected/`` when nothing was rejected); only a path where nothing lies is an error
    (FileNotFoundError). A kind this LAIT does not know is described with a schema problem.

    ``schema_ok``: True when every file meets the contract of the dataset's kind; False when one does not (LAIT's
    readers refuse the dataset) or the files declare more than one kind (``file_kinds`` then counts the files of
    each), which `lait inspect` exits 1 for; None when there is no contract to check (a kind this LAIT does not
    know, or no LAIT kind at all).
    """
    files = schemas.list_parquet_files(path)
    if not files:
        name = posixpath.basename(str(path).rstrip("/"))
        kind = name if name in schemas.KINDS else None
        return {"path": str(path), "kind": kind, "schema_version": None,
                "files": 0, "rows": 0, "schema": [], "schema_problem": None,
                "schema_ok": True if kind else None, "sample": [],
                "note": "no Parquet files: an empty dataset"}
    dataset = schemas.open_dataset(path)
    schema = dataset.schema
    kind = schemas.detect_kind(schema)
    problem, ok, file_kinds = None, None, None
    if kind in schemas.KINDS:
        try:
            # read as the readers do: files whose timestamps differ in unit (Spark's us beside LAIT's ms) read
            # together only so (schemas.open_dataset)
            dataset = schemas.open_dataset(path, kind)
            ok = True  # every file checked: any kind a file declares is this one
        except schemas.SchemaMismatchError as exc:
            problem, ok = str(exc), False
    elif kind is not None:
        problem = f"unknown kind {kind!r} in lait.schema: this LAIT reads {', '.join(schemas.KINDS)}"
    if not ok:  # the files' own kinds: one folder holding two datasets is broken whatever the first file is
        file_kinds = _declared_kinds(dataset)
        if len(file_kinds) > 1:
            listed = ", ".join(f"{k} ({n} file{'s' * (n != 1)})" for k, n in file_kinds.items())
            problem, ok = f"files of {len(file_kinds)} kinds in one dataset: {listed}" + (
                f"; {problem}" if problem else ""), False
        else:
            file_kinds = None
    meta = schema.metadata or {}
    info = {
        "path": str(path),
        "kind": kind,
        "schema_version": meta.get(b"lait.schema_version", b"").decode("utf-8", "backslashreplace") or None,
        "files": len(files),
        "rows": dataset.count_rows(),
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "schema_problem": problem,
        "schema_ok": ok,
        "sample": [],
    }
    if file_kinds:
        info["file_kinds"] = file_kinds
    if rows > 0 and info["rows"]:
        head = dataset.head(rows)
        info["sample"] = [{k: _short(v) for k, v in row.items()} for row in _pylist(head)]
    if "reason" in schema.names:
        table = dataset.to_table(columns=[c for c in ("stage", "reason") if c in schema.names])
        counts = collections.Counter()
        for row in _pylist(table):
            stage, reason = row.get("stage"), row.get("reason")
            counts[f"{stage}/{reason}" if stage else str(reason)] += 1
        info["rejected_reasons"] = dict(counts.most_common())
    return info


def _declared_kinds(dataset) -> dict[str, int]:
    """How many of the dataset's files declare each kind (``lait.schema``) in their metadata, in the files' order;
    files that declare none are left out. A file whose footer cannot be read counts as ``unreadable``."""
    counts: collections.Counter = collections.Counter()
    for file in dataset.files:
        try:
            declared = (pq.read_schema(file, filesystem=dataset.filesystem).metadata or {}).get(b"lait.schema")
        except (pa.ArrowInvalid, OSError):
            counts["unreadable"] += 1
            continue
        if declared is not None:
            counts[declared.decode(errors="replace")] += 1
    return dict(counts)


def _printable(text: str) -> str:
    """``text`` with each character that is not printable (control characters such as ESC, BEL and a newline, and
    the other unprintable ones) written as a Python string literal writes it (``\\x1b``, ``\\n``): a crawled
    caption holding terminal escapes cleared the screen or forged lines of the output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_text(info: dict) -> None:
    def say(line: str) -> None:  # every line may hold text read from the dataset: a path, a column name, a cell
        print(_printable(line))

    say(f"{info['path']}")
    kind = info["kind"] or "unknown (not a LAIT contract)"
    version = f" v{info['schema_version']}" if info["schema_version"] else ""
    say(f"  kind: {kind}{version}   files: {info['files']}   rows: {info['rows']:,}")
    if info["schema_problem"]:
        say(f"  SCHEMA PROBLEM: {info['schema_problem']}")
    if info.get("note"):
        say(f"  ({info['note']})")
    if info["schema"]:
        say("  schema:")
    for field in info["schema"]:
        say(f"    {field['name']:<20} {field['type']}")
    for i, row in enumerate(info["sample"]):
        say(f"  row {i}:")
        for key, value in row.items():
            say(f"    {key:<20} {value}")
    if "rejected_reasons" in info:
        say("  rejected reasons:")
        for reason, count in info["rejected_reasons"].items():
            say(f"    {count:>8,}  {reason}")


def _datasets_in(folder: str) -> list[str]:
    """The dataset folders of a stage folder (``pairs/``, ``rejected/``...), then those of each folder it holds
    when it is a run folder (``crawl/``, ``filter/``..., in pipeline order). Folders are found through the
    path's filesystem, so a run folder given as a URL (``file://``, ``gs://``...) is one too."""
    from demo.audit import STAGE_ORDER

    inside = schemas.subfolders(folder)
    found = [schemas.join_path(folder, d) for d in RUN_SUBDIRS if d in inside]
    stages = sorted((d for d in inside if d not in RUN_SUBDIRS), key=lambda d: (STAGE_ORDER.get(d, len(STAGE_ORDER)), d))
    for stage in stages:
        held = schemas.subfolders(schemas.join_path(folder, stage))
        found += [schemas.join_path(folder, stage, d) for d in RUN_SUBDIRS if d in held]
    return found


def run(args: argparse.Namespace) -> int:
    path = args.path
    targets, scanned = [path], False
    try:
        is_folder = schemas.path_type(path) == "folder"
    except (OSError, ValueError, ImportError):  # an unknown URL scheme, an unreachable filesystem: describe() says
        is_folder = False
    if is_folder:
        subdirs = _datasets_in(path)
        if subdirs:  # a stage or run folder: describe each dataset in it, never them merged into one
            targets, scanned = subdirs, True
    results = []
    for target in targets:
        try:
            results.append(describe(target, args.rows))
        except (ValueError, OSError, ImportError, pa.ArrowException) as exc:
            # ArrowInvalid: not Parquet; ImportError: no fsspec backend for the URL (gcsfs, s3fs)
            results.append({"path": target, "error": " ".join(str(exc).split())})
    if args.json:
        # A folder's datasets are a list however many it holds (one was printed as an object, two as a list: a
        # reader of `lait inspect RUN --json` could not rely on either); a dataset named directly, one object.
        print(json.dumps(json_safe(results if scanned else results[0]), indent=2, default=str, allow_nan=False))
    else:
        for info in results:
            if "error" in info:
                print(_printable(f"{info['path']}: {info['error']}"), file=sys.stderr)
            else:
                _print_text(info)
    # 1: a path that is no dataset, or a dataset LAIT's readers refuse (schema_ok false: a file breaking its kind's
    # contract, files of several kinds in one folder). A kind this LAIT does not know is described (exit 0).
    return 1 if any("error" in r or r.get("schema_ok") is False for r in results) else 0
