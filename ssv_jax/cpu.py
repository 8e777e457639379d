"""Process settings that make training on the CPU backend fast; ``configure()`` applies both
when the process will run on the CPU, and does nothing when it will use a GPU or TPU.

Call it first thing in an entry point (``main.py``, ``ssv-jax``, the benches): it imports nothing
heavy, and both settings must be in place before jax starts its backend. Which backend jax will
use is decided before jax starts (``accelerator_expected``): ``JAX_PLATFORMS`` when set (its
first entry), else whether a GPU/TPU plugin is installed (a ``jax_plugins`` module such as
``xla_cuda13``, or ``libtpu``). Set ``JAX_PLATFORMS=cpu`` to force the CPU settings.

- ``use_hugepage_malloc``: XLA:CPU allocates a step's temporaries (large for the paper's train
  step) afresh on every call, and with 4 KiB pages the kernel faults in and zeroes each page
  again on every step, which costs a large share of the step in system time. glibc's
  ``glibc.malloc.hugetlb=1`` tunable backs large allocations with transparent huge pages
  (``madvise`` mode, the usual default), so each fault maps a 2 MiB page instead of a 4 KiB one
  and the re-faulting mostly goes away. glibc reads tunables only at start-up, so the process
  re-executes itself once with ``GLIBC_TUNABLES`` extended (same interpreter, arguments and
  environment). Figures (``bench/bench_train.py``): ``bench/README.md``.
- ``use_cpu_xla_flags``: individual convolutions that oneDNN does not take (see
  ``ssv_jax.kernels``) go to Eigen instead of YNNPACK, which is faster for the encoders here.
"""

from __future__ import annotations

import os
import sys

CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def use_cpu_xla_flags() -> None:
    """Append ``CPU_XLA_FLAGS`` to ``os.environ['XLA_FLAGS']`` unless it already sets the YNN
    fusion type (a user's setting wins). No effect on GPU/TPU backends."""
    current = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in current:
        os.environ["XLA_FLAGS"] = (current + " " + CPU_XLA_FLAGS).strip()


def hugepage_malloc_env() -> dict | None:
    """The environment to re-execute with, or None where it would change nothing: not Linux
    with glibc, transparent huge pages off, or ``GLIBC_TUNABLES`` already sets
    ``glibc.malloc.hugetlb`` (so a user's ``glibc.malloc.hugetlb=0`` opts out)."""
    import platform

    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        not sys.platform.startswith("linux")
        or platform.libc_ver()[0] != "glibc"
        or "glibc.malloc.hugetlb" in tunables
    ):
        return None
    try:
        with open(_THP) as f:
            if "[never]" in f.read():
                return None
    except OSError:
        return None
    return {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGEPAGE_TUNABLE]))}


def use_hugepage_malloc() -> None:
    """Re-execute this process (``sys.orig_argv``) with huge-page malloc, once; see above."""
    env = hugepage_malloc_env()
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)


def accelerator_expected() -> bool:
    """Whether jax will start a GPU/TPU backend, judged without starting jax (see above)."""
    import importlib.util
    import pkgutil

    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return True
    try:
        import jax_plugins  # namespace package of installed PJRT plugins; imports no jax
    except ImportError:
        return False
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def configure() -> None:
    """``use_hugepage_malloc()`` then ``use_cpu_xla_flags()``, unless an accelerator is
    expected (``accelerator_expected``), where it changes nothing."""
    if accelerator_expected():
        return
    use_hugepage_malloc()
    use_cpu_xla_flags()
