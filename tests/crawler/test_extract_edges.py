"""Edges of the crawl's extraction and spider found by a bug hunt, each fixed: content after ``</html>``, ``<meta
http-equiv="refresh">`` pages, figcaption text, URLs that differ only in the case of their escapes (or raw UTF-8 against
escapes), robots.txt failures and credentialed redirects, and an inline SVG's ``<title>``. Unit tests on
``crawler.extract`` and the spider where they can tell, and one crawl of a mock site (run twice) for the rest."""
import asyncio
import collections
import hashlib
import json
import logging
from html import escape
from urllib.parse import urljoin

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse
from scrapy.utils.test import get_crawler
from twisted.internet import error as tx_error

import schemas
from crawler import extract
from crawler import settings as crawl_settings
from crawler.middlewares import NetworkGuardMiddleware, RefusedRequest, RobotsTxtMiddleware
from crawler.spiders.lait import LaitSpider
from tests.crawler.mocksite import HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.crawler.test_crawl_site import path_of
from tests.crawler.test_crawl_units import _spider
from tests.inprocess import lait_crawl_here

PAGE = "http://example.org/dir/page.html"


def url(reference: str) -> str:
    return urljoin(PAGE, reference)


def kept(page: extract.Page) -> list[tuple]:
    return [(c["image_url"], c["alt"], c["title"], c["figcaption"]) for c in page.candidates]


# -- content after </html> ------------------------------------------------------------------------------------------


def test_content_after_the_html_end_tag_is_read_as_a_browser_reads_it():
    """Was: libxml2 ends the page at `</html>`; an image, link or text after it (a host's appended banner) was lost
    without a row. The end tags go from the decoded text, whatever the page's encoding and their case."""
    body = ('<!DOCTYPE html><html><head><title>T</title></head><body><img src="in.jpg" alt="Café inside"></body></html>'
            '\n<!-- appended by the host -->\n<DIV><img src="late.jpg" alt="Crème after"><a href="/next.html">next</a>'
            ' late words</DIV></BODY ></HTML\n>')
    for encoded, headers in ((body.encode("cp1252"), {"Content-Type": "text/html; charset=windows-1252"}),
                             (body.encode("utf-16"), {}), (body, {})):
        page = extract.parse_page(encoded, PAGE, headers)
        assert kept(page) == [(url("in.jpg"), "Café inside", None, None), (url("late.jpg"), "Crème after", None, None)]
        assert page.links == [url("/next.html")] and page.text == "next late words" and page.title == "T"
    # An end tag written inside an attribute value is text, and stays in it.
    page = extract.parse_page('<img src="a.jpg" alt="the </html> tag"></html><img src="b.jpg" alt="B">', PAGE)
    assert kept(page) == [(url("a.jpg"), "the </html> tag", None, None), (url("b.jpg"), "B", None, None)]


# -- <meta http-equiv="refresh"> ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, refresh", [
    ("10; url=/slide2.html", (10, "http://example.org/slide2.html")),
    ("0;URL='next.html'", (0, url("next.html"))),
    ('3 , url = "q.html" ', (3, url("q.html"))),
    ("2.5 other.html", (2, url("other.html"))),
    ("5", None),  # a reload of the page itself
    ("x; url=b.html", None),  # no delay: ignored, as a browser ignores it
    ("0; url=mailto:a@example.org", None),
])
def test_a_meta_refresh_is_read_as_the_html_standard_reads_it(content, refresh):
    page = extract.parse_page(f'<head><meta http-equiv="Refresh" content="{escape(content)}"></head><img src=a.jpg alt=A>',
                              PAGE)
    assert page.refresh == refresh
    assert kept(page) == [(url("a.jpg"), "A", None, None)]  # the page's references are the page's, whatever it says


def test_the_first_meta_refresh_outside_noscript_counts():
    page = extract.parse_page('<noscript><meta http-equiv="refresh" content="0; url=/enable-js.html"></noscript>'
                              '<meta http-equiv="refresh" content="9; url=/one.html">'
                              '<meta http-equiv="refresh" content="1; url=/two.html">', PAGE)
    assert page.refresh == (9, "http://example.org/one.html")


