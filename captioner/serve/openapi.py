"""The OpenAPI 3 document of the service, served at ``/openapi.json``.

Built per app from its settings, so the limits in it (images per request, the API key
scheme) are this deployment's. Blueprints registered elsewhere add their own paths
(``ServiceState.openapi_parts``, see ``captioner.web.jobs_api``) with ``schema_ref`` and
``json_content``. Plain dictionaries only: no Flask here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from captioner.config import (
    DECODING_METHODS,
    MAX_BEAM_SIZE,
    MAX_CANDIDATES,
    MAX_CLIP_WEIGHT,
    MAX_NEW_TOKENS,
    MAX_TEMPERATURE,
    DecodingSettings,
)
from captioner.crawl import urls
from captioner.describe import ALT_FROM
from captioner.serve.parsing import MAX_AUTHOR_ALT_CHARS, MAX_SEED, MAX_STOP_TOKEN
from captioner.serve.service import CANDIDATE_FIELDS, RESULT_WARNINGS
from captioner.serve.settings import Settings
from captioner.trust import ALT_VERDICTS

__all__ = ["DECODING_PROPERTIES", "build_openapi", "decoding_schema", "json_content", "schema_ref"]

MODEL_DESCRIPTION = (
    "The model's public name: a registry name or Hub repo id as configured; for a local model "
    "directory, its last two path components and a fingerprint of its content "
    "(`photos/final@1a2b3c4d`), never the server's path. The fingerprint changes when the "
    "model is retrained."
)
LANGUAGE_DESCRIPTION = (
    "The language of the captions, as a BCP 47 tag (`en` for ClipCap's models; a model "
    "trained with `--language` says its own): give it as the `lang` of the text a caption "
    "goes into where the page around it is in another language. Absent only from an answer "
    "given from the cache before the model has loaded, when the model is a name or Hub id."
)
# One schema per DecodingSettings field, its limits the dataclass's own constants;
# ``decoding_schema`` documents the fields the dataclass has (a field without an entry here
# fails the build of the document, and so the tests).
DECODING_PROPERTIES: dict[str, dict[str, Any]] = {
    "method": {"type": "string", "enum": list(DECODING_METHODS)},
    "beam_size": {"type": "integer", "minimum": 1, "maximum": MAX_BEAM_SIZE},
    "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
    "temperature": {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": MAX_TEMPERATURE,
    },
    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "nullable": True},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_NEW_TOKENS},
    "min_tokens": {"type": "integer", "minimum": 0, "maximum": MAX_NEW_TOKENS},
    "stop_token": {"type": "string", "maxLength": MAX_STOP_TOKEN, "nullable": True},
    "stop_at_eos": {"type": "boolean"},
    "candidates": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_CANDIDATES,
        "description": "Above 1: decode this many candidate captions per image (beam's "
        "best, at most beam_size; or nucleus samples; not greedy), answer the best by the "
        "language model's and CLIP's scores, and list them all in each result's candidates "
        "(docs/confidence.md)",
    },
    "clip_weight": {
        "type": "number",
        "minimum": 0,
        "maximum": MAX_CLIP_WEIGHT,
        "description": "With candidates above 1: CLIP's weight in the reranking score "
        "(0: the language model alone)",
    },
}
AUTHOR_ALT = {
    "type": "string",
    "maxLength": MAX_AUTHOR_ALT_CHARS,
    "description": "The alt text the image already has (its author's), to check against the "
    "image: the result gains alt_check (a model with CLIP's text tower) or the warning "
    "alt_check_unavailable. Empty: nothing to check. Such an image is captioned again, never "
    "answered from the caption cache",
}
READ_TEXT_DESCRIPTION = (
    "Read the text in the images (OCR), for `text` and an `alt` that says it; false: captions "
    "only (as with ALTCAP_OCR=off on the server)."
)
RESULT_PROPERTIES: dict[str, Any] = {  # one image's description (captioner/describe.py)
    "caption": {
        "type": "string",
        "description": "The model's words, bounded as alt text; empty when it wrote nothing "
        "readable",
    },
    "text": {
        "type": "string",
        "description": "What the image says, lines joined by a newline; empty when it says "
        "nothing. Absent when its text was not read: read_text false, ALTCAP_OCR=off, or a "
        "warning",
    },
    "alt": {
        "type": "string",
        "description": "What to write into the page: the text for an image of text, else the "
        "caption, followed by 'Appears to say:' and the text when the picture has some",
    },
    "alt_from": {
        "type": "string",
        "enum": list(ALT_FROM),
        "description": "What the alt was made of",
    },
    "warnings": {
        "type": "array",
        "items": {"type": "string", "enum": list(RESULT_WARNINGS)},
        "minItems": 1,
        "description": "Why the text is missing, or why an author's alt was not checked "
        "(the caption is answered all the same); absent when there is nothing to say",
    },
    "confidence": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "How well CLIP finds the caption matches the image, in [0, 1] "
        "(docs/confidence.md). Absent with a model without CLIP's text tower",
    },
    "confident": {
        "type": "boolean",
        "description": "confidence >= ALTCAP_MIN_CONFIDENCE. false: the caption is not to be "
        "said; an alt made from it (alt_from caption or caption_and_text) is to be withheld, "
        "shown only as a suggestion for a person to check. Absent when confidence is",
    },
    "alt_check": {
        "type": "object",
        "required": ["score", "verdict"],
        "properties": {
            "score": {
                "type": "number",
                "description": "The author's alt on this image's own scale: 0 = no better "
                "than 'an image.', 1 = as good as AltCap's caption",
            },
            "verdict": {"type": "string", "enum": list(ALT_VERDICTS)},
        },
        "description": "The author's alt checked against the image (when one was sent and "
        "the model has CLIP's text tower); suspect: flag it for a person, never replace it",
    },
    "candidates": {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["caption", "score"],
            "properties": {
                name: {"type": "string" if name == "caption" else "number"}
                for name in CANDIDATE_FIELDS
            },
        },
        "description": "With decoding.candidates above 1: every candidate caption, best "
        "first, with its score (the mix that ranks them), the language model's log-probability "
        "and, with a text tower, CLIP's similarity and confidence",
    },
}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON ``content`` map: ``{"application/json": {"schema": schema}}``."""
    return {"application/json": {"schema": schema}}


