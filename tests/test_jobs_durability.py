"""No lost work: ``kill -9`` a real consumer process in the middle of a 200-image job, start
a new one, and the job finishes with every image in the results exactly once.

Run for both stores: SQLite files in the data directory, and a real ``redis-server``. The
images are served slowly (0.1 s each) from 127.0.0.1 so that the job is still running when
the consumer is killed; the consumer is ``python -m captioner worker`` with the tiny model.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from helpers import QuietHandler, png_bytes
from redis_server import RedisServer

from captioner.jobs import JobQueue, parse_job
from captioner.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 200
CHUNK = 10
LEASE_S = 2


class SlowHandler(QuietHandler):
    def do_GET(self) -> None:
        time.sleep(0.1)
        super().do_GET()


@pytest.fixture(scope="module")
def slow_site(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("images")
    for i in range(IMAGES):
        (root / f"{i}.png").write_bytes(png_bytes((i, 255 - i, (7 * i) % 256), size=(24, 24)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SlowHandler, directory=root))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    with RedisServer() as server:
        redis.Redis.from_url(server.url).ping()
        yield server.url


class Worker:
    """``python -m captioner worker`` in a subprocess, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "captioner", "worker", "--threads", "2"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def attempts(queue: JobQueue, job_id: str) -> list[int]:
    """How many times each chunk was claimed (a crash leaves a claim that was never done)."""
    if queue.settings.queue_url:
        raw = redis.Redis.from_url(queue.settings.queue_url).hvals(f"altcap:jobs:{job_id}:attempts")
        return [int(v) for v in raw]
    with sqlite3.connect(queue.settings.data_dir / "jobs.sqlite3") as conn:
        rows = conn.execute(
            "SELECT attempts FROM altcap_job_chunks WHERE job_id = ?", (job_id,)
        ).fetchall()
    return [r[0] for r in rows]


def test_kill_9_mid_job_loses_and_duplicates_nothing(
    tiny_dir: Path, tmp_path: Path, slow_site: str, queue_url: str
) -> None:
    config = {
        "MODEL": str(tiny_dir),
        "DEVICE": "cpu",
        "DATA_DIR": str(tmp_path / "data"),
        "CACHE_URL": "off",
        "ALLOW_PRIVATE_NETWORKS": "true",
        "JOB_CHUNK_SIZE": str(CHUNK),
        "JOB_LEASE_S": str(LEASE_S),
        "QUEUE_URL": queue_url,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTCAP_")}
    env.update({f"ALTCAP_{k}": v for k, v in config.items()})
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    queue = JobQueue(Settings.load({}, config))  # submits and reads; consumes nothing
    urls = [f"{slow_site}/{i}.png" for i in range(IMAGES)]
    job, _ = queue.submit(
        parse_job({"images": urls, "decoding": {"max_tokens": 3}}, queue.settings)
    )
    log = tmp_path / "worker.log"

    first = Worker(env, log)
    try:
        deadline = time.monotonic() + 60
        while queue.status(job["id"])["counts"]["done"] < 3 * CHUNK:
            assert first.proc.poll() is None, first.log()
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.01)
        first.kill()
    finally:
        first.stop()
    at_kill = queue.status(job["id"])
    assert at_kill["state"] == "running", at_kill
    assert 3 * CHUNK <= at_kill["counts"]["done"] < IMAGES, "killed too late to prove anything"
    assert sum(attempts(queue, job["id"])) > at_kill["counts"]["done"] // CHUNK  # in flight

    second = Worker(env, log)
    try:
        deadline = time.monotonic() + 60
        while (status := queue.status(job["id"]))["state"] != "done":
            assert second.proc.poll() is None, second.log()
            assert time.monotonic() < deadline, (status, second.log())
            time.sleep(0.05)
    finally:
        second.stop()
    assert second.proc.returncode == 0, second.log()  # SIGTERM: a clean exit

    rows = queue.rows(job["id"])
    seen = Counter(r["image_url"] for r in rows)
    assert set(seen) == set(urls), f"missing: {sorted(set(urls) - set(seen))[:5]}"
    assert max(seen.values()) == 1, f"duplicated: {[u for u, n in seen.items() if n > 1][:5]}"
    assert [r["image_url"] for r in rows] == urls  # and in order
    assert all(r["status"] == "done" and r["caption"] for r in rows)
    assert status["counts"] == {"total": IMAGES, "done": IMAGES, "failed": 0, "skipped": 0}
    assert max(attempts(queue, job["id"])) >= 2  # the chunk in flight was run again
    queue.close()
