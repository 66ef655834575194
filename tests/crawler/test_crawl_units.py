"""Unit tests of the crawl's pure parts: extraction, image checks, the network guard."""
import asyncio
import codecs
import hashlib
import io
import json
import os
import socket

import lxml.html
import pytest
from PIL import Image
from scrapy import Request

import schemas
from crawler import extract, images, netguard
from crawler.middlewares import NetworkGuardMiddleware, RefusedRequest
from tests.crawler.mocksite import JPEG, MockSite, jpeg, png_bomb

PAGE = "http://example.org/dir/page.html"


def test_extract_candidates_is_pure_and_returns_candidates_and_counts():
    html = b'<html lang="en"><body><img src="a.jpg" alt="A"><img src="b.jpg" alt=""><img src="c.jpg"></body></html>'
    candidates, counts = extract.extract_candidates(html, PAGE, {})
    assert [c["image_url"] for c in candidates] == ["http://example.org/dir/a.jpg"]
    assert counts == {"img": 3, "candidate": 1, "decorative_image": 1, "no_text": 1}
    assert extract.extract_candidates(html, PAGE, {})[0] == candidates  # same input, same output


def test_figures_of_one_image_with_different_captions_are_different_candidates():
    page = extract.parse_page('<figure><img src="f.jpg"><figcaption>A red door</figcaption></figure>'
                              '<figure><img src="f.jpg"><figcaption>The same door at night</figcaption></figure>'
                              '<img src="f.jpg" alt="">', PAGE)
    ids = [c["candidate_id"] for c in page.candidates]
    assert [c["figcaption"] for c in page.candidates] == ["A red door", "The same door at night"]
    assert len(set(ids)) == 2
    # The first reference keeps the id crawls have always given it (folders crawled before dedupe against
    # it on a rerun); only the later one, which repeated it, gets the figcaption in its id.
    legacy = hashlib.sha1(f"{PAGE}\x00http://example.org/dir/f.jpg\x00\x00".encode()).hexdigest()
    assert ids == [legacy, extract.candidate_id(PAGE, "http://example.org/dir/f.jpg", None, None,
                                                "The same door at night")]
    # A captioned and a bare reference of one image and alt are two candidates, in either order.
    figure, bare = '<figure><img src="f.jpg" alt="t"><figcaption>A</figcaption></figure>', '<img src="f.jpg" alt="t">'
    for html in (figure + bare, bare + figure):
        assert len({c["candidate_id"] for c in extract.parse_page(html, PAGE).candidates}) == 2, html
    # Captioned figures with an alt keep their old ids too; a repeat with the same caption is the same id.
    page = extract.parse_page('<figure><img src="f.jpg" alt="Door"><figcaption>Red</figcaption></figure>'
                              '<figure><img src="f.jpg" alt="Door"><figcaption>Red</figcaption></figure>', PAGE)
    assert [c["candidate_id"] for c in page.candidates] == [extract.candidate_id(
        PAGE, "http://example.org/dir/f.jpg", "Door", None)] * 2


def test_srcset_takes_the_largest_by_width_or_density():
    assert extract.parse_srcset("a.jpg 320w, b.jpg 1024w,c.jpg 640w") == [("a.jpg", 320), ("b.jpg", 1024), ("c.jpg", 640)]
    page = extract.parse_page('<img srcset="x1.jpg, x2.jpg 2x, x3.jpg 1.5x" src="s.jpg" alt="d">', PAGE)
    assert page.candidates[0]["image_url"] == "http://example.org/dir/x2.jpg"


def test_protocol_relative_base_and_fragment():
    """A protocol-relative URL takes the scheme of the base it resolves against."""
    page = extract.parse_page('<head><base href="https://cdn.example.net/i/"></head>'
                              '<img src="//other.example.com/p.jpg#x" alt="P"><img src="q.jpg" alt="Q">', PAGE)
    assert [c["image_url"] for c in page.candidates] == ["https://other.example.com/p.jpg", "https://cdn.example.net/i/q.jpg"]


def test_non_http_image_urls_are_rejected_references():
    page = extract.parse_page('<img src="file:///etc/passwd" alt="F"><img src="javascript:x()" alt="J">', PAGE)
    assert page.candidates == [] and [r["reason"] for r in page.rejects] == ["unsupported_scheme"] * 2


def test_wrongly_declared_and_legacy_encodings_decode():
    utf8_declared_latin1 = '<meta charset="iso-8859-1"><img src="a.jpg" alt="Crème brûlée">'.encode("utf-8")
    assert extract.parse_page(utf8_declared_latin1, PAGE).candidates[0]["alt"] == "Crème brûlée"
    cp1252_declared_utf8 = '<meta charset="utf-8"><img src="a.jpg" alt="Café – crème">'.encode("cp1252")
    assert extract.parse_page(cp1252_declared_utf8, PAGE).candidates[0]["alt"] == "Café – crème"
    shift_jis = '<img src="a.jpg" alt="赤い四角">'.encode("shift_jis")
    page = extract.parse_page(shift_jis, PAGE, {"Content-Type": "text/html; charset=Shift_JIS"})
    assert page.candidates[0]["alt"] == "赤い四角"


