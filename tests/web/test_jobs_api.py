"""``/v1/jobs`` through Flask's test client: the real app, the tiny model, a local site."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from flask import Flask
from flask.testing import FlaskClient
from helpers import png_bytes, serve_directory

from app import create_app
from captioner.jobs.store import Plan

EXTENSION = "chrome-extension://abcdefghijklmnop"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ALTCAP_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("site")
    for i in range(6):
        (root / f"{i}.png").write_bytes(png_bytes((40 * i, 90, 10)))
    (root / "page.html").write_text(
        '<html><head><script>alert("hi")</script></head><body><img src="0.png">'
        '<img src="1.png" alt="A yellow square">\n<img src="2.png" alt="photo"></body></html>'
    )
    (root / "latin.html").write_bytes(
        '<html><head><meta charset="iso-8859-1"><title>Café</title></head>'
        '<body><p>Crème brûlée</p><img src="3.png"></body></html>'.encode("iso-8859-1")
    )
    with serve_directory(root) as base:
        yield base


@pytest.fixture(scope="module")
def big_page(tmp_path_factory) -> Iterator[str]:
    """One page with 12 distinct images, none with alt: a page job with 12 images to caption."""
    root = tmp_path_factory.mktemp("big")
    imgs = "".join(f'<img src="{i}.png">' for i in range(12))
    (root / "page.html").write_text(f"<html><body>{imgs}</body></html>")
    for i in range(12):
        (root / f"{i}.png").write_bytes(png_bytes((20 * i, 10, 200)))
    with serve_directory(root) as base:
        yield f"{base}/page.html"


@pytest.fixture
def make_app(tiny_dir, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def make(**config: Any) -> Flask:
        base = {
            "TESTING": True,
            "MODEL": str(tiny_dir),
            "DEVICE": "cpu",
            "DATA_DIR": tmp_path / f"data{len(made)}",
            "CACHE_URL": "off",
            "ALLOW_PRIVATE_NETWORKS": True,
            "JOB_WORKERS": 1,
            "JOB_CHUNK_SIZE": 4,
            "CRAWL_DELAY_S": 0,
            # The tiny model's text tower is random, its confidences noise: every caption is
            # said here (abstaining is tested with the trained demo model, tests/jobs).
            "MIN_CONFIDENCE": 0,
        }
        app = create_app({**base, **config})
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["altcap"].close()


@pytest.fixture
def client(make_app) -> FlaskClient:
    return make_app().test_client()


def submit(client: FlaskClient, body: dict[str, Any], **headers: str):
    return client.post("/v1/jobs", json=body, headers=headers)


def wait_done(client: FlaskClient, url: str, headers: dict[str, str] | None = None) -> dict:
    stop = time.monotonic() + 30
    while True:
        response = client.get(url, headers=headers or {})
        assert response.status_code == 200, response.get_json()
        job = response.get_json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < stop, job
        time.sleep(0.05)


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"] and "Traceback" not in response.get_data(as_text=True)


def test_an_image_job_from_submission_to_reports(client: FlaskClient, site: str) -> None:
    urls = [f"{site}/{i}.png" for i in range(6)] + [f"{site}/nothing.png"]
    response = submit(client, {"images": urls, "decoding": {"max_tokens": 3}})
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == job["url"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["source"] == {"kind": "images", "count": 7}
    assert job["created"].endswith("Z") and job["decoding"]["max_tokens"] == 3

    done = wait_done(client, job["url"])
    assert done["state"] == "done" and done["progress"] == 1.0
    assert done["counts"] == {"total": 7, "done": 6, "failed": 1, "skipped": 0}
    assert done["started"] >= done["created"] and done["finished"] >= done["started"]

    rows = client.get(f"{job['url']}/results").get_json()
    assert [r["image_url"] for r in rows] == urls
    assert [r["status"] for r in rows] == ["done"] * 6 + ["failed"]
    assert rows[6]["error_code"] == "fetch_failed" and rows[6]["caption"] is None
    assert list(rows[0]) == [
        "page_url",
        "image_url",
        "author_alt",
        "verdict",
        "status",
        "caption",
        "text",
        "alt",
        "alt_from",
        "confidence",
        "confident",
        "alt_check",
        "warnings",
        "error_code",
        "error_message",
    ]
    again = client.get(f"{job['url']}/results?format=json").get_json()
    assert again == rows  # a stable order

    jsonl = client.get(f"{job['url']}/results?format=jsonl")
    assert jsonl.mimetype == "application/x-ndjson"
    assert [json.loads(line) for line in jsonl.get_data(as_text=True).splitlines()] == rows

    response = client.get(f"{job['url']}/results?format=csv")
    assert (
        response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    )
    table = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [r["caption"] for r in table] == [r["caption"] or "" for r in rows]

    page = client.get(f"{job['url']}/results?format=html")
    assert page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    suggested = BeautifulSoup(page.get_data(as_text=True), "html.parser").select("tbody tr")
    assert [tr.find_all("td")[3].get_text() for tr in suggested] == [
        r["caption"] or "" for r in rows
    ]

    assert_error(client.get(f"{job['url']}/results?format=xml"), 400, "invalid_format")


def test_a_page_job_serves_the_patched_page_safely(client: FlaskClient, site: str) -> None:
    pages = [f"{site}/page.html", f"{site}/missing.html"]
    # the author's alt is kept as it is, unchecked (the tiny model's checks are noise)
    job = submit(client, {"pages": pages, "check_alts": False}).get_json()
    done = wait_done(client, job["url"])
    assert done["counts"] == {"total": 4, "done": 2, "failed": 1, "skipped": 1}
    assert [p["n"] for p in done["pages"]] == [1, 2]
    assert done["pages"][1]["patched_url"] is None
    response = client.get(done["pages"][0]["patched_url"])
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"].startswith("sandbox")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    rows = client.get(f"{job['url']}/results").get_json()
    html = response.get_data(as_text=True)
    # the page says no language: the caption's (the model's, English) is marked
    assert f'<img alt="{rows[0]["caption"]}" lang="en" src="0.png">' in html
    assert f'alt="{rows[2]["caption"]}"' in html and 'alt="photo"' not in html
    # the page to read links the page to its patched copy (no API keys: a link can follow)
    report = client.get(f"{job['url']}/results?format=html").get_data(as_text=True)
    links = BeautifulSoup(report, "html.parser").find_all("a", string=re.compile("filled in"))
    assert [a["href"] for a in links] == [done["pages"][0]["patched_url"]]
    assert 'alt="A yellow square"' in html
    assert_error(client.get(f"{job['url']}/pages/2/patched"), 404, "page_not_found")
    assert_error(client.get(f"{job['url']}/pages/7/patched"), 404, "page_not_found")
    huge = f"{job['url']}/pages/99999999999999999999/patched"  # an OverflowError in SQLite
    assert_error(client.get(huge), 404, "page_not_found")


def test_a_patched_page_keeps_the_encoding_its_meta_declares(
    client: FlaskClient, site: str
) -> None:
    """Served as UTF-8 under a <meta charset="iso-8859-1">, a copy saved to disk showed
    garbled accents: the bytes, the <meta> and the HTTP charset must agree."""
    job = submit(client, {"pages": [f"{site}/latin.html"]}).get_json()
    done = wait_done(client, job["url"])
    caption = client.get(f"{job['url']}/results").get_json()[0]["caption"]
    assert caption
    response = client.get(done["pages"][0]["patched_url"])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=iso-8859-1"
    body = response.get_data()
    assert b"<p>Cr\xe8me br\xfbl\xe9e</p>" in body  # ISO-8859-1 bytes, as the page had them
    saved = BeautifulSoup(body, "html.parser")  # what a browser opening the saved file sees
    assert saved.title.string == "Café"
    assert saved.img["alt"] == caption  # characters outside latin-1 arrive as &#NNN;


def test_idempotency_keys(client: FlaskClient) -> None:
    body = {"images": ["http://img.example/a.png"]}
    first = submit(client, body, **{"Idempotency-Key": "order-17"})
    assert first.status_code == 202
    again = submit(client, body, **{"Idempotency-Key": "order-17"})
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    in_body = submit(client, {**body, "idempotency_key": "order-17"})
    assert in_body.status_code == 200 and in_body.get_json()["id"] == first.get_json()["id"]
    other = {"images": ["http://img.example/b.png"]}
    assert_error(
        submit(client, other, **{"Idempotency-Key": "order-17"}), 409, "idempotency_conflict"
    )
    mixed = submit(client, {**body, "idempotency_key": "x"}, **{"Idempotency-Key": "y"})
    assert_error(mixed, 400, "invalid_job")


def test_cancel_and_delete_are_separate_and_idempotent(make_app, site: str) -> None:
    client = make_app(JOB_WORKERS=0).test_client()  # nobody consumes: the job stays queued
    job = submit(client, {"images": [f"{site}/1.png"]}).get_json()
    assert job["expires"] is None  # not ended yet
    refused = client.delete(job["url"])  # DELETE no longer cancels: an old client loses nothing
    assert_error(refused, 409, "job_active")
    assert f"POST /v1/jobs/{job['id']}/cancel" in refused.get_json()["error"]["message"]
    assert client.get(job["url"]).get_json()["state"] == "queued"
    response = client.post(f"{job['url']}/cancel")
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    assert response.get_json()["expires"] > response.get_json()["finished"]
    again = client.post(f"{job['url']}/cancel")  # a retried cancel: the same answer
    assert again.status_code == 200 and again.get_json() == response.get_json()
    assert client.get(f"{job['url']}/results").get_json() == []
    response = client.delete(job["url"])  # cancelled: it has ended, so it goes
    assert response.status_code == 204 and response.get_data() == b""
    assert_error(client.get(job["url"]), 404, "job_not_found")
    assert_error(client.get(f"{job['url']}/results"), 404, "job_not_found")
    assert_error(client.delete(job["url"]), 404, "job_not_found")
    assert_error(client.post(f"{job['url']}/cancel"), 404, "job_not_found")
    assert_error(client.delete("/v1/jobs/" + "0" * 32), 404, "job_not_found")
    assert_error(client.post("/v1/jobs/nope/cancel"), 404, "job_not_found")


def test_concurrent_deletes_of_a_running_job_keep_its_report(make_app) -> None:
    """Issue 19: eight concurrent DELETEs of a running job answered 200, 204 and 404s: the
    first cancelled it and the next deleted what it had found. Now they are all refused;
    eight cancels then all answer the cancelled job with its report; eight deletes after
    that: one 204, seven 404."""
    app = make_app(JOB_WORKERS=0)
    store = app.extensions["altcap_jobs"].queue.store
    job = submit(app.test_client(), {"images": ["http://a.example/1.png"]}).get_json()
    store.claim_plan(job["id"], "a", 60)  # planned and half done, by a consumer of its own
    chunks = [[{"url": f"http://a.example/{n}.png", "rows": [[n, {}]]}] for n in range(2)]
    store.commit_plan(job["id"], Plan(chunks=chunks, total=2))
    store.claim_chunk(job["id"], "a", 60)
    row = {"image_url": "http://a.example/0.png", "status": "done", "caption": "A red square."}
    store.complete_chunk(job["id"], 0, {0: row})
    store.claim_chunk(job["id"], "a", 60)  # chunk 1 in flight
    report = app.test_client().get(f"{job['url']}/results").get_json()
    assert [r["caption"] for r in report] == ["A red square."]

    def at_once(method: str, path: str) -> list[Any]:
        start = threading.Barrier(8)
        answers: list[Any] = [None] * 8

        def send(i: int) -> None:
            client = app.test_client()
            start.wait()
            answers[i] = client.open(path, method=method)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return answers

    for response in at_once("DELETE", job["url"]):
        assert_error(response, 409, "job_active")
    client = app.test_client()
    assert client.get(job["url"]).get_json()["state"] == "running"
    cancels = at_once("POST", f"{job['url']}/cancel")
    assert {(r.status_code, r.get_json()["state"]) for r in cancels} == {(200, "cancelled")}
    assert client.get(f"{job['url']}/results").get_json() == report
    deletes = at_once("DELETE", job["url"])
    assert sorted(r.status_code for r in deletes) == [204] + [404] * 7
    assert_error(client.get(job["url"]), 404, "job_not_found")


def test_deleting_a_finished_job_removes_it_and_frees_its_key(client: FlaskClient, site: str):
    key = {"Idempotency-Key": "audit-1"}
    job = submit(client, {"images": [f"{site}/1.png"]}, **key).get_json()
    done = wait_done(client, job["url"])
    assert done["state"] == "done"
    finished = datetime.fromisoformat(done["finished"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(done["expires"].replace("Z", "+00:00"))
    assert expires - finished == timedelta(days=7)  # the default retention
    assert len(client.get(f"{job['url']}/results").get_json()) == 1
    response = client.delete(job["url"])
    assert response.status_code == 204 and not response.get_data()
    assert "Content-Type" not in response.headers
    assert_error(client.get(job["url"]), 404, "job_not_found")
    assert_error(client.get(f"{job['url']}/results"), 404, "job_not_found")
    assert_error(client.delete(job["url"]), 404, "job_not_found")
    again = submit(client, {"images": [f"{site}/2.png"]}, **key)  # the key starts a new job
    assert again.status_code == 202 and again.get_json()["id"] != job["id"]


def test_retention_zero_keeps_jobs_forever(make_app, site: str) -> None:
    client = make_app(JOB_RETENTION_S=0).test_client()
    job = submit(client, {"images": [f"{site}/1.png"]}).get_json()
    done = wait_done(client, job["url"])
    assert done["state"] == "done" and done["expires"] is None


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_job"),
        (b'["http://a.example/x.png"]', "application/json", 400, "invalid_job"),
        (b'{"images": ["http://a.example/x.png"]}', "text/plain", 415, "unsupported_media_type"),
        (b'{"images": [], "pages": []}', "application/json", 400, "invalid_job"),
        (b'{"sitemap": "file:///etc/passwd"}', "application/json", 400, "invalid_job"),
        (b'{"images": ["http://a/x.png"], "extra": 1}', "application/json", 400, "invalid_job"),
        (
            b'{"images": ["http://a/x.png"], "decoding": {"beam": 1}}',
            "application/json",
            400,
            "invalid_settings",
        ),
        (
            b'{"images": ["http://a/x.png"], "decoding": {"max_tokens": "9"}}',
            "application/json",
            400,
            "invalid_request",
        ),
    ],
)
def test_bad_requests_get_typed_errors(
    client: FlaskClient, body: bytes, content_type: str, status: int, code: str
) -> None:
    assert_error(client.post("/v1/jobs", data=body, content_type=content_type), status, code)


def test_unknown_jobs_are_404(client: FlaskClient) -> None:
    for path in (
        "/v1/jobs/nope",
        "/v1/jobs/" + "a" * 32 + "/results",
        "/v1/jobs/x/pages/1/patched",
    ):
        assert_error(client.get(path), 404, "job_not_found")
    assert_error(client.put("/v1/jobs/" + "a" * 32), 405, "method_not_allowed")


def test_jobs_need_the_api_key_and_keys_scope_idempotency(make_app, site: str) -> None:
    client = make_app(API_KEYS=["k1", "k2"], JOB_WORKERS=0).test_client()
    body = {"images": [f"{site}/1.png"]}
    assert_error(submit(client, body), 401, "unauthorized")
    one = submit(client, body, Authorization="Bearer k1", **{"Idempotency-Key": "same"})
    assert one.status_code == 202
    url = one.get_json()["url"]
    for response in (
        client.get(url),
        client.get(f"{url}/results"),
        client.get(f"{url}/pages/1/patched"),
        client.post(f"{url}/cancel"),
        client.delete(url),
    ):
        assert_error(response, 401, "unauthorized")
    assert client.get(url, headers={"Authorization": "Bearer k1"}).status_code == 200
    two = submit(client, body, Authorization="Bearer k2", **{"Idempotency-Key": "same"})
    assert two.status_code == 202 and two.get_json()["id"] != one.get_json()["id"]
    # another key cannot tell k1's job from one that does not exist
    k2 = {"Authorization": "Bearer k2"}
    for response in (
        client.get(url, headers=k2),
        client.get(f"{url}/results", headers=k2),
        client.get(f"{url}/pages/1/patched", headers=k2),
        client.post(f"{url}/cancel", headers=k2),
        client.delete(url, headers=k2),
    ):
        assert_error(response, 404, "job_not_found")
        assert one.get_json()["id"] in response.get_json()["error"]["message"]
    k1 = {"Authorization": "Bearer k1"}
    assert client.get(url, headers=k1).get_json()["state"] == "queued"
    assert client.post(f"{url}/cancel", headers=k1).get_json()["state"] == "cancelled"
    assert client.delete(url, headers=k1).status_code == 204


def test_with_api_keys_the_html_report_has_no_links_a_browser_cannot_follow(
    make_app, site: str
) -> None:
    client = make_app(API_KEYS=["k1"]).test_client()
    k1 = {"Authorization": "Bearer k1"}
    job = submit(client, {"pages": [f"{site}/page.html"]}, **k1).get_json()
    done = wait_done(client, job["url"], k1)
    assert done["pages"][0]["patched_url"]  # the copy is there, for a client with the key
    report = client.get(f"{job['url']}/results?format=html", headers=k1).get_data(as_text=True)
    assert "filled in" not in report and "<table>" in report


def test_each_api_key_has_a_cap_on_jobs_under_way(make_app, site: str) -> None:
    """ALTCAP_JOB_MAX_ACTIVE: a sitemap job costs 1 of the rate limit yet may caption
    thousands of images, so what one key has queued or running at once is capped."""
    client = make_app(API_KEYS=["k1", "k2"], JOB_WORKERS=0, JOB_MAX_ACTIVE=2).test_client()
    k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    body = {"images": [f"{site}/1.png"]}
    first = submit(client, body, **k1, **{"Idempotency-Key": "first"})
    assert first.status_code == 202 and submit(client, body, **k1).status_code == 202
    refused = submit(client, body, **k1)
    assert_error(refused, 429, "too_many_jobs")
    assert "2 batch jobs are already queued or running" in refused.get_json()["error"]["message"]
    repeat = submit(client, body, **k1, **{"Idempotency-Key": "first"})  # its job, again
    assert repeat.status_code == 200 and repeat.get_json()["id"] == first.get_json()["id"]
    assert submit(client, body, **k2).status_code == 202  # another key: its own count
    cancelled = client.post(f"{first.get_json()['url']}/cancel", headers=k1)
    assert cancelled.status_code == 200
    assert submit(client, body, **k1).status_code == 202


def test_cors_and_metrics_cover_jobs(make_app) -> None:
    client = make_app(JOB_WORKERS=0).test_client()
    preflight = client.options(
        "/v1/jobs/" + "a" * 32,
        headers={"Origin": EXTENSION, "Access-Control-Request-Method": "DELETE"},
    )
    assert preflight.status_code == 204
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    response = client.post(
        "/v1/jobs", json={"images": ["http://a.example/1.png"]}, headers={"Origin": EXTENSION}
    )
    assert response.headers["Access-Control-Allow-Origin"] == EXTENSION
    assert "Location" in response.headers["Access-Control-Expose-Headers"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "altcap_jobs_created_total 1.0" in metrics
    assert 'endpoint="/v1/jobs",method="POST",status="202"' in metrics


def test_job_creation_is_rate_limited(make_app) -> None:
    client = make_app(RATE_LIMIT="2/minute", JOB_WORKERS=0).test_client()
    codes = [submit(client, {"images": ["http://a.example/1.png"]}).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    assert client.get("/v1/jobs/" + "a" * 32).status_code == 404  # reading is not limited


def test_a_job_costs_its_images_pages_or_one_sitemap(make_app) -> None:
    client = make_app(RATE_LIMIT="6/minute", JOB_WORKERS=0).test_client()
    images = [f"http://a.example/{i}.png" for i in range(3)]
    pages = ["http://a.example/a.html", "http://a.example/b.html"]
    assert submit(client, {"images": images}).status_code == 202  # 3 of 6
    assert submit(client, {"pages": pages}).status_code == 202  # 5 of 6
    assert submit(client, {"sitemap": "http://a.example/sitemap.xml"}).status_code == 202
    limited = submit(client, {"images": images[:1]})  # the 4th job, the 7th unit
    assert_error(limited, 429, "rate_limited")
    assert "Retry-After" in limited.headers


def test_an_idempotent_repeat_costs_one_not_its_images_again(make_app) -> None:
    """A client retrying after a lost answer is not charged the job's images twice."""
    client = make_app(RATE_LIMIT="5/minute", JOB_WORKERS=0).test_client()
    body = {"images": [f"http://a.example/{i}.png" for i in range(3)], "idempotency_key": "k"}
    first = submit(client, body)  # 3 of 5
    assert first.status_code == 202
    again = submit(client, body)  # 4 of 5 (it was 6: refused)
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    header = submit(client, {"images": body["images"]}, **{"Idempotency-Key": "k"})  # 5 of 5
    assert header.status_code == 200
    assert_error(submit(client, body), 429, "rate_limited")  # the budget still holds


