"""Confidence, abstaining, the author's alt and candidates through the HTTP service.

The model is the trained demo model (``demo_dir``: it writes "A red circle on a white
background." for a drawn red circle, and its CLIP towers were trained together), loaded by
the real app: the confidences and verdicts here are the model's own, never patched. The
model without a text tower is the tiny one, saved without it.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_api
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from test_api import ROUTES, CheckedClient, ImageServer, b64, error_of, metric, wait_ready

from app import create_app
from captioner.config import DecodingSettings
from captioner.serve.cache import cache_key, caption_value, sha256_hex
from captioner.serve.metrics import ALT_CHECK_OUTCOMES, CONFIDENCE_OUTCOMES
from captioner.serve.parsing import MAX_AUTHOR_ALT_CHARS
from captioner.serve.service import ALT_CHECK_UNAVAILABLE
from captioner.train.synthetic import draw_shape
from captioner.trust import ALT_VERDICTS
from captioner.web.api import PAGE_WORDS

RED_CIRCLE = "A red circle on a white background."
BLUE_STAR = "A blue star on a white background."


def shape_png(colour: str = "red", shape: str = "circle", seed: int = 0) -> bytes:
    buf = io.BytesIO()
    draw_shape(colour, shape, rng=random.Random(seed)).save(buf, format="PNG")
    return buf.getvalue()


CIRCLE = shape_png()
server = test_api.server  # the image server on 127.0.0.1


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings a developer exported in their shell must not leak into these apps."""
    import os

    for name in list(os.environ):
        if name.startswith("ALTCAP_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def blind_dir(tmp_path_factory) -> Path:
    """The tiny model saved without CLIP's text tower: captions, and no scores."""
    from captioner.model.checkpoints import save_pretrained
    from captioner.model.tiny import tiny_tokenizer_and_model

    tokenizer, model = tiny_tokenizer_and_model("mlp", text_tower=False)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("blind") / "model")


@pytest.fixture
def make_app(demo_dir, tmp_path) -> Iterator[Callable[..., Flask]]:
    """Apps on the demo model (``MODEL`` overrides), OCR off unless asked: shapes say nothing."""
    made: list[Flask] = []

    def make(**config: Any) -> Flask:
        base = {
            "TESTING": True,
            "MODEL": str(demo_dir),
            "DEVICE": "cpu",
            "DTYPE": "float32",
            "DATA_DIR": tmp_path / f"data{len(made)}",
            "OCR": "off",
            "JOB_WORKERS": 0,
        }
        app = create_app({**base, **config})
        app.test_client_class = CheckedClient
        made.append(app)
        wait_ready(app.test_client(), timeout=60)
        return app

    yield make
    for app in made:
        app.extensions["altcap"].close()


@pytest.fixture
def client(make_app) -> FlaskClient:
    return make_app().test_client()


def post(client: FlaskClient, *images: dict[str, Any], **body: Any) -> list[dict[str, Any]]:
    response = client.post("/v1/captions", json={"images": list(images), **body})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["results"]


def circle(**extra: Any) -> dict[str, Any]:
    return {"data": b64(CIRCLE), **extra}


# --- confidence and abstaining ----------------------------------------------------------------


def test_a_drawn_circle_is_described_with_confidence(client: FlaskClient) -> None:
    (result,) = post(client, circle())
    assert result["caption"] == RED_CIRCLE and result["alt"] == RED_CIRCLE
    assert result["confident"] is True
    assert 0.9 < result["confidence"] < 1
    assert round(result["confidence"], 4) == result["confidence"]
    assert "alt_check" not in result and "candidates" not in result and "warnings" not in result
    assert metric(client, "altcap_confidence_total", outcome="confident") == 1
    assert metric(client, "altcap_confidence_total", outcome="not_confident") == 0


def test_below_the_minimum_confidence_the_result_says_not_confident(make_app) -> None:
    client = make_app(MIN_CONFIDENCE=0.999).test_client()
    (result,) = post(client, circle())
    # the suggestion is still there, for a person to check; clients write nothing
    assert result["alt"] == RED_CIRCLE and result["alt_from"] == "caption"
    assert result["confident"] is False and result["confidence"] < 0.999
    assert metric(client, "altcap_confidence_total", outcome="not_confident") == 1

    html = client.post("/caption-form", data={"image": (io.BytesIO(CIRCLE), "c.png")}).get_data(
        as_text=True
    )
    assert f'<p id="not-confident" class="warning">{escape(PAGE_WORDS["not_confident"])}' in html
    assert escape(RED_CIRCLE) in html  # shown with the warning, not hidden


