"""Where batch jobs live: SQLite (one machine, the default) or Redis (several).

``base`` holds the contract every store keeps (and the design notes: leases, atomic plans,
exactly-once results); ``sqlite`` and ``redis`` implement it; ``open_job_store`` picks one.
"""

from __future__ import annotations

import os
from pathlib import Path

from captioner.jobs.store.base import (
    ACTIVE_STATES,
    DUPLICATE,
    FINAL_STATES,
    FINISHED,
    INACTIVE,
    PURGE_BATCH,
    RECORDED,
    REFUSED,
    STORE_FILE,
    WEBHOOK_STALE_S,
    Claim,
    JobStore,
    Plan,
    holder,
)
from captioner.jobs.store.redis import RedisJobStore
from captioner.jobs.store.sqlite import SQLiteJobStore

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
    "RedisJobStore",
    "SQLiteJobStore",
    "holder",
    "is_redis_url",
    "open_job_store",
]


# --- configuration ----------------------------------------------------------------------------


def is_redis_url(url: str) -> bool:
    return url.strip().lower().startswith(("redis://", "rediss://", "unix://"))


def open_job_store(queue_url: str, data_dir: str | os.PathLike[str]) -> JobStore:
    """The store that goes with ``ALTCAP_QUEUE_URL``: Redis for redis://, else SQLite."""
    if is_redis_url(queue_url):
        return RedisJobStore(queue_url.strip())
    return SQLiteJobStore(Path(data_dir) / STORE_FILE)
