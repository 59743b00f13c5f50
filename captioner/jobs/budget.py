"""The owner's rate-limit budget for batch jobs: images are charged to the same Flask-Limiter
limits as the captioning API, so a job cannot spend more than its owner may."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from captioner.serve.settings import Settings

__all__ = ["BUDGET_MARGIN_S", "BUDGET_RETRY_S", "LIMITER_SCOPE", "JobBudget"]

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.strategies import RateLimiter


log = logging.getLogger(__name__)

LIMITER_SCOPE = "global"  # Flask-Limiter's scope of application-wide limits, part of its keys


BUDGET_MARGIN_S = 0.2  # a paused job goes on this long after its window has reset


BUDGET_RETRY_S = 30.0  # the rate-limit counters cannot be read: a job waits this long


class JobBudget:
    """``ALTCAP_RATE_LIMIT`` as the API counts it, charged for the images jobs caption.

    The counters are the API's: Flask-Limiter's fixed windows, keyed by the rate-limit
    identity (``hooks.rate_limit_key``) and ``LIMITER_SCOPE``, in the same storage. In the
    service that is its limiter itself (``jobs_api.init_app``); a ``python -m captioner
    worker`` opens ``ALTCAP_RATELIMIT_STORAGE_URL`` (``from_settings``). With ``memory://``
    every process counts apart: a worker then holds each client to the budget for the images
    that worker captions, but neither it nor the service sees the other's counts. Share
    Redis (a Redis ``ALTCAP_CACHE_URL`` is used by default) for one count everywhere.
    """

    def __init__(self, rate_limit: str, strategy: Callable[[], RateLimiter]) -> None:
        import limits

        self.items: list[RateLimitItem] = limits.parse_many(rate_limit)
        self._strategy = strategy  # called at each charge: the service's may switch to memory

    @classmethod
    def from_settings(cls, settings: Settings) -> JobBudget | None:
        """The budget of a process without the service's limiter (None: no rate limit); its
        storage is opened at the first charge."""
        if not settings.rate_limit:
            return None
        lock, made = threading.Lock(), []

        def strategy() -> RateLimiter:
            with lock:
                if not made:
                    from limits.storage import storage_from_string
                    from limits.strategies import FixedWindowRateLimiter

                    storage = storage_from_string(settings.ratelimit_storage)
                    made.append(FixedWindowRateLimiter(storage))
                return made[0]

        return cls(settings.rate_limit, strategy)

    def charge(self, client: str, wanted: int) -> tuple[int, float]:
        """Charge ``client`` for up to ``wanted`` images, as many as every limit has left:
        ``(charged, 0.0)``; or ``(0, wait_s)`` when a limit has nothing left, ``wait_s`` the
        seconds until its window resets. Counters that cannot be read charge nothing, and
        the wait is ``BUDGET_RETRY_S``.

        Each counter is taken by one atomic increment, as Flask-Limiter takes it, so that
        consumers charging one client at once (threads, or workers sharing Redis) never
        caption more than its budget: what the increment shows was left is what is charged.
        Counting a window past its limit changes nothing (it is spent either way); the
        scarcest limit goes first, so with several limits the others are counted only
        what was charged (but for a race between two of them)."""
        args = (client, LIMITER_SCOPE)
        try:
            strategy = self._strategy()
            scarcest_first = sorted(
                self.items, key=lambda item: strategy.get_window_stats(item, *args).remaining
            )
            charged = wanted
            for item in scarcest_first:
                count = strategy.storage.incr(item.key_for(*args), item.get_expiry(), charged)
                charged = min(charged, max(item.amount - (count - charged), 0))
                if not charged:  # spent: wait for this window
                    reset = strategy.get_window_stats(item, *args).reset_time
                    return 0, max(reset - time.time(), 0.0) + BUDGET_MARGIN_S
        except Exception as exc:  # Redis away: the job waits rather than captions unpaid
            log.warning("rate-limit counters unavailable (%s: %s)", type(exc).__name__, exc)
            return 0, BUDGET_RETRY_S
        return charged, 0.0


def _charged(spec: Mapping[str, Any]) -> bool:
    """Does the consumer charge this job's images? Not an ``images`` job's (paid when it was
    submitted), nor a job stored before jobs had clients."""
    return bool(spec.get("client")) and "images" not in spec["source"]
