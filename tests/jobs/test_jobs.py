"""Batch jobs without HTTP: the job store's guarantees (SQLite and a real Redis), and the
consumer planning and captioning jobs against a local site with the tiny model."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from helpers import png_bytes, serve_directory, serve_handler
from redis_server import RedisServer
from testsite import SALE_TEXT, SIGN_TEXT, serve_site

from captioner.errors import AltCapError
from captioner.jobs import backends, chunks, webhooks
from captioner.jobs import budget as budget_module
from captioner.jobs import consumer as consumer_module
from captioner.jobs import queue as jobs
from captioner.jobs.backends import CaptionerBackend, RetryLater
from captioner.jobs.budget import JobBudget
from captioner.jobs.consumer import start_consumer
from captioner.jobs.queue import JobQueue
from captioner.jobs.request import (
    IdempotencyConflict,
    InvalidJob,
    JobActive,
    JobNotFound,
    PageNotFound,
    parse_job,
)
from captioner.jobs.store import (
    DUPLICATE,
    FINISHED,
    INACTIVE,
    RECORDED,
    REFUSED,
    Claim,
    JobStore,
    Plan,
    RedisJobStore,
    SQLiteJobStore,
    holder,
)
from captioner.serve.settings import Settings

FAST = {"max_tokens": 4}  # short captions: the tiny model's time goes to the point


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        made: JobStore = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        redis.Redis.from_url(server.url).flushdb()
        made = RedisJobStore(server.url)
    yield made
    made.close()


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = {
        "DATA_DIR": tmp_path / "data",
        "ALLOW_PRIVATE_NETWORKS": True,
        "JOB_CHUNK_SIZE": 4,
        "JOB_LEASE_S": 2,
        "CRAWL_DELAY_S": 0,
        "MODEL": "tiny",
    }
    return Settings.load({}, {**base, **overrides})


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local site: 10 distinct PNGs, a text file that is no image, and pages."""
    root = tmp_path / "site"
    root.mkdir()
    for i in range(10):
        (root / f"{i}.png").write_bytes(png_bytes((20 * i, 40, 60)))
    (root / "not-an-image.png").write_bytes(b"hello, I am text")
    (root / "one.html").write_text(
        "<!doctype html><html><body>\n"
        '<img src="0.png">\n'
        '<img src="1.png" alt="A red square on a white table">\n'
        '<img src="2.png" alt="">\n'
        '<img src="3.png" alt="image">\n'
        '<p>Shared:</p><img src="/9.png" >\n'
        "</body></html>\n"
    )
    (root / "two.html").write_text('<html><body><IMG SRC="9.png" Alt=""></body></html>')
    (root / "three.html").write_text('<html><body><img src="9.png"><img src=8.png></body></html>')
    with serve_directory(root) as base:
        yield base, root


@pytest.fixture
def make_queue(tmp_path: Path) -> Iterator[Callable[..., JobQueue]]:
    made: list[JobQueue] = []

    def make(backend: Any = None, workers: int = 1, **overrides: Any) -> JobQueue:
        queue = JobQueue(settings(tmp_path, **overrides))
        if backend is not None:
            start_consumer(queue, backend, workers=workers)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close(timeout=5)


def wait_for(
    queue: JobQueue, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 30
) -> dict[str, Any]:
    stop = time.monotonic() + timeout
    while True:
        status = queue.status(job_id)
        if status["state"] in states:
            return status
        assert time.monotonic() < stop, f"job stuck: {status}"
        time.sleep(0.02)


class Result:
    def __init__(self, text: str) -> None:
        self.text, self.tokens = text, 3


class FakeBackend:
    """Captions by image size, counts its calls; ``gate`` (if set) holds every batch."""

    max_pixels = 40_000_000

    def __init__(self, gate: threading.Event | None = None, fail_first: int = 0) -> None:
        self.gate = gate
        self.fail_first = fail_first
        self.calls = 0
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def wait_ready(self, timeout: float) -> bool:
        return True

    def caption(self, images, decoding):
        with self.lock:
            self.calls += 1
            call = self.calls
        self.entered.set()
        if call <= self.fail_first:
            raise RetryLater("the model is busy")
        if self.gate is not None:
            assert self.gate.wait(30)
        return [Result(f"An image of {im.size[0]}x{im.size[1]} pixels.") for im in images]


# --- parsing requests ---------------------------------------------------------------------


def test_parse_job_gives_a_complete_spec(tmp_path: Path) -> None:
    s = settings(tmp_path, JOB_MAX_IMAGES=5)
    spec = parse_job({"images": ["http://a.example/x.png"], "decoding": FAST}, s)
    assert spec["source"] == {"images": ["http://a.example/x.png"]}
    assert spec["mode"] == "missing" and spec["webhook"] is None and spec["read_text"] is True
    assert spec["decoding"]["max_tokens"] == 4
    assert (spec["max_images"], spec["max_pages"]) == (5, s.job_max_pages)
    spec = parse_job({"sitemap": "https://a.example/sitemap.xml", "mode": "all"}, s)
    assert spec["source"] == {"sitemap": "https://a.example/sitemap.xml"} and spec["mode"] == "all"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"images": []},
        {"images": "http://a.example/x.png"},
        {"images": ["http://a.example/x.png"], "pages": ["http://a.example/"]},
        {"images": ["ftp://a.example/x.png"]},
        {"images": ["/relative.png"]},
        {"images": [42]},
        {"images": ["http://a.example/" + "x" * 2100]},
        {"images": [f"http://a.example/{i}.png" for i in range(6)]},
        {"pages": ["http://a.example/"], "mode": "some"},
        {"pages": ["http://a.example/"], "max_pages": 0},
        {"pages": ["http://a.example/"], "max_images": True},
        {"sitemap": ["http://a.example/s.xml"]},
        {"sitemap": "http://a.example/s.xml", "webhook": "javascript:alert(1)"},
        {"sitemap": "http://a.example/s.xml", "colour": "blue"},
        {"sitemap": "http://a.example/s.xml", "read_text": "no"},
        {"sitemap": "http://a.example/s.xml", "read_text": 0},
    ],
)
def test_parse_job_refuses_bad_requests(tmp_path: Path, body: Any) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(body, settings(tmp_path, JOB_MAX_IMAGES=5))
    assert info.value.code == "invalid_job" and info.value.http_status == 400


def test_parse_job_checks_decoding(tmp_path: Path) -> None:
    with pytest.raises(AltCapError) as info:
        parse_job(
            {"images": ["http://a.example/x.png"], "decoding": {"beam": 3}}, settings(tmp_path)
        )
    assert info.value.code == "invalid_settings"


# --- the store ------------------------------------------------------------------------------


def _job(store: JobStore, idem: str | None = None, webhook: str | None = None) -> str:
    spec = {"source": {"images": ["http://x/1.png"]}, "webhook": webhook}
    job_id, _ = store.create(f"{time.time_ns():032x}"[-32:], spec, idem, "fp")
    return job_id


def _row(seq: int, status: str = "done") -> dict[str, Any]:
    return {"image_url": f"http://x/{seq}.png", "status": status, "caption": f"c{seq}"}


def _plan(n_chunks: int, skipped: int = 1) -> Plan:
    chunks = [[{"url": f"http://x/{n}.png", "rows": [[n + skipped, {}]]}] for n in range(n_chunks)]
    rows = {i: _row(i, "skipped") for i in range(skipped)}
    return Plan(chunks=chunks, rows=rows, total=n_chunks + skipped)


def test_store_idempotency_keys_return_the_first_job(store: JobStore) -> None:
    first = _job(store, idem="k")
    again, created = store.create("f" * 32, {"source": {}}, "k", "other")
    assert (again, created) == (first, False)
    assert store.get("f" * 32) is None
    job = store.get(first)
    assert job is not None and job["state"] == "queued" and job["fingerprint"] == "fp"
    assert store.find_idempotent("k") == first  # read-only: what the rate limit asks
    assert store.find_idempotent("never used") is None


