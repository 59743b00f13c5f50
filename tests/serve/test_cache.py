"""Caption cache: keys, both real backends, concurrency, outages and configuration."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, RedisServerError, free_port

from captioner.errors import AltCapError
from captioner.read import Line, Reading
from captioner.serve.cache import (
    Cache,
    CacheConfigError,
    NullCache,
    RedisCache,
    SQLiteCache,
    cache_key,
    caption_value,
    get_caption,
    get_text,
    open_cache,
    sha256_hex,
    text_key,
    text_value,
)

SHA_A = sha256_hex(b"image a")
SHA_B = sha256_hex(b"image b")
SETTINGS = {"strategy": "beam", "beam_size": 3, "max_new_tokens": 20, "temperature": 1.0}
RESULT = {"caption": "a dog on a skateboard", "model": "clipcap-coco", "score": -3.25}


class FakeClock:
    """Unix time that moves only when told, so SQLite TTL tests need no sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _start(server: RedisServer) -> RedisServer:
    try:
        return server.start()
    except RedisServerError as exc:
        message = str(exc)
    server.close()
    pytest.fail(message, pytrace=False)  # fail, never skip: see tests/redis_server.py


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = _start(RedisServer())
    yield server
    server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "redis"])
def cache(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Cache]:
    if request.param == "sqlite":
        c: Cache = SQLiteCache(tmp_path / "cache.sqlite3", clock=clock)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        redis.Redis.from_url(server.url).flushdb()
        c = RedisCache(server.url)
    yield c
    c.close()


@pytest.fixture
def advance(cache: Cache, clock: FakeClock) -> Callable[[float], None]:
    """Let ``seconds`` pass for the cache under test: fake clock for SQLite, real for Redis."""
    return clock.advance if isinstance(cache, SQLiteCache) else time.sleep


def key(model: str = "clipcap-coco", sha: str = SHA_A) -> str:
    return cache_key(model, SETTINGS, sha)


# --- keys ---------------------------------------------------------------------------


def test_sha256_hex_is_the_standard_digest() -> None:
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_cache_key_is_pinned() -> None:
    # Changing how keys are computed silently empties every deployed cache: do it on
    # purpose (bump KEY_VERSION) and update this value.
    assert cache_key("clipcap-coco", {"beam_size": 3}, SHA_A) == (
        "f741b22adefb4c88cf5ef4abdc5d6b7d69bf68d270b9fcc4572c37b2c780b5a1"
    )


def test_cache_key_ignores_dict_order_and_number_spelling() -> None:
    reordered = dict(reversed(list(SETTINGS.items())))
    assert list(reordered) != list(SETTINGS)
    assert cache_key("m", reordered, SHA_A) == cache_key("m", SETTINGS, SHA_A)
    assert cache_key("m", {"t": 1.0}, SHA_A) == cache_key("m", {"t": 1}, SHA_A)
    assert cache_key("m", {"a": {"x": 1, "y": 2}}, SHA_A) == cache_key(
        "m", {"a": {"y": 2, "x": 1}}, SHA_A
    )
    assert cache_key("m", {"l": (1, 2)}, SHA_A) == cache_key("m", {"l": [1, 2]}, SHA_A)
    assert cache_key("m", {}, SHA_A.upper()) == cache_key("m", {}, SHA_A)


def test_cache_key_changes_with_every_part() -> None:
    keys = [
        cache_key("clipcap-coco", SETTINGS, SHA_A),
        cache_key("clipcap-conceptual", SETTINGS, SHA_A),
        cache_key("clipcap-coco", SETTINGS, SHA_B),
        cache_key("clipcap-coco", {**SETTINGS, "beam_size": 4}, SHA_A),
        cache_key("clipcap-coco", {**SETTINGS, "temperature": 1.5}, SHA_A),
        cache_key("clipcap-coco", {**SETTINGS, "seed": None}, SHA_A),
        cache_key("clipcap-coco", {k: v for k, v in SETTINGS.items() if k != "beam_size"}, SHA_A),
        cache_key("clipcap-coco", {**SETTINGS, "beam_size": "3"}, SHA_A),
        cache_key("clipcap-coco", {**SETTINGS, "flag": True}, SHA_A),
        cache_key("clipcap-coco", {**SETTINGS, "flag": 1}, SHA_A),
    ]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 64 for k in keys)


