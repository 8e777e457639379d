"""Train-step benchmark of Fast ResNet-34 on this CPU (prints figures; nothing asserted).

Step = front-end (log-mel + instance norm) + forward (train-mode BN) + symmetric NT-Xent loss +
backward + Adam update, on ``batch`` utterances x ``views`` views x ``seconds`` s, jitted.
Reports s/step, views/s, XLA cost-analysis GFLOP, achieved GFLOP/s, and that as a fraction of the
fp32 matmul rate (4096^2) measured in the same process.

    .venv/bin/python bench/bench_encoder.py                # with ssv_jax.cpu.configure()
    .venv/bin/python bench/bench_encoder.py --no_flags     # stock: 4 KiB-page malloc, XLA flags
    .venv/bin/python bench/bench_encoder.py --compare      # both, in two fresh processes
    .venv/bin/python bench/bench_encoder.py --ab conv_impl # CPU path (auto) vs plain XLA convs
    .venv/bin/python bench/bench_encoder.py --ab dtype     # float32 vs bfloat16, interleaved
    .venv/bin/python bench/bench_encoder.py --profile      # where the step's op time goes
Options: --conv_impl auto|xla (``model.conv_impl``), --dtype float32|bfloat16
(``model.compute_dtype``), --ab conv_impl|dtype (both settings, interleaved in one process: step
times vary between processes on a shared VM, so compare within one), --model ecapa_tdnn,
--steps N, --extra_flags '...'. Figures so far: bench/README.md.
"""

import argparse
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--views", type=int, default=2)
ap.add_argument("--seconds", type=float, default=2.0)
ap.add_argument("--steps", type=int, default=6)
ap.add_argument("--model", default="fast_resnet34")
ap.add_argument("--no_flags", action="store_true")
ap.add_argument("--compare", action="store_true")
ap.add_argument("--conv_impl", default="auto", choices=["auto", "xla"])
ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
ap.add_argument(
    "--ab", choices=["conv_impl", "dtype"], help="interleave steps with both of its settings"
)
ap.add_argument("--profile", action="store_true", help="op time by HLO op kind (jax.profiler)")
ap.add_argument("--extra_flags", default="")
args = ap.parse_args()

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

if args.compare:
    base = [sys.executable, __file__, "--steps", str(args.steps), "--model", args.model]
    for extra in (["--no_flags"], []):
        subprocess.run(base + extra, check=True)
    sys.exit(0)

if not args.no_flags:
    from ssv_jax import cpu  # noqa: E402  (imports no jax backend yet)

    cpu.configure()
if args.extra_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.extra_flags).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from ssv_jax import frontend  # noqa: E402
from ssv_jax.models import build_encoder, default_model_config  # noqa: E402


def matmul_gflops(n=4096, reps=5):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / min(ts) / 1e9


def nt_xent(z1, z2, scale=30.0):
    z = jnp.concatenate([z1, z2]) / jnp.linalg.norm(
        jnp.concatenate([z1, z2]), axis=1, keepdims=True
    )
    n = z1.shape[0]
    logits = scale * z @ z.T - 1e9 * jnp.eye(2 * n)
    labels = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


_GFLOP = {}  # XLA cost-analysis GFLOP of the step with plain XLA convolutions, by dtype
_AB = {"conv_impl": ("auto", "xla"), "dtype": ("float32", "bfloat16")}


def build(conv_impl="auto", dtype="float32"):
    """Compiled train step, its initial state, waves and compile seconds."""
    cfg = default_model_config(args.model)
    cfg.compute_dtype = dtype
    if "conv_impl" in cfg:
        cfg.conv_impl = conv_impl
    model = build_encoder(cfg, rngs=nnx.Rngs(0))
    model.train()
    tx = optax.adam(1e-3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    fcfg = frontend.default_frontend_config()
    if args.model == "ecapa_tdnn":
        fcfg.n_mels = cfg.n_mels

    def step(params, rest, opt_state, waves):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest, copy=True)
            feats, _ = frontend.features(waves, fcfg)
            emb = m(feats)
            z = emb.reshape(args.views, args.batch, -1)
            return nt_xent(z[0], z[1]), nnx.state(m, nnx.BatchStat)

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    n_views = args.batch * args.views
    waves = 0.1 * jax.random.normal(jax.random.key(1), (n_views, int(args.seconds * 16000)))
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, rest, opt_state, waves).compile()
    t_compile = time.perf_counter() - t0
    if conv_impl == "xla" or "conv_impl" not in cfg:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        _GFLOP.setdefault(dtype, ca.get("flops", float("nan")) / 1e9)
    return compiled, [params, rest, opt_state], waves, t_compile


