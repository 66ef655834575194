"""WARC/ARC/WAT files -> candidates, as an Apache Beam pipeline (web scale: Common Crawl on Dataflow).

Local run (DirectRunner, chosen explicitly)::

    python -m crawler.warc --input 'crawl-data/*.warc.gz' --output runs/x/crawl \
        --runner DirectRunner --direct_running_mode multi_processing --direct_num_workers 2

Dataflow run (the same pipeline; the workers run an image built from ``docker/dataflow.Dockerfile``)::

    python -m crawler.warc --input 'gs://bucket/segment/*.warc.gz' --output runs/x/crawl \
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \
        --sdk_container_image IMAGE

HTML response records go through the same ``crawler.extract.parse_page`` as the spider; WAT metadata
records give candidates from their ``IMG@/src`` links. Image bytes come from image records of the
same input when present; the rest are fetched by ``DownloadMissingImages`` with the crawl's
politeness and safety rules (``--no_download`` turns that off). Truncated or malformed records are
counted rejects. Output: ``OUTPUT/candidates/warc-*.parquet``, ``OUTPUT/rejected/warc-*.parquet``
and ``OUTPUT/stats.json``.

With ``--files_per_part N`` the sorted inputs run as consecutive parts of N files, one pipeline each
(shards ``warc-pKKKKK-*``, then a marker ``OUTPUT/parts/pKKKKK.json``); a rerun skips the parts that
have a marker, and ``dedupe_across_parts`` then turns a candidate kept by several parts into
``duplicate_candidate`` rejects of all but the first. Images join their pages within a part only.

A page captured more than once (revisits, overlapping WARCs and WATs) follows its latest capture's wish: when
the capture with the latest WARC-Date (a tie goes to the opt-out) opts out of AI use, the candidates of its
older captures become that opt-out's rejects (``resolve_page``; across parts, ``dedupe_across_parts`` with
each part's ``parts/captures-warc-pKKKKK-*.parquet``).

A revisit record stands for the capture it refers to (``WARC-Refers-To-Target-URI``, ``-Date``, the payload
digest), found among the records read with it: an image's resolves to that record's bytes in the image join
(``attach_images``; one of another URL through two small joins that carry each referenced original once, and
its bytes on only to URLs with candidates: ``forward_originals``), a page's to a capture of its own date with
the original's wish (``resolve_page_revisits``: its candidates are the original's, kept once). Revisits resolve
in date order, so a revisit of an earlier revisit of the same URL finds their original; across URLs, one link
is followed. One whose original is not there is a ``revisit_original_missing`` reject; if its own
``X-Robots-Tag`` opts out, it is still an opt-out capture of its date. A response to a HEAD request (paired by
``WARC-Concurrent-To``) holds no body and is no capture: not used.
"""
from __future__ import annotations

import argparse
import base64
import collections
import datetime
import functools
import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import zlib
from typing import Any, Iterator
from urllib.parse import urlsplit

import pipeline  # noqa: F401  (first: it quiets Beam's import-time BigQuery notice before Beam loads)
import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

import schemas
from crawler import extract, images, netguard, output
from crawler.fetch import header_dict
from crawler import settings as defaults
from filters import imageio, option_rules
from pipeline import outputs
from pipeline.outputs import files_under, literal_pattern, read_stats
from pipeline.options import beam_options, runner_name
from pipeline.parquet_beam import WriteToParquet
from pipeline.runners import is_local_runner, make_pipeline  # the WARC reader is a Beam pipeline: one runner choice for all

logger = logging.getLogger(__name__)

REJECTED = "rejected"
PREFIX = "warc"
NAMESPACE = "lait"
HTML_TYPES = ("text/html", "application/xhtml+xml")
GZIP_MEMBER = b"\x1f\x8b\x08"  # the start of a gzip member (magic and deflate)
#: One line per part as it finishes or is skipped (``lait crawl --warc --files-per-part`` shows them).
parts_logger = logging.getLogger(__name__ + ".parts")
PARTS = "parts"  # OUTPUT/parts/: the job's file list (JOB_FILE) and one marker per finished part
JOB_FILE = "job.json"
DUPLICATES = "duplicates"  # rejected/warc-pKKKKK-duplicates-*.parquet: rows a later part repeated
DUPLICATE_DETAIL = "same page, image and text seen before"
#: tagged output: (page key, (WARC-Date, opt-out reason or None, payload digest or None)) of each page read; the
#: digest is for the page's revisits, resolved within a part, so older 2-tuples (and the part files) go without it.
CAPTURES = "captures"
#: parts/captures-warc-pKKKKK-*.parquet: each page's latest capture in a part, for the final step across parts.
CAPTURES_SCHEMA = pa.schema([pa.field("page", pa.string(), nullable=False),
                             pa.field("date", pa.timestamp("us", tz="UTC")), pa.field("opt_out", pa.string())])
OPT_OUTS = "opt-outs"  # rejected/warc-pKKKKK-opt-outs-*.parquet: kept rows a later part's capture withdrew
LATER_OPT_OUT_DETAIL = "a later capture of the page opted out"
PART_SHARD = re.compile(r"^" + PREFIX + r"-p(\d+)-(.+)\.parquet$")


class MissingInputError(FileNotFoundError):
    """An input path or pattern that names no file."""


#: A URL of a scheme without an authority (``dns:``, ``urn:``, ``mailto:``): records crawlers keep beside
#: the pages (Heritrix's DNS lookups), not pages or images.
NON_WEB_URL = re.compile(r"^(dns|urn|mailto|about|data):", re.IGNORECASE)


#: The Content-Encodings the reader undoes (``decode_body``); br only with brotli installed. A body in another
#: coding is kept as sent, as warcio kept it: its parse or image validation decides.
DECODED_CODINGS = ("gzip", "x-gzip", "deflate", "br")
#: The longest URL the spider requests (Scrapy's ``URLLENGTH_LIMIT`` default, written out: importing Scrapy here
#: would load Twisted into every Beam worker): a page or image URL over it is ``url_too_long`` here too, unless
#: ``--url_length_limit`` (``lait crawl --warc -s URLLENGTH_LIMIT``) says otherwise, 0 turning it off as in the spider.
URL_LENGTH_LIMIT = 2083

PAGE_REVISITS = "page-revisits"  # a revisit of a page (or of no type: a page's, or else an image's)
REVISIT_MISSING = "revisit_original_missing"
REVISIT_OTHER_PAGE = "revisit_of_other_page"
PENDING = "pending"  # tagged output: an image's job that waits for the originals of its revisits of other URLs
REQUESTS = "requests"  # tagged output: such a revisit, sent to the URL it refers to, saying if its own has candidates
ORIGINALS = "originals"  # tagged output: an original that revisits of other URLs refer to, sent once
FORWARDED = "forwarded"  # an original resolved for a revisit of another URL, sent to that URL (bytes if it uses them)
UNTYPED = "untyped"  # tagged output: a revisit of no type whose original is no page, offered to the image join
#: A response with no body is held back this many records for the HEAD request that would pair with it (writers
#: put a request beside its response, before or after it); the records of HEAD requests remembered meanwhile.
HOLD_RECORDS = 16
HEAD_IDS_KEPT = 1024
#: Revisits resolved to the capture they refer to (pages and images; those of no original are rejects).
REVISITS_RESOLVED = Metrics.counter(NAMESPACE, "warc/revisits_resolved")


class MisreadMemberError(OSError):
    """warcio read a corrupt gzip member's bytes as an uncompressed record: the next record's bytes follow."""


# The longest WARC or HTTP header line read, in bytes (a line read between records too): warcio holds a line whole
# in memory however long, so a gzip WARC of a few hundred KB could make it hold gigabytes. 64 KiB is four times what
# the spider's own HTTP client takes (Twisted's 16 KiB). Read when a line is, so a test may lower it.
HEADER_LINE_LIMIT = 1 << 16


class HeaderLineTooLongError(OSError):
    """A header line over ``HEADER_LINE_LIMIT`` bytes, raised once more than that are read (``read`` of them): the
    record is malformed."""

    def __init__(self, message: str, read: int):
        super().__init__(message)
        self.read = read


class PartsMismatchError(ValueError):
    """A rerun whose input files or files per part differ from those the output folder was written with."""


class SettingError(ValueError):
    """A ``lait crawl --warc -s`` setting the WARC reader does not read, or cannot run with."""


def _rejected(reason: str, detail: str | None = None, **ids) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(REJECTED, schemas.rejected_row(output.STAGE, reason, detail, **ids))


def _warc_date(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(datetime.timezone.utc)
    except ValueError:
        return None


#: Statuses whose responses have no body whatever their Content-Length says (RFC 9110: 1xx, 204, 304).
NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))


def has_content(status: int) -> bool:
    """Whether a response of ``status`` is a capture of the page or image: 2xx with a body (a 204 has none, and is
    no capture: as the latest one it would hide the capture before it)."""
    return 200 <= status < 300 and status not in NO_BODY_STATUSES


def _digest(value: str | None) -> str | None:
    """A WARC payload digest (``sha1:BASE32``) as comparable text: the algorithm in lower case and the hash in hex,
    whichever of base32, hex or base64 a writer spelt it in (two writers of one input may differ)."""
    algorithm, colon, text = (value or "").strip().partition(":")
    if not colon or not text.strip():
        return (value.strip() or None) if value else None
    algorithm, text = algorithm.strip().lower().replace("-", ""), text.strip()
    size = _digest_size(algorithm)
    for decode in (bytes.fromhex, lambda t: base64.b32decode(t.upper() + "=" * (-len(t) % 8)), base64.b64decode):
        try:
            raw = decode(text)
        except (ValueError, TypeError):
            continue
        if size is None or len(raw) == size:
            return f"{algorithm}:{raw.hex()}"
    return f"{algorithm}:{text}"


@functools.lru_cache(maxsize=64)
def _digest_size(algorithm: str) -> int | None:  # (asked per record: looked up once per name)
    try:
        return hashlib.new(algorithm).digest_size
    except (ValueError, TypeError):
        return None


def _exchange_ids(record) -> set[str]:
    """The record ids of a record's HTTP exchange: its own and those its ``WARC-Concurrent-To`` lines name (a
    request and its response name each other one way or the other, by writer)."""
    ids = [record.rec_headers.get_header("WARC-Record-ID")]
    ids += [value for name, value in record.rec_headers.headers if name.lower() == "warc-concurrent-to"]
    return {value.strip() for value in ids if value and value.strip()}


def _damage(record, payload: bytes) -> tuple[str, str] | None:
    """(reason, detail) when a record's payload (its body as sent, de-chunked) is cut short or altered, None when it
    is whole.

    A body shorter than its Content-Length is cut short, except where that header says nothing of the bytes
    stored: a chunked body (RFC 9112: Transfer-Encoding overrides it), a status that has no body (a 304's
    Content-Length is that of the page it did not send), and a record whose payload digest verified."""
    if record.rec_headers.get_header("WARC-Truncated"):
        return "warc_truncated_record", f"WARC-Truncated: {record.rec_headers.get_header('WARC-Truncated')}"
    checker = getattr(record, "digest_checker", None)
    has_digest = record.rec_headers.get_header("WARC-Payload-Digest") or record.rec_headers.get_header("WARC-Block-Digest")
    if checker is not None and has_digest and checker.passed is False:
        return "warc_corrupt_record", "digest mismatch"
    if checker is not None and has_digest and checker.passed is None:
        return "warc_truncated_record", "record ends before its declared length"
    http = record.http_headers
    length = http.get_header("Content-Length") if http else None
    if not length or not length.strip().isdigit() or http.get_header("Transfer-Encoding"):
        return None
    if checker is not None and record.rec_headers.get_header("WARC-Payload-Digest") and checker.passed:
        return None
    status = http.get_statuscode()
    if status and status.isdigit() and int(status) in NO_BODY_STATUSES:
        return None
    if len(payload) < int(length):
        return "warc_truncated_record", f"payload {len(payload)} bytes of {length.strip()}"
    return None


def _body_stream(record):
    """A record's HTTP body as sent, de-chunked (as warcio de-chunks it, leniently) but not decoded: the reader
    undoes its Content-Encoding itself (``decode_body``), where warcio's reader would hand back the raw bytes, or
    nothing, for a body that does not decode."""
    from warcio.bufferedreaders import ChunkedDataReader

    coding = (record.http_headers.get_header("Transfer-Encoding") or "") if record.http_headers else ""
    return ChunkedDataReader(record.raw_stream) if coding.strip().lower() == "chunked" else record.raw_stream


