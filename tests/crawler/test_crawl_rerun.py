"""Reruns of `lait crawl` into the same folder without a job folder: each record keeps one row, the
latest run's outcome (a kept candidate stays kept), and stats.json counts the rejects superseded."""
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import schemas
from tests.procs import children_running
from tests.crawler.mocksite import HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.crawler.test_crawl_site import ROOT, path_of, small_site, small_site_candidate_ids
from tests.inprocess import lait_crawl_here

COMMON = ["--allow-private-networks", "--min-side", str(TEST_MIN_SIDE)]
#: Rows that are records of their own, whatever else shares their candidate_id (crawler.output.OWN_RECORD_REASONS).
OWN_RECORD_REASONS = {"duplicate_candidate", "decorative_image", "no_text"}
#: Reference rows without a candidate_id; other rows without one are page rows.
REFERENCE_REASONS_WITHOUT_ID = {"no_image_url", "data_uri", "invalid_url"}


def failing(status: int) -> tuple[int, dict, bytes]:
    return status, HTML, f"<html><body>status {status}</body></html>".encode()


#: The page with one image, linked as ``/solo café.html``: its rows and its page row (when it fails) must
#: spell it alike, as Scrapy requests it, or a rerun would leave the page both kept and rejected.
SOLO = "/solo%20caf%C3%A9.html"


def rerun_site() -> MockSite:
    """An index of four pages: two images; one image; none; a repeated reference and an image whose
    figcaption-only use and its decorative use (``alt=""``) are two records."""
    site = MockSite({})
    links = "".join(f'<a href="/{name}.html">{name}</a>' for name in ("pics", "solo café", "empty", "dups"))
    site.pages.update({
        "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"),
        "/": (200, HTML, html(links)),
        "/pics.html": (200, HTML, html('<img src="/img/a.jpg" alt="Picture a"><img src="/img/b.jpg" alt="Picture b">')),
        SOLO: (200, HTML, html('<img src="/img/s.jpg" alt="Solo">')),
        "/empty.html": (200, HTML, html("<p>No images here.</p>")),
        "/dups.html": (200, HTML, html('<img src="/img/d.jpg" alt="Same"><img src="/img/d.jpg" alt="Same">'
                                       '<figure><img src="/img/f.jpg"><figcaption>Caption only</figcaption></figure>'
                                       '<img src="/img/f.jpg" alt="">')),
    })
    for i, name in enumerate("absdf"):
        site.pages[f"/img/{name}.jpg"] = (200, JPEG, jpeg(96, 72, color=(40 * i, 90, 30)))
    return site


#: Every row of a healthy crawl of ``rerun_site``: (page, image, reason or "kept").
HEALTHY = sorted([
    ("/pics.html", "/img/a.jpg", "kept"), ("/pics.html", "/img/b.jpg", "kept"), (SOLO, "/img/s.jpg", "kept"),
    ("/dups.html", "/img/d.jpg", "kept"), ("/dups.html", "/img/d.jpg", "duplicate_candidate"),
    ("/dups.html", "/img/f.jpg", "kept"), ("/dups.html", "/img/f.jpg", "decorative_image"),
])


def crawl(site: MockSite, out, *args: str) -> None:
    lait_crawl_here(site.url + "/", "--out", str(out), *COMMON, *args, settings=TEST_SETTINGS)


def read_books(out) -> tuple[list[dict], list[dict], dict]:
    """(candidates without their bytes, rejected rows, stats.json) of a crawl folder."""
    def table(sub: str, kind: str, columns=None) -> list[dict]:
        folder = str(out / sub)
        if not os.path.isdir(folder) or not schemas.list_parquet_files(folder):
            return []
        return schemas.read_table(folder, kind, columns=columns).to_pylist()

    candidates = table("candidates", "candidates", ["candidate_id", "page_url", "image_url"])
    return candidates, table("rejected", "rejected"), json.loads((out / "stats.json").read_text())


def rows_of(out, site: MockSite) -> list[tuple]:
    """Every row of the folder as (page, image or "", reason or "kept"), sorted."""
    candidates, rejected, _ = read_books(out)
    return sorted([(path_of(c["page_url"], site), path_of(c["image_url"], site), "kept") for c in candidates]
                  + [(path_of(r["page_url"], site), path_of(r["image_url"], site) or "", r["reason"]) for r in rejected])


