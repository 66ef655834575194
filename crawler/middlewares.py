"""Scrapy downloader middlewares of the LAIT crawl."""
from __future__ import annotations

import asyncio
import logging
import time

from scrapy.downloadermiddlewares.redirect import MetaRefreshMiddleware as ScrapyMetaRefreshMiddleware
from scrapy.exceptions import IgnoreRequest

from crawler import netguard

logger = logging.getLogger(__name__)


class RefusedRequest(IgnoreRequest):
    """A request the network guard refused before connecting; ``reason`` goes into the rejected row."""

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
        settings = crawler.settings
        return cls(settings.getbool("LAIT_ALLOW_PRIVATE_NETWORKS"), crawler.stats,
                   allowed_networks=tuple(settings.getlist("LAIT_ALLOWED_NETWORKS")))

    #: Seconds a host's verdict is reused: one resolution per host and minute, not one per request.
    VERDICT_TTL = 60.0

    async def process_request(self, request):
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


class MetaRefreshMiddleware(ScrapyMetaRefreshMiddleware):
    """Scrapy's ``<meta http-equiv="refresh">`` redirects, keeping a page whose URLs do not parse.

    Scrapy's reads the page's ``<base href>`` and refresh URL, and raises ValueError when one of them is
    malformed (``http://[bad/``): the page would end as a ``fetch_error`` with all its images. Here it
    goes on to the spider, whose parser skips such a base and rejects each bad image URL.
    """

    def process_response(self, request, response):
        try:
            return super().process_response(request, response)
        except ValueError as exc:
            logger.info("no meta refresh for %s: %s", response.url, exc)
            return response