def decode_body(body: bytes, encoding: str | None, cap: int) -> bytes:
    """A body as sent -> its bytes, its Content-Encoding (``gzip, br``: applied in that order) undone strictly;
    ValueError, saying why, for one that does not decode or ends before its compressed stream does. Decoding stops
    soon after ``cap`` bytes: more than ``cap`` is over the cap. An empty body (a 304's, a 204's) is empty in any
    coding. A body in a coding not in ``DECODED_CODINGS`` (or br
    without brotli installed) comes back as sent."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip() and c.strip().lower() != "identity"]
    if not body or not codings or any(c not in DECODED_CODINGS or (c == "br" and not _has_brotli()) for c in codings):
        return body
    for coding in reversed(codings):
        if len(body) > cap:
            break
        body = _unbrotli(body, cap) if coding == "br" else _inflate(body, coding, cap)
    return body


@functools.lru_cache(maxsize=None)
def _has_brotli() -> bool:  # (asked per record: looked up once)
    import importlib.util

    return importlib.util.find_spec("brotli") is not None


def _inflate(data: bytes, coding: str, cap: int) -> bytes:
    """gzip (every member; bytes after the last whole one are ignored, as Scrapy's gunzip ignores them, unless they
    begin another member and stop short: a ValueError) or deflate
    (zlib-wrapped, else raw, as browsers read it) to at most ``cap`` + 1 bytes; ValueError if it does not decode."""
    out, first = b"", True
    while data:
        wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            try:
                out += inflater.decompress(data, cap + 1 - len(out))
            except zlib.error:
                if coding != "deflate":
                    raise
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, without the zlib wrapper
                out += inflater.decompress(data, cap + 1 - len(out))
        except zlib.error as exc:
            if first:
                raise ValueError(f"Content-Encoding {coding}: body does not decode ({exc})") from None
            break
        if len(out) > cap:
            return out
        if not inflater.eof:
            raise ValueError(f"Content-Encoding {coding}: body ends before its compressed stream does")
        if coding == "deflate":
            break
        data, first = inflater.unused_data, False
    return out


def _unbrotli(data: bytes, cap: int) -> bytes:
    """A br body to about ``cap`` bytes (brotli 1.2's output limit, which stops at a buffer's end past it, so a
    little more may come back: over the cap all the same; an older brotli decodes it whole); ValueError if it does
    not decode or ends early."""
    import brotli

    decompressor = brotli.Decompressor()
    try:
        try:
            out = decompressor.process(data, output_buffer_limit=cap + 1)
        except TypeError:  # brotli before 1.2: no output limit
            return brotli.decompress(data)
    except brotli.error as exc:
        raise ValueError(f"Content-Encoding br: body does not decode ({exc})") from None
    if len(out) <= cap and not decompressor.is_finished():
        raise ValueError("Content-Encoding br: body ends before its compressed stream does")
    return out


def _image_bytes_or_failure(payload: bytes) -> tuple[bytes | None, tuple[str, str] | None]:
    """A record offered to the image join whatever its type says: (its bytes, None) when they may be an image
    (``ValidateImages`` decides), or (None, the reject validation would give) when they are no image format at all,
    so that a stylesheet or a PDF crosses the join without its bytes."""
    try:
        imageio.open_image(payload, None).close()
    except imageio.ImageError as exc:
        if exc.reason == "not_an_image":
            # a format LAIT does not open (an SVG drawing sent as text/xml, a PSD): as ``validate_image`` says it
            fmt = imageio.sniff_format(payload)
            if fmt:
                return None, ("format_not_allowed", f"{fmt} is not a format LAIT opens")
            return None, ("image_decode_error", exc.detail)
    return payload, None


class ReadWarcRecords(beam.DoFn):
    """One WARC/ARC/WAT file -> ('page' | 'image' | 'wat' | 'page-revisits', url, record) tuples; broken records
    tagged rejected."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.records = Metrics.counter(NAMESPACE, "warc/records")
        self.skipped = Metrics.counter(NAMESPACE, "warc/records_not_used")
        self.resynced = Metrics.counter(NAMESPACE, "warc/resynced_after_corrupt_member")
        self.head_responses = Metrics.counter(NAMESPACE, "warc/head_responses")

    def process(self, path: str) -> Iterator[Any]:
        # The pairing of responses with HEAD requests, within the file: ids of HEAD exchanges read, and the rows
        # of bodiless responses held back (number of the record read -> (its exchange ids, its rows)).
        self._head_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._held: collections.OrderedDict[int, tuple[set[str], list]] = collections.OrderedDict()
        self._read = 0
        yield from self._records(path)
        yield from self._released(self._read)  # no HEAD request came for them: the rows they would have had

    def _records(self, path: str) -> Iterator[Any]:
        from warcio.exceptions import ArchiveLoadFailed

        broken_file = (ArchiveLoadFailed, zlib.error, EOFError, OSError)  # the bytes, not one record's content
        size = self._size = _file_size(path)
        end = 0  # where the last record read whole ends
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            gzipped = self._gzipped = handle.read(len(GZIP_MEMBER)) == GZIP_MEMBER
            start = 0
            while start is not None:
                begin = start  # every pass starts past the one before: no input can make the reader loop
                handle.seek(start)
                iterator = _archive_iterator(handle)
                start = record = None
                done = False  # the current record has its row
                try:
                    for record in iterator:
                        self.records.inc()
                        yield from self._rows(record, path, iterator.get_record_offset, end, broken_file)
                        done = True
                        # never before this pass's start, whatever warcio makes of the bytes
                        end = max(iterator.get_record_offset() + iterator.get_record_length(), begin)
                        if self._cut and not gzipped:
                            # Its declared end lies past the file's: every byte after its header would be its block,
                            # whole records included (a WARC cut short, then another appended to it). Go on at the next
                            # record header in those bytes; the record itself is a warc_truncated_record.
                            start = _next_warc_record(handle, max(iterator.get_record_offset(), begin) + 1)
                            end = end if start is None else start
                            break
                        if getattr(iterator.reader, "decompressor", None) is not None and iterator.next_line:
                            # More records follow in the same gzip member (``gzip a.warc``): warcio would take them
                            # for a member of their own and misplace every offset from there on. Read the member
                            # inflated, as an uncompressed WARC, then go on at its end.
                            end, record, done = iterator.get_record_offset(), None, False
                            ended = yield from self._rest_of_member(handle, path, end, broken_file)
                            if ended is not None:  # else the file ends inside the member: truncated, see below
                                start = end = ended
                            break
                        record, done = None, False
                except Exception as exc:  # noqa: BLE001 - warcio failing on the bytes of one record, whatever its error
                    # A corrupt gzip member: read on from the next whole member after this pass's start.
                    start = _next_gzip_member(handle, max(end, begin) + 1) if gzipped else None
                    unread = f" (the last {size - end} bytes, not read on)" if start is None else ""
                    if not done:  # the record being read, or the bytes where the next one should start
                        misread = isinstance(exc, MisreadMemberError)  # its "URL" is compressed bytes
                        ids = _record_ids(record) if record is not None and not misread else {}
                        detail = f"{path}@{end}{unread}: {type(exc).__name__}: {exc}"[:300]
                        yield _rejected("warc_malformed_record", detail, **ids)
                    else:  # the bytes after a record that has its rows (a line over HEADER_LINE_LIMIT there)
                        detail = f"{path}@{end}{unread}: after the record there: {type(exc).__name__}: {exc}"[:300]
                        yield _rejected("warc_malformed_record", detail)
                    if start is None:
                        return
                    self.resynced.inc()
                    end = start
        if end < size and not _only_blank_lines(path, end) and not (gzipped and _only_empty_members(path, end)):
            # warcio stops quietly at a gzip member cut short: the bytes it never parsed are the evidence.
            yield _rejected("warc_truncated_record", f"{path}@{end}: {size - end} bytes after the last whole record")

    def _rows(self, record, path: str, offset, at, broken_file: tuple) -> list:
        """A record's rows (``_record``), or its one ``warc_malformed_record`` when it cannot be read; ``at``: where
        it starts, for that reject's detail. Errors of the file's bytes (``broken_file``) are left to the caller."""
        self._bodiless: set[str] = set()
        # Why the record is cut short, and whether ``_record`` gave its rows for that (a response's or resource's).
        # In an uncompressed file it is known before its bytes are read, and they are not (``_past_the_file``).
        self._cut = None if self._gzipped else _past_the_file(record, self._size)
        self._cut_used = False
        failure = getattr(record, "header_line_failure", None)  # an HTTP header line too long (``_archive_iterator``)
        if failure is not None:
            rows = [_rejected("warc_malformed_record", f"{path}@{at}: {failure}", **_record_ids(record))]
        else:
            try:
                # get_record_offset() reads the record to its end: call it only once the payload is read.
                rows = list(self._record(record, path, offset))
            except broken_file:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad record (a status line that is no number, ...)
                detail = f"{path}@{at}: {type(exc).__name__}: {exc}"[:300]
                rows, self._bodiless = [_rejected("warc_malformed_record", detail, **_record_ids(record))], set()
        if not self._cut_used:
            self._cut = self._cut or _shortfall(record, self._gzipped)
            if self._cut:  # whatever was made of its bytes (a WAT's JSON, a revisit, ...): not the record's
                rows = [_rejected("warc_truncated_record", f"{path}@{at}: {self._cut}", **_record_ids(record))]
                self._bodiless = set()
        self._read += 1
        if self._bodiless:  # it may answer a HEAD request still to come: its rows wait for that (``_note_request``)
            self._held[self._read] = (self._bodiless, rows)
            rows = []
        return self._released(self._read - HOLD_RECORDS) + rows

    def _released(self, last: int) -> list:
        """The rows of the responses held back (``_rows``) up to record number ``last``: no HEAD request paired."""
        rows = []
        while self._held and next(iter(self._held)) <= last:
            rows += self._held.popitem(last=False)[1][1]
        return rows

    def _not_a_capture(self) -> None:
        """A response to a HEAD request: no body by definition, so no page or image was captured."""
        self.skipped.inc()
        self.head_responses.inc()

    def _note_request(self, record) -> None:
        """A request record: a HEAD request's response, held back or still to come, is no capture."""
        method = (record.http_headers.protocol if record.http_headers else None) or ""
        if method.strip().upper() != "HEAD":
            return
        exchange = _exchange_ids(record)
        for number in [n for n, (ids, _) in self._held.items() if ids & exchange]:
            del self._held[number]
            self._not_a_capture()
        for value in exchange:  # for a response after its request (a bounded memory of the latest ones)
            self._head_ids[value] = None
            if len(self._head_ids) > HEAD_IDS_KEPT:
                self._head_ids.popitem(last=False)

    def _rest_of_member(self, handle, path: str, member: int, broken_file: tuple) -> Iterator[Any]:
        """The records after the first of the gzip member at ``member`` that holds several: the member inflated as
        it is read (``_MemberStream``) and read as an uncompressed WARC. Returns (to ``yield from``) the offset where
        the member ends, or None when the file ends inside it. A reject's detail names a record in it as
        ``path@MEMBER+OFFSET``: the member's offset in the file, then the record's in the inflated member."""
        stream = _MemberStream(handle, member)
        iterator = _archive_iterator(stream)
        inside = 0  # where the last record read whole ends, in the inflated member
        for number, record in enumerate(iterator):
            if number:  # the first record was read as the member's own
                self.records.inc()
                yield from self._rows(record, path, lambda: f"{member}+{iterator.get_record_offset()}",
                                      f"{member}+{inside}", broken_file)
            inside = iterator.get_record_offset() + iterator.get_record_length()
        return stream.end

    def _record(self, record, path: str, offset) -> Iterator[Any]:
        url = record.rec_headers.get_header("WARC-Target-URI")
        kind = (record.rec_type or "").lower()  # WARC-Type as a writer spelt it: "Response" is a response
        date = _warc_date(record.rec_headers.get_header("WARC-Date"))
        if kind == "metadata" and "json" in (record.rec_headers.get_header("Content-Type") or "").lower():
            payload = record.content_stream().read(self.max_bytes + 1)  # the cap on a record holds for WAT JSON too
            if len(payload) > self.max_bytes:
                yield _rejected("too_large", f"{path}@{offset()}: WAT JSON over {self.max_bytes} bytes", page_url=url)
                return
            try:
                wat = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                yield _rejected("warc_malformed_record", f"{path}@{offset()}: WAT JSON: {exc}"[:300], page_url=url)
                return
            if not wat_of_response(wat):  # a request's or warcinfo's envelope: no page, no capture
                self.skipped.inc()
                return
            yield ("wat", url, {"json": wat, "date": date})
            return
        if kind == "request":
            self._note_request(record)
        if kind not in ("response", "resource", "revisit"):
            self.skipped.inc()
            return
        if url and NON_WEB_URL.match(url):  # dns:example.org and the like, as crawlers record them
            self.skipped.inc()
            return
        if not url or "://" not in url:
            if getattr(self, "_gzipped", False) and url and url.startswith(GZIP_MEMBER.decode("latin-1")):
                # A corrupt member that warcio went on to read as plain text: what it took for a header is
                # the next member's compressed bytes. Resynchronise there instead of reading them as records.
                raise MisreadMemberError(f"compressed bytes read as a record header ({url[:20]!r})")
            # warcio reads any line of words as an ARC header; a response without a URL is garbage.
            yield _rejected("warc_malformed_record", f"{path}@{offset()}: {kind} record without a URL ({url!r})"[:300])
            return
        url = _lower_scheme(url)  # "HTTP://..." as a page or image URL is spelt everywhere else
        if kind == "revisit":
            yield self._revisit(record, path, offset, url, date)
            return
        headers = _with_robots_lines(record.http_headers.headers) if record.http_headers else {}
        content_type = (extract.header_value(headers, "Content-Type")
                        or record.rec_headers.get_header("Content-Type") or "").strip().lower()
        if content_type.startswith("application/http"):  # a WARC response's own type: that of the HTTP message
            content_type = ""
        is_page = content_type.startswith(HTML_TYPES)
        is_image = content_type.startswith("image/")
        # Any other type (application/octet-stream, text/css, ...) is no page, and an image only if some page
        # references it as one and its bytes say so, as the spider decides by the bytes: offered to the image join,
        # where a URL no page references falls away, and with no reject of its own.
        other = bool(content_type) and not (is_page or is_image)
        body = b""  # a record cut short in an uncompressed file has none of its own to read
        if not self._cut:
            body = _body_stream(record).read(self.max_bytes + 1)
            self._cut = _shortfall(record, self._gzipped)  # (reads the rest of the record)
        # a HEAD request's response has no body, whatever its Content-Length says (one cut short is no such answer)
        if not body and kind == "response" and not self._cut:
            exchange = _exchange_ids(record)
            if exchange & self._head_ids.keys():
                self._not_a_capture()
                return
            self._bodiless = exchange  # else its request may come after it: ``_rows`` holds its rows back
        digest = _digest(record.rec_headers.get_header("WARC-Payload-Digest"))  # what a revisit refers to
        payload, reason = body, None
        if self._cut:
            reason, self._cut_used = ("warc_truncated_record", f"{path}@{offset()}: {self._cut}"), True
        elif len(body) > self.max_bytes:
            reason = ("too_large", f"{path}@{offset()}: over {self.max_bytes} bytes")
        else:
            damage = _damage(record, body)
            if damage:
                reason = (damage[0], f"{path}@{offset()}: {damage[1]}")
            else:
                try:
                    payload = decode_body(body, extract.header_value(headers, "Content-Encoding"), self.max_bytes)
                except ValueError as exc:  # as a download whose gzip body does not decode: no bytes to read
                    reason = ("warc_malformed_record", f"{path}@{offset()}: {exc}"[:300])
                else:
                    if len(payload) > self.max_bytes:
                        reason = ("too_large", f"{path}@{offset()}: over {self.max_bytes} bytes decoded")
        if not content_type:  # a response that says no type: guessed as the spider's Scrapy guesses it
            is_page = sniffed_page(url, headers, payload)
            is_image = not is_page  # bytes that are no text: an image if they decode as one (ValidateImages)
        if reason:
            if not other:
                yield _rejected(*reason, **({"page_url": page_key(url)} if is_page else {"image_url": url}))
            if not is_page:  # its candidates are told why (attach_images), not that the input has no such image
                yield ("image", url, {"failure": reason, "date": date, "digest": digest})
            return
        try:
            status = int(record.http_headers.get_statuscode()) if record.http_headers else 200
        except (TypeError, ValueError):
            if not other:
                raise  # a page's or an image's: its reject row (the caller's warc_malformed_record)
            # a record of another type has no reject of its own: the candidates that name it as an image are told
            yield ("image", url, {"failure": ("warc_malformed_record", f"{path}@{offset()}: no HTTP status")})
            return
        item = {"status": status, "headers": headers, "body": payload, "date": date, "digest": digest}
        if is_page:
            yield ("page", url, item)
        if is_image:
            yield ("image", url, item)
            return
        image_bytes, failure = _image_bytes_or_failure(payload)
        if other:  # its bytes when they may be an image, else only the reject its validation would give
            yield ("image", url, dict(item, body=image_bytes, not_image=failure))
        elif payload and image_bytes is not None:  # an image sent as text/html: a page, and an image to the join too
            yield ("image", url, item)

    def _revisit(self, record, path: str, offset, url: str, date: datetime.datetime | None) -> tuple:
        """A revisit record -> ('page-revisits' | 'image', url, item): its HTTP status and headers (those of the
        revisit's response: 304's update the original's) and what it refers to, to be resolved to that capture
        (``resolve_page_revisits``, ``attach_images``). An image's is a reject of its own when the original is
        missing; one of another type (a stylesheet) is not, as its record would not be; one of no type (a 304 says
        none) is a page's if a page capture is its original, else offered to the image join."""
        http = record.http_headers
        headers = _with_robots_lines(http.headers) if http else {}
        status = int(http.get_statuscode()) if http else None  # a status that is no number: a malformed record
        content_type = (extract.header_value(headers, "Content-Type") or "").strip().lower()
        refers_to = (record.rec_headers.get_header("WARC-Refers-To-Target-URI") or "").strip()
        revisit = {"url": url, "of": _lower_scheme(refers_to) if "://" in refers_to else url,
                   "of_date": _warc_date(record.rec_headers.get_header("WARC-Refers-To-Date")),
                   "digest": _digest(record.rec_headers.get_header("WARC-Payload-Digest")),
                   "where": f"{path}@{offset()}", "own_reject": not content_type or content_type.startswith("image/"),
                   "untyped": not content_type}
        item = {"status": status, "headers": headers, "date": date, "revisit": revisit}
        return (PAGE_REVISITS if not content_type or content_type.startswith(HTML_TYPES) else "image", url, item)


