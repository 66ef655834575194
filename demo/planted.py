"""How well the filters catch the noise the demo site planted: precision and recall per category.

Every ``<img>`` on the generated site is a ledger item, identified by its (page path, image path)
and labelled ``clean`` or with one planted category. After a run, each item has one outcome:

- ``rejected``: a rejected row of a counted stage names it (the earliest stage wins), with a reason;
- ``kept``: it is among the final kept pairs;
- ``collected``: a crawled candidate neither kept nor rejected (the filter has not run, or lost it);
- ``not_collected``: none of these (never a candidate: a disallowed page, an opt-out, ``alt=""``).

A *catch* is an item rejected or not collected. For a category C:

- ``recall``: caught items of C / items of C that should be caught (all of them, except the reused
  image, of which one copy may rightly survive);
- a reject is *attributed* to C when its reason matches C's expected reasons (``EXPECTED_REASONS``).
  An item never collected is attributed to its own category when that is one a crawler rightly
  never collects (``UNCOLLECTED_OK``); any other item never collected (a loss) is attributed to all
  of those categories, as a false catch;
- ``precision``: of the items attributed to C, the share that are truly planted in a category
  their reason serves (C itself, or another category the same reason is expected to catch, e.g.
  ``low_relevance`` for both ``mismatch`` and ``reused_caption``); ``precision_strict`` counts only
  items planted in C; ``precision_any_noise`` counts any planted (non-clean) item as correct.

Usage: ``python -m demo.planted RUN_DIR [--ledger FILE] [--out FILE]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from urllib.parse import urlsplit

import pyarrow as pa

import schemas

log = logging.getLogger(__name__)

#: Substrings of the reasons (``stage/reason``) that are expected to catch each category.
EXPECTED_REASONS: dict[str, tuple[str, ...]] = {
    "non_english": ("lang",),
    "boilerplate": ("boilerplate", "file_name", "filename", "has_url", "spam", "text_too_short", "too_few_words",
                    "oov", "vocab", "digits", "symbols", "repeated_word", "stock_phrase"),
    "decorative": ("decorative", "empty_alt", "alt_empty", "no_text", "empty_caption", "missing_caption",
                   "no_caption"),
    "tiny_icon": ("too_small", "min_side", "tiny", "image_small", "small_image", "too_few_bytes"),
    "banner": ("aspect",),
    "reused_image": ("dup", "aggregat", "better_text", "best_text", "not_best", "same_image", "reused_image"),
    # A caption shared by many images cannot describe them all: relevance scoring rightly catches it too.
    "reused_caption": ("shared_caption", "caption_shared", "too_many_images", "repeated_caption",
                       "common_caption", "caption_reuse", "caption_frequen", "frequent_caption", "relevance"),
    "mismatch": ("relevance",),
    "corrupt": ("corrupt", "decode", "invalid_image", "unreadable", "truncated", "image_error", "not_an_image",
                "not_image", "bad_image", "unidentified", "content_type", "empty_image", "missing_image",
                "format_not_allowed"),
    "robots_disallowed": ("robots_txt", "robots_disallowed", "disallow"),
    "opt_out": ("opt_out", "optout", "noai", "noimageai", "noimageindex", "x_robots", "meta_robots"),
}
#: Categories whose items a crawler may rightly never turn into candidates (so no rejected row).
UNCOLLECTED_OK = ("decorative", "robots_disallowed", "opt_out")
#: Stage folders whose rejects count as catches, in pipeline order (filter0, the rules-only pass
#: that trains the relevance model, is a side branch and does not count).
DEFAULT_STAGES = ("crawl", "filter", "features")
NOT_COLLECTED = "not_collected"
COLLECTED = "collected"
#: Outcomes that count as a catch: something stopped the item (a collected item merely waits).
CAUGHT = ("rejected", NOT_COLLECTED)


def url_path(url: str | None) -> str | None:
    """The path (and query) of a URL: the site's port changes every run, its paths do not."""
    if not url:
        return None
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "") if parts.scheme else url


