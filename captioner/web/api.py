"""The HTTP service: Flask blueprints for captions, health, metrics, OpenAPI and a small page.

This module is the Flask glue; the parts it wires live in modules of their own, free of
Flask: ``service`` (per-app state, running a request's images through cache, download and
model), ``parsing`` (request bodies), ``metrics`` (Prometheus) and ``openapi`` (the
document). ``init_app`` wires one application:

- ``api`` (``/v1/captions``): JSON or multipart in, one result or one error per image out,
  in order, so one broken image never costs the others their captions; each result has the
  caption, the text in the image (``read_text``) and the alt made of them;
- ``ops``: ``/healthz`` (the process is alive), ``/readyz`` (the model is loaded),
  ``/metrics`` (Prometheus), ``/openapi.json``;
- ``page``: ``/``, a form that works without JavaScript (``POST /caption-form`` renders the
  result: the alt, and the caption and text it was made of) and is enhanced by a few lines
  of JavaScript when it is there.

Cross-cutting rules apply to all of them: every error is ``{"error": {"code", "message"}}``
with a stable code and never a traceback; optional API keys (``Authorization: Bearer``,
compared in constant time); rate limits by Flask-Limiter keyed by API key or address and
counted in images (``RATE_LIMIT_COSTS``); CORS for the browser extension's origins only;
metrics in a registry owned by the app, so test apps never share counters; under gunicorn,
``/metrics`` adds up every worker's (``captioner.serve.metrics``).

Against other web pages: a request whose ``Host`` is not one the server answers to is refused
first (400 ``host_not_allowed``: a DNS-rebinding page cannot reach a server on 127.0.0.1);
a browser's POST (or other unsafe method) sent by a page of another site is refused (403
``cross_site_request``, see ``_check_cross_site``); HTML answers carry a CSP, no framing and
no Referer to other sites, and every answer ``nosniff``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
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
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from captioner import trust
from captioner.config import DecodingSettings
from captioner.errors import AltCapError
from captioner.jobs.rows import NO_CAPTION_MESSAGE
from captioner.lang import lang_to_mark
from captioner.model.identity import ModelIdentity, model_identity, redact_model_path
from captioner.serve import parsing
from captioner.serve.cache import Cache, cache_key
from captioner.serve.engine import Engine, ModelUnavailable
from captioner.serve.metrics import Metrics
from captioner.serve.openapi import build_openapi, json_content, schema_ref
from captioner.serve.service import (
    InvalidRequest,
    Item,
    Job,
    ServiceState,
    Unauthorized,
    UnsupportedMediaType,
    check_model_limits,
    lookup_url_memo,
    open_text_pool,
    run_job,
)
from captioner.serve.settings import Settings
from captioner.web.hooks import (
    HTML_ENDPOINTS,
    RATE_LIMIT_COSTS,
    HostCheck,
    _captions_cost,
    _check_api_key,
    _check_cross_site,
    _cors_headers,
    _cors_preflight,
    _form_value,
    _make_limiter,
    _record_request,
    _security_headers,
    _start_timer,
    _valid_key,
    bearer_token,
    is_json_request,
    request_json,
    state,
)

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
]

log = logging.getLogger(__name__)

api = Blueprint("api", __name__, url_prefix="/v1")
ops = Blueprint("ops", __name__)
page = Blueprint(
    "page", __name__, template_folder="templates", static_folder="static", static_url_path="/static"
)


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


# --- from the request to a job ------------------------------------------------------------


def parse_request(max_images: int) -> Job:
    mimetype = request.mimetype
    if is_json_request():
        return parsing.parse_json(request_json(), max_images)
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return parsing.parse_form(request.files, request.form, max_images)
    raise UnsupportedMediaType(
        "send application/json or multipart/form-data"
        + (f", not {mimetype}" if mimetype else " with a Content-Type header")
    )


def new_job(job: Job) -> Job:
    """``job`` with the request's deadline, once its settings fit the model."""
    st = state()
    check_model_limits(st.engine, job.decoding)
    job.deadline = time.monotonic() + st.settings.request_timeout_s
    return job