def test_opt_out_directives_and_agent_scoping():
    assert extract.opt_out_reason(["index, follow, noimageindex"]) == "opt_out_noimageindex"
    assert extract.opt_out_reason(["noimageai, noai"]) == "opt_out_noai"
    assert extract.opt_out_reason(["googlebot: noai"]) is None
    assert extract.opt_out_reason(["lait: noimageai"]) == "opt_out_noimageai"
    page = extract.parse_page('<meta name="robots" content="nofollow"><a href="/x">x</a>', PAGE,
                              {"X-Robots-Tag": ["noindex", "noai"]})
    assert page.opt_out == "opt_out_noai" and page.nofollow


def test_page_text_is_visible_text_only_and_capped():
    body = "<script>var hidden = 1;</script><style>p{}</style><p>" + "word " * 400 + "</p>"
    page = extract.parse_page(f"<html><head><title> T </title></head><body>{body}</body></html>", PAGE)
    assert page.title == "T" and "hidden" not in page.text and len(page.text) == extract.PAGE_TEXT_CHARS


def test_broken_or_empty_markup_gives_no_crash():
    for html in (b"", b"\x00\x01\x02", b"<img", b"<<<>>>", "<img src='a.jpg' alt='ok'".encode()):
        page = extract.parse_page(html, PAGE)
        assert isinstance(page.candidates, list)


def _image(fmt: str, size=(400, 320)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, fmt)
    return buffer.getvalue()


def test_validate_image_defaults_equal_the_filter_stage_defaults():
    assert (images.DEFAULT_MIN_SIDE, images.DEFAULT_MAX_ASPECT) == (300, 3.0)
    assert images.validate_image(_image("JPEG")).ok
    assert images.validate_image(_image("PNG", (299, 400))).reason == "image_too_small"
    assert images.validate_image(_image("PNG", (1300, 400))).reason == "aspect_ratio_out_of_range"
    assert images.validate_image(_image("BMP")).reason == "format_not_allowed"
    assert images.validate_image(png_bomb()).reason == "decompression_bomb"
    assert images.validate_image(b"not an image").reason == "image_decode_error"
    assert images.validate_image(b"").reason == "empty_image"
    photo = jpeg(400, 320)
    truncated = images.validate_image(photo[: len(photo) * 2 // 3])
    assert truncated.reason == "image_decode_error" and truncated.width == 400  # header read, pixels broken


def test_a_camera_multi_picture_jpeg_is_a_jpeg():
    buffer = io.BytesIO()
    Image.new("RGB", (400, 320), (9, 90, 200)).save(buffer, "MPO", save_all=True,
                                                   append_images=[Image.new("RGB", (160, 128))])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"  # what Pillow calls it
    check = images.validate_image(buffer.getvalue())
    assert check.ok and (check.format, check.width, check.height) == ("JPEG", 400, 320)


def test_exif_orientation_swaps_recorded_size():
    check = images.validate_image(jpeg(96, 72, exif_orientation=6), min_side=10)
    assert (check.width, check.height) == (72, 96)


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "127.0.0.1", "169.254.169.254",
                                     "224.0.0.251", "0.0.0.0", "100.64.0.1", "::1", "fe80::1", "ff02::1", "fc00::1",
                                     "::ffff:10.0.0.1"])
def test_guard_refuses_non_public_addresses(address):
    assert not netguard.is_public_address(address)
    with pytest.raises(netguard.RefusedURL) as refused:
        netguard.check_url("http://innocent.example/", resolve=lambda host, port: [address])
    assert refused.value.reason == "private_network_refused"


def test_guard_refuses_when_any_resolved_address_is_private_and_allows_public():
    mixed = lambda host, port: ["93.184.216.34", "10.1.1.1"]  # noqa: E731 - a DNS answer, faked
    with pytest.raises(netguard.RefusedURL):
        netguard.check_url("https://rebind.example/", resolve=mixed)
    assert netguard.check_url("https://ok.example/", resolve=lambda h, p: ["93.184.216.34"]) == ["93.184.216.34"]
    assert netguard.check_url("http://127.0.0.1:9/", resolve=lambda h, p: ["127.0.0.1"],
                              allowed_networks=("127.0.0.1/32",)) == ["127.0.0.1"]
    with pytest.raises(netguard.RefusedURL) as refused:
        netguard.check_url("file:///etc/passwd")
    assert refused.value.reason == "unsupported_scheme"


