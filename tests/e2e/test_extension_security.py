"""What a hostile page must not get out of the extension (issue 20), in Chromium and Firefox.

Two sites on this machine: the *victim* (``http://localhost:PORT``), where the user is signed
in with a ``SameSite=Strict`` session cookie and keeps a private image that only that cookie
opens, and the *hostile* site (``http://127.0.0.1:PORT``), whose page asks for the victim's
image in every way the extension describes one (a ``role="img"`` background, an
``<input type=image>``) and reads what lands in its own DOM. The extension may access both
sites and may send image bytes: the worst case. It must describe what the hostile page can
read itself (its own image, and one the victim shares with every site through CORS), and
nothing of the private image: its bytes are read only as the page itself may read them, no
request of the extension carries the victim's cookie, and a caption made for the victim's own
page is not handed to another site.

Also: a page cannot switch the extension off by naming an element after its guard (DOM
clobbering), and the extension follows no redirect of its server.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from chromium import Browser, launch
from extension_site import Service, copy_extension, wait_until
from helpers import png_bytes, serve_handler
from playwright.sync_api import Page, expect
from test_extension import (
    expect_timeout,  # noqa: F401 (autouse)
    open_options,
    open_popup,
    set_server,
)
from test_extension_firefox import (
    Firefox,
    firefox_executable,
    store_consent,
    wait_until_describing,
)

PREFIX = "Appears to be: "
COOKIE = "session=s3cret"
SET_COOKIE = f"{COOKIE}; Path=/; SameSite=Strict; HttpOnly"
SECRET_PNG = png_bytes((10, 200, 90))
SHARED_PNG = png_bytes((200, 90, 10))
OWN_PNG = png_bytes((90, 10, 200))
SECRET_SHA256 = hashlib.sha256(SECRET_PNG).hexdigest()  # as the service logs image data
GRACE_S = 1.5  # after the last request that decides an image's fate, for its answer to land


@dataclass
class Site:
    """One of the two sites: its base URL and a log of every request it got."""

    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[dict[str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        with self.lock:
            self.log.clear()

    def requests(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.log if r["path"] == path]


def handler(site: Site, pages: dict[str, tuple[int, str, bytes, dict[str, str]]]) -> type:
    """A request handler answering ``pages`` (path -> status, type, body, headers), with the
    secret image behind the cookie, and logging each request in ``site``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            cookie = COOKIE in (self.headers.get("Cookie") or "")
            entry = {"path": path, "cookie": cookie, "origin": self.headers.get("Origin")}
            with site.lock:
                site.log.append(entry)
            status, kind, body, headers = pages.get(path, (404, "text/plain", b"not here", {}))
            if path == "/secret.png" and not cookie:
                status, kind, body, headers = 403, "text/plain", b"sign in first", {}
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")  # every request reaches the log
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def html(body: str) -> tuple[int, str, bytes, dict[str, str]]:
    page = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>t</title></head>'
    return 200, "text/html; charset=utf-8", (page + f"<body>{body}</body></html>").encode(), {}


def png(data: bytes, headers: dict[str, str] | None = None) -> tuple[int, str, bytes, dict]:
    return 200, "image/png", data, headers or {}


BOX = "width: 200px; height: 150px"
TWO_SITES = ["*://127.0.0.1/*", "*://localhost/*"]  # granted at install: hostile, victim


@pytest.fixture(scope="module")
def victim() -> Iterator[Site]:
    """The victim site, on ``localhost``: /login signs the user in (a SameSite=Strict
    cookie), /secret.png answers only that cookie, /shared.png any site (CORS), /page.html
    shows the secret image to its own signed-in user."""
    site = Site()
    pages = {
        "/login": (*html("<p>Signed in.</p>")[:3], {"Set-Cookie": SET_COOKIE}),
        "/secret.png": png(SECRET_PNG),
        "/shared.png": png(SHARED_PNG, {"Access-Control-Allow-Origin": "*"}),
        "/page.html": html('<img id="secret" src="secret.png" width="200" height="150">'),
    }  # fmt: skip
    with serve_handler(handler(site, pages)) as base:
        site.url = base.replace("127.0.0.1", "localhost")  # another site for the browser
        yield site


