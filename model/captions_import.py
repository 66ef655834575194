"""Existing caption sets as LAIT datasets: MSCOCO captions JSON, Karpathy-split JSON, image folder + TSV.

Writes ``OUT/captions/`` (every caption, with its split), ``OUT/pairs/`` (one row per image with a kept caption,
with its bytes, so ``lait features --input OUT`` adds the regions), ``OUT/rejected/`` and ``OUT/stats.json``.
An image's id is the SHA-256 of its bytes, as everywhere in LAIT; a caption whose image file is
missing or unreadable, which is empty or malformed, whose id came before, or whose COCO image id names two files, is
rejected with a reason.
An import marks its folder with ``IMPORT_MARKER`` before it writes anything and removes the mark after
``stats.json``, written last: a folder holding ``stats.json`` is a finished import, refused unless overwritten;
one holding the mark is an interrupted import's, cleared before the next; captions/, pairs/ or rejected/ with
neither are another dataset's (or an import's from before the mark), refused unless overwritten.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import pathlib
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import schemas
from pipeline import outputs
from pipeline.outputs import stage_of

logger = logging.getLogger(__name__)

STAGE = "import_captions"
FORMATS = ("coco", "karpathy", "tsv")


@dataclass
class CaptionRecord:
    """One caption as the source gives it: its own id, the image's file (relative path), the text, the split.

    ``invalid`` is the reject reason of a record the reader could not make sense of (``caption_invalid``: the
    caption is not text; ``image_path_invalid``: the file name is not one; ``record_invalid``: not a record
    at all; ``duplicate_image_id``: its image's id names two files), with ``detail`` saying what was wrong: it is
    counted, not imported.
    """

    source_id: str
    image_file: str
    caption: str
    split: str
    invalid: str | None = None
    detail: str = ""


def _invalid(source_id: str, reason: str, detail: str, split: str) -> CaptionRecord:
    return CaptionRecord(source_id, "", "", split, invalid=reason, detail=detail)


#: What ``_json_type`` calls a parsed JSON value, by its Python type.
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}


def _json_type(value) -> str:
    """What a parsed JSON value is, in JSON's words ("a list", "null")."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _load_json(path: str, kind: str, lists: tuple[str, ...]) -> dict:
    """A JSON object holding the ``lists`` (a clear ``ValueError`` otherwise: an empty file, one nested too deep
    to read, or the wrong shape). UTF-8 with or without a BOM (as Excel and Notepad write it), or UTF-16/32,
    which ``json`` tells by its first bytes."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if not raw.strip():
        raise ValueError("the file is empty")
    try:
        data = json.loads(raw)
    except RecursionError:  # Python's parser recurses per level: a hostile or broken file must be one line
        raise ValueError("its JSON is nested too deeply to read (thousands of levels)") from None
    shape = f"a {kind} file is a JSON object with {' and '.join(repr(k) for k in lists)} lists"
    if not isinstance(data, dict):
        raise ValueError(f"{shape}, this one holds {_json_type(data)}")
    missing = [key for key in lists if key not in data]
    if missing:  # the other format's file, most likely: say which
        other = " (its images hold 'sentences': a Karpathy split file?)" if _has_sentences(data.get("images")) \
            else " (it has 'annotations': a COCO captions file?)" if "annotations" in data else ""
        raise ValueError(f"{shape}, this one has no {' and no '.join(repr(k) for k in missing)}{other}")
    wrong = [key for key in lists if not isinstance(data[key], list)]
    if wrong:
        raise ValueError(f"{shape}, this one's {wrong[0]!r} is {_json_type(data[wrong[0]])}")
    return data


def _has_sentences(images) -> bool:
    """Whether any of a JSON file's ``images`` holds ``sentences``, as a Karpathy split file's do."""
    return isinstance(images, list) and any(isinstance(image, dict) and "sentences" in image for image in images)


def _is_id(value) -> bool:
    """Whether ``value`` can be a COCO or Karpathy id: a number or a string; not a bool, which Python would take
    for 1 or 0 (``"id": true`` replaced image 1)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _caption_text(value) -> str | None:
    """A caption as given (None: none given, an empty caption); not text -> None and a reject upstream."""
    return "" if value is None else value if isinstance(value, str) else None


def read_coco(path: str, split: str = "train") -> Iterator[CaptionRecord]:
    """MSCOCO ``captions_*.json``: ``images`` (id, file_name) and ``annotations`` (id, image_id, caption).

    The file is read and its shape checked when called; malformed annotations come out as ``invalid`` records.
    An annotation without an id gets ``coco:annotation-<its position>``. An image id that two ``images`` entries
    give different file names makes each caption of it a ``duplicate_image_id`` record: which image a caption
    describes is not known (the later entry replaced the earlier without a word). The same entry twice is one image.
    """
    data = _load_json(path, "COCO captions", ("images", "annotations"))
    files = {}
    clashes: dict = {}  # image id -> the file names its entries give, for the ids given more than one
    for image in data["images"]:  # one without a usable id (none, a bool) is left out: its captions image_missing
        if isinstance(image, dict) and _is_id(image.get("id")):
            key, name = image["id"], image.get("file_name")
            if key not in files:
                files[key] = name
            elif name != files[key] and name not in clashes.setdefault(key, [files[key]]):
                clashes[key].append(name)

    def records() -> Iterator[CaptionRecord]:
        for number, annotation in enumerate(data["annotations"]):
            if not isinstance(annotation, dict):
                yield _invalid(f"coco:annotation-{number}", "record_invalid", "an annotation that is not an object",
                               split)
                continue
            given = annotation.get("id")
            source_id = f"coco:{given}" if _is_id(given) else f"coco:annotation-{number}"
            image_id = annotation.get("image_id")
            file_name = files.get(image_id, f"<unknown image {image_id}>") if _is_id(image_id) \
                else f"<unknown image {image_id}>"
            caption = _caption_text(annotation.get("caption"))
            if caption is None:
                yield _invalid(source_id, "caption_invalid", f"caption {annotation.get('caption')!r} is not text",
                               split)
            elif _is_id(image_id) and image_id in clashes:
                named = ", ".join(repr(name) for name in clashes[image_id])
                yield _invalid(source_id, "duplicate_image_id", f"image id {image_id!r} is given to "
                               f"{len(clashes[image_id])} images ({named}): which one the caption describes is not "
                               f"known", split)
            elif not isinstance(file_name, str):
                yield _invalid(source_id, "image_path_invalid", f"file_name {file_name!r} of image {image_id}", split)
            else:
                yield CaptionRecord(source_id, file_name, caption, split)

    return records()


def read_karpathy(path: str, split: str | None = None) -> Iterator[CaptionRecord]:
    """Karpathy's ``dataset_{coco,flickr30k}.json``: images with split, filepath/filename and sentences.

    A missing or null split is ``train``, as is ``restval``; a sentence without ``sentid`` gets
    ``karpathy:<imgid>:<n>`` (its image's id, else the image's position, and its own position). A file none of
    whose images holds ``sentences`` (a COCO captions file) is a ``ValueError``.
    """
    data = _load_json(path, "Karpathy split", ("images",))
    if data["images"] and not _has_sentences(data["images"]):
        coco = " (it has 'annotations': a COCO captions file?)" if "annotations" in data else ""
        raise ValueError(f"a Karpathy split file's images hold 'sentences', none of this one's "
                         f"{len(data['images'])} does{coco}")

    def records() -> Iterator[CaptionRecord]:
        for number, image in enumerate(data["images"]):
            if not isinstance(image, dict):
                yield _invalid(f"karpathy:image-{number}", "record_invalid", "an image entry that is not an object",
                               "train")
                continue
            image_split = image.get("split") or "train"
            image_split = "train" if image_split == "restval" else str(image_split)  # the usual practice
            filepath, filename = image.get("filepath") or "", image.get("filename")
            valid_path = isinstance(filepath, str) and isinstance(filename, str) and filename
            relative = os.path.join(filepath, filename) if valid_path else None
            image_key = image.get("imgid", number)
            sentences = image.get("sentences", [])
            if not isinstance(sentences, list):
                yield _invalid(f"karpathy:{image_key}:sentences", "record_invalid",
                               f"sentences {sentences!r} is not a list", image_split)
                continue
            for position, sentence in enumerate(sentences):
                sentid = sentence.get("sentid") if isinstance(sentence, dict) else None
                source_id = f"karpathy:{sentid}" if _is_id(sentid) else f"karpathy:{image_key}:{position}"
                caption = _caption_text(sentence.get("raw")) if isinstance(sentence, dict) else None
                if caption is None:
                    yield _invalid(source_id, "caption_invalid", f"sentence {sentence!r} has no raw text", image_split)
                elif relative is None:
                    yield _invalid(source_id, "image_path_invalid",
                                   f"filepath {image.get('filepath')!r} / filename {filename!r}", image_split)
                else:
                    yield CaptionRecord(source_id, relative, caption, image_split)

    return records()


#: A TSV's first line is a header, skipped, when its first field is one of these names.
TSV_HEADER_NAMES = ("image", "file", "file_name", "filename", "image_file")
_TSV_HEADER_BYTES = tuple(name.encode() for name in TSV_HEADER_NAMES)
#: How many of a TSV's first non-blank lines ``read_tsv`` looks at for a TAB before the import begins.
TSV_SNIFF_LINES = 20


def _excerpt(line: str, limit: int = 60) -> str:
    """``line`` quoted for a reject's detail, cut to ``limit`` characters."""
    return repr(line if len(line) <= limit else line[:limit] + "...")


#: Byte-order marks of the encodings a TSV must not be in, longest first (UTF-32's little-endian mark begins with
#: UTF-16's). Excel's "Unicode Text" is UTF-16: read as UTF-8, every line was a reject or an image_missing.
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
             (b"\xfe\xff", "UTF-16"))