def test_guard_middleware_refuses_before_any_connection(monkeypatch):
    """With faked name resolution, a request to a private range raises before a socket connects."""
    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: attempts.append(addr))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, addr: attempts.append(addr))
    resolved = []

    def fake_resolve(host, port):
        resolved.append(host)
        return {"metadata.internal": ["169.254.169.254"], "multicast.example": ["239.1.2.3"],
                "intranet.example": ["192.168.0.10"]}[host]

    middleware = NetworkGuardMiddleware(resolve=fake_resolve)
    for host in ("metadata.internal", "multicast.example", "intranet.example"):
        with pytest.raises(RefusedRequest) as refused:
            asyncio.run(middleware.process_request(Request(f"http://{host}/latest/")))
        assert refused.value.reason == "private_network_refused"
    assert resolved == ["metadata.internal", "multicast.example", "intranet.example"]
    assert attempts == []
    allowed = NetworkGuardMiddleware(allow_private_networks=True, resolve=fake_resolve)
    assert asyncio.run(allowed.process_request(Request("http://intranet.example/"))) is None
    assert resolved == ["metadata.internal", "multicast.example", "intranet.example"]  # no lookup when allowed


def test_guard_middleware_resolves_a_public_host_once_per_ttl():
    lookups = []
    middleware = NetworkGuardMiddleware(resolve=lambda host, port: lookups.append(host) or ["93.184.216.34"])
    for path in ("a.jpg", "b.jpg", "c.html"):
        assert asyncio.run(middleware.process_request(Request(f"https://public.example/{path}"))) is None
    assert lookups == ["public.example"]


def test_polite_fetcher_refuses_private_hosts_without_connecting(monkeypatch):
    from crawler.fetch import PoliteFetcher

    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: attempts.append(addr))
    fetcher = PoliteFetcher(resolve=lambda host, port: ["10.9.8.7"], delay=0)
    with pytest.raises(netguard.RefusedURL):
        fetcher.fetch("http://files.example/image.jpg")
    assert attempts == []


def test_malformed_urls_are_counted_and_the_rest_of_the_page_survives():
    """A broken IPv6 host or port is an `invalid_url` reject; a bad link or base is skipped."""
    page = extract.parse_page('<head><base href="http://[bad/"></head><a href="http://[oops/">x</a><a href="/next">n</a>'
                              '<img src="a.jpg" alt="Before"><img src="http://[bad/x.jpg" alt="IPv6">'
                              '<img src="http://h.example:1:99999/p.jpg" alt="Port">'
                              '<img src="http://user:pw@h.example/c.jpg" alt="Credentials"><img src="b.jpg" alt="After">', PAGE)
    assert [c["image_url"] for c in page.candidates] == ["http://example.org/dir/a.jpg", "http://example.org/dir/b.jpg"]
    assert [(r["reason"], r["image_url"], r["alt"]) for r in page.rejects] == [
        ("invalid_url", None, "IPv6"), ("invalid_url", None, "Port"), ("invalid_url", None, "Credentials")]
    assert "http://[bad/x.jpg" in page.rejects[0]["detail"]
    assert page.links == ["http://example.org/next"]
    assert page.counts["invalid_link"] == 1 and page.counts["invalid_base"] == 1
    assert page.counts["img"] == len(page.candidates) + len(page.rejects)


def test_srcset_urls_may_hold_commas():
    assert extract.parse_srcset("/img/w_100,h_100/e.jpg 1x, /img/w_200,h_200/e.jpg 2x") == [
        ("/img/w_100,h_100/e.jpg", 1), ("/img/w_200,h_200/e.jpg", 2)]
    assert extract.parse_srcset("a.jpg,b.jpg 2x, c.jpg (x, y) 3x,, d.jpg,") == [("a.jpg,b.jpg", 2), ("c.jpg", 3), ("d.jpg", 1)]
    page = extract.parse_page('<img srcset="/img/w_100,h_100/e.jpg 1x, /img/w_200,h_200/e.jpg 2x" alt="C">', PAGE)
    assert page.candidates[0]["image_url"] == "http://example.org/img/w_200,h_200/e.jpg"


def test_page_urls_have_one_canonical_spelling():
    for url in ("http://Example.ORG", "http://example.org/", "HTTP://example.org:80/#top", "http://example.org#x"):
        assert extract.canonical_page_url(url) == "http://example.org/"
    assert extract.canonical_page_url("https://u@H.example:443/a?b#c") == "https://u@h.example/a?b"
    assert extract.canonical_page_url("http://[::1]:8080") == "http://[::1]:8080/"
    assert extract.canonical_page_url("http://h:1:2/x#y") == "http://h:1:2/x"  # its fetch gives the reject


