"""LAIT's language filter on labelled text it never trained on: English precision/recall, or zh/ja/ko (``--cjk``).

Labelled text: the gettext message catalogs (``*.mo``) installed on this machine by Debian packages
(``/usr/share/locale/<lang>/LC_MESSAGES``, vim's ``lang/`` folder). Each catalog pairs an English
message (msgid) with its translation (msgstr) by a human translator, labelled by the catalog's
language folder. Format specifiers, accelerator marks and URLs are removed; untranslated messages
(msgstr == msgid) are dropped. From these:

- sentences: messages of at least 6 words;
- two-word texts: two consecutive words from a message (one pair per message), like short alt text;
  a two-word text found under English and another language is ambiguous and dropped.

The sets are balanced: as many English as non-English texts, the non-English ones spread evenly over
the catalog languages. The page variant gives each text the evidence a crawled pair carries: the
declared page language and a page text (another sentence from the same language).

With ``--cjk``, the catalogs of zh_CN, zh_TW, zh_HK, ja and ko instead, each folder on its own and every
message counted once: short messages (2-14 characters, at least one letter of the catalog's script: Han for
Chinese, Han or kana for Japanese, Hangul for Korean), Japanese short messages without kana (all kanji),
and sentences (15-200 characters). For each: the share identified as zh, ja, ko and anything else, by
fastText alone, by the combination without the Han-script cue, and by the combination (caption only).

    PYTHONPATH=. python benchmarks/eval_language.py [--per-class 2000] [--seed 0]
    PYTHONPATH=. python benchmarks/eval_language.py --cjk
"""
from __future__ import annotations

import argparse
import gettext
import glob
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from filters.language import FastTextIdentifier, LanguageFilter, LanguageIdentifier  # noqa: E402

CATALOG_GLOBS = ("/usr/share/locale/*/LC_MESSAGES/*.mo", "/usr/share/vim/vim*/lang/*/LC_MESSAGES/*.mo")
_FORMAT = re.compile(r"%(?:\d+\$)?[-+ #0]*\d*(?:\.\d+)?[hlLqjzt]*[a-zA-Z%]|\{[^}]*\}|\$\{[^}]*\}|<[^>]+>")
_URL = re.compile(r"\S+://\S+|www\.\S+|\S+@\S+")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
CJK_FOLDERS = ("zh_CN", "zh_TW", "zh_HK", "ja", "ko")
_HAN = re.compile(r"[\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]")
_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")


def clean(message: str) -> str:
    """A catalog message as plain text: no format specifiers, accelerators, markup or URLs."""
    text = _URL.sub(" ", _FORMAT.sub(" ", message))
    text = re.sub(r"(?<=\w)[_&~](?=\w)|(?<!\w)[_&~](?=\w)", "", text)
    return " ".join(text.split())


def load_catalogs(by_folder: bool = False) -> dict[str, list[tuple[str, str]]]:
    """{language: [(msgid, msgstr), ...]} from every UTF-8-readable catalog found (keyed by the locale
    folder, ``zh_TW``, when ``by_folder``)."""
    by_lang: dict[str, list[tuple[str, str]]] = {}
    for pattern in CATALOG_GLOBS:
        for path in glob.glob(pattern):
            folder = path.split("/LC_MESSAGES/")[0].rsplit("/", 1)[1]
            if "." in folder or "@" in folder:
                continue  # legacy encodings and script variants
            lang = folder if by_folder else folder.split("_")[0].lower()
            try:
                with open(path, "rb") as handle:
                    catalog = gettext.GNUTranslations(handle)._catalog
            except Exception:
                continue
            for msgid, msgstr in catalog.items():
                if isinstance(msgid, tuple):
                    msgid = msgid[0]
                if msgid and isinstance(msgstr, str) and msgstr:
                    by_lang.setdefault(lang, []).append((msgid, msgstr))
    return by_lang


