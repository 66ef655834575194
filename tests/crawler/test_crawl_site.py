"""End-to-end crawls of the mock website with the real `lait crawl` (Scrapy in a child process)."""
import collections
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

import schemas
from tests.inprocess import lait_crawl_here, lait_here
from tests.crawler.mocksite import (EXPECTED, EXPECTED_REJECTS, GIF_PIXEL, HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS,
                                    MockSite, case_site, html, jpeg)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def path_of(url: str | None, site: MockSite) -> str | None:
    return url[len(site.url):] if url and url.startswith(site.url) else url


@pytest.fixture(scope="module")
def case_crawl(tmp_path_factory):
    """One crawl of the case site (the tests below read its output)."""
    out = tmp_path_factory.mktemp("case") / "crawl"
    with case_site() as site:
        lait_crawl_here(site.url + "/", "--out", str(out), "--allow-private-networks", "--min-side", str(TEST_MIN_SIDE),
                        settings=TEST_SETTINGS)
        counts = collections.Counter(site.counts)
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    stats = json.loads((out / "stats.json").read_text())
    return site, counts, candidates, rejected, stats


def test_every_case_page_gives_exactly_the_expected_candidates(case_crawl):
    site, _, candidates, _, _ = case_crawl
    found = {(path_of(c["page_url"], site), path_of(c["image_url"], site)):
             (c["alt"], c["title"], c["figcaption"], c["page_lang"], c["width"], c["height"]) for c in candidates}
    assert found == EXPECTED
    assert len(candidates) == len(EXPECTED)  # no duplicate rows


def test_candidate_columns_are_filled_as_the_schema_describes(case_crawl):
    site, _, candidates, _, _ = case_crawl
    import hashlib

    from crawler.extract import candidate_id
    for row in candidates:
        assert row["image_id"] == hashlib.sha256(row["image_bytes"]).hexdigest()
        assert row["candidate_id"] == candidate_id(row["page_url"], row["image_url"], row["alt"], row["title"])
        assert row["source"] == "crawl" and row["format"] == "JPEG" and row["http_status"] == 200
        assert row["num_bytes"] == len(row["image_bytes"]) and row["content_type"] == "image/jpeg"
        assert row["page_title"] == ("Case page" if "broken" not in row["page_url"] else None)
        assert row["fetched_at"] is not None
    basic = next(c for c in candidates if c["page_url"].endswith("/basic.html"))
    assert basic["page_text"] == "Basic page text."


def test_every_failure_is_a_counted_reject_with_its_reason(case_crawl):
    site, _, _, rejected, _ = case_crawl
    found = {(path_of(r["page_url"], site), path_of(r["image_url"], site)): r["reason"] for r in rejected}
    assert found == EXPECTED_REJECTS
    assert all(r["stage"] == "crawl" for r in rejected)


def test_books_balance_and_stats_carry_scrapy_counters(case_crawl):
    _, _, candidates, rejected, stats = case_crawl
    assert stats["stage"] == "crawl"
    assert stats["kept"] == len(candidates) and stats["rejected"] == len(rejected)
    assert stats["in"] == stats["kept"] + stats["rejected"]
    assert stats["rejected_by_reason"] == dict(collections.Counter(r["reason"] for r in rejected))
    # One validation per distinct image although the shared image has two candidates.
    assert stats["lait/image/validated"] == len({c["image_url"] for c in candidates}) == len(candidates) - 1
    assert stats["scrapy"]["robotstxt/forbidden"] == 1


def test_each_image_is_fetched_once_and_opted_out_images_never(case_crawl):
    _, counts, _, _, _ = case_crawl
    assert counts["/img/shared.jpg"] == 1
    images = {path: n for path, n in counts.items() if path.startswith("/img/")}
    assert images and max(images.values()) == 1
    # Opted out by the page: the image is not even requested; robots-disallowed pages are not fetched.
    assert counts["/img/opt-meta.jpg"] == 0 and counts["/img/opt-header.jpg"] == 0
    assert counts["/private/secret.html"] == 0 and counts["/img/secret.jpg"] == 0
    assert counts["/img/opt-image.jpg"] == 1  # its opt-out is in its own response header