def test_crawl_output_keeps_every_reference_of_a_run_and_dedupes_only_against_the_folder(tmp_path):
    from crawler.output import CANDIDATES, REJECTED, CrawlOutput, funnel

    page = "http://h.example/p.html"
    candidate = {"candidate_id": "c1", "image_id": "i1", "page_url": page, "image_url": "http://h.example/a.jpg",
                 "alt": "Same", "image_bytes": b"x", "source": "crawl"}
    data_uri = {"reason": "data_uri", "page_url": page}
    run = CrawlOutput(str(tmp_path))
    assert [run.add_candidate(dict(candidate)) for _ in range(2)] == [CANDIDATES, REJECTED]
    assert [run.add_rejected(dict(data_uri)) for _ in range(2)] == [True, True]
    run.close()
    books = funnel(str(tmp_path))
    assert (books["in"], books["kept"]) == (4, 1)
    assert books["rejected_by_reason"] == {"data_uri": 2, "duplicate_candidate": 1}
    rerun = CrawlOutput(str(tmp_path))  # the same references again: nothing is written twice
    assert [rerun.add_candidate(dict(candidate)) for _ in range(2)] == [None, None]
    assert [rerun.add_rejected(dict(data_uri)) for _ in range(3)] == [False, False, True]  # a third one is new
    rerun.close()
    assert funnel(str(tmp_path))["rejected_by_reason"] == {"data_uri": 3, "duplicate_candidate": 1}


def _spider(**settings):
    from scrapy.utils.test import get_crawler

    from crawler.spiders.lait import LaitSpider

    return LaitSpider.from_crawler(get_crawler(LaitSpider, settings), urls="http://example.org/")


def test_redirect_targets_take_no_max_pages_slot():
    """--max-pages counts the links followed: a followed link that redirects claims its target (crawled once)
    without using a second slot, so a site that redirects (http -> https, a missing slash) gets as many pages."""
    from scrapy import Request

    spider = _spider()
    spider.max_pages = 3
    first = spider._schedule_page("http://example.org/old.html", 1)
    hop = Request("http://example.org/new.html", meta=dict(first.meta, redirect_urls=[first.url]))
    assert spider.follow_redirect(hop) and "http://example.org/new.html" in spider.pages_seen
    assert spider._schedule_page("http://example.org/new.html", 1) is None  # claimed: crawled once
    assert spider._schedule_page("http://example.org/a.html", 1) is not None
    assert spider._schedule_page("http://example.org/b.html", 1) is not None  # the third slot: not taken by new.html
    assert spider._schedule_page("http://example.org/c.html", 1) is None and spider.pages_scheduled == 3


def test_image_urls_scrapy_cannot_request_are_rejects_not_pending():
    spider = _spider(URLLENGTH_LIMIT=100)
    base = {"page_url": "http://example.org/", "alt": "A", "title": None, "candidate_id": "c"}
    bad_port, too_long, good = ("http://example.org:1:99999/x.jpg", "http://example.org/" + "a" * 100 + ".jpg",
                                "http://example.org/ok.jpg")
    out = [item for url in (bad_port, too_long, good, bad_port) for item in spider._candidate(dict(base, image_url=url))]
    assert [getattr(o, "row", {}).get("reason") for o in out] == ["invalid_url", "url_too_long", None, "invalid_url"]
    assert out[2].url == good and list(spider.pending) == [good]
    # A job state that holds such an URL (written before this check existed) resumes without failing.
    spider.pending[bad_port] = [dict(base, image_url=bad_port)]

    async def start():
        return [item async for item in spider.start()]

    started = asyncio.run(start())
    # (then the start URL, which this spider has not seen)
    assert [getattr(o, "url", None) or o.row["reason"] for o in started] == [good, "invalid_url", "http://example.org/"]


def test_candidates_still_waiting_at_the_end_become_rejects_unless_a_job_folder_keeps_them(tmp_path):
    waiting = {"page_url": "http://example.org/", "image_url": "http://example.org/a.jpg", "alt": "A", "title": None,
               "candidate_id": "c"}
    spider = _spider()
    spider.pending = {waiting["image_url"]: [waiting, dict(waiting, alt="B")]}
    rows = spider.unfetched_rejects()  # stopped without a job folder: nothing will continue them
    assert [(r["reason"], r["caption"]) for r in rows] == [("image_not_fetched", "A"), ("image_not_fetched", "B")]
    assert spider.pending == {}
    spider = _spider(LAIT_JOBDIR=str(tmp_path))
    spider.pending = {waiting["image_url"]: [waiting]}
    assert spider.unfetched_rejects() == [] and spider.pending  # kept for the next run
    spider.on_spider_idle()  # the crawl ran out of work: no response will ever come
    assert [r["reason"] for r in spider.unfetched_rejects()] == ["image_not_fetched"] and spider.pending == {}


def test_a_page_the_extractor_fails_on_is_a_page_reject(monkeypatch):
    from scrapy.http import HtmlResponse

    spider = _spider()
    request = spider._page_request("http://example.org/p.html", 0)
    monkeypatch.setattr(extract, "parse_page", lambda *a, **k: 1 / 0)
    response = HtmlResponse(request.url, body=b"<img src='a.jpg' alt='A'>", request=request,
                            headers={"Content-Type": "text/html"})
    out = list(spider.parse_page(response))
    assert [(o.row["reason"], o.row["page_url"]) for o in out] == [("parse_error", "http://example.org/p.html")]
    assert "ZeroDivisionError" in out[0].row["detail"]


