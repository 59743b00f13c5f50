"""Batch reports: the same rows as JSON, JSON Lines and CSV (quoted, formulas neutralised)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from captioner.reports import (
    RESULT_FIELDS,
    UnknownFormat,
    content_type,
    format_for_path,
    make_row,
    write_rows,
)

ROWS = [
    make_row(
        page_url="https://example.com/a",
        image_url="https://example.com/a.png",
        alt=None,
        verdict="missing",
        status="done",
        caption='A "dog", running\nin a park.',
    ),
    make_row(
        page_url=None,
        image_url="https://example.com/b.png",
        status="failed",
        error_code="fetch_failed",
        error_message="the image server answered HTTP 404",
    ),
    {**make_row(page_url="https://example.com/c", image_url=None, status="skipped"), "x": 1},
]


def render(fmt: str, rows=ROWS) -> str:
    out = io.StringIO()
    write_rows(rows, fmt, out)
    return out.getvalue()


def test_json_is_one_array_of_rows_with_every_field_in_order() -> None:
    data = json.loads(render("json"))
    assert [list(row) for row in data] == [list(RESULT_FIELDS)] * 3
    assert data[0]["caption"] == 'A "dog", running\nin a park.'
    assert data[0]["alt"] is None and data[1]["verdict"] is None
    assert data[1]["error_code"] == "fetch_failed"
    assert "x" not in data[2]  # only the report's columns
    assert json.loads(render("json", [])) == []


def test_jsonl_is_one_object_per_line() -> None:
    lines = render("jsonl").splitlines()
    assert len(lines) == 3
    assert [json.loads(line) for line in lines] == json.loads(render("json"))


def test_csv_has_a_header_and_round_trips_quotes_commas_and_newlines() -> None:
    table = list(csv.reader(io.StringIO(render("csv"), newline="")))
    assert table[0] == list(RESULT_FIELDS)
    assert table[1] == [
        "https://example.com/a",
        "https://example.com/a.png",
        "",
        "missing",
        "done",
        'A "dog", running\nin a park.',
        "",
        "",
    ]
    assert table[3] == ["https://example.com/c", "", "", "", "skipped", "", "", ""]
    assert len(table) == 4


@pytest.mark.parametrize(
    "cell", ['=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
)
def test_csv_neutralises_spreadsheet_formulas(cell: str) -> None:
    row = make_row(page_url="p", image_url="i", alt=cell, verdict="ok", status="skipped")
    table = list(csv.reader(io.StringIO(render("csv", [row]), newline="")))
    assert table[1][2] == "'" + cell
    assert json.loads(render("json", [row]))[0]["alt"] == cell  # JSON keeps the text as is


def test_formats_and_content_types() -> None:
    assert content_type("json") == "application/json"
    assert content_type("jsonl") == "application/x-ndjson"
    assert content_type("csv").startswith("text/csv")
    assert format_for_path("out/report.JSONL") == "jsonl"
    assert format_for_path("report.json") == "json"
    assert format_for_path("report.txt") == "csv"
    assert format_for_path("-", default="json") == "json"
    with pytest.raises(UnknownFormat) as info:
        write_rows(ROWS, "xml", io.StringIO())
    assert info.value.code == "invalid_format"
    with pytest.raises(UnknownFormat):
        content_type("html")


def test_make_row_takes_the_error_code_and_message_from_an_error() -> None:
    from captioner.fetch import BlockedAddress

    row = make_row(page_url=None, image_url="u", status="failed", error=BlockedAddress("nope"))
    assert (row["error_code"], row["error_message"]) == ("blocked_address", "nope")
    assert tuple(row) == RESULT_FIELDS
