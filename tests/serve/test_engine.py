"""The micro-batching engine, with the tiny model behind a spy that records every batch.

Timing is never guessed: a gate (``threading.Event``) holds the worker inside a batch while a
test fills the queue, so what gets batched together is decided by the test, not the scheduler.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import pytest
import torch
from helpers import png_bytes

from captioner import DecodingSettings
from captioner.errors import AltCapError, InvalidSettings, ModelNotFound
from captioner.images import load_image
from captioner.pipeline import CaptionResult
from captioner.serve.engine import (
    CaptionFuture,
    DeadlineExceeded,
    Engine,
    InternalError,
    ModelUnavailable,
    Overloaded,
)

TIMEOUT = 10.0  # generous: only reached when something is broken
COLOURS = [(200, 30, 30), (20, 160, 40), (30, 40, 220), (250, 250, 250), (0, 0, 0), (90, 90, 0)]
GREEDY = DecodingSettings(max_tokens=12)
BEAM = DecodingSettings(method="beam", beam_size=3, max_tokens=8)


class Spy:
    """Wraps a Captioner: records each batch; can hold a batch at a gate or make it fail."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[tuple[int, DecodingSettings]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def caption_pixels(self, pixels: torch.Tensor, settings: DecodingSettings | None = None):
        self.batches.append((pixels.shape[0], settings))
        self.entered.set()
        assert self.gate.wait(TIMEOUT), "the test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated device failure at 0xdeadbeef")
        return self.inner.caption_pixels(pixels, settings)

    def sizes(self) -> list[int]:
        return [n for n, _ in self.batches]


@pytest.fixture(scope="module")
def images():
    return [load_image(png_bytes(c, size=(40 + 9 * i, 48))) for i, c in enumerate(COLOURS)]


@pytest.fixture(scope="module")
def pixels(tiny_captioner, images) -> list[torch.Tensor]:
    return [tiny_captioner.preprocess([im])[0] for im in images]  # each (3, S, S)


@pytest.fixture
def spy(tiny_captioner) -> Spy:
    return Spy(tiny_captioner)


@pytest.fixture
def make_engine(spy) -> Callable[..., Engine]:
    engines: list[Engine] = []

    def make(**kwargs) -> Engine:
        engine = Engine(lambda: spy, **kwargs).start()
        assert engine.wait_ready(TIMEOUT)
        engines.append(engine)
        return engine

    yield make
    spy.gate.set()
    for engine in engines:
        assert engine.close(TIMEOUT)


def hold_worker(engine: Engine, spy: Spy, pixels: torch.Tensor) -> CaptionFuture:
    """Put the worker inside a one-item batch and keep it there until ``spy.gate.set()``."""
    spy.gate.clear()
    spy.entered.clear()
    blocker = engine.submit(pixels, GREEDY)
    assert spy.entered.wait(TIMEOUT)
    return blocker


def wait_until(condition: Callable[[], bool]) -> None:
    end = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.002)


def direct(captioner, images, settings) -> list[str]:
    return [r.raw for r in captioner.caption(images, settings)]


# --- batching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings", [GREEDY, BEAM, DecodingSettings(method="nucleus", seed=7, max_tokens=10)]
)
def test_batched_results_equal_direct_captions(
    make_engine, spy, tiny_captioner, images, pixels, settings
):
    engine = make_engine()
    expected = direct(tiny_captioner, images, settings)

    blocker = hold_worker(engine, spy, pixels[0])
    futures = [engine.submit(p, settings) for p in pixels]  # all wait, then go as one batch
    spy.gate.set()
    results = [f.result(TIMEOUT) for f in futures]

    blocker.result(TIMEOUT)
    assert spy.sizes() == [1, len(images)]
    assert [r.raw for r in results] == expected
    assert all(r.batch_size == len(images) and r.timings["queue_ms"] >= 0 for r in results)
    # the convenience path gives the same captions, in order
    out = engine.caption_images(images, settings, timeout_s=TIMEOUT)
    assert [r.raw for r in out] == expected


def test_concurrent_requests_share_a_batch(make_engine, spy, tiny_captioner, images, pixels):
    seen: list[tuple[int, float]] = []
    engine = make_engine(
        max_batch_size=16, max_wait_ms=5000, on_batch=lambda n, s: seen.append((n, s))
    )
    barrier = threading.Barrier(16)
    results: dict[int, str] = {}

    def client(i: int) -> None:
        barrier.wait(TIMEOUT)
        results[i] = engine.submit(pixels[i % len(pixels)], GREEDY).result(TIMEOUT).raw

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    # a full batch goes at once, without waiting out the 5 s max_wait_ms
    assert time.monotonic() - t0 < 4.0
    assert spy.sizes() == [16]
    assert [n for n, _ in seen] == [16] and seen[0][1] > 0
    expected = direct(tiny_captioner, images, GREEDY)
    assert [results[i] for i in range(16)] == [expected[i % len(images)] for i in range(16)]
    stats = engine.stats()
    assert (stats.batches, stats.items_done, stats.queue_depth) == (1, 16, 0)


