"""Test data builders shared by test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import functools
import io
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler


def png_bytes(color=(200, 30, 30), size=(64, 48), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_reference_parts(out: Path, mapping: str = "mlp", seed: int = 0):
    """What a user converting an authors' checkpoint has: the ``.pt`` state dict (reference key
    names, random weights), a CLIP vision model directory and a GPT-2 config + tokenizer dir.

    Returns (pt_path, vision_dir, lm_dir, original_model)."""
    import torch

    from captioner.model.tiny import tiny_tokenizer_and_model

    tokenizer, model = tiny_tokenizer_and_model(mapping, seed=seed)
    state = {}
    for key, t in model.state_dict().items():
        if key.startswith("lm."):
            state["gpt." + key.removeprefix("lm.")] = t.clone()
        elif key.startswith("mapper."):
            state["clip_project." + key.removeprefix("mapper.")] = t.clone()
    # old transformers versions saved the causal-mask buffer with GPT-2: must be ignored
    state["gpt.transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    out.mkdir(parents=True, exist_ok=True)
    pt = out / "weights.pt"
    torch.save(state, pt)
    vision_dir, lm_dir = out / "vision", out / "gpt2"
    model.vision.save_pretrained(vision_dir)
    model.lm.config.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    return pt, vision_dir, lm_dir, model


def wait_ready(base: str, timeout: float = 60.0) -> None:
    """Poll ``/readyz`` of a service at ``base`` until the model is loaded."""
    stop = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as err:  # 503 while the model loads
            if err.code != 503:
                raise
        assert time.monotonic() < stop, "the model did not load"
        time.sleep(0.05)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_handler(handler: Callable[..., BaseRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` with a threaded HTTP server on 127.0.0.1 (a free port); yields the
    base URL, and stops the server after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def serve_directory(root: Path) -> AbstractContextManager[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    return serve_handler(functools.partial(QuietHandler, directory=str(root)))


@contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve a Flask app with werkzeug's threaded server on 127.0.0.1 (a free port); yields
    its base URL once the model is loaded, and closes the app's state (engine, cache) after."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        wait_ready(base)
        yield base
    finally:
        server.shutdown()
        server.server_close()
        app.extensions["altcap"].close()


def tiny_service_app(model_dir: Path, data_dir: Path, **settings):
    """The real Flask app serving the tiny model, with the cache off (every request runs the
    model) and private networks allowed (test pages and images live on 127.0.0.1), and any
    other ``settings`` by name (``MIN_CONFIDENCE=0.999``).

    A developer's exported ALTCAP_* settings are kept out while the app reads its settings."""
    import pytest

    from app import create_app

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("ALTCAP_"):
                mp.delenv(name)
        return create_app(
            {
                "MODEL": str(model_dir),
                "DEVICE": "cpu",
                "DATA_DIR": data_dir,
                "CACHE_URL": "off",
                "ALLOW_PRIVATE_NETWORKS": True,
                **settings,
            }
        )


def assert_accessible(page, what: str) -> None:
    """No axe-core violations on ``page`` (a Playwright page): its WCAG 2 A/AA rules and best
    practices, as axe runs them by default; the report names each rule and element."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    assert results.violations_count == 0, f"{what}:\n{results.generate_report()}"
