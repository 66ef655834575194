"""Text normalisation and one test per text-filter reason, on tiny inline records."""
import pytest

from filters.base import Decision
from filters.text import BoilerplateFilter, OOVFilter, WordCountFilter, normalize_text, text_quality_score, tokens


def test_decision_has_a_reason_exactly_when_it_rejects():
    assert Decision.accept(1.0).keep and Decision.accept().reason is None
    assert Decision.reject("text_too_short", 2).reason == "text_too_short"
    with pytest.raises(ValueError):
        Decision(False)
    with pytest.raises(ValueError):
        Decision(True, "text_too_short")


def test_normalize_text_nfkc_entities_invisible_and_whitespace():
    assert normalize_text("  Caf&eacute;\u200b  au\t\nlait ") == "Café au lait"
    assert normalize_text("ｆｕｌｌｗｉｄｔｈ ﬁsh") == "fullwidth fish"  # NFKC folds compatibility forms
    assert normalize_text("Tom &amp;amp; Jerry") == "Tom & Jerry"  # double-escaped markup
    assert normalize_text(None) == ""
    assert normalize_text(b"bytes caption") == "bytes caption"


@pytest.mark.parametrize("caption,reason", [("two words", "text_too_short"), ("word " * 65, "text_too_long")])
def test_word_count_rejects(caption, reason):
    decision = WordCountFilter()({"caption": caption})
    assert (decision.keep, decision.reason) == (False, reason)


def test_word_count_keeps_bounds_and_counts_tokens_with_letters():
    f = WordCountFilter(min_words=3, max_words=5)
    assert f({"caption": "a red car"}).keep
    assert f({"caption": "a red car - ok"}).score == 4  # the dash is not a word
    assert not f({"caption": "one two three four five six"}).keep
    assert tokens("a , b") == ["a", "b"]


@pytest.mark.parametrize("caption,reason", [
    ("IMG_1234.jpg", "caption_is_filename"),
    ("holiday DSC01234 at the beach", "caption_is_filename"),
    ("photo of sunset.png here", "caption_is_filename"),
    ("see https://example.com/a for more", "caption_has_url"),
    ("visit www.example.org today", "caption_has_url"),
    ("shop.example.com summer sale", "caption_has_url"),
    ("Click here to see more photos", "boilerplate_text"),
    ("Company Logo in blue", "boilerplate_text"),
    ("cat cat cat cat dog", "repeated_words"),
    ("12345 678 90 ### 2024", "mostly_digits_or_symbols"),
])
def test_boilerplate_rejects(caption, reason):
    decision = BoilerplateFilter()({"caption": caption})
    assert (decision.keep, decision.reason) == (False, reason), decision


@pytest.mark.parametrize("caption", ["a catalogue of logistics books", "New York New York at night",
                                     "the 3 little pigs in 2024", "an icy lake in winter"])
def test_boilerplate_keeps_ordinary_captions(caption):
    assert BoilerplateFilter()({"caption": caption}).keep


def test_oov_rejects_high_rate_and_scores_the_rate():
    f = OOVFilter("en", max_oov_rate=0.5)
    keep = f({"caption": "a dog on the beach"})
    assert keep.keep and keep.score == 0.0
    bad = f({"caption": "xqzv blorft gnarx the"})
    assert (bad.keep, bad.reason, bad.score) == (False, "high_oov_rate", 0.75)
    assert not f({"caption": "1234 5678"}).keep  # no words at all: rate 1.0


def test_oov_with_a_vocabulary_file(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# my words\nblorft\ngnarx\n", encoding="utf-8")
    f = OOVFilter(str(vocab), max_oov_rate=0.0)
    assert f({"caption": "Blorft gnarx"}).keep
    assert f({"caption": "blorft dog"}).reason == "high_oov_rate"
    with pytest.raises(ValueError):
        OOVFilter("xx-not-a-language")({"caption": "anything"})


def test_oov_auto_follows_the_detected_language():
    f = OOVFilter()  # "auto"
    assert f({"caption": "ein schwarzer Hund im Garten", "lang": "de"}).keep
    assert f({"caption": "ein schwarzer Hund im Garten", "lang": "en"}).reason == "high_oov_rate"
    assert f({"caption": "a dog on the beach"}).keep  # no lang: English
    unknown = f({"caption": "la hundo kuras", "lang": "eo"})
    assert unknown.keep and unknown.score is None


def test_text_quality_prefers_sentences_in_vocabulary():
    good = text_quality_score("a brown dog running on the beach", 0.0, 0.99)
    label = text_quality_score("dog", 0.0, 0.99)
    rare = text_quality_score("a brown dog running on the beach", 0.8, 0.99)
    assert good > label and good > rare and 0.0 <= label <= 1.0