#: How many of a TSV's first bytes ``read_tsv`` looks at for NUL bytes (UTF-16 or UTF-32 without a mark).
TSV_SNIFF_BYTES = 4096


def _not_utf8(head: bytes) -> str | None:
    """Why a file beginning with ``head`` is UTF-16 or UTF-32 text rather than UTF-8: a byte-order mark, or NUL bytes
    making a quarter or more of it (ASCII text in UTF-16 is half NULs); None otherwise. One NUL in a line is the
    line's problem (a reject), not the file's."""
    for bom, name in WIDE_BOMS:
        if head.startswith(bom):
            return f"it is {name} text (byte-order mark {bom.hex(' ').upper()}): save it as UTF-8"
    nuls = head.count(b"\x00")
    if head and 4 * nuls >= len(head):
        return f"{nuls} of its first {len(head)} bytes are NUL (UTF-16 or UTF-32 text?): save it as UTF-8"
    return None


def _sniff_tsv(lines: Iterator[bytes]) -> list[bytes]:
    """The first lines of a TSV (each ending in LF), up to ``TSV_SNIFF_LINES`` non-blank ones besides a header; a
    ``ValueError`` when none of those holds a TAB (a comma-separated file, or plain text: every line would be a
    reject)."""
    head: list[bytes] = []
    filled: list[bytes] = []
    for raw in lines:
        head.append(raw)
        text = raw.removeprefix(b"\xef\xbb\xbf") if len(head) == 1 else raw
        header = len(head) == 1 and text.rstrip(b"\n").split(b"\t")[0].lower() in _TSV_HEADER_BYTES
        if text.strip() and not header:
            filled.append(raw)
            if len(filled) == TSV_SNIFF_LINES:
                break
    if filled and not any(b"\t" in raw for raw in filled):
        more = len(filled) == TSV_SNIFF_LINES and next(lines, None) is not None
        where = "its one line has no TAB" if len(filled) == 1 else \
            f"no TAB in any of its {'first ' if more else ''}{len(filled)} lines"
        comma = "; they look comma-separated (a CSV?): put a TAB between image_file and caption" \
            if any(b"," in raw for raw in filled) else ""
        raise ValueError(f"{where}: a tsv line is image_file<TAB>caption{comma}")
    return head