def refresh(content: str, depth: int = 0, robots: str = "", spider: LaitSpider | None = None,
            page: str = "http://example.org/p.html") -> list[tuple[str, int]]:
    """The pages (URL, depth) the spider requests from ``page`` at ``depth`` whose head holds a refresh of ``content``
    (and ``robots``), once it has checked that the page's image waits for its fetch all the same."""
    spider = spider or _spider()
    request = spider._schedule_page(page, depth)
    head = f'<meta http-equiv="refresh" content="{content}">{robots}'
    response = HtmlResponse(request.url, body=html('<img src="/a.jpg" alt="A">', head=head), request=request,
                            headers={"Content-Type": "text/html"})
    out = list(spider.parse_page(response))
    assert [c["page_url"] for c in spider.pending["http://example.org/a.jpg"]][-1] == page
    return [(o.url, o.meta["lait_depth"]) for o in out if "lait_page" in getattr(o, "meta", {})]


def test_the_spider_keeps_a_refreshing_page_and_follows_where_it_moves_to():
    """Was: Scrapy's meta-refresh redirect dropped the page (a slideshow's images were lost) and fetched the target in
    its place; a page that reloads itself ended as too_many_redirects. Now the page is parsed and its refresh target
    is a link of it: after 0 seconds a redirect (the page's own depth, nofollow or not), later a link (a hop)."""
    assert crawl_settings.DOWNLOADER_MIDDLEWARES["scrapy.downloadermiddlewares.redirect.MetaRefreshMiddleware"] is None
    assert not [name for name in crawl_settings.DOWNLOADER_MIDDLEWARES if "MetaRefresh" in name and "scrapy." not in name]
    assert refresh("10; url=/slide2.html") == [("http://example.org/slide2.html", 1)]
    assert refresh("0; url=/home.html", depth=2) == [("http://example.org/home.html", 2)]
    assert refresh("60; url=/p.html") == []  # itself: seen already
    assert refresh("0; url=http://other.example/") == []  # not an allowed domain
    nofollow = '<meta name="robots" content="nofollow">'
    assert refresh("10; url=/next.html", robots=nofollow) == []
    assert refresh("0; url=/next.html", robots=nofollow) == [("http://example.org/next.html", 0)]
    spider = _spider()
    spider.depth_limit = 1
    assert refresh("10; url=/deeper.html", depth=1, spider=spider) == []
    assert refresh("0; url=/same.html", depth=1, spider=spider, page="http://example.org/q.html") == [
        ("http://example.org/same.html", 1)]
    spider = _spider()
    spider.max_pages = 1
    assert refresh("0; url=/next.html", spider=spider) == []  # --max-pages reached (by the page itself)


# -- figcaption -----------------------------------------------------------------------------------------------------


def test_a_figcaption_is_its_own_figures_and_its_lines_are_words_apart():
    """Was: text_content() glued the words at a <br> or between blocks (`Sunset over the bayPhoto: Jane Doe`), and an
    outer figure took the caption of a figure nested in it."""
    page = extract.parse_page(
        '<figure><img src="a.jpg"><figcaption>Sunset over the bay<br>Photo: Jane Doe</figcaption></figure>'
        '<figure><img src="b.jpg"><figcaption><p>A red fox</p><p>Credit: Wiki</p></figcaption></figure>'
        '<figure><img src="c.jpg"><figcaption>Wiki<i>pedia</i> <b>bold</b><script>var x = 1;</script> end</figcaption>'
        '</figure><figure><img src="outer.jpg"><figure><img src="inner.jpg" alt="inner"><figcaption>Inner caption'
        '</figcaption></figure></figure>', PAGE)
    assert kept(page) == [(url("a.jpg"), None, None, "Sunset over the bay Photo: Jane Doe"),
                          (url("b.jpg"), None, None, "A red fox Credit: Wiki"),
                          (url("c.jpg"), None, None, "Wikipedia bold end"),
                          (url("inner.jpg"), "inner", None, "Inner caption")]
    assert [(r["reason"], r["image_url"]) for r in page.rejects] == [("no_text", url("outer.jpg"))]


