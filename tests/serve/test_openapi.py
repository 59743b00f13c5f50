"""The OpenAPI document's decoding limits are DecodingSettings' own: at each documented limit
a setting is accepted, one step past it refused (the schema is built from the same constants,
so the two cannot drift apart)."""

from __future__ import annotations

import dataclasses

import pytest

from captioner.config import DECODING_METHODS, DecodingSettings
from captioner.errors import InvalidSettings
from captioner.serve import parsing
from captioner.serve.openapi import build_openapi
from captioner.serve.settings import Settings


def decoding_schema() -> dict:
    return build_openapi(Settings.load({}, {}))["components"]["schemas"]["Decoding"]["properties"]


def test_the_methods_are_the_settings_methods() -> None:
    assert decoding_schema()["method"]["enum"] == list(DECODING_METHODS)
    for method in DECODING_METHODS:
        DecodingSettings(method=method).validate()


@pytest.mark.parametrize(
    ("field", "past"),
    [("beam_size", 1), ("max_tokens", 1), ("temperature", 0.5)],
)
def test_each_documented_maximum_is_the_settings_maximum(field: str, past: float) -> None:
    most = decoding_schema()[field]["maximum"]
    DecodingSettings(**{field: most}).validate()
    with pytest.raises(InvalidSettings):
        DecodingSettings(**{field: most + past}).validate()


# What a field needs beside it to reach its maximum (candidates: not greedy, and at most
# beam_size with beam search; min_tokens: at most max_tokens).
AT_MOST = {"candidates": {"method": "nucleus"}, "min_tokens": {"max_tokens": 256}}


def test_every_decoding_setting_is_documented_and_parsed() -> None:
    """A new DecodingSettings field reaches the document and the request parser at once."""
    fields = [f.name for f in dataclasses.fields(DecodingSettings)]
    assert list(decoding_schema()) == fields
    assert set(fields) <= set(parsing._DECODING_TYPES)


@pytest.mark.parametrize(
    "field", [name for name, prop in decoding_schema().items() if "maximum" in prop]
)
def test_every_documented_maximum_is_accepted_and_one_past_it_refused(field: str) -> None:
    """Through the request parser: its own limits (seed) and the dataclass's alike."""
    prop = decoding_schema()[field]
    past = 1 if prop["type"] == "integer" else 0.5
    base = AT_MOST.get(field, {})
    parsing.parse_decoding({**base, field: prop["maximum"]})
    with pytest.raises(InvalidSettings):
        parsing.parse_decoding({**base, field: prop["maximum"] + past})


def test_min_tokens_is_bounded_like_max_tokens() -> None:
    props = decoding_schema()
    assert props["min_tokens"]["maximum"] == props["max_tokens"]["maximum"]


def test_results_document_caption_text_and_alt() -> None:
    """A result's alt_from and warnings take the values the service gives (one declaration
    each: ``describe.ALT_FROM``, the service's warning codes), and read_text is an input of
    every way to ask."""
    from captioner.describe import ALT_FROM
    from captioner.serve.service import RESULT_WARNINGS, TEXT_WARNING_OUTCOMES

    doc = build_openapi(Settings.load({}, {}))
    schemas = doc["components"]["schemas"]
    caption = schemas["Caption"]
    assert {"caption", "alt", "alt_from"} <= set(caption["required"])
    assert "text" not in caption["required"] and "warnings" not in caption["required"]
    props = caption["properties"]
    assert props["alt_from"]["enum"] == list(ALT_FROM)
    assert props["warnings"]["items"]["enum"] == list(RESULT_WARNINGS)
    assert set(TEXT_WARNING_OUTCOMES) < set(RESULT_WARNINGS)
    assert props["text"]["type"] == "string"

    assert schemas["CaptionsRequest"]["properties"]["read_text"]["type"] == "boolean"
    post = doc["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    assert "read_text" in post["multipart/form-data"]["schema"]["properties"]
    get = doc["paths"]["/v1/captions"]["get"]["parameters"]
    assert [p["schema"]["type"] for p in get if p["name"] == "read_text"] == ["boolean"]


def test_results_document_confidence_alt_check_and_candidates() -> None:
    """The trust fields are optional (a model without a text tower has none), the verdicts
    are trust's, and an author's alt is an input of every way to send an image."""
    from captioner.serve.service import ALT_CHECK_UNAVAILABLE, CANDIDATE_FIELDS
    from captioner.trust import ALT_VERDICTS

    doc = build_openapi(Settings.load({}, {}))
    schemas = doc["components"]["schemas"]
    caption = schemas["Caption"]
    props = caption["properties"]
    new = {"confidence", "confident", "alt_check", "candidates"}
    assert new <= set(props) and not new & set(caption["required"])
    assert (props["confidence"]["minimum"], props["confidence"]["maximum"]) == (0, 1)
    assert props["confident"]["type"] == "boolean"
    assert props["alt_check"]["properties"]["verdict"]["enum"] == list(ALT_VERDICTS)
    assert set(props["candidates"]["items"]["properties"]) == set(CANDIDATE_FIELDS)
    assert ALT_CHECK_UNAVAILABLE in props["warnings"]["items"]["enum"]

    for variant in schemas["ImageInput"]["oneOf"]:
        alt = variant["properties"]["alt"]
        assert alt["type"] == "string" and alt["maxLength"] == parsing.MAX_AUTHOR_ALT_CHARS
        assert variant["required"] != ["alt"]
    post = doc["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    assert post["multipart/form-data"]["schema"]["properties"]["alt"]["type"] == "array"
    form = doc["paths"]["/caption-form"]["post"]["requestBody"]["content"]
    assert form["multipart/form-data"]["schema"]["properties"]["alt"]["type"] == "string"
