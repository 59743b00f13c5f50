"""Service settings: one frozen dataclass, read from ``ALTCAP_*`` environment variables.

Every setting has a default that works on a laptop (``make run`` sets nothing), and every
field carries its own description, so the docs' configuration table (docs/configuration.md)
is generated from (and checked against) this file instead of drifting away from it. A bad
value stops the service at start-up with an ``invalid_config`` error naming the variable,
rather than failing later, per request, in some less obvious way.

Precedence: defaults, then the environment, then an explicit ``overrides`` mapping (the
``test_config`` of ``create_app``). Overrides win over the environment so that a test suite
run in a shell that happens to export ``ALTCAP_API_KEYS`` still gets the settings it asked for.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from captioner.alttext import MAX_ALT_CHARS
from captioner.crawl.urls import FetchLimits
from captioner.describe import MAX_TEXT_CHARS, AltRule
from captioner.errors import ConfigError
from captioner.trust import MATCH_SCORE, MIN_CONFIDENCE

if TYPE_CHECKING:  # types only: reading text loads numpy and PIL
    from captioner.read import TextPool

__all__ = ["ENV_PREFIX", "ConfigError", "SettingDoc", "Settings", "markdown_table"]

ENV_PREFIX = "ALTCAP_"
EXTENSION_ORIGINS = ("chrome-extension://*", "moz-extension://*")
_OFF = frozenset({"off", "none", "false", "0", "no", "disabled"})


class SettingDoc(NamedTuple):
    """One row of the configuration table in the docs."""

    name: str  # the environment variable
    default: str  # as it would be written in the environment ("" = unset)
    description: str


# --- parsers: text as found in the environment -> typed value ----------------------------
# Each raises ValueError with a message that completes "ALTCAP_X must be ...".


def _text(value: str) -> str:
    return value


def _int(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = minimum - 1
        if n < minimum:
            raise ValueError("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        return n

    return parse


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("a number between 0 and 1")
    return number


def _float_at_least(minimum: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = float(value)
        if not math.isfinite(number) or number < minimum:
            raise ValueError(f"a number of at least {minimum}")
        return number

    return parse


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
            raise ValueError(f"a number of seconds {'>=' if allow_zero else '>'} 0")
        return x

    return parse


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
}


def _size(value: str) -> int:
    """Bytes, optionally with a unit: ``20971520``, ``20MiB``, ``20M`` (binary), ``20MB``."""
    m = _SIZE.fullmatch(value.strip())
    if not m:
        raise ValueError("a size in bytes such as 20971520, 20MiB or 500KB")
    n = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    if n < 1:
        raise ValueError("a positive size in bytes")
    return n


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false (also 1/0, yes/no, on/off)")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return value

    return parse


_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def _device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError("auto, cpu, cuda, cuda:N, mps or xpu")
    return value


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _origins(value: str) -> tuple[str, ...]:
    if value.strip().lower() in _OFF:
        return ()
    origins = _list(value)
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ValueError("a comma-separated list of origins like chrome-extension://*")
    return origins


def _hosts(value: str) -> tuple[str, ...]:
    """Host names as the Host header gives them, without a port: lower case, an IPv6
    address without its brackets (``[::1]`` is ``::1``); ``*`` wildcards."""
    hosts = []
    for host in _list(value.lower()):
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or "/" in host or host.count(":") == 1:  # a URL, or a port
            raise ValueError("a comma-separated list of host names without scheme or port, or *")
        hosts.append(host.rstrip("."))
    return tuple(hosts)


def _rate_limit(value: str) -> str:
    """A Flask-Limiter rate string ("120/minute", "10/second;500/hour"), or "" for none."""
    if value.strip().lower() in _OFF:
        return ""
    import limits  # Flask-Limiter's parser: reject a typo now, not on the first request

    try:
        limits.parse_many(value)
    except ValueError:
        raise ValueError("a rate like 120/minute (several: 10/second;500/hour), or off") from None
    return value.strip()


def _storage_url(value: str) -> str:
    """A storage URI of the ``limits`` library (what Flask-Limiter keeps its counters in)."""
    from limits.storage import SCHEMES

    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in SCHEMES or scheme.startswith("async+"):
        raise ValueError("a storage URL such as memory://, redis://host:6379/1 or memcached://host")
    return value


def _queue_url(value: str) -> str:
    if value.lower() in ("sqlite", "sqlite://") or value.lower().startswith(
        ("redis://", "rediss://", "unix://")
    ):
        return value
    raise ValueError("empty (SQLite in the data directory), sqlite, or redis://host:6379/0")


def _path(value: str) -> Path:
    return Path(value).expanduser()


# --- the settings ----------------------------------------------------------------------


def _setting(
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    *,
    shown: str | None = None,
    secret: bool = False,
):
    """A dataclass field that knows how to read itself from text and how to document itself.

    ``secret`` fields (keys, URLs that may hold a password) stay out of ``repr``, so logging
    the settings never leaks them.
    """
    if shown is None:
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, tuple):
            shown = ",".join(default)
        else:
            shown = str(default)
    metadata = {"parse": parse, "help": help, "shown": shown}
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """How one AltCap service process runs. Field ``x`` is read from ``ALTCAP_X``."""

    model: str = _setting(
        "clipcap-coco", _text, "Model to serve: a registry name, a model directory or a Hub repo id"
    )
    device: str = _setting("auto", _device, "Torch device: auto (CUDA if present), cpu, cuda:N")
    dtype: str = _setting(
        "auto",
        _choice("auto", "float32", "bfloat16", "float16"),
        "Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16",
    )
    data_dir: Path = _setting(  # noqa: RUF009 (_setting returns a dataclasses.field)
        Path("data"), _path, "Directory for the service's files (SQLite caption cache, batch jobs)"
    )
    max_batch_size: int = _setting(32, _int(1), "Most images the engine captions at once")
    max_wait_ms: float = _setting(
        5.0,
        _seconds(allow_zero=True),
        "Milliseconds the engine waits for more images to fill a batch",
        shown="5",
    )
    max_queue: int = _setting(
        256, _int(1), "Images waiting for the model before requests get 503 overloaded"
    )
    max_in_flight: int = _setting(
        0,
        _int(0),
        "Captioning requests one process works on at once; one more is answered 503 overloaded"
        " at once, so threads stay free for /healthz and /readyz (0: under gunicorn"
        " ALTCAP_THREADS less an eighth, at least 2; no limit otherwise)",
    )
    torch_threads: int = _setting(
        0,
        _int(0),
        "Threads torch computes with in each process (0: the CPUs the process may use, its"
        " affinity and cgroup quota, shared among ALTCAP_WORKERS; OMP_NUM_THREADS if set)",
    )
    request_timeout_s: float = _setting(
        30.0,
        _seconds(allow_zero=False),
        "Seconds a captioning request may take in all (fetching included)",
        shown="30",
    )
    max_images_per_request: int = _setting(
        32, _int(1), "Most images in one POST /v1/captions request"
    )
    max_content_length: int = _setting(
        20 * 1024 * 1024,
        _size,
        "Largest request body (bytes; 20MiB, 500KB also work); larger gets 413 too_large",
        shown="20MiB",
    )
    max_image_pixels: int = _setting(
        40_000_000,
        _int(1),
        "Largest image (width x height) decoded; larger ones get image_too_many_pixels",
    )
    max_alt_chars: int = _setting(
        MAX_ALT_CHARS,
        _int(16),
        "Longest alt text a caption becomes (characters, the ellipsis included), in API"
        " answers, job rows, reports and patched pages: longer ones are cut at a word with"
        f" an ellipsis (the extension also cuts what any server sends at {MAX_ALT_CHARS})",
    )
    min_confidence: float = _setting(
        MIN_CONFIDENCE,
        _fraction,
        "Confidence (0-1) below which a caption is not said: results carry confident=false,"
        " the extension writes nothing, reports say low_confidence (models with CLIP's text"
        " tower; docs/confidence.md)",
        shown=str(MIN_CONFIDENCE),
    )
    alt_match_score: float = _setting(
        MATCH_SCORE,
        _float_at_least(0.0),
        "An author's alt 'matches' its image at this score or more: 0 = no better than"
        " 'an image.', 1 = as good as AltCap's own caption (docs/confidence.md)",
        shown=str(MATCH_SCORE),
    )
    ocr: str = _setting(
        "on",
        _choice("on", "off"),
        "Read the text in images (Tesseract OCR): results gain text and an alt that says it"
        ' ("Appears to say: ..."); off: alt is the caption. A request can turn it off'
        ' with "read_text": false',
    )
    ocr_langs: str = _setting(
        "",
        _text,
        "Languages of the text read, as en,de or Tesseract's eng+deu; empty = the model's"
        " caption language. Each needs its model installed (Debian: tesseract-ocr-deu...)",
    )
    ocr_max_chars: int = _setting(
        MAX_TEXT_CHARS,
        _int(16),
        "Most characters of an image's text inside its alt: longer text is cut at a"
        " sentence end, else a word (the text field itself is not cut)",
    )
    ocr_label: str = _setting(
        "",
        _text,
        "What comes before an image's text in an alt; empty = 'Appears to say:' in the"
        " captions' language",
    )
    ocr_timeout_s: float = _setting(
        2.0,
        _seconds(allow_zero=False),
        "Seconds reading one image's text may take; past it the caption is answered"
        " without text, with the warning ocr_timeout",
        shown="2",
    )
    ocr_threads: int = _setting(
        2, _int(1), "Images whose text is read at once, beside the captioning (per worker)"
    )
    cache_url: str = _setting(
        "",
        _text,
        "Caption cache: empty = SQLite in ALTCAP_DATA_DIR, sqlite:///path, redis://host:6379/0,"
        " or off",
        secret=True,
    )
    url_ttl_s: float = _setting(
        86400.0,
        _seconds(allow_zero=True),
        "Seconds a URL's image hash is remembered, so a repeated URL skips the download (0: never)",
        shown="86400",
    )
    api_keys: tuple[str, ...] = _setting(
        (),
        _list,
        "Comma-separated API keys for `Authorization: Bearer <key>`; empty = open service",
        secret=True,
    )
    rate_limit: str = _setting(
        "",
        _rate_limit,
        "Images captioned per API key (else per client address, IPv6: per /64), e.g."
        " 120/minute: a request costs one per image; a batch job one per image URL, or one per"
        " page (a sitemap: 1) and then one per image it captions; empty = no limit",
    )
    ratelimit_storage_url: str = _setting(
        "",
        _storage_url,
        "Where rate-limit counters live: empty = the Redis cache if ALTCAP_CACHE_URL is redis://,"
        " else memory:// (per process)",
        secret=True,
    )
    fetch_max_bytes: int = _setting(
        10 * 1024 * 1024, _size, "Largest image downloaded from a URL (bytes)", shown="10MiB"
    )
    fetch_timeout_s: float = _setting(
        10.0,
        _seconds(allow_zero=False),
        "Seconds one image download may take, redirects included",
        shown="10",
    )
    allow_private_networks: bool = _setting(
        False,
        _bool,
        "Let URLs reach loopback/private addresses (intranet deployments; never link-local)",
    )
    cors_origins: tuple[str, ...] = _setting(
        EXTENSION_ORIGINS,
        _origins,
        "Comma-separated browser origins allowed to call the API (* wildcards; off = none)",
    )
    allowed_hosts: tuple[str, ...] = _setting(
        (),
        _hosts,
        "Comma-separated host names the service answers to (the Host header, without port;"
        " * wildcards, * = any); others get 400 host_not_allowed, against DNS rebinding."
        " Empty: localhost, 127.0.0.1, ::1 and the address the server listens on; listening"
        " on all addresses (0.0.0.0, as the Procfile does), any host, with a warning",
    )
    trusted_proxies: int = _setting(
        0,
        _int(0),
        "Reverse proxies in front of the service whose X-Forwarded-For/-Proto are trusted",
    )
    queue_url: str = _setting(
        "",
        _queue_url,
        "Batch jobs' queue and store: empty = SQLite files in ALTCAP_DATA_DIR (one machine),"
        " redis://host:6379/0 (shared by `python -m captioner worker` processes anywhere)",
        secret=True,
    )
    job_workers: int = _setting(
        2,
        _int(0),
        "Threads consuming batch jobs inside each service process (0: leave jobs to workers)",
    )
    job_downloads_per_host: int = _setting(
        4,
        _int(1),
        "Most image downloads at once to one host from batch jobs: over a process's jobs, or"
        " over all consumers with a Redis queue (a browser opens about 6)",
    )
    job_chunk_size: int = _setting(
        32, _int(1), "Images per unit of batch-job work: captioned together, retried together"
    )
    job_max_images: int = _setting(10_000, _int(1), "Most images in one batch job")
    job_max_pages: int = _setting(500, _int(1), "Most pages one batch job crawls")
    job_max_active: int = _setting(
        20,
        _int(0),
        "Most batch jobs queued or running at once per API key (without API keys: per client"
        " address); more are refused with 429 too_many_jobs (0: no limit)",
    )
    job_lease_s: float = _setting(
        60.0,
        _seconds(allow_zero=False),
        "Seconds a consumer may go silent before its chunk of a job is given to another",
        shown="60",
    )
    job_retention_s: float = _setting(
        7 * 86400.0,
        _seconds(allow_zero=True),
        "Seconds a finished batch job and its results are kept (604800 = 7 days), then deleted"
        " by the consumers' sweep (0: kept forever)",
        shown="604800",
    )
    crawl_delay_s: float = _setting(
        1.0,
        _seconds(allow_zero=True),
        "Seconds between two requests to one origin when batch jobs crawl pages and sitemaps"
        " (over all jobs; all consumers with a Redis queue)",
        shown="1",
    )

    # --- loading ---------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Defaults, then ``ALTCAP_*`` variables from ``environ``, then ``overrides``.

        ``overrides`` keys are the upper-case names without the prefix (``"MODEL"``,
        ``"DATA_DIR"``); other keys are ignored, so a whole Flask ``test_config`` can be
        passed. Override values may be typed (``32``, ``True``, a ``Path``, a list) or text.
        Empty text means "unset" everywhere, as Docker and systemd often write it.
        """
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name.upper()
            if key in overrides:
                raw, source = _as_text(overrides[key]), f"{key} (test_config)"
            elif ENV_PREFIX + key in environ:
                raw, source = environ[ENV_PREFIX + key], ENV_PREFIX + key
            else:
                continue
            if not raw.strip():
                continue
            try:
                values[f.name] = f.metadata["parse"](raw.strip())
            except ValueError as exc:  # the parsers' messages say what was expected
                raise ConfigError(f"{source}={raw!r} is not valid: expected {exc}") from None
        return cls(**values)

    @classmethod
    def table(cls) -> list[SettingDoc]:
        """Every variable with its default and description (the docs' table)."""
        return [
            SettingDoc(ENV_PREFIX + f.name.upper(), f.metadata["shown"], f.metadata["help"])
            for f in dataclasses.fields(cls)
        ]

    # --- derived values --------------------------------------------------------------

    @property
    def ratelimit_storage(self) -> str:
        """Rate-limit storage URI: explicit, else shared Redis when there is one, else memory."""
        if self.ratelimit_storage_url:
            return self.ratelimit_storage_url
        if self.cache_url.lower().startswith(("redis://", "rediss://")):
            return self.cache_url
        return "memory://"

    def text_pool(
        self, language: str | None, *, read_text: bool = True, langs: str | None = None
    ) -> tuple[TextPool | None, str | None]:
        """``read.open_pool`` as the ``ALTCAP_OCR*`` settings ask (the service, jobs and the
        CLI): ``(TextPool, None)``, ``(None, "ocr_unavailable")``, or ``(None, None)`` when
        ``ALTCAP_OCR`` is off or not ``read_text``. ``langs`` replaces ``ALTCAP_OCR_LANGS``;
        ``language`` (None: "en") is the captions'."""
        from captioner.read import open_pool  # numpy and PIL: only where text is read

        return open_pool(
            self.ocr == "on" and read_text,
            self.ocr_langs if langs is None else langs,
            language or "en",
            threads=self.ocr_threads,
            timeout_s=self.ocr_timeout_s,
        )

    def alt_rule(self) -> AltRule:
        """How results' alt is made from caption and text (``captioner.describe``)."""
        return AltRule(self.max_alt_chars, self.ocr_max_chars, self.ocr_label)

    def fetch_limits(self) -> FetchLimits:
        """Download limits for image URLs; the per-connection timeouts never exceed the total."""
        return FetchLimits(
            max_bytes=self.fetch_max_bytes,
            connect_timeout=min(3.0, self.fetch_timeout_s),
            read_timeout=min(5.0, self.fetch_timeout_s),
            total_timeout=self.fetch_timeout_s,
            allow_private=self.allow_private_networks,
        )


def markdown_table(rows: Iterable[SettingDoc] | None = None) -> str:
    """The configuration table as Markdown, for docs/configuration.md."""
    rows = Settings.table() if rows is None else rows
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for row in rows:
        default = f"`{row.default}`" if row.default else "(empty)"
        description = row.description.replace("|", "\\|")
        lines.append(f"| `{row.name}` | {default} | {description} |")
    return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------


def _as_text(value: Any) -> str:
    """A typed override as the text the environment would hold, so one parser serves both."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value)  # empty: unset (write "off" to turn CORS off)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