def assert_one_row_per_record(out) -> tuple[list[dict], list[dict], dict]:
    """No candidate both kept and rejected, one reason per rejected candidate, a page row only for a page
    that has no other rows and once, and books that balance from disk."""
    candidates, rejected, stats = read_books(out)
    kept = [c["candidate_id"] for c in candidates]
    assert len(set(kept)) == len(kept)
    reasons = collections.defaultdict(set)
    for row in rejected:
        if row["candidate_id"] and row["reason"] not in OWN_RECORD_REASONS:
            assert row["candidate_id"] not in kept, f"kept and rejected as {row['reason']}: {row['image_url']}"
            reasons[row["candidate_id"]].add(row["reason"])
    assert all(len(r) == 1 for r in reasons.values()), f"rejected twice with different reasons: {reasons}"
    page_rows = collections.Counter(r["page_url"] for r in rejected
                                    if not r["candidate_id"] and r["reason"] not in REFERENCE_REASONS_WITHOUT_ID)
    with_references = {c["page_url"] for c in candidates} | {r["page_url"] for r in rejected if r["candidate_id"]}
    assert all(n == 1 for n in page_rows.values()), page_rows
    assert not set(page_rows) & with_references, "a page both fetched and rejected"
    assert stats["in"] == stats["kept"] + stats["rejected"]
    assert (stats["kept"], stats["rejected"]) == (len(candidates), len(rejected))
    assert stats["rejected_by_reason"] == dict(collections.Counter(r["reason"] for r in rejected))
    return candidates, rejected, stats


# ---------------------------------------------------------------------------- stopped with images pending

def test_a_crawl_stopped_with_images_pending_then_rerun_keeps_each_record_once(tmp_path):
    out = tmp_path / "out"
    with small_site(8) as site:
        expected = small_site_candidate_ids(site)
        # CLOSESPIDER_PAGECOUNT stops the crawl as Ctrl-C does; without a job folder the candidates still
        # waiting for their image become image_not_fetched rows.
        lait_crawl_here(site.url + "/p0.html", "--out", str(out), *COMMON,
                        settings=dict(TEST_SETTINGS, CLOSESPIDER_PAGECOUNT=6, CONCURRENT_REQUESTS=2))
        not_fetched = [r["candidate_id"] for r in read_books(out)[1] if r["reason"] == "image_not_fetched"]
        assert not_fetched, "the first run must stop with images pending"
        lait_crawl_here(site.url + "/p0.html", "--out", str(out), *COMMON, settings=TEST_SETTINGS)
    candidates, rejected, stats = assert_one_row_per_record(out)
    assert sorted(c["candidate_id"] for c in candidates) == expected  # an uninterrupted crawl's candidates
    assert rejected == [] and stats["superseded_rejects"] == len(not_fetched)


