"""Crawling: images found on pages, alt verdicts, patched HTML, sitemaps, robots.txt, limits.

Pages, sitemaps and images come from the local test site (tests/testsite.py) on 127.0.0.1,
so the crawler runs with ``allow_private``; the SSRF tests show what happens without it.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from testsite import INDEX_HTML, POST_HTML, serve_site, sitemapindex, urlset

from captioner.crawl import pages
from captioner.crawl.crawler import Crawler
from captioner.crawl.fetch import fetch_document
from captioner.crawl.pages import (
    CrawlError,
    PageImage,
    find_images,
    needs_caption,
    parse_srcset,
    patch_html,
)
from captioner.crawl.politeness import Pacer
from captioner.crawl.sitemaps import parse_sitemap
from captioner.crawl.urls import FetchLimits
from captioner.jobs.plan import Source, caption_rows, plan
from captioner.jobs.rows import PENDING
from captioner.lang import same_language

LOCAL = FetchLimits(allow_private=True, connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0)
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "alttext.json"
LINK_VECTORS = VECTORS.with_name("links.json")
BASE = "http://site.test/"

# What find_images must report for the index page: (URL, alt, verdict, element), in order.
INDEX_IMAGES = [
    ("img/missing.png", None, "missing", "img"),  # its alt="" duplicate is merged into it
    ("img/empty.png", "", "decorative", "img"),
    ("img/word.png", "image", "meaningless", "img"),
    ("img/filename.png", "IMG_1234.jpg", "meaningless", "img"),
    ("img/photo.png", "photo", "meaningless", "img"),
    ("img/good.png", "A red square on a white wall", "ok", "img"),
    ("img/presentation.png", None, "decorative", "img"),
    ("img/hidden.png", None, "decorative", "img"),
    ("img/labelled.png", None, "ok", "img"),
    ("img/w-large.png", None, "missing", "img"),
    ("img/x2.png", "picture", "meaningless", "img"),
    ("img/lazy.png", None, "missing", "img"),
    ("img/pic-large.png", None, "missing", "source"),
    ("img/go.png", None, "missing", "input"),
    ("img/broken.png", None, "missing", "img"),
    ("http://169.254.169.254/latest/logo.png", None, "missing", "img"),
    ("img/notanimage.png", None, "missing", "img"),
]


def absolute(base: str, path: str) -> str:
    return path if path.startswith("http") else base.rstrip("/") + "/" + path


def expected_images(base: str) -> list[PageImage]:
    return [PageImage(absolute(base, u), a, v, e) for u, a, v, e in INDEX_IMAGES]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def site_server(tmp_path_factory):
    with serve_site(tmp_path_factory.mktemp("site")) as site:
        yield site


@pytest.fixture
def site(site_server):
    site_server.routes.clear()
    site_server.requests.clear()
    return site_server


def crawler(**kwargs) -> Crawler:
    return Crawler(kwargs.pop("limits", LOCAL), delay_s=kwargs.pop("delay_s", 0.0), **kwargs)


# --- finding images -----------------------------------------------------------------


def test_find_images_reports_every_case_of_the_test_site() -> None:
    assert find_images(INDEX_HTML, BASE) == expected_images(BASE)


def test_find_images_accepts_bytes_and_resolves_against_the_final_url() -> None:
    images = find_images(INDEX_HTML.encode(), "https://other.test/deep/page.html")
    assert images[0].image_url == "https://other.test/deep/img/missing.png"


def test_base_href_and_relative_forms_resolve_like_a_browser() -> None:
    page = POST_HTML.format(host="cdn.test:8080")
    assert find_images(page, "http://site.test/blog/post.html") == [
        PageImage("http://site.test/assets/cat.png", None, "missing", "img"),
        PageImage("http://site.test/img/good.png", "A red square on a white wall", "ok", "img"),
        PageImage("http://site.test/img/missing.png", None, "missing", "img"),
        PageImage("http://cdn.test:8080/assets/dog.png", "spacer", "meaningless", "img"),
    ]


def test_srcset_parsing_follows_the_html_rules() -> None:
    assert parse_srcset("a.png 1x, b.png 2x") == [("a.png", 1.0, "x"), ("b.png", 2.0, "x")]
    # a URL runs to the next space, commas included; only trailing commas end it
    assert parse_srcset(" a.png,b.png  1.5x ,, c,d.png 300w, e.png,f.png") == [
        ("a.png,b.png", 1.5, "x"),
        ("c,d.png", 300.0, "w"),
        ("e.png,f.png", 1.0, "x"),
    ]
    assert parse_srcset("a.png, b.png 2x") == [("a.png", 1.0, "x"), ("b.png", 2.0, "x")]
    assert parse_srcset("img.jpg?w=1,2 640w, x.jpg 100h") == [
        ("img.jpg?w=1,2", 640.0, "w"),
        ("x.jpg", 1.0, "x"),
    ]
    assert parse_srcset("  ") == []


@pytest.mark.parametrize(
    ("markup", "url"),
    [
        ('<img srcset="s.png 100w, l.png 900w, m.png 400w">', "l.png"),
        ('<img src="s.png" srcset="a.png 1x, c.png 3x, b.png 2x">', "c.png"),
        ('<img srcset="w.png 10w, x.png 5x">', "w.png"),  # width descriptors win
        ('<img src="ph.gif" data-srcset="l1.png 1x, l2.png 2x" srcset="n.png 9x">', "l2.png"),
        ('<img src="ph.gif" data-lazy-src="real.png">', "real.png"),
        ('<img src="ph.gif" data-original="orig.png">', "orig.png"),
        ('<img src="javascript:void(0)" data-src="data:," srcset="ok.png">', "ok.png"),
        ("<img src=' \n im\tg.png '>", "img.png"),
        (
            '<picture><source srcset="a.webp" type="image/webp"><img src="f.png"></picture>',
            "a.webp",
        ),
        ('<picture><source srcset="a.jxl" type="image/jxl"><img src="f.png"></picture>', "f.png"),
        (
            '<picture><source srcset="a.avif" type="image/avif"><img src="f.png"></picture>',
            "a.avif",
        ),
    ],
)
def test_the_chosen_candidate(markup: str, url: str) -> None:
    (image,) = find_images(markup, BASE)
    assert image.image_url == BASE + url


def test_non_http_urls_are_ignored() -> None:
    markup = (
        '<img src="data:image/png;base64,AAAA"><img src="blob:http://x/1">'
        '<img src="file:///etc/passwd"><img src="ftp://x/a.png"><img><img src="">'
        '<input type="submit" src="a.png"><svg><image href="s.png"/></svg>'
    )
    assert find_images(markup, BASE) == []


def test_alt_verdicts_follow_the_shared_vectors() -> None:
    cases = json.loads(VECTORS.read_text())["cases"]
    markup = "".join(
        f'<img src="{i}.png">'
        if c["alt"] is None
        else f'<img src="{i}.png" alt="{html.escape(c["alt"])}">'
        for i, c in enumerate(cases)
    )
    images = find_images(markup, BASE)
    assert [(im.alt, im.verdict) for im in images] == [(c["alt"], c["verdict"]) for c in cases]


def test_link_verdicts_follow_the_shared_vectors() -> None:
    # The same cases run on Chromium's DOM against the extension's detection.js
    # (tests/e2e/test_detection_dom.py).
    for case in json.loads(LINK_VECTORS.read_text())["cases"]:
        verdicts = [im.verdict for im in find_images(case["html"], BASE)]
        assert verdicts == case["verdicts"], case["html"]


def test_the_image_naming_a_link_is_found_once_per_link() -> None:
    # A card that is one big link holding many alt="" images: the link's contents are walked
    # once for the whole card, not once per image.
    def card(n: int) -> str:
        return '<a href="/c">' + "".join(f'<img src="/{i}.png" alt="">' for i in range(n)) + "</a>"

    assert [im.verdict for im in find_images(card(3), BASE)] == ["empty_link"] + ["decorative"] * 2
    ratio = _calls(lambda: find_images(card(400), BASE)) / _calls(
        lambda: find_images(card(200), BASE)
    )
    assert ratio < 2.5


@pytest.mark.parametrize(
    ("markup", "verdict"),
    [
        ('<img src="a.png" role="presentation">', "decorative"),
        ('<img src="a.png" alt="image" role="none presentation">', "decorative"),
        ('<div aria-hidden="TRUE"><p><img src="a.png"></p></div>', "decorative"),
        ('<img src="a.png" aria-hidden="false">', "missing"),
        ('<img src="a.png" alt="A cat" role="presentation">', "ok"),  # author text stays
        ('<img src="a.png" alt="" aria-label="A cat">', "decorative"),
        ('<img src="a.png" aria-label="image">', "missing"),  # a label that says nothing
        ('<img src="a.png" alt="photo" title="Sunset over the bay">', "ok"),
        ('<span id="l1">The harbour</span><img src="a.png" aria-labelledby="nope l1">', "ok"),
        ("<img src=a.png alt>", "decorative"),
        ('<img src=a.png alt="image" alt="A cat">', "meaningless"),  # the first alt counts
    ],
)
def test_what_the_extension_skips_is_known_from_html(markup: str, verdict: str) -> None:
    (image,) = find_images(markup, BASE)
    assert image.verdict == verdict


def test_labels_and_hidden_ancestors_resolve_as_before() -> None:
    # The id map and the memoised ancestry must answer what soup.find and a walk up would:
    # the first element with an id wins, labels may come after the image, and hidden or
    # inert ancestors count however far up they are.
    markup = (
        '<img src="a.png" aria-labelledby="later">'
        '<p id="dup">image</p><p id="dup">A long description</p>'
        '<img src="b.png" aria-labelledby="dup">'
        '<div aria-hidden="true"><div><div><img src="c.png"></div></div>'
        '<img src="d.png"></div><div><div><img src="e.png"></div></div>'
        '<template><div><img src="f.png"></div></template><img src="g.png">'
        '<span id="later">The harbour at dusk</span><span id="">x</span>'
        '<img src="h.png" aria-labelledby="">'
    )
    assert [(im.image_url.rsplit("/", 1)[-1], im.verdict) for im in find_images(markup, BASE)] == [
        ("a.png", "ok"),
        ("b.png", "missing"),  # the first #dup says nothing; the second is not looked at
        ("c.png", "decorative"),
        ("d.png", "decorative"),
        ("e.png", "missing"),
        ("g.png", "missing"),
        ("h.png", "missing"),
    ]


def _labelled_page(n: int) -> str:
    """n images, each labelled by an element and by an id that does not exist."""
    return (
        "<main>"
        + "".join(
            f'<p id="l{i}">A label</p>'
            f'<div><img src="/i{i}.png" aria-labelledby="l{i} gone{i}"></div>'
            for i in range(n)
        )
        + "</main>"
    )


def _nested_page(n: int) -> str:
    """n images at the bottom of n nested divs."""
    return "<div>" * n + "".join(f'<img src="/n{i}.png">' for i in range(n)) + "</div>" * n


def _nested_link_page(n: int) -> str:
    """n alt="" images at the bottom of n nested divs in one link, and n more outside it."""
    images = "".join(f'<img src="/l{i}.png" alt="">' for i in range(n))
    inside = '<a href="/x">' + "<div>" * n + images + "</div>" * n + "</a>"
    return inside + "<div>" * n + images.replace("/l", "/o") + "</div>" * n


def _calls(work: Callable[[], object]) -> int:
    """Python and C function calls made by ``work``: a measure of work done, not of time."""
    count = 0

    def profile(_frame: object, event: str, _arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("page", [_labelled_page, _nested_page, _nested_link_page])
def test_find_images_does_linear_work(page: Callable[[int], str]) -> None:
    # Review finding: aria-labelledby ids were looked up by scanning the whole tree, and
    # every image walked all its ancestors, so work grew with n^2 (2,000 labelled images:
    # 45 s). Twice the images must now cost about twice the calls (quadratic gives ~3.6-3.9).
    # Looking for the link around an alt="" image walks up too: memoised the same way.
    n = 150
    small, large = page(n), page(2 * n)
    images = find_images(large, BASE)
    want = {_labelled_page: {"ok"}, _nested_page: {"missing"}}
    if page is _nested_link_page:
        assert len(images) == 4 * n
        assert [im.verdict for im in images[:2]] == ["empty_link", "decorative"]
        assert {im.verdict for im in images[1:]} == {"decorative"}
    else:
        assert len(images) == 2 * n
        assert {im.verdict for im in images} == want[page]
    ratio = _calls(lambda: find_images(large, BASE)) / _calls(lambda: find_images(small, BASE))
    assert ratio < 2.5
    ratio = _calls(lambda: patch_html(large, BASE, {})) / _calls(
        lambda: patch_html(small, BASE, {})
    )
    assert ratio < 2.5


@pytest.mark.parametrize(
    "markup", ["<![foo <img src=a.png>", "<![\x00", b"<p>caf\xe9 <![bar <img src=a.png>"]
)
def test_markup_the_parser_rejects_is_a_typed_crawl_error(markup: str | bytes) -> None:
    for call in (lambda: find_images(markup, BASE), lambda: patch_html(markup, BASE, {})):
        with pytest.raises(CrawlError) as info:
            call()
        assert info.value.code == "invalid_html"
        assert BASE in info.value.message


def test_recursion_while_reading_a_page_is_a_typed_crawl_error(monkeypatch) -> None:
    def too_deep(*_args: object, **_kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(pages, "_walk", too_deep)
    for call in (lambda: find_images("<img src=a.png>", BASE), lambda: patch_html("", BASE, {})):
        with pytest.raises(CrawlError) as info:
            call()
        assert info.value.code == "invalid_html"


def test_needs_caption_by_mode() -> None:
    table = {
        "missing": {
            "missing": True,
            "meaningless": True,
            "empty_link": True,
            "ok": False,
            "decorative": False,
        },
        "all": {
            "missing": True,
            "meaningless": True,
            "empty_link": True,
            "ok": True,
            "decorative": False,
        },
    }
    for mode, verdicts in table.items():
        assert {v: needs_caption(v, mode) for v in verdicts} == verdicts
        assert needs_caption(None, mode)
    with pytest.raises(Exception) as info:
        needs_caption("missing", "some")
    assert getattr(info.value, "code", None) == "invalid_settings"


# --- patching -----------------------------------------------------------------------

ALT_ATTR = re.compile(r"""\s+alt\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+)""", re.IGNORECASE)


def caption_for(url: str) -> str:
    return f'Caption of {url.rsplit("/", 1)[-1]}: "quoted" & <b>bold</b> — café 🐈'


def test_patched_html_changes_only_the_alt_it_should() -> None:
    captions = {im.image_url: caption_for(im.image_url) for im in expected_images(BASE)}
    patched = patch_html(INDEX_HTML, BASE, captions)

    # Outside the alt attributes the two documents are the same, character for character.
    assert ALT_ATTR.sub("", patched) == ALT_ATTR.sub("", INDEX_HTML)
    assert patched != INDEX_HTML

    # Each alt, tag by tag: filled where missing or meaningless, the author's kept elsewhere.
    def cap(path: str) -> str:
        return caption_for(BASE + path)

    want = [
        cap("img/missing.png"),
        "",
        cap("img/word.png"),
        cap("img/filename.png"),
        cap("img/photo.png"),
        "A red square on a white wall",
        None,
        None,
        None,
        cap("img/w-large.png"),
        cap("img/x2.png"),
        cap("img/lazy.png"),
        cap("img/pic-large.png"),
        cap("img/go.png"),  # <input type=image>
        "",
        cap("img/word.png"),  # duplicates: alt="" is the author's word; "image" is not
        None,
        None,
        cap("img/broken.png"),
        caption_for("http://169.254.169.254/latest/logo.png"),
        cap("img/notanimage.png"),
        None,  # the last one is inside <template>
    ]
    soup = BeautifulSoup(patched, "html.parser")
    tags = [t for t in soup.find_all(["img", "input"]) if t.get("type") != "text"]
    assert [t.get("alt") for t in tags] == want
    original = BeautifulSoup(INDEX_HTML, "html.parser")
    assert len(original.find_all(True)) == len(soup.find_all(True))


def test_patch_names_empty_links_and_leaves_other_empty_alts() -> None:
    page = (
        '<a href="/shop"><img src="shop.png" alt=""></a>\n'
        "<button><img src='go.png' alt></button>\n"
        '<a href="/home"><img src="home.png" alt=""> Home</a>\n'
        '<p><img src="rule.png" alt=""></p>\n'
    )
    captions = {BASE + name: f"Caption of {name}" for name in ("shop.png", "go.png", "home.png")}
    captions[BASE + "rule.png"] = "Caption of rule.png"
    assert patch_html(page, BASE, captions) == (
        '<a href="/shop"><img src="shop.png" alt="Caption of shop.png"></a>\n'
        "<button><img src='go.png' alt=\"Caption of go.png\"></button>\n"
        '<a href="/home"><img src="home.png" alt=""> Home</a>\n'
        '<p><img src="rule.png" alt=""></p>\n'
    )


@pytest.mark.parametrize(
    "case", json.loads((VECTORS.parent / "language.json").read_text(encoding="utf-8"))["cases"]
)
def test_the_language_rule_follows_the_shared_vectors(case: dict) -> None:
    """The extension's sameLanguage() passes the same cases."""
    assert same_language(case["where"], case["text"]) is case["same"]


