"""Scrapy extensions of the LAIT crawl."""
from __future__ import annotations

import json
import os

from scrapy import signals
from scrapy.exceptions import NotConfigured

#: What a progress bar shows, by the Scrapy stats key it comes from.
BAR_COUNTS = {"responses": "response_received_count", "pages": "lait/page/fetched", "images": "lait/image/validated",
              "kept": "lait/out/candidates", "rejected": "lait/out/rejected"}


def bar_counts(get) -> dict[str, int]:
    """The bar's counts from a stats getter (``stats.get_value``, ``dict.get``)."""
    return {name: int(get(key, 0) or 0) for name, key in BAR_COUNTS.items()}


def set_bar(bar, counts: dict[str, int]) -> None:
    """Show ``counts`` on a tqdm bar of responses."""
    bar.n = counts["responses"]
    bar.set_postfix({name: value for name, value in counts.items() if name != "responses"}, refresh=False)
    bar.refresh()


class ProgressBar:
    """A tqdm bar of responses with the running funnel (enabled by ``LAIT_PROGRESS``)."""

    def __init__(self, stats):
        from tqdm import tqdm

        self.stats = stats
        self.bar = tqdm(unit=" responses", desc="crawl", mininterval=0.5)

    @classmethod
    def from_crawler(cls, crawler):
        if not crawler.settings.getbool("LAIT_PROGRESS"):
            raise NotConfigured
        extension = cls(crawler.stats)
        crawler.signals.connect(extension.response_received, signal=signals.response_received)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def response_received(self, *args, **kwargs):
        self.bar.update(1)
        if self.bar.n % 50 == 0:
            self._show_funnel()

    def _show_funnel(self) -> None:
        set_bar(self.bar, {**bar_counts(self.stats.get_value), "responses": self.bar.n})  # the bar counts its own

    def spider_closed(self, *args, **kwargs):
        self._show_funnel()  # the last line shows the whole funnel
        self.bar.close()


class LiveCounts:
    """Writes the bar's counts (``bar_counts``) to the file ``LAIT_LIVE_COUNTS`` every second and at the end.

    With ``--processes N`` the crawl processes run in the background and ``lait crawl``'s own process shows one
    bar of all of them (``crawler.runner``): process 0's bar alone showed the pages and only its share of the
    images, and stopped when process 0 was done while the others still fetched.
    """

    def __init__(self, stats, path: str, interval: float):
        self.stats = stats
        self.path = path
        self.interval = interval
        self.loop = None

    @classmethod
    def from_crawler(cls, crawler):
        path = crawler.settings.get("LAIT_LIVE_COUNTS")
        if not path:
            raise NotConfigured
        extension = cls(crawler.stats, path, crawler.settings.getfloat("LAIT_LIVE_COUNTS_INTERVAL", 1.0))
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self, *args, **kwargs):
        from twisted.internet import task

        self.loop = task.LoopingCall(self.write)
        self.loop.start(self.interval, now=True)

    def spider_closed(self, *args, **kwargs):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.write()

    def write(self) -> None:
        """The counts now, replacing the file whole (its reader never sees half a file); an error is not the crawl's."""
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(bar_counts(self.stats.get_value), handle)
            os.replace(temporary, self.path)
        except OSError:
            pass


def read_live_counts(paths: list[str]) -> dict[str, int]:
    """The sum of the counts that ``LiveCounts`` wrote to ``paths`` (a file not written yet counts 0)."""
    total = dict.fromkeys(BAR_COUNTS, 0)
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                counts = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(counts, dict):
            for name in total:
                value = counts.get(name)
                total[name] += value if isinstance(value, int) else 0
    return total
