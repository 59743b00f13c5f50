"""Fixtures of the extension's browser tests: the real service, counting what reaches it,
and the test site (both on 127.0.0.1), and the copy of the extension they install."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from extension_site import (
    COMPONENT_IMAGES,
    COMPONENTS_PAGE,
    DRAWING_PAGE,
    DRAWING_SVG,
    FRAME_PAGE,
    IMAGES,
    PROBE_IMAGES,
    PROBE_PAGE,
    TEST_PAGE,
    Service,
    copy_extension,
    sha256_of_data,
)
from flask import request
from helpers import png_bytes, serve_app, serve_directory, tiny_service_app


@pytest.fixture(scope="module")
def service(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real service on 127.0.0.1 and a free port, with a log of every request."""
    app = tiny_service_app(tiny_dir, tmp_path_factory.mktemp("ext-data"))
    svc = Service("")  # its URL once it serves

    @app.before_request
    def log_request() -> None:
        with svc.lock:
            svc.requests.append(
                (request.method, request.path, request.headers.get("User-Agent", ""))
            )
        if request.method == "POST" and request.path == "/v1/captions":
            body = json.loads(request.get_data(cache=True) or b"{}")  # the view reads it again
            with svc.lock:
                svc.sent_urls += [i["url"] for i in body.get("images", []) if "url" in i]
                data = [i["data"] for i in body.get("images", []) if "data" in i]
                svc.sent_data += [d[:32] for d in data]
                svc.sent_sha256 += [sha256_of_data(d) for d in data]

    @app.after_request
    def log_captions(response: Any) -> Any:
        if request.method == "POST" and request.path == "/v1/captions":
            body = json.loads(request.get_data(cache=True) or b"{}")
            answer = response.get_json(silent=True) or {}
            pairs = zip(body.get("images", []), answer.get("results", []), strict=False)
            with svc.lock:
                for image, result in pairs:
                    if "url" in image and isinstance(result.get("caption"), str):
                        svc.captions[image["url"]] = result["caption"]
                        svc.results[image["url"]] = result
        return response

    with serve_app(app) as url:
        svc.url = url
        yield svc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test page and its images on 127.0.0.1; yields the page's URL."""
    root = tmp_path_factory.mktemp("ext-site")
    (root / "index.html").write_text(TEST_PAGE, encoding="utf-8")
    (root / "components.html").write_text(COMPONENTS_PAGE, encoding="utf-8")
    (root / "frame.html").write_text(FRAME_PAGE, encoding="utf-8")
    (root / "probe.html").write_text(PROBE_PAGE, encoding="utf-8")
    (root / "drawing.html").write_text(DRAWING_PAGE, encoding="utf-8")
    (root / "drawing.svg").write_text(DRAWING_SVG, encoding="utf-8")
    for name, colour in (IMAGES | COMPONENT_IMAGES | PROBE_IMAGES).items():
        (root / f"{name}.png").write_bytes(png_bytes(colour))
    with serve_directory(root) as base:
        yield f"{base}/index.html"


@pytest.fixture(scope="module")
def extension_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """extension/ with ``*://127.0.0.1/*`` granted at install (no dialog to click)."""
    return copy_extension(tmp_path_factory.mktemp("ext-copy") / "extension")
