"""The rule chain: caption choice, the pair it builds, the reject it builds, and explain()."""
import pytest

from filters.rules import STEP_OF_REASON, RuleConfig, RuleFilters
from filters.synthetic import candidate, make_image


@pytest.fixture(scope="module")
def rules():
    return RuleFilters(RuleConfig())


@pytest.fixture(scope="module")
def photo():
    return make_image(11, 400, 320)


def test_prefers_alt_and_records_source(rules, photo):
    pair, rejected = rules.apply(candidate(photo, "a brown dog running on the beach", 1,
                                           title="the title of this photograph here"))
    assert rejected is None
    assert (pair["caption"], pair["text_source"], pair["lang"]) == ("a brown dog running on the beach", "alt", "en")
    assert pair["width"] is not None and len(pair["phash"]) == 16 and 0 <= pair["text_quality"] <= 1
    assert pair["image_id"] == candidate(photo, "x", 1)["image_id"]


def test_falls_back_to_title_when_alt_fails(rules, photo):
    pair, _ = rules.apply(candidate(photo, "IMG_1234.jpg", 2, title="a red bicycle against a brick wall"))
    assert (pair["caption"], pair["text_source"]) == ("a red bicycle against a brick wall", "title")


def test_rejects_with_the_preferred_sources_reason(rules, photo):
    pair, rejected = rules.apply(candidate(photo, "click here", 3, title="photo"))
    assert pair is None and rejected["reason"] == "text_too_short" and rejected["caption"] == "click here"
    assert rejected["stage"] == "filter" and rejected["candidate_id"]


def test_no_text(rules, photo):
    _, rejected = rules.apply(candidate(photo, "   ", 4, title=None))
    assert rejected["reason"] == "no_text"


def test_image_rules_run_after_text(rules):
    _, rejected = rules.apply(candidate(make_image(3, 100, 100), "a brown dog running on the beach", 5))
    assert rejected["reason"] == "image_too_small"


def test_every_reason_belongs_to_one_step():
    assert STEP_OF_REASON["text_too_short"] == "word_count"
    assert STEP_OF_REASON["lang_not_target"] == "language"
    assert STEP_OF_REASON["near_duplicate_image"] == "dedup"
    assert STEP_OF_REASON["low_relevance"] == "relevance"


def test_explain_reports_every_filter(rules, photo):
    result = rules.explain("Ein schwarzer Hund", photo)
    assert result["lang"] == "de" and not result["keep"]
    assert set(result["filters"]) == {"word_count", "boilerplate", "language", "oov", "image"}
    assert result["filters"]["language"]["reason"] == "lang_not_target"
    assert result["filters"]["image"]["keep"] and result["image"]["format"] == "JPEG"


def test_pair_size_and_image_id_come_from_the_bytes_not_the_columns(rules, photo):
    import hashlib

    row = candidate(photo, "a brown dog running along the beach at sunset", 0, width=5000, height=10)
    row["image_id"] = "deadbeef"  # the column claims another id
    pair, rejected = rules.apply(row)
    assert rejected is None
    assert (pair["width"], pair["height"]) == (400, 320)
    assert pair["image_id"] == hashlib.sha256(photo).hexdigest()
