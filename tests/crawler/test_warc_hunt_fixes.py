"""The WARC reader on records a review found misread: images served under another type, an image's captures in
either order, one page spelled two ways, bodies whose Content-Encoding does not decode, Content-Length where it
says nothing of the bytes stored, empty gzip members, and URLs longer than the spider requests."""
import datetime
import gzip
import io
import itertools
import zlib

import pytest
from apache_beam.pvalue import TaggedOutput
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import schemas
from crawler import warc
from tests.crawler.mocksite import TEST_MIN_SIDE, MockSite, html, jpeg
from tests.crawler.test_crawl_warc import _response


def _outputs(path, max_bytes: int = 1_000_000) -> tuple[list, list]:
    """ReadWarcRecords called directly: (kind, url, item) of the records read, and the reject rows."""
    outputs = list(itertools.islice(warc.ReadWarcRecords(max_bytes=max_bytes).process(str(path)), 100))
    return ([o for o in outputs if not isinstance(o, TaggedOutput)],
            [o.value for o in outputs if isinstance(o, TaggedOutput)])


def _rows(out) -> tuple[list, list]:
    """(page_url, image_url, alt) of the kept rows, and (reason, page_url, image_url) of the rejected ones."""
    kept = schemas.read_table(str(out / "candidates"), "candidates").to_pylist() if (out / "candidates").exists() else []
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist() if (out / "rejected").exists() else []
    return (sorted((c["page_url"], c["image_url"], c["alt"]) for c in kept),
            sorted((r["reason"], r["page_url"], r["image_url"]) for r in rejected))


# --------------------------------------------------------------------- images served under another type


def test_an_image_record_of_another_type_is_joined_and_its_bytes_decide(tmp_path):
    """Every image the page shows is in the WARC, typed octet-stream, binary, text/html or text/css: none is
    downloaded again (the site would answer 404), and validation decides by the bytes, as the spider does."""
    site = MockSite({"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")})
    with site:
        path = tmp_path / "types.warc.gz"
        with open(path, "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            _response(writer, f"{site.url}/a.html", html(
                '<img src="/oct.jpg" alt="Served as octet-stream"><img src="/bin.jpg" alt="Served as binary">'
                '<img src="/html.jpg" alt="Served as text/html"><img src="/style.css" alt="A stylesheet">'), "text/html")
            _response(writer, f"{site.url}/oct.jpg", jpeg(96, 72), "application/octet-stream")
            _response(writer, f"{site.url}/bin.jpg", jpeg(96, 72, color=(1, 2, 3)), "binary/octet-stream")
            _response(writer, f"{site.url}/html.jpg", jpeg(96, 72, color=(9, 9, 9)), "text/html")
            _response(writer, f"{site.url}/style.css", b"body { color: red }", "text/css")
            _response(writer, f"{site.url}/unused.bin", b"\x00" * 100, "application/octet-stream")  # no page shows it
        out = tmp_path / "out"
        stats = warc.read_warcs([str(path)], str(out), download=True, allow_private_networks=True,
                                min_side=TEST_MIN_SIDE, settings={"DOWNLOAD_DELAY": 0, "DOWNLOAD_TIMEOUT": 2})
        assert dict(site.counts) == {}  # nothing fetched: every image was in the input
    kept, rejected = _rows(out)
    page = f"{site.url}/a.html"
    assert kept == [(page, f"{site.url}/bin.jpg", "Served as binary"), (page, f"{site.url}/html.jpg", "Served as text/html"),
                    (page, f"{site.url}/oct.jpg", "Served as octet-stream")]
    assert rejected == [("image_decode_error", page, f"{site.url}/style.css")]
    assert stats["in"] == 4


# ----------------------------------------------------------------------------- an image's latest capture


def _image_record(date: str, robots: str | None = None, body: bytes = b"bytes") -> dict:
    headers = {"content-type": "image/jpeg", **({"x-robots-tag": [robots]} if robots else {})}
    return {"status": 200, "headers": headers, "body": body,
            "date": datetime.datetime.fromisoformat(date).replace(tzinfo=datetime.timezone.utc)}