def test_patch_marks_captions_in_another_language_than_the_page() -> None:
    """An English caption on a French page is read by a French voice unless marked: the
    image gets lang="en" where its own language (the nearest lang) is another or none."""
    page = (
        '<html lang="fr"><body><img src="a.png">\n'
        '<p lang="en-GB"><img src="b.png"><span xml:lang="de"><img src="c.png"></span></p>\n'
        '<img src=d.png alt=image><img lang="es" src="e.png">\n'
        '<a href="/x"><img src="f.png" alt=""></a><p lang=""><img src="g.png"></p>\n'
        '<img src="h.png" alt="Une photo du port"></body></html>'
    )
    captions = {BASE + f"{n}.png": f"Cap {n}." for n in "abcdefgh"}
    assert patch_html(page, BASE, captions, "en") == (
        '<html lang="fr"><body><img alt="Cap a." lang="en" src="a.png">\n'
        '<p lang="en-GB"><img alt="Cap b." src="b.png"><span xml:lang="de">'
        '<img alt="Cap c." lang="en" src="c.png"></span></p>\n'
        '<img lang="en" src=d.png alt="Cap d."><img alt="Cap e." lang="es" src="e.png">\n'
        '<a href="/x"><img lang="en" src="f.png" alt="Cap f."></a><p lang="">'
        '<img alt="Cap g." lang="en" src="g.png"></p>\n'
        '<img src="h.png" alt="Une photo du port"></body></html>'
    )  # an image's own lang is the author's: kept; an author's alt: untouched
    # a page with no language at all: marked; in the captions' language: left alone
    assert patch_html('<img src="a.png">', BASE, captions, "en") == (
        '<img alt="Cap a." lang="en" src="a.png">'
    )
    assert patch_html('<html lang="EN-us"><img src="a.png">', BASE, captions, "en") == (
        '<html lang="EN-us"><img alt="Cap a." src="a.png">'
    )
    assert patch_html(page, BASE, captions) == patch_html(page, BASE, captions, None)
    assert 'lang="en" src="a.png"' not in patch_html(page, BASE, captions)  # no language given


