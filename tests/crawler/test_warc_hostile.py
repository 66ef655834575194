"""The WARC reader on hostile records: a WARC Content-Length that claims more than the file holds (the record is
cut short, and in an uncompressed file it used to swallow the records after it), and header lines long enough to
exhaust memory (warcio holds a line whole however long it is)."""
import gzip
import io
import itertools
import json

import pytest
from apache_beam.pvalue import TaggedOutput
from warcio.warcwriter import WARCWriter

import schemas
from crawler import warc
from tests.crawler.mocksite import TEST_MIN_SIDE, html, jpeg
from tests.crawler.test_crawl_warc import _response
from tests.inprocess import lait_here

SITE = "http://warc.example"
HOSTILE = f"{SITE}/hostile.html"
CLAIM = 10 * 2**30  # the hostile record's WARC Content-Length: 10 GiB, where a few hundred bytes follow


def _outputs(path, max_bytes: int = 1_000_000, limit: int = 100) -> tuple[list, list]:
    """ReadWarcRecords called directly: (kind, url) of the records read, and the reject rows (at most ``limit``
    outputs, so that a reader that loops fails)."""
    outputs = list(itertools.islice(warc.ReadWarcRecords(max_bytes=max_bytes).process(str(path)), limit))
    assert len(outputs) < limit, f"the reader went on past {limit} outputs: {outputs[:5]}"
    return ([(o[0], o[1]) for o in outputs if not isinstance(o, TaggedOutput)],
            [o.value for o in outputs if isinstance(o, TaggedOutput)])


def _good(n: int, gzipped: bool) -> bytes:
    """A page whose image has its own alt text, then that image's record."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=gzipped)
    _response(writer, f"{SITE}/p{n}.html", html(f'<img src="/i{n}.jpg" alt="A photo of a red table {n}">'), "text/html")
    _response(writer, f"{SITE}/i{n}.jpg", jpeg(96, 72), "image/jpeg")
    return buffer.getvalue()


GOOD = [("page", f"{SITE}/p1.html"), ("image", f"{SITE}/i1.jpg"), ("page", f"{SITE}/p2.html"), ("image", f"{SITE}/i2.jpg")]


def _warc_header(length: int, url: str = HOSTILE, extra: bytes = b"") -> bytes:
    """A response record's WARC header, written by hand: no digest that would vouch for (or against) its block."""
    return (b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: " + url.encode() + b"\r\n"
            b"WARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:12345678-1234-1234-1234-123456789abc>\r\n"
            b"Content-Type: application/http; msgtype=response\r\n" + extra + b"Content-Length: %d\r\n\r\n" % length)


def _hostile(block: bytes, length: int, gzipped: bool, extra: bytes = b"") -> bytes:
    record = _warc_header(length, extra=extra) + block + b"\r\n\r\n"
    return gzip.compress(record) if gzipped else record


HTTP_PAGE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + html("<p>hostile</p>")


# ------------------------------------------------------------------------- a Content-Length past the end


@pytest.mark.timeout(90)
@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "uncompressed"])
def test_a_record_claiming_more_than_its_member_or_file_holds_is_truncated_and_the_records_after_it_are_read(
        tmp_path, gzipped):
    """Uncompressed, the record took the page and the image after it for its body (the page's <img> was credited to
    it, and they had no row); gzipped, it was read as a whole page."""
    path = tmp_path / ("claims.warc.gz" if gzipped else "claims.warc")
    path.write_bytes(_good(1, gzipped) + _hostile(HTTP_PAGE, CLAIM, gzipped) + _good(2, gzipped))
    kept, rejected = _outputs(path)
    assert kept == GOOD
    assert [(r["reason"], r["page_url"]) for r in rejected] == [("warc_truncated_record", HOSTILE)]
    where = "gzip member" if gzipped else "file"
    assert f"WARC Content-Length {CLAIM} runs " in rejected[0]["detail"] and f"past the end of the {where}" in rejected[0]["detail"]


