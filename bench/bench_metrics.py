"""EER + minDCF: jitted ssv_jax.metrics vs a scikit-learn roc_curve computation, same scores.

    .venv/bin/python bench/bench_metrics.py [--sizes 1e5,1e6,1e7] [--repeats 3]

Prints seconds per call (best of --repeats, after one warm-up/compile call) and the ratio.
Figures so far: bench/README.md.
"""

import argparse
import time

import numpy as np
from sklearn.metrics import roc_curve

from ssv_jax import metrics


def sklearn_eer_min_dcf(scores, labels, p_target=0.01):
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    k = np.nanargmin(np.abs(fnr - fpr))
    eer = 100.0 * max(fpr[k], fnr[k])
    dcf = (p_target * fnr + (1 - p_target) * fpr) / min(p_target, 1 - p_target)
    return eer, float(dcf.min())


def best_of(fn, repeats):
    fn()  # warm-up (compile for jax)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1e5,1e6,1e7")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print(
        f"{'trials':>10} {'ssv_jax s':>10} {'sklearn s':>10} {'speed-up':>9}  eer(jax/sk)  "
        "minDCF(jax/sk)"
    )
    for n in [int(float(s)) for s in a.sizes.split(",")]:
        rng = np.random.default_rng(0)
        labels = (rng.random(n) < 0.5).astype(np.int32)
        scores = (rng.normal(size=n) + 1.5 * labels).astype(np.float32)
        t_j, out = best_of(lambda: metrics.verification_metrics(scores, labels, (0.01,)), a.repeats)
        t_s, (e_s, d_s) = best_of(lambda: sklearn_eer_min_dcf(scores, labels), a.repeats)
        print(
            f"{n:>10} {t_j:>10.4f} {t_s:>10.4f} {t_s / t_j:>8.2f}x  "
            f"{out['eer']:.4f}/{e_s:.4f}  {out['min_dcf'][0.01]:.4f}/{d_s:.4f}"
        )


if __name__ == "__main__":
    main()
