"""The service's Prometheus metrics, in a registry owned by one app.

Each app gets its own ``CollectorRegistry`` rather than the global default, so the many apps
tests build never share counters. Under gunicorn each worker process has its own metrics:
scrape the workers one by one, or run one worker per container. The ``/metrics`` view that
serves them is in ``captioner.api``; this module knows nothing of Flask.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from captioner.engine import Engine

__all__ = ["Metrics"]


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
