"""Batch jobs with the trained demo model: author alts checked in the captioning's pass
(``suspect_alt``), captions that are not confident withheld (``low_confidence``) and left
out of patched pages unless the job asks (``include_low_confidence``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bs4 import BeautifulSoup
from redis_server import RedisServer
from testsite import RIGHT_ALT, SWAPPED_ALT, serve_site

from captioner.jobs.backends import CaptionerBackend
from captioner.jobs.consumer import start_consumer
from captioner.jobs.queue import JobQueue
from captioner.jobs.request import InvalidJob, parse_job
from captioner.jobs.rows import verdict_counts
from captioner.serve.cache import open_cache
from captioner.serve.settings import Settings

CIRCLE = "A red circle on a white background."
SQUARE = "A green square on a white background."


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with serve_site(tmp_path_factory.mktemp("site")) as site:
        yield site


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def queue_of(tmp_path: Path, demo_captioner) -> Iterator[Any]:
    made: list[JobQueue] = []

    def make(**overrides: Any) -> JobQueue:
        base = {
            "DATA_DIR": tmp_path / f"data{len(made)}",
            "ALLOW_PRIVATE_NETWORKS": True,
            "CRAWL_DELAY_S": 0,
            "MODEL": "demo",
            "OCR": "off",
        }
        settings = Settings.load({}, {**base, **overrides})
        queue = JobQueue(settings)
        cache = open_cache(settings.cache_url, settings.data_dir)
        backend = CaptionerBackend(demo_captioner)
        start_consumer(queue, backend, workers=1, cache=cache)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close(timeout=5)


def run(queue: JobQueue, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job, _ = queue.submit(parse_job(body, queue.settings))
    stop = time.monotonic() + 60
    while (status := queue.status(job["id"]))["state"] not in ("done", "failed"):
        assert time.monotonic() < stop, status
        time.sleep(0.05)
    return status, queue.rows(job["id"])


def alts_of(page: str) -> list[str | None]:
    return [img.get("alt") for img in BeautifulSoup(page, "html.parser").find_all("img")]


def test_a_job_checks_author_alts_and_flags_the_swapped_one(queue_of, site) -> None:
    queue = queue_of()
    status, rows = run(queue, {"pages": [site.url("shapes.html")]})
    assert status["check_alts"] is True and status["include_low_confidence"] is False
    circle, swapped, square = rows
    assert (circle["verdict"], circle["status"], circle["alt_check"]["verdict"]) == (
        "ok",
        "skipped",
        "matches",
    )
    assert (swapped["verdict"], swapped["status"], swapped["alt"]) == (
        "suspect_alt",
        "done",
        CIRCLE,
    )
    assert swapped["alt_check"]["verdict"] == "suspect" and swapped["author_alt"] == SWAPPED_ALT
    assert (square["status"], square["alt"], square["confident"]) == ("done", SQUARE, True)
    assert status["counts"] == {"total": 3, "done": 2, "failed": 0, "skipped": 1}
    page = queue.patched_page(status["id"], 1)
    assert alts_of(page) == [RIGHT_ALT, SWAPPED_ALT, SQUARE]  # author alts never replaced

    status, rows = run(queue, {"pages": [site.url("shapes.html")], "check_alts": False})
    assert [(r["verdict"], r["status"], r["alt_check"]) for r in rows] == [
        ("ok", "skipped", None),
        ("ok", "skipped", None),
        ("missing", "done", None),
    ]
    assert rows[2]["confidence"] == square["confidence"]  # from the cache, with its confidence


def test_a_site_scanned_again_is_answered_from_the_cache(tmp_path, demo_captioner, site):
    """The alt checks of a scan are cached under keys that name each alt: a second scan of
    the same page captions nothing and gives the same rows; a new alt is checked anew."""
    captioned: list[int] = []

    class Counting(CaptionerBackend):
        def caption(self, images, *args, **kwargs):
            captioned.append(len(images))
            return super().caption(images, *args, **kwargs)

    base = {"ALLOW_PRIVATE_NETWORKS": True, "CRAWL_DELAY_S": 0, "MODEL": "demo", "OCR": "off"}
    settings = Settings.load({}, {**base, "DATA_DIR": tmp_path / "data"})
    queue = JobQueue(settings)
    cache = open_cache(settings.cache_url, settings.data_dir)
    start_consumer(queue, Counting(demo_captioner), workers=1, cache=cache)
    try:
        _, first = run(queue, {"pages": [site.url("shapes.html")]})
        assert sum(captioned) == 3  # the square, and the circle once per author alt
        _, again = run(queue, {"pages": [site.url("shapes.html")]})
        assert sum(captioned) == 3  # nothing captioned again
        fields = ("verdict", "status", "alt", "alt_check", "confidence", "author_alt")
        assert [[r[f] for f in fields] for r in again] == [[r[f] for f in fields] for r in first]
        assert [r["verdict"] for r in again] == ["ok", "suspect_alt", "missing"]
    finally:
        queue.close(timeout=5)


def test_a_job_withholds_captions_that_are_not_confident(queue_of, site) -> None:
    queue = queue_of(MIN_CONFIDENCE=0.999)  # above every caption's confidence
    status, rows = run(queue, {"pages": [site.url("shapes.html")]})
    square = rows[2]
    assert (square["status"], square["confident"], square["alt"]) == (
        "low_confidence",
        False,
        SQUARE,
    )
    assert status["counts"]["done"] == 2  # described, low_confidence included
    assert alts_of(queue.patched_page(status["id"], 1))[2] is None
    body = {"pages": [site.url("shapes.html")], "include_low_confidence": True}
    status, _ = run(queue, body)
    assert alts_of(queue.patched_page(status["id"], 1))[2] == SQUARE


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_jobs_verdict_counts_move_a_suspect_alt_out_of_ok(
    queue_of, site, backend: str, request: pytest.FixtureRequest
) -> None:
    """The page scan counts the swapped alt as ok; once its image is captioned and the alt
    found suspect, the job's verdicts (GET /v1/jobs/<id>, the webhook) count it as
    suspect_alt, as its rows and reports do, in either store."""
    overrides: dict[str, Any] = {}
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis.Redis.from_url(server.url).flushdb()
        overrides["QUEUE_URL"] = server.url
    queue = queue_of(**overrides)
    status, rows = run(queue, {"pages": [site.url("shapes.html")]})
    assert [r["verdict"] for r in rows] == ["ok", "suspect_alt", "missing"]
    assert status["verdicts"] == {"missing": 1, "suspect_alt": 1, "ok": 1}
    assert status["verdicts"] == verdict_counts(rows)

    status, rows = run(queue, {"pages": [site.url("shapes.html")], "check_alts": False})
    assert status["verdicts"] == {"missing": 1, "ok": 2} == verdict_counts(rows)


@pytest.mark.parametrize("name", ["check_alts", "include_low_confidence"])
def test_job_switches_are_booleans(name: str, tmp_path: Path) -> None:
    settings = Settings.load({}, {"DATA_DIR": tmp_path})
    with pytest.raises(InvalidJob, match=name):
        parse_job({"sitemap": "http://a.example/s.xml", name: "yes"}, settings)
    spec = parse_job({"sitemap": "http://a.example/s.xml", name: True}, settings)
    assert spec[name] is True
