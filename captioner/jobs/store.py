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

import contextlib
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.errors import ConfigError

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "Claim",
    "JobStore",
    "Plan",
    "RedisJobStore",
    "SQLiteJobStore",
    "holder",
    "open_job_store",
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
    verdicts: dict[str, int] = field(default_factory=dict)  # rows by verdict (pages found)


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
    statuses = [row.get("status") for row in rows.values()]
    return statuses.count("done"), statuses.count("failed"), statuses.count("skipped")


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
        "verdicts": json.loads(raw.get("verdicts") or "{}"),
        "error": error,
        "webhook_state": raw.get("webhook_state") or None,
        "paused_until": num("paused_until"),
    }


# --- SQLite -------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS altcap_jobs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,                 -- JSON: what to caption and how
    idem TEXT UNIQUE,                   -- scoped idempotency key (hashed), NULL if none
    fingerprint TEXT NOT NULL,          -- hash of spec: same key, other body = a conflict
    state TEXT NOT NULL,                -- queued | running | done | failed | cancelled
    created REAL NOT NULL,              -- unix seconds
    started REAL,
    finished REAL,
    planned INTEGER NOT NULL DEFAULT 0,
    plan_owner TEXT,
    plan_lease REAL,                    -- planning lease expiry (unix seconds)
    plan_attempts INTEGER NOT NULL DEFAULT 0,
    total INTEGER,                      -- rows the report will have, once planned
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    limited INTEGER NOT NULL DEFAULT 0,
    verdicts TEXT,                      -- JSON {verdict: rows}, once planned
    error_code TEXT,
    error_message TEXT,
    activity REAL NOT NULL,             -- last claim, heartbeat or completion
    woken REAL NOT NULL DEFAULT 0,      -- last wake-up sent by a sweep
    paused_until REAL,                  -- the owner's rate limit is spent: no claims until
    webhook INTEGER NOT NULL DEFAULT 0,
    webhook_state TEXT,                 -- pending | sent | failed
    webhook_at REAL
);
CREATE INDEX IF NOT EXISTS altcap_jobs_active ON altcap_jobs (state)
    WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS altcap_jobs_finished ON altcap_jobs (finished)
    WHERE finished IS NOT NULL;
