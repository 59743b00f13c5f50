"""Batch jobs: image URLs, pages or a sitemap captioned in the background, on huey.

A job goes through three steps, each run by whichever consumer gets to it first:

1. **submit** (the API, in the request): the job is validated and stored as ``queued``, and
   one huey message, a *wake-up* for the job, is enqueued.
2. **plan** (a consumer): pages are crawled, images found and judged (``plan.plan``, the
   same code as ``python -m captioner batch``), and the images to caption are split into
   chunks of ``ALTCAP_JOB_CHUNK_SIZE``. The plan is stored in one atomic write, then more
   wake-ups are enqueued so that other consumers join in.
3. **chunks** (consumers): a consumer woken for a job claims chunk after chunk until none
   is left; each chunk is downloaded, captioned in one batch and written back with its done
   mark atomically. The last chunk finishes the job, which sends the webhook if there is one.

huey messages are only wake-ups: losing one (a consumer killed right after taking it from
the queue, which huey does not re-deliver) loses no work, because the work itself is in the
job store (``captioner.jobs.store``) under leases. Each consumer process renews the leases of
the units it works on every *heartbeat* (``heartbeat_s``: a quarter of
``ALTCAP_JOB_LEASE_S``, at most 5 s); a lease that is not renewed expires ``lease`` after
the last heartbeat, and its unit becomes claimable again by any consumer. At every
heartbeat (and at start) each consumer process also runs the *sweep*: it wakes up the jobs
where a lease ran out since they were last woken (a consumer died holding it), and the jobs
with claimable work that nobody touched for a lease (a wake-up was lost). So a ``kill -9``
costs the re-run of the chunk that was in flight and a delay that ``recovery_bounds_s``
states (55 to 66 s at the default 60 s lease); completion marks make sure its rows are
written once.

Cancelling and deleting are two requests, each idempotent (``JobQueue.cancel``,
``JobQueue.delete``): a cancelled job keeps the rows it found until it is deleted, and a job
still queued or running is never deleted (``JobActive``), so a retried cancel loses nothing.
Jobs do not stay forever: the sweep deletes the jobs that ended more than
``ALTCAP_JOB_RETENTION_S`` ago, with everything stored for them (``JobStore.purge``), and
``DELETE /v1/jobs/<id>`` deletes an ended job at once.

The owner's rate limit (``ALTCAP_RATE_LIMIT``, ``JobBudget``) covers the images jobs caption,
not only the request that submits them. An ``images`` job paid one per URL when it was
submitted, so it is not charged again. A ``pages`` or ``sitemap`` job paid one per page (or 1)
for the request; its images are known only once it is planned, so a consumer charges each
chunk before captioning it, once, to the job's ``client`` (the rate-limit identity of the
request that submitted it: its API key, or without keys its address), in the counters the
API uses. A chunk the budget covers in part is split: its first images are captioned now,
the others become a chunk of their own. A budget with nothing left *pauses* the job until the
window resets (it stays ``running``; ``paused_until`` says when it goes on). So a job
captions at most what its owner's budget allows, and every image in the end. Without API
keys, a job's ``client`` is also whose cap on active jobs (``ALTCAP_JOB_MAX_ACTIVE``) it
counts in.

Queue and store: SQLite files in ``ALTCAP_DATA_DIR`` by default (the service's own threads,
one machine), or one Redis for both with ``ALTCAP_QUEUE_URL=redis://...`` (any number of
``python -m captioner worker`` processes, on any machines).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from captioner.alttext import alt_text
from captioner.config import DecodingSettings
from captioner.crawl import fetch
from captioner.crawl.crawler import Crawler
from captioner.crawl.pages import patch_html
from captioner.crawl.politeness import HostSlots, Pacer, RedisHostSlots, RedisPacer
from captioner.errors import AltCapError
from captioner.images import load_image
from captioner.jobs import plan as batch
from captioner.jobs.backends import (
    CaptionBackend,
    RetryLater,
    make_huey,
)
from captioner.jobs.budget import (
    JobBudget,
    _charged,
)
from captioner.jobs.chunks import (
    HTML_NOT_KEPT,
    _rows,
    build_plan,
)
from captioner.jobs.request import (
    IdempotencyConflict,
    JobActive,
    JobNotFound,
    PageNotFound,
    TooManyJobs,
    _idem,
    _iso,
    _sha,
    _translating,
)
from captioner.jobs.rows import page_counts
from captioner.jobs.store import (
    ACTIVE_STATES,
    FINAL_STATES,
    FINISHED,
    RECORDED,
    REFUSED,
    Claim,
    JobStore,
    is_redis_url,
    open_job_store,
)
from captioner.jobs.webhooks import (
    post_json,
)
from captioner.model.identity import ModelIdentity, model_identity
from captioner.serve.cache import (
    Cache,
    NullCache,
    cache_key,
    caption_value,
    get_caption,
    sha256_hex,
)
from captioner.serve.settings import Settings

if TYPE_CHECKING:
    from huey import Huey


__all__ = [
    "JobConsumer",
    "JobQueue",
    "heartbeat_s",
    "recovery_bounds_s",
]

log = logging.getLogger(__name__)

FETCH_THREADS = 8  # downloads of one chunk in parallel (fewer to one host: HostSlots)
MAX_ATTEMPTS = 5  # a chunk whose consumer died this many times fails (a poison image)
MAX_PLAN_ATTEMPTS = 3  # planning that died this many times (OOM, a store write refused) fails
MAX_PAGE_NUMBER = 2**31 - 1  # far beyond any job's max_pages; larger n are simply not found
MAX_FANOUT = 32  # wake-ups enqueued once a job is planned: at most this many consumers join
RETRY_DELAY_S = 5.0  # the model is loading or overloaded: look at the job again after this
HEARTBEAT_MAX_S = 5.0  # the longest between two lease renewals (and sweeps) of a consumer
QUEUE_POLL_S = 1.0  # the longest an idle consumer thread waits before it polls huey again
WEBHOOK_ATTEMPTS = 4


# --- errors ---------------------------------------------------------------------------------


# --- the owner's rate-limit budget -----------------------------------------------------------


# --- job requests ---------------------------------------------------------------------------


# --- huey -----------------------------------------------------------------------------------


# --- captioning backends ----------------------------------------------------------------------


# --- the queue: submitting and reading ------------------------------------------------------


class JobQueue:
    """Jobs as the API sees them (submit, read, cancel) and the huey tasks that run them.

    Every process that submits or consumes builds one; consuming needs ``start_consumer``.
    """

    def __init__(
        self, settings: Settings, *, store: JobStore | None = None, huey: Huey | None = None
    ) -> None:
        self.settings = settings
        self.store = store or open_job_store(settings.queue_url, settings.data_dir)
        self.huey = huey or make_huey(settings)
        self.consumer: JobConsumer | None = None
        # what consumers charge job images to; the service swaps in its limiter's (jobs_api)
        self.budget: JobBudget | None = JobBudget.from_settings(settings)
        self._drain_task = self.huey.task(name="altcap.jobs.drain")(self._drain)
        self._webhook_task = self.huey.task(name="altcap.jobs.webhook")(self._webhook)

    # --- producing ---------------------------------------------------------------------

    @_translating
    def submit(
        self, spec: Mapping[str, Any], key: str | None = None, scope: str = "", client: str = ""
    ) -> tuple[dict[str, Any], bool]:
        """Store and enqueue a job; ``(status, created)``. A known idempotency ``key`` (per
        ``scope``, e.g. per API key) returns its job, or ``IdempotencyConflict`` if that job
        was another one.

        ``client``: the submitting request's rate-limit identity (``hooks.rate_limit_key``:
        its API key, or without keys its address). The job's images are charged to it, and
        its cap on active jobs (``ALTCAP_JOB_MAX_ACTIVE``) counts the job."""
        if scope:  # the API key's hash: only that key can read the job (see ``get``)
            spec = {**spec, "owner": scope}
        # the client stays out of the fingerprint: a retry from a new address is no conflict
        fingerprint = _sha(json.dumps(spec, sort_keys=True, separators=(",", ":")))
        if client:
            spec = {**spec, "client": client}
        idem = _idem(key, scope) if key is not None else None
        most = self.settings.job_max_active
        job_id, created = self.store.create(uuid.uuid4().hex, spec, idem, fingerprint, most)
        if job_id == REFUSED:
            jobs = f"{most} batch job{'s are' if most != 1 else ' is'}"
            whose = "for this API key" if self.settings.api_keys else "from this address"
            raise TooManyJobs(
                f"{jobs} already queued or running {whose}, the most at once: wait for one"
                " to end, or cancel one"
            )
        job = self.store.get(job_id)
        if job is None:  # pragma: no cover (just written)
            raise JobNotFound(f"job {job_id} vanished")
        if not created and job["fingerprint"] != fingerprint:
            raise IdempotencyConflict(
                "this idempotency key was used for another job; use a new key for a new job"
            )
        if created:
            self.wake(job_id)
        return self.summary(job), created

    @_translating
    def find_idempotent(self, key: str, scope: str = "") -> str | None:
        """The job an idempotency key (per ``scope``) already started, or None."""
        return self.store.find_idempotent(_idem(key, scope))

    def wake(self, job_id: str, copies: int = 1, delay: float | None = None) -> None:
        """Enqueue wake-ups for a job (a lost one is made up for by the sweep)."""
        for _ in range(copies):
            if delay:
                self._drain_task.schedule(args=(job_id,), delay=delay)
            else:
                self._drain_task(job_id)

    def notify(self, job_id: str) -> None:
        """The job ended: send its webhook, if it has one (``_webhook`` checks)."""
        self._webhook_task(job_id, 1)

    # --- reading -----------------------------------------------------------------------

    @_translating
    def get(self, job_id: str, scope: str | None = None) -> dict[str, Any]:
        """The job record. With a ``scope`` (the caller's API key hash, ``""`` without one),
        a job another key created is not found, exactly as an id nobody used; jobs made
        without a key (or before jobs had owners) are anyone's."""
        job = self.store.get(job_id) if _plausible_id(job_id) else None
        owner = job["spec"].get("owner") if job is not None else None
        if job is None or (scope is not None and owner and owner != scope):
            raise JobNotFound(f"there is no job {job_id[:64]!r}")
        return job

    @_translating
    def status(self, job_id: str, scope: str | None = None) -> dict[str, Any]:
        return self.summary(self.get(job_id, scope))

    def summary(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """A job as the API shows it (and as its webhook sends it)."""
        spec = job["spec"]
        source = spec["source"]
        kind = next(iter(source))
        shown: dict[str, Any] = {"kind": kind}
        if kind == "sitemap":
            shown["url"] = source["sitemap"]
        else:
            shown["count"] = len(source[kind])
        finished = job["done"] + job["failed"] + job["skipped"]
        total = job["total"] or 0
        empty_done = 1.0 if job["state"] == "done" else 0.0  # nothing to do, and it is done
        progress = finished / total if total else empty_done
        base = f"/v1/jobs/{job['id']}"
        pages = [
            {
                "n": p["n"],
                "url": p["url"],
                "final_url": p.get("final_url"),
                "error": p.get("error"),
                "patched_url": f"{base}/pages/{p['n']}/patched" if not p.get("error") else None,
            }
            for p in (self.store.pages(job["id"]) if job["planned"] and kind != "images" else [])
        ]

        codes = [(p["error"] or {}).get("code") for p in pages]  # None: read
        return {
            "id": job["id"],
            "url": base,
            "results_url": f"{base}/results",
            "state": job["state"],
            "source": shown,
            "mode": spec["mode"],
            "decoding": spec["decoding"],
            "webhook": spec.get("webhook"),
            "counts": {
                "total": total,
                "done": job["done"],
                "failed": job["failed"],
                "skipped": job["skipped"],
            },
            # pages apart from images: read, skipped (robots.txt) or failed
            "page_counts": page_counts(None if c == HTML_NOT_KEPT else c for c in codes),
            "verdicts": job["verdicts"],
            "progress": round(min(1.0, progress), 4),
            "paused_until": _iso(self.paused_until(job)),
            "planned": job["planned"],
            "limited": job["limited"],
            "error": job["error"],
            "created": _iso(job["created"]),
            "started": _iso(job["started"]),
            "finished": _iso(job["finished"]),
            "expires": _iso(self.expires(job)),
            "pages": pages,
        }

    @staticmethod
    def paused_until(job: Mapping[str, Any]) -> float | None:
        """Until when the owner's spent rate limit holds the job (unix seconds), or None."""
        until = job.get("paused_until")
        if until is None or job["state"] not in ACTIVE_STATES or until <= time.time():
            return None
        return until

    def expires(self, job: Mapping[str, Any]) -> float | None:
        """When the retention sweep may delete this job (unix seconds): None while it runs,
        or when jobs are kept forever (``ALTCAP_JOB_RETENTION_S=0``)."""
        retention = self.settings.job_retention_s
        if retention <= 0 or job["state"] not in FINAL_STATES or job["finished"] is None:
            return None
        return job["finished"] + retention

    @_translating
    def rows(self, job_id: str, scope: str | None = None) -> list[dict[str, Any]]:
        self.get(job_id, scope)
        return self.store.rows(job_id)

    @_translating
    def patched_page(
        self, job_id: str, n: int, scope: str | None = None, language: str | None = None
    ) -> str:
        """Page ``n`` (1-based, as in ``pages``) with the job's captions filled in as alt;
        ``language``: the captions' language tag (see ``pages.patch_html``)."""

        self.get(job_id, scope)
        # n comes from the URL: past any page number, it must not reach the store (an
        # integer SQLite cannot bind is an OverflowError, a 500)
        page = self.store.page_html(job_id, n) if 1 <= n <= MAX_PAGE_NUMBER else None
        if page is None:
            kept = [p for p in self.store.pages(job_id) if p["n"] == n and p.get("error")]
            if kept and kept[0]["error"].get("code") == HTML_NOT_KEPT:
                raise PageNotFound(f"job {job_id} page {n}: {kept[0]['error']['message']}")
            raise PageNotFound(f"job {job_id} has no fetched page {n}")
        captions = {
            row["image_url"]: row["caption"]
            for row in self.store.rows(job_id)
            if row.get("status") == "done" and row.get("page_url") == page["url"]
        }
        return patch_html(page["html"], page["final_url"] or page["url"], captions, language)

    @_translating
    def cancel(self, job_id: str, scope: str | None = None) -> dict[str, Any]:
        """Cancel a queued or running job; its status (``POST /v1/jobs/<id>/cancel``).

        Chunks not started are never captioned; a chunk being captioned right now still
        writes its rows, and the rows found so far stay until the job is deleted.
        Idempotent: cancelling again, or a job that has already ended, changes nothing and
        answers the job as it is (its ``state`` says how it ended). The store's cancel is
        one atomic step, so of concurrent cancels one cancels and sends the webhook."""
        self.get(job_id, scope)
        if self.store.cancel(job_id):
            log.info("job %s cancelled on request", job_id)
            self.notify(job_id)
        return self.status(job_id, scope)

    @_translating
    def delete(self, job_id: str, scope: str | None = None) -> None:
        """Delete a job that has ended, with everything stored for it (``DELETE``).

        A job still queued or running is refused with ``JobActive`` and left as it is: the
        check and the deletion are one atomic step of the store, so a job is never deleted
        while it runs. Deleting again (or a job the retention sweep deleted) is
        ``JobNotFound``."""
        self.get(job_id, scope)
        if self.store.delete(job_id):
            log.info("job %s deleted on request", job_id)
            return
        # Refused: the job was queued or running then (the store deletes any ended job),
        # unless it was deleted meanwhile, by another DELETE or the sweep.
        if self.store.get(job_id) is None:
            raise JobNotFound(f"there is no job {job_id[:64]!r}")
        raise JobActive(
            f"job {job_id} is still queued or running: cancel it first"
            f" (POST /v1/jobs/{job_id}/cancel), then DELETE it once it has ended"
        )

    # --- consuming ---------------------------------------------------------------------

    def start_consumer(
        self,
        backend: CaptionBackend,
        *,
        workers: int,
        cache: Cache | None = None,
        embedded: bool = True,
        model: ModelIdentity | None = None,
    ) -> JobConsumer:
        """Start consuming in this process: ``workers`` huey threads, plus a keeper thread
        for heartbeats and sweeps. ``embedded``: inside another program (the web service),
        so leave signal handling to it. ``model``: see ``JobConsumer``."""
        if self.consumer is not None:
            raise RuntimeError("this JobQueue already has a consumer")
        self.consumer = JobConsumer(self, backend, workers=workers, cache=cache, model=model)
        if embedded:
            self.consumer.start()
        return self.consumer

    def close(self, timeout: float = 10.0) -> None:
        """Stop the consumer (if any), then release the store and the queue's connection."""
        if self.consumer is not None:
            self.consumer.stop(timeout)
        self.store.close()
        storage_close = getattr(self.huey.storage, "close", None)
        if storage_close is not None:
            try:
                storage_close()
            except Exception:  # already closed, or Redis gone: nothing left to release
                log.debug("closing the queue storage failed", exc_info=True)

    # the tasks: thin, so that they find the consumer of this process

    def _drain(self, job_id: str) -> None:
        if self.consumer is None:
            log.error("job %s: a task ran in a process without a consumer", job_id)
            return
        self.consumer.drain(job_id)

    def _webhook(self, job_id: str, attempt: int) -> None:
        job = self.store.get(job_id)
        if job is None or job["webhook_state"] != "pending" or not job["spec"].get("webhook"):
            return
        url = job["spec"]["webhook"]
        body = json.dumps({"event": "job." + job["state"], "job": self.summary(job)})
        try:
            post_json(url, body.encode("utf-8"), self.settings.fetch_limits())
        except AltCapError as exc:
            if attempt < WEBHOOK_ATTEMPTS:
                delay = 10.0 * 3 ** (attempt - 1)  # 10 s, 30 s, 90 s
                log.warning(
                    "job %s: webhook failed (%s: %s); retrying in %.0f s",
                    job_id,
                    exc.code,
                    exc.message,
                    delay,
                )
                self.store.set_webhook(job_id, "pending")
                self._webhook_task.schedule(args=(job_id, attempt + 1), delay=delay)
            else:
                log.warning("job %s: webhook failed %d times; giving up", job_id, attempt)
                self.store.set_webhook(job_id, "failed")
            return
        self.store.set_webhook(job_id, "sent")


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


# --- consuming ------------------------------------------------------------------------------


class _Stop(Exception):
    """Planning interrupted: the job was cancelled, or this consumer is stopping."""


def _politeness(settings: Settings) -> tuple[HostSlots, Pacer, Callable[[], None]]:
    """The download cap and crawl turns every job of this consumer shares, and how to let
    go of them: in Redis when the queue is, so they hold for all consumers on all machines
    (``captioner.crawl.politeness``)."""
    per_host = settings.job_downloads_per_host
    if not is_redis_url(settings.queue_url):
        return HostSlots(per_host), Pacer(), lambda: None
    import redis

    client = redis.Redis.from_url(
        settings.queue_url.strip(), socket_timeout=5, socket_connect_timeout=5
    )
    # A download ends within the fetch timeout; the lease only matters for a consumer killed
    # mid-download, whose slot it frees.
    lease_s = settings.fetch_timeout_s + 5
    return RedisHostSlots(client, per_host, lease_s=lease_s), RedisPacer(client), client.close


def heartbeat_s(lease_s: float) -> float:
    """How often a consumer renews its leases and sweeps: four times a lease, at most every
    ``HEARTBEAT_MAX_S`` (a lease outlives three missed heartbeats)."""
    return min(lease_s / 4, HEARTBEAT_MAX_S)


def recovery_bounds_s(lease_s: float) -> tuple[float, float]:
    """When a killed consumer's chunk (or planning) is claimed again: (earliest, latest),
    in seconds after the kill, given another consumer with a thread free.

    Its lease runs out ``lease_s`` after its last heartbeat, so between
    ``lease_s - heartbeat`` and ``lease_s`` after the kill; the next sweep of any consumer
    (one per heartbeat) wakes the job up, and an idle consumer thread sees the wake-up
    within ``QUEUE_POLL_S``. At the default 60 s lease: 55 to 66 s (0.92 to 1.1 x the
    lease; within 1.25 x for any lease of 24 s or more). A consumer started after the
    lease ran out sweeps at start."""
    beat = heartbeat_s(lease_s)
    return lease_s - beat, lease_s + beat + QUEUE_POLL_S


class JobConsumer:
    """Runs the jobs of one ``JobQueue`` in this process: huey worker threads that plan jobs
    and caption chunks, and one keeper thread that renews this process's leases and sweeps
    for abandoned work."""

    def __init__(
        self,
        queue: JobQueue,
        backend: CaptionBackend,
        *,
        workers: int,
        cache: Cache | None = None,
        model: ModelIdentity | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a consumer needs at least one worker thread")
        self.queue = queue
        self.store = queue.store
        self.settings = queue.settings
        self.backend = backend
        self.cache = cache or NullCache()
        # Cache keys use the model's identity, not ALTCAP_MODEL as written: a model directory
        # retrained in place must not be answered from the old model's captions. The service
        # passes the identity it computed at start-up; a worker computes its own here.
        self.model = model or model_identity(self.settings.model)
        self.lease_s = self.settings.job_lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: set[tuple[str, int | str]] = set()
        self._held_lock = threading.Lock()
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None
        self._started = False
        self.host_slots, self.pacer, self._close_politeness = _politeness(self.settings)
        self.huey_consumer = _consumer(queue.huey, workers)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Threads only: call after any fork (gunicorn runs ``create_app`` in the worker)."""
        self._keeper = threading.Thread(target=self._keep, name="altcap-jobs-keeper", daemon=True)
        self._keeper.start()
        self._started = True
        self.huey_consumer.start()

    def run(self) -> None:
        """Consume in the foreground until SIGINT or SIGTERM (``python -m captioner worker``)."""
        self._keeper = threading.Thread(target=self._keep, name="altcap-jobs-keeper", daemon=True)
        self._keeper.start()
        try:
            self.huey_consumer.run()  # returns after a graceful stop (it waits for the threads)
        finally:
            self._stopping.set()
            self._give_back()
            self._close_politeness()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work; wait up to ``timeout`` for the chunks in flight, then give back
        whatever is still held so other consumers can take it at once."""
        self._stopping.set()
        if self._started:
            self.huey_consumer.shutdown_timeout = timeout
            self.huey_consumer.stop(graceful=True)
        self._give_back()
        self._close_politeness()
        if self._keeper is not None:
            self._keeper.join(timeout=2)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set() or self.huey_consumer.stop_flag.is_set()

    def _give_back(self) -> None:
        with self._held_lock:
            held = list(self._held)
        for job_id, unit in held:
            try:
                self.store.release(job_id, unit, self.owner)
            except Exception:  # the store is gone: the lease will simply expire
                log.warning("could not release %s of job %s", unit, job_id, exc_info=True)

    # --- leases ------------------------------------------------------------------------

    @contextmanager
    def holding(self, job_id: str, unit: int | str) -> Iterator[None]:
        key = (job_id, unit)
        with self._held_lock:
            self._held.add(key)
        try:
            yield
        finally:
            with self._held_lock:
                self._held.discard(key)

    def _keep(self) -> None:
        """At start and every heartbeat: renew this process's leases, then sweep (one sweep
        per heartbeat is what ``recovery_bounds_s`` counts on); delete expired jobs only
        every lease/2."""
        beat = heartbeat_s(self.lease_s)
        purge_every = self.lease_s / 2
        next_purge = 0.0
        wait = 0.0
        while not self._stopping.wait(wait):
            wait = beat
            try:
                with self._held_lock:
                    held = sorted(self._held, key=str)
                self.store.renew(self.owner, held, self.lease_s)
                purge = time.monotonic() >= next_purge
                if purge:
                    next_purge = time.monotonic() + purge_every
                self.sweep(purge=purge)
            except Exception:  # Redis restarting, SQLite locked: try again next beat
                log.warning("job heartbeat or sweep failed", exc_info=True)

    def sweep(self, *, now: float | None = None, purge: bool = True) -> list[str]:
        """Wake up jobs with abandoned work; resend stale webhooks; with ``purge``, delete
        the jobs that ended more than ``ALTCAP_JOB_RETENTION_S`` ago. Returns the jobs woken.

        Every consumer process sweeps, so with several of them the deletions race: harmless,
        each one is atomic and deleting twice deletes nothing more. ``now`` replaces the
        store's clock for the retention (tests)."""
        jobs, hooks = self.store.sweep(self.lease_s)
        for job_id in jobs:
            log.info("job %s: abandoned work found, waking it up", job_id)
            self.queue.wake(job_id)
        for job_id in hooks:
            self.queue.notify(job_id)
        retention = self.settings.job_retention_s
        if purge and retention > 0:
            deleted = self.store.purge(retention, now=now)
            if deleted:
                log.info("deleted %d job(s) ended over %.0f s ago", len(deleted), retention)
        return jobs

    # --- the work ----------------------------------------------------------------------

    def drain(self, job_id: str) -> None:
        """Plan the job if nobody has, then caption its chunks until none is left."""
        if not self.backend.wait_ready(timeout=RETRY_DELAY_S):
            self.queue.wake(job_id, delay=RETRY_DELAY_S)
            return
        while not self.stopping:
            job = self.store.get(job_id)
            if job is None or job["state"] not in ACTIVE_STATES:
                return
            if not job["planned"]:
                attempt = self.store.claim_plan(job_id, self.owner, self.lease_s)
                if not attempt:
                    return  # another consumer plans it, and will wake others when done
                if attempt > MAX_PLAN_ATTEMPTS:
                    self._give_up_planning(job_id)
                    return
                with self.holding(job_id, "plan"):
                    self.plan(job)
                continue
            claim = self.store.claim_chunk(job_id, self.owner, self.lease_s)
            if claim is None:
                return
            with self.holding(job_id, claim.n):
                paid, wait = self.pay(job, claim)
                if paid is None:
                    if wait:  # the owner's budget is spent: this job waits for it
                        log.info("job %s: its owner's rate limit is spent for %.1f s", job_id, wait)
                        self.store.pause(job_id, wait)
                        self.store.release(job_id, claim.n, self.owner)
                        self.queue.wake(job_id, delay=wait)  # the sweep too, should this be lost
                    return
                claim = paid
                try:
                    rows = self.run_chunk(job, claim)
                except RetryLater as exc:
                    log.info("job %s chunk %d: %s; retrying later", job_id, claim.n, exc)
                    self.store.release(job_id, claim.n, self.owner)
                    self.queue.wake(job_id, delay=RETRY_DELAY_S)
                    return
                if self.store.complete_chunk(job_id, claim.n, rows) == FINISHED:
                    log.info("job %s finished", job_id)
                    self.queue.notify(job_id)

    def pay(self, job: Mapping[str, Any], claim: Claim) -> tuple[Claim | None, float]:
        """Charge a claimed chunk's images to the job's client (``JobBudget``), once per
        chunk. Returns the claim to caption and 0.0: the whole chunk, or only its first
        images when the budget covered only those (the others become a chunk of their own,
        for later); or None and the seconds until the budget can pay anything; or None and
        0.0 when the chunk is no longer this consumer's (its lease ran out meanwhile)."""
        budget, spec = self.queue.budget, job["spec"]
        if budget is None or claim.paid or claim.attempts > MAX_ATTEMPTS or not _charged(spec):
            return claim, 0.0  # free, paid already, or failed without captioning (run_chunk)
        charged, wait = budget.charge(spec["client"], len(claim.items))
        if not charged:
            return None, wait
        items = claim.items
        split = (items[:charged], items[charged:]) if charged < len(items) else None
        if not self.store.mark_paid(job["id"], claim.n, self.owner, split):
            log.warning("job %s chunk %d: lost its lease before captioning", job["id"], claim.n)
            return None, 0.0
        return dataclasses.replace(claim, items=items[:charged], paid=True), 0.0

    def _give_up_planning(self, job_id: str) -> None:
        """Planning died ``MAX_PLAN_ATTEMPTS`` times (its consumer killed, its plan refused
        by the store): fail the job rather than crawl the site again every lease, forever."""
        message = (
            f"gave up planning after {MAX_PLAN_ATTEMPTS} attempts: the consumer stopped or the"
            " plan could not be stored each time (a site too large for one job?)"
        )
        log.warning("job %s failed: plan_failed", job_id)
        if self.store.fail(job_id, "plan_failed", message):
            self.queue.notify(job_id)

    def plan(self, job: Mapping[str, Any]) -> None:
        """Crawl and judge (``plan.plan``), split into chunks, store it all at once."""
        job_id, spec = job["id"], job["spec"]
        last_check = [time.monotonic()]

        def still_wanted(_: int) -> None:  # plan.plan's progress hook, once per page
            if self.stopping:
                raise _Stop
            if time.monotonic() - last_check[0] > 1.0:
                last_check[0] = time.monotonic()
                current = self.store.get(job_id)
                if current is None or current["state"] not in ACTIVE_STATES:
                    raise _Stop

        try:
            crawler = Crawler(
                self.settings.fetch_limits(), delay_s=self.settings.crawl_delay_s, pacer=self.pacer
            )
            found = batch.plan(
                batch.Source.from_dict(spec["source"]),
                crawler,
                mode=spec["mode"],
                max_pages=spec["max_pages"],
                max_images=spec["max_images"],
                progress=still_wanted,
            )
        except _Stop:
            self.store.release(job_id, "plan", self.owner)
            return
        except AltCapError as exc:  # e.g. the sitemap itself cannot be read
            log.info("job %s failed: %s: %s", job_id, exc.code, exc.message)
            if self.store.fail(job_id, exc.code, exc.message):
                self.queue.notify(job_id)
            return
        except Exception:
            log.exception("job %s: planning failed", job_id)
            if self.store.fail(job_id, "internal_error", "planning the job failed; it was logged"):
                self.queue.notify(job_id)
            return
        plan = build_plan(found, self.settings.job_chunk_size, spec)
        outcome = self.store.commit_plan(job_id, plan)
        log.info(
            "job %s planned: %d rows, %d chunks (%s)", job_id, plan.total, len(plan.chunks), outcome
        )
        if outcome == FINISHED:
            self.queue.notify(job_id)
        elif outcome == RECORDED and len(plan.chunks) > 1:
            self.queue.wake(job_id, copies=min(len(plan.chunks) - 1, MAX_FANOUT))

    def run_chunk(self, job: Mapping[str, Any], claim: Claim) -> dict[int, dict[str, Any]]:
        """Download, decode and caption one chunk: its result rows by seq.

        Errors stay with their image (a failed row); only ``RetryLater`` gives the whole
        chunk back. A chunk whose consumers kept dying fails rather than loop forever.
        """
        if claim.attempts > MAX_ATTEMPTS:
            error = AltCapError(
                f"gave up after {MAX_ATTEMPTS} attempts: the consumer stopped each time",
                code="chunk_failed",
            )
            return _rows(claim.items, {item["url"]: error for item in claim.items})
        try:
            return self._caption_chunk(job, claim)
        except RetryLater:
            raise
        except Exception:
            log.exception("job %s chunk %d failed", job["id"], claim.n)
            error = AltCapError(
                "captioning failed on the server; it was logged", code="internal_error"
            )
            return _rows(claim.items, {item["url"]: error for item in claim.items})

    def _caption_chunk(self, job: Mapping[str, Any], claim: Claim) -> dict[int, dict[str, Any]]:
        decoding = DecodingSettings.from_dict(job["spec"]["decoding"])
        settings = decoding.to_dict()
        model = self.model.cache_id
        limits = self.settings.fetch_limits()
        urls = [item["url"] for item in claim.items]
        outcomes: dict[str, str | AltCapError] = {}

        def prepare(url: str) -> tuple[str, Any, str | None]:
            """(url, a caption from the cache / a decoded image / an error, image sha)."""
            try:
                with self.host_slots.hold(url):
                    data = fetch.fetch_image(url, limits).data
                sha = sha256_hex(data)
                hit = get_caption(self.cache, cache_key(model, settings, sha))
                if hit is not None:
                    return url, hit["caption"], sha
                return url, load_image(data, max_pixels=self.backend.max_pixels), sha
            except AltCapError as exc:
                return url, exc, None

        with ThreadPoolExecutor(min(FETCH_THREADS, len(urls)), "altcap-job-fetch") as pool:
            prepared = list(pool.map(prepare, urls))
        todo = []
        for url, value, sha in prepared:
            if isinstance(value, (str, AltCapError)):
                outcomes[url] = value
            else:
                todo.append((url, value, sha))
        if todo:
            results = self.backend.caption([image for _, image, _ in todo], decoding)
            for (url, _, sha), result in zip(todo, results, strict=True):
                if isinstance(result, AltCapError):
                    outcomes[url] = result
                    continue
                outcomes[url] = result.text
                value = caption_value(result.text, result.tokens)
                self.cache.set(cache_key(model, settings, str(sha)), value)
        limit = self.settings.max_alt_chars  # rows hold alt text: the model's words, bounded
        for url, outcome in outcomes.items():
            if isinstance(outcome, str):
                outcomes[url] = alt_text(outcome, limit)
        return _rows(claim.items, outcomes)


def _consumer(huey: Huey, workers: int) -> Any:
    """A huey consumer of ``workers`` threads that leaves signals alone when embedded.

    Idle threads poll SQLite every 0.1 s at first, backing off to once every
    ``QUEUE_POLL_S`` (Redis blocks on BRPOP instead, answering at once); health checks
    restart a worker thread that died.
    """
    from huey.consumer import Consumer

    class _Consumer(Consumer):
        embedded = True

        def _set_signal_handlers(self) -> None:
            if not self.embedded:  # run() in the foreground: SIGINT/SIGTERM stop gracefully
                super()._set_signal_handlers()

        def run(self) -> None:
            self.embedded = False
            super().run()

    return _Consumer(
        huey,
        workers=workers,
        periodic=False,
        initial_delay=0.1,
        backoff=1.5,
        max_delay=QUEUE_POLL_S,
        worker_type="thread",
        graceful_signal="TERM",
        shutdown_timeout=30.0,
    )


def consume_forever(queue: JobQueue, backend: CaptionBackend, workers: int, cache: Cache) -> None:
    """Run a standalone consumer in the foreground (the ``worker`` subcommand)."""
    consumer = queue.start_consumer(backend, workers=workers, cache=cache, embedded=False)
    consumer.run()
