"""Find the images on web pages, judge their alt text, and write suggested alt back into HTML.

Batch jobs and ``python -m captioner batch`` crawl a site owner's pages (given one by one or
through a sitemap) and need, per page, the images a screen-reader user meets and whether
their ``alt`` says anything. The rules are those of the browser extension
(``extension/detection.js``) as far as they can be known from HTML alone: the same
``alttext.classify_alt`` verdicts, and images marked ``role=presentation``/``none`` or inside
``aria-hidden=true`` count as decorative, while one labelled by ``aria-label``,
``aria-labelledby`` or ``title`` counts as described (``ok``).

HTML is parsed with beautifulsoup4 on the standard library's ``html.parser`` (no lxml), which
records where each tag starts. ``patch_html`` edits the original text in place, so only the
alt (and lang) attributes it sets change, never the author's formatting; but it asks an HTML5
parser (``captioner.crawl.patch``) where the tags are, since ``html.parser`` takes some text of
scripts for tags (issue 20).

Fetching goes through ``captioner.crawl.fetch`` (the service's SSRF-safe downloader), asks
robots.txt first, and waits a politeness delay between two requests to the same host.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple
from urllib.parse import urldefrag, urljoin, urlsplit

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.dammit import EncodingDetector, UnicodeDammit
from bs4.element import PreformattedString
from bs4.exceptions import ParserRejectedMarkup

from captioner.alttext import Verdict, classify_alt
from captioner.crawl.patch import Document, StartTag
from captioner.errors import AltCapError, InvalidSettings
from captioner.images import ALLOWED_FORMATS
from captioner.lang import lang_to_mark

__all__ = [
    "MODES",
    "SUSPECT_ALT",
    "VERDICTS",
    "CrawlError",
    "InvalidHTML",
    "InvalidSitemap",
    "NotHTML",
    "PageImage",
    "PageVerdict",
    "RobotsDisallowed",
    "decode_html",
    "find_images",
    "needs_caption",
    "parse_srcset",
    "patch_html",
]

log = logging.getLogger(__name__)

MODES = ("missing", "all")
# alttext's verdicts, plus one that needs the page: "empty_link", alt="" on the image that is
# all a link or button holds (which then has no name: see _Context.naming_image); and one
# that needs the model, which the scanner never gives: "suspect_alt", an alt that says
# something ("ok") but that the alt check (captioner.trust) finds does not match its image
# (batch rows only; the extension's verdicts and tests/vectors do not have it).
PageVerdict = Verdict | Literal["empty_link", "suspect_alt"]
SUSPECT_ALT = "suspect_alt"
NEEDS_CAPTION: frozenset[str] = frozenset({"missing", "meaningless", "empty_link"})
# Every verdict, the ones that most need a caption first (reports and summaries list them so).
VERDICTS: tuple[PageVerdict, ...] = (
    "missing",
    "meaningless",
    "empty_link",
    SUSPECT_ALT,
    "ok",
    "decorative",
)
Element = Literal["img", "source", "input"]

# Lazy-loading scripts keep the real image here and a placeholder in src/srcset.
LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset")
LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original")
# <picture><source type=...>: only the types we can decode are worth fetching.
DECODABLE_TYPES = frozenset({f"image/{f.lower()}" for f in ALLOWED_FORMATS} | {"image/jpg"})
# Tags whose content a browser never renders as images.
INERT_PARENTS = frozenset({"template", "textarea", "title", "xmp", "noembed", "noframes"})
# Several occurrences of one image: keep the verdict that most needs a caption.
_URGENCY = {verdict: i for i, verdict in enumerate(VERDICTS)}
_URL_SPACES = re.compile(r"[\t\n\r]")  # browsers drop these anywhere in a URL


# --- errors -------------------------------------------------------------------------


class CrawlError(AltCapError):
    """A page or sitemap could not be used."""

    code = "crawl_failed"
    http_status = 422


class RobotsDisallowed(CrawlError):
    """robots.txt asks crawlers to keep out of this URL (or could not be read: RFC 9309)."""

    code = "robots_disallowed"
    http_status = 403


class NotHTML(CrawlError):
    code = "not_html"
    http_status = 415


class InvalidSitemap(CrawlError):
    code = "invalid_sitemap"


class InvalidHTML(CrawlError):
    """A page bs4 refuses to parse (``<![foo``) or too deep to walk: one failed page, not a
    crash of the whole job."""

    code = "invalid_html"


# --- finding images -----------------------------------------------------------------


@dataclass(frozen=True)
class PageImage:
    image_url: str  # absolute URL of the chosen candidate (srcset: largest)
    alt: str | None  # the author's alt as written; None when the attribute is absent
    verdict: PageVerdict  # missing | meaningless | empty_link | decorative | ok
    element: Element  # "img", "source" (the URL came from <picture><source>) or "input"


def decode_html(data: str | bytes, charset: str | None = None) -> str:
    """Bytes to text the way a browser would: the HTTP charset, else BOM / ``<meta>`` / guess."""
    return data if isinstance(data, str) else _decode(data, charset)[0]


def _decode(data: bytes, charset: str | None) -> tuple[str, str]:
    """(text, encoding): the encoding is the one to write an edited copy back in."""
    known = [charset] if charset else []
    dammit = UnicodeDammit(data, known_definite_encodings=known, is_html=True)
    if dammit.unicode_markup is None or not dammit.original_encoding:
        return data.decode("utf-8", "replace"), "utf-8"
    return dammit.unicode_markup, dammit.original_encoding


def declared_encoding(html: str) -> str:
    """The encoding a page's own ``<meta>`` declares (a Python codec can write it), else UTF-8.

    A patched copy served as UTF-8 while its ``<meta charset>`` says windows-1252 shows
    garbled accents once saved and opened from disk; served in the declared encoding, the
    bytes, the ``<meta>`` and the HTTP charset agree."""
    declared = EncodingDetector.find_declared_encoding(html, is_html=True)
    if not declared:
        return "utf-8"
    try:
        codec = codecs.lookup(declared)
    except LookupError:
        return "utf-8"
    if codec.name.startswith(("utf-16", "utf-32")):  # declared, yet the text was not: ignore
        return "utf-8"
    return declared


def _soup(text: str) -> BeautifulSoup:
    # Browsers keep the first of two same-named attributes; bs4's default keeps the last.
    return BeautifulSoup(text, "html.parser", on_duplicate_attribute="ignore")


@contextmanager
def _html_errors(page_url: str) -> Iterator[None]:
    """Turn bs4's own failures on hostile markup into ``InvalidHTML``: html.parser asserts
    on some marked sections (``<![foo``), which bs4 re-raises as ``ParserRejectedMarkup``,
    and any tree walk could in principle hit the recursion limit."""
    try:
        yield
    except ParserRejectedMarkup:
        raise InvalidHTML(f"{page_url} is HTML the parser cannot read") from None
    except RecursionError:
        raise InvalidHTML(f"{page_url} is nested too deeply to read") from None


def _attr(tag: Tag, name: str) -> str | None:
    value = tag.get(name)
    if isinstance(value, list):  # bs4 splits a few attributes (class, rel) into lists
        return " ".join(value)
    return value


def _resolve(base: str, raw: str | None) -> str | None:
    """An absolute http(s) URL without fragment, or None (empty, data:, javascript:, ...)."""
    if raw is None:
        return None
    raw = _URL_SPACES.sub("", raw).strip(" \f\v")
    if not raw:
        return None
    try:
        url = urldefrag(urljoin(base, raw)).url
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # e.g. a malformed IPv6 host
        return None
    return url if scheme in ("http", "https") else None


def parse_srcset(value: str) -> list[tuple[str, float, str]]:
    """``srcset`` as (url, size, kind) with kind ``"w"`` or ``"x"``, following the HTML
    spec's splitting rules (URLs may contain commas; descriptors may not)."""
    out: list[tuple[str, float, str]] = []
    pos, n = 0, len(value)
    while pos < n:
        while pos < n and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not value[pos].isspace():
            pos += 1
        url = value[start:pos]
        if not url:
            break
        descriptors = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            depth, start = 0, pos
            while pos < n and (value[pos] != "," or depth > 0):
                depth += {"(": 1, ")": -1}.get(value[pos], 0)
                pos += 1
            descriptors = value[start:pos]
        size, kind = 1.0, "x"
        for d in descriptors.split():
            try:
                if d[-1:] in ("w", "x") and float(d[:-1]) > 0:
                    size, kind = float(d[:-1]), d[-1]
            except ValueError:
                continue  # h descriptors and junk change nothing
        if url:
            out.append((url, size, kind))
    return out


def _largest(srcset: str | None) -> str | None:
    """The candidate with the most pixels: width descriptors win over density ones."""
    if not srcset:
        return None
    candidates = parse_srcset(srcset)
    if not candidates:
        return None
    best = max(candidates, key=lambda c: (c[2] == "w", c[1]))  # first of equals wins
    return best[0]


def _img_url(tag: Tag, base: str) -> str | None:
    """The URL a loaded page shows for an <img>/<input>: lazy attributes first, since the
    plain ones then hold a placeholder; srcset's largest before src."""
    if tag.name == "input":
        return _resolve(base, _attr(tag, "src"))
    for name in LAZY_SRCSET_ATTRS:
        if url := _resolve(base, _largest(_attr(tag, name))):
            return url
    for name in LAZY_SRC_ATTRS:
        if url := _resolve(base, _attr(tag, name)):
            return url
    return _resolve(base, _largest(_attr(tag, "srcset"))) or _resolve(base, _attr(tag, "src"))


def _picture_url(img: Tag, base: str) -> str | None:
    """The first decodable <source> of the <picture> around ``img``, as browsers try them."""
    picture = img.parent
    if not isinstance(picture, Tag) or picture.name != "picture":
        return None
    for source in picture.find_all("source", recursive=False):
        media_type = (_attr(source, "type") or "").split(";")[0].strip().lower()
        if media_type and media_type not in DECODABLE_TYPES:
            continue
        for name in (*LAZY_SRCSET_ATTRS, "srcset"):
            if url := _resolve(base, _largest(_attr(source, name))):
                return url
    return None


def _says_something(text: str | None) -> bool:
    return text is not None and classify_alt(text) == "ok"


def _first_role(tag: Tag) -> str:
    roles = (_attr(tag, "role") or "").strip().lower().split()
    return roles[0] if roles else ""


def _is_image(tag: Tag) -> bool:
    """<img>, or <input type=image>: the elements whose alt is their name."""
    return tag.name == "img" or (
        tag.name == "input" and (_attr(tag, "type") or "").strip().lower() == "image"
    )


def _is_control(tag: Tag) -> bool:
    """<a href>, <button>, or role=link/button."""
    if (tag.name == "a" and tag.has_attr("href")) or tag.name == "button":
        return True
    return _first_role(tag) in ("link", "button")


_SILENT = frozenset({"script", "style", "template", "noscript"})  # no text a reader hears


def _aria_hidden(tag: Tag) -> bool:
    return (_attr(tag, "aria-hidden") or "").strip().lower() == "true"


class _Inherited(NamedTuple):
    """What an element inherits from its ancestors, itself included."""

    inert: bool  # inside an INERT_PARENTS tag
    hidden: bool  # aria-hidden="true" on it or an ancestor
    language: str | None  # its language: the nearest lang (xml:lang) attribute; "" = unknown


class _Context:
    """What ``_verdict`` and ``_walk`` ask of the whole document, each worked out once.

    Looking up an ``aria-labelledby`` id with ``soup.find(id=...)``, or walking every
    ancestor of every image, is a scan per image: quadratic on a large page (2,000 labelled
    images took 45 s). The id map is built in one pass on first use, and whether a node sits
    inside an inert parent or ``aria-hidden=true`` is memoised per node, so each ancestor is
    visited once for the whole page; so is the image that names each link or button.
    """

    def __init__(self, soup: BeautifulSoup) -> None:
        self.soup = soup
        self._ids: dict[str, Tag] | None = None
        self._flags: dict[int, _Inherited] = {}  # id(node) -> flags()
        self._naming: dict[int, Tag | None] = {}  # id(link or button) -> naming_image()
        self._controls: dict[int, Tag | None] = {}  # id(node) -> nearest control at or above

    def by_id(self, element_id: str) -> Tag | None:
        """The first element in document order with this id, as ``soup.find(id=...)``."""
        if self._ids is None:
            self._ids = {}
            for tag in self.soup.find_all(id=True):
                self._ids.setdefault(_attr(tag, "id") or "", tag)
        return self._ids.get(element_id)

    def labelled_by(self, tag: Tag) -> str | None:
        """The text of the elements ``aria-labelledby`` names, or None."""
        labels = [self.by_id(i) for i in (_attr(tag, "aria-labelledby") or "").split()]
        return " ".join(el.get_text(" ") for el in labels if el is not None) or None

    def flags(self, node: Tag) -> _Inherited:
        """What ``node`` inherits from its ancestors (and itself): see ``_Inherited``."""
        chain: list[Tag] = []
        known = _Inherited(False, False, None)
        current: Tag | None = node
        while current is not None:
            cached = self._flags.get(id(current))
            if cached is not None:
                known = cached
                break
            chain.append(current)
            current = current.parent
        inert, hidden, language = known
        for tag in reversed(chain):  # from the top down
            inert = inert or tag.name in INERT_PARENTS
            hidden = hidden or _aria_hidden(tag)
            own = _attr(tag, "lang")
            language = own if own is not None else _attr(tag, "xml:lang") or language
            self._flags[id(tag)] = _Inherited(inert, hidden, language)
        return _Inherited(inert, hidden, language)

    def inert_parent(self, tag: Tag) -> bool:
        return tag.parent is not None and self.flags(tag.parent).inert

    def control(self, tag: Tag) -> Tag | None:
        """The link or button an image is part of: itself for <input type=image>, else the
        nearest ancestor <a href>, <button> or role=link/button (memoised like ``flags``)."""
        if tag.name == "input":
            return tag
        chain: list[Tag] = []
        found: Tag | None = None
        current = tag.parent
        while current is not None and not isinstance(current, BeautifulSoup):
            if id(current) in self._controls:
                found = self._controls[id(current)]
                break
            if _is_control(current):
                found = current
                break
            chain.append(current)
            current = current.parent
        for node in chain:
            self._controls[id(node)] = found
        return found

    def naming_image(self, control: Tag) -> Tag | None:
        """The image whose alt would be the only name of this link or button: its first
        decorative image (``alt=""``, or ``role=presentation``), when nothing else names it:
        an ``aria-label``, ``aria-labelledby`` text or ``title`` of its own that says
        something, text in it (outside ``aria-hidden``) that does, an element in it named by
        ``aria-label``, or another image whose alt says something or is to be captioned.
        None when something does. The extension's ``detection.js`` ``namingImage`` is the
        same rule on the live page (``tests/vectors/links.json`` holds both to it)."""
        key = id(control)
        if key not in self._naming:
            self._naming[key] = self._find_naming_image(control)
        return self._naming[key]

    def _find_naming_image(self, control: Tag) -> Tag | None:
        own = (_attr(control, "aria-label"), self.labelled_by(control), _attr(control, "title"))
        if any(_says_something(name) for name in own):
            return None
        if control.name == "input":
            return control  # <input type=image>: its alt is its only name
        texts: list[str] = []
        first: Tag | None = None
        stack = list(reversed(control.contents))  # document order, subtrees skippable
        while stack:
            node = stack.pop()
            if not isinstance(node, Tag):
                if isinstance(node, NavigableString) and not isinstance(node, PreformattedString):
                    texts.append(str(node))  # text, not a comment or declaration
                continue
            if node.name in _SILENT or _aria_hidden(node):
                continue
            if _is_image(node):
                if _alt_verdict(node, self) != "decorative":
                    return None  # it has a name, or gets a caption that is one
                if first is None:
                    first = node
            elif _says_something(_attr(node, "aria-label")):
                return None
            stack.extend(reversed(node.contents))
        return None if _says_something(" ".join(texts)) else first


def _alt_verdict(tag: Tag, context: _Context) -> Verdict:
    """The verdict of the image's own markup: its alt, role, labels and aria-hidden."""
    verdict = classify_alt(_attr(tag, "alt"), _attr(tag, "src"), context.flags(tag).language)
    if verdict not in ("missing", "meaningless"):
        return verdict  # author text and alt="" are the author's word, as in the extension
    if _first_role(tag) in ("presentation", "none"):
        return "decorative"
    if context.flags(tag).hidden:
        return "decorative"
    if any(_says_something(t) for t in (_attr(tag, "aria-label"), context.labelled_by(tag))):
        return "ok"
    if _says_something(_attr(tag, "title")):
        return "ok"
    return verdict


def _verdict(tag: Tag, context: _Context) -> PageVerdict:
    """``_alt_verdict``, except that a decorative image that is all a link or button holds
    is ``empty_link``: it was the control's name, and the control has none."""
    verdict = _alt_verdict(tag, context)
    if verdict != "decorative" or context.flags(tag).hidden:
        return verdict
    control = context.control(tag)
    if control is not None and context.naming_image(control) is tag:
        return "empty_link"
    return verdict


def _base_url(soup: BeautifulSoup, page_url: str) -> str:
    base = soup.find("base", href=True)
    if isinstance(base, Tag):
        return _resolve(page_url, _attr(base, "href")) or page_url
    return page_url


def _walk(
    soup: BeautifulSoup, page_url: str, context: _Context | None = None
) -> Iterator[tuple[Tag, PageImage]]:
    """Every image a reader meets, with the tag that carries its alt, in document order."""
    base = _base_url(soup, page_url)
    context = context or _Context(soup)
    for tag in soup.find_all(["img", "input"]):
        if not _is_image(tag) or context.inert_parent(tag):
            continue
        element: Element = "input" if tag.name == "input" else "img"
        url = _picture_url(tag, base) if element == "img" else None
        if url is not None:
            element = "source"
        else:
            url = _img_url(tag, base)
        if url is None:
            continue  # data: and javascript: URLs, or nothing at all
        yield tag, PageImage(url, _attr(tag, "alt"), _verdict(tag, context), element)


def find_images(html: str | bytes, page_url: str) -> list[PageImage]:
    """The page's images, one per resolved URL, in order of first appearance.

    ``page_url`` is the URL the page was served from (after redirects): relative URLs
    resolve against it, or against ``<base href>``. Where one image appears several times,
    the occurrence that most needs a caption (missing, then meaningless, ok, decorative)
    speaks for it, since ``patch_html`` fills every occurrence that needs one. Markup the
    parser rejects raises ``InvalidHTML`` (``invalid_html``), like ``patch_html``.
    """
    merged: dict[str, PageImage] = {}
    with _html_errors(page_url):
        for _, image in _walk(_soup(decode_html(html)), page_url):
            seen = merged.get(image.image_url)
            if seen is None or _URGENCY[image.verdict] < _URGENCY[seen.verdict]:
                merged[image.image_url] = image
    return list(merged.values())


def needs_caption(verdict: str | None, mode: str = "missing") -> bool:
    """Whether an image with ``verdict`` gets a suggested caption in ``mode``.

    ``missing``: images without useful alt (missing or meaningless); ``all``: every image
    except decorative ones. An image URL given without a page (verdict None) always does.
    """
    if mode not in MODES:
        raise InvalidSettings(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if verdict is None:
        return True
    if mode == "all":
        return verdict != "decorative"
    return verdict in NEEDS_CAPTION


# --- patching -----------------------------------------------------------------------


def patch_html(
    html: str | bytes, page_url: str, captions: Mapping[str, str], language: str | None = None
) -> str:
    """The page with ``captions`` (image URL -> text) filled in as alt where it is missing,
    meaningless or an empty link's, on ``<img>`` and ``<input type=image>``.

    Every other character of the document stays as it was: the edits are made in the
    original text, not by re-serialising a tree. A new alt goes right after the tag name; a
    meaningless one is replaced where it stands. ``language``: the captions' language tag;
    an image whose own language (its nearest ``lang``) is another, or none, and that has no
    ``lang`` of its own gets ``lang=language`` too, so that screen readers speak the caption
    in its language.

    Which images need a caption is judged on the tree ``find_images`` reads; where their
    tags are, and whether they are tags at all, is the HTML5 parser's word
    (``captioner.crawl.patch``): an ``<img>`` in a script's text is left alone, and a patched page
    that would parse otherwise than the original, beyond the attributes set, loses the
    edits that cause it (each logged).
    """
    text = decode_html(html)
    with _html_errors(page_url):
        return _patched(text, page_url, captions, language)


def _line_starts(text: str) -> list[int]:
    # html.parser counts lines by "\n" alone, so must we.
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _patched(text: str, page_url: str, captions: Mapping[str, str], language: str | None) -> str:
    soup = _soup(text)
    context = _Context(soup)
    wanted: list[tuple[Tag, str]] = []
    for tag, image in _walk(soup, page_url, context):
        caption = captions.get(image.image_url)
        if not caption or image.verdict not in NEEDS_CAPTION:
            continue
        if tag.sourceline is not None and tag.sourcepos is not None:
            wanted.append((tag, caption))
    if not wanted:
        return text
    document = Document(text)
    starts = _line_starts(text)
    changes: list[tuple[StartTag, dict[str, str]]] = []
    for tag, caption in wanted:
        start = starts[tag.sourceline - 1] + tag.sourcepos
        found = document.start_tag(start)
        if found is None or found.name != tag.name:
            log.warning(
                "left the <%s> at line %s of %s alone: to an HTML5 parser it is not a tag "
                "(it is in a script, a comment or other text)",
                tag.name,
                tag.sourceline,
                page_url,
            )
            continue
        alt = found.attributes.get("alt")
        if (alt.value if alt else None) != _attr(tag, "alt"):
            log.warning(
                "could not patch the <%s> at line %s of %s", tag.name, tag.sourceline, page_url
            )
            continue
        values = {"alt": caption}
        lang = lang_to_mark(context.flags(tag).language, language)
        if lang and "lang" not in found.attributes:
            values["lang"] = lang
        changes.append((found, values))
    patched = document.set_attributes(changes)
    for dropped in patched.dropped:
        log.warning(
            "left the <%s> at line %s of %s alone: the page parsed differently with its alt",
            dropped.name,
            document.line(dropped),
            page_url,
        )
    return patched.text
