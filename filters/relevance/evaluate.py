"""Evaluate a relevance scorer on pairs labelled with ``is_match`` (planted or annotated mismatches)."""
from __future__ import annotations

import numpy as np

from filters.relevance.data import read_pairs
from filters.relevance.metrics import mismatch_report
from filters.relevance.scorer import load


def evaluate(spec: str, labelled: str | list[dict], threshold: float | None = None, batch_size: int = 256,
             progress: bool = False) -> dict:
    """ROC-AUC, true pairs kept and mismatches removed at the model's (or the given) threshold."""
    rows = read_pairs(labelled, extra_columns=("is_match",)) if isinstance(labelled, str) else labelled
    labels = [r.get("is_match") for r in rows]
    if any(label is None for label in labels):
        raise ValueError("every labelled pair needs is_match set (true or false)")
    scorer = load(spec)
    scores = _score_with_progress(scorer, rows, batch_size, progress)
    cut = scorer.threshold if threshold is None else threshold
    return {"model": spec, **mismatch_report(scores, np.array(labels, dtype=bool), cut)}


def _score_with_progress(scorer, rows: list[dict], batch_size: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=len(rows), desc="relevance eval", unit="pair", disable=not progress, leave=False) as bar:
        for start in range(0, len(rows), batch_size * 8):
            chunk = rows[start:start + batch_size * 8]
            parts.append(scorer.score(chunk, batch_size=batch_size))
            bar.update(len(chunk))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
