"""Encoders: exact parameter counts, float64 numpy reference forward, masks, sync BN, configs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssv_jax import models
from ssv_jax.models import (
    ECAPATDNN,
    FastResNet34,
    Projector,
    build_encoder,
    count_params,
    default_model_config,
    layers,
    resnet,
)
from ssv_jax.models.layers import BatchNorm, fusion_barrier
from ssv_jax.models.resnet import conv2d, conv_space_to_depth

# float32: "auto" is bfloat16 on a CPU with AMX; bf16 has its own tests (test_mixed_precision)
TINY = dict(
    channels=(4, 8, 8, 16),
    blocks=(1, 2, 1, 1),
    embed_dim=12,
    se_reduction=4,
    compute_dtype="float32",
)


def _eval_fn(model):
    """Jitted eval-mode forward via split/merge (the pattern the train step uses)."""
    model.eval()
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, x, m: nnx.merge(graphdef, s, copy=True)(x, m))
    return lambda x, m=None: f(state, x, m)


# ---------------------------------------------------------------- parameter counts
def test_fast_resnet34_parameter_counts():
    sap = nnx.eval_shape(lambda: FastResNet34(rngs=nnx.Rngs(0)))  # shapes only: fast
    assert count_params(sap) == 1_437_078
    head = count_params(sap.sap) + count_params(sap.fc)
    assert count_params(sap) - head == 1_354_390
    stats = nnx.eval_shape(lambda: FastResNet34(rngs=nnx.Rngs(0), pooling="stats"))
    assert count_params(stats) == 2_010_262
    # BatchNorm running statistics are state, not parameters.
    bn_stats = sum(x.size for x in jax.tree.leaves(nnx.state(sap, nnx.BatchStat)))
    assert bn_stats > 0


@pytest.mark.parametrize("n_mels,channels", [(40, 512), (80, 512), (80, 1024)])
def test_ecapa_parameter_counts(n_mels, channels):
    m = nnx.eval_shape(
        lambda: ECAPATDNN(rngs=nnx.Rngs(0), n_mels=n_mels, channels=channels, embed_dim=192)
    )
    assert count_params(m) == models.ECAPA_PARAM_COUNTS[(n_mels, channels, 192)]


def test_projector():
    p = Projector(rngs=nnx.Rngs(0))
    lin = lambda a, b: a * b + b  # noqa: E731
    assert count_params(p) == lin(512, 2048) + 2 * 2048 + lin(2048, 2048) + 2 * 2048 + lin(
        2048, 128
    )
    p.train()
    assert p(jnp.ones((4, 512)) * jnp.arange(4)[:, None]).shape == (4, 128)


# ---------------------------------------------------------------- float64 numpy reference
def np_conv(x, w, stride, pad):
    """x [B, Ci, H, W], w [Co, Ci, kh, kw] (PyTorch layout), zero padding, float64."""
    b, ci, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - kh) // stride[0] + 1
    wo = (wd + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((b, co, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + stride[0] * ho : stride[0], j : j + stride[1] * wo : stride[1]]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def np_bn(x, bn, train):
    """BatchNorm2d/1d over channel axis 1; returns output (train: biased batch variance)."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if train:
        mean, var = x.mean(axes), x.var(axes)
    else:
        mean, var = np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64)
    g, b = np.asarray(bn.scale[...], np.float64), np.asarray(bn.bias[...], np.float64)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * g.reshape(
        shape
    ) + b.reshape(shape)


def np_resnet(model, feats, train):
    """The Fast ResNet-34 of docs/method.md in PyTorch layout: feats [B, T, F] -> x [B, 1, F, T]."""
    t = lambda k: np.asarray(k[...], np.float64).transpose(3, 2, 1, 0)  # noqa: E731 -> [Co,Ci,kf,kt]

    def lin(layer, v):
        return v @ np.asarray(layer.kernel[...], np.float64) + np.asarray(
            layer.bias[...], np.float64
        )  # noqa: E731

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = np.asarray(feats, np.float64).transpose(0, 2, 1)[:, None]
    x = relu(np_bn(np_conv(x, t(model.stem.kernel), (2, 1), (3, 3)), model.stem_bn, train))
    for blk in model.blocks:
        s = blk.stride
        z = np_bn(relu(np_conv(x, t(blk.conv1.kernel), (s, s), (1, 1))), blk.bn1, train)
        z = np_bn(np_conv(z, t(blk.conv2.kernel), (1, 1), (1, 1)), blk.bn2, train)
        e = 1 / (1 + np.exp(-lin(blk.se_fc2, relu(lin(blk.se_fc1, z.mean((2, 3)))))))
        z = z * e[:, :, None, None]
        res = (
            x
            if blk.down_conv is None
            else np_bn(np_conv(x, t(blk.down_conv.kernel), (s, s), (0, 0)), blk.down_bn, train)
        )
        x = relu(z + res)
    if model.pooling == "sap":
        h = x.mean(2).transpose(0, 2, 1)  # [B, T, C]
        w = np.tanh(lin(model.sap.linear, h)) @ np.asarray(model.sap.attention[...], np.float64)
        w = np.exp(w - w.max(1, keepdims=True))
        w = w / w.sum(1, keepdims=True)
        pooled = (h * w).sum(1)
    else:
        b, c, f, tt = x.shape
        h = x.reshape(b, c * f, tt)
        mean = h.mean(-1)
        pooled = np.concatenate([mean, np.sqrt(np.maximum(h.var(-1), 1e-5))], 1)
    return lin(model.fc, pooled)


