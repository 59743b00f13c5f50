"""The HTTP service: Flask blueprints for captions, health, metrics, OpenAPI and a small page.

Everything that knows about Flask lives here (and in ``app.py``); the core underneath only
sees bytes, PIL images and typed errors. ``init_app`` wires one application:

- ``api`` (``/v1/captions``): JSON or multipart in, one result or one error per image out,
  in order, so one broken image never costs the others their captions;
- ``ops``: ``/healthz`` (the process is alive), ``/readyz`` (the model is loaded),
  ``/metrics`` (Prometheus), ``/openapi.json``;
- ``page``: ``/``, a form that works without JavaScript (``POST /caption-form`` renders the
  result) and is enhanced by a few lines of JavaScript when it is there.

Cross-cutting rules apply to all of them: every error is ``{"error": {"code", "message"}}``
with a stable code and never a traceback; optional API keys (``Authorization: Bearer``,
compared in constant time); rate limits by Flask-Limiter keyed by API key or address; CORS
for the browser extension's origins only; metrics in a registry owned by the app, so test
apps never share counters. Under gunicorn each worker process has its own metrics: scrape
the workers one by one, or run one worker per container (the default of ``gunicorn.conf.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    make_response,
    render_template,
    request,
)
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from captioner import fetch, images
from captioner.cache import Cache, cache_key, sha256_hex
from captioner.config import DecodingSettings
from captioner.engine import DeadlineExceeded, Engine, ModelUnavailable
from captioner.errors import AltCapError, InvalidSettings
from captioner.settings import ConfigError, Settings

__all__ = [
    "InvalidRequest",
    "Metrics",
    "ServiceState",
    "Unauthorized",
    "api",
    "build_openapi",
    "init_app",
    "ops",
    "page",
    "state",
]

log = logging.getLogger(__name__)

api = Blueprint("api", __name__, url_prefix="/v1")
ops = Blueprint("ops", __name__)
page = Blueprint(
    "page", __name__, template_folder="templates", static_folder="static", static_url_path="/static"
)

# Endpoints that stay open when API keys are set. The page's form checks its own key field.
OPEN_ENDPOINTS = frozenset(
    {"ops.healthz", "ops.readyz", "ops.openapi", "page.index", "page.static", "page.caption_form"}
)
# Endpoints that spend model time: the only ones rate limits apply to.
LIMITED_ENDPOINTS = frozenset(
    {"api.captions_get", "api.captions_post", "page.caption_form", "jobs.create_job"}
)
# Endpoints whose errors are shown as the HTML page rather than as JSON.
HTML_ENDPOINTS = frozenset({"page.caption_form"})

FETCH_THREADS = 8  # URLs of one request downloaded in parallel
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; stay in the signed range
MAX_STOP_TOKEN = 64  # characters: a stop "token" is a short piece of text


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


# Stable codes for the HTTP errors Flask and werkzeug raise on their own.
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "too_large",
}


# --- per-app state -----------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of their own (one per app: tests build many apps)."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "altcap_http_requests",
            "HTTP requests by endpoint (URL rule), method and status",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "altcap_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            "altcap_batch_size",
            "Images per batch computed by the engine",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "altcap_batch_duration_seconds",
            "Time the model took for one batch",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.queue_depth = Gauge("altcap_queue_depth", "Images waiting for the model", registry=r)
        self.queue_depth.set_function(lambda: _queue_depth(engine))
        self.model_ready = Gauge("altcap_model_ready", "1 once the model is loaded", registry=r)
        self.model_ready.set_function(lambda: 1.0 if engine.ready else 0.0)
        self.cache_hits = Counter(
            "altcap_cache_hits",
            "Cache lookups that found an entry (kind: caption or url)",
            ["kind"],
            registry=r,
        )
        self.cache_misses = Counter(
            "altcap_cache_misses",
            "Cache lookups that found nothing (kind: caption or url)",
            ["kind"],
            registry=r,
        )
        self.images = Counter(
            "altcap_images",
            "Images answered, by outcome (captioned, cached, error)",
            ["outcome"],
            registry=r,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        """The engine's ``on_batch`` hook (runs in its worker thread: keep it quick)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def cache_lookup(self, kind: str, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).labels(kind).inc()


