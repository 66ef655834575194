"""Item pipeline: candidate and rejected rows into the run folder's Parquet shards and stats.json."""
from __future__ import annotations

import json
import logging

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
        # Several crawl processes share the folder: each writes its own shards and a partial stats file.
        self.shard_prefix = crawler.settings.get("LAIT_SHARD_PREFIX") or "part"
        self.stats_part = crawler.settings.get("LAIT_STATS_PART")
        self.output: output.CrawlOutput | None = None

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
        if isinstance(item, CandidateItem):
            if self.output.add_candidate(item.row):
                stats.inc_value("lait/out/candidates")
            else:
                stats.inc_value("lait/out/already_written")
        elif isinstance(item, RejectedItem):
            if self.output.add_rejected(item.row):
                stats.inc_value("lait/out/rejected")
                stats.inc_value(f"lait/out/rejected/{item.row['reason']}")
            else:
                stats.inc_value("lait/out/already_written")
        return item

    def close_spider(self) -> None:
        """Flush the last shards and write stats.json (or this process's partial stats)."""
        self.output.close()
        scrapy_stats = self.crawler.stats.get_stats()
        lait = {k: v for k, v in scrapy_stats.items() if k.startswith("lait/")}
        rest = {k: v for k, v in scrapy_stats.items() if not k.startswith("lait/")}
        if self.stats_part:
            with open(self.stats_part, "w", encoding="utf-8") as handle:
                json.dump(dict(lait, scrapy=rest), handle, default=str)
            return
        stats = output.write_stats(self.out_dir, dict(lait, source="crawl", scrapy=rest))
        logger.info("crawl books: in %d = kept %d + rejected %d", stats["in"], stats["kept"], stats["rejected"])
