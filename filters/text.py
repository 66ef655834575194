"""Caption text: normalisation, choice among alt/title/figcaption, and the rule filters on text.

Defaults follow ImageBERT (normal-length sentences, no boilerplate, low out-of-vocabulary rate)
and DataComp's basic filter (at least 3 words).
"""
from __future__ import annotations

import codecs
import collections
import functools
import html
import html.entities
import logging
import os
import re
import unicodedata
from typing import AbstractSet, Any, Iterable, Iterator, Mapping

from filters.base import Decision, Filter

logger = logging.getLogger(__name__)

#: Where a caption may come from, in order of preference (alt text is what the paper uses).
TEXT_SOURCES = ("alt", "title", "figcaption")

_WHITESPACE = re.compile(r"\s+")
# Control and format characters (soft hyphens, word joiners, ZWNJ/ZWJ, bidi marks) carry no text.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn"}
# ... but a zero-width space is where a line may break between words ("a brown\u200bdog"): a space. (U+2028
# and U+2029, the line and paragraph separators, are white space already.)
_WORD_BREAKS = "\u200b"
# A complete character reference, ended by ";": named, decimal or hex. Legacy names without ";" ("&not",
# "&para"), which html.unescape also decodes, are text here: "Tips &notes" is not "Tips ¬es".
_ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
# Terminal escape sequences (colour codes such as ESC[31m): dropping the ESC control alone leaves "[31m".
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
# Markup of common HTML elements (alt text that held escaped tags). Only these names, so that "x <y and
# y> z" stays text; the attributes stop at the next "<" or ">", so nothing here can backtrack far.
_TAG = re.compile(
    r"<(/?)(a|abbr|audio|b|big|blockquote|br|button|center|cite|code|del|div|em|figcaption|figure|font|form|"
    r"h[1-6]|hr|i|iframe|img|input|ins|label|li|link|mark|meta|noscript|ol|p|picture|pre|q|s|script|small|"
    r"source|span|strike|strong|style|sub|sup|svg|table|td|th|tr|tt|u|ul|video)(?![\w:-])([^<>]*)>",
    re.IGNORECASE,
)
_HIDDEN_ELEMENTS = ("script", "style")  # their content is code, not text
# The pair NFKC splits Thai SARA AM and Lao AM into, and the letter.
_AM = (("\u0e4d\u0e32", "\u0e33"), ("\u0ecd\u0eb2", "\u0eb3"))

_IMAGE_EXT = r"(?:jpe?g|png|gif|webp|bmp|svg|tiff?|heic|avif)"
#: Prefixes of the names cameras and phones give their pictures (IMG_1234, DSC01234, SAM_0042, PXL_2023…).
CAMERA_PREFIXES = ("img", "dsc", "dscn", "dscf", "dcim", "pxl", "gopr", "mvimg", "sam", "wp")
_CAMERA = "|".join(CAMERA_PREFIXES)
# A name with an image extension, a camera prefix joined to its number ("_", "-" or nothing), or a screenshot's
# name (macOS: "Screenshot 2024-01-05 at …"), anywhere in the caption. A camera prefix and number apart
# ("Uncle Sam 1776 poster") are a file name only as the whole caption, prefix in upper case as cameras write it:
# a CMS that titles an image "IMG 1234" from IMG_1234.jpg.
_FILENAME = re.compile(
    rf"(?:^|\s)(?:\S+\.{_IMAGE_EXT}|(?:{_CAMERA})[_\-]?\d{{3,}}\S*|screenshot[_\- ]?\d{{3,}}\S*)(?:\s|$)",
    re.IGNORECASE,
)
_SPACED_FILENAME = re.compile(rf"(?:{_CAMERA.upper()}) \d{{3,}}\S*")
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
#: Endings that make a dotted name a web address ("shop.example.com", "index.html").
URL_ENDINGS = frozenset("com org net edu gov io co uk de fr info biz htm html php".split())
# A run of name characters: a single character class, so it cannot backtrack. The domain check
# below then works on the run with string operations, in linear time on any input.
_NAME_RUN = re.compile(r"[\w.-]+")
#: Longest caption the text rules look at, in characters (after normalisation); longer ones are
#: ``text_too_long`` before any pattern runs. Alt text is a sentence or two; 64 words are ~400 characters.
MAX_CHARS = 2000
#: Scripts written without spaces between words, as code point ranges. Their letters are counted one by
#: one (``tokens``) and cut into a vocabulary's words (``segment``).
UNSPACED_RANGES = (
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1780, 0x17FF), (0x19E0, 0x19FF),  # Thai, Lao, Khmer
    (0x1000, 0x109F), (0xA9E0, 0xA9FF), (0xAA60, 0xAA7F),  # Myanmar
    (0x3005, 0x3007), (0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F),  # 々〆〇, kana, half-width kana
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF),  # Han
)
#: Longest word, in letters, that ``segment`` looks up (wordfreq's Chinese and Japanese words are shorter
#: but for a few hundred).
LONGEST_SEGMENT = 8
#: Phrases that mark navigation, layout or advertising images rather than descriptions.
BOILERPLATE_PHRASES = (
    "click here", "click to enlarge", "click to", "read more", "learn more", "logo", "icon", "banner", "spacer",
    "placeholder", "thumbnail", "avatar", "button", "advertisement", "sponsored", "loading", "image not found",
    "no image", "untitled", "default image", "profile picture", "sign in", "log in", "subscribe", "download now",
    "buy now", "shop now", "add to cart", "back to top", "share on", "follow us", "tracking pixel",
)


