"""Caption cache: the same image, model and settings should never be captioned twice.

Captioning costs a forward pass through CLIP and a GPT-2 decode; looking up a finished
caption costs a key lookup. Results are keyed by (model id, decoding settings, SHA-256 of
the image bytes) so a new model or different settings never serve a stale caption, and a
second memo maps image URLs to the hash of their bytes so a repeated URL skips the download.
The text read in an image (``captioner.read``) is cached apart from its caption, keyed by
(reader's ``engine_id``, SHA-256 of the image bytes): it does not depend on the captioning
model or its settings, and a new Tesseract, other languages or other reading rules change
the ``engine_id`` and so never serve a stale reading. Only readings are stored, never a
failure or a timeout: those are tried again next time.

Backends:

- ``SQLiteCache``: the default; one file, WAL mode, shared by every thread and every
  gunicorn worker on a machine.
- ``RedisCache``: for several machines behind one load balancer.
- ``NullCache``: caching switched off.

The cache is an optimisation, never a dependency: when a backend fails (Redis down, the
database locked for longer than the busy timeout) ``get`` answers ``None`` and ``set`` does
nothing, with a rate-limited warning in the log, so a captioning request never fails
because of its cache. Programming errors (a value that is not JSON, a bad TTL) still raise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from captioner.errors import ConfigError
from captioner.trust import ALT_VERDICTS

if TYPE_CHECKING:  # the type only: the cache itself needs no OCR engine
    from captioner.read import Reading

__all__ = [
    "Cache",
    "CacheConfigError",
    "NullCache",
    "RedisCache",
    "SQLiteCache",
    "alt_check_settings",
    "cache_key",
    "caption_value",
    "get_caption",
    "get_text",
    "open_cache",
    "sha256_hex",
    "text_key",
    "text_value",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_VERSION = 1  # bump to invalidate every cached caption after a change in what a key means
TEXT_KEY_VERSION = 1  # the same for every cached reading (text_key)
DEFAULT_SQLITE_NAME = "cache.sqlite3"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CAPTION = "cap:"  # namespaces inside one store; Redis adds its own "altcap:" prefix
_URL = "url:"


class CacheConfigError(ConfigError):
    """The cache URL names something we cannot open: fail at start-up, not per request."""


# --- keys ---------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256: the identity of an image is its bytes, not its URL."""
    return hashlib.sha256(data).hexdigest()


def cache_key(model_id: str, settings: Mapping[str, object], image_sha256: str) -> str:
    """Key of one caption result, stable across processes, machines and Python versions.

    Settings are serialised as sorted, compact JSON so that dict order does not matter, and
    integral floats are written as ints (``1.0`` and ``1`` compare equal in Python, so they
    must name the same entry). Pass settings as plain data (``dataclasses.asdict``): an
    unknown type raises ``TypeError`` rather than being stringified into a key that might
    collide. ``model_id`` must change whenever the weights do: pass
    ``captioner.model.identity.model_identity(...).cache_id``, never a model path as written.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValueError("model_id must be a non-empty string")
    payload = {
        "v": KEY_VERSION,
        "model": model_id,
        "settings": _canonical(settings, "settings"),
        "image": _check_sha256(image_sha256),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_hex(text.encode("utf-8"))


def caption_value(
    text: str,
    tokens: int,
    confidence: float | None = None,
    candidates: list[dict[str, Any]] | None = None,
    alt_check: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What is stored under a ``cache_key``: the service and batch jobs share entries.

    ``confidence`` (models with CLIP's text tower), ``candidates`` (``decoding.candidates``
    above 1) and ``alt_check`` (under an ``alt_check_settings`` key only) are stored only
    when there are some, so an entry keeps the shape older ones have where it has nothing
    more to say."""
    value: dict[str, Any] = {"caption": text, "tokens": tokens}
    if confidence is not None:
        value["confidence"] = confidence
    if candidates:
        value["candidates"] = candidates
    if alt_check is not None:
        value["alt_check"] = dict(alt_check)
    return value