def test_patch_handles_odd_markup_and_keeps_everything_else() -> None:
    page = (
        "<!-- <img src=a.png> in a comment -->\r\n<p>😀 before</p>\r\n"
        "<IMG\r\n  SRC='a.png'\r\n  ALT = 'image' >\r\n"
        '<img src=b.png alt="A cat" alt=image><img src=c.png alt=photo/>'
        "<script>document.write('<img src=d.png>')</script><img src=d.png>"
        '<img/src="e.png"><img src="f.png" alt="&#x49;mage">'
    )
    captions = {
        BASE + n: f"Cap {n}" for n in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png")
    }
    patched = patch_html(page, BASE, captions)
    # (an unquoted alt=photo/ is "photo/", slash included, as browsers read it)
    assert patched == (
        "<!-- <img src=a.png> in a comment -->\r\n<p>😀 before</p>\r\n"
        "<IMG\r\n  SRC='a.png'\r\n  alt=\"Cap a.png\" >\r\n"
        '<img src=b.png alt="A cat" alt=image><img src=c.png alt="Cap c.png">'
        "<script>document.write('<img src=d.png>')</script><img alt=\"Cap d.png\" src=d.png>"
        '<img alt="Cap e.png"/src="e.png"><img src="f.png" alt="Cap f.png">'
    )


