"""Fixes to the URL crawl found by a review: a redirect loop between two linked pages left no row; page redirects
ignored the allowed domains (and a start URL redirected to another host stranded the crawl); robots.txt's
``Crawl-delay`` and a 429/503's ``Retry-After`` were ignored."""
import asyncio
import email.utils
import json
import time

import pytest
from scrapy import Request
from scrapy.http import Response
from scrapy.utils.test import get_crawler

import schemas
from crawler import middlewares
from crawler.spiders.lait import LaitSpider
from tests.crawler.mocksite import HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.crawler.test_crawl_site import path_of
from tests.inprocess import lait_crawl_here


def crawl(site: MockSite, out, start: str | None = None, settings: dict | None = None, *options: str):
    """Crawl ``site`` from ``start`` (its root), with ``options`` of lait crawl: (candidates, rejected rows, stats)."""
    result = lait_crawl_here(start or site.url + "/", "--out", str(out), "--allow-private-networks", "--min-side",
                             str(TEST_MIN_SIDE), *options, settings=dict(TEST_SETTINGS, **(settings or {})))
    assert "Traceback" not in result.stderr
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    try:
        rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    except Exception:  # noqa: BLE001 - no rejected rows at all
        rejected = []
    return candidates, rejected, json.loads((out / "stats.json").read_text())


def timed(site: MockSite) -> list[tuple[float, str]]:
    """(time, path) of each request the site answers, from now on."""
    times = []
    respond = site.respond

    def timed_respond(path):
        times.append((time.monotonic(), path))
        return respond(path)

    site.respond = timed_respond
    return times


def test_a_redirect_loop_between_two_linked_pages_gets_a_row_for_each(tmp_path):
    """Was: no row at all (each hop's target was a page seen, so each page was left to the other for its rows)."""
    pages = {"/": (200, HTML, html('<a href="/a">a</a><a href="/b">b</a><a href="/c">c</a><a href="/d">d</a>')),
             "/a": (302, {"Location": "/b"}, b""), "/b": (302, {"Location": "/a"}, b""),
             "/c": (302, {"Location": "/e.html"}, b""), "/d": (302, {"Location": "/c"}, b""),
             "/e.html": (200, HTML, html("<p>e</p>"))}
    with MockSite(pages) as site:
        _, rejected, stats = crawl(site, tmp_path / "crawl")
    rows = {path_of(r["page_url"], site): r for r in rejected}
    # /d -> /c -> /e.html reaches a page with rows: /d has none of its own, as before.
    assert {page: row["reason"] for page, row in rows.items()} == {"/a": "too_many_redirects",
                                                                  "/b": "too_many_redirects"}
    assert "redirect loop" in rows["/a"]["detail"]
    assert stats["lait/page/rejected/too_many_redirects"] == 2


def test_a_redirect_outside_the_allowed_domains_is_not_crawled(tmp_path):
    """Was: a link of an allowed page that redirects to another host was crawled as a page, its candidates kept."""
    pages = {"/img/off.jpg": (200, JPEG, jpeg(96, 72)),
             "/off.html": (200, HTML, html('<img src="/img/off.jpg" alt="Off the site">'))}
    with MockSite(pages) as site:
        site.pages["/"] = (200, HTML, html('<a href="/go.html">go</a><a href="http://localhost:1/x.html">x</a>'))
        site.pages["/go.html"] = (302, {"Location": f"http://localhost:{site.port}/off.html"}, b"")
        candidates, rejected, stats = crawl(site, tmp_path / "crawl", start=f"http://127.0.0.1:{site.port}/")
        assert site.counts.get("/off.html", 0) == 0
    assert candidates == []
    assert [(path_of(r["page_url"], site), r["reason"]) for r in rejected] == [("/go.html", "offsite_redirect")]
    assert stats["lait/page/rejected/offsite_redirect"] == 1
    assert stats["lait/page/skipped_offsite"] == 1  # the link to localhost:1, not followed as before, now counted


