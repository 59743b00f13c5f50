"""The rows of a batch result: one per image (or per page that was not read), the same
fields in the CLI's reports, the jobs API's results and the HTML report; and the counts of
them that the summaries show. ``captioner.jobs.reports`` writes them out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from captioner.crawl.pages import VERDICTS, RobotsDisallowed
from captioner.errors import AltCapError

__all__ = [
    "NO_CAPTION",
    "NO_CAPTION_MESSAGE",
    "PENDING",
    "RESULT_FIELDS",
    "ROBOTS",
    "STATUSES",
    "described",
    "make_row",
    "page_counts",
    "upgraded",
    "verdict_counts",
]

RESULT_FIELDS = (
    "page_url",  # the page the image is on; None for image URLs given directly
    "image_url",  # absolute URL of the image; None for a row about a page that failed
    "author_alt",  # the author's alt as written; None when the attribute is absent
    "verdict",  # missing | meaningless | empty_link | decorative | ok; None for bare image URLs
    "status",  # done | failed | skipped
    "caption",  # the model's words (bounded as alt) when done
    "text",  # what the image says, lines joined by "\n"; "" none; None when not read
    "alt",  # the suggested alt text when done: caption, text or both (captioner.describe)
    "alt_from",  # caption | text | caption_and_text (describe.ALT_FROM) when done
    "warnings",  # codes of what went wrong without failing the row (ocr_timeout...); a list
    "error_code",  # stable code (captioner.errors) when failed, or why it was skipped
    "error_message",
)
STATUSES = ("done", "failed", "skipped")
PENDING = "pending"  # a row waiting for its caption; never in a finished report
ROBOTS = RobotsDisallowed.code  # a page's error code when robots.txt keeps crawlers out
# A caption that cleaned to nothing (see alttext.clean_caption): the image is skipped, not
# done, so a site owner sees it among the images still needing alt text, with the reason.
NO_CAPTION = "no_caption"
NO_CAPTION_MESSAGE = "the model found nothing readable to say about this image"


def make_row(
    *,
    page_url: str | None,
    image_url: str | None,
    author_alt: str | None = None,
    verdict: str | None = None,
    status: str,
    caption: str | None = None,
    text: str | None = None,
    alt: str | None = None,
    alt_from: str | None = None,
    warnings: Iterable[str] = (),
    error: AltCapError | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """One result row with every field, in order; ``error`` fills the two error fields."""
    if error is not None:
        error_code, error_message = error.code, error.message
    return {
        "page_url": page_url,
        "image_url": image_url,
        "author_alt": author_alt,
        "verdict": verdict,
        "status": status,
        "caption": caption,
        "text": text,
        "alt": alt,
        "alt_from": alt_from,
        "warnings": list(warnings),
        "error_code": error_code,
        "error_message": error_message,
    }


def described(description: Mapping[str, Any], warnings: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of a row whose image was described (``describe.describe``'s answer).

    ``done`` with its caption, text and alt; or, when there is no alt (a caption that
    cleaned to nothing and no text), ``skipped`` with ``error_code`` ``no_caption``.
    ``warnings`` are codes of what failed without failing the row (the text not read).
    """
    fields = {"text": description.get("text"), "warnings": list(warnings)}
    if description["alt"]:
        return {
            **fields,
            "status": "done",
            "caption": description["caption"],
            "alt": description["alt"],
            "alt_from": description["alt_from"],
        }
    return {
        **fields,
        "status": "skipped",
        "error_code": NO_CAPTION,
        "error_message": NO_CAPTION_MESSAGE,
    }


def upgraded(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row stored before the text in images was read, in today's fields: its ``alt`` was
    the author's (now ``author_alt``), its ``caption`` the suggested alt (now ``alt``)."""
    if "author_alt" in row:
        return dict(row)
    old = dict(row)
    old["author_alt"] = old.pop("alt", None)
    done = old.get("status") == "done"
    return {
        **make_row(page_url=None, image_url=None, status=""),
        **old,
        "alt": old.get("caption") if done else None,
        "alt_from": "caption" if done else None,
    }


def page_counts(errors: Iterable[str | None]) -> dict[str, int]:
    """Pages by outcome, from each page's error code (None: it was read): ``read``,
    ``skipped`` (robots.txt keeps crawlers out) and ``failed``; the CLI's summary and a
    job's status count pages apart from images with it."""
    counts = {"total": 0, "read": 0, "skipped": 0, "failed": 0}
    for code in errors:
        counts["total"] += 1
        outcome = "read" if code is None else "skipped" if code == ROBOTS else "failed"
        counts[outcome] += 1
    return counts


def verdict_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Report rows by verdict, in ``VERDICTS`` order, verdicts no row has left out (rows of
    bare image URLs and failed pages have none): the CLI's summary and a job's status."""
    counts = Counter(row.get("verdict") for row in rows)
    return {v: counts[v] for v in VERDICTS if counts[v]}
