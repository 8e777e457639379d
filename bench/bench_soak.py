"""Soak benchmark: a long demo run through main.py, watched from outside.

    python bench/bench_soak.py [--steps=2000] [--checkpoint_every=100] [--workdir=DIR]
        [--sample_seconds=30] [--config=configs/simclr_am.py:demo]

Trains ``--config`` for ``--steps`` steps with a checkpoint every ``--checkpoint_every``
(``--mode=train``; the recipe's own validations included) and samples, every
``--sample_seconds``: the step reached, the resident memory of main.py and of its data worker
processes (MiB, from /proc), and the workdir's size on disk (MiB). At the end it prints the
samples, the steps/s of the first and the last 10% of the steps (from the logged views/s,
which leave validation out) and each quantity's first, peak and last value. Memory and disk
should stay flat (disk bounded by ``train.keep_checkpoints``) and steps/s should not fall.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB (0 once gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
    return total / 1024


def disk_mib(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # a checkpoint being renamed or deleted
                pass
    return total / 2**20


STEP = re.compile(r"^step\s+(\d+) \|.*views_per_s ([0-9.e+]+)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/simclr_am.py:demo")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--checkpoint_every", type=int, default=100)
    p.add_argument("--sample_seconds", type=float, default=30.0)
    p.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    p.add_argument("overrides", nargs="*", help="further --config.x=y flags for main.py")
    a = p.parse_args()
    workdir = a.workdir or tempfile.mkdtemp(prefix="ssv_soak_")
    argv = [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        f"--config={os.path.join(ROOT, a.config)}",
        f"--workdir={workdir}",
        f"--config.train.num_steps={a.steps}",
        f"--config.train.checkpoint_every={a.checkpoint_every}",
        "--config.train.progress_bar=False",
        "--mode=train",
        *a.overrides,
    ]
    log_path = os.path.join(workdir + ".log")
    print("running:", " ".join(argv), f"\nlog: {log_path}", flush=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        samples = []
        while proc.poll() is None:
            time.sleep(a.sample_seconds)
            with open(log_path) as f:
                steps = [int(m.group(1)) for m in map(STEP.match, f) if m]
            samples.append(
                (time.time() - t0, steps[-1] if steps else 0, rss_mib(proc.pid), disk_mib(workdir))
            )
            s = samples[-1]
            print(f"{s[0]:7.0f} s  step {s[1]:5d}  RSS {s[2]:7.0f} MiB  disk {s[3]:7.1f} MiB")
    if proc.returncode:
        sys.exit(f"main.py failed ({proc.returncode}); see {log_path}")
    with open(log_path) as f:
        rates = [(int(m.group(1)), float(m.group(2))) for m in map(STEP.match, f) if m]
    batch = None
    with open(log_path) as f:
        for line in f:
            m = re.search(r"global batch (\d+) x 2 views", line)
            if m:
                batch = int(m.group(1))
    tenth = max(a.steps // 10, 1)
    first = [r for s, r in rates if s <= tenth and s > rates[0][0]]  # the first holds compiles
    last = [r for s, r in rates if s > a.steps - tenth]

    def rate(views):
        return f"{sum(views) / len(views) / (2 * batch):.3f}" if views else "n/a (no step line)"

    print(f"\n{a.steps} steps in {time.time() - t0:.0f} s; workdir {workdir}")
    print(
        f"steps/s: first 10% {rate(first)}, last 10% {rate(last)} (from the logged views/s; "
        f"batch {batch})"
    )
    for name, k in (("host RSS (MiB)", 2), ("workdir on disk (MiB)", 3)):
        vals = [s[k] for s in samples if s[2] > 0]
        print(f"{name}: first {vals[0]:.0f}, peak {max(vals):.0f}, last {vals[-1]:.0f}")


if __name__ == "__main__":
    main()
