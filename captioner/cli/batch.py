"""Batch captioning without a server: ``python -m captioner batch``.

The steps are ``captioner.jobs.plan``'s (the jobs queue runs the same ones); this module
reads the command line, shows progress, writes the reports and patched pages, and says what
it did (``summary_line``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from captioner.cli.progress import progress
from captioner.cliopts import (
    add_decoding_arguments,
    add_device_arguments,
    add_reading_arguments,
    decoding_from_args,
)
from captioner.crawl.crawler import Crawler
from captioner.crawl.pages import MODES
from captioner.crawl.urls import FetchLimits
from captioner.errors import AltCapError, InvalidSettings
from captioner.jobs.plan import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PAGES,
    InvalidSource,
    PageResult,
    Source,
    caption_rows,
    patchable,
    patched_name,
    patched_pages,
    plan,
)
from captioner.jobs.reading import Describer
from captioner.jobs.reports import FORMATS, format_for_path, write_rows
from captioner.jobs.rows import STATUSES, page_counts, verdict_counts
from captioner.serve.settings import Settings

__all__ = ["InvalidOutput", "register", "run", "summary_line"]

# How the batch CLI says it may reach loopback and private addresses (see FetchLimits).
ALLOW_PRIVATE_HINT = "give --allow-private to audit a site on this machine or an intranet"


class InvalidOutput(AltCapError):
    """The report or the patched pages cannot be written where the user asked."""

    code = "invalid_output"


# --- the command ------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``batch`` to ``python -m captioner``."""
    p = subparsers.add_parser(
        "batch",
        help="report images without useful alt text on pages, a sitemap or a URL list",
        description=__doc__.splitlines()[0],
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="FILE", help="file of image URLs, one a line (- stdin)")
    src.add_argument("--pages", nargs="+", metavar="URL", help="pages to crawl")
    src.add_argument("--sitemap", metavar="URL", help="sitemap or sitemap index (.xml, .xml.gz)")
    p.add_argument("--model", default="clipcap-coco", help="model name, directory or Hub id")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="missing",
        help='missing: images with missing or meaningless alt, and alt="" on an image '
        "that is all a link holds; all: every image but decorative ones",
    )
    p.add_argument(
        "--out",
        action="append",
        help="report file (.csv, .json, .jsonl, .html); - stdout (the default); give it "
        "several times for several reports of one run, each in its suffix's format",
    )
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        default=None,
        help="report format (default: from --out's suffix, else csv; with one --out only)",
    )
    p.add_argument("--patched-dir", metavar="DIR", help="write DIR/<n>-<slug>.html per page")
    p.add_argument("--max-pages", type=int, default=DEFAULT_MAX_PAGES)
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help="distinct images captioned at most",
    )
    p.add_argument(
        "--delay",
        type=float,
        default=1.0,
        help="seconds between two requests to one host (pages, sitemaps)",
    )
    p.add_argument("--ignore-robots", action="store_true", help="do not read robots.txt")
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="allow loopback and private addresses (intranet sites)",
    )
    p.add_argument(
        "--no-check-alts",
        dest="check_alts",
        action="store_false",
        help="do not check author alts against their images (a model with CLIP's text tower"
        " checks each alt that says something, at the cost of a caption per such image)",
    )
    p.add_argument(
        "--include-low-confidence",
        action="store_true",
        help="patched pages also get alts from captions below ALTCAP_MIN_CONFIDENCE"
        " (reported as low_confidence; left out by default)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    add_decoding_arguments(p)
    add_device_arguments(p)
    add_reading_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines on stderr")
    p.set_defaults(func=run)


def _read_url_list(path: str) -> tuple[str, ...]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSource(f"cannot read the image list {path}: {exc}") from None
    lines = (line.strip() for line in text.splitlines())
    urls = tuple(line for line in lines if line and not line.startswith("#"))
    if not urls:
        raise InvalidSource(f"the image list {path} has no URLs")
    return urls


def _output_dir(path: Path, what: str) -> None:
    """Create ``path`` (a directory, with its parents) or say in one line why not.

    Called at start-up for the report's folder and ``--patched-dir``, so a typo costs
    nothing instead of a whole crawl and captioning run."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidOutput(f"cannot create the {what} directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidOutput(f"the {what} directory {path} is not writable")


def _reports(outs: list[str], fmt: str | None) -> list[tuple[str, str]]:
    """(where, format) of each report ``--out`` asks for: ``--format``, else the file's
    suffix, else csv."""
    if fmt is not None and len(outs) > 1:
        raise InvalidSettings(
            "--format goes with one --out; with several, each file's suffix says its format"
        )
    if outs.count("-") > 1:
        raise InvalidSettings("--out - (stdout) may be given once")
    return [(out, fmt or format_for_path(out)) for out in outs]


def _patched_links(pages: Iterable[PageResult], out_dir: Path, report: str) -> dict[str, str]:
    """Page URL -> the address of its patched copy, relative to the report (``-``: to the
    working directory), for the HTML report's links."""
    here = Path(report).parent if report != "-" else Path()
    return {
        page.url: quote(
            Path(os.path.relpath(out_dir / patched_name(page.index, page.url), here)).as_posix()
        )
        for page in pages
        if patchable(page)
    }


def _check_out(out: str) -> None:
    """``--out`` must be writable before any work: its folder is created (as
    ``--patched-dir`` is) and it must not be a directory itself."""
    if out == "-":
        return
    path = Path(out)
    if path.is_dir():
        raise InvalidOutput(f"--out {out} is a directory, not a report file")
    _output_dir(path.parent, "report")


def _write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write through a temp file and rename: a report is never half-written."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InvalidOutput(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding=encoding, errors="xmlcharrefreplace", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidOutput(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run(args: argparse.Namespace) -> int:
    """The ``batch`` subcommand: crawl, caption, report. Failed images are report rows, not
    a failed command; only a source that cannot be used at all exits non-zero.

    Progress goes to stderr: bars on a terminal, else ``ProgressLines`` (cron, CI, a log
    file), none with ``--no-progress``; then where the files went and the summary line."""
    # torch and transformers: loaded when the command runs, not for `--help`
    from captioner.pipeline import Captioner

    if args.max_pages < 1 or args.max_images < 1:
        raise InvalidSettings("--max-pages and --max-images must be >= 1")
    if args.delay < 0:
        raise InvalidSettings("--delay must not be negative")
    if args.images:
        source = Source(images=_read_url_list(args.images))
    else:
        source = Source(pages=tuple(args.pages or ()), sitemap=args.sitemap)
    reports = _reports(args.out or ["-"], args.format)
    settings = decoding_from_args(args)
    for out, _ in reports:
        _check_out(out)  # before any work: a bad path must not cost a whole crawl
    out_dir = Path(args.patched_dir) if args.patched_dir else None
    if out_dir is not None:
        _output_dir(out_dir, "--patched-dir")

    # ALTCAP_OCR*, ALTCAP_MAX_ALT_CHARS, ALTCAP_MIN_CONFIDENCE, ALTCAP_ALT_MATCH_SCORE: as
    # the service
    service = Settings.load(os.environ)
    cap = Captioner.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    cap.alt_match_score = service.alt_match_score
    check_alts = args.check_alts and cap.can_score  # no text tower: nothing to check with
    describer = Describer.open(
        service, cap.language, read_text=args.read_text, langs=args.ocr_langs
    )
    limits = FetchLimits(allow_private=args.allow_private, allow_private_hint=ALLOW_PRIVATE_HINT)
    crawler = Crawler(limits, delay_s=args.delay, respect_robots=not args.ignore_robots)
    show = "none" if args.no_progress else "bars" if sys.stderr.isatty() else "lines"

    with progress("none" if source.images else show, "pages", "page") as bar:
        job = plan(
            source,
            crawler,
            mode=args.mode,
            max_pages=args.max_pages,
            max_images=args.max_images,
            progress=bar.update,
            counted=lambda n: setattr(bar, "total", n),
            check_alts=check_alts,
        )
    with progress(show if job.todo else "none", "images", "image", len(job.todo)) as bar:
        try:
            alts = caption_rows(
                job.rows,
                cap,
                settings,
                limits=limits,
                batch_size=args.batch_size,
                progress=bar.update,
                describer=describer,
                mode=args.mode,
                check_alts=check_alts,
                include_low_confidence=args.include_low_confidence,
            )
        finally:
            describer.close()

    wrote = []
    for out, fmt in reports:
        buf = io.StringIO()
        linked = fmt == "html" and out_dir is not None  # the only report that links pages
        links = _patched_links(job.pages, out_dir, out) if linked else None
        write_rows(job.rows, fmt, buf, language=cap.language, patched=links)
        if out == "-":
            sys.stdout.write(buf.getvalue())
        else:
            _write_text(Path(out), buf.getvalue())
            wrote.append(f"wrote the {fmt} report to {Path(out).resolve()}")
    if out_dir is not None:
        copies = 0
        for page, text in patched_pages(job.pages, alts, cap.language):
            _write_text(out_dir / patched_name(page.index, page.url), text, page.encoding)
            copies += 1
        wrote.append(f"wrote {_count(copies, 'patched page')} to {out_dir.resolve()}{os.sep}")

    codes = (p.error.code if p.error else None for p in job.pages)
    pages = None if source.images else page_counts(codes)
    for line in [*wrote, summary_line(job.rows, pages)]:
        print(line, file=sys.stderr)
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary_line(rows: Sequence[Mapping[str, Any]], pages: Mapping[str, int] | None = None) -> str:
    """What the CLI says at the end: the pages (``page_counts``; None for image URLs), the
    images by status, then by verdict::

        3 pages (1 skipped by robots.txt), 12 images: 9 done, 1 failed, 2 skipped; by ...

    ``low_confidence`` is counted after ``done`` when there are any.
    """
    images = [r for r in rows if r.get("image_url") is not None]
    counts = {s: sum(r["status"] == s for r in images) for s in STATUSES}
    if not counts["low_confidence"]:  # only said where a model with a text tower found some
        del counts["low_confidence"]
    line = f"{_count(len(images), 'image')}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    if pages is not None:
        unread = [
            f"{pages['skipped']} skipped by robots.txt" if pages["skipped"] else "",
            f"{pages['failed']} failed" if pages["failed"] else "",
        ]
        said = ", ".join(u for u in unread if u)
        head = _count(pages["total"], "page") + (f" ({said})" if said else "")
        sitemaps = len(rows) - len(images) - pages["skipped"] - pages["failed"]
        if sitemaps > 0:  # rows of the sitemaps of an index that could not be read
            head += f", {_count(sitemaps, 'sitemap')} not read"
        line = f"{head}, {line}"
    if verdicts := verdict_counts(rows):
        line += "; by verdict: " + ", ".join(f"{n} {v}" for v, n in verdicts.items())
    return line
