"""The page at ``/`` in a real browser: headless Chromium driven by Playwright.

The service runs for real (the tiny model, werkzeug's threaded server on a free port), and
so does a plain ``http.server`` for the image URLs. The tests check what the Flask test
client cannot: that the JavaScript path announces its result in the live region, that the
page works from the keyboard alone and without JavaScript, and that focus and text stay
visible, in light and dark colour schemes.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_accessible, png_bytes, serve_app, serve_directory, tiny_service_app

from captioner.jobs.reports import write_rows
from captioner.jobs.rows import make_row

try:
    from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
except ImportError as exc:  # fail, never skip: these tests are part of `make test`
    raise ImportError("Playwright is missing: `make test` installs it") from exc

RED = png_bytes((200, 30, 30))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 15_000  # one caption takes well under a second with the tiny model
expect.set_options(timeout=TIMEOUT_MS)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service on 127.0.0.1 and a free port; yields its base URL once it is ready."""
    app = tiny_service_app(tiny_dir, tmp_path_factory.mktemp("e2e-data"))
    with serve_app(app) as base:
        yield base


@pytest.fixture(scope="module")
def image_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a PNG served by ``http.server`` from a temporary directory."""
    root = tmp_path_factory.mktemp("e2e-images")
    (root / "red.png").write_bytes(RED)
    with serve_directory(root) as base:
        yield f"{base}/red.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is missing (Debian package `chromium`): `make test` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, service: str) -> Iterator[Page]:
    """A fresh page with JavaScript on; fails the test on any uncaught script error."""
    context = browser.new_context(base_url=service)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    yield page
    context.close()
    assert not errors, errors


def api_caption(base: str, image: bytes) -> str:
    """What ``/v1/captions`` says about an image: the text every path of the page must show."""
    body = json.dumps({"images": [{"data": base64.b64encode(image).decode("ascii")}]})
    request = urllib.request.Request(
        f"{base}/v1/captions", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["results"][0]["caption"]


@pytest.fixture(scope="module")
def caption(service: str) -> str:
    text = api_caption(service, RED)
    assert text.endswith(".") and len(text) > 1, text
    return text


def upload(name: str, data: bytes, mime: str) -> dict[str, object]:
    return {"name": name, "mimeType": mime, "buffer": data}


def expect_caption(page: Page, caption: str, *, path: str = "/") -> None:
    """The caption in the live region, on ``/`` (fetch() did the work) or ``/caption-form``."""
    live = page.locator("#result")
    expect(live).to_have_attribute("aria-live", "polite")
    expect(live).to_have_attribute("role", "status")
    expect(live.locator("#caption")).to_have_text(caption)
    assert live.inner_text().strip().endswith(".")
    assert "Traceback" not in page.content()
    assert urllib.parse.urlsplit(page.url).path == path


# --- with JavaScript -----------------------------------------------------------------------


def test_an_uploaded_image_is_captioned_in_the_live_region(
    page: Page, caption: str, tmp_path: Path
) -> None:
    page.set_input_files("#image", files=[upload("red.png", RED, "image/png")])
    page.get_by_role("button", name="Describe the image").click()
    expect_caption(page, caption)
    page.screenshot(path=tmp_path / "page.png", full_page=True)
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")


def test_a_caption_in_another_language_than_the_page_is_marked(page: Page, caption: str) -> None:
    """The page is English; a model trained with --language de answers "language": "de",
    and its caption is marked so (played here by rewriting the real answer)."""
    page.set_input_files("#image", files=[upload("red.png", RED, "image/png")])
    page.get_by_role("button", name="Describe the image").click()
    expect_caption(page, caption)
    expect(page.locator("#caption")).not_to_have_attribute("lang", re.compile(".*"))  # English

    def in_german(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "language": "de"})

    page.route("**/v1/captions", in_german)
    page.get_by_role("button", name="Describe the image").click()
    expect(page.locator("#caption")).to_have_attribute("lang", "de")
    expect_caption(page, caption)


def test_a_pasted_url_is_captioned(page: Page, caption: str, image_url: str) -> None:
    page.get_by_label("Or the address (URL) of an image").fill(image_url)
    page.get_by_role("button", name="Describe the image").click()
    expect_caption(page, caption)


def test_a_file_that_is_not_an_image_gets_a_readable_error(page: Page) -> None:
    page.set_input_files("#image", files=[upload("notes.txt", b"hello, world\n", "text/plain")])
    page.get_by_role("button", name="Describe the image").click()
    error = page.locator("#result #error")
    expect(error).to_have_text(re.compile(r"^Error: \w.{10,}"))
    assert "Traceback" not in page.content()
    assert urllib.parse.urlsplit(page.url).path == "/"
    assert contrast_of(page, "#error") >= 4.5


# --- keyboard only -------------------------------------------------------------------------


def test_tab_reaches_the_form_in_order_with_names_and_visible_focus(page: Page) -> None:
    controls = [
        page.get_by_label("Image file"),
        page.get_by_role("textbox", name="Or the address (URL) of an image"),
        page.get_by_role("textbox", name="Alt text you already have (optional)"),
        page.get_by_role("button", name="Describe the image"),
    ]
    for control in controls:
        page.keyboard.press("Tab")
        expect(control).to_be_focused()
        focus = page.evaluate(FOCUS_STYLE)
        assert focus["focusVisible"], focus
        assert focus["outline"] or focus["boxShadow"], f"no visible focus indicator: {focus}"
        if focus["outline"]:  # WCAG 1.4.11: non-text contrast against the backdrop
            assert focus["outlineContrast"] >= 3, focus


@pytest.mark.parametrize("key", ["Enter", "Space"])
def test_the_form_submits_from_the_keyboard(
    page: Page, caption: str, image_url: str, key: str
) -> None:
    page.keyboard.press("Tab")  # the file input
    page.keyboard.press("Tab")  # the URL field
    page.keyboard.type(image_url)
    page.keyboard.press("Tab")  # the author's alt (optional)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Describe the image")).to_be_focused()
    page.keyboard.press(key)
    expect_caption(page, caption)


# --- without JavaScript --------------------------------------------------------------------


@pytest.fixture
def static_page(browser: Browser, service: str) -> Iterator[Page]:
    context = browser.new_context(base_url=service, java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/")
    yield page
    context.close()


def test_the_plain_form_works_without_javascript(static_page: Page, caption: str) -> None:
    page = static_page
    page.set_input_files("#image", files=[upload("red.png", RED, "image/png")])
    page.get_by_role("button", name="Describe the image").click()
    expect(page).to_have_title(re.compile(r"^Caption ready"))
    expect_caption(page, caption, path="/caption-form")


def test_the_plain_form_reports_errors_without_javascript(
    static_page: Page, image_url: str, caption: str
) -> None:
    page = static_page
    page.set_input_files("#image", files=[upload("notes.txt", b"hello, world\n", "text/plain")])
    page.get_by_role("button", name="Describe the image").click()
    expect(page).to_have_title(re.compile(r"^Error"))
    expect(page.locator("#result #error")).to_have_text(re.compile(r"^Error: \w.{10,}"))
    assert "Traceback" not in page.content()

    page.get_by_label("Or the address (URL) of an image").fill(image_url)  # the page still works
    page.get_by_role("button", name="Describe the image").click()
    expect_caption(page, caption, path="/caption-form")


# --- basic accessibility -------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_page_structure_and_contrast(browser: Browser, service: str, scheme: str) -> None:
    context = browser.new_context(base_url=service, color_scheme=scheme)
    try:
        page = context.new_page()
        page.goto("/")
        assert page.get_attribute("html", "lang")
        assert page.locator("h1").count() == 1
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll("input, select, textarea")]
                .filter((el) => el.type !== "hidden")
                .filter((el) => !el.labels.length && !el.getAttribute("aria-label")
                                && !el.getAttribute("aria-labelledby"))
                .map((el) => el.outerHTML)"""
        )
        assert unlabelled == []
        page.get_by_role("button", name="Describe the image").click()  # empty: an error
        expect(page.locator("#result #error")).to_be_visible()
        for selector in ["main > p", "label", ".hint", "button", "#error", "footer p", "footer a"]:
            ratio = contrast_of(page, selector)
            assert ratio >= 4.5, f"{selector}: contrast {ratio:.2f} in {scheme} mode"
    finally:
        context.close()


