"""The documentation's generated parts: declared once in the code, written into the pages.

Three blocks of the docs are not written by hand: the configuration table (from
``Settings``), ``train``'s option table (from ``TrainOptions``) and the HTTP operations (from
the OpenAPI document the service serves at ``/openapi.json``). Each sits in its page between

    <!-- generated: NAME (python docs/generate.py) -->
    ...
    <!-- end generated: NAME -->

so that it reads on GitHub as on the site. Three ways in:

- ``python docs/generate.py`` rewrites the blocks in place (``make docs`` runs it first);
- as an MkDocs hook (``mkdocs.yml``), it renders the fresh block and warns when the page's
  copy is out of date, so ``mkdocs build --strict`` (``make test``) fails on drift; it also
  publishes the whole OpenAPI document as ``openapi.json`` beside the pages;
- ``tests/test_docs.py`` checks the blocks with ``stale_blocks()``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) \(python docs/generate.py\) -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- end generated: (?P=name) -->)",
    re.DOTALL,
)
log = logging.getLogger("mkdocs.hooks.altcap")  # under "mkdocs": --strict counts its warnings


def _on_path() -> None:
    """Make ``captioner`` and ``app`` importable from a checkout (mkdocs runs from the root)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def settings_table() -> str:
    """Every ``ALTCAP_*`` variable with its default and meaning (``Settings``)."""
    _on_path()
    from captioner.serve.settings import markdown_table

    return markdown_table()


def train_options_table() -> str:
    """``train``'s options with their defaults and meanings (``TrainOptions``)."""
    _on_path()
    from captioner.train.options import options_table

    return options_table()


@cache
def openapi_document() -> dict[str, Any]:
    """The document ``GET /openapi.json`` answers, for a service on the default settings.

    Built by the real application factory and asked through Flask's test client, so it is
    exactly what a server serves; ``ALTCAP_*`` variables of the shell are left out (the docs
    describe the defaults), and the model never loads: the loader waits until the document
    is read, then the app is closed, so no engine thread outlives the call (a test suite
    asks for it too).
    """
    _on_path()
    from captioner.serve.engine import ModelUnavailable
    from captioner.web.app import create_app

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALTCAP_")}
    read = threading.Event()

    def loader() -> None:
        read.wait()
        raise ModelUnavailable("no model: the docs only read /openapi.json")

    with tempfile.TemporaryDirectory() as data, mock.patch.dict(os.environ, clean, clear=True):
        app = create_app(
            {
                "TESTING": True,
                "DATA_DIR": data,
                "CACHE_URL": "off",
                "JOB_WORKERS": 0,
                "LOADER": loader,
            }
        )
        engine_log = logging.getLogger("captioner")
        level = engine_log.level
        try:
            return app.test_client().get("/openapi.json").get_json()
        finally:
            engine_log.setLevel(logging.CRITICAL)  # "could not be loaded": meant, not news
            read.set()
            app.extensions["altcap"].close()
            engine_log.setLevel(level)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def openapi_operations() -> str:
    """The operations of the OpenAPI document as Markdown: one section each."""
    doc = openapi_document()
    lines: list[str] = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            lines += [f"### `{method.upper()} {path}`", "", _cell(op.get("summary", "")), ""]
            if op.get("description"):
                lines += [" ".join(op["description"].split()), ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | required | meaning |", "|---|---|---|---|"]
                for p in params:
                    required = "yes" if p.get("required") else "no"
                    meaning = _cell(p.get("description", ""))
                    lines.append(f"| `{p['name']}` | {p['in']} | {required} | {meaning} |")
                lines.append("")
            body = op.get("requestBody")
            if body:
                kinds = ", ".join(f"`{k}`" for k in body.get("content", {}))
                lines += [f"Request body: {kinds}.", ""]
            lines += ["| answer | meaning |", "|---|---|"]
            for status, answer in op.get("responses", {}).items():
                kinds = ", ".join(f"`{k}`" for k in answer.get("content", {}))
                meaning = _cell(answer.get("description", ""))
                lines.append(f"| {status} | {meaning}{f' ({kinds})' if kinds else ''} |")
            lines.append("")
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {
    "settings-table": settings_table,
    "train-options-table": train_options_table,
    "openapi-operations": openapi_operations,
}


def render(text: str) -> str:
    """The page's text with every generated block made fresh."""

    def fresh(m: re.Match[str]) -> str:
        body = GENERATORS[m["name"]]().rstrip("\n") + "\n"
        return f"{m.group(1)}{body}{m.group(4)}"

    return BLOCK.sub(fresh, text)


def stale_blocks() -> list[str]:
    """``page: block`` for every generated block whose page copy is out of date."""
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        if render(text) != text:
            stale += [f"{page.name}: {m['name']}" for m in BLOCK.finditer(text)]
    return stale


def main() -> None:
    """Rewrite the generated blocks of every page in place."""
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"updated {page.relative_to(ROOT)}")


# --- MkDocs hooks -------------------------------------------------------------------------


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    new = render(markdown)
    if new != markdown:
        log.warning(
            "%s: a generated block is out of date; run `python docs/generate.py`",
            page.file.src_uri,
        )
    return new


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    """Publish the whole OpenAPI document beside the pages, as ``openapi.json``."""
    from mkdocs.structure.files import File

    content = json.dumps(openapi_document(), indent=2, sort_keys=False) + "\n"
    files.append(File.generated(config, "openapi.json", content=content))
    return files


if __name__ == "__main__":
    main()