# Two processes only: one process stopped with images pending is the test above, and Ctrl-C to one is
# test_crawl_site's; two add the inboxes' unread candidates, routed to an image process that never read them.
@pytest.mark.parametrize("processes", [2], ids=["2proc"])
def test_ctrl_c_without_jobdir_then_rerun_keeps_each_record_once(tmp_path, processes):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lait", "crawl", "--out", str(out), "--no-progress", *COMMON,
               "--processes", str(processes), "-s", "AUTOTHROTTLE_ENABLED=false", "-s", "CONCURRENT_REQUESTS=2"]
    with small_site(8, slow_images=0.2) as site:
        expected = small_site_candidate_ids(site)
        # SIGINT with its default disposition, to the whole group, as Ctrl-C in a terminal (see test_crawl_site).
        process = subprocess.Popen([*command, site.url + "/p0.html"], env=dict(os.environ, PYTHONPATH=ROOT),
                                   start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while sum(n for p, n in list(site.counts.items()) if p.startswith("/img/")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stdout + stderr
        _, first_rejected, first = assert_one_row_per_record(out)  # the interrupted run settled its books too
        # Every reference found is a row, those routed to an image process it never read included.
        assert first["in"] == first["lait/ref/img"], first
        not_fetched = [r for r in first_rejected if r["reason"] == "image_not_fetched"]
        assert not_fetched, "the first run must stop with images pending"
        # The slow images made the stop land mid-crawl; the rerun need not wait for them. A roomier timeout than
        # the tests' 1 s all the same, so that a loaded machine does not turn one into a rejected row.
        site.slow_prefix = None
        lait_crawl_here(site.url + "/p0.html", "--out", str(out), "--processes", str(processes), *COMMON,
                        settings=dict(TEST_SETTINGS, DOWNLOAD_TIMEOUT=15))
    candidates, rejected, stats = assert_one_row_per_record(out)
    assert sorted(c["candidate_id"] for c in candidates) == expected, rejected
    assert rejected == [] and stats["superseded_rejects"] == len(not_fetched)


def crawl_processes(pid: int) -> list[int]:
    """The crawl processes ``pid`` has started that run (exec'd ``python -m crawler.runner``): from /proc."""
    return children_running(pid, b"crawler.runner")


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="needs Linux /proc")
# Two processes: the parent starts both with the stop signals blocked and takes Ctrl-C once both run, and each
# takes it once its engine runs; one process is the same child path, started alone.
@pytest.mark.parametrize("processes", [2], ids=["2proc"])
def test_ctrl_c_while_the_crawl_processes_start_still_settles_the_books(tmp_path, processes):
    # Ctrl-C moments after start, while the crawl processes still import: each stops as its crawl begins, and the
    # run's books are written and add up. Before, a process died mid-import and none were (exit 130, no stats.json).
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lait", "crawl", "--out", str(out), "--no-progress", *COMMON,
               "--processes", str(processes)]
    with small_site(2) as site:
        process = subprocess.Popen([*command, site.url + "/p0.html"], env=dict(os.environ, PYTHONPATH=ROOT),
                                   start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while len(crawl_processes(process.pid)) < processes and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stdout + stderr
    assert "not settled" not in stderr and "Traceback" not in stderr, stderr
    _, _, stats = assert_one_row_per_record(out)
    assert "crawl interrupted" in stdout, stdout


# ------------------------------------------------------------------------------- transient failures

@pytest.fixture(scope="module")
def transient_runs(tmp_path_factory):
    """Three crawls of ``rerun_site`` into one folder: a.jpg, d.jpg (both its references) and empty.html answer 503;
    then a.jpg and empty.html answer 500 and d.jpg recovers; then all recover. (site, the folder, [a copy of it
    after the first crawl, after the second])."""
    root = tmp_path_factory.mktemp("transient")
    out = root / "run" / "crawl"
    copies = []
    with rerun_site() as site:
        healthy = dict(site.pages)
        for failures in ({"/img/a.jpg": 503, "/img/d.jpg": 503, "/empty.html": 503},
                         {"/img/a.jpg": 500, "/empty.html": 500}, {}):
            site.pages.update(healthy)
            site.pages.update({path: failing(status) for path, status in failures.items()})
            crawl(site, out)
            if failures:
                copies.append(root / f"after-{len(copies) + 1}")
                shutil.copytree(out, copies[-1])
    return site, out, copies


def test_transient_image_failures_then_success_leave_the_kept_rows_and_the_duplicate(transient_runs):
    from lait import cli

    site, out, (failed, recovered_d) = transient_runs
    assert ("/pics.html", "/img/a.jpg", "http_503") in rows_of(failed, site)
    assert rows_of(failed, site).count(("/dups.html", "/img/d.jpg", "http_503")) == 2  # both references
    # d.jpg recovered in the second crawl: its kept row and its duplicate_candidate row replace both 503 rows.
    assert [row for row in rows_of(recovered_d, site) if row[1] == "/img/d.jpg"] == [
        row for row in HEALTHY if row[1] == "/img/d.jpg"]
    assert rows_of(out, site) == HEALTHY  # the duplicate_candidate and decorative_image rows stay
    _, _, stats = assert_one_row_per_record(out)
    assert stats["superseded_rejects"] == 2  # a.jpg's and empty.html's 500 rows
    assert cli.main(["audit", str(out.parent)]) == 0


def test_two_transient_reasons_leave_the_newer(transient_runs):
    site, _, (_, newer_run) = transient_runs
    newer = [("/empty.html", "", "http_500"), ("/pics.html", "/img/a.jpg", "http_500")]
    assert rows_of(newer_run, site) == sorted([r for r in HEALTHY if r[1] != "/img/a.jpg"] + newer)
    _, _, stats = assert_one_row_per_record(newer_run)
    assert stats["superseded_rejects"] == 4  # a.jpg's and empty.html's 503 rows, and d.jpg's two (now kept)


@pytest.fixture(scope="module")
def healthy_crawl(tmp_path_factory):
    """``rerun_site`` served for the module with one healthy crawl of it, copied by ``after_a_healthy_crawl``."""
    out = tmp_path_factory.mktemp("healthy") / "out"
    with rerun_site() as site:
        crawl(site, out)
        yield site, out, dict(site.pages)


@pytest.fixture
def after_a_healthy_crawl(healthy_crawl, tmp_path):
    """(site, a copy of the healthy crawl's folder in tmp_path to rerun into); the site's pages are put back after."""
    site, healthy, pages = healthy_crawl
    out = tmp_path / "out"
    shutil.copytree(healthy, out)  # copy2: the shards keep their mtimes (reconcile orders by them)
    yield site, out
    site.pages.clear()
    site.pages.update(pages)


def opt_out(site: MockSite) -> None:
    """pics.html and dups.html opt out (``noai``)."""
    for page in ("/pics.html", "/dups.html"):
        status, headers, body = site.pages[page]
        site.pages[page] = (status, headers, body.replace(b"</head>", b'<meta name="robots" content="noai"></head>'))


@pytest.fixture(scope="module")
def opted_out_fresh(healthy_crawl, tmp_path_factory):
    """The rows of a first crawl of ``rerun_site`` once pics.html and dups.html opted out."""
    site, _, pages = healthy_crawl
    fresh = tmp_path_factory.mktemp("fresh") / "out"
    opt_out(site)
    try:
        crawl(site, fresh)
    finally:
        site.pages.update(pages)
    return rows_of(fresh, site)


def test_kept_then_failing_leaves_the_kept_rows(after_a_healthy_crawl):
    site, out = after_a_healthy_crawl
    assert rows_of(out, site) == HEALTHY
    site.pages.update({"/img/a.jpg": failing(503), "/img/d.jpg": failing(503), SOLO: failing(503)})
    crawl(site, out)
    assert rows_of(out, site) == HEALTHY
    _, _, stats = assert_one_row_per_record(out)
    assert stats["lait/out/already_kept"] == 3  # a, and d's two references: not written
    assert stats["superseded_rejects"] == 1  # the solo page's row: its reference is kept


@pytest.mark.parametrize("processes", [1, 2], ids=["1proc", "2proc"])
def test_a_page_that_opts_out_after_a_crawl_kept_it_is_withdrawn(after_a_healthy_crawl, opted_out_fresh, processes):
    """Kept stays kept, except against an opt-out: the rerun's opt_out_* rows replace the kept ones."""
    site, out = after_a_healthy_crawl
    assert rows_of(out, site) == HEALTHY
    opt_out(site)
    crawl(site, out, "--processes", str(processes))
    # As a crawl of the opted-out site gives: each reference its opt-out row, d.jpg's repeat included (its
    # duplicate_candidate row goes), the decorative use of f.jpg still its own record.
    expected = sorted([row for row in HEALTHY if row[0] not in ("/pics.html", "/dups.html")]
                      + [("/pics.html", "/img/a.jpg", "opt_out_noai"), ("/pics.html", "/img/b.jpg", "opt_out_noai"),
                         ("/dups.html", "/img/d.jpg", "opt_out_noai"), ("/dups.html", "/img/d.jpg", "opt_out_noai"),
                         ("/dups.html", "/img/f.jpg", "opt_out_noai"), ("/dups.html", "/img/f.jpg", "decorative_image")])
    assert rows_of(out, site) == opted_out_fresh == expected
    _, _, stats = assert_one_row_per_record(out)
    assert stats["withdrawn_candidates"] == 4 and stats["superseded_rejects"] == 1


# Two processes only: one process's page rows superseded by a rerun are this file's transient-failure tests'.
@pytest.mark.parametrize("processes", [2], ids=["2proc"])
def test_pages_that_failed_then_were_fetched_leave_no_page_row(tmp_path, processes):
    out = tmp_path / "out"
    with rerun_site() as site:
        site.pages["/empty.html"] = failing(503)
        site.slow_prefix, site.slow_s = "/pics.html", 1.5  # past TEST_SETTINGS' DOWNLOAD_TIMEOUT
        crawl(site, out, "--processes", str(processes))
        assert {"/pics.html": "timeout", "/empty.html": "http_503"}.items() <= {
            path_of(r["page_url"], site): r["reason"] for r in read_books(out)[1]}.items()
        site.pages["/empty.html"] = (200, HTML, html("<p>No images here.</p>"))
        site.slow_prefix = None
        crawl(site, out, "--processes", str(processes))
    assert rows_of(out, site) == HEALTHY  # empty.html, fetched, has no row at all
    _, _, stats = assert_one_row_per_record(out)
    assert stats["superseded_rejects"] == 2


# ------------------------------------------------------------------------------------------- units

def test_a_reject_of_a_kept_candidate_is_not_written_unless_it_is_a_record_of_its_own(tmp_path):
    from crawler.output import CrawlOutput

    page = "http://h.example/p.html"
    first = CrawlOutput(str(tmp_path))
    first.add_candidate({"candidate_id": "c1", "image_id": "i1", "page_url": page, "image_url": "http://h.example/a.jpg",
                         "image_bytes": b"x", "source": "crawl"})
    first.close()
    rerun = CrawlOutput(str(tmp_path))
    rows = [{"reason": reason, "candidate_id": "c1", "page_url": page} for reason in
            ("timeout", "http_500", "duplicate_candidate", "decorative_image", "no_text", "opt_out_noai")]
    assert [rerun.add_rejected(dict(row)) for row in rows] == [False, False, True, True, True, True]
    assert [rerun.already_kept(row) for row in rows] == [True, True, False, False, False, False]


def write_shard(folder, name: str, rows: list[dict], age: int) -> str:
    """A rejected shard with the given rows, written ``age`` seconds after the epoch (its mtime)."""
    path = str(folder / name)
    schemas.write_table(schemas.to_table([dict(row, stage="crawl") for row in rows], "rejected"), path, "rejected")
    os.utime(path, (age, age))
    return path


def test_reconcile_rewrites_only_the_shards_it_changes(tmp_path, monkeypatch):
    from crawler.output import RunOutcomes, reconcile

    page, gone, fetched = "http://h.example/p.html", "http://h.example/gone.html", "http://h.example/fetched.html"
    candidate = {"candidate_id": "kept", "image_id": "i", "page_url": page, "image_url": "http://h.example/k.jpg",
                 "image_bytes": b"\xff" * 1000, "source": "crawl"}
    schemas.write_table(schemas.to_table([candidate], "candidates"), str(tmp_path / "candidates" / "part-00000.parquet"),
                        "candidates")
    rejected = tmp_path / "rejected"

    def row(reason, candidate_id=None, page_url=page):
        return {"reason": reason, "candidate_id": candidate_id, "page_url": page_url}

    # Oldest first. Every row of the first shard is superseded: the candidate is kept, this run rejected
    # "retried" as http_500, the page was fetched this run, and the page "p" has references on disk.
    emptied = write_shard(rejected, "part-00000.parquet", [
        row("timeout", "kept"), row("http_503", "retried"), row("timeout", page_url=fetched), row("timeout")], 100)
    untouched = write_shard(rejected, "part-00001.parquet", [
        row("duplicate_candidate", "kept"), row("decorative_image", "kept"), row("data_uri"),
        row("data_uri", page_url=fetched), row("timeout", "other"), row("http_404", page_url=gone)], 200)
    # This run's http_500 for "retried" stays; "legacy" (not reached by this run) keeps its newest reason.
    rewritten = write_shard(rejected, "part-p0-00000.parquet", [row("http_500", "retried"), row("http_503", "legacy")],
                            300)
    newest = write_shard(rejected, "part-p1-00000.parquet", [row("http_500", "legacy")], 400)
    before = {path: open(path, "rb").read() for path in (untouched, newest)}
    outcomes = RunOutcomes(candidates={"retried": {"http_500"}}, fetched_pages={fetched})

    reads = []  # (kind, columns) of every read: never a candidate's image bytes

    def recording(read):
        def recorded(path, kind=None, columns=None, **kwargs):
            reads.append((kind, columns))
            return read(path, kind, columns=columns, **kwargs)
        return recorded

    monkeypatch.setattr(schemas, "read_table", recording(schemas.read_table))
    monkeypatch.setattr(schemas, "iter_batches", recording(schemas.iter_batches))
    assert reconcile(str(tmp_path), outcomes) == 5
    monkeypatch.undo()

    assert not os.path.exists(emptied)
    assert {path: open(path, "rb").read() for path in (untouched, newest)} == before
    assert schemas.read_table(rewritten, "rejected").select(["reason", "candidate_id"]).to_pylist() == [
        {"reason": "http_500", "candidate_id": "retried"}]
    assert os.stat(rewritten).st_mtime == 300  # its rows are as old as before: the next reconcile orders by it
    assert sorted(os.listdir(rejected)) == ["part-00001.parquet", "part-p0-00000.parquet", "part-p1-00000.parquet"]
    candidate_reads = [columns for kind, columns in reads if kind == "candidates"]
    assert candidate_reads and all(columns and "image_bytes" not in columns for columns in candidate_reads)
    assert reconcile(str(tmp_path), RunOutcomes()) == 0  # settled: a reconcile with nothing new changes nothing
