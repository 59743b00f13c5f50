"""The service under real gunicorn: its configuration, two forked workers, a clean SIGTERM.

The configuration is ``captioner/web/gunicorn_conf.py``, read as a checkout reads it (the root
``gunicorn.conf.py``, which imports it) and as an installed package does
(``-c python:captioner.web.gunicorn_conf``, from a directory with no checkout in it).

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
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from gunicorn.config import Config
from gunicorn_server import (
    GRACEFUL_TIMEOUT_S,
    LISTENING,
    LOADED,
    READY_TIMEOUT_S,
    ROOT,
    Gunicorn,
)
from helpers import png_bytes

from captioner.web import gunicorn_conf

WORKERS = 2
METRICS_DIR = re.compile(r"\[INFO\] workers' metrics in (\S+)")
IMAGES_TOTAL = re.compile(r"^altcap_images_total\{[^}]*\} (\S+)$", re.MULTILINE)


# The command an installed AltCap runs (docs/deployment.md), from any directory.
PACKAGED_CONFIG = "python:captioner.web.gunicorn_conf"
PACKAGED_APP = "captioner.web.app:create_app()"


def gunicorn_env(**env: str) -> dict[str, str]:
    """This process's environment without the settings a test must not inherit."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALTCAP_")}
    for name in ("PORT", "GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR"):
        base.pop(name, None)
    return {**base, **env}


def package_only(tmp: Path) -> dict[str, str]:
    """A ``PYTHONPATH`` under which the checkout's ``captioner`` package can be imported and
    nothing else of the checkout (no app.py, gunicorn.conf.py or tests/), as after ``pip
    install``; the commands run in ``tmp``, not in the checkout."""
    site = tmp / "site"
    site.mkdir()
    (site / "captioner").symlink_to(ROOT / "captioner", target_is_directory=True)
    return {"PYTHONPATH": str(site)}