def nfkc(text: str) -> str:
    """NFKC, except that Thai SARA AM and Lao AM stay one letter.

    NFKC splits them into NIKHAHIT (NIGGAHITA in Lao) + AA, a compatibility form no Thai or Lao text is
    written in: "น้ำ" (water) would change invisibly and stop matching a word list. The pair is put back
    together, whichever way the text spelt it.
    """
    text = unicodedata.normalize("NFKC", text)
    for pair, am in _AM:
        if pair[0] in text:
            text = text.replace(pair, am)
    return text


def strip_markup(text: str) -> str:
    """The text without HTML tags (each becomes a space); script and style elements go with their content."""
    if "<" not in text:
        return text
    out, pos, hidden = [], 0, None
    for match in _TAG.finditer(text):
        if hidden is None:
            out.append(text[pos:match.start()])
        closing, name = match.group(1), match.group(2).lower()
        if hidden is None and not closing and name in _HIDDEN_ELEMENTS:
            hidden = name
        elif closing and name == hidden:
            hidden = None
        out.append(" ")
        pos = match.end()
    if hidden is None:
        out.append(text[pos:])
    return "".join(out)


def _entity(match: re.Match) -> str:
    name = match.group(1)
    if name.startswith("#"):
        return html.unescape(match.group(0))  # its rules: an invalid code point is U+FFFD
    return html.entities.html5.get(name + ";", match.group(0))


def unescape_entities(text: str) -> str:
    """``text`` with its complete character references decoded (``&eacute;``, ``&#233;``, ``&#xE9;``), one pass.

    Only those that end in ";": html.unescape also decodes a legacy name without it before a letter ("&notes"
    is "¬es", "&parade" "¶de"), and captions come from the crawler with their markup's entities decoded
    already, so a "&" left in them is text.
    """
    return _ENTITY.sub(_entity, text)


def normalize_text(text: Any) -> str:
    """NFKC (``nfkc``: Thai and Lao AM kept whole), HTML entities decoded (``unescape_entities``: those ended by
    ";"), HTML tags and terminal escapes removed, a zero-width space read as a space, other invisible
    characters dropped, whitespace collapsed; None becomes ''."""
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")  # callers decide what invalid UTF-8 means; see rules
    # Entities first (alt="Caf&eacute;"), twice for double-escaped markup ("&amp;eacute;").
    if "&" in text:
        text = unescape_entities(unescape_entities(text))
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    text = strip_markup(text)
    text = nfkc(text)
    if not text.isprintable():
        for ch in _WORD_BREAKS:
            text = text.replace(ch, " ")
        text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _INVISIBLE)
    return _WHITESPACE.sub(" ", text).strip()


