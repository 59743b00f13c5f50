"""Property-based tests of the API against its own OpenAPI document (schemathesis).

schemathesis reads /openapi.json from the WSGI app and sends generated requests (valid and
invalid) to every operation. The test fails on any 5xx, and on any response that does not
match the document: so the document stays true, and no input, however odd, breaks the
server. URL downloads are stubbed (the check of the URL itself is real) so that generated
host names never reach DNS.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from helpers import png_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from captioner.crawl import fetch, urls

PUBLIC_ADDRESS = "93.184.215.14"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "30"))  # per operation and mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fake_fetch(url: str, limits: urls.FetchLimits = urls.DEFAULT_LIMITS, **_: object):
    """Check the URL for real (resolving every host to a public address), then 'download'."""
    urls.check_url(url, limits, resolver=lambda host, port: [PUBLIC_ADDRESS])
    return fetch.FetchedImage(url, url, "image/png", png_bytes())


@pytest.fixture(scope="module")
def api_schema(tiny_dir, tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    from app import create_app

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("ALTCAP_"):
                mp.delenv(name)
        mp.setattr(fetch, "fetch_image", fake_fetch)
        app = create_app(
            {
                "MODEL": str(tiny_dir),
                "DEVICE": "cpu",
                "DATA_DIR": tmp_path_factory.mktemp("schema-data"),
                "MAX_IMAGES_PER_REQUEST": 4,  # keeps the worst generated request cheap
                "REQUEST_TIMEOUT_S": 120,
                "JOB_WORKERS": 0,  # generated jobs are stored and queued, never run here
                "JOB_MAX_IMAGES": 8,
                "JOB_MAX_PAGES": 4,
            }
        )
        engine = app.extensions["altcap"].engine
        deadline = time.monotonic() + 30
        while not engine.ready:
            assert engine.load_error is None, engine.load_error
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.02)
        yield schemathesis.openapi.from_wsgi("/openapi.json", app)
        app.extensions["altcap"].close()


# Every operation of the document (schemathesis leaves out the document's own path), and
# whether it takes input worth fuzzing with invalid data.
OPERATIONS = [
    ("POST", "/v1/captions", True),
    ("GET", "/v1/captions", True),
    ("GET", "/healthz", False),
    ("GET", "/readyz", False),
    ("GET", "/metrics", False),
    ("GET", "/", False),
    ("POST", "/caption-form", True),
    ("POST", "/v1/jobs", True),
    ("GET", "/v1/jobs/{job_id}", True),
    ("DELETE", "/v1/jobs/{job_id}", True),
    ("POST", "/v1/jobs/{job_id}/cancel", True),
    ("GET", "/v1/jobs/{job_id}/results", True),
    ("GET", "/v1/jobs/{job_id}/pages/{n}/patched", True),
]
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path, has_input in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if has_input or mode is GenerationMode.POSITIVE
]


def test_every_operation_is_tested(api_schema) -> None:
    documented = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert documented == {(method, path) for method, path, _ in OPERATIONS}


# schemathesis' own pytest plugin (schema.parametrize) does not run under pytest 9 yet, so
# each operation gets a plain hypothesis test over the strategy schemathesis builds for it.
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_matches_the_document(
    api_schema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize="SCHEMATHESIS_EXAMPLES" not in os.environ,  # CI: the same examples each run
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        case.call_and_validate(checks=CHECKS)

    check()


# --- strings JSON allows and UTF-8 cannot encode --------------------------------------------

LONE_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
WITH_SURROGATE = st.tuples(st.text(max_size=8), LONE_SURROGATE, st.text(max_size=8)).map("".join)


def json_operations(schema: schemathesis.BaseSchema) -> list[Any]:
    """Every documented operation whose request body is JSON."""
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        content = operation.definition.raw.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            found.append(operation)
    return found


def with_surrogate(draw: st.DrawFn, body: Any) -> Any:
    """``body`` with one string (a value or a key, at any depth) given a lone surrogate, or
    a new member holding one where the body has no string to spoil."""
    places: list[tuple[Any, Any]] = []  # (container, key or index) of every string and key

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                places.append((value, ("key", key)))
                if isinstance(item, str):
                    places.append((value, key))
                walk(item)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    places.append((value, i))
                walk(item)

    walk(body)
    bad = draw(WITH_SURROGATE)
    if not places:
        return {"images" if not isinstance(body, dict) else bad: bad}
    container, where = draw(st.sampled_from(places))
    if isinstance(where, tuple):  # a key: rename it, keeping its value
        container[bad] = container.pop(where[1])
    else:
        container[where] = bad
    return body


def test_every_json_operation_refuses_lone_surrogates(api_schema, tiny_dir) -> None:
    """``"\\ud800"`` is valid JSON and not valid text: every JSON endpoint answers 400 with a
    stable code naming the fault, for a surrogate anywhere in an otherwise valid body."""
    operations = json_operations(api_schema)
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/v1/captions"),
        ("POST", "/v1/jobs"),
    }
    client = api_schema.app.test_client()

    for operation in operations:

        @given(case=operation.as_strategy(GenerationMode.POSITIVE), data=st.data())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case, data) -> None:
            body = with_surrogate(data.draw, copy.deepcopy(case.body))
            raw = json.dumps(body)  # ensure_ascii: the surrogate travels as a \\u escape
            assert "\\ud" in raw
            response = client.open(
                case.formatted_path,
                method=case.method,
                data=raw,
                content_type="application/json",
                headers={
                    k: v for k, v in (case.headers or {}).items() if k.lower() != "content-type"
                },
            )
            assert response.status_code == 400, (response.status_code, response.get_data())
            error = response.get_json()["error"]
            assert error["code"] in {"invalid_request", "invalid_job"}
            assert "surrogate" in error["message"]

        check()