@pytest.mark.parametrize("records, chosen", [
    ([_image_record("2023-01-01"), _image_record("2024-06-01", "noai")], 1),  # the latest wins
    ([_image_record("2024-06-01"), _image_record("2023-01-01", "noai")], 0),
    ([_image_record("2024-01-01"), _image_record("2024-01-01", "noai")], 1),  # a tie goes to the opt-out
    ([_image_record("2024-01-01", body=b"a"), _image_record("2024-01-01", body=b"b")], 1),  # then a fixed order
], ids=["newer_opts_out", "older_opts_out", "tie", "same_date_and_wish"])
def test_an_image_follows_its_latest_capture_whatever_the_order_of_its_records(records, chosen):
    candidate = {"candidate_id": "c", "page_url": "http://warc.example/a.html",
                 "image_url": "http://warc.example/i.jpg", "alt": "A photo"}
    for order in (records, records[::-1]):
        [job] = warc.attach_images(("k", {"candidates": [candidate], "images": list(order)}), download=False)
        assert job["image"] is records[chosen] and job["failure"] is None


def test_the_latest_capture_of_an_image_decides_in_a_run_in_either_record_order(tmp_path):
    for order in ("old_first", "new_first"):
        buffer = io.BytesIO()
        writer = WARCWriter(buffer, gzip=True)
        _response(writer, "http://warc.example/a.html", html('<img src="/i.jpg" alt="A photo that later opted out">'),
                  "text/html", date="2024-01-01T00:00:00Z")
        captures = [("2023-01-01T00:00:00Z", ()), ("2024-06-01T00:00:00Z", [("X-Robots-Tag", "noai")])]
        for date, extra in captures if order == "old_first" else captures[::-1]:
            _response(writer, "http://warc.example/i.jpg", jpeg(96, 72), "image/jpeg", extra=extra, date=date)
        path = tmp_path / f"{order}.warc.gz"
        path.write_bytes(buffer.getvalue())
        warc.read_warcs([str(path)], str(tmp_path / order), download=False, min_side=TEST_MIN_SIDE)
        assert _rows(tmp_path / order) == ([], [("opt_out_noai", "http://warc.example/a.html",
                                                 "http://warc.example/i.jpg")]), order


# ------------------------------------------------------------------------------ one page spelled two ways


def test_one_page_spelled_two_ways_gives_its_candidates_once_in_the_crawls_spelling(tmp_path):
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    page = html('<img src="/i.jpg" alt="The same photo">')
    for url, date in (("http://warc.example", "2024-01-01T00:00:00Z"), ("http://warc.example/", "2024-02-01T00:00:00Z"),
                      ("http://warc.example/a%c3%a9.html", "2024-01-01T00:00:00Z"),
                      ("http://warc.example/a%C3%A9.html", "2024-02-01T00:00:00Z")):
        _response(writer, url, page, "text/html", date=date)
    _response(writer, "http://warc.example/i.jpg", jpeg(96, 72), "image/jpeg")
    path = tmp_path / "spellings.warc.gz"
    path.write_bytes(buffer.getvalue())
    warc.read_warcs([str(path)], str(tmp_path / "out"), download=False, min_side=TEST_MIN_SIDE)
    kept, rejected = _rows(tmp_path / "out")
    image = "http://warc.example/i.jpg"
    assert kept == [("http://warc.example/", image, "The same photo"),
                    ("http://warc.example/a%C3%A9.html", image, "The same photo")]
    assert rejected == [("duplicate_candidate", "http://warc.example/", image),
                        ("duplicate_candidate", "http://warc.example/a%C3%A9.html", image)]


def test_a_wat_record_spells_its_page_as_a_warc_record_does():
    record = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": "http://warc.example/a%c3%a9.html"},
                           "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": [
                               {"path": "IMG@/src", "url": "/i.jpg", "alt": "The same photo"}]}}}}}
    [row] = warc.wat_candidates(("wat", "http://warc.example/a%c3%a9.html", {"json": record, "date": None}))
    assert row["page_url"] == "http://warc.example/a%C3%A9.html"
    [from_html] = warc.page_candidates(("page", "http://warc.example/a%c3%a9.html", {
        "status": 200, "headers": {"content-type": "text/html"}, "body": html('<img src="/i.jpg" alt="The same photo">')}))
    assert from_html["candidate_id"] == row["candidate_id"]