# --- /v1/captions ------------------------------------------------------------------------


@api.post("/captions")
def captions_post() -> Response:
    """Caption up to ``max_images_per_request`` images; per-image errors, in order, 200."""
    st = state()
    job = new_job(parse_request(st.settings.max_images_per_request))
    run_job(st, job)
    return jsonify(_envelope(st, job))


@api.get("/captions")
def captions_get() -> Response:
    """One image by URL; cacheable by browsers and proxies (ETag, Cache-Control).

    ``alt``: the author's alt to check, as in POST (``parsing.parse_alt``); at most one.
    """
    st = state()
    url = request.args.get("url", "").strip()
    if not url:
        raise InvalidRequest("the url query parameter is required")
    read_text = parsing.parse_read_text(request.args.get("read_text"))
    item = Item({"kind": "url", "url": url}, url=url, alt=_query_alt())
    job = new_job(Job([item], DecodingSettings(), read_text=read_text))
    lookup_url_memo(st, item)
    if item.sha is not None:  # answer a revalidation without downloading or captioning
        etag = _etag(st, job, item.sha)
        if request.if_none_match.contains_weak(etag):
            return _not_modified(st, etag)
    run_job(st, job)
    if item.error is not None:
        raise item.error
    response = jsonify(_envelope(st, job))
    if item.warnings:  # the text could not be read: an answer to replace, not to keep
        response.headers["Cache-Control"] = "no-store"
        return response
    etag = _etag(st, job, str(item.sha))  # set: the image was read
    if request.if_none_match.contains_weak(etag):
        return _not_modified(st, etag)
    response.set_etag(etag, weak=True)  # weak: "cached" differs between equivalent answers
    response.headers["Cache-Control"] = _cache_control(st)
    return response


def _query_alt() -> str | None:
    """The ``alt`` query parameter of a GET: one, checked as POST's (``parsing.parse_alt``)."""
    alts = request.args.getlist("alt")
    if len(alts) > 1:
        raise InvalidRequest(f"{len(alts)} alt parameters for one image: send one, or none")
    return parsing.parse_alt(alts[0], "alt") if alts else None


def _etag(st: ServiceState, job: Job, sha: str) -> str:
    """The validator of a GET answer: the caption's cache key, with what read the text (or
    that none did), the confidence needed to be ``confident`` and the author's alt checked
    (when there is one) among its settings, so a new reader, ``read_text``,
    ``ALTCAP_MIN_CONFIDENCE`` or another alt (or none) is a new answer."""
    reader = st.reader.engine_id if st.reader is not None and job.read_text else ""
    settings = {
        **job.decoding.to_dict(),
        "text_engine": reader,
        "min_confidence": st.settings.min_confidence,
    }
    (item,) = job.items  # a GET is one image
    if item.alt is not None:  # an answer with an alt_check: only for the same alt
        settings["author_alt"] = item.alt
    return cache_key(st.model.cache_id, settings, sha)


def _envelope(st: ServiceState, job: Job) -> dict[str, Any]:
    envelope = {
        "model": st.model.name,
        "decoding": job.decoding.to_dict(),
        "results": [item.to_json() for item in job.items],
    }
    language = captions_language(st)
    if language is not None:
        envelope["language"] = language
    return envelope


def captions_language(st: ServiceState) -> str | None:
    """The language tag of the captions served (``ServiceState.captions_language``)."""
    return st.captions_language()


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
        return jsonify(
            {"status": "ready", "model": st.model.name, "language": captions_language(st)}
        )
    error = st.engine.load_error
    if error is None:
        body = ModelUnavailable("the model is still loading").to_dict()
        return jsonify({"error": body}), 503, {"Retry-After": "5"}
    reason = redact_model_path(error.message, st.settings.model, st.model.name)
    message = f"the model could not be loaded: {reason}"
    return jsonify({"error": ModelUnavailable(message).to_dict()}), 503, {}


