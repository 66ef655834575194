"""The LAIT spider: crawls a site's pages and collects (page, image, ALT/TITLE text) candidates.

    scrapy crawl lait -a urls=https://example.org/ -s LAIT_OUT=runs/x/crawl

Arguments (``-a``): ``urls`` (comma-separated start URLs), ``allowed_domains`` (comma-separated;
default: the start URLs' hosts), ``max_pages`` (0 = no cap), ``depth`` (0 = no limit), ``jobdir``
(a folder that lets an interrupted crawl continue). Everything else comes from ``LAIT_*`` settings.

Every image URL is fetched once: the candidates that wait for it are kept in ``pending`` and all
emitted when it arrives, and later references reuse the recorded result. A link whose path names an image is
followed only once the crawl has nothing else to do, unless an ``<img>`` has shown that image by then.
"""
from __future__ import annotations

import asyncio
import datetime
import difflib
import hashlib
import ipaddress
import json
import logging
import math
import os
import pickle
import re
import tempfile
import time
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import scrapy
from scrapy import exceptions as scrapy_errors
from scrapy import signals
from scrapy.exceptions import DontCloseSpider, IgnoreRequest, StopDownload
from scrapy.settings import BaseSettings
from scrapy.settings import default_settings as scrapy_defaults
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet import defer, error as tx_error

from crawler import extract, images, output, resolver, runner
from crawler import settings as defaults
from crawler.middlewares import CONNECTION_ERRORS, TIMEOUT_ERRORS, RefusedRequest, retry_interval
from crawler.items import CandidateItem, RejectedItem
from crawler.store import ImageStore
from filters import option_rules

logger = logging.getLogger(__name__)

STATE_FILE = "lait-state.pickle"
# Images go before pages: each one finished releases the candidates waiting for it.
IMAGE_PRIORITY = 10
#: Paths (any case) of links put off until the crawl is idle (``LaitSpider._follow``): likely an image, which an
#: ``<img>`` of a page crawled meanwhile may show (then it is fetched once, as that image, and not as a page).
IMAGE_LINK_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".pjpeg", ".png", ".apng", ".gif", ".webp", ".avif", ".jxl",
                       ".heic", ".heif", ".bmp", ".tif", ".tiff", ".svg", ".ico", ".jp2")


def failure_reason(failure) -> tuple[str, str]:
    """A snake_case reason and a detail for a failed request."""
    exc = failure.value
    detail = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, RefusedRequest):
        return exc.reason, exc.detail
    if isinstance(exc, HttpError):
        return f"http_{exc.response.status}", detail
    if isinstance(exc, IgnoreRequest):
        message = str(exc)
        if "robots.txt" in message:
            return "robots_disallowed", message
        if "redirections" in message:
            return "too_many_redirects", message
        if "DOWNLOAD_MAXSIZE" in message or "max size" in message:
            return "too_large", message
        # Nothing else in LAIT's stack raises one (RefusedRequest and HttpError are read above; Scrapy's offsite
        # middleware is off); a middleware a -s setting turns on can (HTTPCACHE_IGNORE_MISSING's "not in cache"):
        # the request was not fetched, a fetch_error with the middleware's words.
        return "fetch_error", detail
    if isinstance(exc, TIMEOUT_ERRORS):
        return "timeout", detail
    if isinstance(exc, (scrapy_errors.CannotResolveHostError, tx_error.DNSLookupError)):
        # The guarded resolver's refusal (crawler/resolver.py) arrives as a plain failed lookup.
        host = urlsplit(failure.request.url).hostname
        address = resolver.refused_address(host)
        if address:
            return "private_network_refused", f"{host} resolved to {address} at connect time"
        return "dns_error", detail
    if isinstance(exc, (scrapy_errors.DownloadCancelledError, defer.CancelledError)):
        # Scrapy cancels a download that passes its size cap.
        return "too_large", detail
    if isinstance(exc, scrapy_errors.UnsupportedURLSchemeError):
        return "unsupported_scheme", detail
    if isinstance(exc, CONNECTION_ERRORS):
        return "connection_error", detail
    return "fetch_error", detail


def declared_not_html(content_type: bytes | None) -> bool:
    """Whether a response's Content-Type says it is no HTML page (a missing or empty one says nothing)."""
    return bool(content_type) and b"html" not in content_type.lower()


