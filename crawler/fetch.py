"""A small blocking fetcher with the spider's politeness and safety rules, for the WARC reader's
download step (a Beam DoFn cannot run Scrapy's reactor).

Same rules as the crawl: the network guard on the first URL and on every redirect, robots.txt,
the user agent with its contact URL, a per-host delay, a timeout, a size cap on the decompressed
body, at most ``max_redirects`` hops.

URLs are requested as Scrapy requests them (``w3lib.url.safe_url_string``: spaces and non-ASCII
percent-encoded, the host in IDNA), redirect targets included. robots.txt follows RFC 9309: a
missing one (4xx) allows everything; one the server fails to give (5xx) or that cannot be reached
(timeout, connection error) disallows the whole host, and its URLs fail as ``robots_unavailable``
until ``robots_retry_after`` seconds have passed; the next URL of the host then asks for it again.

Each hop resolves its host once: the guard checks those addresses and the connection goes to one of
them, never to a second answer (DNS rebinding). The Host header, and for HTTPS the SNI name and the
certificate check, still use the host name. Environment proxies are not used: a proxy would
resolve the name itself, out of the guard's sight.
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import socket
import ssl
import threading
import time
import urllib.robotparser
import zlib
from urllib.parse import urljoin, urlsplit

from w3lib.url import safe_url_string

from crawler import netguard
from crawler import settings as defaults

logger = logging.getLogger(__name__)


class FetchError(Exception):
    """A fetch that failed; ``reason`` is the snake_case reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class Fetched:
    """A successful response: the final URL, status, headers (lower-case names, ``header_dict``) and decoded body;
    ``header_lines``, the (name, value) lines as they came, for what must read them apart
    (``extract.robots_tag_lines``: a user agent before an X-Robots-Tag line scopes that line only)."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes
    header_lines: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class _PinnedConnectionMixin:
    """Connects to addresses vetted by the guard instead of resolving the host name again."""

    def __init__(self, host: str, port: int, *, addresses: list[str], **kwargs):
        super().__init__(host, port, **kwargs)
        self.addresses = list(addresses)
        # http.client's connect() (and HTTPS's, before it wraps the socket for ``self.host``) opens
        # the socket through this attribute: the one place where the name would be resolved again.
        self._create_connection = self._connect_vetted

    def _connect_vetted(self, address, timeout, source_address=None) -> socket.socket:
        """A socket to the first vetted address that answers, on the URL's port."""
        error = OSError(f"no address for {self.host}")
        for ip in self.addresses:
            try:
                return socket.create_connection((ip, address[1]), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error


class PinnedHTTPConnection(_PinnedConnectionMixin, http.client.HTTPConnection):
    """An HTTP connection to the vetted addresses; the Host header keeps the host name."""


class PinnedHTTPSConnection(_PinnedConnectionMixin, http.client.HTTPSConnection):
    """An HTTPS connection to the vetted addresses; SNI and the certificate check use the host name."""


#: Header fields whose repeated lines are one list (RFC 9110, 5.3) that LAIT reads whole: an opt-out counts on any line.
LIST_FIELDS = ("x-robots-tag",)


def header_dict(lines) -> dict[str, str]:
    """(name, value) header lines -> {lower-case name: value}. A list field's (``LIST_FIELDS``) lines joined by ``, ``
    as RFC 9110 combines them, so that ``noai`` on the first of two X-Robots-Tag lines counts (the spider reads them
    all, ``getlist``); of any other field, the last line, as Scrapy's ``Headers.get`` reads it."""
    headers: dict[str, str] = {}
    for name, value in lines:
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in LIST_FIELDS and name in headers else value
    return headers


def robots_retry_seconds(value, name: str = "LAIT_ROBOTS_RETRY_AFTER") -> float:
    """The seconds before an unavailable robots.txt is asked for again, from ``value`` (a setting, an option);
    ValueError naming ``name`` when it is not a number of seconds, 0 or more."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:  # NaN too
        raise ValueError(f"{name} must be a number of seconds, 0 or more, not {value!r}")
    return seconds


class PoliteFetcher:
    """Fetches http(s) URLs one at a time per host, obeying robots.txt and refusing private networks."""

    def __init__(self, user_agent: str = defaults.USER_AGENT, allow_private_networks: bool = False,
                 timeout: float = defaults.DOWNLOAD_TIMEOUT, max_bytes: int = defaults.LAIT_IMAGE_MAXSIZE,
                 obey_robots: bool = defaults.ROBOTSTXT_OBEY, delay: float = 1.0, max_redirects: int = defaults.REDIRECT_MAX_TIMES,
                 resolve: netguard.Resolver = netguard.system_resolver, allowed_networks: tuple[str, ...] = (),
                 ssl_context: ssl.SSLContext | None = None,
                 robots_retry_after: float = defaults.LAIT_ROBOTS_RETRY_AFTER, clock=time.monotonic):
        self.user_agent = user_agent
        self.allow_private_networks = allow_private_networks
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.obey_robots = obey_robots
        self.delay = delay
        self.max_redirects = max_redirects
        self.resolve = resolve
        self.allowed_networks = tuple(allowed_networks)  # CIDRs opened while the guard is on
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.robots_retry_after = robots_retry_seconds(robots_retry_after, "robots_retry_after")
        self.clock = clock
        # scheme://netloc -> its parser, None (no rules), or (why unavailable, when to ask again)
        self._robots: dict[str, urllib.robotparser.RobotFileParser | tuple[str, float] | None] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def _wait_turn(self, host: str) -> None:
        with self._lock:
            wait = self._last.get(host, 0.0) + self.delay - time.monotonic()
            self._last[host] = time.monotonic() + max(wait, 0.0)
        if wait > 0:
            time.sleep(wait)

    def _get(self, url: str, max_bytes: int) -> Fetched:
        """One guarded request, no redirect following, connected to the address the guard checked."""
        host, port = netguard.check_scheme(url)
        addresses = (netguard.check_url(url, self.allow_private_networks, self.resolve, self.allowed_networks)
                     or netguard.resolve_host(host, port, self.resolve))  # guard off: still resolve only once
        parts = urlsplit(url)
        self._wait_turn(parts.netloc)
        if parts.scheme == "https":
            connection = PinnedHTTPSConnection(host, port, addresses=addresses, timeout=self.timeout,
                                               context=self.ssl_context)
        else:
            connection = PinnedHTTPConnection(host, port, addresses=addresses, timeout=self.timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with contextlib.closing(connection):
            try:
                connection.request("GET", target, headers={"User-Agent": self.user_agent, "Accept-Encoding": "gzip"})
                response = connection.getresponse()
            except http.client.InvalidURL as exc:  # control characters in the URL
                raise FetchError("invalid_url", f"{url[:200]}: {exc}") from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:  # certificate errors included
                reason = "timeout" if "timed out" in str(exc) else "connection_error"
                raise FetchError(reason, f"{url}: {exc!r}") from None
            except ValueError as exc:  # a non-ASCII path or header (after OSError: SSL errors are ValueErrors too)
                raise FetchError("invalid_url", f"{url[:200]}: {exc}") from None
            return self._body(url, response, max_bytes)

    def _body(self, url: str, response: http.client.HTTPResponse, max_bytes: int) -> Fetched:
        """The response read within the size cap and the deadline, gzip decoded."""
        with response:
            lines = list(response.headers.items())  # every line: http.client keeps repeated ones
            headers = header_dict(lines)
            try:
                raw = self._read(response, max_bytes + 1, url)
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                raise FetchError("timeout" if "timed out" in str(exc) else "connection_error", repr(exc)) from None
        if len(raw) > max_bytes:
            raise FetchError("too_large", f"{url}: body over {max_bytes} bytes")
        if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip"):
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                raw = decompressor.decompress(raw, max_bytes + 1)
            except zlib.error as exc:
                raise FetchError("fetch_error", f"{url}: bad gzip body ({exc})") from None
            if len(raw) > max_bytes:
                raise FetchError("too_large", f"{url}: body over {max_bytes} bytes after decompression")
        return Fetched(url, response.status, headers, raw, lines)

    def _read(self, response, limit: int, url: str) -> bytes:
        """Up to ``limit`` bytes of the body within ``timeout`` seconds in all.

        The socket timeout bounds each read only: a server trickling one byte per second would
        otherwise hold a worker for as long as the size cap allows.
        """
        deadline = time.monotonic() + self.timeout
        read = getattr(response, "read1", None) or response.read  # read1: one recv, not a fill
        chunks, size = [], 0
        while size < limit:
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"{url}: body not received within {self.timeout} s")
            chunk = read(min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    #: Why the robots.txt of a host could not be had, for the hosts RFC 9309 says to disallow wholly.
    _UNAVAILABLE_REASONS = ("timeout", "connection_error")

    def _robots_parser(self, key: str) -> urllib.robotparser.RobotFileParser | str | None:
        """The parsed robots.txt of ``scheme://netloc``; None (no rules) or, when unavailable, why (a str)."""
        try:
            fetched = self.fetch(key + "/robots.txt", check_robots=False)
        except netguard.RefusedURL:
            return None  # the guard refuses the host's URLs themselves, with their own reason
        except FetchError as exc:
            status = exc.reason[len("http_"):] if exc.reason.startswith("http_") else ""
            if exc.reason in self._UNAVAILABLE_REASONS or (status.isdigit() and int(status) >= 500):
                return f"{key}/robots.txt: {exc.reason}"
            return None  # 4xx, too many redirects, too large, ...: no rules
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(fetched.body.decode("utf-8", errors="replace").splitlines())
        return parser

    def allowed_by_robots(self, url: str) -> bool:
        """Whether robots.txt of the URL's host lets our user agent fetch it (no robots.txt: yes).

        Raises ``FetchError("robots_unavailable")`` when the server failed to give it (5xx) or could not be
        reached: RFC 9309 says to assume complete disallow then. That verdict holds ``robots_retry_after``
        seconds, then the next URL of the host asks for robots.txt again; any other verdict is kept for the
        fetcher's life.
        """
        if not self.obey_robots:
            return True
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        parser = self._robots.get(key)
        if key not in self._robots or (isinstance(parser, tuple) and self.clock() >= parser[1]):
            parser = self._robots_parser(key)
            if isinstance(parser, str):
                parser = (parser, self.clock() + self.robots_retry_after)
            self._robots[key] = parser
        if isinstance(parser, tuple):
            raise FetchError("robots_unavailable", parser[0])
        return parser is None or parser.can_fetch(self.user_agent, url)

    def fetch(self, url: str, check_robots: bool = True) -> Fetched:
        """GET a URL, following redirects through the guard; ``FetchError``/``RefusedURL`` on failure.

        The URL and every redirect target are requested as Scrapy would (``safe_url_string``).
        """
        url = _request_url(url)
        for _ in range(self.max_redirects + 1):
            if check_robots and not self.allowed_by_robots(url):
                raise FetchError("robots_disallowed", url)
            fetched = self._get(url, self.max_bytes)
            if fetched.status in (301, 302, 303, 307, 308) and "location" in fetched.headers:
                # http.client gives header values as Latin-1 text: back to the bytes, then as Scrapy reads them.
                location = fetched.headers["location"].encode("latin-1", errors="replace")
                try:
                    url = _request_url(urljoin(url, safe_url_string(location)))
                except ValueError as exc:  # `http://[bad/`, a port out of range: was a ValueError out of the DoFn
                    detail = f"{url[:200]} redirects to a URL that cannot be fetched: {exc}"
                    raise FetchError("invalid_url", detail) from None
                continue
            if not 200 <= fetched.status < 300:
                raise FetchError(f"http_{fetched.status}", url)
            return fetched
        raise FetchError("too_many_redirects", url)


def _request_url(url: str) -> str:
    """``url`` as it goes on the wire: spaces and non-ASCII percent-encoded, the host in IDNA (as Scrapy
    requests it); a URL that cannot be written so is left to the request, which rejects it."""
    try:
        return safe_url_string(url)
    except ValueError:
        return url
