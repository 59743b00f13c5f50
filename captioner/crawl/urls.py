"""Which URLs AltCap may fetch, and the errors and limits of a fetch.

Every URL comes from a stranger, so before any connection: the scheme, the host and the port
are checked, the host is resolved once, and every address it resolves to must be public
(loopback, private, link-local, multicast and the cloud metadata addresses are refused, also
when embedded in IPv6) unless the operator allows private addresses. The download itself
(``captioner.crawl.fetch``) connects to the address checked here, never resolving again."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import idna

from captioner.errors import AltCapError, InvalidSettings

__all__ = [
    "ALWAYS_BLOCKED",
    "DEFAULT_LIMITS",
    "MAX_URL_LENGTH",
    "PRIVATE",
    "BlockedAddress",
    "CheckedURL",
    "FetchError",
    "FetchLimits",
    "FetchTimeout",
    "HTTPStatusError",
    "InvalidURL",
    "Resolver",
    "TooLarge",
    "TooManyRedirects",
    "UnsupportedDocument",
    "UnsupportedImageType",
    "check_url",
    "system_resolver",
]

MAX_URL_LENGTH = 2048


Resolver = Callable[[str, int], Sequence[str]]


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(AltCapError):
    """The image could not be downloaded (upstream error, refused connection, TLS failure)."""

    code = "fetch_failed"
    http_status = 502


class InvalidURL(FetchError):
    code = "invalid_url"
    http_status = 400


class BlockedAddress(FetchError):
    """The URL leads to an address the service must not reach (loopback, private, metadata…)."""

    code = "blocked_address"
    http_status = 403


class FetchTimeout(FetchError):
    code = "fetch_timeout"
    http_status = 504


class TooLarge(FetchError):
    code = "too_large"
    http_status = 413


class TooManyRedirects(FetchError):
    code = "too_many_redirects"
    http_status = 502


class UnsupportedImageType(FetchError):
    """The server sent something that is not an image format we accept."""

    code = "unsupported_image"
    http_status = 415


class HTTPStatusError(FetchError):
    """The server answered with an HTTP status other than 200 (``status`` says which)."""

    code = "fetch_failed"
    http_status = 502

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class UnsupportedDocument(FetchError):
    """A document (page, sitemap) of a media type the caller did not ask for."""

    code = "unsupported_document"
    http_status = 415


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 10 * 1024 * 1024  # body cap; bigger bodies fail with too_large
    connect_timeout: float = 3.0  # seconds to open a TCP connection
    read_timeout: float = 5.0  # seconds of silence allowed between bytes
    total_timeout: float = 10.0  # seconds for the whole fetch, redirects included
    max_redirects: int = 3  # redirects followed, each one checked again
    allow_private: bool = False  # reach loopback/private networks (intranet deployments, tests)
    # How whoever runs this fetcher allows them, for the refusal's message: the service's
    # setting by default (its operators read it); the batch CLI names its flag.
    allow_private_hint: str = (
        "an operator can allow loopback and private addresses with "
        "ALTCAP_ALLOW_PRIVATE_NETWORKS=true (an intranet deployment)"
    )
    user_agent: str = "AltCap/0.1 (+alt text for images)"
    ca_certs: str | None = None  # PEM bundle to trust instead of the system store (private CAs)

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_redirects < 0:
            raise InvalidSettings("max_bytes must be positive and max_redirects not negative")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise InvalidSettings("fetch timeouts must be positive")


DEFAULT_LIMITS = FetchLimits()


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed every check, with the addresses it may be fetched from."""

    url: str
    scheme: str  # "http" or "https"
    host: str  # ASCII hostname (IDNA, no trailing dot) or IP literal without brackets
    port: int
    target: str  # request target: percent-encoded path and query, never empty
    addresses: tuple[str, ...]  # all resolved addresses, all allowed; connect to these only

    @property
    def host_header(self) -> str:
        """``Host`` as the origin server expects it: brackets for IPv6, port when not default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _networks(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in pairs)


# Blocked even with allow_private: nothing legitimate serves images there, and link-local is
# where clouds put their metadata services (credentials).
ALWAYS_BLOCKED = _networks(
    ("0.0.0.0/8", "unspecified"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("100.100.100.200/32", "cloud metadata"),  # Alibaba Cloud
    ("192.0.0.192/32", "cloud metadata"),  # Oracle Cloud (legacy)
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255
    ("::/128", "unspecified"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::/32", "cloud metadata"),  # AWS IMDS over IPv6 (fd00:ec2::254)
    ("ff00::/8", "multicast"),
)


# Blocked unless allow_private: IANA special-purpose ranges that are not globally reachable.
PRIVATE = _networks(
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private"),
    ("fec0::/10", "site-local"),
    ("2001::/23", "reserved"),  # Teredo, benchmarking (2001:2::/48), ORCHID
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "reserved"),
)


GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries, which a connection to it may really reach."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in NAT64_PREFIX or ip in IPV4_TRANSLATED:
        return [low32]
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (:: and ::1 are not)
        return [low32]
    return []


def _blocked_reason(ip: IPAddress, allow_private: bool) -> str | None:
    """Why ``ip`` must not be fetched from, or None if it may be."""
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            reason = _blocked_reason(inner, allow_private)
            if reason is not None:
                return f"{reason}, embedded in an IPv6 address"
    for network, reason in ALWAYS_BLOCKED:
        if ip in network:
            return reason
    if allow_private:
        return None
    for network, reason in PRIVATE:
        if ip in network:
            return reason
    # IPv6 unicast outside 2000::/3 is all special-purpose or unassigned.
    if isinstance(ip, ipaddress.IPv6Address) and ip not in GLOBAL_UNICAST_V6:
        return None if _embedded_ipv4(ip) else "reserved"
    return None


# Characters parsers disagree about (urlsplit silently drops tabs and newlines, for one).
# Spaces are fine in a path (they get percent-encoded); in the host they fail _HOSTNAME.
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f]")


_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


# Characters left as they are when percent-encoding the request target.
_TARGET_SAFE = "/?:@!$&'()*+,;=%~-._"


def system_resolver(host: str, port: int) -> list[str]:
    """All the addresses the OS resolves ``host`` to, in its order of preference."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(
    url: str, limits: FetchLimits = DEFAULT_LIMITS, *, resolver: Resolver | None = None
) -> CheckedURL:
    """Parse ``url``, resolve its host and check every address; raise a ``FetchError`` if unsafe.

    The crawler calls this alone to reject bad links early; ``fetch_image`` calls it for the
    URL and again for every redirect, and connects only to the addresses it returns.
    """
    if not isinstance(url, str) or not url:
        raise InvalidURL("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _UNSAFE_CHARS.search(url):
        raise InvalidURL("the URL contains control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidURL("only http and https URLs can be fetched")
    if "@" in parts.netloc:
        raise InvalidURL("URLs with credentials (user:password@) are not allowed")
    if port == 0:
        raise InvalidURL("port 0 is not a valid port")
    port = port or (443 if scheme == "https" else 80)
    host, literal = _normalize_host(parts.netloc, parts.hostname or "")
    if not limits.allow_private and (host == "localhost" or host.endswith(".localhost")):
        why = f"refusing to fetch from {host}: it is a loopback name"
        raise BlockedAddress(f"{why}; {limits.allow_private_hint}")

    addresses = [literal] if literal is not None else _resolve(host, port, resolver)
    for ip in addresses:
        reason = _blocked_reason(ip, limits.allow_private)
        if reason is not None:
            why = f"refusing to fetch from {host}: blocked address ({reason})"
            if _blocked_reason(ip, allow_private=True) is None:  # the way out exists: say it
                why += f"; {limits.allow_private_hint}"
            raise BlockedAddress(why)

    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return CheckedURL(url, scheme, host, port, target, tuple(str(ip) for ip in addresses))


def _normalize_host(netloc: str, hostname: str) -> tuple[str, IPAddress | None]:
    """The host in ASCII form, and the address itself when the host is an IP literal."""
    if not hostname:
        raise InvalidURL("the URL has no host")
    if netloc.startswith("["):
        try:
            ip = ipaddress.IPv6Address(unquote(hostname))  # a zone id arrives as %25
        except ValueError:
            raise InvalidURL("the URL's IPv6 address is malformed") from None
        return str(ip), ip
    host = hostname[:-1] if hostname.endswith(".") else hostname  # "localhost." is localhost
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise InvalidURL("the URL's host is not a valid domain name") from None
    if not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise InvalidURL("the URL's host is not a valid domain name")
    try:
        return host, ipaddress.IPv4Address(host)
    except ValueError:
        return host, None  # a name, or a number spelling only the resolver understands


def _resolve(host: str, port: int, resolver: Resolver | None) -> list[IPAddress]:
    try:
        answers = (resolver or system_resolver)(host, port)
        addresses = [ipaddress.ip_address(answer) for answer in answers]
    except (OSError, UnicodeError, ValueError):
        raise FetchError(f"could not resolve the host {host}") from None
    if not addresses:
        raise FetchError(f"the host {host} has no addresses")
    return addresses
