"""SSRF-safe download of images by URL.

The service fetches URLs that strangers send it, from inside someone's network. Without care
that turns it into a proxy onto that network: ``http://169.254.169.254/`` hands out cloud
credentials, ``http://127.1:6379/`` talks to a local Redis. So, the way image proxies such as
go-camo do it:

* the URL is parsed once, here, and only http(s) URLs without credentials get through;
* the host is resolved once and **every** address it resolves to is checked, so that all the
  spellings the OS accepts (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``, ``localhost.``)
  are judged by where they really lead;
* the connection goes to the checked address itself (no second lookup that DNS rebinding could
  answer differently), with the original ``Host`` header and, for https, SNI and certificate
  verification against the original hostname;
* redirects are followed by hand, each hop checked again;
* a time limit covers the whole fetch, even against a server that trickles bytes, and the body
  is read with a byte cap;
* the bytes must look like an image (magic bytes), whatever the ``Content-Type`` says.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from captioner.crawl.urls import (
    DEFAULT_LIMITS,
    CheckedURL,
    FetchError,
    FetchLimits,
    FetchTimeout,
    HTTPStatusError,
    InvalidURL,
    Resolver,
    TooLarge,
    TooManyRedirects,
    UnsupportedDocument,
    UnsupportedImageType,
    check_url,
)
from captioner.errors import AltCapError, InvalidSettings
from captioner.images import ALLOWED_FORMATS, sniff_format

__all__ = [
    "Deadline",
    "FetchedDocument",
    "FetchedImage",
    "fetch_document",
    "fetch_image",
    "pinned_pool",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_SIZE = 64 * 1024

SNIFF_BYTES = 32  # sniff_format needs no more than this
# Servers that do not know what they serve say one of these (or nothing); then the bytes decide.
UNTYPED_MEDIA_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


# --- errors -------------------------------------------------------------------------


# --- settings and results -----------------------------------------------------------


@dataclass(frozen=True)
class FetchedImage:
    url: str  # the URL asked for
    final_url: str  # the URL the image came from, after redirects
    content_type: str  # media type of the bytes as sniffed, e.g. "image/png"
    data: bytes


@dataclass(frozen=True)
class FetchedDocument:
    url: str  # the URL asked for
    final_url: str  # the URL the document came from, after redirects (the base for links)
    content_type: str  # media type as the server declared it, lower case ("" when absent)
    charset: str | None  # the Content-Type's charset parameter, if any
    data: bytes  # the body, gunzipped when it was gzip


# --- address policy -----------------------------------------------------------------


# --- URL checks ---------------------------------------------------------------------


# --- download -----------------------------------------------------------------------


class _Deadline:
    """The fetch's total time limit, enforced by shutting its sockets down when it runs out.

    Socket timeouts only bound the silence between two bytes, so a server sending one byte a
    second would hold a worker forever; a timer that shuts the socket down unblocks any read,
    whether in the TLS handshake, the headers or the body. It shuts down duplicates of the
    sockets (``dup``), which it owns, so it can never touch a reused file descriptor.
    """

    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.expires - time.monotonic()
        if left <= 0 or self.expired:
            raise FetchTimeout("the image server took too long")
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:
                self._shutdown_all()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown_all()

    def _shutdown_all(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # already closed by the fetch itself
                sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Let go of the sockets of a finished request, so their connections really close."""
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def close(self) -> None:
        self._timer.cancel()
        self.release()


Deadline = _Deadline  # public name: the webhook sender bounds its whole POST with one too


