"""The WARC reader's candidate ids: a WAT record and the HTML of the same page give the same ids, one image spelled
several ways with the same text included (``extract.parse_page``'s first-spelling rule)."""
import io

import pytest
from apache_beam.pvalue import TaggedOutput
from warcio.warcwriter import WARCWriter

import schemas
from crawler import extract, warc
from tests.crawler.mocksite import TEST_MIN_SIDE, html, jpeg
from tests.crawler.test_crawl_warc import _response, _wat

PAGE_URL = "http://warc.example/galerie.html"
#: One image referenced four times: its escapes in lower case, raw, in upper case, then raw with another text.
SOURCES = [("/caf%c3%a9.jpg", "Café"), ("/café.jpg", "Café"), ("/caf%C3%A9.jpg", "Café"), ("/café.jpg", "Other text")]
LINKS = [{"path": "IMG@/src", "url": src, "alt": alt} for src, alt in SOURCES]
BODY = "".join(f'<img src="{src}" alt="{alt}">' for src, alt in SOURCES)


def _wat_record(metas=()) -> dict:
    return {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": PAGE_URL},
                         "Payload-Metadata": {"HTTP-Response-Metadata": {"Headers": {}, "HTML-Metadata": {
                             "Head": {"Title": "T", "Metas": list(metas)}, "Links": LINKS}}}}}


@pytest.mark.parametrize("opted_out", [False, True], ids=["kept", "opted-out"])
def test_a_wat_record_gives_an_image_spelled_twice_the_id_parse_page_gives_it(opted_out):
    """The HTML path gives the three Café references one id (the later two become duplicate_candidate rejects); the WAT
    path gave each spelling an id of its own, so the WAT and WARC readings of one page disagreed. An opted-out page's
    rejects carry the same ids as well."""
    metas = [{"name": "robots", "content": "noimageai"}] if opted_out else []
    head = '<meta name="robots" content="noimageai">' if opted_out else ""
    page = extract.parse_page(html(BODY, head=head), PAGE_URL)
    expected = [c["candidate_id"] for c in page.candidates]
    assert len(set(expected)) == 2 and page.rejects == []
    out = list(warc.wat_candidates(("wat", PAGE_URL, {"json": _wat_record(metas), "date": None})))
    rows = [o.value if isinstance(o, TaggedOutput) else o for o in out]
    assert [row["candidate_id"] for row in rows] == expected
    assert [row["image_url"] for row in rows] == [c["image_url"] for c in page.candidates]  # as the page spells it
    assert [row.get("reason") for row in rows] == ([page.opt_out] * 4 if opted_out else [None] * 4)


def test_the_wat_and_the_warc_reading_of_a_page_agree_and_every_reference_leaves_once(tmp_path):
    """A page read from its WARC response and from its WAT record: one row per image and text, and every other
    reference (eight in all) a counted duplicate_candidate reject."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    _response(writer, PAGE_URL, html(BODY), "text/html")
    _response(writer, "http://warc.example/caf%C3%A9.jpg", jpeg(96, 72), "image/jpeg")
    warc_path = tmp_path / "pages.warc.gz"
    warc_path.write_bytes(buffer.getvalue())
    wat_path = tmp_path / "pages.wat"
    with open(wat_path, "wb") as handle:
        _wat(WARCWriter(handle, gzip=False), PAGE_URL, LINKS)
    out = tmp_path / "out"
    stats = warc.read_warcs([str(warc_path), str(wat_path)], str(out), download=False, min_side=TEST_MIN_SIDE)
    kept = schemas.read_table(str(out / "candidates"), "candidates", columns=["candidate_id", "alt"]).to_pylist()
    rejected = schemas.read_table(str(out / "rejected"), "rejected", columns=["candidate_id", "reason"]).to_pylist()
    expected = {c["candidate_id"]: c["alt"] for c in extract.parse_page(html(BODY), PAGE_URL).candidates}
    assert {c["candidate_id"]: c["alt"] for c in kept} == expected and len(kept) == 2
    assert sorted(r["reason"] for r in rejected) == ["duplicate_candidate"] * 6
    assert {r["candidate_id"] for r in rejected} == set(expected)
    assert stats["in"] == 2 * len(SOURCES) and stats["kept"] + stats["rejected"] == stats["in"]
