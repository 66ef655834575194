"""Deduplication and the paper's aggregation step, as pure functions over pair dicts.

- A caption shared by more than ``max_images_per_caption`` distinct images is boilerplate for
  this crawl ("product image", a site's slogan): every pair with it is dropped.
- An image (same sha256, the ``image_id``) found with several texts keeps only its best text:
  by learned ``relevance`` when scored, else by ``text_quality``. A candidate read twice (one
  ``pair_id`` twice: the input repeats a row) keeps one copy; the others are ``duplicate_candidate``.
- Near duplicates: images whose perceptual hashes differ in at most ``phash_distance`` bits keep
  only the best-ranked one. Candidates are found by banding (pigeonhole: two 64-bit hashes within
  distance d agree exactly on at least one of d+1 bands), so only hashes that share a band are
  compared and the work splits by band, which is how the Beam pipeline groups it.

``deduplicate`` runs the three steps in memory (tests, the benchmark's loop); the pipeline runs
the same per-group functions under Beam's GroupByKey.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Mapping

import numpy

from filters.base import location_key
from filters.text import combining_marks, text_quality_score

#: reasons, in the order the steps run
REASONS = ("caption_shared_by_many_images", "duplicate_candidate", "image_has_better_text", "near_duplicate_image")
HASH_BITS = 64
#: hash comparisons per numpy block in ``near_duplicates`` (a bool and a uint64 temporary each: ~36 MB)
_COMPARE_CELLS = 1 << 22


@functools.lru_cache(maxsize=1)
def _separators() -> re.Pattern:
    """Runs of what is neither a letter, a digit nor a combining mark (a vowel sign tells two words apart)."""
    return re.compile(rf"(?:[^\w{combining_marks()}]|_)+")


def caption_key(caption: str) -> str:
    """Captions that differ only in case, punctuation or spacing are the same caption."""
    return _separators().sub(" ", (caption or "").casefold()).strip()


def rank_key(pair: Mapping[str, Any]) -> tuple:
    """Sort key, best first when sorted ascending: scored relevance, then text quality, then what the pair
    holds and where it was found (not its pair_id, which hashes the URL's port), pair_id last."""
    relevance = pair.get("relevance")
    quality = pair.get("text_quality")
    if quality is None:
        quality = text_quality_score(pair.get("caption") or "", None, pair.get("lang_score"))
    has_relevance = relevance is not None
    return (not has_relevance, -(relevance or 0.0), -quality, pair.get("caption") or "",
            location_key(pair.get("page_url")), location_key(pair.get("image_url")), pair.get("pair_id") or "")


def _rejected(pair: Mapping[str, Any], reason: str, detail: str) -> dict[str, Any]:
    from schemas import rejected_row

    return rejected_row("filter", reason, detail, candidate_id=pair.get("candidate_id"), pair_id=pair.get("pair_id"),
                        image_id=pair.get("image_id"), page_url=pair.get("page_url"),
                        image_url=pair.get("image_url"), caption=pair.get("caption"))


def split_shared_caption(pairs: Iterable[Mapping[str, Any]], max_images: int | None):
    """For the pairs of one caption: (kept, rejected); all rejected when > ``max_images`` distinct images."""
    pairs = list(pairs)
    if not max_images:
        return pairs, []
    images = {p.get("image_id") for p in pairs}
    if len(images) <= max_images:
        return pairs, []
    detail = f"caption on {len(images)} images > {max_images}"
    return [], [_rejected(p, "caption_shared_by_many_images", detail) for p in pairs]


def split_best_text(pairs: Iterable[Mapping[str, Any]]):
    """For the pairs of one image: ([best], rejected others); a repeat of a pair already seen (the same
    candidate read twice) is ``duplicate_candidate``, whichever copy is kept."""
    ranked = sorted(pairs, key=rank_key)
    if not ranked:
        return [], []
    best, seen, rejected = ranked[0], {ranked[0].get("pair_id")}, []
    for p in ranked[1:]:
        if p.get("pair_id") in seen:
            rejected.append(_rejected(p, "duplicate_candidate", "the same candidate read again"))
        else:
            seen.add(p.get("pair_id"))
            rejected.append(_rejected(p, "image_has_better_text", f"kept pair {best.get('pair_id')}"))
    return [best], rejected


def phash_bands(phash: str, distance: int) -> list[tuple[int, int]]:
    """(band index, band value) keys: two hashes within ``distance`` bits share at least one key."""
    value = int(phash, 16)
    bands = distance + 1
    width = HASH_BITS // bands
    keys = []
    for band in range(bands):
        start = band * width
        stop = HASH_BITS if band == bands - 1 else start + width
        keys.append((band, (value >> start) & ((1 << (stop - start)) - 1)))
    return keys


def _bit_counts(values: numpy.ndarray) -> numpy.ndarray:
    """Set bits of each uint64: ``numpy.bitwise_count`` (numpy 2), or a byte table on numpy 1.26 (allowed too)."""
    if hasattr(numpy, "bitwise_count"):
        return numpy.bitwise_count(values)
    table = numpy.array([bin(byte).count("1") for byte in range(256)], dtype=numpy.uint8)
    return table[values.view(numpy.uint8).reshape(*values.shape, 8)].sum(axis=-1, dtype=numpy.uint8)


def near_duplicates(items: Iterable[tuple[str, str, tuple]], distance: int) -> list[tuple[str, str]]:
    """Among (pair_id, phash, rank) items sharing a band: (pair_id, better pair_id) for each near duplicate.

    An item is a duplicate when a better-ranked item lies within ``distance`` bits (the first such one, in
    rank order, is named); the order is total (rank then pair_id), so every band bucket reaches the same
    verdict about the same two items. A bucket is compared all against all, so the comparison runs on
    blocks of rows in numpy: a crowded bucket (large distances cut 64 bits into short bands) took seconds
    per few thousand hashes in a Python loop.
    """
    ranked, seen = [], set()
    for item in sorted(items, key=lambda item: item[2]):
        if item[0] not in seen:
            seen.add(item[0])
            ranked.append(item)
    if len(ranked) < 2:
        return []
    values = numpy.array([int(phash, 16) for _, phash, _ in ranked], dtype=numpy.uint64)
    marks = []
    block = max(1, _COMPARE_CELLS // len(values))
    for start in range(1, len(values), block):
        stop = min(start + block, len(values))
        # rows: items start..stop-1; columns: every item ranked before the last of them
        near = _bit_counts(values[start:stop, None] ^ values[None, :stop - 1]) <= distance
        near &= numpy.arange(stop - 1)[None, :] < numpy.arange(start, stop)[:, None]  # better-ranked only
        found = near.any(axis=1)
        first = near.argmax(axis=1)
        for row in numpy.flatnonzero(found):
            marks.append((ranked[start + row][0], ranked[first[row]][0]))
    return marks


def near_duplicates_plain(items: Iterable[tuple[str, str, tuple]], distance: int) -> list[tuple[str, str]]:
    """``near_duplicates`` by its definition, one pair of hashes at a time: the tests' oracle, the benchmark's baseline."""
    marks, kept, seen = [], [], set()
    for pair_id, phash, _ in sorted(items, key=lambda item: item[2]):
        if pair_id in seen:
            continue
        seen.add(pair_id)
        value = int(phash, 16)
        better = next((other for other, other_value in kept if bin(value ^ other_value).count("1") <= distance), None)
        if better is not None:
            marks.append((pair_id, better))
        kept.append((pair_id, value))
    return marks


def split_near_duplicates(pairs: list[Mapping[str, Any]], marks: Iterable[tuple[str, str]]):
    """Apply near-duplicate marks: (kept, rejected)."""
    dup_of = {}
    for pair_id, better in marks:
        dup_of.setdefault(pair_id, better)
    kept, rejected = [], []
    for pair in pairs:
        better = dup_of.get(pair.get("pair_id"))
        if better is None:
            kept.append(pair)
        else:
            rejected.append(_rejected(pair, "near_duplicate_image", f"near pair {better}"))
    return kept, rejected


def deduplicate(pairs: Iterable[Mapping[str, Any]], max_images_per_caption: int | None = 10,
                phash_distance: int = 4):
    """All three steps in memory: (kept pairs, rejected rows). ``phash_distance`` < 0 skips near duplicates."""
    pairs = list(pairs)
    rejected: list[dict[str, Any]] = []
    by_caption: dict[str, list] = {}
    for pair in pairs:
        by_caption.setdefault(caption_key(pair.get("caption")), []).append(pair)
    survivors = []
    for group in by_caption.values():
        kept, dropped = split_shared_caption(group, max_images_per_caption)
        survivors += kept
        rejected += dropped
    by_image: dict[str, list] = {}
    for pair in survivors:
        by_image.setdefault(pair.get("image_id"), []).append(pair)
    best = []
    for group in by_image.values():
        kept, dropped = split_best_text(group)
        best += kept
        rejected += dropped
    if phash_distance < 0:
        return best, rejected
    buckets: dict[tuple, list] = {}
    for pair in best:
        if pair.get("phash"):
            for key in phash_bands(pair["phash"], phash_distance):
                buckets.setdefault(key, []).append((pair["pair_id"], pair["phash"], rank_key(pair)))
    marks = [m for items in buckets.values() for m in near_duplicates(items, phash_distance)]
    kept, dropped = split_near_duplicates(best, marks)
    return kept, rejected + dropped
