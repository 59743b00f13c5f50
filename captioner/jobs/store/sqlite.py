"""The job store in SQLite: one machine, the default (see ``captioner.jobs.store.base``)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from captioner.errors import ConfigError
from captioner.jobs.store.base import (
    ACTIVE_STATES,
    DUPLICATE,
    FINAL_STATES,
    FINISHED,
    INACTIVE,
    PURGE_BATCH,
    RECORDED,
    REFUSED,
    WEBHOOK_STALE_S,
    Claim,
    JobStore,
    Plan,
    _counts,
    _dumps,
    _record,
    _suspect_alts,
    holder,
)

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
    verdicts TEXT,                      -- JSON {verdict: rows}, once planned (the scan's)
    suspect_alts INTEGER NOT NULL DEFAULT 0,  -- rows written since whose alt is suspect
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
    " skipped, chunks, chunks_done, limited, verdicts, suspect_alts, error_code, error_message,"
    " webhook_state, paused_until"
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
                "suspect_alts": "INTEGER NOT NULL DEFAULT 0",
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
                " skipped = skipped + ?, suspect_alts = suspect_alts + ?,"
                " chunks_done = chunks_done + 1, activity = ? WHERE id = ?",
                (done, failed, skipped, _suspect_alts(rows), now, job_id),
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