def test_long_results_reflow_on_a_narrow_screen(browser: Browser, service: str) -> None:
    """WCAG 1.4.10: at 320 CSS pixels wide nothing may need horizontal scrolling, even a
    caption or an error message with a long unbroken word (a URL, or a model's odd output)."""
    context = browser.new_context(base_url=service, viewport={"width": 320, "height": 640})
    try:
        page = context.new_page()
        long_word = "https://example.com/" + "x" * 200 + ".png"
        page.route(
            "**/v1/captions",
            lambda route: route.fulfill(json={"results": [{"caption": long_word + "."}]}),
        )
        page.goto("/")
        page.get_by_label("Or the address (URL) of an image").fill(long_word)
        page.get_by_role("button", name="Describe the image").click()
        expect(page.locator("#caption")).to_have_text(long_word + ".")
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways: {width}"
    finally:
        context.close()


# --- colour arithmetic, in the page ----------------------------------------------------------

# Shared JavaScript: colours as [r, g, b, a], the background an element is really drawn on
# (the first opaque ancestor background over the canvas colour), and WCAG contrast.
COLOUR_JS = """
const rgba = (text) => {
  const m = text.match(/^rgba?\\(([\\d.]+),? ([\\d.]+),? ([\\d.]+)(?:[,/] ?([\\d.]+))?\\)$/);
  if (!m) throw new Error("unexpected colour " + text);
  return [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]];
};
const over = (top, bottom) => top.slice(0, 3).map((c, i) => c * top[3] + bottom[i] * (1 - top[3]));
const canvas = () => {
  const probe = document.createElement("div");
  probe.style.background = "Canvas";
  document.body.append(probe);
  const colour = rgba(getComputedStyle(probe).backgroundColor);
  probe.remove();
  return colour;
};
const backdrop = (el) => {
  const layers = [];
  for (let node = el; node; node = node.parentElement) {
    const bg = rgba(getComputedStyle(node).backgroundColor);
    if (bg[3] > 0) layers.push(bg);
    if (bg[3] === 1) break;
  }
  let colour = canvas().slice(0, 3);
  for (const layer of layers.reverse()) colour = over(layer, colour);
  return colour;
};
const opacity = (el) => {
  let o = 1;
  for (let node = el; node; node = node.parentElement) o *= +getComputedStyle(node).opacity;
  return o;
};
const luminance = (rgb) => {
  const [r, g, b] = rgb.map((c) => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const contrast = (a, b) => {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
};
"""

