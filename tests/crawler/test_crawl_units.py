"""Unit tests of the crawl's pure parts: extraction, image checks, the network guard."""
import asyncio
import hashlib
import io
import socket

import pytest
from PIL import Image
from scrapy import Request

from crawler import extract, images, netguard
from crawler.middlewares import NetworkGuardMiddleware, RefusedRequest
from tests.crawler.mocksite import jpeg, png_bomb

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
    assert [getattr(o, "url", None) or o.row["reason"] for o in started] == [good, "invalid_url"]


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
