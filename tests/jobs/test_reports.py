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
from captioner.jobs.html_report import NO_PAGE, STATUS_LABELS, VERDICT_LABELS, WARNING_LABELS
from captioner.jobs.reports import UnknownFormat, content_type, format_for_path, write_rows
from captioner.jobs.rows import (
    CSV_FIELDS,
    DESCRIBED,
    RESULT_FIELDS,
    STATUSES,
    checked_alt,
    described,
    finished,
    make_row,
    verdict_counts,
    with_suspect_alts,
)

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
    assert table[0] == list(CSV_FIELDS)
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
        "",  # confidence, confident, alt_check_score, alt_check_verdict: no text tower
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    assert table[3] == ["https://example.com/c", "", "", "", "skipped"] + [""] * 11
    assert len(table) == 4


def scored_rows() -> list[dict]:
    """Rows of a model with a text tower: a confident caption, one that is not, a suspect
    author alt and one that matches."""
    cap = "A red circle on a white background."
    described = {"caption": cap, "alt": cap, "alt_from": "caption", "text": None}
    page, image = "https://example.com/p", "https://example.com/{}.png"
    return [
        make_row(
            page_url=page,
            image_url=image.format(1),
            verdict="missing",
            status="done",
            confidence=0.97,
            confident=True,
            **described,
        ),
        make_row(
            page_url=page,
            image_url=image.format(2),
            verdict="missing",
            status="low_confidence",
            confidence=0.31,
            confident=False,
            **described,
        ),
        make_row(
            page_url=page,
            image_url=image.format(3),
            author_alt="A blue star on a white background.",
            verdict="suspect_alt",
            status="done",
            confidence=0.97,
            confident=True,
            alt_check={"score": -2.5, "verdict": "suspect"},
            **described,
        ),
        make_row(
            page_url=page,
            image_url=image.format(4),
            author_alt=cap,
            verdict="ok",
            status="skipped",
            caption=cap,
            confidence=0.97,
            confident=True,
            alt_check={"score": 1.0, "verdict": "matches"},
        ),
    ]


def test_scores_in_every_format() -> None:
    """confidence and confident are columns everywhere; alt_check an object in JSON, two
    columns in CSV (alt_check_score, alt_check_verdict); confident true/false in CSV too."""
    rows = scored_rows()
    data = json.loads(render("json", rows))
    assert [(r["confidence"], r["confident"], r["alt_check"]) for r in data] == [
        (0.97, True, None),
        (0.31, False, None),
        (0.97, True, {"score": -2.5, "verdict": "suspect"}),
        (0.97, True, {"score": 1.0, "verdict": "matches"}),
    ]
    table = list(csv.DictReader(io.StringIO(render("csv", rows), newline="")))
    assert [
        (r["status"], r["confident"], r["alt_check_score"], r["alt_check_verdict"]) for r in table
    ] == [
        ("done", "true", "", ""),
        ("low_confidence", "false", "", ""),
        ("done", "true", "-2.5", "suspect"),
        ("skipped", "true", "1.0", "matches"),
    ]
    assert "alt_check" not in table[0]


def test_html_report_shows_confidence_alt_checks_and_low_confidence() -> None:
    soup = html_report(scored_rows())
    heads = [th.get_text() for th in soup.thead.find_all("th")]
    assert heads[-3:] == ["Confidence", "Alt check", "Status"]
    cells = [[td.get_text() for td in tr.find_all("td")] for tr in soup.tbody.find_all("tr")]
    assert [c[-3:] for c in cells] == [
        ["0.97", "", "Described"],
        ["0.31 (low)", "", STATUS_LABELS["low_confidence"]],
        ["0.97", "May not match (-2.50)", "Described"],
        ["0.97", "Matches (1.00)", "Skipped"],
    ]
    assert cells[2][1] == VERDICT_LABELS["suspect_alt"]
    summary = " ".join(soup.find(id="summary").get_text().split())
    assert summary.startswith(
        "4 images: 2 with a suggested alt text, 1 with a low-confidence suggestion to check,"
        " 0 failed, 1 skipped."
    )
    verdicts = [li.get_text() for li in soup.find(id="verdicts").find_all("li")]
    assert verdicts[1] == f"{VERDICT_LABELS['suspect_alt']}: 1"  # after missing: more urgent
    # a model without a text tower: no such columns
    assert "Confidence" not in [th.get_text() for th in html_report().thead.find_all("th")]


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