def test_patch_escapes_captions_and_reads_bytes() -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body>Café <img src="x.png"></body>'
    caption = 'A "sign" saying <b> & \' ünïcode'
    patched = patch_html(page.encode("iso-8859-1"), BASE, {BASE + "x.png": caption})
    assert BeautifulSoup(patched, "html.parser").img["alt"] == caption
    assert patched.startswith('<html><head><meta charset="iso-8859-1"></head><body>Café <img ')


def test_patch_without_captions_is_the_identity() -> None:
    assert patch_html(INDEX_HTML, BASE, {}) == INDEX_HTML


# --- crawling -----------------------------------------------------------------------


def test_fetch_page_follows_redirects_and_keeps_the_final_url(site) -> None:
    site.routes["/old"] = (301, {"Location": "/index.html"}, b"")
    page = crawler().fetch_page(site.url("old"))
    assert (page.url, page.final_url) == (site.url("old"), site.url("index.html"))
    assert find_images(page.html, page.final_url) == expected_images(site.base)


def test_latin1_page_is_decoded_with_its_encoding(site) -> None:
    page = crawler().fetch_page(site.url("latin1.html"))
    assert "Crème brûlée" in page.html
    assert page.html.encode(page.encoding) == site.image_bytes("latin1.html")


def test_not_html_and_missing_pages_fail_with_codes(site) -> None:
    c = crawler()
    for path, code in [("notes.txt", "not_html"), ("gone.html", "fetch_failed")]:
        with pytest.raises(Exception) as info:
            c.fetch_page(site.url(path))
        assert info.value.code == code


