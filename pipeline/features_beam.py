"""The features stage as a Beam transform around ``RunInference``, for Dataflow GPU workers.

``pipeline.features`` holds the local runner and re-exports these names lazily, so the local
runner (and the GPU benchmark) imports no Beam. Run it as ``python -m pipeline.features ...``
(see that module's docstring for the Dataflow command).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import posixpath
import zlib
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow as pa
import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

import schemas
from model.detectors import attribute_count, build_detector, feature_dim_of, read_class_names
from model.detectors.base import RegionDetector, padded_size
from model.detectors.images import DetectorInput, ImageRejected, decode_for_detector, network_size_of
from pipeline.features import (MAX_WAIT_BATCHES, RUN_MARKER_NAME, SHARD_PREFIX, STAGE, DecodedBatch, FeatureOptions,
                               ImageRegions, RowGroupStream, _batches, _check_output_outside, _join, _open_parquet, _why,
                               _write_json, check_device_name, check_input_file, check_not_in_another_run, check_paths,
                               check_image_ids, classes_info, detect_by_shape, effective_topk, ids_not_utf8,
                               input_files, output_schema, piece_size, read_image_ids, resolve_input,
                               to_original_pixels)
from pipeline.outputs import (OutputExistsError, clear_run_marker, files_under, input_reference, prepare_output,
                              read_run_marker, running_run_problem)
from pipeline.parquet_beam import WriteToParquet
from pipeline.runners import is_local_runner, make_pipeline

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "lait.features"
REJECTED = "rejected"


#: The most keys of the features stage's one shuffle. Dataflow runs each key's group in one thread of one
#: worker and cannot split it, so the keys must outnumber the workers several times over for the work to
#: spread and balance: 1,024 keeps a few hundred GPU workers busy.
MAX_BUCKETS = 1024


def bucket_count(rows: int, batch_size: int) -> int:
    """How many buckets of image ids to key ``rows`` input rows by: one per ``MAX_WAIT_BATCHES`` batches of rows,
    at least one and at most ``MAX_BUCKETS``.

    A group then holds as many images as the local runner's shape queues wait for, so its runs of one
    shape fill batches as well as the local runner's do; fewer, larger groups would cost parallelism,
    more and smaller ones batch fill (a group's shapes are its bucket's images of each shape).
    """
    return max(1, min(MAX_BUCKETS, rows // (MAX_WAIT_BATCHES * batch_size)))


def image_bucket(image_id: str, buckets: int) -> int:
    """A stable bucket of an image id (CRC-32, not ``hash()``: Python salts the hash of a str per process)."""
    return zlib.crc32(image_id.encode("utf-8")) % buckets


class ReadRowGroupsFn(beam.DoFn):
    """(file, row group) -> ``image_id`` + ``image_bytes`` rows, in the group's order, streamed as the local runner's
    workers read: ``RowGroupStream`` batches of ``batch`` rows (``piece_size`` of the detector batch), the file opened
    without pre-buffering, so a worker thread holds a batch and the page it comes from, not the group.

    A whole read (``read_row_group``, as before) held three copies of the group's ``image_bytes`` at its peak (the
    compressed column chunk, the decompressed page, the Arrow array) and then the group again as Python ``bytes``.
    Streamed, what a thread holds is bounded by the file's pages: LAIT writes images in pages of 64
    (``schemas.io.parquet_options``); files written before hold a group's images in one page, which a stream holds
    compressed and decompressed while its rows pass (two copies).

    A row group whose pages are corrupted (the footer is intact) gives its rows with, in place of the bytes, a
    ``str`` saying why; they leave as ``row_group_unreadable`` rejects. A stream that fails cannot go on: the rows it
    gave before keep their bytes and the rest of the group leaves this way, as in the local runner (in one-page
    groups that is the whole group, as when the group was read whole). When even its ids cannot be read, or one
    is not UTF-8 text (Arrow does not check it on read), a ``ValueError`` names the file and row group, as
    ``read_image_ids`` does (a local runner has found it on the driver already: ``run``)."""

    def __init__(self, dataset: str, batch: int = 16):
        self.dataset, self.batch = dataset, batch

    def process(self, item: tuple[str, int]):
        file, group = item
        parquet = _open_parquet(self.dataset, file, streamed=True)
        count = parquet.metadata.row_group(group).num_rows
        stream = RowGroupStream(parquet, group, self.batch)
        for start in range(0, count, self.batch):
            try:
                rows = stream.take(list(range(start, min(count, start + self.batch)))).to_pylist()
            except UnicodeDecodeError:  # Python's decode named neither file nor column (image_bytes is binary)
                raise ValueError(ids_not_utf8(file, group)) from None
            except (pa.ArrowException, OSError) as exc:  # corrupted pages under an intact footer
                del stream  # its memory goes before the ids are read
                detail = f"{file} row group {group}: {_why(exc)}"
                for image_id in read_image_ids(parquet, file, group)[start:]:
                    yield {"image_id": image_id, "image_bytes": detail}
                return
            yield from rows
            rows = None  # the batch's bytes go before the next batch is read


class KeyRowsByImageFn(beam.DoFn):
    """(bucket of image_id, (image_id, image_bytes)) per input row; rows without an image_id leave as rejects."""

    def __init__(self, buckets: int = MAX_BUCKETS):
        self.buckets = buckets
        self.rows_without_id = Metrics.counter(METRICS_NAMESPACE, "rejected/image_id_missing")

    def process(self, row: dict):
        image_id = row.get("image_id")
        if schemas.missing_image_id(image_id):
            self.rows_without_id.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, schemas.rejected_row(STAGE, "image_id_missing", "input row without image_id"))
            return
        yield image_bucket(image_id, self.buckets), (image_id, row.get("image_bytes"))


class _ResizingDoFn(beam.DoFn):
    """A DoFn that knows the detector's network input size (short side ``min_size``, long side at most ``max_size``)."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def _input_size(self, width: int, height: int) -> tuple[int, int]:
        from model.detectors.base import network_input_size

        return network_input_size(width, height, self.min_size, self.max_size)


