"""What SSPS costs on this machine: the k-means refit, and the train step with and without it.

    .venv/bin/python bench/bench_ssps.py [--paper_iters 1] [--steps 5] [--skip_paper]

1. The refit (``ssps.refresh``: k-means on the reference ring, then the queue's clusters) at
   ``:small``'s sizes on the real-voice folder (ring and queue 704, K = 64, 10 iterations) and
   at the paper's (K = 25,000, queue 25,000 and 50,000, the ring as large as the queue),
   D = 512. Each k-means iteration is 2 R K D FLOPs, so the time is linear in the ring size R:
   the line also gives it per iteration and for the paper's whole VoxCeleb2 ring (1,091,840
   entries, 10 iterations). On a CPU the paper's sizes run ``--paper_iters`` iterations.
2. Sampling and writing the memories for a global batch of 256 at the paper's sizes (what SSPS
   adds to every step besides the reference embeddings' forward pass).
3. ``configs/simclr_am_ssps.py:small``'s whole train step (32 utterances x 2 views x 1.5 s,
   random audio) with SSPS off, in its SSPS phase (no refit), and at a refit step.
Figures: bench/README.md ("SSPS").
"""

import argparse
import importlib.util
import os
import sys
import time

_p = argparse.ArgumentParser()
_p.add_argument(
    "--paper_iters",
    type=int,
    default=None,
    help="k-means iterations at the paper's sizes (default: 1 on a CPU, else 10)",
)
_p.add_argument("--steps", type=int, default=5)
_p.add_argument("--skip_paper", action="store_true")
ARGS = _p.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from ssv_jax import cpu  # noqa: E402

cpu.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ssv_jax import state as state_lib  # noqa: E402
from ssv_jax import step as step_lib  # noqa: E402
from ssv_jax.losses import l2_normalize  # noqa: E402
from ssv_jax.methods import ssps  # noqa: E402
from ssv_jax.optim import lr_schedule, make_optimizer  # noqa: E402
from ssv_jax.sharding import batch_sharding, data_mesh, replicated  # noqa: E402

VOX2_RING = 1091840
SMALL_DATA = 704  # the real-voice folder's 726 training utterances, whole batches of 32


def recipe(arg):
    path = os.path.join(ROOT, "configs", "simclr_am_ssps.py")
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def timed(fn, *args, reps=1):
    jax.block_until_ready(fn(*args))  # compile
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps


def filled_memory(cfg, n_ring, n_queue, d, key):
    """A full memory of random unit embeddings (record indices all distinct)."""
    k1, k2, k3 = jax.random.split(key, 3)
    mem = ssps.init_memory(cfg, d, d, 1, k1)
    ring = mem["ref"].shape[0]
    ref = l2_normalize(jax.random.normal(k2, (ring, d)))
    pos = l2_normalize(jax.random.normal(k3, (n_queue, d)))
    return dict(
        mem,
        ref=ref,
        ref_idx=jnp.where(jnp.arange(ring) < n_ring, jnp.arange(ring), -1).astype(jnp.int32),
        pos=pos[None],
        pos_ref=pos,
        pos_idx=jnp.arange(n_queue, dtype=jnp.int32) + n_ring,
    )


def bench_refresh(label, n_ring, n_queue, k, iters, d=512):
    cfg = recipe(None)
    cfg.train.batch_size = 256 if n_ring >= 256 else 32
    s = cfg.method.ssps
    s.ref_size, s.queue_size, s.prototypes, s.kmeans_iters = n_ring, n_queue, k, iters
    sz = ssps.sizes(cfg)
    mem = filled_memory(cfg, n_ring, n_queue, d, jax.random.PRNGKey(0))
    fn = jax.jit(lambda m, key: ssps.refresh(cfg, m, key, sz))
    dt = timed(fn, mem, jax.random.PRNGKey(1))
    per_iter = dt / (iters + 1)  # iterations plus the final assignment (about one more)
    vox = per_iter * VOX2_RING / n_ring * 11
    print(
        f"refit {label}: ring {n_ring:,}, queue {n_queue:,}, K {k:,}, {iters} iteration(s): "
        f"{dt:.2f} s ({per_iter:.2f} s per iteration; the VoxCeleb2 ring of {VOX2_RING:,}, "
        f"10 iterations: about {vox / 60:.1f} min)"
    )
    return cfg, mem, sz