def test_robots_txt_disallow_is_respected(site) -> None:
    with pytest.raises(Exception) as info:
        crawler().fetch_page(site.url("private/secret.html"))
    assert info.value.code == "robots_disallowed"
    assert "/private/secret.html" not in site.requests
    assert site.requests == ["/robots.txt"]
    assert crawler(respect_robots=False).fetch_page(site.url("private/secret.html")).html


def test_robots_txt_groups_by_user_agent(site) -> None:
    rules = b"User-agent: AltCap\nDisallow: /blog/\n\nUser-agent: *\nDisallow: /\n"
    site.routes["/robots.txt"] = (200, {"Content-Type": "text/plain"}, rules)
    c = crawler()
    assert c.fetch_page(site.url("index.html")).html
    with pytest.raises(Exception, match=r"robots\.txt disallows"):
        c.fetch_page(site.url("blog/post.html"))
    assert site.requests.count("/robots.txt") == 1  # read once per host


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("private/secret.html", False),  # Allow: / comes first, but Disallow is longer
        ("private/open.html", True),  # the longest match: Allow /private/open
        ("index.html", True),
        ("files/report.pdf", False),  # wildcard and end anchor
        ("files/report.pdf.html", True),
    ],
)
def test_robots_txt_longest_match_and_wildcards_of_rfc_9309(site, path, allowed) -> None:
    rules = (
        b"User-agent: *\nAllow: /\nDisallow: /private/\nAllow: /private/open\nDisallow: /*.pdf$\n"
    )
    site.routes["/robots.txt"] = (200, {"Content-Type": "text/plain"}, rules)
    page = (200, {"Content-Type": "text/html"}, b"<html><body><img src='/a.png'></body></html>")
    site.routes["/files/report.pdf.html"] = site.routes["/private/open.html"] = page
    c = crawler()
    if allowed:
        assert c.fetch_page(site.url(path)).html
    else:
        with pytest.raises(Exception) as info:
            c.fetch_page(site.url(path))
        assert info.value.code == "robots_disallowed"
        assert f"/{path}" not in site.requests