@pytest.mark.timeout(90)
def test_an_uncompressed_warc_cut_short_with_another_appended_is_read_on_at_the_next_record(tmp_path):
    """``cat cut.warc next.warc``: the cut record ends in the middle of a line, and what follows is its block as
    warcio reads it. Reading goes on at the next record header there; text that only says WARC/1.0 is none."""
    cut = (_warc_header(2**20, url=f"{SITE}/cut.html") + HTTP_PAGE + b"WARC/1.0\r\nnot a record header\r\n\r\n"
           + b"<p>cut in the mid")
    path = tmp_path / "appended.warc"
    path.write_bytes(_good(1, False) + cut + _good(2, False))
    kept, rejected = _outputs(path)
    assert kept == GOOD
    assert [(r["reason"], r["page_url"]) for r in rejected] == [("warc_truncated_record", f"{SITE}/cut.html")]
    # a file that ends inside its last record: that record's one reject, and no other
    whole = _good(1, False)
    path.write_bytes(_good(2, False) + whole[:len(whole) - 300])  # the image record cut in its JPEG bytes
    outputs = list(warc.ReadWarcRecords(max_bytes=1_000_000).process(str(path)))
    rejected = [o.value for o in outputs if isinstance(o, TaggedOutput)]
    assert [(r["reason"], r["image_url"]) for r in rejected] == [("warc_truncated_record", f"{SITE}/i1.jpg")]
    # the image's candidates are told why it is missing, as for any image record cut short
    assert [(o[0], o[1], o[2].get("failure", ("",))[0]) for o in outputs if not isinstance(o, TaggedOutput)] == [
        (*GOOD[2], ""), (*GOOD[3], ""), (*GOOD[0], ""), (*GOOD[1], "warc_truncated_record")]


@pytest.mark.timeout(90)
def test_records_claiming_too_much_one_after_another_are_each_read_once(tmp_path, monkeypatch):
    """Many records that each claim more than the file holds: each is a reject and the file is read a bounded number
    of times, not once more for every such record (the rest of the file as its block, then again from the next)."""
    buffer = io.BytesIO()
    _response(WARCWriter(buffer, gzip=False), f"{SITE}/big.html", html("x" * 4_000_000), "text/html")
    path = tmp_path / "many.warc"
    path.write_bytes(b"".join(_hostile(HTTP_PAGE, CLAIM, False) for _ in range(100)) + buffer.getvalue())
    read, real_open = [], warc.FileSystems.open

    class Counting:  # the file as the reader opens it, its reads counted
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, *args):
            data = self.handle.read(*args)
            read.append(len(data))
            return data

    monkeypatch.setattr(warc.FileSystems, "open", lambda *args, **kwargs: Counting(real_open(*args, **kwargs)))
    kept, rejected = _outputs(path, max_bytes=8_000_000, limit=1000)
    assert kept == [("page", f"{SITE}/big.html")]
    assert [r["reason"] for r in rejected] == ["warc_truncated_record"] * 100
    assert sum(read) < 3 * path.stat().st_size  # (it was 100 times)


@pytest.mark.timeout(180)
def test_lait_crawl_warc_credits_each_page_its_own_images_after_a_record_claiming_too_much(tmp_path):
    """The whole reader: each page keeps its own candidate, the record claiming 10 GiB is one reject, rows add up."""
    path = tmp_path / "claims.warc"
    path.write_bytes(_good(1, False) + _hostile(HTTP_PAGE.replace(b"<p>hostile</p>", b'<img src="/h.jpg" alt="Mine">'),
                                                CLAIM, False) + _good(2, False))
    out = tmp_path / "out"
    result = lait_here("crawl", "--warc", str(path), "--out", str(out), "--no-download", "--min-side",
                       str(TEST_MIN_SIDE), check=False)
    assert result.returncode == 0, result.stderr
    kept = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    assert sorted((c["page_url"], c["image_url"], c["alt"]) for c in kept) == [
        (f"{SITE}/p{n}.html", f"{SITE}/i{n}.jpg", f"A photo of a red table {n}") for n in (1, 2)]
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert [(r["reason"], r["page_url"]) for r in rejected] == [("warc_truncated_record", HOSTILE)]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["in"], stats["kept"], stats["rejected"]) == (3, 2, 1)


# ------------------------------------------------------------------------------------- header lines


LIMIT = 4096  # HEADER_LINE_LIMIT for these tests; their long lines are a few MB
LONG = b"A" * (3 * 2**20)


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(warc, "HEADER_LINE_LIMIT", LIMIT, raising=False)


