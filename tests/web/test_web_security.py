"""The service against other web pages (issue 20, finding 6): allowed hosts (DNS rebinding),
cross-site posts (the page's form and /v1/captions), and the security headers of answers.

A browser marks where a request comes from (``Sec-Fetch-Site``, ``Origin``, ``Referer``);
the Flask test client sends what a browser would, and a real server on 127.0.0.1 (werkzeug,
then gunicorn) is asked with ``Host: evil.example``, as a DNS-rebinding page's requests are.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from gunicorn_server import Gunicorn
from test_api import EXTENSION, RED, CheckedClient, FakeEngine, b64, error_of, wait_ready

from app import create_app
from captioner.errors import ConfigError
from captioner.pipeline import CaptionResult
from captioner.serve.settings import Settings

EVIL = "https://evil.example"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings a developer exported in their shell must not leak into these apps."""
    for name in list(os.environ):
        if name.startswith("ALTCAP_"):
            monkeypatch.delenv(name)


@pytest.fixture
def make_app(tiny_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """``make_app(wait=True, **test_config)``: an app on the tiny model (or the ``ENGINE``
    given), its model loaded."""
    made: list[Flask] = []

    def make(wait: bool = True, **config: Any) -> Flask:
        base = {"TESTING": True, "MODEL": str(tiny_dir), "DEVICE": "cpu", "DATA_DIR": tmp_path}
        app = create_app({**base, "CACHE_URL": "off", **config})
        app.test_client_class = CheckedClient
        made.append(app)
        if wait:
            wait_ready(app.test_client())
        return app

    yield make
    for app in made:
        app.extensions["altcap"].close()


class CountingEngine(FakeEngine):
    """Captions every image "a red square." and counts them: did a refused request cost?"""

    def __init__(self) -> None:
        super().__init__(lambda: CaptionResult("a red square.", "a red square.", 1))
        self.images = 0

    def caption_images(self, images: list, settings: Any, timeout_s: float | None = None):
        self.images += len(images)
        return super().caption_images(images, settings, timeout_s)


@pytest.fixture
def engine() -> CountingEngine:
    return CountingEngine()


@pytest.fixture
def client(make_app, engine: CountingEngine) -> FlaskClient:
    return make_app(ENGINE=engine).test_client()


def upload() -> dict[str, Any]:
    return {"image": (io.BytesIO(RED), "red.png"), "url": ""}


# --- cross-site posts ----------------------------------------------------------------------

# (headers a browser sends, refused?) for a POST from each kind of sender
SENDERS = {
    "another site": ({"Sec-Fetch-Site": "cross-site", "Origin": EVIL}, True),
    "another port of the host (same-site)": (
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:9999"},
        True,
    ),
    "a sandboxed frame (Origin: null)": ({"Sec-Fetch-Site": "cross-site", "Origin": "null"}, True),
    "the page itself": ({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, False),
    "the user (address bar, bookmark)": ({"Sec-Fetch-Site": "none"}, False),
    "an old browser, another site": ({"Origin": EVIL}, True),
    "an old browser, the page itself": ({"Origin": "http://localhost"}, False),
    "an old browser without Origin, another site": ({"Referer": f"{EVIL}/page.html"}, True),
    "an old browser without Origin, the page": ({"Referer": "http://localhost/"}, False),
    "curl (no browser headers)": ({}, False),
    "the extension": ({"Sec-Fetch-Site": "cross-site", "Origin": EXTENSION}, False),
}
SENDER_CASES = [pytest.param(h, refused, id=name) for name, (h, refused) in SENDERS.items()]


@pytest.mark.parametrize(("headers", "refused"), SENDER_CASES)
def test_the_form_takes_posts_from_its_own_page_only(
    client: FlaskClient, engine: CountingEngine, headers: dict[str, str], refused: bool
) -> None:
    response = client.post("/caption-form", data=upload(), headers=headers)
    assert response.mimetype == "text/html"
    if refused:
        assert response.status_code == 403
        assert "a page of another site may not send this request" in response.get_data(as_text=True)
        assert engine.images == 0  # refused before any work
    else:
        assert response.status_code == 200, response.get_data(as_text=True)
        assert 'id="caption"' in response.get_data(as_text=True)


@pytest.mark.parametrize(("headers", "refused"), SENDER_CASES)
@pytest.mark.parametrize("body", ["multipart", "urlencoded", "json"])
def test_captions_refuse_posts_from_other_sites(
    client: FlaskClient, engine: CountingEngine, headers: dict[str, str], refused: bool, body: str
) -> None:
    """Forms (no preflight) and JSON (preflighted, but refused here too if a browser sent it)."""
    if body == "multipart":
        kwargs: dict[str, Any] = {"data": {"image": (io.BytesIO(RED), "red.png")}}
    elif body == "urlencoded":
        kwargs = {"data": {"url": "http://127.0.0.1/red.png"}}  # refused (private), still 200
    else:
        kwargs = {"json": {"images": [{"data": b64(RED)}]}}
    response = client.post("/v1/captions", headers=headers, **kwargs)
    if refused:
        assert response.status_code == 403
        assert error_of(response)["code"] == "cross_site_request"
        assert engine.images == 0
    else:
        assert response.status_code == 200, response.get_data(as_text=True)


def test_safe_methods_and_preflights_are_not_refused(client: FlaskClient) -> None:
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": EVIL}
    assert client.get("/healthz", headers=cross).status_code == 200
    assert client.get("/", headers=cross).status_code == 200  # a link to the page
    preflight = client.options(
        "/v1/captions", headers={**cross, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204 and "Access-Control-Allow-Origin" not in preflight.headers


def test_origins_the_operator_allows_may_post(make_app, engine: CountingEngine) -> None:
    client = make_app(ENGINE=engine, CORS_ORIGINS="https://cms.example").test_client()
    site = {"Sec-Fetch-Site": "cross-site"}
    ok = client.post(
        "/v1/captions", data=upload(), headers={**site, "Origin": "https://cms.example"}
    )
    assert (
        ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "https://cms.example"
    )
    extension = client.post("/v1/captions", data=upload(), headers={**site, "Origin": EXTENSION})
    assert extension.status_code == 403  # no longer in the list


def test_a_cross_site_post_is_refused_before_the_key_and_the_rate_limit(
    make_app, engine: CountingEngine
) -> None:
    client = make_app(ENGINE=engine, API_KEYS=["k"], RATE_LIMIT="1/minute").test_client()
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": EVIL}
    for _ in range(3):  # never charged to the address's budget
        assert client.post("/caption-form", data=upload(), headers=cross).status_code == 403
    form = {**upload(), "api_key": "k"}
    assert (
        client.post(
            "/caption-form", data=form, headers={"Sec-Fetch-Site": "same-origin"}
        ).status_code
        == 200
    )


# --- security headers ----------------------------------------------------------------------


def assert_page_headers(response) -> None:
    csp = {
        d.split()[0]: d.split()[1:] for d in response.headers["Content-Security-Policy"].split("; ")
    }
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]  # no inline script, no eval
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]  # the page's fetch() to /v1/captions
    assert csp["form-action"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_the_page_sends_security_headers(client: FlaskClient) -> None:
    assert_page_headers(client.get("/"))
    result = client.post("/caption-form", data=upload())
    assert result.status_code == 200
    assert_page_headers(result)
    error = client.post("/caption-form", data={"url": ""})
    assert error.status_code == 400
    assert_page_headers(error)


def test_every_answer_says_nosniff(client: FlaskClient) -> None:
    for path in ("/healthz", "/openapi.json", "/static/altcap.js", "/static/altcap.css", "/nope"):
        response = client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert "X-Frame-Options" not in response.headers  # HTML answers only
    api = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]})
    assert api.headers["X-Content-Type-Options"] == "nosniff"


