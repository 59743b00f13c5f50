"""What a job request is: its JSON body checked (``parse_job``), its idempotency key, and the
errors the jobs API answers with (stable codes)."""

from __future__ import annotations

import functools
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit

from captioner.config import DecodingSettings
from captioner.crawl import urls
from captioner.crawl.pages import MODES
from captioner.errors import AltCapError
from captioner.serve.settings import Settings

__all__ = [
    "JOB_FIELDS",
    "JOB_SWITCHES",
    "MAX_IDEMPOTENCY_KEY",
    "IdempotencyConflict",
    "InvalidJob",
    "JobActive",
    "JobNotFound",
    "PageNotFound",
    "QueueUnavailable",
    "TooManyJobs",
    "idempotency_key",
    "parse_job",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


MAX_IDEMPOTENCY_KEY = 255


JOB_FIELDS = frozenset(
    {
        "images",
        "pages",
        "sitemap",
        "mode",
        "decoding",
        "idempotency_key",
        "webhook",
        "max_pages",
        "max_images",
        "read_text",
        "check_alts",
        "include_low_confidence",
    }
)
# The job's switches: name -> default. check_alts: author alts that say something are
# checked against their images (models with CLIP's text tower; a caption per such image);
# include_low_confidence: patched pages also get alts from captions that are not confident.
JOB_SWITCHES = {"read_text": True, "check_alts": True, "include_low_confidence": False}


class InvalidJob(AltCapError):
    """The job request cannot be run: no source, two sources, bad URLs, limits exceeded."""

    code = "invalid_job"
    http_status = 400


class JobNotFound(AltCapError):
    code = "job_not_found"
    http_status = 404


class PageNotFound(AltCapError):
    code = "page_not_found"
    http_status = 404


class JobActive(AltCapError):
    """Deleting a job that is still queued or running: cancel it first, then delete it.

    ``DELETE`` used to cancel such a job (and a second one deleted it): a client that still
    does so, or retries a cancel that timed out, is refused and loses nothing."""

    code = "job_active"
    http_status = 409


class IdempotencyConflict(AltCapError):
    """An idempotency key sent again with another job: a client bug, never a silent reuse."""

    code = "idempotency_conflict"
    http_status = 409


class TooManyJobs(AltCapError):
    """The API key (or, without keys, the client address) has ``ALTCAP_JOB_MAX_ACTIVE`` jobs
    queued or running: one more waits until one of them ends (or is cancelled)."""

    code = "too_many_jobs"
    http_status = 429


class QueueUnavailable(AltCapError):
    """The job store or queue cannot be reached (Redis down, SQLite locked for too long)."""

    code = "queue_unavailable"
    http_status = 503


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import redis
    except ImportError:  # pragma: no cover (installed with the service)
        pass
    else:
        errors.append(redis.RedisError)
    return tuple(errors)


def _translating(method: Callable[..., T]) -> Callable[..., T]:
    """Store and queue failures reach API clients as ``queue_unavailable`` (503), not 500."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except _store_errors() as exc:
            log.warning("job store or queue unavailable: %s: %s", type(exc).__name__, exc)
            raise QueueUnavailable(
                "the job queue is unavailable right now; retry shortly"
            ) from None

    return wrapper


def _check_url(url: object, where: str) -> str:
    """A syntax check only: the SSRF checks run at fetch time, where DNS answers count."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidJob(f"{where} must be a non-empty URL string")
    url = url.strip()
    if len(url) > urls.MAX_URL_LENGTH:
        raise InvalidJob(f"{where} is longer than {urls.MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidJob(f"{where} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise InvalidJob(f"{where} must be an absolute http(s) URL")
    return url


def _limit(body: Mapping[str, Any], name: str, most: int) -> int:
    value = body.get(name)
    if value is None:
        return most
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidJob(f"{name} must be an integer between 1 and {most}")
    return value


def parse_job(
    body: object, settings: Settings, decoding: DecodingSettings | None = None
) -> dict[str, Any]:
    """A job's JSON body as a spec (plain JSON data, stored with the job), or ``InvalidJob``.

    ``decoding`` is the already-parsed ``"decoding"`` object (the API parses it the way
    ``POST /v1/captions`` does); without it, the field is read here.
    """
    if not isinstance(body, dict):
        raise InvalidJob("the body must be a JSON object with images, pages or sitemap")
    unknown = set(body) - JOB_FIELDS
    if unknown:
        raise InvalidJob(f"unknown field(s): {', '.join(sorted(unknown))}")
    kinds = [k for k in ("images", "pages", "sitemap") if k in body]
    if len(kinds) != 1:
        raise InvalidJob("give exactly one of images, pages or sitemap")
    kind = kinds[0]
    source: dict[str, Any]
    if kind == "sitemap":
        source = {"sitemap": _check_url(body["sitemap"], "sitemap")}
    else:
        urls = body[kind]
        most = settings.job_max_images if kind == "images" else settings.job_max_pages
        if not isinstance(urls, list) or not urls:
            raise InvalidJob(f"{kind} must be a non-empty list of URLs")
        if len(urls) > most:
            raise InvalidJob(f"too many {kind}: {len(urls)} (at most {most} per job)")
        source = {kind: [_check_url(u, f"{kind}[{i}]") for i, u in enumerate(urls)]}
    mode = body.get("mode", "missing")
    if mode not in MODES:
        raise InvalidJob(f"mode must be one of {', '.join(MODES)}")
    if decoding is None:
        raw = body.get("decoding") or {}
        if not isinstance(raw, dict):
            raise InvalidJob("decoding must be an object")
        decoding = DecodingSettings.from_dict(raw)
    webhook = body.get("webhook")
    switches = {name: body.get(name, default) for name, default in JOB_SWITCHES.items()}
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise InvalidJob(f"{name} must be true or false")
    return {
        "source": source,
        "mode": mode,
        "decoding": decoding.to_dict(),
        "webhook": _check_url(webhook, "webhook") if webhook is not None else None,
        "max_pages": _limit(body, "max_pages", settings.job_max_pages),
        "max_images": _limit(body, "max_images", settings.job_max_images),
        # read_text off: alt is the caption (ALTCAP_OCR=off turns it off for all)
        **switches,
    }


def idempotency_key(key: object) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidJob(f"the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


def _idem(key: object, scope: str) -> str:
    """How an idempotency key is stored: hashed, with the scope (API key) it belongs to."""
    return _sha(f"{scope}\0{idempotency_key(key)}")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