class _Counting(io.BytesIO):
    """A file whose reads are counted: how far a reader went into it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.most = 0

    def read(self, size=-1):
        data = super().read(size)
        self.most = max(self.most, self.tell())
        return data


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "uncompressed"])
def test_the_reader_never_returns_a_line_over_the_limit_nor_reads_far_past_it(small_limit, gzipped):
    """A line is read to the limit and no further (memory bounded); shorter lines, and lines the caller limits, are
    read whole across the reader's buffers."""
    lines = [b"WARC/1.0\r\n", b"X-Short: " + b"s" * 40_000 + b"\r\n"]  # (over a buffer: warcio reads 16 KiB blocks)
    data = b"".join(lines) + b"X-Pad: " + LONG + b"\r\n"
    handle = _Counting(gzip.compress(data) if gzipped else data)
    reader = warc._archive_iterator(handle).reader
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warc, "HEADER_LINE_LIMIT", 64 * 1024)
        assert reader.readline() == lines[0] and reader.readline() == lines[1]
    assert reader.readline(10) == b"X-Pad: AAA"  # the caller's limit, under the cap
    with pytest.raises(warc.HeaderLineTooLongError, match=f"over {LIMIT} bytes"):
        reader.readline()
    if not gzipped:  # what it read of the file: the limit, and a block of warcio's at most
        assert handle.most <= len(lines[0]) + len(lines[1]) + LIMIT + 2 * 16384


@pytest.mark.timeout(90)
@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "uncompressed"])
def test_an_http_header_line_over_the_limit_is_its_records_malformed_reject_and_reading_goes_on(
        tmp_path, small_limit, gzipped):
    """The record's length is known: the rest of it is read by that length, the records after it as usual."""
    block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Pad: " + LONG + b"\r\n\r\n" + html("<p>x</p>")
    path = tmp_path / ("httpline.warc.gz" if gzipped else "httpline.warc")
    path.write_bytes(_good(1, gzipped) + _hostile(block, len(block), gzipped) + _good(2, gzipped))
    kept, rejected = _outputs(path)
    assert kept == GOOD
    assert [(r["reason"], r["page_url"]) for r in rejected] == [("warc_malformed_record", HOSTILE)]
    assert f"HTTP header line over {LIMIT} bytes (HEADER_LINE_LIMIT)" in rejected[0]["detail"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "uncompressed"])
def test_a_warc_header_line_over_the_limit_is_a_malformed_record(tmp_path, small_limit, gzipped):
    """Its length is not known: gzipped, reading goes on at the next member; uncompressed, as after any malformed
    record, the rest is not read on."""
    path = tmp_path / ("headline.warc.gz" if gzipped else "headline.warc")
    path.write_bytes(_good(1, gzipped) + _hostile(HTTP_PAGE, len(HTTP_PAGE), gzipped, extra=b"X-Pad: " + LONG + b"\r\n")
                     + _good(2, gzipped))
    kept, rejected = _outputs(path)
    assert kept == (GOOD if gzipped else GOOD[:2])
    assert [r["reason"] for r in rejected] == ["warc_malformed_record"]
    assert f"header line over {LIMIT} bytes (HEADER_LINE_LIMIT)" in rejected[0]["detail"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "uncompressed"])
def test_bodies_are_read_by_length_whatever_the_limit_on_lines(tmp_path, small_limit, gzipped):
    """A page of one line of a few MB, and a chunked body, are read as before."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=gzipped)
    _response(writer, f"{SITE}/long.html", html('<img src="/i1.jpg" alt="A long page">' + "x" * len(LONG)), "text/html")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(LONG), LONG)
    _response(writer, f"{SITE}/chunked.html", chunked, "text/html", extra=[("Transfer-Encoding", "chunked")])
    path = tmp_path / ("bodies.warc.gz" if gzipped else "bodies.warc")
    path.write_bytes(buffer.getvalue() + _good(2, gzipped))
    outputs = list(warc.ReadWarcRecords(max_bytes=8 * 2**20).process(str(path)))
    assert [o.value for o in outputs if isinstance(o, TaggedOutput)] == []
    pages = {o[1]: o[2]["body"] for o in outputs if o[0] == "page"}
    assert len(pages[f"{SITE}/long.html"]) > len(LONG) and pages[f"{SITE}/chunked.html"] == LONG
