"""CPU process settings (ssv_jax/cpu.py): XLA flags and the huge-page malloc re-exec."""

import os
import subprocess
import sys

import pytest

from ssv_jax import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import os, sys
import numpy as np
print("start", sys.argv[1:], flush=True)
from ssv_jax import cpu
cpu.configure()
a = np.ones(64 << 20 >> 3)            # 64 MiB: a malloc large enough to be mmapped
with open("/proc/self/smaps_rollup") as f:
    huge = [int(l.split()[1]) for l in f if l.startswith("AnonHugePages")][0]
print("tunables", os.environ.get("GLIBC_TUNABLES"), "huge_kib", huge,
      "xla", os.environ["XLA_FLAGS"])
"""


def run_child(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
    env.update(env_extra, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "a1", "--b=2"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_use_cpu_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    cpu.use_cpu_xla_flags()
    cpu.use_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=8 " + cpu.CPU_XLA_FLAGS
    )
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"  # a user's choice wins
    monkeypatch.setenv("XLA_FLAGS", mine)
    cpu.use_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"] == mine


@pytest.mark.skipif(
    cpu.hugepage_malloc_env() is None
    and "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""),
    reason="no glibc / transparent huge pages off on this machine",
)
@pytest.mark.slow
def test_configure_reexecutes_once_with_hugepage_malloc():
    lines = run_child({"GLIBC_TUNABLES": "glibc.malloc.check=0"})
    # Ran twice (the re-exec), with the same arguments; the user's tunable kept, ours appended.
    assert lines[:2] == ["start ['a1', '--b=2']"] * 2, lines
    _, tunables, _, huge, _, xla = lines[2].split()
    assert tunables == "glibc.malloc.check=0:" + cpu.HUGEPAGE_TUNABLE
    assert int(huge) >= 2048, lines  # the 64 MiB array sits on 2 MiB pages
    assert xla == cpu.CPU_XLA_FLAGS
    # A user's own hugetlb setting wins: no re-exec, no huge pages.
    lines = run_child({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert lines[0].startswith("start") and lines[1].startswith("tunables"), lines
    assert lines[1].split()[1] == "glibc.malloc.hugetlb=0"
