"""The WARC reader: a WARC file written by the test, read by `lait crawl --warc` (Beam, DirectRunner)."""
import collections
import gzip
import io
import json
import logging
import os
import shutil

import pyarrow.parquet as pq
import pytest

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import schemas
from crawler import images
from tests.crawler.mocksite import JPEG, TEST_MIN_SIDE, MockSite, html, jpeg
from tests.inprocess import lait_here


def _response(writer: WARCWriter, url: str, body: bytes, content_type: str, status: str = "200 OK", extra=(),
              date: str | None = None):
    headers = StatusAndHeaders(status, [("Content-Type", content_type), *extra], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                                  warc_headers_dict={"WARC-Date": date} if date else None))


def _wat(writer: WARCWriter, page_url: str, links: list[dict], metas: list[dict] = (), date: str | None = None):
    """A WAT metadata record of a page; ``date`` is its capture's WARC-Date (in the record and its envelope)."""
    header = {"WARC-Target-URI": page_url, **({"WARC-Date": date} if date else {})}
    envelope = {"Envelope": {"WARC-Header-Metadata": header,
                             "Payload-Metadata": {"HTTP-Response-Metadata": {
                                 "Headers": {"Content-Language": "en"},
                                 "HTML-Metadata": {"Head": {"Title": "WAT page", "Metas": list(metas)},
                                                   "Links": links}}}}}
    payload = json.dumps(envelope).encode()
    writer.write_record(writer.create_warc_record(page_url, "metadata", payload=io.BytesIO(payload),
                                                  warc_content_type="application/json",
                                                  warc_headers_dict={"WARC-Date": date} if date else None))


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
        # Every image the WARC lacks is on the local site: the download step only ever talks to 127.0.0.1.
        lait_here("crawl", "--warc", *files, "--out", str(out), "--allow-private-networks", "--min-side",
                  str(TEST_MIN_SIDE), "-s", "DOWNLOAD_DELAY=0", "-s", "DOWNLOAD_TIMEOUT=2")
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
    # the image rules it applied, recorded as a URL crawl records them
    assert stats["settings"] == {"min_side": TEST_MIN_SIDE, "max_aspect": 3.0, "image_formats": list(images.DEFAULT_FORMATS),
                                 "max_pixels": images.DEFAULT_MAX_PIXELS}


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


def _records(data: bytes, path) -> tuple[list, list]:
    """ReadWarcRecords called directly on ``data``: (kind, url) of the records kept, and the reject rows."""
    from apache_beam.pvalue import TaggedOutput

    from crawler.warc import ReadWarcRecords

    path.write_bytes(data)
    outputs = list(ReadWarcRecords(max_bytes=1_000_000).process(str(path)))
    kept = [(kind, url) for kind, url, _ in (o for o in outputs if not isinstance(o, TaggedOutput))]
    return kept, [o.value for o in outputs if isinstance(o, TaggedOutput)]


def test_one_bad_record_is_rejected_and_the_records_after_it_are_read(tmp_path):
    members = []
    for url, status in (("http://warc.example/1.html", "200 OK"), ("http://warc.example/2.html", "abc OK"),
                        ("http://warc.example/3.html", "200 OK"), ("http://warc.example/4.html", "200 OK")):
        buffer = io.BytesIO()
        _response(WARCWriter(buffer, gzip=True), url, html(f"<p>{url}</p>"), "text/html", status=status)
        members.append(buffer.getvalue())
    kept, rejected = _records(b"".join(members), tmp_path / "status.warc.gz")
    assert kept == [("page", "http://warc.example/1.html"), ("page", "http://warc.example/3.html"),
                    ("page", "http://warc.example/4.html")]
    assert [(r["reason"], r["page_url"]) for r in rejected] == [("warc_malformed_record", "http://warc.example/2.html")]
    # A gzip member corrupt in the middle of the file: reading goes on from the next whole member.
    broken = members[1][:30] + bytes(b ^ 0x55 for b in members[1][30:-8]) + members[1][-8:]
    kept, rejected = _records(members[0] + broken + members[2] + members[3], tmp_path / "corrupt.warc.gz")
    assert kept == [("page", "http://warc.example/1.html"), ("page", "http://warc.example/3.html"),
                    ("page", "http://warc.example/4.html")]
    assert [r["reason"] for r in rejected] == ["warc_malformed_record"]
    assert f"@{len(members[0])}" in rejected[0]["detail"]


def test_wat_records_of_unexpected_shapes_are_rejects_and_links_resolve_like_the_spider():
    from apache_beam.pvalue import TaggedOutput

    from crawler.warc import wat_candidates

    def run(record):
        out = list(wat_candidates(("wat", "http://warc.example/dir/page.html", {"json": record, "date": None})))
        return ([o for o in out if not isinstance(o, TaggedOutput)],
                [(o.value["reason"], o.value.get("page_url"), o.value.get("image_url")) for o in out
                 if isinstance(o, TaggedOutput)])

    def envelope(links, head=None):
        return {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": "http://warc.example/dir/page.html"},
                             "Payload-Metadata": {"HTTP-Response-Metadata": {"Headers": {}, "HTML-Metadata": {
                                 "Head": head or {"Title": "T"}, "Links": links}}}}}

    page = "http://warc.example/dir/page.html"
    for record in ([1, 2, 3], {"Envelope": None}, envelope("not a list"), envelope([], head=[1])):
        assert run(record) == ([], [("warc_malformed_record", page, None)])
    candidates, rejected = run(envelope([
        {"path": "IMG@/src", "url": "rel.jpg", "alt": "Relative"},
        {"path": "IMG@/src", "url": "//cdn.example/p.jpg#frag", "alt": 5},
        {"path": "IMG@/src", "url": "javascript:void(0)", "alt": "Script"},
        {"path": "IMG@/src", "url": "http://[bad/x.jpg", "alt": "Broken"},
        {"path": "IMG@/src", "url": ["x"], "alt": "Not text"},
        "not a link",
    ], head={"Title": ["a", "b"]}))
    assert [(c["image_url"], c["alt"], c["page_title"]) for c in candidates] == [
        ("http://warc.example/dir/rel.jpg", "Relative", None), ("http://cdn.example/p.jpg", "5", None)]
    assert rejected == [("unsupported_scheme", page, "javascript:void(0)"), ("invalid_url", page, None),
                        ("warc_malformed_record", page, None), ("warc_malformed_record", page, None)]


