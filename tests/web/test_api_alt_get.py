"""The author's alt on ``GET /v1/captions`` (``?url=...&alt=...``): checked as POST's, with
its limits and errors, and named by the ETag, so an answer with an ``alt_check`` is never
revalidated for a request with another alt or none.

The model is the trained demo model (see ``test_api_trust``): its verdicts are its own.
"""

from __future__ import annotations

from typing import Any

import pytest
import test_api
import test_api_trust
from flask.testing import FlaskClient
from test_api import ROUTES, ImageServer, error_of
from test_api_trust import BLUE_STAR, CIRCLE, RED_CIRCLE

from captioner.serve.parsing import MAX_AUTHOR_ALT_CHARS
from captioner.serve.service import ALT_CHECK_UNAVAILABLE

server = test_api.server  # the image server on 127.0.0.1
clean_environment = test_api_trust.clean_environment
blind_dir = test_api_trust.blind_dir
make_app = test_api_trust.make_app


@pytest.fixture
def circle_url(server: ImageServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(ROUTES, "/circle.png", ("image/png", CIRCLE))
    return server.url("/circle.png")


@pytest.fixture
def client(make_app) -> FlaskClient:
    return make_app(ALLOW_PRIVATE_NETWORKS=True).test_client()


def get(client: FlaskClient, url: str, **query: Any) -> Any:
    headers = {"If-None-Match": query.pop("etag")} if "etag" in query else {}
    return client.get("/v1/captions", query_string={"url": url, **query}, headers=headers)


def result_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    return result


def test_a_get_checks_the_alt_it_is_sent(client: FlaskClient, circle_url: str) -> None:
    wrong = result_of(get(client, circle_url, alt=BLUE_STAR))
    right = result_of(get(client, circle_url, alt=RED_CIRCLE))
    plain = result_of(get(client, circle_url))
    assert wrong["alt_check"]["verdict"] == "suspect"
    assert right["alt_check"]["verdict"] == "matches"
    assert wrong["alt_check"]["score"] < right["alt_check"]["score"]
    assert wrong["caption"] == right["caption"] == plain["caption"] == RED_CIRCLE
    assert "alt_check" not in plain and "warnings" not in plain
    assert (wrong["cached"], right["cached"], plain["cached"]) == (False, False, True)
    # the same answers as POST's
    posted = client.post("/v1/captions", json={"images": [{"url": circle_url, "alt": BLUE_STAR}]})
    assert posted.get_json()["results"][0]["alt_check"] == wrong["alt_check"]


def test_an_answer_with_an_alt_check_is_revalidated_only_for_the_same_alt(
    client: FlaskClient, circle_url: str
) -> None:
    suspect = get(client, circle_url, alt=BLUE_STAR)
    matches = get(client, circle_url, alt=RED_CIRCLE)
    plain = get(client, circle_url)
    blank = get(client, circle_url, alt="  ")  # no alt: the same answer as none
    etags = [r.headers["ETag"] for r in (suspect, matches, plain)]
    assert len(set(etags)) == 3
    assert blank.headers["ETag"] == plain.headers["ETag"] and "alt_check" not in result_of(blank)
    assert suspect.headers["Cache-Control"] == plain.headers["Cache-Control"]

    again = get(client, circle_url, alt=BLUE_STAR, etag=suspect.headers["ETag"])
    assert again.status_code == 304 and again.headers["ETag"] == suspect.headers["ETag"]
    other = get(client, circle_url, alt=RED_CIRCLE, etag=suspect.headers["ETag"])
    assert result_of(other)["alt_check"]["verdict"] == "matches"
    none = get(client, circle_url, etag=suspect.headers["ETag"])
    assert "alt_check" not in result_of(none)
    unchecked = get(client, circle_url, alt=BLUE_STAR, etag=plain.headers["ETag"])
    assert result_of(unchecked)["alt_check"]["verdict"] == "suspect"


@pytest.mark.parametrize(
    ("alts", "says"),
    [
        (["x" * (MAX_AUTHOR_ALT_CHARS + 1)], f"alt must be at most {MAX_AUTHOR_ALT_CHARS}"),
        ([BLUE_STAR, RED_CIRCLE], "2 alt parameters for one image"),
    ],
)
def test_a_bad_alt_on_a_get_is_a_400(
    client: FlaskClient, circle_url: str, alts: list[str], says: str
) -> None:
    response = get(client, circle_url, alt=alts)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request" and says in error["message"]
    assert response.headers["Cache-Control"] == "no-store" and "ETag" not in response.headers


def test_an_alt_of_the_longest_length_is_checked(client: FlaskClient, circle_url: str) -> None:
    longest = ("A blue star. " * MAX_AUTHOR_ALT_CHARS)[:MAX_AUTHOR_ALT_CHARS]
    assert "verdict" in result_of(get(client, circle_url, alt=longest))["alt_check"]


def test_without_a_text_tower_a_get_alt_is_unchecked_and_not_stored(
    make_app, blind_dir, circle_url: str
) -> None:
    client = make_app(MODEL=str(blind_dir), ALLOW_PRIVATE_NETWORKS=True).test_client()
    response = get(client, circle_url, alt=RED_CIRCLE)
    result = result_of(response)
    assert result["warnings"] == [ALT_CHECK_UNAVAILABLE] and "alt_check" not in result
    assert response.headers["Cache-Control"] == "no-store" and "ETag" not in response.headers


def test_the_openapi_document_declares_the_get_alt(client: FlaskClient) -> None:
    get_op = client.get("/openapi.json").get_json()["paths"]["/v1/captions"]["get"]
    (alt,) = [p for p in get_op["parameters"] if p["name"] == "alt"]
    assert alt["in"] == "query" and alt["required"] is False
    assert alt["schema"] == {"type": "string", "maxLength": MAX_AUTHOR_ALT_CHARS}
    assert "alt_check" in alt["description"] and "ETag" in alt["description"]