def sniffed_page(url: str, headers: dict[str, str], payload: bytes) -> bool:
    """Whether a response without a Content-Type is a page, as the spider decides for one: Scrapy guesses its type
    from the URL, then the first bytes, and a text response is parsed as a page; anything else is none."""
    from scrapy.http import Headers, TextResponse
    from scrapy.responsetypes import responsetypes

    return issubclass(responsetypes.from_args(headers=Headers(headers), url=url, body=payload), TextResponse)


def wat_of_response(wat) -> bool:
    """Whether a WAT record describes a response (or does not say): the envelopes of requests, metadata and
    warcinfo records hold no page. JSON of another shape is ``wat_candidates``' to reject."""
    envelope = wat.get("Envelope") if isinstance(wat, dict) else None
    header = envelope.get("WARC-Header-Metadata") if isinstance(envelope, dict) else None
    kind = header.get("WARC-Type") if isinstance(header, dict) else None
    return not isinstance(kind, str) or kind.strip().lower() == "response"


def _file_size(path: str) -> int:
    """The size of one input file, named literally (a local ``w [1]/a.warc.gz`` is no pattern)."""
    if "://" not in path:
        return os.path.getsize(path)
    found = [m for m in FileSystems.match([literal_pattern(path)])[0].metadata_list
             if "[" not in path or m.path == path]  # a "[" is quoted loosely (``literal_pattern``)
    if not found:
        raise FileNotFoundError(f"no such file: {path}")
    return found[0].size_in_bytes