def test_a_start_url_redirected_to_another_host_crawls_that_host(tmp_path):
    """Was: the start page was crawled under the new host and none of its links followed (http://www.x.com ->
    https://x.com stranded the crawl after one page)."""
    pages = {"/home.html": (200, HTML, html('<img src="/img/h.jpg" alt="Home"><a href="/p1.html">p1</a>')),
             "/p1.html": (200, HTML, html('<img src="/img/p1.jpg" alt="Page one">')),
             "/img/h.jpg": (200, JPEG, jpeg(96, 72)), "/img/p1.jpg": (200, JPEG, jpeg(97, 72))}
    with MockSite(pages) as site:
        site.pages["/"] = (302, {"Location": f"http://127.0.0.1:{site.port}/home.html"}, b"")
        candidates, _, stats = crawl(site, tmp_path / "crawl", start=f"http://localhost:{site.port}/")
    assert sorted(path_of(c["page_url"], site) for c in candidates) == ["/home.html", "/p1.html"]
    assert stats["lait/page/start_redirect_domain"] == 1


def test_crawl_delay_floor():
    assert middlewares.crawl_delay_floor(None, 0.0, 60) is None
    assert middlewares.crawl_delay_floor(0, 0.5, 60) is None
    assert middlewares.crawl_delay_floor(2, 0.0, 60) == 2
    assert middlewares.crawl_delay_floor(2, 5.0, 60) == 5  # never below DOWNLOAD_DELAY
    assert middlewares.crawl_delay_floor(3600, 0.0, 60) == 60  # capped at LAIT_MAX_CRAWL_DELAY


def test_retry_after_seconds():
    assert middlewares.retry_after_seconds(None) is None
    assert middlewares.retry_after_seconds(b"30") == 30
    assert middlewares.retry_after_seconds(b"soon") is None
    now = time.time()
    later = email.utils.formatdate(now + 90, usegmt=True)
    assert middlewares.retry_after_seconds(later, now) == pytest.approx(90, abs=1)
    assert middlewares.retry_after_seconds(email.utils.formatdate(now - 90, usegmt=True), now) == 0


def test_a_retry_after_over_the_cap_gives_up_at_once():
    crawler = get_crawler(LaitSpider, {"LAIT_MAX_RETRY_AFTER": 10, "RETRY_ENABLED": True})
    middleware = middlewares.RetryMiddleware.from_crawler(crawler)
    request = Request("http://example.org/a.jpg")
    response = Response(request.url, status=429, headers={"Retry-After": "3600"})
    assert asyncio.run(middleware.process_response(request, response)) is response
    assert crawler.stats.get_value("lait/retry/retry_after_too_long") == 1


def test_robots_crawl_delay_spaces_the_hosts_requests(tmp_path):
    """Was: a robots.txt's Crawl-delay was read by nobody; requests went out as fast as the settings allowed."""
    pages = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nCrawl-delay: 0.4\n"),
             "/": (200, HTML, html('<a href="/p1.html">1</a><a href="/p2.html">2</a>')),
             "/p1.html": (200, HTML, html("<p>1</p>")), "/p2.html": (200, HTML, html("<p>2</p>"))}
    with MockSite(pages) as site:
        times = timed(site)
        crawl(site, tmp_path / "crawl")
    starts = [t for t, path in times if path != "/robots.txt"]
    assert len(starts) == 3
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.38


def test_retry_after_is_waited_up_to_the_cap(tmp_path):
    """Was: a 503's retry went out at once, whatever its Retry-After said."""
    pages = {"/": (200, HTML, html('<img src="/img/busy.jpg" alt="Busy"><img src="/img/gone.jpg" alt="Gone">')),
             "/img/busy.jpg": [(503, {"Retry-After": "1", "Content-Type": "text/plain"}, b"busy"),
                               (200, JPEG, jpeg(96, 72))],
             "/img/gone.jpg": [(429, {"Retry-After": "100", "Content-Type": "text/plain"}, b"later"),
                               (200, JPEG, jpeg(97, 72))]}
    with MockSite(pages) as site:
        times = timed(site)
        candidates, rejected, stats = crawl(site, tmp_path / "crawl",
                                            settings={"RETRY_ENABLED": True, "LAIT_MAX_RETRY_AFTER": 5})
    busy = [t for t, path in times if path == "/img/busy.jpg"]
    assert len(busy) == 2 and busy[1] - busy[0] >= 0.95
    assert [path_of(c["image_url"], site) for c in candidates] == ["/img/busy.jpg"]
    assert [(path_of(r["image_url"], site), r["reason"]) for r in rejected] == [("/img/gone.jpg", "http_429")]
    assert [path for _, path in times].count("/img/gone.jpg") == 1
    assert stats["lait/retry/retry_after_too_long"] == 1