def test_store_caps_the_active_jobs_of_each_owner(store: JobStore) -> None:
    """max_active: an owner with that many jobs queued or running gets REFUSED, in the same
    atomic step as the insert; other owners, ended jobs and idempotent repeats do not count."""
    n = iter(range(100))

    def create(owner: str | None, idem: str | None = None, most: int = 2) -> str:
        spec = {"source": {}, **({"owner": owner} if owner else {})}
        job_id, _ = store.create(f"{next(n):032x}", spec, idem, "fp", most)
        return job_id

    first, second = create("a", idem="k"), create("a")
    assert REFUSED not in (first, second)
    assert create("a") == REFUSED
    assert create("a", idem="k") == first  # its job again, not a new one
    assert create("a", most=0) != REFUSED  # 0: no cap
    assert create("b") != REFUSED and create(None) != REFUSED and create(None) != REFUSED
    assert create(None) == REFUSED  # jobs without an owner share one count
    store.cancel(first)  # ended: no longer counts
    assert store.get(first)["state"] == "cancelled"
    assert create("a", most=3) != REFUSED
    assert create("a", most=3) == REFUSED
    if isinstance(store, RedisJobStore):  # a's set holds what is active, not what was
        members = store._client.smembers(store.prefix + "jobs-of:a")
        assert len(members) == 3 and first.encode() not in members
        store.cancel(second)
        assert store.delete(second)  # a deleted job leaves the set at once
        assert second.encode() not in store._client.smembers(store.prefix + "jobs-of:a")


def test_store_counts_active_jobs_by_client_else_owner(store: JobStore) -> None:
    """Without API keys a job's client is its address, and the cap counts per client (issue
    20: one address took every slot); an owner (a key, or a token a keyless server ignores)
    does not open another count, and jobs stored before clients count by their owner."""
    n = iter(range(100))

    def create(**fields: str) -> str:
        job_id, _ = store.create(f"{next(n):032x}", {"source": {}, **fields}, None, "fp", 1)
        return job_id

    first = create(client="addr:203.0.113.1")
    assert create(client="addr:203.0.113.1", owner="made-up token") == REFUSED
    assert create(client="addr:203.0.113.2") != REFUSED
    assert create(owner="old") != REFUSED and create(owner="old") == REFUSED
    assert create() != REFUSED and create() == REFUSED
    if isinstance(store, RedisJobStore):  # deleting takes the job out of its client's set
        store.cancel(first)
        assert store.delete(first)
        members = store._client.smembers(store.prefix + "jobs-of:addr:203.0.113.1")
        assert first.encode() not in members
    assert holder({"client": "", "owner": "o"}) == "o" and holder({}) == ""


def test_store_pause_holds_claims_until_it_runs_out(store: JobStore) -> None:
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(2))
    claim = store.claim_chunk(job_id, "a", 10)
    assert claim is not None and not claim.paid
    assert store.mark_paid(job_id, claim.n, "a")
    assert not store.mark_paid(job_id, claim.n + 1, "a")  # not leased to a
    store.pause(job_id, 0.4)
    store.pause(job_id, 0.1)  # a shorter pause does not cut the longer one short
    until = store.get(job_id)["paused_until"]
    assert until is not None and 0.3 < until - time.time() <= 0.4
    store.release(job_id, claim.n, "a")
    assert store.claim_chunk(job_id, "b", 10) is None  # paused: nothing is claimed
    assert store.sweep(0.01)[0] == []  # quiet, but paused: no wake-up for lost ones
    time.sleep(0.45)
    assert store.sweep(60)[0] == [job_id]  # the pause ran out: woken at once
    assert store.sweep(60)[0] == []  # once
    again = store.claim_chunk(job_id, "b", 10)
    assert again is not None and again.n == claim.n and again.paid  # not charged twice
    other = store.claim_chunk(job_id, "b", 10)
    assert other is not None and not other.paid
    assert not store.mark_paid(job_id, claim.n, "a")  # b holds it now
    store.cancel(job_id)
    store.pause(job_id, 5)  # an ended job is not paused
    assert store.get(job_id)["paused_until"] < time.time()


def test_store_splits_a_chunk_the_budget_paid_in_part(store: JobStore) -> None:
    """The budget paid for 2 of a chunk's 3 images: the chunk keeps those, paid; the third
    becomes the last chunk, unpaid; the job ends when both are done, its rows in order."""
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    items = [{"url": f"http://x/{i}.png", "rows": [[i, {}]]} for i in range(3)]
    store.commit_plan(job_id, Plan(chunks=[items, [items[0]]], total=3))  # 2 chunks
    claim = store.claim_chunk(job_id, "a", 10)
    assert claim is not None and claim.n == 0
    assert store.mark_paid(job_id, 0, "a", (items[:2], items[2:]))
    assert store.get(job_id)["chunks"] == 3
    store.release(job_id, 0, "a")  # the model was busy: claimed again, paid, its 2 images
    again = store.claim_chunk(job_id, "a", 10)
    assert again is not None and (again.n, again.items, again.paid) == (0, items[:2], True)
    assert store.complete_chunk(job_id, 0, {0: _row(0), 1: _row(1)}) == RECORDED
    second = store.claim_chunk(job_id, "a", 10)
    assert second is not None and second.n == 1
    assert store.complete_chunk(job_id, 1, {}) == RECORDED
    rest = store.claim_chunk(job_id, "a", 10)
    assert rest is not None and (rest.n, rest.items, rest.paid) == (2, items[2:], False)
    assert store.complete_chunk(job_id, 2, {2: _row(2)}) == FINISHED
    assert [r["image_url"] for r in store.rows(job_id)] == [f"http://x/{i}.png" for i in range(3)]


def test_store_runs_a_job_to_the_end_exactly_once(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim_chunk(job_id, "a", 10) is None  # nothing before the plan
    assert store.claim_plan(job_id, "a", 10)
    assert not store.claim_plan(job_id, "b", 10)  # leased
    assert store.get(job_id)["state"] == "running"
    assert store.commit_plan(job_id, _plan(3)) == RECORDED
    assert store.commit_plan(job_id, _plan(3)) == DUPLICATE
    claims = [store.claim_chunk(job_id, "a", 10) for _ in range(4)]
    assert [c.n if c else None for c in claims] == [0, 1, 2, None]
    assert claims[0].items == [{"url": "http://x/0.png", "rows": [[1, {}]]}]
    assert store.complete_chunk(job_id, 1, {2: _row(2)}) == RECORDED
    assert store.complete_chunk(job_id, 1, {2: _row(2, "failed")}) == DUPLICATE
    assert store.complete_chunk(job_id, 0, {1: _row(1, "failed")}) == RECORDED
    assert store.get(job_id)["state"] == "running"
    assert store.complete_chunk(job_id, 2, {3: _row(3)}) == FINISHED
    job = store.get(job_id)
    assert job["state"] == "done" and job["finished"] >= job["started"] >= job["created"]
    assert (job["total"], job["done"], job["failed"], job["skipped"]) == (4, 2, 1, 1)
    rows = store.rows(job_id)
    assert [r["image_url"] for r in rows] == [f"http://x/{i}.png" for i in range(4)]
    assert [r["status"] for r in rows] == ["skipped", "failed", "done", "done"]
    assert store.complete_chunk(job_id, 2, {3: _row(3)}) == DUPLICATE
    assert len(store.rows(job_id)) == 4


def test_store_gives_an_abandoned_chunk_to_another_consumer(store: JobStore) -> None:
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(2))
    first = store.claim_chunk(job_id, "dead", 0.3)
    assert first.n == 0 and first.attempts == 1
    assert store.claim_chunk(job_id, "b", 10).n == 1  # chunk 0 is still leased
    assert store.claim_chunk(job_id, "b", 10) is None
    time.sleep(0.4)
    again = store.claim_chunk(job_id, "b", 10)
    assert again == Claim(0, first.items, 2)
    # the dead consumer's lease cannot be renewed or released any more
    store.renew("dead", [(job_id, 0)], 10)
    store.release(job_id, 0, "dead")
    assert store.claim_chunk(job_id, "c", 10) is None


def test_store_release_gives_a_chunk_back_without_counting_an_attempt(store: JobStore) -> None:
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(1))
    assert store.claim_chunk(job_id, "a", 10).attempts == 1
    store.release(job_id, 0, "a")
    assert store.claim_chunk(job_id, "b", 10).attempts == 1


