"""Where batch jobs live: their state, their units of work and their results.

The queue (huey) only carries wake-up calls; everything a job *is* lives here, in SQLite
(one machine, the default) or in Redis (consumers on several machines). Splitting it this
way is what makes the results exactly-once:

- A job is planned once (its pages crawled, its images split into *chunks*), and the plan is
  written in one atomic step: pages, chunks and the rows of images that need no caption.
- A consumer *claims* a chunk with a lease (an expiry time) before working on it, and keeps
  the lease alive with heartbeats. A chunk whose lease ran out, because its consumer was
  killed, is claimable again: huey does not re-deliver a message a dead consumer had taken,
  but any later claim picks the chunk up, and the next sweep wakes its job up for one.
- A finished chunk's result rows and its done mark are written in one atomic step (an SQLite
  transaction, a Redis Lua script), keyed by the rows' positions. A chunk that is re-run
  after a crash, or twice because a slow consumer lost its lease, therefore writes its rows
  at most once: the second completion sees the mark and is discarded.
- A job that has ended can be deleted (by its owner, or by the retention sweep once it has
  been finished long enough) with everything stored for it, in one atomic step. Deletion
  never touches a queued or running job, and every write that may come late (a chunk that
  was in flight, a heartbeat, a webhook outcome) only updates what still exists, so nothing
  of a deleted job is ever written back. Cancelling only ends a job: its rows stay.
- A job can be *paused* (``pause``): its owner's rate limit is spent, so no chunk of it is
  claimed until the pause ends, when the sweep wakes it up. A chunk is marked *paid* once
  its images were charged (``mark_paid``), so a chunk run again is not charged again.

Rows are plain dicts (see ``captioner.jobs.reports.RESULT_FIELDS``) stored by ``seq``, their
position in the job's report, so results come back in the same order every time.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from captioner.crawl.pages import SUSPECT_ALT
from captioner.jobs.rows import DESCRIBED, with_suspect_alts

__all__ = [
    "ACTIVE_STATES",
    "DUPLICATE",
    "FINAL_STATES",
    "FINISHED",
    "INACTIVE",
    "PURGE_BATCH",
    "RECORDED",
    "REFUSED",
    "STORE_FILE",
    "WEBHOOK_STALE_S",
    "Claim",
    "JobStore",
    "Plan",
    "holder",
]

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")
STORE_FILE = "jobs.sqlite3"
WEBHOOK_STALE_S = 600.0  # a webhook pending this long (its consumer died) is sent again
PURGE_BATCH = 100  # jobs deleted per transaction or script: a backlog never blocks for long

# Outcomes of the writes that may finish a job (the caller sends the webhook on FINISHED).
RECORDED, FINISHED, DUPLICATE, INACTIVE = "recorded", "finished", "duplicate", "inactive"
# What create() answers instead of a job id when the owner has max_active jobs already.
REFUSED = ""


@dataclass
class Plan:
    """Everything planning a job found, written in one step by ``commit_plan``."""

    chunks: list[list[dict[str, Any]]]  # units of work: lists of items (JSON data)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> row known already
    pages: list[dict[str, Any]] = field(default_factory=list)  # {n, url, final_url, html, error}
    total: int = 0  # rows the report will have
    limited: bool = False  # a page or image limit cut the job short
    # rows by verdict, as the page scan found them: the stores add the rows whose alt the
    # check finds suspect as their chunks complete (``_suspect_alts``)
    verdicts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A chunk leased to one consumer."""

    n: int
    items: list[dict[str, Any]]
    attempts: int  # including this one
    paid: bool = False  # its images were charged to the owner's rate limit already


def holder(spec: Mapping[str, Any]) -> str:
    """Whose count of active jobs a job is in (``max_active``): its ``client`` (the rate-limit
    identity: an API key's, or without keys the client address), else its ``owner`` (jobs
    stored before jobs had clients); jobs with neither share ``""``."""
    return str(spec.get("client") or spec.get("owner") or "")


def _counts(rows: Mapping[int, Mapping[str, Any]]) -> tuple[int, int, int]:
    """(done, failed, skipped) of a job's rows: a job's ``counts``. ``done`` counts every
    image with a suggestion, ``low_confidence`` ones too (its rows tell them apart)."""
    statuses = [row.get("status") for row in rows.values()]
    described = sum(status in DESCRIBED for status in statuses)
    return described, statuses.count("failed"), statuses.count("skipped")


