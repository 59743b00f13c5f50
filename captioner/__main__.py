"""``python -m captioner`` and the ``altcap`` console script: one entry, the same subcommands."""

import os
import sys

from captioner.cpus import OMP_WAIT_POLICY


def entry() -> int:
    """Run the CLI on ``sys.argv``; the console script ``altcap`` (pyproject.toml) calls this."""
    # Before anything loads torch (and with it OpenMP, which reads this once): see cpus.py.
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    from captioner.cli.main import main  # after the variable above; torch only in commands

    return main()


if __name__ == "__main__":
    sys.exit(entry())
