"""Run the LAIT spider from Python or the ``lait`` CLI, each crawl in a child process.

Twisted's reactor starts once per process, so ``run_crawl`` starts a fresh interpreter
(``python -m crawler.runner``) for every crawl; a caller may crawl as often as it likes.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

from crawler import images, output

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def crawl_settings(out_dir: str, *, allow_private_networks: bool = False, min_side: int = images.DEFAULT_MIN_SIDE,
                   max_aspect: float = images.DEFAULT_MAX_ASPECT, jobdir: str | None = None, progress: bool = False,
                   log_level: str = "WARNING", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Scrapy settings of one crawl, on top of ``crawler.settings``."""
    settings = {
        "LAIT_OUT": os.path.abspath(out_dir),
        "LAIT_ALLOW_PRIVATE_NETWORKS": allow_private_networks,
        "LAIT_MIN_SIDE": min_side,
        "LAIT_MAX_ASPECT": max_aspect,
        "LAIT_PROGRESS": progress,
        "LOG_LEVEL": log_level,
    }
    if jobdir:
        settings["LAIT_JOBDIR"] = os.path.abspath(jobdir)
    settings.update(overrides or {})
    return settings


def crawl_in_this_process(urls: list[str], settings: dict[str, Any], allowed_domains: list[str] | None = None,
                          max_pages: int = 0, depth: int = 0) -> None:
    """Run one crawl in this process (once per process: it starts the Twisted reactor)."""
    from scrapy.crawler import CrawlerProcess
    from scrapy.settings import Settings

    from crawler.spiders.lait import LaitSpider

    scrapy_settings = Settings()
    scrapy_settings.setmodule("crawler.settings", priority="project")
    scrapy_settings.update(settings, priority="cmdline")
    process = CrawlerProcess(scrapy_settings)
    process.crawl(LaitSpider, urls=urls, allowed_domains=allowed_domains or None, max_pages=max_pages, depth=depth)
    process.start()


def run_crawl(urls: list[str], out_dir: str, *, allowed_domains: list[str] | None = None, max_pages: int = 0,
              depth: int = 0, **settings_kwargs) -> dict[str, Any]:
    """Crawl ``urls`` into ``out_dir`` in a child process; return the run's stats.json."""
    settings = crawl_settings(out_dir, **settings_kwargs)
    job = {"urls": list(urls), "settings": settings, "allowed_domains": allowed_domains or None,
           "max_pages": max_pages, "depth": depth}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-m", "crawler.runner", json.dumps(job)], env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the crawl process exited with status {result.returncode}")
    with open(os.path.join(out_dir, output.STATS_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> int:
    """Child-process entry point: one JSON argument describing the crawl."""
    job = json.loads((argv if argv is not None else sys.argv[1:])[0])
    crawl_in_this_process(job["urls"], job["settings"], job.get("allowed_domains"), job.get("max_pages", 0),
                          job.get("depth", 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