def test_a_lone_request_waits_at_most_max_wait(make_engine, spy, pixels):
    engine = make_engine(max_wait_ms=100)
    t0 = time.monotonic()
    engine.submit(pixels[0], GREEDY).result(TIMEOUT)
    assert 0.1 <= time.monotonic() - t0 < TIMEOUT
    assert spy.sizes() == [1]


@pytest.mark.parametrize(
    ("max_batch_size", "sizes"),
    [(1, [1, 1, 1, 1, 1, 1, 1]), (4, [1, 4, 2])],  # 1: batching off (the benchmark baseline)
)
def test_max_batch_size_caps_batches(make_engine, spy, pixels, max_batch_size, sizes):
    engine = make_engine(max_batch_size=max_batch_size, max_wait_ms=50)
    blocker = hold_worker(engine, spy, pixels[0])
    futures = [engine.submit(p, GREEDY) for p in pixels]  # 6 queued
    spy.gate.set()
    got = [f.result(TIMEOUT).batch_size for f in [blocker, *futures]]
    assert spy.sizes() == sizes
    assert got == [n for n in sizes for _ in range(n)]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("ABABA", [(3, GREEDY), (2, BEAM)]),
        ("BAAB", [(2, BEAM), (2, GREEDY)]),  # the oldest item's settings go first
    ],
)
def test_different_settings_never_share_a_batch(
    make_engine, spy, tiny_captioner, images, pixels, order, expected
):
    engine = make_engine()
    blocker = hold_worker(engine, spy, pixels[0])
    by_name = {"A": GREEDY, "B": BEAM}
    futures = [engine.submit(pixels[i], by_name[c]) for i, c in enumerate(order)]
    spy.gate.set()
    got = [f.result(TIMEOUT).raw for f in futures]
    blocker.result(TIMEOUT)

    assert spy.batches[1:] == expected
    for i, c in enumerate(order):
        assert got[i] == direct(tiny_captioner, [images[i]], by_name[c])[0]


# --- overload and deadlines ---------------------------------------------------------------


def test_full_queue_is_refused_with_retry_after(make_engine, spy, pixels):
    engine = make_engine(max_queue=2)
    blocker = hold_worker(engine, spy, pixels[0])  # in flight: not counted in the queue
    queued = [engine.submit(pixels[1], GREEDY), engine.submit(pixels[2], GREEDY)]
    with pytest.raises(Overloaded) as info:
        engine.submit(pixels[3], GREEDY)
    err = info.value
    assert (err.code, err.http_status) == ("overloaded", 503)
    assert isinstance(err.retry_after, int) and err.retry_after >= 1
    assert err.to_dict()["code"] == "overloaded"
    assert engine.stats().items_rejected == 1 and engine.stats().queue_depth == 2

    spy.gate.set()
    for f in [blocker, *queued]:
        assert isinstance(f.result(TIMEOUT), CaptionResult)
    assert spy.sizes() == [1, 2]


def test_an_image_that_cannot_make_its_deadline_is_refused_at_once(make_engine, spy, pixels):
    """At the recent batch latency, an image that would be captioned after its request's
    deadline is refused now (503 overloaded, Retry-After from that latency), not failed at
    the deadline (504) after holding its client and a server thread for all that time."""
    engine = make_engine()
    blocker = hold_worker(engine, spy, pixels[0])
    time.sleep(0.3)  # the first batch takes >= 0.3 s: the engine's latency estimate
    spy.gate.set()
    blocker.result(TIMEOUT)
    hold_worker(engine, spy, pixels[1])  # the next batch is under way

    t0 = time.monotonic()
    with pytest.raises(Overloaded) as info:  # needs ~2 batches (>= 0.6 s); has 0.2 s
        engine.submit(pixels[2], GREEDY, timeout_s=0.2)
    assert time.monotonic() - t0 < 0.1
    assert "deadline" in info.value.message and info.value.retry_after >= 1
    assert engine.stats().items_rejected == 1
    fine = engine.submit(pixels[3], GREEDY, timeout_s=TIMEOUT)  # time enough: queued
    spy.gate.set()
    assert isinstance(fine.result(TIMEOUT), CaptionResult)


