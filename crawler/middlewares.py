"""Scrapy downloader middlewares of the LAIT crawl, and its HTTP download handler."""
from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from urllib.parse import urljoin, urlsplit

from scrapy import exceptions as scrapy_errors
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy import signals
from scrapy.downloadermiddlewares.redirect import RedirectMiddleware as ScrapyRedirectMiddleware
from scrapy.downloadermiddlewares.retry import RetryMiddleware as ScrapyRetryMiddleware
from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware as ScrapyRobotsTxtMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet import defer, error as tx_error
from twisted.web.client import HTTPConnectionPool
from w3lib.url import safe_url_string

from crawler import extract, netguard, resolver
from crawler import settings as defaults
from crawler.fetch import robots_retry_seconds

logger = logging.getLogger(__name__)

#: Failures of a request that mean the server did not answer in time.
TIMEOUT_ERRORS = (scrapy_errors.DownloadTimeoutError, tx_error.TimeoutError, tx_error.TCPTimedOutError,
                  defer.TimeoutError, TimeoutError)
#: Failures of a request that mean the connection could not be made or was lost.
CONNECTION_ERRORS = (scrapy_errors.DownloadConnectionRefusedError, scrapy_errors.DownloadFailedError,
                     scrapy_errors.ResponseDataLossError, tx_error.ConnectError, ConnectionError)


class KeepAlivePool(HTTPConnectionPool):
    """Twisted's pool of keep-alive connections, that never keeps one already being closed.

    Scrapy closes the connection of a download stopped at its headers (``StopDownload``: the spider's ``not_html``
    page); when the small body had come in the same read as the headers, Twisted still finished the response and
    pooled the closing connection. The next request to the host then went out on it: the server got the GET, the
    close came before the answer, and Twisted sent the GET again on a new connection (its retry of an idempotent
    request), so the server served one Scrapy request twice (an image fetched twice, under load).
    """

    def _putConnection(self, key, connection) -> None:
        transport = connection.transport
        if transport is None or getattr(transport, "disconnecting", False) or not getattr(transport, "connected", True):
            return  # its close is under way: not for another request
        super()._putConnection(key, connection)


class HTTPDownloadHandler(HTTP11DownloadHandler):
    """Scrapy's HTTP/1.1 download handler with the ``KeepAlivePool`` (each request goes out once)."""

    def __init__(self, crawler):
        super().__init__(crawler)
        # The pool Scrapy built and configured (per-host limit, lenient parser factory), as a KeepAlivePool.
        self._pool.__class__ = KeepAlivePool


