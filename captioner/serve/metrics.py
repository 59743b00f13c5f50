"""The service's Prometheus metrics, in a registry owned by one app.

Each app gets its own ``CollectorRegistry`` rather than the global default, so the many apps
tests build never share counters.

Under gunicorn the workers are separate processes, and a scrape reaches whichever worker
accepts it: per-process numbers would jump between workers' totals, which Prometheus reads as
counter resets. So ``gunicorn.conf.py`` runs prometheus-client's multiprocess mode: it points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before forking, every worker writes its
values to memory-mapped files there, and ``/metrics`` (any worker) reports the sum over all
workers, including ones that have exited, so counters never go back. The two gauges then say
``altcap_queue_depth``, the images waiting in all live workers (each worker's figure as of its
last batch or scrape), and ``altcap_model_ready``, 1 once every live worker has
loaded its model. Without that variable (``python app.py``, tests) the numbers are this
process's own, read live. The ``/metrics`` view is in ``captioner.web.api``; this module knows
nothing of Flask.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from captioner.serve.engine import Engine
from captioner.trust import ALT_VERDICTS

__all__ = [
    "ALT_CHECK_OUTCOMES",
    "CONFIDENCE_OUTCOMES",
    "MULTIPROC_ENV",
    "TEXT_READ_OUTCOMES",
    "Metrics",
    "multiprocess_dir",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when it is imported
# How reading an image's text ended: a reading with text, a reading without, the cache's
# reading, or no reading (the warning codes ocr_timeout, ocr_failed, ocr_unavailable).
TEXT_READ_OUTCOMES = ("text", "none", "cached", "timeout", "failed", "unavailable")
# A caption's confidence: at or above ALTCAP_MIN_CONFIDENCE, below it, or none (a model
# without CLIP's text tower).
CONFIDENCE_OUTCOMES = ("confident", "not_confident", "unscored")
# An author's alt sent with an image: trust's verdicts, or unchecked (no text tower).
ALT_CHECK_OUTCOMES = (*ALT_VERDICTS, "unavailable")


def multiprocess_dir() -> str | None:
    """The directory of the workers' metric files, or None outside multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """Prometheus metrics in a registry of their own (one per app: tests build many apps)."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.engine = engine
        self.shared = multiprocess_dir() is not None  # gunicorn: one view of every worker
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
        self.queue_depth = Gauge(
            "altcap_queue_depth",
            "Images waiting for the model",
            registry=r,
            multiprocess_mode="livesum",  # the workers' queues added up
        )
        self.model_ready = Gauge(
            "altcap_model_ready",
            "1 once the model is loaded",
            registry=r,
            multiprocess_mode="livemin",  # 1 when every live worker has its model
        )
        if self.shared:  # other workers read the files: write the values as they change
            threading.Thread(target=self._when_loaded, name="altcap-metrics", daemon=True).start()
        else:  # read when scraped
            self.queue_depth.set_function(lambda: _queue_depth(engine))
            self.model_ready.set_function(lambda: 1.0 if engine.ready else 0.0)
        self.cache_hits = Counter(
            "altcap_cache_hits",
            "Cache lookups that found an entry (kind: caption, text or url)",
            ["kind"],
            registry=r,
        )
        self.cache_misses = Counter(
            "altcap_cache_misses",
            "Cache lookups that found nothing (kind: caption, text or url)",
            ["kind"],
            registry=r,
        )
        self.images = Counter(
            "altcap_images",
            "Images answered, by outcome (captioned, cached, error)",
            ["outcome"],
            registry=r,
        )
        self.text_reads = _counter_of(
            r,
            "altcap_text_reads",
            "Images whose text was wanted, by outcome",
            "outcome",
            TEXT_READ_OUTCOMES,
        )
        self.confidence = _counter_of(
            r,
            "altcap_confidence",
            "Captions answered, by confidence outcome",
            "outcome",
            CONFIDENCE_OUTCOMES,
        )
        self.alt_checks = _counter_of(
            r,
            "altcap_alt_checks",
            "Authors' alts sent with an image, by verdict",
            "verdict",
            ALT_CHECK_OUTCOMES,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        """The engine's ``on_batch`` hook (runs in its worker thread: keep it quick)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.update_gauges()

    def update_gauges(self) -> None:
        """Write this worker's queue depth for the others to read (multiprocess mode only:
        otherwise the gauges are read live)."""
        if self.shared:
            self.queue_depth.set(_queue_depth(self.engine))

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The body and Content-Type for ``/metrics``: every worker's in multiprocess mode.

        The format is the one the scraper's ``Accept`` header prefers (OpenMetrics or the
        Prometheus text format), and the Content-Type is prometheus-client's own, to be sent
        as it is: it carries its charset already, and a second one (what Flask's
        ``mimetype=`` adds) makes strict parsers such as Go's refuse the scrape.
        """
        encoder, content_type = choose_encoder(accept or "")
        if not self.shared:
            return encoder(self.registry), content_type
        self.update_gauges()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return encoder(registry), content_type

    def _when_loaded(self) -> None:
        self.model_ready.set(1.0 if self.engine.wait_ready() else 0.0)

    def cache_lookup(self, kind: str, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).labels(kind).inc()


def _queue_depth(engine: Engine) -> float:
    stats = engine.stats()
    depth = stats["queue_depth"] if isinstance(stats, dict) else stats.queue_depth
    return float(depth)


def _counter_of(
    registry: CollectorRegistry, name: str, what: str, label: str, values: tuple[str, ...]
) -> Counter:
    """A counter by ``label`` whose every value is scraped from the start, as 0 (a rate of
    something that has not happened yet is then 0, not missing); its help lists them."""
    counter = Counter(name, f"{what} ({', '.join(values)})", [label], registry=registry)
    for value in values:
        counter.labels(value)
    return counter
