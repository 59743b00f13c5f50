"""Batch results as JSON, JSON Lines or CSV: one row per image, the same columns everywhere;
or as a web page to read (``html``, see ``captioner.jobs.html_report``).

The batch CLI and the jobs API both write their results through ``write_rows`` so that a
report downloaded from the service and one written by ``python -m captioner batch`` are the
same file. CSV reports are opened in spreadsheets, where a cell starting with ``=`` is a
formula: page authors control the alt texts and URLs we copy, so such cells are neutralised.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from captioner.errors import AltCapError
from captioner.jobs.rows import CSV_FIELDS, RESULT_FIELDS, csv_values

__all__ = [
    "FORMATS",
    "UnknownFormat",
    "content_type",
    "format_for_path",
    "write_rows",
]

FORMATS = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
# Cells a spreadsheet would run as a formula (OWASP "CSV injection"); tab and CR start one too.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class UnknownFormat(AltCapError):
    code = "invalid_format"


def _check(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownFormat(f"report format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def content_type(fmt: str) -> str:
    """The HTTP ``Content-Type`` of a report in ``fmt``."""
    return FORMATS[_check(fmt)]


def format_for_path(path: str, default: str = "csv") -> str:
    """The format a file name asks for (``report.jsonl`` -> ``jsonl``), else ``default``."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return suffix if suffix in FORMATS else _check(default)


def _project(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in RESULT_FIELDS}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # confident: as in the JSON reports
        return "true" if value else "false"
    if isinstance(value, (int, float)):  # ours (a score may be negative), never a formula
        return str(value)
    if isinstance(value, (list, tuple)):  # warnings: codes, one cell, space-separated
        value = " ".join(map(str, value))
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_rows(
    rows: Iterable[Mapping[str, Any]],
    fmt: str,
    out: TextIO,
    *,
    language: str | None = None,
    patched: Mapping[str, str] | None = None,
) -> None:
    """Write ``rows`` (only the ``RESULT_FIELDS``, in that order) to ``out``.

    ``json`` is one array document, ``jsonl`` one object per line, ``csv`` a header row
    (``CSV_FIELDS``: ``alt_check`` as ``alt_check_score`` and ``alt_check_verdict``) and
    quoted cells (``None`` is an empty cell, ``confident`` true or false, ``warnings`` its
    codes separated by spaces, an image's ``text`` keeps its line breaks inside the
    quotes). Rows are streamed: a job's results need not fit in one string. ``html`` is a
    page to read, by page; ``language`` (the captions' language tag) marks its suggestions
    where they are not English, and ``patched`` (page URL -> the address of its patched
    copy) links each page to it.
    """
    _check(fmt)
    if fmt == "html":
        from captioner.jobs.html_report import write_html  # jinja2: only when asked for

        write_html(rows, out, language=language, patched=patched)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
        writer.writerow(CSV_FIELDS)
        for row in rows:
            writer.writerow([_cell(value) for value in csv_values(row)])
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(_project(row), ensure_ascii=False) + "\n")
    else:
        out.write("[")
        for i, row in enumerate(rows):
            out.write(",\n" if i else "\n")
            out.write(json.dumps(_project(row), ensure_ascii=False))
        out.write("\n]\n")
