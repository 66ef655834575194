"""Benchmark of the demo's own parts, each beside a baseline measured in the same process.

1. The site server: requests/s of ``demo.site.SiteServer`` (from memory, HTTP/1.1 keep-alive)
   against the standard library's ``SimpleHTTPRequestHandler`` serving the same files from disk,
   both under ``ThreadingHTTPServer``, fetched by a client in a separate process (8 threads).
   The crawler needs a few hundred images/s; the server must never be the bottleneck.
2. Site generation: seconds to build the default site, against rendering + encoding the same
   number of scenes alone (the floor).
3. The closing steps on a full-size hand-made run folder: planted + audit + report seconds,
   against reading the same Parquet columns with pyarrow alone.

Run: ``PYTHONPATH=. python benchmarks/bench_demo.py [--scenes 1500]``. Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "demo"))

CLIENT = r"""
import http.client, sys, threading, time
host, port, n_threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
paths = sys.stdin.read().split()
chunks = [paths[i::n_threads] for i in range(n_threads)]
errors = []
def worker(chunk):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for p in chunk:
        try:
            conn.request("GET", p)
            r = conn.getresponse(); r.read()
            if r.status != 200: errors.append(r.status)
            if r.getheader("Connection", "").lower() == "close" or r.version == 10:
                conn.close(); conn = http.client.HTTPConnection(host, port, timeout=30)
        except Exception as e:
            errors.append(repr(e)); conn.close(); conn = http.client.HTTPConnection(host, port, timeout=30)
start = time.perf_counter()
ts = [threading.Thread(target=worker, args=(c,)) for c in chunks]
[t.start() for t in ts]; [t.join() for t in ts]
print(len(paths), time.perf_counter() - start, len(errors))
"""


def fetch_rate(url_host: str, port: int, paths: list[str], threads: int = 8) -> tuple[float, int]:
    """Requests/s of a client process fetching ``paths`` (and how many failed)."""
    proc = subprocess.run([sys.executable, "-c", CLIENT, url_host, str(port), str(threads)], input="\n".join(paths),
                          capture_output=True, text=True, check=True)
    n, seconds, errors = proc.stdout.split()
    return int(n) / float(seconds), int(errors)


def bench_server(site, rounds: int) -> None:
    from demo.site import SiteServer

    paths = [p for p in site.resources if p.endswith((".jpg", ".png", ".html"))]
    with tempfile.TemporaryDirectory() as root:
        for path in paths:
            target = os.path.join(root, path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(site.resources[path].body)
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=root)
        ours, base = [], []
        for _ in range(rounds):
            with SiteServer(site) as server:
                ours.append(fetch_rate("127.0.0.1", server._httpd.server_address[1], paths))
            httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            thread = threading.Thread(target=httpd.serve_forever, daemon=True)
            thread.start()
            base.append(fetch_rate("127.0.0.1", httpd.server_address[1], paths))
            httpd.shutdown()
            httpd.server_close()
    med = lambda xs: sorted(x[0] for x in xs)[len(xs) // 2]  # noqa: E731
    print(f"server: {len(paths)} resources, medians of {rounds}: SiteServer {med(ours):,.0f} req/s, "
          f"stdlib static server {med(base):,.0f} req/s, ratio {med(ours) / med(base):.2f}; "
          f"errors {sum(e for _, e in ours)} / {sum(e for _, e in base)}")


def bench_build(scenes: int):
    from demo.scenes import encode, generate_scenes, render
    from demo.site import build_site

    start = time.perf_counter()
    site = build_site(0, scenes)
    built = time.perf_counter() - start
    n_images = sum(1 for r in site.resources.values() if r.content_type.startswith("image/"))
    start = time.perf_counter()
    for scene in generate_scenes(0, n_images, "bench"):
        encode(render(scene))
    floor = time.perf_counter() - start
    print(f"build: {scenes} good scenes, {n_images} images, {len(site.ledger)} ledger items: build_site {built:.2f} s, "
          f"render+encode alone {floor:.2f} s, ratio {built / floor:.2f}")
    return site


def bench_closing(site) -> None:
    import schemas
    from demo import audit, planted, report
    from demo_runfolder import make_run

    with tempfile.TemporaryDirectory() as run_dir:
        make_run(run_dir, site)
        start = time.perf_counter()
        for rel, kind in (("crawl/candidates", "candidates"), ("crawl/rejected", "rejected"), ("filter/pairs", "pairs"),
                          ("filter/rejected", "rejected"), ("features/regions", "regions")):
            schemas.read_table(os.path.join(run_dir, rel), kind)
        floor = time.perf_counter() - start
        timings = {}
        for name, fn in (("planted", lambda: planted.write_planted(run_dir, site.ledger)),
                         ("audit", lambda: audit.audit_run(run_dir)),
                         ("report", lambda: report.write_report(run_dir))):
            start = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - start
        size = os.path.getsize(os.path.join(run_dir, "report.html"))
        total = sum(timings.values())
        print("closing: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
              + f"; total {total:.2f} s vs reading every dataset with pyarrow {floor:.2f} s (ratio {total / floor:.1f}); "
              f"report {size / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    site = bench_build(args.scenes)
    bench_server(site, args.rounds)
    bench_closing(site)


if __name__ == "__main__":
    main()