@pytest.fixture(scope="module")
def hostile(victim: Site) -> Iterator[Site]:
    """The hostile site, on ``127.0.0.1``: /steal.html asks for the victim's secret image as
    a role="img" background and as an <input type=image>, beside its own image and the
    victim's shared one; /clobber.html names elements after the extension's globals."""
    site = Site()
    secret, shared = f"{victim.url}/secret.png", f"{victim.url}/shared.png"
    pages = {
        "/steal.html": html(
            f'<img id="own" src="own.png" width="200" height="150">'
            f'<div id="shared" role="img" style="background: url({shared}); {BOX}"></div>'
            f'<div id="stolen" role="img" style="background: url({secret}); {BOX}"></div>'
            f'<input id="stolen-button" type="image" src="{secret}" width="200" height="150">'
        ),
        "/own.png": png(OWN_PNG),
        "/clobber.html": html(
            '<div id="__altcapContentScript"></div><div id="AltCapDetection"></div>'
            '<img id="clobbered" src="own.png" width="200" height="150">'
        ),
    }  # fmt: skip
    with serve_handler(handler(site, pages)) as base:
        site.url = base
        yield site


@pytest.fixture(scope="module")
def extension_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension with both sites granted at install: ``*://127.0.0.1/*`` (the hostile
    site, the service) and ``*://localhost/*`` (the victim)."""
    return copy_extension(tmp_path_factory.mktemp("ext-two-sites") / "extension", TWO_SITES)


def settled(victim: Site, hostile: Site, stolen: int) -> None:
    """Until the extension has done what it will with the victim's secret image on the
    hostile page: the page's own (CORS) requests for it were made ``stolen`` times, or a
    request carrying the cookie was; and a moment for the answers to land."""

    def decided() -> bool:
        secret = victim.requests("/secret.png")
        asked_as_page = [r for r in secret if r["origin"] == hostile.url]
        return len(asked_as_page) >= stolen or any(r["cookie"] for r in secret)

    wait_until(decided, f"the secret's fate is not decided: {victim.requests('/secret.png')}")
    time.sleep(GRACE_S)


def secret_sent(service: Service) -> int:
    with service.lock:
        return service.sent_sha256.count(SECRET_SHA256)


def stolen_text(read: Any) -> list[str | None]:
    """What the hostile page reads of the two elements that ask for the secret."""
    return read(
        "[document.getElementById('stolen').getAttribute('aria-label'),"
        " document.getElementById('stolen-button').getAttribute('alt')]"
    )


# --- Chromium ------------------------------------------------------------------------------