CREATE TABLE IF NOT EXISTS altcap_job_chunks (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    items TEXT NOT NULL,                -- JSON list
    state TEXT NOT NULL,                -- pending | leased | done
    owner TEXT,
    lease REAL,                         -- lease expiry (unix seconds)
    attempts INTEGER NOT NULL DEFAULT 0,
    paid INTEGER NOT NULL DEFAULT 0,    -- its images were charged to the owner's rate limit
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS altcap_job_rows (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    row TEXT NOT NULL,                  -- JSON object
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS altcap_job_pages (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    url TEXT NOT NULL,
    final_url TEXT,
    html TEXT,
    error TEXT,                         -- JSON {code, message} when the page failed
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
"""

_JOB_COLUMNS = (
    "id, spec, fingerprint, state, created, started, finished, planned, total, done, failed,"
    " skipped, chunks, chunks_done, limited, verdicts, error_code, error_message, webhook_state,"
    " paused_until"
)


class SQLiteJobStore(JobStore):
    """Jobs in one SQLite file (WAL), shared by the threads and processes of one machine.

    Every write is one ``BEGIN IMMEDIATE`` transaction, so it is atomic across processes and
    survives a ``kill -9`` of any of them (``synchronous=NORMAL`` in WAL mode: a power cut may
    lose the last commits, a crashed process loses nothing committed).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            self._migrate(conn)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the job store {self.path}: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Columns added since a store file was created (``CREATE TABLE IF NOT EXISTS``
        leaves an existing table as it was)."""
        added = {
            "altcap_jobs": {
                "plan_attempts": "INTEGER NOT NULL DEFAULT 0",
                "verdicts": "TEXT",
                "paused_until": "REAL",
            },
            "altcap_job_chunks": {"paid": "INTEGER NOT NULL DEFAULT 0"},
        }
        for table, wanted in added.items():
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in wanted.items():
                if name not in columns:
                    with contextlib.suppress(sqlite3.OperationalError):  # another process did
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a fresh one after a fork: connections must not cross it)."""
        if self._pid != os.getpid():
            self._local, self._all, self._pid = threading.local(), [], os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.ProgrammingError):  # another thread's, in use
                conn.close()
        self._local = threading.local()

    # --- jobs -------------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        spec: Mapping[str, Any],
        idem: str | None,
        fingerprint: str,
        max_active: int = 0,
    ) -> tuple[str, bool]:
        now = time.time()
        with self._tx() as conn:
            if idem is not None:
                row = conn.execute("SELECT id FROM altcap_jobs WHERE idem = ?", (idem,)).fetchone()
                if row:
                    return row[0], False
            if max_active > 0:
                (active,) = conn.execute(
                    "SELECT COUNT(*) FROM altcap_jobs WHERE state IN ('queued', 'running')"
                    " AND COALESCE(NULLIF(json_extract(spec, '$.client'), ''),"
                    " NULLIF(json_extract(spec, '$.owner'), ''), '') = ?",  # holder(spec)
                    (holder(spec),),
                ).fetchone()
                if active >= max_active:
                    return REFUSED, False
            conn.execute(
                "INSERT INTO altcap_jobs (id, spec, idem, fingerprint, state, created, activity,"
                " webhook) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, _dumps(spec), idem, fingerprint, now, now, int(bool(spec.get("webhook")))),
            )
        return job_id, True

    def find_idempotent(self, idem: str) -> str | None:
        row = self._conn().execute("SELECT id FROM altcap_jobs WHERE idem = ?", (idem,)).fetchone()
        return None if row is None else str(row[0])

    def get(self, job_id: str) -> dict[str, Any] | None:
        query = f"SELECT {_JOB_COLUMNS} FROM altcap_jobs WHERE id = ?"
        cur = self._conn().execute(query, (job_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return _record(dict(zip([d[0] for d in cur.description], row, strict=True)))

    def claim_plan(self, job_id: str, owner: str, lease_s: float) -> int:
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE altcap_jobs SET plan_owner = ?, plan_lease = ?, state = 'running',"
                " started = COALESCE(started, ?), activity = ?,"
                " plan_attempts = plan_attempts + 1"
                " WHERE id = ? AND state IN ('queued', 'running') AND planned = 0"
                " AND (plan_lease IS NULL OR plan_lease <= ?)",
                (owner, now + lease_s, now, now, job_id, now),
            )
            if cur.rowcount != 1:
                return 0
            row = conn.execute(
                "SELECT plan_attempts FROM altcap_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return int(row[0])

    def commit_plan(self, job_id: str, plan: Plan) -> str:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT state, planned FROM altcap_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None or row[0] not in ACTIVE_STATES:
                return INACTIVE
            if row[1]:
                return DUPLICATE
            conn.executemany(
                "INSERT INTO altcap_job_pages (job_id, n, url, final_url, html, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        job_id,
                        p["n"],
                        p["url"],
                        p.get("final_url"),
                        p.get("html"),
                        _dumps(p["error"]) if p.get("error") else None,
                    )
                    for p in plan.pages
                ],
            )
            conn.executemany(
                "INSERT INTO altcap_job_chunks (job_id, n, items, state)"
                " VALUES (?, ?, ?, 'pending')",
                [(job_id, n, _dumps(items)) for n, items in enumerate(plan.chunks)],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO altcap_job_rows (job_id, seq, row) VALUES (?, ?, ?)",
                [(job_id, seq, _dumps(r)) for seq, r in plan.rows.items()],
            )
            counts = _counts(plan.rows)
            finished = not plan.chunks
            conn.execute(
                "UPDATE altcap_jobs SET planned = 1, plan_owner = NULL, plan_lease = NULL,"
                " total = ?, chunks = ?, done = ?, failed = ?, skipped = ?, limited = ?,"
                " verdicts = ?, activity = ? WHERE id = ?",
                (
                    plan.total,
                    len(plan.chunks),
                    *counts,
                    int(plan.limited),
                    _dumps(plan.verdicts),
                    now,
                    job_id,
                ),
            )
            if finished:
                self._finish(conn, job_id, "done", now)
        return FINISHED if finished else RECORDED

    @staticmethod
    def _finish(
        conn: sqlite3.Connection,
        job_id: str,
        state: str,
        now: float,
        error: tuple[str, str] | None = None,
    ) -> None:
        code, message = error or (None, None)
        conn.execute(
            "UPDATE altcap_jobs SET state = ?, finished = ?, error_code = ?, error_message = ?,"
            " webhook_state = CASE WHEN webhook = 1 THEN 'pending' END,"
            " webhook_at = CASE WHEN webhook = 1 THEN ? END WHERE id = ?",
            (state, now, code, message, now, job_id),
        )

    def fail(self, job_id: str, code: str, message: str) -> bool:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM altcap_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] not in ACTIVE_STATES:
                return False
            self._finish(conn, job_id, "failed", now, (code, message))
            return True

    def cancel(self, job_id: str) -> bool:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM altcap_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] not in ACTIVE_STATES:
                return False
            self._finish(conn, job_id, "cancelled", now)
            return True

    # --- chunks -----------------------------------------------------------------------

    def claim_chunk(self, job_id: str, owner: str, lease_s: float) -> Claim | None:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT state, planned, paused_until FROM altcap_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None or row[0] not in ACTIVE_STATES or not row[1] or (row[2] or 0) > now:
                return None
            chunk = conn.execute(
                "SELECT n, items, attempts, paid FROM altcap_job_chunks WHERE job_id = ?"
                " AND (state = 'pending' OR (state = 'leased' AND lease <= ?)) ORDER BY n LIMIT 1",
                (job_id, now),
            ).fetchone()
            if chunk is None:
                return None
            n, items, attempts, paid = chunk
            conn.execute(
                "UPDATE altcap_job_chunks SET state = 'leased', owner = ?, lease = ?,"
                " attempts = attempts + 1 WHERE job_id = ? AND n = ?",
                (owner, now + lease_s, job_id, n),
            )
            conn.execute("UPDATE altcap_jobs SET activity = ? WHERE id = ?", (now, job_id))
        return Claim(n, json.loads(items), attempts + 1, bool(paid))

    def mark_paid(
        self, job_id: str, n: int, owner: str, split: tuple[list[Any], list[Any]] | None = None
    ) -> bool:
        with self._tx() as conn:
            held = conn.execute(
                "SELECT 1 FROM altcap_job_chunks WHERE job_id = ? AND n = ? AND state = 'leased'"
                " AND owner = ?",
                (job_id, n, owner),
            ).fetchone()
            if held is None:
                return False
            if split is not None:
                paid, rest = split
                (last,) = conn.execute(
                    "SELECT chunks FROM altcap_jobs WHERE id = ?", (job_id,)
                ).fetchone()
                conn.execute(
                    "INSERT INTO altcap_job_chunks (job_id, n, items, state)"
                    " VALUES (?, ?, ?, 'pending')",
                    (job_id, last, _dumps(rest)),
                )
                conn.execute("UPDATE altcap_jobs SET chunks = chunks + 1 WHERE id = ?", (job_id,))
                conn.execute(
                    "UPDATE altcap_job_chunks SET items = ? WHERE job_id = ? AND n = ?",
                    (_dumps(paid), job_id, n),
                )
            conn.execute(
                "UPDATE altcap_job_chunks SET paid = 1 WHERE job_id = ? AND n = ?", (job_id, n)
            )
        return True

    def pause(self, job_id: str, wait_s: float) -> None:
        until = time.time() + wait_s
        with self._tx() as conn:
            conn.execute(
                "UPDATE altcap_jobs SET paused_until = MAX(COALESCE(paused_until, 0), ?)"
                " WHERE id = ? AND state IN ('queued', 'running')",
                (until, job_id),
            )

    def complete_chunk(self, job_id: str, n: int, rows: Mapping[int, Mapping[str, Any]]) -> str:
        now = time.time()
        with self._tx() as conn:
            chunk = conn.execute(
                "SELECT state FROM altcap_job_chunks WHERE job_id = ? AND n = ?", (job_id, n)
            ).fetchone()
            if chunk is None or chunk[0] == "done":
                return DUPLICATE
            conn.executemany(
                "INSERT OR IGNORE INTO altcap_job_rows (job_id, seq, row) VALUES (?, ?, ?)",
                [(job_id, seq, _dumps(r)) for seq, r in rows.items()],
            )
            conn.execute(
                "UPDATE altcap_job_chunks SET state = 'done', owner = NULL, lease = NULL"
                " WHERE job_id = ? AND n = ?",
                (job_id, n),
            )
            done, failed, skipped = _counts(rows)
            conn.execute(
                "UPDATE altcap_jobs SET done = done + ?, failed = failed + ?,"
                " skipped = skipped + ?, chunks_done = chunks_done + 1, activity = ? WHERE id = ?",
                (done, failed, skipped, now, job_id),
            )
            state, planned, chunks, chunks_done = conn.execute(
                "SELECT state, planned, chunks, chunks_done FROM altcap_jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if state in ACTIVE_STATES and planned and chunks_done >= chunks:
                self._finish(conn, job_id, "done", now)
                return FINISHED
        return RECORDED

    def release(self, job_id: str, unit: int | str, owner: str) -> None:
        with self._tx() as conn:
            if unit == "plan":
                conn.execute(
                    "UPDATE altcap_jobs SET plan_lease = NULL,"
                    " plan_attempts = MAX(plan_attempts - 1, 0)"
                    " WHERE id = ? AND plan_owner = ? AND plan_lease IS NOT NULL AND planned = 0",
                    (job_id, owner),
                )
            else:
                conn.execute(
                    "UPDATE altcap_job_chunks SET state = 'pending', owner = NULL, lease = NULL,"
                    " attempts = MAX(attempts - 1, 0)"
                    " WHERE job_id = ? AND n = ? AND state = 'leased' AND owner = ?",
                    (job_id, unit, owner),
                )

    def renew(self, owner: str, units: Sequence[tuple[str, int | str]], lease_s: float) -> None:
        if not units:
            return
        now = time.time()
        with self._tx() as conn:
            for job_id, unit in units:
                if unit == "plan":
                    conn.execute(
                        "UPDATE altcap_jobs SET plan_lease = ? WHERE id = ? AND plan_owner = ?"
                        " AND planned = 0",
                        (now + lease_s, job_id, owner),
                    )
                else:
                    conn.execute(
                        "UPDATE altcap_job_chunks SET lease = ? WHERE job_id = ? AND n = ?"
                        " AND state = 'leased' AND owner = ?",
                        (now + lease_s, job_id, unit, owner),
                    )
                conn.execute("UPDATE altcap_jobs SET activity = ? WHERE id = ?", (now, job_id))

    # --- reading ----------------------------------------------------------------------

    def rows(self, job_id: str) -> list[dict[str, Any]]:
        cur = self._conn().execute(
            "SELECT row FROM altcap_job_rows WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [json.loads(r[0]) for r in cur]

    def pages(self, job_id: str) -> list[dict[str, Any]]:
        cur = self._conn().execute(
            "SELECT n, url, final_url, error FROM altcap_job_pages WHERE job_id = ? ORDER BY n",
            (job_id,),
        )
        return [
            {"n": n, "url": url, "final_url": final, "error": json.loads(err) if err else None}
            for n, url, final, err in cur
        ]

    def page_html(self, job_id: str, n: int) -> dict[str, Any] | None:
        row = (
            self._conn()
            .execute(
                "SELECT url, final_url, html FROM altcap_job_pages WHERE job_id = ? AND n = ?",
                (job_id, n),
            )
            .fetchone()
        )
        if row is None or row[2] is None:
            return None
        return {"n": n, "url": row[0], "final_url": row[1], "html": row[2]}

    # --- recovery ---------------------------------------------------------------------

    def sweep(self, lease_s: float) -> tuple[list[str], list[str]]:
        now = time.time()
        quiet = now - lease_s
        with self._tx() as conn:
            jobs = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM altcap_jobs j WHERE state IN ('queued', 'running') AND ("
                    # a lease ran out since the last wake-up: its consumer died
                    "  (planned = 0 AND plan_lease > woken AND plan_lease <= :now)"
                    "  OR EXISTS (SELECT 1 FROM altcap_job_chunks c WHERE c.job_id = j.id"
                    "    AND c.state = 'leased' AND c.lease > j.woken AND c.lease <= :now)"
                    # a pause ran out since the last wake-up: the owner's budget is back
                    "  OR (paused_until > woken AND paused_until <= :now)"
                    # claimable work that nothing touched for a lease: a wake-up was lost
                    "  OR (activity <= :quiet AND woken <= :quiet"
                    "   AND COALESCE(paused_until, 0) <= :now AND ("
                    "    (planned = 0 AND (plan_lease IS NULL OR plan_lease <= :now))"
                    "    OR EXISTS (SELECT 1 FROM altcap_job_chunks c WHERE c.job_id = j.id"
                    "      AND (c.state = 'pending' OR (c.state = 'leased' AND c.lease <= :now))"
                    "))))",
                    {"now": now, "quiet": quiet},
                )
            ]
            conn.executemany(
                "UPDATE altcap_jobs SET woken = ? WHERE id = ?", [(now, j) for j in jobs]
            )
            hooks = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM altcap_jobs"
                    " WHERE webhook_state = 'pending' AND webhook_at <= ?",
                    (now - WEBHOOK_STALE_S,),
                )
            ]
            conn.executemany(
                "UPDATE altcap_jobs SET webhook_at = ? WHERE id = ?", [(now, j) for j in hooks]
            )
        return jobs, hooks

    def set_webhook(self, job_id: str, state: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE altcap_jobs SET webhook_state = ?, webhook_at = ? WHERE id = ?",
                (state, time.time(), job_id),
            )

    # --- deleting ---------------------------------------------------------------------

    @staticmethod
    def _delete(conn: sqlite3.Connection, job_ids: Sequence[str]) -> None:
        """Every row of these jobs, in the caller's transaction (the idempotency key is a
        column of the job's row, so it goes with it)."""
        ids = [(job_id,) for job_id in job_ids]
        for table in ("altcap_job_chunks", "altcap_job_rows", "altcap_job_pages"):
            conn.executemany(f"DELETE FROM {table} WHERE job_id = ?", ids)
        conn.executemany("DELETE FROM altcap_jobs WHERE id = ?", ids)

    def delete(self, job_id: str) -> bool:
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM altcap_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] not in FINAL_STATES:
                return False
            self._delete(conn, [job_id])
            return True

    def purge(self, retention_s: float, *, now: float | None = None) -> list[str]:
        if retention_s <= 0:
            return []
        cutoff = (time.time() if now is None else now) - retention_s
        deleted: list[str] = []
        while True:
            with self._tx() as conn:
                batch = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM altcap_jobs WHERE finished IS NOT NULL AND finished <= ?"
                        " AND state IN ('done', 'failed', 'cancelled') LIMIT ?",
                        (cutoff, PURGE_BATCH),
                    )
                ]
                self._delete(conn, batch)
            deleted += batch
            if len(batch) < PURGE_BATCH:
                return deleted


