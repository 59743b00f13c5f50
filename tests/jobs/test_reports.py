"""Batch reports: the same rows as JSON, JSON Lines and CSV (quoted, formulas neutralised),
and as an HTML page to read (accessible, escaped)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from bs4 import BeautifulSoup

from captioner.crawl.pages import VERDICTS
from captioner.errors import OcrError, OcrTimeout, OcrUnavailable
from captioner.jobs.html_report import NO_PAGE, VERDICT_LABELS, WARNING_LABELS
from captioner.jobs.reports import UnknownFormat, content_type, format_for_path, write_rows
from captioner.jobs.rows import RESULT_FIELDS, make_row

DOG = 'A "dog", running\nin a park.'
ROWS = [
    make_row(
        page_url="https://example.com/a",
        image_url="https://example.com/a.png",
        author_alt=None,
        verdict="missing",
        status="done",
        caption=DOG,
        text="",
        alt=DOG,
        alt_from="caption",
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
    assert data[0]["caption"] == data[0]["alt"] == 'A "dog", running\nin a park.'
    assert data[0]["author_alt"] is None and data[1]["verdict"] is None
    assert data[0]["text"] == "" and data[1]["text"] is None and data[1]["warnings"] == []
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
        'A "dog", running\nin a park.',
        "caption",
        "",
        "",
        "",
    ]
    assert table[3] == ["https://example.com/c", "", "", "", "skipped"] + [""] * 7
    assert len(table) == 4


def test_csv_keeps_the_lines_of_a_text_and_lists_the_warnings() -> None:
    row = make_row(
        page_url=None,
        image_url="https://example.com/sign.png",
        status="done",
        caption="A sign.",
        text="OPEN\n9 to 5",
        alt="A sign. Appears to say: OPEN 9 to 5",
        alt_from="caption_and_text",
        warnings=["ocr_timeout", "another"],
    )
    (header, cells) = list(csv.reader(io.StringIO(render("csv", [row]), newline="")))
    named = dict(zip(header, cells, strict=True))
    assert named["text"] == "OPEN\n9 to 5" and named["warnings"] == "ocr_timeout another"
    assert json.loads(render("json", [row]))[0]["warnings"] == ["ocr_timeout", "another"]


@pytest.mark.parametrize(
    "cell", ['=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
)
def test_csv_neutralises_spreadsheet_formulas(cell: str) -> None:
    row = make_row(page_url="p", image_url="i", author_alt=cell, verdict="ok", status="skipped")
    table = list(csv.reader(io.StringIO(render("csv", [row]), newline="")))
    assert table[1][2] == "'" + cell
    assert json.loads(render("json", [row]))[0]["author_alt"] == cell  # JSON keeps it as is


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
    assert content_type("html").startswith("text/html")
    assert format_for_path("report.html") == "html"
    with pytest.raises(UnknownFormat):
        content_type("xml")


def test_make_row_takes_the_error_code_and_message_from_an_error() -> None:
    from captioner.crawl.urls import BlockedAddress

    row = make_row(page_url=None, image_url="u", status="failed", error=BlockedAddress("nope"))
    assert (row["error_code"], row["error_message"]) == ("blocked_address", "nope")
    assert tuple(row) == RESULT_FIELDS


# --- the HTML report --------------------------------------------------------------------------

HOSTILE = [
    *ROWS,
    make_row(
        page_url="https://example.com/a",
        image_url="javascript:alert(1)",
        author_alt='<script>alert("alt")</script>',
        verdict="meaningless",
        status="done",
        caption="A <b>bold</b> claim & more.",
        text="<i>Sale</i>\n50% off",
        alt="A <b>bold</b> claim & more. Appears to say: <i>Sale</i> 50% off",
        alt_from="caption_and_text",
        warnings=[],
    ),
    make_row(
        page_url="https://example.com/a",
        image_url="https://example.com/empty.png",
        author_alt="",
        verdict="empty_link",
        status="skipped",
        error_code="no_caption",
        error_message="the model found nothing readable to say about this image",
    ),
]


def html_report(rows=HOSTILE, language: str | None = "en", patched=None) -> BeautifulSoup:
    out = io.StringIO()
    write_rows(rows, "html", out, language=language, patched=patched)
    return BeautifulSoup(out.getvalue(), "html.parser")


def test_html_report_is_a_page_per_site_page_with_headed_tables() -> None:
    soup = html_report()
    assert soup.html["lang"] == "en" and soup.title.string == "AltCap report"
    assert soup.find("h1").get_text() == "AltCap report"
    summary = " ".join(soup.find(id="summary").get_text().split())
    assert summary.startswith("4 images: 2 with a suggested alt text, 1 failed, 1 skipped.")
    assert " ".join(soup.find(id="pages").get_text().split()) == "1 page was skipped."
    found = [li.get_text() for li in soup.find(id="verdicts").find_all("li")]
    assert found == [
        f"{VERDICT_LABELS['missing']}: 1",
        f"{VERDICT_LABELS['meaningless']}: 1",
        f"{VERDICT_LABELS['empty_link']}: 1",
    ]  # rows without a verdict (image addresses, pages) are not counted there
    # one section per page, in report order, each headed and labelled by its heading
    headings = [" ".join(h.get_text().split()) for h in soup.find_all("h2")]
    assert headings == [
        "Page: https://example.com/a",  # once, with its rows from later in the report too
        NO_PAGE,
        "Page: https://example.com/c",
    ]
    for section in soup.find_all("section"):
        assert section.find("h2")["id"] == section["aria-labelledby"]
    tables = soup.find_all("table")
    assert [len(t.tbody.find_all("tr")) for t in tables] == [3, 1]  # page c: no image
    assert [t.caption.get_text() for t in tables] == ["3 images", "1 image"]
    for table in tables:
        assert [th["scope"] for th in table.thead.find_all("th")] == ["col"] * 7
        assert all(tr.find("th")["scope"] == "row" for tr in table.tbody.find_all("tr"))
    first = [" ".join(td.get_text().split()) for td in tables[0].tbody.tr.find_all(["th", "td"])]
    assert first == [
        "https://example.com/a.png",
        "",
        VERDICT_LABELS["missing"],
        "(none)",
        'A "dog", running in a park.',
        "(none)",  # the text read: none
        "Described",
    ]
    # the picture beside it, as decoration: the row's text says what it is
    picture = tables[0].tbody.img
    assert picture["src"] == "https://example.com/a.png" and picture["alt"] == ""
    failed = [td.get_text() for td in tables[1].tbody.find_all("td")]
    assert failed[-1] == "Failed: the image server answered HTTP 404"
    assert failed[2] == ""  # an image address given directly: its alt is not known
    page_c = soup.find_all("section")[2]
    assert page_c.find("table") is None and page_c.p.get_text() == "Skipped"


def test_html_report_says_pages_that_were_not_read_apart_from_images() -> None:
    """A page robots.txt keeps crawlers out of showed a red "Failed" in a section titled
    "1 image": it is a page skipped by politeness, said as such, and no image."""
    secret, gone = "https://example.com/private/", "https://example.com/gone"
    rows = [
        ROWS[0],
        make_row(
            page_url=secret,
            image_url=None,
            status="skipped",
            error_code="robots_disallowed",
            error_message=f"robots.txt disallows {secret}",
        ),
        make_row(
            page_url=gone,
            image_url=None,
            status="failed",
            error_code="fetch_failed",
            error_message="the server answered HTTP 404",
        ),
    ]
    soup = html_report(rows)
    summary = " ".join(soup.find(id="summary").get_text().split())
    assert summary.startswith("1 image: 1 with a suggested alt text, 0 failed, 0 skipped.")
    assert " ".join(soup.find(id="pages").get_text().split()) == (
        "1 page was skipped, as the site's robots.txt asks. 1 page could not be read."
    )
    sections = soup.find_all("section")
    assert [s.find("table") is not None for s in sections] == [True, False, False]
    skipped, failed = sections[1].p, sections[2].p
    assert skipped.get_text() == f"Skipped, as the site asks: robots.txt disallows {secret}"
    assert "failed" not in skipped["class"]
    assert failed.get_text() == "Failed: the server answered HTTP 404"
    assert failed["class"] == ["failed"]
    assert html_report(ROWS[:1]).find(id="pages") is None  # every page read: nothing to say
    # JSON and CSV say it in the row: status skipped, code robots_disallowed
    assert json.loads(render("json", rows))[1]["status"] == "skipped"


def test_html_report_escapes_what_page_authors_wrote() -> None:
    soup = html_report()
    assert soup.find("script") is None and soup.find("b") is None
    rows = soup.find_all("table")[0].tbody.find_all("tr")[1:]  # page a's later rows
    cells = [td.get_text() for td in rows[0].find_all("td")]
    assert cells[2] == '<script>alert("alt")</script>'
    assert cells[3] == "A <b>bold</b> claim & more. Appears to say: <i>Sale</i> 50% off"
    assert cells[4] == "<i>Sale</i>\n50% off" and "said" in rows[0].find_all("td")[4]["class"]
    # only http(s) addresses become links or pictures
    assert rows[0].find("a") is None and rows[0].find("img") is None
    assert all(a["href"].startswith("https://") for a in soup.find_all("a"))
    assert [td.get_text() for td in rows[1].find_all("td")][2:] == [
        "(empty)",
        "",
        "",
        "Skipped: the model found nothing readable to say about this image",
    ]


def test_html_report_marks_suggestions_in_another_language() -> None:
    assert html_report(language="en").find(attrs={"lang": "de"}) is None
    assert len(html_report(language="en").find_all(attrs={"lang": True})) == 1  # <html> only
    german = html_report(language="de")
    marked = german.find_all("td", attrs={"lang": "de"})
    assert [td.get_text() for td in marked] == [
        'A "dog", running\nin a park.',
        "A <b>bold</b> claim & more. Appears to say: <i>Sale</i> 50% off",
    ]  # the suggestions only, not the empty ones
    assert html_report([], language="de").find("table") is None  # no rows: the summary alone


def test_html_report_links_pages_to_their_patched_copies() -> None:
    soup = html_report(patched={"https://example.com/a": "patched/1-a.html"})
    sections = soup.find_all("section")
    links = [s.find("a", string="The page with these suggestions filled in") for s in sections]
    # page a's section links to its copy; the image addresses and page c have none
    assert [a["href"] if a else None for a in links] == ["patched/1-a.html", None, None]
    assert html_report().find(string="The page with these suggestions filled in") is None


def test_every_verdict_has_words_in_the_html_report() -> None:
    assert tuple(VERDICT_LABELS) == VERDICTS  # the summary's order: most urgent first


def test_html_report_says_why_a_text_was_not_read() -> None:
    row = make_row(
        page_url=None,
        image_url="https://example.com/sign.png",
        status="done",
        caption="A sign.",
        alt="A sign.",
        alt_from="caption",
        warnings=["ocr_timeout"],
    )
    cells = [td.get_text() for td in html_report([row]).tbody.find_all("td")]
    assert cells[3:] == ["A sign.", "", "Described; reading the text in it took too long"]
    assert set(WARNING_LABELS) == {OcrError.code, OcrTimeout.code, OcrUnavailable.code}
