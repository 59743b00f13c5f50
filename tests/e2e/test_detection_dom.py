"""The extension's detection rules on real DOMs: ``extension/detection.js`` in Chromium and
in Firefox.

The node tests give ``detection.js`` fake elements; whether an image is all a link or
button holds depends on the tree around it (text nodes, comments, nested elements, SVG,
``aria-labelledby`` targets), so those rules run here on markup each browser parses, against
the vectors ``captioner/crawl/pages.py`` is held to (``tests/vectors/links.json``): the extension
and the batch reports must agree on which images need a description, in both browsers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import serve_directory

try:
    from playwright.sync_api import sync_playwright
except ImportError as exc:  # fail, never skip: these tests are part of `make test`
    raise ImportError("Playwright is missing: `make test` installs it") from exc
try:
    from firefox import Firefox, firefox_executable
except ImportError as exc:
    raise ImportError("websockets is missing: `make test` installs it") from exc

ROOT = Path(__file__).resolve().parents[2]
EXTENSION = ROOT / "extension"
LINK_VECTORS = ROOT / "tests" / "vectors" / "links.json"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>DOM</title>
<script src="detection.js"></script></head><body><div id="cases"></div></body></html>"""

# run(function source, argument=None) -> the function's JSON result, in the browser's page.
Run = Callable[..., Any]

# Every <img> and <input type=image> under #cases, in document order, with its verdict.
VERDICTS = """(html) => {
  const box = document.getElementById("cases");
  box.innerHTML = html;
  const images = [...box.querySelectorAll("img, input")].filter(
    (el) => el.tagName === "IMG" || el.type === "image",
  );
  return images.map((el) => AltCapDetection.nameVerdict(el).verdict);
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A blank page that loads detection.js; yields its URL."""
    root = tmp_path_factory.mktemp("dom")
    (root / "index.html").write_text(PAGE, encoding="utf-8")
    shutil.copy(EXTENSION / "detection.js", root / "detection.js")
    with serve_directory(root) as base:
        yield f"{base}/index.html"


def _chromium(site: str, tmp_path: Path) -> Iterator[Run]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is missing (Debian package `chromium`): `make test` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(site)
            yield lambda fn, arg=None: page.evaluate(f"({fn})({json.dumps(arg)})")
        finally:
            browser.close()


def _firefox(site: str, tmp_path: Path) -> Iterator[Run]:
    executable = firefox_executable()
    if executable is None:
        pytest.fail("Firefox is missing (Debian package `firefox-esr`): `make test` installs it")
    browser = Firefox(executable, tmp_path / "profile")
    try:
        tab = browser.new_tab()
        browser.navigate(tab, site)
        yield lambda fn, arg=None: browser.evaluate(tab, f"({fn})({json.dumps(arg)})")
    finally:
        browser.close()


@pytest.fixture(scope="module", params=["chromium", "firefox"])
def run(
    request: pytest.FixtureRequest, site: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """Runs a function in the page, in each browser, with the meaningless-alt words loaded."""
    words = json.loads((EXTENSION / "meaningless-alt.json").read_text())["words"]
    opened = {"chromium": _chromium, "firefox": _firefox}[request.param]
    for run in opened(site, tmp_path_factory.mktemp(request.param)):
        run("(words) => AltCapDetection.setMeaninglessWords(words)", words)
        yield run


def wait_until(probe: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    stop = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < stop, what
        time.sleep(0.05)
    return value


SET_CASES = "(html) => { document.getElementById('cases').innerHTML = html; }"


def test_link_verdicts_follow_the_shared_vectors(run: Run) -> None:
    cases = json.loads(LINK_VECTORS.read_text())["cases"]
    assert len(cases) > 30
    got = [run(VERDICTS, case["html"]) for case in cases]
    assert [(c["html"], v) for c, v in zip(cases, got, strict=True)] == [
        (c["html"], c["verdicts"]) for c in cases
    ]


def test_assess_describes_the_image_of_an_empty_link(run: Run) -> None:
    # The whole decision, as the content script asks it: an image that is all a link holds
    # is described (and says why); the same image next to the link's text is not.
    # The images are data: SVGs, so they load without a server and have a size.
    svg = (
        "data:image/svg+xml,"
        "%3Csvg xmlns='http://www.w3.org/2000/svg' width='120' height='90'%3E%3C/svg%3E"
    )
    html = (
        f'<a href="/shop"><img id="alone" src="{svg}" alt=""></a>'
        f'<a href="/shop"><img id="with-text" src="{svg}" alt=""> Shop</a>'
    )
    run(SET_CASES, html)
    wait_until(lambda: run("() => [...document.images].every((im) => im.complete)"), "images load")
    results = run(
        """() => ["alone", "with-text"].map((id) => {
          const r = AltCapDetection.assess(document.getElementById(id), window);
          return [r.action, r.reason];
        })"""
    )
    assert results == [["describe", "empty_link"], ["skip", "decorative"]]


# getAttribute calls while every image under #cases gets its verdict: a measure of work.
# One pass (a scan), or one task per image (images coming one by one, on their load events).
ATTRIBUTE_READS = """async ([html, perTask]) => {
  const box = document.getElementById("cases");
  box.innerHTML = html;
  const images = [...box.querySelectorAll("img")];
  const nextTask = () => new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = resolve;
    channel.port2.postMessage(0);
  });
  const read = Element.prototype.getAttribute;
  let reads = 0;
  Element.prototype.getAttribute = function (name) {
    reads++;
    return read.call(this, name);
  };
  try {
    const verdicts = [];
    for (const el of images) {
      if (perTask) await nextTask();
      verdicts.push(AltCapDetection.nameVerdict(el).verdict);
    }
    return { reads, verdicts: [...new Set(verdicts)] };
  } finally {
    Element.prototype.getAttribute = read;
  }
}"""


@pytest.mark.parametrize("per_task", [False, True], ids=["one-pass", "task-per-image"])
@pytest.mark.parametrize("text", ["", "Our products"])
def test_a_link_holding_many_images_costs_linear_work(run: Run, text: str, per_task: bool) -> None:
    # A page wrapped in one link: every image's verdict asks what the link holds. Twice the
    # images must cost about twice the work, whether a scan asks for all of them at once or
    # they come one at a time (walking the link once per image: ~4x; 2,000 images took
    # 13.6 s that way in Chromium).
    def one_link(n: int) -> str:
        cards = "".join(
            f'<div><span>{text}</span><img src="data:," alt=""></div>' for _ in range(n)
        )
        return f'<a href="/all">{cards}</a>'

    small = run(ATTRIBUTE_READS, [one_link(300), per_task])
    large = run(ATTRIBUTE_READS, [one_link(600), per_task])
    want = ["decorative"] if text else ["empty_link", "decorative"]
    assert small["verdicts"] == large["verdicts"] == want
    assert large["reads"] / small["reads"] < 2.5


def test_what_a_link_holds_is_read_again_once_the_page_changes(run: Run) -> None:
    # The walk is remembered within one pass only: a later change to the link counts.
    run(SET_CASES, '<a id="link" href="/shop"><img id="only" src="data:," alt=""></a>')
    verdict = "() => AltCapDetection.nameVerdict(document.getElementById('only')).verdict"
    assert run(verdict) == "empty_link"
    run("() => document.getElementById('link').append(' Shop')")
    assert run(verdict) == "decorative"
    run("() => document.getElementById('link').lastChild.remove()")
    assert run(verdict) == "empty_link"