# --- Redis ----------------------------------------------------------------------------------

# Every script reads the clock of the Redis server (TIME), so the leases of consumers on
# different machines are compared on one clock. Keys are built inside the scripts from the
# prefix and the job id: fine on one Redis server (or a primary with replicas), not on a
# Redis Cluster.
_LUA_HEAD = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function active(jk)
  local st = redis.call('HGET', jk, 'state')
  return st == 'queued' or st == 'running'
end
local function finish(p, id, state, t, code, msg)
  local jk = p .. id
  redis.call('HSET', jk, 'state', state, 'finished', t)
  if code then redis.call('HSET', jk, 'error_code', code, 'error_message', msg) end
  redis.call('SREM', p .. 'active', id)
  redis.call('ZADD', p .. 'finished', t, id)
  if redis.call('HGET', jk, 'webhook') == '1' then
    redis.call('HSET', jk, 'webhook_state', 'pending')
    redis.call('ZADD', p .. 'webhooks', t, id)
  end
end
"""

# A holder's jobs are a set (jobs-of:<holder>, see ``holder``): a job joins it here, leaves
# it when deleted, and one that has ended is dropped here, when its holder next creates one
# (so the set holds about what is active, and counting it costs that much).
_CREATE = """
local p, id, spec, idem, fp, hook = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local owner, max_active = ARGV[7], tonumber(ARGV[8])
if idem ~= '' then
  local existing = redis.call('GET', p .. 'idem:' .. idem)
  -- a key whose job was deleted (or lost) is free again
  if existing and redis.call('EXISTS', p .. existing) == 1 then return {existing, 0} end
