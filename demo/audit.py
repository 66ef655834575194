"""Check a run folder's books: every stage's counts balance and every id downstream exists upstream.

For each stage folder (a subfolder holding a funnel ``stats.json``, or what only a stage writes:
``rejected/``, a features ``run.json``, pending stats; crawl, filter, features, ...; a stage's own folder,
given instead of its run folder, is audited as that one stage; a run folder that also holds a stage's own
books, as the import layout ``D`` + ``D/features`` does, has that stage audited too: ``own_stage``):

- ``stats.json`` exists (a stage without one did not finish) and has ``in``, ``kept``, ``rejected``,
  ``rejected_by_reason`` with ``in == kept + rejected`` and the reasons summing to ``rejected``;
- the rows on disk agree: the output dataset (``candidates/``, ``pairs/`` or ``regions/``; for an import,
  ``captions/``, which it counts, its ``pairs/`` holding one row per image) holds ``kept`` rows, ``rejected/``
  holds ``rejected`` rows with the same per-reason counts, each with a stage and a snake_case reason;
- ids are unique where they must be (candidate_id, pair_id, one regions row per image);
- lineage: pairs.candidate_id in the upstream candidates, pairs.pair_id and image_id in the upstream
  pairs (a pairs -> pairs stage such as ``lait relevance score``), regions.image_id in the upstream
  pairs, rejected ids in the upstream dataset; the stage's ``in`` equals what upstream kept (its rows; for the
  per-image features stage, its distinct images); and each id upstream kept is kept or rejected here, once
  (``upstream_ids_kept_or_rejected``).

Native form: ``python -m demo.audit RUN_DIR [--json]``; ``lait audit`` is the same.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

import schemas

#: A stage's output dataset kind, by the stage name in ``stats.json`` (or the folder name).
OUTPUT_KINDS = ("candidates", "pairs", "regions", "captions")
#: Upstream folder by stage folder name, when ``stats.json`` records no ``input``: the pipeline's layout
#: (``lait filter --input RUN/crawl --output RUN/filter``, ``lait relevance score --input RUN/filter --output
#: RUN/relevance``, ``lait features --input RUN/filter``) and the demo's ``filter0`` and ``test_features``.
DEFAULT_UPSTREAM = {"filter": "crawl", "filter0": "crawl", "relevance": "filter", "features": "filter",
                    "test_features": "test"}
#: Stage types that read no dataset (the web, WARC files, caption files): no lineage to check.
SOURCE_STAGES = ("crawl", "import_captions")
#: Pipeline order of the usual stage folders; other folders follow, by name.
STAGE_ORDER = {"crawl": 0, "filter0": 1, "filter": 2, "relevance": 3, "features": 4, "test_features": 5}
#: What only a stage writes besides ``stats.json`` (written last), there while it runs: its ``rejected/``
#: records (lait features makes the folder first; Beam stages write their temporary shards inside it), the
#: features stage's ``run.json``, a Beam stage's pending stats and run marker (``pipeline.outputs.PENDING_STATS``,
#: ``RUN_MARKER``). A folder
#: of datasets alone (``candidates/``, ``pairs/``, ``regions/``, ``captions/``) is one that some tool wrote,
#: an input, not a stage: the demo's held-out split ``test/``, candidates written by hand.
STAGE_MARKERS = ("rejected", "run.json", "_stats.pending.json", "_run.started.json")
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
#: How ``rejected_reasons_match`` names rejected rows whose reason is null (the contract forbids it; a file
#: written by other tools may hold some): not a snake_case name, so no stage's reason can be mistaken for it.
NULL_REASON = "(null)"


def _check(name: str, ok: bool, detail: str = "") -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def _note(name: str, detail: str) -> dict:
    """Something the reader should know that is not a failure (lineage that could not be checked, an input
    found elsewhere than recorded): printed, kept in the JSON with ``note: true``."""
    return {"check": name, "ok": True, "note": True, "detail": detail}


#: The dataset whose rows a stage counts as kept, where its folder holds more than one (an import writes
#: captions, and pairs with one row per image, and counts captions).
KEPT_KIND = {"import_captions": "captions"}


def output_dataset(folder: str, stage: str | None = None) -> tuple[str | None, str | None]:
    """The output dataset inside a stage folder (the one ``stage`` counts as kept: ``KEPT_KIND``, else the first of
    ``OUTPUT_KINDS`` there): (kind, path), or (None, None)."""
    for kind in (KEPT_KIND[stage],) if stage in KEPT_KIND else OUTPUT_KINDS:
        path = os.path.join(folder, kind)
        if os.path.isdir(path):
            return kind, path
    return None, None


def input_dataset(folder: str) -> tuple[str | None, str | None]:
    """The dataset a stage read from its upstream ``folder``: a stage folder's output (``output_dataset``), else
    the folder itself when it is a dataset (Parquet files inside, as Spark's ``x.parquet/`` or one written by hand,
    which ``--input`` may name), its kind the one its files declare (``schemas.detect_kind``); else (None, None).
    A single Parquet file (``--input RUN/crawl/candidates/part-00000.parquet``) is the dataset of that one file:
    the stage read it alone, not its folder's other shards.

    A stage's or run's folder is never read whole: its Parquet files are several datasets (``rejected/``, ...).
    """
    if os.path.isfile(folder):
        kind = schemas.detect_kind(pq.read_schema(folder))
        return (kind, folder) if kind in OUTPUT_KINDS else (None, None)
    kind, path = output_dataset(folder)
    if kind or _is_stage(folder) or stage_folders(folder):
        return kind, path
    files = schemas.list_parquet_files(folder)
    if not files:
        return None, None
    kind = schemas.detect_kind(pq.read_schema(files[0]))
    return (kind, folder) if kind in OUTPUT_KINDS else (None, None)


def _column(path: str, kind: str, column: str) -> list:
    """One column of a dataset (a folder or one file), as a list (empty when the dataset has no files).

    Text that is not valid UTF-8 is decoded with U+FFFD, as the filter stage does when it rejects such a
    row (``invalid_utf8``), so the ids still match up.
    """
    if not os.path.exists(path) or not schemas.list_parquet_files(path):
        return []
    dataset = schemas.open_dataset(path, kind)
    if column not in dataset.schema.names:
        return []
    values = dataset.to_table(columns=[column]).column(column)
    try:
        return values.to_pylist()
    except UnicodeDecodeError:
        return [None if v is None else v.decode("utf-8", "replace") for v in values.cast(pa.binary()).to_pylist()]


def _rows(path: str, kind: str) -> int:
    if not os.path.exists(path) or not schemas.list_parquet_files(path):
        return 0
    return schemas.count_rows(path, kind)


def _stage_folder(path: str) -> str:
    """A dataset path as a stage folder: …/pairs -> the folder holding it.

    A Parquet file (…/candidates/part-0.parquet) is kept, as is a folder named ``*.parquet`` (Spark writes
    ``x.parquet/``): it is the dataset read (``input_dataset``). Cut to its folder, a stage that read one shard
    was audited against every shard beside it.
    """
    path = os.path.normpath(path)
    if path.endswith(".parquet"):
        return path
    # A stage may name the dataset itself (…/pairs); the audit wants the folder holding it.
    if os.path.basename(path) in OUTPUT_KINDS:
        path = os.path.dirname(path)
    return path


def declared_input(stats: dict) -> str | None:
    """The input a stage's stats.json names: top-level ``input`` (relative to the run folder, or absolute),
    else the filter's older ``settings.input`` (the --input as given)."""
    given = stats.get("input")
    if not isinstance(given, str):
        settings = stats.get("settings")
        given = settings.get("input") if isinstance(settings, dict) else None
    return given if isinstance(given, str) and given else None


