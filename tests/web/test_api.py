"""The HTTP service through Flask's test client, with the tiny model loaded for real.

Image URLs point at a small HTTP server on 127.0.0.1 started here; apps that should reach
it set ``ALLOW_PRIVATE_NETWORKS``, and the others prove that they refuse to. Every
response is checked for the word "Traceback" by the test client itself.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import png_bytes
from markupsafe import escape
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from captioner.serve.engine import DeadlineExceeded, InternalError, Overloaded

RED = png_bytes((200, 30, 30))
BLUE = png_bytes((30, 30, 200))
GREEN = png_bytes((30, 200, 30))
EXTENSION = "chrome-extension://abcdefghijklmnop"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- fixtures ----------------------------------------------------------------------------


class CheckedClient(FlaskClient):
    """A test client that fails any test whose response shows a traceback."""

    def open(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        response = super().open(*args, **kwargs)
        assert b"Traceback" not in response.get_data(), response.get_data(as_text=True)[:2000]
        return response


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings a developer exported in their shell must not leak into these apps."""
    import os

    for name in list(os.environ):
        if name.startswith("ALTCAP_"):
            monkeypatch.delenv(name)


def wait_ready(client: FlaskClient, timeout: float = 30.0) -> None:
    stop = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < stop, "the model did not load"
        time.sleep(0.02)


