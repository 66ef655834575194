"""Scrapy settings for the LAIT crawl: polite defaults on, nothing that reaches for the network
beyond the pages being crawled."""

BOT_NAME = "lait"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"

# Identify ourselves, with a contact URL, and obey robots.txt.
USER_AGENT = "LAIT/0.1 (+https://github.com/lait-project/lait; image-text research crawler)"
ROBOTSTXT_OBEY = True

# Politeness: adaptive delays, a few requests per domain at a time.
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_TARGET_CONCURRENCY = 4.0
CONCURRENT_REQUESTS = 32
CONCURRENT_REQUESTS_PER_DOMAIN = 8
DOWNLOAD_TIMEOUT = 30

# Offline hygiene: cookies make tldextract fetch the public-suffix list; Scrapy 2.19's
# remote-control server writes a job file under the home folder.
COOKIES_ENABLED = False
REMOTE_CONTROL_ENABLED = False
TELNETCONSOLE_ENABLED = False

REQUEST_FINGERPRINTER_IMPLEMENTATION = "2.7"
FEED_EXPORT_ENCODING = "utf-8"
