"""The crawl stage: a Scrapy project and a WARC reader that collect image + ALT/TITLE candidates."""
