"""Consuming batch jobs: the huey worker threads of one process that plan jobs and caption
their chunks under leases, and the keeper thread that renews the leases and sweeps.

See ``captioner.jobs.queue`` for how a job goes from queued to done and survives crashes;
``start_consumer`` attaches a consumer to a ``JobQueue`` (one per process)."""

from __future__ import annotations

import dataclasses
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

from captioner.config import DecodingSettings
from captioner.crawl import fetch
from captioner.crawl.crawler import Crawler
from captioner.crawl.politeness import HostSlots, Pacer, RedisHostSlots, RedisPacer
from captioner.errors import AltCapError
from captioner.images import load_image
from captioner.jobs import plan as batch
from captioner.jobs.backends import (
    CaptionBackend,
    RetryLater,
)
from captioner.jobs.budget import (
    _charged,
)
from captioner.jobs.chunks import (
    _rows,
    build_plan,
)
from captioner.jobs.reading import Describer, cancel
from captioner.jobs.store import (
    ACTIVE_STATES,
    FINISHED,
    RECORDED,
    Claim,
    is_redis_url,
)
from captioner.model.identity import ModelIdentity, model_identity
from captioner.serve.cache import (
    Cache,
    NullCache,
    alt_check_settings,
    cache_key,
    caption_value,
    get_caption,
    get_text,
    sha256_hex,
    text_key,
)
from captioner.serve.settings import Settings

if TYPE_CHECKING:
    from huey import Huey
    from PIL import Image

    from captioner.read import TextPool
from captioner.jobs.queue import JobQueue

__all__ = [
    "JobConsumer",
    "consume_forever",
    "heartbeat_s",
    "recovery_bounds_s",
    "start_consumer",
]

log = logging.getLogger(__name__)

