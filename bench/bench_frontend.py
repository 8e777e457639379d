"""Front-end throughput: log-mel + instance norm, jitted, in seconds of audio per second.

    .venv/bin/python bench/bench_frontend.py [--batch 64] [--seconds 2] [--reps 20]

Times both DFT variants (``dft="fft"`` and ``dft="matmul"``), median of --reps calls after a
compile call. Figures so far: bench/README.md.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssv_jax import frontend  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--seconds", type=float, default=2.0)
ap.add_argument("--reps", type=int, default=20)
args = ap.parse_args()

waves = 0.1 * jax.random.normal(jax.random.key(0), (args.batch, int(args.seconds * 16000)))
for dft in ("fft", "matmul"):
    cfg = frontend.default_frontend_config()
    cfg.dft = dft
    f = jax.jit(lambda w: frontend.features(w, cfg)[0])
    f(waves).block_until_ready()
    ts = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        f(waves).block_until_ready()
        ts.append(time.perf_counter() - t0)
    t = float(np.median(ts))
    print(
        f"dft={dft}: {args.batch} x {args.seconds}s in {t * 1e3:.1f} ms -> "
        f"{args.batch * args.seconds / t:.0f} s of audio per second"
    )
