"""Torch's thread count from the CPUs a process may really use: affinity and cgroup quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from captioner import cpus
from captioner.serve.engine import Overloaded
from captioner.serve.service import Admission


@pytest.fixture(autouse=True)
def no_thread_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALTCAP_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2, a quota of 1.5 CPUs
        ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
        ({"cpu.max": "garbage"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_cgroup_cpu_limit(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    assert cpus.cgroup_cpu_limit(cgroup(tmp_path, files)) == limit


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    assert cpus.usable_cpus(cgroup(tmp_path, {})) == 8  # the affinity mask alone
    assert cpus.usable_cpus(cgroup(tmp_path, {"cpu.max": "150000 100000"})) == 2  # rounded up
    assert cpus.usable_cpus(cgroup(tmp_path, {"cpu.max": "10000 100000"})) == 1


def test_torch_threads_shares_the_usable_cpus_among_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cgroup(tmp_path, {"cpu.max": "400000 100000"})  # 4 CPUs of the 8 in the mask
    assert [cpus.torch_threads(n, root) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpus.torch_threads(2, root) == 3  # an explicit OpenMP setting wins
    monkeypatch.setenv("ALTCAP_TORCH_THREADS", "5")
    assert cpus.torch_threads(2, root) == 5  # AltCap's own, over it
    monkeypatch.setenv("ALTCAP_TORCH_THREADS", "0")
    assert cpus.torch_threads(2, root) == 3  # 0: automatic, so OMP_NUM_THREADS again


def test_importing_cpus_does_not_import_torch() -> None:
    """gunicorn.conf.py imports it in each worker before the app: torch must not come too."""
    import subprocess
    import sys

    code = "import sys, captioner.cpus; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_admission_refuses_beyond_its_limit_and_frees_slots() -> None:
    gate = Admission(2)
    with gate.slot(lambda: 3), gate.slot(lambda: 3):
        assert gate.active == 2
        with pytest.raises(Overloaded) as info, gate.slot(lambda: 3):
            pass
        assert info.value.retry_after == 3 and info.value.http_status == 503
    assert gate.active == 0
    with gate.slot(lambda: 1):  # free again
        assert gate.active == 1
    unlimited = Admission(0)
    with unlimited.slot(lambda: 1), unlimited.slot(lambda: 1), unlimited.slot(lambda: 1):
        assert unlimited.active == 3
