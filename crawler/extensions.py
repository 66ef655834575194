"""Scrapy extensions of the LAIT crawl."""
from __future__ import annotations

from scrapy import signals
from scrapy.exceptions import NotConfigured


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
            get = self.stats.get_value
            self.bar.set_postfix(pages=get("lait/page/fetched", 0), images=get("lait/image/validated", 0),
                                 kept=get("lait/out/candidates", 0), rejected=get("lait/out/rejected", 0),
                                 refresh=False)

    def spider_closed(self, *args, **kwargs):
        self.bar.close()
