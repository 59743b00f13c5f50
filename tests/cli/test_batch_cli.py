"""``python -m captioner batch`` end to end: the test site, the tiny model, real reports."""

from __future__ import annotations

import csv
import io
import json
import re
import time

import pytest
from bs4 import BeautifulSoup
from testsite import INDEX_HTML, LATIN1_HTML, SALE_TEXT, SIGN_TEXT, TEXT_HTML, serve_site

from captioner.alttext import alt_text
from captioner.cli import progress as progress_module
from captioner.cli.batch import summary_line
from captioner.cli.main import main
from captioner.cli.progress import ProgressLines
from captioner.describe import describe
from captioner.jobs.plan import patched_name
from captioner.jobs.rows import CSV_FIELDS, page_counts

ALT_ATTR = re.compile(r"""\s+alt\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+)""", re.IGNORECASE)
METADATA_URL = "http://169.254.169.254/latest/logo.png"
FIELDS = [
    "page_url",
    "image_url",
    "author_alt",
    "verdict",
    "status",
    "caption",
    "text",
    "alt",
    "alt_from",
    "confidence",
    "confident",
    "alt_check",
    "warnings",
    "error_code",
    "error_message",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny random model without CLIP's text tower: these tests are of the plumbing, where
    a random text tower's confidences are noise (every caption would be low_confidence).
    Confidence and alt checks: test_trust_cli.py, with the trained demo model."""
    from captioner.model.checkpoints import save_pretrained
    from captioner.model.tiny import tiny_tokenizer_and_model

    tokenizer, model = tiny_tokenizer_and_model("mlp", seed=0, text_tower=False)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("tiny-no-text-tower"))


@pytest.fixture(scope="module")
def tiny_captioner(tiny_dir):
    from captioner import Captioner

    captioner = Captioner.from_pretrained(str(tiny_dir), device="cpu")
    assert not captioner.can_score
    return captioner


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with serve_site(tmp_path_factory.mktemp("site")) as site:
        yield site


@pytest.fixture(scope="module")
def caption_of(site, tiny_captioner):
    """The tiny model's caption of a site image, computed apart from the batch code, as
    alt text (the tiny model's captions run past ``MAX_ALT_CHARS``)."""
    cache: dict[str, str] = {}

    def caption(path: str) -> str:
        if path not in cache:
            cache[path] = alt_text(tiny_captioner.caption(site.image_bytes(path))[0].text)
        return cache[path]

    return caption


def neutral(value: str | None) -> str:
    """A value as a CSV cell: empty for None, formulas behind a quote mark."""
    if value is None:
        return ""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def batch(tiny_dir, *args: str) -> int:
    return main(["batch", "--model", str(tiny_dir), "--device", "cpu", "--no-progress", *args])


def test_sitemap_to_csv_report_and_patched_pages(
    site, tiny_dir, caption_of, tmp_path, capsys
) -> None:
    out, patched = tmp_path / "report.csv", tmp_path / "patched"
    readable = tmp_path / "reports" / "report.html"
    rc = batch(
        tiny_dir,
        "--sitemap",
        site.url("sitemap_index.xml"),
        "--allow-private",
        "--delay",
        "0",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--out",
        str(readable),
        "--patched-dir",
        str(patched),
    )
    assert rc == 0
    # the page to read links each fetched page's section to its patched copy, relatively
    soup = BeautifulSoup(readable.read_text(encoding="utf-8"), "html.parser")
    links = {
        " ".join(s.h2.get_text().split()): s.find("a", string=re.compile("filled in"))
        for s in soup.find_all("section")
    }
    hrefs = {h: a["href"] for h, a in links.items() if a is not None}
    assert sorted(hrefs.values()) == [
        "../patched/1-index.html", "../patched/2-blog-post.html", "../patched/4-latin1.html"
    ]  # fmt: skip
    assert all((readable.parent / href).is_file() for href in hrefs.values())
    # the page robots.txt keeps crawlers out of is skipped, not failed: no table of images
    secret_url = site.url("private/secret.html")
    (secret_section,) = [s for s in soup.find_all("section") if secret_url in s.h2.get_text()]
    assert secret_section.find("table") is None and secret_section.find(class_="failed") is None
    assert secret_section.find("p").get_text() == (
        f"Skipped, as the site asks: robots.txt disallows {secret_url}"
    )
    pages_said = " ".join(soup.find(id="pages").get_text().split())
    assert pages_said == (
        "1 page was skipped, as the site's robots.txt asks. 3 pages could not be read."
    )  # notes.txt, gone.html and the broken sitemap
    summary = " ".join(soup.find(id="summary").get_text().split())
    assert summary.startswith("22 images: 13 with a suggested alt text, 3 failed, 6 skipped.")
    # the CLI counts pages apart from images, and says where the files went
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"wrote the csv report to {out}",
        f"wrote the html report to {readable}",
        f"wrote 3 patched pages to {patched}/",
        "6 pages (1 skipped by robots.txt, 2 failed), 1 sitemap not read, "
        "22 images: 13 done, 3 failed, 6 skipped; "
        "by verdict: 11 missing, 5 meaningless, 3 ok, 3 decorative",
    ]
    index, post, secret, latin, notes, gone = (
        site.url(p)
        for p in [
            "index.html",
            "blog/post.html",
            "private/secret.html",
            "latin1.html",
            "notes.txt",
            "gone.html",
        ]
    )

    def done(page, path, alt, verdict):  # a plain picture: no text in it, alt is the caption
        c = caption_of(path)
        scores = [None] * 4  # confidence, confident, alt_check_*: no text tower
        return [page, site.url(path), alt, verdict, "done", c, "", c, "caption", *scores, "",
                None, None]  # fmt: skip

    def skipped(page, path, alt, verdict):
        return [page, site.url(path), alt, verdict, "skipped", *[None] * 11]

    def failed(page, image, code, message, verdict="missing"):
        verdict = verdict if image else None
        return [page, image, None, verdict, "failed", *[None] * 9, code, message]

    red = "A red square on a white wall"
    expected = [
        failed(site.url("sitemap-broken.xml"), None, "fetch_failed",
               "the server answered HTTP 404"),
        done(index, "img/missing.png", None, "missing"),
        skipped(index, "img/empty.png", "", "decorative"),
        done(index, "img/word.png", "image", "meaningless"),
        done(index, "img/filename.png", "IMG_1234.jpg", "meaningless"),
        done(index, "img/photo.png", "photo", "meaningless"),
        skipped(index, "img/good.png", red, "ok"),
        skipped(index, "img/presentation.png", None, "decorative"),
        skipped(index, "img/hidden.png", None, "decorative"),
        skipped(index, "img/labelled.png", None, "ok"),
        done(index, "img/w-large.png", None, "missing"),
        done(index, "img/x2.png", "picture", "meaningless"),
        done(index, "img/lazy.png", None, "missing"),
        done(index, "img/pic-large.png", None, "missing"),
        done(index, "img/go.png", None, "missing"),
        failed(index, site.url("img/broken.png"), "fetch_failed",
               "the image server answered HTTP 404"),
        failed(index, METADATA_URL, "blocked_address",
               "refusing to fetch from 169.254.169.254: blocked address "
               "(link-local (cloud metadata))"),
        failed(index, site.url("img/notanimage.png"), "unsupported_image",
               "the data is not an image in a supported format "
               "(AVIF, BMP, GIF, JPEG, PNG, TIFF, WEBP)"),
        done(post, "assets/cat.png", None, "missing"),
        skipped(post, "img/good.png", red, "ok"),
        done(post, "img/missing.png", None, "missing"),  # captioned once, reported per page
        done(post, "assets/dog.png", "spacer", "meaningless"),
        [secret, None, None, None, "skipped", *[None] * 9, "robots_disallowed",
         f"robots.txt disallows {secret}"],  # politeness, not a failure
        done(latin, "latin/caf.png", None, "missing"),
        failed(notes, None, "not_html",
               f"{notes} is not an HTML page: expected text/html or application/xhtml+xml, "
               "got text/plain"),
        failed(gone, None, "fetch_failed", "the server answered HTTP 404"),
    ]  # fmt: skip
    with out.open(newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == list(CSV_FIELDS)
    assert table[1:] == [[neutral(v) for v in row] for row in expected]

    # Patched copies of the pages that could be fetched, named <n>-<slug>.html.
    assert sorted(p.name for p in patched.iterdir()) == [
        "1-index.html",
        "2-blog-post.html",
        "4-latin1.html",
    ]
    page = (patched / "1-index.html").read_text(encoding="utf-8")
    assert ALT_ATTR.sub("", page) == ALT_ATTR.sub("", INDEX_HTML)
    c = caption_of
    alts = [
        t.get("alt")
        for t in BeautifulSoup(page, "html.parser").find_all(["img", "input"])
        if t.get("type") != "text"
    ]
    assert alts == [
        c("img/missing.png"), "", c("img/word.png"), c("img/filename.png"), c("img/photo.png"),
        red, None, None, None, c("img/w-large.png"), c("img/x2.png"), c("img/lazy.png"),
        c("img/pic-large.png"), c("img/go.png"), "", c("img/word.png"),
        None, None, None, None, None, None,  # data:, javascript:, the three failures, template
    ]  # fmt: skip

    # The index page says lang="en", as the captions are: no lang added there. This page
    # says no language: its image is marked as English, the captions' language.
    raw = (patched / "4-latin1.html").read_bytes()  # still ISO-8859-1, as its <meta> says
    text = raw.decode("iso-8859-1")
    assert ALT_ATTR.sub("", text).replace(' lang="en"', "", 1) == LATIN1_HTML
    img = BeautifulSoup(text, "html.parser").img
    assert img["alt"] == c("latin/caf.png") and img["lang"] == "en"


def test_image_list_to_json(site, tiny_dir, caption_of, tmp_path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "# images to describe\n"
        f"{site.url('img/good.png')}\n\n"
        f"  {site.url('assets/cat.png')}  \n"
        f"{site.url('img/good.png')}\n"
        f"{site.url('nope.png')}\n"
        "ftp://example.com/a.png\n"
    )
    out = tmp_path / "report.json"
    assert batch(tiny_dir, "--images", str(urls), "--allow-private", "--out", str(out)) == 0
    rows = json.loads(out.read_text())
    good, cat = caption_of("img/good.png"), caption_of("assets/cat.png")
    assert [list(r.values()) for r in rows] == [
        [None, site.url("img/good.png"), None, None, "done", good, "", good, "caption",
         None, None, None, [], None, None],
        [None, site.url("assets/cat.png"), None, None, "done", cat, "", cat, "caption",
         None, None, None, [], None, None],
        [None, site.url("nope.png"), None, None, "failed", None, None, None, None,
         None, None, None, [], "fetch_failed", "the image server answered HTTP 404"],
        [None, "ftp://example.com/a.png", None, None, "failed", None, None, None, None,
         None, None, None, [], "invalid_url", "only http and https URLs can be fetched"],
    ]  # fmt: skip
    assert all(list(r) == FIELDS for r in rows)

    # several reports of one run, each in its suffix's format: a page to read, and CSV
    page, table = tmp_path / "report.html", tmp_path / "report.csv"
    args = ["--images", str(urls), "--allow-private", "--out", str(page), "--out", str(table)]
    assert batch(tiny_dir, *args) == 0
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    suggestions = [caption_of("img/good.png"), caption_of("assets/cat.png"), "", ""]
    assert [td.get_text() for td in soup.select("tbody td:nth-of-type(4)")] == suggestions
    with table.open(newline="", encoding="utf-8") as f:
        assert [row["alt"] for row in csv.DictReader(f)] == suggestions


def test_private_addresses_are_refused_unless_allowed(site, tiny_dir, capsys) -> None:
    site.requests.clear()
    assert batch(tiny_dir, "--pages", site.url("index.html"), "--format", "jsonl") == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["page_url"], row["status"], row["error_code"]) == (
        site.url("index.html"),
        "failed",
        "blocked_address",
    )
    # the message names the way out (the service's names the operators' setting instead)
    assert row["error_message"] == (
        "refusing to fetch from 127.0.0.1: blocked address (loopback); "
        "give --allow-private to audit a site on this machine or an intranet"
    )
    assert site.requests == []


def test_csv_neutralises_formulas_from_page_authors(site, tiny_dir, tmp_path, capsys) -> None:
    site.routes["/formula.html"] = (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        b"<img src='/img/good.png' alt='=HYPERLINK(\"http://evil.test\",\"x\")'>"
        b"<img src='/img/empty.png' alt='@SUM(A1:A2) total'>",
    )
    args = ["--pages", site.url("formula.html"), "--allow-private", "--delay", "0"]
    assert batch(tiny_dir, *args) == 0
    table = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert [row[2] for row in table[1:]] == [
        '\'=HYPERLINK("http://evil.test","x")',
        "'@SUM(A1:A2) total",
    ]
    assert [row[4] for row in table[1:]] == ["skipped", "skipped"]


def test_a_page_the_parser_rejects_is_one_failed_row(site, tiny_dir, caption_of, tmp_path) -> None:
    # Review finding: bs4's ParserRejectedMarkup escaped as a traceback and lost the run.
    site.routes["/malformed.html"] = (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        b"<p>Hello</p><![foo <img src=/img/missing.png>",
    )
    site.routes["/fine.html"] = (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        b"<p>Fine</p><img src=/img/photo.png alt=photo>",
    )
    bad, fine = site.url("malformed.html"), site.url("fine.html")
    out, patched = tmp_path / "report.jsonl", tmp_path / "patched"
    args = ["--pages", bad, fine, "--allow-private", "--delay", "0", "--out", str(out)]
    assert batch(tiny_dir, *args, "--patched-dir", str(patched)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["page_url"], r["image_url"], r["status"], r["error_code"]) for r in rows] == [
        (bad, None, "failed", "invalid_html"),
        (fine, site.url("img/photo.png"), "done", None),
    ]
    assert rows[0]["error_message"] == f"{bad} is HTML the parser cannot read"
    assert rows[1]["caption"] == caption_of("img/photo.png")
    assert sorted(p.name for p in patched.iterdir()) == ["2-fine.html"]