def _archive_iterator(handle):
    """warcio's ``ArchiveIterator`` (digests checked, ARC read as WARC) that reads a record without
    ``WARC-Target-URI`` to its end without parsing its HTTP headers: warcio's own loader fails on one
    (``None.startswith``) in the middle of the iteration, which would end the file's read there. ``_record``
    then rejects it as a record without a URL, and the records after it are read."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.bufferedreaders import DecompressingBufferedReader
    from warcio.limitreader import LimitReader
    from warcio.recordloader import ArcWarcRecordLoader

    class RecordLoader(ArcWarcRecordLoader):
        def parse_record_stream(self, *args, **kwargs):
            self.header_line_failure = None
            record = super().parse_record_stream(*args, **kwargs)
            record.header_line_failure = self.header_line_failure  # ``_rows`` rejects the record for it
            return record

        def load_http_headers(self, rec_type, uri, stream, length):
            if uri is None:
                return None
            try:
                # warcio compares the type and the URL's scheme as written: a "Response" record, or one of
                # "HTTP://...", lost its HTTP headers, and so its Content-Type (both are case-insensitive)
                return super().load_http_headers((rec_type or "").lower(), _lower_scheme(uri), stream, length)
            except HeaderLineTooLongError as exc:
                if length is None:  # no declared length to read the rest of the record by: the reading ends
                    raise
                # The record's length is known: the rest of it is read by that length, and the records after it
                # as usual. The record itself is malformed. warcio's length-limited readers count a line once it
                # is read: count the bytes of this one, so the rest is read to the record's end and no further.
                while isinstance(stream, LimitReader):
                    stream.limit -= exc.read
                    stream = stream.stream
                self.header_line_failure = f"HTTP {exc}"
                return None

    class LineCappedReader(DecompressingBufferedReader):
        """warcio's reader, with every line read held to ``HEADER_LINE_LIMIT`` bytes (where warcio reads lines: the
        WARC and HTTP headers and the blank lines between records; bodies are read by length)."""

        def readline(self, length=None):
            cap = HEADER_LINE_LIMIT
            limit = cap + 1 if length is None or length < 0 or length > cap else length
            # Read piece by piece and joined once: warcio's own joins as it goes (quadratic on a long line), and,
            # asked for a limit, may stop short of it.
            pieces, size = [], 0
            while size < limit:
                self._fillbuff()
                if self.empty():
                    break
                pieces.append(self.buff.readline(limit - size))
                size += len(pieces[-1])
                if pieces[-1].endswith(b"\n"):
                    break
            if size > cap:  # (only where the caller set no lower limit of its own)
                raise HeaderLineTooLongError(f"header line over {cap} bytes (HEADER_LINE_LIMIT)", size)
            return b"".join(pieces)

    iterator = ArchiveIterator(handle, check_digests=True, arc2warc=True)
    # as the iterator's own loader (``ArchiveIterator``'s default): the HTTP status line is not checked, so
    # ``HTTP/2 200``, which browser-based crawlers write, is read
    iterator.loader = RecordLoader(verify_http=False, arc2warc=True)
    # in place of the one the iterator made (nothing read yet), on the same stream
    iterator.reader = LineCappedReader(iterator.fh, block_size=iterator.reader.block_size)
    return iterator


def _shortfall(record, gzipped: bool) -> str | None:
    """Why a record is cut short: its declared WARC Content-Length runs past the end of its gzip member, or of the
    file; None when it is whole, or declares no length. Reads the rest of its block (as warcio does, by length, to go
    on past it), memory bounded."""
    from warcio.limitreader import LimitReader

    stream = record.raw_stream  # limited to the declared length (a digest-verifying reader is one too)
    if not isinstance(stream, LimitReader):
        return None
    while stream.read(1 << 16):
        pass
    if stream.limit <= 0:
        return None
    declared = (record.rec_headers.get_header("Content-Length") or "").strip()
    return (f"WARC Content-Length {declared} runs {stream.limit} bytes past the end of the "
            f"{'gzip member' if gzipped else 'file'}")


def _past_the_file(record, size: int) -> str | None:
    """Why a record of an uncompressed file of ``size`` bytes is cut short, known before its block is read: its
    declared WARC Content-Length runs past the end of the file. warcio would take every byte after its header for
    its block, whatever records follow (``_next_warc_record`` finds those): its reader is moved to the end of the file
    instead, so they are not read as its bytes (nor read again for every such record). None when it is whole."""
    from warcio.limitreader import LimitReader

    stream = record.raw_stream  # limited to the declared length (a digest-verifying reader over one is one too)
    if not isinstance(stream, LimitReader):
        return None
    reader = stream
    while isinstance(reader, LimitReader):
        reader = reader.stream
    handle = reader.stream  # the file; the reader holds what it read of it ahead, not yet taken
    over = stream.limit - (size - (handle.tell() - reader.rem_length()))
    if over <= 0:
        return None
    if hasattr(handle, "seek"):  # (else warcio reads the rest of the file as its block)
        handle.seek(size)
        reader.buff = None
    declared = (record.rec_headers.get_header("Content-Length") or "").strip()
    return f"WARC Content-Length {declared} runs {over} bytes past the end of the file"


def _lower_scheme(url: str) -> str:
    """A URL with its scheme in lower case (schemes are case-insensitive: ``HTTP://`` is ``http://``)."""
    scheme, colon, rest = url.partition(":")
    return scheme.lower() + colon + rest if colon else url


def _record_ids(record) -> dict:
    """The ids of a reject about a whole record: its URL, as image_url for an image, else as page_url."""
    url = record.rec_headers.get_header("WARC-Target-URI")
    if not url:
        return {}
    content_type = ((record.http_headers.get_header("Content-Type") if record.http_headers else None)
                    or record.rec_headers.get_header("Content-Type") or "")
    return {"image_url": url} if content_type.lower().startswith("image/") else {"page_url": url}


class _MemberStream:
    """One gzip member of a file, inflated as it is read (a member may hold a whole WARC: memory stays bounded).

    warcio reads it as an uncompressed WARC. ``end`` is the file offset where the member ends, once read there;
    None before, or when the file ends inside the member.
    """

    def __init__(self, handle, start: int, block: int = 1 << 16):
        handle.seek(start)
        self.handle, self.block, self.inflated, self.end = handle, block, 0, None
        self.read_to = start  # the file offset after the bytes read from the handle
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # this member only: it stops at the member's end

    def tell(self) -> int:
        return self.inflated

    def read(self, size: int = -1) -> bytes:
        data = b""
        while not data and not self.inflater.eof:
            compressed = self.inflater.unconsumed_tail
            if not compressed:
                compressed = self.handle.read(self.block)
                self.read_to += len(compressed)
                if not compressed:  # the file ends inside the member
                    break
            data = self.inflater.decompress(compressed, size if size > 0 else self.block)
        if self.inflater.eof and self.end is None:
            self.end = self.read_to - len(self.inflater.unused_data)
        self.inflated += len(data)
        return data


def _next_gzip_member(handle, offset: int, block: int = 1 << 20, probe: int = 1 << 12) -> int | None:
    """The offset of the first gzip member at or after ``offset`` whose start inflates to text, or None."""
    handle.seek(offset)
    data, at, eof = b"", 0, False
    while True:
        found = data.find(GZIP_MEMBER, at)
        if found != -1 and (eof or len(data) - found >= probe):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                if inflater.decompress(data[found:found + probe], 64)[:1].isalpha():  # WARC/..., or an ARC URL line
                    return offset + found
            except zlib.error:
                pass
            at = found + 1
            continue
        if eof:
            return None
        keep = found if found != -1 else max(at, len(data) - len(GZIP_MEMBER) + 1)
        more = handle.read(block)
        data, offset, at, eof = data[keep:] + more, offset + keep, 0, not more


WARC_VERSION_LINE = re.compile(rb"WARC/1\.[0-9]\r?\n")
BLANK_LINE = re.compile(rb"\r?\n\r?\n")
RECORD_HEADER_NAMES = frozenset({b"warc-type", b"warc-record-id", b"content-length"})  # those every record has


def _next_warc_record(handle, offset: int, block: int = 1 << 12, probe: int = 1 << 16) -> int | None:
    """The offset of the first WARC record header at or after ``offset`` in an uncompressed file, or None: a
    ``WARC/1.x`` line (at a line's start or not: a record cut short ends anywhere) followed by a header block, ended
    by a blank line within ``probe`` bytes, that names the record's type, id and length, as a record's must; other
    text that says ``WARC/1.0`` is passed over, in time linear in the bytes read however often it does. (Text of a
    payload that holds a whole record header, a WARC served as a page, would be read as one: the reader only looks
    for one after a record cut short, where nothing better is known.)"""
    handle.seek(offset)
    data, at, eof = b"", 0, False
    blank, blank_from = None, None  # the first blank line in ``data`` at or after ``blank_from`` (None: none)
    while True:
        found = WARC_VERSION_LINE.search(data, at)
        if found:
            start, header = found.start(), found.end()
            if blank_from is None or (blank is not None and blank.start() < header):  # (else still the first)
                blank, blank_from = BLANK_LINE.search(data, header), header
            ends = blank.start() if blank is not None else None  # where its header block ends
            if ends is None and not eof and len(data) - start < probe:
                pass  # its block may end in the bytes still to read
            elif ends is None or ends - start > probe or data.startswith((b"\r", b"\n"), header):
                at = start + 1  # no header block, or an empty one
                continue
            elif _names_a_record(data[header:ends]):
                return offset + start
            else:
                at = ends  # nor does a WARC/1.x line inside the block: what follows it there are some of these lines
                continue
        if eof:
            return None
        keep = found.start() if found else max(at, len(data) - len(b"WARC/1.0\r\n"))  # a line the block cuts
        more = handle.read(block)
        block = min(2 * block, 1 << 20)  # small reads first: after a record cut short, the next one is often near
        data, offset, at, eof, blank_from = data[keep:] + more, offset + keep, 0, not more, None


def _names_a_record(block: bytes) -> bool:
    """Whether a WARC header block (the lines after its version line) names the record's type, id and length (a
    number)."""
    fields = {}
    for line in re.split(rb"\r?\n", block):
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return RECORD_HEADER_NAMES <= fields.keys() and fields[b"content-length"].isdigit()


def _only_blank_lines(path: str, offset: int, limit: int = 1 << 16) -> bool:
    """Whether a file holds nothing but blank lines after ``offset`` (uncompressed WARCs end with CRLFs)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.seek(offset)
        tail = handle.read(limit + 1)
    return len(tail) <= limit and not tail.strip()


def _only_empty_members(path: str, offset: int, limit: int = 1 << 16) -> bool:
    """Whether a file holds nothing after ``offset`` but whole gzip members of blank lines or of nothing (a
    ``.warc.gz`` of an empty file, or one that ends with an empty member): no record was cut short there."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.seek(offset)
        tail = handle.read(limit + 1)
    if len(tail) > limit or not tail:
        return False
    while tail:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            text = inflater.decompress(tail, limit)
        except zlib.error:
            return False
        if not inflater.eof or text.strip():
            return False
        tail = inflater.unused_data
    return True


def page_candidates(element, formats: tuple[str, ...] = images.DEFAULT_FORMATS, captures: bool = False,
                    url_length_limit: int = URL_LENGTH_LIMIT) -> Iterator[Any]:
    """An HTML record -> its candidates (as the spider finds them) and tagged rejected references. ``formats``:
    the run's image formats, which choose among a ``<picture>``'s sources as in the spider. With ``captures``,
    also the page's capture, tagged ``CAPTURES``, when its HTML was read (``resolve_page`` weighs them): a 2xx
    response with a body (a 204's is ``http_204``, as a status without a page)."""
    _, url, item = element
    url = page_key(url)  # every row of a page in the spelling the crawl requests it (``page_key``), as the spider's
    too_long = url_too_long(url, url_length_limit)
    if too_long:
        yield _rejected(*too_long, page_url=url)
        return
    if not has_content(item["status"]):
        yield _rejected(f"http_{item['status']}", "status in the WARC record", page_url=url)
        return
    try:
        page = extract.parse_page(item["body"], url, item["headers"], formats)
    except Exception as exc:  # noqa: BLE001 - a page the extractor cannot handle is a reject, not a failed job
        yield _rejected("parse_error", f"{type(exc).__name__}: {exc}"[:300], page_url=url)
        return
    if captures:
        yield _capture(url, item.get("date"), page.opt_out, item.get("digest"))
    for row in page.rejects:
        yield _rejected(row["reason"], row.get("detail"), **_ids(row))
    for candidate in page.candidates:
        if page.opt_out:
            yield _rejected(page.opt_out, "page opted out", **_ids(candidate))
        else:
            yield candidate


def _member(parent: dict, key: str, kind: type = dict):
    """A WAT JSON member of the expected type (an empty one when absent); ValueError for another type."""
    value = parent.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{key} is {type(value).__name__}, not {kind.__name__}")
    return value


def _wat_text(value) -> str | None:
    """A WAT text field: a string, or a number as text; other types are ignored."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return extract.normalize_text(str(value))


def wat_candidates(element, captures: bool = False, url_length_limit: int = URL_LENGTH_LIMIT) -> Iterator[Any]:
    """A WAT metadata record -> candidates from its ``IMG@/src`` links (no figcaption or page text there).

    The record of a response whose status (``Response-Message``) is not 2xx is one ``http_<status>`` reject, as a
    WARC response of that status, and no capture; an envelope of a request or of warcinfo gives nothing. Link
    URLs resolve against the page URL as in ``parse_page``; JSON of an unexpected shape is a
    ``warc_malformed_record`` reject (the whole record, or one link). With ``captures``, also the page's
    capture (its WARC-Date: the envelope's, else the record's), tagged ``CAPTURES``.
    """
    _, url, item = element
    page_url = url
    try:
        record = item["json"]
        if not isinstance(record, dict) or not isinstance(record.get("Envelope"), dict):
            raise ValueError("no Envelope object")
        envelope = record["Envelope"]
        warc_header = _member(envelope, "WARC-Header-Metadata")
        target = warc_header.get("WARC-Target-URI")
        page_url = page_key(target if isinstance(target, str) and target else url)  # as page_candidates spells it
        if not wat_of_response(record):  # ReadWarcRecords skips (and counts) these before they get here
            return
        response = _member(_member(envelope, "Payload-Metadata"), "HTTP-Response-Metadata")
        status = _member(response, "Response-Message").get("Status", 200)  # a WAT without one: 200, as before
        if isinstance(status, bool) or not str(status).strip().isdigit():
            raise ValueError(f"Response-Message Status is {str(status)[:40]!r}, not a number")
        status = int(str(status).strip())
        headers = _member(response, "Headers")
        html_meta = _member(response, "HTML-Metadata")
        head = _member(html_meta, "Head")
        metas = _member(head, "Metas", list)
        links = _member(html_meta, "Links", list)
    except ValueError as exc:
        yield _rejected("warc_malformed_record", f"WAT: {exc}"[:300], page_url=page_url)
        return
    too_long = url_too_long(page_url, url_length_limit)
    if too_long:
        yield _rejected(*too_long, page_url=page_url)
        return
    if not has_content(status):  # as a WARC response of that status: a reject, and no capture whose HTML was read
        yield _rejected(f"http_{status}", "status in the WAT record", page_url=page_url)
        return
    title = _wat_text(head.get("Title")) or None
    lang = extract.normalize_text((extract.header_value(headers, "Content-Language") or "").split(",")[0]) or None
    directives = [m["content"] for m in metas if isinstance(m, dict) and isinstance(m.get("content"), str)
                  and str(m.get("name") or "").lower() in extract.ROBOTS_META_NAMES]
    opt_out = extract.opt_out_reason(directives + [extract.header_value(headers, "X-Robots-Tag") or ""])
    if captures:
        captured, digest = warc_header.get("WARC-Date"), warc_header.get("WARC-Payload-Digest")
        yield _capture(page_url, (isinstance(captured, str) and _warc_date(captured)) or item.get("date"), opt_out,
                       _digest(digest) if isinstance(digest, str) else None)  # the described response's payload
    spelling_of: dict[tuple, str] = {}  # (url_key, alt, title) -> the image URL as the page first spells it
    for link in links:
        if not isinstance(link, dict):
            yield _rejected("warc_malformed_record", f"WAT link is {type(link).__name__}, not dict", page_url=page_url)
            continue
        if link.get("path") != "IMG@/src" or not link.get("url"):
            continue
        raw = link["url"]
        alt = _wat_text(link.get("alt"))
        title_text = _wat_text(link.get("title")) or None
        if not isinstance(raw, str):
            yield _rejected("warc_malformed_record", f"WAT link url is {type(raw).__name__}", page_url=page_url)
            continue
        if raw.strip().lower().startswith("data:"):
            yield _rejected("data_uri", raw[:40], page_url=page_url)
            continue
        try:
            image_url = extract.resolve_url(page_url, raw.strip())
        except ValueError as exc:
            yield _rejected("invalid_url", f"{raw[:200]}: {exc}", page_url=page_url)
            continue
        ref = {"page_url": page_url, "image_url": image_url, "alt": alt, "title": title_text,
               "candidate_id": extract.candidate_id(page_url, image_url, alt, title_text)}
        if urlsplit(image_url).scheme not in ("http", "https"):
            yield _rejected("unsupported_scheme", None, **_ids(ref))
        elif alt == "":
            yield _rejected("decorative_image", None, **_ids(ref))
        elif not alt and not title_text:
            yield _rejected("no_text", None, **_ids(ref))
        else:
            # parse_page's first-spelling rule: a later reference that spells the image otherwise (``%c3%a9``,
            # ``%C3%A9``, ``é``) with the same text repeats the first one's id, so the WAT and the WARC reading of a
            # page give the same ids (one candidate, the rest duplicate_candidate rejects)
            first_spelling = spelling_of.setdefault((extract.url_key(image_url), alt, title_text), image_url)
            ref["candidate_id"] = extract.candidate_id(page_url, first_spelling, alt, title_text)
            if opt_out:
                yield _rejected(opt_out, "page opted out", **_ids(ref))
            else:
                yield dict(ref, figcaption=None, page_lang=lang, page_title=title, page_text=None)


def _with_robots_lines(lines) -> dict:
    """A response's headers from its (name, value) lines: ``header_dict``'s (lower-case names, repeated lines
    joined), except ``x-robots-tag``, kept as the list of its lines, each read whole (``extract.opt_out_reason``'s
    ``lines``: a user agent's name before a line scopes that line only), as the URL crawl reads them."""
    headers = header_dict(lines)
    robots = extract.robots_tag_lines(lines)
    if robots:
        headers["x-robots-tag"] = robots
    return headers


def _ids(row: dict) -> dict:
    return {k: row.get(k) for k in ("candidate_id", "page_url", "image_url")}


def page_key(url: str) -> str:
    """The page a capture or candidate belongs to: its URL in the one spelling the spider requests and records
    pages in (``extract.url_key``: ``http://host`` is ``http://host/``, ``%c3%a9`` is ``%C3%A9``). Rows carry it as
    their page_url, so two spellings of one page in the input give one set of candidate ids."""
    return extract.url_key(url)


def url_too_long(url: str, limit: int = URL_LENGTH_LIMIT) -> tuple[str, str] | None:
    """The spider's ``url_too_long`` reject (reason, detail) for a URL longer than ``limit`` (the run's
    ``URLLENGTH_LIMIT``; 0 is none, as to the spider) as it would be requested (``safe_url_string``: spaces and
    non-ASCII percent-encoded), else None."""
    from w3lib.url import safe_url_string

    if not limit:
        return None
    try:
        requested = safe_url_string(url)
    except ValueError:
        requested = url
    if len(requested) > limit:
        return "url_too_long", f"{len(requested)} characters, over URLLENGTH_LIMIT {limit}"
    return None


def _capture(url: str, date: datetime.datetime | None, opt_out: str | None,
             digest: str | None = None) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(CAPTURES, (page_key(url), (date, opt_out, digest)))


def _capture_digest(capture: tuple) -> str | None:
    """A capture's payload digest (``CAPTURES``), None when not known (a 2-tuple, as the part files give)."""
    return capture[2] if len(capture) > 2 else None


def _capture_order(capture: tuple) -> tuple:
    """Orders (date, opt-out[, digest]) captures: the latest WARC-Date last (no date is oldest), at a tie the
    opt-out."""
    date, opt_out = capture[0], capture[1]
    return date is not None, date or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc), opt_out or ""


def latest_capture(captures) -> tuple:
    """The capture whose wish counts, of (date, opt-out[, digest]) captures of one page (a Beam combiner); the
    digest only breaks a tie, so every runner gives the same."""
    return max(captures, key=lambda c: (*_capture_order(c), _capture_digest(c) or ""), default=(None, None, None))


def later_opt_out_detail(date: datetime.datetime | None) -> str:
    """The detail of a candidate withdrawn by the opt-out of its page's latest capture, made at ``date``."""
    return f"{LATER_OPT_OUT_DETAIL} ({date.isoformat().replace('+00:00', 'Z')})" if date else LATER_OPT_OUT_DETAIL


def resolve_page(element) -> Iterator[Any]:
    """(page key, {candidates, captures}) -> one row per candidate_id (a page stored twice yields it once), kept
    unless the page's latest capture opted out: then its opt-out reason, as the owner's latest wish."""
    _, grouped = element
    latest = latest_capture(grouped["captures"])
    date, opt_out = latest[0], latest[1]
    seen = set()
    for candidate in grouped["candidates"]:
        if candidate["candidate_id"] in seen:
            yield _rejected(output.DUPLICATE, DUPLICATE_DETAIL, **_ids(candidate))
        elif opt_out:
            yield _rejected(opt_out, later_opt_out_detail(date), **_ids(candidate))
        else:
            yield candidate
        seen.add(candidate["candidate_id"])


def _may_be_original(revisit: dict, date: datetime.datetime | None, digest: str | None,
                     revisit_date: datetime.datetime | None) -> bool:
    """Whether a capture of the URL a revisit refers to, made at ``date`` with payload ``digest`` (None: not known),
    is the one it refers to: its WARC-Refers-To-Date and payload digest where both sides say them, else any capture
    not made after the revisit."""
    if revisit["digest"] and digest and digest != revisit["digest"]:
        return False
    if revisit["of_date"] and date:
        return date == revisit["of_date"]
    return not (date and revisit_date and date > revisit_date)


def _revisit_missing(revisit: dict) -> tuple[str, str]:
    """The reject (reason, detail) of a revisit whose original is not among the records read with it."""
    when = revisit["of_date"].isoformat().replace("+00:00", "Z") if revisit["of_date"] else "no WARC-Refers-To-Date"
    return REVISIT_MISSING, f"{revisit['where']}: revisit of {revisit['of']} ({when}), not in the input"[:300]


def _revisit_order(item: dict) -> tuple:
    """Orders revisits by WARC-Date (no date first), then where they were read: resolved in this order, a revisit of
    a revisit finds the capture that one resolved to."""
    date = item["date"]
    return date is not None, date or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc), item["revisit"]["where"]


