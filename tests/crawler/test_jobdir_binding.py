"""A job folder belongs to one output folder: a crawl into another one with it is refused before it crawls.

The job folder holds the pages and images its crawl has seen: a second crawl into another --out with it skipped
them all and wrote an incomplete output without a word."""
import json
import subprocess
import sys
import os

import pytest

import schemas
from crawler import runner
from tests.crawler.mocksite import HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.inprocess import lait_here

PAGES = 3


def chain_site() -> MockSite:
    """A chain of pages, each with one image of its own."""
    content = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")}
    for i in range(PAGES):
        nxt = f'<a href="/p{i + 1}.html">next</a>' if i + 1 < PAGES else ""
        content[f"/p{i}.html"] = (200, HTML, html(f'<img src="/img/{i}.jpg" alt="Picture {i}">{nxt}'))
        content[f"/img/{i}.jpg"] = (200, JPEG, jpeg(96, 72, color=(i * 40, 10, 50)))
    return MockSite(content)


def crawl(site: MockSite, out: str, jobdir: str, *extra: str, settings: dict | None = None, check: bool = True):
    command = ["crawl", site.url + "/p0.html", "--out", out, "--jobdir", jobdir, "--allow-private-networks",
               "--min-side", str(TEST_MIN_SIDE), "--no-progress", *extra]
    for key, value in dict(TEST_SETTINGS, **(settings or {})).items():
        command += ["-s", f"{key}={json.dumps(value)}"]
    return lait_here(*command, check=check)


def test_a_crawl_into_another_out_with_the_same_jobdir_is_refused_and_a_resume_goes_on(tmp_path, monkeypatch):
    """Before: the second crawl into `other` ran, fetched nothing its job folder had seen and wrote an incomplete
    output. A resume naming the first folder another way (relative, trailing slash) continues it."""
    out, other, jobdir = tmp_path / "first", tmp_path / "other", tmp_path / "job"
    with chain_site() as site:
        # CLOSESPIDER_PAGECOUNT stops the crawl the way Ctrl-C does: a graceful close mid-crawl.
        crawl(site, str(out), str(jobdir), settings={"CLOSESPIDER_PAGECOUNT": 4, "CONCURRENT_REQUESTS": 1})
        assert json.loads((jobdir / runner.JOB_FILE).read_text()) == {"processes": 1, "out": str(out.resolve())}
        first = schemas.count_rows(str(out / "candidates"))
        fetched = sum(site.counts.values())
        refused = crawl(site, str(other), str(jobdir), check=False)
        assert refused.returncode == 2
        assert refused.stderr.splitlines() == [
            f"lait crawl: --jobdir {jobdir} holds the crawl into {out.resolve()}, not {other.resolve()}: its seen pages "
            f"would be skipped and the output left incomplete; use a new --jobdir, or --out {out.resolve()} to "
            f"continue it, or delete {jobdir}"]
        assert not other.exists() and sum(site.counts.values()) == fetched  # refused before anything ran
        monkeypatch.chdir(tmp_path)
        crawl(site, "first/", str(jobdir))  # the same folder, named another way: a resume
    got = schemas.read_table(str(out / "candidates"), "candidates").column("candidate_id").to_pylist()
    assert 0 < first < PAGES, "the first run must have been interrupted part-way"
    assert len(got) == len(set(got)) == PAGES
    assert json.loads((jobdir / runner.JOB_FILE).read_text()) == {"processes": 1, "out": str(out.resolve())}


