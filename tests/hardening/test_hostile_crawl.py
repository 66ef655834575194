"""The real `lait crawl` against a hostile local site: it ends by itself, in bounded memory, keeps
every good pair, records every bad reference as a reject, and `lait audit` passes."""
import json
import os
import subprocess
import sys
import time

import pytest

import schemas
from tests.hardening.hostile_site import HOSTILE_PAGES, HOSTILE_REFERENCES, NEVER_FOLLOWED, HostileSite, run_with_peak_rss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT)
#: Short timeouts so trickling responses end quickly; a page cap above
#: the 10 MB nested page so it is parsed, an image cap far below the 50 MB image.
SETTINGS = {"AUTOTHROTTLE_ENABLED": False, "DOWNLOAD_TIMEOUT": 1.5, "RETRY_ENABLED": False,
            "LAIT_IMAGE_MAXSIZE": 2 * 2**20, "LAIT_PAGE_MAXSIZE": 16 * 2**20}


def crawl_command(url: str, out: str, *extra: str) -> list[str]:
    """The `lait crawl` command line for the hostile site."""
    command = [sys.executable, "-m", "lait", "crawl", url, "--out", out, "--allow-private-networks",
               "--min-side", "64", "--no-progress", *extra]
    for key, value in SETTINGS.items():
        command += ["-s", f"{key}={json.dumps(value)}"]
    return command


@pytest.fixture(scope="module")
def hostile_crawl(tmp_path_factory):
    """One crawl of the hostile site: (site, run folder, seconds, peak child RSS in MiB, process result)."""
    run = tmp_path_factory.mktemp("hostile")
    with HostileSite(good_pages=4, big_image_mb=50, nested_mb=10, bomb_mb=50) as site:
        started = time.monotonic()
        result, peak_mib = run_with_peak_rss(crawl_command(site.url + "/", str(run / "crawl")), ENV, timeout=120)
        seconds = time.monotonic() - started
    return site, run, seconds, peak_mib, result


def rows(run, kind: str, folder: str) -> list[dict]:
    path = run / "crawl" / folder
    return schemas.read_table(str(path), kind).to_pylist() if schemas.list_parquet_files(str(path)) else []


def test_the_crawl_ends_by_itself_without_a_traceback_in_bounded_memory(hostile_crawl):
    _, _, seconds, peak_mib, result = hostile_crawl
    assert result.returncode == 0, result.stderr[-3000:]
    # Any ERROR line is a crash of ours. (The site's robots.txt answers: one that never does disallows the
    # whole host under RFC 9309, tests/crawler/test_crawl_site.py, and this crawl would then fetch nothing.)
    errors = [line for line in result.stderr.splitlines() if "] ERROR:" in line]
    assert not errors, result.stderr[-3000:]
    assert seconds < 90
    # The 50 MB image, the 50 MB gzip bombs and the 10 MB page must not all be held at once.
    assert 50 < peak_mib < 1024, peak_mib


def test_every_good_pair_is_kept(hostile_crawl):
    site, run, *_ = hostile_crawl
    kept = {(c["page_url"][len(site.url):], c["image_url"][len(site.url):]) for c in rows(run, "candidates", "candidates")}
    assert kept == set(site.good_image_paths())


def test_every_hostile_reference_and_page_is_a_reject_with_its_reason(hostile_crawl):
    site, run, *_ = hostile_crawl
    rejected = rows(run, "rejected", "rejected")
    by_image = {(r["image_url"] or "").replace(site.url, ""): r["reason"] for r in rejected if r["image_url"]}
    for image, reasons in HOSTILE_REFERENCES.items():
        assert by_image.get(image) in reasons, (image, by_image.get(image))
    by_page = {r["page_url"].replace(site.url, ""): r["reason"] for r in rejected if not r["image_url"]}
    for page, reasons in HOSTILE_PAGES.items():
        assert by_page.get(page) in reasons, (page, by_page.get(page))
    for r in rejected:
        assert r["stage"] == "crawl" and r["reason"]
    # file: links are never followed: no page row for them; the one file: image is refused by scheme.
    assert not [r for r in rejected if (r["page_url"] or "").startswith("file:")]
    assert [r["reason"] for r in rejected if (r["image_url"] or "").startswith("file:")] == ["unsupported_scheme"]
    assert all(link.startswith("file:") for link in NEVER_FOLLOWED)


def test_books_balance_and_lait_audit_passes(hostile_crawl):
    _, run, *_ = hostile_crawl
    stats = json.loads((run / "crawl" / "stats.json").read_text())
    kept, rejected = rows(run, "candidates", "candidates"), rows(run, "rejected", "rejected")
    assert stats["kept"] == len(kept) and stats["rejected"] == len(rejected)
    assert stats["in"] == stats["kept"] + stats["rejected"]
    audit = subprocess.run([sys.executable, "-m", "lait", "audit", str(run)], env=ENV, capture_output=True, text=True,
                           timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr
