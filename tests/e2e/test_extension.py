"""The browser extension in a real browser: headless Chromium with ``extension/`` loaded.

The service runs for real (the tiny model, werkzeug's threaded server on a free port) and
counts what reaches it; a plain ``http.server`` serves a test page and its images on
127.0.0.1. The tests check, end to end, what the extension's node tests can only fake:
nothing is sent before consent, exactly the images without a useful description get alt
text (author text and ``alt=""`` are left alone), images that appear later (script, lazy
loading, a new ``src``) are described too, so are images inside open shadow roots (web
components) and iframes, the popup's toggle puts the page back exactly, and a page keeps
working when the server is down.

Browsers grant optional host permissions only through a dialog that automation cannot
click, so the tests load a copy of ``extension/`` whose manifest also asks for
``*://127.0.0.1/*`` at install (see extension/README.md, Tests).
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from extension_site import (
    COMPONENTS_DESCRIBED,
    DRAWING_SVG,
    SENT,
    TIMEOUT_MS,
    Service,
    image_url,
    wait_until,
)
from helpers import assert_accessible

try:
    from playwright.sync_api import FrameLocator, Locator, Page, expect
except ImportError as exc:  # fail, never skip: these tests are part of `make test`
    raise ImportError("Playwright is missing: `make test` installs it") from exc
from chromium import Browser, launch

PREFIX = re.compile(r"^Appears to be: \S")
# Elements no description is written to (their alt or aria-label as the page wrote it).
LEFT_ALONE = [
    *("author", "decorative", "presentation", "hidden", "tiny", "banner"),
    *("named-hero", "backdrop", "linked-text"),
]


@pytest.fixture(autouse=True)
def expect_timeout() -> Iterator[None]:
    """Generous expect() timeouts here, without changing them for other modules."""
    previous = getattr(expect, "_timeout", None)  # test_page.py sets its own at import
    expect.set_options(timeout=TIMEOUT_MS)
    yield
    expect.set_options(timeout=previous)


@pytest.fixture
def browser(extension_copy: Path, tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium profile with the extension installed (not yet agreed to)."""
    with launch(extension_copy, tmp_path / "profile") as chromium:
        yield chromium


# --- steps -------------------------------------------------------------------------------


def open_options(browser: Browser) -> Page:
    """The options page, once it has filled its form from storage (it would overwrite us)."""
    options = browser.open_page(browser.url("options.html"))
    expect(options.get_by_label("AltCap server address")).to_have_value(re.compile("^http"))
    return options


def set_server(options: Page, url: str, *, agree: bool, expect_status: str | None = None) -> None:
    options.get_by_label("AltCap server address").fill(url)
    if agree:
        options.get_by_role("button", name="I agree: save and start describing").click()
        expect(options.locator("#status")).to_contain_text("Thank you")
    else:
        options.get_by_role("button", name="Save", exact=True).click()
        expect(options.locator("#status")).to_contain_text(expect_status or "Saved.")


def open_popup(browser: Browser, tab_id: int) -> Page:
    popup = browser.open_page(browser.url(f"popup.html?tabId={tab_id}"))
    expect(popup.locator("#page-state")).not_to_have_text("")
    return popup


def expect_counts(popup: Page, *, found: int, described: int, failed: int) -> None:
    expect(popup.locator("#found")).to_have_text(str(found))  # the popup renders every second
    expect(popup.locator("#described")).to_have_text(str(described))
    expect(popup.locator("#failed")).to_have_text(str(failed))


def expect_left_alone(page: Page) -> None:
    """Author text, alt="" and every image that needs no description are untouched."""
    expect(page.locator("#author")).to_have_attribute("alt", "A red bicycle")
    expect(page.locator("#decorative")).to_have_attribute("alt", "")
    expect(page.locator("#linked-text")).to_have_attribute("alt", "")
    for name in ["presentation", "hidden", "tiny", "banner"]:
        assert page.locator(f"#{name}").get_attribute("alt") is None, name
    expect(page.locator("#named-hero")).to_have_attribute("aria-label", "A quiet harbour")
    assert page.locator("#backdrop").get_attribute("aria-label") is None
    for name in LEFT_ALONE:
        assert page.locator(f"#{name}").get_attribute("data-altcap") is None, name


