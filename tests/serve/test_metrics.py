"""Metrics in prometheus-client's multiprocess mode, as gunicorn's workers run them.

Each process here is a stand-in worker: its own ``Metrics`` over a stand-in engine, writing
to one shared directory. The gunicorn tests check the whole server; these check what the
two gauges mean across workers, and that a worker the master marks dead leaves them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import sys
    from captioner.serve.metrics import Metrics

    class Engine:  # what Metrics reads from captioner.serve.engine.Engine
        ready = READY
        def stats(self):
            return {"queue_depth": DEPTH}
        def wait_ready(self, timeout=None):
            return self.ready

    m = Metrics(Engine())
    m.images.labels("captioned").inc(IMAGES)
    m.update_gauges()
    m._when_loaded()  # what its thread does once the engine has loaded (or failed)
    print("written", flush=True)
    if sys.argv[1] == "scrape":
        sys.stdout.write(m.exposition()[0].decode())
    else:
        sys.stdin.read()  # stay alive until the test closes stdin
    """
)


def worker(tmp_path: Path, mode: str, ready: bool, depth: int, images: int) -> subprocess.Popen:
    code = WORKER.replace("READY", str(ready)).replace("DEPTH", str(depth))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code.replace("IMAGES", str(images)), mode],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def value(text: str, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert m, f"{sample} not in\n{text}"
    return float(m.group(1))


def scrape(tmp_path: Path, ready: bool, depth: int, images: int) -> str:
    """/metrics as a worker that has just done its part answers it; the worker then exits,
    and is marked dead as gunicorn.conf.py's child_exit does."""
    from prometheus_client import multiprocess

    proc = worker(tmp_path, "scrape", ready, depth, images)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    multiprocess.mark_process_dead(proc.pid, str(tmp_path))
    return out


def test_gauges_and_counters_across_workers(tmp_path):
    from prometheus_client import multiprocess

    live = worker(tmp_path, "stay", ready=False, depth=3, images=5)
    try:
        assert live.stdout.readline().strip() == "written"
        text = scrape(tmp_path, ready=True, depth=4, images=2)
        assert value(text, "altcap_queue_depth") == 7  # the live workers' queues added up
        assert value(text, "altcap_model_ready") == 0  # one worker is still loading
        assert value(text, 'altcap_images_total{outcome="captioned"}') == 5 + 2

        multiprocess.mark_process_dead(live.pid, str(tmp_path))  # gunicorn.conf.py child_exit
        text = scrape(tmp_path, ready=True, depth=4, images=1)
        assert value(text, "altcap_queue_depth") == 4  # only the scraping worker's queue
        assert value(text, "altcap_model_ready") == 1
        # counters keep what exited workers did (all three here): totals never go back
        assert value(text, 'altcap_images_total{outcome="captioned"}') == 5 + 2 + 1
    finally:
        live.stdin.close()
        live.wait(timeout=30)
