"""Request micro-batching: many concurrent requests, one model, few forward passes.

The HTTP service gets requests for one or a few images each, from many threads at once.
Decoding a batch of 16 costs little more than decoding one (on a GPU almost nothing more),
so requests that arrive within a few milliseconds of each other are captioned together.

One worker thread owns the model. It also *loads* it, so that under gunicorn the model is
built after the fork, inside the worker process, and CUDA never initialises in the master.
Callers put ``(pixels, settings, deadline)`` items on a bounded queue and wait on a future.
The worker takes the oldest item, gathers more with equal settings (different settings
cannot share a decoding loop) until ``max_batch_size`` is reached or ``max_wait_ms`` has
passed since that oldest item arrived, runs ``caption_pixels`` once and resolves the
futures. Items with other settings keep their place, so the oldest request always goes next.

Overload is refused early instead of queued forever: a full queue raises ``Overloaded``
(503 with a retry hint), and so does an image that, at the recent batch latency, would not
be captioned before its deadline (a busy CPU makes batches slow long before the queue
fills); an item whose deadline passes while it waits anyway is failed with
``DeadlineExceeded`` without spending any model time on it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from captioner.config import DecodingSettings
from captioner.errors import AltCapError, ModelError

if TYPE_CHECKING:
    from PIL import Image

    from captioner.pipeline import Captioner, CaptionResult

__all__ = [
    "CaptionFuture",
    "DeadlineExceeded",
    "Engine",
    "EngineStats",
    "InternalError",
    "ModelUnavailable",
    "Overloaded",
]

log = logging.getLogger(__name__)

_SHUTTING_DOWN = "the captioning engine is shutting down"


# --- errors -----------------------------------------------------------------------------


class Overloaded(AltCapError):
    """The queue is full. Refusing now is kinder than a request that waits for a minute."""

    code = "overloaded"
    http_status = 503

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))  # seconds, for a Retry-After header


class DeadlineExceeded(AltCapError):
    """The request's time budget ran out before its caption was ready.

    504, not 503: it tells clients and dashboards "this request waited too long" apart from
    "the queue is full right now" (``overloaded``), and it is how gRPC's DEADLINE_EXCEEDED
    maps to HTTP.
    """

    code = "deadline_exceeded"
    http_status = 504


class ModelUnavailable(ModelError):
    """No model to caption with: still loading, failed to load, or shutting down."""

    code = "model_unavailable"
    http_status = 503


class InternalError(AltCapError):
    """A bug or a device failure while captioning; the traceback goes to the log only."""

    code = "internal_error"
    http_status = 500


# --- futures, items, stats --------------------------------------------------------------


class CaptionFuture(Future["CaptionResult"]):
    """A ``Future`` that knows its request's deadline.

    ``result()`` never waits past the deadline: a caller still waiting then gets
    ``DeadlineExceeded``, the same error the worker gives an item it finds expired.
    """

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline  # time.monotonic() value; math.inf for none

    def result(self, timeout: float | None = None) -> CaptionResult:
        remaining = self.deadline - time.monotonic()
        capped = timeout is None or timeout >= remaining
        wait = max(0.0, remaining) if capped else timeout
        try:  # math.inf: no deadline, wait as long as it takes (Condition.wait rejects inf)
            return super().result(timeout=None if wait == math.inf else wait)
        except FutureTimeout:
            if capped:
                raise DeadlineExceeded("the caption was not ready before the deadline") from None
            raise


@dataclass(eq=False)
class _Item:
    pixels: torch.Tensor  # (3, S, S)
    settings: DecodingSettings
    deadline: float  # time.monotonic(); math.inf for none
    arrived: float  # time.monotonic() at submit
    future: CaptionFuture
    alt: str | None = None  # an author's alt to check against the image


@dataclass
class EngineStats:
    """A snapshot for /metrics. Counters are totals since the engine started."""

    ready: bool
    model_id: str
    settings_default: dict[str, Any]
    queue_depth: int  # items waiting now (not counting the batch being computed)
    max_queue: int
    max_batch_size: int
    max_wait_ms: float
    batches: int  # batches computed (failed ones included)
    items_done: int  # captions delivered
    items_failed: int  # failed by a batch error or by shutdown
    items_expired: int  # deadline passed (or cancelled) before being batched: never computed
    items_rejected: int  # refused with ``overloaded``
    load_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the engine -------------------------------------------------------------------------


class Engine:
    """Shares batches between concurrent requests; one worker thread owns the model.

    ``loader`` is called in the worker thread by ``start()``. ``max_batch_size=1`` turns
    batching off (every request alone), which is what the benchmark compares against.
    ``on_batch(size, seconds)`` is called after each computed batch (the API layer feeds a
    histogram with it); it runs in the worker thread, so it must be quick.
    """

    def __init__(
        self,
        loader: Callable[[], Captioner],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._loader = loader
        self.max_batch_size = max_batch_size
        self.max_wait_ms = float(max_wait_ms)
        self.max_queue = max_queue
        self.on_batch = on_batch

        self._cond = threading.Condition(threading.Lock())  # guards everything below
        self._pending: deque[_Item] = deque()  # FIFO by arrival
        self._closing = False
        self._thread: threading.Thread | None = None
        self._captioner: Captioner | None = None
        self._load_error: AltCapError | None = None
        self._loaded = threading.Event()  # set once loading succeeded or failed
        self._batch_s: float | None = None  # moving average of seconds per batch
        self._batches = self._done = self._failed = self._expired = self._rejected = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the worker thread; it loads the model, then serves the queue."""
        with self._cond:
            if self._thread is not None or self._closing:
                raise RuntimeError("an Engine can be started only once")
            self._thread = threading.Thread(target=self._run, name="altcap-engine", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop gracefully: the batch being computed finishes, queued items fail now.

        Returns whether the worker thread has exited within ``timeout`` seconds (it cannot
        be interrupted in the middle of loading the model or computing a batch).
        """
        with self._cond:
            self._closing = True
            drained = list(self._pending)
            self._pending.clear()
            self._failed += len(drained)
            self._cond.notify_all()
        for item in drained:
            _fail(item, ModelUnavailable(_SHUTTING_DOWN))
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def ready(self) -> bool:
        """True once the model is loaded, until ``close()``."""
        return self._captioner is not None and not self._closing

    @property
    def load_error(self) -> AltCapError | None:
        """Why loading failed (the loader's ``AltCapError``, or one wrapping its exception)."""
        return self._load_error

    @property
    def captioner(self) -> Captioner | None:
        """The loaded model, for preprocessing in the calling thread (None until loaded)."""
        return self._captioner

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until loading has finished, either way; return ``ready``."""
        self._loaded.wait(timeout)
        return self.ready

    # --- requests -----------------------------------------------------------------------

    def submit(
        self,
        pixels: torch.Tensor,
        settings: DecodingSettings | None = None,
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        alt: str | None = None,
    ) -> CaptionFuture:
        """Queue one preprocessed image (3, S, S); the future gives its ``CaptionResult``.

        ``alt``: an author's alt to check against the image in the same batch
        (``CaptionResult.alt_check``; models with CLIP's text tower).

        ``deadline`` is a ``time.monotonic()`` value, ``timeout_s`` one relative to now; with
        both the earlier wins, with neither the item never expires. Raises
        ``ModelUnavailable``, ``Overloaded``, ``DeadlineExceeded`` (already past) or
        ``InvalidSettings`` here, in the caller, rather than through the future.
        """
        captioner = self._require_model()
        settings = captioner.settings(settings)  # validated here, never inside a batch
        size = captioner.config.image_size
        if tuple(pixels.shape) != (3, size, size):
            raise ValueError(
                f"expected pixels of shape (3, {size}, {size}), got {tuple(pixels.shape)}"
            )
        now = time.monotonic()
        deadline = _deadline(now, timeout_s, deadline)
        if deadline <= now:
            raise DeadlineExceeded("the deadline had passed before the image was queued")
        item = _Item(pixels, settings, deadline, now, CaptionFuture(deadline), alt)

        expired: list[_Item] = []
        refusal: AltCapError | None = None
        with self._cond:
            if self._closing:
                refusal = ModelUnavailable(_SHUTTING_DOWN)
            else:
                if len(self._pending) >= self.max_queue:
                    self._sweep(now, expired)  # dead items should not keep live ones out
                if len(self._pending) >= self.max_queue:
                    self._rejected += 1
                    retry = self._retry_after()
                    refusal = Overloaded(
                        f"the captioning queue is full ({len(self._pending)} images waiting); "
                        f"retry in {retry} s",
                        retry_after=retry,
                    )
                elif now + self._expected_wait_s() > deadline:
                    self._rejected += 1
                    retry = self._retry_after()
                    refusal = Overloaded(
                        f"the model is busy ({len(self._pending)} images waiting): this image "
                        f"would not be captioned before the request's deadline; retry in "
                        f"{retry} s",
                        retry_after=retry,
                    )
                else:
                    self._pending.append(item)
                    self._cond.notify()
        _fail_expired(expired)
        if refusal is not None:
            raise refusal
        return item.future

    def caption_images(
        self,
        images: Sequence[Image.Image],
        settings: DecodingSettings | None = None,
        timeout_s: float | None = None,
        alts: Sequence[str | None] | None = None,
    ) -> list[CaptionResult | AltCapError]:
        """Caption decoded images, one result or typed error per image, in order; ``alts``
        (one per image, None for none) are checked against their images (``submit``).

        Each image is submitted on its own so it can share a batch with other requests.
        All are preprocessed before the first is submitted, so they reach the queue
        together. Raises only for the whole request: ``ModelUnavailable``, ``InvalidSettings``.
        """
        captioner = self._require_model()
        settings = captioner.settings(settings)
        deadline = _deadline(time.monotonic(), timeout_s, None)
        # Preprocess here, in the calling thread: the worker's time is for the model only.
        pixels = [captioner.preprocess([im])[0] for im in images]
        slots: list[CaptionFuture | AltCapError] = []
        for i, p in enumerate(pixels):
            alt = alts[i] if alts is not None else None
            try:
                slots.append(self.submit(p, settings, deadline=deadline, alt=alt))
            except AltCapError as e:
                slots.append(e)
        out: list[CaptionResult | AltCapError] = []
        for slot in slots:
            if isinstance(slot, AltCapError):
                out.append(slot)
                continue
            try:
                out.append(slot.result())
            except AltCapError as e:
                out.append(e)
        return out

    def stats(self) -> EngineStats:
        """A consistent snapshot of the counters, for /metrics and health checks."""
        with self._cond:
            cap = self._captioner
            return EngineStats(
                ready=cap is not None and not self._closing,
                model_id=cap.model_id if cap is not None else "",
                settings_default=cap.default_settings.to_dict() if cap is not None else {},
                queue_depth=len(self._pending),
                max_queue=self.max_queue,
                max_batch_size=self.max_batch_size,
                max_wait_ms=self.max_wait_ms,
                batches=self._batches,
                items_done=self._done,
                items_failed=self._failed,
                items_expired=self._expired,
                items_rejected=self._rejected,
                load_error=self._load_error.message if self._load_error is not None else None,
            )

    def _require_model(self) -> Captioner:
        if self._closing:
            raise ModelUnavailable(_SHUTTING_DOWN)
        captioner = self._captioner
        if captioner is not None:
            return captioner
        if self._load_error is not None:
            raise ModelUnavailable(f"the model could not be loaded: {self._load_error.message}")
        if self._thread is None:
            raise ModelUnavailable("the captioning engine was not started")
        raise ModelUnavailable("the model is still loading; retry shortly")

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained, from recent batch latency (>= 1)."""
        batches_ahead = math.ceil(len(self._pending) / self.max_batch_size) + 1
        return max(1, math.ceil(batches_ahead * (self._batch_s or 0.0)))

    def retry_after(self) -> int:
        """``Retry-After`` seconds for a client refused now: when the queue has likely
        drained, from recent batch latency (at least 1)."""
        with self._cond:
            return self._retry_after()

    def _expected_wait_s(self) -> float:
        """Seconds until one more image would be captioned: the batch being computed, the
        batches queued ahead of it and its own, at the recent latency (0 before any)."""
        batches = math.ceil((len(self._pending) + 1) / self.max_batch_size) + 1
        return batches * (self._batch_s or 0.0)

    # --- the worker thread --------------------------------------------------------------

    def _run(self) -> None:
        captioner = self._load()
        if captioner is None:
            return
        while (batch := self._next_batch()) is not None:
            self._compute(captioner, batch)

    def _load(self) -> Captioner | None:
        try:
            captioner = self._loader()
        except AltCapError as e:
            log.error("the model could not be loaded: %s: %s", e.code, e.message)
            self._load_error = e
        except Exception as e:
            log.exception("the model could not be loaded")
            self._load_error = ModelUnavailable(f"{type(e).__name__}: {e}")
        else:
            with self._cond:
                self._captioner = captioner
            log.info("model %r loaded", getattr(captioner, "model_id", ""))
            return captioner
        finally:
            self._loaded.set()
        return None

    def _next_batch(self) -> list[_Item] | None:
        """Block until a batch is ready: the oldest live item plus others with its settings."""
        while True:
            expired: list[_Item] = []
            batch: list[_Item] = []
            with self._cond:
                while not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait()
                first = self._pending.popleft()
                if self._claim(first, time.monotonic(), expired):
                    batch.append(first)
                    flush_at = first.arrived + self.max_wait_ms / 1e3
                    while len(batch) < self.max_batch_size:
                        self._gather(batch, time.monotonic(), expired)
                        remaining = flush_at - time.monotonic()
                        if len(batch) >= self.max_batch_size or self._closing or remaining <= 0:
                            break
                        self._cond.wait(remaining)  # woken by each submit
            _fail_expired(expired)
            if batch:
                return batch

    def _gather(self, batch: list[_Item], now: float, expired: list[_Item]) -> None:
        """Move queued items with the batch's settings into it; drop expired ones on the way."""
        settings = batch[0].settings
        keep: deque[_Item] = deque()
        for item in self._pending:
            wanted = len(batch) < self.max_batch_size and item.settings == settings
            if wanted or item.deadline <= now:
                if self._claim(item, now, expired):
                    batch.append(item)
            else:
                keep.append(item)
        self._pending = keep

    def _sweep(self, now: float, expired: list[_Item]) -> None:
        """Remove expired and cancelled items from the queue (caller holds the lock)."""
        keep: deque[_Item] = deque()
        for item in self._pending:
            if item.deadline <= now or item.future.cancelled():
                self._claim(item, now, expired)  # False: counted, and failed if expired
            else:
                keep.append(item)
        self._pending = keep

    def _claim(self, item: _Item, now: float, expired: list[_Item]) -> bool:
        """Take an item out of the queue for computing; False if it is expired or cancelled."""
        if item.deadline <= now:
            self._expired += 1
            expired.append(item)
            return False
        if not item.future.set_running_or_notify_cancel():
            self._expired += 1  # its caller cancelled it
            return False
        return True

    def _compute(self, captioner: Captioner, batch: list[_Item]) -> None:
        """Caption one batch and resolve its futures; a failure fails this batch only."""
        settings = batch[0].settings
        t0 = time.monotonic()
        results: list[CaptionResult] = []
        error: AltCapError | None = None
        internal = ""  # an unexpected failure: each future gets its own InternalError
        try:
            pixels = torch.stack([item.pixels for item in batch])  # (B, 3, S, S)
            alts = [item.alt for item in batch]
            if any(a is not None for a in alts):
                results = captioner.caption_pixels(pixels, settings, alts=alts)
            else:
                results = captioner.caption_pixels(pixels, settings)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} captions for a batch of {len(batch)}")
        except AltCapError as e:
            log.warning("a batch of %d failed: %s: %s", len(batch), e.code, e.message)
            error = e
        except Exception as e:
            log.exception("captioning a batch of %d images failed", len(batch))
            internal = f"captioning failed on the server ({type(e).__name__}); details were logged"
        seconds = time.monotonic() - t0
        with self._cond:
            self._batches += 1
            last = self._batch_s
            self._batch_s = seconds if last is None else 0.8 * last + 0.2 * seconds
            if error is None and not internal:
                self._done += len(batch)
            else:
                self._failed += len(batch)
        if error is not None or internal:
            for item in batch:
                item.future.set_exception(error or InternalError(internal))
        else:
            for item, result in zip(batch, results, strict=True):
                result.timings["queue_ms"] = round((t0 - item.arrived) * 1e3, 3)
                item.future.set_result(result)
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), seconds)
            except Exception:
                log.exception("the on_batch hook failed")


def _deadline(now: float, timeout_s: float | None, deadline: float | None) -> float:
    """The earlier of ``now + timeout_s`` and ``deadline``; ``math.inf`` when neither is set."""
    out = math.inf
    if timeout_s is not None:
        out = now + timeout_s
    if deadline is not None:
        out = min(out, deadline)
    return out


def _fail(item: _Item, error: AltCapError) -> None:
    if item.future.set_running_or_notify_cancel():  # False: cancelled, nobody is waiting
        item.future.set_exception(error)


def _fail_expired(items: list[_Item]) -> None:
    for item in items:
        _fail(item, DeadlineExceeded("the deadline passed while the image was queued"))