class _WatchedConnection:
    """Hands every new socket to the fetch's ``_Deadline``."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        self._deadline.watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


def fetch_image(
    url: str, limits: FetchLimits = DEFAULT_LIMITS, *, resolver: Resolver | None = None
) -> FetchedImage:
    """Download the image at ``url`` within ``limits``; raise a ``FetchError`` subclass if not."""
    deadline = _Deadline(limits.total_timeout)
    try:
        with _follow(url, limits, deadline, resolver=resolver) as (final_url, response):
            if response.status != 200:
                raise FetchError(f"the image server answered HTTP {response.status}")
            content_type, data = _read_image(response, limits, deadline)
            return FetchedImage(url, final_url, content_type, data)
    finally:
        deadline.close()


HTML_TYPES = ("text/html", "application/xhtml+xml")
GZIP_MAGIC = b"\x1f\x8b"


def fetch_document(
    url: str,
    limits: FetchLimits = DEFAULT_LIMITS,
    *,
    max_bytes: int,
    accept: Sequence[str] | None = HTML_TYPES,
    resolver: Resolver | None = None,
) -> FetchedDocument:
    """Download a page, sitemap or robots.txt at ``url`` with the same SSRF checks as images.

    ``accept`` lists the media types wanted (``""`` for a response without one); ``None``
    takes anything. ``max_bytes`` caps the body both as sent and, for gzip (a ``.xml.gz``
    sitemap or ``Content-Encoding: gzip``), once decompressed: a gzip bomb fails with
    ``too_large`` after ``max_bytes + 1`` bytes, whatever it would expand to. A status other
    than 200 raises ``HTTPStatusError`` carrying it (robots.txt rules depend on it).
    """
    if max_bytes <= 0:
        raise InvalidSettings("max_bytes must be positive")
    wanted = ", ".join(t for t in accept if t) if accept else ""
    deadline = _Deadline(limits.total_timeout)
    try:
        with _follow(url, limits, deadline, resolver=resolver, accept=wanted or "*/*") as (
            final_url,
            response,
        ):
            if response.status != 200:
                raise HTTPStatusError(
                    f"the server answered HTTP {response.status}", status=response.status
                )
            media_type, charset, data = _read_document(response, accept, max_bytes, deadline)
            return FetchedDocument(url, final_url, media_type, charset, data)
    finally:
        deadline.close()


def _read_document(
    response: urllib3.BaseHTTPResponse,
    accept: Sequence[str] | None,
    max_bytes: int,
    deadline: _Deadline,
) -> tuple[str, str | None, bytes]:
    """Check the type, read at most ``max_bytes + 1`` bytes, gunzip within the same cap."""
    header = _header_text(response.headers.get("Content-Type") or "")
    media_type, _, params = header.partition(";")
    media_type = media_type.strip().lower()
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip(" \"'"):
            charset = value.strip(" \"'")
    if accept is not None and media_type not in accept:
        raise UnsupportedDocument(
            f"expected {' or '.join(a for a in accept if a)}, got {media_type or 'no Content-Type'}"
        )
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise FetchError(f"the server sent a compressed body ({encoding}) though asked not to")
    declared = response.headers.get("Content-Length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise FetchError("the server sent an invalid Content-Length")
        if int(declared) > max_bytes:
            raise TooLarge(f"the document is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(min(CHUNK_SIZE, max_bytes + 1 - size)):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"the document is larger than {max_bytes} bytes")
        chunks.append(chunk)
        deadline.remaining()
    deadline.remaining()  # an expired deadline ends the body early: never half a document
    data = b"".join(chunks)
    if encoding != "identity" or data.startswith(GZIP_MAGIC):
        data = _gunzip(data, max_bytes)
    return media_type, charset, data


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress gzip ``data`` (all its members) to at most ``max_bytes`` bytes."""
    out: list[bytes] = []
    size = 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(data, max_bytes + 1 - size)
        except zlib.error:
            raise FetchError("the gzip data is corrupt") from None
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"the document decompresses to more than {max_bytes} bytes")
        out.append(chunk)
        if not inflater.eof:
            raise FetchError("the gzip data is truncated")
        data = inflater.unused_data
        if not data.strip(b"\0"):  # some servers pad the last member with zeros
            break
    return b"".join(out)


@contextlib.contextmanager
def _follow(
    url: str,
    limits: FetchLimits,
    deadline: _Deadline,
    *,
    resolver: Resolver | None,
    accept: str = "image/*",
) -> Iterator[tuple[str, urllib3.BaseHTTPResponse]]:
    """GET ``url``, following redirects, and yield the final URL and its response (any status
    but a redirect's), open for reading.

    Every hop's URL goes through ``check_url`` again, so a redirect cannot lead to a private
    address; the body is read inside the ``with``, where ``_request`` still turns transport
    errors into ``FetchError``s."""
    current = url
    for hop in range(limits.max_redirects + 1):
        try:
            checked = check_url(current, limits, resolver=resolver)
        except InvalidURL as exc:
            if hop == 0:
                raise
            raise FetchError(f"the server redirected to an invalid URL: {exc}") from None
        deadline.remaining()
        with _request(checked, limits, deadline, accept=accept) as response:
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError(f"HTTP {response.status} redirect without a Location")
                current = urljoin(current, _header_text(location).strip())
                continue
            yield current, response
            return
    raise TooManyRedirects(f"more than {limits.max_redirects} redirects")


