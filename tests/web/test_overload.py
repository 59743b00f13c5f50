"""gunicorn workers under stress keep answering as a load balancer expects.

A worker whose model is busy refuses what it cannot take at once and answers /healthz at
once; a worker that replaces a dead one takes no traffic until its model has loaded.

One worker with 4 threads (so 2 captioning requests at once, ALTCAP_MAX_IN_FLIGHT's default
under gunicorn), a model whose every batch takes 1 s, a 3 s request deadline, and 10 clients
sending captions back to back: the server is overloaded five times over. Before AltCap
bounded the requests it takes on, every thread waited on the model, later requests waited
unseen in gunicorn's queue (no deadline, no queue bound: no 503), and /healthz with them.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time

import pytest
from gunicorn_server import LOADED, Gunicorn
from helpers import png_bytes

BATCH_S = 1.0
DEADLINE_S = 3.0
CLIENTS = 10
RUN_S = 8.0
SLACK_S = 1.5  # a loaded 2-core machine: scheduling, HTTP, JSON


@pytest.fixture(scope="module")
def busy_server(tiny_dir, tmp_path_factory):
    server = Gunicorn(
        tiny_dir,
        tmp_path_factory.mktemp("overload"),
        workers=1,
        extra_env={
            "ALTCAP_THREADS": "4",
            "ALTCAP_MAX_BATCH_SIZE": "1",
            "ALTCAP_REQUEST_TIMEOUT_S": str(DEADLINE_S),
            "ALTCAP_CACHE_URL": "off",
            "ALTCAP_JOB_WORKERS": "0",
            "SLOW_APP_BATCH_S": str(BATCH_S),
        },
        app="slow_app:create_app()",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_overload_is_refused_within_the_deadline_and_healthz_answers(busy_server) -> None:
    answers: list[tuple[int, float, str | None, str]] = []  # status, s, Retry-After, code
    health_s: list[float] = []
    stop = time.monotonic() + RUN_S
    lock = threading.Lock()

    def client(c: int) -> None:
        n = 0
        while time.monotonic() < stop:
            data = base64.b64encode(png_bytes((c * 20, n % 256, 90))).decode()
            payload = json.dumps({"images": [{"data": data}]}).encode()
            t0 = time.monotonic()
            status, headers, raw = busy_server.request(
                "POST", "/v1/captions", payload, {"Content-Type": "application/json"}
            )
            seconds = time.monotonic() - t0
            code = json.loads(raw)["error"]["code"] if status != 200 else ""
            with lock:
                answers.append((status, seconds, headers.get("Retry-After"), code))
            n += 1
            if status == 503:
                time.sleep(0.1)  # not as polite as Retry-After asks: keep the pressure on

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the clients have filled every slot
    while time.monotonic() < stop - 0.5:
        t0 = time.monotonic()
        status, _, _ = busy_server.request("GET", "/healthz")
        health_s.append(time.monotonic() - t0)
        assert status == 200
        time.sleep(0.2)
    for t in threads:
        t.join(DEADLINE_S + 10)

    ok = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 503]
    assert {(a[0], a[3]) for a in answers} <= {(200, ""), (503, "overloaded")}, [
        a for a in answers if a[0] != 503
    ]
    assert ok and refused, answers
    assert all(retry is not None and int(retry) >= 1 for _, _, retry, _ in refused), refused
    # every answer, captions and refusals alike, within the request's deadline
    assert max(seconds for _, seconds, _, _ in answers) < DEADLINE_S + SLACK_S, answers
    # refusals at once, not after a wait for the model
    assert sorted(seconds for _, seconds, _, _ in refused)[len(refused) // 2] < 0.5, refused
    assert max(health_s) < 0.5, health_s


# --- a worker reloading beside a ready one ---------------------------------------------------

LOAD_S = 4.0  # each worker's model takes this long to load (a full-size one: ~10 s)


@pytest.fixture(scope="module")
def two_workers(tiny_dir, tmp_path_factory):
    server = Gunicorn(
        tiny_dir,
        tmp_path_factory.mktemp("reload"),
        workers=2,
        extra_env={"SLOW_APP_LOAD_S": str(LOAD_S), "ALTCAP_JOB_WORKERS": "0"},
        app="slow_app:create_app()",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_a_reloading_worker_takes_no_traffic_while_the_other_is_ready(two_workers) -> None:
    """kill -9 one of two ready workers: while its replacement loads its model, /readyz and
    captions are answered by the other worker, never 503 model_unavailable; afterwards the
    replacement serves too."""
    server = two_workers
    pids = sorted(set(LOADED.findall(server.log())))
    os.kill(int(pids[0]), signal.SIGKILL)
    statuses: list[tuple[str, int]] = []
    data = base64.b64encode(png_bytes((1, 2, 3))).decode()
    payload = json.dumps({"images": [{"data": data}]}).encode()
    deadline = time.monotonic() + 90  # importing torch and loading, on a busy machine

    def replacement_loaded() -> bool:
        return len(set(LOADED.findall(server.log())) - set(pids)) == 1

    while not replacement_loaded():  # new connections: either worker may accept each
        assert time.monotonic() < deadline, server.log()
        statuses.append(("readyz", server.request("GET", "/readyz")[0]))
        status, _, _ = server.request(
            "POST", "/v1/captions", payload, {"Content-Type": "application/json"}
        )
        statuses.append(("caption", status))
    assert len(statuses) >= 10, statuses  # it took seconds: the other worker answered these
    assert {status for _, status in statuses} == {200}, [s for s in statuses if s[1] != 200]
    time.sleep(0.5)
    assert "replacing another, its model loaded: accepting" in server.log()
