"""Sitemaps (``urlset`` and ``sitemapindex``) into page URLs, parsed with expat and a limit."""

from __future__ import annotations

from xml.parsers import expat

from captioner.crawl.pages import (
    InvalidSitemap,
)

__all__ = ["parse_sitemap"]

# --- sitemaps -----------------------------------------------------------------------


class _Enough(Exception):
    """Stops the XML parser once enough URLs are in."""


def parse_sitemap(data: bytes, limit: int | None = None) -> tuple[str, list[str]]:
    """(``"urlset"`` or ``"sitemapindex"``, the ``<loc>`` URLs) of a sitemap document.

    XML goes through expat with document type declarations refused outright (as defusedxml's
    ``forbid_dtd``): sitemaps never need one, and without a DTD there are no entities to
    expand (billion laughs) and no external ones to fetch. A text sitemap (one URL a line,
    which sitemaps.org also allows) is read as a urlset.
    """
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
        urls = [line for line in lines if line]
        if not urls or not all(u.lower().startswith(("http://", "https://")) for u in urls):
            raise InvalidSitemap("the sitemap is neither XML nor a list of URLs")
        return "urlset", urls[:limit]

    parser = expat.ParserCreate(namespace_separator=" ")
    stack: list[str] = []
    roots: list[str] = []
    locs: list[str] = []
    text: list[str] = []

    def refuse(*_: object) -> None:
        raise InvalidSitemap("the sitemap declares a DTD or entities, which sitemaps never do")

    def start(name: str, _attrs: object) -> None:
        local = name.rsplit(" ", 1)[-1]
        if not stack:
            roots.append(local)
            if local not in ("urlset", "sitemapindex"):
                raise InvalidSitemap(f"expected <urlset> or <sitemapindex>, found <{local}>")
        stack.append(local)
        text.clear()

    def end(_name: str) -> None:
        if len(stack) == 3 and stack[2] == "loc" and stack[1] in ("url", "sitemap"):
            if loc := "".join(text).strip():
                locs.append(loc)
            if limit is not None and len(locs) >= limit:
                raise _Enough
        stack.pop()

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(data, True)
    except _Enough:
        pass
    except expat.ExpatError as exc:
        raise InvalidSitemap(f"the sitemap is not well-formed XML ({exc})") from None
    return roots[0], locs