def reason_matches(category: str, reason: str) -> bool:
    """Whether ``reason`` (``stage/reason`` or ``reason``) is one of the category's expected reasons."""
    if reason == NOT_COLLECTED:
        return category in UNCOLLECTED_OK
    name = reason.split("/", 1)[-1].lower()
    return any(key in name for key in EXPECTED_REASONS.get(category, ()))


def _read(path: str, kind: str, columns: list[str]):
    """A dataset's columns as a dict of lists, or None when the folder is absent or empty."""
    if not os.path.isdir(path) or not schemas.list_parquet_files(path):
        return None
    table = schemas.read_table(path, kind)
    return {c: (table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows) for c in columns}


def outcomes(run_dir: str, ledger: list[dict], stages: tuple[str, ...] = DEFAULT_STAGES,
             kept_dir: str | None = None) -> list[tuple[str, str | None]]:
    """``(outcome, reason)`` per ledger item: ``rejected`` + ``stage/reason``, ``kept``, ``collected``, or ``not_collected``.

    ``collected`` is a crawled candidate that is neither kept nor rejected downstream: the filter
    has not run yet, or it lost the record.
    """
    candidates = _read(os.path.join(run_dir, "crawl", "candidates"), "candidates",
                       ["candidate_id", "page_url", "image_url"]) or {"candidate_id": [], "page_url": [], "image_url": []}
    by_candidate = {cid: (url_path(p), url_path(i)) for cid, p, i in
                    zip(candidates["candidate_id"], candidates["page_url"], candidates["image_url"])}
    by_item: dict[tuple[str, str], str] = {}
    by_page: dict[str, str] = {}
    by_image: dict[str, str] = {}
    for stage in stages:
        rows = _read(os.path.join(run_dir, stage, "rejected"), "rejected",
                     ["stage", "reason", "candidate_id", "page_url", "image_url"])
        if rows is None:
            continue
        for st, reason, cid, page, image in zip(rows["stage"], rows["reason"], rows["candidate_id"],
                                                rows["page_url"], rows["image_url"]):
            page, image = url_path(page), url_path(image)
            if (page is None or image is None) and cid in by_candidate:
                page, image = by_candidate[cid]
            label = f"{st or stage}/{reason}"
            if page and image:
                by_item.setdefault((page, image), label)
            elif page:
                by_page.setdefault(page, label)
            elif image:
                by_image.setdefault(image, label)
    kept_dir = kept_dir or os.path.join(run_dir, "filter", "pairs")
    kept_rows = _read(kept_dir, "pairs", ["page_url", "image_url"]) or {"page_url": [], "image_url": []}
    kept = {(url_path(p), url_path(i)) for p, i in zip(kept_rows["page_url"], kept_rows["image_url"])}
    collected = set(by_candidate.values())
    result = []
    for item in ledger:
        key = (item["page"], item["image"])
        reason = by_item.get(key) or by_page.get(item["page"]) or by_image.get(item["image"])
        if reason:
            result.append(("rejected", reason))
        elif key in kept:
            result.append(("kept", None))
        elif key in collected:
            result.append((COLLECTED, COLLECTED))
        else:
            result.append((NOT_COLLECTED, NOT_COLLECTED))
    return result


