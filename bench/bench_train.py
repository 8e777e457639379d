"""Train-step throughput of a recipe on this machine's backend, and where the step's time goes.

    .venv/bin/python bench/bench_train.py [--config configs/simclr_am.py] [--batch 32]
        [--seconds 2.0] [--dtype float32[,bfloat16]] [--platform cpu|cuda|tpu] [--steps 5]
        [--devices 1] [--no_parts] [--no_cpu_flags]

Random audio of the recipe's shapes (no dataset needed): batch x 2 views x seconds (defaults:
the recipe's own). For each compute dtype (``model.compute_dtype``) it prints the full jitted
step's time (augmentation + front-end + encoder fwd/bwd + loss + Adam) and views/s, peak device
memory, XLA's cost analysis of the step (FLOPs and bytes accessed) and the model FLOPs
utilisation against the device's peak rates: a table of dense bf16 / TF32 / fp32 peaks for
known GPUs and TPUs; on a CPU the faster of XLA's matmul and oneDNN's 1x1 convolution at
4096^2 x 2048 scale, measured in the same run (XLA's bf16 dot does not use AMX). FLOPs are
counted on the same step with plain XLA convolutions before XLA's optimisations, since the
compiled step's cost analysis cannot see inside the oneDNN or cuDNN calls. Then the time of
each part jitted on its own (``--no_parts`` skips them): augmentation + front-end, encoder
forward + backward, loss + gradient, optimiser update (separate calls, each with its own
dispatch: they need not sum to the step).
``--platform`` picks the JAX backend (``JAX_PLATFORMS``); --no_cpu_flags runs a stock process
(no ``ssv_jax.cpu.configure()``) for comparison. Figures so far: bench/README.md.
"""

import argparse
import importlib.util
import os
import sys
import time

_p = argparse.ArgumentParser()
_p.add_argument("--config", default="configs/simclr_am.py")
_p.add_argument("--batch", type=int, default=None, help="utterances (default: the recipe's)")
_p.add_argument("--seconds", type=float, default=None, help="view length (default: the recipe's)")
_p.add_argument(
    "--dtype", default="float32", help="compute dtypes, comma-separated (one process each)"
)
_p.add_argument("--platform", default=None, help="JAX backend: cpu, cuda, tpu (default: jax's)")
_p.add_argument("--steps", type=int, default=5)
_p.add_argument("--devices", type=int, default=1)
_p.add_argument("--no_parts", action="store_true", help="skip the per-part timings")
_p.add_argument(
    "--no_cpu_flags",
    action="store_true",
    help="stock process: no huge-page malloc, XLA's CPU convolution default",
)
ARGS = _p.parse_args()
if ARGS.platform:
    os.environ["JAX_PLATFORMS"] = ARGS.platform
flags_ = os.environ.get("XLA_FLAGS", "")
if ARGS.devices > 1:
    flags_ += f" --xla_force_host_platform_device_count={ARGS.devices}"
os.environ["XLA_FLAGS"] = flags_.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
if not ARGS.no_cpu_flags:
    from ssv_jax import cpu  # noqa: E402  (imports no jax backend yet)

    cpu.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from ssv_jax import augment as augment_lib  # noqa: E402
from ssv_jax import methods  # noqa: E402
from ssv_jax import state as state_lib  # noqa: E402
from ssv_jax import step as step_lib  # noqa: E402
from ssv_jax.frontend import features  # noqa: E402
from ssv_jax.optim import lr_schedule, make_optimizer  # noqa: E402
from ssv_jax.sharding import batch_sharding, data_mesh, replicated  # noqa: E402

# Dense peak TFLOP/s per chip (vendor data sheets): bf16, TF32 (XLA's default for float32
# matmuls and convolutions on these GPUs), fp32 without tensor cores.
PEAKS = {
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM; the H200 has the same
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "TPU v4": {"bf16": 275.0},
    "TPU v5 lite": {"bf16": 197.0},
    "TPU v5p": {"bf16": 459.0},
    "TPU v6 lite": {"bf16": 918.0},
}