def test_space_to_depth_conv_equals_strided_conv():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
    for h, w in [(20, 201), (10, 101), (5, 8)]:
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        ref = np_conv(
            x.transpose(0, 3, 1, 2).astype(np.float64),
            k.transpose(3, 2, 0, 1).astype(np.float64),
            (2, 2),
            (1, 1),
        )
        for out in (conv_space_to_depth(x, k, (2, 2)), conv2d(x, k, (2, 2))):
            np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, atol=1e-4)


@pytest.mark.slow
def test_fusion_barrier_is_exact_and_keeps_fusions_small(monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 7, 5, 16)).astype(np.float32) * 1e3
    x[0, 0, 0] = [0.0, 1e-37, 3e38] + [1.0] * 13  # zero, tiny, near max
    np.testing.assert_array_equal(np.asarray(jax.jit(fusion_barrier)(x)), x)
    # Subnormals: flushed to zero, as XLA:CPU's elementwise ops (the ReLU before it) already do.
    relu = jax.jit(lambda v: jnp.maximum(v, 0.0))
    x[1, 0, 0] = [1e-40, 1e-45] + [2.0] * 14
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda v: fusion_barrier(relu(v)))(x)), np.asarray(relu(x))
    )
    # Fast ResNet-34 train-mode loss and parameter gradients on the CPU path without oneDNN
    # kernels (XLA's convolutions, space-to-depth and the barrier) and with plain XLA
    # convolutions: the same (up to float32 summation order: XLA fuses the reductions
    # differently).
    monkeypatch.setattr(resnet, "_onednn_ready", lambda: False)
    feats = jnp.asarray(np.random.default_rng(1).standard_normal((2, 40, 40)), jnp.float32)
    results = {}
    for barrier in (True, False):
        model = FastResNet34(rngs=nnx.Rngs(0), conv_impl="auto" if barrier else "xla")
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            return jnp.sum(jnp.square(nnx.merge(graphdef, p, rest, copy=True)(feats)))

        step = jax.jit(jax.value_and_grad(loss))
        results[barrier] = step(params)
        hlo = step.lower(params).compile().as_text()
        # The widest fusion (input count): 15 with the barrier, 36 without (a stage's whole
        # residual chain re-computed inside one consumer).
        widest = max(
            line.split(" fusion(")[1].split("), kind")[0].count("%")
            for line in hlo.splitlines()
            if " fusion(" in line and "), kind" in line
        )
        results[barrier, "widest"] = widest
    # Train-mode gradients of a batch of 2 are ill-conditioned: compare the whole gradient
    # (relative L2; a wiring error gives order 1).
    a, b = (np.concatenate([np.ravel(v) for v in jax.tree.leaves(results[k][1])]) for k in (1, 0))
    np.testing.assert_allclose(float(results[True][0]), float(results[False][0]), rtol=1e-5)
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
    assert 2 * results[True, "widest"] <= results[False, "widest"], results


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["sap", "stats"])
def test_resnet_matches_float64_reference_train_and_eval(pooling):
    model = FastResNet34(rngs=nnx.Rngs(1), pooling=pooling, **TINY)
    feats = np.random.default_rng(1).standard_normal((3, 23, 40)).astype(np.float32)
    model.train()
    out_train = np.asarray(model(jnp.asarray(feats)))
    np.testing.assert_allclose(out_train, np_resnet(model, feats, True), atol=1e-4, rtol=1e-4)
    # Random running statistics so eval mode is a real check.
    for bn in [m for _, m in nnx.iter_graph(model) if isinstance(m, BatchNorm)]:
        n = bn.mean[...].shape[0]
        bn.mean[...] = jnp.linspace(-0.3, 0.3, n)
        bn.var[...] = jnp.linspace(0.5, 2.0, n)
    model.eval()
    out_eval = np.asarray(model(jnp.asarray(feats)))
    np.testing.assert_allclose(out_eval, np_resnet(model, feats, False), atol=1e-4, rtol=1e-4)


