"""Tests for captioner.crawl.fetch: a real local HTTP(S) server, a stubbed resolver, and every
address spelling an SSRF attempt might use.

The local server listens on 127.0.0.1 only. Fetches reach it through ``HOST``, a public-looking
name that only the stub resolver knows (so a second, OS-level DNS lookup would fail loudly),
with ``allow_private=True``. Nothing here talks to any other address.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from PIL import Image

from captioner.crawl.fetch import FetchedImage, fetch_image
from captioner.crawl.urls import BlockedAddress, FetchError, FetchLimits, check_url
from captioner.errors import AltCapError

UrlFor = Callable[..., str]  # the ``url`` fixture: url("/path", host=HOST)

HOST = "images.example.test"
OTHER = "other.example.test"
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

# Short timeouts keep the file fast; the total is well above what a local fetch needs.
LOCAL = FetchLimits(allow_private=True, connect_timeout=1.0, read_timeout=1.0, total_timeout=3.0)


def image_bytes(fmt: str, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")
AVIF = image_bytes("AVIF")


class StubResolver:
    """A resolver answering from a table, counting its calls (to prove there is one per hop)."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


def local_resolver() -> StubResolver:
    return StubResolver({HOST: ["127.0.0.1"], OTHER: ["127.0.0.1"]})


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Safety net: if a check ever regresses, the test fails instead of reaching out."""
    connect = urllib3.util.connection.create_connection

    def guarded(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"test tried to connect to {address[0]}")
        return connect(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)


def expect(code: str, call: Callable[..., object], *args: Any, **kwargs: Any) -> AltCapError:
    """Run ``call`` and check it fails with error ``code``; return the error."""
    with pytest.raises(AltCapError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value.message
    assert "Traceback" not in info.value.message
    return info.value


# --- the local server ----------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Routes by path; every response closes the connection."""

    protocol_version = "HTTP/1.1"
    server: LocalServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the client gave up: the point of many tests
            super().handle()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.seen.append(
            {"path": self.path, "host": self.headers["Host"], "ua": self.headers["User-Agent"]}
        )
        parts = url.path.strip("/").split("/")
        getattr(self, "route_" + parts[0].replace("-", "_").replace(".", "_"), self.route_404)(
            *parts[1:]
        )

    def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Transfer-Encoding" not in headers and "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def route_404(self, *_: str) -> None:
        self.reply(404, b"not found", {"Content-Type": "text/plain"})

    def route_image_png(self) -> None:
        self.reply(200, PNG, {"Content-Type": "image/png"})

    def route_octet(self) -> None:
        self.reply(200, PNG, {"Content-Type": "application/octet-stream"})

    def route_untyped(self) -> None:
        self.reply(200, PNG, {})

    def route_photo_avif(self) -> None:
        self.reply(200, AVIF, {"Content-Type": "image/avif"})

    def route_jpeg_as_png(self) -> None:
        self.reply(200, JPEG, {"Content-Type": "image/png"})

    def route_html_as_png(self) -> None:
        self.reply(200, b"<!doctype html><p>hi</p>", {"Content-Type": "image/png"})

    def route_html_untyped(self) -> None:
        self.reply(200, b"<!doctype html><p>hi</p>", {})

    def route_html(self) -> None:
        self.reply(200, PNG, {"Content-Type": "text/html; charset=utf-8"})

    def route_svg(self) -> None:
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
        self.reply(200, svg, {"Content-Type": "image/svg+xml"})

    def route_empty(self) -> None:
        self.reply(200, b"", {"Content-Type": "image/png"})

    def route_gzip(self) -> None:
        self.reply(200, PNG, {"Content-Type": "image/png", "Content-Encoding": "gzip"})

    def route_status(self, code: str) -> None:
        self.reply(int(code), b"error", {"Content-Type": "image/png"})

    def route_short(self) -> None:
        self.reply(200, PNG[:10], {"Content-Type": "image/png", "Content-Length": "1000"})

    def route_huge(self) -> None:
        self.reply(200, b"", {"Content-Type": "image/png", "Content-Length": str(10**12)})

    def route_sized(self, n: str) -> None:
        """A PNG signature padded to exactly ``n`` bytes, chunked unless ?cl=1."""
        body = PNG + b"\0" * (int(n) - len(PNG))
        if self.query.get("cl"):
            self.reply(200, body, {"Content-Type": "image/png"})
            return
        self.reply(200, b"", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
        for start in range(0, len(body), 4096):
            self.write_chunk(body[start : start + 4096])
        self.wfile.write(b"0\r\n\r\n")

    def route_infinite(self) -> None:
        """A chunked body that never ends (bounded so the thread stops by itself)."""
        self.reply(200, b"", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
        self.write_chunk(b"<!doctype html>" * 4 if self.query.get("html") else PNG[:16])
        stop = time.monotonic() + 5
        while time.monotonic() < stop:
            self.write_chunk(b"\0" * 65536)

    def route_trickle(self) -> None:
        """One body byte every 20 ms: never silent long enough for the read timeout."""
        self.reply(200, b"", {"Content-Type": "image/png", "Content-Length": "5000"})
        for _ in range(250):
            self.wfile.write(b"\0")
            self.wfile.flush()
            time.sleep(0.02)

    def route_trickle_headers(self) -> None:
        """Headers that dribble in a byte at a time and never end."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(250):
            self.wfile.write(b"a")
            self.wfile.flush()
            time.sleep(0.02)

    def route_stall(self) -> None:
        self.reply(200, b"", {"Content-Type": "image/png", "Content-Length": "5000"})
        time.sleep(3)

    def route_redirect(self) -> None:
        status = int(self.query.get("status", "302"))
        self.reply(status, b"", {"Location": self.query["to"]})

    def route_no_location(self) -> None:
        self.reply(302, b"", {})

    def route_relative(self) -> None:
        self.reply(301, b"", {"Location": "image.png"})

    def route_chain(self, n: str) -> None:
        if int(n) == 0:
            self.route_image_png()
        else:
            self.reply(302, b"", {"Location": f"/chain/{int(n) - 1}"})

    def route_utf8_redirect(self) -> None:
        """A Location in raw UTF-8, as servers send it (send_header would insist on latin-1)."""
        self.wfile.write("HTTP/1.1 302 Found\r\nLocation: /image.png?name=ä\r\n".encode())
        self.wfile.write(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self.close_connection = True

    def route_loop(self) -> None:
        self.reply(307, b"", {"Location": "/loop"})


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[dict[str, str]] = []
        self.sni: list[str | None] = []
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment]
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up is expected here, not worth a traceback on stderr

    @property
    def port(self) -> int:
        return self.server_address[1]


def serve(server: LocalServer) -> Iterator[LocalServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    yield from serve(LocalServer())


@pytest.fixture
def url(server: LocalServer) -> UrlFor:
    """``url("/path")`` on the local server, by the stub-resolved name."""
    return lambda path, host=HOST: f"http://{host}:{server.port}{path}"


def fetch(
    url: str, limits: FetchLimits = LOCAL, resolver: StubResolver | None = None
) -> FetchedImage:
    return fetch_image(url, limits, resolver=resolver or local_resolver())


# --- URL checks: address forms (numeric hosts resolve locally, without the network) ---

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1/",
    "http://2130706433/",  # decimal
    "http://0177.0.0.1/",  # octal
    "http://0x7f.1/",  # hex, short
    "http://0x7f000001/",
    "http://127.1/",  # short
    "http://127.0.0.1./",  # trailing dot
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[::ffff:0:127.0.0.1]/",  # IPv4-translated
    "http://[2002:7f00:1::]/",  # 6to4
    "http://[64:ff9b::127.0.0.1]/",  # NAT64
    "http://localhost/",
    "http://LOCALHOST:8080/",
    "http://localhost./",
    "http://app.localhost/",
    "http://１２７.０.０.１/",  # fullwidth digits, mapped by IDNA
    "https://127.0.0.1:8443/x",
]

BLOCKED = [
    ("http://0/", "unspecified"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456:789a::1]/", "private"),
    ("http://[::ffff:10.1.2.3]/", "private"),
    ("http://[64:ff9b::c0a8:101]/", "private"),  # NAT64 of 192.168.1.1
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.0.8/", "reserved"),
    ("http://[100::1]/", "reserved"),  # discard-only
    ("http://[64:ff9b:1::1]/", "reserved"),  # local-use NAT64
    ("http://[2001:0:4136:e378:8000:63bf:a247:28f1]/", "reserved"),  # Teredo
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "documentation"),  # Teredo, 192.0.2.45
    ("http://100.64.0.1/", "shared address space"),
    ("http://100.127.255.254/", "shared address space"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://198.19.255.255/", "benchmarking"),
    ("http://[2001:2::1]/", "reserved"),  # IPv6 benchmarking
    ("http://192.0.2.10/", "documentation"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://[::ffff:a9fe:a9fe]/", "cloud metadata"),
    ("http://[2002:a9fe:a9fe::]/", "cloud metadata"),  # 6to4
    ("http://[64:ff9b::169.254.169.254]/", "cloud metadata"),  # NAT64
    ("http://2852039166/", "cloud metadata"),  # decimal 169.254.169.254
]

# Blocked even for an intranet deployment that allows private networks.
ALWAYS_BLOCKED = [
    "http://169.254.169.254/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://192.0.0.192/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://[fe80::1]/",
]


@pytest.mark.parametrize("link", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_blocked(link: str) -> None:
    error = expect("blocked_address", check_url, link)
    assert error.http_status == 403
    assert "loopback" in error.message


@pytest.mark.parametrize(("link", "reason"), BLOCKED)
def test_special_purpose_addresses_are_blocked(link: str, reason: str) -> None:
    error = expect("blocked_address", check_url, link)
    assert reason in error.message


@pytest.mark.parametrize("link", ALWAYS_BLOCKED)
def test_metadata_and_unroutable_stay_blocked_with_allow_private(link: str) -> None:
    expect("blocked_address", check_url, link, FetchLimits(allow_private=True))
    # no way out: the refusal names none
    assert "ALLOW_PRIVATE" not in expect("blocked_address", check_url, link).message


@pytest.mark.parametrize(
    "link", ["http://127.0.0.1/", "http://localhost/", "http://192.168.1.1/", "http://[fd12::1]/"]
)
def test_a_refusal_allow_private_would_lift_says_how(link: str) -> None:
    """An intranet site failed with blocked_address, and nothing said how to allow it: the
    message names the way out, the operators' setting by default (the service, jobs)."""
    message = expect("blocked_address", check_url, link).message
    assert message.endswith(
        "; an operator can allow loopback and private addresses with "
        "ALTCAP_ALLOW_PRIVATE_NETWORKS=true (an intranet deployment)"
    )
    # the batch CLI names its flag instead
    limits = FetchLimits(allow_private_hint="give --allow-private")
    assert expect("blocked_address", check_url, link, limits).message.endswith(
        "; give --allow-private"
    )


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1/",
        "http://0x7f.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "http://[fd12::1]/",
        "http://localhost/",
    ],
)
def test_allow_private_lets_intranet_addresses_through(link: str) -> None:
    assert check_url(link, FetchLimits(allow_private=True)).addresses