# ------------------------------------------------------------------------------ audit of the crawl stage

def test_deeply_nested_markup_keeps_the_images_after_it_and_counts_a_truncation():
    nested = '<img src="before.jpg" alt="B">' + "<div>" * 300 + '<img src="deep.jpg" alt="D">' + "</div>" * 300
    page = extract.parse_page(nested + '<img src="after.jpg" alt="A">', PAGE)
    assert [c["alt"] for c in page.candidates] == ["B", "D", "A"]  # libxml2 stopped at 256 levels before
    assert "page/truncated_too_deep" not in page.counts
    page = extract.parse_page('<img src="before.jpg" alt="B">' + "<div>" * 3000 + '<img src="deep.jpg" alt="D">', PAGE)
    assert [c["alt"] for c in page.candidates] == ["B"] and page.counts["page/truncated_too_deep"] == 1


WIDE = '<html><body><img src="a.jpg" alt="Wide"></body></html>'


@pytest.mark.parametrize("body, headers", [
    (WIDE.encode("utf-16-le"), {"Content-Type": "text/html; charset=utf-16"}),  # ASCII + NUL is valid UTF-8 too
    (WIDE.encode("utf-16-be"), {}),
    (WIDE.encode("utf-32-le"), {}),
    (codecs.BOM_UTF32_LE + WIDE.encode("utf-32-le"), {}),  # not the UTF-16-LE mark it begins with
    # An escape codec is no page encoding: "\ud800" in the text stays text, not a lone surrogate.
    (b'<meta charset="unicode_escape"><p>\xff \\ud800</p>' + WIDE.encode(), {}),
    (WIDE.encode(), {"Content-Type": "text/html; charset=utf-16"}),  # no NUL: not UTF-16, whatever it says
], ids=["utf16le-header", "utf16be-sniffed", "utf32le-sniffed", "utf32le-bom", "unicode-escape", "ascii-declared-utf16"])
def test_wide_encodings_without_bom_and_bogus_charsets_decode(body, headers):
    page = extract.parse_page(body, PAGE, headers)
    assert [(c["image_url"], c["alt"]) for c in page.candidates] == [("http://example.org/dir/a.jpg", "Wide")]
    assert extract.decode_html("é".encode("utf-16-be") + WIDE.encode("utf-16-be")).startswith("é<html>")


def test_utf8_with_a_stray_nul_and_ascii_under_an_ebcdic_label_decode_as_what_they_are():
    mislabelled = {"Content-Type": "text/html; charset=iso-8859-1"}
    body = '<html><body><img src="a.jpg" alt="Crème brûlée">\x00</body></html>'.encode()
    assert [c["alt"] for c in extract.parse_page(body, PAGE, mislabelled).candidates] == ["Crème brûlée"]
    ascii_page = b'<html><body><img src="a.jpg" alt="Plain"></body></html>'
    for label in ("cp500", "ebcdic-cp-us"):
        headers = {"Content-Type": f"text/html; charset={label}"}
        assert [c["alt"] for c in extract.parse_page(ascii_page, PAGE, headers).candidates] == ["Plain"]
    # a 7-bit encoding is ASCII bytes too, and its label is right: ISO-2022-JP Japanese
    japanese = '<html><body><img src="a.jpg" alt="富士山"></body></html>'.encode("iso-2022-jp")
    assert japanese.isascii()
    headers = {"Content-Type": "text/html; charset=iso-2022-jp"}
    assert [c["alt"] for c in extract.parse_page(japanese, PAGE, headers).candidates] == ["富士山"]


def test_a_lone_surrogate_is_replaced_and_an_unexpected_parser_failure_is_raised(monkeypatch):
    page = extract.parse_page('<img src="a.jpg" alt="Odd \ud800 text">', PAGE)  # str input cannot be UTF-8 as is
    assert [c["alt"] for c in page.candidates] == ["Odd ? text"]
    real = lxml.html.document_fromstring

    def failing(data, *args, **kwargs):
        if b"img" in data:
            raise ValueError("an unexpected parser failure")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(lxml.html, "document_fromstring", failing)
    with pytest.raises(ValueError, match="unexpected"):  # the spider and the WARC reader make it a parse_error
        extract.parse_page('<img src="a.jpg" alt="A">', PAGE)