def test_batchnorm_train_update_and_eval():
    bn = BatchNorm(3, momentum=0.1)
    x = np.random.default_rng(2).standard_normal((4, 5, 3)) * [1.0, 2.0, 3.0] + [0.0, 1.0, -1.0]
    y = np.asarray(bn(jnp.asarray(x, jnp.float32)))
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(
        y.reshape(-1, 3), (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), atol=1e-5
    )
    np.testing.assert_allclose(bn.mean[...], 0.1 * flat.mean(0), atol=1e-6)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * flat.var(0, ddof=1), atol=1e-5)  # unbiased
    bn.use_running_average = True
    np.testing.assert_allclose(
        np.asarray(bn(jnp.asarray(x, jnp.float32))),
        (x - bn.mean[...]) / np.sqrt(bn.var[...] + 1e-5),
        atol=1e-5,
    )


def _bn_two_pass(x, scale, bias, m, eps=1e-5):
    """Textbook train-mode BatchNorm (two-pass variance) for autodiff to differentiate."""
    w = jnp.ones(x.shape[:-1] + (1,), x.dtype) if m is None else m
    n = jnp.sum(w)
    mean = jnp.sum(x * w, axis=(0, 1, 2)) / n
    var = jnp.sum(jnp.square(x - mean) * w, axis=(0, 1, 2)) / n
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize("masked", [False, True])
def test_batchnorm_gradient_is_the_exact_one(masked):
    """The closed-form train-mode gradient equals autodiff of the two-pass formula, for x, scale
    and bias, with and without a mask (masked positions still get outputs and gradients)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 7, 5, 3)) * [1.0, 2.0, 0.5] + [0.5, 1.0, -1.0]
    dy = rng.standard_normal(x.shape)
    scale, bias = rng.standard_normal(3), rng.standard_normal(3)
    m = None
    if masked:
        m = np.broadcast_to((rng.uniform(size=(4, 7)) > 0.3)[:, :, None, None], (4, 7, 5, 1))
        m = jnp.asarray(m, jnp.float32)
    args = [jnp.asarray(v, jnp.float32) for v in (x, scale, bias)]

    def ours(x, s, b):
        return jnp.sum(layers.batch_norm_train(x, s, b, m, 1e-5)[0] * dy)

    def ref(x, s, b):
        return jnp.sum(_bn_two_pass(x, s, b, m) * dy)

    np.testing.assert_allclose(ours(*args), ref(*args), rtol=1e-5)
    for g, r in zip(jax.grad(ours, (0, 1, 2))(*args), jax.grad(ref, (0, 1, 2))(*args)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(r))))


def test_batchnorm_bfloat16_gradient_follows_float32():
    """Mixed precision: a bf16 input's gradient is the float32 one to bf16 rounding (relative
    error measured 0.24% on these ReLU-like activations)."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((8, 50, 20, 16)), 0) + 0.1
    dy = rng.standard_normal(x.shape)
    scale, bias = jnp.linspace(0.5, 1.5, 16), jnp.zeros(16)

    def grads(dtype):
        f = lambda x, s: jnp.sum(  # noqa: E731
            layers.batch_norm_train(x, s, bias, None, 1e-5)[0].astype(jnp.float32) * dy
        )
        return jax.grad(f, (0, 1))(jnp.asarray(x, dtype), scale)

    (dx16, ds16), (dx32, ds32) = grads(jnp.bfloat16), grads(jnp.float32)
    assert dx16.dtype == jnp.bfloat16
    for a, b in ((dx16, dx32), (ds16, ds32)):
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.linalg.norm(a - b) <= 5e-3 * np.linalg.norm(b)