#: A TSV field in CSV quotes, as Python's csv module and pandas' ``to_csv(sep="\t")`` write one holding a quote
#: or a TAB: a ``"`` at each end, each ``"`` inside doubled, then a TAB or the line's end.
_TSV_QUOTED = re.compile(r'"((?:[^"]|"")*)"(?=\t|\Z)')


def _tsv_fields(line: str) -> list[str]:
    """A TSV line's TAB-separated fields, a field in CSV quotes (``_TSV_QUOTED``) unquoted: its quotes dropped and
    ``""`` read as ``"``, a TAB inside it kept. Read whole, a caption with a quote came in quoted, its quotes
    doubled, and a quoted file name was an image_missing. Any other field is taken as it stands, a ``"`` in it
    included (``say "hi"``, ``"Hi" she said``); a line without a ``"`` splits as before. A line end still ends the
    line, inside quotes too (a quoted field cannot span lines: its first line keeps its opening quote)."""
    if '"' not in line:
        return line.split("\t")
    fields, at = [], 0
    while True:
        quoted = _TSV_QUOTED.match(line, at)
        if quoted:
            fields.append(quoted.group(1).replace('""', '"'))
            at = quoted.end()
        else:
            end = line.find("\t", at)
            end = len(line) if end < 0 else end
            fields.append(line[at:end])
            at = end
        if at == len(line):
            return fields
        at += 1  # past the TAB


