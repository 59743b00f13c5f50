"""How many CPUs this process may really use, and so how many threads torch should run.

torch sizes its thread pool by the host's cores. In a container with a CPU quota, or a
process pinned to some cores, that is too many: the OpenMP threads of one operation wait for
each other at its end, so a thread that has no core to run on stalls the whole operation,
and a caption that takes 0.3 s alone can take seconds. The usable count is the smaller of
the CPU affinity mask and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``),
rounded up.

Stdlib only: ``gunicorn.conf.py`` calls it in a worker before torch is imported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = [
    "OMP_WAIT_POLICY",
    "TORCH_THREADS_ENV",
    "cgroup_cpu_limit",
    "torch_threads",
    "usable_cpus",
]

TORCH_THREADS_ENV = "ALTCAP_TORCH_THREADS"  # declared in Settings (torch_threads)
# OpenMP threads that wait at the end of an operation sleep instead of spinning. Spinning
# wins a little on an idle machine and loses badly on a shared one: with another process
# busy on one of two cores, a caption with 2 spinning threads took ~12 s instead of ~0.5 s
# (passive). Read by OpenMP when torch loads, so set before that (gunicorn.conf.py).
OMP_WAIT_POLICY = "PASSIVE"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = 150 ms per 100 ms), or None.

    cgroup v2 names it in ``cpu.max`` ("max 100000" or "150000 100000"), v1 in
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1: none). A limit of the
    process's own cgroup is what containers set; unreadable files mean no limit known.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(quota, period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
            return _ratio(quota, period)
        except (OSError, ValueError):
            continue
    return None


def _ratio(quota: str, period: str) -> float | None:
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: its affinity mask, capped by its cgroup's quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def torch_threads(processes: int = 1, root: Path = CGROUP_ROOT) -> int:
    """Threads for torch in one of ``processes`` model processes sharing this machine.

    ``ALTCAP_TORCH_THREADS`` wins, then ``OMP_NUM_THREADS``; otherwise the usable CPUs
    shared out among the processes, at least one each. A value that is not a positive
    integer is ignored here (``Settings`` refuses a bad ``ALTCAP_TORCH_THREADS`` with a
    clear message when the app starts).
    """
    for name in (TORCH_THREADS_ENV, "OMP_NUM_THREADS"):
        raw = os.environ.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return max(1, usable_cpus(root) // max(1, processes))
