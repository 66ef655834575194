"""Unit tests of the crawl's pure parts: extraction, image checks, the network guard."""
import asyncio
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