def test_picture_sources_of_formats_not_allowed_are_passed_over():
    html = ('<picture><source type="image/avif" srcset="a.avif 2x"><source type="image/webp" srcset="a.webp">'
            '<source type="image/x-unknown" srcset="a.xyz 3x"><img src="a.jpg" alt="P"></picture>')
    assert extract.parse_page(html, PAGE).candidates[0]["image_url"] == "http://example.org/dir/a.webp"
    assert extract.parse_page(html, PAGE, formats=["JPEG"]).candidates[0]["image_url"] == "http://example.org/dir/a.jpg"
    assert extract.parse_page(html, PAGE, formats=["JPEG", "AVIF"]).candidates[0]["image_url"] == (
        "http://example.org/dir/a.avif")
    untyped = '<picture><source srcset="big.jpg 2x"><img src="a.jpg" alt="P"></picture>'
    assert extract.parse_page(untyped, PAGE).candidates[0]["image_url"] == "http://example.org/dir/big.jpg"
    # no formats named: all are allowed (as validate_image has it), the largest source wins
    assert extract.parse_page(html, PAGE, formats=[]).candidates[0]["image_url"] == "http://example.org/dir/a.xyz"
    # the WARC reader chooses with the run's formats too
    from crawler.warc import page_candidates

    record = ("page", PAGE, {"status": 200, "body": html.encode(), "headers": {"Content-Type": "text/html"}})
    assert [c["image_url"] for c in page_candidates(record, formats=("JPEG",))] == ["http://example.org/dir/a.jpg"]
    assert [c["image_url"] for c in page_candidates(record)] == ["http://example.org/dir/a.webp"]


def test_page_urls_are_spelled_as_scrapy_requests_them():
    assert extract.canonical_page_url("http://H.example/café menu.html#x") == "http://h.example/caf%C3%A9%20menu.html"
    assert extract.canonical_page_url("http://h.example/caf%C3%A9%20menu.html") == "http://h.example/caf%C3%A9%20menu.html"
    assert Request("http://h.example/café menu.html").url == "http://h.example/caf%C3%A9%20menu.html"


def test_polite_fetcher_requests_spaces_and_non_ascii_as_scrapy_does():
    from crawler.fetch import PoliteFetcher

    photo = jpeg(8, 8)
    location = "/img/café noir.jpg".encode("utf-8").decode("latin-1")  # the header's bytes are UTF-8
    with MockSite({"/img/caf%C3%A9%20noir.jpg": (200, JPEG, photo), "/go": (302, {"Location": location}, b"")}) as site:
        fetcher = PoliteFetcher(allow_private_networks=True, delay=0, obey_robots=False)
        assert fetcher.fetch(site.url + "/img/café noir.jpg").body == photo
        assert fetcher.fetch(site.url + "/go").body == photo  # a Location with a space and non-ASCII
    assert site.counts["/img/caf%C3%A9%20noir.jpg"] == 2


class _HeaderLines(list):
    """Header lines for MockSite, a name repeated (a dict holds each name once)."""

    def items(self):
        return self


def test_polite_fetcher_keeps_the_header_lines_apart_for_the_x_robots_tag_scopes():
    """``header_dict`` joins the X-Robots-Tag lines (what its callers read); ``header_lines`` keeps them apart, so that
    a reader can scope each line by its user agent (``extract.robots_tag_lines``) as the spider does."""
    from crawler.fetch import PoliteFetcher

    headers = _HeaderLines([("Content-Type", "image/jpeg"), ("X-Robots-Tag", "otherbot: noindex, noai"),
                            ("X-Robots-Tag", "lait: noimageai")])
    with MockSite({"/i.jpg": (200, headers, jpeg(8, 8))}) as site:
        fetched = PoliteFetcher(allow_private_networks=True, delay=0, obey_robots=False).fetch(site.url + "/i.jpg")
    assert fetched.headers["x-robots-tag"] == "otherbot: noindex, noai, lait: noimageai"
    lines = extract.robots_tag_lines(fetched.header_lines)
    assert lines == ["otherbot: noindex, noai", "lait: noimageai"]
    assert extract.opt_out_reason([], image=True, lines=lines) == "opt_out_noimageai"


def test_polite_fetcher_disallows_a_host_whose_robots_txt_fails_or_cannot_be_reached():
    """RFC 9309: robots.txt answering 5xx or not at all disallows the host; a 4xx allows it."""
    from crawler.fetch import FetchError, PoliteFetcher

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: connection refused
    robots = {"/robots.txt": (503, {"Content-Type": "text/plain"}, b"busy"), "/img/a.jpg": (200, JPEG, jpeg(8, 8))}
    with MockSite(robots) as failing, MockSite({"/img/a.jpg": (200, JPEG, jpeg(8, 8))}) as missing:
        fetcher = PoliteFetcher(allow_private_networks=True, delay=0, timeout=2)
        for url in (failing.url + "/img/a.jpg", failing.url + "/img/b.jpg", closed_url + "/img/a.jpg"):
            with pytest.raises(FetchError) as caught:
                fetcher.fetch(url)
            assert caught.value.reason == "robots_unavailable", url
        assert fetcher.fetch(missing.url + "/img/a.jpg").status == 200  # robots.txt 404: no rules
    assert failing.counts == {"/robots.txt": 1}  # the verdict is kept, the image never requested


