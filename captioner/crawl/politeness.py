"""Politeness to the sites that batch jobs read, for one process or for all of them.

Two rules, each per host (``hold``) or per origin (``reserve``):

- **downloads at once** (``HostSlots``): at most ``ALTCAP_JOB_DOWNLOADS_PER_HOST`` image
  downloads under way to one host. A job is often thousands of images from one site, and
  every consumer thread downloads a chunk's images 8 at a time;
- **time between requests** (``Pacer``): page, sitemap and robots.txt requests to one origin
  at least ``ALTCAP_CRAWL_DELAY_S`` apart (or the site's ``Crawl-delay``), over every job
  that crawls it, not within each job alone.

With the SQLite queue (one machine) both hold for the process, which is every consumer
there is. With ``ALTCAP_QUEUE_URL=redis://...`` consumers run on many machines, so
``RedisHostSlots`` and ``RedisPacer`` keep the counts and the next free turn in that Redis,
where they hold for all of them together; each step is one Lua script (atomic), timed by
Redis's own clock (``TIME``), so machines whose clocks differ still agree. A download slot is
a lease: a consumer killed while downloading frees its slot when the lease ends. When Redis
cannot be reached, both fall back to the process's own rule (logged), so politeness
degrades to what it was before and no job fails for it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import redis

__all__ = [
    "HostSlots",
    "Pacer",
    "RedisHostSlots",
    "RedisPacer",
    "host_of",
    "origin_of",
]

log = logging.getLogger(__name__)

PREFIX = "altcap:polite:"
WARN_EVERY_S = 60.0  # a Redis outage is logged once a minute, not once a download
PACER_ORIGINS = 10_000  # origins a Pacer remembers before it forgets the ones whose turn passed


def host_of(url: str) -> str:
    """The host a download goes to, as written (a redirect is not followed here)."""
    return (urlsplit(url).hostname or "").lower()


def origin_of(url: str) -> str:
    """scheme://host[:port], lower case: what robots.txt and the crawl delay apply to."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class _Warner:
    """Logs a Redis failure at most once every ``WARN_EVERY_S``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last = -WARN_EVERY_S
        self._lock = threading.Lock()

    def __call__(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < WARN_EVERY_S:
                return
            self._last = now
        log.warning(
            "%s: Redis unavailable (%s: %s); this process's own limit applies meanwhile",
            self.what,
            type(exc).__name__,
            exc,
        )


# --- downloads at once ---------------------------------------------------------------------


class HostSlots:
    """At most ``per_host`` downloads at once to any one host, over all the threads of this
    process. Without it a process could hold ``ALTCAP_JOB_WORKERS`` x 8 connections to one
    site, where a browser opens about 6."""

    def __init__(self, per_host: int) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self.per_host = per_host
        self._cond = threading.Condition()
        self._busy: dict[str, int] = {}  # host -> downloads under way (hosts at 0 dropped)

    @contextmanager
    def hold(self, url: str) -> Iterator[None]:
        """Wait for a slot of the URL's host; give it back on leaving, errors included."""
        host = host_of(url)
        with self._cond:
            while self._busy.get(host, 0) >= self.per_host:
                self._cond.wait()
            self._busy[host] = self._busy.get(host, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                left = self._busy[host] - 1
                if left:
                    self._busy[host] = left
                else:
                    del self._busy[host]
                self._cond.notify_all()

    def busy(self) -> dict[str, int]:
        """Downloads under way by host, in this process (for tests and debugging)."""
        with self._cond:
            return dict(self._busy)


# KEYS[1]: the host's sorted set of slot tokens, scored by lease end (Redis time).
# ARGV: per_host, lease seconds, token. 1 if the token got a slot, else 0.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
return 1
"""


class RedisHostSlots(HostSlots):
    """``HostSlots`` for every consumer that shares one Redis.

    A download first takes a slot in this process (so threads wait here, not in Redis),
    then one in Redis: a token in the host's sorted set, scored by the end of its lease
    (``lease_s``, longer than a download may take). While the host's set is full, it asks
    again after ``poll_s``, doubling up to ``max_poll_s`` with jitter, so many consumers
    waiting on one busy host do not flood Redis. A consumer that dies holding slots frees
    them when their leases end. When Redis fails, the download goes ahead under this
    process's cap.
    """

    def __init__(
        self,
        client: redis.Redis,
        per_host: int,
        *,
        lease_s: float,
        poll_s: float = 0.02,
        max_poll_s: float = 0.5,
        prefix: str = PREFIX,
    ) -> None:
        super().__init__(per_host)
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.client = client
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_poll_s = max_poll_s
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._warn = _Warner("download slots")

    def key(self, url: str) -> str:
        return f"{self.prefix}slots:{host_of(url)}"

    @contextmanager
    def hold(self, url: str) -> Iterator[None]:
        with super().hold(url):
            key, token = self.key(url), uuid.uuid4().hex
            shared = self._take(key, token)
            try:
                yield
            finally:
                if shared:
                    self._give_back(key, token)

    def _take(self, key: str, token: str) -> bool:
        """Wait for a slot in Redis: True once held there, False if Redis failed."""
        import redis

        wait = self.poll_s
        while True:
            try:
                if self._acquire(keys=[key], args=[self.per_host, self.lease_s, token]):
                    return True
            except redis.RedisError as exc:
                self._warn(exc)
                return False
            time.sleep(wait * random.uniform(0.5, 1.0))
            wait = min(wait * 2, self.max_poll_s)

    def _give_back(self, key: str, token: str) -> None:
        import redis

        try:
            self.client.zrem(key, token)
        except redis.RedisError as exc:  # the lease ends it anyway
            self._warn(exc)


# --- time between requests -----------------------------------------------------------------


class Pacer:
    """Turns for requests to one origin, ``delay`` seconds apart, for this process.

    ``reserve`` books the next free turn and says how long to wait for it; callers sleep
    that long, so requests from any number of crawlers (jobs) are spaced out together.
    ``clock`` is injectable so tests need not wait.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}  # origin -> earliest time of the next request

    def reserve(self, origin: str, delay: float) -> float:
        """Book the next turn at ``origin``; the seconds to wait until it (0: now)."""
        with self._lock:
            now = self._clock()
            turn = max(now, self._next.get(origin, now))
            self._next[origin] = turn + delay
            if len(self._next) > PACER_ORIGINS:  # a long-lived consumer meets many sites
                self._next = {o: t for o, t in self._next.items() if t > now}
        return turn - now


# KEYS[1]: the origin's next free turn (Redis time, seconds). ARGV[1]: the delay after the
# turn booked now. Returns the wait, a string (Lua numbers leave Redis as integers).
_RESERVE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local turn = math.max(t, tonumber(redis.call('GET', KEYS[1]) or '0'))
local after = turn + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.6f', after), 'PX', math.ceil((after - t) * 1000) + 1000)
return string.format('%.6f', turn - t)
"""


class RedisPacer(Pacer):
    """``Pacer`` for every consumer that shares one Redis: the origin's next free turn is
    kept there. When Redis fails, this process's own turns apply."""

    def __init__(self, client: redis.Redis, *, prefix: str = PREFIX) -> None:
        super().__init__()
        self.client = client
        self.prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._warn = _Warner("crawl delay")

    def reserve(self, origin: str, delay: float) -> float:
        import redis

        try:
            wait: Any = self._reserve(keys=[f"{self.prefix}turn:{origin}"], args=[delay])
        except redis.RedisError as exc:
            self._warn(exc)
            return super().reserve(origin, delay)
        return max(0.0, float(wait))
