"""Security review checks: time and size limits on network reads, no path escaping its folder,
`torch.load` only with weights_only=True, no pickle of untrusted input."""
import os
import re
import time

import pytest

import schemas
from crawler import netguard
from crawler.fetch import FetchError, PoliteFetcher
from crawler.store import ImageStore
from model.captions_import import CaptionRecord, import_captions
from tests.hardening.hostile_site import HostileSite, jpeg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def site():
    with HostileSite(good_pages=1, big_image_mb=20, nested_mb=0.01, bomb_mb=20) as hostile:
        yield hostile


@pytest.mark.parametrize("path, reason", [("/img/trickle.jpg", "timeout"), ("/img/big.jpg", "too_large"),
                                          ("/img/gzip-bomb.jpg", "too_large"), ("/img/chain.jpg", "too_many_redirects")])
def test_the_warc_downloader_bounds_time_and_size(site, path, reason):
    fetcher = PoliteFetcher(allow_private_networks=True, timeout=1.0, max_bytes=1 << 20, obey_robots=False, delay=0)
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(site.url + path)
    assert caught.value.reason == reason
    assert time.monotonic() - started < 5  # trickling bytes do not reset the clock


def test_the_warc_downloader_refuses_loopback_without_the_private_network_switch(site):
    fetcher = PoliteFetcher(allow_private_networks=False, timeout=1.0, obey_robots=False, delay=0)
    with pytest.raises(netguard.RefusedURL) as caught:
        fetcher.fetch(site.url + "/img/good0.jpg")
    assert caught.value.reason == "private_network_refused"
    with pytest.raises(netguard.RefusedURL):
        fetcher.fetch("file:///etc/passwd")


def test_image_store_ids_cannot_name_a_file_outside_its_spill_folder(tmp_path):
    store = ImageStore(memory_bytes=0, spill_dir=str(tmp_path / "spill"))
    os.makedirs(tmp_path / "spill")
    hostile = "../../escaped"
    store.put(hostile, b"bytes")
    assert store.get(hostile) == b"bytes"
    assert not (tmp_path / "escaped").exists() and not os.path.exists(os.path.join(str(tmp_path), "..", "escaped"))
    spilled = [os.path.join(r, f) for r, _, files in os.walk(tmp_path / "spill") for f in files]
    assert len(spilled) == 1 and all(p.startswith(str(tmp_path / "spill")) for p in spilled)
    store.close()


def test_caption_files_cannot_pull_in_files_outside_the_images_folder(tmp_path):
    images = tmp_path / "images"
    os.makedirs(images)
    (images / "ok.jpg").write_bytes(jpeg(64, 64, seed=1))
    (tmp_path / "secret.jpg").write_bytes(jpeg(64, 64, seed=2))  # a real image, just outside the folder
    os.symlink(tmp_path / "secret.jpg", images / "link.jpg")
    records = [CaptionRecord("r1", "ok.jpg", "a fine picture", "train"),
               CaptionRecord("r2", "../secret.jpg", "escape by dots", "train"),
               CaptionRecord("r3", str(tmp_path / "secret.jpg"), "escape by absolute path", "train"),
               CaptionRecord("r4", "link.jpg", "escape by a link", "train")]
    stats = import_captions(records, str(images), str(tmp_path / "out"))
    assert stats["in"] == 4 and stats["kept"] == 1 and stats["rejected"] == 3
    rejected = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()
    assert sorted(r["reason"] for r in rejected) == ["image_path_outside"] * 3
    pairs = schemas.read_table(str(tmp_path / "out" / "pairs"), "pairs").to_pylist()
    assert [p["image_url"].endswith("/ok.jpg") for p in pairs] == [True]


def _sources():
    for folder in ("crawler", "filters", "pipeline", "model", "schemas", "lait", "demo"):
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as handle:
                        yield os.path.relpath(path, ROOT), handle.read()


def test_every_torch_load_passes_weights_only_true():
    calls = [(path, m.group(0)) for path, text in _sources() for m in re.finditer(r"torch\.load\([^)]*\)", text)]
    assert calls, "the scan must find the loaders"
    assert [c for c in calls if "weights_only=True" not in c[1]] == []


def test_pickle_is_only_read_by_the_allow_list_unpickler_and_the_crawl_job_state():
    readers = {path for path, text in _sources() if re.search(r"pickle\.loads?\(|\.Unpickler\b|numpy\.load\(.*allow_pickle=True", text)}
    # model/detectors/weights.py: numpy arrays only (UnsafePickleError otherwise). The spider reads
    # back the job state it wrote itself into the job folder (trusted local state, like Scrapy's JOBDIR).
    assert readers <= {"model/detectors/weights.py", "crawler/spiders/lait.py"}, readers


def test_connect_time_resolution_refuses_private_addresses_even_past_the_middleware(site, tmp_path):
    """DNS rebinding: the middleware's lookup said public, the connection's lookup says 127.0.0.1.

    Simulated by switching the middleware off: only the guarded resolver stands between the crawl
    and loopback. The page must be refused, not fetched.
    """
    import json
    import subprocess
    import sys

    out = tmp_path / "crawl"
    url = site.url.replace("127.0.0.1", "localhost") + "/good/0.html"
    command = [sys.executable, "-m", "lait", "crawl", url, "--out", str(out), "--no-progress",
               "-s", 'DOWNLOADER_MIDDLEWARES={"crawler.middlewares.NetworkGuardMiddleware": null}',
               "-s", "ROBOTSTXT_OBEY=false", "-s", "RETRY_ENABLED=false", "-s", "DOWNLOAD_TIMEOUT=5"]
    result = subprocess.run(command, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert [(r["page_url"], r["reason"]) for r in rejected] == [(url, "private_network_refused")]
    assert json.loads((out / "stats.json").read_text())["kept"] == 0


def test_guarded_resolver_check_follows_the_guard_settings():
    from crawler.resolver import GuardedResolver, PrivateAddressError

    resolver = GuardedResolver.__new__(GuardedResolver)  # the check only; no reactor needed
    resolver.allow_private_networks, resolver.networks = False, ()
    assert resolver.check("93.184.216.34", "example.test") == "93.184.216.34"
    for address in ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::ffff:127.0.0.1", "0.0.0.0"):
        with pytest.raises(PrivateAddressError):
            resolver.check(address, "rebind.test")
    import ipaddress
    resolver.networks = (ipaddress.ip_network("127.0.0.1/32"),)
    assert resolver.check("127.0.0.1", "local.test") == "127.0.0.1"
    with pytest.raises(PrivateAddressError):
        resolver.check("10.0.0.5", "rebind.test")
