"""The console script: declared in pyproject.toml, the same main as ``python -m captioner``.

The installed wheel itself is checked by tests/packaging/check_wheel.sh (``make test-wheel``).
"""

import os
from pathlib import Path

from captioner import __main__ as entry_module
from captioner.cli import main as cli_main
from captioner.cpus import OMP_WAIT_POLICY

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_is_the_module_entry():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '\n[project.scripts]\naltcap = "captioner.__main__:entry"' in pyproject
    assert callable(entry_module.entry)


def test_entry_sets_the_omp_wait_policy_before_the_cli_runs(monkeypatch):
    seen = {}

    def main():
        seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
        return 3

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cli_main, "main", main)
    assert entry_module.entry() == 3
    assert seen == {"policy": OMP_WAIT_POLICY}


def test_entry_keeps_a_policy_already_set(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(cli_main, "main", lambda: 0)
    assert entry_module.entry() == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