def _queue_depth(engine: Engine) -> float:
    stats = engine.stats()
    depth = stats["queue_depth"] if isinstance(stats, dict) else stats.queue_depth
    return float(depth)


@dataclass
class ServiceState:
    """What the views of one app share; kept in ``app.extensions["altcap"]``."""

    settings: Settings
    engine: Engine
    cache: Cache
    metrics: Metrics
    limiter: Any = None  # flask_limiter.Limiter when a rate limit is set
    jobs: Any = None  # captioner.jobs.JobQueue, set by jobs_api.init_app
    # Blueprints registered elsewhere add their paths to /openapi.json: f(doc, settings).
    openapi_parts: list[Callable[[dict[str, Any], Settings], None]] = field(default_factory=list)

    def close(self) -> None:
        """Stop the job consumer and the engine, release the cache (tests; a clean shutdown)."""
        if self.jobs is not None:
            self.jobs.close()  # first: its chunks in flight still need the engine
        self.engine.close()
        self.cache.close()


def state() -> ServiceState:
    return current_app.extensions["altcap"]


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


def run_job(st: ServiceState, job: Job) -> None:
    """Fill in every item's result or error; raise only for the whole request.

    Order of work: the URL memo and the caption cache first (a repeated URL is answered
    without downloading anything), then downloads and decoding (in parallel threads when
    there are several images), then one call to the engine for whatever is left, whose
    images can share batches with other requests'.
    """
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
            item.result = {"caption": outcome.text, "tokens": outcome.tokens}
            st.cache.set(cache_key(st.settings.model, settings, str(item.sha)), item.result)

    for item in job.items:
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
        model = st.settings.model
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
    value = st.cache.get(key)
    valid = (
        value is not None
        and isinstance(value.get("caption"), str)
        and isinstance(value.get("tokens"), int)
    )
    st.metrics.cache_lookup("caption", valid)
    if valid:
        item.result, item.cached, item.data = value, True, None
    return valid


# --- request parsing ---------------------------------------------------------------------

_NUMBER = (int, float)
# decoding field -> (accepted JSON types, how to say so)
_DECODING_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "method": ((str,), "a string"),
    "beam_size": ((int,), "an integer"),
    "top_p": (_NUMBER, "a number"),
    "temperature": (_NUMBER, "a number"),
    "seed": ((int, type(None)), "an integer or null"),
    "max_tokens": ((int,), "an integer"),
    "min_tokens": ((int,), "an integer"),
    "stop_token": ((str, type(None)), "a string or null"),
    "stop_at_eos": ((bool,), "true or false"),
}


