"""Descriptions a user can trust, in a real browser (issue 23): the extension stays silent
where the server does not believe its caption, and (opt-in) says where an author's alt may
not match its image.

The real service serves the trained demo model (``demo_dir``: CLIP's two towers and the
prefix trained on synthetic shapes), so its captions, confidences and alt checks are the
model's own, not a fake's. A red circle (``draw_shape``, 64 px, served at 200 x 200 so that
AltCap does not skip it as too small) is "A red circle on a white background.", with a high
confidence:

- without alt, it gets "Appears to be: A red circle on a white background."; from a server
  whose ``ALTCAP_MIN_CONFIDENCE`` is 0.999 the same answer says ``confident: false``, and the
  image gets no alt at all, counted in the popup (Chromium) as "No confident description";
- with "Tell me when a description may not match the image" on, a red circle whose author
  wrote "A blue star on a white background." keeps that alt and gets the aria-description
  "AltCap: the description may not match; appears to be: A red circle on a white
  background." (its accessible description, in Chromium); one whose alt is right gets none.
  Hiding AltCap's descriptions takes the note away. In Chromium the popup counts it under
  "Descriptions that may not match" (a row shown only with the option on), and "Describe
  images on this page now" ends with "AltCap: no images without a description on this page;
  1 description may not match." in the page's live region.

Firefox runs the same pages through the event-page background, the settings stored at
install (``test_extension_firefox.store_consent``).
"""

from __future__ import annotations

import io
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from extension_site import TIMEOUT_MS, Service, copy_extension, log_requests, wait_until
from helpers import assert_accessible, serve_app, serve_directory, tiny_service_app

try:
    from playwright.sync_api import Page, expect
except ImportError as exc:  # fail, never skip: these tests are part of `make test`
    raise ImportError("Playwright is missing: `make test` installs it") from exc
from chromium import Browser, launch
from firefox import Firefox, firefox_executable
from test_extension_firefox import by_id, store_consent

CAPTION = "A red circle on a white background."
WRONG_ALT = "A blue star on a white background."
PREFIX = "Appears to be: "
NOTE = f"AltCap: the description may not match; appears to be: {CAPTION}"
CHECK_LABEL = "Tell me when a description may not match the image"
SUSPECT_COUNT = "Descriptions that may not match"  # the popup's row, with the option on only

DESCRIBE_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>A shape</title></head>
<body><h1>A shape</h1><img id="circle" src="circle.png" width="200" height="200"></body>
</html>
"""
# Two red circles, each at its own address: one whose author's alt is wrong, one right.
CHECK_PAGE = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Shapes, described by their author</title></head>
<body>
<h1>Shapes, described by their author</h1>
<img id="wrong" src="wrong.png" alt="{WRONG_ALT}" width="200" height="200">
<img id="right" src="right.png" alt="{CAPTION}" width="200" height="200">
</body>
</html>
"""


