"""What the crawl downloads: a followed link that is not HTML stops at its headers, and a host whose
robots.txt was unavailable is asked again after ``LAIT_ROBOTS_RETRY_AFTER`` (mock site on 127.0.0.1)."""
import asyncio
import collections
import json

import pytest
from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.utils.test import get_crawler

import schemas
from crawler.middlewares import RefusedRequest, RobotsTxtMiddleware
from crawler.spiders.lait import LaitSpider, declared_not_html
from tests.crawler.mocksite import HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.inprocess import lait_crawl_here

ROBOTS_OK = (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")
BIG = 32 * 2**20  # far over what the socket buffers of a loopback connection hold


def test_only_a_declared_type_without_html_is_not_html():
    assert declared_not_html(b"application/pdf") and declared_not_html(b"image/jpeg")
    assert declared_not_html(b"text/plain; charset=utf-8")  # the spider never parsed text/plain as a page
    assert not declared_not_html(b"text/html; charset=utf-8") and not declared_not_html(b"application/xhtml+xml")
    assert not declared_not_html(None) and not declared_not_html(b"")  # no type: Scrapy sniffs the body


def not_html_site() -> MockSite:
    """An index that links a large PDF, a full-size image no <img> shows, a text file, and two files without a
    Content-Type (an HTML page and binary bytes), beside one image it shows."""
    links = "".join(f'<a href="{link}">x</a>' for link in (
        "/files/report.pdf", "/files/poster.jpg", "/files/notes.txt", "/untyped", "/untyped.bin"))
    return MockSite({
        "/robots.txt": ROBOTS_OK,
        "/index.html": (200, HTML, html(links + '<img src="/img/thumb.jpg" alt="Thumbnail">')),
        "/files/report.pdf": (200, {"Content-Type": "application/pdf"}, b"%PDF-1.7\n" + b"\x00" * BIG),
        "/files/poster.jpg": (200, JPEG, b"\xff\xd8" + b"\x01" * BIG),
        "/files/notes.txt": (200, {"Content-Type": "text/plain"}, b"plain text"),
        "/untyped": (200, {}, html('<img src="/img/untyped.jpg" alt="On a page without a type">')),
        "/untyped.bin": (200, {}, b"\x00\x01\x02\x03" * 1000),
        "/img/thumb.jpg": (200, JPEG, jpeg(96, 72)),
        "/img/untyped.jpg": (200, JPEG, jpeg(96, 72, color=(1, 2, 3))),
    })


@pytest.fixture(scope="module", params=[1, 2], ids=["1proc", "2proc"])
def not_html_crawl(request, tmp_path_factory):
    """A crawl of ``not_html_site`` in 1 or 2 processes, with image rules of its own (formats, pixels, no aspect
    check) for stats.json to record: (site, its output folder, the body bytes the site sent by path)."""
    out = tmp_path_factory.mktemp(f"not-html-{request.param}") / "out"
    # The page cap above the files' size and a timeout to match: before the fix they were downloaded whole.
    settings = dict(TEST_SETTINGS, LAIT_PAGE_MAXSIZE=2 * BIG, DOWNLOAD_TIMEOUT=30, LAIT_IMAGE_FORMATS="jpg,png",
                    LAIT_MAX_PIXELS=1_000_000)
    with not_html_site() as site:
        lait_crawl_here(site.url + "/index.html", "--out", str(out), "--allow-private-networks", "--min-side",
                        str(TEST_MIN_SIDE), "--max-aspect", "0", "--processes", str(request.param), settings=settings)
        sent = collections.Counter(site.sent)
    return site, out, sent


def test_a_link_that_is_not_html_is_a_not_html_row_without_its_body_downloaded(not_html_crawl):
    site, out, sent = not_html_crawl
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert sorted((r["page_url"][len(site.url):], r["reason"], r["detail"]) for r in rejected) == [
        ("/files/notes.txt", "not_html", "text/plain"), ("/files/poster.jpg", "not_html", "image/jpeg"),
        ("/files/report.pdf", "not_html", "application/pdf"),
        ("/untyped.bin", "not_html", "")]  # no type: downloaded and sniffed, as before
    candidates = schemas.read_table(str(out / "candidates"), "candidates", columns=["page_url", "image_url"]).to_pylist()
    assert sorted(c["image_url"][len(site.url):] for c in candidates) == ["/img/thumb.jpg", "/img/untyped.jpg"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["in"] == stats["kept"] + stats["rejected"] == 6
    assert stats["lait/page/body_skipped"] == 3 and stats["lait/page/rejected/not_html"] == 4
    # Headers only: Scrapy's count of the response bytes of the whole crawl, and what the server got out.
    assert stats["scrapy"]["downloader/response_bytes"] < 200_000
    assert sent["/files/report.pdf"] < BIG // 2 and sent["/files/poster.jpg"] < BIG // 2  # kernel buffers: ~4 MiB
    assert sent["/untyped.bin"] == 4000


def test_stats_json_records_the_image_rules_the_crawl_applied(not_html_crawl):
    """stats.json held the funnel but not the rules behind it: `lait demo --from` could not tell a crawl made with
    --min-side 128 from one made with 100. The values used are recorded (as lait filter's `settings`), once per
    run with several processes: a max aspect of 0 as 0 (off), the formats as compared. (The crawl of the test
    above, made with these rules.)"""
    _, out, _ = not_html_crawl
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 2  # the two JPEG images, under the formats "jpg,png"
    assert stats["settings"] == {"min_side": TEST_MIN_SIDE, "max_aspect": 0.0, "image_formats": ["JPEG", "PNG"],
                                 "max_pixels": 1_000_000}
    assert not any("settings" in part for part in stats.get("by_process", []))


# ------------------------------------------------------------------ robots.txt unavailable, then asked again

def robots_middleware(clock, retry_after=300.0):
    """The middleware on a crawler whose engine answers robots.txt requests from ``answers`` in turn."""
    crawler = get_crawler(LaitSpider, {"ROBOTSTXT_OBEY": True, "LAIT_ROBOTS_RETRY_AFTER": retry_after})
    middleware = RobotsTxtMiddleware.from_crawler(crawler)
    middleware.clock = clock
    fetched = []

    class Engine:
        async def download_async(self, request):
            fetched.append(request.url)
            status, body = answers.pop(0)
            return Response(request.url, status=status, body=body, request=request)

    answers = []
    crawler.engine = Engine()
    crawler.stats.open_spider()
    return middleware, answers, fetched


def test_an_unavailable_robots_txt_is_fetched_again_after_the_interval_and_not_before():
    now = [0.0]
    middleware, answers, fetched = robots_middleware(lambda: now[0], retry_after=300.0)
    answers += [(503, b"busy"), (503, b"still busy"), (200, b"User-agent: *\nDisallow: /private/\n")]

    def outcome(path):
        try:
            asyncio.run(middleware.process_request(Request("http://h.example" + path)))
        except RefusedRequest as exc:
            return exc.reason
        except IgnoreRequest:
            return "robots_disallowed"
        return "allowed"

    assert outcome("/a") == "robots_unavailable" and len(fetched) == 1
    now[0] = 299.0
    assert outcome("/b") == "robots_unavailable" and len(fetched) == 1  # in between: rejected, not refetched
    now[0] = 300.0
    assert outcome("/c") == "robots_unavailable" and len(fetched) == 2  # asked again, still failing
    now[0] = 599.0
    assert outcome("/d") == "robots_unavailable" and len(fetched) == 2  # the interval runs from the last try
    now[0] = 600.0
    assert outcome("/e") == "allowed" and outcome("/private/x") == "robots_disallowed"
    assert fetched == ["http://h.example/robots.txt"] * 3
    assert middleware.crawler.stats.get_value("lait/robots/fetched_again") == 2


def test_the_robots_retry_interval_must_be_a_number_of_seconds(tmp_path):
    from crawler import runner

    for bad in (-1, "soon", float("nan")):
        with pytest.raises(ValueError, match="LAIT_ROBOTS_RETRY_AFTER"):
            RobotsTxtMiddleware.from_crawler(get_crawler(LaitSpider, {"ROBOTSTXT_OBEY": True,
                                                                     "LAIT_ROBOTS_RETRY_AFTER": bad}))
        # `lait crawl -s LAIT_ROBOTS_RETRY_AFTER=-1`: one line before any crawl process starts (port 9: nothing)
        with pytest.raises(runner.SettingError, match="LAIT_ROBOTS_RETRY_AFTER"):
            runner.run_crawl(["http://127.0.0.1:9/"], str(tmp_path / "out"),
                             overrides={"LAIT_ROBOTS_RETRY_AFTER": bad})
    assert not (tmp_path / "out").exists()


def test_a_crawl_asks_a_recovered_robots_txt_again_and_fetches_the_host(tmp_path):
    """A second site's robots.txt answers 503 once, then allows. One request at a time: the first image there
    meets the failure, the second (on a later page) comes after it. Retried at once (0 s), the second image
    is fetched; with the default interval it is rejected as before."""
    other = MockSite({"/robots.txt": [(503, HTML, b"busy"), ROBOTS_OK],
                      "/img/1.jpg": (200, JPEG, jpeg(96, 72)), "/img/2.jpg": (200, JPEG, jpeg(96, 72, color=(9, 9, 9)))})
    site = MockSite({"/robots.txt": ROBOTS_OK})
    with site, other:
        site.pages.update({
            "/p1.html": (200, HTML, html(f'<img src="{other.url}/img/1.jpg" alt="First"><a href="/p2.html">next</a>')),
            "/p2.html": (200, HTML, html(f'<img src="{other.url}/img/2.jpg" alt="Second">')),
        })
        results = {}
        for name, retry_after in (("default", None), ("at_once", 0)):
            other.counts.clear()
            other.pages["/robots.txt"] = [(503, HTML, b"busy"), ROBOTS_OK]
            settings = dict(TEST_SETTINGS, CONCURRENT_REQUESTS=1)
            if retry_after is not None:
                settings["LAIT_ROBOTS_RETRY_AFTER"] = retry_after
            out = tmp_path / name
            lait_crawl_here(site.url + "/p1.html", "--out", str(out), "--allow-private-networks", "--min-side",
                            str(TEST_MIN_SIDE), settings=settings)
            rows = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
            kept = (schemas.read_table(str(out / "candidates"), "candidates", columns=["image_url"]).to_pylist()
                    if (out / "candidates").exists() else [])
            results[name] = ({r["image_url"][len(other.url):]: r["reason"] for r in rows},
                             sorted(c["image_url"][len(other.url):] for c in kept), dict(other.counts))
    assert results["default"] == ({"/img/1.jpg": "robots_unavailable", "/img/2.jpg": "robots_unavailable"}, [],
                                  {"/robots.txt": 1})
    assert results["at_once"] == ({"/img/1.jpg": "robots_unavailable"}, ["/img/2.jpg"],
                                  {"/robots.txt": 2, "/img/2.jpg": 1})


def test_the_warc_downloader_asks_an_unavailable_robots_txt_again_after_the_interval():
    """``crawler.fetch.PoliteFetcher`` (the WARC reader's download step) follows the same rule as the spider."""
    from crawler.fetch import FetchError, PoliteFetcher

    now = [0.0]
    site = MockSite({"/robots.txt": [(503, {"Content-Type": "text/plain"}, b"busy"), ROBOTS_OK],
                     "/img/a.jpg": (200, JPEG, jpeg(8, 8))})
    with site:
        fetcher = PoliteFetcher(allow_private_networks=True, delay=0, timeout=2, robots_retry_after=60,
                                clock=lambda: now[0])
        for moment in (0.0, 59.0):
            now[0] = moment
            with pytest.raises(FetchError) as caught:
                fetcher.fetch(site.url + "/img/a.jpg")
            assert caught.value.reason == "robots_unavailable"
        assert site.counts == {"/robots.txt": 1}  # in between: rejected without asking again
        now[0] = 60.0
        assert fetcher.fetch(site.url + "/img/a.jpg").status == 200
        assert site.counts == {"/robots.txt": 2, "/img/a.jpg": 1}
    with pytest.raises(ValueError, match="robots_retry_after"):
        PoliteFetcher(robots_retry_after=-1)
