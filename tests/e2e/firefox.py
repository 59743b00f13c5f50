"""Firefox driven over WebDriver BiDi, the W3C protocol it speaks natively.

Playwright drives only its own patched Firefox builds, which cannot be downloaded here;
Debian's ``firefox-esr`` needs no driver at all: started with ``--remote-debugging-port``
it listens for BiDi on a WebSocket, and a few commands (install an extension, open a tab,
load a page, evaluate a script) are all the extension's tests need. Firefox applies its own
recommended automation preferences (no first-run pages, no updates, no telemetry) when the
remote agent starts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")


class BidiError(RuntimeError):
    """A command Firefox answered with an error, or a script that threw."""


def firefox_executable() -> str | None:
    return shutil.which("firefox-esr") or shutil.which("firefox")


class Firefox:
    """A headless Firefox with a fresh profile, and one BiDi session to it."""

    def __init__(self, executable: str, profile: Path, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *(executable, "--headless", "--no-remote", "--profile", str(profile)),
                "--remote-debugging-port=0",  # a free port, which Firefox prints
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one log: its console lines and its errors
            text=True,
            errors="replace",
        )
        self.log: list[str] = []  # Firefox's output, for failure messages
        self._url: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()  # a full pipe would block it
        deadline = time.monotonic() + timeout_s
        while not self._url:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BidiError(f"Firefox did not start its BiDi server:\n{self.output()}")
            time.sleep(0.05)
        self._connection = ExitStack()  # websockets wants connect() used as a context manager
        self._ws: ClientConnection = self._connection.enter_context(
            connect(self._url[0] + "/session", max_size=None, open_timeout=timeout_s)
        )
        self._id = 0
        self.send("session.new", {"capabilities": {}})

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            if not self._url and (m := LISTENING.search(line)):
                self._url.append(m.group(1))

    def output(self) -> str:
        """Its last lines of output."""
        return "\n".join(self.log[-60:])

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One command; its result (events, which nothing here subscribes to, are skipped)."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + self.timeout_s
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") != self._id:
                continue
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    def install_extension(self, path: Path) -> str:
        """Install an unpacked extension (temporarily, as about:debugging does); its id."""
        params = {"extensionData": {"type": "path", "path": str(path)}}
        return self.send("webExtension.install", params)["extension"]

    def new_tab(self) -> str:
        return self.send("browsingContext.create", {"type": "tab"})["context"]

    def navigate(self, context: str, url: str) -> None:
        """Load ``url`` and wait for its load event. (BiDi's own wait for it, ``"complete"``,
        sometimes never answered here, so the document's readyState is polled instead.)"""
        self.send("browsingContext.navigate", {"context": context, "url": url, "wait": "none"})
        deadline = time.monotonic() + self.timeout_s
        state = None
        while time.monotonic() < deadline:
            try:
                state = self.evaluate(context, "[location.href, document.readyState]")
            except BidiError:  # the old document is going away: ask the new one
                state = None
            if state == [url, "complete"]:
                return
            time.sleep(0.05)
        raise BidiError(f"{url} did not load within {self.timeout_s} s (last: {state})")

    def evaluate(self, context: str, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": context},
                "awaitPromise": True,
            },
        )
        if result["type"] == "exception":
            details = result["exceptionDetails"]
            raise BidiError(f"{expression}: {details.get('text')}")
        value = result["result"]
        return None if value["type"] == "undefined" else json.loads(value["value"])

    def close(self) -> None:
        try:
            if getattr(self, "_ws", None) is not None:
                with suppress(Exception):  # already gone: it is stopped below either way
                    self.send("browser.close")
                self._connection.close()
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
