"""Retention of batch jobs: ended jobs are deleted with everything stored for them (by the
consumers' sweep after ``ALTCAP_JOB_RETENTION_S``, or at once by ``DELETE``), and nothing of
them is left in the store: checked in the SQLite file and in a real Redis keyspace. Cancel and
delete are separate and idempotent, under concurrent requests too: a cancelled job keeps its
report until one delete removes it.

The retention clock is injected (``purge(..., now=)``, ``JobConsumer.sweep(now=)``): cut-offs
are placed between the real end times of the jobs, so no test sleeps for a job to expire."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from captioner.errors import AltCapError
from captioner.jobs.consumer import JobConsumer, start_consumer
from captioner.jobs.queue import JobQueue
from captioner.jobs.request import JobActive, JobNotFound, parse_job
from captioner.jobs.store import (
    DUPLICATE,
    FINISHED,
    JobStore,
    Plan,
    RedisJobStore,
    SQLiteJobStore,
)
from captioner.serve.settings import Settings

RETENTION = 100.0
TABLES = {
    "altcap_jobs": "id",
    "altcap_job_chunks": "job_id",
    "altcap_job_rows": "job_id",
    "altcap_job_pages": "job_id",
}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path: Path) -> str:
    """A queue URL: "" (SQLite files in the data directory) or a flushed real Redis."""
    if request.param == "sqlite":
        return ""
    server: RedisServer = request.getfixturevalue("redis_server")
    redis.Redis.from_url(server.url).flushdb()
    return server.url


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[JobStore]:
    made = RedisJobStore(backend) if backend else SQLiteJobStore(tmp_path / "jobs.sqlite3")
    yield made
    made.close()


def settings(tmp_path: Path, queue_url: str, **overrides: Any) -> Settings:
    base = {"DATA_DIR": tmp_path / "data", "QUEUE_URL": queue_url, "JOB_LEASE_S": 2}
    return Settings.load({}, {**base, **overrides})


@pytest.fixture
def make_queue(tmp_path: Path, backend: str) -> Iterator[Callable[..., JobQueue]]:
    made: list[JobQueue] = []

    def make(**overrides: Any) -> JobQueue:
        queue = JobQueue(settings(tmp_path, backend, **overrides))
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close(timeout=5)


# --- building jobs in every state -------------------------------------------------------


def _new(store: JobStore, idem: str | None = None, webhook: str | None = None) -> str:
    spec = {
        "source": {"pages": ["http://x/"]},
        "mode": "missing",
        "decoding": {},
        "webhook": webhook,
    }
    job_id, created = store.create(uuid.uuid4().hex, spec, idem, "fp")
    assert created
    return job_id


def _plan(n_chunks: int) -> Plan:
    """A page job: two pages (one failed), one skipped row, one row per chunk to caption."""
    chunks = [[{"url": f"http://x/{n}.png", "rows": [[n + 1, {}]]}] for n in range(n_chunks)]
    pages = [
        {"n": 1, "url": "http://x/", "final_url": "http://x/", "html": "<img src=0.png>"},
        {"n": 2, "url": "http://x/gone", "error": {"code": "fetch_failed", "message": "404"}},
    ]
    rows = {0: {"image_url": "http://x/skip.png", "status": "skipped"}}
    return Plan(chunks=chunks, rows=rows, pages=pages, total=n_chunks + 1)


def _row(seq: int) -> dict[str, Any]:
    return {"image_url": f"http://x/{seq - 1}.png", "status": "done", "caption": "c"}


def _done(store: JobStore, **kwargs: Any) -> str:
    return _run(store, _new(store, **kwargs))


def _run(store: JobStore, job_id: str) -> str:
    """Run a queued job to the end: pages, chunks, rows, attempts and done marks stored."""
    assert store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(2))
    for _ in range(2):
        claim = store.claim_chunk(job_id, "a", 10)
        outcome = store.complete_chunk(job_id, claim.n, {claim.n + 1: _row(claim.n + 1)})
    assert outcome == FINISHED and store.get(job_id)["state"] == "done"
    return job_id


def _cancelled(store: JobStore, **kwargs: Any) -> tuple[str, int]:
    """A job cancelled with a chunk still leased (its consumer is still captioning it)."""
    job_id = _new(store, **kwargs)
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(3))
    in_flight = store.claim_chunk(job_id, "a", 10)
    assert store.cancel(job_id)
    return job_id, in_flight.n


def _failed(store: JobStore) -> str:
    job_id = _new(store)
    store.claim_plan(job_id, "a", 10)
    assert store.fail(job_id, "invalid_sitemap", "not a sitemap")
    return job_id


def _under_way(store: JobStore) -> str:
    """A running job with a partial report: one chunk of three done, one in flight."""
    job_id = _new(store)
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(3))
    claim = store.claim_chunk(job_id, "a", 10)
    assert store.complete_chunk(job_id, claim.n, {claim.n + 1: _row(claim.n + 1)}) == "recorded"
    store.claim_chunk(job_id, "a", 10)
    return job_id


def _running(store: JobStore) -> str:
    job_id = _new(store, idem="running-key")
    store.claim_plan(job_id, "a", 10)
    store.commit_plan(job_id, _plan(2))
    store.claim_chunk(job_id, "a", 10)
    return job_id


# --- looking into the store directly ----------------------------------------------------


def _leftovers(store: JobStore, job_id: str) -> list[str]:
    """Everything the store still holds that belongs to ``job_id``: SQLite rows of any table;
    Redis keys whose name holds the id, members of sets and sorted sets, string values."""
    found: list[str] = []
    if isinstance(store, SQLiteJobStore):
        with sqlite3.connect(store.path) as conn:
            for table, column in TABLES.items():
                query = f"SELECT COUNT(*) FROM {table} WHERE {column} = ?"
                count = conn.execute(query, (job_id,)).fetchone()[0]
                found += [f"{table}: {count} row(s)"] if count else []
        conn.close()
        return found
    assert isinstance(store, RedisJobStore)
    client = store._client
    found += [f"key {k!r}" for k in client.scan_iter(match=f"*{job_id}*", count=1000)]
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"set" and client.sismember(key, job_id):
            found.append(f"member of set {key!r}")
        elif kind == b"zset" and client.zscore(key, job_id) is not None:
            found.append(f"member of sorted set {key!r}")
        elif kind == b"string" and client.get(key) == job_id.encode():
            found.append(f"value of {key!r}")
    return found


def _has_data(store: JobStore, job_id: str) -> bool:
    return store.get(job_id) is not None and bool(store.rows(job_id) or store.pages(job_id))


# --- the store ------------------------------------------------------------------------------


def test_purge_deletes_every_trace_of_expired_jobs_only(store: JobStore) -> None:
    queued = _new(store, idem="queued-key")
    running = _running(store)
    done = _done(store, idem="done-key", webhook="http://hook/")  # its webhook still pending
    failed = _failed(store)
    cancelled, _ = _cancelled(store, idem="cancelled-key")
    recent = _done(store, idem="recent-key")
    expired = [done, failed, cancelled]
    ends = [store.get(j)["finished"] for j in [*expired, recent]]
    assert ends == sorted(ends) and ends[-2] < ends[-1]
    for job_id in expired:
        assert _leftovers(store, job_id)  # the check below can see what it looks for

    now = (ends[-2] + ends[-1]) / 2 + RETENTION  # "recent" ended after the cut-off
    assert sorted(store.purge(RETENTION, now=now)) == sorted(expired)

    for job_id in expired:
        assert store.get(job_id) is None
        assert store.rows(job_id) == [] and store.pages(job_id) == []
        assert store.page_html(job_id, 1) is None
        assert _leftovers(store, job_id) == [], job_id
    assert _has_data(store, recent) and _has_data(store, running)
    assert store.get(queued)["state"] == "queued" and store.get(running)["state"] == "running"
    assert store.purge(RETENTION, now=now) == []  # nothing more to delete

    far = time.time() + 100 * RETENTION  # everything that ended has expired; nothing else
    assert store.purge(RETENTION, now=far) == [recent]
    assert store.get(queued) is not None and _has_data(store, running)
    assert _leftovers(store, recent) == []


def test_retention_zero_keeps_everything(store: JobStore) -> None:
    done = _done(store)
    cancelled, _ = _cancelled(store)
    far = time.time() + 10**9
    assert store.purge(0, now=far) == []
    assert _has_data(store, done) and _has_data(store, cancelled)


def test_delete_removes_an_ended_job_never_an_active_one(store: JobStore) -> None:
    queued = _new(store, idem="q")
    running = _running(store)
    done = _done(store, idem="d")
    assert not store.delete(queued) and not store.delete(running)
    assert store.get(queued)["state"] == "queued" and _has_data(store, running)
    assert store.delete(done)
    assert store.get(done) is None and _leftovers(store, done) == []
    assert not store.delete(done)  # twice: nothing more
    assert not store.delete(uuid.uuid4().hex)


def test_late_writes_of_a_deleted_job_write_nothing(store: JobStore) -> None:
    """A chunk finishing, a heartbeat, a release or a webhook outcome that arrive after the
    job was deleted must not bring any of it back."""
    job_id, n = _cancelled(store, idem="k", webhook="http://hook/")
    assert store.delete(job_id)
    store.renew("a", [(job_id, n), (job_id, "plan")], 10)
    assert store.complete_chunk(job_id, n, {n + 1: _row(n + 1)}) == DUPLICATE
    store.release(job_id, n, "a")
    store.release(job_id, "plan", "a")
    store.set_webhook(job_id, "sent")
    assert not store.cancel(job_id) and not store.fail(job_id, "x", "y")
    assert store.claim_chunk(job_id, "a", 10) is None and not store.claim_plan(job_id, "a", 10)
    assert store.get(job_id) is None and _leftovers(store, job_id) == []


def test_an_idempotency_key_is_free_again_once_its_job_is_deleted(store: JobStore) -> None:
    first = _done(store, idem="order-17")
    again, created = store.create(uuid.uuid4().hex, {"source": {}}, "order-17", "fp")
    assert (again, created) == (first, False)
    assert store.delete(first)
    assert store.find_idempotent("order-17") is None
    new_id = uuid.uuid4().hex
    assert store.create(new_id, {"source": {}}, "order-17", "other") == (new_id, True)
    assert store.create(uuid.uuid4().hex, {"source": {}}, "order-17", "x") == (new_id, False)


# --- the consumers' sweep and the job summary -----------------------------------------------


class NoBackend:
    """These consumers only sweep: a job they are woken for waits (never captioned)."""

    max_pixels = 1

    def wait_ready(self, timeout: float) -> bool:
        return False

    def caption(self, images, decoding):
        raise AssertionError("nothing is captioned here")


def test_the_sweep_deletes_jobs_past_the_retention(make_queue) -> None:
    queue = make_queue(JOB_RETENTION_S=RETENTION)
    consumer = JobConsumer(queue, NoBackend(), workers=1)  # not started: sweep by hand
    spec = parse_job({"images": ["http://a.example/1.png"]}, queue.settings)
    old = _run(queue.store, queue.submit(spec, "order-17")[0]["id"])
    new = _done(queue.store)
    running = _running(queue.store)
    end_old, end_new = queue.store.get(old)["finished"], queue.store.get(new)["finished"]
    assert end_old < end_new

    consumer.sweep(now=end_old + RETENTION / 2)  # nothing has expired yet
    assert _has_data(queue.store, old) and _has_data(queue.store, new)
    consumer.sweep(now=(end_old + end_new) / 2 + RETENTION)
    assert queue.store.get(old) is None and _leftovers(queue.store, old) == []
    with pytest.raises(JobNotFound):
        queue.status(old)
    assert _has_data(queue.store, new) and _has_data(queue.store, running)
    job, created = queue.submit(spec, "order-17")  # the key of the deleted job: a new job
    assert created and job["id"] != old


def test_the_sweep_with_retention_zero_deletes_nothing(make_queue) -> None:
    queue = make_queue(JOB_RETENTION_S=0)
    consumer = JobConsumer(queue, NoBackend(), workers=1)
    done = _done(queue.store)
    cancelled, _ = _cancelled(queue.store)
    consumer.sweep(now=time.time() + 10**9)
    assert _has_data(queue.store, done) and _has_data(queue.store, cancelled)
    assert queue.status(done)["expires"] is None


def test_the_summary_says_when_an_ended_job_expires(make_queue) -> None:
    queue = make_queue(JOB_RETENTION_S=3600)
    running = _running(queue.store)
    assert queue.status(running)["expires"] is None
    done = _done(queue.store)
    status = queue.status(done)
    finished = queue.store.get(done)["finished"]
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(finished + 3600))
    assert status["expires"].startswith(expected) and status["expires"].endswith("Z")
    assert status["expires"] > status["finished"]


def test_cancel_then_delete_each_idempotent(make_queue) -> None:
    queue = make_queue()  # no consumer: the job stays queued
    spec = parse_job({"images": ["http://a.example/1.png"]}, queue.settings)
    job, _ = queue.submit(spec, "key")
    with pytest.raises(JobActive):
        queue.delete(job["id"])
    assert queue.status(job["id"])["state"] == "queued"  # refused: nothing changed
    status = queue.cancel(job["id"])
    assert status["state"] == "cancelled" and status["expires"]
    assert queue.cancel(job["id"]) == status  # again: the same answer, nothing more
    queue.delete(job["id"])
    for again in (queue.delete, queue.cancel, queue.status):
        with pytest.raises(JobNotFound):
            again(job["id"])
    assert _leftovers(queue.store, job["id"]) == []


def _at_once(n: int, request: Callable[[], Any]) -> list[tuple[str, Any]]:
    """``request`` from ``n`` threads released together: ``("ok", answer)`` or
    ``(error code, None)`` for each."""
    start = threading.Barrier(n)
    outcomes: list[tuple[str, Any]] = [("", None)] * n

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = ("ok", request())
        except AltCapError as exc:
            outcomes[i] = (exc.code, None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_concurrent_cancels_then_deletes_keep_the_report_until_one_delete(
    make_queue, monkeypatch
) -> None:
    """Issue 19: eight concurrent DELETEs of a running job answered 200, 204 and 404s (the
    first cancelled it, the next deleted its partial report). Now: deletes of a running job
    are all refused, cancels all answer the cancelled job with its report, and of the deletes
    after that exactly one deletes."""
    queue = make_queue()
    notified: list[str] = []  # one webhook per cancel that really cancelled
    monkeypatch.setattr(queue, "notify", notified.append)
    job_id = _under_way(queue.store)
    report = queue.rows(job_id)
    assert len(report) == 2  # the skipped row of the plan, and the chunk done

    assert _at_once(8, lambda: queue.delete(job_id)) == [("job_active", None)] * 8
    assert queue.status(job_id)["state"] == "running" and queue.rows(job_id) == report

    cancels = _at_once(8, lambda: queue.cancel(job_id))
    assert [code for code, _ in cancels] == ["ok"] * 8
    assert {status["state"] for _, status in cancels} == {"cancelled"}
    assert len({status["finished"] for _, status in cancels}) == 1  # cancelled once
    assert notified == [job_id]
    assert queue.rows(job_id) == report  # kept, readable

    deletes = _at_once(8, lambda: queue.delete(job_id))
    assert sorted(code for code, _ in deletes) == ["job_not_found"] * 7 + ["ok"]
    assert _leftovers(queue.store, job_id) == []


def test_concurrent_cancel_and_delete_pairs_never_lose_a_running_jobs_report(
    make_queue, monkeypatch
) -> None:
    """Eight clients, each cancelling then deleting the same running job at once: exactly
    one delete deletes; the others are 404 (never 409: each client's cancel came first);
    every cancel answers the cancelled job, or 404 once a delete has gone through."""
    queue = make_queue()
    notified: list[str] = []
    monkeypatch.setattr(queue, "notify", notified.append)
    job_id = _under_way(queue.store)

    def cancel_then_delete() -> tuple[tuple[str, Any], tuple[str, Any]]:
        try:
            cancelled: tuple[str, Any] = ("ok", queue.cancel(job_id))
        except AltCapError as exc:
            cancelled = (exc.code, None)
        try:
            deleted: tuple[str, Any] = ("ok", queue.delete(job_id))
        except AltCapError as exc:
            deleted = (exc.code, None)
        return cancelled, deleted

    pairs = [answer for _, answer in _at_once(8, cancel_then_delete)]
    assert sorted(deleted for _, (deleted, _) in pairs) == ["job_not_found"] * 7 + ["ok"]
    for (code, status), _ in pairs:
        assert code == "job_not_found" or (code == "ok" and status["state"] == "cancelled")
        assert code != "ok" or status["counts"]["done"] == 1  # the report, whole
    assert notified == [job_id]
    assert _leftovers(queue.store, job_id) == []


def test_a_running_consumer_deletes_expired_jobs_on_its_own(tmp_path: Path) -> None:
    """End to end with the keeper thread: a tiny retention, a sweep every lease/2."""
    queue = JobQueue(settings(tmp_path, "", JOB_LEASE_S=0.4, JOB_RETENTION_S=0.05))
    try:
        done = _done(queue.store)
        queued = _new(queue.store)  # no wake-up was sent for it: it only waits
        start_consumer(queue, NoBackend(), workers=1)
        deadline = time.monotonic() + 15
        while queue.store.get(done) is not None:
            assert time.monotonic() < deadline, "the sweep never deleted the job"
            time.sleep(0.05)
        assert _leftovers(queue.store, done) == []
        assert queue.store.get(queued)["state"] == "queued"
    finally:
        queue.close(timeout=5)
