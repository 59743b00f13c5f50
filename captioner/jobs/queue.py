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

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from captioner.crawl.pages import patch_html
from captioner.errors import AltCapError
from captioner.jobs.backends import (
    make_huey,
)
from captioner.jobs.budget import (
    JobBudget,
)
from captioner.jobs.chunks import (
    HTML_NOT_KEPT,
)
from captioner.jobs.request import (
    JOB_SWITCHES,
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
from captioner.jobs.rows import DESCRIBED, page_counts, upgraded
from captioner.jobs.store import (
    ACTIVE_STATES,
    FINAL_STATES,
    REFUSED,
    JobStore,
    open_job_store,
)
from captioner.jobs.webhooks import (
    post_json,
)
from captioner.serve.settings import Settings

if TYPE_CHECKING:
    from huey import Huey


__all__ = ["Consumer", "JobQueue"]

log = logging.getLogger(__name__)

MAX_PAGE_NUMBER = 2**31 - 1  # far beyond any job's max_pages; larger n are simply not found
WEBHOOK_ATTEMPTS = 4


# --- errors ---------------------------------------------------------------------------------


# --- the owner's rate-limit budget -----------------------------------------------------------


# --- job requests ---------------------------------------------------------------------------


# --- huey -----------------------------------------------------------------------------------


# --- captioning backends ----------------------------------------------------------------------


# --- the queue: submitting and reading ------------------------------------------------------


class Consumer(Protocol):
    """What the queue asks of this process's consumer (``captioner.jobs.consumer``)."""

    def drain(self, job_id: str) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


class JobQueue:
    """Jobs as the API sees them (submit, read, cancel) and the huey tasks that run them.

    Every process that submits or consumes builds one; consuming needs
    ``captioner.jobs.consumer.start_consumer``.
    """

    def __init__(
        self, settings: Settings, *, store: JobStore | None = None, huey: Huey | None = None
    ) -> None:
        self.settings = settings
        self.store = store or open_job_store(settings.queue_url, settings.data_dir)
        self.huey = huey or make_huey(settings)
        self.consumer: Consumer | None = None  # set by captioner.jobs.consumer.start_consumer
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
            # read_text, check_alts, include_low_confidence (jobs stored before: the defaults)
            **{name: spec.get(name, default) for name, default in JOB_SWITCHES.items()},
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
        return [upgraded(row) for row in self.store.rows(job_id)]

    @_translating
    def patched_page(
        self, job_id: str, n: int, scope: str | None = None, language: str | None = None
    ) -> str:
        """Page ``n`` (1-based, as in ``pages``) with the job's suggested alt filled in;
        ``language``: the captions' language tag (see ``pages.patch_html``). Images whose
        row is ``low_confidence`` keep their alt unless the job asked for them
        (``include_low_confidence``)."""
        job = self.get(job_id, scope)
        # n comes from the URL: past any page number, it must not reach the store (an
        # integer SQLite cannot bind is an OverflowError, a 500)
        page = self.store.page_html(job_id, n) if 1 <= n <= MAX_PAGE_NUMBER else None
        if page is None:
            kept = [p for p in self.store.pages(job_id) if p["n"] == n and p.get("error")]
            if kept and kept[0]["error"].get("code") == HTML_NOT_KEPT:
                raise PageNotFound(f"job {job_id} page {n}: {kept[0]['error']['message']}")
            raise PageNotFound(f"job {job_id} has no fetched page {n}")
        # low_confidence alts only when the job asked for them (include_low_confidence)
        statuses = DESCRIBED if job["spec"].get("include_low_confidence") else {"done"}
        alts = {
            row["image_url"]: row["alt"]
            for row in map(upgraded, self.store.rows(job_id))
            if row.get("status") in statuses and row.get("page_url") == page["url"]
        }
        return patch_html(page["html"], page["final_url"] or page["url"], alts, language)

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

    # --- consuming (captioner.jobs.consumer attaches itself as ``consumer``) -----------

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