def expect_described(
    page: Page | FrameLocator,
    service: Service,
    site: str,
    element: str,
    image: str,
    attribute: str = "alt",
) -> None:
    """The element's alt (``attribute``: aria-label for a role="img" element) is the prefix
    and the caption the server gave for that image (CSS locators look inside open shadow
    roots; a FrameLocator inside its frame)."""
    caption = service.wait_for_caption(image_url(site, image))
    img = page.locator(f"#{element}")
    expect(img).to_have_attribute(attribute, "Appears to be: " + caption.strip())
    assert PREFIX.match(img.get_attribute(attribute) or "")


def expect_closed(page: Page, service: Service, site: str, *, described: bool) -> None:
    """The image in the page's closed shadow root (CSS locators cannot reach it; the page
    keeps it in ``window.closedImage``): described with its caption and mark, or untouched."""
    caption = service.wait_for_caption(image_url(site, "closed")).strip()
    wanted = ["Appears to be: " + caption, "__none__"] if described else [None, None]
    probe = "['alt', 'data-altcap'].map((name) => window.closedImage.getAttribute(name))"
    wait_until(lambda: page.evaluate(probe) == wanted, f"{page.evaluate(probe)}, not {wanted}")


def expect_untouched(img: Locator, alt: str | None) -> None:
    """As the page wrote it: the author's alt (or none), and no mark of ours."""
    if alt is None:
        expect(img).not_to_have_attribute("alt", re.compile(".*"))
    else:
        expect(img).to_have_attribute("alt", alt)
    expect(img).not_to_have_attribute("data-altcap", re.compile(".*"))


# --- tests -------------------------------------------------------------------------------


