"""Read and write LAIT datasets on a local path or any fsspec URL (gs://, s3://, memory://, ...)."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import posixpath
import uuid
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.core import SchemaMismatchError, schema_for, validate_schema

PARQUET_SUFFIX = ".parquet"

logger = logging.getLogger(__name__)


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or an fsspec URL."""
    path = os.fspath(path)
    if "://" not in path or path.startswith("file://"):
        local = path[len("file://"):] if path.startswith("file://") else path
        try:
            local.encode("utf-8")
        except UnicodeEncodeError:  # os.fsdecode's stand-ins for bytes that are not UTF-8: pyarrow cannot name them
            shown = local.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise ValueError(f"{shown}: the path is not UTF-8 text, which LAIT's datasets' paths must be "
                             f"(pyarrow names files in UTF-8); rename it") from None
        return pafs.LocalFileSystem(), os.path.abspath(local)
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


def _is_data_file(relative: str) -> bool:
    """Hidden and in-progress files are never part of a dataset, nor what lies in a Beam sink's temporary
    folder (a job killed between writing a shard and renaming it leaves one there)."""
    *folders, name = relative.split("/")
    return not any(part.startswith((".", "_")) for part in folders + [name]) \
        and not any(folder.startswith("beam-temp-") for folder in folders)


def path_type(path: str) -> str | None:
    """What lies at ``path`` (a local path or an fsspec URL, ``file://`` included): ``"file"``, ``"folder"``,
    or None when nothing does."""
    fs, inner = _filesystem(path)
    found = fs.get_file_info(inner).type
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(found)


def subfolders(path: str) -> list[str]:
    """The names of the folders directly inside ``path`` (a local path or an fsspec URL), sorted; hidden and
    temporary ones (``.x``, ``_x``) are left out, as ``list_parquet_files`` leaves out their files, and so, with a
    warning, are those whose name is not UTF-8 text, which pyarrow cannot name (``mkdir $'caf\\xe9'``: `lait
    inspect` failed with a UnicodeDecodeError traceback)."""
    fs, inner = _filesystem(path)
    entries = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    names, unnamed = [], 0
    for entry in entries:
        if entry.type != pafs.FileType.Directory:
            continue
        try:
            names.append(posixpath.basename(entry.path.rstrip("/")))
        except UnicodeDecodeError:
            unnamed += 1
    if unnamed:
        them = "it" if unnamed == 1 else "them"
        logger.warning("%s: %d folder%s whose name is not UTF-8 text left out (rename %s to read %s)", path, unnamed,
                       "" if unnamed == 1 else "s", them, them)
    return sorted(name for name in names if _is_data_file(name))


def join_path(path: str, *names: str) -> str:
    """``path``/``names``, for a local path (the OS separator) or an fsspec URL (``/``)."""
    return posixpath.join(path, *names) if "://" in path else os.path.join(path, *names)


def list_parquet_files(path: str) -> list[str]:
    """The Parquet files of a dataset (a single file, or a folder searched recursively), sorted.

    A file or folder inside whose name is not UTF-8 text (``b'\\xff.parquet'``) is refused in one line naming it:
    pyarrow names paths as UTF-8 and can neither name nor open it, and leaving it out could leave rows out."""
    fs, inner = _filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no dataset at {path}")
    if info.type == pafs.FileType.File:
        return [inner]
    selector = pafs.FileSelector(inner, recursive=True)
    files = []
    for entry in fs.get_file_info(selector):
        try:
            found = entry.path
        except UnicodeDecodeError:
            raise ValueError(f"{path}: holds {_undecodable_name(inner)}, whose name is not UTF-8 text, which pyarrow "
                             "cannot open; rename it") from None
        if entry.type != pafs.FileType.File or not _is_data_file(posixpath.relpath(found, inner)):
            continue
        if found.endswith(PARQUET_SUFFIX):
            files.append(found)
        elif begins_as_parquet(fs, found):
            raise misnamed_parquet(found, path)
    return sorted(files)


