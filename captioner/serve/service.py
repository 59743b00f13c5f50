"""One captioning request's way through the service: cache, download, decode, model, text.

This is the part of the HTTP service that needs no Flask: what one app's views share
(``ServiceState``), the images of one request from input to result (``Item``, ``Job``),
and ``run_job``, which fills in a result or an error for every image. The views in
``captioner.web.api`` parse a request into a ``Job``, call ``run_job`` and render the items.

Reading the text in an image (``captioner.read``) runs beside the captioning: an image is
handed to the app's reader pool as soon as it is decoded, so its text is read while the
engine computes the batch its caption is in; its outcome is collected after the caption.
A reading that fails, times out or cannot happen (no Tesseract) costs the image its text,
never its caption: the result then carries the warning's code and an alt from the caption.

What CLIP's text tower makes of it (issue 23; the rules are ``captioner.trust``'s): with a
model that has one, every result carries the caption's ``confidence`` and whether it is
``confident`` (``ALTCAP_MIN_CONFIDENCE``), kept with the caption in the cache; an image sent
with its author's ``alt`` gets an ``alt_check``. That check needs the image's embedding, so
such an image is answered from the cache only when it was checked against the same alt
before (a page visited again; ``cache.alt_check_settings``); its caption is stored for plain
requests too. Without a text tower it gets the warning ``alt_check_unavailable`` instead.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from captioner import images, trust
from captioner.config import DecodingSettings
from captioner.crawl import fetch
from captioner.describe import describe
from captioner.errors import AltCapError, InvalidSettings, OcrError, OcrTimeout, OcrUnavailable
from captioner.model.identity import ModelIdentity
from captioner.read import Reading, TextPool
from captioner.serve.cache import (
    Cache,
    alt_check_settings,
    cache_key,
    caption_value,
    get_caption,
    get_text,
    sha256_hex,
    text_key,
    text_value,
)
from captioner.serve.engine import DeadlineExceeded, Engine, Overloaded
from captioner.serve.metrics import Metrics
from captioner.serve.settings import Settings

__all__ = [
    "ALT_CHECK_UNAVAILABLE",
    "RESULT_WARNINGS",
    "Admission",
    "InvalidRequest",
    "Item",
    "Job",
    "ServiceState",
    "Unauthorized",
    "UnsupportedMediaType",
    "check_model_limits",
    "lookup_url_memo",
    "open_text_pool",
    "run_job",
]

FETCH_THREADS = 8  # URLs of one request downloaded in parallel
# A reading's warning code -> its outcome in the altcap_text_reads metric
# (metrics.TEXT_READ_OUTCOMES); any other code counts as "failed".
TEXT_WARNING_OUTCOMES = {
    OcrTimeout.code: "timeout",
    OcrError.code: "failed",
    OcrUnavailable.code: "unavailable",
}
# An author's alt was sent and the model cannot check it (no CLIP text tower).
ALT_CHECK_UNAVAILABLE = "alt_check_unavailable"
# Every code a result's ``warnings`` may hold: the OpenAPI enum and the page's words.
RESULT_WARNINGS = (*TEXT_WARNING_OUTCOMES, ALT_CHECK_UNAVAILABLE)
# The fields of one rendered candidate (decoding.candidates > 1), as CaptionResult gives them.
CANDIDATE_FIELDS = ("caption", "score", "logprob", "similarity", "confidence")


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
    # Reading the text in images (``open_text_pool``): the pool, or None with the warning
    # every result then carries ("ocr_unavailable"), or None and None when ALTCAP_OCR=off.
    reader: TextPool | None = None
    reader_warning: str | None = None
    admission: Admission = field(init=False)  # from settings.max_in_flight

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_in_flight)

    def captions_language(self) -> str | None:
        """The language tag of the captions served: the loaded model's; before it has loaded
        (answers from the cache), what the model directory says, if it is one; else None."""
        captioner = self.engine.captioner
        return captioner.language if captioner is not None else self.model.language

    def close(self) -> None:
        """Stop the job consumer, the engine and the readers, release the cache (tests; a
        clean shutdown)."""
        if self.jobs is not None:
            self.jobs.close()  # first: its chunks in flight still need the engine
        self.engine.close()
        if self.reader is not None:
            self.reader.close()
        self.cache.close()


def open_text_pool(settings: Settings, model: ModelIdentity) -> tuple[TextPool | None, str | None]:
    """The app's reader pool for the text in images, opened once per process.

    ``open_pool``'s ``(pool, None)``, ``(None, "ocr_unavailable")`` or, with ``ALTCAP_OCR=off``,
    ``(None, None)``. Opened at start-up, before the model has loaded (in its thread): the
    captions' language comes from the model directory's config (``model.language``), else it
    is "en", ClipCap's, which is also what a registry name or Hub id serves. It only matters
    when ``ALTCAP_OCR_LANGS`` is empty.
    """
    return settings.text_pool(model.language)


# --- one image on its way through a request ----------------------------------------------


@dataclass
class Item:
    """One image of a request, from input to result. Exactly one of result/error at the end."""

    source: dict[str, Any]  # echoed to the client: {"kind": "url", "url": ...} and the like
    url: str | None = None
    data: bytes | None = None
    alt: str | None = None  # the author's alt, to check against the image (parsing.parse_alt)
    sha: str | None = None  # SHA-256 of the image bytes, once known
    memo_checked: bool = False  # the URL memo was already consulted
    image: Image.Image | None = None  # decoded, waiting for the model and/or the reader
    # {"caption", "tokens", "confidence"?, "candidates"?} (caption_value) until the end of
    # run_job, then {"caption", "text"?, "alt", "alt_from", "confidence"?, "confident"?,
    # "alt_check"?, "candidates"?, "tokens"} (render_result)
    result: dict[str, Any] | None = None
    alt_check: dict[str, Any] | None = None  # {"score", "verdict"}: trust.alt_check's
    cached: bool = False  # the caption came from the cache
    reading: Future[Reading] | None = None  # the text being read
    text: dict[str, Any] | None = None  # {"text", "mostly_text"} (text_value), once known
    warnings: list[str] = field(default_factory=list)  # codes: why the text is missing
    error: AltCapError | None = None

    def to_json(self) -> dict[str, Any]:
        source = dict(self.source)
        if self.sha:
            source["sha256"] = self.sha
        if self.error is not None or self.result is None:
            error = self.error or InvalidRequest("the image was not processed")
            return {"error": error.to_dict(), "source": source}
        out = {**self.result, "cached": self.cached, "source": source}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


@dataclass
class Job:
    """A captioning request: its images, its decoding settings, its deadline, and whether
    the text in its images is wanted (``read_text``; the service may have reading off)."""

    items: list[Item]
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    deadline: float = math.inf  # time.monotonic()
    read_text: bool = True

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

    Order of work: the URL memo and the caches first (a repeated URL is answered without
    downloading anything when its caption and its text are both cached), then downloads
    and decoding (in parallel threads when there are several images), each decoded image
    handed to the reader pool at once, then one call to the engine for whatever is left,
    whose images can share batches with other requests'; last, the readings, waited for
    within the request's time. Beyond ``max_in_flight`` requests at once, raises
    ``Overloaded`` before any of that. Each result is ``describe``'s (``caption``, ``text``,
    ``alt``, ``alt_from``, bounded by ``Settings.alt_rule``) with the caption's ``tokens``,
    cached or not.
    """
    with st.admission.slot(st.engine.retry_after):
        try:
            _run_job(st, job)
        finally:  # a request that failed whole leaves no reading behind
            for item in job.items:
                if item.reading is not None:
                    item.reading.cancel()
                item.reading, item.image = None, None