@pytest.mark.parametrize(
    "address",
    [PUBLIC_V4, PUBLIC_V6, "::ffff:93.184.215.14", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1"],
)
def test_public_addresses_pass(address: str) -> None:
    resolver = StubResolver({"cdn.example.test": [address]})
    checked = check_url("https://cdn.example.test/a b.png?x=1#frag", resolver=resolver)
    assert [ipaddress.ip_address(a) for a in checked.addresses] == [ipaddress.ip_address(address)]
    assert checked.host == "cdn.example.test"
    assert checked.port == 443
    assert checked.host_header == "cdn.example.test"
    assert checked.target == "/a%20b.png?x=1"


def test_checked_url_parts() -> None:
    resolver = StubResolver({"cdn.example.test": [PUBLIC_V4, PUBLIC_V6]})
    checked = check_url("HTTP://CDN.Example.Test.:8080/p/ä.png?q=ü", resolver=resolver)
    assert (checked.scheme, checked.host, checked.port) == ("http", "cdn.example.test", 8080)
    assert checked.addresses == (PUBLIC_V4, PUBLIC_V6)
    assert checked.host_header == "cdn.example.test:8080"
    assert checked.target == "/p/%C3%A4.png?q=%C3%BC"
    assert resolver.calls == [("cdn.example.test", 8080)]
    assert check_url(f"http://{PUBLIC_V4}/").target == "/"  # literal: no resolver needed


def test_ipv6_literal_host_header() -> None:
    checked = check_url(f"http://[{PUBLIC_V6}]:81/")
    assert checked.host_header == f"[{PUBLIC_V6}]:81"


def test_international_names_are_resolved_in_ascii() -> None:
    resolver = StubResolver({"xn--bcher-kva.example": [PUBLIC_V4]})
    assert check_url("http://bücher.example/", resolver=resolver).host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "answer",
    [
        [PUBLIC_V4, "10.0.0.5"],
        ["10.0.0.5", PUBLIC_V4],
        [PUBLIC_V6, "::1"],
        [PUBLIC_V4, "169.254.169.254"],
        [PUBLIC_V4, "::ffff:127.0.0.1"],
    ],
)
def test_any_blocked_answer_blocks_the_host(answer: list[str]) -> None:
    resolver = StubResolver({"mixed.example.test": answer})
    expect("blocked_address", check_url, "http://mixed.example.test/", resolver=resolver)