def test_expired_items_are_failed_and_never_computed(make_engine, spy, pixels):
    engine = make_engine()
    blocker = hold_worker(engine, spy, pixels[0])
    short = engine.submit(pixels[1], GREEDY, timeout_s=0.05)
    long = engine.submit(pixels[2], GREEDY, timeout_s=TIMEOUT)
    time.sleep(0.1)  # the short deadline passes while the worker is held
    spy.gate.set()

    assert isinstance(long.result(TIMEOUT), CaptionResult)
    err = short.exception(TIMEOUT)  # set by the worker (exception() does not apply deadlines)
    assert isinstance(err, DeadlineExceeded)
    assert (err.code, err.http_status) == ("deadline_exceeded", 504)
    blocker.result(TIMEOUT)
    assert spy.sizes() == [1, 1]  # the expired item was not in the second batch
    assert engine.stats().items_expired == 1


def test_expired_items_free_their_queue_slots(make_engine, spy, pixels):
    engine = make_engine(max_queue=1)
    hold_worker(engine, spy, pixels[0])
    dead = engine.submit(pixels[1], GREEDY, timeout_s=0.05)
    time.sleep(0.1)
    live = engine.submit(pixels[2], GREEDY)  # the dead item makes room instead of Overloaded
    assert isinstance(dead.exception(TIMEOUT), DeadlineExceeded)
    spy.gate.set()
    assert isinstance(live.result(TIMEOUT), CaptionResult)
    assert spy.sizes() == [1, 1]


def test_a_waiting_caller_gets_deadline_exceeded_at_its_deadline(make_engine, spy, pixels):
    engine = make_engine()
    hold_worker(engine, spy, pixels[0])
    fut = engine.submit(pixels[1], GREEDY, timeout_s=0.1)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        fut.result()  # no timeout given: the deadline still bounds the wait
    assert time.monotonic() - t0 < TIMEOUT / 2
    assert info.value.code == "deadline_exceeded"
    with pytest.raises(DeadlineExceeded):
        fut.result(TIMEOUT)  # asking again gives the same answer
    assert not spy.gate.is_set()  # the worker was still held: the caller did not wait for it
    with pytest.raises(DeadlineExceeded):
        engine.submit(pixels[2], GREEDY, timeout_s=0)  # already expired: refused at once

    spy.gate.set()
    assert isinstance(engine.submit(pixels[2], GREEDY).result(TIMEOUT), CaptionResult)
    assert spy.sizes() == [1, 1]  # the expired item never reached the model


# --- loading ------------------------------------------------------------------------------


def test_model_loads_in_the_worker_thread_and_ready_follows(spy, pixels):
    release = threading.Event()
    loaded_in: list[threading.Thread] = []

    def loader():
        loaded_in.append(threading.current_thread())
        assert release.wait(TIMEOUT)
        return spy

    engine = Engine(loader)
    with pytest.raises(ModelUnavailable, match="not started"):
        engine.submit(pixels[0])
    engine.start()
    try:
        assert not engine.ready and not engine.stats().ready
        with pytest.raises(ModelUnavailable, match="loading") as info:
            engine.submit(pixels[0])
        assert (info.value.code, info.value.http_status) == ("model_unavailable", 503)
        assert not engine.wait_ready(0.01)

        release.set()
        assert engine.wait_ready(TIMEOUT) and engine.ready
        assert loaded_in[0] is not threading.main_thread()
        assert loaded_in[0].name == "altcap-engine"
        assert isinstance(engine.submit(pixels[0]).result(TIMEOUT), CaptionResult)
    finally:
        release.set()
        assert engine.close(TIMEOUT)


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("no weights in /models/x"), ModelNotFound("no weights in /models/x")],
)
def test_load_failure_is_kept_and_reported(pixels, exc):
    def loader():
        raise exc

    engine = Engine(loader).start()
    assert engine.wait_ready(TIMEOUT) is False
    assert not engine.ready
    assert isinstance(engine.load_error, AltCapError)
    assert "no weights in /models/x" in engine.load_error.message
    if isinstance(exc, AltCapError):
        assert engine.load_error is exc
    with pytest.raises(ModelUnavailable, match="no weights in /models/x") as info:
        engine.submit(pixels[0])
    assert info.value.code == "model_unavailable"
    assert "no weights" in engine.stats().load_error
    assert engine.close(TIMEOUT)


# --- failures and shutdown ----------------------------------------------------------------


def test_a_failing_batch_fails_only_its_own_items(make_engine, spy, pixels, caplog):
    engine = make_engine()
    spy.fail_next = True
    with caplog.at_level(logging.ERROR, logger="captioner.serve.engine"):
        doomed = hold_worker(engine, spy, pixels[0])
        others = [engine.submit(pixels[1], GREEDY), engine.submit(pixels[2], GREEDY)]
        spy.gate.set()
        err = doomed.exception(TIMEOUT)
        for f in others:
            assert isinstance(f.result(TIMEOUT), CaptionResult)

    assert isinstance(err, InternalError)
    assert (err.code, err.http_status) == ("internal_error", 500)
    assert "Traceback" not in err.message and "0xdeadbeef" not in err.message
    assert any(r.exc_info and "0xdeadbeef" in str(r.exc_info[1]) for r in caplog.records)
    stats = engine.stats()
    assert (stats.batches, stats.items_failed, stats.items_done) == (2, 1, 2)
    assert isinstance(engine.submit(pixels[3]).result(TIMEOUT), CaptionResult)


