"""Evaluate a relevance scorer on pairs labelled with ``is_match`` (planted or annotated mismatches)."""
from __future__ import annotations

import math

import numpy as np

from filters.relevance.data import read_pairs
from filters.relevance.metrics import mismatch_report
from filters.relevance.scorer import load


def evaluate(spec: str, labelled: str | list[dict], threshold: float | None = None, batch_size: int = 256,
             progress: bool = False) -> dict:
    """ROC-AUC, true pairs kept and mismatches removed at the model's (or the given) threshold; a pair whose
    image cannot be decoded counts as removed, as the filter removes it, and as ``unscorable``.

    ValueError for a non-finite threshold, an empty labelled set, or an ``is_match`` that is not a
    boolean (or 0/1 integer) column: a string "false" would otherwise read as True.
    """
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    rows = read_pairs(labelled, extra_columns=("is_match",)) if isinstance(labelled, str) else labelled
    where = labelled if isinstance(labelled, str) else "the labelled pairs"
    labels = [r.get("is_match") for r in rows]
    if any(label is None for label in labels):
        raise ValueError("every labelled pair needs is_match set (true or false)")
    bad = next((label for label in labels if not _is_label(label)), None)
    if bad is not None:
        raise ValueError(f"{where}: column 'is_match' must be boolean (or integer 0/1), "
                         f"got {type(bad).__name__} value {bad!r}")
    if not rows:
        raise ValueError(f"{where}: no labelled pairs to evaluate")
    scorer = load(spec)
    scores, scorable = _score_with_progress(scorer, rows, batch_size, progress)
    cut = scorer.threshold if threshold is None else threshold
    return {"model": spec, **mismatch_report(scores, np.array(labels, dtype=bool), cut, scorable)}


def _is_label(value) -> bool:
    """A boolean, or an integer 0 or 1 (numpy's included)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, (int, np.integer)) and value in (0, 1)


def _score_with_progress(scorer, rows: list[dict], batch_size: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The scores of ``rows`` and whether each could be scored, with a progress bar."""
    from tqdm.auto import tqdm

    scores, scorable = [], []
    with tqdm(total=len(rows), desc="relevance eval", unit="pair", disable=not progress, leave=False) as bar:
        for start in range(0, len(rows), batch_size * 8):
            chunk = rows[start:start + batch_size * 8]
            chunk_scores, chunk_ok = scorer.score_and_flags(chunk, batch_size=batch_size)
            scores.append(chunk_scores)
            scorable.append(chunk_ok)
            bar.update(len(chunk))
    if not scores:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(scorable)
