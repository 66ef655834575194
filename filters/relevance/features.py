"""Hand-made evidence for the relevance model: hashed subword tokens, text-only and image-only features.

These are features for a model, not filters: nothing here keeps or drops a pair. Everything is pure
numpy/Pillow so that the same code prepares inputs for training, for ``score()`` and for Beam workers.

Words come from a versioned tokenizer (``TOKENIZERS``), saved in each model's ``config.json``: a model
is always fed the words it was trained on. ``ascii-v1`` (every model saved before the setting existed)
keeps ASCII letters and digits only; ``unicode-v2`` reads any script, and ``unicode-v3`` (models trained now)
reads it without taking the Katakana middle dot and double hyphen (punctuation) for words.
"""
from __future__ import annotations

import functools
import math
import re
import unicodedata
import zlib
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from filters import imageio

WORD_RE = re.compile(r"[a-z0-9]+")
FILENAME_RE = re.compile(r"\b[\w-]+\.(?:jpe?g|png|gif|webp|bmp|svg|tiff?)\b", re.IGNORECASE)
PAD_ID = 0

# Words that mark alt text written for the page rather than for the image (navigation, files, stock
# placeholders). A caption made of them says nothing about its image.
BOILERPLATE_WORDS = frozenset(
    """
    click here image images img photo picture pic thumbnail thumb logo icon banner button spacer
    placeholder untitled default download share tweet facebook twitter instagram pinterest subscribe
    advertisement ad ads sponsored copyright rights reserved jpg jpeg png gif webp dsc img_ screenshot
    loading view more read next previous prev home menu search close open arrow avatar profile
    """.split()
)

TEXT_FEATURES = ("n_words", "n_chars", "oov_rate", "boilerplate", "digit_share", "mean_word_len")
IMAGE_FEATURES = ("log_width", "log_height", "log_aspect", "colourfulness", "entropy", "brightness", "contrast")


class ImageDecodeError(ValueError):
    """The image bytes cannot be decoded into pixels."""


#: The tokenizer of a model whose config.json names none: every model saved before the setting existed.
LEGACY_TOKENIZER = "ascii-v1"
#: The tokenizer of the models this version trains.
TOKENIZER = "unicode-v3"

# Chinese and Japanese write words without spaces: each Han, Hiragana or Katakana character is a word
# of its own (the word bigrams are then the character bigrams). Hangul is written with spaces.
_CJK = ("\u3005-\u3007"  # ideographic iteration mark, closing mark, number zero
        "\u3040-\u30ff\u31f0-\u31ff"  # hiragana, katakana and its phonetic extensions
        "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # han: extension A, unified, compatibility
        "\U00020000-\U0003ffff")  # han: extensions B onwards (planes 2 and 3)
# unicode-v3: the same without the punctuation and symbols among the kana: U+30A0 double hyphen (Pd) and U+30FB
# middle dot (Po), which v2 took for words ("ロンドン・パリ" had a word "・", and "・・・" three words, none of them
# boilerplate); they are not words in v3, as "..." and "。。。" are not. U+309B-U+309C (spacing voiced sound
# marks, Sk) are left out too, though NFKC already makes each a space and a combining mark.
_CJK_V3 = ("\u3005-\u3007"
           "\u3040-\u309a\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
           "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
           "\U00020000-\U0003ffff")


def _ascii_words(text: str) -> list[str]:
    # ascii-v1, frozen: saved models were trained on exactly these words
    return WORD_RE.findall(text.lower())


@functools.lru_cache(maxsize=2)
def _unicode_word_pattern(cjk: str = _CJK) -> re.Pattern:
    """A CJK character (with its marks), or a run of other letters, digits and combining marks."""
    from filters.text import combining_marks

    # ``\w`` leaves out combining marks (Indic vowel signs, viramas): without them "कितनी" is three words
    marks = combining_marks()
    return re.compile(rf"[{cjk}][{marks}]*|(?:[^\W_{cjk}]|[{marks}])+")


def _unicode_words(text: str, cjk: str = _CJK) -> list[str]:
    # unicode-v2 (v3 with ``_CJK_V3``): NFKC folds compatibility forms (fullwidth, ligatures), casefold is
    # caseless matching ("Straße" = "strasse"), NFKC again recomposes what casefolding decomposed
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    if not text.isprintable():
        # format characters (soft hyphens, zero-width joiners) sit inside words; the text filter drops them too
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _unicode_word_pattern(cjk).findall(text)


def _unicode_v3_words(text: str) -> list[str]:
    return _unicode_words(text, _CJK_V3)


#: Word splitters by the version name saved in a model's config.json. A version, once saved, never
#: changes meaning: a new tokenizer is a new name.
TOKENIZERS: dict[str, Callable[[str], list[str]]] = {LEGACY_TOKENIZER: _ascii_words, "unicode-v2": _unicode_words,
                                                     TOKENIZER: _unicode_v3_words}


def check_tokenizer(tokenizer: str) -> str:
    """``tokenizer`` itself when this version knows it, else a ValueError naming the known ones."""
    if not isinstance(tokenizer, str) or tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown text tokenizer {tokenizer!r:.80} (this version knows {', '.join(TOKENIZERS)})")
    return tokenizer


def words(text: str | None, tokenizer: str = TOKENIZER) -> list[str]:
    """The words of a caption under a tokenizer version (``TOKENIZERS``), case-folded."""
    return TOKENIZERS[check_tokenizer(tokenizer)](text or "")