def resolve_page_revisits(element, url_length_limit: int = URL_LENGTH_LIMIT) -> Iterator[Any]:
    """(page key, {captures, revisits}) -> a capture for each revisit of the page whose original is among its
    captures (those whose HTML was read, matched by date and payload digest: ``_may_be_original``): made at the
    revisit's WARC-Date, with the opt-out of its own ``X-Robots-Tag`` or else the original's (the HTML is the same;
    a 304's headers add to the original's). Revisits resolve in date order, and one of this URL then counts as a
    capture of it for the later ones (a revisit of a revisit); a chain through another URL's revisit is not here.

    It gives no candidates: they would be the original's again, kept once (``resolve_page``). A revisit whose
    original is missing is a ``revisit_original_missing`` reject, one of a page whose HTML was stored as another
    URL's a ``revisit_of_other_page`` reject (its candidates are not read under its own URL), and one of no type
    without a page original goes on to the image join (tagged ``UNTYPED``). A revisit whose own header opts out is
    an opt-out capture of its date whatever its original: with none found, too."""
    key, grouped = element
    captures = list(grouped["captures"])  # (date, opt-out, digest): a page has few
    for _, url, item in sorted(grouped["revisits"], key=lambda r: _revisit_order(r[2])):
        revisit, own = item["revisit"], page_key(url)
        found = [c for c in captures if _may_be_original(revisit, c[0], _capture_digest(c), item["date"])]
        own_opt_out = extract.opt_out_reason((), lines=extract.robots_tag_lines(item["headers"]))
        # a 304 (or no HTTP headers) updates the original; another status is a response of that status
        answered = item["status"] in (None, 304) or has_content(item["status"])
        if not found and revisit["untyped"]:
            yield beam.pvalue.TaggedOutput(UNTYPED, ("image", url, item))
            if own_opt_out and answered:  # a page's 304 too, perhaps: its wish holds for the page's candidates
                yield (own, (item["date"], own_opt_out, revisit["digest"]))
            continue
        too_long = url_too_long(own, url_length_limit)
        if too_long:
            yield _rejected(*too_long, page_url=own)
            continue
        if not answered:
            yield _rejected(f"http_{item['status']}", "status in the WARC revisit record", page_url=own)
            continue
        if not found:
            yield _rejected(*_revisit_missing(revisit), page_url=own)
            if own_opt_out:
                yield (own, (item["date"], own_opt_out, revisit["digest"]))
            continue
        REVISITS_RESOLVED.inc()
        original = latest_capture(found)
        if own != page_key(revisit["of"]):
            yield _rejected(REVISIT_OTHER_PAGE, f"{revisit['where']}: the HTML of {revisit['of']}"[:300], page_url=own)
        capture = (item["date"], own_opt_out or original[1], revisit["digest"] or _capture_digest(original))
        if own == key:
            captures.append(capture)
        yield (own, capture)


class DownloadMissingImages(beam.DoFn):
    """Fetch the images no input record holds, with the crawl's politeness and safety rules."""

    def __init__(self, fetch_options: dict[str, Any]):
        self.fetch_options = fetch_options
        self.downloaded = Metrics.counter(NAMESPACE, "warc/images_downloaded")
        self.failed = Metrics.counter(NAMESPACE, "warc/images_download_failed")

    def setup(self) -> None:
        from crawler.fetch import PoliteFetcher

        self.fetcher = PoliteFetcher(**self.fetch_options)

    def process(self, job: dict) -> Iterator[dict]:
        from crawler.fetch import FetchError

        if job["image"] is not None or job.get("failure"):
            yield job
            return
        try:
            fetched = self.fetcher.fetch(job["url"])
        except (FetchError, netguard.RefusedURL) as exc:
            self.failed.inc()
            yield dict(job, failure=(exc.reason, exc.detail))
            return
        self.downloaded.inc()
        yield dict(job, image={"status": fetched.status, "headers": _with_robots_lines(fetched.header_lines),
                               "body": fetched.body,
                               "date": datetime.datetime.now(datetime.timezone.utc)})


def image_key(url: str) -> str:
    """The spelling an image URL is joined on (``extract.url_key``: as Scrapy requests it, escapes in upper case).
    A record holds the URL as it was requested (``/gr%C3%B6%C3%9Fe%201.jpg``, or ``%c3`` from some clients); a
    page may write ``/größe 1.jpg``."""
    return extract.url_key(url)


def attach_images(element, download: bool, url_length_limit: int = URL_LENGTH_LIMIT) -> Iterator[Any]:
    """(image key, {candidates, images[, forwards]}) -> one job per image: its candidates and its bytes if the input
    has them.

    Without a usable record, the candidates take the reason a record of the image was rejected for: too_large
    always (a download has the same cap), another (a truncated record) when downloads are off.

    A revisit among the image's records stands for its original, a record of the same URL (``_original_of``),
    with the revisit's date and headers (``_resolved``); they resolve in date order, a resolved one standing as a
    capture for the later ones (a revisit of a revisit). One whose original is missing is a
    ``revisit_original_missing`` reject (an image's: ``_attach``) and, without downloads, its candidates' reason.

    Revisits of other URLs cross a second, small pair of joins, so that an original's bytes go only where they are
    used: the originals they refer to (``forwards``: those revisits, keyed by the URL they refer to) are sent once
    each (tagged ``ORIGINALS``); an image with such revisits sends each, saying whether it has candidates (tagged
    ``REQUESTS``), to ``forward_originals``, and waits for the answers (tagged ``PENDING``, with only its best
    record: ``attach_forwarded``). A revisit of another URL resolves to that URL's records and its revisits of
    itself; one of another URL's revisit of a third is missing (that would take a join per link)."""
    key, grouped = element
    records = list(grouped["images"])
    originals = [r for r in records if "revisit" not in r]
    pool = list(originals)  # the captures a revisit may refer to: the originals, then the resolved revisits too
    resolved, missing, waiting = [], [], []
    for revisit in sorted((r for r in records if "revisit" in r), key=_revisit_order):
        if image_key(revisit["revisit"]["of"]) != key:
            waiting.append(revisit)
            continue
        original = _original_of(revisit, pool)
        if original is None:
            missing.append(revisit)
        else:
            REVISITS_RESOLVED.inc()
            resolved.append(_resolved(original, revisit))
            pool.append(resolved[-1])
    referenced: list[dict] = []  # each once, however many revisits refer to it
    for revisit in grouped.get("forwards", ()):
        original = _original_of(revisit, pool)
        if original is not None and not any(original is r for r in referenced):
            referenced.append(original)
    for original in referenced:
        yield beam.pvalue.TaggedOutput(ORIGINALS, (key, original))
    candidates = list(grouped["candidates"])
    if waiting:
        for revisit in waiting:
            request = {"to": key, "revisit": revisit, "bytes": bool(candidates)}
            yield beam.pvalue.TaggedOutput(REQUESTS, (image_key(revisit["revisit"]["of"]), request))
        usable = [r for r in pool if _usable(r)] if candidates else []  # no candidates: only the rejects are left
        kept = ([max(usable, key=_image_record_order)] if usable else []) + [r for r in originals if "failure" in r]
        job = {"candidates": candidates, "records": kept, "missing": missing, "waiting": waiting}
        yield beam.pvalue.TaggedOutput(PENDING, (key, job))
        return
    yield from _attach(candidates, originals + resolved, missing, download, url_length_limit)


def forward_originals(element) -> Iterator[tuple[str, dict]]:
    """(key of a URL other URLs' revisits refer to, {originals, requests}) -> for each request whose original is
    there (``_original_of``, as ``attach_images`` chose it), (the revisit's image key, {where, record}): the original
    resolved for it, or None in place of the record when the revisit's URL has no candidates to use its bytes (it
    only learns that it was found). A request whose original is not there gets nothing: it is missing."""
    _, grouped = element
    originals = list(grouped["originals"])
    for request in grouped["requests"]:
        revisit = request["revisit"]
        original = _original_of(revisit, originals)
        if original is not None:
            record = _resolved(original, revisit) if request["bytes"] else None
            yield request["to"], {"where": revisit["revisit"]["where"], "record": record}


def attach_forwarded(element, download: bool, url_length_limit: int = URL_LENGTH_LIMIT) -> Iterator[Any]:
    """(image key, {pending, forwarded}) -> the job of an image that waited for the originals of its revisits of
    other URLs (``attach_images``): those forwarded to it join its records; the rest are missing."""
    _, grouped = element
    forwarded = {f["where"]: f["record"] for f in grouped["forwarded"]}
    for job in grouped["pending"]:
        records, missing = list(job["records"]), list(job["missing"])
        for revisit in job["waiting"]:
            if revisit["revisit"]["where"] in forwarded:
                REVISITS_RESOLVED.inc()
                if forwarded[revisit["revisit"]["where"]] is not None:
                    records.append(forwarded[revisit["revisit"]["where"]])
            else:
                missing.append(revisit)
        yield from _attach(job["candidates"], records, missing, download, url_length_limit)


def _forward_request(element) -> list[tuple[str, dict]]:
    """An image join record -> (the key of the URL it refers to, it) for a revisit of another URL, else nothing."""
    _, url, item = element
    revisit = item.get("revisit")
    if revisit is None or image_key(revisit["of"]) == image_key(url):
        return []
    return [(image_key(revisit["of"]), item)]


def _usable(record: dict) -> bool:
    """Whether an image's record holds a capture of it to use: not rejected, 2xx with a body (``has_content``)."""
    return "failure" not in record and has_content(record["status"])


def _original_of(revisit: dict, originals: list[dict]) -> dict | None:
    """The record (or rejected record) a revisit refers to among ``originals``, records of the URL it names
    (``_may_be_original``): the latest usable one, else a rejected one (the revisit is as damaged), else one of
    another status; None when there is none."""
    found = [r for r in originals if _may_be_original(revisit["revisit"], r.get("date"), r.get("digest"), revisit["date"])]
    records = [r for r in found if "failure" not in r]
    if records:
        return max(records, key=lambda r: (has_content(r["status"]), _image_record_order(r)))
    return min((r for r in found if "failure" in r), key=lambda r: r["failure"], default=None)


def _resolved(original: dict, revisit: dict) -> dict:
    """A revisit resolved to its original: the original's bytes, captured at the revisit's date with its response's
    status and headers. A 304's (or a revisit without HTTP headers) keep the original's status, and update its
    headers as a 304 updates a cache's (RFC 9111); a 200's are the whole response's, its type the original's when
    it says none. A rejected original leaves the revisit as rejected, at its date, unless the revisit's own header
    opts out (``_opt_out_capture``)."""
    if "failure" in original:
        return _opt_out_capture(revisit, tuple(original["failure"])) or dict(original, date=revisit["date"])
    if revisit["status"] in (None, 304):
        status, headers = original["status"], {**original["headers"], **revisit["headers"]}
    else:
        kept = {k: v for k, v in original["headers"].items() if k == "content-type"}
        status, headers = revisit["status"], {**kept, **revisit["headers"]}
    return dict(original, status=status, headers=headers, date=revisit["date"])


def _opt_out_capture(revisit: dict, reason: tuple[str, str]) -> dict | None:
    """A revisit whose own ``X-Robots-Tag`` opts out, as a capture of its date with that wish and no bytes
    (``reason``: why, should a later 200 revisit of it replace its headers), whatever its original; None for one
    that does not opt out, or answered with another status (no capture)."""
    status = revisit["status"]
    if status not in (None, 304) and not has_content(status):
        return None
    if not extract.opt_out_reason((), image=True, lines=extract.robots_tag_lines(revisit["headers"])):
        return None
    return {"status": 200 if status in (None, 304) else status, "headers": revisit["headers"], "body": None,
            "date": revisit["date"], "digest": revisit["revisit"]["digest"], "not_image": reason}


def _attach(candidates: list[dict], records: list[dict], missing: list[dict], download: bool,
            url_length_limit: int) -> Iterator[Any]:
    """An image's job (``attach_images``) from its records, revisits resolved, and its revisits whose original is
    missing: each a ``revisit_original_missing`` reject if it is an image's (whether a page shows it or not, as a
    truncated image record is a reject), and a reason for the candidates as a rejected record's; one whose own
    header opts out is also that opt-out's capture at its date (``_opt_out_capture``)."""
    for revisit in missing:
        if revisit["revisit"]["own_reject"]:
            yield _rejected(*_revisit_missing(revisit["revisit"]), image_url=revisit["revisit"]["url"])
    if not candidates:
        return  # an image record no page refers to is not a candidate
    records = records + [c for c in (_opt_out_capture(r, _revisit_missing(r["revisit"])) for r in missing) if c]
    # A download asks for the URL as a page wrote it (the fetcher spells it as Scrapy does); the key's upper-case
    # escapes are for joining only, and a server may tell %c3 from %C3. One spelling for all: the least.
    url = min(c["image_url"] for c in candidates)
    too_long = url_too_long(url, url_length_limit)  # never requested by the spider, in the input or not
    if too_long:
        yield {"url": url, "candidates": candidates, "image": None, "failure": too_long}
        return
    usable = [r for r in records if _usable(r)]  # a 204 (no content) is no capture of the image
    # The image's records that ReadWarcRecords rejected (too_large, truncated, ...), with their reasons
    refused = sorted([r["failure"] for r in records if "failure" in r]
                     + [_revisit_missing(r["revisit"]) for r in missing])
    over_cap = [reason for reason in refused if reason[0] == "too_large"]
    failure = None
    if not usable and over_cap:  # a download would meet the same cap
        failure = over_cap[0]
    elif not usable and not download:
        failure = refused[0] if refused else ("image_not_in_warc", "no image record and downloads are off")
    # The image's latest capture, as a page follows its latest (``_capture_order``); a join's order is none.
    image = max(usable, key=_image_record_order) if usable else None
    yield {"url": url, "candidates": candidates, "image": image, "failure": failure}


def _image_record_order(record: dict) -> tuple:
    """Orders an image's usable records as a page's captures are ordered (``_capture_order``: the latest WARC-Date
    last, no date oldest, at a tie the opt-out), then by status and bytes, so every runner picks the same one."""
    opt_out = extract.opt_out_reason((), image=True, lines=extract.robots_tag_lines(record["headers"]))
    return (*_capture_order((record.get("date"), opt_out)), record["status"], record.get("body") or b"",
            (record.get("not_image") or ("", ""))[1])


class ValidateImages(beam.DoFn):
    """Decode-check each image once and emit every candidate that shows it (or a reject per candidate)."""

    def __init__(self, min_side: int, max_aspect: float, formats: tuple[str, ...], max_pixels: int):
        self.check_options = dict(min_side=min_side, max_aspect=max_aspect, formats=formats, max_pixels=max_pixels)
        self.validated = Metrics.counter(NAMESPACE, "image/validated")

    def process(self, job: dict) -> Iterator[Any]:
        failure, item, result = job.get("failure"), job.get("image"), None
        if failure is None:
            opt_out = extract.opt_out_reason((), image=True, lines=extract.robots_tag_lines(item["headers"]))
            if opt_out:
                failure = (opt_out, "X-Robots-Tag on the image")
            elif item.get("body") is None:  # a record whose bytes are no image format (``_image_bytes_or_failure``)
                failure = tuple(item["not_image"])
            else:
                check = images.validate_image(item["body"], **self.check_options)
                if not check.ok:
                    failure = (check.reason, check.detail)
                else:
                    self.validated.inc()
                    result = {"image_id": extract.image_id(item["body"]), "image_bytes": item["body"],
                              "width": check.width, "height": check.height, "format": check.format,
                              "num_bytes": len(item["body"]), "http_status": item["status"],
                              "content_type": extract.header_value(item["headers"], "Content-Type"),
                              "fetched_at": item["date"], "source": "warc"}
        for candidate in job["candidates"]:
            if failure:
                caption = candidate.get("alt") or candidate.get("title")
                yield _rejected(failure[0], failure[1], caption=caption, **_ids(candidate))
            else:
                yield dict(candidate, **result)


