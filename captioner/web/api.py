"""The HTTP service: Flask blueprints for captions, health, metrics, OpenAPI and a small page.

This module is the Flask glue; the parts it wires live in modules of their own, free of
Flask: ``service`` (per-app state, running a request's images through cache, download and
model), ``parsing`` (request bodies), ``metrics`` (Prometheus) and ``openapi`` (the
document). ``init_app`` wires one application:

- ``api`` (``/v1/captions``): JSON or multipart in, one result or one error per image out,
  in order, so one broken image never costs the others their captions;
- ``ops``: ``/healthz`` (the process is alive), ``/readyz`` (the model is loaded),
  ``/metrics`` (Prometheus), ``/openapi.json``;
- ``page``: ``/``, a form that works without JavaScript (``POST /caption-form`` renders the
  result) and is enhanced by a few lines of JavaScript when it is there.

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

import hashlib
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

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

from captioner.config import DecodingSettings, lang_to_mark
from captioner.errors import AltCapError, ConfigError
from captioner.jobs.rows import NO_CAPTION_MESSAGE
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
    run_job,
)
from captioner.serve.settings import Settings

__all__ = [
    "CrossSiteRequest",
    "HostNotAllowed",
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
# What a request costs of the rate-limit budget, by endpoint (any other limited one costs 1):
# the limit guards model time, so a request pays per image. ``jobs_api`` adds job creation.
RATE_LIMIT_COSTS: dict[str, Callable[[], int]] = {}
IPV6_CLIENT_PREFIX = 64  # an IPv6 client is counted by its /64, what one host may use

# Endpoints whose errors are shown as the HTML page rather than as JSON.
HTML_ENDPOINTS = frozenset({"page.caption_form"})

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


# Host names the default ALLOWED_HOSTS always answers to, beside the address listened on.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# What SERVER_NAME says when the server listens on every address ("": not known).
ALL_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
# Methods a page of another site may send: they change nothing (CORS still hides the answer).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The CSP of HTML answers that set none of their own (the page; reports and patched pages set
# a sandbox). The page loads its script and style from /static and talks to this server only.
HTML_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HTML_HEADERS = {
    "Content-Security-Policy": HTML_CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP 2
    "Referrer-Policy": "same-origin",  # job and page URLs are not told to other sites
}


class HostNotAllowed(AltCapError):
    """The Host header names a host this server does not answer to (ALTCAP_ALLOWED_HOSTS)."""

    code = "host_not_allowed"
    http_status = 400


class CrossSiteRequest(AltCapError):
    """A browser sent a POST (or other unsafe method) from a page of another site."""

    code = "cross_site_request"
    http_status = 403


def state() -> ServiceState:
    return current_app.extensions["altcap"]


# --- from the request to a job ------------------------------------------------------------


def is_json_request() -> bool:
    mimetype = request.mimetype
    return mimetype == "application/json" or mimetype.endswith("+json")


def request_json() -> Any:
    """The request's JSON body, parsed once per request: the rate-limit cost and the view
    both read it. Raises ``InvalidRequest`` (every time it is asked) when it does not parse."""
    if "altcap_json" not in g:
        try:
            g.altcap_json = (parsing.load_json(request.get_data()), None)
        except InvalidRequest as exc:
            g.altcap_json = (None, exc)
    body, error = g.altcap_json
    if error is not None:
        raise error
    return body


def parse_request(max_images: int) -> tuple[list[Item], DecodingSettings]:
    mimetype = request.mimetype
    if is_json_request():
        return parsing.parse_json(request_json(), max_images)
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return parsing.parse_form(request.files, request.form, max_images)
    raise UnsupportedMediaType(
        "send application/json or multipart/form-data"
        + (f", not {mimetype}" if mimetype else " with a Content-Type header")
    )


def new_job(items: list[Item], decoding: DecodingSettings) -> Job:
    st = state()
    check_model_limits(st.engine, decoding)
    return Job(items, decoding, time.monotonic() + st.settings.request_timeout_s)


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
        etag = cache_key(st.model.cache_id, settings, item.sha)
        if request.if_none_match.contains_weak(etag):
            return _not_modified(st, etag)
    run_job(st, job)
    if item.error is not None:
        raise item.error
    etag = cache_key(st.model.cache_id, settings, str(item.sha))  # set: the image was read
    if request.if_none_match.contains_weak(etag):
        return _not_modified(st, etag)
    response = jsonify(_envelope(st, job))
    response.set_etag(etag, weak=True)  # weak: "cached" differs between equivalent answers
    response.headers["Cache-Control"] = _cache_control(st)
    return response


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
    """The language tag of the captions served: the loaded model's; before it has loaded
    (answers from the cache), what the model directory says, if it is one; else None."""
    captioner = st.engine.captioner
    return captioner.language if captioner is not None else st.model.language


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
    run_job(st, new_job([item], DecodingSettings()))
    if item.error is not None:
        raise item.error
    return render_page(result=item.to_json(), url=url), 200


# what the page says for an empty caption (batch reports give the same reason)
NO_CAPTION = f"No suggestion: {NO_CAPTION_MESSAGE}."


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
        model=st.model.name,
        language=lang_to_mark("en", captions_language(st)),  # the page itself is English
        no_caption=NO_CAPTION,
    )


# --- cross-cutting: hosts, cross-site requests, auth, CORS, rate limits, metrics, errors ---


class HostCheck:
    """The first ``before_request`` hook: refuse a Host this server does not answer to.

    A DNS-rebinding page (evil.example, its name pointed at 127.0.0.1 after it loaded) talks
    to a loopback server as its own origin, and its requests say ``Host: evil.example``.
    ``ALTCAP_ALLOWED_HOSTS`` names the hosts (port ignored; ``*`` wildcards). Unset: the
    loopback names and the address the server listens on, which gunicorn and werkzeug give
    as ``SERVER_NAME``; listening on every address (``0.0.0.0``, the Procfile's bind), the
    server cannot know its public name, so any host is answered and a warning logged once.
    """

    def __init__(self, settings: Settings) -> None:
        self.allowed = settings.allowed_hosts
        self.warned = False

    def __call__(self) -> None:
        name = host_name(request.host)  # "" when the header has characters a host cannot
        if self.allowed:
            if any(fnmatchcase(name, pattern) for pattern in self.allowed):
                return
        else:
            bound = host_name(request.environ.get("SERVER_NAME", ""))
            if bound in ALL_ADDRESSES:
                self._warn_any_host(bound)
                return
            if name and (name in LOOPBACK_HOSTS or name == bound):
                return
        host = f"the host {name!r}" if name else "this Host header"
        raise HostNotAllowed(
            f"this server does not answer to {host}: its operator can add it to"
            " ALTCAP_ALLOWED_HOSTS"
        )

    def _warn_any_host(self, bound: str) -> None:
        if not self.warned:
            self.warned = True
            log.warning(
                "listening on all addresses (%s) with ALTCAP_ALLOWED_HOSTS unset: every Host is"
                " answered, so a DNS-rebinding web page can use this server; set"
                " ALTCAP_ALLOWED_HOSTS to the names it is reached by",
                bound or "unknown",
            )


def host_name(host: str) -> str:
    """The name in a Host header: lower case, without port, IPv6 brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _check_cross_site() -> None:
    """Refuse a browser's POST (PUT, DELETE, ...) sent by a page of another site.

    A page anywhere can submit a form, multipart or urlencoded, to ``/caption-form`` or
    ``/v1/captions`` without a CORS preflight; the answer stays unreadable to it, but the
    server spends model time and downloads the URLs it names from inside its own network
    (a loopback or intranet server that no outside page should reach).

    Browsers say where a request comes from in ``Sec-Fetch-Site`` (every current one):
    ``same-origin`` (the page's own script and form) and ``none`` (typed by the user) pass;
    ``same-site`` (another port of 127.0.0.1 is one) and ``cross-site`` are refused unless
    the ``Origin`` is one of ``ALTCAP_CORS_ORIGINS`` (the extension). Without that header
    (older browsers), the ``Origin``, else the ``Referer``, must name this host. A request
    with none of the three comes from outside a browser (curl, scripts) and passes.

    Stateless, unlike a token in the form: nothing to share between workers or to expire in
    an open page, and the API's clients need none (the checks of Go's
    ``net/http.CrossOriginProtection``, plus the ``Referer``).
    """
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin", "")
    if _origin_allowed(origin):
        return
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if site in ("same-origin", "none"):
        return
    if not site:
        source = origin or request.headers.get("Referer", "")
        if not source or urlsplit(source).netloc.lower() == request.host.lower():
            return
    raise CrossSiteRequest(
        "a page of another site may not send this request: use this server's own page,"
        " or call it from outside a browser (or from an origin in ALTCAP_CORS_ORIGINS)"
    )


def _security_headers(response: Response) -> Response:
    """``nosniff`` on every answer; on HTML ones, the headers of ``HTML_HEADERS`` that the
    view did not set itself (reports and patched pages keep their sandbox CSP)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        for name, value in HTML_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def bearer_token() -> str:
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
    if not _valid_key(bearer_token()):
        raise Unauthorized(
            "this server needs an API key: send Authorization: Bearer <key>"
            if not bearer_token()
            else "the API key is not valid"
        )


def rate_limit_key() -> str:
    """Who a request is, for the rate limit and (without keys) the cap on batch jobs: a
    valid API key; else the client's address (``client_network``)."""
    token = bearer_token() or _form_value("api_key")
    if token and _valid_key(token):
        return "key:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:24]
    return "addr:" + client_network(request.remote_addr or "unknown")


def client_network(address: str) -> str:
    """The address a client is counted by: an IPv4 address as it is, an IPv6 one as its
    /64 (one host may use any address of its /64, so counting addresses counts nothing)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # "unknown", or whatever a WSGI server put there
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is the IPv4 client 192.0.2.1
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


def _form_value(name: str) -> str:
    """A field of the page's form, or "" (also when the body cannot be parsed)."""
    if request.endpoint not in HTML_ENDPOINTS:
        return ""
    try:
        return request.form.get(name, "")
    except HTTPException:  # too large: the view reports it, not this helper
        return ""


def _request_cost() -> int:
    """This request's cost for the rate limit (``RATE_LIMIT_COSTS``), at least 1.

    Flask-Limiter asks once per limit, so the answer is kept in ``g``. It never raises: an
    exception here would make Flask-Limiter take its storage for dead and fall back to memory.
    """
    cost = g.get("altcap_cost")
    if cost is None:
        count = RATE_LIMIT_COSTS.get(request.endpoint or "")
        try:
            cost = max(1, count()) if count is not None else 1
        except HTTPException:  # e.g. 413: the view reports it
            cost = 1
        except Exception:
            log.exception("could not count the images of %s %s", request.method, request.path)
            cost = 1
        g.altcap_cost = cost
    return cost


def json_for_cost() -> Any:
    """The JSON body for a cost function, or None when it is not JSON or does not parse
    (the view then reports what is wrong)."""
    if not is_json_request():
        return None
    try:
        return request_json()
    except InvalidRequest:
        return None


def list_cost(value: object, most: int) -> int:
    """A list's length as a cost; 1 for what the view refuses whole before any model work
    (not a list, empty, longer than ``most``)."""
    n = len(value) if isinstance(value, list) else 0
    return n if 1 <= n <= most else 1


def _captions_cost() -> int:
    """POST /v1/captions: one per image, counted the way ``parsing`` counts them. werkzeug
    caches the parsed multipart fields, and ``empty_upload`` puts back the byte it peeks."""
    most = state().settings.max_images_per_request
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        files = [f for f in request.files.getlist("image") if not parsing.empty_upload(f)]
        urls = [u for u in request.form.getlist("url") if u.strip()]
        return list_cost(files + urls, most)
    body = json_for_cost()
    return list_cost(body.get("images") if isinstance(body, dict) else None, most)


RATE_LIMIT_COSTS["api.captions_post"] = _captions_cost


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
        key_func=rate_limit_key,
        app=app,
        storage_uri=settings.ratelimit_storage,
        application_limits=[settings.rate_limit],  # one budget shared by the limited endpoints
        application_limits_cost=_request_cost,  # counted in images, not requests
        headers_enabled=False,  # Retry-After is set on 429 answers only, by handle_http_error
        strategy="fixed-window",
        swallow_errors=True,  # a dead Redis must not turn every request into a 500
        in_memory_fallback_enabled=True,
    )


def init_app(
    app: Flask,
    settings: Settings,
    engine: Engine,
    cache: Cache,
    model: ModelIdentity | None = None,
) -> ServiceState:
    """Attach the service to ``app``: state, hooks (in order), blueprints, error handlers.

    ``model`` is the served model's identity (``captioner.model.identity``), computed here from
    ``settings.model`` unless the caller (``create_app``) already has it."""
    model = model or model_identity(settings.model)
    st = ServiceState(settings, engine, cache, Metrics(engine), model)
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
