"""What captions a job's images: the service's engine (shared with the HTTP API) or a
``Captioner`` of the worker's own; and huey, which carries the wake-up calls."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from captioner.config import DecodingSettings
from captioner.errors import AltCapError
from captioner.jobs.store import (
    is_redis_url,
)
from captioner.serve.engine import DeadlineExceeded, ModelUnavailable, Overloaded
from captioner.serve.settings import Settings

__all__ = [
    "ENGINE_TIMEOUT_S",
    "HUEY_NAME",
    "QUEUE_FILE",
    "CaptionBackend",
    "CaptionerBackend",
    "EngineBackend",
    "RetryLater",
    "make_huey",
]

if TYPE_CHECKING:
    from huey import Huey
    from PIL import Image

    from captioner.pipeline import Captioner, CaptionResult
    from captioner.serve.engine import Engine

QUEUE_FILE = "jobs-queue.sqlite3"


HUEY_NAME = "altcap"


ENGINE_TIMEOUT_S = 600.0  # the most a chunk waits for the service's engine


class RetryLater(Exception):
    """Not the chunk's fault (the model is loading, the engine is full or shutting down):
    give the chunk back and try again in a while."""


def make_huey(settings: Settings) -> Huey:
    """The queue: SQLite next to the job store, or the Redis of ``ALTCAP_QUEUE_URL``.

    Results are off: tasks return nothing, all state is in the job store.
    """
    from huey import RedisHuey, SqliteHuey

    if is_redis_url(settings.queue_url):
        return RedisHuey(HUEY_NAME, url=settings.queue_url.strip(), results=False, read_timeout=1)
    path = Path(settings.data_dir)
    path.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(HUEY_NAME, filename=str(path / QUEUE_FILE), results=False, timeout=30)


class CaptionBackend(Protocol):
    """What captions a chunk's decoded images: the service's engine, or a worker's model."""

    max_pixels: int

    def wait_ready(self, timeout: float) -> bool: ...

    def caption(
        self,
        images: Sequence[Image.Image],
        decoding: DecodingSettings,
        alts: Sequence[str | None] | None = None,
    ) -> list[CaptionResult | AltCapError]: ...


class EngineBackend:
    """Through the service's ``Engine``: job images share batches with API requests."""

    def __init__(self, engine: Engine, max_pixels: int) -> None:
        self.engine = engine
        self.max_pixels = max_pixels

    @property
    def language(self) -> str | None:
        """The captions' language tag once the model has loaded (else the consumer takes
        the model directory's, ``ModelIdentity.language``)."""
        captioner = self.engine.captioner
        return captioner.language if captioner is not None else None

    @property
    def can_score(self) -> bool:
        """Whether the loaded model has CLIP's text tower (confidence, alt checks)."""
        captioner = self.engine.captioner
        return captioner is not None and captioner.can_score

    def wait_ready(self, timeout: float) -> bool:
        return self.engine.wait_ready(timeout)

    def caption(
        self,
        images: Sequence[Image.Image],
        decoding: DecodingSettings,
        alts: Sequence[str | None] | None = None,
    ) -> list[CaptionResult | AltCapError]:
        """One result or error per image; ``alts``: an author's alt per image to check."""
        # A finite timeout: with none, Engine's futures wait on math.inf, which
        # Condition.wait refuses (OverflowError). A chunk waiting this long is retried.
        more = {"alts": list(alts)} if alts is not None else {}
        try:
            outcomes = self.engine.caption_images(
                images, decoding, timeout_s=ENGINE_TIMEOUT_S, **more
            )
        except AltCapError as exc:
            if _transient(exc):  # loading, shutting down, full: not the images' fault
                raise RetryLater(exc.message) from None
            return [exc] * len(images)
        for outcome in outcomes:
            if isinstance(outcome, AltCapError) and _transient(outcome):
                raise RetryLater(outcome.message)  # overloaded: the whole chunk again later
        return outcomes  # other errors (a model crash on an image) are that image's failed row


def _transient(error: AltCapError) -> bool:
    """Worth retrying the chunk for, without counting an attempt: the engine is busy,
    loading or stopping. Anything else, an ``InternalError`` (500) above all, is the image's
    own failure: retrying it without counting would loop forever on a poison image."""

    return isinstance(error, Overloaded | ModelUnavailable | DeadlineExceeded)


class CaptionerBackend:
    """A model of its own (``python -m captioner worker``), one batch at a time."""

    def __init__(self, captioner: Captioner) -> None:
        self.captioner = captioner
        self.max_pixels = captioner.max_pixels
        self.language = captioner.language  # the captions' (the alt's "Appears to say:")
        self._lock = threading.Lock()  # one batch at a time; downloads run beside it

    @property
    def can_score(self) -> bool:
        """Whether the model has CLIP's text tower (confidence, alt checks)."""
        return self.captioner.can_score

    def wait_ready(self, timeout: float) -> bool:
        return True

    def caption(
        self,
        images: Sequence[Image.Image],
        decoding: DecodingSettings,
        alts: Sequence[str | None] | None = None,
    ) -> list[CaptionResult | AltCapError]:
        """One result or error per image; ``alts``: an author's alt per image to check."""
        cap = self.captioner
        try:
            settings = cap.settings(decoding)
        except AltCapError as exc:  # e.g. max_tokens beyond this model's positions
            return [exc] * len(images)
        with self._lock:
            pixels = cap.preprocess(list(images))
            return list(cap.caption_pixels(pixels, settings, alts=alts))