def test_a_page_the_extractor_fails_on_is_a_reject_in_the_warc_reader(monkeypatch):
    from crawler import extract, warc

    monkeypatch.setattr(extract, "parse_page", lambda *a, **k: 1 / 0)
    out = list(warc.page_candidates(("page", "http://warc.example/p.html",
                                     {"status": 200, "headers": {}, "body": b"<p>x</p>", "date": None})))
    assert [(o.value["reason"], o.value["page_url"]) for o in out] == [("parse_error", "http://warc.example/p.html")]


def test_hostile_warc_files_give_counted_rejects_and_keep_every_good_record(tmp_path):
    """Through the real `lait crawl --warc` (no downloads): nothing crashes, nothing after a bad record is lost."""
    good = jpeg(96, 72)
    path = tmp_path / "hostile.warc.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        _response(writer, "http://warc.example/a.html",
                  html('<img src="/a.jpg" alt="Before"><img src="http://[bad/x.jpg" alt="Bad host">'
                       '<a href="http://[oops/">x</a><img src="/a.jpg" alt="Before">'), "text/html")
        _response(writer, "http://warc.example/b.html", html('<img src="/a.jpg" alt="Bad status">'), "text/html",
                  status="abc OK")
        _response(writer, "http://warc.example/c.html", html('<img src="/a.jpg" alt="After">'), "text/html")
        _response(writer, "http://warc.example/a.jpg", good, "image/jpeg")
    wat_path = tmp_path / "odd.wat"
    with open(wat_path, "wb") as handle:
        writer = WARCWriter(handle, gzip=False)
        for payload in (b"[1, 2, 3]", json.dumps({"Envelope": None}).encode()):
            writer.write_record(writer.create_warc_record("http://warc.example/w.html", "metadata",
                                                          payload=io.BytesIO(payload), warc_content_type="application/json"))
        _wat(writer, "http://warc.example/dir/w.html", [{"path": "IMG@/src", "url": "../a.jpg", "alt": 7}])
    out = tmp_path / "out"
    result = lait_here("crawl", "--warc", str(path), str(wat_path), "--out", str(out), "--no-download", "--min-side",
                       str(TEST_MIN_SIDE), check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr[-3000:]
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    assert sorted((c["page_url"], c["alt"]) for c in candidates) == [
        ("http://warc.example/a.html", "Before"), ("http://warc.example/c.html", "After"),
        ("http://warc.example/dir/w.html", "7")]
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert sorted((r["reason"], r["page_url"]) for r in rejected) == [
        ("duplicate_candidate", "http://warc.example/a.html"), ("invalid_url", "http://warc.example/a.html"),
        ("warc_malformed_record", "http://warc.example/b.html"), ("warc_malformed_record", "http://warc.example/w.html"),
        ("warc_malformed_record", "http://warc.example/w.html")]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(candidates) + len(rejected)


def test_a_missing_warc_input_is_a_clear_error_and_the_previous_output_stays(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text("{}")
    for missing in (str(tmp_path / "nope.warc.gz"), str(tmp_path / "none-*.warc.gz")):
        result = lait_here("crawl", "--warc", missing, "--out", str(out), "--no-download", check=False)
        assert result.returncode == 2, result.stdout + result.stderr[-3000:]
        assert f"no such file: {missing}" in result.stderr and "Traceback" not in result.stderr
    assert (out / "stats.json").exists()


def test_one_file_named_two_ways_is_read_once(tmp_path, monkeypatch):
    from crawler.warc import _expand_inputs

    (tmp_path / "a.warc.gz").write_bytes(b"")
    (tmp_path / "b.warc.gz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    found = _expand_inputs(["a.warc.gz", str(tmp_path / "a.warc.gz"), "*.warc.gz"])
    assert sorted(os.path.abspath(path) for path in found) == [str(tmp_path / "a.warc.gz"), str(tmp_path / "b.warc.gz")]


# ------------------------------------------------------------------------------------ resumable parts

PAGE_A = html('<img src="/img/one.jpg" alt="One">')


def write_part_warcs(folder) -> list[str]:
    """Four WARC files, one part each with --files-per-part 1 (no downloads needed).

    Page a.html (with one.jpg) is in files 1, 3 and 4: a candidate kept by three parts, whose copies
    in parts 3 and 4 (the whole candidate shard of part 4) must become duplicate_candidate rejects.
    Page c.html is in file 1 and its image three.jpg in file 3: the join across parts that a run in
    parts does not make (``image_not_in_warc`` there). b.html is stored twice in file 2: a duplicate
    within one part.
    """
    contents = {
        "1-first.warc.gz": [("a.html", PAGE_A, "text/html"), ("img/one.jpg", jpeg(96, 72), "image/jpeg"),
                            ("c.html", html('<img src="/img/three.jpg" alt="Three">'), "text/html")],
        "2-second.warc.gz": [("b.html", html('<img src="/img/two.jpg" alt="Two">'), "text/html"),
                             ("b.html", html('<img src="/img/two.jpg" alt="Two">'), "text/html"),
                             ("img/two.jpg", jpeg(96, 72, color=(9, 9, 9)), "image/jpeg")],
        "3-third.warc.gz": [("a.html", PAGE_A, "text/html"), ("img/one.jpg", jpeg(96, 72), "image/jpeg"),
                            ("img/three.jpg", jpeg(80, 80), "image/jpeg"),
                            ("d.html", html('<img src="/img/three.jpg" alt="Dee">'), "text/html")],
        "4-fourth.warc.gz": [("a.html", PAGE_A, "text/html"), ("img/one.jpg", jpeg(96, 72), "image/jpeg")],
    }
    paths = []
    for name, records in contents.items():
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            for path, body, content_type in records:
                _response(writer, f"http://warc.example/{path}", body, content_type)
    return paths


class Stopped(Exception):
    """A run stopped at a chosen point, as a kill there would stop it."""


def read_in_parts(files, out, files_per_part: int) -> dict:
    from crawler import warc

    return warc.read_warcs(files, str(out), download=False, min_side=TEST_MIN_SIDE, files_per_part=files_per_part)


def outcomes(out) -> collections.Counter:
    """The output as a multiset of (candidate_id or page URL, "kept" or the reject reason)."""
    kept = schemas.read_table(str(out / "candidates"), "candidates").column("candidate_id").to_pylist()
    rejected = schemas.read_table(str(out / "rejected"), "rejected", columns=["candidate_id", "page_url", "reason"])
    return collections.Counter([(c, "kept") for c in kept] + [
        (r["candidate_id"] or r["page_url"], r["reason"]) for r in rejected.to_pylist()])


def snapshot(folder) -> dict:
    """Every file under ``folder``: (mtime, size) by relative path."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def part_runs(tmp_path_factory):
    """The WARC files of ``write_part_warcs``, read in one part and in parts of one file (uninterrupted)."""
    root = tmp_path_factory.mktemp("parts")
    files = write_part_warcs(str(root))
    read_in_parts(files, root / "one", 0)
    stats = read_in_parts(files, root / "parted", 1)
    return root, files, stats


def test_parts_of_one_file_give_the_one_part_output_except_the_join_across_parts(part_runs):
    from crawler.extract import candidate_id

    root, files, stats = part_runs
    one, parted = outcomes(root / "one"), outcomes(root / "parted")
    a_one = candidate_id("http://warc.example/a.html", "http://warc.example/img/one.jpg", "One", None)
    c_three = candidate_id("http://warc.example/c.html", "http://warc.example/img/three.jpg", "Three", None)
    assert one[(a_one, "kept")] == 1 and one[(a_one, "duplicate_candidate")] == 2
    assert one[(c_three, "kept")] == 1, "in one part, c.html's image joins the image record of another file"
    # The only difference: the image record of c.html's image is in another part's file.
    expected = one - collections.Counter({(c_three, "kept"): 1}) + collections.Counter({(c_three, "image_not_in_warc"): 1})
    assert parted == expected
    assert sorted(p.name for p in (root / "parted" / "parts").glob("*.json")) == [
        "job.json", "p00000.json", "p00001.json", "p00002.json", "p00003.json"]
    # Each part's latest capture per page, for the opt-outs across parts; a run in one part needs none.
    assert sorted(p.name[:21] for p in (root / "parted" / "parts").glob("*.parquet")) == [
        f"captures-warc-p0000{n}-" for n in range(4)]
    assert not (root / "one" / "parts").exists()
    candidate_shards = sorted(p.name for p in (root / "parted" / "candidates").glob("*.parquet"))
    assert not [n for n in candidate_shards if n.startswith("warc-p00003-")], "part 4's only candidate was a duplicate"
    assert [n for n in candidate_shards if n.startswith("warc-p00000-")]
    duplicates = sorted(p.name for p in (root / "parted" / "rejected").glob("warc-p*-duplicates-*.parquet"))
    assert [n[:12] for n in duplicates] == ["warc-p00002-", "warc-p00003-"]
    one_stats = json.loads((root / "one" / "stats.json").read_text())
    assert stats["parts"] == 4 and stats["input_files"] == 4 and "parts" not in one_stats
    assert stats["in"] == stats["kept"] + stats["rejected"] == sum(parted.values())
    assert stats["lait/warc/records"] == one_stats["lait/warc/records"] == 12
    assert stats["settings"] == one_stats["settings"]  # in parts too
    assert set(stats["settings"]) == {"min_side", "max_aspect", "image_formats", "max_pixels"}


def test_a_candidate_rejected_in_one_part_and_kept_in_another_has_one_outcome(tmp_path):
    """c.html in three files, its image only in the second: one pipeline keeps it once and books the repeats as
    duplicate_candidate; parts give the same, not kept + image_not_in_warc, for the part before the one that keeps
    it and for the part after it alike."""
    from crawler import warc
    from crawler.extract import candidate_id

    page = html('<img src="/img/three.jpg" alt="Three"><img src="ftp://warc.example/x.jpg" alt="By FTP">')
    with_image = [("c.html", page, "text/html"), ("img/three.jpg", jpeg(80, 80), "image/jpeg")]
    c_three = candidate_id("http://warc.example/c.html", "http://warc.example/img/three.jpg", "Three", None)
    files = []
    for records in ([("c.html", page, "text/html")], with_image, [("c.html", page, "text/html")]):
        files.append(str(tmp_path / f"{len(files)}.warc.gz"))
        with open(files[-1], "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            for path, body, kind in records:
                _response(writer, f"http://warc.example/{path}", body, kind)
    results = []
    for per_part in (0, 1):
        out = tmp_path / f"out-{per_part}"
        stats = warc.read_warcs(files, str(out), download=False, min_side=TEST_MIN_SIDE, files_per_part=per_part)
        assert stats["in"] == stats["kept"] + stats["rejected"] == 6
        results.append(outcomes(out))
        for shard in (out / "rejected").glob("*.parquet"):  # a rewritten shard keeps the schema's fields
            assert not pq.read_schema(shard).field("reason").nullable, shard.name
    by_ftp = candidate_id("http://warc.example/c.html", "ftp://warc.example/x.jpg", "By FTP", None)
    # Each capture's reference to an FTP image is its own reject, in one pipeline and in parts alike.
    assert results[0] == results[1] == collections.Counter(
        {(c_three, "kept"): 1, (c_three, "duplicate_candidate"): 2, (by_ftp, "unsupported_scheme"): 3})


OLD, NEW = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"


def write_capture_warcs(folder, older_name: str, newer_name: str) -> list[str]:
    """Two WARC files, one of older captures and one of newer captures of the same pages (HTML and WAT).

    a.html: kept images earlier, ``noimageai`` later; b.html: ``noai`` earlier, kept later; c.html: two captures of
    one WARC-Date, one with ``X-Robots-Tag: noai``; w.html: a WARC capture, then a WAT one with ``noimageai``;
    v.html: a WAT capture, then a WARC one with ``X-Robots-Tag: noai``; g.html: an image no WARC holds, then
    ``noai`` and no image at all. Each file holds the image, so a part joins it without another part's file.
    """
    def page(alt, meta=""):
        return html(f'<img src="/img/one.jpg" alt="{alt}">', meta)

    noimageai, noai = '<meta name="robots" content="noimageai">', '<meta name="robots" content="noai">'
    older = [("a.html", html('<img src="/img/one.jpg" alt="Alpha"><img src="/img/one.jpg" alt="Beta">'), ()),
             ("b.html", page("Charlie", noai), ()), ("c.html", page("Delta"), ()), ("w.html", page("Echo"), ()),
             ("g.html", html('<img src="/img/missing.jpg" alt="Golf">'), ())]
    newer = [("a.html", page("Alpha", noimageai), ()), ("b.html", page("Charlie"), ()),
             ("c.html", page("Delta"), [("X-Robots-Tag", "noai")]),  # the same WARC-Date as the older capture
             ("v.html", page("Foxtrot"), [("X-Robots-Tag", "noai")]), ("g.html", html("<p>gone</p>", noai), ())]
    paths = []
    for name, records, date in ((older_name, older, OLD), (newer_name, newer, NEW)):
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            for path, body, extra in records:
                _response(writer, f"http://warc.example/{path}", body, "text/html", extra=extra,
                          date=OLD if path == "c.html" else date)
            _response(writer, "http://warc.example/img/one.jpg", jpeg(96, 72), "image/jpeg", date=date)
            if date == OLD:
                _wat(writer, "http://warc.example/v.html",
                     [{"path": "IMG@/src", "url": "/img/one.jpg", "alt": "Foxtrot"}], date=OLD)
            else:
                _wat(writer, "http://warc.example/w.html", [{"path": "IMG@/src", "url": "/img/one.jpg", "alt": "Echo"}],
                     metas=[{"name": "robots", "content": "noimageai"}], date=NEW)
    return paths


def test_the_latest_capture_of_a_page_decides_whether_it_opted_out(tmp_path, monkeypatch):
    """A page captured more than once: when its latest capture (by WARC-Date; a tie goes to the opt-out) opts out,
    the older captures' candidates become that opt-out's rejects; when an older one opted out, the latest is kept.
    The same in one pipeline and in parts, whichever file holds the newer captures, from WARC and WAT alike."""
    from crawler import warc
    from crawler.extract import candidate_id

    def cid(page, alt):
        image = "/img/missing.jpg" if page == "g.html" else "/img/one.jpg"
        return candidate_id(f"http://warc.example/{page}", f"http://warc.example{image}", alt, None)

    expected = collections.Counter({
        (cid("a.html", "Alpha"), "opt_out_noimageai"): 2, (cid("a.html", "Beta"), "opt_out_noimageai"): 1,
        (cid("b.html", "Charlie"), "kept"): 1, (cid("b.html", "Charlie"), "opt_out_noai"): 1,
        (cid("c.html", "Delta"), "opt_out_noai"): 2, (cid("w.html", "Echo"), "opt_out_noimageai"): 2,
        (cid("v.html", "Foxtrot"), "opt_out_noai"): 2, (cid("g.html", "Golf"), "opt_out_noai"): 1})
    withdrawn = {cid("a.html", "Alpha"), cid("a.html", "Beta"), cid("c.html", "Delta"), cid("w.html", "Echo"),
                 cid("v.html", "Foxtrot"), cid("g.html", "Golf")}
    real_write = schemas.write_table

    def stop_after_the_opt_out_rows(table, path, kind=None, **kwargs):
        real_write(table, path, kind, **kwargs)
        if "-opt-outs-" in os.path.basename(path):
            raise Stopped

    for older_name, newer_name in (("1-older.warc.gz", "2-newer.warc.gz"), ("2-older.warc.gz", "1-newer.warc.gz")):
        folder = tmp_path / older_name[:1]
        folder.mkdir()
        files = write_capture_warcs(str(folder), older_name, newer_name)
        for per_part in (0, 1):
            out = folder / f"out-{per_part}"
            if per_part and older_name.startswith("2"):
                # Stopped after the opt-out rows of a candidate shard are written, before the shard is rewritten:
                # the rerun below ends as the uninterrupted runs do.
                monkeypatch.setattr(schemas, "write_table", stop_after_the_opt_out_rows)
                with pytest.raises(Stopped):
                    read_in_parts(files, out, 1)
                assert list((out / "rejected").glob("warc-p*-opt-outs-*.parquet")) and not (out / "stats.json").exists()
                monkeypatch.setattr(schemas, "write_table", real_write)
            stats = warc.read_warcs(files, str(out), download=False, min_side=TEST_MIN_SIDE, files_per_part=per_part)
            assert outcomes(out) == expected, (older_name, per_part)
            assert stats["in"] == stats["kept"] + stats["rejected"] == sum(expected.values())
            assert stats["kept"] == 1 and stats["rejected_by_reason"] == {"opt_out_noai": 6, "opt_out_noimageai": 5}
            rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
            later = [r for r in rejected if r["detail"] == f"a later capture of the page opted out ({NEW})"
                     or r["detail"] == f"a later capture of the page opted out ({OLD})"]
            assert sorted(r["candidate_id"] for r in later) == sorted(withdrawn), (older_name, per_part)
            assert all(r["detail"] == "page opted out" for r in rejected if r not in later)
            if per_part:
                before = snapshot(out)
                assert warc.dedupe_across_parts(str(out)) == 0 and snapshot(out) == before  # a rerun changes nothing


def test_resolve_page_keeps_one_row_per_candidate_unless_the_latest_capture_opted_out():
    """``resolve_page`` called directly: the latest WARC-Date decides, a tie goes to the opt-out, no date is oldest."""
    import datetime

    from apache_beam.pvalue import TaggedOutput

    from crawler import warc

    old, new = (datetime.datetime(2024, month, 1, tzinfo=datetime.timezone.utc) for month in (1, 6))
    candidates = [{"candidate_id": cid, "page_url": "http://warc.example/p.html", "image_url": "http://warc.example/i.jpg"}
                  for cid in ("x", "x", "y")]

    def run(captures):
        return [(o.value["candidate_id"], o.value["reason"], o.value["detail"]) if isinstance(o, TaggedOutput)
                else (o["candidate_id"], "kept", None)
                for o in warc.resolve_page(("http://warc.example/p.html", {"candidates": candidates, "captures": captures}))]

    kept = [("x", "kept", None), ("x", "duplicate_candidate", warc.DUPLICATE_DETAIL), ("y", "kept", None)]
    later = "a later capture of the page opted out (2024-06-01T00:00:00Z)"
    assert run([(old, None)]) == run([(new, None), (old, "opt_out_noai")]) == kept
    assert run([(None, "opt_out_noai"), (old, None)]) == kept
    assert run([(old, None), (new, "opt_out_noai")]) == [
        ("x", "opt_out_noai", later), ("x", "duplicate_candidate", warc.DUPLICATE_DETAIL), ("y", "opt_out_noai", later)]
    assert run([(new, None), (new, "opt_out_noimageai")])[0] == ("x", "opt_out_noimageai", later)


def test_dns_records_are_skipped_not_rejected(tmp_path):
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    writer.write_record(writer.create_warc_record("dns:warc.example", "response", payload=io.BytesIO(
        b"20261128 warc.example. 300 IN A 192.0.2.1\n"), warc_content_type="text/dns"))
    _response(writer, "http://warc.example/1.html", html("<p>one</p>"), "text/html")
    kept, rejected = _records(buffer.getvalue(), tmp_path / "dns.warc.gz")
    assert kept == [("page", "http://warc.example/1.html")] and rejected == []


@pytest.fixture(scope="module")
def stopped_twice(part_runs, tmp_path_factory):
    """The WARC files of ``part_runs`` read in parts of one file into one folder three times: stopped in part 3
    (after its shards, before its marker), then resumed but stopped in the dedupe across parts (at its first
    candidate rewrite), then run to the end. What each run did and left, for the two tests below."""
    from crawler import warc

    _, files, _ = part_runs
    out = tmp_path_factory.mktemp("stopped") / "out"
    facts = {"out": out}
    real_run_part, real_write, real_read = warc._run_part, schemas.write_table, schemas.read_table
    ran, stop, writes, reads = [], ["warc-p00002"], [], []

    def stopped_in_part_3(known, options, part_files, out_dir, prefix, test_pipeline=None):
        ran.append(prefix)
        counters = real_run_part(known, options, part_files, out_dir, prefix, test_pipeline)
        if prefix in stop:  # its shards are written, its marker is not: as a kill right there
            raise Stopped
        return counters

    def stop_at_the_first_candidate_rewrite(table, path, kind=None, **kwargs):
        if kind == "candidates":  # after the shard's rejects are written, before the shard is rewritten
            raise Stopped
        writes.append(os.path.basename(path))
        return real_write(table, path, kind, **kwargs)

    def spy_read(path, kind=None, columns=None):
        reads.append((os.path.basename(path), kind, columns))
        return real_read(path, kind, columns)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warc, "_run_part", stopped_in_part_3)
        with pytest.raises(Stopped):
            read_in_parts(files, out, 1)
        facts["markers"] = sorted(p.name for p in (out / "parts").glob("*.json"))
        facts["part_3_captures"] = list((out / "parts").glob("captures-warc-p00002-*.parquet"))
        facts["part_3_candidates"] = list((out / "candidates").glob("warc-p00002-*.parquet"))
        facts["stats_after_part_3"] = (out / "stats.json").exists()
        # What a kill inside Beam's write would leave: a finished shard in the part's temporary folder.
        stale = out / "candidates" / "beam-temp-warc-p00002-0123abcd"
        stale.mkdir()
        shutil.copy(next((out / "candidates").glob("warc-p00002-*.parquet")), stale / "0a1b.warc-p00002.parquet")
        facts["done"] = {name: stat for name, stat in snapshot(out).items()
                         if "warc-p00000-" in name or "warc-p00001-" in name}
        ran.clear()
        stop.clear()
        patch.setattr(schemas, "write_table", stop_at_the_first_candidate_rewrite)
        lines, handler = [], logging.Handler(logging.INFO)
        handler.emit = lambda record: lines.append(record.getMessage())
        logger = logging.getLogger("crawler.warc")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            with pytest.raises(Stopped):
                read_in_parts(files, out, 1)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        facts["resumed_parts"], facts["writes"] = list(ran), list(writes)
        facts["part_lines"] = [line for line in lines if line.startswith("part ")]
        facts["stats_after_dedupe_stop"] = (out / "stats.json").exists()
        facts["stale_after_resume"] = stale.exists()
        patch.setattr(schemas, "write_table", real_write)
        patch.setattr(schemas, "read_table", spy_read)
        patch.setattr(warc, "_run_part", lambda *a, **k: pytest.fail("every part has its marker"))
        facts["stats"] = read_in_parts(files, out, 1)  # all parts done, no stats.json: the dedupe runs again
    facts["reads"] = reads
    return facts


def test_a_run_stopped_after_two_parts_resumes_without_redoing_them(part_runs, stopped_twice):
    root, _, parted_stats = part_runs
    out, done = stopped_twice["out"], stopped_twice["done"]
    assert stopped_twice["markers"] == ["job.json", "p00000.json", "p00001.json"]
    assert stopped_twice["part_3_captures"], "part 3's captures are written with its shards"
    assert not stopped_twice["stats_after_part_3"] and stopped_twice["part_3_candidates"]
    assert len(done) == 6, "parts 1 and 2 wrote a candidate, a rejected and a captures shard each"
    assert stopped_twice["resumed_parts"] == ["warc-p00002", "warc-p00003"], "finished parts are not run again"
    # (the resumed run was stopped in the dedupe across parts, and a third run finished it)
    assert {name: stat for name, stat in snapshot(out).items() if name in done} == done, "their shards are untouched"
    assert not stopped_twice["stale_after_resume"]
    assert outcomes(out) == outcomes(root / "parted")
    stats = stopped_twice["stats"]
    assert stats["in"] == parted_stats["in"] and stats["lait/warc/records"] == parted_stats["lait/warc/records"]
    lines = stopped_twice["part_lines"]
    assert len(lines) == 4 and "part 1 of 4 (1 files: 1-first.warc.gz)" in lines[0] and "done before, skipped, 1 kept" in lines[0]
    assert lines[2].startswith("part 3 of 4") and ": done, " in lines[2]


def test_the_dedupe_across_parts_finishes_after_a_stop_and_a_second_run_changes_nothing(part_runs, stopped_twice):
    # The dedupe of the resumed run of the test above: stopped at its first candidate rewrite, then run again.
    from crawler import warc

    root, _, parted_stats = part_runs
    out, reads = stopped_twice["out"], stopped_twice["reads"]
    assert [w[:23] for w in stopped_twice["writes"]] == ["warc-p00002-duplicates-"]
    assert not stopped_twice["stats_after_dedupe_stop"]
    assert outcomes(out) == outcomes(root / "parted") and stopped_twice["stats"]["in"] == parted_stats["in"]
    whole = sorted(name[:12] for name, kind, columns in reads if kind == "candidates" and columns is None)
    assert whole == ["warc-p00002-", "warc-p00003-"], "only the shards that hold a later copy are read whole"
    assert all(columns == ["candidate_id"] for _, kind, columns in reads if kind == "candidates" and columns)
    before = snapshot(out)
    assert warc.dedupe_across_parts(str(out)) == 0 and warc.dedupe_across_parts(str(out)) == 0
    assert snapshot(out) == before


def test_a_rerun_with_other_files_or_part_size_is_refused_and_the_folder_stays(tmp_path, part_runs, capsys):
    from lait import cli

    root, files, _ = part_runs
    out = tmp_path / "parted"
    shutil.copytree(root / "parted", out)
    one = tmp_path / "one"
    shutil.copytree(root / "one", one)
    before = snapshot(out), snapshot(one)
    common = ["--no-download", "--min-side", str(TEST_MIN_SIDE)]
    for folder, args, message in (
            (out, ["--warc", *files, "--files-per-part", "2"], "1 files per part, not 2"),
            (out, ["--warc", *files[:3], "--files-per-part", "1"], "4 input files, not 3: 1 missing (first "),
            (out, ["--warc", *files], "1 files per part, not 0"),
            (out, ["--warc", *files, "--files-per-part", "1", "--max-aspect", "5"], "--max-aspect 3.0, not 5.0"),
            (one, ["--warc", *files, "--files-per-part", "1"], "a run without --files-per-part")):
        assert cli.main(["crawl", *args, "--out", str(folder), *common]) == 2
        printed = capsys.readouterr().err
        assert message in printed and "use a new --out or delete the folder" in printed, printed
    assert (snapshot(out), snapshot(one)) == before
    with pytest.raises(SystemExit) as bad_option:
        cli.main(["crawl", "--warc", *files, "--out", str(out), "--files-per-part", "-1"])
    assert bad_option.value.code == 2 and "--files-per-part: must be 0 or more" in capsys.readouterr().err


def test_a_folder_stands_for_the_warc_files_directly_in_it(tmp_path):
    from crawler.warc import MissingInputError, _expand_inputs

    folder = tmp_path / "segment"
    (folder / "deeper").mkdir(parents=True)
    for name in ("b.warc.gz", "a.WARC", "c.arc.gz", "d.wat", "notes.txt", "e.wet.gz", "deeper/f.warc.gz"):
        (folder / name).write_bytes(b"")
    (folder / "g.warc.gz").mkdir()  # a folder named like an archive is not one
    assert [os.path.basename(path) for path in _expand_inputs([str(folder)])] == ["a.WARC", "b.warc.gz", "c.arc.gz",
                                                                                  "d.wat"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingInputError, match=r"empty \(a folder without \.warc/"):
        _expand_inputs([str(folder), str(empty)])


def test_a_prefix_on_an_object_store_stands_for_the_warc_files_under_it(object_store):
    from crawler.warc import MissingInputError, _expand_inputs

    tmp_path = object_store
    (tmp_path / "seg" / "deeper").mkdir(parents=True)
    for name in ("a.warc.gz", "b.wat.gz", "notes.txt", "deeper/c.warc.gz"):
        (tmp_path / "seg" / name).write_bytes(b"")
    expected = ["laitobj://seg/a.warc.gz", "laitobj://seg/b.wat.gz"]
    assert _expand_inputs(["laitobj://seg"]) == _expand_inputs(["laitobj://seg/"]) == expected
    assert _expand_inputs(["laitobj://seg/notes.txt"]) == ["laitobj://seg/notes.txt"]  # a file is a file
    with pytest.raises(MissingInputError, match="no such file: laitobj://other"):
        _expand_inputs(["laitobj://other"])


def test_an_image_record_joins_its_img_whether_the_url_is_written_escaped_or_not(tmp_path):
    """WARC records hold a URL as it was requested (percent-encoded, in either case); a page writes it as it likes.
    Both sides are compared in the spelling Scrapy requests, escapes in upper case, so no image is missed."""
    from crawler import warc

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    _response(writer, "http://warc.example/galerie.html", html(
        '<img src="/bilder/größe 1.jpg" alt="Raw on the page">'
        '<img src="/bilder/kl%C3%A4nge%202.jpg" alt="Escaped on the page">'
        '<img src="/bilder/bl%C3%BCte.jpg" alt="Upper-case escapes on the page">'), "text/html")
    _response(writer, "http://warc.example/bilder/gr%C3%B6%C3%9Fe%201.jpg", jpeg(96, 72), "image/jpeg")
    _response(writer, "http://warc.example/bilder/klänge 2.jpg", jpeg(96, 72, color=(1, 2, 3)), "image/jpeg")
    _response(writer, "http://warc.example/bilder/bl%c3%bcte.jpg", jpeg(96, 72, color=(9, 9, 9)), "image/jpeg")
    path = tmp_path / "escaped.warc.gz"
    path.write_bytes(buffer.getvalue())
    stats = warc.read_warcs([str(path)], str(tmp_path / "out"), download=False, min_side=TEST_MIN_SIDE)
    kept = schemas.read_table(str(tmp_path / "out" / "candidates"), "candidates", columns=["image_url", "alt"]).to_pylist()
    # image_url stays as the page references it (resolved, not re-spelled)
    assert sorted((c["image_url"], c["alt"]) for c in kept) == [
        ("http://warc.example/bilder/bl%C3%BCte.jpg", "Upper-case escapes on the page"),
        ("http://warc.example/bilder/größe 1.jpg", "Raw on the page"),
        ("http://warc.example/bilder/kl%C3%A4nge%202.jpg", "Escaped on the page")]
    assert stats["in"] == stats["kept"] == 3 and stats["rejected"] == 0


def test_rejects_repeated_across_parts_become_duplicates_and_the_rest_stay(tmp_path):
    """A candidate's outcome reject becomes duplicate_candidate when another part kept it or an earlier part
    rejected it; opt-outs, records of their own and rows without a candidate id stay as they are."""
    from crawler import output, warc

    def reject(candidate_id, reason):
        return schemas.rejected_row("crawl", reason, "d", candidate_id=candidate_id)

    parts = {0: [reject("b", "image_not_in_warc"), reject("c", "opt_out_noai"), reject(None, "image_not_in_warc")],
             1: [reject("a", "image_not_in_warc"), reject("b", "image_not_in_warc"), reject("c", "opt_out_noai"),
                 reject("d", "no_text"), reject("e", "http_404")],
             2: [reject("b", "fetch_error"), reject("", "fetch_error")]}
    for part, rows in parts.items():
        schemas.write_table(schemas.to_table(rows, "rejected"),
                            str(tmp_path / output.REJECTED / f"warc-p{part:05d}-x.parquet"), "rejected")
    assert warc._repeated_rejects_to_duplicates(str(tmp_path), {"a", "z"}) == 3
    reasons = {part: schemas.read_table(str(tmp_path / output.REJECTED / f"warc-p{part:05d}-x.parquet"),
                                        "rejected").column("reason").to_pylist() for part in parts}
    assert reasons == {0: ["image_not_in_warc", "opt_out_noai", "image_not_in_warc"],
                       1: [output.DUPLICATE, output.DUPLICATE, "opt_out_noai", "no_text", "http_404"],
                       2: [output.DUPLICATE, "fetch_error"]}
    assert warc._repeated_rejects_to_duplicates(str(tmp_path), {"a", "z"}) == 0  # a rerun changes nothing


def test_an_image_missing_from_the_warc_is_downloaded_as_the_page_spells_it(tmp_path):
    """The join compares escapes in upper case; the download asks for the page's own spelling (a server may tell
    ``%c3`` from ``%C3``), as Scrapy would."""
    from crawler import warc

    site = MockSite({"/img/bl%c3%bcte.jpg": (200, JPEG, jpeg(96, 72)),
                     "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")})
    with site:
        buffer = io.BytesIO()
        _response(WARCWriter(buffer, gzip=True), "http://warc.example/p.html",
                  html(f'<img src="{site.url}/img/bl%c3%bcte.jpg" alt="A flower in bloom">'), "text/html")
        path = tmp_path / "p.warc.gz"
        path.write_bytes(buffer.getvalue())
        stats = warc.read_warcs([str(path)], str(tmp_path / "out"), download=True, allow_private_networks=True,
                                min_side=TEST_MIN_SIDE, settings={"DOWNLOAD_DELAY": 0, "DOWNLOAD_TIMEOUT": 2})
    assert site.counts["/img/bl%c3%bcte.jpg"] == 1 and "/img/bl%C3%BCte.jpg" not in site.counts
    assert stats["kept"] == 1 and stats["rejected"] == 0


def test_the_native_reader_takes_the_option_rules_of_lait_crawl(tmp_path, capsys):
    """``python -m crawler.warc`` reads formats and --max_aspect as lait crawl does (filters/option_rules.py).
    Before: ``--image_formats jpg`` rejected every image as format_not_allowed, ``--max_aspect 0`` every image as
    too elongated, and ``--min_side -5`` ran."""
    from crawler import warc

    files = write_test_warcs(str(tmp_path), "http://127.0.0.1:9")
    common = ["--no_download", "--min_side", str(TEST_MIN_SIDE), *[arg for f in files for arg in ("--input", f)]]
    stats = warc.run([*common, "--output", str(tmp_path / "jpg"), "--image_formats", "jpg", "--max_aspect", "0"])
    assert stats["kept"] == 2 and "format_not_allowed" not in stats["rejected_by_reason"]  # the two in the WARC
    assert "image_too_elongated" not in stats["rejected_by_reason"]
    for bad, message in ((["--image_formats", "psd"], "--image_formats: 'psd' is not an image format"),
                         (["--max_aspect", "0.5"], "--max_aspect must be 0 (off) or 1 or more"),
                         (["--min_side", "-5"], "--min_side must be a whole number of pixels, 0 or more"),
                         (["--max_pixels", "0"], "--max_pixels must be 1 or more")):
        with pytest.raises(SystemExit) as exit_info:
            warc.run([*common, "--output", str(tmp_path / "bad"), *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_an_image_record_whose_x_robots_tag_says_noindex_is_opted_out_as_the_spider_opts_it_out(tmp_path):
    """On an image's own response, ``noindex`` keeps the image out of image search: the spider rejects it as
    ``opt_out_noindex``, and so does the WARC reader (a page's ``noindex`` is about the page, not its images)."""
    from crawler import warc

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    _response(writer, "http://warc.example/p.html", html('<meta name="robots" content="noindex">'
                                                          '<img src="/kept.jpg" alt="A page noindex keeps">'
                                                          '<img src="/hidden.jpg" alt="An image noindex hides">'),
              "text/html")
    _response(writer, "http://warc.example/kept.jpg", jpeg(96, 72), "image/jpeg")
    _response(writer, "http://warc.example/hidden.jpg", jpeg(96, 72, color=(5, 6, 7)), "image/jpeg",
              extra=[("X-Robots-Tag", "noindex")])
    path = tmp_path / "noindex.warc.gz"
    path.write_bytes(buffer.getvalue())
    stats = warc.read_warcs([str(path)], str(tmp_path / "out"), download=False, min_side=TEST_MIN_SIDE)
    kept = schemas.read_table(str(tmp_path / "out" / "candidates"), "candidates", columns=["alt"]).to_pylist()
    rejected = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected", columns=["reason", "image_url"]).to_pylist()
    assert kept == [{"alt": "A page noindex keeps"}]
    assert rejected == [{"reason": "opt_out_noindex", "image_url": "http://warc.example/hidden.jpg"}]
    assert stats["rejected_by_reason"] == {"opt_out_noindex": 1}