class ReadWarcCandidates(beam.PTransform):
    """File paths -> (candidates, rejected, each page's latest capture) PCollections."""

    def __init__(self, max_bytes: int, download: bool, fetch_options: dict, check_options: dict,
                 url_length_limit: int = URL_LENGTH_LIMIT):
        super().__init__()
        self.max_bytes, self.download = max_bytes, download
        self.fetch_options, self.check_options = fetch_options, check_options
        self.url_length_limit = url_length_limit

    def expand(self, files):
        limit = self.url_length_limit
        records = files | "ReadWarcRecords" >> beam.ParDo(ReadWarcRecords(self.max_bytes)).with_outputs(REJECTED, main="records")
        kinds = records.records | "SplitByKind" >> beam.Partition(
            lambda r, n: {"page": 0, "image": 1, "wat": 2, PAGE_REVISITS: 3}[r[0]], 4)
        from_pages = kinds[0] | "ExtractCandidates" >> beam.FlatMap(
            page_candidates, formats=self.check_options["formats"], captures=True, url_length_limit=limit).with_outputs(
            REJECTED, CAPTURES, main="candidates")
        from_wat = kinds[2] | "ExtractWatCandidates" >> beam.FlatMap(
            wat_candidates, captures=True, url_length_limit=limit).with_outputs(REJECTED, CAPTURES, main="candidates")
        captures = (from_pages[CAPTURES], from_wat[CAPTURES]) | "MergeCaptures" >> beam.Flatten()
        # A page's revisits become captures of its own, found by the (small) captures of the page they refer to.
        page_revisits = (
            {"captures": captures, "revisits": kinds[3] | "KeyPageRevisits" >> beam.Map(
                lambda r: (page_key(r[2]["revisit"]["of"]), r))}
            | "JoinPageRevisits" >> beam.CoGroupByKey()
            | "ResolvePageRevisits" >> beam.FlatMap(resolve_page_revisits, url_length_limit=limit).with_outputs(
                REJECTED, UNTYPED, main="captures"))
        latest = ((captures, page_revisits.captures)
                  | "MergeRevisitCaptures" >> beam.Flatten()
                  | "LatestCapturePerPage" >> beam.CombinePerKey(latest_capture))
        by_page = ((from_pages.candidates, from_wat.candidates)
                   | "MergeCandidates" >> beam.Flatten()
                   | "KeyByPage" >> beam.Map(lambda c: (page_key(c["page_url"]), c)))
        unique = (
            {"candidates": by_page, "captures": latest}
            | "GroupByPage" >> beam.CoGroupByKey()
            | "ResolveCaptures" >> beam.FlatMap(resolve_page).with_outputs(REJECTED, main="candidates")
        )
        by_image = unique.candidates | "KeyByImageUrl" >> beam.Map(lambda c: (image_key(c["image_url"]), c))
        image_side = (kinds[1], page_revisits[UNTYPED]) | "MergeImageRecords" >> beam.Flatten()
        image_records = image_side | "KeyImageRecords" >> beam.Map(lambda r: (image_key(r[1]), r[2]))
        forwards = image_side | "KeyRevisitsByOriginal" >> beam.FlatMap(_forward_request)
        attached = (
            {"candidates": by_image, "images": image_records, "forwards": forwards}
            | "JoinImages" >> beam.CoGroupByKey()
            | "AttachImages" >> beam.FlatMap(attach_images, download=self.download, url_length_limit=limit).with_outputs(
                REJECTED, PENDING, REQUESTS, ORIGINALS, main="jobs")
        )
        # The originals revisits of other URLs refer to (once each) meet those revisits, which say whether their URL
        # has candidates: the bytes go on only to those that do. No other record crosses these two joins.
        answers = (
            {"originals": attached[ORIGINALS], "requests": attached[REQUESTS]}
            | "JoinReferredOriginals" >> beam.CoGroupByKey()
            | "ForwardOriginals" >> beam.FlatMap(forward_originals)
        )
        forwarded = (
            {"pending": attached[PENDING], "forwarded": answers}
            | "JoinForwardedOriginals" >> beam.CoGroupByKey()
            | "AttachForwarded" >> beam.FlatMap(attach_forwarded, download=self.download,
                                                url_length_limit=limit).with_outputs(REJECTED, main="jobs")
        )
        jobs = (
            (attached.jobs, forwarded.jobs)
            | "MergeJobs" >> beam.Flatten()
            | "DownloadMissingImages" >> beam.ParDo(DownloadMissingImages(self.fetch_options))
        )
        validated = jobs | "ValidateImages" >> beam.ParDo(ValidateImages(**self.check_options)).with_outputs(
            REJECTED, main="candidates")
        rejected = ((records[REJECTED], from_pages[REJECTED], from_wat[REJECTED], page_revisits[REJECTED],
                     unique[REJECTED], attached[REJECTED], forwarded[REJECTED], validated[REJECTED])
                    | "MergeRejected" >> beam.Flatten())
        return validated.candidates, rejected, latest


#: The file names a folder given as input contributes (a folder is read one level deep).
ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz", ".wat", ".wat.gz")


def _archives(paths: list[str]) -> list[str]:
    return sorted(path for path in paths if path.lower().endswith(ARCHIVE_SUFFIXES))


def _expand_inputs(patterns: list[str]) -> list[str]:
    """Local globs, Beam filesystem patterns and folders -> file paths (sorted, each once).

    A folder (local, or a prefix on a Beam filesystem that names no file itself) stands for the WARC, ARC and
    WAT files directly in it (``ARCHIVE_SUFFIXES``; not its subfolders). A file or folder that exists is read
    as named, ``*``, ``?`` and ``[`` included (``w [1]/a.warc.gz``); only a name that does not is a pattern.
    Raises MissingInputError naming the patterns that match no file.
    """
    files, missing = [], []
    for pattern in patterns:
        if "://" not in pattern:
            if os.path.isdir(pattern):
                found = _archives([os.path.join(pattern, name) for name in os.listdir(pattern)
                                   if os.path.isfile(os.path.join(pattern, name))])
            elif os.path.isfile(pattern):
                found = [pattern]
            else:
                found = [path for path in sorted(glob.glob(pattern)) if os.path.isfile(path)]
        else:
            try:
                found = [pattern] if FileSystems.exists(pattern) else []
                if not found and any(c in pattern for c in "*?["):
                    found = _matching([pattern])
                if not found:  # an object store's "folder": a prefix of files (listed after a pattern: listings cost)
                    found = _archives(files_under(pattern.rstrip("/"), "/*"))
            except Exception:  # noqa: BLE001 - Beam reports a missing bucket or prefix as an error
                found = []
        files.extend(found)
        if not found:
            missing.append(f"{pattern} (a folder without {'/'.join(ARCHIVE_SUFFIXES)} files)"
                           if "://" not in pattern and os.path.isdir(pattern) else pattern)
    if missing:
        raise MissingInputError(f"no such file: {', '.join(missing)}")
    return sorted({_comparable(path): path for path in files}.values())  # one file named two ways is read once


def _matching(patterns: list[str]) -> list[str]:
    """The files that match Beam filesystem patterns."""
    return [m.path for match in FileSystems.match(patterns) for m in match.metadata_list]


def _files_in(folder: str, *names: str) -> list[str]:
    """The files named ``names`` (a path inside ``folder`` whose parts may hold ``*``), ``folder`` taken as
    written (``runs/demo [b]/crawl``). Locally through ``glob``: Beam would list the whole folder above a
    quoted ``[``."""
    if "://" in folder:
        return files_under(folder.rstrip("/"), "/" + "/".join(names))
    return [path for path in glob.glob(os.path.join(glob.escape(folder), *names)) if os.path.isfile(path)]


def _delete(paths: list[str]) -> None:
    """Delete files by name: local ones directly, since Beam's local filesystem reads a name as a pattern
    (``demo [b]/crawl/stats.json`` would name nothing)."""
    for path in paths:
        if "://" not in path:
            os.remove(path)
    others = [path for path in paths if "://" in path]
    if others:
        FileSystems.delete(others)


def _sinks(prefix: str) -> list[tuple[str, str]]:
    """(folder, file name prefix) of the ``prefix`` sinks: candidates, rejected and the parts' captures."""
    return [(output.CANDIDATES, prefix), (output.REJECTED, prefix), (PARTS, f"{CAPTURES}-{prefix}")]


def _shard_files(out_dir: str, prefix: str) -> list[str]:
    """The shards named ``prefix-*`` and the files in their sink's Beam temporary folders (a shard written
    there but not yet renamed ends in .parquet and would be read as data)."""
    return [path for sub, name in _sinks(prefix)
            for names in ((sub, f"{name}-*.parquet"), (sub, f"beam-temp-{name}-*", "*"))
            for path in _files_in(out_dir, *names)]


def _temp_folders(out_dir: str, prefix: str) -> list[str]:
    """A local folder's Beam temporary folders of the ``prefix`` sinks (object stores have no folders)."""
    if "://" in out_dir:
        return []
    return [folder for sub, name in _sinks(prefix)
            for folder in glob.glob(os.path.join(glob.escape(out_dir), sub, f"beam-temp-{name}-*"))]


def _clear_shards(out_dir: str, prefix: str) -> None:
    """Remove the shards named ``prefix-*`` and the Beam temporary folders of their sink, a killed run's too."""
    _delete(_shard_files(out_dir, prefix))
    for folder in _temp_folders(out_dir, prefix):
        shutil.rmtree(folder, ignore_errors=True)


def refuse_other_output(out_dir: str) -> None:
    """OutputFolderError, in one line and before anything is deleted, for an output folder that holds another
    stage's finished run (its stats.json names that stage: ``RUN/filter``) or a URL crawl's output (shards not
    named ``warc-*``, or a stats.json of source ``crawl``): a WARC run would delete its stats.json and mix its own
    rows with that folder's. Worded as ``pipeline.outputs.prepare_output`` refuses another stage's folder."""
    try:
        outputs.refuse_other_stage(out_dir, output.STAGE,
                                   "use a new folder (a WARC run never replaces another stage's output)")
    except outputs.OutputExistsError as exc:  # both crawl CLIs report OutputFolderError as a bad --out / --output
        raise output.OutputFolderError(str(exc)) from None
    found = _files_in(out_dir, output.STATS_FILE)
    stats = (read_stats(found[0]) if found else None) or {}
    shards = [path for sub in (output.CANDIDATES, output.REJECTED) for path in _files_in(out_dir, sub, "*.parquet")
              if not FileSystems.split(path)[1].startswith(f"{PREFIX}-")]
    if shards or stats.get("source") == "crawl":
        held = f"shards such as {shards[0]}" if shards else "a stats.json of source crawl"
        raise output.OutputFolderError(f"{out_dir} holds a URL crawl's output ({held}), not a WARC run's; use a "
                                       f"new folder (a WARC run never mixes with a URL crawl's output)")


def _clear_previous(out_dir: str) -> None:
    """A rerun into the same folder replaces the previous WARC output instead of adding to it.

    The previous stats.json goes first, so an output whose run is interrupted never looks complete:
    stats.json is written last. Then the shards and a killed run's Beam temporary folders.
    """
    _delete(_files_in(out_dir, output.STATS_FILE))
    _clear_shards(out_dir, PREFIX)


# ---------------------------------------------------------------------------------- resumable parts

def _part_name(index: int) -> str:
    return f"p{index:05d}"


def _part_prefix(index: int) -> str:
    """The shard prefix of a part: ``warc-p00003``."""
    return f"{PREFIX}-{_part_name(index)}"


def _comparable(path: str) -> str:
    """A path as markers record it: local paths absolute, so a rerun from another folder still matches."""
    return path if "://" in path else os.path.abspath(path)


def split_into_parts(files: list[str], files_per_part: int) -> list[list[str]]:
    """Input files -> consecutive parts of ``files_per_part`` (0: one part of all), in the markers' order."""
    if files_per_part <= 0:
        return [list(files)]
    ordered = [path for _, path in sorted((_comparable(path), path) for path in files)]
    return [ordered[i:i + files_per_part] for i in range(0, len(ordered), files_per_part)]


def _read_json(path: str) -> dict[str, Any] | None:
    """A marker's contents, or None when it does not exist."""
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return json.loads(handle.read())


