"""``/v1/jobs``: batch captioning over HTTP (a Flask blueprint over ``captioner.jobs.queue``).

Auth, CORS, rate limits, metrics and the error format are the app's (``captioner.web.api``):
the blueprint only adds its views, a counter, and its part of ``/openapi.json``.

    POST   /v1/jobs                          202 + Location (200: same idempotency key)
    GET    /v1/jobs/<id>                     state, counts, verdicts, progress, timestamps, pages
    GET    /v1/jobs/<id>/results?format=     json (default) | jsonl | csv | html, in report order
    GET    /v1/jobs/<id>/pages/<n>/patched   the page's HTML with suggested alt filled in
    POST   /v1/jobs/<id>/cancel              cancel (200 + job); again, or once ended: 200 + job
    DELETE /v1/jobs/<id>                     an ended job: delete (204); queued/running: 409

Cancelling and deleting are separate requests, each idempotent, so a client retrying either
loses nothing: a cancelled job keeps its rows until it is deleted, and ``DELETE`` refuses a
job still under way (409 ``job_active``) rather than cancel it, as it once did.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import Counter

from captioner.crawl.pages import MODES, VERDICTS, declared_encoding
from captioner.describe import ALT_FROM
from captioner.errors import AltCapError
from captioner.jobs import reports, rows
from captioner.jobs.budget import JobBudget
from captioner.jobs.queue import JobQueue
from captioner.jobs.request import JOB_SWITCHES, InvalidJob, parse_job
from captioner.serve.openapi import json_content, schema_ref
from captioner.serve.parsing import parse_decoding
from captioner.serve.service import (
    InvalidRequest,
    ServiceState,
    UnsupportedMediaType,
    check_model_limits,
)
from captioner.serve.settings import Settings
from captioner.trust import ALT_VERDICTS
from captioner.web import api, hooks

__all__ = ["JobsState", "init_app", "jobs", "openapi_part"]

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

# Third-party HTML served from this origin must not run here: no scripts, no forms, no
# plugins, an opaque origin (so it cannot read the API key a page of ours may keep).
PATCHED_CSP = "sandbox; default-src 'none'; img-src * data:; style-src * 'unsafe-inline'"
REPORT_CSP = "sandbox; default-src 'none'; img-src http: https:; style-src 'unsafe-inline'"


@dataclass
class JobsState:
    queue: JobQueue
    created: Counter  # jobs created, idempotent repeats not counted


def _jobs() -> JobsState:
    return current_app.extensions["altcap_jobs"]


def _queue() -> JobQueue:
    return _jobs().queue


def _scope() -> str:
    """The caller's API key, hashed: idempotency keys and jobs belong to it."""
    token = hooks.bearer_token()  # already checked by the app's auth hook when keys are set
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:32] if token else ""


def _json_body() -> Any:
    if not hooks.is_json_request():
        raise UnsupportedMediaType("send the job as application/json")
    try:
        return hooks.request_json()  # parsed once: the rate-limit cost read it already
    except InvalidRequest as exc:
        raise InvalidJob(exc.message) from None


def _creation_cost() -> int:
    """What creating a job costs of the rate limit: one per image URL of an ``images`` job
    (all it ever costs), one per listed page of a ``pages`` job, 1 for a sitemap. How many
    images a crawl finds is not known yet: the consumers charge those as they caption them
    (``jobs.JobBudget``). A repeat of an idempotency key that already started a job costs
    1, like any request: it is a client retrying after a lost answer, and it starts nothing."""
    body = hooks.json_for_cost()
    if not isinstance(body, dict) or "sitemap" in body or _is_repeat(body):
        return 1
    settings = hooks.state().settings
    if "images" in body:
        return hooks.list_cost(body["images"], settings.job_max_images)
    return hooks.list_cost(body.get("pages"), settings.job_max_pages)


