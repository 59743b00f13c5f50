"""The light paths stay light: ``python -m captioner --help`` and reading the service's
settings must not import torch or transformers (seconds of start-up, for nothing).

Checked in a fresh interpreter, where nothing else has imported them yet; import-linter
(``make lint``) holds the static side of the same rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "flask")


def _loaded(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_help_does_not_import_torch() -> None:
    code = (
        "import contextlib, io, runpy, sys\n"
        "sys.argv = ['captioner', '--help']\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    runpy.run_module('captioner', run_name='__main__')"
    )
    assert _loaded(code) == []


@pytest.mark.parametrize("command", ["caption", "batch", "embed", "train", "evaluate", "worker"])
def test_subcommand_help_does_not_import_torch(command: str) -> None:
    code = (
        "import contextlib, io\n"
        "from captioner.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main([{command!r}, '--help'])"
    )
    assert _loaded(code) == []


def test_reading_the_settings_does_not_import_torch() -> None:
    loaded = _loaded(
        "import os\nfrom captioner.serve.settings import Settings\nSettings.load(os.environ, {})"
    )
    assert loaded == []
