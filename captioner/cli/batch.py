"""Batch captioning without a server: ``python -m captioner batch``.

A site owner points it at image URLs, pages or a sitemap and gets a report of the images that
lack useful alt text, each with a suggested description, and optionally patched copies of the
pages. The steps are the jobs API's, as plain functions the jobs queue reuses:

    source ──page_urls──▶ pages ──plan──▶ rows (pending / skipped / failed)
           ──caption_rows──▶ rows done or failed ──patched_pages──▶ HTML with alt filled in

Rows are images, except one row (``image_url`` None) for each page or sitemap that was not
read: ``failed`` with its error, or ``skipped`` with ``robots_disallowed`` where the site's
robots.txt keeps crawlers out (politeness, not a failure). The summaries count pages apart
from images (``page_counts``, ``summary_line``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from captioner.alttext import MAX_ALT_CHARS, alt_text
from captioner.cli.progress import progress
from captioner.cliopts import add_decoding_arguments, add_device_arguments, decoding_from_args
from captioner.config import DecodingSettings
from captioner.crawl.fetch import FetchLimits, Resolver, fetch_image
from captioner.crawl.pages import (
    MODES,
    VERDICTS,
    Crawler,
    RobotsDisallowed,
    find_images,
    needs_caption,
    patch_html,
)
from captioner.errors import AltCapError, InvalidSettings
from captioner.images import load_image
from captioner.jobs.reports import (
    FORMATS,
    STATUSES,
    caption_outcome,
    format_for_path,
    make_row,
    write_rows,
)

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MAX_PAGES",
    "InvalidOutput",
    "InvalidSource",
    "PageResult",
    "Plan",
    "Source",
    "caption_rows",
    "page_counts",
    "page_urls",
    "patched_name",
    "patched_pages",
    "plan",
    "register",
    "run",
    "summary_line",
    "verdict_counts",
]

DEFAULT_MAX_PAGES = 100
DEFAULT_MAX_IMAGES = 1000
PENDING = "pending"  # a row waiting for its caption; never in a finished report
DOWNLOAD_WORKERS = 4  # images downloaded at once while the model works on a batch
ROBOTS = RobotsDisallowed.code  # a page's error code when robots.txt keeps crawlers out
# How the batch CLI says it may reach loopback and private addresses (see FetchLimits).
ALLOW_PRIVATE_HINT = "give --allow-private to audit a site on this machine or an intranet"

Progress = Callable[[int], None]  # called with the number of items just finished


class InvalidSource(AltCapError):
    code = "invalid_source"


class InvalidOutput(AltCapError):
    """The report or the patched pages cannot be written where the user asked."""

    code = "invalid_output"


@dataclass(frozen=True)
class Source:
    """What to caption: exactly one of image URLs, page URLs or a sitemap URL."""

    images: tuple[str, ...] = ()
    pages: tuple[str, ...] = ()
    sitemap: str | None = None

    def __post_init__(self) -> None:
        given = [bool(self.images), bool(self.pages), bool(self.sitemap)]
        if sum(given) != 1:
            raise InvalidSource("give exactly one of images, pages or sitemap")

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Source:
        """The source part of a job's JSON body: ``{"images": [...]}``, ``{"pages": [...]}``
        or ``{"sitemap": "..."}`` (other keys are the caller's to check)."""
        kinds = [k for k in ("images", "pages", "sitemap") if body.get(k) not in (None, [], "")]
        if len(kinds) != 1:
            raise InvalidSource("give exactly one of images, pages or sitemap")
        kind = kinds[0]
        value = body[kind]
        if kind == "sitemap":
            if not isinstance(value, str):
                raise InvalidSource("sitemap must be a URL string")
            return cls(sitemap=value)
        if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
            raise InvalidSource(f"{kind} must be a list of URL strings")
        return cls(**{kind: tuple(value)})


@dataclass
class PageResult:
    """One crawled page of a job. ``index`` (1-based) names its patched copy."""

    index: int
    url: str
    final_url: str | None = None
    html: str | None = None
    encoding: str = "utf-8"
    error: AltCapError | None = None


@dataclass
class Plan:
    pages: list[PageResult] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # reports.RESULT_FIELDS each

    @property
    def todo(self) -> list[str]:
        """The distinct image URLs still to caption, in report order."""
        return list(dict.fromkeys(r["image_url"] for r in self.rows if r["status"] == PENDING))


# --- planning -----------------------------------------------------------------------


def page_urls(
    source: Source, crawler: Crawler, max_pages: int = DEFAULT_MAX_PAGES
) -> tuple[list[str], list[dict[str, Any]]]:
    """The pages to crawl (at most ``max_pages``, deduplicated), and a failed row for each
    sitemap of an index that could not be read. A broken top sitemap raises its error."""
    if source.sitemap:
        crawl = crawler.crawl_sitemap(source.sitemap, max_pages)
        return crawl.pages, [_unread(url, err) for url, err in crawl.errors]
    return list(dict.fromkeys(source.pages))[:max_pages], []


def _unread(url: str, error: AltCapError) -> dict[str, Any]:
    """The row of a page or sitemap that was not read: ``skipped`` where robots.txt keeps
    crawlers out (the crawler's politeness, not a failure of the page), else ``failed``."""
    status = "skipped" if isinstance(error, RobotsDisallowed) else "failed"
    return make_row(page_url=url, image_url=None, status=status, error=error)


def plan(
    source: Source,
    crawler: Crawler,
    *,
    mode: str = "missing",
    max_pages: int = DEFAULT_MAX_PAGES,
    max_images: int = DEFAULT_MAX_IMAGES,
    progress: Progress | None = None,
    counted: Callable[[int], None] | None = None,
) -> Plan:
    """Crawl the source's pages and decide, row by row, what needs a caption.

    Rows of images that need one are ``pending``; others are ``skipped``; a page that
    cannot be fetched is one ``failed`` row without an image (``skipped`` with
    ``robots_disallowed`` where robots.txt keeps crawlers out). One image on several pages
    is one caption but a row per page. Past ``max_images`` distinct images to caption,
    new ones are ``skipped`` with ``error_code`` ``max_images``. ``counted``, if given, is
    called once with the number of pages to crawl, before the first.
    """
    if mode not in MODES:
        raise InvalidSettings(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if max_pages < 1 or max_images < 1:
        raise InvalidSettings("max_pages and max_images must be >= 1")
    result = Plan()
    wanted: set[str] = set()

    def add(page_url: str | None, image_url: str, alt: str | None, verdict: str | None) -> None:
        fields = dict(page_url=page_url, image_url=image_url, alt=alt, verdict=verdict)
        if not needs_caption(verdict, mode):
            result.rows.append(make_row(**fields, status="skipped"))
        elif image_url in wanted or len(wanted) < max_images:
            wanted.add(image_url)
            result.rows.append(make_row(**fields, status=PENDING))
        else:
            message = f"the job already has {max_images} images to caption (max_images)"
            result.rows.append(
                make_row(**fields, status="skipped", error_code="max_images", error_message=message)
            )

    if source.images:
        for url in dict.fromkeys(source.images):
            add(None, url, None, None)
        return result

    urls, unread = page_urls(source, crawler, max_pages)
    result.rows.extend(unread)
    if counted:
        counted(len(urls))
    for index, url in enumerate(urls, start=1):
        page = PageResult(index, url)
        result.pages.append(page)
        try:
            fetched = crawler.fetch_page(url)
            images = find_images(fetched.html, fetched.final_url)  # invalid_html: this page only
        except AltCapError as exc:
            page.error = exc
            result.rows.append(_unread(url, exc))
        else:
            page.final_url, page.html, page.encoding = (
                fetched.final_url,
                fetched.html,
                fetched.encoding,
            )
            for image in images:
                add(url, image.image_url, image.alt, image.verdict)
        if progress:
            progress(1)
    return result


# --- captioning ---------------------------------------------------------------------


def _download(url: str, limits: FetchLimits, resolver: Resolver | None, max_pixels: int):
    """A decoded image, or the error that stopped it (kept for the report)."""
    try:
        return load_image(fetch_image(url, limits, resolver=resolver).data, max_pixels=max_pixels)
    except AltCapError as exc:
        return exc


def caption_rows(
    rows: Sequence[dict[str, Any]],
    captioner: Any,
    settings: DecodingSettings | None = None,
    *,
    limits: FetchLimits,
    batch_size: int = 32,
    resolver: Resolver | None = None,
    progress: Progress | None = None,
    max_alt_chars: int = MAX_ALT_CHARS,
) -> dict[str, str]:
    """Download and caption every distinct image of the ``pending`` rows, and finish those
    rows (``done`` with a caption, ``skipped`` with ``no_caption`` when it cleaned to nothing,
    or ``failed`` with the download or decode error) in place. A row's caption is alt text:
    ``alttext.alt_text``, at most ``max_alt_chars``.

    Images are fetched with the service's SSRF-safe ``fetch_image`` a few at a time, the
    next batch while the model captions this one, and captioned in batches of
    ``batch_size``. Returns image URL -> caption of those done, what ``patch_html`` takes.
    """
    if batch_size < 1:
        raise InvalidSettings("batch_size must be >= 1")
    by_url: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == PENDING:
            by_url.setdefault(row["image_url"], []).append(row)
    captions: dict[str, str] = {}
    urls = list(by_url)
    max_pixels = getattr(captioner, "max_pixels", 40_000_000)
    chunks = [urls[i : i + batch_size] for i in range(0, len(urls), batch_size)]
    with ThreadPoolExecutor(DOWNLOAD_WORKERS, thread_name_prefix="altcap-download") as pool:

        def fetch(chunk: list[str]) -> list[Future]:
            return [pool.submit(_download, u, limits, resolver, max_pixels) for u in chunk]

        ahead = fetch(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            loaded = [f.result() for f in ahead]
            # the next batch downloads while the model works on this one
            ahead = fetch(chunks[k + 1]) if k + 1 < len(chunks) else []
            good = []
            for url, outcome in zip(chunk, loaded, strict=True):
                if isinstance(outcome, AltCapError):
                    _finish(by_url[url], status="failed", error=outcome)
                else:
                    good.append((url, outcome))
            if good:
                try:
                    pixels = captioner.preprocess([im for _, im in good])
                    results = captioner.caption_pixels(pixels, settings)
                except AltCapError as exc:  # the whole batch shares the failure
                    for url, _ in good:
                        _finish(by_url[url], status="failed", error=exc)
                else:
                    for (url, _), result in zip(good, results, strict=True):
                        alt = alt_text(result.text, max_alt_chars)
                        outcome = caption_outcome(alt)
                        _finish(by_url[url], **outcome)
                        if outcome["status"] == "done":
                            captions[url] = alt
            if progress:
                progress(len(chunk))
    return captions


def _finish(rows: Iterable[dict[str, Any]], **outcome: Any) -> None:
    error = outcome.pop("error", None)
    for row in rows:
        row.update(outcome)
        if error is not None:
            row["error_code"], row["error_message"] = error.code, error.message


# --- patched pages ------------------------------------------------------------------


def patched_name(index: int, url: str) -> str:
    """``<n>-<slug>.html`` for a page: the number keeps names unique, the slug readable."""
    path = urlsplit(url).path
    path = re.sub(r"\.(s?html?|php|aspx?)$", "", path, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")[:60].strip("-")
    return f"{index}-{slug or 'index'}.html"


def patched_pages(
    pages: Iterable[PageResult], captions: Mapping[str, str], language: str | None = None
) -> Iterator[tuple[PageResult, str]]:
    """(page, its HTML with the suggested alt filled in) for every page that was fetched;
    ``language``: the captions' (see ``patch_html``)."""
    for page in pages:
        if _patchable(page):
            yield page, patch_html(page.html, str(page.final_url), captions, language)


def _patchable(page: PageResult) -> bool:
    """Fetched, so it has a patched copy."""
    return page.html is not None and page.final_url is not None


# --- the CLI ------------------------------------------------------------------------


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
    p.add_argument("--batch-size", type=int, default=32)
    add_decoding_arguments(p)
    add_device_arguments(p)
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
        if _patchable(page)
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
    import io

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

    cap = Captioner.from_pretrained(args.model, device=args.device, dtype=args.dtype)
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
        )
    with progress(show if job.todo else "none", "images", "image", len(job.todo)) as bar:
        captions = caption_rows(
            job.rows,
            cap,
            settings,
            limits=limits,
            batch_size=args.batch_size,
            progress=bar.update,
        )

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
        for page, text in patched_pages(job.pages, captions, cap.language):
            _write_text(out_dir / patched_name(page.index, page.url), text, page.encoding)
            copies += 1
        wrote.append(f"wrote {_count(copies, 'patched page')} to {out_dir.resolve()}{os.sep}")

    codes = (p.error.code if p.error else None for p in job.pages)
    pages = None if source.images else page_counts(codes)
    for line in [*wrote, summary_line(job.rows, pages)]:
        print(line, file=sys.stderr)
    return 0


# --- progress and summaries ---------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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


def summary_line(rows: Sequence[Mapping[str, Any]], pages: Mapping[str, int] | None = None) -> str:
    """What the CLI says at the end: the pages (``page_counts``; None for image URLs), the
    images by status, then by verdict::

        3 pages (1 skipped by robots.txt), 12 images: 9 done, 1 failed, 2 skipped; by ...
    """
    images = [r for r in rows if r.get("image_url") is not None]
    counts = {s: sum(r["status"] == s for r in images) for s in STATUSES}
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