class DistinctImagesByShapeFn(_ResizingDoFn):
    """A group of the shuffle (the rows of a bucket of image ids) -> each distinct image once, ``(image_id, bytes)``,
    in runs of one padded shape.

    ``detect_by_shape`` runs each padded shape of a RunInference batch apart, so an image's regions never
    depend on its batch-mates; RunInference batches consecutive elements, so runs of one shape keep its
    batches whole instead of split into one small detector call per shape. The runs come from the local
    runner's shape queues (``_batches``, up to ``batch_size`` images, a rare shape's cut short after
    ``MAX_WAIT_BATCHES`` batches' worth of arrivals), keyed by the shape read from the header alone. At most
    that many batches of images wait, still encoded (about 300 MB at batch 64 of 150 KB JPEGs), however large
    the group.

    An image is judged from any readable copy (the first to arrive). Its copies all come from row groups that
    could not be read (``ReadRowGroupsFn`` gives a ``str`` saying why in place of the bytes): it comes last,
    with that ``str``, and leaves as a ``row_group_unreadable`` reject.
    """

    def __init__(self, min_size: int, max_size: int, divisible: int, batch_size: int):
        super().__init__(min_size, max_size)
        self.divisible, self.batch_size = divisible, batch_size

    def padded_shape_of(self, data: bytes | None) -> tuple[int, int] | None:
        """The (height, width) an image's batch is padded to, from its header alone; None when it cannot be read
        (its decode says why)."""
        size = network_size_of(data, self._input_size)
        return None if size is None else padded_size(size[1], size[0], self.divisible)

    def process(self, element: tuple[int, Iterable[tuple[str, bytes | str | None]]]):
        _, rows = element
        unreadable: dict[str, str] = {}
        # _batches queues the local runner's decoded pieces; here a piece is one image, still encoded
        pieces = (DecodedBatch(0, [image_id], [data], []) for image_id, data in _first_readable(rows, unreadable))
        for run in _batches(pieces, self.batch_size, lambda piece: None, key=self.padded_shape_of):
            for pending in run:
                yield pending.image_id, pending.input
        yield from unreadable.items()


def _first_readable(rows: Iterable[tuple[str, bytes | str | None]],
                    unreadable: dict[str, str]) -> Iterator[tuple[str, bytes | None]]:
    """The first copy of each image_id that is not a ``str`` (an unreadable row group's), as the rows arrive;
    ``unreadable`` collects the ids met only as a ``str`` so far, with it."""
    seen: set[str] = set()
    for image_id, data in rows:
        if image_id in seen:
            continue
        if isinstance(data, str):
            unreadable.setdefault(image_id, data)
            continue
        seen.add(image_id)
        unreadable.pop(image_id, None)
        yield image_id, data