@pytest.mark.parametrize(
    ("status", "allowed"), [(404, True), (410, True), (503, False), (500, False)]
)
def test_robots_txt_status_rules_of_rfc_9309(site, status: int, allowed: bool) -> None:
    site.routes["/robots.txt"] = (status, {"Content-Type": "text/plain"}, b"Disallow: /\n")
    c = crawler()
    if allowed:
        assert c.fetch_page(site.url("private/secret.html")).html
    else:
        with pytest.raises(Exception) as info:
            c.fetch_page(site.url("index.html"))
        assert info.value.code == "robots_disallowed"
        assert f"HTTP {status}" in info.value.message


def test_politeness_delay_per_host_and_crawl_delay(site) -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    c = crawler(delay_s=2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        c.fetch_page(site.url("index.html"))
    assert slept == [2.0, 2.0, 2.0]  # robots.txt, then three pages two seconds apart
    assert site.requests == ["/robots.txt", "/index.html", "/index.html", "/index.html"]

    site.routes["/robots.txt"] = (200, {}, b"User-agent: *\nCrawl-delay: 5\n")
    slept.clear()
    c = crawler(delay_s=1.0, clock=lambda: now[0], sleep=sleep)
    c.fetch_page(site.url("index.html"))
    c.fetch_page(site.url("index.html"))
    assert slept == [1.0, 5.0]  # robots.txt at the default delay, then Crawl-delay


def test_crawlers_sharing_a_pacer_take_turns_at_one_origin(site) -> None:
    # Two jobs crawling one site at once: their requests are spaced out together, not each
    # job's on its own (a consumer's jobs share its pacer; consumers share it in Redis).
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)

    pacer = Pacer(lambda: now[0])
    one, two = (crawler(delay_s=2.0, sleep=sleep, pacer=pacer) for _ in range(2))
    one.fetch_page(site.url("index.html"))  # robots.txt at once, the page 2 s later
    two.fetch_page(site.url("index.html"))  # its robots.txt 4 s later, its page 6 s later
    assert slept == [2.0, 4.0, 6.0]
    alone = crawler(delay_s=2.0, sleep=sleep, clock=lambda: now[0])  # a pacer of its own
    slept.clear()
    alone.fetch_page(site.url("index.html"))
    assert slept == [2.0]


