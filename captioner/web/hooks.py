"""What every request goes through before and after its view: the Host check, cross-site
requests, API keys, CORS, security headers, rate limits (charged per image), request metrics;
and ``state()``, the app's service state that views and hooks share."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    current_app,
    g,
    make_response,
    request,
)
from werkzeug.exceptions import HTTPException

from captioner.errors import AltCapError, ConfigError
from captioner.serve import parsing
from captioner.serve.service import (
    InvalidRequest,
    ServiceState,
    Unauthorized,
)
from captioner.serve.settings import Settings

__all__ = [
    "ALL_ADDRESSES",
    "HTML_CSP",
    "HTML_ENDPOINTS",
    "HTML_HEADERS",
    "IPV6_CLIENT_PREFIX",
    "LIMITED_ENDPOINTS",
    "LOOPBACK_HOSTS",
    "OPEN_ENDPOINTS",
    "RATE_LIMIT_COSTS",
    "SAFE_METHODS",
    "CrossSiteRequest",
    "HostCheck",
    "HostNotAllowed",
    "bearer_token",
    "client_network",
    "host_name",
    "is_json_request",
    "json_for_cost",
    "list_cost",
    "rate_limit_key",
    "request_json",
    "state",
]

log = logging.getLogger(__name__)

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