def _reader(st: ServiceState, job: Job) -> TextPool | None:
    """The pool that reads this job's text, or None: not wanted, or the service cannot."""
    return st.reader if job.read_text else None


def scores_captions(st: ServiceState) -> bool | None:
    """Whether the loaded model has CLIP's text tower (confidences, alt checks); None
    before it has loaded (or with an engine that has no model of its own, in tests)."""
    captioner = st.engine.captioner
    return None if captioner is None else bool(getattr(captioner, "can_score", False))


def wants_candidates(decoding: DecodingSettings) -> bool:
    """Whether results are to list their candidates (``decoding.candidates`` above 1)."""
    return getattr(decoding, "candidates", 1) > 1


def _checks_alt(st: ServiceState, item: Item) -> bool:
    """Whether ``item``'s author alt is to be checked by the model: there is one, and the
    model can, or may once loaded. The check needs the image's embedding, so only an answer
    cached with the same alt (``_result_key``) can stand for it."""
    return item.alt is not None and scores_captions(st) is not False


def _result_key(st: ServiceState, settings: dict[str, Any], item: Item, sha: str) -> str:
    """The cache key of ``item``'s answer: its caption's, or, when its author's alt is to be
    checked, that of the caption checked against that alt (``cache.alt_check_settings``)."""
    if _checks_alt(st, item):
        settings = alt_check_settings(settings, str(item.alt), st.settings.alt_match_score)
    return cache_key(st.model.cache_id, settings, sha)