def load_config(spec):
    """``configs/NAME.py[:ARGS]`` -> the recipe's config."""
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def timed(fn, *args, n=ARGS.steps):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def device_peaks():
    """{precision: peak TFLOP/s} of device 0: the table above for accelerators; for a CPU the
    faster, measured now, of XLA's 4096^2 matmul and oneDNN's 1x1 convolution of the same
    size (8192 pixels x 2048 -> 2048 channels; oneDNN's bf16 runs on AMX where XLA's dot does
    not), for fp32 and bf16."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        for name, peaks in PEAKS.items():
            if name.lower() in dev.device_kind.lower():
                return peaks
        return {}
    from ssv_jax.kernels import onednn

    rng = np.random.default_rng(0)
    out = {}
    for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jnp.asarray(rng.normal(size=(4096, 4096)), dtype)
        rates = [2 * 4096**3 / timed(jax.jit(lambda x: x @ x), a, n=5)]
        if onednn.available(dtype):
            x = jnp.asarray(rng.normal(size=(1, 128, 64, 2048)), dtype)
            w = jnp.asarray(rng.normal(size=(1, 1, 2048, 2048)) / 45.0, jnp.float32)
            conv = jax.jit(lambda x, w: onednn.conv2d(x, w, (1, 1), [(0, 0), (0, 0)]))
            rates.append(2 * 8192 * 2048**2 / timed(conv, x, w, n=5))
        out[name] = max(rates) / 1e12
    return out


def cost(stage):
    """(FLOPs, bytes accessed) from XLA's cost analysis of a lowered or compiled step (nan where
    the backend gives none)."""
    c = stage.cost_analysis()
    c = (c[0] if isinstance(c, (list, tuple)) else c) or {}
    return float(c.get("flops", float("nan"))), float(c.get("bytes accessed", float("nan")))


def peak_memory_gib():
    """Peak device memory in use (GiB); on a CPU, the process's peak resident set."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


def random_batch(cfg, b, t):
    rng = np.random.default_rng(0)
    rir_len = int(cfg.data.augment.rir_seconds * cfg.data.sample_rate)
    rir = np.zeros((b, 2, rir_len), np.int16)
    rir[..., 0] = 32767
    rir[..., 1:] = (
        300
        * rng.normal(size=(b, 2, rir_len - 1))
        * np.exp(-np.arange(1, rir_len) / (0.05 * cfg.data.sample_rate))
    ).astype(np.int16)
    return {
        "views": (3000 * rng.normal(size=(b, 2, t))).astype(np.int16),  # int16, as the pipeline's
        "noise": (3000 * rng.normal(size=(b, 2, t))).astype(np.int16),
        "snr_db": rng.uniform(0, 15, size=(b, 2)).astype(np.float32),
        "noise_on": np.ones((b, 2), bool),
        "rir": rir,
        "rir_on": np.ones((b, 2), bool),
    }


def main():
    if "," in ARGS.dtype:  # one fresh process per dtype: each gets its own peak memory
        import subprocess

        for dtype in ARGS.dtype.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--dtype", dtype]
            subprocess.run(cmd, check=True)
        return
    base = load_config(ARGS.config)
    b = ARGS.batch or int(base.train.batch_size)
    seconds = ARGS.seconds or float(base.data.crop_seconds)
    mesh = data_mesh()
    t = int(seconds * base.data.sample_rate)
    dev = jax.devices()[0]
    peaks = device_peaks()
    print(
        f"config {ARGS.config}: {base.model.name}, method {base.method.name}; batch {b} "
        f"utterances x 2 views x {seconds} s on {mesh.size} {dev.platform} device(s) "
        f"({dev.device_kind}); jax {jax.__version__}; XLA_FLAGS={os.environ['XLA_FLAGS']!r}"
    )
    print("peak TFLOP/s: " + ", ".join(f"{k} {v:.4g}" for k, v in peaks.items()))
    batch = jax.device_put(random_batch(base, b, t), batch_sharding(mesh))
    base.model.compute_dtype = ARGS.dtype
    run(base, mesh, batch, b, t, ARGS.dtype, peaks)