def test_describes_exactly_the_images_that_need_it_after_consent_and_restores_them(
    browser: Browser, service: Service, site: str
) -> None:
    service.reset()

    # Before consent: the server is known and the user asks twice, but nothing is sent.
    options = open_options(browser)
    set_server(options, service.url, agree=False)
    page = browser.open_page(site)
    expect(page.locator("#script-state")).to_have_text("the page script ran")
    tab_id = browser.tab_id(site)
    popup = open_popup(browser, tab_id)
    expect(popup.locator("#page-state")).to_contain_text("sends nothing until you agree")
    popup.get_by_role("button", name="Describe images on this page now").click()
    expect(popup.locator("#status")).to_contain_text("agree to the privacy notice")
    options.bring_to_front()
    options.get_by_role("button", name="Check the server").click()
    expect(options.locator("#status")).to_contain_text("Agree to the privacy notice first")
    assert browser.worker.evaluate("chrome.scripting.getRegisteredContentScripts()") == []
    assert page.locator("[data-altcap]").count() == 0
    assert browser.settings().get("consented") is not True
    assert service.from_browser() == [], "the extension contacted the server before consent"
    popup.close()

    # Consent: the content script is registered for the granted site and runs on new loads.
    set_server(options, service.url, agree=True)
    stored = browser.settings()
    assert stored["consented"] is True and stored["serverUrl"] == service.url, stored
    scripts = browser.worker.evaluate("chrome.scripting.getRegisteredContentScripts()")
    assert [s["matches"] for s in scripts] == [["*://127.0.0.1/*"]], scripts
    options.get_by_role("button", name="Check the server").click()  # which model, which language
    expect(options.locator("#status")).to_contain_text("is ready: model ")
    expect(options.locator("#status")).to_contain_text("descriptions in English (en).")
    page.bring_to_front()
    page.reload()

    expect_described(page, service, site, "none", "none")
    expect_described(page, service, site, "filename", "filename")
    expect_described(page, service, site, "change", "change1")
    expect_described(page, service, site, "hero", "hero", "aria-label")  # role="img"
    expect(page.locator("#hero")).to_have_attribute("data-altcap", "__none__")
    expect_described(page, service, site, "linked", "linked")  # all an empty link holds
    expect(page.locator("#linked")).to_have_attribute("data-altcap", "")
    # What a screen reader gets, from Chromium's accessibility tree: the link that had no
    # name is named by its image's description; the link with text keeps its text.
    linked_caption = service.wait_for_caption(image_url(site, "linked")).strip()
    expect(page.locator("a[href='#shop']")).to_have_accessible_name(
        "Appears to be: " + linked_caption
    )
    expect(page.locator("a[href='#home']")).to_have_accessible_name("Home")
    expect(page.locator("#hero")).to_have_accessible_name(
        "Appears to be: " + service.wait_for_caption(image_url(site, "hero")).strip()
    )
    expect(page.locator("#none")).to_have_attribute("data-altcap", "__none__")
    expect(page.locator("#filename")).to_have_attribute("data-altcap", "IMG_0042.jpg")
    expect(page.locator("#change")).to_have_attribute("data-altcap", "__none__")
    expect_left_alone(page)
    lazy = page.locator("#lazy")
    assert lazy.get_attribute("alt") is None, "the lazy image was described before it loaded"

    # Later images: added by a script, lazily loaded, and a new src for a described one.
    page.get_by_role("button", name="Add an image").click()
    expect_described(page, service, site, "added", "added")
    lazy.scroll_into_view_if_needed()
    expect_described(page, service, site, "lazy", "lazy")
    page.locator("#change").evaluate("(img) => { img.src = 'change2.png'; }")
    expect_described(page, service, site, "change", "change2")
    expect(page.locator("#change")).to_have_attribute("data-altcap", "__none__")
    expect_left_alone(page)
    with service.lock:
        sent = sorted(service.sent_urls)
    assert sent == sorted(image_url(site, n) for n in SENT), "exactly these, each once"
    assert ("POST", "/v1/captions") in [r[:2] for r in service.from_browser()]

    # Counts and badge, then the popup's toggle: the page exactly as it was, and back.
    popup = open_popup(browser, tab_id)
    expect_counts(popup, found=7, described=7, failed=0)
    badge = "(tabId) => chrome.action.getBadgeText({tabId})"
    wait_until(lambda: browser.worker.evaluate(badge, tab_id) == "7", "the badge is not 7")
    popup.get_by_role("button", name="Hide AltCap's descriptions here").click()
    expect(popup.locator("#status")).to_contain_text("The page's own text is back")
    expect(page.locator("[data-altcap]")).to_have_count(0)
    for name in ["none", "change", "added", "lazy"]:
        assert page.locator(f"#{name}").get_attribute("alt") is None, name
    assert page.locator("#hero").get_attribute("aria-label") is None
    expect(page.locator("#linked")).to_have_attribute("alt", "")
    expect(page.locator("a[href='#shop']")).to_have_accessible_name("")  # nameless again
    expect(page.locator("#filename")).to_have_attribute("alt", "IMG_0042.jpg")
    expect_left_alone(page)
    expect(popup.get_by_role("button", name="Show AltCap's descriptions here")).to_be_visible()
    popup.get_by_role("button", name="Show AltCap's descriptions here").click()
    expect(popup.locator("#status")).to_contain_text("AltCap's descriptions are shown")
    for element, image in [
        ("none", "none"),
        ("filename", "filename"),
        ("change", "change2"),
        ("added", "added"),
        ("lazy", "lazy"),
        ("linked", "linked"),
    ]:
        expect_described(page, service, site, element, image)
    expect_described(page, service, site, "hero", "hero", "aria-label")
    expect(page.locator("#filename")).to_have_attribute("data-altcap", "IMG_0042.jpg")
    expect_left_alone(page)
    with service.lock:
        assert sorted(service.sent_urls) == sent, "showing again uses the captions it has"
    assert browser.errors == []


