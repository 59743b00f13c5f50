"""Crawling a site politely: robots.txt, a pace per origin, pages and sitemaps fetched with
``captioner.crawl.fetch``; what it finds is judged by ``captioner.crawl.pages``."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protego import Protego

from captioner.crawl.fetch import HTML_TYPES, fetch_document
from captioner.crawl.pages import (
    InvalidSitemap,
    NotHTML,
    RobotsDisallowed,
    _decode,
    _resolve,
)
from captioner.crawl.politeness import Pacer, origin_of
from captioner.crawl.sitemaps import parse_sitemap
from captioner.crawl.urls import (
    DEFAULT_LIMITS,
    FetchLimits,
    HTTPStatusError,
    Resolver,
    TooLarge,
    UnsupportedDocument,
    check_url,
)
from captioner.errors import AltCapError, InvalidSettings

__all__ = ["Crawler", "Page", "SitemapCrawl"]

# --- crawling -----------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    url: str  # the URL asked for
    final_url: str  # after redirects: the base for the page's relative links
    html: str
    encoding: str = "utf-8"  # the page's own encoding, to write a patched copy in


@dataclass
class SitemapCrawl:
    pages: list[str] = field(default_factory=list)  # page URLs, deduplicated, in order
    errors: list[tuple[str, AltCapError]] = field(default_factory=list)  # (sitemap, why)


@dataclass
class _Robots:
    """One host's robots.txt: its rules, or (``rules`` None) allow or keep out everything."""

    rules: Protego | None
    allow: bool  # without rules: a 4xx robots.txt allows all, 5xx or too large none
    why: str = ""  # said when keeping out without rules
    unreachable: AltCapError | None = None  # no answer: fail the page with this error

    def can_fetch(self, url: str, user_agent: str) -> bool:
        return self.rules.can_fetch(url, user_agent) if self.rules is not None else self.allow


