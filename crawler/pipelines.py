"""Item pipeline: candidate and rejected rows into the run folder's Parquet shards and stats.json."""
from __future__ import annotations

import json
import logging

from scrapy.utils.defer import deferred_from_coro

from crawler import output
from crawler.items import CandidateItem, RejectedItem

logger = logging.getLogger(__name__)


class ParquetWriterPipeline:
    """Buffers rows into complete Parquet shards under ``LAIT_OUT``; writes ``stats.json`` on close."""

    def __init__(self, crawler):
        self.crawler = crawler
        self.out_dir = crawler.settings.get("LAIT_OUT")
        if not self.out_dir:
            raise ValueError("set LAIT_OUT to the crawl's output folder (-s LAIT_OUT=DIR)")
        self.rows_per_shard = crawler.settings.getint("LAIT_ROWS_PER_SHARD", 500)
        # Several crawl processes share the folder: each writes its own shards, a partial stats file and
        # its outcomes; `lait crawl` reconciles the folder once they have all finished.
        self.shard_prefix = crawler.settings.get("LAIT_SHARD_PREFIX") or "part"
        self.stats_part = crawler.settings.get("LAIT_STATS_PART")
        self.outcomes_part = crawler.settings.get("LAIT_OUTCOMES_PART")
        self.output: output.CrawlOutput | None = None
        self.failed: str | None = None  # why the output could not be written; the crawl process then fails
        self.closing = False

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def open_spider(self) -> None:
        self.output = output.CrawlOutput(self.out_dir, rows_per_shard=self.rows_per_shard, prefix=self.shard_prefix)
        if self.output.resumed_rows:
            logger.info("%s already holds %d rows; they will not be written again", self.out_dir,
                        self.output.resumed_rows)

    def process_item(self, item):
        """Buffer one candidate or rejected row (rows already on disk are skipped)."""
        stats = self.crawler.stats
        if self.failed:
            stats.inc_value("lait/out/not_written")
            return item
        try:
            if isinstance(item, CandidateItem):
                written = self.output.add_candidate(item.row)
                if written == output.CANDIDATES:
                    stats.inc_value("lait/out/candidates")
                elif written == output.REJECTED:  # a repeat of a candidate of this run
                    stats.inc_value("lait/out/rejected")
                    stats.inc_value(f"lait/out/rejected/{output.DUPLICATE}")
                else:
                    stats.inc_value("lait/out/already_written")
            elif isinstance(item, RejectedItem):
                if self.output.add_rejected(item.row):
                    stats.inc_value("lait/out/rejected")
                    stats.inc_value(f"lait/out/rejected/{item.row['reason']}")
                elif self.output.already_kept(item.row):  # an earlier run kept this candidate
                    stats.inc_value("lait/out/already_kept")
                else:
                    stats.inc_value("lait/out/already_written")
        except Exception as exc:  # noqa: BLE001 - a full disk, a folder gone: stop, and fail the crawl process
            self._write_failed(exc)
        return item

    def _write_failed(self, exc: Exception) -> None:
        """Remember the failure (the crawl process exits non-zero) and stop crawling for nothing."""
        self.failed = f"{type(exc).__name__}: {exc}"[:500]
        logger.error("cannot write the crawl output to %s: %s", self.out_dir, self.failed)
        self.crawler.stats.set_value("lait/out/write_failed", self.failed)
        if not self.closing and self.crawler.engine is not None:
            deferred_from_coro(self.crawler.engine.close_spider_async(reason="write_failed"))

    def close_spider(self) -> None:
        """Flush the last shards, reconcile the folder and write stats.json (or this process's outcomes and
        partial stats)."""
        self.closing = True
        # Candidates whose image will never come still leave as rejects (see LaitSpider.unfetched_rejects).
        for row in getattr(self.crawler.spider, "unfetched_rejects", list)():
            self.process_item(RejectedItem(row))
        if self.failed:
            return
        try:
            self._finish()
        except Exception as exc:  # noqa: BLE001 - reported by the crawl process's exit status
            self._write_failed(exc)

    def _finish(self) -> None:
        self.output.close()
        outcomes = self.output.outcomes
        outcomes.fetched_pages.update(getattr(self.crawler.spider, "fetched_pages", ()))
        scrapy_stats = self.crawler.stats.get_stats()
        lait = {k: v for k, v in scrapy_stats.items() if k.startswith("lait/")}
        rest = {k: v for k, v in scrapy_stats.items() if not k.startswith("lait/")}
        spider = self.crawler.spider
        # the image rules the spider applied, as lait filter's stats.json records its own options
        rules = (output.image_settings(spider.min_side, spider.max_aspect, spider.formats, spider.max_pixels)
                 if hasattr(spider, "max_pixels") else None)
        if self.stats_part:  # one of `lait crawl --processes N`: the runner merges the parts (rules included)
            if self.outcomes_part:
                outcomes.save(self.outcomes_part)
            with open(self.stats_part, "w", encoding="utf-8") as handle:
                json.dump(dict(lait, scrapy=rest, settings=rules), handle, default=str)
            return
        settled = output.settle(self.out_dir, outcomes)
        stats = output.write_stats(self.out_dir, dict(lait, **settled, source="crawl", scrapy=rest), settings=rules)
        logger.info("crawl books: in %d = kept %d + rejected %d", stats["in"], stats["kept"], stats["rejected"])