def test_store_heartbeats_keep_a_lease(store: JobStore) -> None:
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(1))
    store.claim_chunk(job_id, "a", 0.3)
    for _ in range(3):
        time.sleep(0.15)
        store.renew("a", [(job_id, 0)], 0.3)
        assert store.claim_chunk(job_id, "b", 10) is None


def test_store_plan_lease_expires_too(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim_plan(job_id, "dead", 0.2)
    time.sleep(0.3)
    assert store.claim_plan(job_id, "b", 10)


def test_store_cancel_stops_claims(store: JobStore) -> None:
    job_id = _job(store, webhook="http://hook/")
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(3))
    in_flight = store.claim_chunk(job_id, "a", 10)
    assert store.cancel(job_id)
    assert not store.cancel(job_id)
    assert store.claim_chunk(job_id, "a", 10) is None
    assert store.complete_chunk(job_id, in_flight.n, {1: _row(1)}) == RECORDED  # paid for
    job = store.get(job_id)
    assert job["state"] == "cancelled" and job["done"] == 1 and job["webhook_state"] == "pending"
    assert store.commit_plan(job_id, _plan(3)) == INACTIVE
    assert not store.fail(job_id, "x", "y")


def test_store_sweep_finds_quiet_jobs_with_claimable_work(store: JobStore) -> None:
    waiting = _job(store)  # never planned: its wake-up was lost
    working = _job(store)
    store.claim_plan(working, "a", 10)
    store.commit_plan(working, _plan(1))
    store.claim_chunk(working, "a", 10)  # leased and alive
    finished = _job(store)
    store.claim_plan(finished, "a", 10)
    store.commit_plan(finished, _plan(0))
    assert store.get(finished)["state"] == "done"
    assert store.sweep(5) == ([], [])  # everything had activity just now
    time.sleep(0.25)
    assert store.sweep(0.2)[0] == [waiting]
    assert store.sweep(0.2)[0] == []  # woken once per quiet period
    time.sleep(0.25)
    assert store.sweep(0.2)[0] == [waiting]


def test_store_sweep_finds_a_dead_consumers_lease_at_once(store: JobStore) -> None:
    """A lease that ran out wakes its job at the next sweep, however busy the job is: a live
    consumer renewing another chunk of it does not hide a dead one's (issue 19: recovery
    waited for a whole lease of silence on the job, 1.6-1.7 x the lease)."""
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(2))
    assert store.claim_chunk(job_id, "dead", 0.3).n == 0
    assert store.claim_chunk(job_id, "alive", 0.3).n == 1
    planning = _job(store)
    assert store.claim_plan(planning, "dead planner", 0.3)
    assert store.sweep(60)[0] == []  # both leases still run
    time.sleep(0.35)
    store.renew("alive", [(job_id, 1)], 10)  # the job is busy: activity just now
    assert sorted(store.sweep(60)[0]) == sorted([job_id, planning])
    assert store.sweep(60)[0] == []  # one wake-up per lease that ran out
    again = store.claim_chunk(job_id, "b", 0.3)  # the woken consumer takes it, then dies too
    assert again is not None and again.n == 0 and again.attempts == 2
    assert store.claim_plan(planning, "b", 0.3) == 2
    time.sleep(0.35)
    store.renew("alive", [(job_id, 1)], 10)
    assert sorted(store.sweep(60)[0]) == sorted([job_id, planning])