@pytest.mark.parametrize(
    ("model", "settings", "sha", "error"),
    [
        ("m", {}, "not-a-hash", ValueError),
        ("m", {}, SHA_A[:-1], ValueError),
        ("", {}, SHA_A, ValueError),
        ("m", {"x": object()}, SHA_A, TypeError),
        ("m", {1: "x"}, SHA_A, TypeError),
        ("m", {"x": float("nan")}, SHA_A, ValueError),
    ],
)
def test_cache_key_rejects_what_it_cannot_key_stably(
    model: str, settings: dict, sha: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        cache_key(model, settings, sha)


# --- both backends ------------------------------------------------------------------


def test_round_trip_and_overwrite(cache: Cache) -> None:
    value = {**RESULT, "caption": "un chien sur une planche — 🛹", "tokens": [1, 2, 3]}
    cache.set(key(), value)
    assert cache.get(key()) == value
    cache.set(key(), RESULT)
    assert cache.get(key()) == RESULT
    assert cache.get(key(sha=SHA_B)) is None
    assert cache.stats() == {
        "backend": cache.backend,
        "hits": 2,
        "misses": 1,
        "sets": 2,
        "errors": 0,
        "url_hits": 0,
        "url_misses": 0,
    }


def test_get_caption_serves_only_caption_results(cache: Cache) -> None:
    """The service and batch jobs share entries; one of another shape is never served."""
    key = cache_key("m", {}, SHA_A)
    assert get_caption(cache, key) is None
    cache.set(key, caption_value("A dog.", 3))
    assert get_caption(cache, key) == {"caption": "A dog.", "tokens": 3}
    for wrong in ({"caption": "A"}, {"caption": 7, "tokens": 3}, {"caption": "A", "tokens": True}):
        cache.set(key, wrong)
        assert get_caption(cache, key) is None


def test_get_caption_keeps_confidence_and_candidates_with_the_caption(cache: Cache) -> None:
    """An entry carries its confidence (and candidates): one written without (by older code)
    is a miss for a model that scores, so it is recomputed, and still served to one that
    cannot; a request for candidates never gets an entry without them."""
    key = cache_key("m", {}, SHA_A)
    scored = caption_value("A dog.", 3, 0.75)
    assert scored == {"caption": "A dog.", "tokens": 3, "confidence": 0.75}
    cache.set(key, scored)
    assert get_caption(cache, key, scored=True) == scored
    assert get_caption(cache, key) == scored

    cache.set(key, caption_value("A dog.", 3))  # an entry from before confidences
    assert get_caption(cache, key, scored=True) is None
    assert get_caption(cache, key) == {"caption": "A dog.", "tokens": 3}

    for wrong in ("high", 1.5, -0.1, True):
        cache.set(key, {"caption": "A dog.", "tokens": 3, "confidence": wrong})
        assert get_caption(cache, key) is None, wrong

    listed = [{"caption": "A dog.", "score": -0.1}, {"caption": "A cat.", "score": -0.9}]
    cache.set(key, caption_value("A dog.", 3, 0.75, listed))
    assert get_caption(cache, key, scored=True, candidates=True)["candidates"] == listed
    cache.set(key, scored)
    assert get_caption(cache, key, scored=True, candidates=True) is None
    for wrong in ([], "A dog.", ["A dog."]):
        cache.set(key, {**scored, "candidates": wrong})
        assert get_caption(cache, key) is None, wrong


def test_text_key_is_pinned_and_apart_from_caption_keys() -> None:
    # The service and batch jobs share readings under these keys: change them on purpose
    # (bump TEXT_KEY_VERSION) and update this value.
    engine = "tesseract-5.5.4:eng:r1"
    assert text_key(SHA_A, engine) == (
        "f3509c62b1f36f752f340614a2f3c034229ac9e70b7aac5ee396f08806a7975e"
    )
    keys = {
        text_key(SHA_A, engine),
        text_key(SHA_B, engine),
        text_key(SHA_A, "tesseract-5.5.4:eng+deu:r1"),  # other languages
        text_key(SHA_A, "tesseract-5.5.4:eng:r2"),  # other reading rules
        cache_key(engine, {}, SHA_A),
    }
    assert len(keys) == 5
    assert text_key(SHA_A.upper(), engine) == text_key(SHA_A, engine)
    for sha, engine_id in (("not-a-hash", engine), (SHA_A, "")):
        with pytest.raises(ValueError):
            text_key(sha, engine_id)


def test_get_text_serves_only_readings(cache: Cache) -> None:
    key = text_key(SHA_A, "tesseract-5.5.4:eng:r1")
    assert get_text(cache, key) is None
    reading = Reading(
        (Line(("SALE", "50%"), 91.0, (0, 0, 10, 10)), Line(("OFF",), 90.0, (0, 12, 10, 20))), True
    )
    cache.set(key, text_value(reading))
    assert get_text(cache, key) == {"text": "SALE 50%\nOFF", "mostly_text": True}
    cache.set(key, text_value(Reading()))
    assert get_text(cache, key) == {"text": "", "mostly_text": False}
    for wrong in ({"text": "A"}, {"text": 7, "mostly_text": True}, {"text": "A", "mostly_text": 1}):
        cache.set(key, wrong)
        assert get_text(cache, key) is None


def test_miss(cache: Cache) -> None:
    assert cache.get(key()) is None
    assert cache.stats()["misses"] == 1


def test_ttl_expiry(cache: Cache, advance: Callable[[float], None]) -> None:
    cache.set(key(), RESULT, ttl_s=0.3)
    cache.set(key(sha=SHA_B), RESULT)  # no TTL: stays
    assert cache.get(key()) == RESULT
    advance(0.45)
    assert cache.get(key()) is None
    assert cache.get(key(sha=SHA_B)) == RESULT


def test_url_memo(cache: Cache, advance: Callable[[float], None]) -> None:
    url = "https://example.org/img/dog.jpg?size=large&q=" + "x" * 3000
    assert cache.get_url_hash(url) is None
    cache.set_url_hash(url, SHA_A, ttl_s=0.3)
    assert cache.get_url_hash(url) == SHA_A
    assert cache.get_url_hash(url + "&other") is None
    assert cache.get(key()) is None  # the memo and the captions do not mix
    advance(0.45)
    assert cache.get_url_hash(url) is None
    stats = cache.stats()
    assert (stats["url_hits"], stats["url_misses"]) == (1, 3)


def test_url_memo_keys_any_string(cache: Cache) -> None:
    """A URL UTF-8 cannot encode (a lone surrogate) is still a key: the lookup never raises,
    whatever reaches it, and the backend is not marked down."""
    url = "http://example.org/\ud800.png"
    assert cache.get_url_hash(url) is None
    cache.set_url_hash(url, SHA_A, ttl_s=60)
    assert cache.get_url_hash(url) == SHA_A
    assert cache.stats()["errors"] == 0


def test_programming_errors_still_raise(cache: Cache) -> None:
    with pytest.raises(TypeError):
        cache.set(key(), {"embedding": object()})
    with pytest.raises(ValueError):
        cache.set(key(), {"score": float("nan")})
    with pytest.raises(TypeError):
        cache.set(key(), ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cache.set(key(), RESULT, ttl_s=0)
    with pytest.raises(ValueError):
        cache.set_url_hash("https://example.org/a.png", "nope", ttl_s=10)
    with pytest.raises(ValueError):
        cache.set_url_hash("https://example.org/a.png", SHA_A, ttl_s=None)  # type: ignore[arg-type]
    assert cache.get(key()) is None


def test_closed_cache_misses_quietly(cache: Cache) -> None:
    cache.set(key(), RESULT)
    cache.close()
    assert cache.get(key()) is None
    cache.set(key(), RESULT)  # no exception
    cache.close()  # idempotent


def test_null_cache_never_hits() -> None:
    cache = NullCache()
    cache.set(key(), RESULT)
    cache.set_url_hash("https://example.org/a.png", SHA_A, ttl_s=10)
    assert cache.get(key()) is None
    assert cache.get_url_hash("https://example.org/a.png") is None
    assert cache.stats()["backend"] == "none"


# --- SQLite -------------------------------------------------------------------------


def test_sqlite_creates_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "cache.sqlite3"
    with SQLiteCache(path) as cache:
        cache.set(key(), RESULT)
    assert path.is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with SQLiteCache(path) as cache:  # persisted across opens
        assert cache.get(key()) == RESULT


def test_sqlite_prunes_expired_rows(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "cache.sqlite3"

    def rows() -> int:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT count(*) FROM altcap_cache").fetchone()[0]
        finally:
            conn.close()

    cache = SQLiteCache(path, clock=clock, prune_every=3)
    cache.set(key(sha=SHA_A), RESULT, ttl_s=10)
    cache.set(key(sha=SHA_B), RESULT)
    clock.advance(11)
    assert rows() == 2  # expired but not yet pruned; reads ignore it
    assert cache.get(key(sha=SHA_A)) is None
    cache.set_url_hash("https://example.org/a.png", SHA_A, ttl_s=100)  # third write prunes
    assert rows() == 2
    cache.set(key("other"), RESULT, ttl_s=1)
    clock.advance(2)
    assert cache.prune() == 1
    assert rows() == 2
    cache.close()


def test_sqlite_many_threads(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.sqlite3")

    def work(worker: int) -> int:
        wrong = 0
        for i in range(100):
            k = cache_key("m", {"worker": worker, "i": i % 10}, SHA_A)
            cache.set(k, {"worker": worker, "i": i})
            got = cache.get(k)
            wrong += got is None or got["worker"] != worker
            cache.get(key())  # shared key everyone reads
        return wrong

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert sum(pool.map(work, range(32))) == 0
    stats = cache.stats()
    assert stats["errors"] == 0
    assert stats["sets"] == 3200
    cache.close()


def _write_many(path: str, worker: int, n: int) -> None:
    """Child process body: its own cache on the shared file; exit code 1 on any error."""
    cache = SQLiteCache(path)
    for i in range(n):
        cache.set(cache_key("m", {"i": i}, SHA_A), {"i": i, "worker": worker})  # shared keys
        cache.set(cache_key("m", {"i": i, "worker": worker}, SHA_A), {"i": i})  # own keys
    ok = cache.stats()["errors"] == 0 and cache.get(cache_key("m", {"i": 0}, SHA_A)) is not None
    cache.close()
    raise SystemExit(0 if ok else 1)


def test_sqlite_two_processes_write_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite3")
    SQLiteCache(path).close()  # create up front, as the service does at start-up
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(path, w, 200)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = SQLiteCache(path)
    for i in range(200):
        assert cache.get(cache_key("m", {"i": i}, SHA_A))["worker"] in (0, 1)
        for w in range(2):
            assert cache.get(cache_key("m", {"i": i, "worker": w}, SHA_A)) == {"i": i}
    cache.close()


def _use_inherited(cache: SQLiteCache) -> None:
    # SQLite forbids using a connection opened before fork() in the child. Misuse rarely
    # fails visibly, so look at the pool: none of the parent's connections may be used.
    inherited = list(cache._idle)
    cache.set(key(sha=SHA_B), {"from": "child"})
    ok = cache.get(key()) == RESULT and cache.stats()["errors"] == 0
    reused = any(conn is old for conn in cache._idle for old in inherited)
    raise SystemExit(0 if ok and inherited and not reused else 1)


def test_sqlite_survives_fork_after_use(tmp_path: Path) -> None:
    # gunicorn --preload: the app (and its cache) is created, then workers fork from it.
    cache = SQLiteCache(tmp_path / "cache.sqlite3")
    cache.set(key(), RESULT)  # leaves a pooled connection the child must not reuse
    proc = multiprocessing.get_context("fork").Process(target=_use_inherited, args=(cache,))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert cache.get(key(sha=SHA_B)) == {"from": "child"}
    cache.close()


def test_sqlite_locked_database_is_a_logged_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = SQLiteCache(path, busy_timeout_s=0.05)
    cache.set(key(), RESULT)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock
    with caplog.at_level(logging.WARNING, logger="captioner.serve.cache"):
        for _ in range(5):
            cache.set(key(sha=SHA_B), RESULT)  # no exception
    assert cache.get(key()) == RESULT  # WAL: readers are not blocked by the writer
    assert cache.get(key(sha=SHA_B)) is None
    assert cache.stats()["errors"] == 5
    warnings = [r for r in caplog.records if r.name == "captioner.serve.cache"]
    assert len(warnings) == 1  # rate-limited
    assert "locked" in warnings[0].getMessage()
    blocker.execute("ROLLBACK")
    blocker.close()
    cache.set(key(sha=SHA_B), RESULT)
    assert cache.get(key(sha=SHA_B)) == RESULT
    cache.close()


def test_sqlite_corrupt_entry_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = SQLiteCache(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO altcap_cache VALUES (?, '{not json', NULL)", ("cap:" + key(),))
        conn.execute("INSERT INTO altcap_cache VALUES (?, '[1]', NULL)", ("cap:" + key("x"),))
    conn.close()
    assert cache.get(key()) is None
    assert cache.get(key("x")) is None
    cache.close()


def test_sqlite_unusable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(CacheConfigError) as info:
        SQLiteCache(path)
    assert info.value.code == "invalid_config"
    assert str(path) in info.value.message


# --- Redis --------------------------------------------------------------------------


def test_redis_keys_are_namespaced_with_ttls(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    with RedisCache(redis_server.url) as cache:
        cache.set(key(), RESULT, ttl_s=30)
        cache.set(key(sha=SHA_B), RESULT)
        cache.set_url_hash("https://example.org/a.png", SHA_A, ttl_s=60)
    names = sorted(k.decode() for k in client.keys("*"))
    assert names[:2] == sorted(["altcap:cap:" + key(), "altcap:cap:" + key(sha=SHA_B)])
    assert names[2] == "altcap:url:" + sha256_hex(b"https://example.org/a.png")
    assert 29_000 < client.pttl("altcap:cap:" + key()) <= 30_000
    assert client.pttl("altcap:cap:" + key(sha=SHA_B)) == -1  # no expiry
    assert 59_000 < client.pttl(names[2]) <= 60_000
    client.close()


def test_redis_going_away_mid_flight(caplog: pytest.LogCaptureFixture) -> None:
    server = _start(RedisServer())
    try:
        cache = RedisCache(server.url, cooldown_s=0)
        cache.set(key(), RESULT)
        cache.set_url_hash("https://example.org/a.png", SHA_A, ttl_s=60)
        assert cache.get(key()) == RESULT
        server.stop()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="captioner.serve.cache"):
            assert cache.get(key()) is None
            cache.set(key(), RESULT)  # no exception
            assert cache.get_url_hash("https://example.org/a.png") is None
            cache.set_url_hash("https://example.org/a.png", SHA_A, ttl_s=60)
        assert time.monotonic() - started < 5
        assert cache.stats()["errors"] == 4
        assert [r.name for r in caplog.records] == ["captioner.serve.cache"]  # rate-limited
        server.start()  # same port, empty: the client reconnects on its own
        cache.set(key(), RESULT)
        assert cache.get(key()) == RESULT
        cache.close()
    finally:
        server.close()


def test_redis_down_at_start_up_and_cooldown() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", cooldown_s=60)
    assert cache.get(key()) is None
    cache.set(key(), RESULT)
    assert cache.get_url_hash("https://example.org/a.png") is None
    assert cache.stats()["errors"] == 1  # later calls skipped the dead server
    cache.close()


# --- configuration ------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", "  "])
def test_open_cache_defaults_to_sqlite_in_data_dir(tmp_path: Path, url: str | None) -> None:
    data_dir = tmp_path / "data" / "nested"
    with open_cache(url, data_dir) as cache:
        assert isinstance(cache, SQLiteCache)
        assert cache.path == data_dir / "cache.sqlite3"
        assert cache.path.is_file()


def test_open_cache_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = tmp_path / "abs" / "c.db"
    with open_cache(f"sqlite:///{absolute}", tmp_path / "unused") as cache:
        assert isinstance(cache, SQLiteCache)
        assert cache.path == absolute  # sqlite:////abs/path
    monkeypatch.chdir(tmp_path)
    with open_cache("sqlite:///rel/c.db", tmp_path / "unused") as cache:
        assert isinstance(cache, SQLiteCache)
    assert (tmp_path / "rel" / "c.db").is_file()
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:1/0", "rediss://:secret@cache.internal:6380/2", "REDIS://localhost"],
)
def test_open_cache_redis_urls_connect_lazily(tmp_path: Path, url: str) -> None:
    with open_cache(url, tmp_path) as cache:
        assert isinstance(cache, RedisCache)


@pytest.mark.parametrize("url", ["none", "off", "OFF", " None "])
def test_open_cache_off(tmp_path: Path, url: str) -> None:
    assert isinstance(open_cache(url, tmp_path), NullCache)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/cache",
        "memcached://127.0.0.1:11211",
        "/var/lib/altcap/cache.sqlite3",
        "sqlite://host/cache.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///cache.db?mode=ro",
        "redis://localhost:notaport/0",
        "disabled",
    ],
)
def test_open_cache_rejects_bad_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(CacheConfigError) as info:
        open_cache(url, tmp_path)
    assert isinstance(info.value, AltCapError)
    assert info.value.code == "invalid_config"
    assert info.value.to_dict()["code"] == "invalid_config"


def test_config_errors_hide_passwords(tmp_path: Path) -> None:
    with pytest.raises(CacheConfigError) as info:
        open_cache("memcached://admin:hunter2@cache.internal:11211", tmp_path)
    assert "hunter2" not in info.value.message
    assert "admin:***@cache.internal" in info.value.message