FETCH_THREADS = 8  # downloads of one chunk in parallel (fewer to one host: HostSlots)
MAX_ATTEMPTS = 5  # a chunk whose consumer died this many times fails (a poison image)
MAX_PLAN_ATTEMPTS = 3  # planning that died this many times (OOM, a store write refused) fails
MAX_FANOUT = 32  # wake-ups enqueued once a job is planned: at most this many consumers join
RETRY_DELAY_S = 5.0  # the model is loading or overloaded: look at the job again after this
HEARTBEAT_MAX_S = 5.0  # the longest between two lease renewals (and sweeps) of a consumer
QUEUE_POLL_S = 1.0  # the longest an idle consumer thread waits before it polls huey again


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
        text_pool: TextPool | None = None,
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
        # The text in images, read beside the captioning (ALTCAP_OCR*): the service's reader
        # pool when it passes one (closed by the service), else one of this consumer's own.
        # A job may ask for none ("read_text": false): the same alt rule, no reader.
        language = getattr(backend, "language", None) or self.model.language or "en"
        if text_pool is not None:
            self.describer = Describer(
                text_pool, None, self.settings.alt_rule(), language, self.settings.min_confidence
            )
        else:
            self.describer = Describer.open(self.settings, language)
        self._own_pool = text_pool is None
        self.no_text = self.describer.without_text()
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
            self._close_pool()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work; wait up to ``timeout`` for the chunks in flight, then give back
        whatever is still held so other consumers can take it at once."""
        self._stopping.set()
        if self._started:
            self.huey_consumer.shutdown_timeout = timeout
            self.huey_consumer.stop(graceful=True)
        self._give_back()
        self._close_politeness()
        self._close_pool()
        if self._keeper is not None:
            self._keeper.join(timeout=2)

    def _close_pool(self) -> None:
        if self._own_pool:
            self.describer.close()

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
                # author alts to check: the job's choice, with a model that can (text tower)
                check_alts=spec.get("check_alts", True)
                and bool(getattr(self.backend, "can_score", False)),
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
        """Download the chunk's images, read their text while the model captions them, and
        describe each (``reading.Describer``); captions and readings come from the cache
        where it has them, and go into it otherwise.

        With ``check_alts`` (a model with a text tower) an image is captioned once per
        author alt it checks (``plan.alt_groups``): the check is made in the captioning's
        pass, and kept in the cache under a key that names the alt
        (``cache.alt_check_settings``), so a site scanned again is not captioned again. A
        cached caption without a confidence, from before the model could score, is made
        again."""
        spec = job["spec"]
        decoding = DecodingSettings.from_dict(spec["decoding"])
        settings = decoding.to_dict()
        model = self.model.cache_id
        limits = self.settings.fetch_limits()
        urls = [item["url"] for item in claim.items]
        describer = self.describer if spec.get("read_text", True) else self.no_text
        engine = describer.pool.engine_id if describer.pool is not None else None
        scores = bool(getattr(self.backend, "can_score", False))
        check = scores and spec.get("check_alts", True)
        match_score = self.settings.alt_match_score
        checks = {
            item["url"]: [alt for alt, _ in batch.alt_groups([t for _, t in item["rows"]], check)]
            for item in claim.items
        }

        def alt_key(sha: str, alt: str) -> str:
            return cache_key(model, alt_check_settings(settings, alt, match_score), sha)

        def prepare(url: str) -> _Prepared | AltCapError:
            """The image's cached caption, alt checks and reading, and the decoded image if
            any is missing."""
            try:
                with self.host_slots.hold(url):
                    data = fetch.fetch_image(url, limits).data
                got = _Prepared(sha256_hex(data))
                key = cache_key(model, settings, got.sha)
                hit = get_caption(self.cache, key, scored=scores)  # scored: one with a confidence
                if hit is not None:
                    got.caption, got.confidence = hit["caption"], hit.get("confidence")
                for alt in checks[url]:
                    if alt is None:
                        continue
                    done = get_caption(self.cache, alt_key(got.sha, alt), alt_checked=True)
                    if done is not None:
                        confidence = done.get("confidence")
                        got.checked[alt] = (done["caption"], confidence, done["alt_check"])
                        if got.caption is None:  # the same caption, whatever alt it checked
                            got.caption, got.confidence = done["caption"], confidence
                if engine is not None:
                    got.text = get_text(self.cache, text_key(got.sha, engine))
                if got.missing(checks[url]) or (engine is not None and got.text is None):
                    got.image = load_image(data, max_pixels=self.backend.max_pixels)
                return got
            except AltCapError as exc:
                return exc

        with ThreadPoolExecutor(min(FETCH_THREADS, len(urls)), "altcap-job-fetch") as pool:
            prepared = dict(zip(urls, pool.map(prepare, urls), strict=True))
        good = {url: p for url, p in prepared.items() if isinstance(p, _Prepared)}
        reading = {  # read beside the captioning below (Tesseract releases the GIL)
            url: describer.submit(p.image)
            for url, p in good.items()
            if p.image is not None and engine is not None and p.text is None
        }
        outcomes: dict[str, Mapping[str | None, Mapping[str, Any]] | AltCapError] = {
            url: p for url, p in prepared.items() if isinstance(p, AltCapError)
        }
        todo = [(url, p, a) for url, p in good.items() for a in p.missing(checks[url])]
        try:
            if todo:
                images = [p.image for _, p, _ in todo]
                alts = [alt for _, _, alt in todo]
                more = {"alts": alts} if any(a is not None for a in alts) else {}
                results = self.backend.caption(images, decoding, **more)  # type: ignore[arg-type]
                for (url, p, alt), result in zip(todo, results, strict=True):
                    if isinstance(result, AltCapError):
                        outcomes[url] = result
                        continue
                    confidence = getattr(result, "confidence", None)
                    alt_check = getattr(result, "alt_check", None)
                    p.checked[alt] = (result.text, confidence, alt_check)
                    if p.caption is None:
                        p.caption, p.confidence = result.text, confidence
                        value = caption_value(result.text, result.tokens, confidence)
                        self.cache.set(cache_key(model, settings, p.sha), value)
                    if alt is not None and alt_check is not None:  # for the next scan
                        value = caption_value(
                            result.text, result.tokens, confidence, alt_check=alt_check
                        )
                        self.cache.set(alt_key(p.sha, alt), value)
        except BaseException:
            cancel(reading.values())
            raise
        for url, p in good.items():
            warning = describer.warning if engine is None else None
            if url in reading:
                p.text, warning = describer.collect(reading[url])
                if p.text is not None and engine is not None:
                    self.cache.set(text_key(p.sha, engine), p.text)
            if url in outcomes:
                continue
            checked = dict(p.checked)
            if not checked or (None in checks[url] and p.caption is not None):
                checked.setdefault(None, (str(p.caption), p.confidence, None))
            fields = {
                alt: describer.fields(text, p.text, warning, confidence=c, alt_check=result)
                for alt, (text, c, result) in checked.items()
            }
            fields.setdefault(None, next(iter(fields.values())))  # the rows that check none
            outcomes[url] = fields
        return _rows(claim.items, outcomes, spec["mode"], check)


@dataclasses.dataclass
class _Prepared:
    """One image of a chunk on its way to a row: what the cache had, the image for the rest."""

    sha: str
    caption: str | None = None
    confidence: float | None = None  # the caption's, with a text tower
    text: dict[str, Any] | None = None  # reading.text_value's
    image: Image.Image | None = None
    # author alt checked (None: none) -> (caption, confidence, alt_check), from the model
    # or the cache
    checked: dict[str | None, tuple[str, float | None, Any]] = dataclasses.field(
        default_factory=dict
    )

    def missing(self, alts: list[str | None]) -> list[str | None]:
        """Which of ``alts`` (None: the rows that check none) the model still has to
        caption this image for: the alts not checked yet, and None without a caption."""
        return [
            a
            for a in alts
            if (a is None and self.caption is None) or (a is not None and a not in self.checked)
        ]


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
    consumer = start_consumer(queue, backend, workers=workers, cache=cache, embedded=False)
    consumer.run()


def start_consumer(
    queue: JobQueue,
    backend: CaptionBackend,
    *,
    workers: int,
    cache: Cache | None = None,
    embedded: bool = True,
    model: ModelIdentity | None = None,
    text_pool: TextPool | None = None,
) -> JobConsumer:
    """Start consuming in this process: ``workers`` huey threads, plus a keeper thread
    for heartbeats and sweeps. ``embedded``: inside another program (the web service),
    so leave signal handling to it. ``model``: see ``JobConsumer``; ``text_pool``: the
    service's reader pool, shared (else the consumer opens its own). One consumer per queue."""
    if queue.consumer is not None:
        raise RuntimeError("this JobQueue already has a consumer")
    consumer = JobConsumer(
        queue, backend, workers=workers, cache=cache, model=model, text_pool=text_pool
    )
    queue.consumer = consumer
    if embedded:
        consumer.start()
    return consumer