def test_store_counts_planning_attempts_like_chunk_attempts(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim_plan(job_id, "dead", 0.2) == 1
    assert store.claim_plan(job_id, "b", 10) == 0  # leased
    time.sleep(0.3)
    assert store.claim_plan(job_id, "b", 10) == 2  # the dead planner's attempt counts
    store.release(job_id, "plan", "b")
    store.release(job_id, "plan", "b")  # released twice: still one attempt given back
    assert store.claim_plan(job_id, "c", 10) == 2
    store.commit_plan(job_id, _plan(1))
    assert store.claim_plan(job_id, "d", 10) == 0  # planned


def test_an_older_sqlite_store_gains_the_columns_added_since(tmp_path: Path) -> None:
    import sqlite3

    from captioner.jobs.store import sqlite as jobstore

    path = tmp_path / "old.sqlite3"
    old_schema = jobstore._SCHEMA.replace("    plan_attempts INTEGER NOT NULL DEFAULT 0,\n", "")
    old_schema = re.sub(r"    verdicts TEXT,[^\n]*\n", "", old_schema)
    old_schema = re.sub(r"    (paused_until REAL|paid INTEGER)[^\n]*\n", "", old_schema)
    old_schema = re.sub(r"    suspect_alts INTEGER[^\n]*\n", "", old_schema)
    assert "plan_attempts" not in old_schema and "verdicts" not in old_schema
    assert "paused_until" not in old_schema and "paid" not in old_schema
    assert "suspect_alts" not in old_schema
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
        conn.execute(  # a job planned before verdicts were counted
            "INSERT INTO altcap_jobs (id, spec, fingerprint, state, created, planned, activity)"
            " VALUES ('old', '{}', '', 'done', 0, 1, 0)"
        )
    store = SQLiteJobStore(path)
    try:
        assert store.get("old")["verdicts"] == {}
        job_id = _job(store)
        assert store.claim_plan(job_id, "a", 10) == 1
        plan = _plan(1)
        plan.verdicts = {"missing": 3, "empty_link": 1, "ok": 1}
        store.commit_plan(job_id, plan)
        assert store.get(job_id)["verdicts"] == {"missing": 3, "empty_link": 1, "ok": 1}
        # a job planned before suspect alts were counted keeps its counts as stored
        conn = sqlite3.connect(path)
        conn.execute("UPDATE altcap_jobs SET verdicts = '{\"ok\": 2}' WHERE id = 'old'")
        conn.commit()
        conn.close()
        assert store.get("old")["verdicts"] == {"ok": 2}
        claim = store.claim_chunk(job_id, "a", 10)  # chunks gained paid, jobs paused_until
        assert claim is not None and not claim.paid and store.mark_paid(job_id, claim.n, "a")
        store.pause(job_id, 10)
        assert store.get(job_id)["paused_until"] > time.time()
    finally:
        store.close()


def test_store_keeps_the_verdict_counts(store: JobStore) -> None:
    job_id = _job(store)
    assert store.get(job_id)["verdicts"] == {}  # not planned yet
    store.claim_plan(job_id, "a", 10)
    plan = _plan(2)
    plan.verdicts = {"missing": 2, "meaningless": 1, "empty_link": 1, "ok": 4}
    store.commit_plan(job_id, plan)
    assert store.get(job_id)["verdicts"] == plan.verdicts


def test_store_moves_the_rows_found_suspect_from_ok_to_suspect_alt(store: JobStore) -> None:
    """The scan counts an alt that says something as ok; a chunk whose rows the alt check
    found suspect moves them to suspect_alt as it is written, once (a duplicate changes
    nothing), so the counts a job shows are those of its rows."""
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    plan = _plan(2)
    plan.verdicts = {"missing": 1, "ok": 3, "decorative": 1}
    store.commit_plan(job_id, plan)
    suspect = {**_row(1), "verdict": "suspect_alt"}
    ok = {**_row(2), "verdict": "ok"}
    assert store.complete_chunk(job_id, 0, {1: suspect}) == RECORDED
    assert store.get(job_id)["verdicts"] == {
        "missing": 1,
        "suspect_alt": 1,
        "ok": 2,
        "decorative": 1,
    }
    assert list(store.get(job_id)["verdicts"]) == ["missing", "suspect_alt", "ok", "decorative"]
    assert store.complete_chunk(job_id, 0, {1: suspect}) == DUPLICATE
    assert store.complete_chunk(job_id, 1, {2: ok}) == FINISHED
    assert store.get(job_id)["verdicts"]["suspect_alt"] == 1


def test_store_pages_keep_their_html(store: JobStore) -> None:
    job_id = _job(store)
    store.claim_plan(job_id, "a", 10)
    plan = _plan(1)
    plan.pages = [
        {
            "n": 1,
            "url": "http://x/",
            "final_url": "http://x/home",
            "html": "<p>é</p>",
            "error": None,
        },
        {"n": 2, "url": "http://x/gone", "error": {"code": "fetch_failed", "message": "404"}},
    ]
    store.commit_plan(job_id, plan)
    assert [p["n"] for p in store.pages(job_id)] == [1, 2]
    assert store.pages(job_id)[1]["error"]["code"] == "fetch_failed"
    assert store.page_html(job_id, 1)["html"] == "<p>é</p>"
    assert store.page_html(job_id, 2) is None
    assert store.page_html(job_id, 3) is None


# --- the consumer ---------------------------------------------------------------------------


def test_an_image_job_captions_every_image_once_in_order(make_queue, site, tiny_captioner) -> None:
    base, _ = site
    # every caption said: the random tiny model's confidences are noise (test_jobs_trust.py)
    queue = make_queue(CaptionerBackend(tiny_captioner), workers=2, MIN_CONFIDENCE=0.0)
    urls = [f"{base}/{i}.png" for i in range(10)]
    urls += [f"{base}/missing.png", f"{base}/not-an-image.png", f"{base}/3.png"]
    spec = parse_job({"images": urls, "decoding": FAST}, queue.settings)
    job, created = queue.submit(spec)
    assert created and job["state"] == "queued" and job["counts"]["total"] == 0
    status = wait_for(queue, job["id"])
    assert status["state"] == "done" and status["progress"] == 1.0
    assert status["counts"] == {"total": 12, "done": 10, "failed": 2, "skipped": 0}
    rows = queue.rows(job["id"])
    assert [r["image_url"] for r in rows] == urls[:12]  # one row per distinct URL, in order
    assert all(r["status"] == "done" and r["caption"] for r in rows[:10])
    assert all(r["page_url"] is None and r["verdict"] is None for r in rows)
    assert (rows[10]["error_code"], rows[11]["error_code"]) == ("fetch_failed", "unsupported_image")
    direct = tiny_captioner.caption([png_bytes((0, 40, 60))], max_tokens=4)[0].text
    assert rows[0]["caption"] == direct  # the same model, the same caption
    assert all(isinstance(r["confidence"], float) and r["confident"] for r in rows[:10])


def test_a_page_job_reports_every_image_and_patches_pages(make_queue, site) -> None:
    base, root = site
    backend = FakeBackend()
    queue = make_queue(backend)
    pages = [f"{base}/one.html", f"{base}/two.html", f"{base}/gone.html", f"{base}/three.html"]
    job, _ = queue.submit(parse_job({"pages": pages}, queue.settings))
    status = wait_for(queue, job["id"])
    assert status["state"] == "done"
    rows = queue.rows(job["id"])
    table = [
        (r["page_url"].rsplit("/", 1)[1], r["image_url"], r["verdict"], r["status"]) for r in rows
    ]
    assert [(p, (u or "").rsplit("/", 1)[-1], v, s) for p, u, v, s in table] == [
        ("one.html", "0.png", "missing", "done"),
        ("one.html", "1.png", "ok", "skipped"),
        ("one.html", "2.png", "decorative", "skipped"),
        ("one.html", "3.png", "meaningless", "done"),
        ("one.html", "9.png", "missing", "done"),
        ("two.html", "9.png", "decorative", "skipped"),
        ("gone.html", "", None, "failed"),
        ("three.html", "9.png", "missing", "done"),
        ("three.html", "8.png", "missing", "done"),
    ]
    assert rows[6]["error_code"] == "fetch_failed" and rows[6]["image_url"] is None
    assert rows[4]["caption"] == rows[7]["caption"] == "An image of 64x48 pixels."
    assert backend.calls == 1  # 4 distinct images (9.png once for 2 pages): one chunk
    assert status["counts"] == {"total": 9, "done": 5, "failed": 1, "skipped": 3}
    # the report's rows by verdict: what a site owner counts first
    assert status["verdicts"] == {"missing": 4, "meaningless": 1, "ok": 1, "decorative": 2}
    assert status["limited"] is False
    shown = {p["n"]: p for p in status["pages"]}
    assert shown[3]["error"]["code"] == "fetch_failed" and shown[3]["patched_url"] is None
    assert shown[1]["patched_url"] == f"/v1/jobs/{job['id']}/pages/1/patched"

    original = (root / "one.html").read_text()
    patched = queue.patched_page(job["id"], 1)
    caption = 'alt="An image of 64x48 pixels."'
    assert patched == (
        original.replace('<img src="0.png">', f'<img {caption} src="0.png">')
        .replace('alt="image"', caption)
        .replace('<img src="/9.png" >', f'<img {caption} src="/9.png" >')
    )
    assert queue.patched_page(job["id"], 2) == (root / "two.html").read_text()  # alt="" kept
    with pytest.raises(PageNotFound):
        queue.patched_page(job["id"], 3)
    with pytest.raises(PageNotFound):
        queue.patched_page(job["id"], 99)
    with pytest.raises(PageNotFound):  # past any SQLite integer: not an OverflowError
        queue.patched_page(job["id"], 99999999999999999999)


def test_mode_all_captions_images_with_alt_too(make_queue, site) -> None:
    base, _ = site
    queue = make_queue(FakeBackend())
    job, _ = queue.submit(parse_job({"pages": [f"{base}/one.html"], "mode": "all"}, queue.settings))
    wait_for(queue, job["id"])
    statuses = [r["status"] for r in queue.rows(job["id"])]
    assert statuses == ["done", "done", "skipped", "done", "done"]  # decorative stays skipped


def test_a_sitemap_that_cannot_be_read_fails_the_job(make_queue, site) -> None:
    base, _ = site
    queue = make_queue(FakeBackend())
    job, _ = queue.submit(parse_job({"sitemap": f"{base}/one.html"}, queue.settings))
    status = wait_for(queue, job["id"])
    assert status["state"] == "failed" and status["error"]["code"] == "invalid_sitemap"
    assert status["finished"] is not None and queue.rows(job["id"]) == []


def test_a_sitemap_job_crawls_the_pages_it_lists(make_queue, site) -> None:
    base, root = site
    (root / "sitemap.xml").write_text(
        '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<url><loc>{base}/two.html</loc></url><url><loc>{base}/three.html</loc></url></urlset>"
    )
    queue = make_queue(FakeBackend())
    job, _ = queue.submit(parse_job({"sitemap": f"{base}/sitemap.xml"}, queue.settings))
    status = wait_for(queue, job["id"])
    assert status["state"] == "done" and [p["url"] for p in status["pages"]] == [
        f"{base}/two.html",
        f"{base}/three.html",
    ]
    assert status["counts"] == {"total": 3, "done": 2, "failed": 0, "skipped": 1}
    assert status["limited"] is False

    job, _ = queue.submit(
        parse_job({"sitemap": f"{base}/sitemap.xml", "max_pages": 1}, queue.settings)
    )
    status = wait_for(queue, job["id"])
    assert [p["url"] for p in status["pages"]] == [f"{base}/two.html"]
    assert status["limited"] is True  # the crawl stopped at max_pages


def test_max_pages_cutting_a_page_list_marks_the_job_limited(make_queue, site) -> None:
    base, _ = site
    queue = make_queue(FakeBackend())
    pages = [f"{base}/two.html", f"{base}/three.html", f"{base}/two.html"]
    cut, _ = queue.submit(parse_job({"pages": pages, "max_pages": 1}, queue.settings))
    whole, _ = queue.submit(parse_job({"pages": pages, "max_pages": 2}, queue.settings))
    cut, whole = wait_for(queue, cut["id"]), wait_for(queue, whole["id"])
    assert len(cut["pages"]) == 1 and cut["limited"] is True
    assert len(whole["pages"]) == 2 and whole["limited"] is False  # the duplicate is no page


def test_idempotency_key_returns_the_same_job(make_queue) -> None:
    queue = make_queue()  # no consumer: the job stays queued
    spec = parse_job({"images": ["http://a.example/1.png"]}, queue.settings)
    first, created = queue.submit(spec, "key-1", scope="client-a")
    again, created_again = queue.submit(spec, "key-1", scope="client-a")
    assert created and not created_again and again["id"] == first["id"]
    other, created_other = queue.submit(spec, "key-1", scope="client-b")  # keys are per client
    assert created_other and other["id"] != first["id"]
    changed = parse_job({"images": ["http://a.example/2.png"]}, queue.settings)
    with pytest.raises(IdempotencyConflict):
        queue.submit(changed, "key-1", scope="client-a")
    with pytest.raises(InvalidJob):
        queue.submit(spec, "")


def test_unknown_jobs_are_not_found(make_queue) -> None:
    queue = make_queue()
    for job_id in ("0" * 32, "nope", "../../etc/passwd", "A" * 32):
        with pytest.raises(JobNotFound) as info:
            queue.status(job_id)
        assert info.value.http_status == 404


def test_cancel_stops_chunks_that_have_not_started(make_queue, site) -> None:
    base, _ = site
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    queue = make_queue(backend, workers=1, JOB_CHUNK_SIZE=2)
    job, _ = queue.submit(
        parse_job({"images": [f"{base}/{i}.png" for i in range(8)]}, queue.settings)
    )
    assert backend.entered.wait(20)  # the first chunk is being captioned
    status = queue.cancel(job["id"])
    assert status["state"] == "cancelled" and status["finished"] is not None
    assert queue.cancel(job["id"])["state"] == "cancelled"  # cancelling again is fine
    gate.set()
    deadline = time.monotonic() + 10
    while queue.status(job["id"])["counts"]["done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    assert backend.calls == 1  # chunks 2 to 4 were never captioned
    assert len(queue.rows(job["id"])) == 2
    assert queue.status(job["id"])["state"] == "cancelled"


def test_cancelling_a_finished_job_changes_nothing_and_deleting_a_running_one_is_refused(
    make_queue, site
) -> None:
    """Cancel is idempotent (a job that ended is answered as it ended) and never deletes;
    delete never touches a job still under way."""
    base, _ = site
    gate = threading.Event()
    queue = make_queue(FakeBackend(gate=gate))
    job, _ = queue.submit(parse_job({"images": [f"{base}/1.png"]}, queue.settings))
    wait_for(queue, job["id"], states=("running",))
    with pytest.raises(JobActive) as info:
        queue.delete(job["id"])
    assert info.value.http_status == 409 and f"/v1/jobs/{job['id']}/cancel" in info.value.message
    gate.set()
    done = wait_for(queue, job["id"])
    assert done["state"] == "done"
    assert queue.cancel(job["id"]) == done  # as it ended: nothing changed, nothing deleted
    assert len(queue.rows(job["id"])) == 1
    queue.delete(job["id"])
    with pytest.raises(JobNotFound):
        queue.cancel(job["id"])


def test_a_busy_model_gives_the_chunk_back_for_later(make_queue, site, monkeypatch) -> None:
    monkeypatch.setattr(consumer_module, "RETRY_DELAY_S", 0.2)
    base, _ = site
    backend = FakeBackend(fail_first=2)
    queue = make_queue(backend)
    job, _ = queue.submit(
        parse_job({"images": [f"{base}/{i}.png" for i in range(3)]}, queue.settings)
    )
    status = wait_for(queue, job["id"])
    assert status["counts"]["done"] == 3 and backend.calls == 3
    assert len(queue.rows(job["id"])) == 3


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[str]:
    """A page with 10 distinct images, none with alt."""
    root = tmp_path / "gallery"
    root.mkdir()
    for i in range(10):
        (root / f"{i}.png").write_bytes(png_bytes((10 * i, 200, 60)))
    imgs = "".join(f'<img src="{i}.png">' for i in range(10))
    (root / "page.html").write_text(f"<html><body>{imgs}</body></html>")
    with serve_directory(root) as base:
        yield f"{base}/page.html"


class CountingBackend(FakeBackend):
    """Also records when each batch came and how many images it had."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[tuple[float, int]] = []

    def caption(self, images, decoding):
        self.batches.append((time.monotonic(), len(images)))
        return super().caption(images, decoding)


def test_a_page_job_captions_at_its_owners_rate_limit(make_queue, gallery) -> None:
    """A page job's images are charged to its client as they are captioned (issue 20): under
    4/second its 10 images go 4, 4, 2 in three windows, and the job then ends complete."""
    backend = CountingBackend()
    queue = make_queue(backend, workers=2, RATE_LIMIT="4/second", JOB_CHUNK_SIZE=32)
    spec = parse_job({"pages": [gallery]}, queue.settings)
    job, _ = queue.submit(spec, client="addr:203.0.113.1")
    status = wait_for(queue, job["id"])
    assert status["state"] == "done" and status["counts"]["done"] == 10
    assert status["paused_until"] is None
    assert sorted(n for _, n in backend.batches) == [2, 4, 4]  # chunks of one window
    times = [t for t, _ in backend.batches]
    assert times[-1] - times[0] >= 1.5  # three windows of a second: at least two resets
    assert queue.budget is not None
    assert queue.budget.charge("addr:203.0.113.2", 5) == (4, 0.0)  # another client: its own
    charged, wait = queue.budget.charge("addr:203.0.113.2", 1)
    assert charged == 0 and 0 < wait <= 1.2


def test_consumers_charging_one_client_at_once_never_exceed_its_budget(tmp_path: Path) -> None:
    """Two consumers used to see the same 4 left and both take them: each takes its part by
    one atomic increment, so 10/minute charges 10, however many charge together."""
    from concurrent.futures import ThreadPoolExecutor

    budget = JobBudget.from_settings(settings(tmp_path, RATE_LIMIT="10/minute"))
    assert budget is not None
    start = threading.Barrier(8)

    def take(_: int) -> int:
        start.wait()
        return budget.charge("addr:c", 3)[0]

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(take, range(8))) == 10


def test_with_several_limits_a_charge_takes_what_all_of_them_have_left(tmp_path: Path) -> None:
    budget = JobBudget.from_settings(settings(tmp_path, RATE_LIMIT="3/second;5/minute"))
    assert budget is not None
    assert budget.charge("c", 4) == (3, 0.0)
    charged, wait = budget.charge("c", 4)
    assert charged == 0 and 0 < wait <= 1.25  # the second's window
    time.sleep(wait)
    assert budget.charge("c", 4) == (2, 0.0)  # the minute has 2 left
    charged, wait = budget.charge("c", 1)
    assert charged == 0 and 55 < wait <= 60.25  # the minute's window


def test_a_job_without_a_client_or_of_image_urls_is_not_charged(make_queue, gallery, site):
    """Jobs stored before jobs had clients, and images jobs (paid when submitted), caption
    without charging; a chunk run again after the model was busy is charged once."""
    base, _ = site
    backend = FakeBackend()
    queue = make_queue(backend, RATE_LIMIT="5/minute")
    old, _ = queue.submit(parse_job({"pages": [gallery]}, queue.settings))
    urls = [f"{base}/{i}.png" for i in range(6)]
    images, _ = queue.submit(parse_job({"images": urls}, queue.settings), client="addr:c")
    assert wait_for(queue, old["id"])["counts"]["done"] == 10
    assert wait_for(queue, images["id"])["counts"]["done"] == 6
    assert queue.budget is not None and queue.budget.charge("addr:c", 6) == (5, 0.0)


def test_a_chunk_given_back_is_not_charged_again(make_queue, site, monkeypatch) -> None:
    monkeypatch.setattr(consumer_module, "RETRY_DELAY_S", 0.2)
    base, _ = site
    backend = FakeBackend(fail_first=2)  # the model is busy twice: the chunk runs 3 times
    queue = make_queue(backend, RATE_LIMIT="5/minute", JOB_CHUNK_SIZE=32)
    job, _ = queue.submit(parse_job({"pages": [f"{base}/one.html"]}, queue.settings), client="c")
    status = wait_for(queue, job["id"])
    assert status["state"] == "done" and backend.calls == 3
    captioned = status["counts"]["done"]
    assert captioned >= 2
    assert queue.budget is not None
    assert queue.budget.charge("c", 5) == (5 - captioned, 0.0)  # charged once: the rest is left


def test_unreadable_rate_limit_counters_pause_the_job(make_queue, gallery, monkeypatch):
    """The limiter's Redis is away: the job waits rather than captions without paying."""
    from redis_server import free_port

    monkeypatch.setattr(budget_module, "BUDGET_RETRY_S", 30.0)
    backend = FakeBackend()
    storage = f"redis://127.0.0.1:{free_port()}/0"
    queue = make_queue(backend, RATE_LIMIT="5/minute", RATELIMIT_STORAGE_URL=storage)
    job, _ = queue.submit(parse_job({"pages": [gallery]}, queue.settings), client="c")
    stop = time.monotonic() + 30
    while not queue.status(job["id"])["paused_until"]:
        assert time.monotonic() < stop
        time.sleep(0.05)
    assert backend.calls == 0 and queue.status(job["id"])["state"] == "running"


def test_work_of_a_dead_consumer_is_picked_up_once(make_queue, site) -> None:
    """A consumer died holding the plan's lease... then another holding a chunk's: the
    next consumer waits out the leases and finishes the job, every image once."""
    base, _ = site
    producer = make_queue(JOB_LEASE_S=0.5)
    urls = [f"{base}/{i}.png" for i in range(10)]
    job, _ = producer.submit(parse_job({"images": urls}, producer.settings))
    store = producer.store
    assert store.claim_plan(job["id"], "dead-1", 0.5)  # died while planning
    backend = FakeBackend()
    consumer = make_queue(backend, JOB_LEASE_S=0.5)
    time.sleep(0.2)
    assert store.get(job["id"])["planned"] is False  # waits for the lease
    status = wait_for(consumer, job["id"], timeout=20)
    assert status["state"] == "done" and status["counts"]["done"] == 10
    rows = consumer.rows(job["id"])
    assert sorted(r["image_url"] for r in rows) == sorted(urls) and len(rows) == 10


def test_a_chunk_that_keeps_killing_its_consumer_fails(make_queue) -> None:
    queue = make_queue()
    consumer = consumer_module.JobConsumer(queue, FakeBackend(), workers=1)
    items = [{"url": "http://x/1.png", "rows": [[0, {"image_url": "http://x/1.png"}]]}]
    job = {"id": "0" * 32, "spec": {"decoding": {}}}
    rows = consumer.run_chunk(job, Claim(0, items, consumer_module.MAX_ATTEMPTS + 1))
    assert rows[0]["status"] == "failed" and rows[0]["error_code"] == "chunk_failed"


def test_planning_that_keeps_dying_fails_the_job(make_queue, monkeypatch) -> None:
    """A planner killed each time (OOM, a plan the store refuses) must not re-crawl the
    site every lease forever: past MAX_PLAN_ATTEMPTS the job fails with plan_failed."""
    queue = make_queue()
    job, _ = queue.submit(parse_job({"pages": ["http://x.example/"]}, queue.settings))
    for n in range(consumer_module.MAX_PLAN_ATTEMPTS):
        assert queue.store.claim_plan(job["id"], f"dead-{n}", 0.01)
        time.sleep(0.02)
    consumer = consumer_module.JobConsumer(queue, FakeBackend(), workers=1)
    monkeypatch.setattr(consumer, "plan", lambda job: pytest.fail("planned again"))
    consumer.drain(job["id"])
    status = queue.status(job["id"])
    assert status["state"] == "failed" and status["error"]["code"] == "plan_failed"


def test_a_plan_the_store_refuses_is_retried_then_fails(make_queue, site, monkeypatch) -> None:
    base, _ = site
    queue = make_queue(JOB_LEASE_S=0.05)
    job, _ = queue.submit(parse_job({"pages": [f"{base}/one.html"]}, queue.settings))
    consumer = consumer_module.JobConsumer(queue, FakeBackend(), workers=1)

    def refuse(job_id: str, plan: Plan) -> str:
        raise redis.ResponseError("query buffer limit")

    monkeypatch.setattr(queue.store, "commit_plan", refuse)
    for _ in range(consumer_module.MAX_PLAN_ATTEMPTS):
        with pytest.raises(redis.ResponseError):
            consumer.drain(job["id"])
        time.sleep(0.1)  # the lease of the "dead" planner runs out
    consumer.drain(job["id"])
    assert queue.status(job["id"])["error"]["code"] == "plan_failed"


def test_pages_past_the_html_budget_keep_no_html_and_say_why(make_queue, site, monkeypatch):
    base, root = site
    size = len((root / "one.html").read_bytes())
    monkeypatch.setattr(chunks, "MAX_JOB_HTML", size + 10)  # one.html fits, three.html does not
    queue = make_queue(FakeBackend())
    pages = [f"{base}/one.html", f"{base}/three.html"]
    job, _ = queue.submit(parse_job({"pages": pages}, queue.settings))
    status = wait_for(queue, job["id"])
    assert status["state"] == "done" and status["counts"]["done"] == 5  # still captioned
    assert status["pages"][0]["patched_url"] and status["pages"][0]["error"] is None
    assert status["pages"][1]["patched_url"] is None
    assert status["pages"][1]["error"]["code"] == chunks.HTML_NOT_KEPT
    assert "An image of" in queue.patched_page(job["id"], 1)
    with pytest.raises(PageNotFound, match="not kept"):
        queue.patched_page(job["id"], 2)


class FakeEngine:
    """``Engine.caption_images``: one outcome per image, or one error for the call."""

    def __init__(self, outcomes: list[Any] | None = None, error: AltCapError | None = None):
        self.outcomes, self.error = outcomes, error

    def caption_images(self, images, decoding, timeout_s):
        if self.error is not None:
            raise self.error
        return self.outcomes


def test_the_engine_backend_retries_only_a_busy_engine() -> None:
    from captioner.serve.engine import DeadlineExceeded, InternalError, ModelUnavailable, Overloaded

    images = [object(), object()]
    crash = InternalError("the model crashed on this image")
    ok = Result("A caption.")
    outcomes = backends.EngineBackend(FakeEngine([ok, crash]), 100).caption(images, None)
    assert outcomes == [ok, crash]  # a poison image fails its row, never loops forever
    whole = backends.EngineBackend(FakeEngine(error=crash), 100).caption(images, None)
    assert whole == [crash, crash]
    for busy in (Overloaded("full"), ModelUnavailable("loading"), DeadlineExceeded("late")):
        with pytest.raises(RetryLater):
            backends.EngineBackend(FakeEngine([ok, busy]), 100).caption(images, None)
        with pytest.raises(RetryLater):
            backends.EngineBackend(FakeEngine(error=busy), 100).caption(images, None)


def test_an_internal_error_on_one_image_fails_its_row_and_ends_the_job(make_queue, site):
    """Before the fix, any 5xx outcome gave the chunk back uncounted: a poison image looped."""
    from captioner.serve.engine import InternalError

    base, _ = site
    calls: list[int] = []

    def crash_on_the_first(images, decoding, timeout_s):
        calls.append(len(images))
        return [InternalError("boom"), *(Result("A caption.") for _ in images[1:])]

    engine = FakeEngine()
    engine.caption_images = crash_on_the_first
    engine.wait_ready = lambda timeout: True
    queue = make_queue(backends.EngineBackend(engine, 40_000_000))
    urls = [f"{base}/{i}.png" for i in range(3)]
    job, _ = queue.submit(parse_job({"images": urls}, queue.settings))
    status = wait_for(queue, job["id"])
    assert status["state"] == "done" and calls == [3]
    assert status["counts"] == {"total": 3, "done": 2, "failed": 1, "skipped": 0}
    assert queue.rows(job["id"])[0]["error_code"] == "internal_error"


def test_an_image_the_model_has_nothing_readable_for_is_a_skipped_row(make_queue, site):
    """A caption that cleaned to "" is no suggestion: ``skipped`` with ``no_caption``."""
    base, _ = site
    engine = FakeEngine([Result("A caption."), Result("")])
    engine.wait_ready = lambda timeout: True
    queue = make_queue(backends.EngineBackend(engine, 40_000_000))
    job, _ = queue.submit(parse_job({"images": [f"{base}/0.png", f"{base}/1.png"]}, queue.settings))
    status = wait_for(queue, job["id"])
    assert status["counts"] == {"total": 2, "done": 1, "failed": 0, "skipped": 1}
    rows = queue.rows(job["id"])
    assert [(r["status"], r["caption"], r["error_code"]) for r in rows] == [
        ("done", "A caption.", None),
        ("skipped", None, "no_caption"),
    ]


def test_job_captions_are_cached_by_model_identity(make_queue, site, tiny_dir, tmp_path) -> None:
    """A shared cache answers a consumer of the same model directory after a restart, and
    not one of the same directory retrained in place (the path alone is the same)."""
    from captioner.model.tiny import make_tiny
    from captioner.serve.cache import SQLiteCache

    base, _ = site
    model_dir = shutil.copytree(tiny_dir, tmp_path / "runs" / "final")
    urls = [f"{base}/{i}.png" for i in range(3)]
    runs = iter(range(10))

    def captioned_by_the_model() -> int:
        """A new consumer (its own queue) on the shared cache: how many model calls."""
        backend = FakeBackend()
        queue = make_queue(DATA_DIR=tmp_path / f"data-{next(runs)}", MODEL=str(model_dir))
        start_consumer(queue, backend, workers=1, cache=cache)
        job, _ = queue.submit(parse_job({"images": urls}, queue.settings))
        assert wait_for(queue, job["id"])["counts"]["done"] == 3
        return backend.calls

    with SQLiteCache(tmp_path / "cache.sqlite3") as cache:
        assert captioned_by_the_model() == 1  # one chunk of three images
        assert captioned_by_the_model() == 0  # all three from the cache
        make_tiny(model_dir, seed=1)
        assert captioned_by_the_model() == 1


def test_a_job_never_serves_a_cache_entry_of_another_shape(make_queue, site, tmp_path) -> None:
    """Entries are shared with the service; one without its token count is not a caption
    result (the service already refused it, jobs served its ``caption``)."""
    from captioner.config import DecodingSettings
    from captioner.model.identity import model_identity
    from captioner.serve.cache import SQLiteCache, cache_key, sha256_hex

    base, root = site
    queue = make_queue(DATA_DIR=tmp_path / "data")
    backend = FakeBackend()
    with SQLiteCache(tmp_path / "cache.sqlite3") as cache:
        sha = sha256_hex((root / "0.png").read_bytes())
        model = model_identity(queue.settings.model).cache_id
        key = cache_key(model, DecodingSettings().to_dict(), sha)
        cache.set(key, {"caption": "stale"})
        start_consumer(queue, backend, workers=1, cache=cache)
        job, _ = queue.submit(parse_job({"images": [f"{base}/0.png"]}, queue.settings))
        assert wait_for(queue, job["id"])["counts"]["done"] == 1
    assert backend.calls == 1
    assert queue.rows(job["id"])[0]["caption"] != "stale"


# --- the text in images (issue 22) -----------------------------------------------------------


@pytest.fixture(scope="module")
def text_site(tmp_path_factory) -> Iterator[Any]:
    with serve_site(tmp_path_factory.mktemp("text-site")) as site:
        yield site


def _sign_alt(caption: str) -> str:
    return f"{caption} Appears to say: {SIGN_TEXT}"


def test_a_job_reads_the_text_in_images_for_their_alt(make_queue, text_site) -> None:
    """The real Tesseract reads each image beside the captioning: an image of text gets its
    text as alt, a picture with a sign its caption and the sign's words; the patched page
    gets the alt; ``"read_text": false`` leaves the text out."""
    queue = make_queue(FakeBackend())
    job, _ = queue.submit(parse_job({"pages": [text_site.url("text.html")]}, queue.settings))
    assert wait_for(queue, job["id"])["counts"]["done"] == 3
    assert queue.status(job["id"])["read_text"] is True
    rows = queue.rows(job["id"])
    sale, shop = "An image of 420x80 pixels.", "An image of 320x240 pixels."
    plain = "An image of 64x48 pixels."
    assert [(r["caption"], r["text"], r["alt"], r["alt_from"], r["warnings"]) for r in rows] == [
        (sale, SALE_TEXT, SALE_TEXT, "text", []),
        (shop, SIGN_TEXT, _sign_alt(shop), "caption_and_text", []),
        (plain, "", plain, "caption", []),
    ]
    assert [r["author_alt"] for r in rows] == [None, "photo", None]
    patched = queue.patched_page(job["id"], 1)
    assert re.findall(r'alt="([^"]*)"', patched) == [SALE_TEXT, _sign_alt(shop), plain]

    body = {"pages": [text_site.url("text.html")], "read_text": False}
    job, _ = queue.submit(parse_job(body, queue.settings))
    wait_for(queue, job["id"])
    assert queue.status(job["id"])["read_text"] is False
    rows = queue.rows(job["id"])
    assert [(r["text"], r["alt"], r["alt_from"]) for r in rows] == [
        (None, r["caption"], "caption") for r in rows
    ]


def test_job_readings_are_cached_beside_the_captions(
    make_queue, text_site, tmp_path, monkeypatch
) -> None:
    """A second consumer on the shared cache reads nothing and captions nothing again."""
    from captioner.read.reader import TextReader
    from captioner.serve.cache import SQLiteCache

    reads: list[int] = []
    read = TextReader.read

    def counted(self, image, timeout_s=None):  # the real reading, counted
        reads.append(1)
        return read(self, image, timeout_s=timeout_s)

    monkeypatch.setattr(TextReader, "read", counted)
    urls = [text_site.url("img/sale.png"), text_site.url("img/shop.png")]
    with SQLiteCache(tmp_path / "cache.sqlite3") as cache:
        seen = []
        for run in range(2):
            backend = FakeBackend()
            queue = make_queue(DATA_DIR=tmp_path / f"data-{run}")
            start_consumer(queue, backend, workers=1, cache=cache)
            job, _ = queue.submit(parse_job({"images": urls}, queue.settings))
            assert wait_for(queue, job["id"])["counts"]["done"] == 2
            seen.append((backend.calls, len(reads), [r["alt"] for r in queue.rows(job["id"])]))
    assert seen[0][:2] == (1, 2) and seen[1][:2] == (0, 2)  # the second run: all cached
    assert seen[0][2] == seen[1][2] == [SALE_TEXT, _sign_alt("An image of 320x240 pixels.")]


def test_a_job_text_that_takes_too_long_is_a_warning(make_queue, text_site, monkeypatch) -> None:
    from captioner.read.reader import TextReader

    read = TextReader.read

    def slow(self, image, timeout_s=None):  # slowed down; what it reads is its own
        time.sleep(1.0)
        return read(self, image, timeout_s=timeout_s)

    monkeypatch.setattr(TextReader, "read", slow)
    queue = make_queue(FakeBackend(), OCR_TIMEOUT_S=0.2)
    job, _ = queue.submit(parse_job({"images": [text_site.url("img/sale.png")]}, queue.settings))
    assert wait_for(queue, job["id"])["counts"] == {
        "total": 1,
        "done": 1,
        "failed": 0,
        "skipped": 0,
    }
    (row,) = queue.rows(job["id"])
    assert (row["text"], row["alt"], row["warnings"]) == (None, row["caption"], ["ocr_timeout"])


def test_rows_stored_before_the_text_was_read_keep_their_meaning(make_queue, site) -> None:
    """A job stored by an older AltCap: its ``alt`` was the author's, its ``caption`` the
    suggestion; results and patched pages read them as such."""
    from captioner.jobs.rows import upgraded

    old = {"page_url": "p", "image_url": "i", "alt": "image", "verdict": "meaningless",
           "status": "done", "caption": "A cat.", "error_code": None,
           "error_message": None}  # fmt: skip
    row = upgraded(old)
    assert (row["author_alt"], row["alt"], row["alt_from"], row["text"]) == (
        "image",
        "A cat.",
        "caption",
        None,
    )
    assert upgraded(row) == row


# --- politeness: downloads to one host -------------------------------------------------------


class SlowImages(BaseHTTPRequestHandler):
    """Distinct PNGs, each after a short wait; counts the downloads under way at once."""

    lock = threading.Lock()
    inside = 0
    most = 0

    def do_GET(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.inside += 1
            cls.most = max(cls.most, cls.inside)
        try:
            time.sleep(0.15)
            body = png_bytes((int(self.path.strip("/").split(".")[0]) * 9 % 256, 40, 60))
        finally:
            # out before the answer goes: once the client has the body it frees its slot,
            # and the next download may arrive before this thread would run a later line
            # (counted twice on a busy machine)
            with cls.lock:
                cls.inside -= 1
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("per_host", [1, 3])
def test_a_job_downloads_at_most_per_host_images_at_once_from_one_site(
    make_queue, per_host: int
) -> None:
    handler = type("Slow", (SlowImages,), {"lock": threading.Lock(), "inside": 0, "most": 0})
    with serve_handler(handler) as base:
        # two consumer threads, chunks of 4: up to 8 downloads at once without the cap
        queue = make_queue(FakeBackend(), workers=2, JOB_DOWNLOADS_PER_HOST=per_host)
        urls = [f"{base}/{i}.png" for i in range(12)]
        job, _ = queue.submit(parse_job({"images": urls, "decoding": FAST}, queue.settings))
        status = wait_for(queue, job["id"])
    assert status["counts"]["done"] == 12, status
    assert handler.most == per_host


def test_consumers_sharing_a_redis_queue_share_the_per_host_cap(
    tmp_path: Path, redis_server
) -> None:
    # Two consumer processes' worth (each its own store, queue and huey consumer, two
    # threads) on one Redis: up to 16 downloads at once to the site without a shared cap,
    # 4 with each process's own; 2 in all with the cap kept in Redis.
    redis.Redis.from_url(redis_server.url).flushdb()
    handler = type("Slow", (SlowImages,), {"lock": threading.Lock(), "inside": 0, "most": 0})
    overrides = {"QUEUE_URL": redis_server.url, "JOB_DOWNLOADS_PER_HOST": 2}
    queues = [JobQueue(settings(tmp_path / str(i), **overrides)) for i in range(2)]
    try:
        with serve_handler(handler) as base:
            for queue in queues:
                start_consumer(queue, FakeBackend(), workers=2)
            urls = [f"{base}/{i}.png" for i in range(24)]
            body = {"images": urls, "decoding": FAST}
            job, _ = queues[0].submit(parse_job(body, queues[0].settings))
            status = wait_for(queues[0], job["id"])
    finally:
        for queue in queues:
            queue.close(timeout=5)
    assert status["counts"]["done"] == 24, status
    assert handler.most == 2


class HookHandler(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    answer = 204

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(self.answer)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[tuple[str, type[HookHandler]]]:
    handler = type("Hook", (HookHandler,), {"received": [], "answer": 204})
    with serve_handler(handler) as base:
        yield f"{base}/hook", handler


def test_the_webhook_gets_the_summary_when_the_job_ends(make_queue, site, hook_server) -> None:
    base, _ = site
    url, handler = hook_server
    queue = make_queue(FakeBackend())
    body = {"images": [f"{base}/1.png"], "webhook": url}
    job, _ = queue.submit(parse_job(body, queue.settings))
    wait_for(queue, job["id"])
    deadline = time.monotonic() + 10
    while queue.store.get(job["id"])["webhook_state"] != "sent":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (payload,) = handler.received
    assert payload["event"] == "job.done"
    assert payload["job"]["id"] == job["id"] and payload["job"]["counts"]["done"] == 1


def test_a_failing_webhook_is_retried_then_given_up(make_queue, site, hook_server, monkeypatch):
    base, _ = site
    url, handler = hook_server
    handler.answer = 500
    scheduled: list[tuple] = []
    queue = make_queue()
    monkeypatch.setattr(
        queue._webhook_task, "schedule", lambda args, delay: scheduled.append((args, delay))
    )
    job, _ = queue.submit(parse_job({"images": [f"{base}/1.png"], "webhook": url}, queue.settings))
    queue.store.cancel(job["id"])
    queue._webhook(job["id"], 1)
    assert scheduled == [((job["id"], 2), 10.0)]
    assert queue.store.get(job["id"])["webhook_state"] == "pending"
    queue._webhook(job["id"], jobs.WEBHOOK_ATTEMPTS)
    assert queue.store.get(job["id"])["webhook_state"] == "failed"
    assert len(handler.received) == 2
    queue._webhook(job["id"], 1)  # no longer pending: nothing sent
    assert len(handler.received) == 2


class EndlessHandler(BaseHTTPRequestHandler):
    """Answers 200, then streams up to 100 MB (``trickle``: headers a byte at a time)."""

    protocol_version = "HTTP/1.1"
    sent: ClassVar[list[int]] = []
    trickle = False
    done: ClassVar[threading.Event]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        sent = 0
        try:
            if self.trickle:
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 10_000:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    sent += 1
                    time.sleep(0.2)
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(100 * 2**20))
                self.end_headers()
                block = b"x" * 2**16
                while sent < 100 * 2**20:
                    self.wfile.write(block)
                    sent += len(block)
        except OSError:  # the client hung up: what we want
            pass
        finally:
            type(self).sent.append(sent)
            self.close_connection = True
            type(self).done.set()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["endless-body", "trickled-headers"])
def endless_server(request) -> Iterator[tuple[str, type[EndlessHandler]]]:
    attrs = {"sent": [], "trickle": request.param, "done": threading.Event()}
    handler = type("Endless", (EndlessHandler,), attrs)
    with serve_handler(handler) as base:
        yield f"{base}/hook", handler


def test_a_webhook_receiver_cannot_hold_or_flood_the_sender(tmp_path, endless_server, monkeypatch):
    """Only the status is read, and the whole POST has a deadline: an endless body is not
    downloaded, headers sent a byte at a time (each within the read timeout) are cut off."""
    url, handler = endless_server
    monkeypatch.setattr(webhooks, "WEBHOOK_DEADLINE_S", 1.0)
    limits = settings(tmp_path).fetch_limits()
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(webhooks.post_json(url, b"{}", limits))
        except AltCapError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(timeout=20)  # generous: the old code read 100 MB or waited forever
    assert not sender.is_alive(), "post_json is still reading"
    assert handler.done.wait(20)  # the server noticed the sender hung up
    (sent,) = handler.sent
    if handler.trickle:
        assert isinstance(outcome[0], AltCapError) and outcome[0].code == "fetch_timeout"
        assert sent < 100
    else:
        assert outcome == [200]
        assert sent < 32 * 2**20  # a few socket buffers at most, never the 100 MB


def test_webhooks_to_blocked_addresses_are_not_sent(tmp_path: Path) -> None:
    limits = settings(tmp_path, ALLOW_PRIVATE_NETWORKS=False).fetch_limits()
    with pytest.raises(AltCapError) as info:
        webhooks.post_json("http://127.0.0.1:9/hook", b"{}", limits)
    assert info.value.code == "blocked_address"
    with pytest.raises(AltCapError) as info:
        webhooks.post_json("http://169.254.169.254/latest", b"{}", limits)
    assert info.value.code == "blocked_address"


def test_redis_queue_and_store_run_a_job(tmp_path: Path, redis_server, site) -> None:
    redis.Redis.from_url(redis_server.url).flushdb()
    base, _ = site
    queue = JobQueue(settings(tmp_path, QUEUE_URL=redis_server.url))
    assert isinstance(queue.store, RedisJobStore)
    start_consumer(queue, FakeBackend(), workers=2)
    try:
        job, _ = queue.submit(parse_job({"pages": [f"{base}/one.html"]}, queue.settings))
        status = wait_for(queue, job["id"])
        assert status["counts"] == {"total": 5, "done": 3, "failed": 0, "skipped": 2}
        assert status["verdicts"] == {"missing": 2, "meaningless": 1, "ok": 1, "decorative": 1}
        assert "An image of" in queue.patched_page(job["id"], 1)
        with pytest.raises(PageNotFound):
            queue.patched_page(job["id"], 99999999999999999999)
    finally:
        queue.close(timeout=5)
