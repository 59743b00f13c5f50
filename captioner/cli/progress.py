"""Progress for long CLI runs: tqdm's bar on a terminal, plain lines anywhere else.

A bar is one line redrawn with carriage returns: in a log file (cron, CI) it says nothing
until the end. ``ProgressLines`` writes a line at a steady interval instead.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FIRST_PROGRESS_S", "PROGRESS_EVERY_S", "ProgressLines", "duration", "progress"]

PROGRESS_EVERY_S = 10.0  # a progress line this often when stderr is no terminal (cron, CI)
FIRST_PROGRESS_S = 2.0  # the first one this soon: a log shows at once that the run is alive


def progress(show: str, desc: str, unit: str, total: int | None = None) -> Any:
    """What shows a phase's progress (``update``, ``total``, a context manager): tqdm's bar
    on a terminal (``bars``), ``ProgressLines`` (``lines``), or nothing (``none``)."""
    if show == "lines":
        return ProgressLines(desc, unit, total)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=show == "none")


def duration(seconds: float) -> str:
    """``7 s``, ``4 min 40 s``, ``2 h 5 min``: what a person reads in a log."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min" if s % 3600 >= 60 else f"{s // 3600} h"


class ProgressLines:
    """Progress as plain lines, for a stderr that is no terminal (cron, CI, a log file), where
    a bar is one line redrawn with carriage returns that says nothing until the end.

    The calls of a tqdm bar (``update``, ``total``, a context manager). A thread writes a
    line ``first_s`` after the start and then every ``every_s``, whatever the work is doing
    (a long model batch included), and leaving writes the last one::

        images: 64/1000, 3.1 images/s, about 5 min left, 21 s so far
        images: 1000/1000 in 5 min 20 s, 3.1 images/s
    """

    def __init__(
        self,
        desc: str,
        unit: str,
        total: int | None = None,
        *,
        out: Any = None,
        every_s: float | None = None,
        first_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.unit, self.total = desc, unit, total
        self.n = 0
        self._out = out if out is not None else sys.stderr
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        waits = (
            FIRST_PROGRESS_S if first_s is None else first_s,
            PROGRESS_EVERY_S if every_s is None else every_s,
        )
        self._thread = threading.Thread(
            target=self._tick, args=waits, name="altcap-progress", daemon=True
        )
        self._thread.start()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n

    def line(self, final: bool = False) -> str:
        """The progress so far, in one line (``final``: the phase's last)."""
        with self._lock:
            n, total = self.n, self.total
        elapsed = self._clock() - self._start
        parts = [f"{self.desc}: {n}" if total is None else f"{self.desc}: {n}/{total}"]
        rate = n / elapsed if n and elapsed > 0 else None
        if final:
            parts[0] += f" in {duration(elapsed)}"
        if rate is not None:
            units = self.unit + "s"
            parts.append(f"{rate:.1f} {units}/s" if rate >= 1 else f"{rate * 60:.1f} {units}/min")
        if not final:
            if rate is not None and total is not None and total >= n:
                parts.append(f"about {duration((total - n) / rate)} left")
            parts.append(f"{duration(elapsed)} so far")
        return ", ".join(parts)

    def _write(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    def _tick(self, first_s: float, every_s: float) -> None:
        wait = first_s
        while not self._stop.wait(wait):
            self._write(self.line())
            wait = every_s

    def close(self, final: bool = True) -> None:
        """Stop the thread; write the last line unless the phase failed (``final`` false)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if final:
            self._write(self.line(final=True))

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(final=exc_type is None)