def _idempotency_key(body: dict[str, Any]) -> Any:
    """The ``Idempotency-Key`` header, else the body's ``idempotency_key`` (None: neither);
    both, and different, is refused."""
    header, in_body = request.headers.get("Idempotency-Key"), body.get("idempotency_key")
    if header is not None and in_body is not None and header != in_body:
        raise InvalidJob("the Idempotency-Key header and idempotency_key differ")
    return header if header is not None else in_body


def _is_repeat(body: dict[str, Any]) -> bool:
    try:
        key = _idempotency_key(body)
        return key is not None and _queue().find_idempotent(key, _scope()) is not None
    except AltCapError:  # a malformed key (the view says so) or the store away: full price
        return False


@jobs.post("")
def create_job() -> tuple[Response, int, dict[str, str]]:
    st = hooks.state()
    body = _json_body()
    if not isinstance(body, dict):
        raise InvalidJob("the body must be a JSON object with images, pages or sitemap")
    decoding = parse_decoding(body.get("decoding"))
    check_model_limits(st.engine, decoding)
    spec = parse_job(body, st.settings, decoding)
    # the client: whom the job's images are charged to, and (without keys) whose job cap
    job, created = _queue().submit(spec, _idempotency_key(body), _scope(), hooks.rate_limit_key())
    if created:
        _jobs().created.inc()
    return jsonify(job), 202 if created else 200, {"Location": job["url"]}


