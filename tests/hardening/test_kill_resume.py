"""Kill each stage midway (SIGTERM, SIGKILL), rerun the same command, and compare with an
uninterrupted run: the same ids, no duplicates, no losses, and `lait audit` passes.

Only the runs to be killed are processes of their own (`python -m lait`, killed by a signal). The uninterrupted
runs and the reruns are the same command line run in this process (``lait_here``): a python start and the imports
(torch, Beam) are most of what a run this small costs, and a rerun reads only what the killed run left on disk."""
import contextlib
import functools
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import torch
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import schemas
from lait import cli
from model.detectors import demo
from tests import inprocess
from tests.crawler.mocksite import TEST_SETTINGS, html
from tests.crawler.test_crawl_site import small_site, small_site_candidate_ids
from tests.features.scenes import CLASS_NAMES, encode, image_id, make_scene

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV_SET = {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV = dict(os.environ, **ENV_SET)
SIGNALS = [signal.SIGTERM, signal.SIGKILL]


def write_response(writer: WARCWriter, url: str, body: bytes, content_type: str) -> None:
    """One WARC response record. (Not imported from the WARC tests: a test module imported under a second
    name defines its Beam filesystem stand-in twice, and Beam then refuses the scheme.)"""
    headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))


def run_and_kill(command: list[str], ready, sig: int, whole_group: bool = False, timeout: float = 60,
                 linger: float = 30) -> int:
    """Start ``command``, wait until ``ready()``, send ``sig`` (to the process, or its whole group), then wait
    up to ``linger`` seconds for the whole group to be gone."""
    process = subprocess.Popen(command, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed midway"
    if whole_group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    code = process.wait(timeout=60)
    # Nothing of the killed run may live on and race the rerun (a crawl's child process included).
    deadline = time.monotonic() + linger
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return code
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"a process of the killed run was still running {linger:.0f} s later")


