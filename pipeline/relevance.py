"""Relevance scoring in Beam: ``ScoreRelevance`` (RunInference, batched, GPU when present) and
``ThresholdRelevance`` (a fixed cut or a target keep-rate, with a score histogram).

The filter pipeline composes them; this module also runs on its own over a pairs dataset:

    # local
    python -m pipeline.relevance --input RUN/filter --output RUN/relevance \
        --model models/relevance --runner DirectRunner
    # Dataflow: an image built from docker/dataflow.Dockerfile, with the model folder copied into it
    python -m pipeline.relevance --input gs://B/run/filter/pairs --output gs://B/run/relevance \
        --model /models/relevance --runner DataflowRunner --project P --region R \
        --temp_location gs://B/tmp --sdk_container_image IMAGE

It writes ``OUTPUT/pairs/`` (kept, with ``relevance`` set), ``OUTPUT/rejected/``
(``low_relevance``, or ``image_undecodable`` for a pair the scorer could not read; on its own, also the input rows
that break the pairs contract, unscored, as the filter rejects such candidates: ``invalid_utf8``, ``missing_id``,
``no_text``) and ``OUTPUT/stats.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import posixpath
import sys
from decimal import ROUND_HALF_UP, Decimal

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerKeyedTensor

import schemas
# The filter's writer: Beam's sink writes each bundle to a temporary file and names only the committed attempts'
# files part-SSSSS-of-NNNNN.parquet once all are written, so a retried bundle (Dataflow retries them) adds no rows.
from pipeline.filter import WriteDataset
from pipeline.options import beam_options
from pipeline.outputs import PENDING_STATS, finish_output, input_reference, prepare_output, refuse_empty_paths
from pipeline.runners import failure_line, make_pipeline, run_failures

log = logging.getLogger(__name__)

STAGE = "relevance"
REASON = "low_relevance"
#: The reason of a pair whose image the scorer could not decode: rejected whatever the cut.
UNSCORABLE_REASON = "image_undecodable"
#: Set (True) on a scored pair the scorer could not prepare; ``ThresholdRelevance`` removes it again.
UNSCORABLE_KEY = "_relevance_unscorable"
#: The histogram covers [-1, 1] (CLIP cosines); all-non-negative scores report only [0, 1].
HIST_BINS = 40
#: Up to this many scorable pairs, a keep-rate cut is exact: the scores are gathered and sorted.
EXACT_KEEP_RATE_LIMIT = 100_000
#: Beyond it, the cut is read from this many approximate quantiles (Beam's, rank error under n / 1001).
NUM_QUANTILES = 1001


def _build_model(spec: str, device: str):
    """Model factory for Beam's handler: the scorer's ``nn.Module`` (safetensors or open_clip)."""
    from filters.relevance import load

    return load(spec, device=device).model


def device_request(device: str | None) -> str | None:
    """``"GPU"``, ``"CPU"`` or None (GPU when the worker has one) from a ``--device`` value in any case
    (``cuda`` is GPU); a ValueError for anything else. Nothing is looked up here: the launcher may have
    no GPU where the workers do."""
    if device is None:
        return None
    name = str(device).strip().upper()
    if name in ("GPU", "CUDA"):
        return "GPU"
    if name == "CPU":
        return "CPU"
    raise ValueError(f"relevance device must be CPU or GPU, got {device!r}")


class _RelevanceModelHandler(PytorchModelHandlerKeyedTensor):
    """Beam's keyed-tensor PyTorch handler, loading through LAIT's loader instead of ``torch.load``.

    LAIT models are safetensors with a JSON config (no pickle), and CLIP specs name open_clip
    weights, so only ``load_model`` differs; batching and metrics stay Beam's. The device asked for
    (``device_request``) travels with the handler and is resolved in ``load_model``, on the worker.
    """

    def __init__(self, spec: str, device: str | None, batch_size: int):
        super().__init__(state_dict_path=spec, model_class=_build_model, model_params={"spec": spec},
                         device="CPU" if device == "CPU" else "GPU", min_batch_size=batch_size,
                         max_batch_size=batch_size)
        self._spec = spec
        self._requested_device = device

    def load_model(self):
        """Build the scorer's model where this worker can run it: the GPU asked for (or, with no request, any
        GPU present), else the CPU. ``run_inference`` moves the batches to the same device."""
        import torch

        from filters.relevance.scorer import resolve_device

        device = resolve_device(self._requested_device)
        self._device = torch.device(device)
        return _build_model(self._spec, device)

    def run_inference(self, batch, model, inference_args=None):
        """Beam's inference, on the device the model lives on: threads of a worker share one model loaded by
        one of them (``shared.Shared``), so a copy of this handler that did not load it has not resolved the
        device in ``load_model``."""
        weight = next(model.parameters(), None)
        if weight is not None:
            self._device = weight.device
        return super().run_inference(batch, model, inference_args)

    def get_metrics_namespace(self) -> str:
        return "lait_relevance"


class _PrepareInputs(beam.DoFn):
    """pair -> ((pair, ok), example tensors); the scorer's preparation runs on the worker."""

    def __init__(self, spec: str):
        self._spec = spec
        self._scorer = None
        self._unscorable = Metrics.counter(STAGE, "unscorable_image")

    def setup(self):
        from filters.relevance import load

        # the weights are loaded by RunInference; preparation needs only the config
        self._scorer = load(self._spec, device="cpu", with_model=False)

    def process(self, pair: dict):
        example, ok = self._scorer.prepare(pair)
        if not ok:
            self._unscorable.inc()
        yield (pair, ok), example