def test_resuming_loads_only_the_image_bytes_the_saved_state_needs(tmp_path, monkeypatch):
    import pickle

    from crawler import output
    from crawler.spiders.lait import STATE_FILE

    out, jobdir = tmp_path / "out", tmp_path / "job"
    writer = output.CrawlOutput(str(out), rows_per_shard=2)
    for i in range(6):
        writer.add_candidate({"candidate_id": f"c{i}", "image_id": f"{i:064x}", "page_url": "http://h.example/p",
                              "image_url": f"http://h.example/{i}.jpg", "image_bytes": b"bytes %d" % i, "source": "crawl"})
    writer.close()
    jobdir.mkdir()
    needed = f"{4:064x}"
    state = {"pages_seen": set(), "open_pages": {}, "pending": {}, "inbox_offset": 0,
             "image_results": {"http://h.example/4.jpg": {"image_id": needed}, "http://h.example/x.jpg": {"reason": "http_404"}}}
    (jobdir / STATE_FILE).write_bytes(pickle.dumps(state))
    reads = []
    real = schemas.read_table
    monkeypatch.setattr(schemas, "read_table", lambda path, kind=None, columns=None: reads.append(columns) or real(
        path, kind, columns=columns))
    spider = _spider(LAIT_OUT=str(out), LAIT_JOBDIR=str(jobdir))
    assert len(spider.store) == 1 and spider.store.get(needed) == b"bytes 4"
    assert reads.count(["image_id", "image_bytes"]) == 1  # the bytes of one shard of three only
    spider.store.close()


def test_a_job_folder_refuses_another_number_of_processes(tmp_path):
    from crawler import runner

    jobdir, out = tmp_path / "job", tmp_path / "out"
    runner.check_job_folder(str(jobdir), 3)
    runner.check_job_folder(str(jobdir), 3)  # the same number continues
    for processes in (1, 2, 4):
        with pytest.raises(runner.JobFolderError, match="--processes 3"):
            runner.run_crawl(["http://127.0.0.1:9/"], str(out), jobdir=str(jobdir), processes=processes)
        with pytest.raises(runner.JobFolderError):  # `scrapy crawl -a jobdir=...` is one process
            _spider(LAIT_JOBDIR=str(jobdir))
    assert not out.exists() and sorted(os.listdir(jobdir)) == [runner.JOB_FILE]
    from lait import cli

    assert cli.main(["crawl", "http://127.0.0.1:9/", "--out", str(out), "--jobdir", str(jobdir), "--processes", "2",
                     "--no-progress"]) == 2  # bad input: exit status 2, and the output untouched
    assert not out.exists()
    (tmp_path / "afile").write_text("x")  # a run that fails on --out leaves no record in a new job folder
    fresh = tmp_path / "fresh"
    assert cli.main(["crawl", "http://127.0.0.1:9/", "--out", str(tmp_path / "afile"), "--jobdir", str(fresh),
                     "--no-progress"]) == 2
    assert not (fresh / runner.JOB_FILE).exists()
    with pytest.raises(runner.JobFolderError, match="afile/job"):  # an unusable job folder: one line
        runner.check_job_folder(str(tmp_path / "afile" / "job"), 1)
    legacy = tmp_path / "legacy"  # a folder from before the record: its files show 3 processes at least
    (legacy / "inboxes").mkdir(parents=True)
    (legacy / "inboxes" / "inbox-2.jsonl").write_text("")
    with pytest.raises(runner.JobFolderError, match="--processes 3, not 2"):
        runner.check_job_folder(str(legacy), 2)
    runner.check_job_folder(str(legacy), 3)
    assert json.loads((legacy / runner.JOB_FILE).read_text()) == {"processes": 3}
    single = tmp_path / "single"  # a one-process crawl from before the record: not continued by more processes
    single.mkdir()
    (single / "lait-state.pickle").write_bytes(b"")
    with pytest.raises(runner.JobFolderError, match="--processes 1, not 4"):
        runner.check_job_folder(str(single), 4)
    for folder in (legacy, single):
        (folder / runner.JOB_FILE).unlink(missing_ok=True)
        with pytest.raises(runner.JobFolderError, match="not 4"):  # more processes than its files show: refused
            runner.check_job_folder(str(folder), 4)
    (tmp_path / "new").mkdir()  # a folder with no crawl files is a new job folder: any number
    runner.check_job_folder(str(tmp_path / "new"), 4)
    assert json.loads((tmp_path / "new" / runner.JOB_FILE).read_text()) == {"processes": 4}