def test_the_page_shows_the_confidence(client: FlaskClient) -> None:
    (result,) = post(client, circle())
    html = client.post("/caption-form", data={"image": (io.BytesIO(CIRCLE), "c.png")}).get_data(
        as_text=True
    )
    percent = round(result["confidence"] * 100)
    assert f"{escape(PAGE_WORDS['confidence'])}: {percent}%" in html
    assert 'id="not-confident"' not in html


def test_a_get_answer_is_confident_and_its_etag_names_the_minimum(
    make_app, server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``confident`` depends on ALTCAP_MIN_CONFIDENCE: a browser's copy must not be
    revalidated (304) across a change of it."""
    monkeypatch.setitem(ROUTES, "/circle.png", ("image/png", CIRCLE))
    query = {"url": server.url("/circle.png")}
    sure = (
        make_app(ALLOW_PRIVATE_NETWORKS=True).test_client().get("/v1/captions", query_string=query)
    )
    strict = make_app(ALLOW_PRIVATE_NETWORKS=True, MIN_CONFIDENCE=0.999).test_client()
    unsure = strict.get("/v1/captions", query_string=query)
    assert sure.get_json()["results"][0]["confident"] is True
    assert unsure.get_json()["results"][0]["confident"] is False
    assert sure.headers["ETag"] != unsure.headers["ETag"]
    revalidated = strict.get(
        "/v1/captions", query_string=query, headers={"If-None-Match": sure.headers["ETag"]}
    )
    assert revalidated.status_code == 200


def test_a_cached_answer_carries_its_confidence(client: FlaskClient) -> None:
    (first,) = post(client, circle())
    (second,) = post(client, circle())
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["confidence"] == first["confidence"] and second["confident"] is True
    assert metric(client, "altcap_confidence_total", outcome="confident") == 2


def test_a_cached_caption_without_confidence_is_captioned_again(make_app) -> None:
    """An entry written before confidences were (same model, same settings) is a miss for a
    model that scores: recomputed and overwritten, never answered without a confidence."""
    app = make_app()
    st = app.extensions["altcap"]
    key = cache_key(st.model.cache_id, DecodingSettings().to_dict(), sha256_hex(CIRCLE))
    st.cache.set(key, caption_value("An old caption.", 4))
    client = app.test_client()
    (result,) = post(client, circle())
    assert result["cached"] is False and result["caption"] == RED_CIRCLE
    assert result["confident"] is True
    assert st.cache.get(key)["confidence"] == result["confidence"]  # the entry overwritten
    (again,) = post(client, circle())
    assert again["cached"] is True and again["confidence"] == result["confidence"]


# --- the author's alt --------------------------------------------------------------------------


def test_an_authors_alt_that_describes_the_image_matches(client: FlaskClient) -> None:
    (result,) = post(client, circle(alt=RED_CIRCLE))
    assert result["alt_check"]["verdict"] == "matches"
    assert result["alt_check"]["score"] >= 0.5
    assert result["alt"] == RED_CIRCLE  # the suggestion keeps its meaning
    assert metric(client, "altcap_alt_checks_total", verdict="matches") == 1


def test_an_authors_alt_of_another_shape_is_suspect(client: FlaskClient) -> None:
    (wrong, right, none) = post(client, circle(alt=BLUE_STAR), circle(alt=RED_CIRCLE), circle())
    assert wrong["alt_check"]["verdict"] == "suspect"
    assert wrong["alt_check"]["score"] < right["alt_check"]["score"]
    assert wrong["caption"] == RED_CIRCLE  # AltCap's own words, as the suggestion
    assert "alt_check" not in none
    assert metric(client, "altcap_alt_checks_total", verdict="suspect") == 1
    assert metric(client, "altcap_alt_checks_total", verdict="matches") == 1


def test_an_alt_checked_before_is_answered_from_the_cache(make_app, tmp_path) -> None:
    """The check needs the image's embedding: a plain cached caption cannot answer it, but
    the same image checked against the same alt again (a page visited again) is answered
    from the cache, verdict included; another alt, or another rule for the verdict, is
    checked again. The caption computed for a check is stored for plain requests too."""
    client = make_app().test_client()
    (plain,) = post(client, circle())
    (checked,) = post(client, circle(alt=BLUE_STAR))
    (again,) = post(client, circle(alt=BLUE_STAR))
    (other,) = post(client, circle(alt=RED_CIRCLE))
    assert [r["cached"] for r in (plain, checked, again, other)] == [False, False, True, False]
    assert again["alt_check"] == checked["alt_check"]
    assert again["alt_check"]["verdict"] == "suspect"
    assert other["alt_check"]["verdict"] == "matches"
    assert metric(client, "altcap_alt_checks_total", verdict="suspect") == 2  # cached counts

    shared = tmp_path / "shared"  # two apps on one cache, the second with another rule
    first = make_app(DATA_DIR=shared).test_client()
    (checked,) = post(first, circle(alt=RED_CIRCLE))
    (plain,) = post(first, circle())
    assert (checked["cached"], plain["cached"]) == (False, True)
    stricter = make_app(DATA_DIR=shared, ALT_MATCH_SCORE=0.99).test_client()
    (again,) = post(stricter, circle(alt=RED_CIRCLE))
    (plain,) = post(stricter, circle())
    assert (again["cached"], plain["cached"]) == (False, True)


def test_a_cached_answer_with_a_broken_alt_check_is_checked_again(make_app) -> None:
    """An entry under an alt's key without a well-formed ``alt_check`` is a miss."""
    from captioner.serve.cache import alt_check_settings

    app = make_app()
    client, st = app.test_client(), app.extensions["altcap"]
    settings = DecodingSettings().to_dict()
    key = cache_key(
        st.model.cache_id,
        alt_check_settings(settings, BLUE_STAR, st.settings.alt_match_score),
        sha256_hex(CIRCLE),
    )
    st.cache.set(key, {**caption_value(RED_CIRCLE, 8, 0.9), "alt_check": {"verdict": "maybe"}})
    (result,) = post(client, circle(alt=BLUE_STAR))
    assert result["cached"] is False and result["alt_check"]["verdict"] == "suspect"
    assert st.cache.get(key)["alt_check"] == result["alt_check"]  # the entry overwritten


def test_an_empty_alt_is_no_alt(client: FlaskClient) -> None:
    (result,) = post(client, circle(alt="  "))
    assert "alt_check" not in result and "warnings" not in result


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ({"data": "AAAA", "alt": 7}, "images[0].alt must be a string"),
        ({"data": "AAAA", "alt": None}, "images[0].alt must be a string"),
        ({"data": "AAAA", "alt": ["x"]}, "images[0].alt must be a string"),
        ({"data": "AAAA", "alt": "x" * (MAX_AUTHOR_ALT_CHARS + 1)}, "at most"),
        ({"alt": "x"}, "one field, url or data"),
        ({"data": "AAAA", "url": "https://a.example/x.png", "alt": "x"}, "one field"),
    ],
)
def test_a_bad_alt_is_a_400(client: FlaskClient, image: dict[str, Any], says: str) -> None:
    response = client.post("/v1/captions", json={"images": [image]})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request" and says in error["message"]


