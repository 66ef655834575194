"""One self-contained HTML report of a run folder: funnel, distributions, samples, boxes, losses, eval.

Everything is inline (charts and thumbnails as base64 PNG/JPEG ``data:`` URIs, CSS in the page, no
scripts), and a Content-Security-Policy forbids the page to load anything else, so the file opens
offline anywhere. Each section renders what the run folder holds and says plainly what is missing.
Native form: ``python -m demo.report RUN_DIR [--out FILE]``; ``lait report`` is the same.
"""
from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import glob
import html
import io
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from demo import audit as audit_mod
from filters import imageio

log = logging.getLogger(__name__)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STAGE_DATASETS = (("crawl", "candidates"), ("filter", "pairs"), ("features", "regions"))
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#1d2430;background:#fafbfc}
h1{margin:.2em 0}h2{border-bottom:2px solid #d8dee6;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0;font-size:14px}td,th{border:1px solid #d8dee6;padding:4px 8px;text-align:right}
th{background:#eef1f5}td.l,th.l{text-align:left}.missing{color:#8a5a00;background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px}
.ok{color:#147a2e;font-weight:600}.bad{color:#b3261e;font-weight:600}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:150px;background:#fff;border:1px solid #d8dee6;border-radius:6px;padding:6px;font-size:12px;overflow-wrap:anywhere}
.card img{width:138px;height:110px;object-fit:contain;background:#eee;display:block;margin-bottom:4px}
.reason{color:#b3261e;font-family:monospace}.chart{max-width:100%;height:auto}.muted{color:#5b6573;font-size:13px}
.noimg{width:138px;height:110px;background:#eee;color:#777;display:flex;align-items:center;justify-content:center}
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


def read_json(path: str) -> dict | list | None:
    """A JSON file's content, or None when it is absent or unreadable (a warning says which)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        if os.path.exists(path):
            log.warning("cannot read %s: %s", path, exc)
        return None


def _pylist(table) -> list[dict]:
    """A table's rows as dicts; text that is not valid UTF-8 decoded with U+FFFD, as ``demo.audit._column`` reads
    it: one such caption (a crawled page's bytes) made the whole Samples section "could not be drawn"."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        columns = []
        for column in table.columns:
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                raw = column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
                columns.append([None if v is None else v.decode("utf-8", "replace") for v in raw.to_pylist()])
            else:
                columns.append(column.to_pylist())
        return [dict(zip(table.column_names, row)) for row in zip(*columns)]


def _has_data(path: str) -> bool:
    return os.path.isdir(path) and bool(schemas.list_parquet_files(path))


def _figure_png(fig) -> str:
    """A matplotlib figure as an ``<img>`` with a base64 PNG."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img class="chart" alt="chart" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thumb(data: bytes | None, boxes=None, labels=None, side: int = 220) -> str:
    """A JPEG thumbnail ``<img>`` of image bytes (boxes drawn when given), or a placeholder.

    Decoded as the features stage decodes (``filters.imageio``: EXIF orientation applied, 16-bit grayscale
    scaled, its pixel guard), since the regions' boxes are in that oriented image; a JPEG decodes at a reduced
    scale. The boxes are drawn on the thumbnail, scaled from the oriented image's pixels.
    """
    if not data:
        return '<div class="noimg">no image</div>'
    from PIL import ImageDraw

    try:
        with imageio.open_image(data, max_pixels=imageio.HARD_MAX_PIXELS) as opened:
            width, height = imageio.oriented_size(opened)
            image = imageio.decode(opened, draft_size=(side, side), orient=True)
    except imageio.ImageError as exc:  # any undecodable bytes become a placeholder
        return f'<div class="noimg">undecodable ({_esc(exc.reason)})</div>'
    image.thumbnail((side, side))
    if boxes is not None:
        sx, sy = image.width / max(1, width), image.height / max(1, height)
        draw = ImageDraw.Draw(image)
        palette = ["#ff2d55", "#00c7be", "#ffcc00", "#5856d6", "#34c759", "#ff9500"]
        for k, box in enumerate(boxes):
            colour = palette[k % len(palette)]
            x0, y0, x1, y1 = (float(v) * s for v, s in zip(box, (sx, sy, sx, sy)))
            draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=2)
            if labels is not None and k < len(labels):
                draw.text((x0 + 2, y0 + 1), str(labels[k]), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return f'<img alt="thumbnail" src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


class RunData:
    """Lazy access to a run folder's stats, datasets and image bytes."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        #: Each stage's folder, relative to the run folder, by the stage's name: "" for the run folder's own
        #: stage (``demo.audit.own_stage``: the import layout's ``D/stats.json``), first.
        self.folders = self._stage_names()
        self.stats = {name: read_json(self.path(folder, "stats.json")) for name, folder in self.folders.items()}

    def _stage_names(self) -> dict[str, str]:
        """The stages the audit reads, in its order: the run folder's own first, then its stage subfolders."""
        if not os.path.isdir(self.run_dir):
            return {}
        names = audit_mod.stage_folders(self.run_dir)
        own = audit_mod.own_stage(self.run_dir, names)
        return {**({own: ""} if own else {}), **{name: name for name in names}}

    @property
    def own_stage(self) -> str | None:
        """The name of the stage whose books lie in the run folder itself (the import layout's
        ``import_captions``), else None."""
        return next((name for name, folder in self.folders.items() if folder == ""), None)

    def path(self, *parts: str) -> str:
        """A path inside the run folder."""
        return os.path.join(self.run_dir, *parts)

    def table(self, rel: str, kind: str, columns: list[str], where=None):
        """Columns of a dataset (those present; the rows ``where`` selects, a pyarrow expression, when given),
        or None when it does not exist."""
        path = self.path(rel)
        if not _has_data(path):
            return None
        dataset = schemas.open_dataset(path, kind)
        return dataset.to_table(columns=[c for c in columns if c in dataset.schema.names], filter=where)

    def image_bytes(self, image_ids: list[str]) -> dict[str, bytes]:
        """Image bytes by id, looked up in the kept pairs, the candidates, the test split and, where the run
        folder is a stage's own (the import layout: ``lait features --input D --output D/features``), its pairs."""
        found: dict[str, bytes] = {}
        wanted = [i for i in dict.fromkeys(image_ids) if i]
        sources = [("filter/pairs", "pairs"), ("crawl/candidates", "candidates"), ("test/pairs", "pairs")]
        if "" in self.folders.values():
            sources.append(("pairs", "pairs"))
        for rel, kind in sources:
            missing = [i for i in wanted if i not in found]
            if not missing or not _has_data(self.path(rel)):
                continue
            dataset = schemas.open_dataset(self.path(rel), kind)
            table = dataset.to_table(columns=["image_id", "image_bytes"], filter=pc.field("image_id").isin(missing))
            for row in _pylist(table):
                found.setdefault(row["image_id"], row["image_bytes"])
        return found


# ---------------------------------------------------------------------------------------------
# Sections: each returns HTML and never raises for missing inputs.


def section_funnel(run: RunData) -> str:
    """The funnel per stage (in, kept, rejected by reason) as a chart and a table."""
    stages = [(name, s) for name, s in run.stats.items() if isinstance(s, dict) and isinstance(s.get("in"), int)]
    if not stages:
        return _missing("No stage has written a stats.json yet: there is no funnel to show.")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.7 + 0.55 * len(stages)))
    reasons = sorted({r for _, s in stages for r in (s.get("rejected_by_reason") or {})})
    # tab20 without its greens: green means "kept" in this chart.
    palette = [plt.get_cmap("tab20")(i) for i in range(20) if i not in (4, 5)]
    labels = [name for name, _ in stages][::-1]
    kept = [s.get("kept", 0) for _, s in stages][::-1]
    ax.barh(labels, kept, color="#1b5e20", label="kept")
    left = list(kept)
    for k, reason in enumerate(reasons):
        values = [(s.get("rejected_by_reason") or {}).get(reason, 0) for _, s in stages][::-1]
        ax.barh(labels, values, left=left, color=palette[k % len(palette)], label=reason)
        left = [a + b for a, b in zip(left, values)]
    ax.set_xlabel("records")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title("Funnel: kept and rejected by reason, per stage")
    rows = []
    for name, s in stages:
        by = s.get("rejected_by_reason") or {}
        top = ", ".join(f"{_esc(r)} {_fmt(n)}" for r, n in sorted(by.items(), key=lambda kv: -kv[1]))
        balanced = s.get("in") == s.get("kept", 0) + s.get("rejected", 0)
        rows.append(f"<tr><td class=l>{_esc(name)}</td><td>{s['in']:,}</td><td>{s.get('kept', 0):,}</td>"
                    f"<td>{s.get('rejected', 0):,}</td><td class='{'ok' if balanced else 'bad'}'>{'yes' if balanced else 'NO'}</td>"
                    f"<td class=l>{top or '-'}</td></tr>")
    table = ("<table><tr><th class=l>stage</th><th>in</th><th>kept</th><th>rejected</th><th>in = kept + rejected</th>"
             "<th class=l>rejected by reason</th></tr>" + "".join(rows) + "</table>")
    return _figure_png(fig) + table


#: The distributions, and what a stage's own datasets (the import layout's captions/, pairs/, rejected/) must hold
#: to draw each.
DISTRIBUTIONS = {"caption length": "captions", "language": "languages or caption splits", "image size": "image sizes",
                 "relevance": "relevance scores"}


def _own_distributions(run: RunData) -> str | None:
    """The stage whose own datasets the distributions are drawn from: the run folder's own stage (the import
    layout) when the folder holds neither the crawl's candidates nor the filter's pairs; else None."""
    if run.own_stage is None or _has_data(run.path("filter/pairs")) or _has_data(run.path("crawl/candidates")):
        return None
    return run.own_stage


def section_distributions(run: RunData) -> str:
    """Caption length, language (or, for an import, caption splits), image size and relevance score (with its
    threshold): from crawl/ and filter/, or from the stage whose books lie in the run folder itself (the import
    layout ``D``: its captions/, pairs/ and rejected/)."""
    plt = _plt()
    parts: list[str] = []
    own = _own_distributions(run)
    splits = None
    if own:
        stats = run.stats.get(own)
        kind, _ = audit_mod.output_dataset(run.run_dir, stats.get("stage") if isinstance(stats, dict) else None)
        kept = run.table(kind, kind, ["caption", "lang", "split"]) if kind in ("captions", "pairs") else None
        pairs = run.table("pairs", "pairs", ["lang", "relevance", "width", "height"])
        rejected = run.table("rejected", "rejected", ["caption"])
        candidates = None
        if kept is not None and "split" in kept.column_names:
            splits = Counter(v for v in kept.column("split").to_pylist() if v)
        relevance_stats = stats if isinstance(stats, dict) else {}
        where = {"language": "language (kept pairs)", "split": "captions per split",
                 "image size": f"image size ({own} images)"}
    else:
        pairs = kept = run.table("filter/pairs", "pairs", ["caption", "lang", "relevance", "width", "height"])
        rejected = run.table("filter/rejected", "rejected", ["caption"])
        candidates = run.table("crawl/candidates", "candidates", ["width", "height", "page_lang", "alt", "title"])
        relevance_stats = run.stats.get("filter") if isinstance(run.stats.get("filter"), dict) else {}
        where = {"language": "language (kept pairs / crawled pages)", "image size": "image size (crawled candidates)"}
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    drawn = []

    ax = axes[0]
    kept_len, rej_len = _word_counts(kept), _word_counts(rejected)
    overflow_note = ""
    if kept_len or rej_len:
        edges, over = length_bins(kept_len + rej_len)
        longest = max(kept_len + rej_len)
        if over is not None:  # every longer caption counts in the last bin, [over, over + width)
            longer = sum(v >= over for v in kept_len + rej_len)
            kept_len, rej_len = [min(v, over) for v in kept_len], [min(v, over) for v in rej_len]
        ax.hist([kept_len, rej_len], bins=edges, label=["kept", "rejected"], color=["#2e7d32", "#c62828"], stacked=True)
        if over is not None:
            label_at = (edges[-2] + edges[-1]) / 2  # the overflow bin's label, clear of the other ticks' labels
            ticks = [t for t in ax.get_xticks() if 0 <= t <= label_at - 0.1 * edges[-1]]
            ax.set_xticks(ticks + [label_at], [f"{t:g}" for t in ticks] + [f"≥{over:,}"])
            ax.set_xlim(edges[0], edges[-1])
            overflow_note = (f"Caption length: the last bin (≥{over:,} words) holds the {longer:,} longest caption"
                             f"{'s' if longer != 1 else ''}, up to {longest:,} words.")
        ax.legend(fontsize=8)
        drawn.append("caption length")
    ax.set_title("caption length (words)")

    ax = axes[1]
    langs = Counter()
    if pairs is not None and "lang" in pairs.column_names:
        langs.update(f"kept:{l}" for l in pairs.column("lang").to_pylist() if l)
    if candidates is not None and "page_lang" in candidates.column_names:
        langs.update(f"page:{l}" for l in candidates.column("page_lang").to_pylist() if l)
    shown, title = (langs, where["language"]) if langs or not splits else (splits, where["split"])
    if shown:
        top = shown.most_common(12)
        ax.bar([k for k, _ in top], [v for _, v in top], color="#1565c0")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        drawn.append("language")
    ax.set_title(title)

    ax = axes[2]
    sizes = candidates if candidates is not None and "width" in candidates.column_names else pairs
    if sizes is not None and "width" in sizes.column_names:
        w = [v for v in sizes.column("width").to_pylist() if v]
        h = [v for v in sizes.column("height").to_pylist() if v]
        if w and h:
            ax.scatter(w[: len(h)], h[: len(w)], s=6, alpha=0.5, color="#6a1b9a")
            ax.set_xlabel("width px", fontsize=8)
            ax.set_ylabel("height px", fontsize=8)
            drawn.append("image size")
    ax.set_title(where["image size"])

    ax = axes[3]
    relevance = relevance_stats.get("relevance") if isinstance(relevance_stats.get("relevance"), dict) else {}
    hist = relevance.get("histogram") or {}
    threshold = relevance.get("threshold")
    if hist.get("edges") and hist.get("counts"):
        edges, counts = hist["edges"], hist["counts"]
        ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color="#00838f")
        drawn.append("relevance")
    elif pairs is not None and "relevance" in pairs.column_names:
        scores = [v for v in pairs.column("relevance").to_pylist() if v is not None]
        if scores:
            ax.hist(scores, bins=20, color="#00838f")
            drawn.append("relevance")
    if threshold is not None and "relevance" in drawn:
        ax.axvline(threshold, color="#c62828", linestyle="--", label=f"threshold {_num(float(threshold))}")
        ax.legend(fontsize=8)
    ax.set_title("relevance score")
    fig.tight_layout()
    if drawn:
        parts.append(_figure_png(fig))
    else:
        plt.close(fig)
    missing = [name for name in DISTRIBUTIONS if name not in drawn]
    if missing and own:
        parts.append(_missing(f"Not available in this run: {', '.join(missing)} (drawn from the captions/, pairs/ "
                              f"and rejected/ of this folder's own stage, {own}, which hold no "
                              + ", ".join(DISTRIBUTIONS[name] for name in missing) + ")."))
    elif missing:
        parts.append(_missing("Not available in this run: " + ", ".join(missing)
                              + " (needs crawl/candidates, filter/pairs, filter/rejected or filter/stats.json relevance)."))
    if overflow_note:
        parts.append(f'<p class="muted">{_esc(overflow_note)}</p>')
    settings = [f"{label} {_esc(_num(relevance.get(key)))}" for key, label in
                (("threshold", "threshold"), ("keep_rate", "keep-rate")) if relevance.get(key) is not None]
    if settings:
        parts.append(f'<p class="muted">Relevance filter: {", ".join(settings)}.</p>')
    return "".join(parts)


#: The caption-length histogram's most bins: one per word count while the longest caption has at most this many
#: words (normal captions), else equal bins up to the 99th percentile and one overflow bin for the longer ones.
#: (One bin per word count up to the longest caption drew 40,000 bins for one 40,000-word alt text: 87 s, 1 GB.)
MAX_LENGTH_BINS = 100


def length_bins(values: list[int], max_bins: int = MAX_LENGTH_BINS) -> tuple[list[int], int | None]:
    """Bin edges for a histogram of word counts, and where its overflow bin starts (None when it has none).

    While the largest value is at most ``max_bins``: one bin per whole number, 0 to the largest. Beyond: the values
    up to the 99th percentile (the lower one of an interpolation, so a lone outlier of a small set is above it) in
    at most ``max_bins`` equal bins of whole numbers, and, when larger values remain (more than one more bin
    would hold), one last bin as wide as the others, from ``over``: the caller counts every value from ``over`` up
    in it (``min(v, over)``) and labels it so.
    """
    top = max(values)
    if top <= max_bins:
        return list(range(0, top + 2)), None
    ordered = sorted(values)
    cut = ordered[int(0.99 * (len(ordered) - 1))]
    width = -(-(cut + 1) // max_bins)  # ceil: values 0..cut in at most max_bins bins
    edges = list(range(0, cut + 1 + width, width))  # the last one is past cut
    over = edges[-1]
    if top < over + width:  # what is left fits one more bin of the same width: no overflow to label
        return (edges if top < over else edges + [over + width]), None
    return edges + [over + width], over


def _word_counts(table) -> list[int]:
    """Words per non-empty caption of a table (none when it is None), counted in Arrow: no Python string per row."""
    if table is None or "caption" not in table.column_names:
        return []
    text = pc.utf8_trim_whitespace(table.column("caption"))
    text = text.filter(pc.greater(pc.utf8_length(text), 0))
    return pc.list_value_length(pc.utf8_split_whitespace(text)).to_pylist()


def _num(value):
    """Floats to 3 significant digits for display; anything else as it is."""
    return f"{value:.3g}" if isinstance(value, float) else value


def _card(thumb: str, caption: str | None, note: str = "") -> str:
    return f'<div class="card">{thumb}<div>{_esc(caption) or "<i>no caption</i>"}</div>{note}</div>'


def section_samples(run: RunData, n: int = 18) -> str:
    """A grid of kept pairs and one of rejected records, with captions and reasons.

    Only ids, captions and scores are read for every row; image bytes (most of a dataset's size) only for
    the rows shown, through ``RunData.image_bytes``.
    """
    parts = ["<h3>Kept pairs</h3>"]
    # The filter's; where there is none and the run folder is a stage's own (the import layout), its pairs.
    own = run.own_stage if not _has_data(run.path("filter/pairs")) else None
    pairs = run.table("pairs" if own else "filter/pairs", "pairs", ["image_id", "caption", "relevance"])
    if pairs is None or pairs.num_rows == 0:
        where = f"pairs/ of this folder's own stage, {own}" if own else "filter/pairs"
        parts.append(_missing(f"No kept pairs ({where}) in this run."))
    else:
        step = max(1, pairs.num_rows // n)
        sample = _pylist(pairs.take(list(range(0, pairs.num_rows, step))[:n]))
        images = run.image_bytes([row["image_id"] for row in sample])
        cards = []
        for row in sample:
            note = f'<div class="muted">relevance {row["relevance"]:.3f}</div>' if row.get("relevance") is not None else ""
            cards.append(_card(_thumb(images.get(row["image_id"])), row["caption"], note))
        parts.append(f'<div class="grid">{"".join(cards)}</div>')
    parts.append("<h3>Rejected</h3>")
    chosen = _rejected_sample(run, n)
    if not chosen:
        return "".join(parts) + _missing("No rejected rows in this run.")
    # Rejected rows may carry only a candidate id: find their image through the candidates.
    wanted = [row["candidate_id"] for row in chosen if not row.get("image_id") and row.get("candidate_id")]
    cand = run.table("crawl/candidates", "candidates", ["candidate_id", "image_id"],
                     where=pc.field("candidate_id").isin(wanted)) if wanted else None
    cand_image = {row["candidate_id"]: row["image_id"] for row in _pylist(cand)} if cand is not None else {}
    ids = [row.get("image_id") or cand_image.get(row.get("candidate_id")) for row in chosen]
    images = run.image_bytes([i for i in ids if i])
    cards = []
    for row, iid in zip(chosen, ids):
        note = f'<div class="reason">{_esc(row.get("stage"))}/{_esc(row.get("reason"))}</div>'
        if row.get("detail"):
            note += f'<div class="muted">{_esc(str(row["detail"])[:80])}</div>'
        cards.append(_card(_thumb(images.get(iid)), row.get("caption"), note))
    return "".join(parts) + f'<div class="grid">{"".join(cards)}</div>'


REJECTED_SAMPLE_COLUMNS = ["stage", "reason", "detail", "caption", "candidate_id", "image_id", "image_url"]


def _rejected_sample(run: RunData, n: int) -> list[dict]:
    """Up to ``n`` rejected rows of every stage, round-robin over ``stage/reason`` so that every reason shows.

    Only the stage and reason of every row are read; the shown rows' other columns are taken by index.
    """
    by_reason: dict[str, list[tuple[int, int]]] = defaultdict(list)  # stage/reason -> (dataset, row) of its first n
    datasets = []
    for name in run.stats:
        path = run.path(run.folders[name], "rejected")
        if not _has_data(path):
            continue
        dataset = schemas.open_dataset(path, "rejected")
        labels = dataset.to_table(columns=["stage", "reason"])
        key = pc.binary_join_element_wise(pc.fill_null(labels.column("stage"), "None"),
                                          pc.fill_null(labels.column("reason"), "None"), "/")
        for value in pc.unique(key).to_pylist():
            rows = pc.indices_nonzero(pc.equal(key, value)).slice(0, n).to_pylist()
            by_reason[value] += [(len(datasets), row) for row in rows]
        datasets.append(dataset)
    picked: list[tuple[int, int]] = []
    queues = {reason: list(reversed(by_reason[reason])) for reason in sorted(by_reason)}
    while len(picked) < n and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < n:
                picked.append(queue.pop())
    rows: dict[tuple[int, int], dict] = {}
    for k, dataset in enumerate(datasets):
        indices = sorted(row for d, row in picked if d == k)
        if indices:
            columns = [c for c in REJECTED_SAMPLE_COLUMNS if c in dataset.schema.names]
            rows.update(zip(((k, i) for i in indices), _pylist(dataset.take(indices, columns=columns))))
    return [rows[key] for key in picked]


def class_names(classes) -> list[str] | None:
    """Class names from a ``classes.json``: a list, or an object with ``class_names``/``classes``/``names``."""
    if isinstance(classes, dict):
        classes = next((classes[k] for k in ("class_names", "classes", "names") if isinstance(classes.get(k), list)), None)
    return [str(c) for c in classes] if isinstance(classes, list) else None


def section_boxes(run: RunData, n: int = 8) -> str:
    """Some images with their detected boxes and class names drawn."""
    shown = []
    for rel in ("features/regions", "test_features/regions"):
        table = run.table(rel, "regions", ["image_id", "boxes", "class_ids", "class_scores"])
        if table is not None and table.num_rows:
            shown.append((rel, table.slice(0, n).to_pylist()))
    if not shown:
        return _missing("No region features (features/regions) in this run.")
    names = class_names(read_json(run.path("features", "classes.json")))
    cards = []
    for rel, rows in shown[:1]:
        images = run.image_bytes([r["image_id"] for r in rows])
        for row in rows:
            labels = [(names[c] if names and 0 <= c < len(names) else str(c)) for c in (row["class_ids"] or [])]
            note = f'<div class="muted">{len(row["boxes"] or [])} boxes: {_esc(", ".join(labels[:6]))}</div>'
            cards.append(_card(_thumb(images.get(row["image_id"]), row["boxes"] or [], labels), f"image {row['image_id'][:12]}", note))
    extra = "" if names else _missing("No features/classes.json: boxes are labelled with class ids.")
    return extra + f'<div class="grid">{"".join(cards)}</div>'


#: Columns of a trainer log that are not losses.
NOT_LOSS_COLUMNS = {"step", "stage", "task", "lr", "epoch", "time", "grad_norm", "samples_per_s", "elapsed_s"}


def _loss_rows(run: RunData) -> list[dict]:
    """``stage, step, task, loss`` rows from every CSV under train/, read tolerantly.

    Two layouts are understood: long (columns ``stage, step, task, loss``: one row per task) and
    wide (``step`` plus one column per task, e.g. ``step, lr, loss, mlm, itm, ...``; the stage is
    the ``stage`` column or the file name, and the ``loss`` column is the total).
    """
    rows: list[dict] = []
    for path in sorted(glob.glob(run.path("train", "**", "*.csv"), recursive=True)):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                long = "task" in fields and "loss" in fields
                tasks = [c for c in fields if c not in NOT_LOSS_COLUMNS and not c.endswith(("_per_s", "_s"))]
                for row in reader:
                    try:
                        step = float(row["step"])
                    except (KeyError, TypeError, ValueError):
                        continue  # a summary line or another kind of row
                    stage = row.get("stage") or stem
                    pairs = [(row.get("task") or "loss", row.get("loss"))] if long else \
                        [("total" if c == "loss" else c, row.get(c)) for c in tasks]
                    for task, value in pairs:
                        try:
                            rows.append({"stage": stage, "step": step, "task": task, "loss": float(value)})
                        except (TypeError, ValueError):
                            continue  # an empty cell: the task did not run at this step
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
    return rows


def section_losses(run: RunData) -> str:
    """Loss curves per pretraining task, one panel per training stage."""
    rows = _loss_rows(run)
    if not rows:
        return _missing("No training logs (CSV files under train/ with step and loss columns) in this run.")
    plt = _plt()
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.6 * len(stages), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            if r["stage"] == stage:
                series[r["task"]].append((r["step"], r["loss"]))
        for task, points in sorted(series.items()):
            points.sort()
            # Markers when there are few points: a single logged step is still visible.
            ax.plot([p[0] for p in points], [p[1] for p in points], label=task, marker="o" if len(points) < 20 else None)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    return _figure_png(fig)


def _fmt(value) -> str:
    """A table cell: fractions to 3 decimals, counts as integers, the rest escaped."""
    if isinstance(value, bool):
        return _esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if isinstance(value, float) else _esc(value if value is not None else "-")


def _frac(value) -> str:
    """A rate or recall to 3 decimals, whether stored as int or float."""
    return f"{float(value):.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def section_eval(run: RunData) -> str:
    """Retrieval R@1/5/10 beside chance, relevance-filter evaluation and planted-noise metrics."""
    parts = []
    ev = read_json(run.path("eval.json"))
    if isinstance(ev, dict) and any(isinstance(ev.get(k), dict) for k in ("image_retrieval", "sentence_retrieval")):
        rows = []
        for key in ("image_retrieval", "sentence_retrieval"):
            m = ev.get(key) or {}
            chance = m.get("chance_R@1")
            ratio = (m.get("R@1") / chance) if isinstance(chance, (int, float)) and chance and isinstance(m.get("R@1"), (int, float)) else None
            rows.append(f"<tr><td class=l>{key.replace('_', ' ')}</td><td>{_frac(m.get('R@1'))}</td><td>{_frac(m.get('R@5'))}</td>"
                        f"<td>{_frac(m.get('R@10'))}</td><td>{_frac(chance)}</td><td>{'-' if ratio is None else f'{ratio:.1f}x'}</td></tr>")
        parts.append("<table><tr><th class=l>task</th><th>R@1</th><th>R@5</th><th>R@10</th><th>chance R@1</th>"
                     "<th>R@1 / chance</th></tr>" + "".join(rows) + "</table>")
    else:
        parts.append(_missing("No eval.json: retrieval has not been evaluated in this run."))
    rel = read_json(run.path("relevance_eval.json"))
    if isinstance(rel, dict):
        cells = "".join(f"<tr><td class=l>{_esc(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rel.items()
                        if not isinstance(v, (dict, list)))
        parts.append(f"<h3>Relevance filter on planted mismatches</h3><table>{cells}</table>")
    else:
        parts.append(_missing("No relevance_eval.json in this run."))
    planted = read_json(run.path("planted.json"))
    if isinstance(planted, dict) and isinstance(planted.get("categories"), dict):
        rows = []
        for name, c in planted["categories"].items():
            good = all(isinstance(c.get(k), (int, float)) and c[k] >= 0.9 for k in ("precision", "recall"))
            top = ", ".join(f"{_esc(r)} {_fmt(n)}" for r, n in list((c.get("caught_by") or {}).items())[:3])
            rows.append(f"<tr><td class=l>{_esc(name)}</td><td>{_fmt(c.get('planted'))}</td><td>{_fmt(c.get('caught'))}</td>"
                        f"<td>{_frac(c.get('recall'))}</td><td>{_frac(c.get('precision'))}</td>"
                        f"<td class='{'ok' if good else 'bad'}'>{'yes' if good else 'no'}</td><td class=l>{top}</td></tr>")
        clean = planted.get("clean") or {}
        parts.append("<h3>Planted noise caught by the filters</h3><table><tr><th class=l>category</th><th>planted</th>"
                     "<th>caught</th><th>recall</th><th>precision</th><th>both &ge; 0.9</th><th class=l>caught by</th></tr>"
                     + "".join(rows) + "</table>"
                     + f'<p class="muted">Clean items kept: {_esc(clean.get("kept"))} of {_esc(clean.get("items"))}.</p>')
    else:
        parts.append(_missing("No planted.json (planted-noise evaluation) in this run."))
    return "".join(parts)


def section_audit(run: RunData) -> str:
    """The audit's verdict and every failing check."""
    if not os.path.isdir(run.run_dir):
        return _missing("The run folder does not exist.")
    result = audit_mod.audit_run(run.run_dir)
    if not result["stages"]:
        return _missing("Nothing to audit: no stage folder (with a stats.json, rejected/, ...).")
    rows = []
    for stage in result["stages"]:
        failing = "; ".join(f"{c['check']}: {c['detail']}" for c in stage["checks"] if not c["ok"])
        rows.append(f"<tr><td class=l>{_esc(stage['name'])}</td><td class='{'ok' if stage['ok'] else 'bad'}'>"
                    f"{'balanced' if stage['ok'] else 'NOT balanced'}</td><td>{len(stage['checks'])}</td>"
                    f"<td class=l>{_esc(failing) or '-'}</td></tr>")
    verdict = "<p class='ok'>The books balance.</p>" if result["ok"] else "<p class='bad'>The books do NOT balance.</p>"
    return verdict + ("<table><tr><th class=l>stage</th><th>verdict</th><th>checks</th><th class=l>failing checks</th></tr>"
                      + "".join(rows) + "</table>")


def _seconds(value) -> str:
    return f"{float(value):.1f}" if isinstance(value, (int, float)) else "-"


def section_steps(run: RunData) -> str:
    """The demo's steps with status and seconds, from ``demo.json`` (written by ``lait demo``)."""
    demo = read_json(run.path("demo.json"))
    if not isinstance(demo, dict) or not isinstance(demo.get("steps"), list):
        return _missing("No demo.json: this run was not made by lait demo.")
    rows = "".join(
        f"<tr><td class=l>{_esc(st.get('name'))}</td><td class='{_step_style(st.get('status'))}'>"
        f"{_esc(st.get('status'))}</td><td>{_seconds(st.get('seconds'))}</td><td class=l>{_esc(st.get('detail')) or '-'}</td></tr>"
        for st in demo["steps"] if isinstance(st, dict))
    status = demo.get("status")
    stopped = RUN_STOPPED.get(status) if isinstance(status, str) else None  # a damaged one (a list) is no key
    note = _missing(stopped + (f" ({demo['error']})" if demo.get("error") else "")) if stopped else ""
    return (note + f"<p class='muted'>Total {_seconds(demo.get('seconds'))} s.</p><table><tr><th class=l>step</th>"
            f"<th>status</th><th>seconds</th><th class=l>detail</th></tr>{rows}</table>")


#: Step statuses shown as bad in the steps table, and as good; the others (``skipped``, ``not_run``: not run, for a
#: reason the detail gives; ``pending``, ``running``) are neutral (they were green).
BAD_STEPS = ("failed", "missing", "interrupted")
GOOD_STEPS = ("ok", "reused")


def _step_style(status) -> str:
    """The CSS class of a step's status in the steps table."""
    if not isinstance(status, str):
        return "muted"
    return "bad" if status in BAD_STEPS else "ok" if status in GOOD_STEPS else "muted"
#: What the report says of a demo.json whose run did not get through its steps (``demo.run.Demo.run``); a run that
#: did (``closing``, ``finished``) or one written before demo.json had a status needs no word.
RUN_STOPPED = {
    "running": "demo.json says the run is still running: it is, or it was killed before it could say it stopped. "
               "The folder holds what it made so far.",
    "interrupted": "The run was interrupted (Ctrl-C) before it finished its steps: the folder holds what it made "
                   "so far.",
    "failed": "The run stopped on an error before it finished its steps: the folder holds what it made so far.",
}


SECTIONS: list[tuple[str, str, Callable[[RunData], str]]] = [
    ("steps", "Steps", section_steps),
    ("funnel", "Funnel", section_funnel),
    ("distributions", "Distributions", section_distributions),
    ("samples", "Samples", section_samples),
    ("boxes", "Detected regions", section_boxes),
    ("losses", "Training losses", section_losses),
    ("eval", "Evaluation", section_eval),
    ("audit", "Audit", section_audit),
]


def build_report(run_dir: str, title: str | None = None, progress: Callable[[str], None] | None = None) -> str:
    """The report's HTML for ``run_dir``; a section that fails shows its error instead of aborting."""
    run = RunData(run_dir)
    body = []
    for key, heading, render in SECTIONS:
        if progress:
            progress(key)
        try:
            content = render(run)
        except Exception as exc:  # noqa: BLE001 - one broken input must not lose the rest of the report
            # One line per section (the page says it too); the traceback only with `lait -v report`.
            message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            log.warning("report section %s could not be drawn: %s", key, message,
                        exc_info=log.isEnabledFor(logging.INFO))
            content = _missing(f"This section could not be drawn: {message}")
        body.append(f'<section id="{key}"><h2>{_esc(heading)}</h2>{content}</section>')
    title = title or f"LAIT run report: {os.path.basename(os.path.abspath(run_dir))}"
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>{_esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{_esc(title)}</h1>\n<p class=\"muted\">Run folder {_esc(os.path.abspath(run_dir))}; generated {now}; "
            f"stages found: {_esc(', '.join(run.stats) or 'none')}.</p>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _is_report(path: str) -> bool:
    """Whether the file at ``path`` is HTML, as an earlier report is (``build_report`` begins every page so)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(15).lower() == b"<!doctype html>"
    except OSError:
        return False


def write_report(run_dir: str, out_path: str | None = None, **kwargs) -> str:
    """Write the report (default ``RUN_DIR/report.html``) atomically; returns its path.

    An ``out_path`` that is a folder, or that would replace or add to the run folder's data
    (``demo.audit.out_problem``: inside a stage's folder, over a file of the run that is not HTML), is a
    ValueError before anything is built; a failed write (OSError) leaves no ``.tmp`` file behind.
    """
    out_path = out_path or os.path.join(run_dir, "report.html")
    if os.path.isdir(out_path):
        raise ValueError(f"{out_path} is a folder: give the report's file name (e.g. {os.path.join(out_path, 'report.html')})")
    problem = audit_mod.out_problem(out_path, run_dir, _is_report, "the run folder it reports on") \
        if os.path.isdir(run_dir) else None
    if problem:  # lait report RUN --out RUN/filter/stats.json replaced the filter's books
        raise ValueError(f"--out {out_path}: {problem}")
    text = build_report(run_dir, **kwargs)
    tmp = out_path + ".tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out_path)
    except OSError:
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's options, shared by ``lait report`` and ``python -m demo.report``."""
    parser.add_argument("run_dir", help="a run folder (crawl/, filter/, features/, train/, eval.json, ...; or an "
                                        "import's folder: captions/, pairs/, rejected/, features/)")
    parser.add_argument("--out", help="output HTML file (default RUN_DIR/report.html)")
    parser.add_argument("--title", help="page title (default: 'LAIT run report: <folder name>')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    """Write the report with a progress bar over its sections (none with ``--no-progress``); returns the exit
    status."""
    from tqdm import tqdm

    if not os.path.isdir(args.run_dir):
        print(f"lait report: no run folder at {args.run_dir}", file=sys.stderr)
        return 2
    with tqdm(total=len(SECTIONS), desc="report", unit="section", disable=args.no_progress) as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        try:
            path = write_report(args.run_dir, args.out, title=args.title, progress=step)
        except (ValueError, OSError) as exc:  # an --out that is a folder or cannot be written: one line
            bar.close()
            print(f"lait report: error: {exc}", file=sys.stderr)
            return 2
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.report``: the same as ``lait report``."""
    parser = argparse.ArgumentParser(prog="python -m demo.report", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