def test_a_failing_on_batch_hook_does_not_stop_the_worker(make_engine, pixels):
    def hook(size: int, seconds: float) -> None:
        raise ValueError("metrics backend down")

    engine = make_engine(on_batch=hook)
    for p in pixels[:2]:
        assert isinstance(engine.submit(p).result(TIMEOUT), CaptionResult)


def test_close_finishes_the_batch_in_flight_and_fails_the_queue(make_engine, spy, pixels):
    engine = make_engine()
    in_flight = hold_worker(engine, spy, pixels[0])
    queued = [engine.submit(p, GREEDY) for p in pixels[1:4]]
    closed: list[bool] = []
    closer = threading.Thread(target=lambda: closed.append(engine.close(TIMEOUT)))
    closer.start()

    for f in queued:  # failed at once, while the batch in flight is still held
        err = f.exception(TIMEOUT)
        assert isinstance(err, ModelUnavailable) and "shutting down" in err.message
    assert not in_flight.done()
    assert not engine.ready
    with pytest.raises(ModelUnavailable, match="shutting down"):
        engine.submit(pixels[0])

    spy.gate.set()
    closer.join(TIMEOUT)
    assert closed == [True]
    assert isinstance(in_flight.result(TIMEOUT), CaptionResult)
    assert spy.sizes() == [1]  # queued items were never computed
    assert not any(t.name == "altcap-engine" and t.is_alive() for t in threading.enumerate())


def test_close_when_idle_is_quick(make_engine):
    engine = make_engine()
    t0 = time.monotonic()
    assert engine.close(TIMEOUT)
    assert time.monotonic() - t0 < 1.0
    assert engine.close(TIMEOUT)  # twice is fine


# --- the convenience call, validation, stats ----------------------------------------------


def test_caption_images_keeps_order_with_errors_in_place(
    make_engine, spy, tiny_captioner, images, pixels
):
    engine = make_engine(max_queue=2)
    hold_worker(engine, spy, pixels[0])
    out: list[list] = []
    caller = threading.Thread(
        target=lambda: out.append(engine.caption_images(images[:4], GREEDY, timeout_s=TIMEOUT))
    )
    caller.start()
    wait_until(lambda: engine.stats().items_rejected == 2)  # 2 queued, 2 refused
    spy.gate.set()
    caller.join(TIMEOUT)

    (results,) = out
    expected = direct(tiny_captioner, images[:2], GREEDY)
    assert [r.raw for r in results[:2]] == expected
    assert [type(r) for r in results[2:]] == [Overloaded, Overloaded]


def test_caption_images_reports_deadline_per_image(make_engine, spy, images, pixels):
    engine = make_engine()
    hold_worker(engine, spy, pixels[0])
    results = engine.caption_images(images[:3], GREEDY, timeout_s=0.1)
    assert [type(r) for r in results] == [DeadlineExceeded] * 3


def test_caption_images_without_a_deadline_waits(make_engine, tiny_captioner, images):
    engine = make_engine()  # no timeout: the future waits as long as it takes (was OverflowError)
    results = engine.caption_images(images[:2], GREEDY)
    assert [r.raw for r in results] == direct(tiny_captioner, images[:2], GREEDY)


def test_bad_requests_are_refused_in_the_caller(make_engine, spy, pixels):
    engine = make_engine()
    with pytest.raises(InvalidSettings):
        engine.submit(pixels[0], DecodingSettings(max_tokens=0))
    with pytest.raises(InvalidSettings):
        engine.caption_images([], DecodingSettings(method="sideways"))
    with pytest.raises(ValueError, match="shape"):
        engine.submit(pixels[0][None])  # (1, 3, S, S): one image at a time
    assert engine.stats().queue_depth == 0 and spy.batches == []
    with pytest.raises(ValueError):
        Engine(lambda: spy, max_batch_size=0)


def test_stats_for_metrics(make_engine, tiny_captioner, pixels):
    engine = make_engine(max_batch_size=4, max_wait_ms=1)
    engine.submit(pixels[0]).result(TIMEOUT)
    stats = engine.stats()
    assert stats.ready and stats.model_id == tiny_captioner.model_id
    assert stats.settings_default == tiny_captioner.default_settings.to_dict()
    assert (stats.max_batch_size, stats.max_wait_ms, stats.max_queue) == (4, 1.0, 256)
    assert (stats.batches, stats.items_done, stats.items_failed, stats.items_expired) == (
        1,
        1,
        0,
        0,
    )
    assert stats.load_error is None
    json.dumps(stats.to_dict())