def test_resolution_failures() -> None:
    expect("fetch_failed", check_url, "http://nowhere.example.test/", resolver=StubResolver({}))
    empty = StubResolver({"empty.example.test": []})
    expect("fetch_failed", check_url, "http://empty.example.test/", resolver=empty)
    junk = StubResolver({"junk.example.test": ["not-an-ip"]})
    expect("fetch_failed", check_url, "http://junk.example.test/", resolver=junk)


@pytest.mark.parametrize(
    "link",
    [
        "",
        "example.test/a.png",
        "//example.test/a.png",
        "ftp://example.test/a.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://user:pass@example.test/",
        "http://user@example.test/",
        "http://:@example.test/",
        "http://example.test@127.0.0.1/",
        "http://",
        "http:///a.png",
        "http://exa mple.test/",
        "http://example.test/a\n.png",
        "http://example.test\t/",
        "http://example.test\\@evil.test/",
        "http://example.test\\evil.test/",
        " http://exa mple.test/",
        "http://[::1/",
        "http://[127.0.0.1]/",
        "http://[nonsense]/",
        "http://example.test:99999/",
        "http://example.test:http/",
        "http://example.test:0/",
        "http://exa%6dple.test/",
        "http://a..b/",
        "http://.example.test/",
        "http://" + "a" * 2050 + ".test/",
        "http://example.test/" + "a" * 2048,
    ],
)
def test_invalid_urls(link: str) -> None:
    error = expect("invalid_url", check_url, link, resolver=StubResolver({}))
    assert error.http_status == 400


