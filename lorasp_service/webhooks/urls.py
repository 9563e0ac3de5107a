"""Webhook URL checks: http(s) only, and (SSRF) never an address of the deployment's own network.

A tenant chooses the URL, and the worker sends requests to it from inside the deployment, so a URL
resolving to loopback, a private range, link-local (cloud metadata at 169.254.169.254), multicast,
reserved or unspecified addresses is refused, at registration and again right before each attempt (DNS
may have changed). Every address the name resolves to must be public, and the attempt then connects to
the checked address itself, so a second lookup cannot swap in another one (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

ALLOWED_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookURLError(ValueError):
    """The URL is unusable for a webhook; the message says why (it names no server path)."""


class UnresolvableHostError(WebhookURLError):
    """The host name does not resolve (maybe only for now: a delivery retries it)."""


@dataclass(frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str  # as written in the URL (used for the Host header and TLS SNI)
    port: int
    address: IPAddress  # the checked address the request connects to


def parse_webhook_url(url: str) -> SplitResult:
    """Syntax only: absolute http(s) URL with a host, no credentials, no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as error:
        raise WebhookURLError(f"the URL is malformed ({error})") from error
    if parts.scheme not in ALLOWED_SCHEMES:
        raise WebhookURLError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise WebhookURLError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLError("the URL must not contain credentials")
    if parts.fragment:
        raise WebhookURLError("the URL must not contain a fragment")
    return parts


def is_public_address(address: IPAddress) -> bool:
    # An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is judged as the IPv4 address it carries.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnresolvableHostError(f"the host '{host}' does not resolve") from error
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        # Strip an IPv6 zone ("fe80::1%eth0"): the address itself decides.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableHostError(f"the host '{host}' does not resolve")
    return addresses


def check_webhook_url(url: str, *, allow_private_networks: bool) -> CheckedURL:
    """Parse, resolve and vet `url`; raises `WebhookURLError` (or `UnresolvableHostError`)."""
    parts = parse_webhook_url(url)
    host = parts.hostname
    assert host is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private_networks:
        refused = [address for address in addresses if not is_public_address(address)]
        if refused:
            raise WebhookURLError(
                f"the host '{host}' resolves to {refused[0]}, a loopback, private, link-local or otherwise "
                "non-public address; webhooks may only reach public addresses"
            )
    return CheckedURL(url=url, scheme=parts.scheme, host=host, port=port, address=addresses[0])