def lait_here(*args: str) -> None:
    """`lait ARGS` run to the end in this process, as `python -m lait ARGS` runs it (``cli.main``), with torch on
    one thread and the environment (``ENV``, for the processes it starts) of the killed runs: a resumed model or
    region feature is computed as the killed run computed its part."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with mock.patch.dict(os.environ, ENV_SET):
            inprocess.lait_here(*args)
    finally:
        torch.set_num_threads(threads)


def audit_ok(run_dir) -> None:
    assert cli.main(["audit", str(run_dir)]) == 0


def ids_of(path, kind: str, column: str) -> list[str]:
    return schemas.read_table(str(path), kind).column(column).to_pylist() if schemas.list_parquet_files(str(path)) else []


def images_fetched(site) -> int:
    """How many image requests the mock site has had so far."""
    return sum(n for p, n in list(site.counts.items()) if p.startswith("/img/"))


# ------------------------------------------------------------------------------------------ crawl

# Each signal once and each process count once (all four pairs cost 16 s more): the forwarded SIGTERM and the
# parent-death SIGKILL act on every crawl process alike, one or several.
@pytest.mark.parametrize(("sig", "processes"), [(signal.SIGTERM, 1), (signal.SIGKILL, 2)],
                         ids=["SIGTERM-1proc", "SIGKILL-2proc"])
def test_crawl_killed_then_rerun_with_its_jobdir_loses_nothing(tmp_path, sig, processes):
    run, jobdir = tmp_path / "run", tmp_path / "job"
    command = [sys.executable, "-m", "lait", "crawl", "--out", str(run / "crawl"), "--jobdir", str(jobdir),
               "--allow-private-networks", "--min-side", "64", "--no-progress", "--processes", str(processes)]
    for key, value in dict(TEST_SETTINGS, CONCURRENT_REQUESTS=2, LAIT_ROWS_PER_SHARD=2).items():
        command += ["-s", f"{key}={json.dumps(value)}"]
    with small_site(8, slow_images=0.1) as site:
        expected = small_site_candidate_ids(site, 8)
        # The signal goes to `lait crawl` alone, as a scheduler's stop or `kill PID` would: the crawl
        # process it started must stop too (forwarded SIGTERM; parent-death signal after SIGKILL).
        run_and_kill([*command, site.url + "/p0.html"], lambda: images_fetched(site) >= 6, sig)
        first = ids_of(run / "crawl" / "candidates", "candidates", "candidate_id")
        lait_here(*command[3:], site.url + "/p0.html")  # the same command
    got = ids_of(run / "crawl" / "candidates", "candidates", "candidate_id")
    assert len(first) < len(expected), "the first run must have stopped part-way"
    assert sorted(got) == expected, "the resumed crawl gives exactly the uninterrupted crawl's candidates"
    stats = json.loads((run / "crawl" / "stats.json").read_text())
    assert stats["in"] == stats["kept"] + stats["rejected"] and stats["kept"] == len(expected)
    audit_ok(run)


# ------------------------------------------------------------------------------------------- WARC

def write_page_warc(path, site, pages: int) -> None:
    """The site's pages as WARC response records, without their images (the download step fetches
    them from the slow local site), plus a page whose image is gone (a counted reject)."""
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for i in range(pages):
            write_response(writer, f"{site.url}/p{i}.html", site.pages[f"/p{i}.html"][2], "text/html")
        write_response(writer, f"{site.url}/gone.html", html('<img src="/img/gone.jpg" alt="An image that is gone">'),
                       "text/html")


def warc_args(files, out, *extra: str) -> list[str]:
    """The `lait crawl --warc` arguments (after `lait`) that read ``files`` into ``out``."""
    return ["crawl", "--warc", *map(str, files), "--out", str(out), *extra, "--allow-private-networks",
            "--min-side", "64", "--no-progress", "-s", "DOWNLOAD_DELAY=0"]


@pytest.fixture(scope="module")
def warc_baseline(tmp_path_factory):
    """The slow site (an image answers after 0.05 s, so that a kill lands while the images download), its pages as
    one WARC file, and one uninterrupted run of the WARC reader over it: the reference of both WARC tests (a run in
    parts writes the rows one run over all its files writes). Yields (site, folder of pages.warc.gz and full/)."""
    root = tmp_path_factory.mktemp("warc")
    with small_site(8, slow_images=0.05) as site:
        write_page_warc(root / "pages.warc.gz", site, 8)
        lait_here(*warc_args([root / "pages.warc.gz"], root / "full" / "crawl"))
        yield site, root


def test_warc_reader_killed_then_rerun_gives_the_uninterrupted_result(tmp_path, warc_baseline):
    site, root = warc_baseline
    full, out = root / "full" / "crawl", tmp_path / "run" / "crawl"
    args = warc_args([root / "pages.warc.gz"], out)
    command = [sys.executable, "-m", "lait", *args]
    halfway = lambda before: images_fetched(site) >= before + 8  # of the 18 images a run fetches
    # SIGKILL to `lait crawl` while the download step is halfway through the images.
    run_and_kill(command, functools.partial(halfway, images_fetched(site)), signal.SIGKILL)
    assert not (out / "stats.json").exists(), "a killed WARC run must not look complete"
    temp = [p for p in (out / "candidates").glob("beam-temp-*") if p.is_dir()]
    assert temp, "the killed run left Beam's temporary write folder"
    # A kill between Beam's shard write and its rename leaves a finished temporary shard there;
    # such a file ends in .parquet and would be read as part of the dataset if it stayed.
    shutil.copy(schemas.list_parquet_files(str(full / "candidates"))[0], temp[0] / "0a1b-stale.warc.parquet")
    lait_here(*args)  # the same command
    assert_same_warc_output(out, full, site)
    # A rerun over a complete output, killed midway, must not leave the old stats.json behind.
    run_and_kill(command, functools.partial(halfway, images_fetched(site)), signal.SIGKILL)
    assert not (out / "stats.json").exists(), "an interrupted rerun must not keep the previous run's stats.json"
    lait_here(*args)
    stats = assert_same_warc_output(out, full, site)
    assert stats["rejected_by_reason"] == {"http_404": 1}


def assert_same_warc_output(out, full, site) -> dict:
    """The rerun's rows are the uninterrupted run's, each once, no Beam temporary file is left, the books
    balance and the audit passes; returns the rerun's stats.json."""
    for kind, folder, column in (("candidates", "candidates", "candidate_id"), ("rejected", "rejected", "candidate_id")):
        got = ids_of(out / folder, kind, column)
        assert sorted(got) == sorted(ids_of(full / folder, kind, column)) and len(set(got)) == len(got)
    assert sorted(ids_of(out / "candidates", "candidates", "candidate_id")) == small_site_candidate_ids(site, 8)
    assert not [p for p in out.rglob("*") if p.name.startswith("beam-temp")]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["in"] == stats["kept"] + stats["rejected"] == 25
    audit_ok(out.parent)
    return stats


