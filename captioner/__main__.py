import os
import sys

from captioner.cpus import OMP_WAIT_POLICY

# Before anything loads torch (and with it OpenMP, which reads this once): see cpus.py.
os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)

from captioner.cli.main import main  # after the variable above

sys.exit(main())
