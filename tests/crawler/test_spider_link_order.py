"""Which links the spider follows, and how often each URL reaches the server (mock site on 127.0.0.1): a link to an
image that an ``<img>`` of a later page shows is not crawled as a page first (the image went out twice, once as a
``not_html`` page), a link inside a ``<template>`` is inert markup, not followed, and page URLs whose queries differ
only in the order of their parameters are one page, crawled once."""
import types

import pytest

from crawler import extract
from crawler.spiders.lait import LaitSpider
from tests.crawler.mocksite import HTML, JPEG, MockSite, html, jpeg
from tests.crawler.test_crawl_site import path_of
from tests.crawler.test_spider_hunt_fixes import crawl as crawl_site

PAGE = "http://example.org/dir/page.html"


def crawl(site: MockSite, out, processes: int = 1):
    """Crawl ``site`` from its root in ``processes`` processes: (candidates, rejected rows, stats.json), the rows
    checked to add up."""
    candidates, rejected, stats = crawl_site(site, out, None, None, "--processes", str(processes))
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(candidates) + len(rejected)
    return candidates, rejected, stats


# -- a link to an image before any <img> shows it ---------------------------------------------------------------------

def linked_then_shown_site() -> tuple[MockSite, list[str]]:
    """The start page links full-size images, an image no page shows and an HTML page whose path ends in .jpg (a
    MediaWiki file page); two pages further, a page shows the full-size images: each link is met long before the
    <img>. Of the full-size images, one belongs to each of two crawl processes (``LaitSpider._owner``): with
    ``--processes 2`` the page process fetches one and sends the other's candidate on. Returns the site and their
    paths."""
    site = MockSite({
        "/next.html": (200, HTML, html('<a href="/shows.html">shows</a>')),
        "/wiki/File:Sea.jpg": (200, HTML, html('<img src="/img/sea.jpg" alt="The sea">')),
        "/img/sea.jpg": (200, JPEG, jpeg(96, 72, color=(1, 2, 3))),
        "/img/unshown.jpg": (200, JPEG, jpeg(96, 72, color=(9, 9, 9))),
    })
    by_owner: dict[int, str] = {}
    for n in range(64):
        path = f"/img/full{n}.jpg"
        by_owner.setdefault(LaitSpider._owner(types.SimpleNamespace(processes=2), site.url + path), path)
    full = [by_owner[0], by_owner[1]]
    links = "".join(f'<a href="{path}">full size</a>' for path in full)
    site.pages["/"] = (200, HTML, html(links + '<a href="/wiki/File:Sea.jpg">file page</a>'
                                       '<a href="/img/unshown.jpg">never shown</a><a href="/next.html">next</a>'))
    site.pages["/shows.html"] = (200, HTML, html("".join(f'<img src="{path}" alt="Full {n}">'
                                                         for n, path in enumerate(full))))
    site.pages.update({path: (200, JPEG, jpeg(96, 72, color=(n, 0, 0))) for n, path in enumerate(full)})
    return site, full


@pytest.mark.parametrize("processes", [1, 2])
def test_an_image_linked_before_a_later_page_shows_it_is_fetched_once(tmp_path, processes):
    """Was: the link was followed as a page (a not_html row, the download stopped at its headers), and the <img> of the
    later page requested the image again: two requests, and a not_html row for an image that is a candidate."""
    site, full = linked_then_shown_site()
    with site:
        candidates, rejected, stats = crawl(site, tmp_path / "crawl", processes)
    assert [site.counts[path] for path in full] == [1, 1]
    assert sorted((path_of(c["page_url"], site), path_of(c["image_url"], site)) for c in candidates) == sorted(
        [("/shows.html", path) for path in full] + [("/wiki/File:Sea.jpg", "/img/sea.jpg")])
    # An image no <img> shows is still a page link: a not_html row, its download stopped at its headers.
    assert [(path_of(r["page_url"], site), r["reason"]) for r in rejected] == [("/img/unshown.jpg", "not_html")]
    assert site.counts["/img/unshown.jpg"] == 1 and stats["lait/page/body_skipped"] == 1
    assert site.counts["/wiki/File:Sea.jpg"] == 1 and site.counts["/img/sea.jpg"] == 1  # a page, path and all
    assert stats["lait/page/skipped_image_link"] == 2 and stats["lait/page/deferred_image_link"] == 4