def test_url_of_exactly_max_length_is_accepted() -> None:
    url = "http://cdn.example.test/"
    url += "a" * (2048 - len(url))
    resolver = StubResolver({"cdn.example.test": [PUBLIC_V4]})
    assert len(check_url(url, resolver=resolver).url) == 2048


# --- fetching from the local server -------------------------------------------------


def test_fetches_png_through_the_checked_address(server: LocalServer, url: UrlFor) -> None:
    resolver = local_resolver()
    server.seen.clear()
    image = fetch(url("/image.png"), resolver=resolver)
    assert image.data == PNG
    assert image.content_type == "image/png"
    assert image.url == image.final_url == url("/image.png")
    # The OS cannot resolve HOST, so the connection went to the stub's answer, looked up once,
    # and the server still saw the original name.
    assert resolver.calls == [(HOST, server.port)]
    assert server.seen[-1]["host"] == f"{HOST}:{server.port}"
    assert server.seen[-1]["ua"] == LOCAL.user_agent


def test_dns_rebinding_gets_no_second_lookup(url: UrlFor) -> None:
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])

    def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    assert fetch_image(url("/image.png"), LOCAL, resolver=rebinding).data == PNG


def test_falls_back_to_the_next_address_when_refused(url: UrlFor) -> None:
    resolver = StubResolver({HOST: ["127.0.0.2", "127.0.0.1"]})  # nothing listens on .2
    assert fetch(url("/image.png"), resolver=resolver).data == PNG


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/octet", "image/png"),
        ("/untyped", "image/png"),
        ("/jpeg-as-png", "image/jpeg"),
        ("/photo.avif", "image/avif"),  # what modern sites serve
    ],
)
def test_magic_bytes_decide_the_type(url: UrlFor, path: str, content_type: str) -> None:
    image = fetch(url(path))
    assert image.content_type == content_type