def _existing_stage_folder(path: str) -> str | None:
    folder = _stage_folder(path)
    return folder if os.path.isdir(folder) or os.path.isfile(folder) else None


def _inside(path: str, run_dir: str) -> bool:
    path, run_dir = os.path.abspath(path), os.path.abspath(run_dir)
    return path == run_dir or path.startswith(run_dir + os.sep)


def _upstream(run_dir: str, name: str, stats: dict) -> tuple[str | None, dict | None]:
    """The folder this stage read from, and a check saying how it was found when there is something to say.

    - ``input`` (how stages record it: relative to the run folder, absolute when outside it): that folder;
      when it is gone, ``upstream_found`` fails (no guessing); a URL is not followed (lineage skipped).
    - else the older ``settings.input`` (``--input`` as typed): used when it lies inside the run folder;
      one outside it (the run was copied or moved) is read as ``RUN/<its name>`` when that exists, else
      checked where it lies with ``upstream_in_run`` failing (the books would be against another folder).
    - else the pipeline's layout by folder name (``DEFAULT_UPSTREAM``); for any other name the input cannot
      be known, and lineage is skipped (not failed).
    """
    named = stats.get("input")
    if isinstance(named, str) and named:
        if "://" in named:
            return None, _note("lineage", f"the input is a URL ({named}): lineage not checked")
        found = _existing_stage_folder(named if os.path.isabs(named) else os.path.join(run_dir, named))
        if found:
            return found, None
        return None, _check("upstream_found", False, f"the input stats.json names ({named}) is not there: "
                                                     "lineage not checked")
    typed = declared_input(stats)
    if typed and "://" not in typed:
        candidates = [typed] if os.path.isabs(typed) else [os.path.join(run_dir, typed), os.path.abspath(typed)]
        for path in candidates:
            found = _existing_stage_folder(path)
            if found and _inside(found, run_dir):
                return found, None
        outside = _stage_folder(os.path.abspath(candidates[-1]))
        base = os.path.basename(outside)
        if not _inside(outside, run_dir):
            if base not in ("", name) and os.path.isdir(os.path.join(run_dir, base)):
                return os.path.join(run_dir, base), _note(
                    "upstream_in_run", f"settings.input ({typed}) lies outside the run folder: read as {base}/ inside it")
            if os.path.isdir(outside) or os.path.isfile(outside):
                return outside, _check("upstream_in_run", False, f"settings.input ({typed}) lies outside the run "
                                                                 f"folder, which holds no {base}/: lineage checked "
                                                                 "against that folder, maybe not this run's")
    stage = str(stats.get("stage") or name)
    if stage in SOURCE_STAGES or name in SOURCE_STAGES:
        return None, None
    if name not in DEFAULT_UPSTREAM:
        return None, _note("lineage", f"stats.json records no input and {name}/ is not a folder of the pipeline's "
                                         f"layout ({', '.join(DEFAULT_UPSTREAM)}): lineage not checked")
    path = os.path.join(run_dir, DEFAULT_UPSTREAM[name])
    if os.path.isdir(path):
        return path, None
    return None, _note("lineage", f"stats.json records no input and {DEFAULT_UPSTREAM[name]}/ (where {name}/ "
                                     "reads from in the pipeline's layout) is absent: lineage not checked")