def test_a_deeply_nested_figcaption_is_read_whole():
    page = extract.parse_page('<figure><img src="a.jpg"><figcaption>' + "<span>" * 1500 + "deep" + "</span>" * 1500
                              + "<br>end</figcaption></figure>", PAGE)
    assert kept(page) == [(url("a.jpg"), None, None, "deep end")]


# -- one URL, several spellings -------------------------------------------------------------------------------------


def old_candidate_id(page_url: str, image_url: str, alt: str | None, title: str | None) -> str:
    """candidate_id as every crawl before computed it: folders written then must dedupe on a rerun."""
    return hashlib.sha1("\x00".join(part or "" for part in (page_url, image_url, alt, title)).encode("utf-8")).hexdigest()


def test_one_image_spelled_three_ways_is_one_candidate_and_two_repeats():
    """Was: `größe.jpg`, `gr%C3%B6%C3%9Fe.jpg` and `gr%c3%b6%c3%9fe.jpg` (one URL to the server) were three candidates.
    Now the later references with the same text repeat the first one's id (the output makes them
    duplicate_candidate); every other reference keeps the id it always had."""
    page = extract.parse_page('<img src="/größe.jpg" alt="Dog"><img src="/gr%C3%B6%C3%9Fe.jpg" alt="Dog">'
                              '<img src="/gr%c3%b6%c3%9fe.jpg" alt="Dog"><img src="/gr%c3%b6%c3%9fe.jpg" alt="Other">'
                              '<img src="/plain.jpg" alt="Dog">', PAGE)
    ids = [c["candidate_id"] for c in page.candidates]
    assert ids[0] == ids[1] == ids[2] == old_candidate_id(PAGE, "http://example.org/größe.jpg", "Dog", None)
    assert ids[3] == old_candidate_id(PAGE, "http://example.org/gr%c3%b6%c3%9fe.jpg", "Other", None)
    assert ids[4] == old_candidate_id(PAGE, "http://example.org/plain.jpg", "Dog", None)
    assert [c["image_url"] for c in page.candidates][:3] == [  # each row keeps the URL as its page writes it
        "http://example.org/größe.jpg", "http://example.org/gr%C3%B6%C3%9Fe.jpg", "http://example.org/gr%c3%b6%c3%9fe.jpg"]


def test_the_spider_fetches_an_image_and_crawls_a_page_once_per_url_key():
    spider = _spider()
    base = {"page_url": "http://example.org/", "alt": "A", "title": None}
    spellings = ["http://example.org/größe.jpg", "http://example.org/gr%c3%b6%c3%9fe.jpg",
                 "http://EXAMPLE.org:80/gr%C3%B6%C3%9Fe.jpg"]
    out = [item for i, image in enumerate(spellings) for item in spider._candidate(dict(base, image_url=image, candidate_id=str(i)))]
    assert [request.url for request in out] == ["http://example.org/gr%C3%B6%C3%9Fe.jpg"]  # as the first one spells it
    assert list(spider.pending) == ["http://example.org/gr%C3%B6%C3%9Fe.jpg"] and len(spider.pending[out[0].meta["lait_image"]]) == 3
    first = spider._schedule_page("http://example.org/caf%c3%a9.html", 1)
    assert first.url == "http://example.org/caf%C3%A9.html"  # requested and recorded as its url_key
    assert spider._schedule_page("http://example.org/café.html", 1) is None
    assert spider._schedule_page("http://example.org/caf%C3%A9.html#top", 1) is None
    # A page URL already in url_key spelling is requested and recorded as it always was.
    assert spider._schedule_page("http://example.org/a%20b.html", 1).url == "http://example.org/a%20b.html"


# -- robots.txt that cannot be had, credentials in a redirect --------------------------------------------------------