@pytest.mark.parametrize("path", ["/html-as-png", "/html-untyped", "/html", "/svg", "/empty"])
def test_non_images_are_refused(url: UrlFor, path: str) -> None:
    error = expect("unsupported_image", fetch, url(path))
    assert error.http_status == 415


@pytest.mark.parametrize(
    "path", ["/status/404", "/status/500", "/no-location", "/gzip", "/short", "/nothing-here"]
)
def test_upstream_failures(url: UrlFor, path: str) -> None:
    assert expect("fetch_failed", fetch, url(path)).http_status == 502


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expect("fetch_failed", fetch, f"http://{HOST}:{port}/image.png")


def test_declared_length_over_the_cap_is_refused_before_reading(url: UrlFor) -> None:
    error = expect("too_large", fetch, url("/huge"))
    assert error.http_status == 413


def test_endless_chunked_body_is_cut_at_the_cap(url: UrlFor) -> None:
    limits = FetchLimits(allow_private=True, max_bytes=100_000, total_timeout=3.0)
    started = time.monotonic()
    expect("too_large", fetch, url("/infinite"), limits)
    assert time.monotonic() - started < 1.5


def test_never_reads_more_than_cap_plus_one(url: UrlFor, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    read1 = urllib3.HTTPResponse.read1

    def spy(self: urllib3.HTTPResponse, amt: int | None = None, **kwargs: object) -> bytes:
        data = read1(self, amt, **kwargs)  # type: ignore[arg-type]
        read.append(len(data))
        return data

    monkeypatch.setattr(urllib3.HTTPResponse, "read1", spy)
    limits = FetchLimits(allow_private=True, max_bytes=100_000, total_timeout=3.0)
    expect("too_large", fetch, url("/infinite"), limits)
    assert sum(read) == 100_001


def test_non_image_is_refused_on_its_first_bytes(url: UrlFor) -> None:
    expect("unsupported_image", fetch, url("/infinite?html=1"))


@pytest.mark.parametrize("content_length", ["", "1"])
def test_cap_boundary(url: UrlFor, content_length: str) -> None:
    limits = FetchLimits(allow_private=True, max_bytes=20_000, total_timeout=3.0)
    assert len(fetch(url(f"/sized/20000?cl={content_length}"), limits).data) == 20_000
    expect("too_large", fetch, url(f"/sized/20001?cl={content_length}"), limits)


@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
def test_total_timeout_holds_against_a_trickle(url: UrlFor, path: str) -> None:
    limits = FetchLimits(allow_private=True, read_timeout=2.0, total_timeout=0.5)
    started = time.monotonic()
    error = expect("fetch_timeout", fetch, url(path), limits)
    assert error.http_status == 504
    assert time.monotonic() - started < 1.0


def test_read_timeout_on_a_silent_server(url: UrlFor) -> None:
    limits = FetchLimits(allow_private=True, read_timeout=0.3, total_timeout=3.0)
    started = time.monotonic()
    expect("fetch_timeout", fetch, url("/stall"), limits)
    assert time.monotonic() - started < 1.0


# --- redirects ----------------------------------------------------------------------


def test_relative_redirect(url: UrlFor) -> None:
    image = fetch(url("/relative"))
    assert image.final_url == url("/image.png")
    assert image.url == url("/relative")


def test_utf8_location(server: LocalServer, url: UrlFor) -> None:
    image = fetch(url("/utf8-redirect"))
    assert image.final_url == url("/image.png?name=ä")
    assert server.seen[-1]["path"] == "/image.png?name=%C3%A4"


def test_redirect_to_another_host_is_resolved_and_checked(server: LocalServer, url: UrlFor) -> None:
    resolver = local_resolver()
    server.seen.clear()
    target = url("/image.png", host=OTHER)
    image = fetch(url(f"/redirect?to={target}&status=308"), resolver=resolver)
    assert image.final_url == target
    assert [call[0] for call in resolver.calls] == [HOST, OTHER]
    assert server.seen[-1]["host"] == f"{OTHER}:{server.port}"


def test_redirect_limit(url: UrlFor) -> None:
    assert fetch(url("/chain/3")).final_url == url("/chain/0")
    error = expect("too_many_redirects", fetch, url("/chain/4"))
    assert error.http_status == 502
    expect("too_many_redirects", fetch, url("/loop"))
    expect(
        "too_many_redirects",
        fetch,
        url("/chain/1"),
        FetchLimits(allow_private=True, max_redirects=0),
    )


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://0.0.0.0:{port}/image.png",
        "http://metadata.example.test/computeMetadata/v1/",
    ],
)
def test_redirect_to_blocked_address_is_refused(
    server: LocalServer, url: UrlFor, target: str
) -> None:
    resolver = StubResolver({HOST: ["127.0.0.1"], "metadata.example.test": ["169.254.169.254"]})
    target = target.format(port=server.port)
    expect("blocked_address", fetch, url(f"/redirect?to={target}"), resolver=resolver)


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_", "http://u:p@x.test/"]
)
def test_redirect_to_invalid_url_fails(url: UrlFor, target: str) -> None:
    expect("fetch_failed", fetch, url(f"/redirect?to={target}"))