def _set_relevance(keyed_result, min_score: float) -> dict:
    (pair, ok), result = keyed_result
    if ok:
        return {**pair, "relevance": float(result.inference)}
    return {**pair, "relevance": min_score, UNSCORABLE_KEY: True}


class ScoreRelevance(beam.PTransform):
    """Pair dicts -> the same dicts with ``relevance`` (float) set, through Beam's RunInference.

    ``spec`` is a LAIT relevance model folder or ``clip:ARCH:WEIGHTS``; ``device`` is ``"GPU"``,
    ``"CPU"`` or ``None`` (GPU when one is present), resolved on each worker when it loads the model:
    a GPU asked for from a machine without one (launching Dataflow GPU workers) stays asked for, and a
    worker without one scores on its CPU. Pairs whose image cannot be decoded get the scorer's lowest
    score and ``UNSCORABLE_KEY`` set, so that ``ThresholdRelevance`` rejects them
    (``image_undecodable``) whatever the cut.
    """

    def __init__(self, spec: str, batch_size: int = 64, device: str | None = None):
        super().__init__()
        self.spec = spec
        self.batch_size = batch_size
        self.device = device_request(device)
        from filters.relevance.scorer import is_clip_spec

        self.min_score = -1.0 if is_clip_spec(spec) else 0.0

    def model_handler(self) -> KeyedModelHandler:
        """The keyed model handler ``RunInference`` runs (serialised to the workers as it is)."""
        return KeyedModelHandler(_RelevanceModelHandler(self.spec, self.device, self.batch_size))

    def expand(self, pairs):
        return (
            pairs
            | "PrepareRelevanceInputs" >> beam.ParDo(_PrepareInputs(self.spec))
            | "RunRelevanceModel" >> RunInference(self.model_handler())
            | "SetRelevance" >> beam.Map(_set_relevance, self.min_score)
        )