def _suspect_alts(rows: Mapping[int, Mapping[str, Any]]) -> int:
    """Rows of a chunk whose author alt the check found suspect: planned ``ok``, they are
    ``suspect_alt`` in the job's ``verdicts`` once written (``rows.with_suspect_alts``)."""
    return sum(row.get("verdict") == SUSPECT_ALT for row in rows.values())


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class JobStore(ABC):
    """The operations the API and the consumers need; each one atomic."""

    @abstractmethod
    def create(
        self,
        job_id: str,
        spec: Mapping[str, Any],
        idem: str | None,
        fingerprint: str,
        max_active: int = 0,
    ) -> tuple[str, bool]:
        """Store a new queued job; with an idempotency key already used, its job instead.

        ``max_active`` > 0: refuse when the job's holder (``holder(spec)``: its client, or
        its owner) already has that many jobs queued or running, in the same atomic step.
        Returns ``(job_id, created)``; ``(REFUSED, False)`` when refused."""

    @abstractmethod
    def find_idempotent(self, idem: str) -> str | None:
        """The id of the job a (scoped, hashed) idempotency key started, or None."""

    @abstractmethod
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job record (see ``_record``), or None."""

    @abstractmethod
    def claim_plan(self, job_id: str, owner: str, lease_s: float) -> int:
        """Lease the planning of an active, unplanned job (it becomes running): the attempt
        this is (1 the first time; a planner that died counts, a ``release`` does not), or
        0 if it cannot be claimed. Like a chunk's, so that planning cannot loop forever."""

    @abstractmethod
    def commit_plan(self, job_id: str, plan: Plan) -> str:
        """Write a plan once: RECORDED, FINISHED (nothing to caption), DUPLICATE, INACTIVE."""

    @abstractmethod
    def fail(self, job_id: str, code: str, message: str) -> bool:
        """Mark an active job failed as a whole (e.g. its sitemap is invalid)."""

    @abstractmethod
    def claim_chunk(self, job_id: str, owner: str, lease_s: float) -> Claim | None:
        """Lease the next pending (or abandoned) chunk of an active job that is not paused."""

    @abstractmethod
    def mark_paid(
        self, job_id: str, n: int, owner: str, split: tuple[list[Any], list[Any]] | None = None
    ) -> bool:
        """Record that chunk ``n``, leased to ``owner``, had its images charged: later claims
        of it say ``paid``. ``split``: (the items paid for, the others) when the owner's
        budget covered only some: the chunk keeps the first, the others become a new
        pending chunk (numbered last; the report's order is the rows', so it stays).
        False, and nothing written, when ``owner`` no longer holds the chunk."""

    @abstractmethod
    def pause(self, job_id: str, wait_s: float) -> None:
        """Claim no chunk of an active job for ``wait_s`` seconds (on the store's clock; a
        longer pause already set stands). The sweep wakes the job up once it has passed."""

    @abstractmethod
    def complete_chunk(self, job_id: str, n: int, rows: Mapping[int, Mapping[str, Any]]) -> str:
        """Write a chunk's rows with its done mark: RECORDED, FINISHED or DUPLICATE."""

    @abstractmethod
    def release(self, job_id: str, unit: int | str, owner: str) -> None:
        """Give a leased unit (a chunk number, or "plan") back without results, to be run
        again; the attempt does not count (it was not a crash)."""

    @abstractmethod
    def renew(self, owner: str, units: Sequence[tuple[str, int | str]], lease_s: float) -> None:
        """Heartbeat: extend the leases ``owner`` holds on ``(job_id, unit)`` pairs."""

    @abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Cancel an active job, keeping what it found; False if it was already final (or
        does not exist). Of concurrent cancels of one job, exactly one answers True."""

    @abstractmethod
    def rows(self, job_id: str) -> list[dict[str, Any]]:
        """The rows written so far, in report order."""

    @abstractmethod
    def pages(self, job_id: str) -> list[dict[str, Any]]:
        """The crawled pages without their HTML: ``{n, url, final_url, error}``."""

    @abstractmethod
    def page_html(self, job_id: str, n: int) -> dict[str, Any] | None:
        """One crawled page with its HTML: ``{n, url, final_url, html}``."""

    @abstractmethod
    def sweep(self, lease_s: float) -> tuple[list[str], list[str]]:
        """Jobs to wake up, and jobs whose webhook has been pending too long (to send again).
        Marks them as handled (``woken``, ``webhook_at``).

        A job is woken where a lease (a chunk's, or planning's) or a pause ran out since the
        job was last woken, however busy the job is otherwise: its consumer died, or its
        owner's budget is back. And where it has claimable work, is not paused, and nothing
        touched it (claim, heartbeat, completion) for ``lease_s``, nor a sweep woke it: a
        wake-up was lost, or a unit was given back."""

    @abstractmethod
    def set_webhook(self, job_id: str, state: str) -> None:
        """Record a webhook attempt (``pending``) or its outcome (``sent``, ``failed``)."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Delete a job that has ended, with its chunks, rows, pages and idempotency key.

        False (and nothing deleted) if the job is still queued or running, or is gone."""

    @abstractmethod
    def purge(self, retention_s: float, *, now: float | None = None) -> list[str]:
        """Delete every job that ended more than ``retention_s`` seconds ago (as ``delete``);
        ``retention_s <= 0`` keeps everything. ``now`` replaces the store's clock (tests).
        Returns the ids deleted."""

    def close(self) -> None:  # noqa: B027 (optional)
        """Release connections."""


def _record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A job record with typed fields, whatever the backend stored them as."""

    def num(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if value not in (None, "") else None

    def count(name: str) -> int:
        value = raw.get(name)
        return int(float(value)) if value not in (None, "") else 0

    error = None
    if raw.get("error_code"):
        error = {"code": raw["error_code"], "message": raw.get("error_message") or ""}
    total = raw.get("total")
    return {
        "id": raw["id"],
        "spec": json.loads(raw["spec"]),
        "fingerprint": raw.get("fingerprint") or "",
        "state": raw["state"],
        "created": float(raw["created"]),
        "started": num("started"),
        "finished": num("finished"),
        "planned": bool(count("planned")),
        "total": int(float(total)) if total not in (None, "") else None,
        "done": count("done"),
        "failed": count("failed"),
        "skipped": count("skipped"),
        "chunks": count("chunks"),
        "chunks_done": count("chunks_done"),
        "limited": bool(count("limited")),
        # as planned, with the suspect alts found since (0 in a job stored before they were)
        "verdicts": with_suspect_alts(
            json.loads(raw.get("verdicts") or "{}"), count("suspect_alts")
        ),
        "error": error,
        "webhook_state": raw.get("webhook_state") or None,
        "paused_until": num("paused_until"),
    }
