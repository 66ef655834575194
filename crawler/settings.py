"""Scrapy settings for the LAIT crawl: polite defaults on, nothing that reaches for the network
beyond the pages being crawled."""

BOT_NAME = "lait"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"

# Identify ourselves, with a contact URL, and obey robots.txt (RFC 9309: a robots.txt that answers 5xx
# or cannot be reached disallows its host; crawler.middlewares.RobotsTxtMiddleware).
USER_AGENT = "LAIT/0.1 (+https://github.com/lait-project/lait; image-text research crawler)"
ROBOTSTXT_OBEY = True
# Seconds after which a host whose robots.txt was unavailable is asked for it again (its requests in between
# are rejected): a long crawl does not lose a host to a short outage.
LAIT_ROBOTS_RETRY_AFTER = 300
# A robots.txt's Crawl-delay (for our user agent) is the least delay between two requests to its host, capped at
# this many seconds (crawler.middlewares.RobotsTxtMiddleware); DOWNLOAD_DELAY stays the floor.
LAIT_MAX_CRAWL_DELAY = 60
# A 429 or 503 answer's Retry-After is waited before the retry, up to this many seconds; a longer one gives up on
# the request (its http_429 / http_503 reject) rather than wait (crawler.middlewares.RetryMiddleware).
LAIT_MAX_RETRY_AFTER = 120

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

# Scrapy's HTTP/1.1 handler with a connection pool that never hands out a connection already closing (Twisted then
# sent the GET again on a new one: one request fetched twice from the server; crawler/middlewares.py).
DOWNLOAD_HANDLERS = {"http": "crawler.middlewares.HTTPDownloadHandler", "https": "crawler.middlewares.HTTPDownloadHandler"}

# The resolver connections use applies the network guard again (DNS rebinding; crawler/resolver.py).
TWISTED_DNS_RESOLVER = "crawler.resolver.GuardedResolver"

REQUEST_FINGERPRINTER_IMPLEMENTATION = "2.7"
FEED_EXPORT_ENCODING = "utf-8"

DOWNLOADER_MIDDLEWARES = {
    # Before robots.txt (100) and everything that could open a connection.
    "crawler.middlewares.NetworkGuardMiddleware": 50,
    # A page's redirect to a page already seen is not fetched again (each page crawled once), nor one outside the
    # page domains. After the guard: a redirect to a private address is refused as that, whatever its host.
    "crawler.middlewares.PageRedirectMiddleware": 55,
    # Scrapy's, except that a robots.txt answering 5xx or not at all disallows its host (RFC 9309).
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "crawler.middlewares.RobotsTxtMiddleware": 100,
    # Scrapy's, except that a redirect to a URL that is no URL or not http(s) is an invalid_url or unsupported_scheme
    # reject, as an <img src> of it is (Scrapy's failed on it as fetch_error, or handed it back as http_302).
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "crawler.middlewares.RedirectMiddleware": 600,
    # Scrapy's, except that a 429's or 503's Retry-After is waited before the retry (LAIT_MAX_RETRY_AFTER).
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "crawler.middlewares.RetryMiddleware": 550,
    # The spider filters page links by domain itself and fetches images from any host (CDNs).
    "scrapy.downloadermiddlewares.offsite.OffsiteMiddleware": None,
    "scrapy.downloadermiddlewares.httpauth.HttpAuthMiddleware": None,
    # A <meta http-equiv="refresh"> page is parsed as a page, its references kept, and the spider follows where it
    # moves to as a link of it (LaitSpider.parse_page). Scrapy's made it a redirect: the page's images were lost,
    # and a page that refreshes itself ended as too_many_redirects.
    "scrapy.downloadermiddlewares.redirect.MetaRefreshMiddleware": None,
}
# The spider tracks link depth itself (images do not count as a hop).
SPIDER_MIDDLEWARES = {"scrapy.spidermiddlewares.depth.DepthMiddleware": None}
# Scrapy starts CONCURRENT_ITEMS asyncio tasks for every callback's output; the item pipeline is
# synchronous, so more than one only costs CPU (profiled: ~100 tasks per response at the default).
CONCURRENT_ITEMS = 1
ITEM_PIPELINES = {"crawler.pipelines.ParquetWriterPipeline": 300}
EXTENSIONS = {"crawler.extensions.ProgressBar": 500, "crawler.extensions.LiveCounts": 501}
REDIRECT_MAX_TIMES = 10
RETRY_TIMES = 1
DOWNLOAD_MAXSIZE = 64 * 2**20

# LAIT settings (read by the spider and its components in from_crawler).
LAIT_OUT = None  # the run folder: candidates/, rejected/, stats.json
LAIT_JOBDIR = None  # a folder that lets an interrupted crawl continue
LAIT_ALLOW_PRIVATE_NETWORKS = False  # the guard refuses private/loopback/link-local/multicast hosts
LAIT_ALLOWED_NETWORKS = []  # CIDRs let through despite the guard, e.g. ["127.0.0.1/32"]
LAIT_MIN_SIDE = 300  # early reject: the filter stage's default minimum side, px
LAIT_MAX_ASPECT = 3.0  # early reject: the filter stage's default maximum aspect ratio
LAIT_IMAGE_FORMATS = ["JPEG", "PNG", "WEBP", "GIF"]
LAIT_MAX_PIXELS = 89_478_485  # larger images are decompression bombs, rejected from their header
LAIT_PAGE_MAXSIZE = 8 * 2**20  # bytes, after decompression
LAIT_IMAGE_MAXSIZE = 16 * 2**20  # bytes, after decompression
LAIT_ROWS_PER_SHARD = 500
LAIT_IMAGE_STORE_MEMORY = 512 * 2**20
LAIT_PROGRESS = False
# A file the crawl process writes its progress counts to every LAIT_LIVE_COUNTS_INTERVAL seconds (the runner
# sets it for each of --processes N, and shows one bar of them all); None: not written.
LAIT_LIVE_COUNTS = None
LAIT_LIVE_COUNTS_INTERVAL = 1.0
# Set by the runner for each of --processes N (crawler/pipelines.py): its shards' name prefix ("part" when
# None), and the files its counters and outcomes go to for `lait crawl` to merge. Listed so that they are known
# LAIT_* settings: any other LAIT_* name is refused as a misspelling (crawler.spiders.lait.check_settings).
LAIT_SHARD_PREFIX = None
LAIT_STATS_PART = None
LAIT_OUTCOMES_PART = None

# Scrapy re-parses a generator callback's source to warn about `return value` in it; the weak-keyed
# cache misses for bound methods, so it ran per response (profiled). Our callbacks return nothing.
WARN_ON_GENERATOR_RETURN_VALUE = False