def _images_read(path: str, kind: str) -> int:
    """What a per-image stage (``lait features``: ``plan_shards``) counts as ``in`` from a dataset: its distinct
    image ids, plus each row without one (rejected one by one as ``image_id_missing``, by the stage's own rule
    ``schemas.missing_image_id``)."""
    return _ids_and_images_read(path, kind)[1]


def _ids_and_images_read(path: str, kind: str) -> tuple[list, int]:
    """The dataset's image ids but the missing ones (``schemas.missing_image_id``), and ``_images_read``'s count."""
    ids = _column(path, kind, "image_id")
    present = [i for i in ids if not schemas.missing_image_id(i)]
    return present, len(set(present)) + len(ids) - len(present)


def _missing(ids: list, known: set) -> list:
    return [i for i in ids if i is not None and i not in known]


def _sample(values: list, n: int = 3) -> str:
    return ", ".join(str(v)[:16] for v in values[:n])


def audit_stage(run_dir: str, name: str) -> dict:
    """All checks of one stage folder; an unreadable dataset is a failed check, not a crash."""
    try:
        return _audit_stage(run_dir, name)
    except (schemas.SchemaMismatchError, OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        return {"name": name, "stage": name, "ok": False,
                "checks": [_check("datasets_readable", False, f"{type(exc).__name__}: {exc}")]}


def _stats_shape_problem(stats) -> str | None:
    """Why a parsed stats.json cannot be audited (not an object, a ``stage`` that is not a name), else None."""
    if not isinstance(stats, dict):
        return f"stats.json holds a JSON {'null' if stats is None else type(stats).__name__}, not an object"
    if stats.get("stage") is not None and not isinstance(stats.get("stage"), str):
        return f"stats.json 'stage' is a {type(stats['stage']).__name__}, not a name"
    return None


def _audit_stage(run_dir: str, name: str) -> dict:
    folder = os.path.join(run_dir, name)
    checks: list[dict] = []
    if not os.path.exists(os.path.join(folder, "stats.json")):
        return {"name": name, "stage": name, "ok": False, "checks": [_check(
            "stats_readable", False, "no stats.json: the stage did not finish (killed before writing its books, "
                                     "or a --part run whose other parts have not finished)")]}
    try:
        with open(os.path.join(folder, "stats.json"), encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, ValueError) as exc:
        return {"name": name, "stage": name, "ok": False, "checks": [_check("stats_readable", False, str(exc))]}
    problem = _stats_shape_problem(stats)
    if problem:
        return {"name": name, "stage": name, "ok": False, "checks": [_check("stats_readable", False, problem)]}
    fields = {k: stats.get(k) for k in ("in", "kept", "rejected")}
    by_reason = stats.get("rejected_by_reason")
    well_formed = all(isinstance(v, int) for v in fields.values()) and isinstance(by_reason, dict)
    checks.append(_check("stats_fields", well_formed, "" if well_formed else f"got {fields}, rejected_by_reason={by_reason!r}"))
    if not well_formed:
        return {"name": name, "stage": stats.get("stage", name), "ok": False, "checks": checks}
    n_in, kept, rejected = fields["in"], fields["kept"], fields["rejected"]
    checks.append(_check("in_equals_kept_plus_rejected", n_in == kept + rejected,
                         f"in {n_in} vs kept {kept} + rejected {rejected} = {kept + rejected}"))
    reason_total = sum(v for v in by_reason.values() if isinstance(v, int))
    checks.append(_check("reasons_sum_to_rejected", reason_total == rejected,
                         f"sum of rejected_by_reason {reason_total} vs rejected {rejected}"))

    kind, path = output_dataset(folder, stats.get("stage"))
    kept_rows = _rows(path, kind) if kind else 0
    counted = f" (what {stats['stage']} counts as kept)" if stats.get("stage") in KEPT_KIND else ""
    checks.append(_check("kept_rows_match", kept_rows == kept,
                         f"{kept_rows} rows in {f'{kind}/' if kind else 'no output dataset'}{counted} vs kept {kept}"))
    rejected_dir = os.path.join(folder, "rejected")
    reasons = _column(rejected_dir, "rejected", "reason")
    stages = _column(rejected_dir, "rejected", "stage")
    checks.append(_check("rejected_rows_match", len(reasons) == rejected,
                         f"{len(reasons)} rows in rejected/ vs rejected {rejected}"))
    on_disk = Counter(NULL_REASON if r is None else r for r in reasons)  # a null reason breaks the contract
    differ = {r: (on_disk.get(r, 0), by_reason.get(r, 0)) for r in set(on_disk) | set(by_reason)
              if on_disk.get(r, 0) != by_reason.get(r, 0)}
    checks.append(_check("rejected_reasons_match", not differ,
                         "; ".join(f"{r}: {a} rows vs {b} in stats" for r, (a, b) in sorted(differ.items()))))
    bad = [r for r in reasons if not r or not SNAKE.match(r)] + [s for s in stages if not s]
    checks.append(_check("rejected_rows_labelled", not bad, f"{len(bad)} rows without stage or snake_case reason"))

    id_column = {"candidates": "candidate_id", "pairs": "pair_id", "regions": "image_id", "captions": "caption_id"}.get(kind)
    if id_column:
        ids = _column(path, kind, id_column)
        dups = [i for i, c in Counter(ids).items() if c > 1]
        checks.append(_check(f"unique_{id_column}", not dups, f"{len(dups)} duplicated ({_sample(dups)})" if dups else ""))
    if kind == "captions" and stats.get("stage") == "import_captions":
        checks += _import_pairs(folder, stats, path)

    upstream, found = _upstream(run_dir, name, stats)
    if found:
        checks.append(found)
    if upstream:
        checks += _lineage(upstream, os.path.relpath(upstream, run_dir), kind, path, rejected_dir, n_in,
                           per_image=kind == "regions" or stats.get("stage") == "features")
    return {"name": name, "stage": stats.get("stage", name), "upstream": os.path.relpath(upstream, run_dir) if upstream else None,
            "in": n_in, "kept": kept, "rejected": rejected, "ok": all(c["ok"] for c in checks), "checks": checks}


def _import_pairs(folder: str, stats: dict, captions: str) -> list[dict]:
    """The checks of an import's ``pairs/``, which it does not count as kept but writes one row per image of:
    as many rows as ``images`` in its stats.json, one per image id, and every kept caption's image among them (an
    import whose pairs/ was deleted balanced: ``lait features --input`` then had no image to read)."""
    pairs = os.path.join(folder, "pairs")
    images = stats.get("images")
    image_ids = _column(pairs, "pairs", "image_id")
    counted = isinstance(images, int) and not isinstance(images, bool)
    checks = [_check("pairs_rows_match", counted and len(image_ids) == images,
                     f"{len(image_ids)} rows in {'pairs/' if os.path.isdir(pairs) else 'no pairs/ (missing)'} vs "
                     f"images {images!r} in stats")]
    dups = [i for i, c in Counter(image_ids).items() if c > 1]
    checks.append(_check("unique_pairs_image_id", not dups, f"{len(dups)} duplicated ({_sample(dups)})" if dups else ""))
    checks.append(_traced("captions_image_ids_in_pairs", _column(captions, "captions", "image_id"), set(image_ids),
                          "pairs/"))
    return checks


def _traced(check: str, ids: list, known: set, rel: str) -> dict:
    """The check ``check``: every id of ``ids`` (nulls aside) is one of ``known``, the upstream folder ``rel``'s."""
    gone = _missing(ids, known)
    return _check(check, not gone, f"{len(gone)} missing in {rel} ({_sample(gone)})")


def _lineage(upstream: str, rel: str, kind: str | None, path: str | None, rejected_dir: str, n_in: int,
             per_image: bool = False) -> list[dict]:
    """The checks that every id a stage kept or rejected comes from its upstream folder, and that it read all of it.

    ``per_image``: the stage reads each distinct image once (``lait features``, writing regions/), not each row."""
    checks = []
    up_kind, up_path = input_dataset(upstream)
    covered = None  # (id column, upstream's ids, kept ids, rejected ids) for upstream_ids_kept_or_rejected
    if up_kind == "candidates":
        up_ids = _column(up_path, "candidates", "candidate_id")
        known = set(up_ids)
        rejected_ids = _column(rejected_dir, "rejected", "candidate_id")
        if kind == "pairs":
            ids = _column(path, "pairs", "candidate_id")
            gone = _missing(ids, known)
            checks.append(_check("pairs_candidate_ids_upstream", not gone and None not in ids,
                                 f"{len(gone)} missing in {rel}, {ids.count(None)} null"))
            covered = ("candidate_id", up_ids, ids, rejected_ids)
        checks.append(_traced("rejected_candidate_ids_upstream", rejected_ids, known, rel))
        # the stage reads every row, a candidate_id written twice included (it rejects the repeat)
        up_kept = _rows(up_path, "candidates")
    else:
        up_image_ids = _column(up_path, up_kind, "image_id") if up_kind else []
        known = set(up_image_ids)
        rejected_images = _column(rejected_dir, "rejected", "image_id")
        if kind == "regions":
            ids = _column(path, "regions", "image_id")
            checks.append(_traced("regions_image_ids_upstream", ids, known, rel))
        if kind == "pairs" and up_kind == "pairs":
            # a pairs -> pairs stage (lait relevance score) keeps a subset of the pairs it read
            up_pairs = _column(up_path, "pairs", "pair_id")
            known_pairs = set(up_pairs)
            ids, rejected_pairs = _column(path, "pairs", "pair_id"), _column(rejected_dir, "rejected", "pair_id")
            checks.append(_traced("pairs_pair_ids_upstream", ids, known_pairs, rel))
            checks.append(_traced("pairs_image_ids_upstream", _column(path, "pairs", "image_id"), known, rel))
            checks.append(_traced("rejected_pair_ids_upstream", rejected_pairs, known_pairs, rel))
            covered = ("pair_id", up_pairs, ids, rejected_pairs)
        checks.append(_traced("rejected_image_ids_upstream", rejected_images, known, rel))
        up_kept = _rows(up_path, up_kind) if up_kind else 0
    if per_image and up_kind:
        # A per-image stage reads every distinct image and each id-less row, from a crawl's candidates as from pairs
        # (one image on two pages is read once): what it counts as ``in``, and what it keeps or rejects.
        present, up_images = _ids_and_images_read(up_path, up_kind)
        checks.append(_check("in_equals_upstream_kept", n_in == up_images,
                             f"in {n_in} vs {up_images} images (distinct image ids and rows without one) in {rel}"))
        kept_images = _column(path, "regions", "image_id") if kind == "regions" else []
        covered = ("image_id", list(dict.fromkeys(present)), kept_images,
                   [i for i in _column(rejected_dir, "rejected", "image_id") if not schemas.missing_image_id(i)])
    else:
        # Every row upstream kept: the filter counted the distinct images it read (candidates whose image another had
        # dropped without a trace) and the audit, which took either count for any stage, said BALANCED.
        checks.append(_check("in_equals_upstream_kept", n_in == up_kept, f"in {n_in} vs {up_kept} rows kept in {rel}"))
    # Checked where every id the stage kept or rejected traces upstream: else that check has failed already, and each
    # stray id would be counted again here.
    if covered and all(c["ok"] for c in checks if c["check"].endswith("_upstream")):
        checks.append(_covered(*covered, rel))
    return checks


def _covered(column: str, up_ids: list, kept: list, rejected: list, rel: str) -> dict:
    """The check ``upstream_ids_kept_or_rejected``: each ``column`` value upstream (``rel``) holds is kept or rejected
    by the stage as often as upstream holds it (a candidate written twice: one row kept or rejected, the repeat
    rejected), none left out, none twice. The counts balanced for a stage that lost one id and rejected another
    twice."""
    upstream = Counter(i for i in up_ids if i is not None)
    accounted = Counter(i for i in kept if i is not None) + Counter(i for i in rejected if i is not None)
    lost, extra = upstream - accounted, accounted - upstream
    detail = []
    if lost:
        detail.append(f"{sum(lost.values())} of the {column}s {rel} kept neither kept nor rejected ({_sample(list(lost))})")
    if extra:
        detail.append(f"{sum(extra.values())} kept or rejected more often than {rel} holds them ({_sample(list(extra))})")
    return _check("upstream_ids_kept_or_rejected", not detail, "; ".join(detail))


FUNNEL_KEYS = ("in", "kept", "rejected", "rejected_by_reason")


def _is_funnel(path: str) -> bool:
    """Whether a ``stats.json`` is a stage funnel; an unreadable one counts (the audit flags it).

    Other tools may keep a ``stats.json`` of another kind (training figures, say): not a stage.
    """
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, ValueError):
        return True
    return not isinstance(stats, dict) or any(key in stats for key in FUNNEL_KEYS)