def test_default_limits_block_the_local_server(url: UrlFor) -> None:
    expect("blocked_address", fetch_image, url("/image.png"), resolver=local_resolver())


def test_errors_are_fetch_errors() -> None:
    assert issubclass(BlockedAddress, FetchError)
    assert issubclass(FetchError, AltCapError)


# --- https --------------------------------------------------------------------------


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA and a server certificate for HOST, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign"]
    openssl("req", "-x509", *ec, *ca_ext, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=AltCap test CA")  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={HOST}")
    (d / "ext.cnf").write_text(
        f"subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "ext.cnf"]
    openssl("x509", "-req", *sign, "-in", "server.csr", "-out", "server.pem", "-days", "2")
    return Certificates(d / "ca.pem", d / "server.pem", d / "server.key")


@pytest.fixture(scope="module")
def tls_server(certificates: Certificates) -> Iterator[LocalServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.cert, certificates.key)
    yield from serve(LocalServer(tls=context))


def test_https_sends_sni_and_verifies_the_original_name(
    tls_server: LocalServer, certificates: Certificates
) -> None:
    limits = FetchLimits(allow_private=True, ca_certs=str(certificates.ca), total_timeout=3.0)
    tls_server.sni.clear()
    tls_server.seen.clear()
    image = fetch(f"https://{HOST}:{tls_server.port}/image.png", limits)
    assert image.data == PNG
    assert tls_server.sni == [HOST]
    assert tls_server.seen[-1]["host"] == f"{HOST}:{tls_server.port}"


def test_https_certificate_for_another_name_is_refused(
    tls_server: LocalServer, certificates: Certificates
) -> None:
    limits = FetchLimits(allow_private=True, ca_certs=str(certificates.ca), total_timeout=3.0)
    error = expect("fetch_failed", fetch, f"https://{OTHER}:{tls_server.port}/image.png", limits)
    assert "TLS" in error.message


def test_https_untrusted_certificate_is_refused(tls_server: LocalServer) -> None:
    limits = FetchLimits(allow_private=True, total_timeout=3.0)
    expect("fetch_failed", fetch, f"https://{HOST}:{tls_server.port}/image.png", limits)


def test_invalid_limits_are_rejected() -> None:
    expect("invalid_settings", FetchLimits, max_bytes=0)
    expect("invalid_settings", FetchLimits, total_timeout=0)
