"""The WARC reader on records it used to pass over or misread: revisit records (resolved to the capture they refer
to, or a counted reject), a user's URLLENGTH_LIMIT, responses to HEAD requests and 204 responses."""
import base64
import datetime
import hashlib
import itertools
import json

from apache_beam.pvalue import TaggedOutput
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import schemas
from crawler import warc
from tests.crawler.mocksite import TEST_MIN_SIDE, html, jpeg
from tests.crawler.test_crawl_warc import _response
from tests.inprocess import lait_here

SITE = "http://warc.example"
T0, T1, T2 = "2023-01-01T00:00:00Z", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"


def _sha1(body: bytes, hex_digits: bool = False) -> str:
    digest = hashlib.sha1(body).digest()
    return "sha1:" + (digest.hex() if hex_digits else base64.b32encode(digest).decode())


def _revisit(writer: WARCWriter, url: str, body: bytes, refers_to: str, refers_to_date: str | None, date: str,
             status: str = "200 OK", headers=(("Content-Type", "image/jpeg"),), hex_digits: bool = False):
    """A revisit record of ``refers_to`` (its payload ``body``); ``headers`` None: no HTTP headers at all."""
    http = StatusAndHeaders(status, list(headers), protocol="HTTP/1.1") if headers is not None else None
    record = writer.create_revisit_record(url, _sha1(body, hex_digits), refers_to, refers_to_date, http_headers=http,
                                          warc_headers_dict={"WARC-Date": date})
    if refers_to_date is None:
        record.rec_headers.remove_header("WARC-Refers-To-Date")
    writer.write_record(record)


def _rows(out) -> tuple[list, list]:
    """(page_url, image_url, alt) of the kept rows, and (reason, page_url, image_url) of the rejected ones."""
    kept = schemas.read_table(str(out / "candidates"), "candidates").to_pylist() if (out / "candidates").exists() else []
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist() if (out / "rejected").exists() else []
    return (sorted((c["page_url"], c["image_url"], c["alt"]) for c in kept),
            sorted((r["reason"], r["page_url"] or "", r["image_url"] or "") for r in rejected))


def _outputs(path) -> tuple[list, list]:
    """ReadWarcRecords called directly: (kind, url, item) of the records read, and the reject rows."""
    outputs = list(itertools.islice(warc.ReadWarcRecords(max_bytes=1_000_000).process(str(path)), 100))
    return ([o for o in outputs if not isinstance(o, TaggedOutput)],
            [o.value for o in outputs if isinstance(o, TaggedOutput)])


# ------------------------------------------------------------------------------------------------ revisits