end
local mine = p .. 'jobs-of:' .. owner
local n = 0
for _, other in ipairs(redis.call('SMEMBERS', mine)) do
  if active(p .. other) then n = n + 1 else redis.call('SREM', mine, other) end
end
if max_active > 0 and n >= max_active then return {'', 0} end
redis.call('SADD', mine, id)
local t = now()
redis.call('HSET', p .. id, 'id', id, 'spec', spec, 'fingerprint', fp, 'state', 'queued',
  'created', t, 'planned', 0, 'activity', t, 'woken', 0, 'webhook', hook)
redis.call('SADD', p .. 'active', id)
if idem ~= '' then
  redis.call('HSET', p .. id, 'idem', idem)
  redis.call('SET', p .. 'idem:' .. idem, id)
end
return {id, 1}
"""

_CLAIM_PLAN = """
local p, id, owner, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local jk = p .. id
if not active(jk) or redis.call('HGET', jk, 'planned') == '1' then return 0 end
local t = now()
if tonumber(redis.call('HGET', jk, 'plan_lease') or '0') > t then return 0 end
redis.call('HSET', jk, 'plan_owner', owner, 'plan_lease', t + lease, 'state', 'running',
  'activity', t)
redis.call('HSETNX', jk, 'started', t)
return redis.call('HINCRBY', jk, 'plan_attempts', 1)
"""

# ARGV: p, id, total, limited, done, failed, skipped, n_pages, n_chunks, verdicts JSON, then
# n_pages pairs (page number, metadata JSON), n_pages pairs (page number, JSON with the HTML
# or ""), n_chunks chunk JSONs, then seq/row pairs.
_COMMIT_PLAN = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. id
if not active(jk) then return 'inactive' end
if redis.call('HGET', jk, 'planned') == '1' then return 'duplicate' end
local npages, nchunks = tonumber(ARGV[8]), tonumber(ARGV[9])
local i = 11
for _ = 1, npages do
  redis.call('HSET', jk .. ':pagemeta', ARGV[i], ARGV[i + 1]); i = i + 2
end
for _ = 1, npages do
  if ARGV[i + 1] ~= '' then redis.call('HSET', jk .. ':pages', ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
for n = 0, nchunks - 1 do
  redis.call('HSET', jk .. ':chunks', n, ARGV[i]); i = i + 1
  redis.call('ZADD', jk .. ':open', 0, n)
end
while i < #ARGV do
  redis.call('HSETNX', jk .. ':rows', ARGV[i], ARGV[i + 1]); i = i + 2
end
local t = now()
redis.call('HSET', jk, 'planned', 1, 'total', ARGV[3], 'limited', ARGV[4], 'done', ARGV[5],
  'failed', ARGV[6], 'skipped', ARGV[7], 'chunks', nchunks, 'chunks_done', 0, 'activity', t,
  'verdicts', ARGV[10])
redis.call('HDEL', jk, 'plan_owner', 'plan_lease')
if nchunks == 0 then finish(p, id, 'done', t); return 'finished' end
return 'recorded'
"""