class RefusedRequest(IgnoreRequest):
    """A request refused before connecting (the network guard, an unavailable robots.txt, a redirect to a page
    seen); ``reason`` goes into the rejected row."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NetworkGuardMiddleware:
    """Refuses non-http(s) URLs and hosts that resolve to non-public addresses, before any connection.

    Placed before the robots.txt middleware, so robots.txt fetches, redirects (which re-enter the
    chain as new requests) and retries are all checked. ``LAIT_ALLOW_PRIVATE_NETWORKS`` turns the
    address check off (the scheme check stays).
    """

    def __init__(self, allow_private_networks: bool = False, stats=None, resolve=netguard.system_resolver,
                 allowed_networks: tuple[str, ...] = ()):
        self.allow_private_networks = allow_private_networks
        self.allowed_networks = tuple(allowed_networks)
        self.stats = stats
        self.resolve = resolve
        self._verdicts: dict[tuple[str, int], float] = {}  # (host, port) -> allowed until (monotonic)

    @classmethod
    def from_crawler(cls, crawler):
        allow_private_networks, networks = resolver.guard_settings(crawler.settings)
        return cls(allow_private_networks, crawler.stats, allowed_networks=tuple(str(n) for n in networks))

    #: Seconds a host's verdict is reused: one resolution per host and minute, not one per request.
    VERDICT_TTL = 60.0

    async def process_request(self, request):
        try:
            # A redirect's Location may carry credentials (user:pw@host), which no link or image URL of a page gets
            # past (extract.resolve_url): Scrapy failed on such a URL, first on its host's robots.txt, with a
            # traceback and a fetch_error. Refused as the page's references are, as invalid_url.
            extract.resolve_url(request.url, "")
        except ValueError as exc:
            raise RefusedRequest("invalid_url", f"a URL that cannot be fetched: {exc}") from None
        try:
            host, port = netguard.check_scheme(request.url)
            if not self.allow_private_networks and self._verdicts.get((host, port), 0.0) < time.monotonic():
                # getaddrinfo blocks; run it off the event loop.
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, netguard.check_url, request.url, False, self.resolve,
                                           self.allowed_networks)
                self._verdicts[(host, port)] = time.monotonic() + self.VERDICT_TTL
        except netguard.RefusedURL as exc:
            if self.stats is not None:
                self.stats.inc_value(f"lait/guard/{exc.reason}")
            logger.info("refused %s: %s", request.url, exc.detail)
            raise RefusedRequest(exc.reason, exc.detail) from None
        return None


class PageRedirectMiddleware:
    """Drops a page's redirect hop to a page the spider has seen already: that page is crawled once, under its
    own URL (``LaitSpider.follow_redirect``); the hop's page gets no row (``redirect_to_seen``), unless its
    redirects never reach a page with one (a loop: ``too_many_redirects`` at the crawl's end). A hop outside the
    crawl's page domains is refused too (``offsite_redirect``), as a link there is not followed."""

    def __init__(self, crawler):
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def process_request(self, request):
        refusal = getattr(self.crawler.spider, "redirect_refusal", None)
        if refusal and "lait_page" in request.meta and request.meta.get("redirect_urls"):
            reason = refusal(request)
            if reason == "redirect_to_seen":
                raise RefusedRequest(reason, f"{request.url} is crawled as a page of its own")
            if reason:
                raise RefusedRequest(reason, f"redirects to {request.url[:200]}, outside the crawl's page domains")
        return None


class RedirectMiddleware(ScrapyRedirectMiddleware):
    """Scrapy's redirect middleware, with a redirect to a URL that cannot be fetched refused as a page's references are.

    Scrapy failed on a Location that is no valid URL (``http://[bad/``) or a ``mailto:`` or ``javascript:`` one while
    it built the redirect's request, and the page or image ended as ``fetch_error``; one of another scheme (``ftp://``)
    it handed back, as ``http_302``. Now it is ``invalid_url`` or ``unsupported_scheme``, as an ``<img src>`` of either
    is (``extract.parse_page``) and as the network guard refuses a redirect to a URL with credentials.
    """

    #: The statuses whose Location Scrapy follows.
    STATUSES = frozenset({301, 302, 303, 307, 308})

    def process_response(self, request, response):
        if self._follows(request, response):
            _check_redirect_target(request, response)
        return super().process_response(request, response)

    def _follows(self, request, response) -> bool:
        """Whether Scrapy's ``process_response`` would follow the response's Location (its own conditions)."""
        if (request.meta.get("dont_redirect", False) or request.meta.get("handle_httpstatus_all", False)
                or response.status in getattr(self.crawler.spider, "handle_httpstatus_list", ())
                or response.status in request.meta.get("handle_httpstatus_list", ())):
            return False
        return response.status in self.STATUSES and "Location" in response.headers


def _check_redirect_target(request, response) -> None:
    """``RefusedRequest`` when the response's Location, read as Scrapy reads it, is no URL (``invalid_url``) or not an
    http(s) one (``unsupported_scheme``). The detail names the redirecting URL and the problem, not the target, which
    may carry credentials."""
    raw = response.headers["Location"]
    try:
        location = safe_url_string(raw)
        if raw.startswith(b"//"):  # (as Scrapy joins a protocol-relative Location)
            location = urlparse_cached(request).scheme + "://" + location.lstrip("/")
        scheme = urlsplit(urljoin(request.url, location)).scheme
    except ValueError as exc:
        detail = f"{request.url[:200]} redirects to a URL that cannot be fetched: {exc}"
        raise RefusedRequest("invalid_url", detail) from None
    if scheme not in netguard.ALLOWED_SCHEMES:
        detail = f"{request.url[:200]} redirects to a URL of scheme {scheme or '(none)'}, not http(s)"
        raise RefusedRequest("unsupported_scheme", detail)


def crawl_delay_floor(crawl_delay: float | None, download_delay: float, cap: float) -> float | None:
    """The delay between two requests to a host whose robots.txt asks for ``crawl_delay`` seconds: that, capped at
    ``cap`` (``LAIT_MAX_CRAWL_DELAY``: a robots.txt asking for an hour would stall the crawl), never below
    ``download_delay`` (``DOWNLOAD_DELAY``); None when it asks for none (or 0, or no number)."""
    if crawl_delay is None or not crawl_delay > 0:
        return None
    return max(download_delay, min(float(crawl_delay), cap))


def retry_after_seconds(value: bytes | str | None, now: float | None = None) -> float | None:
    """The seconds an HTTP ``Retry-After`` value asks to wait: a number of seconds or an HTTP-date (from ``now``,
    epoch seconds); None when there is none or it is neither. A date in the past is 0."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryMiddleware(ScrapyRetryMiddleware):
    """Scrapy's retry middleware, that honours a 429's or 503's ``Retry-After`` (seconds or an HTTP-date).

    The retry waits what the server asks, up to ``LAIT_MAX_RETRY_AFTER`` seconds (counted as
    ``lait/retry/waited_retry_after``); a longer wait is not waited for: the request gives up at once, its status its
    reject (``http_429``, ``http_503``), counted as ``lait/retry/retry_after_too_long``. The wait holds that request
    only, not the crawl."""

    #: The statuses whose Retry-After is read (RFC 9110: 503; RFC 6585: 429).
    STATUSES = frozenset({429, 503})

    def __init__(self, settings):
        super().__init__(settings)
        self.max_retry_after = settings.getfloat("LAIT_MAX_RETRY_AFTER", defaults.LAIT_MAX_RETRY_AFTER)

    async def process_response(self, request, response):
        wait = None
        if (response.status in self.STATUSES and response.status in self.retry_http_codes
                and not request.meta.get("dont_retry", False)):
            wait = retry_after_seconds(response.headers.get("Retry-After"))
        if wait is not None and wait > self.max_retry_after:
            self.crawler.stats.inc_value("lait/retry/retry_after_too_long")
            logger.info("gave up on %s: Retry-After %.0f s is over LAIT_MAX_RETRY_AFTER %s s", request.url, wait,
                        self.max_retry_after)
            return response
        result = super().process_response(request, response)
        if wait and result is not response:
            self.crawler.stats.inc_value("lait/retry/waited_retry_after")
            await asyncio.sleep(wait)
        return result


class RobotsUnavailable:
    """The robots.txt of a host that answered 5xx or could not be reached: RFC 9309 says complete disallow,
    until ``retry_at`` (the middleware's clock), when the next request to the host asks for it again."""

    def __init__(self, why: str, retry_at: float = float("inf")):
        self.why = why
        self.retry_at = retry_at


def retry_interval(settings) -> float:
    """``LAIT_ROBOTS_RETRY_AFTER``, the seconds before an unavailable robots.txt is asked for again; ValueError
    when it is not a number of seconds (0 or more)."""
    return robots_retry_seconds(settings.get("LAIT_ROBOTS_RETRY_AFTER", defaults.LAIT_ROBOTS_RETRY_AFTER))


class RobotsErrorWithoutTraceback(logging.Filter):
    """Takes the traceback off Scrapy's "Error downloading <robots.txt's request>" record: a host that cannot be
    reached (a mistyped port, a CDN that times out) printed one for each host, where its outcome is a line of its
    own, the host's ``robots_unavailable`` rows (or, for other failures, the reason its requests meet). The
    record itself stays: one line naming the request and the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.msg, str) and record.msg.startswith("Error downloading"):
            record.exc_info = record.exc_text = None
        return True


ROBOTS_ERROR_FILTER = RobotsErrorWithoutTraceback()


class RobotsTxtMiddleware(ScrapyRobotsTxtMiddleware):
    """Scrapy's robots.txt middleware, with RFC 9309's rule for a robots.txt that cannot be had.

    A 4xx robots.txt still allows everything. A server error (5xx, after Scrapy's retries) or no answer
    (timeout, connection refused or reset) disallows the whole host: its pages and images fail as
    ``robots_unavailable``. ``LAIT_ROBOTS_RETRY_AFTER`` seconds later the next request to the host fetches
    robots.txt again (a long crawl does not lose a host to a short outage); the requests in between are
    rejected. A robots.txt the guard refuses, whose host does not resolve, or that fails otherwise,
    allows (as Scrapy's does): the host's own requests meet the reason.
    """

    def __init__(self, crawler):
        super().__init__(crawler)
        self.retry_after = retry_interval(crawler.settings)
        self.clock = time.monotonic  # tests set another
        self.download_delay = crawler.settings.getfloat("DOWNLOAD_DELAY")
        self.max_crawl_delay = crawler.settings.getfloat("LAIT_MAX_CRAWL_DELAY", defaults.LAIT_MAX_CRAWL_DELAY)
        self.crawl_delays: dict[str, float] = {}  # downloader slot (host) -> its robots.txt's Crawl-delay floor
        self._delay_of: dict[str, tuple[object, float | None]] = {}  # netloc -> (its parser, the floor it asks)
        # Connected after AutoThrottle's handler (extensions are built before the downloader): its adjustment of a
        # slot's delay after each response is raised back to the host's Crawl-delay.
        crawler.signals.connect(self._response_downloaded, signal=signals.response_downloaded)
        # (a logger keeps one of each filter, however many crawlers add it)
        logging.getLogger(ScrapyRobotsTxtMiddleware.__module__).addFilter(ROBOTS_ERROR_FILTER)

    async def robot_parser(self, request):
        netloc = urlparse_cached(request).netloc
        parser = self._parsers.get(netloc)
        if isinstance(parser, RobotsUnavailable) and self.clock() >= parser.retry_at:
            del self._parsers[netloc]  # Scrapy's fetches it again; requests meanwhile wait for that answer
            self._stats.inc_value("lait/robots/fetched_again")
            logger.info("asking for the robots.txt of %s again (%s)", netloc, parser.why)
        return await super().robot_parser(request)

    #: Failures of the robots.txt request that say the server could not be reached or did not answer;
    #: any other (a refusal of the guard, a host that does not resolve, ...) leaves the host's own requests
    #: to meet it with their own reason.
    UNREACHABLE = TIMEOUT_ERRORS + CONNECTION_ERRORS
    NOT_UNREACHABLE = (IgnoreRequest, scrapy_errors.CannotResolveHostError, tx_error.DNSLookupError,
                       tx_error.UnknownHostError)

    async def _parse_robots(self, response, netloc: str, request) -> None:
        if response.status < 500:
            await super()._parse_robots(response, netloc, request)
            return
        self._stats.inc_value("robotstxt/response_count")
        self._stats.inc_value(f"robotstxt/response_status_count/{response.status}")
        self._unavailable(netloc, f"{response.url} answered HTTP {response.status}")

    def _robots_error(self, exc: Exception, netloc: str) -> None:
        if isinstance(exc, self.NOT_UNREACHABLE) or not isinstance(exc, self.UNREACHABLE):
            super()._robots_error(exc, netloc)
            return
        self._stats.inc_value(f"robotstxt/exception_count/{type(exc)}")
        self._unavailable(netloc, f"robots.txt of {netloc}: {type(exc).__name__}: {exc}"[:300])

    def _unavailable(self, netloc: str, why: str) -> None:
        waiting = self._parsers[netloc]
        self._parsers[netloc] = RobotsUnavailable(why, self.clock() + self.retry_after)
        waiting.callback(self._parsers[netloc])

    def process_request_2(self, rp, request) -> None:
        if isinstance(rp, RobotsUnavailable):
            self._stats.inc_value("robotstxt/unavailable")
            raise RefusedRequest("robots_unavailable", rp.why)
        super().process_request_2(rp, request)
        if rp is not None:
            self._apply_crawl_delay(rp, request)

    def _apply_crawl_delay(self, rp, request) -> None:
        """Keep the delay of the request's downloader slot (its host) at least the robots.txt's ``Crawl-delay`` for
        our user agent (``crawl_delay_floor``)."""
        netloc = urlparse_cached(request).netloc
        known = self._delay_of.get(netloc)
        if known is None or known[0] is not rp:  # once per parser (a robots.txt asked for again is read again)
            useragent = self._robotstxt_useragent or request.headers.get(b"User-Agent", self._default_useragent)
            try:
                asked = rp.crawl_delay(useragent)
            except (AttributeError, NotImplementedError, TypeError, ValueError):  # a parser without it
                asked = None
            floor = crawl_delay_floor(asked, self.download_delay, self.max_crawl_delay)
            self._delay_of[netloc] = known = (rp, floor)
            if floor is not None:
                self._stats.inc_value("lait/robots/crawl_delay_hosts")
                logger.info("robots.txt of %s asks for a Crawl-delay of %s s: %s s between its requests", netloc,
                            asked, floor)
        floor = known[1]
        if floor is None:
            return
        downloader = self.crawler.engine.downloader
        key, slot = downloader._get_slot(request)  # (created here when it is the host's first request)
        self.crawl_delays[key] = floor
        slot.delay = max(slot.delay, floor)
        # RANDOMIZE_DOWNLOAD_DELAY's jitter would go down to half the delay: a Crawl-delay is a least delay.
        if getattr(slot, "jitter", None):
            slot.jitter = 0.0

    def _response_downloaded(self, response, request, **kwargs) -> None:
        key = request.meta.get("download_slot")
        floor = self.crawl_delays.get(key)
        slot = self.crawler.engine.downloader.slots.get(key) if floor is not None else None
        if slot is not None and slot.delay < floor:
            slot.delay = floor
