"""oneDNN convolution kernels (ssv_jax/kernels): exact against float64, in the model, sharded."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssv_jax.kernels import onednn
from ssv_jax.models import FastResNet34
from ssv_jax.models import resnet

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"oneDNN kernels unavailable: {onednn.unavailable_reason()}")


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
    return y, dxp[:, t0:xp.shape[1] - t1, f0:xp.shape[2] - f1], dw


CASES = [  # x shape (N, H, W, C_in), kernel (kh, kw, C_out), stride, padding
    ((2, 9, 7, 16), (3, 3, 16), (1, 1), ((1, 1), (1, 1))),
    ((3, 12, 10, 16), (3, 3, 32), (2, 2), ((1, 1), (1, 1))),     # stride-2 stage entry
    ((2, 11, 9, 32), (3, 3, 16), (2, 2), ((1, 1), (1, 1))),      # odd sizes
    ((2, 13, 12, 1), (7, 7, 16), (1, 2), ((3, 3), (3, 3))),      # single-channel stem
    ((1, 8, 6, 16), (3, 1, 16), (1, 1), ((0, 2), (1, 0))),       # uneven, asymmetric padding
]


@pytest.mark.parametrize("xs,ks,stride,pads", CASES)
def test_conv_and_gradients_match_float64(xs, ks, stride, pads):
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
        x.astype(np.float32), w.astype(np.float32))
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dw), dw_ref, atol=1e-4 * np.abs(dw_ref).max())


def test_blocked_layout_round_trip_and_refusals():
    x = jnp.arange(2 * 3 * 4 * 32, dtype=jnp.float32).reshape(2, 3, 4, 32)
    xb = onednn.to_blocked(x)
    assert xb.shape == (2, 2, 3, 4, 16)
    np.testing.assert_array_equal(xb[1, 1, 2, 3], x[1, 2, 3, 16:])
    np.testing.assert_array_equal(onednn.from_blocked(xb), x)
    assert not onednn.supports((2, 9, 7, 8), (3, 3, 8, 16), jnp.float32)      # C_in 8
    assert not onednn.supports((2, 9, 7, 16), (3, 3, 16, 24), jnp.float32)    # C_out 24
    assert not onednn.supports((2, 9, 7, 16), (3, 3, 16, 16), jnp.bfloat16)
    with pytest.raises(ValueError, match="C_out % 16"):
        onednn.conv2d(jnp.zeros((2, 9, 7, 8)), jnp.zeros((3, 3, 8, 16)))


def _model_loss_and_grads(model, feats, dtype=jnp.float32):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.tree.map(lambda v: jnp.asarray(v, dtype), (params, rest))

    def loss(params):
        m = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.sum(jnp.square(m(feats.astype(dtype))))
    return jax.tree.map(np.asarray, jax.jit(jax.value_and_grad(loss))(params))


def test_fast_resnet34_with_onednn_is_as_accurate_as_xla():
    """Train-mode loss and parameter gradients of the whole network with oneDNN convolutions are
    as close to a float64 run as float32 XLA's are (the two differ in float32 summation order)."""
    feats = jnp.asarray(np.random.default_rng(1).standard_normal((4, 50, 40)), jnp.float32)
    models = {on: FastResNet34(rngs=nnx.Rngs(0), onednn=on) for on in (True, False)}
    with jax.enable_x64(True):
        exact = _model_loss_and_grads(models[False], feats, jnp.float64)
    runs = {on: _model_loss_and_grads(m, feats) for on, m in models.items()}
    err = {on: [np.abs(a - b).max() / (np.abs(b).max() or 1.0)   # (dead SE units: all zero)
                for a, b in zip(jax.tree.leaves(r), jax.tree.leaves(exact))]
           for on, r in runs.items()}
    # oneDNN: every leaf within 1e-4 of its largest float64 value (max seen: 5e-5). XLA's own
    # float32 run is further off (up to 5e-2 here); no leaf may be worse than it by over 4x.
    assert max(err[True]) < 1e-4, err[True]
    assert all(e1 <= 4 * e0 + 1e-6 for e1, e0 in zip(err[True], err[False])), [
        (i, e1, e0) for i, (e1, e0) in enumerate(zip(err[True], err[False])) if e1 > 4 * e0 + 1e-6]


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
    assert "custom-call(" in hlo and "f32[1,2,5,3,16]" in hlo        # local batch 1 of 8
    np.testing.assert_allclose(float(l8), float(l1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-5)


def test_unavailable_kernels_fall_back_to_xla_with_a_warning(monkeypatch, caplog):
    feats = jnp.asarray(np.random.default_rng(3).standard_normal((2, 30, 40)), jnp.float32)
    model = FastResNet34(rngs=nnx.Rngs(0))
    model.eval()
    want = np.asarray(model(feats))                         # oneDNN
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


def test_cpu_without_fast_onednn_kernels_uses_xla():
    """Without AVX-512 oneDNN has only reference loops for 16-channel blocks (far slower than
    XLA): the load-time probe turns the kernels off. Simulated with ONEDNN_MAX_CPU_ISA=AVX2."""
    import os
    import subprocess
    import sys
    code = ("from ssv_jax.kernels import onednn; from ssv_jax.models import resnet; "
            "print(onednn.available(), resnet._onednn_ready()); print(onednn.unavailable_reason())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=root, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert out.returncode == 0, out.stderr
    first, reason = out.stdout.splitlines()[:2]
    assert first == "False False"
    assert "reference kernels" in reason and "AVX-512" in reason
    assert "using XLA's convolutions" in out.stderr