def _split(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


#: A host name as links are matched on (``host_key``): dot-separated labels of letters, digits, - and _.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def _address(text: str) -> str | None:
    """``text`` as an IP address in one spelling (``[::1]`` is ``::1``), None when it is no address."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def host_key(host: str) -> str:
    """A host as the spider matches page links on it: lower case, no dot at either end, a non-ASCII name in IDNA
    (as Scrapy requests it: ``Bücher.de`` is ``xn--bcher-kva.de``), an IPv6 address in one spelling."""
    host = host.lower().strip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:  # not a name IDNA can write: it matches no link
            pass
    if ":" in host:
        host = _address(host) or host
    return host


def page_domain(value: str) -> tuple[str, bool]:
    """The host an allowed page domain names (``host_key``) and whether it was taken from a URL or host:port
    (``http://example.org:8080/`` names ``example.org``: domains match hosts, whatever the port); ValueError when
    the value names no host (empty, ``http://``, a path)."""
    text = str(value).strip()
    address = _address(text)
    if address is not None:
        return address, False
    taken = bool(re.search(r"[/:@?#\[\]]", text))
    host = text
    if taken:
        try:
            parts = urlsplit(text if "://" in text else "//" + text)
            parts.port  # noqa: B018 - raises ValueError for a port that is no number
            host = "" if parts.netloc.endswith(":") else parts.hostname or ""  # `http:/x` is no host:port
        except ValueError:
            host = ""
    host = host_key(host)
    if not (_HOST_NAME.fullmatch(host) or _address(host)):
        raise ValueError(f"{value!r} names no host: give a domain (example.org), or a URL or host:port to take it from")
    return host, taken


#: The LAIT_* settings read as numbers or switches: (Scrapy's getter, test, what the value must be). A value
#: outside would stop a crawl process with a traceback, or quietly reject every image or check none.
#: LAIT_MIN_SIDE and LAIT_MAX_ASPECT are `lait crawl --min-side/--max-aspect` too, with the rules `lait filter` and
#: `lait demo` apply to theirs (filters.option_rules): a max aspect of 0 turns the check off.
SETTING_RULES: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "LAIT_MIN_SIDE": ("getint", *option_rules.RULES["min_side"]),
    "LAIT_MAX_ASPECT": ("getfloat", *option_rules.RULES["max_aspect"]),
    "LAIT_MAX_PIXELS": ("getint", lambda v: v >= 1, "a whole number of pixels, 1 or more"),
    # 0 would be no cap to Scrapy but a cap no record fits in the WARC reader: refused for both.
    "LAIT_PAGE_MAXSIZE": ("getint", lambda v: v >= 1, "a whole number of bytes, 1 or more"),
    "LAIT_IMAGE_MAXSIZE": ("getint", lambda v: v >= 1, "a whole number of bytes, 1 or more"),
    "LAIT_IMAGE_STORE_MEMORY": ("getint", lambda v: v >= 0, "a whole number of bytes, 0 or more"),
    "LAIT_ROWS_PER_SHARD": ("getint", lambda v: v >= 1, "a whole number, 1 or more"),
    "LAIT_LIVE_COUNTS_INTERVAL": ("getfloat", lambda v: 0 < v < math.inf, "a number of seconds above 0"),
    "LAIT_PROGRESS": ("getbool", lambda v: True, "true or false"),
    "LAIT_MAX_CRAWL_DELAY": ("getfloat", lambda v: 0 <= v < math.inf, "a number of seconds, 0 or more"),
    "LAIT_MAX_RETRY_AFTER": ("getfloat", lambda v: 0 <= v < math.inf, "a number of seconds, 0 or more"),
    # LAIT_ALLOW_PRIVATE_NETWORKS and LAIT_ALLOWED_NETWORKS: resolver.guard_settings, their one reader.
}

#: Scrapy's own settings that Scrapy reads with another getter than the type of their default
#: (``scrapy.settings.default_settings``) says: ``DOWNLOAD_DELAY = 0`` is read as a float, ``TELNETCONSOLE_ENABLED = 1``
#: as a switch. Every other number or switch is read as its default's type.
SCRAPY_GETTERS = {"DNS_TIMEOUT": "getfloat", "DOWNLOAD_DELAY": "getfloat", "DOWNLOAD_TIMEOUT": "getfloat",
                  "TELNETCONSOLE_ENABLED": "getbool"}
#: What a value of Scrapy's must be to read at all, by getter (``getbool`` also takes 0, 1 and any whole number).
SCRAPY_READS_AS = {"getint": "a whole number", "getfloat": "a number", "getbool": "true or false"}
#: Scrapy's settings with values Scrapy reads but cannot crawl with (test, what the value must be), found by crawling
#: a local site: every other value Scrapy reads is taken as it is.
SCRAPY_SETTING_LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    # 0 or less: no request ever starts, and the crawl waits for ever (a SIGTERM does not end it)
    "CONCURRENT_REQUESTS_PER_DOMAIN": (lambda v: v >= 1, "a whole number, 1 or more"),
    # 0 or less: no callback's output is processed, and every image is rejected as image_not_fetched
    "CONCURRENT_ITEMS": (lambda v: v >= 1, "a whole number, 1 or more"),
    # 0: no thread resolves a host name, and the crawl waits for ever
    "REACTOR_THREADPOOL_MAXSIZE": (lambda v: v >= 1, "a whole number, 1 or more"),
    # inf: the first request waits for ever
    "DOWNLOAD_DELAY": (lambda v: v != math.inf, "a number of seconds, not inf"),
    # below 0 or NaN: a traceback for every request (0 is no timeout, as is inf)
    "DOWNLOAD_TIMEOUT": (lambda v: v >= 0, "a number of seconds, 0 (no timeout) or more"),
    # 0: every host name lookup fails; below 0 or NaN: a traceback for every lookup
    "DNS_TIMEOUT": (lambda v: v > 0, "a number of seconds above 0"),
    # below 0: every download is cancelled (0 is no cap)
    "DOWNLOAD_MAXSIZE": (lambda v: v >= 0, "a whole number of bytes, 0 (no cap) or more"),
    # below 0: the spider closes before its first page (0 is no timeout)
    "CLOSESPIDER_TIMEOUT": (lambda v: v >= 0, "a number of seconds, 0 (no timeout) or more"),
    # Scrapy refuses these with a traceback once the crawl runs (0 turns the stats log off).
    "LOGSTATS_INTERVAL": (lambda v: v >= 0, "a number of seconds, 0 (off) or more"),
    "MEMUSAGE_CHECK_INTERVAL_SECONDS": (lambda v: v > 0, "a number of seconds above 0"),
}


def setting_rule(name: str, scrapy_settings: bool = True) -> tuple[str, Callable[[Any], bool], str] | None:
    """(Scrapy's getter, test, what the value must be) of a setting read as a number or switch: a LAIT_* one of
    ``SETTING_RULES``, or (``scrapy_settings``) one of Scrapy's whose default is a number or switch, which must read
    as Scrapy reads it (and keep within ``SCRAPY_SETTING_LIMITS``); None for any other setting."""
    if name in SETTING_RULES:
        return SETTING_RULES[name]
    if not scrapy_settings or not name.isupper() or name.startswith("LAIT_"):
        return None
    default = vars(scrapy_defaults).get(name)  # (not getattr: a deprecated name would warn)
    if not isinstance(default, (bool, int, float)):
        return None
    getter = SCRAPY_GETTERS.get(name) or (
        "getbool" if isinstance(default, bool) else "getint" if isinstance(default, int) else "getfloat")
    return (getter, *SCRAPY_SETTING_LIMITS.get(name, (lambda v: True, SCRAPY_READS_AS[getter])))


#: Every LAIT_* setting the crawl knows: those crawler/settings.py lists (the runner's own included). Any other
#: LAIT_* name is a misspelling, which Scrapy would keep and nothing would read.
KNOWN_SETTINGS = frozenset(name for name in vars(defaults) if name.startswith("LAIT_"))


def check_value(name: str, value, label: str | None = None) -> None:
    """Raise ValueError, one line naming ``label`` (an option) or the setting, when ``value`` breaks
    ``setting_rule(name)`` once read as the crawl's components read it (a value that does not read is refused)."""
    getter, ok, must_be = setting_rule(name)
    try:
        read = getattr(BaseSettings({name: value}), getter)(name)
    except (TypeError, ValueError, OverflowError):
        read = None  # never accepted
    if getter == "getint" and isinstance(value, float) and not value.is_integer():
        read = None  # Scrapy would read 2.5 (`lait crawl -s X=2.5`, JSON) as 2, but refuses the text "2.5"
    if getter in ("getint", "getfloat") and isinstance(value, bool):
        read = None  # Scrapy would read a settings file's `LAIT_MIN_SIDE = True` as 1 (the text "true" it refuses)
    option_rules.check(option_rules.Rule(ok, must_be), read, label or name, given=value)


def unknown_setting(name: str) -> str | None:
    """Why ``name`` is no LAIT_* setting the crawl reads, with the closest known name; None for a known one or
    a setting that is not LAIT's (any case: ``lait_min_side`` is a misspelling too)."""
    if not name.upper().startswith("LAIT_") or name in KNOWN_SETTINGS:
        return None
    # Matched without the prefix they all share, which would make any LAIT_* name look close to one.
    close = difflib.get_close_matches(name.upper()[5:], [known[5:] for known in KNOWN_SETTINGS], n=1)
    hint = f"did you mean LAIT_{close[0]}?" if close else "the LAIT settings are listed in crawler/settings.py"
    return f"{name} is not a LAIT setting: {hint}"


def image_formats(settings) -> tuple[str, ...]:
    """``LAIT_IMAGE_FORMATS`` as the spider compares formats, read as ``lait filter --formats`` reads its list (any
    case, JPG for JPEG, MPO for JPEG, ...); ValueError, one line naming the setting, for a format LAIT does not
    open or an empty list (either would reject every image as format_not_allowed)."""
    if "LAIT_IMAGE_FORMATS" not in settings:
        return tuple(images.DEFAULT_FORMATS)
    try:
        names = settings.getlist("LAIT_IMAGE_FORMATS")
    except TypeError:
        names = [settings.get("LAIT_IMAGE_FORMATS")]
    # The filter stage's own reading (`lait filter --formats`), so both stages take the same names.
    return option_rules.read_image_formats(",".join(str(name) for name in names), "LAIT_IMAGE_FORMATS")


def check_settings(settings, scrapy_settings: bool = True) -> None:
    """Raise ValueError, one line naming the setting, for a LAIT_* setting the crawl cannot run with (``settings``:
    Scrapy's or a dict; a setting not there is not checked), a LAIT_* name it does not know (a misspelling
    would be ignored without a word), or (``scrapy_settings``) a number or switch of Scrapy's that does not read as
    Scrapy reads it or that it cannot crawl with: before a crawl process fails on it, or runs on it."""
    if not isinstance(settings, BaseSettings):
        settings = BaseSettings(dict(settings))
    for name in settings:
        problem = unknown_setting(name)
        if problem:
            raise ValueError(problem)
    for name in settings:
        if setting_rule(name, scrapy_settings):
            check_value(name, settings.get(name))
    jobdir = settings.get("LAIT_JOBDIR")
    if jobdir is not None and not (isinstance(jobdir, str) and jobdir):  # '' would be no job folder, a list no path
        raise ValueError(f"LAIT_JOBDIR must be a folder, got {jobdir!r}")
    resolver.guard_settings(settings)
    image_formats(settings)
    retry_interval(settings)


def _ends_mid_line(handle) -> bool:
    """Whether a file open for appending ends without a newline."""
    size = handle.seek(0, os.SEEK_END)
    if not size:
        return False
    handle.seek(size - 1)
    return handle.read(1) != b"\n"


class LaitSpider(scrapy.Spider):
    """Pages of the allowed domains -> candidates with their image bytes, and counted rejects."""

    name = "lait"

    def __init__(self, urls=None, allowed_domains=None, max_pages=0, depth=0, jobdir=None, process_index=0,
                 processes=1, inbox_dir=None, run_id=None, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_urls = _split(urls)
        # With several processes, process 0 crawls the pages and each process owns the images whose URL
        # hashes to it; candidates travel to their image's owner through an append-only inbox file.
        self.process_index = int(process_index)
        self.processes = max(1, int(processes))
        self.inbox_dir = inbox_dir
        self.run_id = run_id
        self.inbox_offset = 0
        self._outboxes: dict[int, Any] = {}
        if not self.start_urls and self.process_index == 0:
            raise ValueError("the lait spider needs start URLs: -a urls=URL[,URL...]")
        domains = []
        for value in _split(allowed_domains):
            try:
                host, taken = page_domain(value)
            except ValueError as exc:
                raise ValueError(f"allowed_domains: {exc}") from None
            if taken:
                logger.warning("allowed_domains: took the host %s from %r", host, value)
            domains.append(host)
        # Without allowed_domains, a start URL's redirect to another host (http://www.x.com -> https://x.com) adds
        # that host: the user asked for the site (redirect_refusal).
        self.domains_given = bool(domains)
        # Not `allowed_domains`: Scrapy's offsite middleware would then drop images served by a CDN.
        self.page_domains = list(dict.fromkeys(domains)) or sorted(
            {host_key(urlsplit(u).hostname or "") for u in self.start_urls} - {""})
        self.max_pages = int(max_pages or 0)
        self.depth_limit = int(depth or 0)
        if self.max_pages < 0 or self.depth_limit < 0:
            raise ValueError("max_pages and depth are counts: 0 (no limit) or more")
        self.jobdir = jobdir
        self.pages_seen: set[str] = set()
        self.pages_scheduled = 0  # what --max-pages counts: links followed (not the redirect targets they claim)
        self.open_pages: dict[str, int] = {}  # scheduled, not done: url -> depth
        # Open pages requested in a spelling other than their url_key (query parameters in the link's order), so
        # that a resumed crawl requests them as the first link spelt them, as an uninterrupted one does.
        self.page_spellings: dict[str, str] = {}
        # Pages this run fetched and parsed: an earlier run's reject of one is superseded (output.reconcile).
        self.fetched_pages: set[str] = set()
        self.pending: dict[str, list[dict]] = {}  # image url_key -> candidates waiting for it
        # Image url_keys of the candidates sent to their owner process: images of the crawl, as pending ones are.
        self.routed_images: set[str] = set()
        # Links that look like images, put off until the crawl is idle (url_key -> (link, depth)), and the rows of
        # those that could not be requested then (written with the crawl's last rows).
        self.deferred_links: dict[str, tuple[str, int]] = {}
        self.late_rejects: list[dict] = []
        self.image_results: dict[str, dict] = {}  # image url_key -> facts (kept) or reason (rejected)
        self.finished = False  # the crawl ran out of work (not stopped part-way)
        # Redirect hops of page requests (url_key -> url_key), the pages dropped because their redirect reached a
        # page seen (redirect_to_seen: the target gives the rows) and the pages with a row of their own: at the
        # crawl's end a dropped page whose redirects never reach such a page (a loop between two linked pages)
        # becomes a too_many_redirects row (loop_rejects).
        self.redirects: dict[str, str] = {}
        self.redirect_dropped: set[str] = set()
        self.pages_settled: set[str] = set()
        self.redirect_domains: list[str] = []  # hosts added by a start URL's redirect (no allowed_domains given)

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.configure(crawler.settings)
        crawler.signals.connect(spider.on_spider_idle, signal=signals.spider_idle)
        crawler.signals.connect(spider.on_headers_received, signal=signals.headers_received)
        return spider

    def configure(self, settings) -> None:
        """Read the LAIT_* settings and restore a previous run's state from the job folder."""
        check_settings(settings)  # `scrapy crawl lait -s ...`: one line at spider init, not a failure later on
        self.min_side = settings.getint("LAIT_MIN_SIDE", images.DEFAULT_MIN_SIDE)
        # 0 turns the aspect check off, as in `lait filter`.
        self.max_aspect = settings.getfloat("LAIT_MAX_ASPECT", images.DEFAULT_MAX_ASPECT) or math.inf
        self.formats = image_formats(settings)
        self.max_pixels = settings.getint("LAIT_MAX_PIXELS", images.DEFAULT_MAX_PIXELS)
        self.page_maxsize = settings.getint("LAIT_PAGE_MAXSIZE")
        self.image_maxsize = settings.getint("LAIT_IMAGE_MAXSIZE")
        jobdir_option = "-a jobdir" if self.jobdir else "-s LAIT_JOBDIR"  # for its messages
        self.jobdir = self.jobdir or settings.get("LAIT_JOBDIR")
        # Scrapy's UrlLengthMiddleware drops longer requests without a word: they are rejected here instead.
        self.url_length_limit = settings.getint("URLLENGTH_LIMIT")
        self.store = ImageStore(settings.getint("LAIT_IMAGE_STORE_MEMORY", 512 * 2**20))
        if self.jobdir:
            # `scrapy crawl -a jobdir=` too; the output folder as `lait crawl` checks it (-s LAIT_OUT there)
            runner.check_job_folder(self.jobdir, self.processes, option=jobdir_option,
                                    out=settings.get("LAIT_OUT") or None, out_option="-s LAIT_OUT")
            self._load_state()

    # -- resume --------------------------------------------------------------------------------

    def _state_path(self) -> str:
        name = STATE_FILE if self.process_index == 0 else STATE_FILE.replace(".pickle", f"-p{self.process_index}.pickle")
        return os.path.join(self.jobdir, name)

    def _load_state(self) -> None:
        path = self._state_path()
        if not os.path.exists(path):
            return
        with open(path, "rb") as handle:
            state = pickle.load(handle)
        # Keyed by url_key (a state saved before was keyed by the spelling requested: the same for most URLs).
        self.pages_seen = {extract.url_key(url) for url in state["pages_seen"]}
        self.pages_scheduled = state.get("pages_scheduled", len(self.pages_seen))
        self.open_pages = {extract.url_key(url): depth for url, depth in state["open_pages"].items()}
        # (A state saved before they were kept: its open pages were saved in the spelling they were requested in.)
        self.page_spellings = state.get("page_spellings", {
            extract.url_key(url): extract.request_url(url) for url in state["open_pages"]
            if extract.request_url(url) != extract.url_key(url)})
        self.pending = {}
        for url, waiting in state["pending"].items():
            self.pending.setdefault(extract.url_key(url), []).extend(waiting)
        self.image_results = {extract.url_key(url): result for url, result in state["image_results"].items()}
        self.routed_images = state.get("routed_images", set())
        self.deferred_links = state.get("deferred_links", {})
        self.inbox_offset = state.get("inbox_offset", 0)
        self.redirects = state.get("redirects", {})
        self.redirect_dropped = state.get("redirect_dropped", set())
        # (A state saved before these were kept: every page seen and not open had its row, as far as it knows.)
        self.pages_settled = (state["pages_settled"] if "pages_settled" in state
                              else self.pages_seen - set(self.open_pages))
        if not self.domains_given:
            self.redirect_domains = state.get("redirect_domains", [])
            self.page_domains = list(dict.fromkeys([*self.page_domains, *self.redirect_domains]))
        out_dir = self.settings.get("LAIT_OUT")
        needed = {result["image_id"] for result in self.image_results.values() if "image_id" in result}
        if out_dir:  # the bytes of the kept images the state refers to, for later pages that show them again
            for image_id, data in output.iter_image_bytes(out_dir, needed):
                self.store.put(image_id, data)
        logger.info("resuming: %d pages seen, %d pages and %d images to fetch", len(self.pages_seen),
                    len(self.open_pages), len(self.pending))

    def _save_state(self) -> None:
        os.makedirs(self.jobdir, exist_ok=True)
        state = {"pages_seen": self.pages_seen, "open_pages": self.open_pages, "pending": self.pending,
                 "image_results": self.image_results, "inbox_offset": self.inbox_offset,
                 "pages_scheduled": self.pages_scheduled, "redirects": self.redirects,
                 "redirect_dropped": self.redirect_dropped, "pages_settled": self.pages_settled,
                 "redirect_domains": self.redirect_domains, "routed_images": self.routed_images,
                 "deferred_links": self.deferred_links, "page_spellings": self.page_spellings}
        fd, tmp = tempfile.mkstemp(dir=self.jobdir, prefix=".state.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self._state_path())

    def on_spider_idle(self) -> None:
        """Nothing is scheduled or downloading: the links put off as images are followed now (``_follow``); with
        none to follow, the crawl ends here (not a Ctrl-C or CLOSESPIDER_* stop)."""
        if self._follow_deferred():
            raise DontCloseSpider
        self.finished = True

    def _follow_deferred(self) -> bool:
        """Schedule the links put off as images that no ``<img>`` of the crawl has shown by now (one that has is
        skipped, as a link to an image already met is); whether any was scheduled."""
        links, self.deferred_links = self.deferred_links, {}
        scheduled = False
        for key, (link, depth) in links.items():
            if self._crawl_image(key):
                self.crawler.stats.inc_value("lait/page/skipped_image_link")
                continue
            result = self._schedule_page(link, depth)
            if isinstance(result, scrapy.Request):
                self.crawler.engine.crawl(result)
                scheduled = True
            elif result is not None:  # no callback to yield its row from: it comes with the crawl's last rows
                self.late_rejects.append(result.row)
        return scheduled

    def on_headers_received(self, headers, request, **kwargs) -> None:
        """Stop a page's download once its headers say it is not HTML: ``parse_page`` gets the body-less response
        and writes its ``not_html`` row all the same, without the body (a PDF, a full-size image) fetched."""
        if "lait_page" in request.meta and declared_not_html(headers.get("Content-Type")):
            # Any status: a redirect, a retry or an http_<status> reject needs the headers only.
            self.crawler.stats.inc_value("lait/page/body_skipped")
            raise StopDownload(fail=False)

    def unfetched_rejects(self) -> list[dict]:
        """Rejected rows for the candidates still waiting for their image when the crawl closes.

        Called by the item pipeline before it writes its last rows. A job-folder crawl stopped part-way
        keeps them for the next run; otherwise their image will never come (a request some middleware
        dropped, or a crawl stopped without a job folder), and each becomes an ``image_not_fetched`` row.
        The rows of links put off that could not be requested (``_follow_deferred``) come first, in any case.
        """
        rows, self.late_rejects = self.late_rejects, []
        if self.jobdir and not self.finished:
            return rows
        detail = ("no response for the image request" if self.finished
                  else "the crawl stopped before the image was fetched")
        for url in list(self.pending):
            self.crawler.stats.inc_value(f"lait/image/rejected/{runner.NOT_FETCHED}")
            rows.extend(self._reject_row(c, runner.NOT_FETCHED, detail) for c in self.pending.pop(url))
        return rows + self.loop_rejects()

    def loop_rejects(self) -> list[dict]:
        """``too_many_redirects`` rows for the pages dropped as ``redirect_to_seen`` whose redirects never reach a
        page with a row: ``/a`` -> ``/b`` -> ``/a``, both linked, ended with no row at all (each hop's target was
        seen). A chain that ends at a page still to fetch is left alone (a ``--jobdir`` crawl stopped part-way
        settles it at its final close). Called by ``unfetched_rejects``, at the crawl's close."""
        loops = []
        for url in sorted(self.redirect_dropped):
            chain = [url]
            while chain[-1] in self.redirects and chain[-1] not in self.pages_settled:
                target = self.redirects[chain[-1]]
                chain.append(target)
                if target in chain[:-1]:
                    break
            if chain[-1] not in self.pages_settled and chain[-1] not in self.open_pages:
                loops.append(chain)
        rows = []
        for chain in loops:  # (all found first: each page of a loop gets its row)
            url = chain[0]
            self.redirect_dropped.discard(url)
            self.fetched_pages.discard(url)  # no longer accounted for by its target: the row is its own
            detail = ("redirect loop: " + " -> ".join(chain))[:300]
            rows.append(self._page_rejected(url, "too_many_redirects", detail).row)
        return rows

    def closed(self, reason: str) -> None:
        """Keep what is left to do in the job folder (the item pipeline has flushed by now)."""
        if self.process_index == 0:
            for owner in range(1, self.processes):  # image workers finish their inbox, then stop
                self._send(owner, {"done": self.run_id})
        for handle in self._outboxes.values():
            handle.close()
        if self.process_index > 0:  # without a job folder, `lait crawl` rejects what is left past it
            output.write_json_atomically(runner.read_offset_path(self.inbox_dir, self.process_index),
                                         {"offset": self.inbox_offset})
        if self.jobdir:
            self._save_state()
        self.store.close()

    # -- requests ------------------------------------------------------------------------------

    async def start(self):
        # Wall-clock marks of the fetching itself (start-up excluded), for rates in stats.json.
        """Start URLs, or what an interrupted run left (and, in image processes, the inbox)."""
        self.crawler.stats.set_value("lait/run/first_request", time.time())
        for url, depth in list(self.open_pages.items()):  # a resumed crawl continues where it stopped
            request, failure = self._checked_request(self.page_spellings.get(url, url), depth, url)
            if failure:
                self._page_done(url)
                yield self._page_rejected(url, *failure)
            else:
                yield request
        for key, waiting in list(self.pending.items()):  # requested as the first waiting candidate spells it
            request, failure = self._checked_request(waiting[0]["image_url"] if waiting else key, key=key)
            if failure:
                for item in self._finish_image(key, self._image_rejected(*failure)):
                    yield item
            else:
                yield request
        if self.process_index > 0:
            async for item in self._read_inbox():
                yield item
            return
        for url in self.start_urls:  # a resumed crawl skips those it has seen; one added since is crawled
            request = self._schedule_page(url, 0)
            if request is not None:
                yield request

    # -- several processes -----------------------------------------------------------------------

    def _owner(self, image_url: str) -> int:
        """The process that fetches an image: by its ``url_key``, so that every spelling of it meets there."""
        if self.processes == 1:
            return 0
        return int(hashlib.sha1(extract.url_key(image_url).encode("utf-8")).hexdigest()[:8], 16) % self.processes

    def _send(self, owner: int, message: dict) -> None:
        handle = self._outboxes.get(owner)
        if handle is None:
            handle = self._outboxes[owner] = open(runner.inbox_path(self.inbox_dir, owner), "a+b")
            if _ends_mid_line(handle):  # a writer killed mid-line: its torn line stays alone, to be skipped
                handle.write(b"\n")
        handle.write(json.dumps(message).encode("utf-8") + b"\n")
        handle.flush()

    async def _read_inbox(self):
        """Candidates routed to this process, until process 0 of this run says it is done."""
        path = runner.inbox_path(self.inbox_dir, self.process_index)
        while True:
            lines = runner.read_inbox(path, self.inbox_offset)
            for offset, message in lines:
                self.inbox_offset = offset
                if message is None:
                    logger.warning("skipped a line of %s that is not a JSON object (a writer killed mid-line)", path)
                    self.crawler.stats.inc_value("lait/inbox/corrupt_lines")
                    continue
                if "done" in message:
                    if message["done"] == self.run_id:
                        return
                    continue  # the end of an earlier, interrupted run
                for item in self._candidate(message):
                    yield item
            if not lines:
                await asyncio.sleep(0.02)

    def _page_request(self, url: str, depth: int, key: str | None = None) -> scrapy.Request:
        # ``key``, the page's url_key, is what it is seen and recorded as (``_schedule_page``); ``url`` by default.
        return scrapy.Request(url, callback=self.parse_page, errback=self.page_failed, dont_filter=True,
                              meta={"lait_page": key or url, "lait_depth": depth,
                                    "download_maxsize": self.page_maxsize})

    def _image_request(self, url: str, key: str) -> scrapy.Request:
        # Alone, a process fetches images first (fewer candidates waiting in memory); page process 0 of a
        # multi-process crawl fetches pages first, so the image processes are never starved of work.
        # Requested as referenced (a CDN may sign the URL's exact bytes); ``key``, its url_key, finds its candidates.
        priority = IMAGE_PRIORITY if self.processes == 1 else -IMAGE_PRIORITY
        return scrapy.Request(url, callback=self.parse_image, errback=self.image_failed, dont_filter=True,
                              priority=priority,
                              meta={"lait_image": key, "download_maxsize": self.image_maxsize})

    def _checked_request(self, url: str, depth: int | None = None, key: str | None = None):
        """(a page request, or an image request when ``depth`` is None, ``key`` its url_key; None) or
        (None, (reason, detail))."""
        try:
            request = self._image_request(url, key or url) if depth is None else self._page_request(url, depth, key)
        except ValueError as exc:  # Scrapy cannot build it: a port that is not a number, ...
            return None, ("invalid_url", f"{type(exc).__name__}: {exc}"[:300])
        if self.url_length_limit and len(request.url) > self.url_length_limit:
            limit = self.url_length_limit
            return None, ("url_too_long", f"{len(request.url)} characters, over URLLENGTH_LIMIT {limit}")
        return request, None

    def _page_rejected(self, url: str, reason: str, detail: str | None) -> RejectedItem:
        self.pages_settled.add(url)
        self.crawler.stats.inc_value(f"lait/page/rejected/{reason}")
        return RejectedItem(dict(reason=reason, detail=detail, page_url=url))

    def _schedule_page(self, url: str, depth: int) -> scrapy.Request | RejectedItem | None:
        """A request for a page not seen before (its reject when it cannot be requested), else None.

        A page is seen and recorded as its ``url_key``: ``/caf%c3%a9.html`` and ``/café.html`` are the page
        ``/caf%C3%A9.html``, and ``/p?b=2&a=1`` and ``/p?a=1&b=2`` the page ``/p?a=1&b=2``, crawled once, its rows
        spelled so whichever link comes first. It is requested so too (``extract.request_url``), but with its query
        parameters in the order of the link that came first: a server may read them in order."""
        key = extract.url_key(url)
        if key in self.pages_seen:
            return None
        if self.max_pages and self.pages_scheduled >= self.max_pages:
            self.crawler.stats.inc_value("lait/page/skipped_max_pages")
            return None
        self.pages_seen.add(key)
        self.pages_scheduled += 1
        request, failure = self._checked_request(extract.request_url(url), depth, key)
        if failure:
            return self._page_rejected(key, *failure)
        self.open_pages[key] = depth
        if request.url != key:
            self.page_spellings[key] = request.url
        return request

    def _in_domains(self, url: str) -> bool:
        host = host_key(urlsplit(url).hostname or "")
        return any(host == d or host.endswith("." + d) for d in self.page_domains)

    # -- pages ---------------------------------------------------------------------------------

    def parse_page(self, response) -> Iterator[Any]:
        """A fetched page: follow its links, reject what cannot be a candidate, route the candidates to their image."""
        requested = response.meta["lait_page"]
        depth = response.meta["lait_depth"]
        self._page_done(requested)
        stats = self.crawler.stats
        stats.set_value("lait/run/last_response", time.time())
        stats.set_value("lait/run/last_page", time.time())
        # A redirect's target is a page of its own: crawled once, whichever way it is reached first (see
        # follow_redirect). Its rows carry its own URL, in the spelling of the requested pages.
        url = extract.url_key(response.url)
        if url != requested:
            self.fetched_pages.add(requested)  # accounted for: an earlier run's reject of it is superseded
            if response.meta.get("lait_claimed") != url:
                if url in self.pages_seen:
                    stats.inc_value("lait/page/redirect_to_seen")
                    self.redirects[requested] = url
                    self.redirect_dropped.add(requested)
                    return
                self.pages_seen.add(url)
        self.pages_settled.update((requested, url))
        stats.inc_value("lait/page/fetched")
        # No Content-Type: Scrapy sniffed the type from the URL and the body (on_headers_received let it come).
        if not isinstance(response, scrapy.http.TextResponse) or declared_not_html(response.headers.get("Content-Type")):
            stats.inc_value("lait/page/rejected/not_html")
            yield RejectedItem(dict(reason="not_html", page_url=url,
                                    detail=(response.headers.get("Content-Type") or b"").decode("latin-1")))
            return
        headers = {k.decode("latin-1"): response.headers.getlist(k) for k in response.headers}
        try:
            page = extract.parse_page(response.body, url, headers, self.formats)
        except Exception as exc:  # noqa: BLE001 - a page the extractor cannot handle is a reject, not a lost callback
            logger.warning("cannot parse %s: %s: %s", url, type(exc).__name__, exc)
            yield self._page_rejected(url, "parse_error", f"{type(exc).__name__}: {exc}"[:300])
            return
        self.fetched_pages.add(url)
        for key, count in page.counts.items():
            stats.inc_value(f"lait/{key}" if key.startswith("page/") else f"lait/ref/{key}", count)
        # A link to an image this crawl fetches as an <img>'s image (a thumbnail's link to its full size
        # shown on the page too) is not fetched again as a page. Any other link is, whatever its path says:
        # a MediaWiki /wiki/File:X.jpg is an HTML page of its own.
        # Compared as the server sees them: the link may escape what the <img> writes as it is, or not.
        images = {extract.url_key(row["image_url"]) for row in (*page.candidates, *page.rejects) if row.get("image_url")}
        if not page.nofollow and (not self.depth_limit or depth < self.depth_limit):
            for link in page.links:
                request = self._follow(link, depth + 1, images)
                if request is not None:
                    yield request
        if page.refresh:
            # <meta http-equiv="refresh">: the page is a page (its references are real: it was fetched, and a
            # browser shows it until it moves on), and where it moves to is followed as a link of it. A refresh
            # after 0 seconds is a redirect, its target at the page's own depth (a redirect is no hop) whatever
            # the page's nofollow says; a later one (a slideshow's next slide) is a link like any other. Scrapy's
            # meta-refresh redirect, which dropped the page, is off (crawler/settings.py): a page that reloads
            # itself ended as too_many_redirects.
            delay, target = page.refresh
            stats.inc_value("lait/page/meta_refresh")
            if delay == 0 or not page.nofollow and (not self.depth_limit or depth < self.depth_limit):
                request = self._follow(target, depth if delay == 0 else depth + 1, images)
                if request is not None:
                    yield request
        for row in page.rejects:
            yield RejectedItem(row)
        for candidate in page.candidates:
            if page.opt_out:
                yield RejectedItem(self._reject_row(candidate, page.opt_out, "page opted out"))
                continue
            yield from self._candidate(candidate)

    def _follow(self, link: str, depth: int, images: set[str]) -> scrapy.Request | RejectedItem | None:
        """A page's link (or refresh target) as a request, when it is in the allowed domains, no image of the page
        or of the crawl (``images``: the page's, by url_key) and a page not seen; else None.

        A link whose path names an image (``IMAGE_LINK_SUFFIXES``: a thumbnail's link to its full size) is put off
        until the crawl is idle (``on_spider_idle``): followed then, it was followed before the page whose ``<img>``
        shows the image was crawled, and the image went out twice, as a ``not_html`` page and as the image. By
        then every page reached otherwise has shown its images, and the link to one of them is skipped."""
        if not self._in_domains(link):
            self.crawler.stats.inc_value("lait/page/skipped_offsite")
            return None
        key = extract.url_key(link)
        if key in images or self._crawl_image(key):
            self.crawler.stats.inc_value("lait/page/skipped_image_link")
            return None
        if key not in self.pages_seen and urlsplit(key).path.lower().endswith(IMAGE_LINK_SUFFIXES):
            deferred = self.deferred_links.get(key)
            if deferred is None:
                self.crawler.stats.inc_value("lait/page/deferred_image_link")
            if deferred is None or depth < deferred[1]:  # (its shallowest link: --depth follows its links, if a page)
                self.deferred_links[key] = (link, depth)
            return None
        return self._schedule_page(link, depth)

    def _crawl_image(self, key: str) -> bool:
        """Whether an image url_key is one this crawl fetches for a candidate (waiting, done, or sent to the process
        that owns it: with ``--processes``, this page process knows those too)."""
        return key in self.pending or key in self.image_results or key in self.routed_images

    def follow_redirect(self, request: scrapy.Request) -> bool:
        """Whether to fetch a page's redirect hop (``redirect_refusal``)."""
        return self.redirect_refusal(request) is None

    def redirect_refusal(self, request: scrapy.Request) -> str | None:
        """Why a page's redirect hop is not fetched (PageRedirectMiddleware), None to fetch it: ``offsite_redirect``
        when its target is outside the allowed domains (as a link there is not followed), ``redirect_to_seen`` when
        it is a page seen already, which is crawled under its own URL; a target not seen is claimed for this request.

        Without allowed domains given, a start URL's redirect to another host (``http://www.x.com`` ->
        ``https://x.com``) adds that host to the crawl's domains: its links are followed."""
        target = extract.url_key(request.url)
        source = request.meta["lait_page"]
        if target in (source, request.meta.get("lait_claimed")):
            return None
        if not self._in_domains(target):
            host = host_key(urlsplit(target).hostname or "")
            if self.domains_given or source not in self._start_keys() or not host:
                return "offsite_redirect"
            logger.info("start URL %s redirects to %s: its host %s is crawled too", source, target, host)
            self.crawler.stats.inc_value("lait/page/start_redirect_domain")
            self.redirect_domains.append(host)
            self.page_domains.append(host)
        previous = request.meta.get("redirect_urls") or [source]
        self.redirects[extract.url_key(previous[-1])] = target
        if target in self.pages_seen:
            self.redirect_dropped.add(source)
            return "redirect_to_seen"
        self.pages_seen.add(target)
        request.meta["lait_claimed"] = target
        return None

    def _start_keys(self) -> set[str]:
        """The start URLs as pages are recorded (url_key; one that cannot be read is left out)."""
        keys = getattr(self, "_start_key_set", None)
        if keys is None:
            keys = set()
            for url in self.start_urls:
                try:
                    keys.add(extract.url_key(url))
                except ValueError:
                    pass
            self._start_key_set = keys
        return keys

    def _page_done(self, key: str) -> None:
        """A page (by url_key) is no longer open: fetched, failed, or refused."""
        self.open_pages.pop(key, None)
        self.page_spellings.pop(key, None)

    def page_failed(self, failure) -> Iterator[Any]:
        """A page that could not be fetched becomes one rejected row (none when it redirects to a page seen)."""
        url = failure.request.meta["lait_page"]
        self._page_done(url)
        reason, detail = failure_reason(failure)
        if reason == "redirect_to_seen":  # the target page gives the rows (else loop_rejects, at the close)
            self.crawler.stats.inc_value("lait/page/redirect_to_seen")
            self.fetched_pages.add(url)
            return
        # The row under the URL requested stands for every hop its redirects went through.
        for hop in (*failure.request.meta.get("redirect_urls", ()), failure.request.url):
            try:
                self.pages_settled.add(extract.url_key(hop))
            except ValueError:
                pass
        yield self._page_rejected(url, reason, detail)

    # -- images --------------------------------------------------------------------------------

    def _candidate(self, candidate: dict) -> Iterator[Any]:
        """A candidate to its image: fetched once per url_key (``größe.jpg`` and ``gr%c3%b6%c3%9fe.jpg`` are one
        image), requested as the first candidate spells it; the rest wait for it or reuse its result."""
        url = candidate["image_url"]
        owner = self._owner(url)
        if owner != self.process_index:
            self.crawler.stats.inc_value("lait/image/routed")
            self.routed_images.add(extract.url_key(url))  # a link to it is no page (_follow)
            self._send(owner, candidate)
            return
        key = extract.url_key(url)
        result = self.image_results.get(key)
        if result is not None:
            self.crawler.stats.inc_value("lait/image/reused")
            yield self._emit(candidate, result)
        elif key in self.pending:
            self.pending[key].append(candidate)
        else:
            request, failure = self._checked_request(url, key=key)
            if failure:  # recorded like a fetched image's reject: later references reuse it
                yield from self._finish_image(key, self._image_rejected(*failure), [candidate])
                return
            self.pending[key] = [candidate]
            yield request

    def parse_image(self, response) -> Iterator[Any]:
        """A fetched image: opt-out header, validation, then every candidate waiting for it."""
        url = response.meta["lait_image"]  # (its url_key)
        stats = self.crawler.stats
        stats.set_value("lait/run/last_response", time.time())
        stats.inc_value("lait/image/fetched")
        body = response.body
        # Each X-Robots-Tag line read whole: `otherbot: noindex, noai` is otherbot's alone (Google's reading).
        opt_out = extract.opt_out_reason((), image=True, lines=extract.robots_tag_lines(response.headers))
        if opt_out:
            result = {"reason": opt_out, "detail": "X-Robots-Tag on the image"}
        else:
            check = images.validate_image(body, self.min_side, self.max_aspect, self.formats, self.max_pixels)
            if not check.ok:
                result = {"reason": check.reason, "detail": check.detail}
            else:
                image_id = extract.image_id(body)
                self.store.put(image_id, body)
                result = {"image_id": image_id, "width": check.width, "height": check.height, "format": check.format,
                          "num_bytes": len(body), "http_status": response.status,
                          "content_type": (response.headers.get("Content-Type") or b"").decode("latin-1") or None,
                          "fetched_at": datetime.datetime.now(datetime.timezone.utc)}
                stats.inc_value("lait/image/validated")
        if "reason" in result:
            stats.inc_value(f"lait/image/rejected/{result['reason']}")
        yield from self._finish_image(url, result)

    def image_failed(self, failure) -> Iterator[Any]:
        """An image that could not be fetched rejects every candidate waiting for it."""
        url = failure.request.meta["lait_image"]
        yield from self._finish_image(url, self._image_rejected(*failure_reason(failure)))

    def _image_rejected(self, reason: str, detail: str | None) -> dict:
        self.crawler.stats.inc_value(f"lait/image/rejected/{reason}")
        return {"reason": reason, "detail": detail}

    def _finish_image(self, url: str, result: dict, candidates: list[dict] | None = None) -> Iterator[Any]:
        self.image_results[url] = result
        for candidate in self.pending.pop(url, []) + (candidates or []):
            yield self._emit(candidate, result)

    def _reject_row(self, candidate: dict, reason: str, detail: str | None) -> dict:
        return output.candidate_reject(candidate, reason, detail)

    def _emit(self, candidate: dict, result: dict):
        if "reason" in result:
            return RejectedItem(self._reject_row(candidate, result["reason"], result.get("detail")))
        row = dict(candidate)
        row.update(result)
        row["image_bytes"] = self.store.get(result["image_id"])
        row["source"] = "crawl"
        return CandidateItem(row)