def test_revisits_resolve_to_their_originals_in_the_input_and_the_others_are_counted_rejects(tmp_path):
    """One run over: an image revisited under another URL (identical payload digest, written in hex), an image
    revisited by a 304 with no type whose X-Robots-Tag now opts out, a page revisited by a capture whose original
    opted out, after a capture in between that did not, and revisits of an image and a page the input lacks."""
    photo, other = jpeg(96, 72), jpeg(96, 72, color=(1, 2, 3))
    old_page = html('<meta name="robots" content="noai"><img src="/p.jpg" alt="A photo on the page">')
    path = tmp_path / "revisits.warc.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        _response(writer, f"{SITE}/a.html", html(
            '<img src="/copy.jpg" alt="The same photo under another URL">'
            '<img src="/later.jpg" alt="A photo that later opted out">'
            '<img src="/gone.jpg" alt="A photo whose first capture is elsewhere">'), "text/html", date=T1)
        _response(writer, f"{SITE}/img/original.jpg", photo, "image/jpeg", date=T0)
        _revisit(writer, f"{SITE}/copy.jpg", photo, f"{SITE}/img/original.jpg", None, T1, hex_digits=True)
        _response(writer, f"{SITE}/later.jpg", other, "image/jpeg", date=T0)
        _revisit(writer, f"{SITE}/later.jpg", other, f"{SITE}/later.jpg", T0, T2, status="304 Not Modified",
                 headers=[("X-Robots-Tag", "noai")])
        _revisit(writer, f"{SITE}/gone.jpg", photo, f"{SITE}/gone.jpg", T0, T1)
        _revisit(writer, f"{SITE}/unseen.jpg", photo, f"{SITE}/unseen.jpg", T0, T1)  # no page shows it
        # b.html: opted out at T0, not at T1 (its candidate kept until now), then revisited at T2 as it was at T0
        _response(writer, f"{SITE}/b.html", old_page, "text/html", date=T0)
        _response(writer, f"{SITE}/b.html", html('<img src="/p.jpg" alt="A photo on the page">'), "text/html", date=T1)
        _revisit(writer, f"{SITE}/b.html", old_page, f"{SITE}/b.html", T0, T2, headers=[("Content-Type", "text/html")])
        _response(writer, f"{SITE}/p.jpg", photo, "image/jpeg", date=T0)
        _revisit(writer, f"{SITE}/elsewhere.html", old_page, f"{SITE}/elsewhere.html", T0, T1,
                 headers=[("Content-Type", "text/html")])
    out = tmp_path / "out"
    stats = warc.read_warcs([str(path)], str(out), download=False, min_side=TEST_MIN_SIDE)
    kept, rejected = _rows(out)
    assert kept == [(f"{SITE}/a.html", f"{SITE}/copy.jpg", "The same photo under another URL")]
    assert rejected == sorted([
        ("opt_out_noai", f"{SITE}/a.html", f"{SITE}/later.jpg"),  # the 304's header, on the original's bytes
        ("revisit_original_missing", f"{SITE}/a.html", f"{SITE}/gone.jpg"),  # its candidate, downloads off
        ("revisit_original_missing", "", f"{SITE}/gone.jpg"),  # the revisit records themselves
        ("revisit_original_missing", "", f"{SITE}/unseen.jpg"),
        ("revisit_original_missing", f"{SITE}/elsewhere.html", ""),
        ("opt_out_noai", f"{SITE}/b.html", f"{SITE}/p.jpg"),  # the T0 capture's own opt-out row
        ("opt_out_noai", f"{SITE}/b.html", f"{SITE}/p.jpg"),  # the T1 capture's, withdrawn by the T2 revisit
    ])
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(kept) + len(rejected)
    assert stats["lait/warc/revisits_resolved"] == 3 and stats.get("lait/warc/records_not_used", 0) == 0
    detail = next(r["detail"] for r in schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
                  if r["image_url"] == f"{SITE}/unseen.jpg")
    assert f"revisit of {SITE}/unseen.jpg (2023-01-01T00:00:00Z), not in the input" in detail


def test_a_revisit_whose_header_opts_out_withdraws_the_candidates_of_its_original_page():
    """The page path called directly: the revisit's capture is at its date, with its own header's opt-out."""
    date = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    original = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    revisit = {"url": f"{SITE}/a.html", "of": f"{SITE}/a.html", "of_date": original, "digest": None,
               "where": "x.warc@0", "own_reject": False, "untyped": False}
    item = {"status": 200, "headers": {"x-robots-tag": ["noai"]}, "date": date, "revisit": revisit}
    captures = [(original, None)]
    [capture] = warc.resolve_page_revisits((f"{SITE}/a.html", {"captures": captures,
                                                               "revisits": [("page-revisits", f"{SITE}/a.html", item)]}))
    assert capture == (f"{SITE}/a.html", (date, "opt_out_noai", None))
    other = dict(revisit, of_date=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))  # not that capture
    reject, capture = warc.resolve_page_revisits((f"{SITE}/a.html", {"captures": captures, "revisits": [
        ("page-revisits", f"{SITE}/a.html", dict(item, revisit=other))]}))
    assert (reject.value["reason"], reject.value["page_url"]) == ("revisit_original_missing", f"{SITE}/a.html")
    assert capture == (f"{SITE}/a.html", (date, "opt_out_noai", None))  # its own wish, whatever its original