_FAIL = """
local p, id, code, msg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not active(p .. id) then return 0 end
finish(p, id, 'failed', now(), code, msg)
return 1
"""

_CANCEL = """
local p, id = ARGV[1], ARGV[2]
if not active(p .. id) then return 0 end
finish(p, id, 'cancelled', now())
return 1
"""

_CLAIM_CHUNK = """
local p, id, owner, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local jk = p .. id
if not active(jk) or redis.call('HGET', jk, 'planned') ~= '1' then return false end
local t = now()
if tonumber(redis.call('HGET', jk, 'paused_until') or '0') > t then return false end
local found = redis.call('ZRANGEBYSCORE', jk .. ':open', '-inf', t, 'LIMIT', 0, 1)
if #found == 0 then return false end
local n = found[1]
redis.call('ZADD', jk .. ':open', t + lease, n)
redis.call('HSET', jk .. ':owner', n, owner)
local attempts = redis.call('HINCRBY', jk .. ':attempts', n, 1)
redis.call('HSET', jk, 'activity', t)
local paid = redis.call('SISMEMBER', jk .. ':paid', n)
return {n, redis.call('HGET', jk .. ':chunks', n), attempts, paid}
"""

# ARGV: p, id, n, owner, then (for a split) the items paid for and the others, as JSON.
_MARK_PAID = """
local p, id, n, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. id
if redis.call('HGET', jk .. ':owner', n) ~= owner then return 0 end
if #ARGV >= 6 then
  local last = redis.call('HINCRBY', jk, 'chunks', 1) - 1
  redis.call('HSET', jk .. ':chunks', n, ARGV[5], last, ARGV[6])
  redis.call('ZADD', jk .. ':open', 0, last)
end
redis.call('SADD', jk .. ':paid', n)
return 1
"""