def test_warc_reader_in_parts_killed_after_its_first_part_resumes_from_the_next(tmp_path, warc_baseline):
    site, root = warc_baseline
    full, out = root / "full" / "crawl", tmp_path / "run" / "crawl"
    files = []
    for number, pages in enumerate((range(0, 3), range(3, 6), range(6, 8))):
        files.append(tmp_path / f"pages-{number}.warc.gz")
        with open(files[-1], "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            for i in pages:
                write_response(writer, f"{site.url}/p{i}.html", site.pages[f"/p{i}.html"][2], "text/html")
            if number == 0:
                write_response(writer, f"{site.url}/gone.html",
                               html('<img src="/img/gone.jpg" alt="An image that is gone">'), "text/html")
    args = warc_args(files, out, "--files-per-part", "1")
    # SIGKILL once the first part's marker is written: part 2 is on its way.
    run_and_kill([sys.executable, "-m", "lait", *args], (out / "parts" / "p00000.json").exists, signal.SIGKILL)
    assert not (out / "stats.json").exists() and not (out / "parts" / "p00002.json").exists()
    first_part = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("warc-p00000-*.parquet")}
    assert len(first_part) == 2, "part 1 wrote its candidate and rejected shards"
    fetched = {p: n for p, n in site.counts.items() if p.startswith("/img/")}
    lait_here(*args)  # the same command
    refetched = [p for p in ("/img/0a.jpg", "/img/1b.jpg", "/img/2a.jpg") if site.counts[p] != fetched[p]]
    assert refetched == [], "the finished part's images are not fetched again"
    assert {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("warc-p00000-*.parquet")} == first_part
    assert assert_same_warc_output(out, full, site)["parts"] == 3


# ----------------------------------------------------------------------------------------- filter

def write_candidates(folder, n: int) -> None:
    """``n`` candidates with distinct good images and English captions, in several shards."""
    rows = []
    words = ["red", "green", "blue", "small", "large", "wooden", "old", "bright"]
    for i in range(n):
        data = encode(make_scene(i, (96, 80))[0], "JPEG", quality=85)
        alt = f"a {words[i % 8]} {words[(i // 8) % 8]} house near the river number {i}"
        rows.append({"candidate_id": f"c{i:04d}", "image_id": image_id(data), "page_url": f"http://h.test/{i}",
                     "image_url": f"http://h.test/{i}.jpg", "alt": alt, "page_lang": "en", "image_bytes": data,
                     "num_bytes": len(data), "source": "crawl"})
    for shard in range(4):
        schemas.write_table(schemas.to_table(rows[shard::4], "candidates"),
                            str(folder / "candidates" / f"part-{shard:05d}.parquet"), "candidates")


@pytest.fixture(scope="module")
def filter_baseline(tmp_path_factory):
    """Candidates and one uninterrupted filter run over them."""
    root = tmp_path_factory.mktemp("filter")
    write_candidates(root / "run" / "crawl", 64)
    with open(root / "run" / "crawl" / "stats.json", "w") as f:
        json.dump({"stage": "crawl", "in": 64, "kept": 64, "rejected": 0, "rejected_by_reason": {}}, f)
    args = ["--min-side", "64", "--phash-distance", "-1"]
    lait_here("filter", "--input", str(root / "run" / "crawl"), "--output", str(root / "run" / "filter"), *args)
    return root, args


def filter_command(tmp_path, filter_baseline, *extra: str) -> tuple[list[str], pathlib.Path]:
    """`lait filter` over the baseline's candidates into a new run folder; (command, output folder)."""
    root, args = filter_baseline
    crawl, out = root / "run" / "crawl", tmp_path / "run" / "filter"
    os.makedirs(tmp_path / "run")
    os.symlink(crawl, tmp_path / "run" / "crawl")
    return [sys.executable, "-m", "lait", "filter", "--input", str(crawl), "--output", str(out), *args, *extra], out