def pipeline_order(name: str) -> tuple[int, str]:
    """A sort key for stage folders: the pipeline's order where known (``STAGE_ORDER``), then by name."""
    return STAGE_ORDER.get(name, len(STAGE_ORDER)), name


def _is_stage(folder: str) -> bool:
    """Whether a run's subfolder is a stage: a funnel ``stats.json``, or what only a stage writes
    (``STAGE_MARKERS``: a stage killed before its ``stats.json``, an unfinished ``--part`` run)."""
    if not os.path.isdir(folder):
        return False
    stats = os.path.join(folder, "stats.json")
    if os.path.isfile(stats) and _is_funnel(stats):
        return True
    return any(os.path.exists(os.path.join(folder, marker)) for marker in STAGE_MARKERS)


def stage_folders(run_dir: str) -> list[str]:
    """Subfolders of the run that are stages (``_is_stage``), in pipeline order where known."""
    names = [d for d in os.listdir(run_dir) if _is_stage(os.path.join(run_dir, d))]
    return sorted(names, key=pipeline_order)


#: Marks a stage leaves in its folder while it runs, by the stage they name (``model.captions_import``'s
#: ``IMPORT_MARKER``): a run folder holding one is a stage's own folder that did not finish.
RUNNING_MARKERS = {".import_captions.running": "import_captions"}
#: What a stage's own folder holds besides its ``stats.json``: its datasets and records of rejects.
OWN_STAGE_DATASETS = (*OUTPUT_KINDS, "rejected")