def test_the_report_folder_is_created_up_front(site, tiny_dir, tmp_path) -> None:
    out = tmp_path / "new" / "deeper" / "report.csv"
    args = ["--pages", site.url("fine-too.html"), "--allow-private", "--delay", "0"]
    assert batch(tiny_dir, *args, "--out", str(out)) == 0
    table = list(csv.reader(out.read_text().splitlines()))
    assert table[1][:5] == [site.url("fine-too.html"), "", "", "", "failed"]


@pytest.mark.parametrize("where", ["under-a-file", "a-directory", "patched-under-a-file"])
def test_an_unusable_output_fails_before_any_work(site, tiny_dir, tmp_path, capsys, where) -> None:
    (tmp_path / "file").write_text("not a directory")
    out = {
        "under-a-file": ["--out", str(tmp_path / "file" / "report.csv")],
        "a-directory": ["--out", str(tmp_path)],
        "patched-under-a-file": ["--patched-dir", str(tmp_path / "file" / "patched")],
    }[where]
    site.requests.clear()
    args = ["--pages", site.url("index.html"), "--allow-private", "--delay", "0", *out]
    # a model that does not exist: the output check must come before loading it
    assert main(["batch", "--model", str(tmp_path / "no-model"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid_output: ")
    assert site.requests == []


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--pages", "http://127.0.0.1:1/", "--max-pages", "0"], "invalid_settings"),
        (["--pages", "http://127.0.0.1:1/", "--delay", "-1"], "invalid_settings"),
        (["--images", "/nonexistent/urls.txt"], "invalid_source"),
        (["--pages", "http://127.0.0.1:1/", "--max-tokens", "0"], "invalid_settings"),
        (
            ["--pages", "http://x/", "--format", "json", "--out", "a", "--out", "b"],
            "invalid_settings",
        ),
        (["--pages", "http://x/", "--out", "-", "--out", "-"], "invalid_settings"),
        (["--sitemap", "http://127.0.0.1:1/sitemap.xml", "--allow-private"], "fetch_failed"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tiny_dir, capsys, args, code) -> None:
    assert batch(tiny_dir, *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {code}: ")


def test_a_source_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["batch", "--out", "x.csv"])
    assert info.value.code == 2
    assert "one of the arguments --images --pages --sitemap is required" in capsys.readouterr().err


def test_the_summary_counts_pages_apart_from_images() -> None:
    """A page robots.txt keeps crawlers out of was "10 rows: … 1 failed", counted as an
    image: pages are counted apart, and that one as skipped by robots.txt."""
    rows = [
        {"image_url": "a.png", "status": "done", "verdict": "missing"},
        {"image_url": "b.png", "status": "done", "verdict": "empty_link"},
        {"image_url": "c.png", "status": "skipped", "verdict": "decorative"},
        {"image_url": None, "status": "failed", "verdict": None},  # a page that failed
        {"image_url": None, "status": "skipped", "verdict": None},  # robots.txt: keep out
        {"image_url": "a.png", "status": "done", "verdict": "missing"},
    ]
    pages = page_counts([None, None, "fetch_failed", "robots_disallowed"])
    assert pages == {"total": 4, "read": 2, "skipped": 1, "failed": 1}
    assert summary_line(rows, pages) == (
        "4 pages (1 skipped by robots.txt, 1 failed), 4 images: 3 done, 0 failed, 1 skipped; "
        "by verdict: 2 missing, 1 empty_link, 1 decorative"
    )
    assert summary_line(rows[:1], page_counts([None])) == (
        "1 page, 1 image: 1 done, 0 failed, 0 skipped; by verdict: 1 missing"
    )
    assert summary_line([{"image_url": "x", "status": "done", "verdict": None}]) == (
        "1 image: 1 done, 0 failed, 0 skipped"  # image URLs: no pages, no verdicts
    )


def test_a_log_gets_progress_lines_and_where_the_files_went(
    site, tiny_dir, tmp_path, capsys, monkeypatch
) -> None:
    """With stderr no terminal (cron, CI, a log file) the run printed its last line only:
    now progress lines at a steady interval (the first one early) per phase, then where
    the report and the patched pages went, then the summary."""
    monkeypatch.setattr(progress_module, "FIRST_PROGRESS_S", 0.0)
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY_S", 0.1)
    out, patched = tmp_path / "reports" / "report.csv", tmp_path / "patched"
    pages = [site.url(p) for p in ("index.html", "blog/post.html", "private/secret.html")]
    args = ["batch", "--model", str(tiny_dir), "--device", "cpu", "--pages", *pages]
    args += ["--allow-private", "--delay", "0.3", "--max-tokens", "4"]  # 4 requests, 0.3 s apart
    assert main([*args, "--out", str(out), "--patched-dir", str(patched)]) == 0
    err = capsys.readouterr().err.splitlines()
    phase = [line for line in err if line.startswith("pages: ")]
    assert len(phase) >= 4, err  # a line at once, then every 0.1 s of a crawl of about 1 s
    assert any(re.fullmatch(r"pages: 1/3, [\d.]+ pages/s, about \d+ s left, \d+ s so far", line)
               for line in phase), phase  # fmt: skip
    assert re.fullmatch(r"pages: 3/3 in \d+ s, [\d.]+ pages/s", phase[-1])
    images = [line for line in err if line.startswith("images: ")]
    assert images and re.fullmatch(r"images: 14/14 in \d+ s, [\d.]+ images/s", images[-1])
    assert err.index(phase[-1]) < err.index(images[0])
    assert err[-3:] == [
        f"wrote the csv report to {out}",
        f"wrote 2 patched pages to {patched}/",
        "3 pages (1 skipped by robots.txt), 21 images: 12 done, 3 failed, 6 skipped; "
        "by verdict: 10 missing, 5 meaningless, 3 ok, 3 decorative",
    ]

    # --no-progress: no progress lines, still where the files went and the summary
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0] == f"wrote the csv report to {out}"


def test_progress_lines_say_count_rate_and_time_left() -> None:
    now = [100.0]
    out = io.StringIO()
    with ProgressLines("images", "image", 1000, out=out, first_s=60, clock=lambda: now[0]) as p:
        assert p.line() == "images: 0/1000, 0 s so far"
        now[0] += 20
        p.update(50)
        assert p.line() == "images: 50/1000, 2.5 images/s, about 6 min 20 s left, 20 s so far"
        now[0] += 3580
        p.update(950)
    assert out.getvalue() == "images: 1000/1000 in 1 h, 16.7 images/min\n"  # only the last
    slow = ProgressLines("pages", "page", out=out, first_s=60, clock=lambda: now[0])
    now[0] += 60
    slow.update(3)
    assert slow.line() == "pages: 3, 3.0 pages/min, 1 min so far"  # a sitemap not read yet
    slow.close(final=False)  # the phase failed: the error says the rest


def test_progress_lines_come_at_a_steady_interval_whatever_the_work_does() -> None:
    out = io.StringIO()
    with ProgressLines("images", "image", 10, out=out, first_s=0.05, every_s=0.1):
        time.sleep(0.42)  # one long model batch: no update at all
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 6, lines
    assert all(line.startswith("images: 0/10, ") for line in lines[:-1])
    assert lines[-1] == "images: 0/10 in 0 s"


def test_a_job_counts_pages_apart_and_the_robots_page_as_skipped(
    site, tiny_captioner, tmp_path
) -> None:
    """Batch jobs plan with ``batch.plan``: the page robots.txt keeps crawlers out of is a
    skipped row in their counts too, and their status counts pages apart."""
    from captioner.jobs.backends import CaptionerBackend
    from captioner.jobs.consumer import start_consumer
    from captioner.jobs.queue import JobQueue
    from captioner.jobs.request import parse_job
    from captioner.serve.settings import Settings

    settings = Settings.load(
        {},
        {
            "DATA_DIR": tmp_path / "data",
            "ALLOW_PRIVATE_NETWORKS": True,
            "CRAWL_DELAY_S": 0,
            "MODEL": "tiny",
        },
    )
    queue = JobQueue(settings)
    try:
        start_consumer(queue, CaptionerBackend(tiny_captioner), workers=1)
        pages = [site.url(p) for p in ("blog/post.html", "private/secret.html", "gone.html")]
        spec = parse_job({"pages": pages, "decoding": {"max_tokens": 4}}, settings)
        job, _ = queue.submit(spec)
        stop = time.monotonic() + 60
        while (status := queue.status(job["id"]))["state"] not in ("done", "failed"):
            assert time.monotonic() < stop, status
            time.sleep(0.05)
        assert status["state"] == "done"
        assert status["page_counts"] == {"total": 3, "read": 1, "skipped": 1, "failed": 1}
        assert status["counts"] == {"total": 6, "done": 3, "failed": 1, "skipped": 2}
        secret = [r for r in queue.rows(job["id"]) if r["page_url"] == pages[1]]
        assert [(r["status"], r["error_code"]) for r in secret] == [
            ("skipped", "robots_disallowed")
        ]
    finally:
        queue.close(timeout=5)


def test_patched_names() -> None:
    assert patched_name(1, "https://a.test/") == "1-index.html"
    assert patched_name(7, "https://a.test/Blog/My Post.HTML?x=1") == "7-blog-my-post.html"
    assert patched_name(3, "https://a.test/a/b.php") == "3-a-b.html"
    assert len(patched_name(12, "https://a.test/" + "x" * 500)) <= len("12-.html") + 60


def test_an_image_the_model_has_nothing_readable_for_is_skipped(site) -> None:
    """A caption that cleaned to "" is no suggestion: the row is ``skipped`` with
    ``no_caption``, not ``done`` with an empty caption, and nothing is patched with it."""
    from captioner.crawl.urls import FetchLimits
    from captioner.jobs.plan import caption_rows
    from captioner.jobs.rows import PENDING, make_row
    from captioner.model.processing import preprocess

    class Result:
        def __init__(self, text: str) -> None:
            self.text = text

    class Silent:  # says nothing for the green image, something for the others
        def preprocess(self, images):
            return preprocess(images, image_size=8)

        def caption_pixels(self, pixels, settings):
            green = pixels[:, 1].mean(dim=(1, 2)) > pixels[:, 0].mean(dim=(1, 2))
            return [Result("" if g else "A red square.") for g in green.tolist()]

    urls = [f"{site.base}/img/missing.png", f"{site.base}/img/empty.png"]
    rows = [make_row(page_url=None, image_url=u, status=PENDING) for u in urls]
    captions = caption_rows(rows, Silent(), limits=FetchLimits(allow_private=True))
    assert [(r["status"], r["caption"], r["error_code"]) for r in rows] == [
        ("done", "A red square.", None),
        ("skipped", None, "no_caption"),
    ]
    assert "nothing readable" in rows[1]["error_message"]
    assert captions[urls[0]] == "A red square."


def test_images_of_text_get_their_text_as_alt(site, tiny_dir, tiny_captioner, tmp_path) -> None:
    """Issue 22: the text in images is read (the real Tesseract) beside the captioning; an
    image of text gets its text as alt, a picture with text its caption and then the text,
    in every report and in the patched page."""
    reports = [tmp_path / f"report.{fmt}" for fmt in ("json", "csv", "html")]
    patched = tmp_path / "patched"
    args = ["--pages", site.url("text.html"), "--allow-private", "--delay", "0"]
    args += ["--max-tokens", "4", "--patched-dir", str(patched)]
    assert batch(tiny_dir, *args, *(a for r in reports for a in ("--out", str(r)))) == 0

    def caption(path: str) -> str:
        return alt_text(tiny_captioner.caption(site.image_bytes(path), max_tokens=4)[0].text)

    sale, shop, plain = caption("img/sale.png"), caption("img/shop.png"), caption("img/missing.png")
    shop_alt = describe(shop, SIGN_TEXT, False)["alt"]
    assert shop_alt == f"{shop.rstrip('.')}. Appears to say: {SIGN_TEXT}"
    want = [  # image, author_alt, verdict, caption, text, alt, alt_from
        ("img/sale.png", None, "missing", sale, SALE_TEXT, SALE_TEXT, "text"),
        ("img/shop.png", "photo", "meaningless", shop, SIGN_TEXT, shop_alt, "caption_and_text"),
        ("img/missing.png", None, "missing", plain, "", plain, "caption"),
    ]
    rows = json.loads(reports[0].read_text(encoding="utf-8"))
    assert [list(r) for r in rows] == [FIELDS] * 3
    assert [
        (r["image_url"], r["author_alt"], r["verdict"], r["caption"], r["text"], r["alt"],
         r["alt_from"], r["status"], r["warnings"])
        for r in rows
    ] == [(site.url(w[0]), *w[1:], "done", []) for w in want]  # fmt: skip

    with reports[1].open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [(r["caption"], r["text"], r["alt"], r["alt_from"]) for r in table] == [
        (c, t, a, f) for _, _, _, c, t, a, f in want
    ]

    soup = BeautifulSoup(reports[2].read_text(encoding="utf-8"), "html.parser")
    heads = [th.get_text() for th in soup.select("thead th")]
    assert heads[4:6] == ["Suggested alt", "Text in the image"]
    cells = [[td.get_text() for td in tr.find_all("td")] for tr in soup.select("tbody tr")]
    assert [(c[3], c[4], c[5]) for c in cells] == [
        (SALE_TEXT, SALE_TEXT, "Described"),
        (shop_alt, SIGN_TEXT, "Described"),
        (plain, "(none)", "Described"),
    ]

    page = (patched / "1-text.html").read_text(encoding="utf-8")
    alts = [img.get("alt") for img in BeautifulSoup(page, "html.parser").find_all("img")]
    assert alts == [SALE_TEXT, shop_alt, plain]
    assert ALT_ATTR.sub("", page) == ALT_ATTR.sub("", TEXT_HTML)


def test_no_read_text_leaves_the_text_out(site, tiny_dir, tmp_path) -> None:
    out = tmp_path / "report.jsonl"
    args = ["--pages", site.url("text.html"), "--allow-private", "--delay", "0"]
    assert batch(tiny_dir, *args, "--max-tokens", "4", "--no-read-text", "--out", str(out)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["text"], r["alt_from"], r["warnings"]) for r in rows] == [(None, "caption", [])] * 3
    assert all(r["alt"] == r["caption"] for r in rows)


def test_a_text_that_takes_too_long_is_a_warning_not_a_failure(
    site, tiny_dir, tmp_path, monkeypatch
) -> None:
    """Past ALTCAP_OCR_TIMEOUT_S the row is done with its caption as alt and the warning
    ``ocr_timeout``; the reader is slowed down, its output is its own."""
    from captioner.read.reader import TextReader

    read = TextReader.read

    def slow_read(self, image, timeout_s=None):
        time.sleep(1.0)
        return read(self, image, timeout_s=timeout_s)

    monkeypatch.setattr(TextReader, "read", slow_read)
    monkeypatch.setenv("ALTCAP_OCR_TIMEOUT_S", "0.2")
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    args = ["--images", "-", "--allow-private", "--max-tokens", "4"]
    monkeypatch.setattr("sys.stdin", io.StringIO(site.url("img/sale.png") + "\n"))
    assert batch(tiny_dir, *args, "--out", str(out), "--out", str(page)) == 0
    (row,) = json.loads(out.read_text())
    assert (row["status"], row["text"], row["alt"], row["alt_from"], row["warnings"]) == (
        "done",
        None,
        row["caption"],
        "caption",
        ["ocr_timeout"],
    )
    status = BeautifulSoup(page.read_text(), "html.parser").select("tbody td")[-1].get_text()
    assert status == "Described; reading the text in it took too long"
