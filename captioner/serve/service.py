"""One captioning request's way through the service: cache, download, decode, model.

This is the part of the HTTP service that needs no Flask: what one app's views share
(``ServiceState``), the images of one request from input to result (``Item``, ``Job``),
and ``run_job``, which fills in a result or an error for every image. The views in
``captioner.web.api`` parse a request into a ``Job``, call ``run_job`` and render the items.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from captioner import images
from captioner.alttext import alt_text
from captioner.config import DecodingSettings
from captioner.crawl import fetch
from captioner.errors import AltCapError, InvalidSettings
from captioner.model.identity import ModelIdentity
from captioner.serve.cache import Cache, cache_key, caption_value, get_caption, sha256_hex
from captioner.serve.engine import DeadlineExceeded, Engine, Overloaded
from captioner.serve.metrics import Metrics
from captioner.serve.settings import Settings

__all__ = [
    "Admission",
    "InvalidRequest",
    "Item",
    "Job",
    "ServiceState",
    "Unauthorized",
    "UnsupportedMediaType",
    "check_model_limits",
    "lookup_url_memo",
    "run_job",
]

FETCH_THREADS = 8  # URLs of one request downloaded in parallel


# --- errors ------------------------------------------------------------------------------


class InvalidRequest(AltCapError):
    """The request itself is malformed: bad JSON, wrong types, too many images, bad base64."""

    code = "invalid_request"
    http_status = 400


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"
    http_status = 415


class Unauthorized(AltCapError):
    code = "unauthorized"
    http_status = 401


# --- per-app state -----------------------------------------------------------------------


class Admission:
    """At most ``limit`` captioning requests at once in this process (0: no limit).

    Under gunicorn a request waits for a free thread before AltCap sees it, and that wait
    counts against no deadline and trips no queue bound: with every thread waiting on the
    model, more requests (``/healthz`` too) would queue unseen for as long as the model
    takes. So a worker takes on fewer captioning requests than it has threads, and answers
    one more with ``503 overloaded`` at once; a thread is then always free.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.active = 0

    @contextmanager
    def slot(self, retry_after: Callable[[], int]) -> Iterator[None]:
        """Hold a slot for the ``with`` block, or raise ``Overloaded`` at once."""
        with self._lock:
            admitted = not self.limit or self.active < self.limit
            if admitted:
                self.active += 1
        if not admitted:
            retry = retry_after()
            raise Overloaded(
                f"the server is working on {self.limit} captioning requests, its most at "
                f"once; retry in {retry} s",
                retry_after=retry,
            )
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


@dataclass
class ServiceState:
    """What the views of one app share; kept in ``app.extensions["altcap"]``."""

    settings: Settings
    engine: Engine
    cache: Cache
    metrics: Metrics
    model: ModelIdentity  # the public name in answers; the cache identity in keys and ETags
    limiter: Any = None  # flask_limiter.Limiter when a rate limit is set
    jobs: Any = None  # captioner.jobs.queue.JobQueue, set by jobs_api.init_app
    # Blueprints registered elsewhere add their paths to /openapi.json: f(doc, settings).
    openapi_parts: list[Callable[[dict[str, Any], Settings], None]] = field(default_factory=list)
    admission: Admission = field(init=False)  # from settings.max_in_flight

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_in_flight)

    def close(self) -> None:
        """Stop the job consumer and the engine, release the cache (tests; a clean shutdown)."""
        if self.jobs is not None:
            self.jobs.close()  # first: its chunks in flight still need the engine
        self.engine.close()
        self.cache.close()


# --- one image on its way through a request ----------------------------------------------


@dataclass
class Item:
    """One image of a request, from input to result. Exactly one of result/error at the end."""

    source: dict[str, Any]  # echoed to the client: {"kind": "url", "url": ...} and the like
    url: str | None = None
    data: bytes | None = None
    sha: str | None = None  # SHA-256 of the image bytes, once known
    memo_checked: bool = False  # the URL memo was already consulted
    image: Image.Image | None = None  # decoded, waiting for the model
    result: dict[str, Any] | None = None  # {"caption", "tokens"}
    cached: bool = False
    error: AltCapError | None = None

    def to_json(self) -> dict[str, Any]:
        source = dict(self.source)
        if self.sha:
            source["sha256"] = self.sha
        if self.error is not None or self.result is None:
            error = self.error or InvalidRequest("the image was not processed")
            return {"error": error.to_dict(), "source": source}
        return {
            "caption": self.result["caption"],
            "tokens": self.result["tokens"],
            "cached": self.cached,
            "source": source,
        }


