"""The WARC reader on input found in a bug hunt: gzip members holding several records, brotli payloads, repeated
X-Robots-Tag lines, WAT records of non-2xx responses and of requests, the cap on WAT JSON and image records, odd
record headers, and an --out that holds another stage's or a URL crawl's output."""
import gzip
import io
import itertools
import json
import os
import subprocess
import sys

import brotli
import pytest
from apache_beam.pvalue import TaggedOutput
from warcio.warcwriter import WARCWriter

import schemas
from crawler import warc
from crawler.fetch import PoliteFetcher
from tests.crawler.mocksite import TEST_MIN_SIDE, MockSite, html, jpeg
from tests.crawler.test_crawl_warc import _response, _wat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _outputs(path, max_bytes: int = 1_000_000, limit: int = 100) -> tuple[list, list]:
    """ReadWarcRecords called directly: (kind, url, item) of the records read, and the reject rows. At most ``limit``
    outputs, so that a reader that loops fails instead of running for ever (a loop that yields nothing meets the
    test's timeout)."""
    outputs = list(itertools.islice(warc.ReadWarcRecords(max_bytes=max_bytes).process(str(path)), limit))
    assert len(outputs) < limit, f"the reader went on past {limit} outputs: {outputs[:5]}"
    return ([o for o in outputs if not isinstance(o, TaggedOutput)],
            [o.value for o in outputs if isinstance(o, TaggedOutput)])


def _plain(urls, **kwargs) -> bytes:
    """An uncompressed WARC of one page per URL, each with an image of its own alt text."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=False)
    for url in urls:
        _response(writer, url, html(f'<img src="/i.jpg" alt="A photo on {url}">'), "text/html", **kwargs)
    return buffer.getvalue()


def _members(urls) -> bytes:
    """A WARC as warcio writes it gzipped: one gzip member per record."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for url in urls:
        _response(writer, url, html(f'<img src="/i.jpg" alt="A photo on {url}">'), "text/html")
    return buffer.getvalue()


