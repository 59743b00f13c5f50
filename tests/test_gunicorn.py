"""The service under real gunicorn: gunicorn.conf.py, two forked workers, a clean SIGTERM.

The Flask test client cannot see what only a pre-forking server does: the app built once
per worker after the fork, the model loaded in each worker and never in the master, the
SQLite cache shared by two processes, worker threads waiting on the engine together,
``worker_exit`` closing the engine, and gunicorn's exit code and log on SIGTERM.

One server (tiny model, 2 workers) serves every test here; the last test stops it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import png_bytes

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
READY_TIMEOUT_S = 60  # two workers importing torch on two cores: ~10 s
GRACEFUL_TIMEOUT_S = 30  # as in gunicorn.conf.py
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
LOADED = re.compile(r"\[(\d+)\] \[INFO\] model .* loaded")
METRICS_DIR = re.compile(r"\[INFO\] workers' metrics in (\S+)")
IMAGES_TOTAL = re.compile(r"^altcap_images_total\{[^}]*\} (\S+)$", re.MULTILINE)


class Gunicorn:
    """A gunicorn master started as a subprocess; logs go to files (pipes could fill up)."""

    def __init__(self, model_dir: Path, tmp: Path) -> None:
        if importlib.util.find_spec("gunicorn") is None:
            pytest.fail(
                f"gunicorn is not installed for {sys.executable}: "
                "pip install -r requirements.txt (it is a runtime dependency)"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALTCAP_")}
        env.pop("PORT", None)
        env.pop("GUNICORN_CMD_ARGS", None)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes one of its own
        env.update(
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            ALTCAP_MODEL=str(model_dir),
            ALTCAP_DEVICE="cpu",
            ALTCAP_DATA_DIR=str(tmp / "data"),  # the default cache: SQLite, shared by workers
            ALTCAP_WORKERS=str(WORKERS),
            ALTCAP_THREADS="8",
        )
        self.stdout_path, self.stderr_path = tmp / "access.log", tmp / "error.log"
        self._stdout = self.stdout_path.open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "--bind",
                "127.0.0.1:0",  # the kernel picks a free port; gunicorn logs which
                "app:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._stdout,
            stderr=self._stderr,
        )
        self.port = 0

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Until every worker has loaded its model; then /readyz must answer 200."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            log = self.log()
            if not self.port and (m := LISTENING.search(log)):
                self.port = int(m.group(1))
            if self.port and len(set(LOADED.findall(log))) >= WORKERS:
                status, _, body = self.request("GET", "/readyz")
                assert status == 200, body
                return
            time.sleep(0.2)
        pytest.fail(f"gunicorn was not ready within {READY_TIMEOUT_S} s:\n{self.log()}")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post_json(self, payload: object) -> tuple[int, dict]:
        body = json.dumps(payload).encode()
        status, _, raw = self.request(
            "POST", "/v1/captions", body, {"Content-Type": "application/json"}
        )
        return status, json.loads(raw)

    def stop(self) -> int:
        """SIGTERM, as a platform sends it; the return code (killed if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(GRACEFUL_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stdout.close()
        self._stderr.close()
        return self.proc.returncode


def print_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """gunicorn's view of gunicorn.conf.py (reads the config only: no app, no model)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALTCAP_")}
    base.pop("PORT", None)
    base.pop("GUNICORN_CMD_ARGS", None)
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
    cmd += ["--print-config", *args, "app:create_app()"]
    return subprocess.run(
        cmd, cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def config_values(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines())}


def test_config_defaults_and_environment():
    defaults = config_values(print_config({}).stdout)
    assert defaults["bind"] == "['127.0.0.1:8000']"  # loopback unless told otherwise
    assert defaults["workers"] == "1"
    assert defaults["threads"] == "32"
    assert defaults["worker_class"] == "gthread"
    assert defaults["preload_app"] == "False"
    env = {"PORT": "5055", "ALTCAP_WORKERS": "3", "ALTCAP_THREADS": "16"}
    values = config_values(print_config(env).stdout)
    assert values["bind"] == "['0.0.0.0:5055']"  # the Procfile platforms' convention
    assert (values["workers"], values["threads"]) == ("3", "16")
    explicit = config_values(print_config(env, "--bind", "127.0.0.1:9000").stdout)
    assert explicit["bind"] == "['127.0.0.1:9000']"  # the command line wins


def test_bad_worker_count_stops_gunicorn_with_a_clear_message():
    result = print_config({"ALTCAP_WORKERS": "two"})
    assert result.returncode != 0
    assert "ALTCAP_WORKERS='two' is not valid: expected a positive integer" in result.stderr


QUIT_WHILE_SUBMITTING = """
import runpy, signal
from gunicorn.workers.gthread import ThreadWorker
from concurrent.futures import ThreadPoolExecutor

worker = ThreadWorker.__new__(ThreadWorker)  # just what the handlers touch
worker.tpool, worker.alive = ThreadPoolExecutor(2), True
runpy.run_path("gunicorn.conf.py")["post_worker_init"](worker)
with worker.tpool._shutdown_lock:  # the main thread inside tpool.submit() as a signal lands
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        signal.getsignal(sig)(sig, None)
print("returned", worker.alive)
"""


def test_a_stop_signal_during_a_submit_does_not_hang_the_worker():
    """gthread's own quit handler shuts the thread pool down inside the signal handler and
    waits for the pool's lock, which the interrupted submit() holds: a worker hung for good
    (python/cpython#121649). gunicorn.conf.py's handlers only clear ``alive`` (SIGTERM's
    graceful shutdown is then tested for real by test_sigterm_stops_cleanly)."""
    result = subprocess.run(
        [sys.executable, "-c", QUIT_WHILE_SUBMITTING],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,  # it returns in well under a second; gunicorn's own handler never does
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "returned False"  # it returned, and the worker stops


def test_procfile_runs_gunicorn_with_this_config():
    (line,) = [x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:")]
    assert "gunicorn -c gunicorn.conf.py" in line
    assert "--bind 0.0.0.0:$PORT" in line
    assert '"app:create_app()"' in line


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    srv = Gunicorn(tiny_dir, tmp_path_factory.mktemp("gunicorn"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def distinct_png(i: int) -> bytes:
    """A different image for each i, so the caption cache never answers for the model."""
    return png_bytes(color=(i * 37 % 256, i * 91 % 256, i * 53 % 256), size=(40 + i % 7, 30))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_workers_forked_and_master_has_no_model(server):
    log = server.log()
    workers = set(re.findall(r"Booting worker with pid: (\d+)", log))
    assert len(workers) == WORKERS, log
    assert set(LOADED.findall(log)) == workers  # each worker loaded its own model
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if maps.exists():  # Linux: torch (and so CUDA) was never even imported by the master
        assert "libtorch" not in maps.read_text()


def test_json_base64_results_in_order(server):
    images = [distinct_png(i) for i in range(3)]
    status, body = server.post_json({"images": [{"data": b64(im)} for im in images]})
    assert status == 200, body
    results = body["results"]
    assert [r["source"]["sha256"] for r in results] == [
        hashlib.sha256(im).hexdigest() for im in images
    ]
    for r in results:
        assert r["caption"].endswith("."), r
        assert r["tokens"] >= 1


def test_cache_is_shared_between_workers(server):
    image = {"data": b64(distinct_png(100))}
    first = [server.post_json({"images": [image]})[1]["results"][0] for _ in range(4)]
    assert first[0]["cached"] is False
    # Later requests may land on either worker: both read the one SQLite cache.
    assert all(r["cached"] is True for r in first[1:]), first
    assert len({r["caption"] for r in first}) == 1


def test_multipart_upload(server):
    boundary = uuid.uuid4().hex
    parts = []
    for i, name in enumerate(["a.png", "b.png"]):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + distinct_png(10 + i)
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, _, raw = server.request(
        "POST",
        "/v1/captions",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200, raw
    results = json.loads(raw)["results"]
    assert [r["source"]["filename"] for r in results] == ["a.png", "b.png"]
    assert all(r["caption"].endswith(".") for r in results)


def test_bad_image_among_good_ones(server):
    images = [distinct_png(20), b"this is not an image", distinct_png(21)]
    status, body = server.post_json({"images": [{"data": b64(im)} for im in images]})
    assert status == 200, body
    good, bad, good2 = body["results"]
    assert good["caption"].endswith(".") and good2["caption"].endswith(".")
    assert bad["error"]["code"] == "not_an_image"
    assert "caption" not in bad


def test_malformed_request_is_a_json_400(server):
    status, headers, raw = server.request(
        "POST", "/v1/captions", b"{not json", {"Content-Type": "application/json"}
    )
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw)["error"]["code"] == "invalid_request"


def test_long_url_reaches_the_app(server):
    """A 2,000-character URL, percent-encoded to ~6,000, gets AltCap's JSON, not a bare 400."""
    url = "http://127.0.0.1:9/" + "\u00e9" * 1000  # loopback: refused by the SSRF guard
    path = "/v1/captions?url=" + quote(url, safe="")
    assert len(path) > 4094  # gunicorn's default request-line limit
    status, headers, raw = server.request("GET", path)
    assert headers["Content-Type"].startswith("application/json"), raw[:200]
    assert (status, json.loads(raw)["error"]["code"]) == (403, "blocked_address")


def test_healthz_and_metrics(server):
    status, _, raw = server.request("GET", "/healthz")
    assert status == 200 and json.loads(raw) == {"status": "ok"}
    status, headers, raw = server.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = raw.decode()
    for name in ("altcap_http_requests_total", "altcap_model_ready 1.0", "altcap_queue_depth"):
        assert name in text


def images_answered(server: Gunicorn) -> float:
    """altcap_images_total over its outcomes, from one scrape on a new connection (any
    worker may accept it)."""
    status, _, raw = server.request("GET", "/metrics")
    assert status == 200, raw
    return sum(float(v) for v in IMAGES_TOTAL.findall(raw.decode()))


def test_metrics_add_up_every_worker(server):
    """Whichever worker takes the scrape, /metrics counts what all workers did: per-worker
    numbers would differ from scrape to scrape (read by Prometheus as counter resets)."""
    before = {images_answered(server) for _ in range(8)}
    assert len(before) == 1, before

    def caption(i: int) -> None:
        status, body = server.post_json({"images": [{"data": b64(distinct_png(500 + i))}]})
        assert status == 200, body

    with ThreadPoolExecutor(6) as pool:  # new connections, taken by either worker
        list(pool.map(caption, range(12)))
    after = [images_answered(server) for _ in range(8)]
    assert after == [before.pop() + 12] * 8
    # both workers write their values to the directory gunicorn.conf.py made for them
    files = os.listdir(METRICS_DIR.search(server.log()).group(1))
    workers = set(re.findall(r"Booting worker with pid: (\d+)", server.log()))
    assert {f"counter_{pid}.db" for pid in workers} <= set(files), files


def test_concurrent_requests_all_succeed(server):
    def caption(i: int) -> dict:
        status, body = server.post_json({"images": [{"data": b64(distinct_png(200 + i))}]})
        assert status == 200, body
        return body["results"][0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(caption, range(32)))
    assert all(r["caption"].endswith(".") and not r["cached"] for r in results), results


def test_sigterm_stops_cleanly(server):
    """Last: stops the module's server. Exit code 0, in time, and no traceback anywhere."""
    t0 = time.monotonic()
    code = server.stop()
    elapsed = time.monotonic() - t0
    log = server.log()
    assert code == 0, log
    assert elapsed < GRACEFUL_TIMEOUT_S, f"took {elapsed:.1f} s\n{log}"
    assert "Traceback" not in log, log
    assert "Shutting down: Master" in log
    assert log.count("Worker exiting") == WORKERS
    assert not Path(METRICS_DIR.search(log).group(1)).exists()  # removed by on_exit
    access = server.stdout_path.read_text()
    assert '"POST /v1/captions HTTP/1.1" 200' in access  # the access log format in use
