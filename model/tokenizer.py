"""WordPiece tokenizers: BERT's from a vocab.txt, or one trained by LAIT on the training captions."""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    return normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None if lowercase else False)


def _finish(model: WordPiece, lowercase: bool) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _normalizer(lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _add_template(tokenizer: Tokenizer) -> Tokenizer:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ValueError("tokenizer lacks special tokens "
                         f"{[name for name, i in (('[CLS]', cls_id), ('[SEP]', sep_id)) if i is None]}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


#: The longest word (in characters, as normalised) the WordPiece trainer sees: the model's own
#: ``max_input_chars_per_word`` (100), past which it encodes a word as [UNK] whatever the vocabulary.
MAX_WORD_CHARS = 100
#: A caption that may hold a longer word once normalised: a run of that many characters between ASCII white
#: space (normalising makes at most 3 characters of one, a Hangul syllable's letters; other white space and
#: punctuation only split a run further). The others, nearly all, go to the trainer as they are.
_MAYBE_LONG_WORD = re.compile(r"[^ \t\n\r]{%d,}" % (MAX_WORD_CHARS // 3 + 1))


def _without_long_words(texts: Iterable[str], lowercase: bool, dropped: list[int]) -> Iterator[str]:
    """``texts`` with their words longer than ``MAX_WORD_CHARS`` left out (counted in ``dropped[0]``), as the
    trained tokenizer's normaliser and pre-tokenizer find words (instances of their own: the tokenizer's, used
    while it trains on this iterator, deadlocked).

    The ``tokenizers`` WordPiece trainer takes time about quadratic in its longest word: one caption of a 1 MB word
    (no space) stalled ``lait train`` for over 10 minutes (64k characters: 14 s). Such a word encodes as [UNK]
    anyway, so it has nothing to teach the vocabulary. A caption holding one goes to the trainer as its other
    words, normalised (normalising them again changes nothing)."""
    normalizer, pre_tokenizer = _normalizer(lowercase), pre_tokenizers.BertPreTokenizer()
    for text in texts:
        if not _MAYBE_LONG_WORD.search(text):
            yield text
            continue
        words = [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
        kept = [word for word in words if len(word) <= MAX_WORD_CHARS]
        if len(kept) == len(words):
            yield text
            continue
        dropped[0] += len(words) - len(kept)
        yield " ".join(kept)


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer on captions ([PAD] gets id 0); words longer than ``MAX_WORD_CHARS``
    are left out of its training (``_without_long_words``), with a warning."""
    tokenizer = _finish(WordPiece(unk_token="[UNK]"), lowercase)
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                               show_progress=False)
    dropped = [0]
    tokenizer.train_from_iterator(_without_long_words(texts, lowercase, dropped), trainer=trainer)
    if dropped[0]:
        logger.warning("tokenizer: %d words longer than %d characters left out of its training (WordPiece encodes "
                       "such a word as [UNK])", dropped[0], MAX_WORD_CHARS)
    logger.info("trained a WordPiece tokenizer: %d word pieces", tokenizer.get_vocab_size())
    return _add_template(tokenizer)


def _unreadable(path: str, kind: str, exc: Exception) -> ValueError:
    """The ``tokenizers`` library fails with a bare ``Exception`` (its Rust error's text): a ``ValueError`` naming the file."""
    first = (str(exc).splitlines() or [""])[0]
    return ValueError(f"{path}: not a readable {kind}{f' ({first})' if first else ''}")


def tokenizer_from_vocab(vocab_path: str, lowercase: bool = True) -> Tokenizer:
    """BERT's tokenizer from its ``vocab.txt``."""
    try:
        vocab = WordPiece.read_file(vocab_path)
    except Exception as exc:  # tokenizers raises Exception itself
        raise _unreadable(vocab_path, "WordPiece vocab.txt", exc) from None
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        # The tokenizers library reads the file as it is: a byte-order mark (a Windows editor's save) is part of the
        # first line's piece, '\ufeff[PAD]', and [PAD] seemed missing for no visible reason.
        with open(vocab_path, "rb") as handle:
            bom = handle.read(3) == b"\xef\xbb\xbf"
        raise ValueError(f"{vocab_path}: vocabulary lacks the special tokens {missing}"
                         + (" (the file starts with a UTF-8 byte-order mark, read as part of its first line: "
                            "save it as UTF-8 without BOM)" if bom else ""))
    return _add_template(_finish(WordPiece(vocab, unk_token="[UNK]"), lowercase))


def load_tokenizer(path: str, lowercase: bool = True) -> Tokenizer:
    """A tokenizer from a ``tokenizer.json``, a ``vocab.txt`` or a BERT folder holding one of them.

    A missing path is a ``FileNotFoundError``, a file the ``tokenizers`` library cannot read a ``ValueError``,
    both naming the path (the library's own error is a bare ``Exception``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such tokenizer file or folder (a tokenizer.json, a vocab.txt, or a "
                                f"BERT folder holding one)")
    if os.path.isdir(path):
        config_path = os.path.join(path, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as handle:
                lowercase = json.load(handle).get("do_lower_case", lowercase)
        for name in ("vocab.txt", "tokenizer.json"):
            if os.path.exists(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name), lowercase)
        raise FileNotFoundError(f"{path}: no vocab.txt or tokenizer.json")
    if path.endswith(".json"):
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises Exception itself
            raise _unreadable(path, "tokenizer.json", exc) from None
        try:
            return _add_template(tokenizer)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return tokenizer_from_vocab(path, lowercase)


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK], and ``first_regular``, the lowest id that is none of them.

    The special tokens need not come first (``add_special_tokens`` appends them after the word pieces), so
    random replacement draws from every id but these five (``model.tasks.mask_tokens``), not from
    ``first_regular`` up: above the highest special there may be few ids, or none."""
    ids = {name.strip("[]").lower(): tokenizer.token_to_id(name) for name in SPECIAL_TOKENS}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    taken = set(ids.values())
    ids["first_regular"] = next(i for i in range(len(taken) + 1) if i not in taken)
    return ids