def _write_json(path: str, data: dict[str, Any]) -> None:
    """Write a marker whole or not at all: a local one by the shared writer (a temporary file beside it, flushed to
    disk, then a rename), one in an object store as one object, which replaces the whole object on close."""
    if "://" not in path:
        output.write_json_atomically(path, data)
        return
    # Serialised before the object is opened: a failure inside the `with` would still close it, and so write it.
    payload = json.dumps(data, indent=2, default=str).encode("utf-8")
    with FileSystems.create(path, mime_type="application/json",
                            compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(payload)


def _has_warc_output(out_dir: str) -> bool:
    """Whether the folder holds WARC shards, a killed run's Beam temporary files, or a stats.json."""
    return bool(_files_in(out_dir, output.STATS_FILE) or _shard_files(out_dir, PREFIX)
                or _temp_folders(out_dir, PREFIX))


#: The options that decide which rows a part writes: a resumed run in parts must use the same.
JOB_OPTIONS = ("no_download", "allow_private_networks", "min_side", "max_aspect", "image_formats", "max_pixels",
               "max_bytes", "url_length_limit")


def _check_job(out_dir: str, files: list[str], files_per_part: int, options: dict[str, Any] | None = None) -> None:
    """Refuse to mix outputs: a folder written in parts takes only the same files, files per part and
    ``JOB_OPTIONS`` (``options``).

    A folder without a job file holds nothing (any N), or one-part output (N = 0 replaces it; N > 0
    refuses). A run in parts records its job before any part runs. Raises PartsMismatchError.
    """
    job_path = FileSystems.join(out_dir, PARTS, JOB_FILE)
    wanted = {"files_per_part": files_per_part, "files": sorted(_comparable(path) for path in files),
              "options": options or {}}
    job = _read_json(job_path)
    advice = "use a new --out or delete the folder"
    if job is not None:
        if job == wanted:
            return
        recorded = job.get("options", {})  # an option the record lacks was written before it was recorded
        differences = [f"--{key.replace('_', '-')} {recorded.get(key)!r}, not {value!r}"
                       for key, value in wanted["options"].items() if recorded.get(key, value) != value]
        if job["files_per_part"] != files_per_part:
            differences.append(f"{job['files_per_part']} files per part, not {files_per_part}")
        if job["files"] != wanted["files"]:
            added, missing = sorted(set(wanted["files"]) - set(job["files"])), sorted(set(job["files"]) - set(wanted["files"]))
            change = ", ".join(([f"{len(added)} new (first {added[0]})"] if added else [])
                               + ([f"{len(missing)} missing (first {missing[0]})"] if missing else []))
            differences.append(f"{len(job['files'])} input files, not {len(wanted['files'])}: {change}")
        if not differences:
            _write_json(job_path, wanted)  # the same job, recorded with every option now
            return
        raise PartsMismatchError(
            f"{out_dir} holds a WARC run in parts of other inputs or options ({'; '.join(differences)}); its outputs "
            f"would mix. Rerun with its files, options and --files-per-part {job['files_per_part']} to resume it, "
            f"or {advice}")
    if files_per_part == 0:
        return
    if _has_warc_output(out_dir):
        raise PartsMismatchError(
            f"{out_dir} holds output of another run (WARC shards of a run without --files-per-part, or a "
            f"stats.json); a run in parts would mix with it: {advice}")
    _write_json(job_path, wanted)


def _part_rows(out_dir: str, prefix: str) -> dict[str, Any]:
    """A part's shard names and row counts (from the Parquet footers)."""
    facts: dict[str, Any] = {}
    for sub in (output.CANDIDATES, output.REJECTED):
        shards = sorted(_files_in(out_dir, sub, f"{prefix}-*.parquet"))
        facts[sub] = sum(schemas.count_rows(shard) for shard in shards)
        facts[f"{sub}_shards"] = [FileSystems.split(shard)[1] for shard in shards]
    return facts


def _run_part(known: argparse.Namespace, options: PipelineOptions, files: list[str], out_dir: str, prefix: str,
              test_pipeline=None) -> dict[str, int]:
    """One Beam pipeline over ``files``, writing shards ``prefix-*``; returns its ``lait/...`` counters."""
    fetch_options = {"allow_private_networks": known.allow_private_networks, "max_bytes": known.max_bytes,
                     "delay": known.download_delay, "timeout": known.download_timeout, "user_agent": known.user_agent,
                     "robots_retry_after": known.robots_retry_after}
    check_options = {"min_side": known.min_side, "max_aspect": known.max_aspect, "max_pixels": known.max_pixels,
                     "formats": tuple(f.strip().upper() for f in known.image_formats.split(",") if f.strip())}
    beam_pipeline = test_pipeline or make_pipeline(options)
    candidates, rejected, latest = (
        beam_pipeline
        | "ListFiles" >> beam.Create(files)
        | "ReadWarcCandidates" >> ReadWarcCandidates(known.max_bytes, not known.no_download, fetch_options, check_options,
                                                     known.url_length_limit)
    )
    if known.files_per_part:  # the step across parts weighs each part's latest capture of a page
        (latest
         | "CaptureColumns" >> beam.MapTuple(lambda page, capture: {"page": page, "date": capture[0], "opt_out": capture[1]})
         | "WriteCaptures" >> WriteToParquet(FileSystems.join(out_dir, PARTS, f"{CAPTURES}-{prefix}"), CAPTURES_SCHEMA,
                                            file_name_suffix=".parquet", num_shards=0))
    for name, rows, kind in (("WriteCandidates", candidates, "candidates"), ("WriteRejected", rejected, "rejected")):
        sub = output.CANDIDATES if kind == "candidates" else output.REJECTED
        schema = schemas.schema_for(kind)
        (rows
         | f"{name}Columns" >> beam.Map(lambda row, names: {n: row.get(n) for n in names}, schema.names)
         | name >> WriteToParquet(
            FileSystems.join(out_dir, sub, prefix), schema, file_name_suffix=".parquet", num_shards=0))
    result = beam_pipeline.run()
    result.wait_until_finish()
    counters: dict[str, int] = {}
    try:
        for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
            key = f"lait/{counter.key.metric.name}"
            counters[key] = counters.get(key, 0) + (counter.committed or counter.attempted or 0)
    except Exception:  # some runners report no metrics; the funnel is counted from the output anyway
        logger.warning("no Beam metrics from this runner")
    return counters


def dedupe_across_parts(out_dir: str) -> int:
    """Turn each candidate kept by more than one part into ``duplicate_candidate`` rejects of all parts but the first,
    then apply the opt-out of each page whose latest capture over all parts opted out (``_withdraw_opted_out``).

    Reads only the candidate_id column of every part's candidate shards; a shard that holds a later
    copy is read whole and rewritten without it (atomically; removed when emptied), after its dropped
    rows are written as ``rejected/warc-pKKKKK-duplicates-<shard>.parquet``. That reject shard holds
    every id ever dropped from its candidate shard, so a rerun after a stop anywhere here ends the
    same and a rerun after the end changes nothing. Returns how many rows this call moved or changed.
    """
    shards = _part_shards(out_dir, output.CANDIDATES)
    if not shards:
        return _repeated_rejects_to_duplicates(out_dir, set()) + _withdraw_opted_out(out_dir)
    ids = []
    for number, (part, shard) in enumerate(shards):
        column = schemas.read_table(shard, "candidates", columns=["candidate_id"]).column("candidate_id")
        ids.append(pa.table({"candidate_id": column, "part": pa.array(np.full(len(column), part, np.int64)),
                             "shard": pa.array(np.full(len(column), number, np.int64))}))
    table = pa.concat_tables(ids)
    first = table.group_by("candidate_id").aggregate([("part", "min")])
    table = table.join(first, "candidate_id")
    later = table.filter(pc.greater(table["part"], table["part_min"]))
    moved = 0
    for number in sorted(set(later["shard"].to_pylist())):
        part, shard = shards[number]
        drop = later.filter(pc.equal(later["shard"], number))["candidate_id"]
        moved += _move_candidates(out_dir, part, shard, drop.combine_chunks(), DUPLICATES,
                                  lambda row: (output.DUPLICATE, DUPLICATE_DETAIL))
    if moved:
        logger.info("%d candidates kept by an earlier part too became %s rejects", moved, output.DUPLICATE)
    kept = set(table.filter(pc.equal(table["part"], table["part_min"]))["candidate_id"].to_pylist())
    return moved + _repeated_rejects_to_duplicates(out_dir, kept) + _withdraw_opted_out(out_dir)


def _part_shards(out_dir: str, sub: str) -> list[tuple[int, str]]:
    """(part, path) of the parts' shards in ``candidates/`` or ``rejected/``, in part order."""
    shards = []
    for path in _files_in(out_dir, sub, f"{PREFIX}-p*.parquet"):
        named = PART_SHARD.match(FileSystems.split(path)[1])
        if named:
            shards.append((int(named.group(1)), path))
    return sorted(shards)


def _repeated_rejects_to_duplicates(out_dir: str, kept: set[str]) -> int:
    """One outcome per candidate across parts, as one pipeline gives: a candidate's reject (at its image:
    ``image_not_in_warc``, a download failure, ...) becomes ``duplicate_candidate`` when another part kept
    it, or when an earlier part rejected it already. Opt-outs and the page-level reasons that are records
    of their own stay. Rewrites only the shards that change; a rerun changes nothing. Returns the rows."""
    shards = _reject_shards(out_dir)
    rejected_in: dict[str, int] = {}  # candidate -> the first part that rejected it
    rows = {}
    for part, shard in shards:
        table = schemas.read_table(shard, "rejected", columns=["candidate_id", "reason"])
        rows[shard] = list(zip(table["candidate_id"].to_pylist(), table["reason"].to_pylist()))
        for candidate_id, reason in rows[shard]:
            if _outcome_reject(candidate_id, reason):
                rejected_in.setdefault(candidate_id, part)
    converted = 0
    for part, shard in shards:
        converted += _rewrite_rejects(shard, [
            (output.DUPLICATE, DUPLICATE_DETAIL)
            if _outcome_reject(candidate_id, reason) and (candidate_id in kept or rejected_in[candidate_id] < part)
            else None for candidate_id, reason in rows[shard]])
    if converted:
        logger.info("%d rejects of candidates another part kept or rejected first became %s rejects", converted,
                    output.DUPLICATE)
    return converted


#: Reference rejects made from a page's HTML, before the candidates are deduplicated: one pipeline keeps
#: each capture's row of them, so the parts dedupe leaves them as they are (opt-outs too).
HTML_REFERENCE_REASONS = output.OWN_RECORD_REASONS | {"unsupported_scheme", "no_image_url", "data_uri", "invalid_url"}


def _outcome_reject(candidate_id: str | None, reason: str) -> bool:
    """Whether a rejected row is its candidate's outcome at the image step (after the dedupe of one pipeline)."""
    return bool(candidate_id) and reason not in HTML_REFERENCE_REASONS and not reason.startswith(output.OPT_OUT)


def _reject_shards(out_dir: str) -> list[tuple[int, str]]:
    """(part, path) of the parts' own rejected shards, without those of rows moved from candidate shards."""
    return [(part, shard) for part, shard in _part_shards(out_dir, output.REJECTED)
            if not FileSystems.split(shard)[1].startswith((f"{_part_prefix(part)}-{DUPLICATES}-",
                                                            f"{_part_prefix(part)}-{OPT_OUTS}-"))]


def _rewrite_rejects(shard: str, changes: list[tuple[str, str] | None]) -> int:
    """Give row i of a rejected shard the (reason, detail) ``changes[i]`` where that is not None; returns how many.
    Rewrites the shard only when a row changes (a temporary file beside it, then a rename)."""
    changed = sum(change is not None for change in changes)
    if not changed:
        return 0
    table = schemas.read_table(shard, "rejected")
    mask = pa.array([change is not None for change in changes])
    for position, name in enumerate(("reason", "detail")):  # fields kept as they were
        values = pa.array([change[position] if change else None for change in changes], pa.string())
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), pc.if_else(mask, values, table[name]))
    schemas.write_table(table, shard, "rejected")
    return changed


def _latest_opt_outs(out_dir: str) -> dict[str, tuple]:
    """Page key -> (date, reason) of each page whose latest capture over all parts opted out.

    Reads the parts' captures twice: the pages that opted out in some part, then only their rows.
    """
    shards = _files_in(out_dir, PARTS, f"{CAPTURES}-{PREFIX}-p*.parquet")
    opted_out = set()
    for shard in shards:
        table = schemas.read_table(shard, columns=["page", "opt_out"])
        opted_out.update(table.filter(pc.is_valid(table["opt_out"]))["page"].to_pylist())
    if not opted_out:
        return {}
    pages, latest = pa.array(sorted(opted_out), pa.string()), {}
    for shard in shards:
        table = schemas.read_table(shard)
        table = table.filter(pc.is_in(table["page"], value_set=pages))
        for page, *capture in zip(*(table[name].to_pylist() for name in ("page", "date", "opt_out"))):
            latest[page] = latest_capture([latest.get(page, tuple(capture)), tuple(capture)])
    return {page: capture for page, capture in latest.items() if capture[1]}


def _withdraw_opted_out(out_dir: str) -> int:
    """The parts' part of ``resolve_page``: each candidate of a page whose latest capture over all parts opted out
    becomes that opt-out's reject, kept (moved to ``rejected/warc-pKKKKK-opt-outs-<shard>.parquet``) or rejected
    at its image (the row rewritten), as one pipeline decides before the image step. Returns the rows."""
    opted_out = _latest_opt_outs(out_dir)
    if not opted_out:
        return 0
    keys: dict[str, str] = {}

    def withdrawn(page_url: str | None) -> tuple[str, str] | None:
        if not page_url:
            return None
        if page_url not in keys:
            keys[page_url] = page_key(page_url)
        capture = opted_out.get(keys[page_url])
        return (capture[1], later_opt_out_detail(capture[0])) if capture else None

    changed = 0
    for part, shard in _part_shards(out_dir, output.CANDIDATES):
        table = schemas.read_table(shard, "candidates", columns=["candidate_id", "page_url"])
        drop = [c for c, url in zip(table["candidate_id"].to_pylist(), table["page_url"].to_pylist()) if withdrawn(url)]
        if drop:
            changed += _move_candidates(out_dir, part, shard, pa.array(drop, pa.string()), OPT_OUTS,
                                        lambda row: withdrawn(row["page_url"]))
    for _, shard in _reject_shards(out_dir):
        table = schemas.read_table(shard, "rejected", columns=["candidate_id", "page_url", "reason"])
        changed += _rewrite_rejects(shard, [
            withdrawn(url) if _outcome_reject(candidate_id, reason) else None
            for candidate_id, url, reason in zip(*(table[n].to_pylist() for n in ("candidate_id", "page_url", "reason")))])
    if changed:
        logger.info("%d candidates of pages whose latest capture, in a later part, opted out became opt-out rejects",
                    changed)
    return changed


def _move_candidates(out_dir: str, part: int, shard: str, drop: pa.Array, kind: str, reject) -> int:
    """Write the rejects of the ids ``drop`` of a candidate shard (``reject(row)``: their (reason, detail)) to
    ``rejected/warc-pKKKKK-<kind>-<shard>.parquet``, then rewrite the shard without them."""
    table = schemas.read_table(shard, "candidates")
    repeated = pc.is_in(table["candidate_id"], value_set=drop)
    rest = PART_SHARD.match(FileSystems.split(shard)[1]).group(2)
    rejects_path = FileSystems.join(out_dir, output.REJECTED, f"{_part_prefix(part)}-{kind}-{rest}.parquet")
    rows = {}
    if FileSystems.exists(rejects_path):  # a stop between the two writes below: the rows written then stay
        rows = {row["candidate_id"]: row for row in schemas.read_table(rejects_path, "rejected").to_pylist()}
    for row in table.filter(repeated).select(["candidate_id", "page_url", "image_url"]).to_pylist():
        rows.setdefault(row["candidate_id"], schemas.rejected_row(output.STAGE, *reject(row), **row))
    schemas.write_table(schemas.to_table([rows[k] for k in sorted(rows)], "rejected"), rejects_path, "rejected")
    kept = table.filter(pc.invert(repeated))
    if kept.num_rows:
        schemas.write_table(kept, shard, "candidates")
    else:
        _delete([shard])
    return table.num_rows - kept.num_rows


