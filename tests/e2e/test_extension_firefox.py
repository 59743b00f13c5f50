"""The browser extension in Firefox: Debian's ``firefox-esr``, headless, over WebDriver BiDi.

The same service, site and pages as the Chromium tests (``test_extension.py``); here the
question is whether the one manifest and the one set of scripts work in Firefox as well:
the background runs as an event page (``background.scripts``), the content script is
registered with ``scripting.registerContentScripts`` for the granted site, finds the images
(open and closed shadow roots, iframes, role="img" backgrounds), asks the background, which
fetches captions from the server across origins, and writes the alt text (or aria-label)
with its mark.

Two things differ from a user's install, both in the copy of ``extension/`` these tests
load: ``*://127.0.0.1/*`` is granted at install (as for Chromium: automation cannot click a
permission dialog), and the consent is stored at install time by a line appended to the
copy's background script, because Firefox does not let BiDi open extension pages, where
the options page's "I agree" stores it. The consent flow, the popup and the options page
are tested in Chromium.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from extension_site import (
    COMPONENTS_DESCRIBED,
    SENT,
    TIMEOUT_MS,
    Service,
    copy_extension,
    image_url,
    wait_until,
)

try:
    from firefox import Firefox, firefox_executable
except ImportError as exc:  # fail, never skip: these tests are part of `make test`
    raise ImportError("websockets is missing: `make test` installs it") from exc

PREFIX = "Appears to be: "
LEFT_ALONE = {  # element id -> its alt as the page wrote it
    "author": "A red bicycle",
    "decorative": "",
    "presentation": None,
    "hidden": None,
    "tiny": None,
    "banner": None,
    "backdrop": None,  # a CSS background without role="img"
    "linked-text": "",  # alt="" beside its link's text
}

# Appended to the copy's background script (see the module docstring): the options page's
# "I agree" through the same saveSettings(), so the consent lands wherever that stores it.
CONSENT = """
// AltCap tests in Firefox only: what the options page's "I agree" stores.
import { saveSettings as altcapTestSave } from "./settings.js";
chrome.runtime.onInstalled.addListener(() => altcapTestSave(%s));
"""


def store_consent(extension: Path, settings: dict[str, object]) -> None:
    """Make the copy at ``extension`` store ``settings`` and the consent at install."""
    with (extension / "service-worker.js").open("a", encoding="utf-8") as f:
        f.write(CONSENT % json.dumps({**settings, "consented": True}))


@pytest.fixture
def firefox(
    request: pytest.FixtureRequest, service: Service, site: str, tmp_path: Path
) -> Iterator[Firefox]:
    """A fresh Firefox profile with the extension installed and agreed to (and any other
    settings a test passes as the fixture's parameter, ``indirect``)."""
    executable = firefox_executable()
    if executable is None:
        pytest.fail("Firefox is missing (Debian package `firefox-esr`): `make test` installs it")
    extension = copy_extension(tmp_path / "extension")
    store_consent(extension, {"serverUrl": service.url, **getattr(request, "param", {})})
    browser = Firefox(executable, tmp_path / "profile")
    try:
        assert browser.install_extension(extension) == "altcap@altcap.invalid"
        wait_until_describing(browser, service, site)
        yield browser
    finally:
        browser.close()
        print(browser.output())  # pytest shows it when a test failed


def wait_until_describing(browser: Firefox, service: Service, site: str) -> None:
    """Until the probe page gets its image described: the install's background work
    (registering the content script for the granted site, with the consent stored) runs
    after the install has answered, and a page loaded before it is done is not described."""
    probe = site.rsplit("/", 1)[0] + "/probe.html"
    tab = browser.new_tab()
    stop = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        browser.navigate(tab, probe)
        try:  # (its alt, not the server's log: with image bytes allowed no URL is sent)
            expect_machine_text(browser, tab, by_id("probe"), timeout=2.0)
            return
        except AssertionError:
            if time.monotonic() > stop:
                raise


def alt_of(
    browser: Firefox, tab: str, selector: str, attribute: str = "alt"
) -> dict[str, str | None]:
    """alt (or ``attribute``) and our mark of the element ``selector`` finds (a JavaScript
    expression)."""
    return browser.evaluate(
        tab, f"(el => ({{alt: el.getAttribute('{attribute}'), "
        f"mark: el.getAttribute('data-altcap')}}))({selector})"
    )  # fmt: skip


def expect_described(
    browser: Firefox,
    tab: str,
    service: Service,
    site: str,
    selector: str,
    image: str,
    timeout: float = TIMEOUT_MS / 1000,
    attribute: str = "alt",
) -> None:
    """The element's alt (or ``attribute``) becomes the prefix and the caption the server
    gave for ``image``."""
    url = image_url(site, image)
    caption = wait_until(lambda: service.captions.get(url), f"no caption for {url}", timeout)
    wanted = PREFIX + caption.strip()
    wait_until(
        lambda: alt_of(browser, tab, selector, attribute)["alt"] == wanted,
        f"{selector}: {attribute} is {alt_of(browser, tab, selector, attribute)}, not {wanted!r}",
        timeout,
    )


def expect_machine_text(
    browser: Firefox, tab: str, selector: str, timeout: float = TIMEOUT_MS / 1000
) -> None:
    """The element's alt becomes a description of ours (the prefix, then a caption)."""
    wait_until(
        lambda: (alt_of(browser, tab, selector)["alt"] or "").startswith(PREFIX),
        f"{selector} is {alt_of(browser, tab, selector)}, not described",
        timeout,
    )


def open_site_page(browser: Firefox, site: str, name: str) -> str:
    """A new tab on the test site's page ``name``; its browsing context."""
    tab = browser.new_tab()
    browser.navigate(tab, site.rsplit("/", 1)[0] + "/" + name)
    return tab


def by_id(name: str) -> str:
    return f"document.getElementById({json.dumps(name)})"


def test_firefox_describes_exactly_the_images_that_need_it(
    firefox: Firefox, service: Service, site: str
) -> None:
    service.reset()
    tab = firefox.new_tab()
    firefox.navigate(tab, site)
    assert firefox.evaluate(tab, by_id("script-state") + ".textContent") == "the page script ran"
    for name, image in [("none", "none"), ("filename", "filename"), ("change", "change1")]:
        expect_described(firefox, tab, service, site, by_id(name), image)
    assert alt_of(firefox, tab, by_id("none"))["mark"] == "__none__"
    assert alt_of(firefox, tab, by_id("filename"))["mark"] == "IMG_0042.jpg"
    assert alt_of(firefox, tab, by_id("lazy")) == {"alt": None, "mark": None}  # not loaded
    hero = by_id("hero")  # role="img" with a CSS background: the caption is its aria-label
    expect_described(firefox, tab, service, site, hero, "hero", attribute="aria-label")
    assert alt_of(firefox, tab, hero, "aria-label")["mark"] == "__none__"
    named = alt_of(firefox, tab, by_id("named-hero"), "aria-label")
    assert named == {"alt": "A quiet harbour", "mark": None}
    expect_described(firefox, tab, service, site, by_id("linked"), "linked")  # an empty link
    assert alt_of(firefox, tab, by_id("linked"))["mark"] == ""

    # Later images: added by a script, lazily loaded, and a new src for a described one.
    firefox.evaluate(tab, by_id("add") + ".click()")
    expect_described(firefox, tab, service, site, by_id("added"), "added")
    firefox.evaluate(tab, by_id("lazy") + ".scrollIntoView()")
    expect_described(firefox, tab, service, site, by_id("lazy"), "lazy")
    firefox.evaluate(tab, by_id("change") + ".src = 'change2.png'")
    expect_described(firefox, tab, service, site, by_id("change"), "change2")

    for name, alt in LEFT_ALONE.items():
        assert alt_of(firefox, tab, by_id(name)) == {"alt": alt, "mark": None}, name
    with service.lock:
        sent = sorted(service.sent_urls)
    assert sent == sorted(image_url(site, n) for n in SENT), "exactly these, each once"
    assert ("POST", "/v1/captions") in [r[:2] for r in service.from_browser("Firefox")]
    assert service.from_browser("Chrom") == []


def test_firefox_describes_images_in_shadow_roots_and_iframes(
    firefox: Firefox, service: Service, site: str
) -> None:
    service.reset()
    tab = open_site_page(firefox, site, "components.html")
    card = "document.querySelector('x-card').shadowRoot"
    badge = card + ".querySelector('x-badge').shadowRoot"
    frame = "document.getElementById('frame').contentDocument"
    srcdoc = "document.getElementById('srcdoc').contentDocument"
    for selector, image in [
        (f"{card}.getElementById('shadow')", "shadow"),
        (f"{badge}.getElementById('nested')", "nested"),
        ("document.querySelector('x-late').shadowRoot.getElementById('late')", "late"),
        (f"{frame}.getElementById('framed')", "framed"),
        (f"{srcdoc}.getElementById('srcdoc-img')", "srcdoc"),
    ]:
        expect_described(firefox, tab, service, site, selector, image)
    firefox.evaluate(tab, by_id("add") + ".click()")
    added = f"{card}.getElementById('shadow-added')"
    expect_described(firefox, tab, service, site, added, "shadow-added")

    kettle = alt_of(firefox, tab, f"{card}.getElementById('kettle')")
    assert kettle == {"alt": "A green kettle", "mark": None}
    assert alt_of(firefox, tab, f"{frame}.getElementById('door')") == {
        "alt": "A blue door",
        "mark": None,
    }
    # the frame's page is French: the English description is marked so
    assert alt_of(firefox, tab, f"{frame}.getElementById('framed')", "lang")["alt"] == "en"
    # in a closed shadow root, opened with Firefox's openOrClosedShadowRoot
    expect_described(firefox, tab, service, site, "window.closedImage", "closed")
    assert alt_of(firefox, tab, "window.closedImage")["mark"] == "__none__"
    with service.lock:
        sent = sorted(service.sent_urls)
    assert sent == sorted(image_url(site, n) for n in COMPONENTS_DESCRIBED), "these, each once"
    assert ("POST", "/v1/captions") in [r[:2] for r in service.from_browser("Firefox")]


@pytest.mark.parametrize("firefox", [{"allowBytes": True}], indirect=True)
def test_firefox_describes_an_image_the_server_cannot_decode_from_a_snapshot(
    firefox: Firefox, service: Service, site: str
) -> None:
    # As in Chromium: the SVG goes as bytes (an intranet address), the server answers
    # not_an_image, and the content script's canvas snapshot (a JPEG) is described.
    service.reset()
    tab = open_site_page(firefox, site, "drawing.html")
    expect_machine_text(firefox, tab, by_id("drawing"))
    assert alt_of(firefox, tab, by_id("drawing"))["mark"] == "__none__"
    with service.lock:
        sent = list(service.sent_data)
    assert sent[-1].startswith("data:image/jpeg;base64,/9j/"), sent  # the snapshot