def bench_sample(cfg, mem, sz, b=256, d=512):
    index = jnp.arange(b, dtype=jnp.int32) + 10**7
    ref = l2_normalize(jax.random.normal(jax.random.PRNGKey(2), (b, d)))
    views = [jax.random.normal(jax.random.PRNGKey(3), (b, d))]
    mem = dict(mem, fitted=jnp.ones((), jnp.bool_))

    @jax.jit
    def step(m, key):
        out, frac = ssps.positives(cfg, m, jnp.int32(10**9), index, ref, key, views, sz)
        return ssps.write(m, index, ref, views, sz), out[0], frac

    dt = timed(step, mem, jax.random.PRNGKey(4), reps=5)
    print(f"  sample + write, batch {b}: {1e3 * dt:.1f} ms per step")


def random_batch(cfg, b, t, n_train):
    rng = np.random.default_rng(0)
    rir = np.ones((b, 2, 1), np.int16)
    return {
        "views": (3000 * rng.normal(size=(b, 2, t))).astype(np.int16),  # int16, as the pipeline's
        "noise": (3000 * rng.normal(size=(b, 2, t))).astype(np.int16),
        "snr_db": rng.uniform(0, 15, size=(b, 2)).astype(np.float32),
        "noise_on": np.ones((b, 2), bool),
        "rir": rir,
        "rir_on": np.zeros((b, 2), bool),
        "index": rng.permutation(n_train)[:b].astype(np.int32),
    }


def bench_small_step():
    mesh = data_mesh()
    base = recipe("small")
    b, t = int(base.train.batch_size), int(base.data.crop_seconds * base.data.sample_rate)
    batch = jax.device_put(random_batch(base, b, t, SMALL_DATA), batch_sharding(mesh))
    times = {}
    for label, on in (("SSPS off", False), ("SSPS phase", True)):
        cfg = base.copy_and_resolve_references()
        cfg.method.ssps.enabled = on
        sched = lr_schedule(cfg.optim, 22, 1080)
        tx = make_optimizer(cfg.optim, sched)
        graphdef, state = state_lib.create(cfg, tx)
        step = step_lib.make_train_step(cfg, graphdef, mesh, tx, sched, 1080, SMALL_DATA)
        start = int(cfg.method.ssps.start_step)
        state = jax.device_put(state.replace(step=jnp.int32(start + 1)), replicated(mesh))
        state, m = step(state, batch)  # compile
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(ARGS.steps):
            state, m = step(state, batch)
        jax.block_until_ready(m)
        times[label] = (time.perf_counter() - t0) / ARGS.steps
        if on:  # a refit step: the step count at a multiple of the refit period
            sz = ssps.sizes(cfg, SMALL_DATA)
            at = jax.device_put(jnp.int32(start + 2 * sz.refresh_every), replicated(mesh))
            state = state.replace(step=at)  # placed as before: no recompilation
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            times["refit step"] = time.perf_counter() - t0
    off = times["SSPS off"]
    print(
        f"configs/simclr_am_ssps.py:small train step ({b} x 2 x {base.data.crop_seconds} s, "
        + f"{jax.devices()[0].device_kind}): "
        + "; ".join(f"{k} {1e3 * v:.0f} ms ({v / off - 1:+.0%})" for k, v in times.items())
    )


def main():
    dev = jax.devices()[0]
    print(f"{dev.platform} ({dev.device_kind}), jax {jax.__version__}")
    bench_refresh(":small", SMALL_DATA, SMALL_DATA, 64, 10)
    if not ARGS.skip_paper:
        iters = ARGS.paper_iters or (1 if dev.platform == "cpu" else 10)
        for q in (25000, 50000):
            cfg, mem, sz = bench_refresh("paper", q, q, 25000, iters)
            bench_sample(cfg, mem, sz)
    bench_small_step()


if __name__ == "__main__":
    main()