def parse_decoding(value: object) -> DecodingSettings:
    """Decoding settings from request JSON; types are checked here, ranges by the dataclass."""
    if value is None:
        return DecodingSettings()
    if not isinstance(value, dict):
        raise InvalidRequest("decoding must be an object")
    for key, v in value.items():
        if key not in _DECODING_TYPES:
            raise InvalidSettings(f"unknown decoding setting {key!r}")
        types, expected = _DECODING_TYPES[key]
        # bool is an int in Python, but true is not a beam size.
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise InvalidRequest(f"decoding.{key} must be {expected}")
    if value.get("seed") is not None and not 0 <= value["seed"] <= MAX_SEED:
        raise InvalidSettings(f"seed must be between 0 and {MAX_SEED}")
    stop = value.get("stop_token")
    if isinstance(stop, str) and len(stop) > MAX_STOP_TOKEN:
        raise InvalidSettings(f"stop_token must be at most {MAX_STOP_TOKEN} characters")
    return DecodingSettings.from_dict(value)


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, whitespace ignored, ``data:...;base64,`` prefix allowed."""
    if text.startswith("data:") and "," in text:
        header, text = text.split(",", 1)
        if not header.endswith(";base64"):
            raise InvalidRequest("a data: URL must be base64-encoded (data:image/png;base64,...)")
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("data is not valid base64") from None


def parse_json_request(max_images: int) -> tuple[list[Item], DecodingSettings]:
    try:
        body = json.loads(request.get_data())
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise InvalidRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with an images list")
    unknown = set(body) - {"images", "decoding"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    raw_items = body.get("images")
    if not isinstance(raw_items, list):
        raise InvalidRequest("images must be a list of {url} or {data} objects")
    _check_count(len(raw_items), max_images)
    items = []
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, dict) or len(raw) != 1 or not set(raw) <= {"url", "data"}:
            raise InvalidRequest(f"images[{i}] must be an object with one field: url or data")
        ((kind, value),) = raw.items()
        if not isinstance(value, str):
            raise InvalidRequest(f"images[{i}].{kind} must be a string")
        if kind == "url":
            items.append(Item({"kind": "url", "url": value}, url=value))
            continue
        item = Item({"kind": "data"})
        try:
            item.data = decode_base64(value)
        except InvalidRequest as exc:
            item.error = InvalidRequest(f"images[{i}].{exc.message}")
        items.append(item)
    return items, parse_decoding(body.get("decoding"))


def parse_form_request(max_images: int) -> tuple[list[Item], DecodingSettings]:
    """Multipart uploads (``image``, several allowed) and ``url`` fields, in that order."""
    items = [_upload_item(f) for f in request.files.getlist("image") if not _empty_upload(f)]
    items += [
        Item({"kind": "url", "url": u.strip()}, url=u.strip())
        for u in request.form.getlist("url")
        if u.strip()
    ]
    _check_count(len(items), max_images)
    decoding_text = request.form.get("decoding", "").strip()
    decoding = None
    if decoding_text:
        try:
            decoding = json.loads(decoding_text)
        except (ValueError, RecursionError):
            raise InvalidRequest("the decoding field must be a JSON object") from None
    return items, parse_decoding(decoding)


def _upload_item(upload: FileStorage) -> Item:
    return Item({"kind": "upload", "filename": upload.filename or ""}, data=upload.read())


def _empty_upload(upload: FileStorage) -> bool:
    """A browser sends an empty, nameless part for a file input left empty."""
    if upload.filename:
        return False
    head = upload.stream.read(1)
    upload.stream.seek(0)
    return not head


def _check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise InvalidRequest("no images: send at least one image or URL")
    if n > max_images:
        raise InvalidRequest(f"too many images: {n} (at most {max_images} per request)")


def parse_request(max_images: int) -> tuple[list[Item], DecodingSettings]:
    mimetype = request.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return parse_json_request(max_images)
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return parse_form_request(max_images)
    raise UnsupportedMediaType(
        "send application/json or multipart/form-data"
        + (f", not {mimetype}" if mimetype else " with a Content-Type header")
    )


def new_job(items: list[Item], decoding: DecodingSettings) -> Job:
    st = state()
    check_model_limits(st.engine, decoding)
    return Job(items, decoding, time.monotonic() + st.settings.request_timeout_s)


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


# --- /v1/captions ------------------------------------------------------------------------


@api.post("/captions")
def captions_post() -> Response:
    """Caption up to ``max_images_per_request`` images; per-image errors, in order, 200."""
    st = state()
    items, decoding = parse_request(st.settings.max_images_per_request)
    job = new_job(items, decoding)
    run_job(st, job)
    return jsonify(_envelope(st, job))


@api.get("/captions")
def captions_get() -> Response:
    """One image by URL; cacheable by browsers and proxies (ETag, Cache-Control)."""
    st = state()
    url = request.args.get("url", "").strip()
    if not url:
        raise InvalidRequest("the url query parameter is required")
    item = Item({"kind": "url", "url": url}, url=url)
    job = new_job([item], DecodingSettings())
    settings = job.decoding.to_dict()
    lookup_url_memo(st, item)
    if item.sha is not None:  # answer a revalidation without downloading or captioning
        etag = cache_key(st.settings.model, settings, item.sha)
        if request.if_none_match.contains_weak(etag):
            return _not_modified(st, etag)
    run_job(st, job)
    if item.error is not None:
        raise item.error
    etag = cache_key(st.settings.model, settings, str(item.sha))  # set: the image was read
    if request.if_none_match.contains_weak(etag):
        return _not_modified(st, etag)
    response = jsonify(_envelope(st, job))
    response.set_etag(etag, weak=True)  # weak: "cached" differs between equivalent answers
    response.headers["Cache-Control"] = _cache_control(st)
    return response


def _envelope(st: ServiceState, job: Job) -> dict[str, Any]:
    return {
        "model": st.settings.model,
        "decoding": job.decoding.to_dict(),
        "results": [item.to_json() for item in job.items],
    }


def _not_modified(st: ServiceState, etag: str) -> Response:
    response = Response(status=304)
    response.set_etag(etag, weak=True)
    response.headers["Cache-Control"] = _cache_control(st)
    return response


def _cache_control(st: ServiceState) -> str:
    """Shared caches may keep open answers; keyed ones are for the one client only."""
    max_age = int(min(st.settings.url_ttl_s, 86400))
    scope = "private" if st.settings.api_keys else "public"
    return f"{scope}, max-age={max_age}" if max_age > 0 else "no-cache"


# --- health, readiness, metrics, OpenAPI -------------------------------------------------


@ops.get("/healthz")
def healthz() -> Response:
    """Alive: the process answers. Says nothing about the model (that is ``/readyz``)."""
    return jsonify({"status": "ok"})


@ops.get("/readyz")
def readyz() -> Response | tuple[Response, int, dict[str, str]]:
    """Ready: the model is loaded. Load balancers send traffic only to ready workers."""
    st = state()
    if st.engine.ready:
        return jsonify({"status": "ready", "model": st.settings.model})
    error = st.engine.load_error
    if error is None:
        body = ModelUnavailable("the model is still loading").to_dict()
        return jsonify({"error": body}), 503, {"Retry-After": "5"}
    message = f"the model could not be loaded: {error.message}"
    return jsonify({"error": ModelUnavailable(message).to_dict()}), 503, {}


@ops.get("/metrics")
def metrics() -> Response:
    """Prometheus text format, for this worker process only."""
    return Response(generate_latest(state().metrics.registry), mimetype=CONTENT_TYPE_LATEST)


@ops.get("/openapi.json")
def openapi() -> Response:
    st = state()
    doc = build_openapi(st.settings)
    for part in st.openapi_parts:
        part(doc, st.settings)
    return jsonify(doc)


# --- the page ------------------------------------------------------------------------------


@page.get("/")
def index() -> str:
    return render_page()


@page.post("/caption-form")
def caption_form() -> tuple[str, int]:
    """The no-JavaScript path: the form posts here and gets the page back with the result."""
    st = state()
    if st.settings.api_keys and not _valid_key(_form_value("api_key") or _bearer()):
        raise Unauthorized("enter a valid API key")
    upload = request.files.get("image")
    url = request.form.get("url", "").strip()
    if upload is not None and not _empty_upload(upload):
        item = _upload_item(upload)
    elif url:
        item = Item({"kind": "url", "url": url}, url=url)
    else:
        raise InvalidRequest("choose an image file or paste an image URL")
    run_job(st, new_job([item], DecodingSettings()))
    if item.error is not None:
        raise item.error
    return render_page(result=item.to_json(), url=url), 200


def render_page(
    *, result: dict[str, Any] | None = None, error: dict[str, str] | None = None, url: str = ""
) -> str:
    st = state()
    return render_template(
        "index.html",
        result=result,
        error=error,
        url=url,
        keys_required=bool(st.settings.api_keys),
        model=st.settings.model,
    )


# --- cross-cutting: auth, CORS, rate limits, metrics, errors -------------------------------


def _bearer() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _valid_key(token: str) -> bool:
    """Constant-time comparison against every key, so timing says nothing about any of them."""
    if not token:
        return False
    given = hashlib.sha256(token.encode("utf-8")).digest()
    found = False
    for key in state().settings.api_keys:
        found |= hmac.compare_digest(given, hashlib.sha256(key.encode("utf-8")).digest())
    return found


def _check_api_key() -> None:
    if not state().settings.api_keys or request.method == "OPTIONS":
        return
    if request.endpoint is None or request.endpoint in OPEN_ENDPOINTS:
        return  # unknown URLs get their 404; the form checks its own key field
    if not _valid_key(_bearer()):
        raise Unauthorized(
            "this server needs an API key: send Authorization: Bearer <key>"
            if not _bearer()
            else "the API key is not valid"
        )


def _rate_limit_key() -> str:
    """Clients with a valid key are limited per key; everyone else per address."""
    token = _bearer() or _form_value("api_key")
    if token and _valid_key(token):
        return "key:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:24]
    return "addr:" + (request.remote_addr or "unknown")


def _form_value(name: str) -> str:
    """A field of the page's form, or "" (also when the body cannot be parsed)."""
    if request.endpoint not in HTML_ENDPOINTS:
        return ""
    try:
        return request.form.get(name, "")
    except HTTPException:  # too large: the view reports it, not this helper
        return ""