def test_an_image_linked_before_its_img_on_the_same_page_is_fetched_once(tmp_path):
    with MockSite({"/": (200, HTML, html('<a href="/img/a.jpg">big</a><p>text</p><img src="/img/a.jpg" alt="A">')),
                   "/img/a.jpg": (200, JPEG, jpeg(96, 72))}) as site:
        candidates, rejected, stats = crawl(site, tmp_path / "crawl")
    assert site.counts["/img/a.jpg"] == 1 and len(candidates) == 1 and rejected == []
    assert stats["lait/page/skipped_image_link"] == 1 and "lait/page/deferred_image_link" not in stats


# -- links inside a <template> --------------------------------------------------------------------------------------

TEMPLATE_LINKS = ('<template><a href="/t1.html">t1</a><div><map><area href="/t2.html"></map></div>'
                  '<template><a href="/t3.html">nested</a></template>'
                  '<meta http-equiv="refresh" content="0; url=/t4.html"></template>')


def test_links_inside_a_template_are_not_links_of_the_page():
    page = extract.parse_page(f'<html><body>{TEMPLATE_LINKS}<a href="real.html">real</a></body></html>', PAGE)
    assert page.links == ["http://example.org/dir/real.html"]
    assert page.refresh is None
    assert page.counts["link_in_template"] == 3


def test_the_spider_does_not_follow_a_link_inside_a_template(tmp_path):
    """Was: a <template>'s <img> was skipped (img_in_template) but its <a href> was followed as a page."""
    pages = {"/": (200, HTML, html(TEMPLATE_LINKS + '<a href="/real.html">real</a>'))}
    pages.update({f"/t{n}.html": (200, HTML, html(f'<img src="/img/t{n}.jpg" alt="T{n}">')) for n in range(1, 5)})
    pages["/real.html"] = (200, HTML, html('<img src="/img/r.jpg" alt="Real">'))
    pages.update({f"/img/{name}.jpg": (200, JPEG, jpeg(96, 72)) for name in ("t1", "t2", "t3", "t4", "r")})
    with MockSite(pages) as site:
        candidates, rejected, stats = crawl(site, tmp_path / "crawl")
    assert [path for path in site.counts if path.startswith("/t")] == []
    assert site.counts["/real.html"] == 1
    assert [path_of(c["page_url"], site) for c in candidates] == ["/real.html"] and rejected == []
    assert stats["lait/ref/link_in_template"] == 3


# -- query parameters in another order --------------------------------------------------------------------------------

def test_query_parameters_in_another_order_are_one_url_key():
    assert extract.url_key("http://h/p?b=2&a=1") == extract.url_key("http://h/p?a=1&b=2") == "http://h/p?a=1&b=2"
    # A repeated parameter keeps the order of its values (a list: it may mean something), blank ones are kept.
    assert extract.url_key("http://h/p?t=2&a&t=1") == "http://h/p?a&t=2&t=1" != extract.url_key("http://h/p?t=1&a&t=2")
    assert extract.url_key("http://h/p?a=1&b=2") == "http://h/p?a=1&b=2"  # in order already: spelled as before