def alt_check_settings(settings: Mapping[str, Any], alt: str, match_score: float) -> dict[str, Any]:
    """The settings of the key of an answer checked against an author's ``alt``: the
    decoding settings, the alt, and the score the verdict's rule needs
    (``ALTCAP_ALT_MATCH_SCORE``). Another alt or another rule is another entry; an image
    checked against the same alt again (a page visited again) is answered from the cache."""
    return {**settings, "author_alt": alt, "alt_match_score": match_score}


def get_caption(
    cache: Cache,
    key: str,
    *,
    scored: bool = False,
    candidates: bool = False,
    alt_checked: bool = False,
) -> dict[str, Any] | None:
    """The caption result under ``key``, or None when there is none or the stored value does
    not have the shape ``caption_value`` gives (an entry from elsewhere is never served).

    ``scored``: the model scores its captions, so an entry without a ``confidence`` (written
    before confidences were, or by a model without a text tower) is a miss, recomputed and
    overwritten rather than served without one. ``candidates``: the request asks for them,
    so an entry without them is a miss too. ``alt_checked``: the request checks an author's
    alt (an ``alt_check_settings`` key), so the entry must hold a well-formed ``alt_check``.
    """
    value = cache.get(key)
    if value is None or not isinstance(value.get("caption"), str):
        return None
    tokens = value.get("tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        return None
    confidence = value.get("confidence")
    if confidence is None and scored:
        return None
    if confidence is not None and not _is_fraction(confidence):
        return None
    listed = value.get("candidates")
    if listed is None and candidates:
        return None
    if listed is not None and not (
        isinstance(listed, list) and listed and all(isinstance(c, dict) for c in listed)
    ):
        return None
    if alt_checked and not _is_alt_check(value.get("alt_check")):
        return None
    return value


def _is_alt_check(value: object) -> bool:
    """Whether ``value`` is ``trust.alt_check``'s answer: ``{"score", "verdict"}``."""
    if not isinstance(value, dict) or value.get("verdict") not in ALT_VERDICTS:
        return False
    score = value.get("score")
    return isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)


def _is_fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def text_key(image_sha256: str, engine_id: str) -> str:
    """Key of one image's reading: its bytes' SHA-256 and the reader that read it
    (``TextPool.engine_id``: Tesseract's version, the languages, the reader's rules).

    Its payload differs from every ``cache_key`` payload (a ``text`` field, no ``model``),
    so the two kinds of entry share one store without meeting.
    """
    if not isinstance(engine_id, str) or not engine_id:
        raise ValueError("engine_id must be a non-empty string")
    payload = {"v": TEXT_KEY_VERSION, "text": engine_id, "image": _check_sha256(image_sha256)}
    return sha256_hex(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())


def text_value(reading: Reading) -> dict[str, Any]:
    """What is stored under a ``text_key``: a reading's text and whether the image is text."""
    return {"text": reading.text, "mostly_text": reading.mostly_text}


def get_text(cache: Cache, key: str) -> dict[str, Any] | None:
    """The reading under ``key`` (``text_value``'s shape), or None (none, or another shape)."""
    value = cache.get(key)
    if value is None or not isinstance(value.get("text"), str):
        return None
    return value if isinstance(value.get("mostly_text"), bool) else None


def _canonical(obj: object, where: str) -> object:
    """Reduce ``obj`` to JSON data with one spelling per value (see ``cache_key``)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where}: {obj!r} is not a finite number")
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: {type(obj).__name__} cannot be part of a cache key")


def _check_sha256(value: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value.lower()):
        raise ValueError(f"expected a hex SHA-256 digest, got {value!r}")
    return value.lower()


def _url_key(url: str) -> str:
    # Hashed: URLs can be kilobytes long and contain anything; "surrogatepass" makes even a
    # string UTF-8 cannot encode (a lone surrogate) a key, so a lookup never raises here.
    return _URL + sha256_hex(url.encode("utf-8", "surrogatepass"))


def _check_ttl(ttl_s: float | None) -> float | None:
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)):
        raise TypeError(f"ttl_s must be a number of seconds or None, got {ttl_s!r}")
    if not (ttl_s > 0 and math.isfinite(ttl_s)):
        raise ValueError(f"ttl_s must be a positive number of seconds or None, got {ttl_s!r}")
    return float(ttl_s)


# --- logging ------------------------------------------------------------------------


class _RateLimitedWarning:
    """One warning per interval: an outage fails every request, the log should not."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last = -math.inf
        self._suppressed = 0
        self._lock = threading.Lock()

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            msg += f" ({suppressed} similar warnings suppressed)"
        log.warning(msg, *args)


