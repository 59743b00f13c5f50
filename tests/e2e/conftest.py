"""Fixtures of the extension's browser tests: the real service, counting what reaches it,
and the test site (both on 127.0.0.1), and the copy of the extension they install."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
    log_requests,
)
from helpers import png_bytes, serve_app, serve_directory, tiny_service_app


@pytest.fixture(scope="module")
def service(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real service on 127.0.0.1 and a free port, with a log of every request.

    Every caption is believed (``MIN_CONFIDENCE`` 0): the tiny model's random weights score
    its captions as low as they deserve, and the extension writes nothing the server does not
    believe. These tests are about where descriptions go; test_extension_trust.py tests when
    they are believed, with the trained demo model."""
    app = tiny_service_app(tiny_dir, tmp_path_factory.mktemp("ext-data"), MIN_CONFIDENCE=0.0)
    svc = log_requests(app)  # its URL once it serves
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