def test_a_job_over_the_whole_budget_is_refused_clearly(make_app) -> None:
    client = make_app(RATE_LIMIT="4/minute", JOB_WORKERS=0, JOB_MAX_IMAGES=10).test_client()
    images = [f"http://a.example/{i}.png" for i in range(5)]
    limited = submit(client, {"images": images})
    assert_error(limited, 429, "rate_limited")
    assert "costs 5" in limited.get_json()["error"]["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    other = make_app(RATE_LIMIT="2/minute", JOB_WORKERS=0, JOB_MAX_IMAGES=3).test_client()
    assert_error(submit(other, {"images": images}), 400, "invalid_job")  # refused whole: 1
    assert submit(other, {"images": images[:1]}).status_code == 202  # 2 of 2


def wait_paused(client: FlaskClient, url: str, headers: dict[str, str] | None = None) -> dict:
    """The job once its owner's budget has paused it (or once it ended, which fails the test
    of a job that should have been paused)."""
    stop = time.monotonic() + 30
    while True:
        job = client.get(url, headers=headers or {}).get_json()
        if job.get("paused_until") or job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < stop, job
        time.sleep(0.05)


def one_image(client: FlaskClient, **environ: str) -> int:
    body = {"images": [{"data": base64.b64encode(png_bytes()).decode()}]}
    return client.post("/v1/captions", json=body, environ_base=environ).status_code


def test_a_page_job_captions_only_what_the_budget_allows(make_app, big_page: str) -> None:
    """Issue 20, finding 3: a page costs 1 to submit, so under 5/minute a one-page job used
    to caption every image it found while a 6-image request got 429. Its images are charged
    as they are captioned: 1 (the page) + 4 (one chunk) spend the window, and the job waits
    for the next one, saying until when; the owner's own requests see the same budget."""
    client = make_app(RATE_LIMIT="5/minute").test_client()
    response = submit(client, {"pages": [big_page], "decoding": {"max_tokens": 2}})
    assert response.status_code == 202
    job = wait_paused(client, response.get_json()["url"])
    assert job["state"] == "running" and job["counts"]["done"] == 4, job
    resumes = datetime.fromisoformat(job["paused_until"].replace("Z", "+00:00"))
    assert timedelta(0) < resumes - datetime.now(resumes.tzinfo) <= timedelta(seconds=61)
    assert one_image(client) == 429  # the job spent the window: nothing is left
    time.sleep(0.5)  # a paused job captions nothing more
    assert client.get(job["url"]).get_json()["counts"]["done"] == 4
    # another client's budget is its own
    assert one_image(client, REMOTE_ADDR="203.0.113.9") == 200


def test_a_separate_worker_charges_the_budget_the_service_counts(
    make_app, big_page: str, tiny_captioner, tmp_path: Path
) -> None:
    """``python -m captioner worker`` processes have no Flask limiter: with the rate-limit
    counters in Redis (here the cache's) they charge the ones the service counts requests in,
    under the same key, and with the Redis job store the job waits there."""
    from redis_server import RedisServer

    from captioner.jobs.backends import CaptionerBackend
    from captioner.jobs.consumer import start_consumer
    from captioner.jobs.queue import JobQueue
    from captioner.serve.settings import Settings

    with RedisServer() as redis:
        config = {
            "CACHE_URL": redis.url,
            "QUEUE_URL": redis.url,
            "RATE_LIMIT": "5/minute",
            "DATA_DIR": tmp_path / "worker",
            "ALLOW_PRIVATE_NETWORKS": True,
            "JOB_CHUNK_SIZE": 32,
            "CRAWL_DELAY_S": 0,
        }
        client = make_app(**config, JOB_WORKERS=0).test_client()
        worker = JobQueue(Settings.load({}, config))
        start_consumer(worker, CaptionerBackend(tiny_captioner), workers=1)
        try:
            body = {"pages": [big_page], "decoding": {"max_tokens": 2}}
            job = wait_paused(client, submit(client, body).get_json()["url"])
            assert job["state"] == "running" and job["counts"]["done"] == 4, job
            assert one_image(client) == 429
        finally:
            worker.close(timeout=5)


def test_an_image_job_pays_for_its_urls_once(make_app, site: str) -> None:
    """An images job pays one per URL when it is submitted, and nothing more when captioned."""
    client = make_app(RATE_LIMIT="7/minute").test_client()
    urls = [f"{site}/{i}.png" for i in range(6)]
    job = submit(client, {"images": urls, "decoding": {"max_tokens": 2}}).get_json()
    done = wait_done(client, job["url"])
    assert done["state"] == "done" and done["counts"]["done"] == 6
    assert done["paused_until"] is None
    assert one_image(client) == 200  # 7 of 7
    assert one_image(client) == 429


def test_without_keys_each_address_has_its_own_cap_on_jobs(make_app) -> None:
    """Issue 20, finding 3: without API keys the ALTCAP_JOB_MAX_ACTIVE slots were one count
    for everyone, so one address could take them all. Each address has its own count now (an
    IPv6 client its /64); a bearer token a keyless server ignores does not open another."""
    client = make_app(JOB_WORKERS=0, JOB_MAX_ACTIVE=2).test_client()
    body = {"images": ["http://a.example/1.png"]}

    def post(address: str, **headers: str):
        return client.post(
            "/v1/jobs", json=body, headers=headers, environ_base={"REMOTE_ADDR": address}
        )

    first = post("203.0.113.1")
    assert first.status_code == 202 and post("203.0.113.1").status_code == 202
    refused = post("203.0.113.1")
    assert_error(refused, 429, "too_many_jobs")
    assert "from this address" in refused.get_json()["error"]["message"]
    assert_error(post("203.0.113.1", Authorization="Bearer made-up"), 429, "too_many_jobs")
    assert post("203.0.113.2").status_code == 202  # another address still can
    # jobs stay anyone's to read without keys, whichever address made them
    url = first.get_json()["url"]
    read = client.get(url, environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert read.status_code == 200
    assert client.post(f"{url}/cancel").status_code == 200
    assert post("203.0.113.1").status_code == 202  # a slot freed
    assert post("2001:db8:1:2::1").status_code == 202
    assert post("2001:db8:1:2::ffff").status_code == 202
    assert_error(post("2001:db8:1:2:abcd::1"), 429, "too_many_jobs")  # the same /64
    assert post("2001:db8:1:3::1").status_code == 202


def test_behind_a_proxy_the_job_cap_is_per_forwarded_address(make_app) -> None:
    client = make_app(JOB_WORKERS=0, JOB_MAX_ACTIVE=1, TRUSTED_PROXIES=1).test_client()
    body = {"images": ["http://a.example/1.png"]}

    def post(address: str) -> int:
        return submit(client, body, **{"X-Forwarded-For": address}).status_code

    assert [post("203.0.113.1"), post("203.0.113.2"), post("203.0.113.1")] == [202, 202, 429]


def test_openapi_describes_the_jobs_endpoints(make_app) -> None:
    doc = make_app(JOB_WORKERS=0, JOB_MAX_IMAGES=50).test_client().get("/openapi.json").get_json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results"} <= set(doc["paths"])
    assert set(doc["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
    assert set(doc["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]) == {
        "204",
        "404",
        "409",
        "default",
    }
    cancel = doc["paths"]["/v1/jobs/{job_id}/cancel"]
    assert set(cancel) == {"post"} and set(cancel["post"]["responses"]) == {"200", "default"}
    assert "expires" in doc["components"]["schemas"]["Job"]["properties"]
    images = doc["components"]["schemas"]["JobRequest"]["properties"]["images"]
    assert images["maxItems"] == 50


def test_an_unreachable_queue_is_a_503_not_a_crash(make_app) -> None:
    from redis_server import free_port

    client = make_app(QUEUE_URL=f"redis://127.0.0.1:{free_port()}/0", JOB_WORKERS=0).test_client()
    assert_error(submit(client, {"images": ["http://a.example/1.png"]}), 503, "queue_unavailable")
    assert_error(client.get("/v1/jobs/" + "a" * 32), 503, "queue_unavailable")