def read_tsv(path: str, split: str = "train") -> Iterator[CaptionRecord]:
    """A TSV of ``image_file<TAB>caption`` lines (a first line whose first field names a column,
    ``TSV_HEADER_NAMES``, is a header and skipped, as are blank lines; a UTF-8 BOM and CRLF or CR line ends are
    allowed; a field in CSV quotes is unquoted, ``_tsv_fields``). A line that is not UTF-8, one without a TAB, or
    one with more than two TAB-separated fields (an unquoted caption cannot hold a TAB) is an ``invalid`` record
    (``record_invalid``), named by its number.

    The file is opened when called (an unreadable one fails then, before ``--out`` is touched), and its first
    lines are read: a ``ValueError`` when it is UTF-16 or UTF-32 text (``_not_utf8``), or when none of its first
    ``TSV_SNIFF_LINES`` non-blank lines holds a TAB (a CSV given as a TSV); the rest is read lazily."""
    # A line ends at CRLF, LF or a lone CR (Excel for Mac writes CR alone: read as LF-ended, its file was one
    # line, taken for a header). The bytes CR and LF occur in UTF-8 text only as themselves, so the file is split
    # into lines as Latin-1 (a character a byte) and each line's bytes decoded after; a caption cannot hold a line
    # end of any kind, as it cannot hold a TAB.
    handle = open(path, encoding="latin-1", newline=None)
    try:
        problem = _not_utf8(handle.buffer.peek(TSV_SNIFF_BYTES)[:TSV_SNIFF_BYTES])
        if problem:
            raise ValueError(problem)
        lines = (line.encode("latin-1") for line in handle)
        head = _sniff_tsv(lines)
    except BaseException:
        handle.close()
        raise

    def records() -> Iterator[CaptionRecord]:
        with handle:
            for number, raw in enumerate(itertools.chain(head, lines), 1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\n")
                except UnicodeDecodeError as exc:
                    yield _invalid(f"tsv:{number}", "record_invalid",
                                   f"line {number} is not UTF-8 text ({exc.reason})", split)
                    continue
                if not line.strip():
                    continue
                fields = _tsv_fields(line)
                if number == 1 and fields[0].lower() in TSV_HEADER_NAMES:
                    continue
                if len(fields) == 1:
                    yield _invalid(f"tsv:{number}", "record_invalid", f"line {number} has no TAB between image_file "
                                   f"and caption ({_excerpt(line)})", split)
                elif len(fields) > 2:
                    yield _invalid(f"tsv:{number}", "record_invalid", f"line {number} has {len(fields)} "
                                   f"TAB-separated fields, not 2 (image_file<TAB>caption; a caption cannot hold a "
                                   f"TAB)", split)
                else:
                    yield CaptionRecord(f"tsv:{number}", fields[0], fields[1], split)

    return records()


READERS = {"coco": read_coco, "karpathy": read_karpathy, "tsv": read_tsv}


def _inside(folder: str, path: str) -> bool:
    """Whether ``path`` (links resolved) lies inside ``folder``: a caption file must not name
    ``../../etc/passwd`` or an absolute path and have it read into the dataset."""
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


class _Unusable(NamedTuple):
    """Why an image file cannot be imported: the reject reason, and what the reader or the image opener said."""

    reason: str
    detail: str = ""


def _image_info(images_dir: str, image_file: str) -> tuple[bytes, int, int] | _Unusable:
    """The image's bytes and size as shown (after its EXIF orientation, as the filter stage measures it), or why
    it cannot be imported.

    The image is opened by ``filters.imageio``, as by every other stage, and its first frame fully decoded: bytes
    it refuses (truncated pixel data, more pixels than its decompression-bomb limit, a format it keeps shut) are
    ``image_unreadable`` with its reason (``undecodable: ...``), not pairs that ``lait features`` then fails on."""
    if not image_file or "\x00" in image_file:
        return _Unusable("image_path_invalid")
    path = os.path.join(images_dir, image_file)
    try:
        if not _inside(images_dir, path):
            return _Unusable("image_path_outside")
        if not os.path.isfile(path):
            return _Unusable("image_missing")
        with open(path, "rb") as handle:
            data = handle.read()
    except (OSError, ValueError) as exc:  # a name the file system refuses (too long, undecodable), a read error
        return _Unusable("image_unreadable", getattr(exc, "strerror", None) or type(exc).__name__)
    from filters import imageio

    try:
        with imageio.open_image(data) as image:
            width, height = imageio.oriented_size(image)
            imageio.decode(image, rgb=False)  # the pixels too: a valid header over truncated data is no image
    except imageio.ImageError as exc:
        return _Unusable("image_unreadable", str(exc))
    return data, width, height


def _is_text(value: str) -> bool:
    """Whether ``value`` can be stored as UTF-8: JSON's ``"\\ud83d"`` escape gives a lone surrogate, which cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: str) -> str:
    """``value`` made storable for a reject's detail (a lone surrogate as its escape)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _untext_reason(record: CaptionRecord) -> str | None:
    """The reject reason of a record holding text that is not valid Unicode (a lone surrogate), or None."""
    for reason, value in (("record_invalid", record.source_id), ("image_path_invalid", record.image_file),
                          ("caption_invalid", record.caption), ("record_invalid", record.split)):
        if not _is_text(value):
            return reason
    return None


#: Written when an import starts and removed when it has finished: its partial output may be cleared.
IMPORT_MARKER = ".import_captions.running"
#: What an import writes into its output folder; ``stats.json``, written last, marks it finished.
OUTPUTS = ("captions", "pairs", "rejected", ".stats.json.tmp", "stats.json", IMPORT_MARKER)


class ImportExistsError(FileExistsError, ValueError):
    """The output folder holds a finished import or another dataset (a ValueError too, for the CLI's one-line
    bad-input errors)."""


class NoCaptionsError(ValueError):
    """The source yields no record at all (an empty TSV, a header alone, empty lists): an import of nothing would
    be a finished import, refused on the rerun with the right file or format."""


def _read_local(path: str) -> bytes:
    """A local file's bytes: ``stage_of`` reads through Beam by default, which ``lait import-captions`` (the
    ``train`` extra) runs without."""
    with open(path, "rb") as handle:
        return handle.read()


def _refuse_dataset_or_nested(out_dir: str) -> None:
    """``ImportExistsError`` for an ``out_dir`` that is a dataset (Parquet files in it: ``RUN/filter/pairs``, among
    whose shards the import's captions/, pairs/ and rejected/ made it unreadable as one), or that lies inside a
    finished stage's folder other than an import's: the Beam stages' rule
    (``pipeline.outputs.refuse_dataset_or_nested``, which checks a local folder without Beam)."""
    try:
        outputs.refuse_dataset_or_nested(out_dir, STAGE, (), give="give the import an --out of its own",
                                         dataset_example=f"a sibling of {out_dir}")
    except outputs.OutputExistsError as exc:
        raise ImportExistsError(str(exc)) from None


def _refuse_running(out_dir: str, overwrite: bool) -> None:
    """``ImportExistsError`` when the import that marked ``out_dir`` (``IMPORT_MARKER``: ``outputs.run_marker``) is
    still going: taking it for an interrupted one removed its shards while it wrote more, and its stats.json then
    counted captions the folder no longer held. One of another host, which cannot be checked, only without
    ``overwrite``. The rule of the Beam stages (``pipeline.outputs.refuse_running``), read without Beam."""
    marker = outputs.read_local_marker(os.path.join(out_dir, IMPORT_MARKER))  # (unreadable: an interrupted import's)
    problem = outputs.running_run_problem(out_dir, marker, "an import", "pass --overwrite", option="--out",
                                          overwrite_note="--overwrite never removes a running import",
                                          overwrite=overwrite)
    if problem is not None:
        raise ImportExistsError(problem)


def prepare_output(out_dir: str, overwrite: bool = False) -> None:
    """Refuse a finished import's folder, or one holding another dataset, unless ``overwrite``; remove what an
    interrupted import left (its ``IMPORT_MARKER`` says so).

    Shards are numbered after those already there, so a rerun into the same folder added every caption
    a second time. Other folders inside (``features/``, ``regions/``) stay. Another stage's finished run (its
    stats.json names that stage), a dataset and a folder inside a finished stage's (``_refuse_dataset_or_nested``)
    are refused even with ``overwrite``.
    """
    _check_output(out_dir)
    with outputs.claim_lock(out_dir if os.path.isdir(out_dir) else None):  # (a new folder has nothing to remove)
        _clear_output(out_dir, overwrite)


def _check_output(out_dir: str) -> None:
    """``prepare_output``'s refusals of the ``--out`` path itself, which need no folder made."""
    outputs.refuse_empty_paths(("--out", out_dir, "the folder to write the import to"))  # else the current folder's
    if not _is_text(out_dir):  # pyarrow takes paths as UTF-8: the import failed after marking the folder
        raise ValueError(f"{_shown(out_dir)}: the folder's name is not UTF-8 text, which the datasets' paths must "
                         f"be; use another --out")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} is a file, not a folder: --out is the folder the import writes captions/, "
                         f"pairs/, rejected/ and stats.json into")
    _refuse_dataset_or_nested(out_dir)