def _run_job(st: ServiceState, job: Job) -> None:
    settings = job.decoding.to_dict()
    todo = [item for item in job.items if item.error is None and item.result is None]
    if len(todo) > 1:
        with ThreadPoolExecutor(min(FETCH_THREADS, len(todo)), "altcap-fetch") as pool:
            list(pool.map(lambda item: _prepare(st, job, settings, item), todo))
    else:
        for item in todo:
            _prepare(st, job, settings, item)

    # The images still to caption; the others (cached captions) may be here for their text.
    waiting = [item for item in todo if item.image is not None and item.result is None]
    if waiting:
        remaining = job.remaining()
        if remaining <= 0:
            raise DeadlineExceeded("the request ran out of time before captioning")
        alts = [item.alt for item in waiting]
        extra = {"alts": alts} if any(a is not None for a in alts) else {}
        outcomes = st.engine.caption_images(
            [item.image for item in waiting], job.decoding, timeout_s=remaining, **extra
        )
        for item, outcome in zip(waiting, outcomes, strict=True):
            if isinstance(outcome, AltCapError):
                if outcome.http_status >= 500:  # the service, not this image: fail the request
                    raise outcome
                item.error = outcome
                continue
            candidates = render_candidates(getattr(outcome, "candidates", None))
            item.result = caption_value(
                outcome.text, outcome.tokens, outcome.confidence, candidates
            )
            item.alt_check = outcome.alt_check
            sha = str(item.sha)
            st.cache.set(cache_key(st.model.cache_id, settings, sha), item.result)
            if item.alt_check is not None:  # and checked against its alt: for the next visit
                checked = caption_value(
                    outcome.text, outcome.tokens, outcome.confidence, candidates, item.alt_check
                )
                st.cache.set(_result_key(st, settings, item, sha), checked)

    reader = _reader(st, job)
    for item in todo:
        if reader is not None and item.reading is not None and item.error is None:
            _collect_text(st, job, reader, item)

    language = st.captions_language()
    rule = st.settings.alt_rule()
    unavailable = job.read_text and st.reader is None and st.reader_warning is not None
    for item in job.items:
        if item.result is not None:  # the cache keeps the model's words; alt is bounded here
            if unavailable:
                item.warnings.append(str(st.reader_warning))
                st.metrics.text_reads.labels(_text_outcome(str(st.reader_warning))).inc()
            text = item.text or {}
            described = describe(
                item.result["caption"],
                text.get("text"),
                bool(text.get("mostly_text")),
                language=language,
                rule=rule,
            )
            item.result = render_result(st, item, described)
        outcome = "error" if item.error else "cached" if item.cached else "captioned"
        st.metrics.images.labels(outcome).inc()


def render_result(st: ServiceState, item: Item, described: dict[str, Any]) -> dict[str, Any]:
    """One image's answer: ``describe``'s fields, then what CLIP's text tower made of it.

    ``confidence`` and ``confident`` (``trust.is_confident``) are there when the caption was
    scored; ``confident: false`` with an alt that rests on the caption
    (``trust.withholds``) tells a client to write nothing. ``alt_check`` is there when an
    author's alt was checked; one that could not be gets the ``alt_check_unavailable``
    warning. Both outcomes are counted (``altcap_confidence``, ``altcap_alt_checks``).
    """
    stored = item.result or {}
    out = dict(described)
    confidence = stored.get("confidence")
    confident = trust.is_confident(confidence, st.settings.min_confidence)
    if confident is None:
        st.metrics.confidence.labels("unscored").inc()
    else:
        out["confidence"] = round(float(confidence), 4)
        out["confident"] = confident
        st.metrics.confidence.labels("confident" if confident else "not_confident").inc()
    if item.alt is not None:
        if item.alt_check is not None:
            out["alt_check"] = dict(item.alt_check)
            st.metrics.alt_checks.labels(item.alt_check["verdict"]).inc()
        else:
            item.warnings.append(ALT_CHECK_UNAVAILABLE)
            st.metrics.alt_checks.labels("unavailable").inc()
    if stored.get("candidates"):
        out["candidates"] = [dict(c) for c in stored["candidates"]]
    out["tokens"] = stored["tokens"]
    return out


