"""Symmetric NT-Xent-AM loss + gradient: 8 simulated devices (shard_map + all_gather) vs 1.

    .venv/bin/python bench/bench_loss.py [--devices 8] [--dim 512]

Prints time per call for a global batch of 256 utterances x 2 views, and the per-device
temporary memory of the compiled executable for several global batches, next to the size of
one device's logits block (2 B_local x 2 B_global floats) and of the gathered keys
(2 B_global x D): per-device memory is a constant multiple of their sum, i.e. it grows as
B_local x B_global (+ B_global x D), while one device holding the whole batch grows as B_global^2.
Figures so far: bench/README.md.
"""

import argparse
import os
import sys

_p = argparse.ArgumentParser()
_p.add_argument("--devices", type=int, default=8)
_p.add_argument("--dim", type=int, default=512)
_p.add_argument("--repeats", type=int, default=10)
ARGS = _p.parse_args()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
)

import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssv_jax import losses  # noqa: E402
from ssv_jax.sharding import DATA_AXIS, batch_sharding, data_mesh  # noqa: E402

KW = dict(scale=30.0, margin=0.1, symmetric=True)


def single():
    return jax.jit(jax.value_and_grad(lambda a, b: losses.nt_xent_am(a, b, **KW), (0, 1)))


def sharded(mesh):
    body = jax.shard_map(
        lambda a, b: losses.nt_xent_am(a, b, axis_name=DATA_AXIS, **KW),
        mesh=mesh,
        in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
        out_specs=P(),
    )
    return jax.jit(jax.value_and_grad(body, (0, 1)))


def timeit(fn, *args):
    jax.block_until_ready(fn(*args))
    t = []
    for _ in range(ARGS.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def temp_bytes(fn, *args):
    m = fn.lower(*args).compile().memory_analysis()
    return m.temp_size_in_bytes if m is not None else float("nan")


def main():
    mesh = data_mesh()
    w = mesh.size
    rng = np.random.default_rng(0)
    d = ARGS.dim
    n = 256
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = rng.normal(size=(n, d)).astype(np.float32)
    one = jax.devices()[0]
    a1, b1 = jax.device_put(z1, one), jax.device_put(z2, one)
    sh = batch_sharding(mesh)
    a8, b8 = jax.device_put(z1, sh), jax.device_put(z2, sh)
    f1, f8 = single(), sharded(mesh)
    (l1, g1), (l8, g8) = f1(a1, b1), f8(a8, b8)
    diff = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(g1, g8))
    print(
        f"global batch {n} x 2 views, D={d}; loss 1-dev {float(l1):.6f}, {w}-dev {float(l8):.6f}, "
        f"max |grad diff| {diff:.2e}"
    )
    print(
        f"time per loss+grad: 1 device {timeit(f1, a1, b1) * 1e3:.2f} ms, "
        f"{w} simulated devices {timeit(f8, a8, b8) * 1e3:.2f} ms "
        f"(simulated devices share this host's {os.cpu_count()} cores)"
    )
    print(
        f"\n{'B_global':>8} {'B_local':>7} {'1-dev temp MB':>13} {'per-device temp MB':>18} "
        f"{'logits block MB':>15} {'gathered keys MB':>16} {'temp/(block+keys)':>17}"
    )
    for n in (64, 128, 256, 512, 1024):
        z = rng.normal(size=(n, d)).astype(np.float32)
        t1 = temp_bytes(f1, jax.device_put(z, one), jax.device_put(z, one))
        t8 = temp_bytes(f8, jax.device_put(z, sh), jax.device_put(z, sh))
        block = (2 * n // w) * (2 * n) * 4  # this device's [2 B_local, 2 B_global] logits
        keys = 2 * n * d * 4  # the all-gathered [2 B_global, D] keys
        print(
            f"{n:>8} {n // w:>7} {t1 / 2**20:>13.2f} {t8 / 2**20:>18.3f} {block / 2**20:>15.3f} "
            f"{keys / 2**20:>16.3f} {t8 / (block + keys):>17.2f}"
        )


if __name__ == "__main__":
    main()