def test_scale_channels_gradient():
    """The squeeze-excitation product's hand-written gradient equals autodiff of x * gate; in
    bf16 the output and dx are bf16 and the gate's gradient float32, close to float32's."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 5, 4))
    gate = rng.uniform(size=(3, 1, 1, 4))
    dy = rng.standard_normal(x.shape)
    x32, g32 = jnp.asarray(x, jnp.float32), jnp.asarray(gate, jnp.float32)

    def f(fn, x, g):
        return jnp.sum(fn(x, g).astype(jnp.float32) * dy)

    ours = jax.grad(lambda x, g: f(layers.scale_channels, x, g), (0, 1))(x32, g32)
    ref = jax.grad(lambda x, g: f(jnp.multiply, x, g), (0, 1))(x32, g32)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    x16 = x32.astype(jnp.bfloat16)
    assert layers.scale_channels(x16, g32).dtype == jnp.bfloat16
    dx16, dg16 = jax.grad(lambda x, g: f(layers.scale_channels, x, g), (0, 1))(x16, g32)
    assert dx16.dtype == jnp.bfloat16 and dg16.dtype == jnp.float32
    np.testing.assert_allclose(dg16, ref[1], rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- shapes, masks, sharding
@pytest.mark.slow
@pytest.mark.parametrize("name", ["fast_resnet34", "ecapa_tdnn"])
def test_shapes_1s_2s_10s(name):
    cfg = default_model_config(name)
    if name == "ecapa_tdnn":
        cfg.channels = 256  # shapes only; keeps the test fast
    fwd = _eval_fn(build_encoder(cfg, rngs=nnx.Rngs(0)))
    for seconds in (1, 2, 10):
        frames = 1 + seconds * 16000 // 160
        out = fwd(jnp.ones((2, frames, 40)) * jnp.linspace(-1, 1, 40))
        assert out.shape == (2, cfg.embed_dim) and out.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize(
    "name,kw",
    [
        ("fast_resnet34", dict(TINY, pooling="sap")),
        ("fast_resnet34", dict(TINY, pooling="stats")),
        ("ecapa_tdnn", dict(channels=64, mfa_channels=96, embed_dim=16, dense_residual=True)),
    ],
)
@pytest.mark.slow
def test_masked_batch_equals_one_at_a_time(name, kw):
    model = build_encoder(ml_collections.ConfigDict(dict(name=name, **kw)), rngs=nnx.Rngs(3))
    fwd = _eval_fn(model)
    rng = np.random.default_rng(4)
    lens = [31, 57, 101, 64]  # frames; odd lengths exercise the stride-2 masks
    feats = np.zeros((4, 101, 40), np.float32)
    for i, n in enumerate(lens):
        feats[i, :n] = rng.standard_normal((n, 40))
    feats[0, 31:] = 100.0  # garbage in padding must not leak
    mask = np.arange(101)[None] < np.array(lens)[:, None]
    batched = np.asarray(fwd(jnp.asarray(feats), jnp.asarray(mask)))
    for i, n in enumerate(lens):
        alone = np.asarray(fwd(jnp.asarray(feats[i : i + 1, :n])))[0]
        np.testing.assert_allclose(batched[i], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "name,kw",
    [("fast_resnet34", TINY), ("ecapa_tdnn", dict(channels=64, mfa_channels=96, embed_dim=16))],
)
@pytest.mark.slow
def test_sharded_train_forward_equals_single_device(name, kw):
    """Train-mode BN under jit over a batch sharded on 8 devices uses global-batch statistics."""
    assert jax.device_count() == 8
    model = build_encoder(ml_collections.ConfigDict(dict(name=name, **kw)), rngs=nnx.Rngs(5))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def step(params, rest, x):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest, copy=True)
            emb = m(x)
            return jnp.sum(emb**2), (emb, nnx.state(m, nnx.BatchStat))

        (_, (emb, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return emb, stats, grads

    x = jnp.asarray(np.random.default_rng(6).standard_normal((16, 40, 40)), jnp.float32)
    single = jax.jit(step)(params, rest, x)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    rep = NamedSharding(mesh, P())
    sharded = jax.jit(step, in_shardings=(rep, rep, NamedSharding(mesh, P("data"))))(
        params, rest, xs
    )
    assert len(sharded[0].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        # Within 1e-4 of each leaf's largest value (float32 sums in another order).
        np.testing.assert_allclose(
            np.asarray(a),
            np.asarray(b),
            rtol=0,
            atol=1e-4 * max(float(np.abs(np.asarray(b)).max()), 1.0),
        )
    # Batch statistics really are used in train mode: per-device statistics would differ.
    per_dev = jax.jit(step)(params, rest, x[:2])[0]
    assert not np.allclose(np.asarray(per_dev), np.asarray(single[0][:2]), atol=1e-3)


# ---------------------------------------------------------------- configs and errors
def test_configs_and_errors():
    for name in ("fast_resnet34", "ecapa_tdnn"):
        cfg = default_model_config(name)
        assert cfg.name == name
    cfg = default_model_config("fast_resnet34")
    assert type(build_encoder(cfg, rngs=nnx.Rngs(0))) is FastResNet34
    cfg.bogus = 1
    with pytest.raises(ValueError, match="bogus"):
        build_encoder(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown encoder"):
        default_model_config("resnet999")
    with pytest.raises(ValueError, match="pooling"):
        FastResNet34(rngs=nnx.Rngs(0), pooling="max")
    m = FastResNet34(rngs=nnx.Rngs(0), **TINY)
    with pytest.raises(ValueError, match=r"\[B, frames, 40\]"):
        m(jnp.zeros((2, 40, 20)))
