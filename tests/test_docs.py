"""The documentation's generated blocks match the code they are generated from.

``docs/generate.py`` writes the configuration table (``Settings``), ``train``'s option table
(``TrainOptions``) and the HTTP operations (the served OpenAPI document) into the pages; this
fails when a page's copy is stale, as ``mkdocs build --strict`` (``make test``) does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_blocks_are_up_to_date() -> None:
    gen = load_generator()
    assert not gen.stale_blocks(), "stale generated blocks: run `python docs/generate.py`"


def test_every_generator_has_its_block() -> None:
    gen = load_generator()
    found = {
        m["name"]
        for page in (ROOT / "docs").glob("*.md")
        for m in gen.BLOCK.finditer(page.read_text(encoding="utf-8"))
    }
    assert found == set(gen.GENERATORS)


def test_the_operations_cover_every_path_of_the_document() -> None:
    gen = load_generator()
    page = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    for path, item in gen.openapi_document()["paths"].items():
        for method in item:
            assert f"### `{method.upper()} {path}`" in page
