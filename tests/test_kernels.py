"""oneDNN convolution kernels (ssv_jax/kernels): exact against float64, in the model, sharded."""

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssv_jax.kernels import onednn
from ssv_jax.models import FastResNet34, resnet

pytestmark = pytest.mark.skipif(
    not onednn.available(), reason=f"oneDNN kernels unavailable: {onednn.unavailable_reason()}"
)


def ref_conv(x, w, stride, pads, g):
    """float64 NHWC x HWIO conv with zero padding, and the gradients of sum(y * g) (g given)."""
    (s0, s1), ((t0, t1), (f0, f1)) = stride, pads
    xp = np.pad(x, ((0, 0), (t0, t1), (f0, f1), (0, 0)))
    kh, kw = w.shape[:2]
    ho, wo = (xp.shape[1] - kh) // s0 + 1, (xp.shape[2] - kw) // s1 + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    dw, dxp = np.zeros_like(w), np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(i, i + s0 * ho, s0), slice(j, j + s1 * wo, s1))
            y += np.einsum("nhwc,co->nhwo", xp[sl], w[i, j])
            if g is None:
                continue
            dw[i, j] = np.einsum("nhwc,nhwo->co", xp[sl], g)
            dxp[sl] += np.einsum("nhwo,co->nhwc", g, w[i, j])
    return y, dxp[:, t0 : xp.shape[1] - t1, f0 : xp.shape[2] - f1], dw


CASES = [  # x shape (N, H, W, C_in), kernel (kh, kw, C_out), stride, padding
    ((2, 9, 7, 16), (3, 3, 16), (1, 1), ((1, 1), (1, 1))),
    ((3, 12, 10, 16), (3, 3, 32), (2, 2), ((1, 1), (1, 1))),  # stride-2 stage entry
    ((2, 11, 9, 32), (3, 3, 16), (2, 2), ((1, 1), (1, 1))),  # odd sizes
    ((2, 13, 12, 1), (7, 7, 16), (1, 2), ((3, 3), (3, 3))),  # single-channel stem
    ((1, 8, 6, 16), (3, 1, 16), (1, 1), ((0, 2), (1, 0))),  # uneven, asymmetric padding
]


@pytest.mark.parametrize("xs,ks,stride,pads", CASES)
def test_conv_and_gradients_match_float64(xs, ks, stride, pads):
    if not onednn.supports(xs, ks[:2] + (xs[3], ks[2]), jnp.float32):
        pytest.skip(f"not run in oneDNN on this CPU (channel block {onednn.block_size()})")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ks[:2] + (xs[3], ks[2])) / np.sqrt(np.prod(ks[:2]) * xs[3])
    y_ref = ref_conv(x, w, stride, pads, None)[0]
    g = rng.standard_normal(y_ref.shape)
    _, dx_ref, dw_ref = ref_conv(x, w, stride, pads, g)

    def loss(x, w):
        y = onednn.conv2d(x, w, stride, pads)
        return jnp.sum(y * g.astype(np.float32)), y

    (_, y), (dx, dw) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        x.astype(np.float32), w.astype(np.float32)
    )
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dw), dw_ref, atol=1e-4 * np.abs(dw_ref).max())


