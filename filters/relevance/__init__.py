"""The learned image-text relevance filter: features, the trainer, and the scorer API.

    scorer = filters.relevance.load("models/relevance")        # or "clip:ViT-B-32:/path/weights"
    scores = scorer.score(pairs)                                # np.ndarray, one score per pair
    keep = scores >= scorer.threshold

Names are imported on first use, so that importing the package (e.g. for ``TrainConfig``) does not
pull in torch. Training and evaluation live in ``filters.relevance.train.train`` and
``filters.relevance.evaluate.evaluate`` (not re-exported: the submodules share those names).
"""
import importlib

_EXPORTS = {
    "load": "filters.relevance.scorer",
    "default_threshold": "filters.relevance.scorer",
    "Scorer": "filters.relevance.scorer",
    "RelevanceScorer": "filters.relevance.scorer",
    "ClipScorer": "filters.relevance.scorer",
    "CLIP_DEFAULT_THRESHOLD": "filters.relevance.scorer",
    "TrainConfig": "filters.relevance.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'filters.relevance' has no attribute {name!r}")
