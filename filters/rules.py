"""The rule filters in order, turning one candidate into a pair or a rejected row.

Shared by the Beam pipeline (one ``RuleFilters`` per worker, built in ``setup()``), the benchmark's
plain loop and ``lait explain``, so every front end applies exactly the same rules.
Order: caption choice and text rules (cheap) -> language -> vocabulary -> image (decodes pixels).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Mapping, Sequence

from filters.base import Decision
from filters.dedup import REASONS as DEDUP_REASONS
from filters.image import DEFAULT_FORMATS, ImageFilter
from filters.language import LanguageFilter
from filters.text import (MAX_CHARS, TEXT_SOURCES, BoilerplateFilter, OOVFilter, WordCountFilter, normalize_text,
                          text_quality_score)

logger = logging.getLogger(__name__)

STAGE = "filter"


@dataclasses.dataclass
class RuleConfig:
    """Every threshold of the rule filters, with the defaults the pipeline and ``lait explain`` use."""

    min_words: int = 3
    max_words: int = 64
    max_chars: int = MAX_CHARS
    langs: Sequence[str] = ("en",)
    lang_threshold: float = 0.5
    lang_backend: str = "fasttext"
    word_model: bool = True
    use_page: bool = True
    vocabulary: str | None = "auto"  # the detected language's word list; None: no out-of-vocabulary check
    max_oov_rate: float = 0.5
    min_side: int = 300
    max_aspect: float = 3.0
    formats: Sequence[str] = DEFAULT_FORMATS
    min_bytes: int = 1000
    allow_animated: bool = False
    min_std: float = 4.0


#: the reasons each step can give, in pipeline order (the funnel's rows)
STEP_REASONS = {
    "input": ("invalid_utf8", "missing_id", "row_group_unreadable"),
    "caption": ("no_text",),
    WordCountFilter.name: WordCountFilter.reasons,
    BoilerplateFilter.name: BoilerplateFilter.reasons,
    LanguageFilter.name: LanguageFilter.reasons,
    OOVFilter.name: OOVFilter.reasons,
    ImageFilter.name: ImageFilter.reasons,
    "relevance": ("low_relevance", "image_undecodable"),
    "dedup": DEDUP_REASONS,
}
STEP_OF_REASON = {reason: step for step, reasons in STEP_REASONS.items() for reason in reasons}


def _lang_of(decision: Decision) -> str | None:
    """The language a LanguageFilter decision names in its detail ("<lang> <prob>")."""
    return decision.detail.split(" ")[0] if decision.detail else None


def pair_id_for(candidate_id: str, image_id: str, text_source: str) -> str:
    """A stable pair id: one candidate gives at most one pair (one image, one text source).

    The image is part of it: an input holding one candidate_id on two different images (crawls merged,
    ids written by another tool) gives two pairs, two ids. The same candidate read twice gives one id
    twice, and the aggregation keeps one of them (``dedup.split_best_text``: ``duplicate_candidate``).
    """
    return hashlib.sha1(f"pair|{candidate_id}|{image_id}|{text_source}".encode()).hexdigest()


class RuleFilters:
    """All rule filters configured from one ``RuleConfig``; ``apply`` maps a candidate to (pair, rejected)."""

    def __init__(self, config: RuleConfig | None = None):
        self.config = config = config or RuleConfig()
        self.word_count = WordCountFilter(config.min_words, config.max_words, config.max_chars)
        self.boilerplate = BoilerplateFilter()
        self.language = LanguageFilter(config.langs, config.lang_threshold, config.lang_backend,
                                       word_model=config.word_model, use_page=config.use_page)
        self.oov = OOVFilter(config.vocabulary, config.max_oov_rate) if config.vocabulary else None
        self.image = ImageFilter(config.min_side, config.max_aspect, config.formats, config.min_bytes,
                                 config.allow_animated, config.min_std)

    def text_filters(self):
        """The caption filters in order."""
        return [f for f in (self.word_count, self.boilerplate, self.language, self.oov) if f is not None]

    def check_caption(self, record: Mapping[str, Any]) -> tuple[Decision, dict[str, Decision]]:
        """Run the caption filters in order, stopping at the first reject: (final decision, per filter)."""
        decisions: dict[str, Decision] = {}
        record = dict(record)
        for f in self.text_filters():
            decision = f(record)
            decisions[f.name] = decision
            if not decision.keep:
                return decision, decisions
            if f is self.language:
                record["lang"] = _lang_of(decision)  # the vocabulary check uses the detected language
        return Decision.accept(), decisions

    def choose_caption(self, candidate: Mapping[str, Any]):
        """(source, caption, decisions) for the first text source whose caption passes, preferring alt.

        When none passes, the preferred non-empty source and its failing decisions are returned;
        when all are empty, source and caption are None.
        """
        first = None
        seen = set()
        for source in TEXT_SOURCES:
            caption = normalize_text(candidate.get(source))
            if not caption or caption in seen:
                continue
            seen.add(caption)
            record = {"caption": caption, "page_lang": candidate.get("page_lang"),
                      "page_text": candidate.get("page_text")}
            final, decisions = self.check_caption(record)
            if final.keep:
                return source, caption, decisions
            if first is None:
                first = (source, caption, decisions)
        return first if first is not None else (None, None, {})

    def apply(self, candidate: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """One candidate to (pair, None) or (None, rejected row)."""
        source, caption, decisions = self.choose_caption(candidate)
        if source is None:
            given = [name for name in TEXT_SOURCES if isinstance(candidate.get(name), (str, bytes, bytearray))
                     and candidate.get(name).strip()]
            detail = ("alt, title and figcaption are empty" if not given else
                      f"{', '.join(given)} cleaned to nothing (markup, entities or invisible characters alone)")
            return None, self.rejected(candidate, "no_text", detail, None)
        failed = next((d for d in decisions.values() if not d.keep), None)
        if failed is not None:
            return None, self.rejected(candidate, failed.reason, failed.detail, caption)
        image_decision, info = self.image.check(candidate)
        if not image_decision.keep:
            return None, self.rejected(candidate, image_decision.reason, image_decision.detail, caption)
        lang_decision = decisions[self.language.name]
        lang = _lang_of(lang_decision)
        oov_rate = decisions[self.oov.name].score if self.oov else None
        # The contract's image_id is the sha256 of the bytes: computed here, not taken from the column,
        # so that two images never share an id (dedup groups by it) and one image never has two.
        image_id = hashlib.sha256(candidate["image_bytes"]).hexdigest()
        if candidate.get("image_id") != image_id:
            logger.debug("candidate %s: image_id %r is not the sha256 of its bytes; using %s",
                         candidate.get("candidate_id"), candidate.get("image_id"), image_id)
        candidate_id = candidate.get("candidate_id")
        pair = {
            "pair_id": pair_id_for(candidate_id, image_id, source),
            "candidate_id": candidate_id,
            "image_id": image_id,
            "caption": caption,
            "text_source": source,
            "lang": lang,
            "lang_score": lang_decision.score,
            "relevance": None,
            "phash": info.get("phash"),
            "width": info["width"],  # measured, after the EXIF orientation (the crawler's columns are not trusted)
            "height": info["height"],
            "image_bytes": candidate.get("image_bytes"),
            "page_url": candidate.get("page_url"),
            "image_url": candidate.get("image_url"),
            # not a pairs column: what aggregation ranks by when there is no relevance score
            "text_quality": text_quality_score(caption, oov_rate, lang_decision.score),
        }
        return pair, None

    @staticmethod
    def rejected(candidate: Mapping[str, Any], reason: str, detail: str | None, caption: str | None) -> dict[str, Any]:
        """A rejected row of this stage for a candidate."""
        from schemas import rejected_row

        if caption is None:
            caption = next((c for c in (candidate.get(s) for s in TEXT_SOURCES) if isinstance(c, str) and c), None)
        return rejected_row(STAGE, reason, detail, candidate_id=candidate.get("candidate_id"),
                            image_id=candidate.get("image_id"), page_url=candidate.get("page_url"),
                            image_url=candidate.get("image_url"), caption=caption)

    def explain(self, caption: str, image_bytes: bytes | None = None, page_lang: str | None = None,
                page_text: str | None = None) -> dict[str, Any]:
        """Every filter's decision on one caption (and image), without stopping at the first reject."""
        text = normalize_text(caption)
        record = {"caption": text, "page_lang": page_lang, "page_text": page_text, "image_bytes": image_bytes}
        filters = {}
        lang, prob, evidence = self.language.detect(record)
        record["lang"] = lang
        for f in self.text_filters():
            filters[f.name] = f(record).as_dict()
        result = {"caption": caption, "normalized": text, "lang": lang, "lang_score": round(prob, 4),
                  "lang_evidence": evidence, "filters": filters}
        if image_bytes is not None:
            decision, info = self.image.check(record)
            filters[self.image.name] = decision.as_dict()
            result["image"] = info
        result["keep"] = all(d["keep"] for d in filters.values())
        oov = filters.get(OOVFilter.name, {}).get("score")
        result["text_quality"] = text_quality_score(text, oov, prob)
        return result