def test_blocked_layout_round_trip_and_refusals():
    x = jnp.arange(2 * 3 * 4 * 32, dtype=jnp.float32).reshape(2, 3, 4, 32)
    for block in (16, 8):
        xb = onednn.to_blocked(x, block)
        assert xb.shape == (2, 32 // block, 3, 4, block)
        np.testing.assert_array_equal(xb[1, 1, 2, 3], x[1, 2, 3, block : 2 * block])
        np.testing.assert_array_equal(onednn.from_blocked(xb), x)
    b = onednn.block_size()
    assert not onednn.supports((2, 9, 7, b // 2), (3, 3, b // 2, b), jnp.float32)  # C_in
    assert not onednn.supports((2, 9, 7, b), (3, 3, b, b + b // 2), jnp.float32)  # C_out
    assert not onednn.supports((2, 9, 7, b), (3, 3, b, b), jnp.float16)
    assert not onednn.supports((2, 9, 7, 1), (7, 7, 1, b), jnp.float16)
    with pytest.raises(ValueError, match=f"C_out % {b}"):
        onednn.conv2d(jnp.zeros((2, 9, 7, b // 2)), jnp.zeros((3, 3, b // 2, b)))


BF16_CASES = [  # x shape, kernel (kh, kw, C_out), stride, padding, kernel dtype
    ((2, 9, 7, 16), (3, 3, 16), (1, 1), ((1, 1), (1, 1)), jnp.float32),
    ((3, 12, 10, 16), (3, 3, 32), (2, 2), ((1, 1), (1, 1)), jnp.float32),  # stride-2 entry
    ((2, 11, 9, 24), (3, 3, 40), (2, 1), ((1, 1), (1, 1)), jnp.bfloat16),  # any C, bf16 kernel
    ((2, 13, 12, 1), (7, 7, 16), (1, 2), ((3, 3), (3, 3)), jnp.float32),  # single-channel stem
    ((1, 8, 6, 32), (3, 1, 16), (1, 1), ((0, 2), (1, 0)), jnp.float32),  # asymmetric padding
    # narrow outputs: the weight gradient on H/W-transposed copies, images stacked (stride 1
    # across the rows) or not (stride 2)
    ((2, 20, 5, 16), (5, 3, 32), (2, 1), ((2, 1), (0, 1)), jnp.float32),
    ((2, 20, 6, 16), (3, 3, 16), (2, 2), ((1, 1), (1, 1)), jnp.float32),
]


def _bf16(a):
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("xs,ks,stride,pads,kdtype", BF16_CASES)
def test_bfloat16_conv_and_gradients_against_exact_reference(xs, ks, stride, pads, kdtype):
    """bf16 x (and a float32 or bf16 kernel): output and input gradient in bf16, the kernel
    gradient in the kernel's dtype, all against float64 on the bf16-rounded x and cotangent.

    Tolerance, elementwise: 2**-8 * B, with B the same convolution (or gradient) of |x|, |w| and
    |g|. bf16 has unit roundoff 2**-9: rounding the result costs at most 2**-9 |y| <= 2**-9 B,
    rounding the float32 kernel to bf16 inside oneDNN at most 2**-9 B; the float32 accumulation
    adds ~1e-7 B. The float32 weight gradient (bf16 products are exact in f32) must be within
    1e-5 B: summing it in bf16 would miss by ~2**-9 B. A wrong layout errs by O(B)."""
    if not onednn.supports(xs, ks[:2] + (xs[3], ks[2]), jnp.bfloat16):
        pytest.skip(f"no bfloat16 oneDNN kernels here: {onednn.unavailable_reason(jnp.bfloat16)}")
    rng = np.random.default_rng(4)
    x = _bf16(rng.standard_normal(xs))
    w = rng.standard_normal(ks[:2] + (xs[3], ks[2])) / np.sqrt(np.prod(ks[:2]) * xs[3])
    w = _bf16(w) if kdtype == jnp.bfloat16 else w.astype(np.float32).astype(np.float64)
    g = _bf16(rng.standard_normal(ref_conv(x, w, stride, pads, None)[0].shape))
    y_ref, dx_ref, dw_ref = ref_conv(x, w, stride, pads, g)
    bounds = ref_conv(np.abs(x), np.abs(w), stride, pads, np.abs(g))

    def loss(x, w):
        y = onednn.conv2d(x, w, stride, pads)
        return jnp.sum(y.astype(jnp.float32) * g.astype(np.float32)), y

    (_, y), (dx, dw) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, kdtype)
    )
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, kdtype)
    rtol_dw = 2.0**-8 if kdtype == jnp.bfloat16 else 1e-5
    for got, want, bound, rtol in zip(
        (y, dx, dw), (y_ref, dx_ref, dw_ref), bounds, (2.0**-8, 2.0**-8, rtol_dw)
    ):
        err = np.abs(np.asarray(got.astype(jnp.float32), np.float64) - want)
        assert np.all(err <= rtol * bound + 1e-7), (err / (bound + 1e-30)).max()


def test_bfloat16_on_8_devices_equals_one():
    """bf16 activations with a float32 kernel under a batch-sharded jit: per-shard kernels with
    bf16 NHWC shards, the float32 weight gradient all-reduced, equal to one device's."""
    if not onednn.available(jnp.bfloat16):
        pytest.skip(f"no bfloat16 oneDNN kernels here: {onednn.unavailable_reason(jnp.bfloat16)}")
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((8, 10, 6, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) * 0.1, jnp.float32)

    def f(x, w):
        def loss(x, w):
            return jnp.sum(onednn.conv2d(x, w, (2, 2)).astype(jnp.float32) ** 2)

        return jax.value_and_grad(loss, (0, 1))(x, w)

    l1, (dx1, dw1) = jax.jit(f)(x, w)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    l8, (dx8, dw8) = jax.jit(f)(xs, ws)
    hlo = jax.jit(f).lower(xs, ws).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo
    assert "custom-call(" in hlo and "bf16[1,5,3,32]" in hlo  # local batch 1 of 8, NHWC
    assert (dx8.dtype, dw8.dtype) == (jnp.bfloat16, jnp.float32)
    np.testing.assert_allclose(float(l8), float(l1), rtol=1e-5)  # float32 sums, other order
    np.testing.assert_array_equal(np.asarray(dx8), np.asarray(dx1))  # same per-image kernels
    np.testing.assert_allclose(np.asarray(dw8), np.asarray(dw1), rtol=1e-5, atol=1e-5)


def test_bfloat16_refused_without_native_kernels(monkeypatch):
    """Where the load-time probe finds no native bf16 kernels (no AVX512-BF16 / AMX: oneDNN would
    emulate bf16, slower than float32), bf16 convolutions are refused with the probe's reason
    and float32 ones still run."""
    onednn.available()
    state = {**onednn._state, "bf16": False, "bf16_reason": "no native bf16 (test)"}
    monkeypatch.setattr(onednn, "_state", state)
    b = onednn.block_size()
    assert onednn.available() and not onednn.available(jnp.bfloat16)
    assert onednn.unavailable_reason() is None
    assert onednn.unavailable_reason(jnp.bfloat16) == "no native bf16 (test)"
    assert onednn.supports((2, 9, 7, b), (3, 3, b, b), jnp.float32)
    assert not onednn.supports((2, 9, 7, b), (3, 3, b, b), jnp.bfloat16)
    assert not onednn.supports((2, 9, 7, 1), (7, 7, 1, b), jnp.bfloat16)
    with pytest.raises(ValueError, match="no native bf16"):
        onednn.conv2d(jnp.zeros((1, 4, 4, b), jnp.bfloat16), jnp.zeros((3, 3, b, b)))


def _model_loss_and_grads(model, feats, dtype=jnp.float32):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.tree.map(lambda v: jnp.asarray(v, dtype), (params, rest))

    def loss(params):
        m = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.sum(jnp.square(m(feats.astype(dtype))))

    return jax.tree.map(np.asarray, jax.jit(jax.value_and_grad(loss))(params))


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_fast_resnet34_with_onednn_is_as_accurate_as_xla(train):
    """Loss and parameter gradients of the whole network with oneDNN convolutions are as close
    to a float64 run as float32 XLA's are (the two differ in float32 summation order)."""
    feats = jnp.asarray(np.random.default_rng(1).standard_normal((4, 50, 40)), jnp.float32)
    models = {
        on: FastResNet34(
            rngs=nnx.Rngs(0), conv_impl="auto" if on else "xla", compute_dtype="float32"
        )
        for on in (True, False)
    }
    for m in models.values():
        m.train() if train else m.eval()
    with jax.enable_x64(True):
        exact = _model_loss_and_grads(models[False], feats, jnp.float64)
    runs = {on: _model_loss_and_grads(m, feats) for on, m in models.items()}
    if not train:
        # Eval mode is well conditioned: every leaf within 1e-4 of its largest float64 value,
        # or no worse than 4x float32 XLA's own error on it.
        err = {
            on: [
                np.abs(a - b).max() / (np.abs(b).max() or 1.0)  # (dead SE units: all zero)
                for a, b in zip(jax.tree.leaves(r), jax.tree.leaves(exact))
            ]
            for on, r in runs.items()
        }
        bad = [
            (i, e1, e0)
            for i, (e1, e0) in enumerate(zip(err[True], err[False]))
            if e1 > max(4 * e0, 1e-4)
        ]
        assert not bad, bad
        return
    # Train mode: BatchNorm over this small batch makes single leaves ill conditioned (float32
    # errors of a few percent on some leaves, large for oneDNN on one CPU and for XLA on
    # another), so compare the whole gradient: its relative L2 error (1e-3 here; a wrong
    # gradient path, layout or transposition gives order 1) and the loss.
    flat = {
        k: np.concatenate([x.ravel() for x in jax.tree.leaves(r[1])])
        for k, r in {**runs, "exact": exact}.items()
    }
    g_err = {
        on: np.linalg.norm(flat[on] - flat["exact"]) / np.linalg.norm(flat["exact"]) for on in runs
    }
    assert g_err[True] <= max(4 * g_err[False], 5e-3), g_err
    assert abs(runs[True][0] - exact[0]) <= 1e-5 * abs(exact[0])


def test_onednn_conv_runs_per_batch_shard_over_8_devices_and_equals_one():
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((8, 10, 6, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) * 0.1, jnp.float32)

    def f(x, w):
        return jax.value_and_grad(lambda w: jnp.sum(onednn.conv2d(x, w, (2, 2)) ** 2))(w)

    l1, g1 = jax.jit(f)(x, w)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    l8, g8 = jax.jit(f)(xs, ws)
    # Each device convolves its own batch shard (no gather); the weight gradient is all-reduced.
    hlo = jax.jit(f).lower(xs, ws).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo
    b = onednn.block_size()
    assert "custom-call(" in hlo and f"f32[1,{32 // b},5,3,{b}]" in hlo  # local batch 1 of 8
    np.testing.assert_allclose(float(l8), float(l1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_unavailable_kernels_fall_back_to_xla_with_a_warning(monkeypatch, caplog):
    feats = jnp.asarray(np.random.default_rng(3).standard_normal((2, 30, 40)), jnp.float32)
    model = FastResNet34(rngs=nnx.Rngs(0), compute_dtype="float32")
    model.eval()
    want = np.asarray(model(feats))  # oneDNN
    monkeypatch.setattr(onednn, "_state", {"ok": False, "reason": "no compiler (test)"})
    resnet._onednn_ready.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            got = np.asarray(model(feats))
    finally:
        resnet._onednn_ready.cache_clear()
    assert "no compiler (test)" in caplog.text and "XLA" in caplog.text
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(RuntimeError, match="no compiler"):
        onednn.conv2d(jnp.zeros((1, 4, 4, 16)), jnp.zeros((3, 3, 16, 16)))


def _run(args, isa="ALL", timeout=600, **env):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
        env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa, **env},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_avx2_cpus_use_8_channel_blocks():
    """Without AVX-512 oneDNN's fast kernels take 8-channel blocks (nChw8c, AVX2), and only
    reference loops for the single-channel stem, which then runs in XLA. Simulated with
    ONEDNN_MAX_CPU_ISA=AVX2; this file's exactness and sharding tests rerun there."""
    code = (
        "import jax.numpy as jnp; from ssv_jax.kernels import onednn; "
        "print(onednn.available(), onednn.block_size(), onednn.supports("
        "(2, 8, 8, 1), (7, 7, 1, 16), jnp.float32), onednn.supports((2, 8, 8, 8), "
        "(3, 3, 8, 24), jnp.float32))"
    )
    assert _run(["-c", code], "AVX2").stdout.split() == ["True", "8", "False", "True"]
    out = _run(
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "float64 or shard or refusals",
        ],
        "AVX2",
    )
    assert "6 passed, 1 skipped" in out.stdout, out.stdout[-2000:]  # skipped: the stem


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


@pytest.mark.slow
@pytest.mark.skipif(
    "avx512f" not in _cpu_flags(),
    reason="simulating AVX-512 needs a CPU that has it (ONEDNN_MAX_CPU_ISA only lowers the ISA)",
)
def test_avx512_without_bf16_instructions_refuses_bfloat16():
    """On AVX-512 without AVX512-BF16 / AMX oneDNN has only emulated bf16 kernels: the probe
    turns bf16 off (float32 stays on) and says why. Simulated with ONEDNN_MAX_CPU_ISA."""
    code = (
        "import jax.numpy as jnp; from ssv_jax.kernels import onednn; "
        "print(onednn.available(), onednn.available(jnp.bfloat16)); "
        "print(onednn.unavailable_reason(jnp.bfloat16))"
    )
    first, reason = _run(["-c", code], "AVX512_CORE", timeout=300).stdout.splitlines()[:2]
    assert first == "True False"
    assert "no native bfloat16" in reason and "avx512_core (no bf16" in reason


def test_cpu_without_fast_onednn_kernels_uses_xla():
    """With neither AVX-512 nor AVX2, oneDNN has only reference loops (far slower than XLA):
    the load-time probe turns the kernels off. Simulated with ONEDNN_MAX_CPU_ISA=AVX."""
    code = (
        "from ssv_jax.kernels import onednn; from ssv_jax.models import resnet; "
        "print(onednn.available(), resnet._onednn_ready()); print(onednn.unavailable_reason())"
    )
    out = _run(["-c", code], "AVX", timeout=300)
    first, reason = out.stdout.splitlines()[:2]
    assert first == "False False"
    assert "reference kernels" in reason and "AVX2" in reason
    assert "using XLA's convolutions" in out.stderr


@pytest.mark.slow
def test_no_compiler_means_xla_convolutions_and_a_reason(tmp_path):
    """A machine without a C++ compiler (or oneDNN headers) trains with XLA's convolutions; the
    warning says why. Simulated with CXX pointing nowhere and an empty kernel cache."""
    code = (
        "import jax.numpy as jnp; from flax import nnx; from ssv_jax.kernels import onednn; "
        "from ssv_jax.models import FastResNet34; "
        "m = FastResNet34(rngs=nnx.Rngs(0)); m.eval(); e = m(jnp.ones((2, 20, 40))); "
        "print(onednn.available(), e.shape); print(onednn.unavailable_reason())"
    )
    out = _run(
        ["-c", code],
        timeout=300,
        CXX="/nonexistent/g++",
        SSV_JAX_KERNEL_DIR=str(tmp_path / "kernels"),
    )
    first, reason = out.stdout.splitlines()[:2]
    assert first == "False (2, 512)"
    assert "/nonexistent/g++" in reason
    assert "using XLA's convolutions" in out.stderr
    assert not list((tmp_path / "kernels").glob("*"))  # no half-written library left
