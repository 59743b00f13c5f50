"""Headless Chromium (Debian's ``chromium``) with an unpacked copy of the extension, driven
by Playwright: what the extension's Chromium tests share."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from extension_site import TIMEOUT_MS, wait_until
from playwright.sync_api import BrowserContext, Page, Worker, sync_playwright


@dataclass
class Browser:
    context: BrowserContext
    extension_id: str
    errors: list[str]  # uncaught errors on the pages opened with open_page()

    @property
    def worker(self) -> Worker:
        workers = [w for w in self.context.service_workers if self.extension_id in w.url]
        if workers:
            return workers[0]
        return self.context.wait_for_event("serviceworker", timeout=TIMEOUT_MS)

    def url(self, page: str) -> str:
        return f"chrome-extension://{self.extension_id}/{page}"

    def open_page(self, url: str) -> Page:
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.goto(url)
        return page

    def settings(self) -> dict[str, Any]:
        """The stored settings: storage.sync's, and the consent from storage.local."""
        return self.worker.evaluate(
            "Promise.all([chrome.storage.sync.get(null), chrome.storage.local.get(null)])"
            ".then(([synced, local]) => ({...synced, ...local}))"
        )

    def tab_id(self, url: str) -> int:
        tabs = self.worker.evaluate("chrome.tabs.query({})")
        ids = [t["id"] for t in tabs if t.get("url") == url]
        assert len(ids) == 1, tabs
        return ids[0]


@contextmanager
def launch(extension: Path, profile: Path) -> Iterator[Browser]:
    """A fresh Chromium profile at ``profile`` with ``extension`` installed (not yet agreed
    to); closed on leaving."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is missing (Debian package `chromium`): `make test` installs it")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=profile,
            executable_path=executable,
            headless=True,
            args=[
                "--headless=new",
                f"--disable-extensions-except={extension}",
                f"--load-extension={extension}",
                "--no-sandbox",  # tests run as root in containers
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            workers = context.service_workers or [
                context.wait_for_event("serviceworker", timeout=TIMEOUT_MS)
            ]
            match = re.match(r"^chrome-extension://([a-p]{32})/", workers[0].url)
            assert match, workers[0].url
            # The install opens the options page by itself (that is where consent is given).
            # Wait for it to load: while it is loading, Chrome may send it to a tab a test
            # has just opened on the options page, interrupting that navigation.
            options_url = f"chrome-extension://{match.group(1)}/options.html"

            def options_page() -> list[Page]:
                workers[0].evaluate("0")  # lets Playwright take in the browser's events
                return [p for p in context.pages if p.url.startswith(options_url)]

            opened = wait_until(options_page, "the options page did not open at install")
            opened[0].wait_for_load_state()
            yield Browser(context, match.group(1), [])
        finally:
            context.close()
