"""Reading text beside the captioning: a few threads that read while the model decodes.

Tesseract releases the GIL while it recognises, so a reader thread runs on a core of its
own while torch runs the model batch; a result's text is usually ready by the time its
caption is. A failure or a timeout is one image's warning, never its caption's failure.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from PIL import Image

from captioner.errors import OcrError, OcrTimeout
from captioner.read.reader import Reading, TextReader

__all__ = ["TextOutcome", "TextPool"]

log = logging.getLogger(__name__)

TextOutcome = tuple[Reading | None, str | None]  # (the reading, None) or (None, warning code)


class TextPool:
    """``submit`` an image, ``outcome`` its reading later: at most ``threads`` at once."""

    def __init__(self, reader: TextReader, threads: int = 2, timeout_s: float = 2.0) -> None:
        self.reader = reader
        self.timeout_s = timeout_s
        threads = max(1, threads)
        # Each thread loads its own Tesseract (~0.2 s for eng) before it reads: all of them
        # now, in the background, so that no image's time budget pays for it.
        self._pool = ThreadPoolExecutor(threads, "altcap-ocr", initializer=reader.warm)
        barrier = threading.Barrier(threads)
        for _ in range(threads):
            self._pool.submit(barrier.wait, 60)

    @property
    def engine_id(self) -> str:
        return self.reader.engine_id

    def submit(self, image: Image.Image) -> Future[Reading]:
        started = time.monotonic()
        return self._pool.submit(self._read, image, started)

    def _read(self, image: Image.Image, started: float) -> Reading:
        left = self.timeout_s - (time.monotonic() - started)  # time queued counts
        if left <= 0:
            raise OcrTimeout("reading the text waited too long for a free reader")
        return self.reader.read(image, timeout_s=left)

    def outcome(self, future: Future[Reading], timeout_s: float | None = None) -> TextOutcome:
        """The reading, or ``(None, code)`` after logging why there is none."""
        wait = self.timeout_s + 0.5 if timeout_s is None else max(0.0, timeout_s)
        try:
            return future.result(timeout=wait), None
        except (FutureTimeout, OcrTimeout):
            future.cancel()
            log.warning("reading an image's text timed out after %.1f s", self.timeout_s)
            return None, OcrTimeout.code
        except OcrError as exc:
            log.warning("reading an image's text failed: %s", exc)
            return None, exc.code
        except Exception:  # never the caption's failure: logged with its traceback
            log.exception("reading an image's text failed")
            return None, OcrError.code

    def read(self, image: Image.Image) -> TextOutcome:
        """Read one image now (in this thread's turn in the pool)."""
        return self.outcome(self.submit(image))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
