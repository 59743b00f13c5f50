"""A real Prometheus scrapes a real gunicorn with two workers.

Debian's ``prometheus`` (installed by ``make test``) listens on a free loopback port and
scrapes ``/metrics`` every second. What the test checks is what an operator relies on: the
target is up with no scrape error (the Content-Type parses: Prometheus 3 refuses a repeated
``charset``), and the totals Prometheus stores are the requests the test sent, whichever of
the two workers answered them. A missing ``prometheus`` binary is an error, not a skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gunicorn_server import Gunicorn
from helpers import png_bytes
from redis_server import free_port

SCRAPE_INTERVAL_S = 1
SETTLE_TIMEOUT_S = 60  # Prometheus starting, then a few scrapes, on a busy 2-core machine
CAPTIONED = 10  # images the test sends (distinct: each is captioned, not cached)
REFUSED = 3  # malformed requests the test sends


class Prometheus:
    """One ``prometheus`` process with a throwaway data directory, scraping one target."""

    def __init__(self, target: str, tmp: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run `make test` (apt-get install prometheus)")
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
            "scrape_configs:\n"
            "  - job_name: altcap\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.port = free_port()
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> object:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def scalar(self, query: str) -> float | None:
        """The single value of an instant query, or None when it has no sample yet."""
        result = self.api("query", query=query)["result"]  # type: ignore[index]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_for(what: str, observe, expected, prometheus: Prometheus) -> object:
    """Poll ``observe()`` until it returns ``expected`` (None: anything truthy); fail with
    what it last saw and Prometheus' log."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = observe()
            if (last == expected) if expected is not None else last:
                return last
        except OSError as exc:  # Prometheus still starting
            last = exc
        time.sleep(0.5)
    log = prometheus.log_path.read_text(errors="replace")[-3000:]
    pytest.fail(f"{what}: not within {SETTLE_TIMEOUT_S} s (last: {last!r})\n{log}")


@pytest.fixture(scope="module")
def stack(tiny_dir, tmp_path_factory) -> Iterator[tuple[Gunicorn, Prometheus]]:
    server = Gunicorn(tiny_dir, tmp_path_factory.mktemp("gunicorn"), workers=2)
    prometheus = None
    try:
        server.wait_ready()
        prometheus = Prometheus(f"127.0.0.1:{server.port}", tmp_path_factory.mktemp("prom"))
        yield server, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()


def test_prometheus_scrapes_the_whole_server(stack) -> None:
    server, prometheus = stack

    def target_up() -> dict | None:
        targets = prometheus.api("targets")["activeTargets"]  # type: ignore[index]
        up = [t for t in targets if t["health"] == "up"]
        return up[0] if up else None

    target = wait_for("the AltCap target up", target_up, None, prometheus)
    assert target["lastError"] == "", target

    def caption(i: int) -> None:
        data = base64.b64encode(png_bytes((i * 20 % 256, 40, 200 - i))).decode()
        status, body = server.post_json({"images": [{"data": data}]})
        assert status == 200, body

    with ThreadPoolExecutor(4) as pool:  # new connections each: both workers take some
        list(pool.map(caption, range(CAPTIONED)))
    for _ in range(REFUSED):
        status, _, _ = server.request(
            "POST", "/v1/captions", b"{not json", {"Content-Type": "application/json"}
        )
        assert status == 400

    captioned = 'sum(altcap_images_total{job="altcap"})'
    refused = (
        'sum(altcap_http_requests_total{job="altcap",endpoint="/v1/captions",'
        'method="POST",status="400"})'
    )
    wait_for(
        "Prometheus storing the images captioned and the requests refused",
        lambda: (prometheus.scalar(captioned), prometheus.scalar(refused)),
        (CAPTIONED, REFUSED),
        prometheus,
    )
    assert prometheus.scalar('up{job="altcap"}') == 1
    assert prometheus.scalar('altcap_model_ready{job="altcap"}') == 1
    target = target_up()
    assert target is not None and target["lastError"] == "", target