def find_url(text: str) -> str | None:
    """The first web address in a text, or None: a scheme or ``www.`` prefix, or a dotted name whose
    label ends in ``URL_ENDINGS`` ("shop.example.com", "index.html", "example.co-op").

    Linear in the text's length: no pattern here can backtrack (a regular expression for dotted
    names took seconds on a 20 kB token like ``a.a.a.…b``).
    """
    match = _URL.search(text)
    if match:
        return match.group(0)
    for run in _NAME_RUN.finditer(text):
        labels = run.group(0).split(".")
        for i in range(1, len(labels)):
            ending = labels[i].split("-", 1)[0]  # the ending must end at a word boundary
            if ending.lower() in URL_ENDINGS and labels[i - 1].strip("-"):
                start = i - 1
                while start > 0 and labels[start - 1]:
                    start -= 1
                return ".".join(labels[start:i] + [ending])
    return None


@functools.lru_cache(maxsize=1)
def combining_marks() -> str:
    """Unicode's combining marks (category M: accents, Indic vowel signs and viramas, Thai tone marks) as the
    body of a regular-expression character class.

    ``re`` takes them for non-word characters (``\\W``), so "कितनी" (a word with two vowel signs) would be
    three words. Built once, on first use: every mark lies in planes 0, 1 and 14 (scanning them takes ~80 ms).
    """
    ranges: list[list[int]] = []
    for code in (*range(0x20000), *range(0xE0000, 0xE1000)):
        if unicodedata.category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


@functools.lru_cache(maxsize=1)
def _word_pattern() -> re.Pattern:
    """A letter word: letters with their combining marks; an inner apostrophe joins (don't)."""
    letters = rf"[^\W\d_]+(?:[{combining_marks()}]+[^\W\d_]*)*"  # marks and letters alternate: no backtracking
    return re.compile(rf"{letters}(?:['’]{letters})*")


def is_mark(ch: str) -> bool:
    """Whether a character is a combining mark (it belongs to the letter before it)."""
    return unicodedata.category(ch)[0] == "M"


@functools.lru_cache(maxsize=1)
def _unspaced_patterns() -> tuple[re.Pattern, re.Pattern]:
    """(one letter of a script written without spaces with its combining marks, a run of them)."""
    letters = "".join(f"{chr(a)}-{chr(b)}" for a, b in UNSPACED_RANGES)
    unit = rf"(?=[^\W\d_])[{letters}][{combining_marks()}]*"  # Thai digits and the baht sign are no letters
    return re.compile(unit), re.compile(rf"(?:{unit})+")


def words(text: str) -> list[str]:
    """The lower-cased letter words of a text, with their combining marks (digits and symbols are not words).

    A run of letters of a script written without spaces (``UNSPACED_RANGES``: Chinese, Japanese, Thai, …) is
    one word here, apart from the letters of other scripts it touches ("iPhone手机壳" is "iphone" and
    "手机壳"): where its words end is not known without a dictionary (``segment`` cuts it with one).
    """
    found = []
    _, run = _unspaced_patterns()
    for word in _word_pattern().findall(text):
        word = word.lower()
        if word.isascii() or not run.search(word):
            found.append(word)
            continue
        pos = 0
        for match in run.finditer(word):
            found.extend(_word_pattern().findall(word[pos:match.start()]))
            found.append(match.group())
            pos = match.end()
        found.extend(_word_pattern().findall(word[pos:]))
    return found


def is_unspaced(word: str) -> bool:
    """Whether a word from ``words`` is a run of a script written without spaces."""
    return _unspaced_patterns()[0].match(word) is not None


def letters_of(run: str) -> list[str]:
    """The letters of a run of a script written without spaces, each with its combining marks."""
    return _unspaced_patterns()[0].findall(run)


def counted_words(text: str) -> list[str]:
    """``words``, with each letter of a script written without spaces a word of its own (as ``tokens`` counts)."""
    return [piece for word in words(text) for piece in (letters_of(word) if is_unspaced(word) else (word,))]