class Crawler:
    """Fetches pages and sitemaps politely and safely.

    Safe: every fetch goes through ``captioner.crawl.fetch`` (resolved addresses checked, redirects
    re-checked, time and size limits). Polite: robots.txt is asked first (per RFC 9309, a
    robots.txt that answers 4xx allows everything, one that cannot be fetched disallows
    everything) and two requests to one origin are ``delay_s`` apart, or the robots.txt
    ``Crawl-delay`` if longer (at most ``MAX_CRAWL_DELAY``): the turns are booked with
    ``pacer``, which the crawlers of all jobs share (``captioner.crawl.politeness``; a crawler of
    its own by default). Safe to share between threads. ``clock`` (for the default pacer)
    and ``sleep`` are injectable so tests need not wait.
    """

    MAX_CRAWL_DELAY = 30.0
    ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309 asks parsers to read at least 500 KiB
    SITEMAP_TYPES = (
        "application/xml",
        "text/xml",
        "application/gzip",
        "application/x-gzip",
        "application/octet-stream",
        "text/plain",
        "",
    )

    def __init__(
        self,
        limits: FetchLimits | None = None,
        *,
        delay_s: float = 1.0,
        user_agent: str = "AltCap",
        respect_robots: bool = True,
        resolver: Resolver | None = None,
        max_page_bytes: int = 5 * 1024 * 1024,
        max_sitemap_bytes: int = 50 * 1024 * 1024,  # the sitemaps.org limit, uncompressed
        max_sitemap_depth: int = 2,  # index -> index -> urlset; the protocol allows 1
        max_sitemaps: int = 100,  # sitemap files read per crawl
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        pacer: Pacer | None = None,
    ) -> None:
        if delay_s < 0:
            raise InvalidSettings("the politeness delay must not be negative")
        self.limits = limits or DEFAULT_LIMITS
        self.delay_s = delay_s
        self.user_agent = user_agent
        self.respect_robots = respect_robots
        self.resolver = resolver
        self.max_page_bytes = max_page_bytes
        self.max_sitemap_bytes = max_sitemap_bytes
        self.max_sitemap_depth = max_sitemap_depth
        self.max_sitemaps = max_sitemaps
        self._sleep = sleep
        self._lock = threading.Lock()
        self._pacer = pacer or Pacer(clock)  # shared by the crawlers of all jobs, if given
        self._delays: dict[str, float] = {}  # origin -> delay (robots.txt Crawl-delay)
        self._robots: dict[str, _Robots] = {}  # origin -> its robots.txt, read once

    # politeness ---------------------------------------------------------------------

    def wait_turn(self, url: str) -> None:
        """Sleep until a request to ``url``'s origin is polite; books that turn."""
        origin = origin_of(url)
        with self._lock:
            delay = self._delays.get(origin, self.delay_s)
        wait = self._pacer.reserve(origin, delay)
        if wait > 0:
            self._sleep(wait)

    def _robots_for(self, url: str) -> _Robots:
        origin = origin_of(url)
        with self._lock:
            cached = self._robots.get(origin)
        if cached is not None:
            return cached
        robots_url = origin + "/robots.txt"
        robots = _Robots(None, allow=False)
        self.wait_turn(robots_url)
        try:
            doc = fetch_document(
                robots_url,
                self.limits,
                max_bytes=self.ROBOTS_MAX_BYTES,
                accept=None,
                resolver=self.resolver,
            )
            # RFC 9309: UTF-8; the most specific (longest) matching rule wins, Allow on a tie
            robots.rules = Protego.parse(doc.data.decode("utf-8", "replace"))
        except HTTPStatusError as exc:
            if 400 <= exc.status < 500:
                robots.allow = True
            else:
                robots.why = f"its robots.txt answered HTTP {exc.status}, which means keep out"
        except TooLarge:
            robots.why = f"its robots.txt is larger than {self.ROBOTS_MAX_BYTES} bytes"
        except AltCapError as exc:  # no answer at all: the host's pages would fail alike
            robots.unreachable = exc
        delay = robots.rules.crawl_delay(self.user_agent) if robots.rules is not None else None
        with self._lock:
            if delay is not None:
                self._delays[origin] = max(self.delay_s, min(float(delay), self.MAX_CRAWL_DELAY))
            return self._robots.setdefault(origin, robots)

    def check_robots(self, url: str) -> None:
        """Raise ``RobotsDisallowed`` if robots.txt keeps this crawler out of ``url``."""
        if not self.respect_robots:
            return
        robots = self._robots_for(url)
        if robots.unreachable is not None:
            raise robots.unreachable.with_traceback(None)
        if not robots.can_fetch(url, self.user_agent):
            why = f": {robots.why}" if robots.why else ""
            raise RobotsDisallowed(f"robots.txt disallows {url}{why}")

    # fetching -----------------------------------------------------------------------

    def _fetch(self, url: str, *, max_bytes: int, accept: tuple[str, ...]):
        check_url(url, self.limits, resolver=self.resolver)  # a blocked host says so first
        self.check_robots(url)
        self.wait_turn(url)
        doc = fetch_document(
            url, self.limits, max_bytes=max_bytes, accept=accept, resolver=self.resolver
        )
        if doc.final_url != url:
            self.check_robots(doc.final_url)  # a redirect into a disallowed path
        return doc

    def fetch_page(self, url: str) -> Page:
        """Fetch an HTML page; raise an ``AltCapError`` (``not_html``, ``robots_disallowed``,
        or a ``captioner.crawl.fetch`` code) if it cannot be used."""
        try:
            doc = self._fetch(url, max_bytes=self.max_page_bytes, accept=HTML_TYPES)
        except UnsupportedDocument as exc:
            raise NotHTML(f"{url} is not an HTML page: {exc.message}") from None
        text, encoding = _decode(doc.data, doc.charset)
        return Page(url, doc.final_url, text, encoding)

    def crawl_sitemap(self, url: str, max_pages: int) -> SitemapCrawl:
        """Page URLs from a sitemap or sitemap index (gzip or not), at most ``max_pages``.

        The sitemap given must work, else its error is raised; a broken sitemap listed in an
        index is recorded in ``errors`` and the others still count.
        """
        result = SitemapCrawl()
        seen_pages: set[str] = set()
        seen_maps: set[str] = set()
        queue: deque[tuple[str, int]] = deque([(url, 0)])
        while queue and len(result.pages) < max_pages:
            sitemap, depth = queue.popleft()
            if sitemap in seen_maps:
                continue
            seen_maps.add(sitemap)
            if len(seen_maps) > self.max_sitemaps:
                err = InvalidSitemap(f"more than {self.max_sitemaps} sitemap files; stopped")
                result.errors.append((sitemap, err))
                break
            try:
                kind, locs = self._read_sitemap(sitemap, depth)
            except AltCapError as exc:
                if depth == 0:
                    raise
                result.errors.append((sitemap, exc))
                continue
            for loc in locs:
                absolute = _resolve(sitemap, loc)
                if absolute is None:
                    continue
                if kind == "sitemapindex":
                    queue.append((absolute, depth + 1))
                elif absolute not in seen_pages and len(result.pages) < max_pages:
                    seen_pages.add(absolute)
                    result.pages.append(absolute)
        return result

    def _read_sitemap(self, url: str, depth: int) -> tuple[str, list[str]]:
        try:
            doc = self._fetch(url, max_bytes=self.max_sitemap_bytes, accept=self.SITEMAP_TYPES)
        except UnsupportedDocument as exc:
            raise InvalidSitemap(f"{url} is not a sitemap: {exc.message}") from None
        kind, locs = parse_sitemap(doc.data, limit=None)
        if kind == "sitemapindex" and depth >= self.max_sitemap_depth:
            raise InvalidSitemap(
                f"{url} is a sitemap index nested {depth} deep (at most "
                f"{self.max_sitemap_depth} levels are read)"
            )
        return kind, locs

    def sitemap_pages(self, url: str, max_pages: int) -> list[str]:
        """The page URLs of ``crawl_sitemap``, for callers that need no per-sitemap errors."""
        return self.crawl_sitemap(url, max_pages).pages
