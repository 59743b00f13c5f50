"""Images of text in a real browser (issue 22): the extension writes what the image says.

The real service (the tiny model, and Tesseract reading the text) answers each image with
``caption``, ``text``, ``alt`` and ``alt_from``. An image that is mostly text (a banner
saying "SALE 50% OFF") gets its text as alt, marked "Appears to say: "; a picture without
text keeps its caption, marked "Appears to be: ". A thin banner (728 x 90) is described by
its text only: one saying "FREE SHIPPING ON ALL ORDERS" gets it, a gradient strip gets no alt
(its caption alone says nothing). Chromium checks what a screen reader gets (the accessible
name) and the popup's counts; Firefox runs the same page through the event-page background.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from extension_site import TIMEOUT_MS, Service, wait_until
from helpers import png_bytes, serve_directory

try:
    from playwright.sync_api import Page, expect
except ImportError as exc:  # fail, never skip: these tests are part of `make test`
    raise ImportError("Playwright is missing: `make test` installs it") from exc
from chromium import Browser, launch
from firefox import Firefox
from test_extension_firefox import by_id, firefox  # noqa: F401  (firefox: a fixture)

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SAYS = "SALE 50% OFF"
BANNER_SAYS = "FREE SHIPPING ON ALL ORDERS"
TEXT_PREFIX = "Appears to say: "
PREFIX = "Appears to be: "

# sale: 400 x 160, an aspect ratio of 2.5 at most, so no thin banner. banner and strip:
# 728 x 90 (the ad "leaderboard"), thin banners (detection.js: above 2.5 with the short side
# under 150 px), which AltCap describes by their own text only.
TEXT_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>A sale</title></head>
<body>
<h1>A sale</h1>
<img id="sale" src="sale.png" width="400" height="160">
<img id="photo" src="photo.png" width="200" height="150">
<img id="banner" src="banner.png" width="728" height="90">
<img id="strip" src="strip.png" width="728" height="90">
</body>
</html>
"""


def png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def text_png(text: str = SAYS, size: tuple[int, int] = (400, 160), font_px: int = 40) -> bytes:
    """``text`` in DejaVu Sans, black on white, centred: an image that is its text."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    font = ImageFont.truetype(FONT, font_px)
    ImageDraw.Draw(image).text((size[0] / 2, size[1] / 2), text, "black", font, anchor="mm")
    return png(image)


def gradient_png(size: tuple[int, int] = (728, 90)) -> bytes:
    """A left-to-right gradient, blue to sand: a strip with nothing to read."""
    from PIL import Image, ImageOps

    ramp = Image.linear_gradient("L").rotate(90).resize(size)
    return png(ImageOps.colorize(ramp, "#1e3c72", "#e9c46a"))


@pytest.fixture(scope="module")
def text_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page with an image of text and a plain picture, on 127.0.0.1; yields its URL."""
    root = tmp_path_factory.mktemp("text-site")
    (root / "text.html").write_text(TEXT_PAGE, encoding="utf-8")
    (root / "sale.png").write_bytes(text_png())
    (root / "photo.png").write_bytes(png_bytes((40, 120, 200), (200, 150)))
    (root / "banner.png").write_bytes(text_png(BANNER_SAYS, (728, 90), 36))
    (root / "strip.png").write_bytes(gradient_png())
    with serve_directory(root) as base:
        yield f"{base}/text.html"


