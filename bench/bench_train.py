"""Train-step throughput of a recipe's model and where the step's time goes.

    .venv/bin/python bench/bench_train.py [--config configs/simclr_am.py] [--batch 32]
        [--seconds 2.0] [--steps 5] [--devices 1]

Random audio of the recipe's shapes (no dataset needed): batch x 2 views x seconds. Prints
views/s of the full jitted step (augmentation + front-end + encoder fwd/bwd + loss + Adam),
achieved GFLOP/s from the compiled step's cost analysis as a fraction of this machine's fp32
matmul rate measured in the same run (FLOPs counted on the same step with XLA's convolutions,
since the cost analysis cannot see inside the oneDNN calls), and the time of each part jitted
on its own:
augmentation + front-end, encoder forward + backward, loss + gradient, optimiser update.
--no_cpu_flags runs a stock process (no ``ssv_jax.cpu.configure()``) for comparison.
Figures so far: bench/README.md.
"""

import argparse
import importlib.util
import os
import sys
import time

_p = argparse.ArgumentParser()
_p.add_argument("--config", default="configs/simclr_am.py")
_p.add_argument("--batch", type=int, default=32)
_p.add_argument("--seconds", type=float, default=2.0)
_p.add_argument("--steps", type=int, default=5)
_p.add_argument("--devices", type=int, default=1)
_p.add_argument(
    "--no_cpu_flags",
    action="store_true",
    help="stock process: no huge-page malloc, XLA's CPU convolution default",
)
ARGS = _p.parse_args()
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
from ssv_jax import train as train_lib  # noqa: E402
from ssv_jax.frontend import features  # noqa: E402
from ssv_jax.optim import lr_schedule, make_optimizer  # noqa: E402
from ssv_jax.sharding import batch_sharding, data_mesh, replicated  # noqa: E402


def load_config(path):
    spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def timed(fn, *args, n=ARGS.steps):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def matmul_gflops():
    a = jnp.asarray(np.random.default_rng(0).normal(size=(4096, 4096)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    t = timed(f, a, n=5)
    return 2 * 4096**3 / t / 1e9


def step_flops(cfg, mesh, tx, sched, state, batch):
    """The step's FLOPs from XLA's cost analysis. Custom calls (the oneDNN convolutions) count
    zero there, so this compiles the same step with XLA's convolutions to count them."""
    import copy

    cfg = copy.deepcopy(cfg)
    if "onednn" in cfg.model:
        cfg.model.onednn = False
    graphdef, _ = state_lib.create(cfg, tx)
    step = train_lib.make_train_step(cfg, graphdef, mesh, tx, sched, 100000)
    cost = step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def random_batch(cfg, b, t):
    rng = np.random.default_rng(0)
    rir_len = int(cfg.data.augment.rir_seconds * cfg.data.sample_rate)
    rir = np.zeros((b, 2, rir_len), np.float32)
    rir[..., 0] = 1.0
    rir[..., 1:] = (
        0.01
        * rng.normal(size=(b, 2, rir_len - 1))
        * np.exp(-np.arange(1, rir_len) / (0.05 * cfg.data.sample_rate))
    )
    return {
        "views": (0.1 * rng.normal(size=(b, 2, t))).astype(np.float32),
        "noise": (0.1 * rng.normal(size=(b, 2, t))).astype(np.float32),
        "snr_db": rng.uniform(0, 15, size=(b, 2)).astype(np.float32),
        "noise_on": np.ones((b, 2), bool),
        "rir": rir,
        "rir_on": np.ones((b, 2), bool),
    }


def main():
    cfg = load_config(ARGS.config)
    cfg.train.batch_size = ARGS.batch
    cfg.data.crop_seconds = ARGS.seconds
    mesh = data_mesh()
    b, t = ARGS.batch, int(ARGS.seconds * cfg.data.sample_rate)
    sched = lr_schedule(cfg.optim, 1000, 100000)
    tx = make_optimizer(cfg.optim, sched)
    graphdef, state = state_lib.create(cfg, tx)
    state = jax.device_put(state, replicated(mesh))
    batch = jax.device_put(random_batch(cfg, b, t), batch_sharding(mesh))
    step = train_lib.make_train_step(cfg, graphdef, mesh, tx, sched, 100000)

    peak = matmul_gflops()
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = step_flops(cfg, mesh, tx, sched, state, batch)

    def run_steps(state):
        for _ in range(ARGS.steps):
            state, m = compiled(state, batch)
        jax.block_until_ready(m)
        return state

    state = run_steps(state)  # warm-up
    t0 = time.perf_counter()
    state = run_steps(state)
    dt = (time.perf_counter() - t0) / ARGS.steps

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
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"config {ARGS.config}: {cfg.model.name}, {n_params:,} params, method {cfg.method.name}")
    print(
        f"batch {b} utterances x 2 views x {ARGS.seconds} s on {mesh.size} "
        f"{jax.devices()[0].platform} device(s) ({jax.devices()[0].device_kind}); "
        f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}"
    )
    print(f"compile {compile_s:.1f} s; step {dt:.3f} s = {2 * b / dt:.1f} views/s")
    print(
        f"step cost {flops / 1e9:.1f} GFLOP -> {flops / dt / 1e9:.1f} GFLOP/s = "
        f"{flops / dt / 1e9 / peak:.0%} of the fp32 matmul rate ({peak:.0f} GFLOP/s, 4096^2)"
    )
    for k, v in parts.items():
        print(f"  {k:<22} {v:.3f} s ({v / dt:.0%} of the step)")


if __name__ == "__main__":
    main()
