"""The rows of a batch result: one per image (or per page that was not read), the same
fields in the CLI's reports, the jobs API's results and the HTML report; and the counts of
them that the summaries show. ``captioner.jobs.reports`` writes them out.

Trust (``captioner.trust``, models with CLIP's text tower): a row whose suggested alt rests
on a caption that is not confident is ``low_confidence``, not ``done`` (its alt stays, as a
suggestion for a person to check; patched pages leave it out unless asked). An author's alt
that says something (verdict ``ok``) is checked against its image when the run asks for it
(``check_alts``): one that fails gets the verdict ``suspect_alt`` and AltCap's caption as a
suggestion (never patched in: the page keeps the author's alt); one that matches keeps its
verdict, and in mode ``missing`` stays ``skipped`` (nothing to do), with the check's result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from captioner.crawl.pages import SUSPECT_ALT, VERDICTS, RobotsDisallowed, needs_caption
from captioner.errors import AltCapError
from captioner.trust import ALT_VERDICTS, withholds

__all__ = [
    "CSV_FIELDS",
    "DESCRIBED",
    "NO_CAPTION",
    "NO_CAPTION_MESSAGE",
    "PENDING",
    "RESULT_FIELDS",
    "ROBOTS",
    "STATUSES",
    "checked_alt",
    "csv_values",
    "described",
    "finished",
    "make_row",
    "page_counts",
    "upgraded",
    "verdict_counts",
    "with_suspect_alts",
]

RESULT_FIELDS = (
    "page_url",  # the page the image is on; None for image URLs given directly
    "image_url",  # absolute URL of the image; None for a row about a page that failed
    "author_alt",  # the author's alt as written; None when the attribute is absent
    "verdict",  # pages.VERDICTS (suspect_alt: the alt check's); None for bare image URLs
    "status",  # STATUSES
    "caption",  # the model's words (bounded as alt) when done
    "text",  # what the image says, lines joined by "\n"; "" none; None when not read
    "alt",  # the suggested alt text when done: caption, text or both (captioner.describe)
    "alt_from",  # caption | text | caption_and_text (describe.ALT_FROM) when done
    # CLIP's view of the caption (None without a text tower, and when not captioned):
    "confidence",  # the caption's confidence in [0, 1] (docs/confidence.md)
    "confident",  # confidence >= ALTCAP_MIN_CONFIDENCE: true | false
    "alt_check",  # the author's alt checked: {"score", "verdict": matches | suspect}; or None
    "warnings",  # codes of what went wrong without failing the row (ocr_timeout...); a list
    "error_code",  # stable code (captioner.errors) when failed, or why it was skipped
    "error_message",
)
# done: a suggested alt; low_confidence: one resting on a caption that is not confident, for
# a person to check (never patched in unless asked); failed: with its error; skipped: no
# caption needed (its verdict says why), or an error_code says why not (max_images...).
STATUSES = ("done", "low_confidence", "failed", "skipped")
DESCRIBED = frozenset({"done", "low_confidence"})  # the rows with a suggested alt
# CSV has no objects: an object field is one column per key, named field_key.
FLATTENED = {"alt_check": ("score", "verdict")}
CSV_FIELDS = tuple(
    f"{name}_{key}" if name in FLATTENED else name
    for name in RESULT_FIELDS
    for key in FLATTENED.get(name, (None,))
)
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
    confidence: float | None = None,
    confident: bool | None = None,
    alt_check: Mapping[str, Any] | None = None,
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
        "confidence": confidence,
        "confident": confident,
        "alt_check": dict(alt_check) if alt_check is not None else None,
        "warnings": list(warnings),
        "error_code": error_code,
        "error_message": error_message,
    }


def described(
    description: Mapping[str, Any],
    warnings: Iterable[str] = (),
    *,
    confidence: float | None = None,
    confident: bool | None = None,
    alt_check: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of a row whose image was described (``describe.describe``'s answer).

    ``done`` with its caption, text and alt, or ``low_confidence`` when that alt rests on a
    caption that is not ``confident`` (``trust.withholds``); or, when there is no alt (a
    caption that cleaned to nothing and no text), ``skipped`` with ``error_code``
    ``no_caption``. ``warnings`` are codes of what failed without failing the row (the text
    not read); ``confidence``, ``confident`` and ``alt_check`` are the caption's (None:
    no text tower).
    """
    fields = {
        "text": description.get("text"),
        "warnings": list(warnings),
        "confidence": confidence,
        "confident": confident,
        "alt_check": dict(alt_check) if alt_check is not None else None,
    }
    if description["alt"]:
        withheld = withholds(confident, description["alt_from"])
        return {
            **fields,
            "status": "low_confidence" if withheld else "done",
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


def checked_alt(row: Mapping[str, Any]) -> str | None:
    """The author's alt a row's image is checked against: one that says something (verdict
    ``ok``); None for the others (no alt, an empty or meaningless one)."""
    alt = row.get("author_alt")
    ok = row.get("verdict") == "ok" and isinstance(alt, str) and alt.strip()
    return alt if ok else None


def finished(row: Mapping[str, Any], outcome: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """A pending row with its image's outcome (``described``'s fields, or a failure's).

    The outcome's ``alt_check`` is the row's only if it checked the row's own alt
    (``checked_alt``: one image may be on several pages, with other alts). A suspect alt
    makes the verdict ``suspect_alt``, the caption its suggestion; an alt that matches, on a
    row captioned only for the check (``mode`` would not caption it), leaves it ``skipped``:
    the author's alt stays, and there is nothing to suggest.
    """
    out = {**row, **outcome}
    check = outcome.get("alt_check") if checked_alt(row) is not None else None
    out["alt_check"] = check
    if check is None or out.get("status") not in DESCRIBED:
        return out
    if check["verdict"] == ALT_VERDICTS[1]:
        out["verdict"] = SUSPECT_ALT
    elif not needs_caption(row.get("verdict"), mode):
        out.update(status="skipped", alt=None, alt_from=None)
    return out


def csv_values(row: Mapping[str, Any]) -> list[Any]:
    """A row's values in ``CSV_FIELDS`` order: object fields (``FLATTENED``) one per key."""
    values: list[Any] = []
    for name in RESULT_FIELDS:
        value = row.get(name)
        if name in FLATTENED:
            values += [value.get(key) if value else None for key in FLATTENED[name]]
        else:
            values.append(value)
    return values


def upgraded(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row stored before the text in images was read, in today's fields: its ``alt`` was
    the author's (now ``author_alt``), its ``caption`` the suggested alt (now ``alt``)."""
    if "author_alt" in row:
        return dict(row)
    old = dict(row)
    old["author_alt"] = old.pop("alt", None)
    done = old.get("status") == "done"  # no low_confidence then
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


def with_suspect_alts(verdicts: Mapping[str, int], suspect: int) -> dict[str, int]:
    """A job's verdict counts as planned, with the rows the alt check found suspect since.

    The page scan gives no row ``suspect_alt``: an alt that says something is ``ok`` when
    the job is planned, and becomes ``suspect_alt`` (``finished``) when its image is
    captioned. The stores count those rows as their chunks complete (``suspect``); they
    move from ``ok`` to ``suspect_alt`` here, in ``VERDICTS`` order. Without any (a job
    stored before they were counted too) the counts are as stored.
    """
    moved = min(suspect, verdicts.get("ok", 0))
    if moved <= 0:
        return dict(verdicts)
    counts = Counter(verdicts)
    counts["ok"] -= moved
    counts[SUSPECT_ALT] += moved
    return {v: counts[v] for v in VERDICTS if counts[v]}