_PAUSE = """
local p, id, wait = ARGV[1], ARGV[2], tonumber(ARGV[3])
local jk = p .. id
if not active(jk) then return 0 end
local until_t = now() + wait
if tonumber(redis.call('HGET', jk, 'paused_until') or '0') < until_t then
  redis.call('HSET', jk, 'paused_until', until_t)
end
return 1
"""

# ARGV: p, id, n, done, failed, skipped, then seq/row pairs.
_COMPLETE = """
local p, id, n = ARGV[1], ARGV[2], ARGV[3]
local jk = p .. id
if redis.call('HEXISTS', jk .. ':chunks', n) == 0 then return 'duplicate' end
if redis.call('SADD', jk .. ':done', n) == 0 then return 'duplicate' end
for i = 7, #ARGV, 2 do redis.call('HSETNX', jk .. ':rows', ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', jk .. ':open', n)
redis.call('HDEL', jk .. ':owner', n)
redis.call('HINCRBY', jk, 'done', ARGV[4])
redis.call('HINCRBY', jk, 'failed', ARGV[5])
redis.call('HINCRBY', jk, 'skipped', ARGV[6])
local chunks_done = redis.call('HINCRBY', jk, 'chunks_done', 1)
local t = now()
redis.call('HSET', jk, 'activity', t)
if active(jk) and redis.call('HGET', jk, 'planned') == '1'
    and chunks_done >= tonumber(redis.call('HGET', jk, 'chunks')) then
  finish(p, id, 'done', t)
  return 'finished'
end
return 'recorded'
"""

_RELEASE = """
local p, id, unit, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. id
if unit == 'plan' then
  if redis.call('HGET', jk, 'plan_owner') == owner and redis.call('HGET', jk, 'planned') ~= '1'
      and redis.call('HDEL', jk, 'plan_lease') == 1 then
    redis.call('HINCRBY', jk, 'plan_attempts', -1)
  end
elseif redis.call('HGET', jk .. ':owner', unit) == owner then
  redis.call('HDEL', jk .. ':owner', unit)
  redis.call('ZADD', jk .. ':open', 'XX', 0, unit)
  redis.call('HINCRBY', jk .. ':attempts', unit, -1)
end
return 1
"""

# ARGV: p, owner, lease, then job/unit pairs.
_RENEW = """
local p, owner, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = now()
for i = 4, #ARGV, 2 do
  local jk, unit = p .. ARGV[i], ARGV[i + 1]
  if unit == 'plan' then
    if redis.call('HGET', jk, 'plan_owner') == owner and redis.call('HGET', jk, 'planned') ~= '1'
    then redis.call('HSET', jk, 'plan_lease', t + lease) end
  elseif redis.call('HGET', jk .. ':owner', unit) == owner then
    redis.call('ZADD', jk .. ':open', 'XX', t + lease, unit)
  end
  if redis.call('EXISTS', jk) == 1 then redis.call('HSET', jk, 'activity', t) end
end
return 1
"""

# The lease test reads the last wake-up as stored ('(' .. the string): a Lua number turned
# into a string keeps only 14 digits.
_SWEEP = """
local p, lease, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = now()
local quiet = t - lease
local jobs = {}
for _, id in ipairs(redis.call('SMEMBERS', p .. 'active')) do
  local jk = p .. id
  if not active(jk) then
    redis.call('SREM', p .. 'active', id)
  else
    local woken_s = redis.call('HGET', jk, 'woken') or '0'
    local woken = tonumber(woken_s)
    local planned = redis.call('HGET', jk, 'planned') == '1'
    local plan_lease = tonumber(redis.call('HGET', jk, 'plan_lease') or '0')
    local paused_until = tonumber(redis.call('HGET', jk, 'paused_until') or '0')
    -- a lease ran out since the last wake-up: its consumer died
    local wake
    if planned then
      wake = redis.call('ZCOUNT', jk .. ':open', '(' .. woken_s, t) > 0
    else
      wake = plan_lease > woken and plan_lease <= t
    end
    -- a pause ran out since the last wake-up: the owner's budget is back
    if paused_until > woken and paused_until <= t then wake = true end
    -- claimable work that nothing touched for a lease: a wake-up was lost
    if not wake and woken <= quiet and paused_until <= t
        and tonumber(redis.call('HGET', jk, 'activity') or '0') <= quiet then
      if planned then
        wake = redis.call('ZCOUNT', jk .. ':open', '-inf', t) > 0
      else
        wake = plan_lease <= t
      end
    end
    if wake then
      redis.call('HSET', jk, 'woken', t)
      table.insert(jobs, id)
    end
  end
end
local hooks = redis.call('ZRANGEBYSCORE', p .. 'webhooks', '-inf', t - stale)
for _, id in ipairs(hooks) do redis.call('ZADD', p .. 'webhooks', t, id) end
return {jobs, hooks}
"""

_SET_WEBHOOK = """
local p, id, state = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p .. id) == 0 then return 0 end  -- deleted meanwhile: write nothing
redis.call('HSET', p .. id, 'webhook_state', state)
if state == 'pending' then
  redis.call('ZADD', p .. 'webhooks', now(), id)
else
  redis.call('ZREM', p .. 'webhooks', id)
end
return 1
"""