def segment(run: str, vocabulary: AbstractSet[str]) -> list[str]:
    """A run of a script written without spaces cut into words of a vocabulary, from the left: at each point
    the longest word it knows (up to ``LONGEST_SEGMENT`` letters), else one letter with its marks."""
    ends = [match.end() for match in _unspaced_patterns()[0].finditer(run)]
    pieces, start, i = [], 0, 0
    while i < len(ends):
        j = min(len(ends), i + LONGEST_SEGMENT) - 1
        while j > i and run[start:ends[j]] not in vocabulary:
            j -= 1
        pieces.append(run[start:ends[j]])
        start, i = ends[j], j + 1
    return pieces


def tokens(text: str) -> list[str]:
    """Whitespace tokens that hold at least one letter or digit: what a word count counts.

    A letter of a script written without spaces (Chinese, Japanese, Thai, …), with its combining marks, is a
    token of its own, and so is each part of the token between them that holds a letter or digit
    ("iPhone 15 手机壳" is five tokens; "15个" two).
    """
    unit, _ = _unspaced_patterns()
    found = []
    for token in text.split():
        if token.isascii() or not unit.search(token):
            if any(ch.isalnum() for ch in token):
                found.append(token)
            continue
        pos = 0
        for match in unit.finditer(token):
            rest = token[pos:match.start()]
            if any(ch.isalnum() for ch in rest):
                found.append(rest)
            found.append(match.group())
            pos = match.end()
        if any(ch.isalnum() for ch in token[pos:]):
            found.append(token[pos:])
    return found


class WordCountFilter(Filter):
    """Captions must have between ``min_words`` (3) and ``max_words`` (64) words (``tokens``: in Chinese,
    Japanese, Thai and other scripts written without spaces, letters).

    ``max_chars`` (``MAX_CHARS``, 2000; 0 turns it off): a longer caption is ``text_too_long`` from
    its length alone. This filter runs first, so no later pattern ever sees more than this.
    """

    name = "word_count"
    reasons = ("text_too_short", "text_too_long")

    def __init__(self, min_words: int = 3, max_words: int = 64, max_chars: int = MAX_CHARS):
        self.min_words = min_words
        self.max_words = max_words
        self.max_chars = max_chars

    def __call__(self, record: Mapping[str, Any]) -> Decision:
        caption = record.get("caption") or ""
        if self.max_chars and len(caption) > self.max_chars:
            return Decision.reject("text_too_long", None, f"{len(caption)} characters > {self.max_chars}")
        n = len(tokens(caption))
        if n < self.min_words:
            return Decision.reject("text_too_short", n, f"{n} words < {self.min_words}")
        if self.max_words and n > self.max_words:
            return Decision.reject("text_too_long", n, f"{n} words > {self.max_words}")
        return Decision.accept(n)


class BoilerplateFilter(Filter):
    """Rejects file names, bare URLs, navigation/ad boilerplate, repeated words and digit/symbol soup.

    ``max_repeat_fraction`` (0.5): the most frequent word may be at most this share of the words;
    ``min_letter_fraction`` (0.5): letters must be at least this share of the non-space characters.
    """

    name = "boilerplate"
    reasons = ("caption_is_filename", "caption_has_url", "boilerplate_text", "repeated_words",
               "mostly_digits_or_symbols")

    def __init__(self, phrases: Iterable[str] = BOILERPLATE_PHRASES, max_repeat_fraction: float = 0.5,
                 min_letter_fraction: float = 0.5):
        self.phrases = tuple(phrases)
        self.max_repeat_fraction = max_repeat_fraction
        self.min_letter_fraction = min_letter_fraction
        self._phrase_re = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in self.phrases) + r")s?\b", re.IGNORECASE)

    def __call__(self, record: Mapping[str, Any]) -> Decision:
        caption = record.get("caption") or ""
        match = _FILENAME.search(caption) or _SPACED_FILENAME.fullmatch(caption.strip())
        if match:
            return Decision.reject("caption_is_filename", detail=match.group(0).strip())
        url = find_url(caption)
        if url:
            return Decision.reject("caption_has_url", detail=url)
        match = self._phrase_re.search(caption)
        if match:
            return Decision.reject("boilerplate_text", detail=match.group(0).lower())
        chars = [ch for ch in caption if not ch.isspace()]
        letters = sum(ch.isalpha() or (not ch.isascii() and is_mark(ch)) for ch in chars)  # a vowel sign is text
        letter_fraction = letters / len(chars) if chars else 0.0
        if letter_fraction < self.min_letter_fraction:
            return Decision.reject("mostly_digits_or_symbols", round(letter_fraction, 3),
                                   f"letters are {letter_fraction:.0%} of characters")
        found = counted_words(caption)  # "哈哈哈哈" repeats one word as much as "ha ha ha ha"
        if len(found) >= 3:
            word, count = collections.Counter(found).most_common(1)[0]
            repeat = count / len(found)
            if repeat > self.max_repeat_fraction:
                return Decision.reject("repeated_words", round(repeat, 3), f"{word!r} is {count} of {len(found)} words")
        return Decision.accept(round(letter_fraction, 3))