def step_gflop(speed):
    """GFLOP per step. The cost analysis cannot see into the oneDNN calls, so it is read from the
    same step with plain XLA convolutions (compiled here unless already built)."""
    if speed["dtype"] not in _GFLOP:
        build(**{**speed, "conv_impl": "xla"})
    return _GFLOP[speed["dtype"]]


def run_once(compiled, state, waves):
    t0 = time.perf_counter()
    *new, loss = compiled(*state, waves)
    loss.block_until_ready()
    state[:] = new
    return time.perf_counter() - t0


def profile(compiled, state, waves, steps=2):
    """Print the step's op time (summed over threads) by HLO op kind, from a jax.profiler trace.

    oneDNN convolutions are the ``ffi_call`` ops (their wall time: both cores work inside each).
    XLA's Eigen convolutions (``--conv_impl xla``) run in their own thread pool, not listed:
    there, wall time minus the listed time (per thread) is mostly convolution.
    """
    import collections
    import glob
    import gzip
    import json
    import re
    import tempfile

    run_once(compiled, state, waves)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            wall = sum(run_once(compiled, state, waves) for _ in range(steps)) / steps
        events = json.load(gzip.open(glob.glob(f"{d}/plugins/profile/*/*.trace.json.gz")[0]))
    kinds = collections.Counter()
    for e in events["traceEvents"]:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "Pjit", "PjRt")):
            kinds[re.sub(r"[.\d]+$", "", name)] += e["dur"] / 1e3 / steps
    print(
        f"step wall {wall * 1e3:.0f} ms; listed op time {sum(kinds.values()):.0f} ms "
        f"(summed over threads); top op kinds:"
    )
    for kind, ms in kinds.most_common(12):
        print(f"  {ms:8.1f} ms  {kind}")


def main():
    print(
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} jax {jax.__version__} "
        f"{jax.devices()[0].platform}"
    )
    n_views = args.batch * args.views
    speed = dict(conv_impl=args.conv_impl, dtype=args.dtype)
    if args.ab:  # same process, interleaved: robust to other load on the machine
        speeds = tuple({**speed, args.ab: v} for v in _AB[args.ab])
        a, b = (build(**v) for v in speeds)
        for v in (a, b):
            run_once(v[0], v[1], v[2])
        ta, tb = [], []
        for _ in range(args.steps):
            ta.append(run_once(a[0], a[1], a[2]))
            tb.append(run_once(b[0], b[1], b[2]))
        peak = matmul_gflops()
        print(f"interleaved A/B over {args.steps} steps each (matmul peak now {peak:.0f} GFLOP/s):")
        for t, v in ((ta, speeds[0]), (tb, speeds[1])):
            name = f"{args.ab}={v[args.ab]}"
            print(
                f"  {name:14s} median {np.median(t):.3f}s min {min(t):.3f}s -> "
                f"{n_views / np.median(t):.1f} views/s ({step_gflop(v):.1f} GFLOP/step)"
            )
        return
    if args.profile:
        compiled, state, waves = build(**speed)[:3]
        profile(compiled, state, waves)
        return
    peak0 = matmul_gflops()
    compiled, state, waves, t_compile = build(**speed)
    gflop = step_gflop(speed)
    times = [run_once(compiled, state, waves) for _ in range(args.steps + 1)]
    times = np.array(times[1:])
    peak1 = matmul_gflops()
    peak = max(peak0, peak1)
    t = float(np.median(times))
    print(
        f"model={args.model} {speed} batch={args.batch}x{args.views} views x "
        f"{args.seconds}s  compile {t_compile:.1f}s"
    )
    print(
        f"step: median {t:.3f}s (min {times.min():.3f}, max {times.max():.3f}) -> "
        f"{n_views / t:.1f} views/s; {gflop:.1f} GFLOP/step -> {gflop / t:.1f} GFLOP/s = "
        f"{gflop / t / peak:.2f} of fp32 matmul peak {peak:.0f} GFLOP/s "
        f"(before {peak0:.0f}, after {peak1:.0f})"
    )


if __name__ == "__main__":
    main()
