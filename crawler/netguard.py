"""The network guard: only http(s), and no private, loopback, link-local or multicast addresses.

The check runs after name resolution and before any connection, on every request, so a redirect
to ``http://169.254.169.254/`` is refused like a direct link to it. Tests and the demo crawl a site
on loopback and turn the guard off with ``allow_private_networks``.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")

Resolver = Callable[[str, int], list[str]]


class RefusedURL(Exception):
    """A URL the guard will not fetch; ``reason`` is the snake_case reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for a host (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; False for private, loopback, link-local, multicast..."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_reserved or ip.is_unspecified)


def check_scheme(url: str) -> tuple[str, int]:
    """The URL's host and port, or ``RefusedURL`` when it is not http(s) or has no host."""
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise RefusedURL("unsupported_scheme", f"{parts.scheme or 'no'} scheme in {url[:200]}")
    if not parts.hostname:
        raise RefusedURL("unsupported_scheme", f"no host in {url[:200]}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RefusedURL("invalid_url", str(exc)) from None
    return parts.hostname, port


def resolve_host(host: str, port: int, resolve: Resolver = system_resolver) -> list[str]:
    """The host's addresses, or ``RefusedURL`` (reason ``dns_error``) when it does not resolve."""
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise RefusedURL("dns_error", f"{host}: {exc}") from None
    if not addresses:
        raise RefusedURL("dns_error", f"{host}: no address")
    return list(addresses)


def check_url(url: str, allow_private_networks: bool = False, resolve: Resolver = system_resolver,
              allowed_networks: tuple[str, ...] = ()) -> list[str]:
    """Resolve a URL's host and refuse it unless every address is public; returns the addresses.

    ``allowed_networks`` (CIDRs) opens single ranges, e.g. ``127.0.0.1/32`` for a local test site,
    while every other private range stays refused.
    """
    host, port = check_scheme(url)
    if allow_private_networks:
        return []
    addresses = resolve_host(host, port, resolve)
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    blocked = [a for a in addresses if not is_public_address(a)
               and not any(ipaddress.ip_address(a.split("%")[0]) in n for n in networks)]
    if blocked:
        # One private answer is enough to refuse: the connection could go to any of them.
        raise RefusedURL("private_network_refused", f"{host} resolves to {', '.join(blocked)}")
    return addresses
