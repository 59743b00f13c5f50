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