def test_gzip_content_encoding_is_decoded(site) -> None:
    body = gzip.compress(b"<html><body><img src='/z.png'></body></html>")
    site.routes["/gz.html"] = (200, {"Content-Type": "text/html", "Content-Encoding": "gzip"}, body)
    page = crawler().fetch_page(site.url("gz.html"))
    assert find_images(page.html, page.final_url)[0].image_url == site.url("z.png")


def test_gzip_bomb_fails_cleanly(site) -> None:
    bomb = gzip.compress(b"\0" * (8 << 20), compresslevel=9)
    assert len(bomb) < 20_000
    site.routes["/bomb.xml.gz"] = (200, {"Content-Type": "application/gzip"}, bomb)
    with pytest.raises(Exception) as info:
        crawler(max_sitemap_bytes=1 << 20).crawl_sitemap(site.url("bomb.xml.gz"), 10)
    assert info.value.code == "too_large"
    assert "decompresses to more than" in info.value.message
    with pytest.raises(Exception) as info:
        fetch_document(site.url("bomb.xml.gz"), LOCAL, max_bytes=1 << 20, accept=None)
    assert info.value.code == "too_large"


# --- sitemaps -----------------------------------------------------------------------


def test_sitemap_index_with_gzip_and_a_broken_child(site) -> None:
    crawl = crawler().crawl_sitemap(site.url("sitemap_index.xml"), max_pages=50)
    assert crawl.pages == [
        site.url(p)
        for p in [
            "index.html",
            "blog/post.html",
            "private/secret.html",
            "latin1.html",
            "notes.txt",
            "gone.html",
        ]
    ]
    assert [(url, err.code) for url, err in crawl.errors] == [
        (site.url("sitemap-broken.xml"), "fetch_failed")
    ]


def test_sitemap_max_pages_stops_reading(site) -> None:
    pages = crawler().sitemap_pages(site.url("sitemap_index.xml"), max_pages=2)
    assert pages == [site.url("index.html"), site.url("blog/post.html")]
    assert "/sitemap-more.xml.gz" not in site.requests


def test_nested_sitemap_indexes_are_limited(site) -> None:
    def index(n: int) -> bytes:
        return sitemapindex([site.url(f"nest{n + 1}.xml")])

    for n in range(3):
        site.routes[f"/nest{n}.xml"] = (200, {"Content-Type": "application/xml"}, index(n))
    site.routes["/nest3.xml"] = (200, {"Content-Type": "text/xml"}, urlset([site.url("a")]))
    deep = crawler(max_sitemap_depth=3).crawl_sitemap(site.url("nest0.xml"), 10)
    assert (deep.pages, deep.errors) == ([site.url("a")], [])
    shallow = crawler(max_sitemap_depth=2).crawl_sitemap(site.url("nest0.xml"), 10)
    assert shallow.pages == []
    assert [(u, e.code) for u, e in shallow.errors] == [(site.url("nest2.xml"), "invalid_sitemap")]