def test_an_image_the_server_cannot_decode_is_described_from_a_snapshot(
    browser: Browser, service: Service, site: str
) -> None:
    # An SVG, which the server does not decode. With image bytes allowed, an image on an
    # intranet address (127.0.0.1 here) goes as bytes at once: the worker asks the content
    # script for them, which reads the SVG as the page may (its own image) and sends it, the
    # server answers not_an_image (SVG markup), and the worker asks for a snapshot, which the
    # content script draws from those bytes (a JPEG). The description is written as for any
    # other image. (A public SVG takes the same path from the server's unsupported_image:
    # network.test.mjs.)
    service.reset()
    options = open_options(browser)
    options.get_by_label("Send image bytes when the server cannot download an image").check()
    set_server(options, service.url, agree=True)
    assert browser.settings()["allowBytes"] is True
    page = browser.open_page(site.rsplit("/", 1)[0] + "/drawing.html")
    drawing = page.locator("#drawing")
    expect(drawing).to_have_attribute("alt", PREFIX)
    expect(drawing).to_have_attribute("data-altcap", "__none__")
    svg = ("data:image/svg+xml;base64," + base64.b64encode(DRAWING_SVG.encode()).decode())[:32]
    with service.lock:
        assert service.sent_urls == []
        sent = list(service.sent_data)
    assert len(sent) == 2 and sent[0] == svg, sent
    assert sent[1].startswith("data:image/jpeg;base64,/9j/"), sent  # then the snapshot
    assert browser.errors == []


def test_the_page_keeps_working_when_the_server_is_down(
    browser: Browser, service: Service, site: str
) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"

    # Agreeing to one server does not cover another: changing it withdraws consent.
    options = open_options(browser)
    set_server(options, service.url, agree=True)
    set_server(options, dead, agree=False, expect_status="agree again")
    stored = browser.settings()
    assert stored["consented"] is False and stored["serverUrl"] == dead, stored
    set_server(options, dead, agree=True)
    assert browser.settings()["consented"] is True

    page = browser.open_page(site)
    expect(page.locator("#script-state")).to_have_text("the page script ran")
    popup = open_popup(browser, browser.tab_id(site))
    # none, filename, change1, hero, linked: failed after the retries (~4 s of back-off).
    # The banner, whose text could not be read either, is no picture AltCap failed to
    # describe: counted nowhere (and tried again on "Describe images on this page now").
    expect_counts(popup, found=5, described=0, failed=5)
    page.bring_to_front()
    page.get_by_role("button", name="Add an image").click()
    expect(page.locator("#clicks")).to_have_text("1")
    expect(page.locator("#added")).to_be_visible()
    expect_counts(popup, found=6, described=0, failed=6)
    page.get_by_role("button", name="Add an image").click()
    expect(page.locator("#clicks")).to_have_text("2")
    expect(page.locator("[data-altcap]")).to_have_count(0)
    assert page.locator("#none").get_attribute("alt") is None
    expect(page.locator("#filename")).to_have_attribute("alt", "IMG_0042.jpg")
    expect_left_alone(page)
    assert browser.errors == []


