"""A batch of images to caption, from a source to report rows: the steps that the batch CLI
(``captioner.cli.batch``) and the jobs queue (``captioner.jobs.queue``) share.

A site owner points it at image URLs, pages or a sitemap and gets a report of the images that
lack useful alt text, each with a suggested description, and optionally patched copies of the
pages:

    source ──page_urls──▶ pages ──plan──▶ rows (pending / skipped / failed)
           ──caption_rows──▶ rows done (caption, text, alt) or failed
           ──patched_pages──▶ HTML with alt filled in

Author alts that say something are captioned too when the run checks them (``check_alts``,
models with CLIP's text tower: a caption per image with such an alt, the same cost as one
without), so that those that do not match their image get the verdict ``suspect_alt``
(``captioner.jobs.rows``).

Rows are images, except one row (``image_url`` None) for each page or sitemap that was not
read: ``failed`` with its error, or ``skipped`` with ``robots_disallowed`` where the site's
robots.txt keeps crawlers out (politeness, not a failure). The summaries count pages apart
from images (``captioner.jobs.reports.page_counts``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from captioner.alttext import MAX_ALT_CHARS
from captioner.config import DecodingSettings
from captioner.crawl.crawler import Crawler
from captioner.crawl.fetch import fetch_image
from captioner.crawl.pages import MODES, RobotsDisallowed, find_images, needs_caption, patch_html
from captioner.crawl.urls import FetchLimits, Resolver
from captioner.describe import AltRule
from captioner.errors import AltCapError, InvalidSettings
from captioner.images import load_image
from captioner.jobs.reading import Describer, cancel
from captioner.jobs.rows import DESCRIBED, PENDING, checked_alt, finished, make_row

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MAX_PAGES",
    "InvalidSource",
    "PageResult",
    "Plan",
    "Source",
    "alt_groups",
    "caption_rows",
    "page_urls",
    "patchable",
    "patched_name",
    "patched_pages",
    "plan",
]

DEFAULT_MAX_PAGES = 100
DEFAULT_MAX_IMAGES = 1000
DOWNLOAD_WORKERS = 4  # images downloaded at once while the model works on a batch

Progress = Callable[[int], None]  # called with the number of items just finished


class InvalidSource(AltCapError):
    code = "invalid_source"


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
    check_alts: bool = False,
) -> Plan:
    """Crawl the source's pages and decide, row by row, what needs a caption.

    Rows of images that need one are ``pending``, and with ``check_alts`` those whose
    author alt says something (``rows.checked_alt``), to check it; others are ``skipped``;
    a page that cannot be fetched is one ``failed`` row without an image (``skipped`` with
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
        fields = dict(page_url=page_url, image_url=image_url, author_alt=alt, verdict=verdict)
        checks = check_alts and checked_alt(fields) is not None
        if not (needs_caption(verdict, mode) or checks):
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
    describer: Describer | None = None,
    mode: str = "missing",
    check_alts: bool = False,
    include_low_confidence: bool = False,
) -> dict[str, str]:
    """Download, read and caption every distinct image of the ``pending`` rows, and finish
    those rows in place: ``done`` (or ``low_confidence``) with caption, text and alt
    (``reading.Describer``), ``skipped`` with ``no_caption`` when there is nothing to say,
    or ``failed`` with the download or decode error. A text that could not be read is a
    warning of the row. With ``check_alts`` each author alt that says something is checked
    in the same pass (``rows.finished``, as ``mode`` planned the rows).

    Images are fetched with the service's SSRF-safe ``fetch_image`` a few at a time, the
    next batch while the model captions this one, and captioned in batches of
    ``batch_size``; their text is read meanwhile, on the describer's threads. Without a
    ``describer`` no text is read and alt is the caption, at most ``max_alt_chars``.
    Returns image URL -> alt of those done (and ``low_confidence`` with
    ``include_low_confidence``), what ``patch_html`` takes.
    """
    if batch_size < 1:
        raise InvalidSettings("batch_size must be >= 1")
    if describer is None:
        describer = Describer(rule=AltRule(max_chars=max_alt_chars))
    by_url: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == PENDING:
            by_url.setdefault(row["image_url"], []).append(row)
    patchable_statuses = DESCRIBED if include_low_confidence else {"done"}
    alts: dict[str, str] = {}
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
                    _finish(by_url[url], mode, status="failed", error=outcome)
                else:
                    good.append((url, outcome))
            if good:
                # one caption per image and author alt to check (rarely more than one)
                units = [
                    (url, image, alt, group)
                    for url, image in good
                    for alt, group in alt_groups(by_url[url], check_alts)
                ]
                reading = [describer.submit(im) for _, im in good]  # beside the model
                checked = [alt for _, _, alt, _ in units]
                try:
                    pixels = captioner.preprocess([im for _, im, _, _ in units])
                    if any(alt is not None for alt in checked):
                        results = captioner.caption_pixels(pixels, settings, alts=checked)
                    else:
                        results = captioner.caption_pixels(pixels, settings)
                except AltCapError as exc:  # the whole batch shares the failure
                    cancel(reading)
                    for url, _ in good:
                        _finish(by_url[url], mode, status="failed", error=exc)
                except BaseException:
                    cancel(reading)
                    raise
                else:
                    texts = {
                        url: describer.collect(future)
                        for (url, _), future in zip(good, reading, strict=True)
                    }
                    for (url, _, _, group), result in zip(units, results, strict=True):
                        text, warning = texts[url]
                        outcome = describer.fields(
                            result.text,
                            text,
                            warning,
                            confidence=getattr(result, "confidence", None),
                            alt_check=getattr(result, "alt_check", None),
                        )
                        _finish(group, mode, **outcome)
                        if outcome["status"] in patchable_statuses:
                            alts.setdefault(url, outcome["alt"])
            if progress:
                progress(len(chunk))
    return alts


def alt_groups(
    rows: Sequence[dict[str, Any]], check_alts: bool
) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """One image's pending rows by the author alt its caption checks (None: none), so that
    it is captioned once per distinct alt to check: the rows that check none go with the
    first. Without ``check_alts``, one group of them all."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(checked_alt(row) if check_alts else None, []).append(row)
    unchecked = groups.pop(None, [])
    if not groups:
        return [(None, unchecked)]
    first = next(iter(groups))
    groups[first] = [*groups[first], *unchecked]
    return list(groups.items())


def _finish(rows: Iterable[dict[str, Any]], mode: str, **outcome: Any) -> None:
    error = outcome.pop("error", None)
    if error is not None:
        outcome.update(error_code=error.code, error_message=error.message)
    for row in rows:
        row.update(finished(row, outcome, mode))


# --- patched pages ------------------------------------------------------------------


def patched_name(index: int, url: str) -> str:
    """``<n>-<slug>.html`` for a page: the number keeps names unique, the slug readable."""
    path = urlsplit(url).path
    path = re.sub(r"\.(s?html?|php|aspx?)$", "", path, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")[:60].strip("-")
    return f"{index}-{slug or 'index'}.html"


def patched_pages(
    pages: Iterable[PageResult], alts: Mapping[str, str], language: str | None = None
) -> Iterator[tuple[PageResult, str]]:
    """(page, its HTML with the suggested alt filled in) for every page that was fetched:
    ``alts`` is image URL -> alt (``caption_rows``'); ``language``: the captions' (see
    ``patch_html``)."""
    for page in pages:
        if patchable(page):
            yield page, patch_html(page.html, str(page.final_url), alts, language)


def patchable(page: PageResult) -> bool:
    """Fetched, so it has a patched copy."""
    return page.html is not None and page.final_url is not None
