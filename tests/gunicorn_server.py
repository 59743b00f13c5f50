"""A real gunicorn master (gunicorn.conf.py, the tiny model) as a subprocess, for tests."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60  # two workers importing torch on two cores: ~10 s
GRACEFUL_TIMEOUT_S = 30  # as in gunicorn.conf.py
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
LOADED = re.compile(r"\[(\d+)\] \[INFO\] model .* loaded")


class Gunicorn:
    """A gunicorn master started as a subprocess; logs go to files (pipes could fill up)."""

    def __init__(
        self,
        model_dir: Path,
        tmp: Path,
        workers: int = 2,
        extra_env: dict[str, str] | None = None,
        app: str = "app:create_app()",
    ) -> None:
        self.workers = workers
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
            ALTCAP_WORKERS=str(workers),
            ALTCAP_THREADS="8",
        )
        env.update(extra_env or {})
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
                app,
            ],
            cwd=ROOT,
            env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
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
            if self.port and len(set(LOADED.findall(log))) >= self.workers:
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
