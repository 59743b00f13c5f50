"""Politeness to sites (captioner/crawl/politeness.py): downloads at once per host and turns per
origin, in one process and, through a real Redis, over several consumers."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis_server import RedisServer

from captioner.crawl.politeness import (
    HostSlots,
    Pacer,
    RedisHostSlots,
    RedisPacer,
    host_of,
    origin_of,
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A fresh client on an empty database; another ``client`` stands for another process."""
    made = redis.Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=1)
    made.flushdb()
    yield made
    made.close()


def other_client(server: RedisServer) -> redis.Redis:
    """A second connection, as a consumer on another machine would have."""
    return redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=1)


def test_hosts_and_origins_as_the_rules_count_them() -> None:
    assert host_of("http://B.Example:81/a.png") == host_of("https://b.example/x") == "b.example"
    assert origin_of("HTTP://B.Example:81/a?b") == "http://b.example:81"
    assert origin_of("https://b.example/") != origin_of("http://b.example/")


# --- downloads at once ---------------------------------------------------------------------


def run_downloads(slots_for: Callable[[int], HostSlots], urls: list[str]) -> dict[str, int]:
    """Download ``urls`` (each ~50 ms) from one thread each, the i-th through
    ``slots_for(i)``; the most downloads that were ever under way at once, by host."""
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    lock = threading.Lock()

    def download(i: int, url: str) -> None:
        host = host_of(url)
        with slots_for(i).hold(url):
            with lock:
                inside[host] = inside.get(host, 0) + 1
                most[host] = max(most.get(host, 0), inside[host])
            time.sleep(0.05)
            with lock:
                inside[host] -= 1
            if url.endswith("/fail"):
                raise OSError("the download failed")

    def quietly(i: int, url: str) -> None:
        with contextlib.suppress(OSError):  # the failing downloads: their slots must come back
            download(i, url)

    threads = [threading.Thread(target=quietly, args=(i, u)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    return most


URLS = [
    *(f"http://a.example/{i}" for i in range(8)),
    *(f"http://{('B.example:81', 'b.EXAMPLE')[i % 2]}/{i}" for i in range(8)),
    *["http://a.example/fail"] * 3,
]


def test_host_slots_cap_each_host_and_free_their_slot_on_errors() -> None:
    slots = HostSlots(2)
    most = run_downloads(lambda _: slots, URLS)
    assert most == {"a.example": 2, "b.example": 2}  # both hosts at once, neither above 2
    assert slots.busy() == {}  # every slot given back, failures included
    with pytest.raises(ValueError):
        HostSlots(0)


def test_redis_slots_cap_each_host_over_all_consumers(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    # Three consumers, each allowed 2 per host in its own process: 6 at once without Redis.
    consumers = [RedisHostSlots(client, 2, lease_s=30)]
    consumers += [RedisHostSlots(other_client(redis_server), 2, lease_s=30) for _ in range(2)]
    most = run_downloads(lambda i: consumers[i % 3], URLS)
    assert most == {"a.example": 2, "b.example": 2}
    assert [c.busy() for c in consumers] == [{}, {}, {}]
    assert client.keys("altcap:polite:slots:*") == []  # every token given back (sets emptied)


def test_the_slot_of_a_consumer_killed_mid_download_frees_at_its_lease_end(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    dead = RedisHostSlots(client, 1, lease_s=2.0)
    url = "http://a.example/1.png"
    assert dead._take(dead.key(url), "killed")  # taken and never given back: a kill -9
    alive = RedisHostSlots(other_client(redis_server), 1, lease_s=30)
    token = ["alive", 0]

    def try_take() -> bool:
        token[1] += 1
        return bool(alive._acquire(keys=[alive.key(url)], args=[1, 30, f"alive-{token[1]}"]))

    assert not try_take()  # the host's one slot is the dead consumer's
    time.sleep(2.1)
    assert try_take()  # its lease is over
    with pytest.raises(ValueError):
        RedisHostSlots(client, 1, lease_s=0)


def test_slots_fall_back_to_the_process_cap_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    slots = RedisHostSlots(other_client(redis_server), 2, lease_s=30)
    redis_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="captioner.crawl.politeness"):
            most = run_downloads(lambda _: slots, URLS[:8])  # no error, no hang
    finally:
        redis_server.start()
    assert most == {"a.example": 2}  # the process's own cap still holds
    warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]  # once, not 8 times
    with slots.hold("http://a.example/again"):  # and Redis is used again once it is back
        assert slots.client.zcard(slots.key("http://a.example/")) == 1


# --- time between requests -----------------------------------------------------------------


def test_pacer_books_turns_per_origin() -> None:
    now = [100.0]
    pacer = Pacer(lambda: now[0])
    a, b = "https://a.example", "https://b.example"
    assert [pacer.reserve(a, 2.0) for _ in range(3)] == [0.0, 2.0, 4.0]
    assert pacer.reserve(b, 2.0) == 0.0  # another origin waits for nobody
    now[0] += 10
    assert pacer.reserve(a, 5.0) == 0.0  # the turns booked have passed
    assert pacer.reserve(a, 1.0) == 5.0  # the delay booked with the turn before counts


def test_pacer_forgets_origins_whose_turn_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("captioner.crawl.politeness.PACER_ORIGINS", 3)
    now = [0.0]
    pacer = Pacer(lambda: now[0])
    for i in range(3):
        pacer.reserve(f"https://{i}.example", 1.0)
    now[0] = 5.0
    pacer.reserve("https://busy.example", 1.0)  # the fourth origin: the passed ones go
    assert list(pacer._next) == ["https://busy.example"]
    assert pacer.reserve("https://busy.example", 1.0) == 1.0  # its own turn is kept


def test_redis_pacer_books_turns_for_all_consumers(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    one, two = RedisPacer(client), RedisPacer(other_client(redis_server))
    a = "https://a.example"
    start = time.monotonic()
    waits = [one.reserve(a, 0.5), two.reserve(a, 0.5), one.reserve(a, 0.5)]
    elapsed = time.monotonic() - start  # Redis's clock moves on between the calls
    assert waits[0] == 0.0
    assert 0.5 - elapsed - 0.01 <= waits[1] <= 0.5
    assert 1.0 - elapsed - 0.01 <= waits[2] <= 1.0
    assert two.reserve("https://b.example", 0.5) == 0.0
    assert 1.0 < client.pttl(f"{one.prefix}turn:{a}") <= 2500  # the key goes when not needed


def test_redis_pacer_falls_back_to_the_process_turns_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    pacer = RedisPacer(other_client(redis_server))
    redis_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="captioner.crawl.politeness"):
            waits = [pacer.reserve("https://a.example", 10.0) for _ in range(2)]
    finally:
        redis_server.start()
    assert waits[0] == 0.0
    assert 9.0 < waits[1] <= 10.0  # still spaced, by this process
    assert sum("Redis unavailable" in r.getMessage() for r in caplog.records) == 1