def red_circle_png(seed: int) -> bytes:
    """A red circle as the demo model was trained on (64 px), scaled up to 200 x 200."""
    from PIL import Image

    from captioner.train.synthetic import draw_shape

    image = draw_shape("red", "circle", rng=random.Random(seed)).resize((200, 200), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo_service(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real service with the demo model and its default trust settings."""
    app = tiny_service_app(demo_dir, tmp_path_factory.mktemp("trust-data"))
    svc = log_requests(app)
    with serve_app(app) as url:
        svc.url = url
        yield svc


@pytest.fixture(scope="module")
def unsure_service(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The same, believing no caption under a confidence of 0.999 (ALTCAP_MIN_CONFIDENCE)."""
    app = tiny_service_app(demo_dir, tmp_path_factory.mktemp("unsure-data"), MIN_CONFIDENCE=0.999)
    svc = log_requests(app)
    with serve_app(app) as url:
        svc.url = url
        yield svc


@pytest.fixture(scope="module")
def shapes_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The two pages and their red circles on 127.0.0.1; yields the base URL."""
    root = tmp_path_factory.mktemp("trust-site")
    (root / "describe.html").write_text(DESCRIBE_PAGE, encoding="utf-8")
    (root / "check.html").write_text(CHECK_PAGE, encoding="utf-8")
    for seed, name in enumerate(["circle", "wrong", "right"]):
        (root / f"{name}.png").write_bytes(red_circle_png(seed))
    with serve_directory(root) as base:
        yield base


@pytest.fixture(scope="module")
def trust_extension(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """extension/ with ``*://127.0.0.1/*`` granted at install (no dialog to click)."""
    return copy_extension(tmp_path_factory.mktemp("trust-ext") / "extension")


@pytest.fixture
def browser(trust_extension: Path, tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium profile with the extension installed (not yet agreed to)."""
    with launch(trust_extension, tmp_path / "profile") as chromium:
        yield chromium


def agree(browser: Browser, server: str, check_alts: bool = False) -> None:
    """Save ``server`` (and the opt-in check) on the options page and agree to the notice."""
    options = browser.open_page(browser.url("options.html"))
    expect(options.get_by_label("AltCap server address")).to_have_value(re.compile("^http"))
    expect(options.get_by_label(CHECK_LABEL)).not_to_be_checked()  # off by default
    expect(options.get_by_label("Read text in images")).to_be_checked()  # on by default
    options.get_by_label("AltCap server address").fill(server)
    if check_alts:
        options.get_by_label(CHECK_LABEL).check()
    options.get_by_role("button", name="I agree: save and start describing").click()
    expect(options.locator("#status")).to_contain_text("Thank you")
    assert browser.settings().get("checkAlt", False) is check_alts


def result_for(service: Service, url: str) -> dict[str, Any]:
    return service.wait_for_result(url)


def expect_believed(service: Service, base: str) -> None:
    """The server's own answer for the circle: the demo model's caption, confident."""
    result = result_for(service, f"{base}/circle.png")
    assert result["caption"] == CAPTION, result
    assert result.get("confident") is True and 0 < result["confidence"] < 1, result


def expect_doubted(service: Service, base: str) -> None:
    """The unsure server's answer for the circle: the same caption, not confident."""
    result = result_for(service, f"{base}/circle.png")
    assert result["caption"] == CAPTION, result
    assert result.get("confident") is False and result.get("alt_from") == "caption", result


def expect_checked(service: Service, base: str) -> None:
    """Both authors' alts reached the server, with their images, and were judged."""
    wrong = result_for(service, f"{base}/wrong.png")
    assert wrong.get("alt_check", {}).get("verdict") == "suspect", wrong
    assert wrong["caption"] == CAPTION, wrong
    right = result_for(service, f"{base}/right.png")
    assert right.get("alt_check", {}).get("verdict") == "matches", right
    with service.lock:
        sent = sorted(service.sent_alts)
    assert sent == [(f"{base}/right.png", CAPTION), (f"{base}/wrong.png", WRONG_ALT)], sent


def popup_counts(browser: Browser, url: str) -> Page:
    tab_id = browser.tab_id(url)
    return browser.open_page(browser.url(f"popup.html?tabId={tab_id}"))


def expect_counts(popup: Page, **wanted: int) -> None:
    """The popup's counts (#found, #described, #unsure, #failed, #suspect) become ``wanted``."""
    for counter, n in wanted.items():
        expect(popup.locator(f"#{counter}")).to_have_text(str(n), timeout=TIMEOUT_MS)


def test_chromium_describes_what_the_model_believes_and_flags_a_wrong_alt(
    browser: Browser, demo_service: Service, shapes_site: str
) -> None:
    demo_service.reset()
    agree(browser, demo_service.url, check_alts=True)
    page = browser.open_page(f"{shapes_site}/describe.html")
    expect_believed(demo_service, shapes_site)
    circle = page.locator("#circle")
    expect(circle).to_have_attribute("alt", PREFIX + CAPTION, timeout=TIMEOUT_MS)
    expect(circle).to_have_accessible_name(PREFIX + CAPTION)
    popup = popup_counts(browser, f"{shapes_site}/describe.html")
    expect_counts(popup, found=1, described=1, unsure=0, failed=0)

    # The opt-in check: the wrong alt is flagged beside it, never replaced; the right one not.
    checks = browser.open_page(f"{shapes_site}/check.html")
    expect_checked(demo_service, shapes_site)
    wrong, right = checks.locator("#wrong"), checks.locator("#right")
    expect(wrong).to_have_attribute("aria-description", NOTE, timeout=TIMEOUT_MS)
    expect(wrong).to_have_accessible_description(NOTE)  # what a screen reader reads after it
    expect(wrong).to_have_attribute("alt", WRONG_ALT)
    expect(wrong).to_have_accessible_name(WRONG_ALT)
    assert wrong.get_attribute("data-altcap") is None
    assert right.get_attribute("aria-description") is None
    assert right.get_attribute("alt") == CAPTION
    check_popup = popup_counts(browser, f"{shapes_site}/check.html")
    # Checks are not images described; the one flagged is counted on its own row.
    expect_counts(check_popup, found=0, described=0, unsure=0, failed=0, suspect=1)
    expect(check_popup.get_by_text(SUSPECT_COUNT)).to_be_visible()
    assert_accessible(check_popup, "popup, with an author's alt flagged")
    # Asked to describe the page, AltCap says what it found: nothing to describe, one alt
    # that may not match (the spoken summary, in the page's polite live region).
    check_popup.get_by_role("button", name="Describe images on this page now").click()
    live = checks.locator("[data-altcap-live]")
    expect(live).to_have_text(
        "AltCap: no images without a description on this page; 1 description may not match.",
        timeout=TIMEOUT_MS,
    )

    # Hidden with AltCap's descriptions, and back: the author's alt stays all along.
    check_popup.get_by_role("button", name="Hide AltCap's descriptions here").click()
    expect(wrong).not_to_have_attribute("aria-description", NOTE, timeout=TIMEOUT_MS)
    assert wrong.get_attribute("aria-description") is None
    assert wrong.get_attribute("alt") == WRONG_ALT
    expect_counts(check_popup, suspect=0)  # no note on the page, none counted
    check_popup.get_by_role("button", name="Show AltCap's descriptions here").click()
    expect(wrong).to_have_attribute("aria-description", NOTE, timeout=TIMEOUT_MS)

    # Switched off in the options: the note goes at once, on the open page.
    options = browser.open_page(browser.url("options.html"))
    expect(options.get_by_label(CHECK_LABEL)).to_be_checked()
    options.get_by_label(CHECK_LABEL).uncheck()
    options.get_by_role("button", name="Save", exact=True).click()
    expect(options.locator("#status")).to_contain_text("Saved")
    expect(wrong).not_to_have_attribute("aria-description", NOTE, timeout=TIMEOUT_MS)
    assert wrong.get_attribute("alt") == WRONG_ALT
    with demo_service.lock:
        assert len(demo_service.sent_alts) == 2, "each alt checked once"
    assert browser.errors == []


def test_chromium_writes_nothing_the_model_does_not_believe(
    browser: Browser, unsure_service: Service, shapes_site: str
) -> None:
    unsure_service.reset()
    agree(browser, unsure_service.url)
    page = browser.open_page(f"{shapes_site}/describe.html")
    expect_doubted(unsure_service, shapes_site)
    popup = popup_counts(browser, f"{shapes_site}/describe.html")
    expect(popup.get_by_text("No confident description")).to_be_visible()
    expect_counts(popup, found=1, described=0, unsure=1, failed=0)
    expect(popup.get_by_text(SUSPECT_COUNT)).to_be_hidden()  # the check is off: no such count
    # The answer has come back (counted), and nothing was written.
    assert page.locator("#circle").get_attribute("alt") is None
    assert page.locator("#circle").get_attribute("data-altcap") is None
    expect(page.get_by_role("img", name=re.compile("Appears"))).to_have_count(0)
    assert browser.errors == []


@pytest.fixture
def firefox_with(tmp_path: Path, shapes_site: str) -> Iterator[Any]:
    """Start a fresh Firefox with the extension agreed to for a server (and other
    settings): ``firefox_with(service, **settings)``, once per test."""
    started: list[Firefox] = []

    def start(service: Service, **settings: Any) -> Firefox:
        executable = firefox_executable()
        if executable is None:
            pytest.fail("Firefox is missing (Debian's `firefox-esr`): `make test` installs it")
        extension = copy_extension(tmp_path / "extension")
        store_consent(extension, {"serverUrl": service.url, **settings})
        browser = Firefox(executable, tmp_path / "profile")
        started.append(browser)
        assert browser.install_extension(extension) == "altcap@altcap.invalid"
        wait_until_running(browser, service, shapes_site)
        return browser

    try:
        yield start
    finally:
        for browser in started:
            browser.close()
            print(browser.output())  # pytest shows it when a test failed


def wait_until_running(browser: Firefox, service: Service, base: str) -> None:
    """Until a page load reaches the server from Firefox: the install's background work
    (registering the content script, the consent stored) ends after the install answered."""
    tab = browser.new_tab()
    stop = time.monotonic() + TIMEOUT_MS / 1000
    while not any(r[:2] == ("POST", "/v1/captions") for r in service.from_browser("Firefox")):
        assert time.monotonic() < stop, "the extension never asked the server"
        browser.navigate(tab, f"{base}/describe.html")
        time.sleep(1.0)


def test_firefox_describes_what_the_model_believes_and_flags_a_wrong_alt(
    firefox_with: Any, demo_service: Service, shapes_site: str
) -> None:
    demo_service.reset()
    firefox = firefox_with(demo_service, checkAlt=True)
    tab = firefox.new_tab()
    firefox.navigate(tab, f"{shapes_site}/describe.html")
    expect_believed(demo_service, shapes_site)

    def attribute(name: str, attr: str) -> Any:
        return firefox.evaluate(tab, f"{by_id(name)}.getAttribute('{attr}')")

    wanted = PREFIX + CAPTION
    wait_until(
        lambda: attribute("circle", "alt") == wanted, f"#circle: {attribute('circle', 'alt')!r}"
    )

    firefox.navigate(tab, f"{shapes_site}/check.html")
    expect_checked(demo_service, shapes_site)
    wait_until(
        lambda: attribute("wrong", "aria-description") == NOTE,
        f"#wrong: aria-description is {attribute('wrong', 'aria-description')!r}",
    )
    assert attribute("wrong", "alt") == WRONG_ALT
    assert attribute("wrong", "data-altcap") is None
    time.sleep(0.5)  # the right alt's answer, logged by the server, reaches the page
    assert attribute("right", "aria-description") is None
    assert attribute("right", "alt") == CAPTION


def test_firefox_writes_nothing_the_model_does_not_believe(
    firefox_with: Any, unsure_service: Service, shapes_site: str
) -> None:
    unsure_service.reset()
    firefox = firefox_with(unsure_service)
    tab = firefox.new_tab()
    firefox.navigate(tab, f"{shapes_site}/describe.html")
    expect_doubted(unsure_service, shapes_site)
    time.sleep(1.0)  # the answer, logged by the server, reaches the page
    assert firefox.evaluate(tab, by_id("circle") + ".getAttribute('alt')") is None
    assert firefox.evaluate(tab, by_id("circle") + ".getAttribute('data-altcap')") is None