class _ScoreHistogram(beam.CombineFn):
    """Counts of scores in fixed bins over [-1, 1], plus count, min and max (mergeable)."""

    def create_accumulator(self):
        return [np.zeros(HIST_BINS, dtype=np.int64), 0, math.inf, -math.inf]

    def add_input(self, acc, score):
        counts, n, lo, hi = acc
        if score is None or not math.isfinite(score):
            return [counts, n + 1, lo, hi]
        b = min(HIST_BINS - 1, max(0, int((score + 1.0) / 2.0 * HIST_BINS)))
        counts[b] += 1
        return [counts, n + 1, min(lo, score), max(hi, score)]

    def merge_accumulators(self, accs):
        accs = list(accs)
        return [sum(a[0] for a in accs), sum(a[1] for a in accs), min(a[2] for a in accs), max(a[3] for a in accs)]

    def extract_output(self, acc):
        counts, n, lo, hi = acc
        edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
        if n == 0 or lo >= 0.0:  # probabilities: the upper half is the whole story
            counts, edges = counts[HIST_BINS // 2:], edges[HIST_BINS // 2:]
        return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts],
                "n": int(n), "min": None if n == 0 else float(lo), "max": None if n == 0 else float(hi)}


class _ScoresUpTo(beam.CombineFn):
    """(count, sorted scores) of the input, the scores only while there are at most ``limit`` of them
    (None beyond: too many to gather in one place)."""

    def __init__(self, limit: int):
        self._limit = limit

    def create_accumulator(self):
        return [0, []]

    def add_input(self, acc, score):
        count, scores = acc
        if scores is not None:
            scores.append(score)
            if len(scores) > self._limit:
                scores = None
        return [count + 1, scores]

    def merge_accumulators(self, accs):
        count, merged = 0, []
        for n, scores in accs:
            count += n
            if merged is not None and scores is not None and len(merged) + len(scores) <= self._limit:
                merged.extend(scores)
            else:
                merged = None
        return [count, merged]

    def extract_output(self, acc):
        count, scores = acc
        return count, None if scores is None else sorted(scores)


