"""The text in images through the HTTP service: caption, text, alt, alt_from and warnings.

The reader is the real one (Tesseract through tesserocr, its English model); the images are
drawn here with a real font. Only the reader's timing is ever patched (a slow read), never
what it reads.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import test_api
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from PIL import Image, ImageDraw, ImageFont
from test_api import RED, ROUTES, FakeEngine, ImageServer, b64, error_of, metric

from captioner.describe import ALT_FROM
from captioner.serve.cache import get_text, text_key
from captioner.serve.metrics import TEXT_READ_OUTCOMES
from captioner.serve.service import RESULT_WARNINGS
from captioner.web.api import PAGE_WORDS

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SALE = "SALE 50% OFF"
SIGN = "OPEN DAILY"


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def text_png(text: str = SALE) -> bytes:
    """An image of text: black on white, 40 px DejaVu Sans, nothing else."""
    image = Image.new("RGB", (420, 100), "white")
    ImageDraw.Draw(image).text((20, 25), text, fill="black", font=ImageFont.truetype(FONT, 40))
    return png(image)


def shapes(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A picture without text: a sun, a square and a triangle on a blue ground."""
    image = Image.new("RGB", (320, 240), (90, 160, 220))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 30, 130, 130), fill=(240, 200, 40))
    draw.rectangle((160, 100, 290, 210), fill=(40, 120, 40))
    draw.polygon([(60, 220), (120, 150), (180, 220)], fill=(180, 40, 40))
    return image.resize(size)


def sign_png() -> bytes:
    """A picture with some text: the shapes and a white sign saying ``SIGN`` in a corner."""
    image = shapes((640, 480))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 380, 400, 460), fill="white")
    draw.text((30, 395), SIGN, fill="black", font=ImageFont.truetype(FONT, 40))
    return png(image)


# test_api's fixtures, shared: apps on the tiny model, the image server, a clean environment
make_app = test_api.make_app
server = test_api.server
clean_environment = test_api.clean_environment

TEXT = text_png()
PICTURE = png(shapes())
SIGN_PICTURE = sign_png()
CAPTION = "A few shapes on a blue ground."


def fixed_caption() -> Any:
    from captioner.pipeline import CaptionResult

    return CaptionResult(CAPTION, CAPTION.lower(), 8)