def test_a_revisit_matches_its_original_by_digest_in_any_spelling_and_not_a_capture_of_other_bytes():
    photo = jpeg(96, 72)
    assert warc._digest(_sha1(photo)) == warc._digest(_sha1(photo, hex_digits=True)) != warc._digest(_sha1(b"x"))
    original = {"status": 200, "headers": {"content-type": "image/jpeg"}, "body": photo, "date": None,
                "digest": warc._digest(_sha1(photo))}
    revisit = {"status": 200, "headers": {}, "date": None, "revisit": {
        "url": f"{SITE}/b.jpg", "of": f"{SITE}/b.jpg", "of_date": None, "digest": warc._digest(_sha1(b"x")),
        "where": "x.warc@9", "own_reject": True, "untyped": False}}
    candidate = {"candidate_id": "c", "page_url": f"{SITE}/a.html", "image_url": f"{SITE}/b.jpg", "alt": "A photo"}
    key = warc.image_key(f"{SITE}/b.jpg")
    rows = list(warc.attach_images((key, {"candidates": [candidate], "images": [dict(original, date=None), revisit]}),
                                   download=False))
    reject = [r.value for r in rows if isinstance(r, TaggedOutput)]
    assert [(r["reason"], r["image_url"]) for r in reject] == [("revisit_original_missing", f"{SITE}/b.jpg")]
    [job] = [r for r in rows if not isinstance(r, TaggedOutput)]
    assert job["image"]["body"] == photo  # the other capture of the URL is still the image's


def test_a_page_revisit_without_a_refers_to_date_is_the_capture_its_payload_digest_names(tmp_path):
    """A revisit as wget --warc-dedup writes them (no WARC-Refers-To-Date): the HTML it stands for is the opted-out
    T0 capture's (its digest), not the later T1 capture's, so the page's latest capture opts out."""
    noai = html('<meta name="robots" content="noai"><img src="/p.jpg" alt="A photo on the page">')
    path = tmp_path / "digest.warc.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        _response(writer, f"{SITE}/b.html", noai, "text/html", date=T0)
        _response(writer, f"{SITE}/b.html", html('<img src="/p.jpg" alt="A photo on the page">'), "text/html", date=T1)
        _revisit(writer, f"{SITE}/b.html", noai, f"{SITE}/b.html", None, T2, headers=[("Content-Type", "text/html")])
        _response(writer, f"{SITE}/p.jpg", jpeg(96, 72), "image/jpeg", date=T0)
    out = tmp_path / "out"
    stats = warc.read_warcs([str(path)], str(out), download=False, min_side=TEST_MIN_SIDE)
    kept, rejected = _rows(out)
    assert kept == [] and rejected == [("opt_out_noai", f"{SITE}/b.html", f"{SITE}/p.jpg")] * 2
    assert stats["in"] == stats["kept"] + stats["rejected"] == 2 and stats["lait/warc/revisits_resolved"] == 1