# --- the interface ------------------------------------------------------------------


class Cache(ABC):
    """Caption results and URL → image-hash memos, over a raw string store.

    Subclasses only store and fetch strings (``_get_raw``/``_set_raw``); this class does
    JSON, validation, counters and the rule that backend errors never escape.
    """

    backend: ClassVar[str] = "abstract"
    # Backend exceptions that mean "the store is unavailable", turned into a miss.
    _errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, *, cooldown_s: float = 0.0, warn_interval_s: float = 60.0) -> None:
        # After a failure, skip the backend for cooldown_s so an outage costs one timeout
        # per cooldown per process instead of one (or two) per request.
        self._cooldown_s = cooldown_s
        self._down_until = -math.inf
        self._warning = _RateLimitedWarning(warn_interval_s)
        self._closed = False
        self._counts = dict.fromkeys(
            ("hits", "misses", "sets", "errors", "url_hits", "url_misses"), 0
        )
        self._counts_lock = threading.Lock()

    # public API

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached result for ``key`` (from ``cache_key``), or ``None``."""
        _, raw = self._call("get", self._get_raw, _CAPTION + key)
        value = self._decode(raw, key)
        self._count("hits" if value is not None else "misses")
        return value

    def set(self, key: str, value: Mapping[str, Any], ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key``, forever or for ``ttl_s`` seconds.

        Raises ``TypeError`` if ``value`` is not JSON data: that is a bug in the caller,
        not an outage, and should show up in tests rather than as a silent miss.
        """
        if not isinstance(value, Mapping):
            raise TypeError(f"cache values are dicts, got {type(value).__name__}")
        ttl = _check_ttl(ttl_s)
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        stored, _ = self._call("set", self._set_raw, _CAPTION + key, data, ttl)
        if stored:
            self._count("sets")

    def get_url_hash(self, url: str) -> str | None:
        """SHA-256 of the bytes last downloaded from ``url``, if still fresh."""
        _, raw = self._call("get", self._get_raw, _url_key(url))
        sha = raw if raw is not None and _HEX64.fullmatch(raw) else None
        self._count("url_hits" if sha is not None else "url_misses")
        return sha

    def set_url_hash(self, url: str, sha: str, ttl_s: float) -> None:
        """Remember that ``url`` served bytes hashing to ``sha``, for ``ttl_s`` seconds.

        A TTL is required: the content behind a URL can change, image bytes cannot.
        """
        ttl = _check_ttl(ttl_s)
        if ttl is None:
            raise ValueError("set_url_hash needs a TTL: a URL's content can change")
        self._call("set", self._set_raw, _url_key(url), _check_sha256(sha), ttl)

    def stats(self) -> dict[str, int | str]:
        """Counters for this process since start-up (for /metrics and logs)."""
        with self._counts_lock:
            return {"backend": self.backend, **self._counts}

    def prune(self) -> int:
        """Delete expired entries now; returns how many (0 on failure)."""
        _, removed = self._call("prune", self._prune_raw)
        return removed or 0

    def close(self) -> None:
        """Release connections. Later calls are misses and no-ops, never errors."""
        self._closed = True

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # for subclasses

    @abstractmethod
    def _get_raw(self, key: str) -> str | None:
        """The stored string, or ``None`` if absent or expired."""

    @abstractmethod
    def _set_raw(self, key: str, data: str, ttl_s: float | None) -> None:
        """Store ``data``; it should vanish (or read as absent) after ``ttl_s`` seconds."""

    def _prune_raw(self) -> int:
        """Delete expired entries; most backends expire them on their own."""
        return 0

    # internals

    def _call(self, op: str, fn: Callable[..., T], *args: object) -> tuple[bool, T | None]:
        """Run a backend call: ``(True, result)``, or ``(False, None)`` on failure (logged)."""
        if self._closed or time.monotonic() < self._down_until:
            return False, None
        try:
            return True, fn(*args)
        except self._errors as exc:
            self._down_until = time.monotonic() + self._cooldown_s
            self._count("errors")
            self._warning.warn(
                "%s cache %s failed, carrying on without the cache: %s: %s",
                self.backend,
                op,
                type(exc).__name__,
                exc,
            )
            return False, None

    def _decode(self, raw: object, key: str) -> dict[str, Any] | None:
        if not isinstance(raw, str):
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self._warning.warn("%s cache entry %s is not a JSON object; ignored", self.backend, key)
            return None
        return value

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1