class DecodeImagesFn(_ResizingDoFn):
    """Decode one distinct image for the detector; undecodable ones leave as rejected rows."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__(min_size, max_size)
        self.images_in = Metrics.counter(METRICS_NAMESPACE, "in")

    def process(self, element: tuple[str, bytes | str | None]):
        image_id, data = element
        self.images_in.inc()
        if isinstance(data, str):  # its row group could not be read
            Metrics.counter(METRICS_NAMESPACE, "rejected/row_group_unreadable").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, schemas.rejected_row(STAGE, "row_group_unreadable", data,
                                                                          image_id=image_id))
            return
        try:
            yield image_id, decode_for_detector(data, self._input_size)
        except ImageRejected as exc:
            Metrics.counter(METRICS_NAMESPACE, f"rejected/{exc.reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, schemas.rejected_row(STAGE, exc.reason, exc.detail, image_id=image_id))


class RegionModelHandler(ModelHandler):
    """RunInference handler: loads the detector once per worker, detects regions for a batch of decoded images."""

    def __init__(self, options: FeatureOptions):
        self.options = options

    def load_model(self) -> RegionDetector:
        return self.options.load_detector()

    def run_inference(self, batch: Sequence[DetectorInput], model: RegionDetector, inference_args=None):
        outputs = detect_by_shape(model, [item.pixels for item in batch], self.options.selection, self.options.topk)
        return [PredictionResult(item, regions) for item, regions in zip(batch, outputs)]

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": self.options.batch_size}

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class ToRegionRowsFn(beam.DoFn):
    """A prediction to a regions row (boxes in original pixels), or to a rejected row."""

    def __init__(self, detector_name: str):
        self.detector_name = detector_name
        self.kept = Metrics.counter(METRICS_NAMESPACE, "kept")

    def process(self, element: tuple[str, PredictionResult]):
        image_id, prediction = element
        image, regions = prediction.example, prediction.inference
        reason = "out_of_memory" if regions is None else "no_regions" if regions.num_boxes == 0 else None
        if reason:
            Metrics.counter(METRICS_NAMESPACE, f"rejected/{reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, schemas.rejected_row(STAGE, reason, None, image_id=image_id))
            return
        self.kept.inc()
        yield region_row(ImageRegions(image_id, image.width, image.height, to_original_pixels(regions, image)), self.detector_name)


def region_row(item: ImageRegions, detector_name: str) -> dict[str, Any]:
    """One regions row as a dict (the Beam writer's input); numpy rows, not Python floats."""
    r = item.regions
    row = {
        "image_id": item.image_id, "image_width": item.width, "image_height": item.height, "num_boxes": r.num_boxes,
        "boxes": list(r.boxes), "features": list(r.features), "class_ids": r.class_ids, "class_scores": r.class_scores,
        "topk_class_ids": list(r.topk_class_ids), "topk_class_probs": list(r.topk_class_probs), "detector": detector_name,
    }
    if r.topk_attribute_ids is not None:
        row.update(topk_attribute_ids=list(r.topk_attribute_ids), topk_attribute_probs=list(r.topk_attribute_probs))
    return row


class ExtractRegions(beam.PTransform):
    """Rows with ``image_id`` + ``image_bytes`` to ``{"regions": rows, "rejected": rows}``, each distinct image once.

    The image bytes cross one shuffle: the rows keyed by a bucket of their image_id (``buckets`` of them:
    ``bucket_count`` of the input rows, ``MAX_BUCKETS`` when unknown), so all copies of an image meet in one
    group, where each image is kept once and the images are ordered in runs of one padded shape for
    RunInference's batches.
    """

    def __init__(self, options: FeatureOptions, buckets: int = MAX_BUCKETS):
        super().__init__()
        from model.detectors import input_sizes, size_divisible

        self.options = options
        self.buckets = buckets
        self.sizes = input_sizes(options.detector, options.weights, options.detector_config)
        self.divisible = size_divisible(options.detector)

    def expand(self, rows):
        keyed = rows | "KeyByImageBucket" >> beam.ParDo(KeyRowsByImageFn(self.buckets)).with_outputs(
            REJECTED, main="images")
        decoded = (
            keyed.images
            | "GroupByImageBucket" >> beam.GroupByKey()
            | "DistinctImagesByShape" >> beam.ParDo(DistinctImagesByShapeFn(*self.sizes, self.divisible,
                                                                            self.options.batch_size))
            | "DecodeImages" >> beam.ParDo(DecodeImagesFn(*self.sizes)).with_outputs(REJECTED, main="images")
        )
        rows_out = (
            decoded.images
            | "RunDetector" >> RunInference(KeyedModelHandler(RegionModelHandler(self.options)))
            | "ToRegionRows" >> beam.ParDo(ToRegionRowsFn(self.options.detector)).with_outputs(REJECTED, main="regions")
        )
        rejected = (keyed.rejected, decoded.rejected, rows_out.rejected) | "AllRejected" >> beam.Flatten()
        return {"regions": rows_out.regions, "rejected": rejected}


def check_device(options: FeatureOptions, local: bool) -> None:
    """Check on the driver what it can know of the device the workers will run the detector on, as a ValueError
    before the output is touched (every worker would fail on it after): a ``--device`` torch does not know,
    ``--precision fp16`` on the CPU, and, with a ``local`` runner (its workers run here), CUDA asked for where
    there is none. A remote runner's workers may have the GPU the driver lacks: ``auto`` and ``cuda`` are
    theirs to resolve."""
    check_device_name(options.device)  # (FeatureOptions checks it too: options built otherwise than by run)
    try:
        device = None if options.device == "auto" else torch.device(options.device)
    except RuntimeError:
        raise ValueError(f"--device {options.device!r} is not a torch device (auto, cpu, cuda, cuda:N)") from None
    if local:
        try:
            device = options.resolved_device()
        except RuntimeError as exc:  # CUDA asked for, none here
            raise ValueError(str(exc)) from None
    if device is not None and device.type == "cpu" and options.precision == "fp16":
        raise ValueError("--precision fp16: fp16 autocast is a GPU mode, and the detector would run on the CPU; "
                         "use bf16 or fp32")


def refuse_local_runs(output: str) -> None:
    """``OutputExistsError`` while a ``lait features`` run is still going in ``output``: one of its part markers
    (``run_marker_name``) names a live process (``pipeline.outputs.running_run_problem``; one of another host,
    which cannot be checked from here, too). ``prepare_output`` calls it while it holds the folder: its own
    refusal of datasets that no run of its own marked told the user to remove a live run's files."""
    if "://" not in output:
        names = sorted(os.listdir(output)) if os.path.isdir(output) else []
    else:
        names = [posixpath.basename(path) for path in files_under(output.rstrip("/"), "/_run.started.part-*.json")]
    for name in names:
        if RUN_MARKER_NAME.fullmatch(name):
            path = posixpath.join(output, name)
            problem = running_run_problem(output, read_run_marker(output, name), "a lait features run",
                                          f"remove {path}")
            if problem is not None:
                raise OutputExistsError(problem)


def prepare_beam_output(output: str, dataset: str) -> None:
    """Claim ``output`` for this run (``prepare_output``: a finished run refused, an interrupted one's files removed,
    ``RUN_MARKER`` written), refused while a run of either form is still going there; ``dataset``: the input."""
    # inputs: an output that holds the dataset (--input T/data --output T), or lies inside it on an object store
    # (where _check_output_outside does not look), is refused, as the filter and relevance stages refuse theirs
    prepare_output(output, STAGE, ("regions", "rejected", "shards", "run.json", "classes.json"), inputs=(dataset,),
                   other_runs=refuse_local_runs)


def _parse_args(argv):
    from lait.commands.features import add_arguments

    parser = argparse.ArgumentParser(prog="python -m pipeline.features",
                                     description="Region features as an Apache Beam pipeline (RunInference).")
    add_arguments(parser, local=False)
    return parser.parse_known_args(argv)


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Build and run the Beam pipeline; returns the stats written to ``OUTPUT/stats.json``."""
    from apache_beam.metrics.metric import MetricsFilter

    from lait.commands.features import options_from_args
    from pipeline.options import beam_options, runner_name

    known, pipeline_args = _parse_args(argv)
    check_paths(known.input, known.output)  # an empty --output (an unset $OUT) wrote to the current folder
    options = options_from_args(known)
    # Beam only logs the arguments it does not know ("Discarding unparseable args"): a local runner's option
    # (--images-per-shard) or a typo (--min_boxes) would be ignored; here it is a ValueError.
    pipeline_options = beam_options(pipeline_args, vars(known))
    overrides = options.detector_config
    dataset = resolve_input(known.input)
    _check_output_outside(dataset, known.output)
    check_not_in_another_run(known.output)
    files = input_files(dataset)
    # local as make_runner judges it: a module path to Beam's DirectRunner runs here, on this machine's devices
    local = is_local_runner(runner_name(pipeline_options))
    # bad input stops here, before the workers start, with the file named; the work items are row groups.
    # rows_in counts rows, not distinct images, from the footers alone: the footers hold no distinct count
    # (pyarrow writes none), and counting ids would read every id on the driver before any worker starts.
    # It errs only for inputs with duplicates below MAX_BUCKETS' cap, towards more, smaller groups:
    # filter output has one row per image (best text per image), crawl candidates ~1% duplicates (the demo's).
    row_groups, rows_in = [], 0
    for file in files:
        parquet = check_input_file(dataset, file)
        row_groups += [(file, group) for group in range(parquet.num_row_groups)]
        rows_in += parquet.metadata.num_rows
        if local:
            # ids that are not UTF-8 (or unreadable) stop the run before the output is touched, as in lait features,
            # which reads every id on the way too; a remote runner's workers, reading them, stop it the same way
            for group in range(parquet.num_row_groups):
                check_image_ids(parquet, file, group)
    # So do missing or unreadable weights, here on the driver, where the workers would find them (it reads the
    # demo's config and vg's attribute head from the file too), before the output is touched.
    weights = options.weights_record()
    feature_dim = feature_dim_of(options.detector, options.weights)
    attributes = attribute_count(options.detector, options.weights)  # the workers' detectors will predict them
    names = read_class_names(options.class_names_file) if options.class_names_file else None
    config = {**overrides, "attributes": attributes} if attributes else overrides
    # random weights: only the names and sizes are needed (the demo's architecture comes from its file)
    spec = build_detector(options.detector, weights=options.weights if options.detector == "demo" else None,
                          random_init=True, config=config or None, class_names=names).spec
    topk = effective_topk(options.topk, spec)
    if topk < options.topk:  # as the local runner: the boxes store all classes, and run.json says so
        logger.info("--topk %d is more than %s's %d classes: every box stores all %d (recorded as topk %d)",
                    options.topk, options.detector, topk, topk, topk)
        options = dataclasses.replace(options, topk=topk)
    check_device(options, local)
    # Beam checks the runner and its options here (an unknown runner, Dataflow without a project): before the output
    # is touched, in one line
    pipeline = test_pipeline or make_pipeline(pipeline_options)
    prepare_beam_output(known.output, dataset)
    rows = (
        pipeline
        | "ListRowGroups" >> beam.Create(row_groups)
        | "Spread" >> beam.Reshuffle()  # row groups, not files, are the unit of parallel work
        | "ReadInput" >> beam.ParDo(ReadRowGroupsFn(dataset, piece_size(options.batch_size)))  # streamed
    )
    out = rows | "ExtractRegions" >> ExtractRegions(options, bucket_count(rows_in, options.batch_size))
    out["regions"] | "WriteRegions" >> WriteToParquet(
        _join(known.output, "regions", SHARD_PREFIX), output_schema(feature_dim, attributes > 0),
        file_name_suffix=".parquet")
    out["rejected"] | "WriteRejected" >> WriteToParquet(
        _join(known.output, "rejected", SHARD_PREFIX), schemas.schema_for("rejected"), file_name_suffix=".parquet")
    # before any shard: what the local runner reads to refuse this folder (it cannot resume or add to a Beam run).
    # Created exclusively: prepare_output removed any run.json, so one there now is another run's, started since
    run_json = _join(known.output, "run.json")
    if not _write_json(run_json, {"runner": "beam", "detector": options.detector, **weights, "topk": options.topk,
                                  "detector_config": spec.config}, exclusive=True):
        clear_run_marker(known.output)
        raise ValueError(f"{known.output} is in use by another features run that started there just now (it wrote "
                         f"{run_json}); use a new --output")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    reasons = {name.split("/", 1)[1]: int(v) for name, v in counters.items() if name.startswith("rejected/") and v}
    missing_ids = reasons.get("image_id_missing", 0)
    stats = {
        "stage": STAGE,
        "input": input_reference(known.input, known.output),
        "in": int(counters.get("in", 0)) + missing_ids,
        "kept": int(counters.get("kept", 0)),
        "rejected": sum(reasons.values()),
        "rejected_by_reason": reasons,
        "detector": options.detector,
        "feature_dim": feature_dim,
        "runner": "beam",
    }
    _write_json(_join(known.output, "classes.json"), classes_info(options.detector, spec, options.topk))
    _write_json(_join(known.output, "stats.json"), stats)
    clear_run_marker(known.output)
    return stats