def test_reports_keep_their_sandbox_and_cannot_be_framed(make_app) -> None:
    client = make_app(JOB_WORKERS=0).test_client()
    job = client.post("/v1/jobs", json={"images": ["http://a.example/1.png"]}).get_json()
    report = client.get(f"{job['url']}/results?format=html")
    assert report.status_code == 200 and report.mimetype == "text/html"
    assert report.headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
    assert report.headers["X-Frame-Options"] == "DENY"
    assert report.headers["Referrer-Policy"] == "same-origin"  # job URLs stay here


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.mark.parametrize("keys", [[], ["k"]])
def test_the_page_needs_nothing_its_csp_refuses(make_app, keys: list[str]) -> None:
    """Script and style from /static only: no inline script, style or event handler."""
    client = make_app(API_KEYS=keys).test_client()
    states = [client.get("/"), client.post("/caption-form", data={"url": ""})]
    if not keys:
        states.append(client.post("/caption-form", data=upload()))
    for response in states:
        parser = _Tags()
        parser.feed(response.get_data(as_text=True))
        for tag, attrs in parser.tags:
            assert tag != "style", "inline <style>: style-src 'self' refuses it"
            if tag == "script":
                assert (attrs.get("src") or "").startswith("/static/"), attrs
            if tag == "link" and attrs.get("rel") == "stylesheet":
                assert (attrs.get("href") or "").startswith("/static/"), attrs
            if tag == "form":
                assert (attrs.get("action") or "").startswith("/"), attrs
            assert "style" not in attrs, (tag, attrs)
            assert not [a for a in attrs if a.startswith("on")], (tag, attrs)