@dataclass
class Job:
    """A captioning request: its images, its decoding settings and its deadline."""

    items: list[Item]
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    deadline: float = math.inf  # time.monotonic()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def check_model_limits(engine: Engine, decoding: DecodingSettings) -> None:
    """Refuse a ``max_tokens`` the loaded model has no positions for (a 400, not a 500).

    ``DecodingSettings`` allows up to 256 new tokens, which GPT-2 (1024 positions) always
    has room for, but a smaller language model may not.
    """
    captioner = engine.captioner
    positions = getattr(getattr(captioner, "lm", None), "max_positions", None)
    if captioner is None or not isinstance(positions, int):
        return
    room = positions - captioner.config.prefix_length
    if decoding.max_tokens > room:
        raise InvalidSettings(f"max_tokens must be at most {room} with this model")


def run_job(st: ServiceState, job: Job) -> None:
    """Fill in every item's result or error; raise only for the whole request.

    Order of work: the URL memo and the caption cache first (a repeated URL is answered
    without downloading anything), then downloads and decoding (in parallel threads when
    there are several images), then one call to the engine for whatever is left, whose
    images can share batches with other requests'. Beyond ``max_in_flight`` requests at
    once, raises ``Overloaded`` before any of that. A result's caption is what may become
    alt text: ``alttext.alt_text``, at most ``max_alt_chars`` (cached or not).
    """
    with st.admission.slot(st.engine.retry_after):
        _run_job(st, job)


def _run_job(st: ServiceState, job: Job) -> None:
    settings = job.decoding.to_dict()
    todo = [item for item in job.items if item.error is None and item.result is None]
    if len(todo) > 1:
        with ThreadPoolExecutor(min(FETCH_THREADS, len(todo)), "altcap-fetch") as pool:
            list(pool.map(lambda item: _prepare(st, job, settings, item), todo))
    else:
        for item in todo:
            _prepare(st, job, settings, item)

    waiting = [item for item in todo if item.image is not None]
    if waiting:
        remaining = job.remaining()
        if remaining <= 0:
            raise DeadlineExceeded("the request ran out of time before captioning")
        outcomes = st.engine.caption_images(
            [item.image for item in waiting], job.decoding, timeout_s=remaining
        )
        for item, outcome in zip(waiting, outcomes, strict=True):
            item.image = None
            if isinstance(outcome, AltCapError):
                if outcome.http_status >= 500:  # the service, not this image: fail the request
                    raise outcome
                item.error = outcome
                continue
            item.result = caption_value(outcome.text, outcome.tokens)
            st.cache.set(cache_key(st.model.cache_id, settings, str(item.sha)), item.result)

    for item in job.items:
        if item.result is not None:  # the cache keeps the model's words; alt is bounded here
            alt = alt_text(item.result["caption"], st.settings.max_alt_chars)
            item.result = {**item.result, "caption": alt}
        outcome = "error" if item.error else "cached" if item.cached else "captioned"
        st.metrics.images.labels(outcome).inc()


def lookup_url_memo(st: ServiceState, item: Item) -> None:
    """Fill ``item.sha`` from the URL memo, if it remembers the URL."""
    if item.url is None or item.memo_checked or st.settings.url_ttl_s <= 0:
        return
    item.memo_checked = True
    item.sha = st.cache.get_url_hash(item.url)
    st.metrics.cache_lookup("url", item.sha is not None)


def _prepare(st: ServiceState, job: Job, settings: dict[str, Any], item: Item) -> None:
    """Cache lookups, download and decoding for one item; errors stay with the item."""
    try:
        model = st.model.cache_id
        lookup_url_memo(st, item)
        if item.sha is not None and _from_cache(st, item, cache_key(model, settings, item.sha)):
            return
        if item.data is None and item.url is not None:
            remaining = job.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("the request ran out of time before the download")
            limits = st.settings.fetch_limits()
            if remaining < limits.total_timeout:
                limits = replace(
                    limits,
                    total_timeout=remaining,
                    connect_timeout=min(limits.connect_timeout, remaining),
                    read_timeout=min(limits.read_timeout, remaining),
                )
            item.data = fetch.fetch_image(item.url, limits).data
        data = item.data or b""
        known = item.sha
        item.sha = sha256_hex(data)
        if item.url is not None and st.settings.url_ttl_s > 0:
            st.cache.set_url_hash(item.url, item.sha, st.settings.url_ttl_s)
        if item.sha != known and _from_cache(st, item, cache_key(model, settings, item.sha)):
            return
        item.image = images.load_image(data, max_pixels=st.settings.max_image_pixels)
        item.data = None  # the decoded image is all that is needed from here on
    except AltCapError as exc:
        item.error = exc


def _from_cache(st: ServiceState, item: Item, key: str) -> bool:
    value = get_caption(st.cache, key)
    st.metrics.cache_lookup("caption", value is not None)
    if value is not None:
        item.result, item.cached, item.data = value, True, None
    return value is not None