# ----------------------------------------------------------------------------- bodies that do not decode


def _raw_record(url: str, headers: list, body: bytes, status: str = "200 OK") -> bytes:
    """A response record written byte by byte (warcio's writer would fix its Content-Length)."""
    block = (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + body
    return (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:12345678-1234-1234-1234-123456789012>\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(block)}\r\n\r\n").encode() + block + b"\r\n\r\n"


def test_a_body_whose_content_encoding_does_not_decode_is_a_counted_reject(tmp_path):
    page = html('<img src="/a.jpg" alt="A photo">' * 50)
    packed = gzip.compress(page)
    image = jpeg(96, 72)
    records = [
        _raw_record("http://warc.example/altered.html", [("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
                    packed[:30] + b"\x00" * 20 + packed[50:]),
        _raw_record("http://warc.example/cut.html", [("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
                    packed[:len(packed) // 2]),
        _raw_record("http://warc.example/bad.jpg", [("Content-Type", "image/jpeg"), ("Content-Encoding", "gzip")],
                    b"\x00" * 12 + gzip.compress(image)[12:]),
        _raw_record("http://warc.example/ok.html", [("Content-Type", "text/html"), ("Content-Encoding", "gzip")], packed),
        _raw_record("http://warc.example/deflate.jpg", [("Content-Type", "image/jpeg"), ("Content-Encoding", "deflate")],
                    zlib.compress(image)),
    ]
    path = tmp_path / "encodings.warc"
    path.write_bytes(b"".join(records))
    kept, rejected = _outputs(path)
    assert [(kind, url, item.get("body")) for kind, url, item in kept] == [
        ("image", "http://warc.example/bad.jpg", None), ("page", "http://warc.example/ok.html", page),
        ("image", "http://warc.example/deflate.jpg", image)]
    assert kept[0][2]["failure"][0] == "warc_malformed_record"  # the image's candidates are told why
    assert [(r["reason"], r.get("page_url"), r.get("image_url")) for r in rejected] == [
        ("warc_malformed_record", "http://warc.example/altered.html", None),
        ("warc_malformed_record", "http://warc.example/cut.html", None),
        ("warc_malformed_record", None, "http://warc.example/bad.jpg")]
    assert "Content-Encoding gzip" in rejected[0]["detail"] and "ends before" in rejected[1]["detail"]


# ------------------------------------------------------------------- Content-Length that says nothing


def test_content_length_is_not_compared_for_a_chunked_body_or_a_status_without_a_body(tmp_path):
    page = html('<img src="/a.jpg" alt="A photo">' * 3)
    chunked = b"".join(b"%x\r\n" % len(page[i:i + 20]) + page[i:i + 20] + b"\r\n" for i in range(0, len(page), 20))
    chunked += b"0\r\n\r\n"
    path = tmp_path / "lengths.warc"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        for url, status, headers, body in (
                ("http://warc.example/chunked.html", "200 OK",
                 [("Transfer-Encoding", "chunked"), ("Content-Length", str(len(chunked)))], chunked),
                ("http://warc.example/not-modified.html", "304 Not Modified", [("Content-Length", "5000")], b"")):
            http_headers = StatusAndHeaders(status, [("Content-Type", "text/html"), *headers], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=http_headers))
    kept, rejected = _outputs(path)
    assert rejected == []
    assert [(kind, url) for kind, url, _ in kept] == [("page", "http://warc.example/chunked.html"),
                                                      ("page", "http://warc.example/not-modified.html")]
    assert kept[0][2]["body"] == page
    [reject] = warc.page_candidates(kept[1])
    assert (reject.value["reason"], reject.value["page_url"]) == ("http_304", "http://warc.example/not-modified.html")


# ------------------------------------------------------------------------------------ empty gzip members


def test_empty_gzip_members_are_not_truncated_records(tmp_path):
    good = _raw_record("http://warc.example/g.html", [("Content-Type", "text/html")], html("<p>a page</p>"))
    for name, data in (("empty.warc.gz", gzip.compress(b"")),
                       ("trailing.warc.gz", gzip.compress(good) + gzip.compress(b"") + gzip.compress(b"\r\n"))):
        path = tmp_path / name
        path.write_bytes(data)
        kept, rejected = _outputs(path)
        assert rejected == [], name
        assert [url for _, url, _ in kept] == (["http://warc.example/g.html"] if name == "trailing.warc.gz" else [])
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(gzip.compress(good) + gzip.compress(b"")[:10])  # an empty member cut short is still truncation
    assert [r["reason"] for r in _outputs(path)[1]] == ["warc_truncated_record"]


# --------------------------------------------------------------------------------------- very long URLs


def test_urls_longer_than_the_spider_requests_are_url_too_long():
    long_page = "http://warc.example/" + "p" * 2100 + ".html"
    item = {"status": 200, "headers": {"content-type": "text/html"}, "body": html('<img src="/i.jpg" alt="A photo">')}
    [reject] = warc.page_candidates(("page", long_page, item))
    assert (reject.value["reason"], reject.value["page_url"]) == ("url_too_long", long_page)
    record = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": long_page},
                           "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": [
                               {"path": "IMG@/src", "url": "/i.jpg", "alt": "A photo"}]}}}}}
    assert [r.value["reason"] for r in warc.wat_candidates(("wat", long_page, {"json": record, "date": None}))] == [
        "url_too_long"]
    long_image = "http://warc.example/" + "i" * 2100 + ".jpg"
    candidate = {"candidate_id": "c", "page_url": "http://warc.example/a.html", "image_url": long_image, "alt": "A"}
    image = {"status": 200, "headers": {}, "body": jpeg(96, 72), "date": None}
    for download in (True, False):  # never requested, and not taken from the input either: as the spider has it
        [job] = warc.attach_images(("k", {"candidates": [candidate], "images": [image]}), download=download)
        assert job["image"] is None and job["failure"][0] == "url_too_long"
    from scrapy.settings import default_settings

    assert warc.URL_LENGTH_LIMIT == default_settings.URLLENGTH_LIMIT  # the spider's (crawler/settings.py keeps it)


def test_an_empty_br_body_and_a_bad_status_of_an_unreferenced_record_are_no_rejects(tmp_path):
    """A 304 with Content-Encoding: br and no body was warc_malformed_record (an empty brotli stream "ends early"),
    not its status; a stylesheet whose status line is no number got a reject row of its own, as a page."""
    path = tmp_path / "x.warc"
    path.write_bytes(
        _raw_record("http://w.example/nm.html", [("Content-Type", "text/html"), ("Content-Encoding", "br")], b"",
                    "304 Not Modified")
        + _raw_record("http://w.example/nm.jpg", [("Content-Type", "image/jpeg"), ("Content-Encoding", "br")], b"",
                      "304 Not Modified")
        + _raw_record("http://w.example/a.css", [("Content-Type", "text/css")], b"body{}", "abc OK"))
    kept, rejected = _outputs(path)
    assert rejected == []
    by_url = {url: item for _, url, item in kept}
    assert by_url["http://w.example/nm.html"]["status"] == 304 and by_url["http://w.example/nm.jpg"]["status"] == 304
    assert by_url["http://w.example/a.css"]["failure"][0] == "warc_malformed_record"


def test_an_svg_record_of_another_type_is_format_not_allowed(tmp_path):
    """An SVG drawing sent as text/xml was image_decode_error, where the crawl (validate_image) says
    format_not_allowed."""
    path = tmp_path / "x.warc"
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"></svg>'
    path.write_bytes(_raw_record("http://w.example/d.svg", [("Content-Type", "text/xml")], svg))
    kept, _ = _outputs(path)
    (item,) = [item for _, url, item in kept if url == "http://w.example/d.svg"]
    assert item["not_image"] == ("format_not_allowed", "SVG is not a format LAIT opens") and item["body"] is None