def schema_ref(name: str) -> dict[str, str]:
    """A reference to one of ``components.schemas``."""
    return {"$ref": f"#/components/schemas/{name}"}


def decoding_schema() -> dict[str, Any]:
    """The ``decoding`` object: one property per ``DecodingSettings`` field
    (``DECODING_PROPERTIES``), so a new field is documented once it exists."""
    names = [f.name for f in dataclasses.fields(DecodingSettings)]
    missing = [n for n in names if n not in DECODING_PROPERTIES]
    if missing:  # a programming error: say which field needs its schema
        raise KeyError(f"DECODING_PROPERTIES has no schema for {', '.join(missing)}")
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: DECODING_PROPERTIES[name] for name in names},
    }


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3 description of this service, with this deployment's limits in it."""
    error = {"description": "An error (see the code)", "content": json_content(schema_ref("Error"))}
    html = {"text/html": {"schema": {"type": "string"}}}
    decoding = decoding_schema()
    schemas = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": schema_ref("ErrorBody")},
        },
        "ErrorBody": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "example": "invalid_request"},
                "message": {"type": "string"},
            },
        },
        "Decoding": decoding,
        "ImageInput": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["url"],
                    "additionalProperties": False,
                    "properties": {"url": {"type": "string", "format": "uri"}, "alt": AUTHOR_ALT},
                },
                {
                    "type": "object",
                    "required": ["data"],
                    "additionalProperties": False,
                    "properties": {
                        "data": {
                            "type": "string",
                            "format": "byte",
                            "description": "Base64 image bytes (a data: URL also works)",
                        },
                        "alt": AUTHOR_ALT,
                    },
                },
            ]
        },
        "CaptionsRequest": {
            "type": "object",
            "required": ["images"],
            "additionalProperties": False,
            "properties": {
                "images": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_images_per_request,
                    "items": schema_ref("ImageInput"),
                },
                "decoding": schema_ref("Decoding"),
                "read_text": {
                    "type": "boolean",
                    "default": True,
                    "description": READ_TEXT_DESCRIPTION,
                },
            },
        },
        "Source": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": ["url", "upload", "data"]},
                "url": {"type": "string"},
                "filename": {"type": "string"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
        "Caption": {
            "type": "object",
            "required": ["caption", "alt", "alt_from", "tokens", "cached", "source"],
            "properties": {
                **RESULT_PROPERTIES,
                "tokens": {"type": "integer", "minimum": 0},
                "cached": {"type": "boolean", "description": "The caption came from the cache"},
                "source": schema_ref("Source"),
            },
        },
        "ImageError": {
            "type": "object",
            "required": ["error", "source"],
            "properties": {
                "error": schema_ref("ErrorBody"),
                "source": schema_ref("Source"),
            },
        },
        "CaptionsResponse": {
            "type": "object",
            "required": ["model", "decoding", "results"],
            "properties": {
                "model": {"type": "string", "description": MODEL_DESCRIPTION},
                "language": {"type": "string", "description": LANGUAGE_DESCRIPTION},
                "decoding": {"type": "object"},
                "results": {
                    "type": "array",
                    "items": {"anyOf": [schema_ref("Caption"), schema_ref("ImageError")]},
                },
            },
        },
    }
    captions_ok = {
        "description": "One result per image, in order",
        "content": json_content(schema_ref("CaptionsResponse")),
    }
    paths = {
        "/v1/captions": {
            "post": {
                "operationId": "createCaptions",
                "summary": "Caption images given as URLs, base64 data or uploads",
                "requestBody": {
                    "required": True,
                    "content": {
                        **json_content(schema_ref("CaptionsRequest")),
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "image": {
                                        "type": "array",
                                        "items": {"type": "string", "format": "binary"},
                                    },
                                    "url": {"type": "array", "items": {"type": "string"}},
                                    "alt": {
                                        "type": "array",
                                        "items": {
                                            "type": "string",
                                            "maxLength": MAX_AUTHOR_ALT_CHARS,
                                        },
                                        "description": "Authors' alts to check: none, or one "
                                        "per image in the images' order (uploads, then URLs), "
                                        "an empty one for an image without",
                                    },
                                    "decoding": {
                                        "type": "string",
                                        "description": "Decoding settings as JSON text",
                                    },
                                    "read_text": {
                                        "type": "boolean",
                                        "description": "true or false (also 1 or 0). "
                                        + READ_TEXT_DESCRIPTION,
                                    },
                                },
                            }
                        },
                    },
                },
                "responses": {"200": captions_ok, "default": error},
            },
            "get": {
                "operationId": "getCaption",
                "summary": "Caption one image by URL (cacheable: ETag, Cache-Control)",
                "parameters": [
                    {
                        "name": "url",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "maxLength": urls.MAX_URL_LENGTH},
                    },
                    {
                        "name": "read_text",
                        "in": "query",
                        "required": False,
                        "description": "true or false (also 1 or 0). " + READ_TEXT_DESCRIPTION,
                        "schema": {"type": "boolean", "default": True},
                    },
                    {
                        "name": "alt",
                        "in": "query",
                        "required": False,
                        "description": AUTHOR_ALT["description"] + " (the ETag names it: "
                        "an answer is revalidated only for the same alt); one alt parameter at "
                        "most",
                        "schema": {"type": "string", "maxLength": MAX_AUTHOR_ALT_CHARS},
                    },
                ],
                "responses": {
                    "200": captions_ok,
                    "304": {"description": "Not modified (If-None-Match matched the ETag)"},
                    "default": error,
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Alive",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string"}},
                            }
                        ),
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: 200 once the model is loaded",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Ready",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["status", "model", "language"],
                                "properties": {
                                    "status": {"type": "string"},
                                    "model": {
                                        "type": "string",
                                        "description": MODEL_DESCRIPTION,
                                    },
                                    "language": {
                                        "type": "string",
                                        "description": LANGUAGE_DESCRIPTION,
                                    },
                                },
                            }
                        ),
                    },
                    "503": {
                        "description": "Not ready",
                        "content": json_content(schema_ref("Error")),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of the server (under gunicorn: all its workers)",
                "responses": {
                    "200": {
                        "description": "Prometheus text format, or OpenMetrics when the Accept "
                        "header prefers it",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                    "default": error,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3", "content": json_content({"type": "object"})}
                },
            }
        },
        "/": {
            "get": {
                "operationId": "page",
                "summary": "A page to caption one image by hand",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": html}},
            }
        },
        "/caption-form": {
            "post": {
                "operationId": "captionForm",
                "summary": "The page's form without JavaScript: renders the page with the result",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "url": {"type": "string"},
                                    "alt": {"type": "string", "maxLength": MAX_AUTHOR_ALT_CHARS},
                                    "api_key": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "The page with the caption", "content": html},
                    "default": {"description": "The page with the error", "content": html},
                },
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "AltCap",
            "version": "1",
            "description": "Alt text for images: a ClipCap captioning model behind a small API.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if settings.api_keys:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