def test_a_revisit_of_a_revisit_resolves_to_the_root_and_a_revisit_that_opts_out_counts_without_its_original(
        tmp_path):
    """Chains of 304s (each refers to the fetch before it) whose last one's X-Robots-Tag opts out, of an image and
    of a page; a chain of an image without one, and another URL's revisit of its middle link; and revisits that
    opt out whose original (T1) is not in the input, of an image and a page captured at T0."""
    photo, other = jpeg(96, 72), jpeg(96, 72, color=(9, 9, 9))
    page = html('<img src="/y.jpg" alt="A photo on a page that later opted out">')
    plain = html('<img src="/z.jpg" alt="A photo on a page whose revisit opted out">')
    path = tmp_path / "chains.warc.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        _response(writer, f"{SITE}/a.html", html(
            '<img src="/x.jpg" alt="A photo that later opted out"><img src="/d.jpg" alt="A photo revisited twice">'
            '<img src="/copy.jpg" alt="A copy of a revisit"><img src="/w.jpg" alt="A photo whose revisit opted out">'),
            "text/html", date=T0)
        noai_304 = dict(status="304 Not Modified", headers=[("X-Robots-Tag", "noai")])
        for url, body in ((f"{SITE}/x.jpg", photo), (f"{SITE}/b.html", page)):
            _response(writer, url, body, "image/jpeg" if url.endswith(".jpg") else "text/html", date=T0)
            _revisit(writer, url, body, url, T0, T1, status="304 Not Modified", headers=[])
            _revisit(writer, url, body, url, T1, T2, **noai_304)
        _response(writer, f"{SITE}/y.jpg", other, "image/jpeg", date=T0)
        _response(writer, f"{SITE}/d.jpg", other, "image/jpeg", date=T0)
        _revisit(writer, f"{SITE}/d.jpg", other, f"{SITE}/d.jpg", T0, T1)
        _revisit(writer, f"{SITE}/d.jpg", other, f"{SITE}/d.jpg", T1, T2)
        _revisit(writer, f"{SITE}/copy.jpg", other, f"{SITE}/d.jpg", T1, T2)
        _response(writer, f"{SITE}/w.jpg", photo, "image/jpeg", date=T0)
        _revisit(writer, f"{SITE}/w.jpg", photo, f"{SITE}/w.jpg", T1, T2, **noai_304)
        _response(writer, f"{SITE}/c.html", plain, "text/html", date=T0)
        _revisit(writer, f"{SITE}/c.html", plain, f"{SITE}/c.html", T1, T2, **noai_304)
        _response(writer, f"{SITE}/z.jpg", photo, "image/jpeg", date=T0)
    out = tmp_path / "out"
    stats = warc.read_warcs([str(path)], str(out), download=False, min_side=TEST_MIN_SIDE)
    kept, rejected = _rows(out)
    assert kept == [(f"{SITE}/a.html", f"{SITE}/copy.jpg", "A copy of a revisit"),
                    (f"{SITE}/a.html", f"{SITE}/d.jpg", "A photo revisited twice")]
    assert rejected == sorted([
        ("opt_out_noai", f"{SITE}/a.html", f"{SITE}/x.jpg"),
        ("opt_out_noai", f"{SITE}/b.html", f"{SITE}/y.jpg"),
        ("opt_out_noai", f"{SITE}/a.html", f"{SITE}/w.jpg"),  # not kept from its T0 capture
        ("opt_out_noai", f"{SITE}/c.html", f"{SITE}/z.jpg"),
        ("revisit_original_missing", "", f"{SITE}/w.jpg"),  # the revisit records themselves (no type: an image's)
        ("revisit_original_missing", "", f"{SITE}/c.html"),
    ])
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(kept) + len(rejected)
    assert stats["lait/warc/revisits_resolved"] == 7


def _payload_bytes(value) -> int:
    """The bytes of the image payloads in outputs (nested tuples, lists, dicts and tagged outputs)."""
    if isinstance(value, TaggedOutput):
        return _payload_bytes(value.value)
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_payload_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_payload_bytes(v) for v in value)
    return 0