def small_site(pages: int = 8, slow_images: float = 0.0) -> MockSite:
    """A chain of pages, each with two images of its own and one shared, for the resume test."""
    site = MockSite({}, slow_prefix="/img/" if slow_images else None, slow_s=slow_images)
    content = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")}
    for i in range(pages):
        nxt = f'<a href="/p{i + 1}.html">next</a>' if i + 1 < pages else ""
        body = (f'<img src="/img/{i}a.jpg" alt="Picture {i} a"><img src="/img/{i}b.jpg" alt="Picture {i} b">'
                f'<img src="/img/common.jpg" alt="Common on {i}">{nxt}')
        content[f"/p{i}.html"] = (200, HTML, html(body))
        for suffix in "ab":
            content[f"/img/{i}{suffix}.jpg"] = (200, JPEG, jpeg(96, 72, color=(i * 20, 10 if suffix == "a" else 200, 50)))
    content["/img/common.jpg"] = (200, JPEG, jpeg(96, 72))
    site.pages.update(content)
    return site


def small_site_candidate_ids(site: MockSite, pages: int = 8) -> list[str]:
    """The candidate ids a full crawl of ``small_site(pages)`` must give."""
    from crawler.extract import candidate_id

    ids = []
    for i in range(pages):
        page = f"{site.url}/p{i}.html"
        for image, alt in ((f"{i}a", f"Picture {i} a"), (f"{i}b", f"Picture {i} b"), ("common", f"Common on {i}")):
            ids.append(candidate_id(page, f"{site.url}/img/{image}.jpg", alt, None))
    return sorted(ids)


def test_interrupted_crawl_resumes_without_loss_refetch_or_duplicates(tmp_path):
    """... and a start URL added when resuming is crawled too."""
    from crawler.extract import candidate_id

    out, jobdir = tmp_path / "resumed", tmp_path / "job"
    common = ["--allow-private-networks", "--min-side", str(TEST_MIN_SIDE)]
    with small_site() as site:
        site.pages.update({"/extra.html": (200, HTML, html('<img src="/img/extra.jpg" alt="Added later">')),
                           "/img/extra.jpg": (200, JPEG, jpeg(96, 72, color=(5, 5, 5)))})
        expected = sorted(small_site_candidate_ids(site) + [
            candidate_id(f"{site.url}/extra.html", f"{site.url}/img/extra.jpg", "Added later", None)])
        # CLOSESPIDER_PAGECOUNT stops the crawl the way Ctrl-C does: a graceful close mid-crawl.
        lait_crawl_here(site.url + "/p0.html", "--out", str(out), "--jobdir", str(jobdir), *common,
                        settings=dict(TEST_SETTINGS, CLOSESPIDER_PAGECOUNT=6, CONCURRENT_REQUESTS=2))
        first = schemas.count_rows(str(out / "candidates"))
        first_counts = collections.Counter(site.counts)
        lait_crawl_here(site.url + "/p0.html", site.url + "/extra.html", "--out", str(out), "--jobdir", str(jobdir),
                        *common, settings=TEST_SETTINGS)
        resumed_counts = collections.Counter(site.counts) - first_counts
    got = schemas.read_table(str(out / "candidates"), "candidates").column("candidate_id").to_pylist()
    assert 0 < first < len(expected), "the first run must have been interrupted part-way"
    assert sorted(got) == expected and len(set(got)) == len(got)
    fetched_twice = [p for p in resumed_counts if p != "/robots.txt" and first_counts[p] > 0]
    assert fetched_twice == []
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == len(expected) and stats["in"] == stats["kept"] + stats["rejected"]