def test_an_unreachable_robots_txt_logs_one_line_without_a_traceback(caplog):
    """Was: Scrapy logged the failure with exc_info: a chained traceback on stderr for every unreachable host."""
    crawler = get_crawler(LaitSpider, {"ROBOTSTXT_OBEY": True})
    middleware = RobotsTxtMiddleware.from_crawler(crawler)

    class Engine:
        async def download_async(self, request):
            raise tx_error.ConnectionRefusedError("111: Connection refused")

    crawler.engine = Engine()
    crawler.stats.open_spider()
    with caplog.at_level(logging.INFO), pytest.raises(RefusedRequest) as refused:
        asyncio.run(middleware.process_request(Request("http://127.0.0.1:1/")))
    assert refused.value.reason == "robots_unavailable"
    errors = [r for r in caplog.records if r.name == "scrapy.downloadermiddlewares.robotstxt"]
    assert len(errors) == 1 and errors[0].exc_info is None and "Connection refused" in errors[0].getMessage()


def test_a_url_with_credentials_is_refused_as_invalid_url_before_anything_is_requested():
    guard = NetworkGuardMiddleware(allow_private_networks=True)
    with pytest.raises(RefusedRequest) as refused:
        asyncio.run(guard.process_request(Request("http://user:pw@127.0.0.1:9/a.jpg")))
    assert refused.value.reason == "invalid_url" and "pw" not in refused.value.detail
    assert asyncio.run(guard.process_request(Request("http://127.0.0.1:9/a.jpg"))) is None


# -- page title ------------------------------------------------------------------------------------------------------


def test_an_inline_svgs_title_is_not_the_pages_title():
    """Was: a page without a <title> in its head took the first <title> of the document, an inline SVG's."""
    svg = '<svg viewBox="0 0 8 8"><title>Menu icon</title></svg><img src="a.jpg" alt="A">'
    assert extract.parse_page(f"<html><head></head><body>{svg}</body></html>", PAGE).title is None
    assert extract.parse_page(f"<html><head><title>Page</title></head><body>{svg}</body></html>", PAGE).title == "Page"
    assert extract.parse_page(f"<body>{svg}<title>Late</title></body>", PAGE).title == "Late"  # as a browser's


# -- one crawl of a mock site -----------------------------------------------------------------------------------------


def edges_site() -> MockSite:
    site = MockSite({})
    photo = lambda shade: (200, JPEG, jpeg(96, 72, color=(shade, 60, 90)))  # noqa: E731
    cafe = (200, HTML, html('<img src="/img/cat.jpg" alt="A cat in a café">'))
    pages = {
        "/": (200, HTML, html("".join(f'<a href="{link}">{link}</a> ' for link in (
            "/caf%c3%a9.html", "/café.html", "/g.html", "/slide1.html", "/live.html", "/stand-in.html", "/late.html",
            "/cred.html")))),
        "/caf%c3%a9.html": cafe, "/caf%C3%A9.html": cafe,
        "/g.html": (200, HTML, html('<img src="/img/größe.jpg" alt="A big dog"><img src="/img/gr%C3%B6%C3%9Fe.jpg" '
                                    'alt="A big dog"><img src="/img/gr%c3%b6%c3%9fe.jpg" alt="A big dog">')),
        "/slide1.html": (200, HTML, html('<img src="/img/s1.jpg" alt="A lighthouse at dawn">',
                                         head='<meta http-equiv="refresh" content="10; url=/slide2.html">')),
        "/slide2.html": (200, HTML, html('<img src="/img/s2.jpg" alt="A harbour at noon">')),
        "/live.html": (200, HTML, html('<img src="/img/live.jpg" alt="A crowd in the square">',
                                       head='<meta http-equiv="refresh" content="60; url=/live.html">')),
        "/stand-in.html": (200, HTML, html('<img src="/img/stand-in.jpg" alt="A logo while you wait">',
                                           head='<meta http-equiv="refresh" content="0; url=/target.html">')),
        "/target.html": (200, HTML, html('<img src="/img/target.jpg" alt="The real page">')),
        "/late.html": (200, HTML, html('<img src="/img/in.jpg" alt="Inside">')
                       + b'\n<div><img src="/img/late.jpg" alt="After the end"></div>'),
        "/cred.html": (200, HTML, html('<img src="/redirect-cred" alt="Redirected with credentials">'
                                       '<img src="http://127.0.0.1:1/gone.jpg" alt="On a host that never answers">')),
        "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"),
    }
    for shade, name in enumerate(("cat", "s1", "s2", "live", "stand-in", "target", "in", "late")):
        pages[f"/img/{name}.jpg"] = photo(shade * 20)
    pages["/img/gr%C3%B6%C3%9Fe.jpg"] = pages["/img/gr%c3%b6%c3%9fe.jpg"] = photo(200)
    pages["/redirect-cred"] = (302, {"Location": f"http://user:pw@127.0.0.1:{site.port}/img/cat.jpg"}, b"")
    site.pages.update(pages)
    return site