def test_images_in_shadow_roots_and_iframes_are_described_and_restored(
    browser: Browser, service: Service, site: str
) -> None:
    service.reset()
    options = open_options(browser)
    set_server(options, service.url, agree=True)
    url = site.rsplit("/", 1)[0] + "/components.html"
    page = browser.open_page(url)
    expect(page.locator("#script-state")).to_have_text("the page script ran")
    frame = page.frame_locator("#frame")
    srcdoc = page.frame_locator("#srcdoc")

    # Open shadow roots (nested too, and one attached after the page loaded) and both frames.
    for name in ["shadow", "nested", "late"]:
        expect_described(page, service, site, name, name)
    expect_described(frame, service, site, "framed", "framed")
    expect_described(srcdoc, service, site, "srcdoc-img", "srcdoc")
    page.get_by_role("button", name="Add an image to the card").click()
    expect_described(page, service, site, "shadow-added", "shadow-added")
    for name in ["shadow", "nested", "late", "shadow-added"]:
        expect(page.locator(f"#{name}")).to_have_attribute("data-altcap", "__none__")
    expect(frame.locator("#framed")).to_have_attribute("data-altcap", "__none__")
    # The frame's page is French: the English description says so; on the English page
    # none is needed.
    expect(frame.locator("#framed")).to_have_attribute("lang", "en")
    expect(page.locator("#shadow")).not_to_have_attribute("lang", re.compile(".*"))
    expect_untouched(page.locator("#kettle"), "A green kettle")
    expect_untouched(frame.locator("#door"), "A blue door")
    expect_closed(page, service, site, described=True)  # opened with chrome.dom
    with service.lock:
        sent = sorted(service.sent_urls)
    assert sent == sorted(image_url(site, n) for n in COMPONENTS_DESCRIBED), "these, each once"

    # The popup and the badge add up the frames; the toggle reaches every frame.
    tab_id = browser.tab_id(url)
    popup = open_popup(browser, tab_id)
    expect_counts(popup, found=7, described=7, failed=0)
    badge = "(tabId) => chrome.action.getBadgeText({tabId})"
    wait_until(lambda: browser.worker.evaluate(badge, tab_id) == "7", "the badge is not 7")
    popup.get_by_role("button", name="Hide AltCap's descriptions here").click()
    expect(popup.locator("#status")).to_contain_text("The page's own text is back")
    for img in [
        *(page.locator(f"#{name}") for name in ["shadow", "nested", "late", "shadow-added"]),
        frame.locator("#framed"),
        srcdoc.locator("#srcdoc-img"),
    ]:
        expect_untouched(img, None)
    expect_closed(page, service, site, described=False)
    expect(frame.locator("#framed")).not_to_have_attribute("lang", re.compile(".*"))
    expect_untouched(page.locator("#kettle"), "A green kettle")
    expect_untouched(frame.locator("#door"), "A blue door")
    popup.get_by_role("button", name="Show AltCap's descriptions here").click()
    expect(popup.locator("#status")).to_contain_text("AltCap's descriptions are shown")
    for name in ["shadow", "nested", "late", "shadow-added"]:
        expect_described(page, service, site, name, name)
    expect_described(frame, service, site, "framed", "framed")
    expect_described(srcdoc, service, site, "srcdoc-img", "srcdoc")
    expect_closed(page, service, site, described=True)
    with service.lock:
        assert sorted(service.sent_urls) == sent, "showing again uses the captions it has"
    assert browser.errors == []


def test_the_options_page_and_the_popup_pass_axe(
    browser: Browser, service: Service, site: str
) -> None:
    """axe-core (WCAG 2 A and AA, and best practices) finds nothing on AltCap's own pages:
    the options before consent and after, the popup with a page's counts."""
    options = open_options(browser)
    assert_accessible(options, "options, before consent")
    set_server(options, service.url, agree=True)
    assert_accessible(options, "options, after consent")
    page = browser.open_page(site)
    expect_described(page, service, site, "none", "none")
    popup = open_popup(browser, browser.tab_id(site))
    expect(popup.locator("#described")).not_to_have_text("0")
    assert_accessible(popup, "popup")


def violating(page: Page) -> set[str]:
    """What axe-core flags on ``page`` for the names of images and links: its targets."""
    from axe_playwright_python.sync_playwright import Axe

    rules = ["image-alt", "role-img-alt", "link-name", "input-image-alt"]
    results = Axe().run(page, options={"runOnly": {"type": "rule", "values": rules}})
    found = results.response["violations"]
    return {" ".join(node["target"]) for rule in found for node in rule["nodes"]}


def test_axe_finds_only_what_altcap_leaves_alone_by_rule(
    browser: Browser, service: Service, site: str
) -> None:
    """axe-core, before and after: every image and link it flags for a missing name is named
    by AltCap, except those its rules leave alone (too small, a banner with no text in it,
    not loaded yet)."""
    page = browser.open_page(site)
    expect(page.locator("#script-state")).to_have_text("the page script ran")
    before = violating(page)  # no consent yet: the page as its author wrote it
    # the empty link, as axe names it too
    assert before == {"#none", "#change", "#hero", 'a[href$="#shop"]', "#tiny", "#banner", "#lazy"}
    options = open_options(browser)
    set_server(options, service.url, agree=True)
    page.bring_to_front()
    page.reload()
    for element, image in [("none", "none"), ("change", "change1"), ("linked", "linked")]:
        expect_described(page, service, site, element, image)
    expect_described(page, service, site, "hero", "hero", "aria-label")
    assert violating(page) == {"#tiny", "#banner", "#lazy"}
