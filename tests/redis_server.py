"""A throwaway ``redis-server`` for tests: real Redis on a free loopback port.

Tests of Redis code talk to a real server rather than a fake, so they catch what fakes
get wrong (TTL rounding, reconnects after a restart). The server keeps nothing on disk and
listens only on 127.0.0.1. A missing ``redis-server`` is an error, not a skip: a suite that
quietly skips its Redis tests would pass on a machine that cannot run them
(``make test`` installs it).

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        server.stop()   # simulate an outage
        server.start()  # same port again
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL_HINT = (
    "redis-server is not installed (needed by the Redis cache tests): "
    "run `make test`, which installs it, or `apt-get install -y redis-server`"
)


class RedisServerError(RuntimeError):
    """redis-server is missing or would not start."""


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """True if something on ``port`` answers a Redis PING (raw protocol, no client needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """Start/stop one ``redis-server``; a context manager that always stops it."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 10.0) -> None:
        self.port = port or free_port()
        # A port we picked may move if taken before the first start; after that, restarts
        # must reuse it so clients' URLs stay valid.
        self._may_move = port is None
        self.start_timeout_s = start_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="altcap-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return Path(self._tmp.name) / "redis.log"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError(INSTALL_HINT)
        if self._proc is not None:
            raise RedisServerError("this RedisServer is already running")
        # Rarely, another process grabs the port between free_port() and start: retry on
        # a new one when that is allowed.
        attempts = 3 if self._may_move else 1
        for attempt in range(attempts):
            if self._launch(binary):
                self._may_move = False
                return self
            if attempt + 1 < attempts:
                self.port = free_port()
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        raise RedisServerError(f"redis-server did not start on port {self.port}:\n{log}")

    def _launch(self, binary: str) -> bool:
        # redis-server writes its log to stdout when --logfile is ""; keep it for errors.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._tmp.name,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:  # exited: port taken, bad flag...
                self._proc = None
                return False
            if ping(self.port):
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the object can ``start()`` again."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