def own_stage(run_dir: str, subfolders: list[str] | None = None) -> str | None:
    """The name of the stage whose books lie in ``run_dir`` itself, beside its stage subfolders, else None.

    The documented import layout is one (``lait import-captions ... --out D``, then ``lait features --input D
    --output D/features``): ``D/stats.json`` (a funnel), ``D/captions``, ``D/pairs``, ``D/rejected`` are the
    import's, ``D/features`` a stage of its own. So is a stage's folder holding a run marker and no
    ``stats.json`` (killed before its books; the audit fails it). The name is the stage ``stats.json`` (or the
    marker) names, or ``.`` when there is none or a subfolder has that name. A run folder of the pipeline's
    layout (``RUN/crawl``, ``RUN/filter``, ...) holds no ``stats.json`` of its own: None.
    """
    stats_path = os.path.join(run_dir, "stats.json")
    stage = None
    if os.path.isfile(stats_path) and _is_funnel(stats_path):
        if not any(os.path.isdir(os.path.join(run_dir, kind)) for kind in OWN_STAGE_DATASETS):
            return None
        try:
            with open(stats_path, encoding="utf-8") as f:
                stats = json.load(f)
            stage = stats.get("stage") if isinstance(stats, dict) else None
        except (OSError, ValueError):
            pass
    else:
        marked = [name for marker, name in RUNNING_MARKERS.items() if os.path.exists(os.path.join(run_dir, marker))]
        if not marked and not any(os.path.exists(os.path.join(run_dir, m)) for m in STAGE_MARKERS if m != "rejected"):
            return None
        stage = marked[0] if marked else None
    taken = set(stage_folders(run_dir) if subfolders is None else subfolders)
    return stage if isinstance(stage, str) and SNAKE.match(stage) and stage not in taken else "."