@pytest.fixture(params=["checkout", "installed"])
def print_config(request, tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """gunicorn's view of the configuration (reads it only: no app, no model), as a checkout
    names it (gunicorn.conf.py, from the root) or as an installed package does."""
    if request.param == "checkout":
        config, app, cwd, paths = "gunicorn.conf.py", "app:create_app()", ROOT, {}
    else:
        config, app, cwd, paths = PACKAGED_CONFIG, PACKAGED_APP, tmp_path, package_only(tmp_path)

    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "gunicorn", "-c", config, "--print-config", *args, app]
        return subprocess.run(
            cmd,
            cwd=cwd,
            env=gunicorn_env(**paths, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def config_values(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines())}


def test_config_defaults_and_environment(print_config):
    defaults = config_values(print_config({}).stdout)
    assert defaults["bind"] == "['127.0.0.1:8000']"  # loopback unless told otherwise
    assert defaults["workers"] == "1"
    assert defaults["threads"] == "36"
    assert defaults["worker_class"] == "gthread"
    assert defaults["preload_app"] == "False"
    env = {"PORT": "5055", "ALTCAP_WORKERS": "3", "ALTCAP_THREADS": "16"}
    values = config_values(print_config(env).stdout)
    assert values["bind"] == "['0.0.0.0:5055']"  # the Procfile platforms' convention
    assert (values["workers"], values["threads"]) == ("3", "16")
    explicit = config_values(print_config(env, "--bind", "127.0.0.1:9000").stdout)
    assert explicit["bind"] == "['127.0.0.1:9000']"  # the command line wins


def test_bad_worker_count_stops_gunicorn_with_a_clear_message(print_config):
    result = print_config({"ALTCAP_WORKERS": "two"})
    assert result.returncode != 0
    assert "ALTCAP_WORKERS='two' is not valid: expected a positive integer" in result.stderr


HOOKS = ("on_starting", "pre_fork", "post_fork", "post_worker_init", "worker_exit")
HOOKS += ("child_exit", "on_exit")


def test_the_checkout_config_is_the_packaged_one():
    """gunicorn.conf.py only imports captioner/web/gunicorn_conf.py: every setting and hook
    gunicorn takes from it is the packaged module's own object, and it adds none."""
    settings = Config().settings
    packaged = {k: v for k, v in vars(gunicorn_conf).items() if k in settings}
    checkout = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert {k for k in checkout if k in settings} == packaged.keys()
    assert all(checkout[k] is v for k, v in packaged.items())
    assert {"bind", "workers", "threads", "timeout", "preload_app", *HOOKS} <= packaged.keys()


QUIT_WHILE_SUBMITTING = """
import signal
from gunicorn.workers.gthread import ThreadWorker
from concurrent.futures import ThreadPoolExecutor
from captioner.web.gunicorn_conf import post_worker_init

worker = ThreadWorker.__new__(ThreadWorker)  # just what the handlers touch
worker.tpool, worker.alive = ThreadPoolExecutor(2), True
post_worker_init(worker)
with worker.tpool._shutdown_lock:  # the main thread inside tpool.submit() as a signal lands
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        signal.getsignal(sig)(sig, None)
print("returned", worker.alive)
"""


def test_a_stop_signal_during_a_submit_does_not_hang_the_worker():
    """gthread's own quit handler shuts the thread pool down inside the signal handler and
    waits for the pool's lock, which the interrupted submit() holds: a worker hung for good
    (python/cpython#121649). The configuration's handlers only clear ``alive`` (SIGTERM's
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


def test_the_deployment_docs_give_both_commands():
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert 'gunicorn -c gunicorn.conf.py --bind 0.0.0.0:$PORT "app:create_app()"' in docs
    assert f'gunicorn -c {PACKAGED_CONFIG} --bind 0.0.0.0:8000 "{PACKAGED_APP}"' in docs


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_an_installed_package_serves_with_its_packaged_config(tiny_dir, tmp_path):
    """As after ``pip install``: in a directory with no checkout, with only the ``captioner``
    package importable, ``gunicorn -c python:captioner.web.gunicorn_conf`` runs the packaged
    settings and hooks (on_starting's metrics directory, post_fork's logging, on_exit's
    clean-up) and the app answers /healthz, then /readyz once its model has loaded."""
    env = gunicorn_env(
        **package_only(tmp_path),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        ALTCAP_MODEL=str(tiny_dir),
        ALTCAP_DEVICE="cpu",
        ALTCAP_DATA_DIR=str(tmp_path / "data"),
        ALTCAP_THREADS="4",
    )
    probe = (
        "import importlib.util as u; print([u.find_spec(m) for m in ('app', 'gunicorn_server')])"
    )
    seen = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert seen.stdout.strip() == "[None, None]", seen  # nothing of the checkout but the package
    cmd = [sys.executable, "-m", "gunicorn", "-c", PACKAGED_CONFIG, "--bind", "127.0.0.1:0"]
    log_path = tmp_path / "error.log"
    with (tmp_path / "access.log").open("wb") as out, log_path.open("wb") as err:
        proc = subprocess.Popen([*cmd, PACKAGED_APP], cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        port, ready, deadline = 0, False, time.monotonic() + READY_TIMEOUT_S
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            log = log_path.read_text(errors="replace")
            if not port and (m := LISTENING.search(log)):
                port = int(m.group(1))
                status, body = get(port, "/healthz")
                assert (status, json.loads(body)) == (200, {"status": "ok"}), log
            ready = bool(port and LOADED.search(log))  # post_fork sent it to gunicorn's log
        log = log_path.read_text(errors="replace")
        assert ready, f"gunicorn exited with {proc.poll()} or was not ready in time:\n{log}"
        assert get(port, "/readyz")[0] == 200, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(GRACEFUL_TIMEOUT_S + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    log = log_path.read_text(errors="replace")
    assert code == 0 and "Traceback" not in log, log
    assert not Path(METRICS_DIR.search(log).group(1)).exists()  # made and removed by the hooks


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    srv = Gunicorn(tiny_dir, tmp_path_factory.mktemp("gunicorn"), workers=WORKERS)
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
        assert r["caption"].endswith((".", "…")), r
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
    assert all(r["caption"].endswith((".", "…")) for r in results)


def test_bad_image_among_good_ones(server):
    images = [distinct_png(20), b"this is not an image", distinct_png(21)]
    status, body = server.post_json({"images": [{"data": b64(im)} for im in images]})
    assert status == 200, body
    good, bad, good2 = body["results"]
    assert good["caption"].endswith((".", "…")) and good2["caption"].endswith((".", "…"))
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


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type read as strictly as Go's ``mime.ParseMediaType`` (which Prometheus
    uses): a repeated parameter, an empty name or a missing ``=`` is an error."""
    media_type, *parts = (part.strip() for part in value.split(";"))
    params: dict[str, str] = {}
    for part in parts:
        name, sep, param = part.partition("=")
        name = name.strip().lower()
        assert sep and name, f"malformed parameter {part!r} in {value!r}"
        assert name not in params, f"duplicate parameter {name!r} in {value!r}"
        params[name] = param.strip().strip('"')
    return media_type.lower(), params


def test_healthz_and_metrics(server):
    status, _, raw = server.request("GET", "/healthz")
    assert status == 200 and json.loads(raw) == {"status": "ok"}
    status, headers, raw = server.request("GET", "/metrics")
    assert status == 200
    media_type, params = parse_media_type(headers["Content-Type"])
    assert media_type == "text/plain" and params["charset"] == "utf-8", headers
    assert params["version"] in {"0.0.4", "1.0.0"}, headers
    text = raw.decode()
    for name in ("altcap_http_requests_total", "altcap_model_ready 1.0", "altcap_queue_depth"):
        assert name in text


def test_metrics_in_openmetrics_when_asked(server):
    """Prometheus asks for OpenMetrics first in its Accept header: that is what it gets."""
    accept = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5"
    status, headers, raw = server.request("GET", "/metrics", headers={"Accept": accept})
    assert status == 200
    media_type, params = parse_media_type(headers["Content-Type"])
    assert (media_type, params["charset"]) == ("application/openmetrics-text", "utf-8")
    assert raw.decode().endswith("# EOF\n")


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
    # both workers write their values to the directory on_starting made for them
    files = os.listdir(METRICS_DIR.search(server.log()).group(1))
    workers = set(re.findall(r"Booting worker with pid: (\d+)", server.log()))
    assert {f"counter_{pid}.db" for pid in workers} <= set(files), files


def test_concurrent_requests_all_succeed(server):
    """16 clients against 2 workers that take on 6 captioning requests each (8 threads, 2
    kept free): a request beyond that is refused at once with Retry-After, and a client
    that waits as told gets its caption."""
    refused: list[str] = []

    def caption(i: int) -> dict:
        payload = json.dumps({"images": [{"data": b64(distinct_png(200 + i))}]}).encode()
        for _ in range(50):
            status, headers, raw = server.request(
                "POST", "/v1/captions", payload, {"Content-Type": "application/json"}
            )
            body = json.loads(raw)
            if status != 503:
                break
            assert body["error"]["code"] == "overloaded", body
            refused.append(headers["Retry-After"])
            time.sleep(min(float(headers["Retry-After"]), 0.2))
        assert status == 200, body
        return body["results"][0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(caption, range(32)))
    assert all(r["caption"].endswith((".", "…")) and not r["cached"] for r in results), results
    assert all(int(seconds) >= 1 for seconds in refused), refused


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