def test_an_original_that_many_revisits_of_other_urls_refer_to_crosses_once_and_only_to_urls_with_candidates():
    """500 revisits of one original under other URLs, one of them shown by a page: the original leaves its join
    once, and its bytes go on to the one URL with a candidate; the others only learn that it was found."""
    photo = jpeg(96, 72)
    date = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    original = {"status": 200, "headers": {"content-type": "image/jpeg"}, "body": photo, "date": date, "digest": None}

    def revisit(number):
        return {"status": 200, "headers": {}, "date": date, "revisit": {
            "url": f"{SITE}/copy{number}.jpg", "of": f"{SITE}/o.jpg", "of_date": None, "digest": None,
            "where": f"x.warc@{number}", "own_reject": True, "untyped": False}}

    def tagged(outputs, tag):
        return [o.value for o in outputs if isinstance(o, TaggedOutput) and o.tag == tag]

    key = warc.image_key(f"{SITE}/o.jpg")
    sent = list(warc.attach_images((key, {"candidates": [], "images": [original],
                                          "forwards": [revisit(n) for n in range(500)]}), download=False))
    assert _payload_bytes(sent) == len(photo) and len(tagged(sent, warc.ORIGINALS)) == 1
    candidate = {"candidate_id": "c", "page_url": f"{SITE}/a.html", "image_url": f"{SITE}/copy0.jpg", "alt": "A copy"}
    requests, pending = [], {}
    for number in range(500):
        own = warc.image_key(f"{SITE}/copy{number}.jpg")
        waiting = list(warc.attach_images((own, {"candidates": [candidate] if number == 0 else [],
                                                 "images": [revisit(number)]}), download=False))
        requests += tagged(waiting, warc.REQUESTS)
        [(_, pending[own])] = tagged(waiting, warc.PENDING)
    answers = list(warc.forward_originals((key, {"originals": [o for _, o in tagged(sent, warc.ORIGINALS)],
                                                 "requests": [r for _, r in requests]})))
    assert len(answers) == 500 and _payload_bytes(answers) == len(photo)  # to copy0.jpg only
    rows = []
    for own, answer in answers:
        rows += warc.attach_forwarded((own, {"pending": [pending[own]], "forwarded": [answer]}), download=False)
    [job] = rows  # the revisits no page shows are resolved: no reject
    assert job["image"]["body"] == photo and job["candidates"] == [candidate] and job["failure"] is None


# ------------------------------------------------------------------------------------------ URLLENGTH_LIMIT


def test_lait_crawl_warc_takes_urllength_limit_as_the_spider_does(tmp_path):
    path, long_page = tmp_path / "long.warc.gz", f"{SITE}/a-page-url-over-forty-characters.html"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        _response(writer, long_page, html('<img src="/i.jpg" alt="A photo">'), "text/html")
        _response(writer, f"{SITE}/s.html", html('<img src="/i.jpg" alt="A photo">'), "text/html")
        _response(writer, f"{SITE}/i.jpg", jpeg(96, 72), "image/jpeg")
    out = tmp_path / "out"
    result = lait_here("crawl", "--warc", str(path), "--out", str(out), "--no-download", "--min-side",
                       str(TEST_MIN_SIDE), "-s", "URLLENGTH_LIMIT=40", check=False)
    assert result.returncode == 0, result.stderr
    kept, rejected = _rows(out)
    assert kept == [(f"{SITE}/s.html", f"{SITE}/i.jpg", "A photo")]
    assert rejected == [("url_too_long", long_page, "")]
    row = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()[0]
    assert row["detail"] == f"{len(long_page)} characters, over URLLENGTH_LIMIT 40"
    assert json.loads((out / "stats.json").read_text())["in"] == 2
    long_url = f"{SITE}/" + "p" * 3000
    assert warc.url_too_long(long_url)[0] == "url_too_long" and warc.url_too_long(long_url, 0) is None  # 0: none
    for value in ("abc", "2.5"):
        bad = lait_here("crawl", "--warc", str(path), "--out", str(tmp_path / "bad"), "--no-download",
                        "-s", f"URLLENGTH_LIMIT={value}", check=False)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        [line] = bad.stderr.strip().splitlines()
        assert "URLLENGTH_LIMIT" in line and "whole number" in line, line
        assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------- HEAD and 204 responses