def _is_stage_alone(folder: str) -> bool:
    """Whether ``folder`` (an absolute path) is a stage's own folder holding no stage subfolders, which
    ``audit_run`` audits inside the run folder holding it."""
    return os.path.dirname(folder) != folder and _is_stage(folder) and not stage_folders(folder)


#: Files a run folder's tools read at its top besides its stage folders: the books and marks of a stage whose
#: folder it is (the import layout), what ``lait report`` shows (``lait train``'s eval.json and summary.json, the
#: demo's records), a synthetic dataset's classes. The --out of ``lait audit``, ``report`` or ``eval`` never takes
#: these names there.
RUN_FILES = ("stats.json", "eval.json", "summary.json", "config.json", "tokenizer.json", "classes.json",
             "relevance_eval.json", "planted.json", "demo.json", *STAGE_MARKERS, *RUNNING_MARKERS, *OUTPUT_KINDS)
#: The most of an existing --out file ``out_problem`` reads to tell whether it is the command's own earlier output.
OWN_OUTPUT_BYTES = 16 << 20


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, links followed."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def read_own_json(path: str, keys: tuple[str, ...]) -> bool:
    """Whether the file at ``path`` is a JSON object holding ``keys``: a command's own earlier result (an audit's
    ``run_dir`` and ``stages``, an eval's ``image_retrieval``), which its --out may replace."""
    try:
        if os.path.getsize(path) > OWN_OUTPUT_BYTES:
            return False
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and all(key in data for key in keys)