class NullCache(Cache):
    """Caching switched off: every lookup is a miss."""

    backend = "none"

    def _get_raw(self, key: str) -> str | None:
        return None

    def _set_raw(self, key: str, data: str, ttl_s: float | None) -> None:
        return None


# --- SQLite -------------------------------------------------------------------------


_SCHEMA = """
CREATE TABLE IF NOT EXISTS altcap_cache (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL  -- unix seconds; NULL = never
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS altcap_cache_expires_at
    ON altcap_cache (expires_at) WHERE expires_at IS NOT NULL;
"""


class SQLiteCache(Cache):
    """A cache in one SQLite file, shared by threads and processes.

    WAL mode lets readers run while one writer commits, and the busy timeout makes a
    writer wait for another instead of failing at once. Connections come from a small pool:
    a connection is used by one thread at a time, and threads that come and go (the Flask
    development server starts one per request) leave nothing open behind them. After a fork
    (gunicorn with ``preload_app``) the child opens fresh connections: SQLite connections
    must not cross a fork.

    Expired rows read as absent and are deleted every ``prune_every`` writes.
    ``clock`` returns unix seconds; tests inject a fake one.
    """

    backend = "sqlite"
    _errors = (sqlite3.Error, OSError)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 5.0,
        prune_every: int = 1000,
        max_idle: int = 8,
        clock: Callable[[], float] = time.time,
        cooldown_s: float = 0.0,
        warn_interval_s: float = 60.0,
    ) -> None:
        super().__init__(cooldown_s=cooldown_s, warn_interval_s=warn_interval_s)
        self.path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        self._prune_every = prune_every
        self._max_idle = max_idle
        self._clock = clock
        self._writes = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connection() as conn:
                # WAL is a property of the file: set once, every later connection gets it.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
            self._prune_raw()
        except (sqlite3.Error, OSError) as exc:
            raise CacheConfigError(f"cannot open cache database {self.path}: {exc}") from exc

    def _prune_raw(self) -> int:
        with self._connection() as conn:
            cur = conn.execute("DELETE FROM altcap_cache WHERE expires_at <= ?", (self._clock(),))
            return cur.rowcount

    def close(self) -> None:
        super().close()
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _get_raw(self, key: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT value FROM altcap_cache"
                " WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, self._clock()),
            ).fetchone()
        return row[0] if row else None

    def _set_raw(self, key: str, data: str, ttl_s: float | None) -> None:
        expires_at = None if ttl_s is None else self._clock() + ttl_s
        with self._connection() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO altcap_cache (key, value, expires_at) VALUES (?, ?, ?)",
                (key, data, expires_at),
            )
        with self._lock:
            self._writes += 1
            due = self._prune_every > 0 and self._writes % self._prune_every == 0
        if due:
            self.prune()  # guarded: a failed prune must not turn a stored value into an error

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection; a connection that raised is closed, not reused."""
        if self._pid != os.getpid():  # forked: abandon (never close) the parent's connections
            self._lock, self._idle, self._pid = threading.Lock(), [], os.getpid()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,  # sets SQLite's busy_timeout
                isolation_level=None,  # autocommit: every statement is its own transaction
                check_same_thread=False,  # pooled: used by one thread at a time, not always one
            )
            conn.execute("PRAGMA synchronous=NORMAL")  # safe in WAL; a cache needs no more
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()


# --- Redis --------------------------------------------------------------------------


class RedisCache(Cache):
    """A cache in Redis, for several machines; Redis expires entries itself.

    Keys are ``altcap:cap:<key>`` and ``altcap:url:<sha256 of url>``. Timeouts are short
    and retries few on purpose: a slow cache is worse than no cache. Nothing connects until
    the first call, so the service starts (uncached) while Redis is down.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "altcap:",
        socket_timeout_s: float = 0.5,
        cooldown_s: float = 5.0,
        warn_interval_s: float = 60.0,
    ) -> None:
        super().__init__(cooldown_s=cooldown_s, warn_interval_s=warn_interval_s)
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise CacheConfigError(
                "a redis:// cache URL needs the redis package: pip install redis"
            ) from exc
        self._errors = (redis.RedisError, OSError)
        self.prefix = prefix
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                # One immediate retry: enough to replace a pooled connection that died
                # when Redis restarted, without stacking timeouts during an outage.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise CacheConfigError(f"bad Redis URL {_redact(url)!r}: {exc}") from exc

    def close(self) -> None:
        super().close()
        self._client.close()

    def _get_raw(self, key: str) -> str | None:
        raw = self._client.get(self.prefix + key)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def _set_raw(self, key: str, data: str, ttl_s: float | None) -> None:
        # PX rather than EX: sub-second TTLs round up to a whole millisecond, not a second.
        px = None if ttl_s is None else max(1, math.ceil(ttl_s * 1000))
        self._client.set(self.prefix + key, data.encode("utf-8"), px=px)