# Deleting a job: every key of it, its entries in the indexes, its idempotency key (only if
# that still points at this job). Never an active job. Idempotent: deleting twice, or a job
# half gone, only removes what is left.
_LUA_DELETE = """
local function delete_job(p, id)
  local jk = p .. id
  local st = redis.call('HGET', jk, 'state')
  if st == 'queued' or st == 'running' then return 0 end
  local idem = redis.call('HGET', jk, 'idem')
  if idem and redis.call('GET', p .. 'idem:' .. idem) == id then
    redis.call('DEL', p .. 'idem:' .. idem)
  end
  local spec = redis.call('HGET', jk, 'spec')
  if spec then
    local ok, decoded = pcall(cjson.decode, spec)
    local holder = ''  -- as jobstore.holder(spec): the client, else the owner
    if ok and type(decoded) == 'table' then
      for _, name in ipairs({'client', 'owner'}) do
        local v = decoded[name]
        if holder == '' and type(v) == 'string' and v ~= '' then holder = v end
      end
    end
    redis.call('SREM', p .. 'jobs-of:' .. holder, id)
  end
  redis.call('UNLINK', jk, jk .. ':chunks', jk .. ':open', jk .. ':owner', jk .. ':attempts',
    jk .. ':done', jk .. ':paid', jk .. ':rows', jk .. ':pages', jk .. ':pagemeta')
  redis.call('SREM', p .. 'active', id)
  redis.call('ZREM', p .. 'webhooks', id)
  redis.call('ZREM', p .. 'finished', id)
  if st then return 1 end
  return 0
end
"""

_DELETE = """
return delete_job(ARGV[1], ARGV[2])
"""

# ARGV: p, retention, batch size, now ('' = the server's clock).
_PURGE = """
local p, retention, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = now()
if ARGV[4] ~= '' then t = tonumber(ARGV[4]) end
local ids = redis.call('ZRANGEBYSCORE', p .. 'finished', '-inf', t - retention, 'LIMIT', 0, limit)
local gone = {}
for _, id in ipairs(ids) do
  if delete_job(p, id) == 1 then table.insert(gone, id) end
  redis.call('ZREM', p .. 'finished', id)  -- also an entry of a job that is active again
end
return {#ids, gone}
"""