def _clear_output(out_dir: str, overwrite: bool) -> None:
    """``prepare_output``'s refusals of what the folder holds, and its removal of an interrupted import's files."""
    existing = [name for name in OUTPUTS if os.path.lexists(os.path.join(out_dir, name))]
    stats_path = os.path.join(out_dir, "stats.json")
    finished = "stats.json" in existing
    other = stage_of(stats_path, read=_read_local) if finished else None
    if other is not None and other != STAGE:
        raise ImportExistsError(f"{out_dir} holds a finished {other} run, not an import; use a new --out "
                                f"(--overwrite never replaces another stage's output)")
    if finished and not overwrite:
        raise ImportExistsError(f"{out_dir} already holds a finished import (stats.json); pass --overwrite to "
                                f"replace it, or use a new --out")
    interrupted = IMPORT_MARKER in existing
    if interrupted and not finished:
        _refuse_running(out_dir, overwrite)
    if not finished and not interrupted and existing and not overwrite:
        found = [name + "/" if os.path.isdir(os.path.join(out_dir, name)) else name for name in existing]
        raise ImportExistsError(f"{out_dir}: {', '.join(found)} {'is' if len(found) == 1 else 'are'} not an "
                                f"import's (no stats.json, no {IMPORT_MARKER}): another dataset, or an older "
                                f"import's partial output; pass --overwrite to replace captions/, pairs/ and "
                                f"rejected/, or use a new --out")
    if interrupted and not finished:
        logger.warning("%s: removing the partial output of an interrupted import: %s", out_dir, ", ".join(existing))
    for name in existing:
        path = os.path.join(out_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def claim_output(out_dir: str, overwrite: bool = False) -> None:
    """``prepare_output``, then mark ``out_dir`` as this import's (``IMPORT_MARKER``: host, pid and start time),
    holding the folder from the checks to the marker (``outputs.claim_lock``) and writing it exclusively: two
    imports started at once both found the folder free, both wrote shards into it, and the marker of the second
    replaced the first's. The one that comes second now finds the first's marker and is refused."""
    _check_output(out_dir)  # before a folder is made
    os.makedirs(out_dir, exist_ok=True)
    with outputs.claim_lock(out_dir):
        _clear_output(out_dir, overwrite)
        path = os.path.join(out_dir, IMPORT_MARKER)
        other = outputs.write_marker(path, outputs.run_marker(STAGE))
    if other is not None:  # (a filesystem without locks: the exclusive write still tells)
        raise ImportExistsError(outputs.marker_taken_problem(out_dir, other, path, "an import", "--out"))


def import_captions(records: Iterable[CaptionRecord], images_dir: str, out_dir: str, rows_per_shard: int = 5000,
                    overwrite: bool = False) -> dict:
    """Write captions, pairs (one per image with a kept caption: its bytes, size as shown and first kept caption),
    rejected rows and stats (``images``: the pairs rows); returns the stats.

    A caption id seen before is rejected (``duplicate_caption``): caption ids are keys downstream. ``records``
    yielding nothing at all is a ``NoCaptionsError`` before ``out_dir`` is touched.
    """
    records = iter(records)
    first = next(records, None)
    if first is None:
        raise NoCaptionsError(f"no captions to import into {out_dir}")
    records = itertools.chain([first], records)
    claim_output(out_dir, overwrite)
    images: dict[str, tuple[str, int, int] | _Unusable] = {}  # image file -> (image_id, w, h) or why not
    written: set[str] = set()  # image ids with a pairs row: one per image with a kept caption, whatever its names
    seen: set[str] = set()  # caption ids
    reasons: Counter = Counter()
    counts = {"in": 0, "kept": 0}
    with schemas.ShardWriter(os.path.join(out_dir, "captions"), "captions", rows_per_shard=rows_per_shard) as captions, \
            schemas.ShardWriter(os.path.join(out_dir, "pairs"), "pairs", rows_per_shard=max(1, rows_per_shard // 10)) as pairs, \
            schemas.ShardWriter(os.path.join(out_dir, "rejected"), "rejected", rows_per_shard=rows_per_shard) as rejected:

        def reject(reason: str, detail: str, image_id: str | None = None, caption: str | None = None) -> None:
            reasons[reason] += 1
            rejected.write(schemas.rejected_row(STAGE, reason, detail, image_id=image_id, caption=caption))

        for record in records:
            counts["in"] += 1
            if record.invalid:
                reject(record.invalid, _shown(f"{record.source_id}: {record.detail}"))
                continue
            untext = _untext_reason(record)
            if untext:  # Arrow stores UTF-8: written, it failed the whole import
                where = {"caption_invalid": "caption", "image_path_invalid": "file name"}.get(untext, "id or split")
                reject(untext, _shown(f"{record.source_id}: {record.image_file}: the {where} is not valid Unicode "
                                      f"text (a lone surrogate)"))
                continue
            caption = " ".join(record.caption.split())
            data = None  # the image's bytes, when read for this record
            if record.image_file not in images:
                info = _image_info(images_dir, record.image_file)
                if not isinstance(info, _Unusable):
                    data, width, height = info
                    info = (hashlib.sha256(data).hexdigest(), width, height)
                images[record.image_file] = info
            image = images[record.image_file]
            reason = image.reason if isinstance(image, _Unusable) else (
                "caption_empty" if not caption else "duplicate_caption" if record.source_id in seen else None)
            if not reason and image[0] not in written and data is None:
                # The image's first kept caption, its earlier ones all rejected: its bytes were not held (for every
                # image whose captions are all rejected they would be), so they are read again.
                info = _image_info(images_dir, record.image_file)
                if isinstance(info, _Unusable):  # gone or broken since
                    image, reason = info, info.reason
                else:
                    data, width, height = info
                    image = (hashlib.sha256(data).hexdigest(), width, height)
                images[record.image_file] = image
            if reason:
                detail = image.detail if isinstance(image, _Unusable) else ""
                reject(reason, f"{record.source_id}: {record.image_file}" + (f": {detail}" if detail else ""),
                       image_id=None if isinstance(image, _Unusable) else image[0], caption=caption or None)
                continue
            image_id, width, height = image
            if image_id not in written:  # its first kept caption (the same bytes under another name have their row)
                written.add(image_id)
                path = os.path.join(images_dir, record.image_file)
                pairs.write({"pair_id": hashlib.sha1(f"{image_id}|{record.source_id}".encode()).hexdigest(),
                             "image_id": image_id, "caption": caption, "text_source": "import", "width": width,
                             "height": height, "image_bytes": data,
                             # percent-encoded: a folder name that is not UTF-8 cannot be stored
                             "image_url": pathlib.Path(os.path.abspath(path)).as_uri()})
            seen.add(record.source_id)
            captions.write({"caption_id": record.source_id, "image_id": image_id, "caption": caption,
                            "split": record.split})
            counts["kept"] += 1
    stats = {"stage": STAGE, "in": counts["in"], "kept": counts["kept"], "rejected": sum(reasons.values()),
             "rejected_by_reason": dict(reasons),
             "images": len(written)}
    for kind in ("captions", "pairs", "rejected"):  # a dataset with no rows is an empty folder, not a missing one
        os.makedirs(os.path.join(out_dir, kind), exist_ok=True)
    tmp = os.path.join(out_dir, ".stats.json.tmp")  # written last and renamed: stats.json means finished
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(stats, handle, indent=2)
    os.replace(tmp, os.path.join(out_dir, "stats.json"))
    os.remove(os.path.join(out_dir, IMPORT_MARKER))
    logger.info("imported %d of %d captions over %d images", stats["kept"], stats["in"], stats["images"])
    return stats