# --- configuration ------------------------------------------------------------------


def open_cache(url: str | None, data_dir: str | os.PathLike[str]) -> Cache:
    """The cache a deployment asked for, or ``CacheConfigError`` naming what is accepted.

    - ``None`` or ``""``: SQLite at ``data_dir/cache.sqlite3`` (the default);
    - ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` (SQLAlchemy's spelling;
      relative to the working directory);
    - ``redis://[:password@]host[:port][/db]`` or ``rediss://...`` (TLS);
    - ``none`` or ``off``: no caching.
    """
    text = (url or "").strip()
    if not text:
        return SQLiteCache(Path(data_dir) / DEFAULT_SQLITE_NAME)
    lowered = text.lower()
    if lowered in ("none", "off"):
        return NullCache()
    if lowered.startswith("sqlite:"):
        return SQLiteCache(_sqlite_path(text))
    if lowered.startswith(("redis://", "rediss://")):
        scheme, rest = text.split("://", 1)
        return RedisCache(f"{scheme.lower()}://{rest}")  # redis-py is case-sensitive here
    raise CacheConfigError(
        f"unsupported cache URL {_redact(text)!r}: use sqlite:///path, "
        "redis://host:port/db, rediss://..., or none/off to disable caching"
    )


def _sqlite_path(url: str) -> Path:
    scheme_len = len("sqlite:///")
    if url[:scheme_len].lower() != "sqlite:///":
        raise CacheConfigError(
            f"bad SQLite cache URL {url!r}: write sqlite:///relative/path "
            "or sqlite:////absolute/path (no host)"
        )
    path = unquote(url[scheme_len:])
    if not path or path.startswith(":memory:") or "?" in path:
        raise CacheConfigError(
            f"bad SQLite cache URL {url!r}: it must name a file (no :memory:, no options);"
            " use none to disable caching"
        )
    return Path(path)


def _redact(url: str) -> str:
    """``url`` with any password replaced, fit for error messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable URL>"