def test_a_page_linked_with_its_query_parameters_in_another_order_is_crawled_once(tmp_path):
    """Each page request is the spider's own (dont_filter: Scrapy's fingerprint, which sorts the query, never saw
    them): `/p?a=1&b=2` and `/p?b=2&a=1` were two pages, crawled twice, their candidates written twice."""
    pages = {"/": (200, HTML, html('<a href="/p?b=2&amp;a=1">one</a><a href="/p?a=1&amp;b=2">two</a>'
                                   '<a href="/q?x=1">other</a>')),
             "/p": (200, HTML, html('<img src="/img/p.jpg" alt="P">')), "/q": (200, HTML, html("<p>q</p>")),
             "/img/p.jpg": (200, JPEG, jpeg(96, 72))}
    with MockSite(pages) as site:
        candidates, rejected, _ = crawl(site, tmp_path / "crawl")
    assert site.counts["/p"] == 1 and site.counts["/q"] == 1
    assert [entry for entry in site.log if entry.startswith("/p")] == ["/p?b=2&a=1"]  # requested as first linked
    # recorded in one spelling, the one every link to it gives
    assert [path_of(c["page_url"], site) for c in candidates] == ["/p?a=1&b=2"] and rejected == []


# -- what a --jobdir crawl keeps ------------------------------------------------------------------------------------

def _spider(**settings) -> LaitSpider:
    from scrapy.utils.test import get_crawler

    return LaitSpider.from_crawler(get_crawler(LaitSpider, settings), urls="http://example.org/")


def test_links_put_off_and_images_sent_on_are_kept_in_the_job_folder_and_followed_when_idle(tmp_path):
    from scrapy.exceptions import DontCloseSpider

    spider = _spider(LAIT_JOBDIR=str(tmp_path))
    for link in ("http://example.org/big.JPG", "http://example.org/shown.png"):
        assert spider._follow(link, 2, set()) is None  # put off
    spider.routed_images.add("http://example.org/sent.webp")  # a candidate's image sent to the process owning it
    assert spider._follow("http://example.org/sent.webp", 1, set()) is None
    spider._save_state()  # stopped part-way

    spider = _spider(LAIT_JOBDIR=str(tmp_path))
    assert spider.deferred_links == {"http://example.org/big.JPG": ("http://example.org/big.JPG", 2),
                                     "http://example.org/shown.png": ("http://example.org/shown.png", 2)}
    assert spider.routed_images == {"http://example.org/sent.webp"}
    spider.image_results["http://example.org/shown.png"] = {"reason": "image_too_small"}  # an <img> showed it since
    crawled = []
    spider.crawler.engine = types.SimpleNamespace(crawl=crawled.append)
    spider.crawler.stats.open_spider()
    with pytest.raises(DontCloseSpider):
        spider.on_spider_idle()
    assert [(r.url, r.meta["lait_depth"]) for r in crawled] == [("http://example.org/big.JPG", 2)]
    assert not spider.finished and spider.deferred_links == {}
    assert spider.crawler.stats.get_value("lait/page/skipped_image_link") == 1  # (this run: shown.png)
    spider.on_spider_idle()  # nothing left to put off: the crawl ends
    assert spider.finished


def test_a_resumed_crawl_requests_an_open_page_as_its_link_spelt_it(tmp_path):
    """A page left open by a stopped --jobdir crawl was requested on resume by its url_key, its query parameters
    sorted (`/q?a=1&b=2`), where an uninterrupted crawl requests them in the link's order (`/q?b=2&a=1`)."""
    spider = _spider(LAIT_JOBDIR=str(tmp_path))
    request = spider._schedule_page("http://example.org/q?b=2&a=1", 1)
    assert request.url == "http://example.org/q?b=2&a=1"
    assert spider.open_pages == {"http://example.org/q?a=1&b=2": 1}
    spider._save_state()  # stopped part-way

    spider = _spider(LAIT_JOBDIR=str(tmp_path))
    spider.crawler.stats.open_spider()

    async def resumed():
        return [request async for request in spider.start() if hasattr(request, "meta")]

    import asyncio

    requests = asyncio.run(resumed())
    page = [r for r in requests if r.meta.get("lait_page", "").startswith("http://example.org/q")]
    assert [(r.url, r.meta["lait_page"], r.meta["lait_depth"]) for r in page] == [
        ("http://example.org/q?b=2&a=1", "http://example.org/q?a=1&b=2", 1)]