def test_the_job_folder_setting_and_run_crawl_refuse_another_out_before_it_is_made(tmp_path):
    out, other, jobdir = tmp_path / "first", tmp_path / "other", tmp_path / "job"
    runner.check_job_folder(str(jobdir), 1, out=str(out))
    with pytest.raises(runner.JobFolderError, match="holds the crawl into .*first, not .*other"):
        runner.run_crawl(["http://127.0.0.1:9/"], str(other), jobdir=str(jobdir))
    refused = lait_here("crawl", "http://127.0.0.1:9/", "--out", str(other), "-s", f"LAIT_JOBDIR={jobdir}",
                        "--no-progress", check=False)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith(f"lait crawl: -s LAIT_JOBDIR={jobdir} holds the crawl into {out}, not {other}:")
    assert "use a new -s LAIT_JOBDIR" in refused.stderr
    assert not other.exists() and sorted(os.listdir(jobdir)) == [runner.JOB_FILE]


def test_equivalent_names_of_the_output_folder_are_one_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "link").symlink_to(out)
    monkeypatch.chdir(tmp_path)
    jobdir = str(tmp_path / "job")
    runner.check_job_folder(jobdir, 1, out="out")
    for name in (str(out), str(out) + "/", "out/", "./out", str(tmp_path / "link"), "sub/../out"):
        runner.check_job_folder(jobdir, 1, out=name)
    assert runner.job_folder_out("gs://bucket/run/crawl/") == runner.job_folder_out("gs://bucket/run/crawl")
    assert runner.job_folder_out("gs://bucket/run/crawl") != runner.job_folder_out("gs://bucket/run/other")


def test_a_job_folder_without_an_output_record_is_accepted_then_recorded(tmp_path):
    out, other = tmp_path / "out", tmp_path / "other"
    legacy = tmp_path / "legacy"  # recorded before the output folder was
    legacy.mkdir()
    (legacy / runner.JOB_FILE).write_text(json.dumps({"processes": 1}))
    older = tmp_path / "older"  # from before any record: a state file only
    older.mkdir()
    (older / "lait-state.pickle").write_bytes(b"")
    for jobdir in (legacy, older):
        runner.check_job_folder(str(jobdir), 1, record=False, out=str(out))  # `lait crawl`'s check writes nothing
        assert not (jobdir / runner.JOB_FILE).exists() or "out" not in json.loads((jobdir / runner.JOB_FILE).read_text())
        runner.check_job_folder(str(jobdir), 1, out=str(out))
        assert json.loads((jobdir / runner.JOB_FILE).read_text()) == {"processes": 1, "out": str(out)}
        runner.check_job_folder(str(jobdir), 1, out=str(out))
        with pytest.raises(runner.JobFolderError, match="holds the crawl into"):
            runner.check_job_folder(str(jobdir), 1, out=str(other))
    runner.check_job_folder(str(legacy), 1)  # a check that names no output folder (`scrapy crawl`) passes it


def test_an_unreadable_output_record_is_one_line(tmp_path):
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    (jobdir / runner.JOB_FILE).write_text(json.dumps({"processes": 1, "out": ["x"]}))
    with pytest.raises(runner.JobFolderError, match="cannot be read .*use a new --jobdir"):
        runner.check_job_folder(str(jobdir), 1, out=str(tmp_path / "out"))


def test_native_scrapy_crawl_refuses_a_job_folder_of_another_output(tmp_path):
    """`scrapy crawl lait -a jobdir=J -s LAIT_OUT=B` with J recorded for A: refused at spider init, nothing made."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    jobdir, first, out = tmp_path / "job", tmp_path / "first", tmp_path / "native"
    jobdir.mkdir()
    (jobdir / runner.JOB_FILE).write_text(json.dumps({"processes": 1, "out": str(first)}))
    result = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "lait", "-a", "urls=http://127.0.0.1:9/", "-a", f"jobdir={jobdir}",
         "-s", f"LAIT_OUT={out}", "-s", "LOG_LEVEL=WARNING"],
        cwd=root, env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.splitlines()[-1] == (
        f"crawler.runner.JobFolderError: -a jobdir={jobdir} holds the crawl into {first}, not {out}: its seen pages "
        f"would be skipped and the output left incomplete; use a new -a jobdir, or -s LAIT_OUT={first} to continue "
        f"it, or delete {jobdir}")
    assert not out.exists()
