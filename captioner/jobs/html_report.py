"""Batch results as a web page people read: the report's rows by page, each image shown
beside its verdict, the author's alt, the suggested one and the text read in it (and, for a
model with CLIP's text tower, the caption's confidence and the author's alt's check).

The JSON, JSON Lines and CSV reports are for programs and spreadsheets; this one is for the
people who fix the alt text (content editors), who need to see the picture to judge a
suggestion. It is one self-contained, accessible document: a heading per page (each page
once, its rows in report order), a table of its images with row and column headers, no
script. A page that was not read (a row without an image) says so in a sentence under its
heading: skipped where robots.txt keeps crawlers out, else failed; the summary counts
those pages apart from the images.
Every value is escaped (page authors control alt texts and URLs); only http(s) URLs become
links or thumbnails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from jinja2 import Environment, PackageLoader, select_autoescape

from captioner.errors import OcrError, OcrTimeout, OcrUnavailable
from captioner.jobs.rows import ROBOTS, verdict_counts
from captioner.lang import lang_to_mark

__all__ = ["CHECK_LABELS", "STATUS_LABELS", "VERDICT_LABELS", "WARNING_LABELS", "write_html"]

# What each verdict (pages.VERDICTS) means, in the report's words.
VERDICT_LABELS = {
    "missing": "No alt attribute",
    "meaningless": "Alt says nothing (a file name or a word such as “image”)",
    "empty_link": "Empty alt, and the image is all its link or button holds",
    "suspect_alt": "Alt text that may not match the image (AltCap's caption suggested)",
    "ok": "Has alt text",
    "decorative": "Decorative (empty alt)",
}
# What a status other than done, failed and skipped means (rows.STATUSES), in words.
STATUS_LABELS = {
    "low_confidence": "Not confident: a suggestion to check, left out of patched pages",
}
# What the alt check's verdicts (trust.ALT_VERDICTS) mean, in words.
CHECK_LABELS = {"matches": "Matches", "suspect": "May not match"}
# What a row's warnings (its text not read: captioner.errors' OCR codes) mean, in words.
WARNING_LABELS = {
    OcrError.code: "the text in it could not be read",
    OcrTimeout.code: "reading the text in it took too long",
    OcrUnavailable.code: "no text was read (the OCR engine is not installed)",
}
# Images on no page: the rows of a job or run over image URLs.
NO_PAGE = "Image addresses given directly"

_env = Environment(
    loader=PackageLoader("captioner.jobs", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _is_web_url(url: Any) -> bool:
    return isinstance(url, str) and url.lower().startswith(("http://", "https://"))


def _unread(row: Mapping[str, Any]) -> str:
    """Why a page was not read: ``robots`` (its robots.txt keeps crawlers out), ``failed``,
    or ``skipped`` (another reason)."""
    if row.get("error_code") == ROBOTS:
        return "robots"
    return "failed" if row.get("status") == "failed" else "skipped"


def write_html(
    rows: Iterable[Mapping[str, Any]],
    out: TextIO,
    *,
    language: str | None = None,
    patched: Mapping[str, str] | None = None,
    title: str = "AltCap report",
) -> None:
    """Write the report's ``rows`` as one HTML document to ``out``.

    ``language``: the captions' language tag; suggestions in another language than the
    report's (English) are marked with it. ``patched``: page URL -> the address of its
    patched copy (relative to the report), linked from the page's section."""
    rows = list(rows)
    images = [row for row in rows if row.get("image_url") is not None]
    statuses = Counter(row.get("status") for row in images)
    unread = Counter(_unread(row) for row in rows if row.get("image_url") is None)
    found = [(VERDICT_LABELS[v], n) for v, n in verdict_counts(rows).items()]
    patched = patched or {}
    by_page: dict[Any, list[Mapping[str, Any]]] = {}  # in order of first appearance
    for row in rows:
        by_page.setdefault(row.get("page_url"), []).append(row)
    pages = [
        {
            "url": url,
            "link": _is_web_url(url),
            "rows": [row for row in group if row.get("image_url") is not None],
            "unread": [row for row in group if row.get("image_url") is None],
            "patched": patched.get(url),
        }
        for url, group in by_page.items()
    ]
    _env.get_template("report.html").stream(
        title=title,
        total=len(images),
        statuses=statuses,
        unread=unread,
        found=found,
        pages=pages,
        labels=VERDICT_LABELS,
        warning_labels=WARNING_LABELS,
        status_labels=STATUS_LABELS,
        check_labels=CHECK_LABELS,
        # the confidence and alt check columns: only for a model with CLIP's text tower
        scored=any(row.get("confidence") is not None for row in images),
        no_page=NO_PAGE,
        web=_is_web_url,
        robots=ROBOTS,
        caption_lang=lang_to_mark("en", language),  # the report itself is English
    ).dump(out)