def misnamed_parquet(found: str, dataset: str) -> ValueError:
    """The one-line error for a Parquet file ``found`` in ``dataset`` whose name does not end in ``.parquet``."""
    return ValueError(f"{found}: a Parquet file not named *{PARQUET_SUFFIX} in the dataset {dataset}, which LAIT "
                      f"would leave out (it reads *{PARQUET_SUFFIX} files only); rename it to end in "
                      f"{PARQUET_SUFFIX}, or move it out")


#: Names beside a dataset's shards that are never Parquet, so not opened: LAIT's stats.json and run markers, a
#: detector's classes.json, Hadoop's checksums (``part-0.parquet.crc``, when not hidden).
NOT_PARQUET_SUFFIXES = (".json", ".crc")


def begins_as_parquet(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file not named ``*.parquet`` begins with Parquet's magic ``PAR1`` (one 4-byte read).

    Hive names its files ``000000_0``, Impala ``*.parq``: such files were left out without a word (`lait eval`
    scored half a split's captions). They are refused rather than read: the filter, which lists ``*.parquet``
    files its own way, would still leave them out, and one dataset must be the same rows to every stage. A file
    that cannot be read is left out, as before."""
    if path.endswith(NOT_PARQUET_SUFFIXES):
        return False
    try:
        with fs.open_input_stream(path) as handle:
            return handle.read(4) == b"PAR1"
    except (OSError, pa.ArrowException):
        return False


def _undecodable_name(folder: str) -> str:
    """The first path under a local ``folder`` whose name is not UTF-8 text, its bytes escaped; "a file or folder" when
    there is none to find (not a local folder)."""
    for top, names, files in os.walk(os.fsencode(folder)):
        for name in sorted(names + files):
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                return "'" + os.path.relpath(os.path.join(top, name), os.fsencode(folder)).decode(
                    "utf-8", "backslashreplace") + "'"
    return "a file or folder"


def open_dataset(path: str, kind: str | None = None) -> pads.Dataset:
    """Open a dataset, checking every file's schema against the ``kind`` contract when given.

    pyarrow takes a dataset's schema from its first file and casts the others' columns to it, safely: files
    whose timestamps differ in unit (LAIT's ms, Spark's us or INT96 ns) could not be read together (``would lose
    data``). Under a ``kind``, a contract timestamp column whose files differ from the contract is read in the
    finest unit among them, in UTC (``_common_timestamps``); ``read_table`` and ``iter_batches`` then give it the
    contract's type."""
    fs, _ = _filesystem(path)
    files = list_parquet_files(path)
    if not files:
        if kind is None:
            raise FileNotFoundError(f"no Parquet files under {path}")
        return pads.dataset(schema_for(kind).empty_table())
    found = []
    if kind is not None:
        for file in files:
            try:
                schema = pq.read_schema(file, filesystem=fs)
            except (pa.ArrowInvalid, OSError) as exc:
                raise SchemaMismatchError(f"{file}: not a readable Parquet file ({exc})") from exc
            validate_schema(schema, kind, where=file)
            found.append(schema)
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    if kind is not None:
        inferred = dataset.schema
        common = _common_timestamps(inferred, found, kind)
        if common is not inferred:  # the files' footers are read already: the schema is all that changes
            dataset = pads.dataset(files, filesystem=fs, format="parquet", schema=common)
    return dataset


def _common_timestamps(schema: pa.Schema, files: list[pa.Schema], kind: str) -> pa.Schema:
    """``schema`` with each of the ``kind`` contract's timestamp columns whose ``files`` hold another type as a
    UTC timestamp of the finest unit among them, which every file's values cast to without loss (a naive one
    read as UTC: ``schemas.core._type_matches``); ``schema`` itself when none differ."""
    for field in schema_for(kind):
        if not pa.types.is_timestamp(field.type) or field.name not in schema.names:
            continue
        types = {file.field(field.name).type for file in files}
        if types == {field.type}:
            continue
        unit = max((t.unit for t in types), key=("s", "ms", "us", "ns").index)
        index = schema.get_field_index(field.name)
        schema = schema.set(index, schema.field(index).with_type(pa.timestamp(unit, tz=field.type.tz)))
    return schema


def _as_contract(data: pa.Table | pa.RecordBatch, kind: str | None) -> pa.Table | pa.RecordBatch:
    """``data`` with the ``kind`` contract's timestamp columns cast to the contract's type (``open_dataset`` reads
    them in their files' finest unit); digits finer than the contract's unit are dropped, as LAIT's writers drop
    them."""
    if kind is None:
        return data
    schema = original = data.schema
    for field in schema_for(kind):
        index = schema.get_field_index(field.name)
        if pa.types.is_timestamp(field.type) and index >= 0 and schema.field(index).type != field.type:
            schema = schema.set(index, schema.field(index).with_type(field.type))
    return data if schema is original else data.cast(schema, safe=False)


def read_table(path: str, kind: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a whole dataset into memory (small datasets and tests; stream with ``iter_batches``)."""
    dataset = open_dataset(path, kind)
    return _as_contract(dataset.to_table(columns=columns), kind)


def iter_batches(
    path: str, kind: str | None = None, columns: list[str] | None = None, batch_size: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Stream a dataset as record batches, file by file, in a stable order."""
    dataset = open_dataset(path, kind)
    for batch in dataset.to_batches(columns=columns, batch_size=batch_size):
        yield _as_contract(batch, kind)


def count_rows(path: str, kind: str | None = None) -> int:
    """Row count from the Parquet footers, without reading data."""
    return open_dataset(path, kind).count_rows()


def to_table(rows: Iterable[dict[str, Any]], kind: str, **schema_kwargs) -> pa.Table:
    """Build a contract-typed table from row dicts; missing optional columns become nulls."""
    schema = schema_for(kind, **schema_kwargs)
    rows = list(rows)
    columns = {field.name: [_cell(row.get(field.name)) for row in rows] for field in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _cell(value: Any) -> Any:
    """pyarrow converts 1-d numpy arrays; a 2-d one (boxes, features) becomes a list of its rows."""
    if isinstance(value, np.ndarray) and value.ndim > 1:
        return list(value)
    return value


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth Parquet's dictionary encoding: the top-level strings (ids, languages, reasons).

    pyarrow dictionary-encodes every column by default. On columns of unique values it buys nothing and
    costs the reader dearly: a row group of 256 images' float16 region features read 4.3x slower
    (895 vs 207 ms), 512 JPEGs' bytes 14x slower (135 vs 10 ms), at the same file size
    (``benchmarks/bench_parquet.py``).
    """
    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


#: The values pyarrow's Parquet writer takes at a time, and so checks the page size after, in tables holding
#: ``image_bytes``. Its default, 1,024, puts a 1,024-row group of 200 kB images in one 200 MB page, which a
#: reader decompresses whole; 64 makes pages of 64 such images (about 1 MB of small ones).
IMAGE_WRITE_BATCH_SIZE = 64


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """pyarrow Parquet writer options for a LAIT table: dictionary encoding on the string columns only
    (``dictionary_columns``) and, in tables holding ``image_bytes``, pages of a few dozen images.

    1,024 images of 200 kB in a row group (``benchmarks/bench_parquet.py --pages``, 2-core CPU): a streamed read
    (``lait features`` workers) holds 32 MB of Arrow memory instead of 398 MB; files as large; written 2x as fast;
    read whole 1.05-1.4x as slowly (the filter's reading step 1.10x, +~20 us an image against the ms its
    decode takes). Pages of 16 held 14 MB but read whole up to 2x as slowly.
    """
    options: dict[str, Any] = {"use_dictionary": dictionary_columns(schema)}
    if "image_bytes" in schema.names:
        options["write_batch_size"] = IMAGE_WRITE_BATCH_SIZE
    return options


def write_table(table: pa.Table, path: str, kind: str | None = None, row_group_size: int = 1024,
                compression: str = "zstd") -> str:
    """Write one Parquet file atomically: a temporary name first, renamed when complete (LAIT's encoding,
    ``parquet_options``)."""
    if kind is not None:
        validate_schema(table.schema, kind, where=str(path))
    fs, inner = _filesystem(path)
    parent = posixpath.dirname(inner)
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(inner)}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, filesystem=fs, row_group_size=row_group_size, compression=compression,
                   **parquet_options(table.schema))
    fs.move(tmp, inner)
    return inner


def rejected_row(stage: str, reason: str, detail: str | None = None, **ids: Any) -> dict[str, Any]:
    """A row of the rejected schema: which stage, why (snake_case), and the record's ids."""
    row = {"stage": stage, "reason": reason, "detail": detail}
    row.update(ids)
    return row


class ShardWriter:
    """Buffers rows and writes numbered Parquet shards, each complete or absent.

    ``ShardWriter(out_dir, "candidates", prefix="part")`` writes ``part-00000.parquet``,
    ``part-00001.parquet``, ... holding ``rows_per_shard`` rows each; ``close()`` flushes the rest.
    A process killed mid-write leaves at most a hidden temporary file, which readers ignore.
    """

    def __init__(self, out_dir: str, kind: str, prefix: str = "part", rows_per_shard: int = 5000,
                 row_group_size: int = 1024, start_index: int | None = None, **schema_kwargs):
        self.out_dir = os.fspath(out_dir)
        self.kind = kind
        self.prefix = prefix
        self.rows_per_shard = rows_per_shard
        self.row_group_size = row_group_size
        self.schema_kwargs = schema_kwargs
        self._rows: list[dict[str, Any]] = []
        self.rows_written = 0
        self.shards: list[str] = []
        self._index = start_index if start_index is not None else self._next_free_index()

    def _next_free_index(self) -> int:
        try:
            existing = list_parquet_files(self.out_dir)
        except FileNotFoundError:
            return 0
        indices = []
        for file in existing:
            name = posixpath.basename(file)[: -len(PARQUET_SUFFIX)]
            head, _, number = name.rpartition("-")
            if head == self.prefix and number.isdigit():
                indices.append(int(number))
        return max(indices) + 1 if indices else 0

    def write(self, row: dict[str, Any]) -> None:
        """Add one row; a full buffer becomes a shard."""
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_shard:
            self.flush()

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def flush(self) -> str | None:
        """Write the buffered rows as the next shard (nothing when the buffer is empty)."""
        if not self._rows:
            return None
        table = to_table(self._rows, self.kind, **self.schema_kwargs)
        path = posixpath.join(self.out_dir, f"{self.prefix}-{self._index:05d}{PARQUET_SUFFIX}")
        write_table(table, path, self.kind, row_group_size=self.row_group_size)
        self.rows_written += len(self._rows)
        self.shards.append(path)
        self._rows = []
        self._index += 1
        return path

    def close(self) -> list[str]:
        self.flush()
        return self.shards

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the buffered rows are not written: a partial shard must not look complete.
        if exc_type is None:
            self.close()


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: set back at once
    os.umask(mask)
    return mask


#: The process's umask, read once at import (reading it sets it for a moment, which threads must not see midway).
_UMASK = _read_umask()


def new_file_mode() -> int:
    """The permissions ``open(path, "w")`` gives a new file (0o666 less the umask): ``tempfile.mkstemp`` makes its
    files owner-only (0o600), which a file renamed into place must not keep (a shared run folder's readers)."""
    return 0o666 & ~_UMASK


def write_atomically(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write a local file whole or not at all: ``write(handle)`` into a temporary file beside it (UTF-8 text, or
    ``binary``), flushed to disk and given the permissions ``open()`` would (``new_file_mode``), then a rename over
    ``path`` (a stop midway leaves the earlier file or the new one, never half of one; the temporary file goes on
    an error)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomically(path: str, data: Any) -> None:
    """Write a local JSON file whole or not at all (``write_atomically``)."""
    write_atomically(path, lambda handle: json.dump(data, handle, indent=2, default=str))