def _origin_allowed(origin: str) -> bool:
    return bool(origin) and any(fnmatchcase(origin, p) for p in state().settings.cors_origins)


def _cors_preflight() -> Response | None:
    """Answer CORS preflights before auth and rate limits (browsers send no key with them)."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    response = make_response("", 204)
    origin = request.headers.get("Origin", "")
    if _origin_allowed(origin):
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Content-Type, Idempotency-Key"
        )
        response.headers["Access-Control-Max-Age"] = "600"
    return response  # without Access-Control-Allow-Origin (added below) the browser refuses


def _cors_headers(response: Response) -> Response:
    origin = request.headers.get("Origin", "")
    if _origin_allowed(origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "ETag, Retry-After, Location"
        response.vary.add("Origin")
    return response


def _start_timer() -> None:
    g.altcap_t0 = time.perf_counter()


def _record_request(response: Response) -> Response:
    st = state()
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    st.metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
    t0 = g.get("altcap_t0")
    if t0 is not None:
        st.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
    return response


def error_response(
    code: str, message: str, status: int, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    """The one error shape: JSON for the API, the page re-rendered for the no-JS form."""
    body = {"code": code, "message": message}
    if request.endpoint in HTML_ENDPOINTS:
        response = make_response(render_page(error=body, url=_form_value("url")), status)
    else:
        response = jsonify({"error": body})
        response.status_code = status
    for name, value in headers:
        response.headers[name] = value
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def handle_altcap_error(exc: AltCapError) -> Response:
    headers: list[tuple[str, str]] = []
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append(("Retry-After", str(int(retry_after))))
    elif exc.code == "model_unavailable" and state().engine.load_error is None:
        headers.append(("Retry-After", "5"))  # still loading: worth retrying soon
    if isinstance(exc, Unauthorized):
        headers.append(("WWW-Authenticate", 'Bearer realm="AltCap"'))
    status = exc.http_status if 400 <= exc.http_status <= 599 else 500
    return error_response(exc.code, exc.message, status, headers)


def handle_http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status) or (exc.name or "error").lower().replace(" ", "_")
    message = exc.description or exc.name or code
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"the request body is larger than {limit} bytes" if limit else message
    headers = [
        (k, v)
        for k, v in exc.get_headers()
        if k.lower() in ("allow", "www-authenticate", "retry-after")
    ]
    if status == 429:
        headers.append(("Retry-After", str(_retry_after_rate_limit())))
        message = f"rate limit exceeded ({exc.description}); retry later"
    return error_response(code, message, status, headers)


def handle_unexpected(exc: Exception) -> Response:
    """A bug. The traceback goes to the log; the client gets a code and no details."""
    log.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(
        "internal_error", "an unexpected error happened on the server; it was logged", 500
    )


def _retry_after_rate_limit() -> int:
    limiter = state().limiter
    try:
        current = limiter.current_limit if limiter is not None else None
        if current is not None:
            return max(1, math.ceil(current.reset_at - time.time()))
    except Exception:  # the storage went away between the check and now
        log.warning("could not read the rate limit window", exc_info=True)
    return 60


def _make_limiter(app: Flask, settings: Settings) -> Any:
    from limits.errors import ConfigurationError

    try:
        limiter = _new_limiter(app, settings)
    except ConfigurationError as exc:  # e.g. memcached:// without its client library
        raise ConfigError(f"ALTCAP_RATELIMIT_STORAGE_URL cannot be used: {exc}") from None
    limiter.request_filter(
        lambda: request.method == "OPTIONS" or request.endpoint not in LIMITED_ENDPOINTS
    )
    return limiter


def _new_limiter(app: Flask, settings: Settings) -> Any:
    from flask_limiter import Limiter

    return Limiter(
        key_func=_rate_limit_key,
        app=app,
        storage_uri=settings.ratelimit_storage,
        application_limits=[settings.rate_limit],  # one budget shared by the limited endpoints
        headers_enabled=False,  # Retry-After is set on 429 answers only, by handle_http_error
        strategy="fixed-window",
        swallow_errors=True,  # a dead Redis must not turn every request into a 500
        in_memory_fallback_enabled=True,
    )


def init_app(app: Flask, settings: Settings, engine: Engine, cache: Cache) -> ServiceState:
    """Attach the service to ``app``: state, hooks (in order), blueprints, error handlers."""
    st = ServiceState(settings, engine, cache, Metrics(engine))
    app.extensions["altcap"] = st
    engine.on_batch = st.metrics.observe_batch
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    # before_request hooks run in this order (and stop at the first that answers); the
    # after_request ones run in reverse, so the metrics see the final status.
    hooks: list[Callable[[], Any]] = [_start_timer, _cors_preflight, _check_api_key]
    for hook in hooks:
        app.before_request(hook)
    app.after_request(_record_request)
    app.after_request(_cors_headers)
    if settings.rate_limit:
        st.limiter = _make_limiter(app, settings)

    app.register_blueprint(api)
    app.register_blueprint(ops)
    app.register_blueprint(page)
    app.register_error_handler(AltCapError, handle_altcap_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
    return st


# --- OpenAPI -------------------------------------------------------------------------------


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3 description of this service, with this deployment's limits in it."""
    error = {"description": "An error (see the code)", "content": _json(_ref("Error"))}
    html = {"text/html": {"schema": {"type": "string"}}}
    decoding = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "method": {"type": "string", "enum": ["greedy", "beam", "nucleus"]},
            "beam_size": {"type": "integer", "minimum": 1, "maximum": 32},
            "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
            "temperature": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 10,
            },
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "nullable": True},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 256},
            "min_tokens": {"type": "integer", "minimum": 0, "maximum": 256},
            "stop_token": {"type": "string", "maxLength": MAX_STOP_TOKEN, "nullable": True},
            "stop_at_eos": {"type": "boolean"},
        },
    }
    schemas = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _ref("ErrorBody")},
        },
        "ErrorBody": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "example": "invalid_request"},
                "message": {"type": "string"},
            },
        },
        "Decoding": decoding,
        "ImageInput": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["url"],
                    "additionalProperties": False,
                    "properties": {"url": {"type": "string", "format": "uri"}},
                },
                {
                    "type": "object",
                    "required": ["data"],
                    "additionalProperties": False,
                    "properties": {
                        "data": {
                            "type": "string",
                            "format": "byte",
                            "description": "Base64 image bytes (a data: URL also works)",
                        }
                    },
                },
            ]
        },
        "CaptionsRequest": {
            "type": "object",
            "required": ["images"],
            "additionalProperties": False,
            "properties": {
                "images": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_images_per_request,
                    "items": _ref("ImageInput"),
                },
                "decoding": _ref("Decoding"),
            },
        },
        "Source": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": ["url", "upload", "data"]},
                "url": {"type": "string"},
                "filename": {"type": "string"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
        "Caption": {
            "type": "object",
            "required": ["caption", "tokens", "cached", "source"],
            "properties": {
                "caption": {"type": "string"},
                "tokens": {"type": "integer", "minimum": 0},
                "cached": {"type": "boolean"},
                "source": _ref("Source"),
            },
        },
        "ImageError": {
            "type": "object",
            "required": ["error", "source"],
            "properties": {
                "error": _ref("ErrorBody"),
                "source": _ref("Source"),
            },
        },
        "CaptionsResponse": {
            "type": "object",
            "required": ["model", "decoding", "results"],
            "properties": {
                "model": {"type": "string"},
                "decoding": {"type": "object"},
                "results": {
                    "type": "array",
                    "items": {"anyOf": [_ref("Caption"), _ref("ImageError")]},
                },
            },
        },
    }
    captions_ok = {
        "description": "One result per image, in order",
        "content": _json(_ref("CaptionsResponse")),
    }
    paths = {
        "/v1/captions": {
            "post": {
                "operationId": "createCaptions",
                "summary": "Caption images given as URLs, base64 data or uploads",
                "requestBody": {
                    "required": True,
                    "content": {
                        **_json(_ref("CaptionsRequest")),
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "image": {
                                        "type": "array",
                                        "items": {"type": "string", "format": "binary"},
                                    },
                                    "url": {"type": "array", "items": {"type": "string"}},
                                    "decoding": {
                                        "type": "string",
                                        "description": "Decoding settings as JSON text",
                                    },
                                },
                            }
                        },
                    },
                },
                "responses": {"200": captions_ok, "default": error},
            },
            "get": {
                "operationId": "getCaption",
                "summary": "Caption one image by URL (cacheable: ETag, Cache-Control)",
                "parameters": [
                    {
                        "name": "url",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "maxLength": fetch.MAX_URL_LENGTH},
                    }
                ],
                "responses": {
                    "200": captions_ok,
                    "304": {"description": "Not modified (If-None-Match matched the ETag)"},
                    "default": error,
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Alive",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string"}},
                            }
                        ),
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: 200 once the model is loaded",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Ready",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["status", "model"],
                                "properties": {
                                    "status": {"type": "string"},
                                    "model": {"type": "string"},
                                },
                            }
                        ),
                    },
                    "503": {"description": "Not ready", "content": _json(_ref("Error"))},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of this worker process",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "default": error,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3", "content": _json({"type": "object"})}
                },
            }
        },
        "/": {
            "get": {
                "operationId": "page",
                "summary": "A page to caption one image by hand",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": html}},
            }
        },
        "/caption-form": {
            "post": {
                "operationId": "captionForm",
                "summary": "The page's form without JavaScript: renders the page with the result",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "url": {"type": "string"},
                                    "api_key": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "The page with the caption", "content": html},
                    "default": {"description": "The page with the error", "content": html},
                },
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "AltCap",
            "version": "1",
            "description": "Alt text for images: a ClipCap captioning model behind a small API.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if settings.api_keys:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