@pytest.fixture
def make_app(tiny_dir, tmp_path) -> Iterator[Callable[..., Flask]]:
    """Build an app on the tiny model: ``make_app(wait=True, **test_config)``."""
    made: list[Flask] = []

    def make(wait: bool = True, **config: Any) -> Flask:
        base = {
            "TESTING": True,
            "MODEL": str(tiny_dir),
            "DEVICE": "cpu",
            "DATA_DIR": tmp_path / "data",
            "CACHE_URL": "",
        }
        app = create_app({**base, **config})
        app.test_client_class = CheckedClient
        made.append(app)
        if wait:
            wait_ready(app.test_client())
        return app

    yield make
    for app in made:
        app.extensions["altcap"].close()


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class ImageServer(ThreadingHTTPServer):
    """Serves a few images on 127.0.0.1 and counts the requests for each path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ImageHandler)
        self.hits: Counter[str] = Counter()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


ROUTES: dict[str, tuple[str, bytes]] = {  # path -> (Content-Type, body); others: RED
    "/red.png": ("image/png", RED),
    "/blue.png": ("image/png", BLUE),
    "/page.html": ("text/html", b"<!doctype html><p>not an image</p>"),
    "/big.png": ("image/png", RED + b"\0" * 50_000),
}


class _ImageHandler(BaseHTTPRequestHandler):
    server: ImageServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        if self.path == "/slow.png":
            time.sleep(2)
        content_type, body = ROUTES.get(self.path, ("image/png", RED))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    srv = ImageServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class FakeEngine:
    """Stands in for the engine when a test needs it to fail in a particular way."""

    def __init__(self, outcome: Callable[[], Any]) -> None:
        self.outcome = outcome
        self.on_batch = None
        self.load_error = None
        self.ready = True
        self.captioner = None

    def start(self) -> None:
        pass

    def caption_images(self, images: list, settings: Any, timeout_s: float | None = None):
        return [self.outcome() for _ in images]

    def stats(self) -> dict[str, int]:
        return {"queue_depth": 0}

    def retry_after(self) -> int:
        return 1

    def close(self, timeout: float | None = None) -> None:
        pass


def error_of(response) -> dict[str, str]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}
    return body["error"]


def metric(client: FlaskClient, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


# --- the application factory -------------------------------------------------------------


def test_importing_app_builds_nothing() -> None:
    import app as app_module

    assert not hasattr(app_module, "app"), "gunicorn uses app:create_app(); no app at import"


def test_the_model_loads_in_the_engine_thread(make_app, tiny_dir) -> None:
    from captioner.pipeline import Captioner

    threads: list[str] = []

    def loader() -> Captioner:
        threads.append(threading.current_thread().name)
        return Captioner.from_pretrained(str(tiny_dir), device="cpu")

    make_app(LOADER=loader)
    assert threads and threads[0] != threading.main_thread().name


def test_healthz_and_readyz(client: FlaskClient, tiny_dir) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ready" and set(body) == {"status", "model", "language"}
    assert body["language"] == "en"  # the tiny model's config says nothing: ClipCap's English
    # the public name, not the server's path: "<parent>/<dir>@<fingerprint>"
    assert body["model"].startswith(f"{tiny_dir.parent.name}/{tiny_dir.name}@")
    assert str(tiny_dir) not in ready.get_data(as_text=True)


def test_not_ready_until_the_model_has_loaded(make_app, tiny_dir) -> None:
    from captioner.pipeline import Captioner

    go = threading.Event()

    def slow_loader() -> Captioner:
        go.wait(10)
        return Captioner.from_pretrained(str(tiny_dir), device="cpu")

    app = make_app(wait=False, LOADER=slow_loader)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200  # alive while loading
    response = client.get("/readyz")
    assert response.status_code == 503
    assert error_of(response)["code"] == "model_unavailable"
    early = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]})
    assert early.status_code == 503
    assert error_of(early)["code"] == "model_unavailable"
    assert early.headers["Retry-After"] == "5"
    go.set()
    wait_ready(client)
    assert client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).status_code == 200


def test_a_model_that_fails_to_load_is_reported(make_app) -> None:
    def broken() -> Any:
        raise OSError("no such model directory")

    app = make_app(wait=False, LOADER=broken)
    engine = app.extensions["altcap"].engine
    engine.wait_ready(10)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "model_unavailable"
    assert "no such model directory" in error["message"]


# --- POST /v1/captions ---------------------------------------------------------------------


def test_json_captions_one_result_per_image_in_order(client: FlaskClient) -> None:
    images = [
        {"data": b64(RED)},
        {"data": "not base64!!"},
        {"data": b64(b"hello, I am text")},
        {"url": "http://127.0.0.1:9/blocked.png"},
        {"data": b64(BLUE)},
        {"url": "ftp://example.com/x.png"},
        {"data": ""},
        {"data": b64(RED[:40])},
        {"data": b64(b"8BPS" + b"\0" * 40)},
    ]
    response = client.post("/v1/captions", json={"images": images})
    assert response.status_code == 200
    body = response.get_json()
    assert body["decoding"]["method"] == "greedy"
    codes = [r["error"]["code"] if "error" in r else "ok" for r in body["results"]]
    assert codes == [
        "ok",
        "invalid_request",
        "not_an_image",
        "blocked_address",
        "ok",
        "invalid_url",
        "empty_image",
        "truncated_image",
        "unsupported_image",
    ]
    first = body["results"][0]
    assert isinstance(first["caption"], str) and first["caption"]
    assert first["tokens"] > 0
    assert first["cached"] is False
    assert first["source"]["kind"] == "data"
    assert len(first["source"]["sha256"]) == 64
    assert body["results"][3]["source"] == {"kind": "url", "url": images[3]["url"]}


def test_decoding_settings_are_used_and_echoed(client: FlaskClient) -> None:
    decoding = {"method": "beam", "beam_size": 2, "max_tokens": 5}
    body = client.post(
        "/v1/captions", json={"images": [{"data": b64(RED)}], "decoding": decoding}
    ).get_json()
    assert body["decoding"]["method"] == "beam"
    assert body["decoding"]["beam_size"] == 2
    assert body["results"][0]["tokens"] <= 5


def test_multipart_uploads_and_url_fields(make_app, server: ImageServer) -> None:
    client = make_app(ALLOW_PRIVATE_NETWORKS=True).test_client()
    data = {
        "image": [(io.BytesIO(RED), "red.png"), (io.BytesIO(b"plain text"), "notes.txt")],
        "url": server.url("/blue.png"),
        "decoding": '{"max_tokens": 4}',
    }
    response = client.post("/v1/captions", data=data, content_type="multipart/form-data")
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["source"]["kind"] for r in results] == ["upload", "upload", "url"]
    assert results[0]["source"]["filename"] == "red.png" and results[0]["tokens"] <= 4
    assert results[1]["error"]["code"] == "not_an_image"
    assert "caption" in results[2]
    assert server.hits["/blue.png"] == 1


def test_the_same_image_twice_comes_from_the_cache(client: FlaskClient) -> None:
    request = {"images": [{"data": b64(GREEN)}]}
    first = client.post("/v1/captions", json=request).get_json()["results"][0]
    second = client.post("/v1/captions", json=request).get_json()["results"][0]
    assert first["cached"] is False
    assert second["cached"] is True
    assert second["caption"] == first["caption"]
    assert metric(client, "altcap_cache_hits_total", kind="caption") == 1
    # Other decoding settings are another cache entry.
    other = {**request, "decoding": {"max_tokens": 3}}
    assert client.post("/v1/captions", json=other).get_json()["results"][0]["cached"] is False


def test_a_repeated_url_skips_the_download(make_app, server: ImageServer) -> None:
    client = make_app(ALLOW_PRIVATE_NETWORKS=True).test_client()
    request = {"images": [{"url": server.url("/red.png")}]}
    first = client.post("/v1/captions", json=request).get_json()["results"][0]
    second = client.post("/v1/captions", json=request).get_json()["results"][0]
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["caption"] == first["caption"]
    assert server.hits["/red.png"] == 1
    assert metric(client, "altcap_cache_hits_total", kind="url") == 1


def test_url_errors_are_per_image(make_app, server: ImageServer) -> None:
    client = make_app(ALLOW_PRIVATE_NETWORKS=True, FETCH_TIMEOUT_S=0.3, FETCH_MAX_BYTES=10_000)
    images = [
        {"url": server.url("/slow.png")},
        {"url": server.url("/page.html")},
        {"url": server.url("/big.png")},
        {"url": server.url("/red.png")},
    ]
    results = client.test_client().post("/v1/captions", json={"images": images}).get_json()
    codes = [r["error"]["code"] if "error" in r else "ok" for r in results["results"]]
    assert codes == ["fetch_timeout", "unsupported_image", "too_large", "ok"]


def test_private_addresses_are_blocked_by_default(client: FlaskClient, server: ImageServer) -> None:
    response = client.get("/v1/captions", query_string={"url": server.url("/red.png")})
    assert response.status_code == 403
    assert error_of(response)["code"] == "blocked_address"
    assert server.hits["/red.png"] == 0


def test_image_too_many_pixels(make_app) -> None:
    client = make_app(MAX_IMAGE_PIXELS=100).test_client()
    result = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).get_json()
    assert result["results"][0]["error"]["code"] == "image_too_many_pixels"


# --- GET /v1/captions ----------------------------------------------------------------------


def test_get_caption_with_etag_and_304(make_app, server: ImageServer) -> None:
    client = make_app(ALLOW_PRIVATE_NETWORKS=True).test_client()
    url = server.url("/blue.png")
    first = client.get("/v1/captions", query_string={"url": url})
    assert first.status_code == 200
    assert first.get_json()["results"][0]["source"]["url"] == url
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    assert first.headers["Cache-Control"] == "public, max-age=86400"

    again = client.get("/v1/captions", query_string={"url": url}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["ETag"] == etag
    assert again.get_data() == b""
    other = client.get("/v1/captions", query_string={"url": url}, headers={"If-None-Match": '"x"'})
    assert other.status_code == 200 and other.get_json()["results"][0]["cached"] is True
    assert server.hits["/blue.png"] == 1  # the URL memo answered both revalidations


def test_get_caption_304_without_the_url_memo(make_app, server: ImageServer) -> None:
    client = make_app(ALLOW_PRIVATE_NETWORKS=True, URL_TTL_S=0).test_client()
    url = server.url("/red.png")
    first = client.get("/v1/captions", query_string={"url": url})
    assert first.headers["Cache-Control"] == "no-cache"
    headers = {"If-None-Match": first.headers["ETag"]}
    assert client.get("/v1/captions", query_string={"url": url}, headers=headers).status_code == 304
    assert server.hits["/red.png"] == 2  # no memo: downloaded again, but not captioned again


def test_get_caption_errors(client: FlaskClient) -> None:
    missing = client.get("/v1/captions")
    assert missing.status_code == 400 and error_of(missing)["code"] == "invalid_request"
    bad = client.get("/v1/captions", query_string={"url": "not a url"})
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_url"
    assert bad.headers["Cache-Control"] == "no-store"


# --- request errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{", "invalid_request"),
        ("[" * 100_000, "invalid_request"),
        ("[]", "invalid_request"),
        ('{"images": "x"}', "invalid_request"),
        ('{"images": []}', "invalid_request"),
        ('{"images": [{"url": "a", "data": "b"}]}', "invalid_request"),
        ('{"images": [{"url": 3}]}', "invalid_request"),
        ('{"images": [{"data": "AAAA"}], "extra": 1}', "invalid_request"),
        ('{"images": [{"data": "AAAA"}], "decoding": []}', "invalid_request"),
        ('{"images": [{"data": "AAAA"}], "decoding": {"max_tokens": 2.5}}', "invalid_request"),
        ('{"images": [{"data": "AAAA"}], "decoding": {"beam_size": true}}', "invalid_request"),
        ('{"images": [{"data": "AAAA"}], "decoding": {"beam_size": 99}}', "invalid_settings"),
        ('{"images": [{"data": "AAAA"}], "decoding": {"seed": -1}}', "invalid_settings"),
        ('{"images": [{"data": "AAAA"}], "decoding": {"warp": 9}}', "invalid_settings"),
    ],
)
def test_malformed_requests_are_400(client: FlaskClient, body: str, code: str) -> None:
    response = client.post("/v1/captions", data=body, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == code


def test_too_many_images(make_app) -> None:
    client = make_app(MAX_IMAGES_PER_REQUEST=2).test_client()
    response = client.post("/v1/captions", json={"images": [{"data": b64(RED)}] * 3})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request" and "at most 2" in error["message"]


def test_unsupported_media_type(client: FlaskClient) -> None:
    response = client.post("/v1/captions", data="hello", content_type="text/plain")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_request_body_over_the_limit_is_413(make_app) -> None:
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    big = {"images": [{"data": b64(b"\0" * 2000)}]}
    response = client.post("/v1/captions", json=big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
    upload = {"image": (io.BytesIO(b"\0" * 2000), "big.png")}
    assert client.post("/v1/captions", data=upload).status_code == 413


def test_not_found_and_method_not_allowed(client: FlaskClient) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    wrong = client.delete("/v1/captions")
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


@pytest.mark.parametrize(
    ("outcome", "status", "code"),
    [
        (lambda: Overloaded("queue full", retry_after=3), 503, "overloaded"),
        (lambda: DeadlineExceeded("too slow"), 504, "deadline_exceeded"),
        (lambda: InternalError("device failure"), 500, "internal_error"),
    ],
)
def test_engine_failures_fail_the_request(make_app, outcome, status: int, code: str) -> None:
    client = make_app(ENGINE=FakeEngine(outcome)).test_client()
    response = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]})
    assert response.status_code == status
    assert error_of(response)["code"] == code
    if code == "overloaded":
        assert response.headers["Retry-After"] == "3"


def test_a_bug_is_a_500_without_details(client: FlaskClient, monkeypatch) -> None:
    import captioner.serve.service

    def broken(*args: Any, **kwargs: Any) -> Image.Image:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(captioner.serve.service.images, "load_image", broken)
    response = client.post("/v1/captions", json={"images": [{"data": b64(BLUE)}]})
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert "secret internals" not in response.get_data(as_text=True)


# --- API keys, rate limits, CORS -------------------------------------------------------------


def test_api_keys(make_app) -> None:
    client = make_app(API_KEYS="key-one, key-two").test_client()
    request = {"images": [{"data": b64(RED)}]}
    missing = client.post("/v1/captions", json=request)
    assert missing.status_code == 401
    assert error_of(missing)["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.post("/v1/captions", json=request, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = client.post("/v1/captions", json=request, headers={"Authorization": "Bearer key-two"})
    assert right.status_code == 200
    assert client.get("/metrics").status_code == 401
    for open_path in ("/healthz", "/readyz", "/", "/openapi.json", "/static/altcap.js"):
        assert client.get(open_path).status_code == 200, open_path
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_rate_limit(make_app) -> None:
    client = make_app(RATE_LIMIT="2/minute", API_KEYS=["a", "b"]).test_client()
    request = {"images": [{"data": b64(RED)}]}
    key_a = {"Authorization": "Bearer a"}
    statuses = [
        client.post("/v1/captions", json=request, headers=key_a).status_code,
        client.get("/v1/captions", query_string={"url": "x"}, headers=key_a).status_code,
    ]
    limited = client.post("/v1/captions", json=request, headers=key_a)
    assert statuses == [200, 400]  # both count: one budget for the captioning endpoints
    assert limited.status_code == 429
    assert error_of(limited)["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 61  # the window, rounded up
    # Another key has its own budget; health checks are never limited.
    other = client.post("/v1/captions", json=request, headers={"Authorization": "Bearer b"})
    assert other.status_code == 200
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))


def test_the_rate_limit_counts_images_not_requests(make_app) -> None:
    client = make_app(RATE_LIMIT="6/minute").test_client()
    five = {"images": [{"data": b64(c)} for c in (RED, BLUE, GREEN, RED, BLUE)]}
    one = {"images": [{"data": b64(GREEN)}]}
    answered = client.post("/v1/captions", json=five)
    assert answered.status_code == 200 and len(answered.get_json()["results"]) == 5
    assert client.post("/v1/captions", json=one).status_code == 200  # 6 of 6
    limited = client.post("/v1/captions", json=one)  # the third request, the 7th image
    assert limited.status_code == 429
    assert error_of(limited)["code"] == "rate_limited"
    assert "6 per 1 minute" in error_of(limited)["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 61


def test_a_request_over_the_whole_budget_is_refused_clearly(make_app) -> None:
    client = make_app(RATE_LIMIT="10/minute").test_client()
    eleven = {"images": [{"data": b64(RED)}] * 11}
    limited = client.post("/v1/captions", json=eleven)
    assert limited.status_code == 429
    error = error_of(limited)
    assert error["code"] == "rate_limited"
    assert "costs 11" in error["message"] and "split it" in error["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 61


def test_a_body_refused_whole_costs_one(make_app) -> None:
    client = make_app(RATE_LIMIT="4/minute", MAX_IMAGES_PER_REQUEST=3, MAX_CONTENT_LENGTH=2000)
    client = client.test_client()
    one = {"images": [{"data": b64(RED)}]}
    bad = client.post("/v1/captions", data="{not json", content_type="application/json")
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_request"
    too_many = client.post("/v1/captions", json={"images": one["images"] * 4})
    assert too_many.status_code == 400 and "too many images" in error_of(too_many)["message"]
    huge = client.post("/v1/captions", json={"images": [{"data": "A" * 4000}]})
    assert huge.status_code == 413 and error_of(huge)["code"] == "too_large"
    assert client.post("/v1/captions", json=one).status_code == 200  # 4 of 4
    assert client.post("/v1/captions", json=one).status_code == 429


def test_multipart_images_the_form_and_get_share_the_image_budget(make_app) -> None:
    client = make_app(RATE_LIMIT="5/minute").test_client()
    upload = {
        "image": [(io.BytesIO(RED), "red.png"), (io.BytesIO(BLUE), "blue.png")],
        "url": "http://127.0.0.1/x.png",  # blocked here: that image's error, still an image
    }
    results = client.post("/v1/captions", data=upload).get_json()["results"]
    assert [r.get("caption") is not None for r in results] == [True, True, False]  # 3 of 5
    form = {"image": (io.BytesIO(GREEN), "green.png"), "url": ""}
    assert client.post("/caption-form", data=form).status_code == 200  # 4 of 5
    got = client.get("/v1/captions", query_string={"url": "http://127.0.0.1/x.png"})
    assert got.status_code == 403  # 5 of 5: refused per image, but it was asked for
    form = {"image": (io.BytesIO(GREEN), "green.png"), "url": ""}
    limited = client.post("/caption-form", data=form)
    assert limited.status_code == 429 and limited.mimetype == "text/html"
    assert "rate limit exceeded" in limited.get_data(as_text=True)
    assert "Retry-After" in limited.headers


def test_behind_a_proxy_clients_are_told_apart_by_x_forwarded_for(make_app) -> None:
    client = make_app(RATE_LIMIT="1/minute", TRUSTED_PROXIES=1).test_client()
    request = {"images": [{"data": b64(RED)}]}

    def post(address: str) -> int:
        headers = {"X-Forwarded-For": address}
        return client.post("/v1/captions", json=request, headers=headers).status_code

    assert [post("203.0.113.1"), post("203.0.113.2"), post("203.0.113.1")] == [200, 200, 429]


def test_an_ipv6_client_is_limited_by_its_64_not_by_each_address(make_app) -> None:
    """A host may use any address of its /64: counting addresses would count nothing."""
    client = make_app(RATE_LIMIT="1/minute").test_client()
    request = {"images": [{"data": b64(RED)}]}

    def post(address: str) -> int:
        return client.post("/v1/captions", json=request, environ_base={"REMOTE_ADDR": address})

    codes = [post(a).status_code for a in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9")]
    assert codes == [200, 429]
    assert post("2001:db8:1:3::1").status_code == 200  # another /64
    assert post("::ffff:192.0.2.1").status_code == 200  # an IPv4 client, mapped
    assert post("192.0.2.1").status_code == 429  # the same client


def test_workers_share_cache_and_limits_through_redis(make_app) -> None:
    """Two apps stand for two gunicorn workers: one Redis holds captions and rate limits."""
    from redis_server import RedisServer

    with RedisServer() as redis:  # started on entry
        config = {"CACHE_URL": redis.url, "RATE_LIMIT": "4/minute"}
        one, two = make_app(**config).test_client(), make_app(**config).test_client()
        request = {"images": [{"data": b64(RED)}]}
        first = one.post("/v1/captions", json=request).get_json()["results"][0]
        second = two.post("/v1/captions", json=request).get_json()["results"][0]
        assert (first["cached"], second["cached"]) == (False, True)
        two_images = {"images": request["images"] * 2}
        assert one.post("/v1/captions", json=two_images).status_code == 200  # 4 of 4 in all
        assert two.post("/v1/captions", json=request).status_code == 429


def test_cors_for_extension_origins_only(client: FlaskClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = client.options(
        "/v1/captions",
        headers={
            **preflight,
            "Origin": EXTENSION,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == EXTENSION
    assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]

    refused = client.options(
        "/v1/captions", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers

    firefox = "moz-extension://0b1d2c3e-aaaa-bbbb-cccc-123456789abc"
    response = client.post(
        "/v1/captions", json={"images": [{"data": "!"}]}, headers={"Origin": firefox}
    )
    assert response.headers["Access-Control-Allow-Origin"] == firefox
    assert "Origin" in response.headers["Vary"]
    evil = client.post(
        "/v1/captions", json={"images": [{"data": "!"}]}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in evil.headers


def test_preflight_needs_no_api_key(make_app) -> None:
    client = make_app(API_KEYS=["k"], RATE_LIMIT="1/minute").test_client()
    headers = {"Origin": EXTENSION, "Access-Control-Request-Method": "POST"}
    for _ in range(3):
        response = client.options("/v1/captions", headers=headers)
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == EXTENSION


# --- metrics ---------------------------------------------------------------------------------


def test_metrics(client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)
    for name in (
        "altcap_http_requests_total",
        "altcap_http_request_duration_seconds",
        "altcap_batch_size",
        "altcap_batch_duration_seconds",
        "altcap_queue_depth",
        "altcap_model_ready",
        "altcap_cache_hits_total",
        "altcap_cache_misses_total",
        "altcap_images_total",
    ):
        assert name in text, name
    before = metric(client, "altcap_http_requests_total", endpoint="/v1/captions", status="200")
    client.post("/v1/captions", json={"images": [{"data": b64(RED)}, {"data": "!"}]})
    after = metric(client, "altcap_http_requests_total", endpoint="/v1/captions", status="200")
    assert after == before + 1
    assert metric(client, "altcap_images_total", outcome="captioned") == 1
    assert metric(client, "altcap_images_total", outcome="error") == 1
    assert metric(client, "altcap_cache_misses_total", kind="caption") == 1
    assert metric(client, "altcap_model_ready") == 1
    assert metric(client, "altcap_http_request_duration_seconds_count", endpoint="/v1/captions")
    stop = time.monotonic() + 5  # the engine calls on_batch just after answering
    while metric(client, "altcap_batch_size_count") < 1:
        assert time.monotonic() < stop, "no batch was recorded"
        time.sleep(0.01)
    assert metric(client, "altcap_batch_size_sum") >= 1


def test_apps_do_not_share_metrics(make_app) -> None:
    one, two = make_app().test_client(), make_app().test_client()
    one.get("/healthz")
    assert metric(one, "altcap_http_requests_total", endpoint="/healthz") == 1
    assert metric(two, "altcap_http_requests_total", endpoint="/healthz") == 0


# --- the page --------------------------------------------------------------------------------


def test_page_is_an_accessible_form(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    assert '<html lang="en">' in html
    assert '<label for="image">' in html and 'id="image"' in html
    assert '<label for="url">' in html and 'id="url"' in html
    assert 'aria-live="polite"' in html and 'role="status"' in html
    assert 'action="/caption-form"' in html and 'enctype="multipart/form-data"' in html
    assert 'id="api_key"' not in html  # no key field on an open server
    assert client.get("/static/altcap.js").status_code == 200
    assert ":focus-visible" in client.get("/static/altcap.css").get_data(as_text=True)


def test_answers_say_the_captions_language(make_app, tiny_dir, tmp_path) -> None:
    """A model trained on German captions says so in its config.json: answers carry its
    tag, and the page marks its caption with it (the page itself is English)."""
    german = tmp_path / "german"
    shutil.copytree(tiny_dir, german)
    config = json.loads((german / "config.json").read_text())
    (german / "config.json").write_text(json.dumps({**config, "language": "de"}))
    client = make_app(MODEL=str(german)).test_client()
    posted = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).get_json()
    assert posted["language"] == "de"
    assert client.get("/readyz").get_json()["language"] == "de"
    caption = posted["results"][0]["caption"]
    page = client.post("/caption-form", data={"image": (io.BytesIO(RED), "red.png"), "url": ""})
    html = page.get_data(as_text=True)
    assert f'<p id="caption" class="caption" lang="de">{escape(caption)}</p>' in html

    # English answers (ClipCap's) on the English page: no lang needed
    english = make_app().test_client()
    assert (
        english.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).get_json()["language"]
        == "en"
    )
    html = english.post("/caption-form", data={"image": (io.BytesIO(RED), "red.png")}).get_data(
        as_text=True
    )
    assert '<p id="caption" class="caption">' in html

    # a config.json whose language is no language tag: the model does not load
    (german / "config.json").write_text(json.dumps({**config, "language": "German!"}))
    refused = make_app(MODEL=str(german), wait=False).test_client()
    stop = time.monotonic() + 30
    while "could not be loaded" not in (ready := refused.get("/readyz")).get_data(as_text=True):
        assert time.monotonic() < stop, "the load error never showed"
        time.sleep(0.02)
    assert "language must be a language tag" in error_of(ready)["message"]


def test_the_form_works_without_javascript(client: FlaskClient) -> None:
    api = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).get_json()
    caption = api["results"][0]["caption"]
    response = client.post("/caption-form", data={"image": (io.BytesIO(RED), "red.png"), "url": ""})
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert f'<p id="caption" class="caption">{escape(caption)}</p>' in html

    empty = client.post("/caption-form", data={"url": ""})
    assert empty.status_code == 400 and empty.mimetype == "text/html"
    assert "choose an image file or paste an image URL" in empty.get_data(as_text=True)
    blocked = client.post("/caption-form", data={"url": "http://127.0.0.1/x.png"})
    assert blocked.status_code == 403
    assert "blocked address" in blocked.get_data(as_text=True)
    assert 'value="http://127.0.0.1/x.png"' in blocked.get_data(as_text=True)


def test_an_empty_caption_is_said_plainly(make_app) -> None:
    """The model wrote nothing readable (cleaned to ""): the API answers "", the page says so
    instead of showing an empty suggestion."""
    from captioner.pipeline import CaptionResult
    from captioner.web.api import NO_CAPTION

    client = make_app(ENGINE=FakeEngine(lambda: CaptionResult("", "\ufffd", 1))).test_client()
    api = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).get_json()
    assert api["results"][0]["caption"] == ""
    page = client.post("/caption-form", data={"image": (io.BytesIO(RED), "red.png"), "url": ""})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and f'<p id="empty" class="hint">{NO_CAPTION}</p>' in html
    assert 'id="caption"' not in html
    assert f'data-empty="{NO_CAPTION}"' in client.get("/").get_data(as_text=True)  # for the JS


def test_the_form_reports_a_body_over_the_limit(make_app) -> None:
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    response = client.post("/caption-form", data={"image": (io.BytesIO(b"\0" * 5000), "x.png")})
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert "larger than 1000 bytes" in response.get_data(as_text=True)


def test_the_form_asks_for_a_key_when_the_server_has_keys(make_app) -> None:
    client = make_app(API_KEYS=["sesame"]).test_client()
    assert '<label for="api_key">' in client.get("/").get_data(as_text=True)
    upload = {"image": (io.BytesIO(RED), "red.png")}
    refused = client.post("/caption-form", data=upload)
    assert refused.status_code == 401 and refused.mimetype == "text/html"
    upload = {"image": (io.BytesIO(RED), "red.png"), "api_key": "sesame"}
    assert client.post("/caption-form", data=upload).status_code == 200


# --- model identity: a model retrained in place, and no local paths in answers -------------


def test_a_model_retrained_in_place_is_not_answered_from_the_old_cache(
    make_app, tmp_path, server: ImageServer
) -> None:
    from captioner.model.tiny import make_tiny

    model_dir = make_tiny(tmp_path / "runs" / "photos" / "final", seed=0)

    def restart_and_caption() -> tuple[dict[str, Any], str]:
        """A new app on the same model directory and the same SQLite cache file."""
        client = make_app(MODEL=str(model_dir), ALLOW_PRIVATE_NETWORKS=True).test_client()
        posted = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).get_json()
        got = client.get("/v1/captions", query_string={"url": server.url("/blue.png")})
        return posted, got.headers["ETag"]

    first, etag = restart_and_caption()
    assert first["results"][0]["cached"] is False
    again, etag_again = restart_and_caption()  # same weights: the cache survives the restart
    assert again["results"][0]["cached"] is True
    assert (again["model"], etag_again) == (first["model"], etag)

    make_tiny(model_dir, seed=1)  # `train ... runs/photos` writes runs/photos/final again
    retrained, etag_retrained = restart_and_caption()
    assert retrained["results"][0]["cached"] is False
    assert retrained["model"] != first["model"]
    assert retrained["model"].startswith("photos/final@") and etag_retrained != etag


def test_answers_never_show_the_local_model_path(make_app, tiny_dir, server: ImageServer) -> None:
    client = make_app(ALLOW_PRIVATE_NETWORKS=True).test_client()
    answers = [
        client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}),
        client.get("/v1/captions", query_string={"url": server.url("/blue.png")}),
        client.get("/readyz"),
        client.get("/"),
        client.post("/caption-form", data={"image": (io.BytesIO(RED), "red.png"), "url": ""}),
        client.get("/openapi.json"),
    ]
    public = client.get("/readyz").get_json()["model"]
    assert client.post("/v1/captions", json={"images": []}).status_code == 400
    for response in answers:
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        assert str(tiny_dir) not in text and str(tiny_dir.parent) not in text
    assert answers[0].get_json()["model"] == public
    assert answers[1].get_json()["model"] == public
    assert public in answers[3].get_data(as_text=True)  # the page names the model too


def test_a_model_that_fails_to_load_does_not_show_its_path(make_app, tmp_path) -> None:
    folder = tmp_path / "srv" / "customer-x" / "final"
    folder.mkdir(parents=True)  # a folder, but no model directory in it
    client = make_app(wait=False, MODEL=str(folder)).test_client()
    stop = time.monotonic() + 30
    while "could not be loaded" not in (ready := client.get("/readyz")).get_data(as_text=True):
        assert time.monotonic() < stop, "the load error never showed"
        time.sleep(0.02)
    posted = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]})
    for response in (ready, posted):
        assert response.status_code == 503
        error = error_of(response)
        assert error["code"] == "model_unavailable"
        assert "customer-x/final" in error["message"] and str(tmp_path) not in error["message"]


@pytest.mark.parametrize("name", ["clipcap-coco", "someone/altcap-tiny"])
def test_names_and_hub_ids_are_reported_as_given(make_app, tiny_captioner, name: str) -> None:
    client = make_app(MODEL=name, LOADER=lambda: tiny_captioner).test_client()
    ready = client.get("/readyz").get_json()
    assert ready == {"status": "ready", "model": name, "language": "en"}
    posted = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}).get_json()
    assert posted["model"] == name
