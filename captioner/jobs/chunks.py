"""A job's plan as stored chunks: ``build_plan`` turns what ``captioner.jobs.plan`` found into
units of work, the rows known already and the pages kept for patching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from captioner.errors import AltCapError
from captioner.jobs.rows import PENDING, checked_alt, finished, verdict_counts
from captioner.jobs.store import (
    Plan,
)

__all__ = ["HTML_NOT_KEPT", "MAX_JOB_HTML", "build_plan"]

MAX_JOB_HTML = 50 * 1024 * 1024  # HTML kept per job for patched pages; later pages keep none


HTML_NOT_KEPT = "html_not_kept"  # the error of a page whose HTML was past MAX_JOB_HTML


def _rows(
    items: Sequence[Mapping[str, Any]],
    outcomes: Mapping[str, Mapping[str | None, Mapping[str, Any]] | AltCapError],
    mode: str = "missing",
    check_alts: bool = False,
) -> dict[int, dict[str, Any]]:
    """The finished rows of a chunk: every occurrence of every image, by seq. An image's
    outcome is its error, or its described fields (``rows.described``) by the author alt
    they checked (``plan.alt_groups``; None: the rows that check none), each row finished
    with its own (``rows.finished``)."""
    out: dict[int, dict[str, Any]] = {}
    for item in items:
        outcome = outcomes[item["url"]]
        for seq, template in item["rows"]:
            if isinstance(outcome, AltCapError):
                row = dict(template)
                row.update(status="failed", error_code=outcome.code, error_message=outcome.message)
            else:
                alt = checked_alt(template) if check_alts else None
                row = finished(template, outcome.get(alt, outcome[None]), mode)
            out[seq] = row
    return out


def build_plan(found: Any, chunk_size: int, spec: Mapping[str, Any] | None = None) -> Plan:
    """A ``plan.Plan`` (rows in report order, pending ones to caption) as stored chunks.

    Each distinct pending image URL is captioned once, in the chunk of its first row; its
    item lists every row it fills (one per page it is on). Pages keep their HTML (for their
    patched copies) up to ``MAX_JOB_HTML`` in all: the plan is written in one step, and a
    site of huge pages must not make that write too large for the store. ``spec`` (the
    job's) tells whether ``max_pages`` cut the job short.
    """

    rows: dict[int, dict[str, Any]] = {}
    items: dict[str, dict[str, Any]] = {}
    for seq, row in enumerate(found.rows):
        if row["status"] == PENDING:
            item = items.setdefault(row["image_url"], {"url": row["image_url"], "rows": []})
            item["rows"].append([seq, {**row, "status": None}])
        else:
            rows[seq] = row
    ordered = list(items.values())
    chunks = [ordered[i : i + chunk_size] for i in range(0, len(ordered), chunk_size)]
    pages = []
    kept = 0
    for page in found.pages:
        html = page.html
        error = page.error.to_dict() if page.error is not None else None
        if html is not None:
            kept += len(html.encode("utf-8", "surrogatepass"))
            if kept > MAX_JOB_HTML:
                html = None
                message = (
                    f"its patched copy was not kept: the job's pages exceed "
                    f"{MAX_JOB_HTML // (1024 * 1024)} MiB of HTML in all (its images are "
                    "still captioned)"
                )
                error = {"code": HTML_NOT_KEPT, "message": message}
        meta = {"n": page.index, "url": page.url, "final_url": page.final_url}
        pages.append({**meta, "html": html, "error": error})
    return Plan(
        chunks=chunks,
        rows=rows,
        pages=pages,
        total=len(found.rows),
        limited=_limited(found, spec),
        verdicts=verdict_counts(found.rows),  # the scan's: suspect alts move as chunks end
    )


def _limited(found: Any, spec: Mapping[str, Any] | None) -> bool:
    """A limit cut the job short: ``max_images`` skipped images, or ``max_pages`` left pages
    out (of a page list, exactly; of a sitemap, when the crawl stopped at the limit)."""
    if any(row.get("error_code") == "max_images" for row in found.rows):
        return True
    if spec is None:
        return False
    source, max_pages = spec["source"], spec["max_pages"]
    if "pages" in source:
        return len(dict.fromkeys(source["pages"])) > max_pages
    if "sitemap" in source:
        return len(found.pages) >= max_pages
    return False