class RedisJobStore(JobStore):
    """Jobs in Redis, shared by consumers on any number of machines.

    Keys, under ``altcap:jobs:``: ``<id>`` (a hash: state, counts, timestamps), and for each
    job ``<id>:chunks`` (items), ``<id>:open`` (a sorted set of unfinished chunks scored by
    lease expiry, 0 when pending), ``<id>:owner``, ``<id>:attempts``, ``<id>:done`` (chunk
    marks), ``<id>:paid`` (chunks charged to the rate limit), ``<id>:rows`` (seq -> row),
    ``<id>:pages`` and ``<id>:pagemeta``; plus ``active`` (ids of unfinished jobs),
    ``finished`` (ended jobs by end time, for the retention sweep), ``webhooks``,
    ``idem:<key>`` and ``jobs-of:<holder>`` (an API key's or a client address's jobs, for its
    cap on active jobs). Each operation is one Lua script, which Redis runs atomically. Use a
    Redis that persists (AOF ``appendfsync everysec`` or better) if jobs must survive a
    restart of Redis itself.
    """

    def __init__(self, url: str, *, prefix: str = "altcap:jobs:") -> None:
        import redis

        self.prefix = prefix
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL for the job store: {exc}") from exc
        register = self._client.register_script
        self._create = register(_LUA_HEAD + _CREATE)
        self._claim_plan = register(_LUA_HEAD + _CLAIM_PLAN)
        self._commit_plan = register(_LUA_HEAD + _COMMIT_PLAN)
        self._fail = register(_LUA_HEAD + _FAIL)
        self._cancel = register(_LUA_HEAD + _CANCEL)
        self._claim_chunk = register(_LUA_HEAD + _CLAIM_CHUNK)
        self._mark_paid = register(_LUA_HEAD + _MARK_PAID)
        self._pause = register(_LUA_HEAD + _PAUSE)
        self._complete = register(_LUA_HEAD + _COMPLETE)
        self._release = register(_LUA_HEAD + _RELEASE)
        self._renew = register(_LUA_HEAD + _RENEW)
        self._sweep = register(_LUA_HEAD + _SWEEP)
        self._set_webhook = register(_LUA_HEAD + _SET_WEBHOOK)
        self._delete = register(_LUA_HEAD + _LUA_DELETE + _DELETE)
        self._purge = register(_LUA_HEAD + _LUA_DELETE + _PURGE)

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def create(
        self,
        job_id: str,
        spec: Mapping[str, Any],
        idem: str | None,
        fingerprint: str,
        max_active: int = 0,
    ) -> tuple[str, bool]:
        hook = "1" if spec.get("webhook") else "0"
        args = [self.prefix, job_id, _dumps(spec), idem or "", fingerprint, hook]
        args += [holder(spec), max_active]
        found, created = self._create(args=args)
        return self._text(found), bool(created)

    def find_idempotent(self, idem: str) -> str | None:
        found = self._client.get(self.prefix + "idem:" + idem)
        return None if found is None else self._text(found)

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self._client.hgetall(self.prefix + job_id)
        if not raw:
            return None
        return _record({self._text(k): self._text(v) for k, v in raw.items()})

    def claim_plan(self, job_id: str, owner: str, lease_s: float) -> int:
        return int(self._claim_plan(args=[self.prefix, job_id, owner, lease_s]) or 0)

    def commit_plan(self, job_id: str, plan: Plan) -> str:
        done, failed, skipped = _counts(plan.rows)
        args: list[Any] = [self.prefix, job_id, plan.total, int(plan.limited)]
        args += [done, failed, skipped, len(plan.pages), len(plan.chunks), _dumps(plan.verdicts)]
        for page in plan.pages:
            meta = {"n": page["n"], "url": page["url"], "final_url": page.get("final_url")}
            args += [page["n"], _dumps({**meta, "error": page.get("error")})]
        for page in plan.pages:
            html = page.get("html")
            meta = {"n": page["n"], "url": page["url"], "final_url": page.get("final_url")}
            args += [page["n"], _dumps({**meta, "html": html}) if html is not None else ""]
        args += [_dumps(items) for items in plan.chunks]
        for seq, row in plan.rows.items():
            args += [seq, _dumps(row)]
        return self._text(self._commit_plan(args=args))

    def fail(self, job_id: str, code: str, message: str) -> bool:
        return bool(self._fail(args=[self.prefix, job_id, code, message]))

    def cancel(self, job_id: str) -> bool:
        return bool(self._cancel(args=[self.prefix, job_id]))

    def claim_chunk(self, job_id: str, owner: str, lease_s: float) -> Claim | None:
        found = self._claim_chunk(args=[self.prefix, job_id, owner, lease_s])
        if not found:
            return None
        n, items, attempts, paid = found
        return Claim(int(self._text(n)), json.loads(self._text(items)), int(attempts), bool(paid))

    def mark_paid(
        self, job_id: str, n: int, owner: str, split: tuple[list[Any], list[Any]] | None = None
    ) -> bool:
        args: list[Any] = [self.prefix, job_id, n, owner]
        if split is not None:
            args += [_dumps(split[0]), _dumps(split[1])]
        return bool(self._mark_paid(args=args))

    def pause(self, job_id: str, wait_s: float) -> None:
        self._pause(args=[self.prefix, job_id, wait_s])

    def complete_chunk(self, job_id: str, n: int, rows: Mapping[int, Mapping[str, Any]]) -> str:
        args: list[Any] = [self.prefix, job_id, n, *_counts(rows)]
        for seq, row in rows.items():
            args += [seq, _dumps(row)]
        return self._text(self._complete(args=args))

    def release(self, job_id: str, unit: int | str, owner: str) -> None:
        self._release(args=[self.prefix, job_id, unit, owner])

    def renew(self, owner: str, units: Sequence[tuple[str, int | str]], lease_s: float) -> None:
        if not units:
            return
        args: list[Any] = [self.prefix, owner, lease_s]
        for job_id, unit in units:
            args += [job_id, unit]
        self._renew(args=args)

    def rows(self, job_id: str) -> list[dict[str, Any]]:
        raw = self._client.hgetall(f"{self.prefix}{job_id}:rows")
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    def pages(self, job_id: str) -> list[dict[str, Any]]:
        raw = self._client.hgetall(f"{self.prefix}{job_id}:pagemeta")
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    def page_html(self, job_id: str, n: int) -> dict[str, Any] | None:
        raw = self._client.hget(f"{self.prefix}{job_id}:pages", str(n))
        return None if raw is None else json.loads(raw)

    def sweep(self, lease_s: float) -> tuple[list[str], list[str]]:
        jobs, hooks = self._sweep(args=[self.prefix, lease_s, WEBHOOK_STALE_S])
        return [self._text(j) for j in jobs], [self._text(h) for h in hooks]

    def set_webhook(self, job_id: str, state: str) -> None:
        self._set_webhook(args=[self.prefix, job_id, state])

    def delete(self, job_id: str) -> bool:
        return bool(self._delete(args=[self.prefix, job_id]))

    def purge(self, retention_s: float, *, now: float | None = None) -> list[str]:
        if retention_s <= 0:
            return []
        deleted: list[str] = []
        while True:
            args = [self.prefix, retention_s, PURGE_BATCH, "" if now is None else now]
            seen, gone = self._purge(args=args)
            deleted += [self._text(job_id) for job_id in gone]
            if int(seen) < PURGE_BATCH:
                return deleted


# --- configuration ----------------------------------------------------------------------------


def is_redis_url(url: str) -> bool:
    return url.strip().lower().startswith(("redis://", "rediss://", "unix://"))


def open_job_store(queue_url: str, data_dir: str | os.PathLike[str]) -> JobStore:
    """The store that goes with ``ALTCAP_QUEUE_URL``: Redis for redis://, else SQLite."""
    if is_redis_url(queue_url):
        return RedisJobStore(queue_url.strip())
    return SQLiteJobStore(Path(data_dir) / STORE_FILE)