def run(cfg, mesh, batch, b, t, dtype, peaks):
    sched = lr_schedule(cfg.optim, 1000, 100000)
    tx = make_optimizer(cfg.optim, sched)
    graphdef, state = state_lib.create(cfg, tx)
    state = jax.device_put(state, replicated(mesh))
    step = step_lib.make_train_step(cfg, graphdef, mesh, tx, sched, 100000)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    nbytes = cost(compiled)[1]
    # FLOPs from the step before XLA's optimisations, with plain XLA convolutions: compiled
    # steps hide their convolutions in custom calls (oneDNN on the CPU, cuDNN on GPUs), which
    # the cost analysis counts as zero.
    xcfg = cfg.copy_and_resolve_references()
    if "conv_impl" in xcfg.model:
        xcfg.model.conv_impl = "xla"
    xgraph, _ = state_lib.create(xcfg, tx)
    xstep = step_lib.make_train_step(xcfg, xgraph, mesh, tx, sched, 100000)
    flops = cost(xstep.lower(state, batch))[0]

    def run_steps(state):
        for _ in range(ARGS.steps):
            state, m = compiled(state, batch)
        jax.block_until_ready(m)
        return state, m

    state, _ = run_steps(state)  # warm-up
    t0 = time.perf_counter()
    state, m = run_steps(state)
    dt = (time.perf_counter() - t0) / ARGS.steps
    mem, mem_kind = peak_memory_gib()
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"\n== compute dtype {dtype}: {n_params:,} params; loss {float(m['loss']):.4f}")
    print(f"compile {compile_s:.1f} s; step {dt:.4f} s = {2 * b / dt:.1f} views/s")
    print(f"{mem_kind} {mem:.2f} GiB")
    mfu = ", ".join(f"{flops / dt / 1e12 / v:.1%} of {k}" for k, v in peaks.items())
    print(
        f"XLA cost analysis: {flops / 1e9:.1f} GFLOP per step; compiled step accesses "
        f"{nbytes / 1e9:.2f} GB outside custom calls -> {flops / dt / 1e12:.3g} TFLOP/s "
        f"achieved = MFU {mfu}"
    )
    if ARGS.no_parts:
        return
    # Parts, each jitted alone on the same shapes.
    key = jax.random.PRNGKey(0)

    @jax.jit
    def front(batch):
        v = augment_lib.augment(batch, key, cfg.data.augment, cfg.data.sample_rate)
        return features(v.reshape(2 * b, t), cfg.frontend)[0]

    feats = front(batch)
    params, batch_stats = state.params, state.batch_stats

    @jax.jit
    def encoder_fwd_bwd(params, feats):
        def f(p):
            net = nnx.merge(graphdef, p, batch_stats, copy=True)
            return jnp.sum(net(feats) ** 2)

        return jax.grad(f)(params)

    grads = encoder_fwd_bwd(params, feats)
    d = cfg.method.projector_out if cfg.method.projector else cfg.model.embed_dim
    z = jax.device_put(
        np.random.default_rng(1).normal(size=(b, 2, d)).astype(np.float32), batch_sharding(mesh)
    )
    method = methods.get(cfg.method.name)

    @jax.jit
    def loss_grad(z):
        if cfg.method.name == "simclr":
            f = lambda z: method.contrastive_loss(cfg, mesh, z[:, 0], z[:, 1], 0.1)[0]  # noqa
        else:
            from ssv_jax import losses

            q = state.method_state["queue1"]
            f = lambda z: losses.moco_am(z[:, 0], z[:, 1], q, scale=30.0, margin=0.1)  # noqa
        return jax.grad(f)(z)

    @jax.jit
    def update(grads, opt_state, params):
        u, o = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, u), o

    parts = {
        "augment + front-end": timed(front, batch),
        "encoder fwd + bwd": timed(encoder_fwd_bwd, params, feats),
        "loss + grad": timed(loss_grad, z),
        "optimiser update": timed(update, grads, state.opt_state, params),
    }
    for k, v in parts.items():
        print(f"  {k:<22} {v:.4f} s ({v / dt:.0%} of the step)")


if __name__ == "__main__":
    main()