def test_inbox_lines_torn_by_a_killed_writer_are_skipped_never_a_crash(tmp_path):
    from crawler import runner

    path = str(tmp_path / "inbox-1.jsonl")
    with open(path, "wb") as handle:
        handle.write(b'{"image_url": "a"}\n{"image_url": "b')  # process 0 killed mid-line
    spider = _spider()
    spider.inbox_dir, spider.processes = str(tmp_path), 2
    assert [m for _, m in runner.read_inbox(path, 0)] == [{"image_url": "a"}]  # the torn last line waits
    spider._send(1, {"image_url": "c"})  # the next writer starts on a fresh line
    spider._outboxes[1].close()
    lines = runner.read_inbox(path, 0)
    assert [m for _, m in lines] == [{"image_url": "a"}, None, {"image_url": "c"}]
    assert lines[-1][0] == os.path.getsize(path)


def test_candidates_left_in_an_inbox_become_image_not_fetched_rows(tmp_path):
    """Without a job folder, what an image process never read (it stopped first, or process 0 sent it later)
    becomes rows when `lait crawl` settles the books: every candidate sent has a row."""
    from crawler import output, runner

    out, inboxes = tmp_path / "out", tmp_path / "inboxes"
    inboxes.mkdir()
    candidates = [{"candidate_id": f"c{i}", "page_url": "http://h.example/p", "image_url": f"http://h.example/{i}.jpg",
                   "alt": f"Alt {i}", "title": None} for i in range(3)]
    lines = [json.dumps(candidates[0]), json.dumps({"done": "an earlier run"}), json.dumps(candidates[1]), "{torn",
             json.dumps(candidates[2])]
    (inboxes / "inbox-1.jsonl").write_text("".join(line + "\n" for line in lines))
    (inboxes / "inbox-1.read").write_text(json.dumps({"offset": len(lines[0]) + 1}))  # it read the first only
    for index in range(2):
        (inboxes / f"stats-{index}.json").write_text(json.dumps({"lait/image/routed": 3} if index == 0 else {}))
        output.RunOutcomes().save(str(inboxes / f"outcomes-{index}.json"))
    stats = runner._settle(str(out), str(inboxes), 2, output.CrawlOutput(str(out), prefix="part-inbox"))
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert [(r["candidate_id"], r["reason"], r["caption"]) for r in rejected] == [
        ("c1", "image_not_fetched", "Alt 1"), ("c2", "image_not_fetched", "Alt 2")]
    assert stats["in"] == 2 and stats["lait/inbox/unread"] == 2 and stats["lait/inbox/corrupt_lines"] == 1
    assert stats["lait/image/rejected/image_not_fetched"] == 2


def test_rows_for_unread_inbox_lines_are_in_the_written_row_counters(tmp_path):
    """``lait/out/rejected`` (what the progress bar shows) counts them with the rows the processes wrote, and a
    rerun that finds them on disk counts them as already written."""
    from crawler import output, runner

    out, inboxes = tmp_path / "out", tmp_path / "inboxes"
    inboxes.mkdir()
    candidates = [{"candidate_id": f"c{i}", "page_url": "http://h.example/p", "image_url": f"http://h.example/{i}.jpg",
                   "alt": f"Alt {i}", "title": None} for i in range(2)]
    (inboxes / "inbox-1.jsonl").write_text("".join(json.dumps(c) + "\n" for c in candidates))
    (inboxes / "inbox-1.read").write_text(json.dumps({"offset": 0}))
    for index in range(2):
        written = {"lait/out/rejected": 3, "lait/out/rejected/no_text": 3} if index == 0 else {}
        (inboxes / f"stats-{index}.json").write_text(json.dumps(written))
        output.RunOutcomes().save(str(inboxes / f"outcomes-{index}.json"))
    first = runner._settle(str(out), str(inboxes), 2, output.CrawlOutput(str(out), prefix="part-inbox"))
    assert first["lait/out/rejected"] == 3 + 2 and first["lait/out/rejected/image_not_fetched"] == 2
    assert first["rejected"] == 2  # on disk: the two unread rows (the processes' three are only counters here)
    rerun = runner._settle(str(out), str(inboxes), 2, output.CrawlOutput(str(out), prefix="part-inbox"))
    assert rerun["lait/out/rejected"] == 3 and rerun["lait/out/already_written"] == 2


def test_the_robots_middleware_overrides_methods_scrapy_has():
    """crawler.middlewares.RobotsTxtMiddleware overrides private methods of Scrapy's (RFC 9309's rule for a
    robots.txt that cannot be had): a Scrapy that renamed them would silently allow every such host again."""
    import inspect

    from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware as Scrapys

    from crawler.middlewares import RobotsTxtMiddleware

    for name in ("_parse_robots", "_robots_error", "process_request_2", "robot_parser", "__init__"):
        assert hasattr(Scrapys, name), f"Scrapy's RobotsTxtMiddleware has no {name} any more"
        assert (list(inspect.signature(getattr(Scrapys, name)).parameters)
                == list(inspect.signature(getattr(RobotsTxtMiddleware, name)).parameters)), name
    assert hasattr(Scrapys, "_parsers")  or "_parsers" in inspect.getsource(Scrapys.__init__)