def assert_same_filter_output(out, filter_baseline) -> None:
    """Pairs and rejects equal the uninterrupted run's, once each, no Beam leftovers, books audited."""
    root, _ = filter_baseline
    for kind, folder, column in (("pairs", "pairs", "pair_id"), ("rejected", "rejected", "candidate_id")):
        got = ids_of(out / folder, kind, column)
        assert sorted(got) == sorted(ids_of(root / "run" / "filter" / folder, kind, column))
        assert len(set(got)) == len(got)
    assert not [p for p in out.rglob("*") if "beam-temp" in p.name]
    audit_ok(out.parent)


def entries(folder) -> set[str]:
    """The names in ``folder`` (none when it does not exist, yet or any more)."""
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def test_filter_killed_twice_leaves_no_partial_output_and_the_rerun_equals_an_uninterrupted_run(tmp_path, filter_baseline):
    command, out = filter_command(tmp_path, filter_baseline)
    for sig in SIGNALS:  # killed by SIGTERM, then the rerun killed by SIGKILL, then a rerun to the end
        # Beam creates its temporary write folder in pairs/ once the pipeline runs. A rerun first removes the
        # pairs/ the killed run left: the kill waits for a folder of its own there, not for the one left.
        left = entries(out / "pairs")
        run_and_kill(command, lambda: bool(entries(out / "pairs") - left), sig, whole_group=True)
        assert not (out / "stats.json").exists(), "a killed filter run must not look complete"
    lait_here(*command[3:])  # the same command: the interrupted run's partial files go
    assert_same_filter_output(out, filter_baseline)


def test_filter_in_multi_processing_mode_killed_then_rerun_equals_an_uninterrupted_run(tmp_path, filter_baseline):
    command, out = filter_command(tmp_path, filter_baseline, "--direct_running_mode", "multi_processing",
                                  "--direct_num_workers", "2")
    # SIGKILL to the driver alone, as `kill -9 PID` would, once its SDK worker processes work for it: they must
    # not live on (run_and_kill waits for the whole group). A worker that is connected to the driver ends as soon
    # as its connection breaks. The kill waits for the connections: a worker still starting would first wait
    # for the dead driver's control service for a minute (Beam's own timeout) before it gave up.
    run_and_kill(command, lambda: (out / "pairs").exists() and beam_workers_of(str(out), connected=True) >= 2,
                 signal.SIGKILL)
    assert not (out / "stats.json").exists(), "a killed filter run must not look complete"
    lait_here(*command[3:])  # the same command: again with SDK worker processes
    assert_same_filter_output(out, filter_baseline)


def beam_workers_of(output: str, connected: bool = False) -> int:
    """How many Beam SDK worker processes run in the session of a command whose arguments name ``output``
    (with ``connected``: how many of them hold an established TCP connection, to their driver)."""
    sessions, workers = set(), []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                session = f.read().rsplit(")", 1)[1].split()[3]  # the fields after the command name
        except (OSError, IndexError):  # not a process, or it ended meanwhile
            continue
        if output.encode() in args:
            sessions.add(session)
        elif b"apache_beam.runners.worker.sdk_worker_main" in args:  # the python, not its sh -c
            workers.append((entry, session))
    mine = [pid for pid, session in workers if session in sessions]
    return sum(has_established_connection(pid) for pid in mine) if connected else len(mine)