def test_a_caption_that_is_not_confident_is_low_confidence_unless_the_alt_is_text() -> None:
    cap = {"caption": "A cat.", "text": None, "alt": "A cat.", "alt_from": "caption"}
    assert described(cap, confidence=0.9, confident=True)["status"] == "done"
    assert described(cap, confidence=0.2, confident=False)["status"] == "low_confidence"
    assert described(cap)["status"] == "done"  # no text tower: nothing to doubt
    text = {**cap, "text": "SALE", "alt": "SALE", "alt_from": "text"}
    assert described(text, confidence=0.2, confident=False)["status"] == "done"
    assert set(DESCRIBED) == {"done", "low_confidence"} and set(DESCRIBED) < set(STATUSES)


def test_an_author_alt_check_decides_the_verdict_row_by_row() -> None:
    cap = {"caption": "A cat.", "text": None, "alt": "A cat.", "alt_from": "caption"}
    suspect = {"score": 0.1, "verdict": "suspect"}
    matches = {"score": 0.9, "verdict": "matches"}
    ok = make_row(page_url="p", image_url="i", author_alt="A dog.", verdict="ok", status="")
    missing = make_row(page_url="q", image_url="i", verdict="missing", status="")
    row = finished(ok, described(cap, confidence=0.9, confident=True, alt_check=suspect), "missing")
    assert (row["verdict"], row["status"], row["alt"]) == ("suspect_alt", "done", "A cat.")
    row = finished(ok, described(cap, confidence=0.9, confident=True, alt_check=matches), "missing")
    assert (row["verdict"], row["status"], row["alt"], row["alt_check"]) == (
        "ok",
        "skipped",  # captioned for the check only: the author's alt stays, nothing to suggest
        None,
        matches,
    )
    row = finished(ok, described(cap, confidence=0.9, confident=True, alt_check=matches), "all")
    assert (row["verdict"], row["status"], row["alt"]) == ("ok", "done", "A cat.")
    # the same image on another page, without an alt: the check is not its own
    row = finished(
        missing, described(cap, confidence=0.9, confident=True, alt_check=suspect), "missing"
    )
    assert (row["verdict"], row["status"], row["alt_check"]) == ("missing", "done", None)
    assert checked_alt(ok) == "A dog." and checked_alt(missing) is None
    assert VERDICTS.index("suspect_alt") < VERDICTS.index("ok")  # more urgent than ok


def test_a_jobs_verdict_counts_take_the_suspect_alts_out_of_ok() -> None:
    verdicts = ["missing", "ok", "ok", "missing", "decorative", "ok"]
    rows = [make_row(page_url="p", image_url="i", verdict=v, status="") for v in verdicts]
    planned = verdict_counts(rows)  # as the page scan counts them: no suspect_alt
    assert with_suspect_alts(planned, 0) == planned
    rows[2]["verdict"] = "suspect_alt"  # the alt check's, when its image is captioned
    moved = with_suspect_alts(planned, 1)
    assert moved == verdict_counts(rows)
    assert moved == {"missing": 2, "suspect_alt": 1, "ok": 2, "decorative": 1}
    assert list(moved) == ["missing", "suspect_alt", "ok", "decorative"]  # VERDICTS order
    assert with_suspect_alts(planned, 3) == {"missing": 2, "suspect_alt": 3, "decorative": 1}
    assert with_suspect_alts(planned, 9)["suspect_alt"] == 3  # never more than were ok
    assert with_suspect_alts({}, 2) == {}  # image URLs: no verdicts
    assert planned == {"missing": 2, "ok": 3, "decorative": 1}  # not changed in place


def test_a_job_counts_low_confidence_rows_as_done() -> None:
    from captioner.jobs.store.base import _counts

    rows = dict(enumerate([{"status": s} for s in ("done", "low_confidence", "failed", "skipped")]))
    assert _counts(rows) == (2, 1, 1)