def render_candidates(candidates: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A ``CaptionResult``'s candidates as answered and cached: best first, each with the
    ``CANDIDATE_FIELDS`` it has (a model without a text tower has no similarity or
    confidence: those are left out, not null)."""
    if not candidates:
        return None
    return [{k: c[k] for k in CANDIDATE_FIELDS if c.get(k) is not None} for c in candidates]


def _collect_text(st: ServiceState, job: Job, reader: TextPool, item: Item) -> None:
    """Wait for ``item``'s reading (within the request's time) and cache what it read."""
    assert item.reading is not None
    # The reader's own timeout counts from the submit, which was earlier: waiting this long
    # from now is enough, and the request's deadline stays the request's.
    wait_s = min(job.remaining(), reader.timeout_s)
    reading, warning = reader.outcome(item.reading, timeout_s=wait_s)
    item.reading = None
    if reading is None:  # logged by the pool; never cached, so read again next time
        code = warning or OcrError.code
        item.warnings.append(code)
        st.metrics.text_reads.labels(_text_outcome(code)).inc()
        return
    item.text = text_value(reading)
    st.cache.set(text_key(str(item.sha), reader.engine_id), item.text)
    st.metrics.text_reads.labels("text" if reading.text else "none").inc()


def _text_outcome(code: str) -> str:
    return TEXT_WARNING_OUTCOMES.get(code, "failed")


def lookup_url_memo(st: ServiceState, item: Item) -> None:
    """Fill ``item.sha`` from the URL memo, if it remembers the URL."""
    if item.url is None or item.memo_checked or st.settings.url_ttl_s <= 0:
        return
    item.memo_checked = True
    item.sha = st.cache.get_url_hash(item.url)
    st.metrics.cache_lookup("url", item.sha is not None)


def _prepare(st: ServiceState, job: Job, settings: dict[str, Any], item: Item) -> None:
    """Cache lookups, download, decoding and the start of reading for one item; errors stay
    with the item."""
    try:
        check = _checks_alt(st, item)  # only an answer cached with the same alt will do
        lookup_url_memo(st, item)
        if item.sha is not None and _from_cache(
            st, job, item, _result_key(st, settings, item, item.sha)
        ):
            return
        if item.data is None and item.url is not None:
            remaining = job.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("the request ran out of time before the download")
            item.data = fetch.fetch_image(item.url, _fetch_limits(st, remaining)).data
        data = item.data or b""
        known = item.sha
        item.sha = sha256_hex(data)
        if item.url is not None and st.settings.url_ttl_s > 0:
            st.cache.set_url_hash(item.url, item.sha, st.settings.url_ttl_s)
        if item.sha != known and _from_cache(
            st, job, item, _result_key(st, settings, item, item.sha)
        ):
            return
        item.image = images.load_image(data, max_pixels=st.settings.max_image_pixels)
        item.data = None  # the decoded image is all that is needed from here on
        reader = _reader(st, job)
        if reader is not None and check:  # captioned again; its reading may be cached
            item.text = _cached_text(st, reader, item)
        if reader is not None and item.text is None:  # read while the engine captions
            item.reading = reader.submit(item.image)
    except AltCapError as exc:
        if item.cached and item.result is not None:
            # The caption came from the cache; only its text needed the image, and getting
            # the image failed (a URL that is gone since): the caption, without text.
            code = OcrTimeout.code if isinstance(exc, DeadlineExceeded) else OcrError.code
            item.warnings.append(code)
            st.metrics.text_reads.labels(_text_outcome(code)).inc()
        else:
            item.error = exc


def _fetch_limits(st: ServiceState, remaining_s: float) -> fetch.FetchLimits:
    """The service's download limits, shortened to the ``remaining_s`` of the request."""
    limits = st.settings.fetch_limits()
    if remaining_s < limits.total_timeout:
        limits = replace(
            limits,
            total_timeout=remaining_s,
            connect_timeout=min(limits.connect_timeout, remaining_s),
            read_timeout=min(limits.read_timeout, remaining_s),
        )
    return limits


def _from_cache(st: ServiceState, job: Job, item: Item, key: str) -> bool:
    """Whether the cache answers ``item`` whole: its caption, and its text when wanted.

    A cached caption whose text is wanted and not cached stays in ``item.result``: the
    image is then still fetched and decoded, for the reader only.
    """
    checked = _checks_alt(st, item)
    value = get_caption(
        st.cache,
        key,
        scored=scores_captions(st) is True,
        candidates=wants_candidates(job.decoding),
        alt_checked=checked,
    )
    st.metrics.cache_lookup("caption", value is not None)
    item.result, item.cached, item.text = value, value is not None, None
    if value is None:
        return False
    if checked:
        item.alt_check = dict(value["alt_check"])
    reader = _reader(st, job)
    if reader is not None:
        item.text = _cached_text(st, reader, item)
        if item.text is None:
            return False
    item.data = None
    return True


def _cached_text(st: ServiceState, reader: TextPool, item: Item) -> dict[str, Any] | None:
    """``item``'s reading by ``reader`` from the cache (counted), or None."""
    text = get_text(st.cache, text_key(str(item.sha), reader.engine_id))
    st.metrics.cache_lookup("text", text is not None)
    if text is not None:
        st.metrics.text_reads.labels("cached").inc()
    return text
