"""Soak: the real `lait crawl` against a hostile local site, round after round, bounded in count and time.

    python benchmarks/soak.py                          # 3 rounds, 200 good pages, the full-size hostile cases
    python benchmarks/soak.py --rounds 1 --good-pages 50 --max-seconds 120

The site (tests/hardening/hostile_site.py, 127.0.0.1, port 0) serves trickling responses,
connection resets, endless redirect chains, gzip bombs (page and image), a 50 MB image, an image
claiming 200,000 x 200,000 pixels, ~10 MB of nested tags, invalid UTF-8, `file:` links, malformed
images, and ``--good-pages`` good pages (its robots.txt answers: one that never does would disallow the
whole host, RFC 9309, and the crawl would fetch nothing). Each round is checked:

* crashes: a non-zero exit, or an ERROR log line;
* lost records: good pairs missing from candidates/, hostile references or pages without their
  reject row, ``in != kept + rejected``, or a failing ``lait audit``;
* peak memory (RSS of the crawl processes) and wall time.

Baseline, in the same process: the same crawl of the good pages alone (a benign site, same
settings); the ratios say what the hostile cases cost. Exit status 1 if any round crashed or lost
a record, or a round ran past ``--max-seconds``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import schemas  # noqa: E402
from tests.hardening.hostile_site import HOSTILE_PAGES, HOSTILE_REFERENCES, HostileSite, run_with_peak_rss  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=ROOT)
SETTINGS = {"AUTOTHROTTLE_ENABLED": False, "DOWNLOAD_TIMEOUT": 2, "RETRY_ENABLED": False,
            "LAIT_IMAGE_MAXSIZE": 4 * 2**20, "LAIT_PAGE_MAXSIZE": 16 * 2**20}


def _rows(path: str, kind: str) -> list[dict]:
    return schemas.read_table(path, kind).to_pylist() if os.path.isdir(path) and schemas.list_parquet_files(path) else []


def crawl_once(site: HostileSite, run_dir: str, max_seconds: float) -> dict:
    """One crawl of ``site`` into ``run_dir``; returns its figures and findings."""
    out = os.path.join(run_dir, "crawl")
    command = [sys.executable, "-m", "lait", "crawl", site.url + "/", "--out", out, "--allow-private-networks",
               "--min-side", "64", "--no-progress"]
    for key, value in SETTINGS.items():
        command += ["-s", f"{key}={json.dumps(value)}"]
    started = time.monotonic()
    try:
        result, peak_mib = run_with_peak_rss(command, ENV, timeout=max_seconds)
    except subprocess.TimeoutExpired:
        return {"seconds": max_seconds, "peak_mib": float("nan"), "crashes": ["ran past --max-seconds"], "lost": []}
    seconds = time.monotonic() - started
    crashes = [] if result.returncode == 0 else [f"exit status {result.returncode}"]
    crashes += [line for line in result.stderr.splitlines() if "] ERROR:" in line]
    candidates = _rows(os.path.join(out, "candidates"), "candidates")
    rejected = _rows(os.path.join(out, "rejected"), "rejected")
    kept = {(c["page_url"].replace(site.url, ""), c["image_url"].replace(site.url, "")) for c in candidates}
    lost = [f"good pair missing: {pair}" for pair in site.good_image_paths() if pair not in kept]
    if site.hostile:
        by_image = {(r["image_url"] or "").replace(site.url, ""): r["reason"] for r in rejected if r["image_url"]}
        by_page = {r["page_url"].replace(site.url, ""): r["reason"] for r in rejected if not r["image_url"]}
        lost += [f"no reject for image {k} (got {by_image.get(k)})" for k, ok in HOSTILE_REFERENCES.items()
                 if by_image.get(k) not in ok]
        lost += [f"no reject for page {k} (got {by_page.get(k)})" for k, ok in HOSTILE_PAGES.items()
                 if by_page.get(k) not in ok]
    try:
        with open(os.path.join(out, "stats.json"), encoding="utf-8") as handle:
            stats = json.load(handle)
        if stats["in"] != stats["kept"] + stats["rejected"] or stats["kept"] != len(candidates):
            lost.append(f"books: in {stats['in']} kept {stats['kept']} rejected {stats['rejected']}")
    except (OSError, ValueError, KeyError) as exc:
        lost.append(f"stats.json unreadable: {exc}")
    audit = subprocess.run([sys.executable, "-m", "lait", "audit", run_dir], env=ENV, capture_output=True, text=True)
    if audit.returncode != 0:
        lost.append("lait audit failed: " + audit.stdout[-500:])
    return {"seconds": round(seconds, 2), "peak_mib": round(peak_mib, 1), "crashes": crashes, "lost": lost,
            "kept": len(candidates), "rejected": len(rejected)}


def main(argv: list[str] | None = None) -> int:
    """Run the soak rounds and the benign baseline; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="hostile crawls to run (default 3)")
    parser.add_argument("--good-pages", type=int, default=200, help="good pages on the site (default 200)")
    parser.add_argument("--big-image-mb", type=int, default=50, help="size of the big image (default 50; over 4)")
    parser.add_argument("--bomb-mb", type=int, default=50, help="decompressed size of the gzip bombs (default 50; over 16)")
    parser.add_argument("--nested-mb", type=float, default=10.0, help="size of the nested-tags page (default 10)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time limit per crawl (default 300)")
    args = parser.parse_args(argv)
    # the big image and the bombs are hostile only past the crawl's limits: smaller, they are fetched and fail to
    # decode (image_decode_error, or a page read whole), and every round would count them as lost records
    for option, megabytes, limit in (("--big-image-mb", args.big_image_mb, "LAIT_IMAGE_MAXSIZE"),
                                     ("--bomb-mb", args.bomb_mb, "LAIT_PAGE_MAXSIZE")):  # the larger limit
        if megabytes * 2**20 <= SETTINGS[limit]:
            parser.error(f"{option} {megabytes}: must exceed the soak's {limit} ({SETTINGS[limit] // 2**20} MiB), "
                         f"or nothing rejects it as too_large")
    sizes = dict(good_pages=args.good_pages, big_image_mb=args.big_image_mb, bomb_mb=args.bomb_mb,
                 nested_mb=args.nested_mb)
    failed = False
    with tempfile.TemporaryDirectory(prefix="lait-soak-") as tmp:
        with HostileSite(**sizes, hostile=False) as site:
            baseline = crawl_once(site, os.path.join(tmp, "baseline"), args.max_seconds)
        print(f"baseline (good pages only): {baseline['seconds']} s, peak {baseline['peak_mib']} MiB, "
              f"kept {baseline['kept']}, crashes {len(baseline['crashes'])}, lost {len(baseline['lost'])}")
        rounds = []
        for index in range(args.rounds):
            with HostileSite(**sizes) as site:
                figures = crawl_once(site, os.path.join(tmp, f"round{index}"), args.max_seconds)
            rounds.append(figures)
            print(f"round {index}: {figures['seconds']} s, peak {figures['peak_mib']} MiB, kept {figures.get('kept')}, "
                  f"rejected {figures.get('rejected')}, crashes {len(figures['crashes'])}, lost {len(figures['lost'])}")
            for line in figures["crashes"] + figures["lost"]:
                print("   ", line[:300])
            failed |= bool(figures["crashes"] or figures["lost"])
    worst_time = max(r["seconds"] for r in rounds)
    worst_peak = max(r["peak_mib"] for r in rounds)
    print(f"hostile/baseline: time {worst_time / max(baseline['seconds'], 1e-9):.2f}x, "
          f"peak memory {worst_peak / max(baseline['peak_mib'], 1e-9):.2f}x "
          f"(worst round {worst_time} s, {worst_peak} MiB; baseline {baseline['seconds']} s, {baseline['peak_mib']} MiB)")
    print(f"crashes: {sum(len(r['crashes']) for r in rounds)}, lost records: {sum(len(r['lost']) for r in rounds)}")
    return 1 if failed or baseline["crashes"] or baseline["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
