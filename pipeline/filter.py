"""The filter stage: candidates -> rule filters -> [learned relevance] -> dedup and aggregation -> pairs.

Reads a candidates dataset (a crawl folder holding ``candidates/``, or the dataset itself; a local
path or any Beam filesystem such as gs:// or s3://) and writes ``OUT/pairs/`` (pairs schema),
``OUT/rejected/`` (every dropped record with its reason) and ``OUT/stats.json`` (the funnel).

Local run (explicit runner; LAIT maps DirectRunner to the in-process FnApiRunner, no downloads)::

    python -m pipeline.filter --input runs/demo/crawl --output runs/demo/filter \\
        --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing

Dataflow run (the same code; the workers run an image built from ``docker/dataflow.Dockerfile``,
which has LAIT and its stage packages: ``--setup_file`` alone would install LAIT without them)::

    python -m pipeline.filter --input gs://BUCKET/crawl --output gs://BUCKET/filter \\
        --runner DataflowRunner --project PROJECT --region REGION \\
        --temp_location gs://BUCKET/tmp --sdk_container_image IMAGE
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import posixpath
import sys
from typing import Any, Iterable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

import schemas
from filters import dedup, option_rules
from filters.rules import STAGE, STEP_OF_REASON, STEP_REASONS, RuleConfig, RuleFilters
from pipeline.options import (add_filter_arguments, beam_options, complete_options, config_from_args, fill_defaults,
                              ignored_options, reads_local_options, runner_name)
from pipeline.outputs import (PENDING_STATS, OutputExistsError, files_under, finish_output, input_reference,
                              is_folder, is_pattern, prepare_output, read_stats, refuse_empty_paths, stage_of)
from pipeline.parquet_beam import WriteToParquet
from pipeline.runners import make_pipeline

logger = logging.getLogger(__name__)

NAMESPACE = "lait.filter"
#: candidate columns the filter reads (the rest of the contract is checked but not loaded)
READ_COLUMNS = ("candidate_id", "image_id", "page_url", "image_url", "alt", "title", "figcaption", "page_lang",
                "page_text", "image_bytes", "width", "height")
TEXT_COLUMNS = ("candidate_id", "image_id", "page_url", "image_url", "alt", "title", "figcaption", "page_lang",
                "page_text")
#: columns a candidate cannot leave without (the contract's non-null ids); a row without one is ``missing_id``
ID_COLUMNS = ("candidate_id", "page_url", "image_url")


# ---------------------------------------------------------------------------------------------- input

def is_crawl_folder(path: str) -> bool:
    """Whether ``path`` is a finished crawl's run folder: its stats.json names the crawl stage. One that kept
    nothing may have no ``candidates/`` at all (an older crawl, or one on an object store, which holds no
    empty folders)."""
    return stage_of(posixpath.join(path, "stats.json")) == "crawl"


def input_root(path: str) -> str:
    """The candidates dataset an ``--input`` names: ``candidates/`` in a crawl folder, else the path itself."""
    path = path.rstrip("/")
    if path.endswith(".parquet") or is_pattern(path):
        return path
    candidates = posixpath.join(path, "candidates")
    if is_folder(candidates) or is_crawl_folder(path):
        return candidates
    return path


def _parquet_files(folder: str) -> list[str]:
    """The ``.parquet`` files under a folder, at any depth, the folder's name taken literally.

    In a local folder, a Parquet file named otherwise (Hive's ``000000_0``, Impala's ``*.parq``) is refused in one
    line naming it, as every other stage refuses it (``schemas.io.list_parquet_files``): left out, its rows were
    lost without a word."""
    if "://" in folder:
        return files_under(folder.rstrip("/"), "/**.parquet")
    import pyarrow.fs as pafs

    from schemas.io import begins_as_parquet, misnamed_parquet

    found, local = [], pafs.LocalFileSystem()
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if name.endswith(".parquet"):
                found.append(path)
            elif not _hidden(path, folder) and begins_as_parquet(local, path):
                raise misnamed_parquet(path, folder)
    return found


def resolve_input(path: str) -> list[str]:
    """The candidate Parquet files of a crawl folder (``candidates/`` inside) or of the dataset itself: a folder
    (one named ``*.parquet`` too, as Spark and Dask write them), a single file or a pattern.

    A crawl folder's ``candidates/`` is read alone, even when it holds no file or is missing (an empty crawl
    gives an empty run): the folder's other datasets (``rejected/``) are never taken for candidates. A path
    that exists is read as written, ``*``, ``?`` and ``[`` in its name included; only one that does not is a
    pattern.
    """
    path = path.rstrip("/")
    root = input_root(path)
    if root == path and is_folder(posixpath.join(path, "rejected")):  # a run folder, not a dataset
        raise FileNotFoundError(f"no candidates under {path}: it holds rejected/ but neither candidates/ nor the "
                                f"stats.json of a finished crawl")
    if is_pattern(root):
        found = [m.path for m in FileSystems.match([root])[0].metadata_list]
    elif is_folder(root):
        found = _parquet_files(root)
    else:  # a single file, or nothing (a crawl folder without candidates/)
        found = [root] if root.endswith(".parquet") and FileSystems.exists(root) else []
    files = sorted(file for file in found if not _hidden(file, path))
    if files or root != path:
        if not files:
            kept = (read_stats(posixpath.join(path, "stats.json")) or {}).get("kept")
            if type(kept) is int and kept > 0:  # as `lait features` says of the same folder
                raise FileNotFoundError(f"{path} is a crawl folder whose stats.json counts {kept} kept candidates, "
                                        f"but {root} holds no candidate files: they are missing")
            logger.warning("filter: %s holds no candidate files: an empty run", root)
        return files
    raise FileNotFoundError(f"no candidates under {path} (expected {path}/candidates/*.parquet or *.parquet)")


def _hidden(file: str, root: str) -> bool:
    """Hidden, temporary and Beam-temp files are not part of a dataset."""
    rel = file[len(root):].lstrip("/") if file.startswith(root) else posixpath.basename(file)
    return any(part.startswith((".", "_")) or part.startswith("beam-temp") for part in rel.split("/"))


def check_candidates(files: Iterable[str]) -> None:
    """Raise ``SchemaMismatchError`` (naming file and column) unless every file is a candidates table."""
    for file in files:
        try:
            with FileSystems.open(file) as handle:
                schema = pq.read_schema(handle)
        except (pa.ArrowInvalid, OSError) as exc:
            raise schemas.SchemaMismatchError(f"{file}: not a readable Parquet file ({exc})") from exc
        schemas.validate_schema(schema, "candidates", where=file)


def _as_binary(table: pa.Table) -> pa.Table:
    """The string columns as binary: Arrow does not validate UTF-8 on read, so the reader decodes each value."""
    return table.cast(pa.schema([pa.field(f.name, pa.binary()) if pa.types.is_string(f.type) or
                                 pa.types.is_large_string(f.type) else f for f in table.schema]))


class ReadRowGroupsDoFn(beam.DoFn):
    """(file, row group) -> candidate dicts; rows whose text is not valid UTF-8 (``invalid_utf8``) or that lack
    an id (``missing_id``: a null or empty candidate_id, page_url or image_url) leave as rejected rows, and so
    do the rows of a row group whose pages are corrupted under an intact footer (``row_group_unreadable``, from
    their ids read alone; when even those cannot be read, a ``ValueError`` names the file and row group)."""

    def __init__(self):
        self.rows_read = Metrics.counter(NAMESPACE, "in")
        self.invalid = Metrics.counter(NAMESPACE, "input/invalid_utf8")
        self.missing = Metrics.counter(NAMESPACE, "input/missing_id")
        self.unreadable = Metrics.counter(NAMESPACE, "input/row_group_unreadable")

    def process(self, item: tuple[str, int]):
        path, row_group = item
        with FileSystems.open(path) as handle:
            parquet = pq.ParquetFile(handle)
            try:
                table = parquet.read_row_group(row_group, columns=list(READ_COLUMNS))
            except (pa.ArrowException, OSError) as exc:
                yield from self._unreadable(parquet, path, row_group, " ".join(str(exc).split()))
                return
        # Arrow does not validate UTF-8 on read; decode ourselves so one bad row is a counted reject.
        for row in _as_binary(table).to_pylist():
            self.rows_read.inc()
            bad = None
            for column in TEXT_COLUMNS:
                value = row.get(column)
                if value is not None:
                    try:
                        row[column] = value.decode("utf-8")
                    except UnicodeDecodeError:
                        bad = bad or column
                        row[column] = value.decode("utf-8", "replace")
            missing = next((column for column in ID_COLUMNS if not row.get(column)), None)
            if bad is not None:
                self.invalid.inc()
                yield beam.pvalue.TaggedOutput("rejected", RuleFilters.rejected(
                    row, "invalid_utf8", f"column {bad!r} is not valid UTF-8 in {posixpath.basename(path)}", None))
            elif missing is not None:
                self.missing.inc()
                yield beam.pvalue.TaggedOutput("rejected", RuleFilters.rejected(
                    row, "missing_id", f"column {missing!r} is empty in {posixpath.basename(path)}", None))
            else:
                yield row

    def _unreadable(self, parquet: pq.ParquetFile, path: str, row_group: int, why: str):
        """The rows of a row group that cannot be read, as ``row_group_unreadable`` rejects from their ids."""
        try:
            ids = parquet.read_row_group(row_group, columns=[*ID_COLUMNS, "image_id"])
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path}: row group {row_group} is unreadable, its ids too "
                             f"({' '.join(str(exc).split())})") from None
        detail = f"row group {row_group} of {posixpath.basename(path)} is unreadable: {why}"
        for row in _as_binary(ids).to_pylist():
            self.rows_read.inc()
            self.unreadable.inc()
            row = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in row.items()}
            yield beam.pvalue.TaggedOutput("rejected", RuleFilters.rejected(row, "row_group_unreadable", detail, None))


def _row_groups(path: str):
    with FileSystems.open(path) as handle:
        count = pq.ParquetFile(handle).metadata.num_row_groups
    return [(path, i) for i in range(count)]


class ReadCandidates(beam.PTransform):
    """Candidate dicts from Parquet files, one work item per row group; tags ``candidates``, ``rejected``."""

    def __init__(self, files: list[str]):
        super().__init__()
        self.files = files

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "RowGroups" >> beam.FlatMap(_row_groups)
            | "Spread" >> beam.Reshuffle()  # row groups, not files, are the unit of parallel work
            | "ReadRows" >> beam.ParDo(ReadRowGroupsDoFn()).with_outputs("rejected", main="candidates")
        )


# ---------------------------------------------------------------------------------------------- rules

class ApplyRuleFiltersDoFn(beam.DoFn):
    """Runs ``RuleFilters`` on each candidate: pair dicts out, rejected rows to the ``rejected`` tag."""

    def __init__(self, config: RuleConfig):
        self.config = config
        self.rules = None
        self._counters = {}

    def setup(self):
        self.rules = RuleFilters(self.config)
        self.rules.language.identifier.load()  # once per worker, before the first bundle

    def _count(self, name: str):
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(NAMESPACE, name)
        counter.inc()

    def process(self, candidate: dict[str, Any]):
        try:
            pair, rejected = self.rules.apply(candidate)
        except Exception as exc:  # a bug must not lose the record: it leaves as a counted reject
            logger.exception("rule filters failed on candidate %s", candidate.get("candidate_id"))
            pair, rejected = None, RuleFilters.rejected(candidate, "filter_error", f"{type(exc).__name__}: {exc}", None)
        if pair is not None:
            self._count("rules/kept")
            yield pair
        else:
            self._count(f"{STEP_OF_REASON.get(rejected['reason'], 'other')}/{rejected['reason']}")
            yield beam.pvalue.TaggedOutput("rejected", rejected)


class ApplyRuleFilters(beam.PTransform):
    """Text, language, vocabulary and image rules; tags ``pairs`` and ``rejected``."""

    def __init__(self, config: RuleConfig | None = None):
        super().__init__()
        self.config = config or RuleConfig()

    def expand(self, candidates):
        return candidates | "Rules" >> beam.ParDo(ApplyRuleFiltersDoFn(self.config)).with_outputs(
            "rejected", main="pairs")


# ---------------------------------------------------------------------------------------------- dedup

def _emit(kept_rejected, counter_prefix: str):
    kept, rejected = kept_rejected
    yield from kept
    for row in rejected:
        Metrics.counter(NAMESPACE, f"{counter_prefix}/{row['reason']}").inc()
        yield beam.pvalue.TaggedOutput("rejected", row)


class DropSharedCaptions(beam.PTransform):
    """Drops every pair whose caption is on more than ``max_images`` distinct images; tags main, ``rejected``."""

    def __init__(self, max_images: int | None):
        super().__init__()
        self.max_images = max_images

    def expand(self, pairs):
        max_images = self.max_images
        return (
            pairs
            | "ByCaption" >> beam.Map(lambda p: (dedup.caption_key(p["caption"]), p))
            | "GroupCaption" >> beam.GroupByKey()
            | "Split" >> beam.FlatMap(lambda kv: _emit(dedup.split_shared_caption(kv[1], max_images), "dedup"))
            .with_outputs("rejected", main="kept")
        )


class KeepBestTextPerImage(beam.PTransform):
    """One pair per image (sha256): the best by relevance, else text quality; tags main, ``rejected``."""

    def expand(self, pairs):
        return (
            pairs
            | "ByImage" >> beam.Map(lambda p: (p["image_id"], p))
            | "GroupImage" >> beam.GroupByKey()
            | "Split" >> beam.FlatMap(lambda kv: _emit(dedup.split_best_text(kv[1]), "dedup"))
            .with_outputs("rejected", main="kept")
        )


def _band_items(pair, distance):
    if pair.get("phash"):
        item = (pair["pair_id"], pair["phash"], dedup.rank_key(pair))
        for key in dedup.phash_bands(pair["phash"], distance):
            yield key, item


def _ranked_marks(items, distance):
    """``dedup.near_duplicates`` of one band bucket, each better pair with its rank: (pair_id, (rank, better))."""
    items = list(items)
    rank = {pair_id: key for pair_id, _, key in items}
    return [(pair_id, (rank[better], better)) for pair_id, better in dedup.near_duplicates(items, distance)]


def _split_marked(kv):
    """A pair with the marks of every band bucket it shares with a better one: rejected, naming the best-ranked
    of them (then the least pair_id): the order the marks arrive in is Beam's, not fixed from run to run."""
    _, grouped = kv
    best = [min(grouped["mark"])[1]] if grouped["mark"] else []
    marks = [(pair["pair_id"], better) for pair in grouped["pair"] for better in best]
    return _emit(dedup.split_near_duplicates(list(grouped["pair"]), marks), "dedup")


class DropNearDuplicates(beam.PTransform):
    """Drops images within ``distance`` perceptual-hash bits of a better-ranked one; tags main, ``rejected``."""

    def __init__(self, distance: int):
        super().__init__()
        self.distance = distance

    def expand(self, pairs):
        distance = self.distance
        marks = (
            pairs
            | "Bands" >> beam.FlatMap(_band_items, distance)
            | "GroupBand" >> beam.GroupByKey()
            | "Compare" >> beam.FlatMap(lambda kv: _ranked_marks(kv[1], distance))
        )
        keyed = pairs | "ByPair" >> beam.Map(lambda p: (p["pair_id"], p))
        return (
            {"pair": keyed, "mark": marks}
            | "Join" >> beam.CoGroupByKey()
            | "Split" >> beam.FlatMap(lambda kv: _split_marked((kv[0], {k: list(v) for k, v in kv[1].items()})))
            .with_outputs("rejected", main="kept")
        )


def _without_image_bytes(pair: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in pair.items() if name != "image_bytes"}


def _with_image_bytes(kv) -> Iterable[dict[str, Any]]:
    """A kept pair (bytes left out) joined with its bytes: the copies of one ``pair_id`` share one image."""
    _, grouped = kv
    image_bytes = next(iter(grouped["bytes"]), None)
    for pair in grouped["kept"]:
        yield {**pair, "image_bytes": image_bytes}


class AggregatePairs(beam.PTransform):
    """The paper's aggregation and dedup: shared captions, best text per image, near duplicates.

    The three steps group pairs by caption, by image and by hash band, so they run on the pairs without
    their image bytes: one boilerplate caption ("product image") on 100,000 images, or one logo on 100,000
    pages, makes one group, and with the bytes it would have to fit in one worker's memory. The kept pairs get
    their bytes back by ``pair_id`` at the end, so a run shuffles the bytes once instead of once per step.

    Returns a dict with ``kept`` (pair dicts) and ``rejected`` (rejected rows).
    """

    def __init__(self, max_images_per_caption: int | None = 10, phash_distance: int = 4):
        super().__init__()
        self.max_images_per_caption = max_images_per_caption
        self.phash_distance = phash_distance

    def expand(self, pairs):
        image_bytes = pairs | "BytesByPair" >> beam.Map(lambda p: (p["pair_id"], p.get("image_bytes")))
        light = pairs | "LeaveBytesOut" >> beam.Map(_without_image_bytes)
        rejected = []
        if self.max_images_per_caption:
            shared = light | "DropSharedCaptions" >> DropSharedCaptions(self.max_images_per_caption)
            light, rejected = shared.kept, rejected + [shared.rejected]
        best = light | "KeepBestTextPerImage" >> KeepBestTextPerImage()
        light, rejected = best.kept, rejected + [best.rejected]
        if self.phash_distance >= 0:
            near = light | "DropNearDuplicates" >> DropNearDuplicates(self.phash_distance)
            light, rejected = near.kept, rejected + [near.rejected]
        kept = (
            {"kept": light | "KeptByPair" >> beam.Map(lambda p: (p["pair_id"], p)), "bytes": image_bytes}
            | "JoinBytes" >> beam.CoGroupByKey()
            | "WithBytes" >> beam.FlatMap(_with_image_bytes)
        )
        return {"kept": kept, "rejected": rejected | "FlattenRejected" >> beam.Flatten()}


# ---------------------------------------------------------------------------------------------- stats

def funnel(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the funnel: each step with the records that reached it, it rejected, and it passed on."""
    remaining = stats["in"]
    rows = []
    for step in STEP_REASONS:
        reasons = {r: n for r, n in stats["rejected_by_reason"].items() if STEP_OF_REASON.get(r) == step}
        rejected = sum(reasons.values())
        rows.append({"step": step, "in": remaining, "rejected": rejected, "out": remaining - rejected,
                     "reasons": reasons})
        remaining -= rejected
    other = {r: n for r, n in stats["rejected_by_reason"].items() if r not in STEP_OF_REASON}
    if other:
        rejected = sum(other.values())
        rows.append({"step": "other", "in": remaining, "rejected": rejected, "out": remaining - rejected,
                     "reasons": other})
    return rows


def funnel_table(stats: dict[str, Any]) -> str:
    """The funnel as a fixed-width text table."""
    lines = [f"{'step':<22}{'in':>10}{'rejected':>10}{'out':>10}"]
    for row in stats["funnel"]:
        lines.append(f"{row['step']:<22}{row['in']:>10,}{row['rejected']:>10,}{row['out']:>10,}")
        for reason, count in sorted(row["reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason:<30}{count:>20,}")
    share = stats["kept"] / stats["in"] if stats["in"] else 0.0
    lines.append(f"kept {stats['kept']:,} of {stats['in']:,} ({share:.1%}); rejected {stats['rejected']:,}")
    return "\n".join(lines)


def build_stats(n_in: int, n_kept: int, reason_counts: Iterable[tuple[tuple[str, str], int]],
                relevance_summary: list[dict], settings: dict[str, Any],
                input_ref: str | None = None) -> dict[str, Any]:
    """The stats.json dict; raises when the books do not balance (in != kept + rejected).

    ``input_ref``: the input, as the audit finds it (``input_reference``); ``settings`` keep it as given.
    """
    by_reason: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    for (stage, reason), count in reason_counts:
        by_reason[reason] = by_reason.get(reason, 0) + count
        by_stage[stage] = by_stage.get(stage, 0) + count
    rejected = sum(by_reason.values())
    if n_in != n_kept + rejected:
        raise RuntimeError(f"filter books do not balance: in {n_in} != kept {n_kept} + rejected {rejected}")
    stats = {"stage": STAGE, "input": input_ref if input_ref is not None else settings.get("input"),
             "in": n_in, "kept": n_kept, "rejected": rejected,
             "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
             "rejected_by_stage": by_stage, "settings": settings,
             "relevance": relevance_summary[0] if relevance_summary else None}
    stats["funnel"] = funnel(stats)
    stats["filters"] = {row["step"]: {"rejected": row["rejected"], "reasons": row["reasons"]} for row in stats["funnel"]}
    stats["funnel_table"] = funnel_table(stats)
    return stats


def _write_stats(_, path, n_in, n_kept, reason_counts, relevance_summary, settings, input_ref=None):
    stats = build_stats(n_in, n_kept, reason_counts, relevance_summary, settings, input_ref)
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(stats, indent=2, default=str).encode())
    return stats


def _schema_row(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: row.get(name) for name in names}


class WriteDataset(beam.PTransform):
    """Rows to compressed, sharded Parquet files ``<folder>/part-SSSSS-of-NNNNN.parquet`` of a LAIT kind."""

    def __init__(self, folder: str, kind: str, codec: str = "zstd"):
        super().__init__()
        self.folder = folder
        self.kind = kind
        self.codec = codec

    def expand(self, rows):
        schema = schemas.schema_for(self.kind)
        names = tuple(schema.names)
        return (
            rows
            | "ToSchema" >> beam.Map(_schema_row, names)
            | "Write" >> WriteToParquet(posixpath.join(self.folder, "part"), schema, codec=self.codec,
                                        file_name_suffix=".parquet")
        )


# ---------------------------------------------------------------------------------------------- options

def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m pipeline.filter`` (Beam's options pass through)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_filter_arguments(parser)
    return parser


#: The options of the learned relevance step other than ``--relevance`` itself: they need it. Their parser
#: default is None, so that one given at its default value is told from one left out.
RELEVANCE_OPTIONS = ("relevance_threshold", "relevance_keep_rate", "relevance_batch_size", "relevance_device")


def check_relevance_args(args: argparse.Namespace) -> None:
    """Check the relevance options and load the model once (on the CPU): a bad option, one given without
    ``--relevance`` (at any value, its default too), or a missing or corrupt model is a ValueError or
    FileNotFoundError before the run touches its output."""
    threshold, keep_rate = args.relevance_threshold, args.relevance_keep_rate
    if keep_rate is not None:  # (config_from_args checks it first, by the same rule)
        option_rules.check("relevance_keep_rate", keep_rate, "--relevance-keep-rate")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"--relevance-threshold must be a number, got {threshold}")
    if args.relevance_batch_size is not None and args.relevance_batch_size < 1:
        raise ValueError(f"--relevance-batch-size must be 1 or more, got {args.relevance_batch_size}")
    device = args.relevance_device
    if device is not None and str(device).strip().lower() not in ("cpu", "gpu", "cuda"):
        raise ValueError(f"--relevance-device must be cpu or gpu, got {device!r}")
    if not args.relevance:
        given = ["--" + name.replace("_", "-") for name in RELEVANCE_OPTIONS if getattr(args, name) is not None]
        if given:
            names = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
            raise ValueError(f"{names} need{'s' if len(given) == 1 else ''} --relevance MODEL")
        return
    if threshold is not None and keep_rate is not None:
        raise ValueError("give --relevance-threshold or --relevance-keep-rate, not both")
    from filters.relevance import load

    load(args.relevance, device="cpu")


def warn_ignored_options(args: argparse.Namespace, config: RuleConfig) -> None:
    """Log a warning for each option given whose value the run cannot use (``pipeline.options.ignored_options``:
    ``--max-oov-rate`` with ``--vocab none``). The run goes on."""
    for message in ignored_options(args, config):
        logger.warning("%s", message)


def check_paths(input_path: Any, output_path: Any) -> None:
    """Refuse an ``--input`` or ``--output`` that is empty or white space alone (an unset ``$OUT`` in a script),
    in one line naming the option, before anything is read or written: the output's ``pairs/``, ``rejected/``
    and ``stats.json`` would be the current folder's, removed by ``--overwrite``."""
    refuse_empty_paths(("--input", input_path, "the crawl folder or candidates dataset to filter"),
                       ("--output", output_path, "the folder to write the pairs to"))


def _prepare_output(output: str, overwrite: bool, input_path: str | None = None) -> None:
    """The shared output rule (``pipeline.outputs``), and a local folder made ready; a folder that cannot be
    made or cleared (its parent is a file, no permission) is a one-line ValueError naming it."""
    inputs = (input_root(input_path),) if input_path else ()
    try:
        prepare_output(output, STAGE, ("pairs", "rejected"), overwrite, hint="pass --overwrite", inputs=inputs)
        if "://" not in output and not os.path.isdir(output):
            os.makedirs(output)
    except OutputExistsError:
        raise
    except OSError as exc:  # Beam's BeamIOError wraps the OSError of the file it could not handle
        cause = exc.args[0] if exc.args and isinstance(exc.args[0], OSError) else exc
        why = getattr(cause, "strerror", None) or " ".join(str(cause).split())
        raise ValueError(f"--output {output}: cannot prepare the output folder ({why})") from None


# ---------------------------------------------------------------------------------------------- run

#: What ``lait``'s own parser puts in the namespace beside the stage's options (the subcommand, ``-v``, the
#: function run): no setting of the stage, so stats.json leaves them out.
CLI_ENTRIES = ("command", "verbose", "func")


def stage_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options stats.json records: every one of the stage's that is JSON (not ``lait``'s ``CLI_ENTRIES``),
    ``input`` as given."""
    settings = {}
    for name, value in vars(args).items():
        if name in ("input", "output", "overwrite") or name in CLI_ENTRIES:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        settings[name] = value
    settings["input"] = args.input
    return settings


def build(p: beam.Pipeline, args: argparse.Namespace, files: list[str], config: RuleConfig | None = None) -> None:
    """Add the whole filter stage to pipeline ``p``.

    ``args`` may lack options, or leave them None, as a Python caller's namespace does: their defaults are put in
    it first (``fill_defaults``, as ``run_with_args`` does), so that the run and its stats.json see the values used.
    """
    fill_defaults(args, config)
    config = config or config_from_args(args)
    read = p | "ReadCandidates" >> ReadCandidates(files)
    rules = read.candidates | "ApplyRuleFilters" >> ApplyRuleFilters(config)
    pairs = rules.pairs
    rejected = [read.rejected, rules.rejected]
    relevance_summary = p | "NoRelevance" >> beam.Create([])
    if args.relevance:
        from pipeline import relevance  # only when asked for: it pulls in torch and the model

        scored = pairs | "ScoreRelevance" >> relevance.ScoreRelevance(
            args.relevance, batch_size=args.relevance_batch_size, device=args.relevance_device)
        judged = scored | "ThresholdRelevance" >> relevance.ThresholdRelevance(
            threshold=args.relevance_threshold, keep_rate=args.relevance_keep_rate, spec=args.relevance)
        pairs = judged["kept"]
        rejected.append(judged["rejected"])
        relevance_summary = judged["summary"]
    aggregated = pairs | "AggregatePairs" >> AggregatePairs(args.max_images_per_caption or None, args.phash_distance)
    kept = aggregated["kept"]
    rejected = (rejected + [aggregated["rejected"]]) | "AllRejected" >> beam.Flatten()

    kept | "WritePairs" >> WriteDataset(posixpath.join(args.output, "pairs"), "pairs", args.codec)
    rejected | "WriteRejected" >> WriteDataset(posixpath.join(args.output, "rejected"), "rejected", args.codec)

    n_read = ((read.candidates, read.rejected) | "AllRead" >> beam.Flatten()
              | "CountIn" >> beam.combiners.Count.Globally())
    n_kept = kept | "CountKept" >> beam.combiners.Count.Globally()
    reasons = (rejected | "ReasonOf" >> beam.Map(lambda r: (r["stage"], r["reason"]))
               | "CountReasons" >> beam.combiners.Count.PerElement())
    settings = stage_settings(args)
    (p | "StatsTrigger" >> beam.Create([None])
     | "WriteStats" >> beam.Map(_write_stats, posixpath.join(args.output, PENDING_STATS),
                                beam.pvalue.AsSingleton(n_read), beam.pvalue.AsSingleton(n_kept),
                                beam.pvalue.AsList(reasons), beam.pvalue.AsList(relevance_summary), settings,
                                input_reference(args.input, args.output)))


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Run the filter stage; returns the stats dict (also written to OUTPUT/stats.json)."""
    args, beam_args = build_parser().parse_known_args(argv)
    return run_with_args(args, beam_args, test_pipeline)


def _record_beam_options(args: argparse.Namespace, options: PipelineOptions) -> None:
    """Put the runner used, and the local worker settings ``lait filter`` names, in ``args`` as Beam took them
    (a ``--runner`` after ``--`` overrides ``lait filter``'s own), so that stats.json records what ran. A runner
    that never reads the local settings (``pipeline.options.reads_local_options``: Dataflow, a runner given by
    module path) gets none: Beam's defaults for them would record settings that did not apply."""
    args.runner = runner_name(options)
    local = reads_local_options(args.runner)
    direct = options.view_as(DirectOptions)
    for name in ("direct_num_workers", "direct_running_mode"):
        if hasattr(args, name):
            if local:
                setattr(args, name, getattr(direct, name))
            else:
                delattr(args, name)


def run_with_args(args: argparse.Namespace, beam_args: list[str],
                  test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """``run`` for an already parsed namespace (``lait filter`` parses its own).

    Every option, Beam's and the runner included, is checked, and the relevance model loaded, before the
    output folder is touched: a bad option is a ValueError (or FileNotFoundError) and leaves a previous run's
    output as it was. ``args.runner`` is set to the runner the run uses (``_record_beam_options``).
    """
    check_paths(getattr(args, "input", None), getattr(args, "output", None))
    complete_options(args)  # a Python caller's namespace may lack options: they are left out, as not given
    config = config_from_args(args)
    check_relevance_args(args)
    warn_ignored_options(args, config)
    fill_defaults(args, config)
    options = beam_options(beam_args, vars(args))
    files = resolve_input(args.input)
    check_candidates(files)
    p = test_pipeline if test_pipeline is not None else make_pipeline(options)
    _record_beam_options(args, p.options if test_pipeline is not None else options)
    _prepare_output(args.output, args.overwrite, args.input)
    build(p, args, files, config)
    result = p.run()
    result.wait_until_finish()
    finish_output(args.output)
    with FileSystems.open(posixpath.join(args.output, "stats.json")) as handle:
        stats = json.loads(handle.read())
    logger.info("filter: kept %d of %d", stats["kept"], stats["in"])
    return stats


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.filter``: run, then print the funnel table."""
    from pipeline.runners import failure_line, run_failures

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        stats = run(argv)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # SchemaMismatchError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except run_failures() as exc:  # a Beam worker died, or its error came back as text: one line
        status, line = failure_line(exc)
        print(f"error: {line}", file=sys.stderr)
        return status
    print(stats["funnel_table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