def build_sets(per_class: int, seed: int):
    """(sentences, two_word) lists of (text, lang, page_text) with per_class English and non-English each."""
    rng = random.Random(seed)
    catalogs = load_catalogs()
    english_messages = sorted({clean(mid) for pairs in catalogs.values() for mid, _ in pairs})
    foreign: dict[str, list[str]] = {}
    for lang, pairs in catalogs.items():
        if lang == "en":
            continue
        texts = sorted({clean(ms) for mid, ms in pairs if clean(ms) != clean(mid)})
        if len(texts) >= 200:
            foreign[lang] = texts

    def sentences(texts):
        return [t for t in texts if len(_WORD.findall(t)) >= 6]

    def two_words(texts):
        out = []
        for t in texts:
            ws = _WORD.findall(t)
            if len(ws) >= 2:
                i = rng.randrange(len(ws) - 1)
                out.append(f"{ws[i]} {ws[i + 1]}")
        return out

    result = {}
    for name, make in (("sentences", sentences), ("two_words", two_words)):
        en = make(english_messages)
        en_lower = {t.lower() for t in en}
        other = {lang: [t for t in make(texts) if t.lower() not in en_lower] for lang, texts in foreign.items()}
        if name == "two_words":
            foreign_lower = {t.lower() for texts in other.values() for t in texts}
            en = [t for t in en if t.lower() not in foreign_lower]
        page_pool = {"en": sentences(english_messages), **{lang: sentences(t) for lang, t in foreign.items()}}
        sample = [(t, "en") for t in rng.sample(en, min(per_class, len(en)))]
        langs = sorted(other)
        share = max(1, per_class // len(langs))
        for lang in langs:
            sample += [(t, lang) for t in rng.sample(other[lang], min(share, len(other[lang])))]
        rows = []
        for text, lang in sample:
            pool = page_pool.get(lang) or [text]
            rows.append((text, lang, " ".join(rng.sample(pool, min(3, len(pool))))))
        result[name] = rows
    return result, sorted(foreign)


def score(said: list[bool], truth: list[bool]) -> tuple[float, float]:
    """English precision and recall."""
    tp = sum(s and t for s, t in zip(said, truth))
    return tp / max(1, sum(said)), tp / max(1, sum(truth))


def best_threshold(probs: list[float], truth: list[bool]) -> tuple[float, float, float]:
    """The threshold on P(en) with the best F1, and its precision and recall."""
    best = (0.0, 0.0, 0.0, -1.0)
    for threshold in [i / 100 for i in range(0, 100, 2)]:
        p, r = score([x >= threshold for x in probs], truth)
        f1 = 2 * p * r / max(1e-9, p + r)
        if f1 > best[3]:
            best = (threshold, p, r, f1)
    return best[:3]


def cjk_sets() -> dict[str, list[str]]:
    """{"zh_TW short": [text, ...], "ja all kanji": ..., "ko sentences": ...} from the CJK catalogs."""
    script = {"zh": (_HAN,), "ja": (_HAN, _KANA), "ko": (_HANGUL,)}
    catalogs = load_catalogs(by_folder=True)
    sets = {}
    for folder in CJK_FOLDERS:
        texts = sorted({clean(ms) for mid, ms in catalogs.get(folder, ()) if clean(ms) != clean(mid)})
        letters = script[folder.split("_")[0]]
        short = [t for t in texts if 2 <= len(t) <= 14 and any(p.search(t) for p in letters)]
        sets[f"{folder} short"] = short
        if folder == "ja":
            sets["ja all kanji"] = [t for t in short if not _KANA.search(t)]
        sets[f"{folder} sentences"] = [t for t in texts if 15 <= len(t) <= 200 and any(p.search(t) for p in letters)]
    return sets


def cjk_report() -> int:
    """Shares of each CJK catalog set identified as zh, ja, ko and other, before and after the Han-script cue."""
    systems = {
        "fastText alone": LanguageIdentifier(word_model=False, use_page=False, han_model=False),
        "combined, no Han cue": LanguageIdentifier(use_page=False, han_model=False),
        "combined": LanguageIdentifier(use_page=False),
    }
    print(f"{'set':<16} {'system':<22} {'n':>6} {'zh':>7} {'ja':>7} {'ko':>7} {'other':>7} {'texts/s':>9}")
    for name, texts in cjk_sets().items():
        for label, system in systems.items():
            system.load()
            start = time.perf_counter()
            found = [system.identify(text)[0] for text in texts]
            rate = len(texts) / (time.perf_counter() - start)
            shares = {lang: sum(f == lang for f in found) / max(1, len(found)) for lang in ("zh", "ja", "ko")}
            other = 1.0 - sum(shares.values())
            print(f"{name:<16} {label:<22} {len(texts):>6} {shares['zh']:>7.1%} {shares['ja']:>7.1%} "
                  f"{shares['ko']:>7.1%} {other:>7.1%} {rate:>9,.0f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=2000, help="English (and non-English) texts per set")
    parser.add_argument("--langdetect-sample", type=int, default=600, help="texts for the slow langdetect row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cjk", action="store_true", help="zh/ja/ko shares on the CJK catalogs instead")
    args = parser.parse_args(argv)
    if args.cjk:
        return cjk_report()
    sets, langs = build_sets(args.per_class, args.seed)
    print(f"labelled text: gettext catalogs on this machine; non-English languages ({len(langs)}): {' '.join(langs)}")
    fasttext = FastTextIdentifier(k=8)
    systems = {
        "fastText lid.176 alone (argmax)": LanguageFilter(word_model=False, use_page=False, han_model=False,
                                                          threshold=0.0),
        "combined, caption only": LanguageFilter(use_page=False),
        "combined + page evidence": LanguageFilter(use_page=True),
        "langdetect + words + page": LanguageFilter(backend="langdetect", use_page=True),
    }
    print(f"{'set':<10} {'system':<36} {'n':>6} {'precision':>10} {'recall':>8} {'texts/s':>9}")
    for name, rows in sets.items():
        truth_all = [lang == "en" for _, lang, _ in rows]
        probs = [fasttext.predict(text).get("en", 0.0) for text, _, _ in rows]
        threshold, p, r = best_threshold(probs, truth_all)
        print(f"{name:<10} {'fastText alone, best threshold ' + format(threshold, '.2f'):<36} {len(rows):>6} "
              f"{p:>10.3f} {r:>8.3f} {'':>9}")
        for label, system in systems.items():
            subset = rows
            if "langdetect" in label:
                subset = random.Random(1).sample(rows, min(args.langdetect_sample, len(rows)))
            truth = [lang == "en" for _, lang, _ in subset]
            system.identifier.load()
            start = time.perf_counter()
            said = [system({"caption": text, "page_lang": lang, "page_text": page}).keep
                    for text, lang, page in subset]
            rate = len(subset) / (time.perf_counter() - start)
            p, r = score(said, truth)
            print(f"{name:<10} {label:<36} {len(subset):>6} {p:>10.3f} {r:>8.3f} {rate:>9,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