def test_alts_as_multipart_fields_one_per_image(client: FlaskClient) -> None:
    def upload(**fields: Any) -> Any:
        data = {"image": [(io.BytesIO(CIRCLE), "a.png"), (io.BytesIO(CIRCLE), "b.png")]}
        return client.post("/v1/captions", data={**data, **fields})

    response = upload(alt=[BLUE_STAR, ""], read_text="false")
    assert response.status_code == 200, response.get_data(as_text=True)
    first, second = response.get_json()["results"]
    assert first["alt_check"]["verdict"] == "suspect" and "alt_check" not in second
    refused = upload(alt=[BLUE_STAR])
    assert refused.status_code == 400 and "one per image" in error_of(refused)["message"]


def test_the_page_checks_an_alt(client: FlaskClient) -> None:
    form = {"image": (io.BytesIO(CIRCLE), "c.png"), "alt": BLUE_STAR}
    html = client.post("/caption-form", data=form).get_data(as_text=True)
    assert f'<p id="alt-check" class="warning">{escape(PAGE_WORDS["alt_check"]["suspect"])}' in html
    assert f'value="{escape(BLUE_STAR)}"' in html  # the field keeps what was typed
    form = {"image": (io.BytesIO(CIRCLE), "c.png"), "alt": RED_CIRCLE}
    html = client.post("/caption-form", data=form).get_data(as_text=True)
    assert escape(PAGE_WORDS["alt_check"]["matches"]) in html