@ops.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: under gunicorn, the sum over its workers.

    See ``captioner.serve.metrics``.
    """
    body, content_type = state().metrics.exposition(request.headers.get("Accept"))
    return Response(body, headers={"Content-Type": content_type})


@ops.get("/openapi.json")
def openapi() -> Response:
    st = state()
    doc = build_openapi(st.settings)
    for part in [*st.openapi_parts, _document_host_check]:
        part(doc, st.settings)
    return jsonify(doc)


def _document_host_check(doc: dict[str, Any], settings: Settings) -> None:
    """Every operation may answer 400 ``host_not_allowed``: say so where one documents no
    error. (Only unsafe methods get 403 ``cross_site_request``; each documents a default.)"""
    refused = {
        "description": "host_not_allowed: the Host header is not in ALTCAP_ALLOWED_HOSTS",
        "content": json_content(schema_ref("Error")),
    }
    for item in doc["paths"].values():
        for operation in item.values():
            responses = operation.get("responses", {})
            if "default" not in responses:
                responses.setdefault("400", refused)


# --- the page ------------------------------------------------------------------------------


@page.get("/")
def index() -> str:
    return render_page()


@page.post("/caption-form")
def caption_form() -> tuple[str, int]:
    """The no-JavaScript path: the form posts here and gets the page back with the result."""
    st = state()
    if st.settings.api_keys and not _valid_key(_form_value("api_key") or bearer_token()):
        raise Unauthorized("enter a valid API key")
    upload = request.files.get("image")
    url = request.form.get("url", "").strip()
    if upload is not None and not parsing.empty_upload(upload):
        item = parsing.upload_item(upload)
    elif url:
        item = Item({"kind": "url", "url": url}, url=url)
    else:
        raise InvalidRequest("choose an image file or paste an image URL")
    alt = request.form.get("alt")
    item.alt = None if alt is None else parsing.parse_alt(alt, "alt")
    run_job(st, new_job(Job([item])))
    if item.error is not None:
        raise item.error
    return render_page(result=item.to_json(), url=url, alt=item.alt or ""), 200


# what the page says for an empty caption (batch reports give the same reason)
NO_CAPTION = f"No suggestion: {NO_CAPTION_MESSAGE}."
# The page's words for a result's parts; the page's JavaScript reads them from the page.
PAGE_WORDS: dict[str, Any] = {
    "caption": "The model's caption",
    "text": "Text in the image",
    "no_text": "No text was found in the image.",
    "alt_from": {  # describe.ALT_FROM
        "caption": "Made from the model's caption.",
        "text": "Made from the text in the image: the image is mostly text.",
        "caption_and_text": "Made from the model's caption and the text in the image.",
    },
    "warnings": {  # service.RESULT_WARNINGS
        "ocr_timeout": "The text in the image was not read: reading it took too long.",
        "ocr_failed": "The text in the image was not read: reading it failed.",
        "ocr_unavailable": "The text in the image was not read: this server cannot read text.",
        "alt_check_unavailable": "Your alt text was not checked: this model cannot compare "
        "text with images.",
    },
    # the caption's confidence, as "<confidence>: 96%"; the warning when it is not confident
    "confidence": "AltCap's confidence in this description",
    "not_confident": "AltCap is not sure this description is right; check it before using it.",
    "alt_check": {  # trust.ALT_VERDICTS
        "matches": "Your alt text appears to match the image.",
        "suspect": "Your alt text may not match the image. Check it; AltCap's description "
        "is above.",
    },
}


def render_page(
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
    url: str = "",
    alt: str = "",
) -> str:
    st = state()
    return render_template(
        "index.html",
        result=result,
        error=error,
        url=url,
        alt=alt,
        # the caption is shown under a plain-words warning where a client would write nothing
        withheld=result is not None
        and trust.withholds(result.get("confident"), str(result.get("alt_from", ""))),
        max_alt_chars=parsing.MAX_AUTHOR_ALT_CHARS,
        keys_required=bool(st.settings.api_keys),
        model=st.model.name,
        language=lang_to_mark("en", captions_language(st)),  # the page itself is English
        no_caption=NO_CAPTION,
        words=PAGE_WORDS,
    )


# --- cross-cutting: hosts, cross-site requests, auth, CORS, rate limits, metrics, errors ---


RATE_LIMIT_COSTS["api.captions_post"] = _captions_cost


def error_response(
    code: str, message: str, status: int, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    """The one error shape: JSON for the API, the page re-rendered for the no-JS form."""
    body = {"code": code, "message": message}
    if request.endpoint in HTML_ENDPOINTS:
        page = render_page(
            error=body,
            url=_form_value("url"),
            alt=_form_value("alt")[: parsing.MAX_AUTHOR_ALT_CHARS],
        )
        response = make_response(page, status)
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
    st = state()
    message = redact_model_path(exc.message, st.settings.model, st.model.name)  # load errors
    return error_response(exc.code, message, status, headers)


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
        message = _rate_limited_message(str(exc.description))
    return error_response(code, message, status, headers)


def handle_unexpected(exc: Exception) -> Response:
    """A bug. The traceback goes to the log; the client gets a code and no details."""
    log.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(
        "internal_error", "an unexpected error happened on the server; it was logged", 500
    )


def _rate_limited_message(limit: str) -> str:
    """Say what the request cost, and whether waiting can ever help."""
    cost = g.get("altcap_cost", 1)
    limiter = state().limiter
    current = limiter.current_limit if limiter is not None else None
    if current is not None and cost > current.limit.amount:
        return (
            f"this request costs {cost} (one per image) but the whole rate limit is {limit}:"
            " split it into smaller requests"
        )
    spent = f"; this request costs {cost}" if cost > 1 else ""
    return f"rate limit exceeded ({limit}{spent}); retry later"


def _retry_after_rate_limit() -> int:
    limiter = state().limiter
    try:
        current = limiter.current_limit if limiter is not None else None
        if current is not None:
            return max(1, math.ceil(current.reset_at - time.time()))
    except Exception:  # the storage went away between the check and now
        log.warning("could not read the rate limit window", exc_info=True)
    return 60


def init_app(
    app: Flask,
    settings: Settings,
    engine: Engine,
    cache: Cache,
    model: ModelIdentity | None = None,
) -> ServiceState:
    """Attach the service to ``app``: state (with the reader pool for the text in images,
    ``open_text_pool``), hooks (in order), blueprints, error handlers.

    ``model`` is the served model's identity (``captioner.model.identity``), computed here from
    ``settings.model`` unless the caller (``create_app``) already has it."""
    model = model or model_identity(settings.model)
    reader, reader_warning = open_text_pool(settings, model)  # once per process (worker)
    st = ServiceState(
        settings,
        engine,
        cache,
        Metrics(engine),
        model,
        reader=reader,
        reader_warning=reader_warning,
    )
    app.extensions["altcap"] = st
    engine.on_batch = st.metrics.observe_batch
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    # before_request hooks run in this order (and stop at the first that answers); the
    # after_request ones run in reverse, so the metrics see the final status.
    hooks: list[Callable[[], Any]] = [
        _start_timer,
        HostCheck(settings),
        _cors_preflight,
        _check_cross_site,
        _check_api_key,
    ]
    for hook in hooks:
        app.before_request(hook)
    app.after_request(_record_request)
    app.after_request(_cors_headers)
    app.after_request(_security_headers)
    if settings.rate_limit:
        st.limiter = _make_limiter(app, settings)

    app.register_blueprint(api)
    app.register_blueprint(ops)
    app.register_blueprint(page)
    app.register_error_handler(AltCapError, handle_altcap_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
    return st