@jobs.get("/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify(_queue().status(job_id, _scope()))


@jobs.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a queued or running job; a job that has already ended is answered as it is."""
    return jsonify(_queue().cancel(job_id, _scope()))


@jobs.delete("/<job_id>")
def delete_job(job_id: str) -> Response:
    """Delete a job that has ended (site owners can remove a report without waiting for
    ``ALTCAP_JOB_RETENTION_S``); one still queued or running is 409 ``job_active``."""
    _queue().delete(job_id, _scope())
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body, so no type
    return response


@jobs.get("/<job_id>/results")
def job_results(job_id: str) -> Response:
    fmt = request.args.get("format", "json")
    content_type = reports.content_type(fmt)  # invalid_format for anything else
    rows = _queue().rows(job_id, _scope())
    out = io.StringIO()
    language = api.captions_language(hooks.state())
    reports.write_rows(rows, fmt, out, language=language, patched=_patched_links(job_id, fmt))
    response = Response(out.getvalue(), content_type=content_type)
    if fmt == "csv":
        response.headers["Content-Disposition"] = f'attachment; filename="altcap-{job_id}.csv"'
    if fmt == "html":  # the site's images are shown; nothing else of theirs may run or load
        response.headers["Content-Security-Policy"] = REPORT_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _patched_links(job_id: str, fmt: str) -> dict[str, str] | None:
    """The HTML report's links to the patched pages: only where a browser can follow them,
    on a server without API keys (a link does not carry the key)."""
    if fmt != "html" or hooks.state().settings.api_keys:
        return None
    pages = _queue().status(job_id, _scope())["pages"]
    return {p["url"]: p["patched_url"] for p in pages if p["patched_url"]}


@jobs.get("/<job_id>/pages/<int:n>/patched")
def patched_page(job_id: str, n: int) -> Response:
    # The captions' language: the served model's (the job's consumers load the same model).
    language = api.captions_language(hooks.state())
    html = _queue().patched_page(job_id, n, _scope(), language)
    charset = declared_encoding(html)  # the page's own <meta charset>: saved copies stay right
    body = html.encode(charset, "xmlcharrefreplace")  # a caption it cannot spell: &#NNN;
    response = Response(body, content_type=f"text/html; charset={charset}")
    response.headers["Content-Security-Policy"] = PATCHED_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def init_app(app: Flask, queue: JobQueue) -> None:
    """Register the blueprint on an app already set up by ``api.init_app``."""
    st: ServiceState = app.extensions["altcap"]
    st.jobs = queue  # closed with the service: the consumer stops before the engine
    st.openapi_parts.append(openapi_part)
    created = Counter(
        "altcap_jobs_created",
        "Batch jobs created (idempotent repeats not counted)",
        registry=st.metrics.registry,
    )
    app.extensions["altcap_jobs"] = JobsState(queue, created)
    hooks.RATE_LIMIT_COSTS["jobs.create_job"] = _creation_cost
    limiter = st.limiter
    if limiter is not None:  # this process's consumers charge job images to its counters
        queue.budget = JobBudget(st.settings.rate_limit, lambda: limiter.limiter)
    app.register_blueprint(jobs)


# --- OpenAPI -----------------------------------------------------------------------------------


SWITCH_HELP = {  # request.JOB_SWITCHES, in words
    "read_text": "Read the text in the images (docs/ocr.md)",
    "check_alts": "Check authors' alts against their images, with a model that can score: one"
    " caption per image with alt (docs/batch.md)",
    "include_low_confidence": "Patched pages also get suggestions that are not confident",
}


def openapi_part(doc: dict[str, Any], settings: Settings) -> None:
    """Add the jobs endpoints to the service's OpenAPI document."""
    ref = schema_ref
    error = {"description": "An error (see the code)", "content": json_content(ref("Error"))}
    url = {"type": "string", "maxLength": 2048}
    schemas = doc["components"]["schemas"]
    schemas["JobRequest"] = {
        "type": "object",
        "additionalProperties": False,
        "description": "Exactly one of images, pages or sitemap",
        "properties": {
            "images": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.job_max_images,
                "items": url,
            },
            "pages": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.job_max_pages,
                "items": url,
            },
            "sitemap": url,
            "mode": {"type": "string", "enum": list(MODES)},
            "decoding": ref("Decoding"),
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255},
            "webhook": url,
            "max_pages": {"type": "integer", "minimum": 1, "maximum": settings.job_max_pages},
            "max_images": {"type": "integer", "minimum": 1, "maximum": settings.job_max_images},
            **{
                name: {"type": "boolean", "default": default, "description": SWITCH_HELP[name]}
                for name, default in JOB_SWITCHES.items()
            },
        },
    }
    nullable_time = {"type": "string", "format": "date-time", "nullable": True}
    schemas["Job"] = {
        "type": "object",
        "required": ["id", "url", "state", "counts", "progress", "created"],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "results_url": {"type": "string"},
            "state": {
                "type": "string",
                "enum": ["queued", "running", "done", "failed", "cancelled"],
            },
            "source": {"type": "object"},
            "mode": {"type": "string"},
            "decoding": {"type": "object"},
            "webhook": {"type": "string", "nullable": True},
            "counts": {
                "type": "object",
                "required": ["total", "done", "failed", "skipped"],
                "properties": {
                    k: {"type": "integer", "minimum": 0}
                    for k in ("total", "done", "failed", "skipped")
                },
            },
            "page_counts": {
                "type": "object",
                "description": "The job's pages apart from its images: read, skipped (robots.txt"
                " keeps crawlers out) or failed (all 0 for image URLs)",
                "required": ["total", "read", "skipped", "failed"],
                "properties": {
                    k: {"type": "integer", "minimum": 0}
                    for k in ("total", "read", "skipped", "failed")
                },
            },
            "verdicts": {
                "type": "object",
                "description": "The report's rows by verdict, once planned ({} for image URLs)",
                "additionalProperties": {"type": "integer", "minimum": 0},
                "properties": {k: {"type": "integer", "minimum": 0} for k in VERDICTS},
            },
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "paused_until": {
                **nullable_time,
                "description": "The owner's rate limit is spent: the job captions nothing more"
                " until this time, then goes on (null: not paused)",
            },
            "planned": {"type": "boolean"},
            "limited": {"type": "boolean"},
            "error": {"allOf": [ref("ErrorBody")], "nullable": True},
            "created": {"type": "string", "format": "date-time"},
            "started": nullable_time,
            "finished": nullable_time,
            "expires": {
                **nullable_time,
                "description": "When the ended job will be deleted (null: running, or kept"
                " forever)",
            },
            "pages": {"type": "array", "items": {"type": "object"}},
        },
    }
    nullable = {"type": "string", "nullable": True}
    schemas["ResultRow"] = {
        "type": "object",
        "required": list(rows.RESULT_FIELDS),
        "properties": {
            **{name: nullable for name in rows.RESULT_FIELDS},
            "status": {"type": "string", "enum": list(rows.STATUSES)},
            "verdict": {"type": "string", "nullable": True, "enum": [*VERDICTS, None]},
            "alt_from": {"type": "string", "nullable": True, "enum": [*ALT_FROM, None]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
            "confident": {"type": "boolean", "nullable": True},
            "alt_check": {
                "type": "object",
                "nullable": True,
                "properties": {
                    "score": {"type": "number"},
                    "verdict": {"type": "string", "enum": list(ALT_VERDICTS)},
                },
            },
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    }
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
    job = {"description": "The job", "content": json_content(ref("Job"))}
    doc["paths"]["/v1/jobs"] = {
        "post": {
            "operationId": "createJob",
            "summary": "Start a batch job: image URLs, pages or a sitemap",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            ],
            "requestBody": {"required": True, "content": json_content(ref("JobRequest"))},
            "responses": {
                "202": {**job, "description": "Created and queued (Location: the job)"},
                "200": {**job, "description": "The job this idempotency key already started"},
                "default": error,
            },
        }
    }
    doc["paths"]["/v1/jobs/{job_id}"] = {
        "get": {
            "operationId": "getJob",
            "summary": "A job's state, counts, progress and pages",
            "parameters": [job_id],
            "responses": {"200": job, "default": error},
        },
        "delete": {
            "operationId": "deleteJob",
            "summary": "Delete a job that has ended, with its results and pages",
            "description": "A job that is done, failed or cancelled is deleted with its results"
            " and pages; it is then 404 job_not_found, and its idempotency key can start a new"
            " job. A job still queued or running is left as it is and answered 409 job_active:"
            " cancel it first (POST /v1/jobs/{job_id}/cancel).",
            "parameters": [job_id],
            "responses": {
                "204": {"description": "Deleted"},
                "404": {**error, "description": "job_not_found (deleted already, or never was)"},
                "409": {**error, "description": "job_active: queued or running; cancel it first"},
                "default": error,
            },
        },
    }
    doc["paths"]["/v1/jobs/{job_id}/cancel"] = {
        "post": {
            "operationId": "cancelJob",
            "summary": "Cancel a queued or running job (idempotent)",
            "description": "Chunks not yet started are never captioned; the rows found so far"
            " stay, readable, until the job is deleted. Cancelling again, or a job that has"
            " already ended, changes nothing: the answer is the job as it is, and its state"
            " says how it ended.",
            "parameters": [job_id],
            "responses": {
                "200": {**job, "description": "The job: cancelled, or as it had ended"},
                "default": error,
            },
        }
    }
    doc["paths"]["/v1/jobs/{job_id}/results"] = {
        "get": {
            "operationId": "getJobResults",
            "summary": "One row per image, in a stable order",
            "parameters": [
                job_id,
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": list(reports.FORMATS)},
                },
            ],
            "responses": {
                "200": {
                    "description": "The rows (JSON array, JSON Lines, CSV, or an HTML page)",
                    "content": {
                        "application/json": {
                            "schema": {"type": "array", "items": ref("ResultRow")}
                        },
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                "default": error,
            },
        }
    }
    doc["paths"]["/v1/jobs/{job_id}/pages/{n}/patched"] = {
        "get": {
            "operationId": "getPatchedPage",
            "summary": "A crawled page with the suggested alt filled in where it was missing",
            "parameters": [
                job_id,
                {
                    "name": "n",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                },
            ],
            "responses": {
                "200": {
                    "description": "HTML",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "default": error,
            },
        }
    }