def _attributed(category: str, item: dict, result: tuple[str, str | None]) -> bool:
    """Whether an item's outcome counts as a reject of ``category`` (see the module docstring)."""
    outcome, reason = result
    if outcome == NOT_COLLECTED:
        # Which of the never-collected categories caused it is unknowable from the run, so an item
        # planted in one of them counts for its own; any other item missing counts against them all.
        return category in UNCOLLECTED_OK and (item["category"] == category or item["category"] not in UNCOLLECTED_OK)
    return reason is not None and reason_matches(category, reason)


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def evaluate(run_dir: str, ledger: list[dict], categories: tuple[str, ...] | None = None,
             stages: tuple[str, ...] = DEFAULT_STAGES) -> dict:
    """Precision and recall of the filters per planted category, plus what happened to clean items."""
    categories = categories or tuple(EXPECTED_REASONS)
    results = outcomes(run_dir, ledger, stages)
    report: dict = {"stages": list(stages), "categories": {}}
    for category in categories:
        mine = [(item, res) for item, res in zip(ledger, results) if item["category"] == category]
        caught = [res for _, res in mine if res[0] in CAUGHT]
        should = len(mine) - 1 if category == "reused_image" and mine else len(mine)
        attributed = [(item, res) for item, res in zip(ledger, results) if _attributed(category, item, res)]
        true_here = sum(1 for item, _ in attributed if item["category"] == category)
        # A reason may rightly serve several categories (low relevance catches mismatches and a
        # caption shared by many images alike): a catch is correct when the item is planted in a
        # category that its reason serves.
        rightly = sum(1 for item, res in attributed if _attributed(item["category"], item, res))
        noise = sum(1 for item, _ in attributed if item["category"] != "clean")
        report["categories"][category] = {
            "planted": len(mine),
            "expected_catches": should,
            "caught": len(caught),
            "recall": min(1.0, _ratio(len(caught), should)) if should else None,
            "attributed": len(attributed),
            "precision": _ratio(rightly, len(attributed)),
            "precision_strict": _ratio(true_here, len(attributed)),
            "precision_any_noise": _ratio(noise, len(attributed)),
            "caught_by": dict(Counter(res[1] for res in caught).most_common()),
            "attributed_from": dict(Counter(item["category"] for item, _ in attributed).most_common()),
        }
    clean = [res for item, res in zip(ledger, results) if item["category"] == "clean"]
    report["clean"] = {
        "items": len(clean),
        "kept": sum(1 for r in clean if r[0] == "kept"),
        "kept_share": _ratio(sum(1 for r in clean if r[0] == "kept"), len(clean)),
        "lost_by": dict(Counter(r[1] for r in clean if r[0] != "kept").most_common()),
    }
    scored = [c for c in report["categories"].values() if c["planted"]]
    precisions = [c["precision"] for c in scored]
    recalls = [c["recall"] for c in scored]
    report["summary"] = {
        "min_precision": min((p for p in precisions if p is not None), default=None),
        "min_recall": min((r for r in recalls if r is not None), default=None),
        "categories_without_attributed_rejects": [k for k, c in report["categories"].items()
                                                  if c["planted"] and c["precision"] is None],
    }
    report["summary"]["all_at_least_0_9"] = bool(scored) and all(
        p is not None and p >= 0.9 for p in precisions) and all(r is not None and r >= 0.9 for r in recalls)
    return report


def load_ledger(path: str) -> list[dict]:
    """The ledger items from the site's ``ledger.json``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)["items"]


def write_planted(run_dir: str, ledger: list[dict], out_path: str | None = None, **kwargs) -> dict:
    """Evaluate and write ``planted.json`` (default: in the run folder) through a temporary file beside it: a stop
    midway leaves the earlier file or the new one, never half of one. Returns the report."""
    report = evaluate(run_dir, ledger, **kwargs)
    out_path = out_path or os.path.join(run_dir, "planted.json")
    schemas.write_json_atomically(out_path, report)
    return report


def format_table(report: dict) -> str:
    """A plain-text table of the per-category figures."""
    lines = [f"{'category':<18} {'planted':>7} {'caught':>6} {'recall':>6} {'precision':>9}  caught by"]
    for name, c in report["categories"].items():
        fmt = lambda v: "  -  " if v is None else f"{v:.3f}"  # noqa: E731
        top = ", ".join(f"{r} {n}" for r, n in list(c["caught_by"].items())[:3])
        lines.append(f"{name:<18} {c['planted']:>7} {c['caught']:>6} {fmt(c['recall']):>6} {fmt(c['precision']):>9}  {top}")
    clean = report["clean"]
    lines.append(f"clean items kept: {clean['kept']}/{clean['items']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.planted``: evaluate a run folder and print the table."""
    parser = argparse.ArgumentParser(prog="python -m demo.planted", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--ledger", help="the site's ledger.json (default RUN_DIR/site/ledger.json)")
    parser.add_argument("--out", help="where to write planted.json (default RUN_DIR/planted.json)")
    args = parser.parse_args(argv)
    try:
        ledger = load_ledger(args.ledger or os.path.join(args.run_dir, "site", "ledger.json"))
        print(format_table(write_planted(args.run_dir, ledger, args.out)))
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:  # SchemaMismatchError is a ValueError
        print(f"python -m demo.planted: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
