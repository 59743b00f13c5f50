"""The OpenAPI document's decoding limits are DecodingSettings' own: at each documented limit
a setting is accepted, one step past it refused (the schema is built from the same constants,
so the two cannot drift apart)."""

from __future__ import annotations

import pytest

from captioner.config import DECODING_METHODS, DecodingSettings
from captioner.errors import InvalidSettings
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


def test_min_tokens_is_bounded_like_max_tokens() -> None:
    props = decoding_schema()
    assert props["min_tokens"]["maximum"] == props["max_tokens"]["maximum"]


def test_results_document_caption_text_and_alt() -> None:
    """A result's alt_from and warnings take the values the service gives (one declaration
    each: ``describe.ALT_FROM``, the service's warning codes), and read_text is an input of
    every way to ask."""
    from captioner.describe import ALT_FROM
    from captioner.serve.service import TEXT_WARNING_OUTCOMES

    doc = build_openapi(Settings.load({}, {}))
    schemas = doc["components"]["schemas"]
    caption = schemas["Caption"]
    assert {"caption", "alt", "alt_from"} <= set(caption["required"])
    assert "text" not in caption["required"] and "warnings" not in caption["required"]
    props = caption["properties"]
    assert props["alt_from"]["enum"] == list(ALT_FROM)
    assert props["warnings"]["items"]["enum"] == list(TEXT_WARNING_OUTCOMES)
    assert props["text"]["type"] == "string"

    assert schemas["CaptionsRequest"]["properties"]["read_text"]["type"] == "boolean"
    post = doc["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    assert "read_text" in post["multipart/form-data"]["schema"]["properties"]
    get = doc["paths"]["/v1/captions"]["get"]["parameters"]
    assert [p["schema"]["type"] for p in get if p["name"] == "read_text"] == ["boolean"]
