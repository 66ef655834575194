"""A redirect whose Location is no URL (``http://[bad/``) or not an http(s) one (``mailto:``, ``javascript:``,
``ftp://``): was a ``fetch_error`` reject (Scrapy's redirect middleware failed building the request) or ``http_302``
(Scrapy handed an ``ftp://`` one back); now ``invalid_url`` or ``unsupported_scheme``, for pages and images, as an
``<img src>`` of either is. The WARC reader's fetcher raised a ValueError out of its DoFn on the first kind."""
import json

import pytest
from scrapy import Request
from scrapy.http import Response
from scrapy.utils.test import get_crawler

import schemas
from crawler import extract, netguard
from crawler import settings as crawl_settings
from crawler.fetch import FetchError, PoliteFetcher
from crawler.middlewares import RedirectMiddleware, RefusedRequest
from crawler.spiders.lait import LaitSpider
from tests.crawler.mocksite import HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.crawler.test_crawl_site import path_of
from tests.inprocess import lait_crawl_here

#: Location -> the reason a page or image redirecting there is rejected for.
TARGETS = {"http://[bad/": "invalid_url", "http://127.0.0.1:99999/x.jpg": "invalid_url",
           "mailto:someone@example.org": "unsupported_scheme", "javascript:void(0)": "unsupported_scheme",
           "ftp://127.0.0.1/x.jpg": "unsupported_scheme"}


def redirect(location: str, status: int = 302, meta: dict | None = None):
    """What the crawl's redirect middleware makes of a ``status`` response to a page request pointing at ``location``."""
    middleware = RedirectMiddleware.from_crawler(get_crawler(LaitSpider, {}))
    request = Request("http://example.org/old.html", meta=dict(meta or {}, lait_page="http://example.org/old.html"))
    return middleware.process_response(request, Response(request.url, status=status, headers={"Location": location}))


@pytest.mark.parametrize("location, reason", TARGETS.items())
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_a_url_that_cannot_be_fetched_is_refused_with_its_reason(location, reason, status):
    with pytest.raises(RefusedRequest) as refused:
        redirect(location, status)
    assert refused.value.reason == reason and "http://example.org/old.html" in refused.value.detail


def test_other_redirects_are_scrapys():
    assert crawl_settings.DOWNLOADER_MIDDLEWARES["scrapy.downloadermiddlewares.redirect.RedirectMiddleware"] is None
    assert crawl_settings.DOWNLOADER_MIDDLEWARES["crawler.middlewares.RedirectMiddleware"] == 600  # Scrapy's place
    assert redirect("/new.html").url == "http://example.org/new.html"
    assert redirect("//cdn.example.net/a.jpg").url == "http://cdn.example.net/a.jpg"
    # A response Scrapy does not follow is left alone, whatever its Location.
    assert redirect("mailto:x@y", meta={"dont_redirect": True}).status == 302
    assert redirect("http://[bad/", status=200).status == 200


def test_the_warc_fetcher_rejects_such_a_redirect_too():
    """Was: a ValueError (not a FetchError) out of PoliteFetcher.fetch on `http://[bad/`, which stopped the pipeline."""
    pages = {f"/go{i}": (302, {"Location": location}, b"") for i, location in enumerate(TARGETS)}
    with MockSite(pages) as site:
        fetcher = PoliteFetcher(allow_private_networks=True, delay=0, obey_robots=False)
        for i, reason in enumerate(TARGETS.values()):
            with pytest.raises((FetchError, netguard.RefusedURL)) as refused:
                fetcher.fetch(f"{site.url}/go{i}")
            assert refused.value.reason == reason, list(TARGETS)[i]


def test_the_crawl_rejects_pages_and_images_redirecting_to_them_as_counted_rejects(tmp_path):
    out = tmp_path / "crawl"
    pages = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"),
             "/img/ok.jpg": (200, JPEG, jpeg(96, 72)), "/img/moved": (301, {"Location": "/img/ok.jpg"}, b"")}
    links, images = ['<img src="/img/moved" alt="Moved, kept">'], []
    for i, location in enumerate(TARGETS):
        pages[f"/page{i}"] = (302, {"Location": location}, b"")
        pages[f"/image{i}"] = (301, {"Location": location}, b"")
        links.append(f'<a href="/page{i}">{i}</a>')
        images.append(f'<img src="/image{i}" alt="Image {i}">')
    pages["/"] = (200, HTML, html("".join(links + images)))
    with MockSite(pages) as site:
        result = lait_crawl_here(site.url + "/", "--out", str(out), "--allow-private-networks", "--min-side",
                                 str(TEST_MIN_SIDE), settings=TEST_SETTINGS)
    assert "Traceback" not in result.stderr
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    assert [path_of(c["image_url"], site) for c in candidates] == ["/img/moved"]
    rows = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    found = {(path_of(r["page_url"], site), path_of(r["image_url"], site)): r for r in rows}
    expected = {}
    for i, reason in enumerate(TARGETS.values()):
        expected[(f"/page{i}", None)] = reason
        expected[("/", f"/image{i}")] = reason
    assert {key: row["reason"] for key, row in found.items()} == expected
    for i in range(len(TARGETS)):  # an image's rows carry its candidate's id, as every image reject does
        row = found[("/", f"/image{i}")]
        assert row["candidate_id"] == extract.candidate_id(site.url + "/", f"{site.url}/image{i}", f"Image {i}", None)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["lait/page/rejected/invalid_url"] == stats["lait/image/rejected/invalid_url"] == 2
    assert stats["lait/page/rejected/unsupported_scheme"] == stats["lait/image/rejected/unsupported_scheme"] == 3
    assert "lait/page/rejected/fetch_error" not in stats and "lait/image/rejected/fetch_error" not in stats