# --- allowed hosts -------------------------------------------------------------------------


def test_a_rebinding_host_is_refused_on_loopback(
    client: FlaskClient, engine: CountingEngine
) -> None:
    """The test client is a server on "localhost": its names and loopback's pass, no other."""
    for host in ("localhost", "localhost:5000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST."):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:5000", "localhost.evil.example", "127.0.0.2"):
        response = client.get("/healthz", headers={"Host": host})
        assert response.status_code == 400, host
        assert error_of(response)["code"] == "host_not_allowed"
        assert "ALTCAP_ALLOWED_HOSTS" in error_of(response)["message"]
    posted = client.post(
        "/v1/captions", json={"images": [{"data": b64(RED)}]}, headers={"Host": "evil.example"}
    )
    assert error_of(posted)["code"] == "host_not_allowed" and engine.images == 0


def test_the_host_is_checked_before_anything_else(make_app, engine: CountingEngine) -> None:
    client = make_app(ENGINE=engine, API_KEYS=["k"], RATE_LIMIT="1/minute").test_client()
    evil = {"Host": "evil.example", "Authorization": "Bearer k", "Origin": EXTENSION}
    for _ in range(3):
        response = client.post("/v1/captions", json={"images": [{"data": b64(RED)}]}, headers=evil)
        assert response.status_code == 400 and error_of(response)["code"] == "host_not_allowed"
        assert "Access-Control-Allow-Origin" in response.headers  # the extension reads why
    preflight = client.options(
        "/v1/captions", headers={**evil, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400
    page = client.post("/caption-form", data=upload(), headers={"Host": "evil.example"})
    assert page.status_code == 400 and page.mimetype == "text/html"
    assert "does not answer to the host" in page.get_data(as_text=True)
    assert engine.images == 0


def test_the_address_listened_on_is_allowed(client: FlaskClient) -> None:
    """SERVER_NAME is the address the server listens on (werkzeug's and gunicorn's)."""
    lan = {"SERVER_NAME": "192.168.1.20"}
    assert (
        client.get(
            "/healthz", headers={"Host": "192.168.1.20:8000"}, environ_overrides=lan
        ).status_code
        == 200
    )
    assert (
        client.get("/healthz", headers={"Host": "127.0.0.1"}, environ_overrides=lan).status_code
        == 200
    )
    refused = client.get("/healthz", headers={"Host": "evil.example"}, environ_overrides=lan)
    assert refused.status_code == 400


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
def test_listening_on_every_address_allows_any_host_with_a_warning(
    make_app, caplog: pytest.LogCaptureFixture, address: str
) -> None:
    """The Procfile binds 0.0.0.0: the server cannot know its public name, so it answers any,
    and says once that ALTCAP_ALLOWED_HOSTS should name it."""
    client = make_app().test_client()
    everywhere = {"SERVER_NAME": address}
    with caplog.at_level(logging.WARNING, logger="captioner.web.hooks"):
        for host in ("altcap.example.org", "evil.example", "localhost"):
            response = client.get("/healthz", headers={"Host": host}, environ_overrides=everywhere)
            assert response.status_code == 200
    warnings = [r for r in caplog.records if "ALTCAP_ALLOWED_HOSTS" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_allowed_hosts_setting(make_app) -> None:
    hosts = "altcap.example.org, *.example.net"  # not localhost: /readyz is refused to it
    client = make_app(wait=False, ENGINE=CountingEngine(), ALLOWED_HOSTS=hosts).test_client()
    everywhere = {"SERVER_NAME": "0.0.0.0"}  # a set list holds wherever the server listens
    for host, status in [
        ("altcap.example.org", 200),
        ("ALTCAP.example.org:443", 200),
        ("a.example.net", 200),
        ("example.net", 400),
        ("evil.example", 400),
        ("localhost", 400),  # not named
    ]:
        response = client.get("/healthz", headers={"Host": host}, environ_overrides=everywhere)
        assert response.status_code == status, host
    anything = make_app(ALLOWED_HOSTS="*").test_client()
    assert anything.get("/healthz", headers={"Host": "evil.example"}).status_code == 200


def test_allowed_hosts_parsing() -> None:
    hosts = Settings.load({"ALTCAP_ALLOWED_HOSTS": "Example.org., [::1], 10.0.0.5, *"})
    assert hosts.allowed_hosts == ("example.org", "::1", "10.0.0.5", "*")
    assert Settings.load({}).allowed_hosts == ()
    for bad in ("https://example.org", "example.org:8000", "example.org/x"):
        with pytest.raises(ConfigError, match="ALTCAP_ALLOWED_HOSTS"):
            Settings.load({"ALTCAP_ALLOWED_HOSTS": bad})


def test_the_openapi_document_lists_the_host_refusal(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").get_json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "default" in responses or "400" in responses, (method, path)


# --- real servers on 127.0.0.1 -------------------------------------------------------------


def ask(port: int, host: str, path: str = "/healthz") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def werkzeug_server(make_app) -> Iterator[int]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def test_dns_rebinding_against_a_loopback_server_fails(werkzeug_server: int) -> None:
    """A page of evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    port = werkzeug_server
    status, body = ask(port, "evil.example")
    assert status == 400 and b"host_not_allowed" in body
    assert ask(port, f"evil.example:{port}")[0] == 400
    assert ask(port, f"127.0.0.1:{port}")[0] == 200  # make run, the e2e tests' servers
    assert ask(port, f"localhost:{port}")[0] == 200


def test_gunicorn_refuses_a_rebinding_host(tiny_dir: Path, tmp_path: Path) -> None:
    """gunicorn gives the listening address as SERVER_NAME (here 127.0.0.1)."""
    server = Gunicorn(tiny_dir, tmp_path, workers=1)
    try:
        server.wait_ready()  # asks /readyz as 127.0.0.1:<port>
        assert ask(server.port, "evil.example")[0] == 400
        page_status, _ = ask(server.port, f"127.0.0.1:{server.port}", "/")
        assert page_status == 200
    finally:
        server.stop()
