"""Images of text in a real browser (issue 22): the extension writes what the image says.

The real service (the tiny model, and Tesseract reading the text) answers each image with
``caption``, ``text``, ``alt`` and ``alt_from``. An image that is mostly text (a banner
saying "SALE 50% OFF") gets its text as alt, marked "Appears to say: "; a picture without
text keeps its caption, marked "Appears to be: ". Chromium checks what a screen reader gets
(the accessible name); Firefox runs the same page through the event-page background.
"""

from __future__ import annotations

import io
import re
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
TEXT_PREFIX = "Appears to say: "
PREFIX = "Appears to be: "

# 400 x 160: an aspect ratio of 2.5 at most, so not one of the thin banners AltCap leaves
# alone (detection.js: above 2.5 with the short side under 150 px).
TEXT_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>A sale</title></head>
<body>
<h1>A sale</h1>
<img id="sale" src="sale.png" width="400" height="160">
<img id="photo" src="photo.png" width="200" height="150">
</body>
</html>
"""


def text_png(text: str = SAYS, size: tuple[int, int] = (400, 160)) -> bytes:
    """``text`` in DejaVu Sans at 40 px, black on white, centred: an image that is its text."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    font = ImageFont.truetype(FONT, 40)
    ImageDraw.Draw(image).text((size[0] / 2, size[1] / 2), text, "black", font, anchor="mm")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def text_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page with an image of text and a plain picture, on 127.0.0.1; yields its URL."""
    root = tmp_path_factory.mktemp("text-site")
    (root / "text.html").write_text(TEXT_PAGE, encoding="utf-8")
    (root / "sale.png").write_bytes(text_png())
    (root / "photo.png").write_bytes(png_bytes((40, 120, 200), (200, 150)))
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
