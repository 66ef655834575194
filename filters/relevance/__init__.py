"""The learned image-text relevance filter: features, the trainer, and the scorer API.

    scorer = filters.relevance.load("models/relevance")        # or "clip:ViT-B-32:/path/weights"
    scores = scorer.score(pairs)                                # np.ndarray, one score per pair
    keep = scores >= scorer.threshold
"""
from filters.relevance.scorer import (CLIP_DEFAULT_THRESHOLD, ClipScorer, RelevanceScorer, Scorer,
                                      default_threshold, load)

__all__ = ["load", "default_threshold", "Scorer", "RelevanceScorer", "ClipScorer", "CLIP_DEFAULT_THRESHOLD"]