def test_ctrl_c_then_rerun_with_the_same_jobdir_loses_nothing_and_refetches_nothing(tmp_path):
    out, jobdir = tmp_path / "out", tmp_path / "job"
    command = [sys.executable, "-m", "lait", "crawl", "--out", str(out), "--jobdir", str(jobdir), "--no-progress",
               "--allow-private-networks", "--min-side", str(TEST_MIN_SIDE), "-s", "AUTOTHROTTLE_ENABLED=false",
               "-s", "CONCURRENT_REQUESTS=2"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    with small_site(slow_images=0.2) as site:
        expected = small_site_candidate_ids(site)
        # SIGINT's default disposition, as a terminal's foreground job has: a test run started in the
        # background of a non-interactive shell inherits SIGINT ignored, and Python then keeps ignoring it.
        process = subprocess.Popen([*command, site.url + "/p0.html"], env=env, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while sum(n for p, n in site.counts.items() if p.startswith("/img/")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stdout, _ = process.communicate(timeout=60)
        assert process.returncode == 130 and "rerun with --jobdir" in stdout
        first = schemas.count_rows(str(out / "candidates")) if (out / "candidates").exists() else 0
        first_counts = collections.Counter(site.counts)
        site.slow_prefix = None  # slow images made the stop land mid-crawl; the rerun need not wait for them
        lait_crawl_here(site.url + "/p0.html", "--out", str(out), "--jobdir", str(jobdir), "--allow-private-networks",
                        "--min-side", str(TEST_MIN_SIDE), settings=TEST_SETTINGS)
        second_counts = collections.Counter(site.counts) - first_counts
    got = schemas.read_table(str(out / "candidates"), "candidates").column("candidate_id").to_pylist()
    assert 0 < first < len(expected)
    assert sorted(got) == expected
    assert [p for p in second_counts if p.startswith("/img/") and first_counts[p]] == []


@pytest.fixture(scope="module")
def bar_crawl(tmp_path_factory):
    """``bar_crawl(processes)``: `lait crawl` of ``small_site(6)`` with its progress bar on (run once per number of
    processes, when first asked for): (its output folder, its result, the site's counts, the expected ids)."""
    runs = {}

    def run(processes: int):
        if processes not in runs:
            out = tmp_path_factory.mktemp(f"bar{processes}") / "out"
            with small_site(6) as site:
                settings = [arg for key, value in TEST_SETTINGS.items() for arg in ("-s", f"{key}={json.dumps(value)}")]
                result = lait_here("crawl", site.url + "/p0.html", "--out", str(out), "--processes", str(processes),
                                   "--allow-private-networks", "--min-side", str(TEST_MIN_SIDE), *settings, check=False)
                runs[processes] = out, result, collections.Counter(site.counts), small_site_candidate_ids(site, 6)
        return runs[processes]

    return run


def test_two_processes_give_the_same_candidates_and_fetch_each_image_once(bar_crawl):
    # The crawl of the progress bar's test, in two processes (the bar changes nothing of what they fetch and keep).
    out, result, counts, expected = bar_crawl(2)
    assert result.returncode == 0, result.stderr
    two = schemas.read_table(str(out / "candidates"), "candidates")
    assert sorted(two.column("candidate_id").to_pylist()) == expected
    assert max(n for path, n in counts.items() if path.startswith("/img/")) == 1
    shards = {os.path.basename(p).rsplit("-", 1)[0] for p in schemas.list_parquet_files(str(out / "candidates"))}
    assert shards == {"part-p0", "part-p1"}  # both processes validated images
    stats = json.loads((out / "stats.json").read_text())
    assert stats["processes"] == 2 and stats["kept"] == len(expected)
    assert stats["lait/image/validated"] == 6 * 2 + 1  # two own images per page and the common one


def test_without_allow_private_networks_loopback_is_refused_before_any_request(tmp_path):
    with small_site(2) as site:
        lait_crawl_here(site.url + "/p0.html", "--out", str(tmp_path / "out"), settings=TEST_SETTINGS)
        assert site.log == []
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["kept"] == 0
    assert stats["rejected_by_reason"] == {"private_network_refused": 1}


def test_a_redirect_out_of_the_allowed_networks_is_refused(tmp_path):
    """127.0.0.1 opened as the single allowed network; a redirect and an image to other loopback addresses are
    refused before any connection. (Loopback, so that a guard that failed would still send nothing off this
    machine; which addresses are private, 10/8 and 169.254/16 among them, is tested as data in test_crawl_units.)"""
    site = MockSite({})
    site.pages.update({
        "/robots.txt": (404, HTML, b""),
        "/start.html": (200, HTML, html(f'<a href="/go">go</a><img src="http://127.0.0.3:{site.port}/latest.jpg" '
                                        f'alt="Meta">')),
        "/go": (302, {"Location": f"http://127.0.0.2:{site.port}/internal.html"}, b""),
    })
    with site:
        lait_crawl_here(site.url + "/start.html", "--out", str(tmp_path / "out"),
                        settings=dict(TEST_SETTINGS, LAIT_ALLOWED_NETWORKS=["127.0.0.1/32"]))
    rejected = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()
    reasons = {(r["page_url"] or "").replace(site.url, ""): (r["image_url"], r["reason"]) for r in rejected}
    assert reasons == {"/go": (None, "private_network_refused"),
                       "/start.html": (f"http://127.0.0.3:{site.port}/latest.jpg", "private_network_refused")}
    assert "/internal.html" not in site.counts and "/latest.jpg" not in site.counts


def test_max_pages_and_allowed_domains_narrow_the_crawl(tmp_path):
    common = ["--allow-private-networks", "--min-side", str(TEST_MIN_SIDE)]
    with small_site(5) as site:
        lait_crawl_here(site.url + "/p0.html", "--out", str(tmp_path / "capped"), "--max-pages", "2", *common,
                        settings=TEST_SETTINGS)
        lait_crawl_here(site.url + "/p0.html", "--out", str(tmp_path / "other"), "--allowed-domains", "example.org",
                        *common, settings=TEST_SETTINGS)
        fetched_pages = sorted(p for p in site.counts if p.endswith(".html"))
    capped = json.loads((tmp_path / "capped" / "stats.json").read_text())
    assert capped["lait/page/fetched"] == 2 and capped["kept"] == 6
    other = json.loads((tmp_path / "other" / "stats.json").read_text())
    assert other["lait/page/fetched"] == 1 and other["kept"] == 3  # the start URL only: its links are off-domain
    assert fetched_pages == ["/p0.html", "/p1.html"]


def test_cli_rejects_non_http_start_urls(tmp_path):
    result = lait_crawl_here("file:///etc/passwd", "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and "only http(s)" in result.stderr and not result.stdout
    assert not (tmp_path / "out").exists()


def test_native_scrapy_crawl_from_the_repository_root_writes_the_same_layout(tmp_path):
    out = tmp_path / "native"
    with small_site(2) as site:
        result = subprocess.run(
            [sys.executable, "-m", "scrapy", "crawl", "lait", "-a", f"urls={site.url}/p0.html", "-a", "depth=1",
             "-s", f"LAIT_OUT={out}", "-s", "LAIT_ALLOW_PRIVATE_NETWORKS=True", "-s", f"LAIT_MIN_SIDE={TEST_MIN_SIDE}",
             "-s", "AUTOTHROTTLE_ENABLED=False", "-s", "LOG_LEVEL=WARNING"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    # depth=1: p0 and p1 only, three images each with text (one shared between them).
    assert stats["kept"] == 6 and stats["lait/page/fetched"] == 2 and stats["lait/image/validated"] == 5
    assert stats["settings"]["min_side"] == TEST_MIN_SIDE  # the image rules it applied, as lait crawl records them


def hostile_urls_site() -> MockSite:
    """Pages with malformed and over-long image URLs, repeated references and several spellings of one page."""
    site = MockSite({})
    port = site.port
    photo = jpeg(96, 72)
    index = "".join(f'<a href="{link}">x</a>' for link in (
        site.url, f"{site.url}/#top", f"HTTP://127.0.0.1:{port}/", "/urls.html", "/urls.html#x", "/dups.html",
        "http://[oops/"))
    urls = ('<img src="/img/a.jpg" alt="Before"><img src="http://[bad/x.jpg" alt="IPv6">'
            f'<img src="http://127.0.0.1:{port}:99999/x.jpg" alt="Port"><img src="/img/{"l" * 300}.jpg" alt="Long">'
            '<img srcset="/img/w_1,h_1/s.jpg 1x, /img/w_2,h_2/s.jpg 2x" alt="Srcset"><img src="img/b.jpg" alt="After">')
    dups = (f'<img src="{GIF_PIXEL}" alt="Inline"><img src="{GIF_PIXEL}" alt="Inline"><img alt="No src"><img alt="No src">'
            '<img src="/img/a.jpg" alt="Same"><img src="/img/a.jpg" alt="Same"><img src="/img/b.jpg" alt="">'
            '<img src="/img/b.jpg" alt="">')
    site.pages.update({
        "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"),
        "/": (200, HTML, html(index)),
        "/urls.html": (200, HTML, html(urls, head='<base href="http://[bad/">')),
        "/dups.html": (200, HTML, html(dups)),
        "/img/a.jpg": (200, JPEG, photo), "/img/b.jpg": (200, JPEG, photo), "/img/w_2,h_2/s.jpg": (200, JPEG, photo),
    })
    return site


def test_malformed_and_repeated_references_are_each_a_row_and_each_page_is_crawled_once(tmp_path):
    out, jobdir = tmp_path / "out", tmp_path / "job"
    with hostile_urls_site() as site:
        command = [site.url, site.url + "/#x", "--out", str(out), "--jobdir", str(jobdir), "--allow-private-networks",
                   "--min-side", str(TEST_MIN_SIDE)]
        lait_crawl_here(*command, settings=dict(TEST_SETTINGS, URLLENGTH_LIMIT=200))
        first = collections.Counter(site.counts)
        lait_crawl_here(*command, settings=dict(TEST_SETTINGS, URLLENGTH_LIMIT=200))  # the job is done: nothing new
        assert collections.Counter(site.counts) == first
    assert first["/"] == first["/urls.html"] == first["/dups.html"] == 1
    assert not [p for p in first if "99999" in p or "[" in p or "lll" in p]
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    assert sorted((path_of(c["page_url"], site), path_of(c["image_url"], site), c["alt"]) for c in candidates) == [
        ("/dups.html", "/img/a.jpg", "Same"), ("/urls.html", "/img/a.jpg", "Before"),
        ("/urls.html", "/img/b.jpg", "After"), ("/urls.html", "/img/w_2,h_2/s.jpg", "Srcset")]
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert sorted((path_of(r["page_url"], site), r["reason"]) for r in rejected) == sorted(
        [("/dups.html", reason) for reason in ["data_uri"] * 2 + ["no_image_url"] * 2 + ["decorative_image"] * 2
         + ["duplicate_candidate"]] + [("/urls.html", "invalid_url")] * 2 + [("/urls.html", "url_too_long")])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["in"] == stats["kept"] + stats["rejected"] == 4 + 10
    assert stats["in"] == 6 + 8  # every <img> of the two pages, each once


def test_an_unusable_out_or_a_negative_count_is_a_clear_error_before_crawling(tmp_path):
    (tmp_path / "afile").write_text("x")
    for out, message in ((tmp_path / "afile", "exists and is not a folder"), (tmp_path / "afile" / "sub", "Not a directory")):
        result = lait_crawl_here("http://127.0.0.1:9/", "--out", str(out), check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    for option, value in (("--max-pages", "-1"), ("--depth", "-3"), ("--processes", "0")):
        result = lait_crawl_here("http://127.0.0.1:9/", "--out", str(tmp_path / "out"), option, value, check=False)
        assert result.returncode == 2 and f"argument {option}: must be" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rows_per_shard", [1, 500])  # fails while crawling / at the end
def test_a_crawl_whose_output_cannot_be_written_fails(tmp_path, rows_per_shard):
    from crawler import runner

    (tmp_path / "afile").write_text("x")
    with small_site(1) as site, pytest.raises(RuntimeError, match="exited with status 1"):
        runner.run_crawl([site.url + "/p0.html"], str(tmp_path / "afile" / "out"), allow_private_networks=True,
                         min_side=TEST_MIN_SIDE, overrides=dict(TEST_SETTINGS, LAIT_ROWS_PER_SHARD=rows_per_shard))


# ------------------------------------------------------------------ redirects, pictures, image links, robots

def webp(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 90, 200)).save(buffer, "WEBP")
    return buffer.getvalue()


def odd_sites() -> tuple[MockSite, MockSite, MockSite]:
    """A site whose index reaches one page by a redirect and by a link, links pages with a space and non-ASCII
    in their names (one fails), shows a <picture> with an AVIF source first, links an image file, and shows an
    image of a second site whose robots.txt answers 503; a third site's robots.txt never answers in time."""
    failing = MockSite({"/robots.txt": (503, HTML, b"busy"), "/page.html": (200, HTML, html("<p>x</p>")),
                        "/img/x.jpg": (200, JPEG, jpeg(96, 72))})
    silent = MockSite({"/robots.txt": (200, HTML, b""), "/page.html": (200, HTML, html("<p>x</p>"))},
                      slow_prefix="/robots.txt", slow_s=1.5)  # past TEST_SETTINGS' DOWNLOAD_TIMEOUT
    links = "".join(f'<a href="{link}">x</a>' for link in ("/gallery", "/gallery/", "/café menu.html", "/busy é.html",
                                                             "/picture.html", "/wiki/File:Sunset.jpg"))
    site = MockSite({
        "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"),
        "/": (200, HTML, html(links + '<a href="/img/full.jpg"><img src="/img/thumb.jpg" alt="Thumb"></a>'
                                      f'<img src="/img/full.jpg" alt="Full size"><img src="{failing.url}/img/x.jpg" alt="Elsewhere">')),
        "/gallery": (301, {"Location": "/gallery/"}, b""),
        "/gallery/": (200, HTML, html('<img src="/img/a.jpg" alt="A photo">')),
        # links to the images it shows, escaped where the <img> writes them as they are, in either case
        "/caf%C3%A9%20menu.html": (200, HTML, html('<img src="/img/menu.jpg" alt="Menu">'
                                                   '<a href="/img/m%c3%a9nu%202.jpg"><img src="/img/ménu 2.jpg" alt="Menu 2"></a>'
                                                   '<a href="/img/menu 3.jpg"><img src="/img/menu%203.jpg" alt="Menu 3"></a>')),
        "/busy%20%C3%A9.html": (503, HTML, b"busy"),
        "/picture.html": (200, HTML, html('<picture><source type="image/avif" srcset="/i/a.avif">'
                                          '<source type="image/webp" srcset="/i/a.webp"><img src="/i/a.jpg" alt="P"></picture>')),
        "/i/a.avif": (200, {"Content-Type": "image/avif"}, b"not fetched"),
        "/i/a.webp": (200, {"Content-Type": "image/webp"}, webp(96, 72)),
        # a MediaWiki file page: HTML, though its path ends in .jpg
        "/wiki/File:Sunset.jpg": (200, HTML, html('<img src="/img/sunset.jpg" alt="Sunset over the sea">')),
    })
    for name in ("a", "menu", "full", "thumb", "sunset", "m%C3%A9nu%202", "menu%203"):
        site.pages[f"/img/{name}.jpg"] = (200, JPEG, jpeg(96, 72, color=(len(name) * 20, 20, 20)))
    return site, failing, silent


@pytest.fixture(scope="module")
def odd_crawl(tmp_path_factory):
    """One crawl of the three ``odd_sites``: (sites, server counts of each, candidates, rejected, stats)."""
    out = tmp_path_factory.mktemp("odd") / "crawl"
    site, failing, silent = odd_sites()
    with site, failing, silent:
        lait_crawl_here(site.url + "/", failing.url + "/page.html", silent.url + "/page.html", "--out", str(out),
                        "--allow-private-networks", "--min-side", str(TEST_MIN_SIDE), settings=TEST_SETTINGS)
    candidates = schemas.read_table(str(out / "candidates"), "candidates", columns=["page_url", "image_url"]).to_pylist()
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(candidates) + len(rejected)
    return (site, failing, silent), candidates, rejected, stats


def test_a_page_reached_by_a_redirect_and_a_link_is_fetched_and_recorded_once(odd_crawl):
    (site, *_), candidates, _, stats = odd_crawl
    assert site.counts["/gallery/"] == 1 and site.counts["/gallery"] == 1
    assert [c["page_url"] for c in candidates].count(site.url + "/gallery/") == 1
    assert stats["lait/page/redirect_to_seen"] == 1


def test_page_rows_and_candidate_rows_spell_a_page_url_alike(odd_crawl):
    """As Scrapy requests it (``/caf%C3%A9%20menu.html``), the spelling the rerun's reconcile matches on."""
    (site, *_), candidates, rejected, _ = odd_crawl
    assert site.url + "/caf%C3%A9%20menu.html" in {c["page_url"] for c in candidates}
    assert [r["reason"] for r in rejected if r["page_url"] == site.url + "/busy%20%C3%A9.html"] == ["http_503"]


def test_picture_sources_of_a_format_not_allowed_are_never_fetched(odd_crawl):
    (site, *_), candidates, _, _ = odd_crawl
    assert (site.url + "/picture.html", site.url + "/i/a.webp") in {(c["page_url"], c["image_url"]) for c in candidates}
    assert site.counts["/i/a.avif"] == 0 and site.counts["/i/a.jpg"] == 0


def test_a_link_to_an_image_the_page_shows_is_not_crawled_as_a_page_but_a_file_page_is(odd_crawl):
    (site, *_), candidates, rejected, stats = odd_crawl
    pairs = {(c["page_url"], c["image_url"]) for c in candidates}
    assert site.counts["/img/full.jpg"] == 1 and (site.url + "/", site.url + "/img/full.jpg") in pairs
    assert "not_html" not in stats["rejected_by_reason"] and stats["lait/page/skipped_image_link"] == 3
    # links that spell an image the page shows otherwise (escaped or not, either case) are that image
    assert site.counts["/img/m%C3%A9nu%202.jpg"] == 1 and site.counts["/img/m%c3%a9nu%202.jpg"] == 0
    assert site.counts["/img/menu%203.jpg"] == 1
    assert site.counts["/wiki/File:Sunset.jpg"] == 1  # an HTML page whose path ends in .jpg is crawled
    assert (site.url + "/wiki/File:Sunset.jpg", site.url + "/img/sunset.jpg") in pairs


def test_a_robots_txt_that_fails_or_never_answers_disallows_its_host(odd_crawl):
    """RFC 9309: 5xx or unreachable means complete disallow; the host's pages and images are rejects."""
    (_, failing, silent), _, rejected, _ = odd_crawl
    reasons = {(r["page_url"], r["image_url"]): r["reason"] for r in rejected}
    assert reasons[(failing.url + "/page.html", None)] == "robots_unavailable"
    assert reasons[(silent.url + "/page.html", None)] == "robots_unavailable"
    assert [reason for (_, image), reason in reasons.items() if image == failing.url + "/img/x.jpg"] == ["robots_unavailable"]
    assert failing.counts == {"/robots.txt": 1} and silent.counts == {"/robots.txt": 1}


@pytest.mark.parametrize("processes", [1, 2])
def test_the_progress_bar_counts_every_process(bar_crawl, processes):
    """One bar in `lait crawl`'s own process sums what each crawl process reports: process 0's bar showed only
    its share of the images (and stopped when it was done, while the others still fetched)."""
    out, result, _, _ = bar_crawl(processes)
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    final = result.stderr.replace("\r", "\n").strip().splitlines()[-1]  # the bar's last state
    assert f"images={stats['lait/image/validated']}" in final and f"kept={stats['kept']}" in final, final
    assert stats["lait/image/validated"] == 6 * 2 + 1 and f"pages={stats['lait/page/fetched']}," in final


def test_live_counts_add_up_and_a_missing_or_torn_file_counts_nothing(tmp_path):
    from crawler.extensions import BAR_COUNTS, read_live_counts

    (tmp_path / "a.json").write_text(json.dumps({"responses": 3, "pages": 2, "images": 1, "kept": 1, "rejected": 0}))
    (tmp_path / "b.json").write_text(json.dumps({"responses": 4, "images": 4, "kept": 3, "rejected": "x"}))
    (tmp_path / "c.json").write_text('{"responses": 9')
    paths = [str(tmp_path / name) for name in ("a.json", "b.json", "c.json", "missing.json")]
    assert read_live_counts(paths) == {"responses": 7, "pages": 2, "images": 5, "kept": 4, "rejected": 0}
    assert set(read_live_counts([])) == set(BAR_COUNTS)


def test_the_bar_ends_on_the_settled_counts_which_include_rows_for_unread_inbox_lines(tmp_path, capsys):
    """The rows `lait crawl` writes for inbox lines no image process read are written after the processes
    stop: the bar's last state takes them from the settled books, not from the processes' last counts."""
    from crawler import runner

    live = tmp_path / "live-0.json"
    bar = runner._LiveBar([str(live)])
    live.write_text(json.dumps({"responses": 9, "pages": 2, "images": 6, "kept": 4, "rejected": 1}))
    bar.close({"lait/out/rejected": 3, "lait/out/candidates": 4, "lait/page/fetched": 2, "kept": 99})
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "rejected=3" in final and "kept=4" in final and "images=6" in final and "9 responses" in final, final
    bar = runner._LiveBar([str(tmp_path / "live-1.json")])
    (tmp_path / "live-1.json").write_text(json.dumps({"responses": 5, "rejected": 2}))
    bar.close()  # interrupted before the books were settled: the processes' counts
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "rejected=2" in final and "5 responses" in final, final


def test_progress_set_off_as_text_shows_no_bar(tmp_path, capfd):
    """`lait crawl -s LAIT_PROGRESS=False` gives the text "False": off, as Scrapy reads a boolean setting."""
    from crawler import runner

    with small_site(2) as site:
        stats = runner.run_crawl([site.url + "/p0.html"], str(tmp_path / "out"), processes=2, progress=True,
                                 allow_private_networks=True, min_side=TEST_MIN_SIDE,
                                 overrides={**TEST_SETTINGS, "LAIT_PROGRESS": "False"})
    assert stats["kept"] > 0 and "responses" not in capfd.readouterr().err