TEXT_CONTRAST = (
    "(el) => {"
    + COLOUR_JS
    + """
  const fg = rgba(getComputedStyle(el).color);
  fg[3] *= opacity(el);  // a translucent element shows its text over its backdrop
  const bg = backdrop(el);
  return contrast(over(fg, bg), bg);
}"""
)

FOCUS_STYLE = (
    "() => {"
    + COLOUR_JS
    + """
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
  return {
    element: el.id || el.tagName,
    focusVisible: el.matches(":focus-visible"),
    outline,
    boxShadow: style.boxShadow !== "none",
    outlineContrast: outline ? contrast(rgba(style.outlineColor).slice(0, 3),
                                        backdrop(el.parentElement)) : 0,
  };
}"""
)


def contrast_of(page: Page, selector: str) -> float:
    """The WCAG contrast ratio of the first element matching ``selector``."""
    return page.locator(selector).first.evaluate(TEXT_CONTRAST)


# --- accessibility, checked by axe-core ------------------------------------------------------


def test_the_page_passes_axe_before_and_after_a_caption(page: Page, caption: str) -> None:
    """axe-core (WCAG 2 A and AA, and best practices) finds nothing: the form, a caption
    shown by the script, an error, and the page the server renders for the plain form (sent
    with form.submit(), which the script does not intercept: axe itself needs JavaScript)."""
    assert_accessible(page, "the form")
    page.set_input_files("#image", files=[upload("red.png", RED, "image/png")])
    page.get_by_role("button", name="Describe the image").click()
    expect_caption(page, caption)
    assert_accessible(page, "a caption")
    page.set_input_files("#image", files=[upload("notes.txt", b"not an image", "text/plain")])
    page.get_by_role("button", name="Describe the image").click()
    expect(page.locator("#error")).to_be_visible()
    assert_accessible(page, "an error")
    page.set_input_files("#image", files=[upload("red.png", RED, "image/png")])
    with page.expect_navigation():
        page.evaluate("document.getElementById('caption-form').submit()")
    expect_caption(page, caption, path="/caption-form")
    assert_accessible(page, "the server-rendered caption")


def test_the_html_report_passes_axe(browser: Browser, tmp_path: Path) -> None:
    """The batch report people read: sections, tables, links to patched copies, pictures."""
    rows = [
        make_row(page_url="https://example.com/", image_url="https://example.com/a.png",
                 verdict="missing", status="done", caption="A red square."),
        make_row(page_url="https://example.com/", image_url="https://example.com/b.png",
                 alt="", verdict="empty_link", status="failed", error_code="fetch_failed",
                 error_message="the image server answered HTTP 404"),
        make_row(page_url=None, image_url="https://example.com/c.png", status="done",
                 caption="Ein rotes Quadrat."),
        make_row(page_url="https://example.com/gone", image_url=None, status="failed",
                 error_code="fetch_failed", error_message="the server answered HTTP 404"),
    ]  # fmt: skip
    report = tmp_path / "report.html"
    with report.open("w", encoding="utf-8") as out:
        write_rows(rows, "html", out, language="de", patched={"https://example.com/": "p/1.html"})
    page = browser.new_page()
    page.goto(report.as_uri())
    expect(page.get_by_role("heading", name="AltCap report")).to_be_visible()
    assert_accessible(page, "the HTML report")
    page.close()