def post(client: FlaskClient, image: bytes, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/captions", json={"images": [{"data": b64(image)}], **body})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["results"][0]


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


@pytest.fixture
def fixed(make_app: Callable[..., Flask]) -> FlaskClient:
    """An app whose engine always says ``CAPTION`` (the tiny model's words are noise)."""
    return make_app(ENGINE=FakeEngine(fixed_caption)).test_client()


def slow_reads(app: Flask, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> threading.Event:
    """Make the app's real reader wait ``delay_s`` before it reads; set the event to stop."""
    reader = app.extensions["altcap"].reader.reader
    real = reader.read
    fast = threading.Event()

    def read(image: Image.Image, timeout_s: float | None = None) -> Any:
        if not fast.is_set():
            time.sleep(delay_s)
        return real(image, timeout_s=timeout_s)

    monkeypatch.setattr(reader, "read", read)
    return fast


# --- the alt rule, end to end ----------------------------------------------------------------


def test_an_image_of_text_gets_its_text_as_alt(client: FlaskClient) -> None:
    result = post(client, TEXT)
    assert result["text"] == SALE
    assert result["alt"] == SALE and result["alt_from"] == "text"
    assert isinstance(result["caption"], str) and result["tokens"] > 0
    assert "warnings" not in result
    assert metric(client, "altcap_text_reads_total", outcome="text") == 1


def test_a_picture_without_text_gets_its_caption(client: FlaskClient) -> None:
    result = post(client, PICTURE)
    assert result["text"] == ""
    assert result["alt"] == result["caption"] and result["alt_from"] == "caption"
    assert "warnings" not in result
    assert metric(client, "altcap_text_reads_total", outcome="none") == 1


def test_a_picture_with_some_text_gets_the_caption_then_the_text(fixed: FlaskClient) -> None:
    result = post(fixed, SIGN_PICTURE)
    assert result["caption"] == CAPTION and result["text"] == SIGN
    assert result["alt"] == f"{CAPTION} Appears to say: {SIGN}"
    assert result["alt_from"] == "caption_and_text"


def test_the_alt_follows_the_services_rule(make_app: Callable[..., Flask]) -> None:
    """ALTCAP_OCR_LABEL and ALTCAP_MAX_ALT_CHARS reach the alt (Settings.alt_rule)."""
    client = make_app(ENGINE=FakeEngine(fixed_caption), OCR_LABEL="Sign:").test_client()
    assert post(client, SIGN_PICTURE)["alt"] == f"{CAPTION} Sign: {SIGN}"
    short = make_app(ENGINE=FakeEngine(fixed_caption), MAX_ALT_CHARS=20).test_client()
    result = post(short, SIGN_PICTURE)
    assert len(result["alt"]) <= 20 and len(result["caption"]) <= 20


def test_every_image_of_a_request_is_read(fixed: FlaskClient) -> None:
    images = [{"data": b64(TEXT)}, {"data": b64(PICTURE)}, {"data": "!!"}, {"data": b64(RED)}]
    results = fixed.post("/v1/captions", json={"images": images}).get_json()["results"]
    assert [r.get("alt_from") for r in results] == ["text", "caption", None, "caption"]
    assert [r.get("text") for r in results] == [SALE, "", None, ""]
    assert results[2]["error"]["code"] == "invalid_request"


# --- asking for no text --------------------------------------------------------------------


def test_read_text_false_gives_the_caption_alone(client: FlaskClient) -> None:
    result = post(client, TEXT, read_text=False)
    assert "text" not in result and "warnings" not in result
    assert result["alt"] == result["caption"] and result["alt_from"] == "caption"
    assert (
        sum(metric(client, "altcap_text_reads_total", outcome=o) for o in TEXT_READ_OUTCOMES) == 0
    )
    assert post(client, TEXT, read_text=True)["text"] == SALE


@pytest.mark.parametrize("value", ["false", 0, None, [], {"on": False}])
def test_read_text_must_be_a_boolean(client: FlaskClient, value: Any) -> None:
    response = client.post(
        "/v1/captions", json={"images": [{"data": b64(TEXT)}], "read_text": value}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request" and "read_text" in error["message"]


def test_read_text_as_a_form_field(client: FlaskClient) -> None:
    def form(value: str | None) -> Any:
        data: dict[str, Any] = {"image": [(io.BytesIO(TEXT), "sale.png")]}
        if value is not None:
            data["read_text"] = value
        return client.post("/v1/captions", data=data, content_type="multipart/form-data")

    assert form(None).get_json()["results"][0]["text"] == SALE
    assert "text" not in form("false").get_json()["results"][0]
    assert "text" not in form("0").get_json()["results"][0]
    assert form("True").get_json()["results"][0]["text"] == SALE
    refused = form("maybe")
    assert refused.status_code == 400 and error_of(refused)["code"] == "invalid_request"


def test_ocr_off_gives_the_caption_alone(make_app: Callable[..., Flask]) -> None:
    app = make_app(OCR="off")
    assert app.extensions["altcap"].reader is None
    client = app.test_client()
    for image in (TEXT, SIGN_PICTURE):
        result = post(client, image)
        assert "text" not in result and "warnings" not in result
        assert result["alt"] == result["caption"] and result["alt_from"] == "caption"


def test_a_reader_that_cannot_open_warns_on_every_result(make_app: Callable[..., Flask]) -> None:
    """No language data for ALTCAP_OCR_LANGS: captions as ever, each with ocr_unavailable."""
    app = make_app(OCR_LANGS="zzz")
    assert app.extensions["altcap"].reader_warning == "ocr_unavailable"
    client = app.test_client()
    result = post(client, TEXT)
    assert result["warnings"] == ["ocr_unavailable"] and "text" not in result
    assert result["alt"] == result["caption"] and result["alt_from"] == "caption"
    assert metric(client, "altcap_text_reads_total", outcome="unavailable") == 1
    assert "warnings" not in post(client, TEXT, read_text=False)  # not asked: nothing to say


# --- the cache ---------------------------------------------------------------------------------


def test_a_cached_answer_carries_its_text(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    first = post(client, TEXT)
    second = post(client, TEXT)
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["text"] == first["text"] == SALE
    assert second["alt"] == SALE and second["alt_from"] == "text"
    assert metric(client, "altcap_cache_hits_total", kind="text") == 1
    assert metric(client, "altcap_text_reads_total", outcome="cached") == 1
    st = app.extensions["altcap"]
    sha = second["source"]["sha256"]
    assert get_text(st.cache, text_key(sha, st.reader.engine_id)) == {
        "text": SALE,
        "mostly_text": True,
    }


def test_a_caption_cached_without_its_text_gets_it_read(client: FlaskClient) -> None:
    """Captioned with read_text false, asked again with it: the caption from the cache, the
    text read now."""
    assert "text" not in post(client, TEXT, read_text=False)
    again = post(client, TEXT)
    assert again["cached"] is True and again["text"] == SALE and again["alt"] == SALE
    assert metric(client, "altcap_text_reads_total", outcome="text") == 1


def test_a_repeated_url_carries_its_text(make_app, server: ImageServer, monkeypatch) -> None:
    monkeypatch.setitem(ROUTES, "/sale.png", ("image/png", TEXT))
    monkeypatch.setitem(ROUTES, "/sale-again.png", ("image/png", TEXT))
    client = make_app(ALLOW_PRIVATE_NETWORKS=True).test_client()
    request = {"images": [{"url": server.url("/sale.png")}]}
    first = client.post("/v1/captions", json=request).get_json()["results"][0]
    second = client.post("/v1/captions", json=request).get_json()["results"][0]
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["text"] == first["text"] == SALE
    assert server.hits["/sale.png"] == 1  # the URL memo, the caption, the text: no download

    # A URL whose caption is cached and whose text is not is downloaded again, for the reader.
    client.post("/v1/captions", json=request | {"read_text": False})  # sale.png's caption
    off = {"images": [{"url": server.url("/sale-again.png")}], "read_text": False}
    unread = client.post("/v1/captions", json=off).get_json()["results"][0]
    assert "text" not in unread and unread["cached"] is True  # the same bytes as sale.png
    on = client.post("/v1/captions", json={**off, "read_text": True}).get_json()["results"][0]
    assert on["cached"] is True and on["text"] == SALE
    assert server.hits["/sale-again.png"] == 1
    assert metric(client, "altcap_text_reads_total", outcome="text") == 1


# --- a reading that fails ------------------------------------------------------------------


def test_a_reading_past_its_time_gives_the_caption_with_a_warning(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(OCR_TIMEOUT_S=0.3)
    client = app.test_client()
    fast = slow_reads(app, monkeypatch, delay_s=1.0)
    started = time.monotonic()
    result = post(client, TEXT)
    assert time.monotonic() - started < 5
    assert result["warnings"] == ["ocr_timeout"]
    assert "text" not in result
    assert result["alt"] == result["caption"] and result["alt_from"] == "caption"
    assert metric(client, "altcap_text_reads_total", outcome="timeout") == 1

    # a failure is never cached: once the reader is quick again, the text is read
    fast.set()
    time.sleep(1.0)  # the slow read still holding a reader thread finishes
    again = post(client, TEXT)
    assert again["cached"] is True and again["text"] == SALE and "warnings" not in again


def test_a_tiny_ocr_timeout_times_out(make_app: Callable[..., Flask]) -> None:
    client = make_app(OCR_TIMEOUT_S=0.001).test_client()
    response = client.post("/v1/captions", json={"images": [{"data": b64(TEXT)}]})
    assert response.status_code == 200
    result = response.get_json()["results"][0]
    assert result["warnings"] == ["ocr_timeout"] and result["alt"] == result["caption"]


def test_a_reader_that_fails_gives_the_caption_with_a_warning(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tesseract failing on one image (played by an exception inside the real reader's
    engine call): that image's warning, never a 500."""
    import captioner.read.reader as reader_module

    app = make_app()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tesseract crashed")

    monkeypatch.setattr(reader_module, "_prepare", broken)
    result = post(app.test_client(), TEXT)
    assert result["warnings"] == ["ocr_failed"] and "text" not in result
    assert result["alt_from"] == "caption"


# --- GET /v1/captions and the page -------------------------------------------------------


def test_get_answers_carry_text_and_their_etag_says_so(
    make_app, server: ImageServer, monkeypatch
) -> None:
    monkeypatch.setitem(ROUTES, "/sale.png", ("image/png", TEXT))
    client = make_app(ALLOW_PRIVATE_NETWORKS=True).test_client()
    url = server.url("/sale.png")
    read = client.get("/v1/captions", query_string={"url": url})
    assert read.status_code == 200
    assert read.get_json()["results"][0]["text"] == SALE
    unread = client.get("/v1/captions", query_string={"url": url, "read_text": "false"})
    assert "text" not in unread.get_json()["results"][0]
    assert read.headers["ETag"] != unread.headers["ETag"]
    etag = {"If-None-Match": read.headers["ETag"]}
    assert client.get("/v1/captions", query_string={"url": url}, headers=etag).status_code == 304
    bad = client.get("/v1/captions", query_string={"url": url, "read_text": "yes please"})
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_request"


def test_a_get_answer_without_its_text_is_not_kept(
    make_app, server: ImageServer, monkeypatch
) -> None:
    monkeypatch.setitem(ROUTES, "/sale.png", ("image/png", TEXT))
    client = make_app(ALLOW_PRIVATE_NETWORKS=True, OCR_LANGS="zzz").test_client()
    response = client.get("/v1/captions", query_string={"url": server.url("/sale.png")})
    assert response.get_json()["results"][0]["warnings"] == ["ocr_unavailable"]
    assert response.headers["Cache-Control"] == "no-store" and "ETag" not in response.headers


def test_the_page_shows_the_alt_and_what_it_was_made_of(fixed: FlaskClient) -> None:
    def form(image: bytes) -> str:
        response = fixed.post("/caption-form", data={"image": (io.BytesIO(image), "x.png")})
        assert response.status_code == 200
        return response.get_data(as_text=True)

    html = form(SIGN_PICTURE)
    alt = f"{CAPTION} Appears to say: {SIGN}"
    assert f'<p id="alt" class="caption">{escape(alt)}</p>' in html
    assert escape(PAGE_WORDS["alt_from"]["caption_and_text"]) in html
    assert f'<dd id="caption">{escape(CAPTION)}</dd>' in html
    assert f'<dd id="text" class="text">{SIGN}</dd>' in html

    html = form(TEXT)
    assert f'<p id="alt" class="caption">{SALE}</p>' in html
    assert f'<dd id="text" class="text">{SALE}</dd>' in html

    html = form(PICTURE)  # the caption is the alt: shown once, and no text was found
    assert f'<p id="caption" class="caption">{escape(CAPTION)}</p>' in html
    assert 'id="alt"' not in html and escape(PAGE_WORDS["no_text"]) in html


def test_the_pages_words_cover_every_alt_and_warning() -> None:
    assert set(PAGE_WORDS["alt_from"]) == set(ALT_FROM)
    assert set(PAGE_WORDS["warnings"]) == set(RESULT_WARNINGS)


def test_the_page_script_renders_text_results(client: FlaskClient) -> None:
    script = client.get("/static/altcap.js").get_data(as_text=True)
    for needle in ("alt_from", "warnings", 'paragraph(alt, "alt"', '"text"'):
        assert needle in script
    assert "data-words=" in client.get("/").get_data(as_text=True)
