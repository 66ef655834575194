"""Text-only and image-only features, hashed subword tokens, and image decoding."""
import io

import numpy as np
import pytest
from PIL import Image

from filters.relevance import features as F


def _jpeg(colour, size=(120, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_subword_ids_are_stable_padded_and_bind_colour_to_shape():
    a = F.subword_ids("a red triangle and a blue circle", 1 << 12, 64)
    assert a.shape == (64,) and a.dtype == np.int64
    assert np.array_equal(a, F.subword_ids("A RED triangle, and a blue circle!", 1 << 12, 64))
    assert (a[a != F.PAD_ID] >= 1).all() and (a < 1 << 12).all()
    assert (a == F.PAD_ID).any()  # short caption: padded
    swapped = F.subword_ids("a blue triangle and a red circle", 1 << 12, 64)
    # same words, but the bigrams differ: the bag of tokens is not the same
    assert sorted(a.tolist()) != sorted(swapped.tolist())
    assert (F.subword_ids("", 1 << 12, 8) == F.PAD_ID).all()
    assert (F.subword_ids("word " * 100, 1 << 12, 8) != F.PAD_ID).all()  # truncated, not overflowing


@pytest.mark.parametrize("text,expected", [
    ("IMG_0042.jpg", 1.0),
    ("click here", 1.0),
    ("", 1.0),
    ("a small red triangle", 0.0),
    ("share this photo of a dog", 2 / 6),  # share, photo
])
def test_boilerplate_score(text, expected):
    assert F.boilerplate_score(text) == pytest.approx(expected)


def test_text_features_length_oov_digits():
    feats = F.text_features("a red zzyzx 42", frozenset({"a", "red"}))
    named = dict(zip(F.TEXT_FEATURES, feats))
    assert named["n_words"] == 4 and named["n_chars"] == len("a red zzyzx 42")
    assert named["oov_rate"] == pytest.approx(0.5)  # zzyzx and 42
    assert named["digit_share"] == pytest.approx(2 / 14)
    assert F.text_features(None, frozenset())[F.TEXT_FEATURES.index("oov_rate")] == 1.0


@pytest.mark.parametrize("tokenizer", sorted(F.TOKENIZERS))
def test_caption_inputs_tokenize_once_and_equal_the_separate_features(tokenizer, monkeypatch):
    captions = [None, "", "IMG_0042.jpg", "share this photo of a dog 42", "Straße ＡＢＣ 東京タワー", "a red zzyzx"]
    vocabulary = frozenset({"a", "red", "dog"})
    expected = [(F.subword_ids(c, 1 << 10, 16, tokenizer), F.text_features(c, vocabulary, tokenizer))
                for c in captions]
    calls = []
    split = F.TOKENIZERS[tokenizer]
    monkeypatch.setitem(F.TOKENIZERS, tokenizer, lambda text: calls.append(text) or split(text))
    for caption, (ids, feats) in zip(captions, expected):
        got_ids, got_feats = F.caption_inputs(caption, vocabulary, 1 << 10, 16, tokenizer)
        assert np.array_equal(got_ids, ids) and got_ids.dtype == ids.dtype
        assert np.array_equal(got_feats, feats) and got_feats.dtype == feats.dtype
    assert len(calls) == len(captions)  # one word split per caption (the separate functions take three)


def test_decode_image_downscales_and_reports_original_size():
    pixels, w, h = F.decode_image(_jpeg((200, 30, 30)), 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8 and (w, h) == (120, 80)
    assert pixels[..., 0].mean() > 150 and pixels[..., 2].mean() < 80


def test_decode_image_sees_the_image_as_shown_after_its_exif_orientation():
    pixels = np.zeros((80, 120, 3), np.uint8)
    pixels[:, :60] = (250, 250, 250)  # shown: white left half, black right half
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)  # what a camera held upright writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show"
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif, quality=95)
    shown, w, h = F.decode_image(buf.getvalue(), 32)
    assert (w, h) == (120, 80)
    assert shown[:, :12].mean() > 200 and shown[:, -12:].mean() < 50  # white on the left, as shown


@pytest.mark.parametrize("data", [None, b"", b"not an image", _jpeg((1, 2, 3))[:40]])
def test_decode_image_errors_are_clear(data):
    with pytest.raises(F.ImageDecodeError):
        F.decode_image(data, 32)


def test_image_features_separate_colourful_from_grey_and_flat_from_busy():
    grey = np.full((32, 32, 3), 128, np.uint8)
    colourful = np.zeros((32, 32, 3), np.uint8)
    colourful[:16, :, 0] = 250
    colourful[16:, :, 2] = 250
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    f = {name: dict(zip(F.IMAGE_FEATURES, F.image_features(img, 300, 150)))
         for name, img in [("grey", grey), ("colourful", colourful), ("noise", noise)]}
    assert f["grey"]["colourfulness"] == pytest.approx(0.0)
    assert f["colourful"]["colourfulness"] > 1.0
    assert f["grey"]["entropy"] == pytest.approx(0.0) and f["noise"]["entropy"] > 6.0
    assert f["grey"]["log_aspect"] == pytest.approx(np.log(2.0))


def test_vocabulary_keeps_frequent_words_most_frequent_first():
    vocab = F.build_vocabulary(["red circle", "red square", "blue circle", "odd"], min_count=2)
    assert vocab == ["circle", "red"]