# --- candidates --------------------------------------------------------------------------------


def test_candidates_are_listed_best_first_and_cached_with_the_caption(client) -> None:
    decoding = {"method": "beam", "candidates": 3}
    (result,) = post(client, circle(), decoding=decoding)
    candidates = result["candidates"]
    assert 1 <= len(candidates) <= 3
    assert candidates[0]["caption"] == result["caption"] == RED_CIRCLE
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert len({c["caption"] for c in candidates}) == len(candidates)
    for c in candidates:
        assert {"caption", "score", "logprob", "similarity", "confidence"} <= set(c)
    assert candidates[0]["confidence"] == result["confidence"]

    (again,) = post(client, circle(), decoding=decoding)
    assert again["cached"] is True and again["candidates"] == candidates
    (plain,) = post(client, circle(), decoding={"method": "beam"})
    assert plain["cached"] is False and "candidates" not in plain


def test_candidates_are_a_decoding_setting_with_limits(client: FlaskClient) -> None:
    for decoding, code in [
        ({"method": "beam", "candidates": "3"}, "invalid_request"),
        ({"method": "greedy", "candidates": 3}, "invalid_settings"),
        ({"method": "beam", "beam_size": 2, "candidates": 3}, "invalid_settings"),
    ]:
        response = client.post("/v1/captions", json={"images": [circle()], "decoding": decoding})
        assert response.status_code == 400 and error_of(response)["code"] == code, decoding


# --- a model without CLIP's text tower ----------------------------------------------------------


def test_without_a_text_tower_there_is_no_confidence_and_no_check(make_app, blind_dir) -> None:
    client = make_app(MODEL=str(blind_dir)).test_client()
    (plain,) = post(client, circle())
    (checked,) = post(client, circle(alt=RED_CIRCLE))
    for result in (plain, checked):
        assert isinstance(result["caption"], str) and result["alt_from"] == "caption"
        assert not {"confidence", "confident", "alt_check"} & set(result)
    assert "warnings" not in plain
    assert checked["warnings"] == [ALT_CHECK_UNAVAILABLE]
    assert checked["cached"] is True  # nothing to check: the cache may answer
    (again,) = post(client, circle())
    assert again["cached"] is True and "confidence" not in again
    assert metric(client, "altcap_confidence_total", outcome="unscored") == 3
    assert metric(client, "altcap_alt_checks_total", verdict="unavailable") == 1

    html = client.post(
        "/caption-form", data={"image": (io.BytesIO(CIRCLE), "c.png"), "alt": "x"}
    ).get_data(as_text=True)
    assert escape(PAGE_WORDS["warnings"][ALT_CHECK_UNAVAILABLE]) in html
    assert 'id="confidence"' not in html and 'id="not-confident"' not in html


def test_every_outcome_is_scraped_from_the_start(client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)
    for outcome in CONFIDENCE_OUTCOMES:
        assert f'altcap_confidence_total{{outcome="{outcome}"}} 0.0' in text
    for verdict in ALT_CHECK_OUTCOMES:
        assert f'altcap_alt_checks_total{{verdict="{verdict}"}} 0.0' in text
    assert set(ALT_VERDICTS) < set(ALT_CHECK_OUTCOMES)
    assert set(PAGE_WORDS["alt_check"]) == set(ALT_VERDICTS)


def test_the_page_script_renders_confidence_and_checks(client: FlaskClient) -> None:
    script = client.get("/static/altcap.js").get_data(as_text=True)
    for needle in ("r.confident === false", "not_confident", "r.confidence", "r.alt_check"):
        assert needle in script
    page = client.get("/").get_data(as_text=True)
    assert 'name="alt"' in page and f'maxlength="{MAX_AUTHOR_ALT_CHARS}"' in page