@functools.lru_cache(maxsize=1)
def wordfreq_languages() -> frozenset[str]:
    """Languages with a wordfreq 'small' list (the lookup scans the package's files: do it once)."""
    import wordfreq

    return frozenset(wordfreq.available_languages(wordlist="small"))


def utf8_lines(raw_lines: Iterable[bytes]) -> Iterator[str]:
    """The lines of a file read as bytes, decoded as UTF-8 without their line ends (a BOM before the first
    line is dropped); ValueError, naming the line and the byte, at the first line that is not UTF-8 text."""
    for number, raw in enumerate(raw_lines, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"line {number} is not UTF-8 text ({raw[exc.start]:#04x} at byte {exc.start + 1}: "
                             f"{exc.reason})") from None
        yield text.rstrip("\r\n")


class VocabularyFileError(ValueError):
    """A word-list file that cannot be a vocabulary: not UTF-8 text, or not one word in it."""


def load_vocabulary(source: str = "en") -> frozenset[str]:
    """A vocabulary: a language code with a wordfreq list (its common words), else a word-per-line file.

    A code is never looked up as a path, so a file or folder named ``en`` in the working folder changes
    nothing; a word list named like a code is given as a path (``./en``). Anything that is not such a
    code must be a readable file: ValueError when there is nothing at that path, OSError when unreadable,
    VocabularyFileError (a ValueError) when it is not UTF-8 text or holds no words (it would make every
    caption ``high_oov_rate``).
    """
    if source in wordfreq_languages():
        return _language_vocabulary(source)
    if not os.path.lexists(source):
        raise ValueError(f"no vocabulary for {source!r}: neither a language code with a word list nor a file "
                         f"(one word per line)")
    # absolute: a later chdir does not change what is cached; the name as given is for the messages
    return _file_vocabulary(os.path.abspath(source), source)


@functools.lru_cache(maxsize=8)
def _language_vocabulary(lang: str) -> frozenset[str]:
    """wordfreq's common words of a language, those that ``words`` can produce."""
    import wordfreq

    vocab = frozenset(w for w in wordfreq.get_frequency_dict(lang, wordlist="small") if _word_pattern().fullmatch(w))
    logger.debug("vocabulary %s: %d words", lang, len(vocab))
    return vocab


@functools.lru_cache(maxsize=8)
def _file_vocabulary(path: str, name: str) -> frozenset[str]:
    """The words of a word-per-line file (``#`` starts a comment line) as ``words`` finds them in a caption
    (``nfkc``, lowercased: "Café" written decomposed, "น้ำ", or "e-mail", still match); ``name``: the file
    as given."""
    with open(path, "rb") as handle:
        try:
            lines = [line for line in utf8_lines(handle) if not line.lstrip().startswith("#")]
        except ValueError as exc:
            raise VocabularyFileError(f"cannot read {name}: {exc}") from None
    vocab = frozenset(w for line in lines for w in words(nfkc(line)))
    if not vocab:
        raise VocabularyFileError(f"{name} holds no words (one word per line; a line starting with '#' is a "
                                  f"comment): every caption would be high_oov_rate")
    logger.debug("vocabulary %s: %d words", path, len(vocab))
    return vocab


