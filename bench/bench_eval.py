"""Evaluation speed: embedding extraction (both protocols) and scoring of a million trials.

    .venv/bin/python bench/bench_eval.py [--config configs/simclr_am.py] [--utterances 64]
        [--seconds 8.0] [--trials 1e6] [--cohort 300]

Extraction: the recipe's network (randomly initialised: speed does not depend on the weights)
embeds --utterances random utterances of --seconds each, with eval.protocol "full" (one
embedding per utterance, padded to eval.bucket_seconds) and "segments" (10 frames of 4 s);
prints hours of audio per second. Scoring: --trials random trials over 5,000 unit embeddings
(D = 512): cosine scores, AS-norm against a cohort of --cohort (top 100), EER and minDCF at
0.01 and 0.05; prints the seconds of each part (best of 3, after a warm-up call).
Figures so far: bench/README.md.
"""

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssv_jax import cpu  # noqa: E402

cpu.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssv_jax import backends, embedding, metrics  # noqa: E402
from ssv_jax import state as state_lib  # noqa: E402
from ssv_jax.backends.score_norm import cohort_stats, normalize  # noqa: E402
from ssv_jax.optim import lr_schedule, make_optimizer  # noqa: E402
from ssv_jax.sharding import data_mesh, replicated  # noqa: E402


def load_config(path):
    spec = importlib.util.spec_from_file_location("recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def best_of(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/simclr_am.py")
    p.add_argument("--utterances", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--trials", type=float, default=1e6)
    p.add_argument("--cohort", type=int, default=300)
    a = p.parse_args()
    cfg = load_config(a.config)
    mesh = data_mesh()
    tx = make_optimizer(cfg.optim, lr_schedule(cfg.optim, 1, 1))
    graphdef, state = state_lib.create(cfg, tx)
    net = (graphdef, *jax.device_put((state.params, state.batch_stats), replicated(mesh)))
    rng = np.random.default_rng(0)
    n = int(a.seconds * cfg.data.sample_rate)
    utts = [
        (f"u{i}", (0.1 * rng.standard_normal(n)).astype(np.float32)) for i in range(a.utterances)
    ]
    hours = a.utterances * a.seconds / 3600
    for protocol in ("full", "segments"):
        cfg.eval.protocol = protocol
        fn = embedding.make_embed_fn(cfg, net[0], mesh)
        dt = best_of(lambda: embedding.embed_utterances(cfg, *net, mesh, utts, embed_fn=fn), 1)
        print(
            f"extraction, protocol {protocol:8s}: {a.utterances} x {a.seconds:g} s in "
            f"{dt:.2f} s = {hours / dt:.4f} h of audio per second ({mesh.size} device(s))"
        )

    n_trials, n_utts, d = int(a.trials), 5000, 512
    emb = rng.standard_normal((n_utts, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cohort = rng.standard_normal((a.cohort, d)).astype(np.float32)
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    ie = rng.integers(0, n_utts, n_trials).astype(np.int32)
    it = rng.integers(0, n_utts, n_trials).astype(np.int32)
    labels = (rng.random(n_trials) < 0.5).astype(np.int32)
    scores = np.asarray(backends.base.cosine_scores(emb, ie, it))
    stats = cohort_stats(emb, cohort, top_n=100)
    normed = normalize(scores, ie, it, stats, "as-norm")
    parts = {
        "cosine scores": lambda: np.asarray(backends.base.cosine_scores(emb, ie, it)),
        "AS-norm cohort statistics": lambda: cohort_stats(emb, cohort, top_n=100),
        "AS-norm of the trials": lambda: normalize(scores, ie, it, stats, "as-norm"),
        "EER + minDCF 0.01/0.05": lambda: metrics.verification_metrics(normed, labels),
    }
    total = 0.0
    for name, fn in parts.items():
        dt = best_of(fn)
        total += dt
        print(f"{n_trials:.0e} trials, {name}: {dt:.3f} s")
    print(f"{n_trials:.0e} trials, scoring + AS-norm + metrics: {total:.3f} s")


if __name__ == "__main__":
    main()
