"""The WARC reader: a WARC file written by the test, read by `lait crawl --warc` (Beam, DirectRunner)."""
import gzip
import io
import json
import os
import subprocess
import sys

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import schemas
from tests.crawler.mocksite import JPEG, TEST_MIN_SIDE, MockSite, html, jpeg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _response(writer: WARCWriter, url: str, body: bytes, content_type: str, status: str = "200 OK", extra=()):
    headers = StatusAndHeaders(status, [("Content-Type", content_type), *extra], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))


def _wat(writer: WARCWriter, page_url: str, links: list[dict]):
    envelope = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": page_url},
                             "Payload-Metadata": {"HTTP-Response-Metadata": {
                                 "Headers": {"Content-Language": "en"},
                                 "HTML-Metadata": {"Head": {"Title": "WAT page"}, "Links": links}}}}}
    payload = json.dumps(envelope).encode()
    writer.write_record(writer.create_warc_record(page_url, "metadata", payload=io.BytesIO(payload),
                                                  warc_content_type="application/json"))


def write_test_warcs(folder, site_url: str) -> tuple[str, str, str]:
    """A gzipped WARC (pages, images, a duplicate page, a truncated last record), a WAT and a broken file."""
    warc_path = os.path.join(folder, "pages.warc.gz")
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    page = html('<img src="/img/inwarc.jpg" alt="Image in the WARC">'
                f'<img src="{site_url}/img/online.jpg" alt="Image fetched by the download step">'
                '<img src="/img/small.jpg" alt="Too small"><img src="/img/deco.jpg" alt="">'
                f'<img src="{site_url}/img/gone.jpg" alt="Image the site no longer has">')
    _response(writer, "http://warc.example/a.html", page, "text/html")
    _response(writer, "http://warc.example/a.html", page, "text/html")  # a revisit: same candidates again
    _response(writer, "http://warc.example/optout.html",
              html('<meta name="robots" content="noimageai"><img src="/img/inwarc.jpg" alt="Opted out">'), "text/html")
    _response(writer, "http://warc.example/img/inwarc.jpg", jpeg(96, 72), "image/jpeg")
    _response(writer, "http://warc.example/img/small.jpg", jpeg(30, 30), "image/jpeg")
    _response(writer, "http://warc.example/style.css", b"body{}", "text/css")
    _response(writer, "http://warc.example/cut.html", html('<img src="/img/inwarc.jpg" alt="Cut">' + "x" * 4000), "text/html")
    data = buffer.getvalue()
    with open(warc_path, "wb") as handle:
        handle.write(data[:-200])  # the last gzip member is truncated
    wat_path = os.path.join(folder, "meta.wat")
    with open(wat_path, "wb") as handle:
        _wat(WARCWriter(handle, gzip=False), "http://warc.example/wat.html", [
            {"path": "A@/href", "url": "http://warc.example/next.html"},
            {"path": "IMG@/src", "url": "http://warc.example/img/inwarc.jpg", "alt": "From the WAT", "title": "T"},
            {"path": "IMG@/src", "url": "http://warc.example/img/deco.jpg", "alt": ""},
        ])
    broken_path = os.path.join(folder, "broken.warc.gz")
    with open(broken_path, "wb") as handle:
        handle.write(gzip.compress(b"this is not a WARC record\r\n\r\n"))
    return warc_path, wat_path, broken_path


def test_warc_files_become_candidates_with_counted_rejects(tmp_path):
    site = MockSite({"/img/online.jpg": (200, JPEG, jpeg(96, 72, color=(1, 2, 3))),
                     "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")})
    with site:
        files = write_test_warcs(str(tmp_path), site.url)
        out = tmp_path / "out"
        env = dict(os.environ, PYTHONPATH=ROOT)
        # Every image the WARC lacks is on the local site: the download step only ever talks to 127.0.0.1.
        result = subprocess.run(
            [sys.executable, "-m", "lait", "crawl", "--warc", *files, "--out", str(out), "--allow-private-networks",
             "--min-side", str(TEST_MIN_SIDE), "-s", "DOWNLOAD_DELAY=0", "-s", "DOWNLOAD_TIMEOUT=2"],
            env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert site.counts["/img/online.jpg"] == 1 and site.counts["/img/gone.jpg"] == 1
        assert set(site.counts) == {"/robots.txt", "/img/online.jpg", "/img/gone.jpg"}
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    found = {(c["page_url"], c["image_url"]): (c["alt"], c["title"], c["source"], c["width"]) for c in candidates}
    assert found == {
        ("http://warc.example/a.html", "http://warc.example/img/inwarc.jpg"): ("Image in the WARC", None, "warc", 96),
        ("http://warc.example/a.html", f"{site.url}/img/online.jpg"): ("Image fetched by the download step", None, "warc", 96),
        ("http://warc.example/wat.html", "http://warc.example/img/inwarc.jpg"): ("From the WAT", "T", "warc", 96),
    }
    wat_row = next(c for c in candidates if c["page_url"].endswith("wat.html"))
    assert wat_row["page_lang"] == "en" and wat_row["page_title"] == "WAT page"
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    reasons = sorted((r["reason"], r["image_url"] or r["page_url"] or "") for r in rejected)
    by_reason = sorted(r for r, _ in reasons)
    # The revisit of a.html repeats its four candidates (dropped as duplicates) and its decorative image.
    assert by_reason == sorted(["duplicate_candidate"] * 4 + ["decorative_image"] * 3 + [
        "image_too_small", "opt_out_noimageai", "warc_truncated_record", "warc_malformed_record", "http_404"])
    details = {r["reason"]: r["detail"] for r in rejected}
    assert "pages.warc.gz" in details["warc_truncated_record"] and "broken.warc.gz" in details["warc_malformed_record"]
    stats = __import__("json").loads((out / "stats.json").read_text())
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(candidates) + len(rejected)
    assert stats["source"] == "warc" and stats["lait/warc/images_downloaded"] == 1


def test_read_warc_records_flags_altered_and_declared_truncated_records(tmp_path):
    """The DoFn called directly: a payload altered after writing, and a record marked WARC-Truncated."""
    from apache_beam.pvalue import TaggedOutput

    from crawler.warc import ReadWarcRecords

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=False)
    _response(writer, "http://warc.example/ok.jpg", jpeg(96, 72), "image/jpeg")
    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
    record = writer.create_warc_record("http://warc.example/cut.html", "response",
                                       payload=io.BytesIO(html("<p>cut</p>")), http_headers=headers)
    record.rec_headers.add_header("WARC-Truncated", "length")
    writer.write_record(record)
    _response(writer, "http://warc.example/altered.html", html("<p>original text</p>"), "text/html")
    data = buffer.getvalue().replace(b"original text", b"ORIGINAL TEXT")  # same length, wrong digest
    path = tmp_path / "records.warc"
    path.write_bytes(data)
    outputs = list(ReadWarcRecords(max_bytes=1_000_000).process(str(path)))
    kept = [o for o in outputs if not isinstance(o, TaggedOutput)]
    rejected = {o.value["page_url"]: o.value for o in outputs if isinstance(o, TaggedOutput)}
    assert [(kind, url) for kind, url, _ in kept] == [("image", "http://warc.example/ok.jpg")]
    assert rejected["http://warc.example/cut.html"]["reason"] == "warc_truncated_record"
    assert "WARC-Truncated" in rejected["http://warc.example/cut.html"]["detail"]
    assert rejected["http://warc.example/altered.html"]["reason"] == "warc_corrupt_record"
    assert "digest mismatch" in rejected["http://warc.example/altered.html"]["detail"]