@pytest.fixture(scope="module")
def edges_crawl(tmp_path_factory):
    """The site crawled, then crawled again into the same folder: (site, server counts of the first crawl,
    candidates, rejected, stats, the first crawl's stderr, stats of the first crawl)."""
    out = tmp_path_factory.mktemp("edges") / "crawl"
    command = ["--out", str(out), "--allow-private-networks", "--min-side", str(TEST_MIN_SIDE)]
    with edges_site() as site:
        first = lait_crawl_here(site.url + "/", *command, settings=TEST_SETTINGS)
        counts = collections.Counter(site.counts)
        first_stats = json.loads((out / "stats.json").read_text())
        lait_crawl_here(site.url + "/", *command, settings=TEST_SETTINGS)
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    stats = json.loads((out / "stats.json").read_text())
    return site, counts, candidates, rejected, stats, first.stderr, first_stats


def test_the_crawl_keeps_every_reference_once_per_page_and_image(edges_crawl):
    site, counts, candidates, rejected, _, _, _ = edges_crawl
    assert sorted((path_of(c["page_url"], site), path_of(c["image_url"], site), c["alt"]) for c in candidates) == [
        ("/caf%C3%A9.html", "/img/cat.jpg", "A cat in a café"),
        ("/g.html", "/img/größe.jpg", "A big dog"),
        ("/late.html", "/img/in.jpg", "Inside"),
        ("/late.html", "/img/late.jpg", "After the end"),
        ("/live.html", "/img/live.jpg", "A crowd in the square"),
        ("/slide1.html", "/img/s1.jpg", "A lighthouse at dawn"),
        ("/slide2.html", "/img/s2.jpg", "A harbour at noon"),
        ("/stand-in.html", "/img/stand-in.jpg", "A logo while you wait"),
        ("/target.html", "/img/target.jpg", "The real page")]
    assert sorted((path_of(r["page_url"], site), path_of(r["image_url"], site), r["reason"]) for r in rejected) == [
        ("/cred.html", "/redirect-cred", "invalid_url"),
        ("/cred.html", "http://127.0.0.1:1/gone.jpg", "robots_unavailable"),
        ("/g.html", "/img/gr%C3%B6%C3%9Fe.jpg", "duplicate_candidate"),
        ("/g.html", "/img/gr%c3%b6%c3%9fe.jpg", "duplicate_candidate")]
    # Each page and image fetched once, whichever way it is spelled; a page that reloads itself too.
    assert counts["/caf%C3%A9.html"] == 1 and counts["/caf%c3%a9.html"] == 0
    assert counts["/img/gr%C3%B6%C3%9Fe.jpg"] + counts["/img/gr%c3%b6%c3%9fe.jpg"] == 1
    assert counts["/live.html"] == counts["/slide2.html"] == counts["/target.html"] == counts["/img/cat.jpg"] == 1


def test_the_crawl_prints_no_traceback_and_a_rerun_writes_nothing_new(edges_crawl):
    _, _, candidates, rejected, stats, stderr, first_stats = edges_crawl
    assert "Traceback" not in stderr
    assert first_stats["lait/page/meta_refresh"] == 3
    # The second crawl found every row on disk: the ids of both spellings are the same in every run.
    assert (stats["in"], stats["kept"], stats["rejected"]) == (first_stats["in"], first_stats["kept"],
                                                               first_stats["rejected"]) == (13, 9, 4)
    assert "lait/out/candidates" not in stats and "lait/out/rejected" not in stats
    assert len({c["candidate_id"] for c in candidates}) == len(candidates)