def test_sitemap_parsing_is_strict_and_safe() -> None:
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    assert parse_sitemap(f"<urlset {ns}><url><loc> http://a/1 </loc></url></urlset>".encode()) == (
        "urlset",
        ["http://a/1"],
    )
    assert parse_sitemap(b"http://a/1\n\nhttps://a/2\n") == (
        "urlset",
        ["http://a/1", "https://a/2"],
    )
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><urlset><url><loc>&lol2;</loc></url></urlset>'
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE u [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<urlset><url><loc>&x;</loc></url></urlset>"
    )
    for bad in [laughs, external, b"<html><body>hi</body></html>", b"<urlset><url>", b"hello"]:
        with pytest.raises(Exception) as info:
            parse_sitemap(bad)
        assert info.value.code == "invalid_sitemap"


# --- planning and SSRF ------------------------------------------------------------------


def test_plan_rows_for_pages(site) -> None:
    urls = [site.url("index.html"), site.url("private/secret.html"), site.url("gone.html")]
    job = plan(Source(pages=tuple(urls)), crawler(), mode="missing")
    rows = [
        (r["page_url"], r["image_url"], r["author_alt"], r["verdict"], r["status"], r["error_code"])
        for r in job.rows
    ]
    want = [
        (
            urls[0],
            im.image_url,
            im.alt,
            im.verdict,
            PENDING if im.verdict in ("missing", "meaningless") else "skipped",
            None,
        )
        for im in expected_images(site.base)
    ]
    want += [
        (urls[1], None, None, None, "skipped", "robots_disallowed"),  # politeness
        (urls[2], None, None, None, "failed", "fetch_failed"),
    ]
    assert rows == want
    assert [(p.index, p.url, p.error is None) for p in job.pages] == [
        (1, urls[0], True),
        (2, urls[1], False),
        (3, urls[2], False),
    ]


def test_plan_mode_all_and_max_images(site) -> None:
    urls = (site.url("index.html"), site.url("blog/post.html"))
    job = plan(Source(pages=urls), crawler(), mode="all", max_images=14)
    statuses = {(r["page_url"], r["image_url"]): (r["status"], r["error_code"]) for r in job.rows}
    index_good = (urls[0], site.url("img/good.png"))
    assert statuses[index_good] == (PENDING, None)  # mode all: ok alt gets a caption too
    assert statuses[(urls[0], site.url("img/empty.png"))] == ("skipped", None)
    assert len(job.todo) == 14
    # past 14 distinct images, new ones are skipped; ones already counted are not
    assert statuses[(urls[1], site.url("assets/cat.png"))] == ("skipped", "max_images")
    assert statuses[(urls[1], site.url("img/missing.png"))] == (PENDING, None)
    assert statuses[(urls[1], site.url("img/good.png"))] == (PENDING, None)


def test_images_on_blocked_addresses_fail_with_the_fetch_code(site, tiny_captioner) -> None:
    # The page is fetched (allow_private), its images are not (the service's default limits):
    job = plan(Source(pages=(site.url("blog/post.html"),)), crawler())
    captions = caption_rows(job.rows, tiny_captioner, limits=FetchLimits(), batch_size=4)
    assert captions == {}
    failed = [
        (r["image_url"], r["status"], r["error_code"])
        for r in job.rows
        if r["verdict"] in ("missing", "meaningless")
    ]
    assert failed == [
        (site.url("assets/cat.png"), "failed", "blocked_address"),
        (site.url("img/missing.png"), "failed", "blocked_address"),
        (site.url("assets/dog.png"), "failed", "blocked_address"),
    ]
    assert "/assets/cat.png" not in site.requests
    # and without allow_private the page itself is refused before any request
    site.requests.clear()
    job = plan(Source(pages=(site.url("index.html"),)), crawler(limits=FetchLimits()))
    assert [(r["status"], r["error_code"]) for r in job.rows] == [("failed", "blocked_address")]
    assert site.requests == []


def test_documents_are_fetched_within_the_ssrf_rules_and_size_caps(site) -> None:
    site.routes["/to-metadata"] = (302, {"Location": "http://169.254.169.254/latest/"}, b"")
    for path, code in [("to-metadata", "blocked_address"), ("index.html", "too_large")]:
        with pytest.raises(Exception) as info:
            crawler(max_page_bytes=1000).fetch_page(site.url(path))
        assert info.value.code == code
    doc = fetch_document(site.url("sitemap-more.xml.gz"), LOCAL, max_bytes=10_000, accept=None)
    assert doc.content_type == "application/gzip"
    assert parse_sitemap(doc.data)[1][0] == site.url("latin1.html")