@contextlib.contextmanager
def _request(
    checked: CheckedURL, limits: FetchLimits, deadline: _Deadline, accept: str = "image/*"
) -> Iterator[urllib3.BaseHTTPResponse]:
    """GET ``checked`` from its first address that accepts a connection."""
    headers = {
        "Host": checked.host_header,
        "User-Agent": limits.user_agent,
        "Accept": accept,
        "Accept-Encoding": "identity",  # the cap then bounds what we keep: no zip bombs
        "Connection": "close",
    }
    refused: Exception | None = None
    for address in checked.addresses:
        remaining = deadline.remaining()
        timeout = urllib3.Timeout(
            connect=min(limits.connect_timeout, remaining),
            read=min(limits.read_timeout, remaining),
        )
        pool = pinned_pool(checked, address, timeout, limits, deadline)
        response = None
        try:
            response = pool.urlopen(
                "GET",
                checked.target,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
            )
        except NewConnectionError as exc:  # refused or unreachable: try the next address
            refused = exc
            continue
        except Exception as exc:
            raise _translate(exc, checked, deadline) from None
        finally:
            if response is None:
                pool.close()
                deadline.release()
        try:
            yield response
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _translate(exc, checked, deadline) from None
        finally:
            response.close()
            pool.close()
            deadline.release()
        return
    if deadline.expired:
        raise FetchTimeout("the image server took too long")
    raise FetchError(f"could not connect to {checked.host}") from refused


def pinned_pool(
    checked: CheckedURL,
    address: str,
    timeout: urllib3.Timeout,
    limits: FetchLimits,
    deadline: _Deadline | None = None,
) -> urllib3.HTTPConnectionPool:
    """A one-connection pool aimed at ``address`` (one of ``checked.addresses``) but speaking
    to ``checked.host``: connecting to the address ``check_url`` approved, with no second DNS
    lookup, is what makes the SSRF check hold. The webhook sender uses it too. With a
    ``deadline``, every socket it opens is handed to it."""
    pool: urllib3.HTTPConnectionPool
    watched: dict[str, Any] = {} if deadline is None else {"deadline": deadline}
    if checked.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            checked.port,
            timeout=timeout,
            maxsize=1,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=limits.ca_certs,
            server_hostname=checked.host,  # SNI
            assert_hostname=checked.host,  # the certificate must name the host, not the IP
            **watched,
        )
        if deadline is not None:
            pool.ConnectionCls = _WatchedHTTPSConnection
    else:
        pool = urllib3.HTTPConnectionPool(
            address, checked.port, timeout=timeout, maxsize=1, retries=False, **watched
        )
        if deadline is not None:
            pool.ConnectionCls = _WatchedHTTPConnection
    return pool


def _header_text(value: str) -> str:
    """A header as sent: http.client decodes bytes as latin-1, servers send UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _translate(exc: BaseException, checked: CheckedURL, deadline: _Deadline) -> AltCapError:
    """A transport exception as the user-facing error it amounts to (never a traceback)."""
    if isinstance(exc, AltCapError):
        return exc
    if deadline.expired or isinstance(exc, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return FetchTimeout(f"{checked.host} took too long to answer")
    if isinstance(exc, SSLError):
        return FetchError(f"TLS connection to {checked.host} failed (certificate or handshake)")
    return FetchError(f"the connection to {checked.host} failed")


def _read_image(
    response: urllib3.BaseHTTPResponse, limits: FetchLimits, deadline: _Deadline
) -> tuple[str, bytes]:
    """Check the headers, read at most ``max_bytes + 1`` bytes, and check the magic bytes."""
    media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if not media_type.startswith("image/") and media_type not in UNTYPED_MEDIA_TYPES:
        raise UnsupportedImageType(f"the server says this is {media_type}, not an image")
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise FetchError(f"the server sent a compressed body ({encoding}) though asked not to")
    declared = response.headers.get("Content-Length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise FetchError("the server sent an invalid Content-Length")
        if int(declared) > limits.max_bytes:
            raise TooLarge(f"the image is larger than {limits.max_bytes} bytes")

    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(min(CHUNK_SIZE, limits.max_bytes + 1 - size)):
        if size < SNIFF_BYTES <= size + len(chunk):
            _image_format(b"".join(chunks) + chunk)  # HTML is refused on its first bytes
        size += len(chunk)
        if size > limits.max_bytes:
            raise TooLarge(f"the image is larger than {limits.max_bytes} bytes")
        chunks.append(chunk)
        deadline.remaining()
    deadline.remaining()  # an expired deadline ends the body early; that is no image
    data = b"".join(chunks)
    return f"image/{_image_format(data).lower()}", data


def _image_format(head: bytes) -> str:
    """The PIL format the magic bytes announce, if it is one we accept."""
    image_format = sniff_format(head)
    if image_format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise UnsupportedImageType(f"the data is not an image in a supported format ({allowed})")
    return image_format
