"""The relevance model's versioned text tokenizer: captions in any script have words, and a model saved
before the setting existed (no ``tokenizer`` in its config.json) reads captions exactly as it was trained to."""
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from filters.relevance import features as F
from lait import cli
from tests.relevance.conftest import write_pairs
from tests.relevance.scenes import make_pairs

ACCENTED, HINDI, RUSSIAN, CHINESE = "Café crème brûlée on a table", "पानी की बोतल", "Красная машина", "北京的红色汽车"

#: What the code before the setting (commit aa2fec1) gave, num_buckets 64, max_tokens 16: the ids, then
#: the text features against the vocabulary {red, a, table}.
LEGACY = {
    ACCENTED: ([24, 42, 37, 4, 45, 39, 52, 50, 12, 5, 8, 4, 18, 39, 56, 12], [9, 28, 0.777778, 0, 0, 2.111111]),
    HINDI: ([0] * 16, [0, 12, 1, 1, 0, 0]),
    RUSSIAN: ([0] * 16, [0, 14, 1, 1, 0, 0]),
    CHINESE: ([0] * 16, [0, 7, 1, 1, 0, 0]),
    "A red triangle": ([50, 8, 39, 25, 45, 60, 40, 24, 11, 54, 17, 14, 47, 23, 48, 11], [3, 14, 0.333333, 0, 0, 4]),
    "Straße ＲＥＤ ﬁsh 42": ([61, 39, 54, 48, 54, 58, 40, 7, 3, 12, 2, 25, 38, 44, 39, 45],
                           [4, 17, 1, 0.25, 0.117647, 2.25]),
}


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (90, 60), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _save_tiny(folder, **extra) -> str:
    """A tiny relevance model with fixed random weights, saved with ``extra`` in its config.json."""
    from model.relevance import RelevanceConfig, RelevanceModel, save_model

    torch.manual_seed(3)
    model = RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=64,
                                           max_tokens=16, num_features=len(F.TEXT_FEATURES) + len(F.IMAGE_FEATURES)))
    save_model(model, str(folder), {"threshold": 0.5, "text_features": list(F.TEXT_FEATURES),
                                    "image_features": list(F.IMAGE_FEATURES), "vocabulary": ["red", "a", "table"],
                                    **extra})
    return str(folder)


def _edit_config(folder, **values) -> None:
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(values)
    with open(path, "w") as f:
        json.dump(config, f)


def test_a_model_saved_without_a_tokenizer_reads_captions_as_before(tmp_path):
    """The config the code before the setting wrote (no ``tokenizer``): the same token ids and text features as
    then, so the same scores."""
    from filters.relevance.scorer import RelevanceScorer

    scorer = RelevanceScorer(_save_tiny(tmp_path / "old"))  # the extras the old trainer saved, nothing more
    assert scorer.tokenizer == F.LEGACY_TOKENIZER == "ascii-v1"
    pairs = [{"caption": caption, "image_bytes": _jpeg((40 * i, 90, 200 - 30 * i))} for i, caption in enumerate(LEGACY)]
    for pair in pairs:
        example, ok = scorer.prepare(pair)
        ids, text = LEGACY[pair["caption"]]
        assert ok and example["tokens"].tolist() == ids, pair["caption"]
        np.testing.assert_allclose(example["features"][:len(F.TEXT_FEATURES)].numpy(), text, atol=1e-6)
    # the scores are the model's on exactly those inputs
    prepared = [scorer.prepare(p) for p in pairs]
    with torch.no_grad():
        expected = scorer.model(**{k: torch.stack([ex[k] for ex, _ in prepared]) for k in prepared[0][0]}).numpy()
    np.testing.assert_array_equal(scorer.score(pairs), expected)


def test_a_model_that_names_the_ascii_tokenizer_scores_as_one_that_names_none(tmp_path):
    pairs = [{"caption": caption, "image_bytes": _jpeg((30, 60, 90))} for caption in LEGACY]
    import filters.relevance as relevance

    unnamed = relevance.load(_save_tiny(tmp_path / "unnamed")).score(pairs)
    named = relevance.load(_save_tiny(tmp_path / "named", tokenizer="ascii-v1")).score(pairs)
    np.testing.assert_array_equal(unnamed, named)


@pytest.mark.parametrize("caption,expected", [
    (ACCENTED, ["café", "crème", "brûlée", "on", "a", "table"]),
    ("cafe\u0301", ["café"]),  # decomposed accent: NFKC composes it, a combining mark never splits a word
    (HINDI, ["पानी", "की", "बोतल"]),  # vowel signs and viramas are combining marks
    ("Красная МАШИНА", ["красная", "машина"]),
    ("Η Αθήνα", ["η", "αθήνα"]),
    (CHINESE, list("北京的红色汽车")),  # no spaces: one word per character, bigrams of them come next
    ("東京タワーの夜景 at night", list("東京タワーの夜景") + ["at", "night"]),
    ("빨간 자동차", ["빨간", "자동차"]),  # Hangul is written with spaces
    ("Straße ＲＥＤ ﬁsh", ["strasse", "red", "fish"]),  # casefold, NFKC (fullwidth, ligature)
    ("snake_case IMG_0042.jpg", ["snake", "case", "img", "0042", "jpg"]),  # the underscore separates, as in ascii-v1
    ("co\xadoperate zero\u200bwidth", ["cooperate", "zerowidth"]),  # format characters dropped
    ("x\ud800y\ue000z\x00w", ["x", "y", "z", "w"]),  # lone surrogate, private use, control: separators
    ("", []),
    (None, []),
])
def test_unicode_words(caption, expected):
    assert F.words(caption, "unicode-v2") == expected