@pytest.fixture
def chromium(extension_copy: Path, tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium profile with the extension (both sites granted), not yet agreed to."""
    with launch(extension_copy, tmp_path / "profile") as browser:
        yield browser


def agree_with_bytes(browser: Browser, service: Service) -> None:
    options = open_options(browser)
    options.get_by_label("Send image bytes when the server cannot download an image").check()
    set_server(options, service.url, agree=True)
    options.close()


def expect_machine_text(page: Page, selector: str, attribute: str = "alt") -> None:
    expect(page.locator(selector)).to_have_attribute(attribute, re.compile("^" + PREFIX + r"\S"))


def test_a_page_cannot_read_a_description_of_another_sites_private_image(
    chromium: Browser, service: Service, victim: Site, hostile: Site
) -> None:
    service.reset()
    victim.reset()
    agree_with_bytes(chromium, service)
    chromium.open_page(f"{victim.url}/login").close()  # signed in at the victim site
    page = chromium.open_page(f"{hostile.url}/steal.html")

    # What the hostile page may read itself is described: its own image, and the image the
    # victim shares with every site (CORS), both read as the page reads them.
    expect_machine_text(page, "#own")
    expect_machine_text(page, "#shared", "aria-label")
    settled(victim, hostile, stolen=2)
    assert stolen_text(page.evaluate) == [None, None], "the page read the private image's caption"
    popup = open_popup(chromium, chromium.tab_id(f"{hostile.url}/steal.html"))
    expect(popup.locator("#found")).to_have_text("4")
    expect(popup.locator("#described")).to_have_text("2")
    expect(popup.locator("#failed")).to_have_text("2")
    secret = victim.requests("/secret.png")
    assert not any(r["cookie"] for r in secret), f"a request carried the victim's cookie: {secret}"
    assert secret_sent(service) == 0, "the private image's bytes reached the server"
    assert chromium.errors == []


def test_a_description_made_for_one_site_is_not_handed_to_another(
    chromium: Browser, service: Service, victim: Site, hostile: Site
) -> None:
    service.reset()
    victim.reset()
    agree_with_bytes(chromium, service)
    chromium.open_page(f"{victim.url}/login").close()

    # On the victim's own page its signed-in user's image is described: the page reads it
    # with its cookie, and so may the extension, for that page.
    own = chromium.open_page(f"{victim.url}/page.html")
    expect_machine_text(own, "#secret")
    assert secret_sent(service) == 1

    # The hostile page asks for the same image: no cached caption, no bytes.
    asked_before = len(victim.requests("/secret.png"))
    page = chromium.open_page(f"{hostile.url}/steal.html")
    expect_machine_text(page, "#own")
    settled(victim, hostile, stolen=2)
    assert stolen_text(page.evaluate) == [None, None], "the cached caption reached another site"
    assert secret_sent(service) == 1
    # Only the victim's own page (its <img>, and a same-origin read) sent the cookie.
    assert not any(r["cookie"] for r in victim.requests("/secret.png")[asked_before:])


def test_a_page_cannot_switch_the_extension_off_by_naming_an_element(
    chromium: Browser, service: Service, hostile: Site
) -> None:
    # <div id="__altcapContentScript"> is window.__altcapContentScript, in the content
    # script's world too: a check of that global took the page for one already described.
    service.reset()
    options = open_options(chromium)
    set_server(options, service.url, agree=True)
    page = chromium.open_page(f"{hostile.url}/clobber.html")
    expect_machine_text(page, "#clobbered")
    assert chromium.errors == []


def test_the_server_address_is_not_followed_through_a_redirect(
    chromium: Browser, service: Service, hostile: Site
) -> None:
    # A server address that answers 307 to another origin: the browser would re-send the
    # POST body (image addresses or bytes) there, without the API key.
    moved = Site()
    target = service.url

    class Redirect(BaseHTTPRequestHandler):
        def redirect(self) -> None:
            with moved.lock:
                moved.log.append({"path": self.path, "method": self.command})
            self.send_response(307)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_OPTIONS = redirect

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_handler(Redirect) as address:
        service.reset()
        options = open_options(chromium)
        set_server(options, address, agree=True)
        options.get_by_role("button", name="Check the server").click()
        expect(options.locator("#status")).to_contain_text("redirect")
        expect(options.locator("#status")).not_to_contain_text("is ready")
        page = chromium.open_page(f"{hostile.url}/clobber.html")
        wait_until(lambda: posted(moved), "the page's image was never asked about")
        popup = open_popup(chromium, chromium.tab_id(f"{hostile.url}/clobber.html"))
        expect(popup.locator("#failed")).to_have_text("1")
        assert page.locator("#clobbered").get_attribute("alt") is None
        assert ("POST", "/v1/captions") not in [r[:2] for r in service.from_browser()]
        assert ("GET", "/readyz") not in [r[:2] for r in service.from_browser()]


def posted(site: Site) -> bool:
    with site.lock:
        return any(r["method"] == "POST" for r in site.log)


def test_the_options_warn_of_a_plain_http_server_on_another_computer(chromium: Browser) -> None:
    options = open_options(chromium)
    field_ = options.get_by_label("AltCap server address")
    warning = options.locator("#server-url-warning")
    for address, shown in [
        ("http://altcap.example:8000", True),
        ("http://192.168.1.20:8000", True),
        ("https://altcap.example", False),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
    ]:
        field_.fill(address)
        if shown:
            expect(warning).to_be_visible()
            expect(warning).to_contain_text("not encrypted")
        else:
            expect(warning).to_be_hidden()


# --- Firefox -------------------------------------------------------------------------------

FIREFOX_SETTINGS = {"allowBytes": True}


@pytest.fixture
def firefox(service: Service, site: str, tmp_path: Path) -> Iterator[Firefox]:
    """Firefox with the extension granted both sites, agreed to, image bytes allowed."""
    executable = firefox_executable()
    if executable is None:
        pytest.fail("Firefox is missing (Debian package `firefox-esr`): `make test` installs it")
    extension = copy_extension(tmp_path / "extension", TWO_SITES)
    store_consent(extension, {"serverUrl": service.url, **FIREFOX_SETTINGS})
    browser = Firefox(executable, tmp_path / "profile")
    try:
        assert browser.install_extension(extension) == "altcap@altcap.invalid"
        wait_until_describing(browser, service, site)
        yield browser
    finally:
        browser.close()
        print(browser.output())


def firefox_machine_text(browser: Firefox, tab: str, element: str, attribute: str = "alt") -> None:
    read = f"document.getElementById({json.dumps(element)}).getAttribute('{attribute}')"
    wait_until(
        lambda: (browser.evaluate(tab, read) or "").startswith(PREFIX),
        f"#{element} is not described: {browser.evaluate(tab, read)!r}",
    )


def test_firefox_a_page_cannot_read_a_description_of_another_sites_private_image(
    firefox: Firefox, service: Service, victim: Site, hostile: Site
) -> None:
    service.reset()
    victim.reset()
    tab = firefox.new_tab()
    firefox.navigate(tab, f"{victim.url}/login")
    firefox.navigate(tab, f"{hostile.url}/steal.html")
    firefox_machine_text(firefox, tab, "own")
    firefox_machine_text(firefox, tab, "shared", "aria-label")
    settled(victim, hostile, stolen=2)
    assert stolen_text(lambda js: firefox.evaluate(tab, js)) == [None, None]
    secret = victim.requests("/secret.png")
    assert not any(r["cookie"] for r in secret), f"a request carried the victim's cookie: {secret}"
    assert secret_sent(service) == 0


def test_firefox_a_description_made_for_one_site_is_not_handed_to_another(
    firefox: Firefox, service: Service, victim: Site, hostile: Site
) -> None:
    service.reset()
    victim.reset()
    tab = firefox.new_tab()
    firefox.navigate(tab, f"{victim.url}/login")
    firefox.navigate(tab, f"{victim.url}/page.html")
    firefox_machine_text(firefox, tab, "secret")
    assert secret_sent(service) == 1
    asked_before = len(victim.requests("/secret.png"))
    other = firefox.new_tab()
    firefox.navigate(other, f"{hostile.url}/steal.html")
    firefox_machine_text(firefox, other, "own")
    settled(victim, hostile, stolen=2)
    assert stolen_text(lambda js: firefox.evaluate(other, js)) == [None, None]
    assert secret_sent(service) == 1
    assert not any(r["cookie"] for r in victim.requests("/secret.png")[asked_before:])


def test_firefox_a_page_cannot_switch_the_extension_off_by_naming_an_element(
    firefox: Firefox, hostile: Site
) -> None:
    tab = firefox.new_tab()
    firefox.navigate(tab, f"{hostile.url}/clobber.html")
    firefox_machine_text(firefox, tab, "clobbered")