def _run_in_parts(known: argparse.Namespace, options: PipelineOptions, files: list[str], out_dir: str) -> dict[str, Any]:
    """Run the parts that have no marker, then the cross-part dedupe, then stats.json."""
    parts = split_into_parts(files, known.files_per_part)
    _delete(_files_in(out_dir, output.STATS_FILE))  # complete again only once stats.json is back
    merged: dict[str, int] = {}
    for index, part_files in enumerate(parts):
        recorded = [_comparable(path) for path in part_files]
        marker_path = FileSystems.join(out_dir, PARTS, f"{_part_name(index)}.json")
        marker = _read_json(marker_path)
        if marker is not None and marker.get("files") == recorded:
            state = "done before, skipped"
        else:
            prefix = _part_prefix(index)
            _clear_shards(out_dir, prefix)  # a stopped attempt's shards: the part runs again from the start
            counters = _run_part(known, options, part_files, out_dir, prefix)
            marker = {"part": index, "parts": len(parts), "files": recorded, "counters": counters,
                      **_part_rows(out_dir, prefix)}
            _write_json(marker_path, marker)  # only now is the part done
            state = "done"
        names = os.path.basename(part_files[0]) + (f" ... {os.path.basename(part_files[-1])}" if len(part_files) > 1 else "")
        parts_logger.info("part %d of %d (%d files: %s): %s, %d kept, %d rejected", index + 1, len(parts),
                          len(part_files), names, state, marker[output.CANDIDATES], marker[output.REJECTED])
        for key, value in marker["counters"].items():
            merged[key] = merged.get(key, 0) + value
    dedupe_across_parts(out_dir)
    return output.write_stats(out_dir, dict(merged, source="warc", input_files=len(files), parts=len(parts)),
                              settings=_image_settings(known))


def _spellings(name: str) -> tuple[str, str]:
    """An option's two spellings, ``--files_per_part`` (the native form's, as Beam spells its own) and
    ``--files-per-part`` (``lait crawl --warc``'s): either is taken, to the same ``dest`` (the first)."""
    return f"--{name}", f"--{name.replace('_', '-')}"


def build_parser() -> argparse.ArgumentParser:
    """The pipeline's own options, each in both spellings (``_spellings``); Beam's options pass through untouched."""
    parser = argparse.ArgumentParser(description="WARC/ARC/WAT files -> LAIT candidates (Apache Beam)")
    parser.add_argument("--input", action="append", required=True, help="a WARC file or pattern (repeatable)")
    parser.add_argument("--output", required=True, help="the crawl run folder (candidates/, rejected/, stats.json)")
    parser.add_argument(*_spellings("files_per_part"), type=int, default=0,
                        help="run the sorted inputs as parts of N files, one pipeline each, so that a rerun "
                             "skips finished parts (default 0: one part, and a rerun replaces the output)")
    parser.add_argument(*_spellings("allow_private_networks"), action="store_true",
                        help="let downloads reach private networks")
    parser.add_argument(*_spellings("no_download"), action="store_true", help="do not fetch images the input lacks")
    parser.add_argument(*_spellings("min_side"), type=int, default=images.DEFAULT_MIN_SIDE)
    parser.add_argument(*_spellings("max_aspect"), type=float, default=images.DEFAULT_MAX_ASPECT)
    parser.add_argument(*_spellings("image_formats"), default=",".join(images.DEFAULT_FORMATS))
    parser.add_argument(*_spellings("max_pixels"), type=int, default=images.DEFAULT_MAX_PIXELS)
    parser.add_argument(*_spellings("max_bytes"), type=int, default=defaults.LAIT_IMAGE_MAXSIZE,
                        help="cap on a record or download")
    parser.add_argument(*_spellings("url_length_limit"), type=int, default=URL_LENGTH_LIMIT,
                        help="a page or image URL longer than this is url_too_long, as the spider's URLLENGTH_LIMIT "
                             "(0: no limit)")
    parser.add_argument(*_spellings("download_delay"), type=float, default=1.0,
                        help="seconds between downloads from one host")
    parser.add_argument(*_spellings("download_timeout"), type=float, default=defaults.DOWNLOAD_TIMEOUT)
    parser.add_argument(*_spellings("user_agent"), default=defaults.USER_AGENT)
    parser.add_argument(*_spellings("robots_retry_after"), type=float, default=defaults.LAIT_ROBOTS_RETRY_AFTER,
                        help="seconds before a host whose robots.txt was unavailable is asked for it again")
    return parser


def run(argv: list[str] | None = None, test_pipeline=None, out_option: str = "--output") -> dict[str, Any]:
    """Run the WARC pipeline; returns the stage's stats (also written to OUTPUT/stats.json). ``out_option``: how
    the output folder was given, for the messages (``lait crawl --warc`` takes it as --out)."""
    parser = build_parser()
    known, pipeline_args = parser.parse_known_args(argv)
    if known.files_per_part < 0:
        parser.error(f"--files_per_part must be 0 or more, got {known.files_per_part}")
    # The rules lait crawl, lait filter and lait demo apply (filters/option_rules.py), and their readings: jpg is
    # JPEG, and --max_aspect 0 turns the check off (no limit), where it used to reject every image.
    try:
        option_rules.check("min_side", known.min_side, "--min_side")
        option_rules.check("max_aspect", known.max_aspect, "--max_aspect")
        known.image_formats = ",".join(option_rules.read_image_formats(known.image_formats, "--image_formats"))
    except ValueError as exc:
        parser.error(str(exc))
    if known.max_pixels < 1:
        parser.error(f"--max_pixels must be 1 or more, got {known.max_pixels}")
    known.max_aspect = known.max_aspect or math.inf
    from crawler.fetch import robots_retry_seconds

    try:
        robots_retry_seconds(known.robots_retry_after, "--robots_retry_after")
        for dest, rule in DOWNLOAD_RULES.items():
            option_rules.check(rule, getattr(known, dest), f"--{dest}")
        # Beam's own check, as the filter stage's: an argument neither this parser nor Beam knows (`--min-side`)
        # would be dropped with a logged warning, and a bad Beam value (`--direct_running_mode x`) found only once
        # the previous output is gone.
        options = beam_options(pipeline_args)
        check_runner(options)
    except ValueError as exc:
        parser.error(str(exc))
    if test_pipeline is not None and known.files_per_part:
        raise ValueError("a test pipeline runs one part: leave --files_per_part at 0")
    files = _expand_inputs(known.input)  # inputs and output are checked before the previous output goes
    out_dir = known.output
    output.prepare_out_dir(out_dir)
    refuse_other_output(out_dir)
    # A run still going there is refused: this run would delete its shards and Beam temporary folders as a previous
    # run's (or run its unfinished part again beside it), and the run that finished last kept only its own rows.
    output.claim(out_dir, out_option)
    try:
        _check_job(out_dir, files, known.files_per_part, {key: getattr(known, key) for key in JOB_OPTIONS})
        if known.files_per_part:
            return _run_in_parts(known, options, files, out_dir)
        _clear_previous(out_dir)
        counters = _run_part(known, options, files, out_dir, PREFIX, test_pipeline)
        return output.write_stats(out_dir, dict(counters, source="warc", input_files=len(files)),
                                  settings=_image_settings(known))
    finally:
        output.release(out_dir)  # (stopped or failed: the run has ended all the same)


def _image_settings(known: argparse.Namespace) -> dict[str, Any]:
    """The image rules this run applied, as stats.json records them under ``settings`` (as a URL crawl's)."""
    return output.image_settings(known.min_side, known.max_aspect, known.image_formats, known.max_pixels)


def check_runner(options) -> None:
    """ValueError, one line, for a ``--runner`` Beam does not know: found before the previous output is cleared."""
    from apache_beam.runners.runner import create_runner

    name = runner_name(options)
    if is_local_runner(name):
        return
    try:
        create_runner(name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ValueError(f"--runner: {exc}") from None


#: What the download options must be (dest -> rule); the ``lait crawl -s`` settings that set them follow the same.
DOWNLOAD_RULES = {
    "download_delay": option_rules.Rule(lambda v: 0 <= v < math.inf, "a number of seconds, 0 or more"),
    "download_timeout": option_rules.Rule(lambda v: 0 < v < math.inf, "a number of seconds above 0"),
    # 0 would be a cap no record fits in (LAIT_IMAGE_MAXSIZE's rule)
    "max_bytes": option_rules.Rule(lambda v: v >= 1, "a whole number of bytes, 1 or more"),
}

#: The ``settings`` (``lait crawl --warc -s KEY=VALUE``) ``read_warcs`` reads -> the option each one sets (the
#: native form's, or Beam's); ``lait crawl`` refuses any other. The spider reads the same names.
READ_SETTINGS = {
    "runner": "runner", "direct_running_mode": "direct_running_mode",
    "DOWNLOAD_DELAY": "download_delay", "DOWNLOAD_TIMEOUT": "download_timeout", "USER_AGENT": "user_agent",
    "LAIT_ROBOTS_RETRY_AFTER": "robots_retry_after", "LAIT_ALLOW_PRIVATE_NETWORKS": "allow_private_networks",
    "LAIT_IMAGE_MAXSIZE": "max_bytes", "LAIT_MIN_SIDE": "min_side", "LAIT_MAX_ASPECT": "max_aspect",
    "LAIT_IMAGE_FORMATS": "image_formats", "LAIT_MAX_PIXELS": "max_pixels", "URLLENGTH_LIMIT": "url_length_limit",
}
#: Those of them only the download of the images the input lacks reads (``--no_download`` turns it off).
DOWNLOAD_SETTINGS = ("DOWNLOAD_DELAY", "DOWNLOAD_TIMEOUT", "USER_AGENT", "LAIT_ROBOTS_RETRY_AFTER",
                     "LAIT_ALLOW_PRIVATE_NETWORKS")


def setting_options(settings: dict[str, Any]) -> dict[str, Any]:
    """The options (dest -> value) that ``lait crawl --warc -s`` settings set, each read as the spider reads it
    (Scrapy's getters and LAIT's checks; true and false as text, so no number); SettingError, one line naming the
    setting, for one the WARC reader does not read or cannot run with. A None value is no setting, as to Scrapy."""
    from scrapy.settings import BaseSettings

    from crawler import resolver
    from crawler.fetch import robots_retry_seconds
    from crawler.runner import as_typed
    from crawler.spiders import lait as spider

    settings = {name: value for name, value in as_typed(settings).items() if value is not None}
    unknown = [name for name in settings if name not in READ_SETTINGS]
    if unknown:
        raise SettingError(f"{', '.join(unknown)}: not read by the WARC reader")
    read, options = BaseSettings(settings), {}
    try:
        for name, value in settings.items():
            dest = READ_SETTINGS[name]
            if name in spider.SETTING_RULES:  # the minimum side, maximum aspect, pixel and byte caps
                spider.check_value(name, value)
                options[dest] = getattr(read, spider.SETTING_RULES[name][0])(name)
            elif name == "LAIT_IMAGE_FORMATS":
                options[dest] = ",".join(spider.image_formats(read))
            elif name == "URLLENGTH_LIMIT":  # as the spider reads it (``configure``): a whole number, 0 for none
                spider.check_value(name, value)
                options[dest] = read.getint(name)
            elif name == "LAIT_ALLOW_PRIVATE_NETWORKS":
                options[dest] = resolver.guard_settings(read)[0]
            elif name == "LAIT_ROBOTS_RETRY_AFTER":
                options[dest] = robots_retry_seconds(value)
            elif dest in DOWNLOAD_RULES:
                try:
                    number = read.getfloat(name)
                except (TypeError, ValueError, OverflowError):
                    number = None
                option_rules.check(DOWNLOAD_RULES[dest], number, name, given=value)
                options[dest] = number
            elif name == "USER_AGENT":
                if not isinstance(value, str) or not value.isprintable():  # a header value: one line of text
                    raise ValueError(f"USER_AGENT must be one line of text, got {value!r}")
                options[dest] = value
            elif name == "runner":
                if not is_local_runner(str(value)):  # lait crawl passes no options a remote runner needs
                    raise ValueError(f"runner must be a local runner (DirectRunner) with lait crawl --warc, got "
                                     f"{value!r}: run python -m crawler.warc with that runner's own options")
                options[dest] = str(value)
            else:  # direct_running_mode: Beam's check of its choices, in one line
                beam_options([f"--{dest}={value}"])
                options[dest] = str(value)
    except ValueError as exc:
        raise SettingError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
    return options


def read_warcs(files: list[str], out_dir: str, *, allow_private_networks: bool = False,
               min_side: int = images.DEFAULT_MIN_SIDE, max_aspect: float = images.DEFAULT_MAX_ASPECT,
               download: bool = True, files_per_part: int = 0, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``lait crawl --warc``: read WARC files into ``out_dir`` on the DirectRunner; return stats.json.

    ``settings`` (``READ_SETTINGS``) win over the keyword arguments, as a URL crawl's ``-s`` settings win over its
    options; SettingError, before anything is touched, for one the reader does not read or cannot run with.
    """
    options = {"min_side": min_side, "max_aspect": max_aspect, "allow_private_networks": allow_private_networks,
               "files_per_part": files_per_part, "runner": "DirectRunner", "direct_running_mode": "in_memory"}
    options.update(setting_options(settings or {}))
    argv = [f"--input={path}" for path in files] + [f"--output={out_dir}"]
    for dest, value in options.items():
        if dest == "allow_private_networks":
            argv += ["--allow_private_networks"] if value else []
        else:
            argv.append(f"--{dest}={value}")  # one argument: a value may start with "-"
    if not download:
        argv.append("--no_download")
    return run(argv, out_option="--out")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        stats = run()
    except (MissingInputError, PartsMismatchError, output.OutputFolderError) as exc:
        print(f"crawler.warc: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: stats[k] for k in ("in", "kept", "rejected", "rejected_by_reason")}, indent=2))