@pytest.fixture
def browser(extension_copy: Path, tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium profile with the extension installed (not yet agreed to)."""
    with launch(extension_copy, tmp_path / "profile") as chromium:
        yield chromium


def image_url(page_url: str, name: str) -> str:
    return page_url.rsplit("/", 1)[0] + f"/{name}.png"


def expect_server_read(service: Service, text_site: str) -> str:
    """The server's results for the two images, as the API documents them: the image of
    text's alt is its text; the plain picture's alt is its caption (returned)."""
    sale = service.wait_for_result(image_url(text_site, "sale"))
    assert sale.get("alt_from") == "text", sale
    assert sale.get("alt") == SAYS, sale
    assert SAYS in (sale.get("text") or "").replace("\n", " "), sale
    photo = service.wait_for_result(image_url(text_site, "photo"))
    assert photo.get("alt_from") == "caption", photo
    assert photo.get("alt") == photo["caption"] and photo["alt"].strip(), photo
    return photo["alt"].strip()


def expect_banners_sent(service: Service, text_site: str) -> None:
    """Both thin banners reached the server, once each: the one of text is read as text, the
    strip answered with a caption alone (which AltCap does not write for a banner)."""
    banner = service.wait_for_result(image_url(text_site, "banner"))
    assert banner.get("alt_from") == "text", banner
    assert banner.get("alt") == BANNER_SAYS, banner
    strip = service.wait_for_result(image_url(text_site, "strip"))
    assert strip.get("alt_from") == "caption", strip
    assert strip.get("caption", "").strip(), strip  # a caption there was, not written
    with service.lock:
        sent = sorted(service.sent_urls)
    names = ["banner", "photo", "sale", "strip"]
    assert sent == [image_url(text_site, n) for n in names], "each image once"


def agree(browser: Browser, server: str) -> None:
    """Save ``server`` on the options page and agree to the privacy notice."""
    options = browser.open_page(browser.url("options.html"))
    expect(options.get_by_label("AltCap server address")).to_have_value(re.compile("^http"))
    expect(options.get_by_label("Text before words read from an image")).to_have_value(TEXT_PREFIX)
    options.get_by_label("AltCap server address").fill(server)
    options.get_by_role("button", name="I agree: save and start describing").click()
    expect(options.locator("#status")).to_contain_text("Thank you")


def test_an_image_of_text_is_announced_with_its_text_in_chromium(
    browser: Browser, service: Service, text_site: str
) -> None:
    service.reset()
    agree(browser, service.url)
    page: Page = browser.open_page(text_site)
    caption = expect_server_read(service, text_site)

    expect(page.locator("#sale")).to_have_attribute("alt", TEXT_PREFIX + SAYS, timeout=TIMEOUT_MS)
    expect(page.locator("#sale")).to_have_attribute("data-altcap", "__none__")
    expect(page.locator("#photo")).to_have_attribute("alt", PREFIX + caption)
    # What a screen reader gets, from Chromium's accessibility tree.
    expect(page.locator("#sale")).to_have_accessible_name(TEXT_PREFIX + SAYS)
    expect(page.get_by_role("img", name=TEXT_PREFIX + SAYS)).to_have_count(1)

    # Thin banners: the one of text is read out as its text; the strip is left as it was.
    banner = page.locator("#banner")
    expect(banner).to_have_attribute("alt", TEXT_PREFIX + BANNER_SAYS, timeout=TIMEOUT_MS)
    expect(banner).to_have_attribute("data-altcap", "__none__")
    expect(banner).to_have_accessible_name(TEXT_PREFIX + BANNER_SAYS)
    expect_banners_sent(service, text_site)
    # The popup: the strip neither needs a description nor failed (no longer in flight), so
    # its answer has come back, and nothing was written for it.
    tab_id = browser.tab_id(text_site)
    popup = browser.open_page(browser.url(f"popup.html?tabId={tab_id}"))
    for counter, wanted in [("#found", "3"), ("#described", "3"), ("#failed", "0")]:
        expect(popup.locator(counter)).to_have_text(wanted, timeout=TIMEOUT_MS)
    assert page.locator("#strip").get_attribute("alt") is None
    assert page.locator("#strip").get_attribute("data-altcap") is None
    assert browser.errors == []


def test_an_image_of_text_is_announced_with_its_text_in_firefox(
    firefox: Firefox,  # noqa: F811  (the fixture imported above)
    service: Service,
    text_site: str,
) -> None:
    service.reset()
    tab = firefox.new_tab()
    firefox.navigate(tab, text_site)
    caption = expect_server_read(service, text_site)

    def alt(name: str) -> Any:
        return firefox.evaluate(tab, by_id(name) + ".getAttribute('alt')")

    wanted = TEXT_PREFIX + SAYS
    wait_until(lambda: alt("sale") == wanted, f"#sale: alt is {alt('sale')!r}, not {wanted!r}")
    wanted_photo = PREFIX + caption
    wait_until(lambda: alt("photo") == wanted_photo, f"#photo: alt is {alt('photo')!r}")
    assert firefox.evaluate(tab, by_id("sale") + ".getAttribute('data-altcap')") == "__none__"

    banner = TEXT_PREFIX + BANNER_SAYS
    wait_until(lambda: alt("banner") == banner, f"#banner: alt is {alt('banner')!r}")
    expect_banners_sent(service, text_site)
    time.sleep(1.0)  # the strip's answer, logged by the server, reaches the page
    assert alt("strip") is None
    assert firefox.evaluate(tab, by_id("strip") + ".getAttribute('data-altcap')") is None