def kept_count(keep_rate: float, n: int) -> int:
    """How many of ``n`` scored pairs a keep rate keeps: ``keep_rate`` x ``n`` rounded, halves up.

    The rate is taken as written (its shortest decimal form) and multiplied exactly: in floats, 0.7 x 45
    is 31.499999999999996 and would round down to 31, not up to 32."""
    exact = Decimal(repr(float(keep_rate))) * n
    return min(n, int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def _keep_rate_threshold(gathered: tuple[int, list[float] | None], quantiles: list[float],
                         keep_rate: float) -> float | None:
    """The cut that keeps ``kept_count`` of the scores: the lowest of the best ``k``, exact from the gathered
    scores, else read from the approximate quantiles at the same rank. None without scores.

    Pairs tied with it are kept too, so ties at the cut may keep more. Keeping none (a rate below
    1 / (2n)) cuts just above the highest score.
    """
    n, scores = gathered
    if n == 0 or (scores is None and not quantiles):
        return None
    k = kept_count(keep_rate, n)
    highest = scores[-1] if scores is not None else quantiles[-1]
    if k == 0:
        return float(math.nextafter(highest, math.inf))
    if scores is not None:
        return float(scores[n - k])
    position = (n - k) / (n - 1) * (len(quantiles) - 1) if n > 1 else 0.0
    return float(quantiles[int(round(position))])


def _scorable(pair: dict) -> bool:
    return not pair.get(UNSCORABLE_KEY)


def _score_of(pair: dict) -> float:
    score = pair.get("relevance")
    return -math.inf if score is None or not math.isfinite(score) else float(score)


class _SplitByThreshold(beam.DoFn):
    """Kept pairs on the main output, rejected rows on ``rejected``: ``image_undecodable`` for a pair
    the scorer could not read (whatever the cut), else ``low_relevance`` below the threshold."""

    def __init__(self):
        self._kept = Metrics.counter(STAGE, "kept")
        self._rejected = Metrics.counter(STAGE, REASON)
        self._unscorable = Metrics.counter(STAGE, UNSCORABLE_REASON)

    def process(self, pair: dict, threshold: float | None):
        scorable = _scorable(pair)
        pair = {k: v for k, v in pair.items() if k != UNSCORABLE_KEY}
        score = _score_of(pair)
        if scorable and threshold is not None and score >= threshold:
            self._kept.inc()
            yield pair
            return
        if not scorable:
            self._unscorable.inc()
            reason, detail = UNSCORABLE_REASON, "image could not be decoded for relevance scoring"
        else:
            self._rejected.inc()
            shown = "none" if pair.get("relevance") is None else f"{pair['relevance']:.4f}"
            reason = REASON
            detail = f"relevance {shown} < threshold {threshold:.4f}" if threshold is not None else None
        yield beam.pvalue.TaggedOutput("rejected", schemas.rejected_row(
            STAGE, reason, detail,
            pair_id=pair.get("pair_id"), candidate_id=pair.get("candidate_id"), image_id=pair.get("image_id"),
            page_url=pair.get("page_url"), image_url=pair.get("image_url"), caption=pair.get("caption")))


def _summary(histogram: dict, threshold: float | None, kept: int, rejected: int, requested_keep_rate,
             by_reason: dict | None = None) -> dict:
    total = kept + rejected
    by_reason = {k: int(v) for k, v in sorted((by_reason or {}).items()) if v}
    return {"threshold": threshold, "keep_rate": kept / total if total else None,
            "requested_keep_rate": requested_keep_rate, "in": total, "kept": kept, "rejected": rejected,
            "rejected_by_reason": by_reason, "unscorable": by_reason.get(UNSCORABLE_REASON, 0),
            "histogram": {"edges": histogram["edges"], "counts": histogram["counts"]},
            "min": histogram["min"], "max": histogram["max"]}


class RelevanceOutputs(dict):
    """The tagged outputs of ``ThresholdRelevance``: ``out["kept"]`` or ``out.kept``."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ThresholdRelevance(beam.PTransform):
    """Scored pairs -> ``kept`` pairs, ``rejected`` rows (``low_relevance``, ``image_undecodable``) and
    a one-dict ``summary``.

    Give ``threshold`` (keep ``relevance >= threshold``) or ``keep_rate``: of the n scorable pairs,
    the best ``kept_count(keep_rate, n)`` (round(keep_rate x n)) are kept, and so are pairs tied with
    the lowest of them (exact up to ``EXACT_KEEP_RATE_LIMIT`` pairs, from approximate quantiles
    beyond). A pair ``ScoreRelevance`` could not score (undecodable image) is rejected as
    ``image_undecodable`` whatever the cut, and left out of n and the histogram. With neither,
    ``spec`` names the model whose own threshold applies.
    """

    def __init__(self, threshold: float | None = None, keep_rate: float | None = None, spec: str | None = None):
        super().__init__()
        if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        if threshold is not None and keep_rate is not None:
            raise ValueError("give a relevance threshold or a keep rate, not both")
        if keep_rate is not None and not 0.0 < keep_rate <= 1.0:  # NaN fails this too
            raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
        if threshold is None and keep_rate is None:
            if spec is None:
                raise ValueError("ThresholdRelevance needs a threshold, a keep_rate, or the model spec")
            from filters.relevance import default_threshold

            threshold = default_threshold(spec)
        self.threshold = threshold
        self.keep_rate = keep_rate

    def expand(self, scored):
        scores = (scored
                  | "ScorablePairs" >> beam.Filter(_scorable)
                  | "RelevanceScores" >> beam.Map(_score_of))
        if self.keep_rate is None:
            threshold = scored.pipeline | "FixedThreshold" >> beam.Create([float(self.threshold)])
        else:
            finite = scores | "FiniteScores" >> beam.Filter(math.isfinite)
            quantiles = finite | "ScoreQuantiles" >> beam.ApproximateQuantiles.Globally(NUM_QUANTILES)
            threshold = (
                finite
                | "GatherScores" >> beam.CombineGlobally(_ScoresUpTo(EXACT_KEEP_RATE_LIMIT))
                | "KeepRateThreshold" >> beam.Map(_keep_rate_threshold, beam.pvalue.AsSingleton(quantiles),
                                                  self.keep_rate)
            )
        split = scored | "SplitByRelevance" >> beam.ParDo(
            _SplitByThreshold(), beam.pvalue.AsSingleton(threshold)).with_outputs("rejected", main="kept")
        kept_n = split.kept | "CountKept" >> beam.combiners.Count.Globally()
        rejected_n = split.rejected | "CountRejected" >> beam.combiners.Count.Globally()
        by_reason = (split.rejected
                     | "RejectedReason" >> beam.Map(lambda r: r["reason"])
                     | "CountRejectedByReason" >> beam.combiners.Count.PerElement())
        summary = (
            scores
            | "ScoreHistogram" >> beam.CombineGlobally(_ScoreHistogram())
            | "RelevanceSummary" >> beam.Map(
                _summary, beam.pvalue.AsSingleton(threshold), beam.pvalue.AsSingleton(kept_n),
                beam.pvalue.AsSingleton(rejected_n), self.keep_rate, beam.pvalue.AsDict(by_reason))
        )
        return RelevanceOutputs(kept=split.kept, rejected=split.rejected, summary=summary)


def _write_stats(summary: dict, output: str, extra: dict) -> None:
    """stats.json of a standalone run, in the books every stage keeps, through Beam's FileSystems (a local
    folder, gs://, s3://...). Written as pending: the shard writes run beside this step, and only
    ``finish_output`` (once the pipeline has finished) names it stats.json, which marks a complete output."""
    stats = {"stage": STAGE, "in": summary["in"], "kept": summary["kept"], "rejected": summary["rejected"],
             "rejected_by_reason": dict(summary["rejected_by_reason"]),
             "relevance": summary, **extra}
    with FileSystems.create(posixpath.join(output, PENDING_STATS)) as handle:
        handle.write(json.dumps(stats, indent=2).encode("utf-8"))


def read_stats(output: str) -> dict:
    """The stats.json of a finished output (local or on a Beam filesystem)."""
    with FileSystems.open(posixpath.join(output, "stats.json")) as handle:
        return json.loads(handle.read())


def _join(folder: str, name: str) -> str:
    """``folder``/``name`` for a local folder (the OS separator) or a URL (``/``)."""
    return posixpath.join(folder, name) if "://" in folder else os.path.join(folder, name)


def _pair_files(path: str) -> list[str]:
    """The Parquet files of a pairs dataset, contract-checked (Beam reads them in parallel)."""
    from filters.relevance.data import resolve_pairs_path

    root = resolve_pairs_path(path)
    files = schemas.list_parquet_files(root)
    schemas.open_dataset(root, "pairs")  # fail early, naming the bad column
    if "://" in root:  # fsspec lists paths without their scheme (gs://b/x -> b/x): the workers need it back
        scheme = root.split("://", 1)[0]
        files = [f if "://" in f else f"{scheme}://{f}" for f in files]
    return files


#: Set on a row read from the input that breaks the pairs contract: (reason, detail); ``_route_input`` rejects it.
INPUT_REJECT_KEY = "_relevance_input_reject"
#: The pairs contract's ids, null or empty in a row rejected as ``missing_id`` (the filter's rule for its ids).
ID_COLUMNS = ("pair_id", "image_id")


def _input_problem(row: dict) -> tuple[str, str] | None:
    """Why an input row, its text columns still bytes, cannot be scored: (reason, column), else None. Its text is
    decoded in place (invalid UTF-8 with U+FFFD, as the filter does, so its ids still match up in the audit)."""
    bad = None
    for column, value in row.items():
        if isinstance(value, bytes) and column != "image_bytes":
            try:
                row[column] = value.decode("utf-8")
            except UnicodeDecodeError:
                bad = bad or column
                row[column] = value.decode("utf-8", "replace")
    if bad is not None:
        return "invalid_utf8", bad
    missing = next((column for column in ID_COLUMNS if not row.get(column)), None)
    if missing is not None:
        return "missing_id", missing
    if row.get("caption") is None:
        return "no_text", "caption"
    return None


def _valid_utf8(column) -> bool:
    """Whether a text column (a ChunkedArray) holds valid UTF-8 throughout (Arrow does not check it on read)."""
    import pyarrow as pa

    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _read_pairs_file(path: str) -> list[dict]:
    """The rows of one pairs shard; a damaged one (footer fine, pages rotten) is a ValueError naming it.

    A row that breaks the contract (text that is not valid UTF-8, which Arrow does not check on read; a null or
    empty pair_id or image_id; a null caption, which plain pyarrow writers allow) carries ``INPUT_REJECT_KEY``:
    one bad record is a counted reject, not a run that fails at its last write.
    """
    import pyarrow as pa

    try:
        table = schemas.read_table(path, "pairs")
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: unreadable Parquet ({' '.join(str(exc).split())[:300]})") from None
    # Only a text column Arrow finds invalid is read as bytes, and decoded row by row (``_input_problem``); the
    # others, nearly always all of them, are decoded by Arrow as before.
    bad = {f.name for f in table.schema if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
           and not _valid_utf8(table.column(f.name))}
    if bad:
        table = table.cast(pa.schema([pa.field(f.name, pa.binary()) if f.name in bad else f for f in table.schema]))
    rows = table.to_pylist()
    name = posixpath.basename(path)
    for row in rows:
        problem = _input_problem(row)
        if problem is not None:
            reason, column = problem
            what = {"invalid_utf8": "is not valid UTF-8", "missing_id": "is empty"}.get(reason, "is null")
            row[INPUT_REJECT_KEY] = (reason, f"column {column!r} {what} in {name}")
    return rows


def _route_input(pair: dict):
    """Scorable pairs on the main output; a row ``_read_pairs_file`` marked leaves unscored on ``rejected``."""
    problem = pair.pop(INPUT_REJECT_KEY, None)
    if problem is None:
        yield pair
        return
    reason, detail = problem
    yield beam.pvalue.TaggedOutput("rejected", schemas.rejected_row(
        STAGE, reason, detail,
        pair_id=pair.get("pair_id"), candidate_id=pair.get("candidate_id"), image_id=pair.get("image_id"),
        page_url=pair.get("page_url"), image_url=pair.get("image_url"), caption=pair.get("caption")))


def _with_input_rejects(summary: dict, by_reason: dict) -> dict:
    """The summary of the scored pairs, with the input rows rejected unscored (``_route_input``) counted in."""
    n = sum(by_reason.values())
    if not n:
        return summary
    reasons = dict(summary["rejected_by_reason"])
    for reason, count in by_reason.items():
        reasons[reason] = reasons.get(reason, 0) + int(count)
    total = summary["in"] + n
    return {**summary, "in": total, "rejected": summary["rejected"] + n, "keep_rate": summary["kept"] / total,
            "rejected_by_reason": dict(sorted(reasons.items()))}


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the standalone scoring pipeline (Beam options pass through)."""
    from lait.commands.relevance import add_score_arguments

    parser = argparse.ArgumentParser(description="Score pairs with a relevance model and drop the low ones.")
    add_score_arguments(parser)
    return parser


def check_paths(input_path: str, output_path: str) -> None:
    """Refuse an ``--input`` or ``--output`` that is empty or white space alone (an unset ``$OUT`` in a script),
    in one line naming the option, before anything is read or written: the output's ``pairs/``, ``rejected/``
    and ``stats.json`` would land in the current folder."""
    refuse_empty_paths(("--input", input_path, "the filter folder or pairs dataset to score"),
                       ("--output", output_path, "the folder to write the scored pairs to"))


def check_model_args(args: argparse.Namespace) -> None:
    """Check the cut and load the model once (on the CPU), before the output is touched: a missing or
    corrupt model is a FileNotFoundError or ValueError here, not a traceback from a Beam worker."""
    from filters.relevance import load

    if args.keep_rate is not None and not 0.0 < args.keep_rate <= 1.0:
        raise ValueError(f"--keep-rate must be in (0, 1], got {args.keep_rate}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be 1 or more, got {args.batch_size}")
    load(args.model, device="cpu")


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Run the standalone scoring pipeline; returns the relevance summary written to stats.json."""
    args, beam_args = build_parser().parse_known_args(argv)
    check_paths(args.input, args.output)
    files = _pair_files(args.input)
    # Beam only logs the arguments it does not know ("Discarding unparseable args"): a typo (--keep_rate) would be
    # ignored, and a bad value print Beam's whole usage; here either is a one-line ValueError.
    options = beam_options(beam_args, vars(args))
    check_model_args(args)
    # Beam checks the runner and its options here (an unknown runner, Dataflow without a project): before the
    # output is touched, as every other check above
    pipeline = test_pipeline or make_pipeline(options)
    from filters.relevance.data import resolve_pairs_path

    prepare_output(args.output, STAGE, ("pairs", "rejected"), inputs=(resolve_pairs_path(args.input),))
    if "://" not in args.output:  # the folders are there from the start, as the filter's output's are
        for sub in ("pairs", "rejected"):
            os.makedirs(os.path.join(args.output, sub), exist_ok=True)
    with pipeline as p:
        read = (p
                | "ListFiles" >> beam.Create(files)
                | "ReadPairs" >> beam.FlatMap(_read_pairs_file)
                | "CheckPairs" >> beam.FlatMap(_route_input).with_outputs("rejected", main="pairs"))
        scored = read.pairs | "ScoreRelevance" >> ScoreRelevance(args.model, args.batch_size, args.device)
        out = scored | "ThresholdRelevance" >> ThresholdRelevance(args.threshold, args.keep_rate, spec=args.model)
        input_reasons = (read.rejected
                         | "InputRejectReason" >> beam.Map(lambda r: r["reason"])
                         | "CountInputRejects" >> beam.combiners.Count.PerElement())
        summary = out.summary | "CountInputRejectsIn" >> beam.Map(_with_input_rejects,
                                                                  beam.pvalue.AsDict(input_reasons))
        out.kept | "WritePairs" >> WriteDataset(_join(args.output, "pairs"), "pairs")
        ((out.rejected, read.rejected) | "AllRejected" >> beam.Flatten()
         | "WriteRejected" >> WriteDataset(_join(args.output, "rejected"), "rejected"))
        summary | "WriteStats" >> beam.Map(_write_stats, args.output,
                                           {"input": input_reference(args.input, args.output), "model": args.model})
    finish_output(args.output)
    return read_stats(args.output)["relevance"]


def main(argv: list[str] | None = None) -> int:
    """The standalone entry point: bad input (a finished output, a missing dataset or model, damaged Parquet,
    an output that cannot be written, a Beam option Beam does not know) is one line on stderr and exit status 2,
    as `lait relevance score` answers it, not a traceback. So is a worker's error in ``multi_processing`` mode,
    which reaches here as a RuntimeError holding its traceback's text (``failure_line``: status 2 for bad input,
    1 for a worker that died)."""
    import pyarrow as pa

    try:
        print(json.dumps(run(argv), indent=2))
    except (OSError, ValueError, pa.ArrowException) as exc:  # FileNotFoundError is an OSError
        print(f"python -m pipeline.relevance: error: {exc}", file=sys.stderr)
        return 2
    except run_failures() as exc:  # a Beam worker died, or its error came back as text: one line
        status, line = failure_line(exc)
        print(f"python -m pipeline.relevance: error: {line}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