@functools.lru_cache(maxsize=1)
def chinese_simplified() -> Mapping[int, str]:
    """wordfreq's Traditional-to-Simplified character table, as ``str.translate`` takes it (what wordfreq
    applies before it looks up a Chinese word); empty when this wordfreq has none.

    Read from its data file: ``wordfreq.chinese`` would import jieba, which LAIT does not install.
    """
    import gzip

    import msgpack
    from wordfreq.util import data_path

    try:
        with gzip.open(data_path("_chinese_mapping.msgpack.gz")) as handle:
            return msgpack.load(handle, raw=False, strict_map_key=False)
    except (OSError, ValueError) as exc:
        logger.warning("no Traditional-to-Simplified Chinese table in wordfreq (%s): Traditional characters "
                       "count as out of vocabulary", exc)
        return {}


class OOVFilter(Filter):
    """Out-of-vocabulary rate, as in the paper: the share of caption words not in the vocabulary.

    ``vocabulary`` (``"auto"``): the common words of the record's ``lang`` (wordfreq; English when
    the record has none), a fixed language code, or a word-list file (see ``load_vocabulary``: a code is
    never read as a path). A language without a list
    is not checked (score None). ``max_oov_rate`` (0.5): captions with a higher rate are rejected;
    captions with no letter words get rate 1.0. In scripts written without spaces the words are the longest
    the vocabulary knows, else single letters (``segment``); Chinese is looked up in Simplified characters.
    """

    name = "oov"
    reasons = ("high_oov_rate",)

    def __init__(self, vocabulary: str = "auto", max_oov_rate: float = 0.5):
        self.vocabulary = vocabulary
        self.max_oov_rate = max_oov_rate

    def source_for(self, record: Mapping[str, Any]) -> str | None:
        """Which vocabulary applies to a record (None: no vocabulary for its language)."""
        if self.vocabulary != "auto":
            return self.vocabulary
        lang = record.get("lang") or "en"
        lang = {"no": "nb", "tl": "fil"}.get(lang, lang)
        return lang if lang in wordfreq_languages() else None

    def oov_rate(self, caption: str, source: str = "en") -> float:
        """Share of the caption's words missing from the vocabulary (runs of a script written without spaces
        are cut into the vocabulary's words by ``segment``)."""
        if source == "zh":
            caption = caption.translate(chinese_simplified())  # wordfreq's Chinese list is Simplified
        found = words(caption)
        if not found:
            return 1.0
        vocab = load_vocabulary(source)
        found = [piece for word in found for piece in (segment(word, vocab) if is_unspaced(word) else (word,))]
        return sum(w not in vocab for w in found) / len(found)

    def __call__(self, record: Mapping[str, Any]) -> Decision:
        source = self.source_for(record)
        if source is None:
            return Decision.accept(None, f"no vocabulary for {record.get('lang')!r}")
        rate = round(self.oov_rate(record.get("caption") or "", source), 4)
        if rate > self.max_oov_rate:
            return Decision.reject("high_oov_rate", rate, f"{rate:.0%} of words not in the {source} vocabulary")
        return Decision.accept(rate)


def text_quality_score(caption: str, oov_rate: float | None, lang_score: float | None) -> float:
    """A 0..1 score that prefers in-vocabulary, confidently-identified, sentence-length captions.

    Used to pick an image's best text when no learned relevance score is available.
    """
    n = len(tokens(caption))
    # Sentences of 8-20 words read like descriptions; shorter ones are labels, longer ones paragraphs.
    length = min(1.0, n / 8) if n <= 20 else max(0.0, 1.0 - (n - 20) / 44)
    vocab = 1.0 - (oov_rate if oov_rate is not None else 0.5)
    lang = lang_score if lang_score is not None else 0.5
    return round(0.4 * vocab + 0.3 * lang + 0.3 * length, 6)