def _record(kind: str, url: str, record_id: str, block: bytes, concurrent_to: str | None = None) -> bytes:
    """A record written byte by byte, without digests (warcio's writer adds a payload digest that would vouch for
    an empty body, whatever its Content-Length says)."""
    names = f"WARC-Concurrent-To: <urn:uuid:{concurrent_to}>\r\n" if concurrent_to else ""
    return (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{record_id}>\r\n{names}Content-Type: application/http; msgtype={kind}\r\n"
            f"Content-Length: {len(block)}\r\n\r\n").encode() + block + b"\r\n\r\n"


def _exchange(url: str, method: str, content_type: str, request_first: bool) -> bytes:
    """A response with no body but a Content-Length, and the request it answers, paired by WARC-Concurrent-To as
    wget writes them (request first, the response naming it) or as Heritrix does (response first, named)."""
    response_id, request_id = f"response-{url}", f"request-{url}"
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: 5000\r\n\r\n".encode()
    request = f"{method} /{url.rsplit('/', 1)[1]} HTTP/1.1\r\nHost: warc.example\r\n\r\n".encode()
    if request_first:
        return (_record("request", url, request_id, request)
                + _record("response", url, response_id, http, concurrent_to=request_id))
    return (_record("response", url, response_id, http)
            + _record("request", url, request_id, request, concurrent_to=response_id))


def test_a_response_to_a_head_request_is_no_capture_and_no_truncated_record(tmp_path):
    path = tmp_path / "head.warc"
    with open(path, "wb") as handle:
        handle.write(_exchange(f"{SITE}/h1.jpg", "HEAD", "image/jpeg", request_first=True)
                     + _exchange(f"{SITE}/h2.jpg", "HEAD", "image/jpeg", request_first=False)
                     + _exchange(f"{SITE}/h3.html", "HEAD", "text/html", request_first=False)
                     + _exchange(f"{SITE}/g.jpg", "GET", "image/jpeg", request_first=False))  # a GET's: cut short
        writer = WARCWriter(handle, gzip=False)
        for number in range(20):  # a HEAD request after these would be too far to pair (``HOLD_RECORDS``)
            _response(writer, f"{SITE}/p{number}.html", html("<p>a page</p>"), "text/html")
    kept, rejected = _outputs(path)
    assert [(r["reason"], r.get("image_url") or r.get("page_url")) for r in rejected] == [
        ("warc_truncated_record", f"{SITE}/g.jpg")]
    assert {url for _, url, item in kept if "failure" not in item} == {
        f"{SITE}/p{number}.html" for number in range(20)}  # no empty capture of h1, h2 or h3
    assert warc.HOLD_RECORDS < 20
    out = tmp_path / "out"
    stats = warc.read_warcs([str(path)], str(out), download=False)
    assert stats["lait/warc/head_responses"] == 3 and stats["rejected"] == 1
    assert stats["lait/warc/records_not_used"] == 3 + 4  # the HEAD responses and the four requests


def test_a_204_is_no_capture_of_a_page_or_an_image():
    page = f"{SITE}/a.html"
    [reject] = warc.page_candidates(("page", page, {"status": 204, "headers": {"content-type": "text/html"},
                                                    "body": b"", "date": None}), captures=True)
    assert (reject.value["reason"], reject.value["page_url"]) == ("http_204", page)  # no capture: none to outweigh
    photo = jpeg(96, 72)
    old = {"status": 200, "headers": {"content-type": "image/jpeg"}, "body": photo,
           "date": datetime.datetime(2023, 1, 1, tzinfo=datetime.timezone.utc)}
    empty = {"status": 204, "headers": {}, "body": b"", "date": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)}
    candidate = {"candidate_id": "c", "page_url": page, "image_url": f"{SITE}/i.jpg", "alt": "A photo"}
    [job] = warc.attach_images(("k", {"candidates": [candidate], "images": [old, empty]}), download=False)
    assert job["image"] is old and job["failure"] is None
    [job] = warc.attach_images(("k", {"candidates": [candidate], "images": [empty]}), download=False)
    assert job["image"] is None and job["failure"][0] == "image_not_in_warc"