def out_problem(out: str, folder: str, own, reads: str, name: str | None = None) -> str | None:
    """Why the file ``out`` must not be written, as it would replace or add to the data of ``folder``, which the
    command reads (``reads`` says so: "the folder it audits"); None when it may be. Shared by ``lait audit``,
    ``lait report`` and ``lait eval`` (its ``--data``).

    ``out`` may lie outside ``folder``, or directly in it: as a new file, unless it takes the name of one of
    ``RUN_FILES`` other than ``name``, the command's own (``lait eval``'s eval.json), or over the command's earlier
    output (``own(path)`` says whether a file is one); never deeper, in a stage's folder or a dataset (``lait audit
    RUN --out RUN/filter/stats.json`` replaced the filter's books; ``lait eval --out DATA/captions/part-00000.parquet``
    a captions shard). Links are followed."""
    target, root = os.path.realpath(out), os.path.realpath(folder)
    if target == root:
        return f"it is {reads} itself"
    if not within(target, root):
        return None
    top, *deeper = os.path.relpath(target, root).split(os.sep)
    if deeper:
        return (f"it lies inside {os.path.join(folder, top)}{os.sep}, in {reads} ({folder}): write it elsewhere, "
                f"or directly in {folder}")
    if os.path.lexists(target) and not (os.path.isfile(target) and own(target)):
        return (f"it is {os.path.join(folder, top)}, a file of {reads}, not an earlier output of this command: "
                f"give a new file")
    if top in RUN_FILES and top != name:
        return f"{os.path.join(folder, top)} is a name LAIT's tools read in {reads}: give another name"
    return None


def is_audit_result(path: str) -> bool:
    """Whether the file at ``path`` is an earlier ``lait audit --out`` (a JSON object with ``run_dir`` and
    ``stages``)."""
    return read_own_json(path, ("run_dir", "stages"))


