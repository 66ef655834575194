"""Crawl throughput: `lait crawl` against a bare Scrapy fetcher and img2dataset, same URLs, same run.

    python benchmarks/bench_crawl.py                 # 1,000 pages, 3,000 distinct 640x480 JPEGs, 1 round
    python benchmarks/bench_crawl.py --rounds 3      # medians of 3

A generated site (every page has 3 photo-like JPEGs with alt text and a caption) is served by
Debian's nginx (one worker) on 127.0.0.1. Each client runs as its own process:

* ``lait``: ``lait crawl`` from the index page: pages parsed, candidates extracted, every image
  fetched, decoded (JPEG draft) and hashed, Parquet written. AutoThrottle is off (the server is
  local; on the web it stays on) and per-domain concurrency is raised to the global one.
* ``lait-2proc``: the same with ``--processes 2`` (pages in process 0, images shared by both).
* ``scrapy-bare``: a Scrapy spider that only fetches the image URLs (the framework's ceiling).
* ``img2dataset``: img2dataset's default image settings (decode, resize, re-encode), 2 processes,
  500 URLs per shard so both work; in its own venv (benchmarks/.venv-img2dataset).

Steady rate = images / (first request to last response); wall rate includes process start-up.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
I2D_VENV = os.path.join(HERE, ".venv-img2dataset")


def generate_site(site_dir: str, pages: int, images_per_page: int = 3, seed: int = 0) -> None:
    """Pages chained by links and distinct photo-like 640x480 JPEGs (smooth noise + gradient, q85)."""
    import numpy as np
    from PIL import Image

    marker = os.path.join(site_dir, f".complete-{pages}x{images_per_page}")
    if os.path.exists(marker):
        return
    shutil.rmtree(site_dir, ignore_errors=True)
    os.makedirs(os.path.join(site_dir, "img"))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for n in range(pages * images_per_page):
        coarse = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.BICUBIC), dtype=np.float32)
        base += (xx[..., None] * rng.uniform(-0.1, 0.1) + yy[..., None] * rng.uniform(-0.1, 0.1))
        base += rng.normal(0, 9, base.shape)
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(
            os.path.join(site_dir, "img", f"{n:06d}.jpg"), "JPEG", quality=85)
    words = ["red", "boat", "harbour", "morning", "dog", "running", "beach", "old", "city", "street", "market", "tree"]
    for p in range(pages):
        links = "".join(f'<a href="page-{q:05d}.html">page {q}</a> ' for q in (p + 1, 2 * p + 1, 2 * p + 2) if q < pages)
        figures = "".join(
            f'<figure><img src="img/{n:06d}.jpg" alt="A {words[n % 12]} {words[(n * 7) % 12]} near the {words[(n * 5) % 12]}" '
            f'title="Photo {n}"><figcaption>Photo {n} of page {p}</figcaption></figure>'
            for n in range(p * images_per_page, (p + 1) * images_per_page))
        html = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Page {p}</title></head>'
                f"<body><h1>Gallery page {p}</h1><p>{' '.join(words)} " * 3 + f"</p>{figures}{links}</body></html>")
        with open(os.path.join(site_dir, f"page-{p:05d}.html"), "w", encoding="utf-8") as handle:
            handle.write(html)
    with open(os.path.join(site_dir, "index.html"), "w", encoding="utf-8") as handle:
        handle.write('<html lang="en"><body><a href="page-00000.html">start</a></body></html>')
    with open(os.path.join(site_dir, "robots.txt"), "w") as handle:
        handle.write("User-agent: *\nAllow: /\n")
    open(marker, "w").close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_nginx(site_dir: str, work: str) -> tuple[subprocess.Popen, int]:
    """Debian's nginx, one worker, serving the site on a free loopback port."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    os.makedirs(work, exist_ok=True)
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as handle:
        handle.write(f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  types {{ text/html html; image/jpeg jpg; text/plain txt; }}
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  server {{ listen 127.0.0.1:{port}; root {site_dir}; }} }}
""")
    process = subprocess.Popen([nginx, "-c", conf, "-p", work])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"nginx did not start; see {work}/error.log")


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """Run a command; its wall seconds and CPU seconds (user+sys of its process tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_lait(base: str, out: str, extra: list[str]) -> dict:
    """One `lait crawl` of the site; its figures."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "lait", "crawl", f"{base}/index.html", "--out", out, "--allow-private-networks",
               "--no-progress", "-s", "AUTOTHROTTLE_ENABLED=false", "-s", "CONCURRENT_REQUESTS_PER_DOMAIN=32",
               "-s", "LOG_LEVEL=WARNING", *extra]
    wall, cpu = timed(command, env)
    with open(os.path.join(out, "stats.json")) as handle:
        stats = json.load(handle)
    steady = stats["lait/run/last_response"] - stats["lait/run/first_request"]
    return {"images": stats.get("lait/image/validated", 0), "pages": stats.get("lait/page/fetched", 0),
            "kept": stats["kept"], "wall_s": wall, "steady_s": steady, "cpu_s": cpu}


BARE_SPIDER = '''
import sys, time, json, scrapy
from scrapy.crawler import CrawlerProcess
urls = open(sys.argv[1]).read().split()
marks = {}
class Bare(scrapy.Spider):
    name = "bare"
    async def start(self):
        marks["first"] = time.time()
        for url in urls:
            yield scrapy.Request(url, callback=self.parse, dont_filter=True)
    def parse(self, response):
        marks["last"] = time.time()
        marks["n"] = marks.get("n", 0) + 1
process = CrawlerProcess({"LOG_LEVEL": "WARNING", "ROBOTSTXT_OBEY": False, "COOKIES_ENABLED": False,
    "CONCURRENT_REQUESTS": 32, "CONCURRENT_REQUESTS_PER_DOMAIN": 32, "TELNETCONSOLE_ENABLED": False,
    "REMOTE_CONTROL_ENABLED": False, "DOWNLOAD_MAXSIZE": 0})
process.crawl(Bare)
process.start()
json.dump(marks, open(sys.argv[2], "w"))
'''


def run_bare(url_file: str, out: str) -> dict:
    """The bare Scrapy fetcher over the image URLs; its figures."""
    os.makedirs(out, exist_ok=True)
    script = os.path.join(out, "bare_spider.py")
    with open(script, "w") as handle:
        handle.write(BARE_SPIDER)
    marks_file = os.path.join(out, "marks.json")
    wall, cpu = timed([sys.executable, script, url_file, marks_file], dict(os.environ))
    with open(marks_file) as handle:
        marks = json.load(handle)
    return {"images": marks["n"], "pages": 0, "wall_s": wall, "steady_s": marks["last"] - marks["first"], "cpu_s": cpu}


def run_img2dataset(url_file: str, out: str) -> dict | None:
    """img2dataset with its default image settings, in its own venv; its figures (None if absent)."""
    binary = os.path.join(I2D_VENV, "bin", "img2dataset")
    if not os.path.exists(binary):
        print(f"img2dataset not installed in {I2D_VENV}; skipping it", file=sys.stderr)
        return None
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"  # no update check over the network on import
    wall, cpu = timed([binary, "--url_list", url_file, "--input_format", "txt", "--output_folder", out,
                       "--processes_count", "2", "--number_sample_per_shard", "500"], env)
    shards = [json.load(open(p)) for p in glob.glob(os.path.join(out, "*_stats.json"))]
    successes = sum(s["successes"] for s in shards)
    steady = max(s["end_time"] for s in shards) - min(s["start_time"] for s in shards)
    return {"images": successes, "pages": 0, "wall_s": wall, "steady_s": steady, "cpu_s": cpu}


def main(argv=None) -> int:
    """Make the site, serve it, run every client for each round, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all clients; medians are reported")
    parser.add_argument("--work", default=os.path.join(HERE, "out", "crawl"))
    parser.add_argument("--clients", default="lait,lait-2proc,scrapy-bare,img2dataset")
    parser.add_argument("--lait-args", default="", help="extra `lait crawl` arguments, space-separated")
    args = parser.parse_args(argv)
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        parser.error("the benchmark serves its site with nginx, which is not installed (Debian: apt-get install "
                     "nginx-light)")
    site = os.path.join(args.work, "site")
    t0 = time.perf_counter()
    generate_site(site, args.pages)
    print(f"site: {args.pages} pages, {args.pages * 3} images ({time.perf_counter() - t0:.1f} s to make or check)")
    nginx, port = start_nginx(site, os.path.join(args.work, "nginx"))
    base = f"http://127.0.0.1:{port}"
    url_file = os.path.join(args.work, "urls.txt")
    with open(url_file, "w") as handle:
        handle.write("\n".join(f"{base}/img/{n:06d}.jpg" for n in range(args.pages * 3)) + "\n")
    clients = args.clients.split(",")
    results: dict[str, list[dict]] = {c: [] for c in clients}
    try:
        for round_ in range(args.rounds):
            for client in clients:
                out = os.path.join(args.work, f"{client}-out")
                if client == "lait":
                    result = run_lait(base, out, args.lait_args.split())
                elif client == "lait-2proc":
                    result = run_lait(base, out, ["--processes", "2", *args.lait_args.split()])
                elif client == "scrapy-bare":
                    result = run_bare(url_file, out)
                else:
                    result = run_img2dataset(url_file, out)
                if result:
                    results[client].append(result)
                    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
                    print(f"round {round_ + 1} {client:12s} {json.dumps({k: round(v, 2) for k, v in result.items()})}"
                          f" load1={load:.1f}")
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)

    def median(client, key):
        return statistics.median(r[key] for r in results[client])

    print(f"\n{'client':14s} {'images':>7s} {'pages':>6s} {'steady img/s':>13s} {'wall img/s':>11s} "
          f"{'pages/s':>8s} {'CPU s':>7s}")
    rates = {}
    for client, runs in results.items():
        if not runs:
            continue
        images = median(client, "images")
        steady = statistics.median(r["images"] / r["steady_s"] for r in runs)
        wall = statistics.median(r["images"] / r["wall_s"] for r in runs)
        pages = statistics.median(r["pages"] / r["steady_s"] for r in runs)
        rates[client] = steady
        print(f"{client:14s} {images:7.0f} {median(client, 'pages'):6.0f} {steady:13.0f} {wall:11.0f} {pages:8.0f} "
              f"{median(client, 'cpu_s'):7.1f}")
    for mine in ("lait", "lait-2proc"):
        for other in ("img2dataset", "scrapy-bare"):
            if mine in rates and other in rates:
                print(f"{mine} validated images/s over {other} steady images/s: {rates[mine] / rates[other]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
