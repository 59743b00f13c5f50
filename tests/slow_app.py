"""The real app with a slow model, for gunicorn tests of a server whose model is busy.

``gunicorn "slow_app:create_app()"``: the tiny model from ``ALTCAP_MODEL``, each batch made
to take ``SLOW_APP_BATCH_S`` seconds more, as a full-size model on a busy CPU would, and its
loading ``SLOW_APP_LOAD_S`` seconds more, as a full-size model's does.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask

import app as altcap_app
from captioner.serve.settings import Settings


class SlowCaptioner:
    def __init__(self, inner: Any, batch_s: float) -> None:
        self.inner, self.batch_s = inner, batch_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def caption_pixels(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.batch_s)
        return self.inner.caption_pixels(*args, **kwargs)


def create_app() -> Flask:
    load = altcap_app.default_loader(Settings.load())
    batch_s = float(os.environ.get("SLOW_APP_BATCH_S", "0"))
    load_s = float(os.environ.get("SLOW_APP_LOAD_S", "0"))

    def slow_load() -> SlowCaptioner:
        time.sleep(load_s)
        return SlowCaptioner(load(), batch_s)

    return altcap_app.create_app({"LOADER": slow_load})