def _lait_crawl(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lait", "crawl", *args], env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ gzip members of several records

PAGES = [f"http://warc.example/{name}.html" for name in ("a", "b", "c")]
MULTI_MEMBER_CASES = {
    # gzip(1) of a whole WARC: one member for all records (the job died on a negative seek)
    "whole_file": lambda: gzip.compress(_plain(PAGES)),
    # a later member holding two records (the reader looped for ever, its memory growing)
    "later_member": lambda: _members(PAGES[:1]) + gzip.compress(_plain(PAGES[1:])),
    # such a member between ordinary ones: reading goes on at its end
    "between_members": lambda: _members(PAGES[:1]) + gzip.compress(_plain(PAGES[1:])) + _members(["http://warc.example/d.html"]),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", sorted(MULTI_MEMBER_CASES))
def test_a_gzip_member_holding_several_records_is_read_record_by_record(tmp_path, case):
    path = tmp_path / f"{case}.warc.gz"
    path.write_bytes(MULTI_MEMBER_CASES[case]())
    kept, rejected = _outputs(path)
    expected = PAGES + (["http://warc.example/d.html"] if case == "between_members" else [])
    assert [(kind, url) for kind, url, _ in kept] == [("page", url) for url in expected]
    assert rejected == []


@pytest.mark.timeout(90)
def test_a_record_of_a_several_record_member_is_named_by_member_and_offset_and_a_cut_member_is_truncated(tmp_path):
    """A record damaged inside such a member is its own reject (``FILE@MEMBER+OFFSET``); a file that ends inside the
    member is one warc_truncated_record after the records read whole."""
    first = _members(PAGES[:1])
    member = gzip.compress(_plain(PAGES[1:]).replace(b"A photo on http://warc.example/c", b"A PHOTO ON http://warc.example/c"))
    path = tmp_path / "altered.warc.gz"
    path.write_bytes(first + member)
    kept, rejected = _outputs(path)
    assert [url for _, url, _ in kept] == PAGES[:2]
    assert [(r["reason"], r["page_url"]) for r in rejected] == [("warc_corrupt_record", PAGES[2])]
    assert rejected[0]["detail"].startswith(f"{path}@{len(first)}+")  # the member, then the record in it
    path.write_bytes(first + gzip.compress(_plain(PAGES[1:]))[:-40])
    kept, rejected = _outputs(path)
    assert [url for _, url, _ in kept][:2] == [PAGES[0], PAGES[1]]
    assert [r["reason"] for r in rejected][-1] == "warc_truncated_record"
    assert rejected[-1]["detail"].startswith(f"{path}@{len(first)}: ")


@pytest.mark.timeout(90)
def test_every_resynchronisation_starts_past_the_one_before(tmp_path, monkeypatch):
    """Whatever warcio says of a record's place (here: a negative length, as it gave for a member of several
    records), the reader seeks past where it started, never back or below 0, and ends."""
    real = warc._archive_iterator

    def lying(handle):
        iterator = real(handle)
        iterator.get_record_length = lambda: -10_000
        return iterator

    monkeypatch.setattr(warc, "_archive_iterator", lying)
    broken = _members(PAGES[1:2])
    broken = broken[:30] + bytes(b ^ 0x55 for b in broken[30:-8]) + broken[-8:]
    path = tmp_path / "lying.warc.gz"
    path.write_bytes(_members(PAGES[:1]) + broken + _members(PAGES[2:]))
    kept, rejected = _outputs(path)
    assert [url for _, url, _ in kept][:1] == [PAGES[0]]
    assert rejected and all(r["reason"].startswith("warc_") for r in rejected)


def test_lait_crawl_warc_reads_a_whole_file_gzipped_as_one_member(tmp_path):
    path = tmp_path / "whole.warc.gz"
    path.write_bytes(gzip.compress(_plain(PAGES)))
    result = _lait_crawl("--warc", str(path), "--out", str(tmp_path / "out"), "--no-download", "--no-progress")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr[-3000:]
    rejected = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()
    assert sorted(r["page_url"] for r in rejected) == PAGES  # each page's image: image_not_in_warc
    assert {r["reason"] for r in rejected} == {"image_not_in_warc"}


# ------------------------------------------------------------------------------------------------ brotli

def test_brotli_encoded_records_are_decoded(tmp_path):
    page = html('<img src="/i.jpg" alt="A photo sent brotli-encoded">')
    image = jpeg(96, 72)
    path = tmp_path / "br.warc"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        _response(writer, "http://warc.example/br.html", brotli.compress(page), "text/html",
                  extra=[("Content-Encoding", "br")])
        _response(writer, "http://warc.example/i.jpg", brotli.compress(image), "image/jpeg",
                  extra=[("Content-Encoding", "br")])
    kept, rejected = _outputs(path)
    assert rejected == []
    assert [(kind, url, item["body"]) for kind, url, item in kept] == [
        ("page", "http://warc.example/br.html", page), ("image", "http://warc.example/i.jpg", image)]


# ----------------------------------------------------------------------------------- repeated X-Robots-Tag

def test_an_opt_out_on_the_first_of_two_x_robots_tag_lines_counts_in_records(tmp_path):
    path = tmp_path / "robots.warc"
    lines = [("X-Robots-Tag", "noai"), ("X-Robots-Tag", "nosnippet")]
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        _response(writer, "http://warc.example/p.html", html('<img src="/i.jpg" alt="A photo of a page that opted out">'),
                  "text/html", extra=lines)
        _response(writer, "http://warc.example/i.jpg", jpeg(96, 72), "image/jpeg",
                  extra=[("X-Robots-Tag", "noimageai"), ("X-Robots-Tag", "nosnippet")])
    kept, rejected = _outputs(path)
    assert rejected == []
    page, image = kept
    rows = list(warc.page_candidates(page))
    assert [(r.value["reason"], r.value["image_url"]) for r in rows] == [("opt_out_noai", "http://warc.example/i.jpg")]
    job = {"url": image[1], "image": image[2], "failure": None,
           "candidates": [{"candidate_id": "c", "page_url": "http://warc.example/q.html", "image_url": image[1],
                           "alt": "A photo", "title": None}]}
    check = warc.ValidateImages(min_side=TEST_MIN_SIDE, max_aspect=3.0, formats=("JPEG",), max_pixels=10**8)
    assert [r.value["reason"] for r in check.process(job)] == ["opt_out_noimageai"]


class _HeaderLines(list):
    """Header lines for MockSite, a name repeated (a dict holds each name once)."""

    def items(self):
        return self


def test_an_opt_out_on_the_first_of_two_x_robots_tag_lines_counts_in_downloads():
    headers = _HeaderLines([("Content-Type", "image/jpeg"), ("X-Robots-Tag", "noimageai"),
                            ("X-Robots-Tag", "nosnippet")])
    with MockSite({"/i.jpg": (200, headers, jpeg(96, 72))}) as site:
        fetched = PoliteFetcher(allow_private_networks=True, delay=0, obey_robots=False, timeout=5).fetch(site.url + "/i.jpg")
    assert fetched.headers["x-robots-tag"] == "noimageai, nosnippet"
    assert fetched.headers["content-type"] == "image/jpeg"


_SCOPED = [  # (X-Robots-Tag lines of the page, of the image) -> (page reject reason or None, image reason or None)
    ([("X-Robots-Tag", "otherbot: noindex, noai")], [("X-Robots-Tag", "otherbot: noindex, noimageai")], None, None),
    ([("X-Robots-Tag", "otherbot: noindex"), ("X-Robots-Tag", "noai")],
     [("X-Robots-Tag", "otherbot: nosnippet"), ("X-Robots-Tag", "lait: noimageai")], "opt_out_noai", "opt_out_noimageai"),
]


def _image_job(url: str, image) -> dict:
    return {"url": url, "image": image, "failure": None,
            "candidates": [{"candidate_id": "c", "page_url": "http://warc.example/q.html", "image_url": url,
                            "alt": "A photo", "title": None}]}


def _validated(job) -> list:
    check = warc.ValidateImages(min_side=TEST_MIN_SIDE, max_aspect=3.0, formats=("JPEG",), max_pixels=10**8)
    return [getattr(r, "value", r).get("reason") for r in check.process(job)]


@pytest.mark.parametrize(("page_lines", "image_lines", "page_reason", "image_reason"), _SCOPED)
def test_a_user_agent_before_an_x_robots_tag_line_scopes_that_line_in_records(tmp_path, page_lines, image_lines,
                                                                             page_reason, image_reason):
    """Each line read whole, as the URL crawl reads it: ``otherbot: noindex, noai`` is otherbot's alone (joined with
    the other lines, its ``noai`` was taken for ours), and a line of ours after one of theirs still counts."""
    path = tmp_path / "scoped.warc"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        _response(writer, "http://warc.example/p.html", html('<img src="/i.jpg" alt="A photo of a scoped page">'),
                  "text/html", extra=page_lines)
        _response(writer, "http://warc.example/i.jpg", jpeg(96, 72), "image/jpeg", extra=image_lines)
    (page, image), _ = _outputs(path)
    rows = [getattr(r, "value", r) for r in warc.page_candidates(page)]
    assert [r.get("reason") for r in rows] == [page_reason]
    assert _validated(_image_job(image[1], image[2])) == [image_reason]


@pytest.mark.parametrize(("image_lines", "image_reason"), [(lines, reason) for _, lines, _, reason in _SCOPED])
def test_a_user_agent_before_an_x_robots_tag_line_scopes_that_line_in_downloads(image_lines, image_reason):
    headers = _HeaderLines([("Content-Type", "image/jpeg"), *image_lines])
    with MockSite({"/i.jpg": (200, headers, jpeg(96, 72))}) as site:
        download = warc.DownloadMissingImages(dict(allow_private_networks=True, delay=0, obey_robots=False, timeout=5))
        download.setup()
        url = site.url + "/i.jpg"
        (job,) = download.process({"url": url, "image": None, "failure": None, "candidates": []})
    assert _validated(_image_job(url, job["image"])) == [image_reason]


# ------------------------------------------------------------------------------------------------ WAT records

def _wat_json(status=None, warc_type=None, links=()) -> dict:
    header = {"WARC-Target-URI": "http://warc.example/w.html", **({"WARC-Type": warc_type} if warc_type else {})}
    response = {"Headers": {}, "HTML-Metadata": {"Head": {"Title": "T"}, "Links": list(links)}}
    if status is not None:
        response["Response-Message"] = {"Version": "HTTP/1.1", "Status": status, "Reason": "x"}
    return {"Envelope": {"WARC-Header-Metadata": header, "Payload-Metadata": {"HTTP-Response-Metadata": response}}}


LINK = {"path": "IMG@/src", "url": "/i.jpg", "alt": "A photo"}


def _wat_rows(record) -> tuple[list, list, list]:
    """wat_candidates with captures: (candidates, (reason, page_url) of rejects, captures)."""
    out = list(warc.wat_candidates(("wat", "http://warc.example/w.html", {"json": record, "date": None}), captures=True))
    plain = [o for o in out if not isinstance(o, TaggedOutput)]
    rejects = [(o.value["reason"], o.value["page_url"]) for o in out if isinstance(o, TaggedOutput) and o.tag == warc.REJECTED]
    captures = [o.value for o in out if isinstance(o, TaggedOutput) and o.tag == warc.CAPTURES]
    return plain, rejects, captures


def test_a_wat_record_of_a_non_2xx_response_is_a_status_reject_and_no_capture():
    for status in ("404", 301, "500"):
        assert _wat_rows(_wat_json(status, links=[LINK])) == ([], [(f"http_{int(status)}", "http://warc.example/w.html")], [])
    assert _wat_rows(_wat_json("abc", links=[LINK]))[1] == [("warc_malformed_record", "http://warc.example/w.html")]
    candidates, rejects, captures = _wat_rows(_wat_json("200", warc_type="response", links=[LINK]))
    assert [c["image_url"] for c in candidates] == ["http://warc.example/i.jpg"] and rejects == [] and len(captures) == 1


def test_a_wat_envelope_of_a_request_or_warcinfo_gives_nothing_and_is_counted_as_not_used(tmp_path):
    for warc_type in ("request", "warcinfo", "Metadata"):
        assert _wat_rows(_wat_json(warc_type=warc_type, links=[LINK])) == ([], [], [])
    path = tmp_path / "request.wat"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        payload = json.dumps(_wat_json(warc_type="request")).encode()
        writer.write_record(writer.create_warc_record("http://warc.example/w.html", "metadata", payload=io.BytesIO(payload),
                                                      warc_content_type="application/json"))
        _wat(writer, "http://warc.example/x.html", [LINK])
    kept, rejected = _outputs(path)
    assert [(kind, url) for kind, url, _ in kept] == [("wat", "http://warc.example/x.html")] and rejected == []


def test_a_wat_record_over_the_cap_on_a_record_is_too_large(tmp_path):
    path = tmp_path / "big.wat"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        _wat(writer, "http://warc.example/big.html", [dict(LINK, url=f"/i{n}.jpg") for n in range(300)])
        _wat(writer, "http://warc.example/small.html", [LINK])
    kept, rejected = _outputs(path, max_bytes=5_000)
    assert [(kind, url) for kind, url, _ in kept] == [("wat", "http://warc.example/small.html")]
    assert [(r["reason"], r["page_url"]) for r in rejected] == [("too_large", "http://warc.example/big.html")]
    assert "over 5000 bytes" in rejected[0]["detail"]


# ------------------------------------------------------------------------------ an image record over the cap

@pytest.mark.parametrize("download", [False, True], ids=["no-download", "download"])
def test_the_candidates_of_an_image_record_over_the_cap_are_too_large(tmp_path, download):
    path = tmp_path / "big.warc"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        _response(writer, "http://warc.example/big.jpg", jpeg(400, 300) + b"\0" * 20_000, "image/jpeg")
    kept, rejected = _outputs(path, max_bytes=10_000)
    assert [(r["reason"], r["image_url"]) for r in rejected] == [("too_large", "http://warc.example/big.jpg")]
    candidate = {"candidate_id": "c", "page_url": "http://warc.example/p.html", "image_url": "http://warc.example/big.jpg"}
    jobs = list(warc.attach_images(("k", {"candidates": [candidate], "images": [item for _, _, item in kept]}), download))
    assert [(job["failure"][0], job["image"]) for job in jobs] == [("too_large", None)]  # no download of it either
    assert "over 10000 bytes" in jobs[0]["failure"][1]


# ------------------------------------------------------------------------------------------- odd record headers

def _raw_response(url: str, http_block: bytes, warc_type: str = "response") -> bytes:
    """A WARC record written by hand: ``warc_type`` and ``url`` as given (warcio's writer spells them its way)."""
    return (f"WARC/1.0\r\nWARC-Type: {warc_type}\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:12345678-1234-1234-1234-123456789012>\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http_block)}\r\n\r\n"
            ).encode() + http_block + b"\r\n\r\n"


def _http(headers, body: bytes) -> bytes:
    return ("HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + body


PAGE = html('<img src="/i.jpg" alt="A photo on an odd record">')
ODD_RECORDS = {
    "no Content-Type": (_raw_response("http://warc.example/a.html", _http([], PAGE)), "http://warc.example/a.html"),
    "upper-case scheme": (_raw_response("HTTP://warc.example/a.html", _http([("Content-Type", "text/html")], PAGE)),
                          "http://warc.example/a.html"),
    "WARC-Type Response": (_raw_response("http://warc.example/a.html", _http([("Content-Type", "text/html")], PAGE),
                                         warc_type="Response"), "http://warc.example/a.html"),
}


@pytest.mark.parametrize("case", sorted(ODD_RECORDS))
def test_a_page_record_with_odd_headers_is_read_as_a_page(tmp_path, case):
    data, url = ODD_RECORDS[case]
    path = tmp_path / "odd.warc"
    path.write_bytes(data)
    kept, rejected = _outputs(path)
    assert rejected == [] and [(kind, found) for kind, found, _ in kept] == [("page", url)]
    candidates = list(warc.page_candidates(kept[0]))
    assert [(c["page_url"], c["image_url"]) for c in candidates] == [(url, "http://warc.example/i.jpg")]


def test_a_response_without_content_type_that_is_no_text_is_read_as_an_image(tmp_path):
    path = tmp_path / "image.warc"
    image = jpeg(96, 72)
    path.write_bytes(_raw_response("http://warc.example/photo", _http([], image)))
    kept, rejected = _outputs(path)
    assert rejected == [] and [(kind, url, item["body"]) for kind, url, item in kept] == [
        ("image", "http://warc.example/photo", image)]


# ----------------------------------------------------------------------------- --out of another stage or crawl

def test_an_out_folder_of_another_stage_or_a_url_crawl_is_refused_before_anything_is_deleted(tmp_path):
    path = tmp_path / "a.warc"
    path.write_bytes(_plain(PAGES[:1]))
    filter_dir = tmp_path / "run" / "filter"
    (filter_dir / "rejected").mkdir(parents=True)
    (filter_dir / "stats.json").write_text(json.dumps({"stage": "filter", "in": 0, "kept": 0, "rejected": 0}))
    result = _lait_crawl("--warc", str(path), "--out", str(filter_dir), "--no-download", "--no-progress")
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1] == (f"lait crawl: --out: {filter_dir} holds a finished filter run, not a crawl run; "
                                     f"use a new folder (a WARC run never replaces another stage's output)")
    assert json.loads((filter_dir / "stats.json").read_text())["stage"] == "filter"
    assert os.listdir(filter_dir / "rejected") == []
    crawl_dir = tmp_path / "url-crawl"
    (crawl_dir / "candidates").mkdir(parents=True)
    shard = crawl_dir / "candidates" / "part-00000.parquet"
    schemas.write_table(schemas.to_table([], "candidates"), str(shard), "candidates")
    (crawl_dir / "stats.json").write_text(json.dumps({"stage": "crawl", "source": "crawl"}))
    with pytest.raises(warc.output.OutputFolderError, match="holds a URL crawl's output"):
        warc.run([f"--input={path}", f"--output={crawl_dir}", "--no_download"])
    assert shard.exists() and (crawl_dir / "stats.json").exists()