def _bucket(token: str, num_buckets: int) -> int:
    # crc32 is stable across processes and Python versions (unlike hash()), and fast.
    return 1 + zlib.crc32(token.encode("utf-8")) % (num_buckets - 1)


def subword_ids(text: str | None, num_buckets: int, max_tokens: int, tokenizer: str = TOKENIZER) -> np.ndarray:
    """Hashed ids of a caption's words, word bigrams and character trigrams, padded with ``PAD_ID``.

    Words and bigrams come first (they bind colour to shape, "red triangle"); character trigrams
    of ``<word>`` give misspellings and unseen inflections an embedding of their own. Tokens of any
    script hash (crc32 of their UTF-8) into the same ``num_buckets``: memory does not grow with them.
    """
    return _subword_ids(words(text, tokenizer), num_buckets, max_tokens)


def _subword_ids(ws: list[str], num_buckets: int, max_tokens: int) -> np.ndarray:
    tokens = [f"w:{w}" for w in ws]
    tokens += [f"b:{a} {b}" for a, b in zip(ws, ws[1:])]
    for w in ws:
        marked = f"<{w}>"
        tokens += [f"c:{marked[i:i + 3]}" for i in range(len(marked) - 2)]
    ids = np.full(max_tokens, PAD_ID, dtype=np.int64)
    for i, token in enumerate(tokens[:max_tokens]):
        ids[i] = _bucket(token, num_buckets)
    return ids


def boilerplate_score(text: str | None, tokenizer: str = TOKENIZER) -> float:
    """Share of a caption's words that are boilerplate, raised to 1 for a bare file name."""
    return _boilerplate_score(text, words(text, tokenizer))


def _boilerplate_score(text: str | None, ws: list[str]) -> float:
    if not ws:
        return 1.0
    if FILENAME_RE.search(text or ""):
        return 1.0
    return sum(w in BOILERPLATE_WORDS or w.isdigit() for w in ws) / len(ws)


def text_features(text: str | None, vocabulary: frozenset[str] | set[str] | None = None,
                  tokenizer: str = TOKENIZER) -> np.ndarray:
    """Text-only features, in the order of ``TEXT_FEATURES``; OOV rate against ``vocabulary``."""
    return _text_features(text or "", words(text, tokenizer), vocabulary)


def _text_features(text: str, ws: list[str], vocabulary: frozenset[str] | set[str] | None) -> np.ndarray:
    n = len(ws)
    oov = (sum(w not in vocabulary for w in ws) / n if n else 1.0) if vocabulary is not None else 0.0
    digits = sum(ch.isdigit() for ch in text) / len(text) if text else 0.0
    mean_len = sum(map(len, ws)) / n if n else 0.0
    return np.array([n, len(text), oov, _boilerplate_score(text, ws), digits, mean_len], dtype=np.float32)


def caption_inputs(text: str | None, vocabulary: frozenset[str] | set[str] | None, num_buckets: int,
                   max_tokens: int, tokenizer: str = TOKENIZER) -> tuple[np.ndarray, np.ndarray]:
    """``subword_ids`` and ``text_features`` of one caption, from one tokenizing (the model's text inputs)."""
    text = text or ""
    ws = words(text, tokenizer)
    return _subword_ids(ws, num_buckets, max_tokens), _text_features(text, ws, vocabulary)


def decode_image(image_bytes: bytes | None, size: int) -> tuple[np.ndarray, int, int]:
    """Decode to an RGB ``size`` x ``size`` uint8 array (HWC) and the original width and height, both as the
    image is shown (after its EXIF orientation, as the filter rules see it).

    Raises ``ImageDecodeError`` for missing or undecodable bytes.
    """
    try:
        # the hard limit keeps what this decoded before the shared opener: the filter rules drop bigger ones
        with imageio.open_image(image_bytes, max_pixels=imageio.HARD_MAX_PIXELS) as img:
            width, height = imageio.oriented_size(img)
            # JPEGs decode at 1/2..1/8 scale: most of the cost saved
            rgb = imageio.decode(img, draft_size=(size, size), orient=True)
    except imageio.ImageError as exc:
        message = "no image bytes" if exc.reason == "missing_bytes" else f"cannot decode image: {exc.detail}"
        raise ImageDecodeError(message) from exc
    small = rgb.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(small, dtype=np.uint8), width, height


def image_features(small: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    """Image-only features, in the order of ``IMAGE_FEATURES``, from the downscaled pixels and size."""
    width = max(int(width or small.shape[1]), 1)
    height = max(int(height or small.shape[0]), 1)
    # every other pixel is plenty for global statistics, at a quarter of the cost
    rgb = small[::2, ::2].astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Hasler & Suesstrunk colourfulness: spread and mean of the opponent colour channels.
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    grey = (0.299 * r + 0.587 * g + 0.114 * b).astype(np.uint8)
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return np.array(
        [math.log(width), math.log(height), math.log(width / height), colourfulness / 100.0, entropy,
         grey.mean() / 255.0, grey.std() / 128.0],
        dtype=np.float32,
    )


def build_vocabulary(captions: Iterable[str], min_count: int = 2, max_size: int = 20000,
                     tokenizer: str = TOKENIZER) -> list[str]:
    """The words seen at least ``min_count`` times, most frequent first (the OOV reference)."""
    counts: dict[str, int] = {}
    for caption in captions:
        for w in words(caption, tokenizer):
            counts[w] = counts.get(w, 0) + 1
    kept = [w for w, c in counts.items() if c >= min_count]
    kept.sort(key=lambda w: (-counts[w], w))
    return kept[:max_size]
