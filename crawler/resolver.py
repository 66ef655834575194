"""The resolver Twisted connects with, guarded: DNS rebinding cannot slip past the network guard.

``NetworkGuardMiddleware`` resolves each host and refuses private answers before a request is sent,
but Twisted resolves the name again when it connects. A DNS server that answers a public address
the first time and ``127.0.0.1`` the second (DNS rebinding) would pass the middleware. This
resolver is the one the connection uses (``TWISTED_DNS_RESOLVER``), and it applies the same rule
to the address actually connected to.
"""
from __future__ import annotations

import ipaddress
import logging

from scrapy.resolver import CachingThreadedResolver
from twisted.internet import error
from twisted.internet.interfaces import IResolverSimple
from zope.interface import implementer

from crawler import netguard

logger = logging.getLogger(__name__)


class PrivateAddressError(error.DNSLookupError):
    """A name resolved, at connect time, to an address the guard refuses."""


#: Names refused at connect time -> the address they gave. Twisted's endpoint reports a failed
#: lookup as "no results", whatever the resolver raised; the spider looks the host up here to
#: give the right reject reason.
REFUSED: dict[str, str] = {}


def guard_settings(settings) -> tuple[bool, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    """``LAIT_ALLOW_PRIVATE_NETWORKS`` and ``LAIT_ALLOWED_NETWORKS`` as the guard reads them (Scrapy's settings);
    ValueError, one line naming the setting, for a value it cannot read. The one reader of both: this resolver
    is built before the spider checks its settings, so ``scrapy crawl lait -s ...`` names the setting too."""
    try:
        allow = settings.getbool("LAIT_ALLOW_PRIVATE_NETWORKS")
    except (TypeError, ValueError):
        raise ValueError(f"LAIT_ALLOW_PRIVATE_NETWORKS must be true or false, got "
                         f"{settings.get('LAIT_ALLOW_PRIVATE_NETWORKS')!r}") from None
    try:
        names = settings.getlist("LAIT_ALLOWED_NETWORKS")
    except TypeError:
        raise ValueError(f"LAIT_ALLOWED_NETWORKS must be a list of networks (CIDRs such as 127.0.0.1/32), got "
                         f"{settings.get('LAIT_ALLOWED_NETWORKS')!r}") from None
    networks = []
    for name in names:
        try:
            networks.append(ipaddress.ip_network(name, strict=False))
        except (TypeError, ValueError):
            raise ValueError(f"LAIT_ALLOWED_NETWORKS: {name!r} is not a network (a CIDR such as "
                             f"127.0.0.1/32)") from None
    return allow, tuple(networks)


def refused_address(host: str | None) -> str | None:
    """The private address ``host`` resolved to when the resolver refused it, else None."""
    return REFUSED.get(host or "")


@implementer(IResolverSimple)
class GuardedResolver(CachingThreadedResolver):
    """Scrapy's caching resolver, refusing non-public answers unless private networks are allowed."""

    def __init__(self, reactor, cache_size: int, timeout: float, allow_private_networks: bool = False,
                 allowed_networks: tuple = ()):
        super().__init__(reactor, cache_size, timeout)
        self.allow_private_networks = allow_private_networks
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)

    @classmethod
    def from_crawler(cls, crawler, reactor):
        """Scrapy's hook: the cache settings plus the LAIT guard settings."""
        settings = crawler.settings
        cache_size = settings.getint("DNSCACHE_SIZE") if settings.getbool("DNSCACHE_ENABLED") else 0
        allow_private_networks, allowed_networks = guard_settings(settings)
        return cls(reactor, cache_size, settings.getfloat("DNS_TIMEOUT"), allow_private_networks, allowed_networks)

    def getHostByName(self, name: str, timeout=()):  # noqa: N802 (Twisted's interface name)
        """Resolve as Scrapy does, then check the address the connection will use."""
        return super().getHostByName(name, timeout).addCallback(self.check, name)

    def check(self, address: str, name: str) -> str:
        """``address`` if the guard allows it, else ``PrivateAddressError`` (reason ``private_network_refused``)."""
        if self.allow_private_networks or netguard.is_public_address(address):
            return address
        if any(ipaddress.ip_address(address.split("%")[0]) in n for n in self.networks):
            return address
        logger.info("refused at connect time: %s resolved to %s", name, address)
        if len(REFUSED) < 100_000:
            REFUSED[name] = address
        raise PrivateAddressError(f"private_network_refused: {name} resolved to {address} at connect time")