def audit_run(run_dir: str) -> dict:
    """Audit every stage folder of ``run_dir``; ``ok`` is true only when every check passes.

    A folder without stage subfolders that is itself a stage folder (``lait filter --output r5; lait audit
    r5``) is audited as that one stage, inside the run folder holding it (where stages record their input
    from, ``pipeline.outputs.input_reference``); ``note`` says so. A folder with stage subfolders that also
    holds a stage's own books (``own_stage``: the import layout, ``D/stats.json`` beside ``D/features``) has
    that stage audited first, the same way, under the name ``own_stage`` gives, with ``folder`` ``"."``.
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no run folder at {run_dir}")
    names, note, parent = stage_folders(run_dir), None, run_dir
    here = os.path.abspath(run_dir)
    own = own_stage(here, names) if names and os.path.dirname(here) != here else None
    if not names and _is_stage_alone(here):
        parent, names = os.path.dirname(here), [os.path.basename(here)]
        note = (f"{names[0]}/ is a stage's own folder: audited as that one stage (give its run folder, "
                f"{parent}, to audit every stage)")
    stages = [audit_stage(parent, name) for name in names]
    if own:
        # Audited inside the folder holding it, as a stage's own folder is: its stats.json names its input
        # relative to there (``pipeline.outputs.input_reference``).
        stage = audit_stage(os.path.dirname(here), os.path.basename(here))
        stage["name"], stage["folder"] = own, "."
        if stage.get("upstream"):
            stage["upstream"] = os.path.relpath(os.path.join(os.path.dirname(here), stage["upstream"]), here)
        stages.insert(0, stage)
        note = (f"{os.path.basename(here)}/ holds the books of a stage of its own ({own}) besides its stage "
                "subfolders: audited too")
    return {"run_dir": here, "ok": bool(stages) and all(s["ok"] for s in stages), "stages": stages,
            "problem": None if stages else "no stage folder (with a stats.json, rejected/, ...)", "note": note}


def format_audit(result: dict) -> str:
    """The audit as readable text: one line per stage, failing checks spelt out."""
    verdict = "BALANCED" if result["ok"] else "NOT BALANCED" if result["stages"] else "NOTHING TO AUDIT"
    lines = [f"audit of {result['run_dir']}: {verdict}"]
    for key in ("problem", "note"):
        if result.get(key):
            lines.append(f"  {result[key]}")
    for stage in result["stages"]:
        head = f"  {stage['name']:<16} {'ok ' if stage['ok'] else 'FAIL'}"
        if "in" in stage:
            head += f"  in {stage['in']:,} = kept {stage['kept']:,} + rejected {stage['rejected']:,}"
        lines.append(head)
        for check in stage["checks"]:
            if not check["ok"]:
                lines.append(f"      x {check['check']}: {check['detail']}")
            elif check.get("note"):
                lines.append(f"      - {check['check']}: {check['detail']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the audit from the command line; exit 1 when the books do not balance, 2 when nothing to audit."""
    parser = argparse.ArgumentParser(prog="python -m demo.audit", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit's options, shared by ``lait audit`` and ``python -m demo.audit``."""
    parser.add_argument("run_dir", help="a run folder (holding crawl/, filter/, features/, ...; or an import's "
                                        "folder, holding captions/, pairs/, features/), or one stage's output folder")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--out", help="also write the JSON result to this file")


def _out_refused(out: str, run_dir: str) -> str | None:
    """Why ``lait audit RUN_DIR --out OUT`` cannot write OUT (the words after ``--out OUT``), checked before the audit;
    None when it can."""
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        return " is a folder: give a file name"
    if not os.path.isdir(parent):
        return f": its folder {parent} does not exist"
    if not os.path.isdir(run_dir):
        return None  # the audit says so
    here = os.path.abspath(run_dir)
    problem = out_problem(out, run_dir, is_audit_result, "the folder it audits")
    if not problem and _is_stage_alone(here):  # audited inside its run folder, its upstream among the stages there
        run = os.path.dirname(here)
        inside = next((name for name in stage_folders(run) if name != os.path.basename(here)
                       and within(out, os.path.join(run, name))), None)
        if inside:
            problem = f"it lies inside {os.path.join(run, inside)}{os.sep}, a stage folder of the run it audits"
    return f": {problem}" if problem else None


def run_cli(args: argparse.Namespace) -> int:
    """Audit ``args.run_dir``, print, and return the exit status."""
    problem = args.out and _out_refused(args.out, args.run_dir)
    if problem:
        print(f"lait audit: --out {args.out}{problem}", file=sys.stderr)
        return 2
    try:
        result = audit_run(args.run_dir)
    except FileNotFoundError as exc:
        print(f"lait audit: {exc}", file=sys.stderr)
        return 2
    if args.out:
        try:  # whole or not at all: a failed write leaves the earlier result
            schemas.write_json_atomically(args.out, result)
        except OSError as exc:
            print(f"lait audit: cannot write --out {args.out}: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(result, indent=2) if args.json else format_audit(result))
    if not result["stages"]:
        return 2
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