def has_established_connection(pid: str) -> bool:
    """Whether process ``pid`` holds a TCP socket in the ESTABLISHED state (state 01 in /proc/net/tcp*)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:  # it ended, or closed a file, meanwhile: ask again at the next poll
        return False
    inodes = {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "01" and fields[9] in inodes:
                    return True
    return False


# --------------------------------------------------------------------------------------- features

SMALL_DETECTOR = {"min_size": 64, "max_size": 96, "channels": [8, 8, 16, 16, 32, 32]}


@pytest.fixture(scope="module")
def features_baseline(tmp_path_factory):
    """Pairs of 24 images, tiny detector weights, and one uninterrupted features run."""
    root = tmp_path_factory.mktemp("features")
    rows = []
    for i in range(24):
        data = encode(make_scene(100 + i, (96, 72))[0], "PNG")
        rows.append({"pair_id": f"p{i}", "image_id": image_id(data), "caption": f"scene {i}", "image_bytes": data})
    schemas.write_table(schemas.to_table(rows, "pairs"), str(root / "run" / "filter" / "pairs" / "part-00000.parquet"),
                        "pairs")
    with open(root / "run" / "filter" / "stats.json", "w") as f:
        json.dump({"stage": "filter", "in": 24, "kept": 24, "rejected": 0, "rejected_by_reason": {}}, f)
    torch.manual_seed(0)
    weights = demo.save(demo.build(SMALL_DETECTOR, CLASS_NAMES), str(root / "demo.safetensors"))
    args = ["--detector", "demo", "--weights", weights, "--num-workers", "0", "--images-per-shard", "2",
            "--batch-size", "2", "--min-boxes", "2", "--max-boxes", "4", "--no-progress"]
    lait_here("features", "--input", str(root / "run" / "filter"), "--output", str(root / "run" / "features"), *args)
    return root, args


def test_features_killed_twice_resumes_by_shard_and_equals_an_uninterrupted_run(tmp_path, features_baseline):
    root, args = features_baseline
    os.makedirs(tmp_path / "run")
    os.symlink(root / "run" / "filter", tmp_path / "run" / "filter")
    out = tmp_path / "run" / "features"
    command = [sys.executable, "-m", "lait", "features", "--input", str(root / "run" / "filter"), "--output", str(out),
               *args]
    shards_done = lambda: len(list((out / "shards").glob("*.json"))) if (out / "shards").exists() else 0
    run_and_kill(command, lambda: shards_done() >= 2, signal.SIGTERM)
    first = shards_done()
    run_and_kill(command, lambda: shards_done() >= first + 2, signal.SIGKILL)
    assert 4 <= shards_done() < 12, "killed midway: some shards complete, not all"
    lait_here(*command[3:])  # the same command
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards_resumed"] >= 2
    got = schemas.read_table(str(out / "regions"), "regions").sort_by("image_id").to_pylist()
    want = schemas.read_table(str(root / "run" / "features" / "regions"), "regions").sort_by("image_id").to_pylist()
    assert [r["image_id"] for r in got] == [r["image_id"] for r in want]
    for a, b in zip(got, want):
        assert a["num_boxes"] == b["num_boxes"]
        np.testing.assert_allclose(np.array(a["features"], np.float32), np.array(b["features"], np.float32), atol=1e-2)
    assert stats["in"] == stats["kept"] + stats["rejected"] == 24
    audit_ok(tmp_path / "run")


# -------------------------------------------------------------------------------------------- train

@pytest.fixture(scope="module")
def train_baseline(tmp_path_factory):
    """Synthetic data, a config, and one uninterrupted `lait train --resume` run."""
    from model.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("train")
    write_synthetic(str(root / "data"), images=64, feature_dim=8, test_images=8, seed=5)
    data = {"regions": str(root / "data" / "regions"), "captions": str(root / "data" / "captions"), "split": "train"}
    config = {
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "dropout": 0.1,
                  "attention_dropout": 0.1, "max_text_len": 16, "max_regions": 8},
        "tokenizer_vocab_size": 100, "log_every": 5, "num_workers": 0, "checkpoint_every": 5,
        "pretrain": [{"name": "stage1", "datasets": [data], "steps": 30, "batch_size": 16, "lr": 1e-3}],
        "finetune": {"name": "finetune", "datasets": [data], "steps": 5, "batch_size": 8, "lr": 1e-3, "negatives": 2},
    }
    path = root / "config.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    lait_here("train", "--config", str(path), "--out-dir", str(root / "full"), "--resume", "--no-progress")
    return root, path


def test_train_killed_twice_resumes_from_its_last_checkpoint_to_the_same_model(tmp_path, train_baseline):
    root, config = train_baseline
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lait", "train", "--config", str(config), "--out-dir", str(out), "--resume",
               "--no-progress"]
    checkpoints = lambda: sorted((out / "checkpoints").glob("stage1-step*.pt")) if (out / "checkpoints").exists() else []
    run_and_kill(command, lambda: len(checkpoints()) >= 1, signal.SIGTERM)
    first = len(checkpoints())
    run_and_kill(command, lambda: len(checkpoints()) > first, signal.SIGKILL)
    assert not (out / "checkpoints" / "final.pt").exists(), "killed midway"
    lait_here(*command[3:])  # the same command
    full = torch.load(root / "full" / "checkpoints" / "final.pt", weights_only=True)["model"]
    resumed = torch.load(out / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full), "the resumed run's model differs from the full run's"