def test_unicode_words_of_ascii_captions_are_the_ascii_words():
    """English alt text reads the same under both versions: only other scripts and accents gain words."""
    captions = [r["caption"] for r in make_pairs(20, seed=5)] + ["Click HERE to view IMG_0042.JPG (2 of 10)!"]
    for caption in captions:
        assert F.words(caption, "unicode-v2") == F.words(caption, "ascii-v1"), caption


@pytest.mark.parametrize("caption", [ACCENTED, HINDI, RUSSIAN, CHINESE])
def test_unicode_tokens_of_every_script_hash_into_the_fixed_buckets(caption):
    """Non-empty ids within [1, num_buckets): the embedding table has the same size whatever the script."""
    ids = F.subword_ids(caption, 64, 16, "unicode-v2")
    assert ids.shape == (16,) and (ids != F.PAD_ID).sum() >= min(16, 2 * len(F.words(caption)))
    assert ((ids >= 1) & (ids < 64) | (ids == F.PAD_ID)).all()
    named = dict(zip(F.TEXT_FEATURES, F.text_features(caption, frozenset(), "unicode-v2")))
    assert named["n_words"] > 0 and named["boilerplate"] == 0.0 and named["mean_word_len"] > 0


def test_accented_words_keep_their_accents():
    assert F.subword_ids("café", 1 << 15, 8, "unicode-v2").tolist() != F.subword_ids("caf", 1 << 15, 8, "unicode-v2").tolist()
    assert F.build_vocabulary(["café au lait", "Café noir", "кофе", "КОФЕ"], tokenizer="unicode-v2") == ["café", "кофе"]


def test_a_trained_model_saves_the_unicode_tokenizer_and_reads_every_script(tmp_path, train_rows):
    from filters.relevance.config import TrainConfig
    from filters.relevance.scorer import RelevanceScorer
    from filters.relevance.train import train
    from model.relevance import read_config

    model_dir = str(tmp_path / "model")  # the trainer's own output, one quick member (the shared model takes ~40 s)
    train(train_rows, model_dir, TrainConfig(epochs=1, members=1, image_size=16, embed_dim=16))

    assert read_config(model_dir)["tokenizer"] == F.TOKENIZER == "unicode-v3"
    scorer = RelevanceScorer(model_dir)
    assert scorer.tokenizer == F.TOKENIZER
    for caption in (ACCENTED, HINDI, RUSSIAN, CHINESE):
        example, ok = scorer.prepare({"caption": caption, "image_bytes": _jpeg((200, 30, 30))})
        assert ok and (example["tokens"] != F.PAD_ID).sum() > 0, caption
    empty, *others = scorer.score([{"caption": c, "image_bytes": _jpeg((200, 30, 30))}
                                   for c in ("", HINDI, RUSSIAN, CHINESE)])
    assert all(score != empty for score in others)  # no script scores as the empty caption any more


def test_the_tokenizer_survives_a_save_and_load_round_trip(tmp_path):
    from filters.relevance.scorer import RelevanceScorer
    from model.relevance import load_model

    folder = _save_tiny(tmp_path / "new", tokenizer=F.TOKENIZER)
    _, config = load_model(folder)
    assert config["tokenizer"] == F.TOKENIZER
    scorer = RelevanceScorer(folder)
    example, _ = scorer.prepare({"caption": HINDI, "image_bytes": _jpeg((1, 2, 3))})
    assert scorer.tokenizer == F.TOKENIZER and example["tokens"].tolist() == F.subword_ids(HINDI, 64, 16, F.TOKENIZER).tolist()


def test_an_unknown_tokenizer_is_a_clear_error(tmp_path, capsys):
    import filters.relevance as relevance

    folder = _save_tiny(tmp_path / "future", tokenizer="unicode-v9")
    with pytest.raises(ValueError, match=r"config\.json: a model of another text version \(unknown text tokenizer "
                                         r"'unicode-v9' \(this version knows ascii-v1, unicode-v2, unicode-v3\)\)"):
        relevance.load(folder)
    with pytest.raises(ValueError, match="unknown text tokenizer"):
        relevance.load(folder, with_model=False)  # what Beam's preparation step loads
    write_pairs(make_pairs(1, seed=3), str(tmp_path / "in"))
    assert cli.main(["relevance", "score", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--model", folder]) == 2
    err = capsys.readouterr().err
    assert "unknown text tokenizer 'unicode-v9'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown text tokenizer 'klingon'"):
        F.words("a caption", "klingon")


@pytest.mark.parametrize("value", [2, None, ["unicode-v2"], {"name": "unicode-v2"}])
def test_a_tokenizer_that_is_not_a_string_is_a_clear_error(tmp_path, value):
    import filters.relevance as relevance

    folder = _save_tiny(tmp_path / "m")
    _edit_config(folder, tokenizer=value)
    with pytest.raises(ValueError, match=r"config\.json: 'tokenizer' must be a string"):
        relevance.load(folder)
