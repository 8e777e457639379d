"""NT-Xent-AM / AAM / MoCo-AM against independent float64 references, and across devices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssv_jax import losses
from ssv_jax.sharding import DATA_AXIS, data_mesh

Z1 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
Z2 = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0.1], [0.1, 0, 1.2], [0.5, 1, 0.3]], np.float32)


# ---------------------------------------------------------------- references
def _norm(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pos_logit(c, s, m, angular):
    if not angular:
        return s * (c - m)
    theta = math.acos(min(1.0, max(-1.0, c)))
    if theta + m <= math.pi:
        return s * math.cos(theta + m)
    return s * (c - m * math.sin(m))


def ref_loss(z1, z2, s, m, symmetric, angular=False, drop=0):
    """Per-anchor loop, float64: -log(e^pos / (e^pos + sum_neg e^{s cos})), without each
    anchor's ``drop`` largest negative logits."""
    a, b = _norm(z1), _norm(z2)
    n = a.shape[0]
    views = [a, b]
    terms = []
    anchor_views = (0, 1) if symmetric else (0,)
    for v in anchor_views:
        for i in range(n):
            x = views[v][i]
            pos = _pos_logit(float(x @ views[1 - v][i]), s, m, angular)
            negs = []
            for j in range(n):
                if j == i:
                    continue
                negs.append(s * float(x @ views[1 - v][j]))
                if symmetric:
                    negs.append(s * float(x @ views[v][j]))
            negs = sorted(negs)[: len(negs) - drop]
            all_logits = np.array([pos] + negs)
            mx = all_logits.max()
            terms.append(-(pos - mx - math.log(np.exp(all_logits - mx).sum())))
    return float(np.mean(terms))


def ref_simclr_ntxent(z1, z2, tau):
    """SimCLR's NT-Xent as usually written: 2N x 2N similarities / tau, diagonal masked, CE."""
    z = _norm(np.concatenate([z1, z2]))
    n = z1.shape[0]
    sim = z @ z.T / tau
    np.fill_diagonal(sim, -np.inf)
    labels = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    mx = sim.max(axis=1, keepdims=True)
    logp = sim - mx - np.log(np.exp(sim - mx).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(2 * n), labels].mean())


def ref_moco(q, k, queue, s, m, angular=False, drop=0):
    q, k, queue = _norm(q), _norm(k), _norm(queue)
    out = []
    for i in range(q.shape[0]):
        pos = _pos_logit(float(q[i] @ k[i]), s, m, angular)
        negs = np.sort(s * (queue @ q[i]))[: queue.shape[0] - drop]
        logits = np.concatenate([[pos], negs])
        mx = logits.max()
        out.append(-(logits[0] - mx - np.log(np.exp(logits - mx).sum())))
    return float(np.mean(out))


# ---------------------------------------------------------------- values
@pytest.mark.parametrize(
    "s,m,sym,expected",
    [
        (30, 0.0, True, 0.3419855253),
        (30, 0.1, True, 1.2470401836),
        (30, 0.0, False, 0.0494093703),
        (30, 0.1, False, 0.5351353603),
    ],
)
def test_method_reference_values(s, m, sym, expected):
    got = float(losses.nt_xent_am(Z1, Z2, scale=s, margin=m, symmetric=sym))
    assert got == pytest.approx(expected, rel=1e-5)
    z1, z2 = (
        Z1.astype(np.float64),
        np.array([[0.9, 0.1, 0], [0.2, 0.8, 0.1], [0.1, 0, 1.2], [0.5, 1, 0.3]]),
    )
    assert ref_loss(z1, z2, s, m, sym) == pytest.approx(expected, rel=1e-9)


_JITTED = {
    angular: jax.jit(fn, static_argnames=("symmetric",))
    for angular, fn in ((False, losses.nt_xent_am), (True, losses.nt_xent_aam))
}


@pytest.mark.parametrize("n,d", [(2, 3), (7, 16), (24, 64)])
@pytest.mark.parametrize("s,m", [(30.0, 0.0), (30.0, 0.1), (33.333, 0.2), (10.0, 0.05)])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("angular", [False, True])
def test_matches_float64_reference(n, d, s, m, sym, angular):
    rng = np.random.default_rng(n * 1000 + d)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = (z1 + 0.7 * rng.normal(size=(n, d))).astype(np.float32)
    fn = _JITTED[angular]  # scale and margin traced: one compile per shape
    got = float(fn(z1, z2, scale=s, margin=m, symmetric=sym))
    assert got == pytest.approx(ref_loss(z1, z2, s, m, sym, angular), rel=1e-5)


@pytest.mark.parametrize("drop", [1, 3])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("angular", [False, True])
def test_drop_nearest_leaves_out_each_anchors_most_similar_negatives(drop, sym, angular):
    rng = np.random.default_rng(11)
    z1 = rng.normal(size=(7, 16)).astype(np.float32)
    z2 = (z1 + 0.7 * rng.normal(size=(7, 16))).astype(np.float32)
    fn = losses.nt_xent_aam if angular else losses.nt_xent_am
    got = float(fn(z1, z2, scale=30.0, margin=0.1, symmetric=sym, drop_nearest=drop))
    want = ref_loss(z1, z2, 30.0, 0.1, sym, angular, drop=drop)
    assert got == pytest.approx(want, rel=1e-5)
    assert want < ref_loss(z1, z2, 30.0, 0.1, sym, angular) - 1e-3  # it changes the loss
    q, k, queue = z1, z2, rng.normal(size=(20, 16)).astype(np.float32)
    moco = losses.moco_aam if angular else losses.moco_am
    got = float(moco(q, k, queue, scale=30.0, margin=0.1, drop_nearest=drop))
    assert got == pytest.approx(ref_moco(q, k, queue, 30.0, 0.1, angular, drop=drop), rel=1e-5)


def test_aam_uses_fallback_beyond_pi():
    # Anti-parallel positive: theta = pi, so theta + m > pi and cos - m sin m is used.
    z1 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    z2 = np.array([[-1.0, 0.0], [0.0, -1.0]], np.float32)
    got = float(losses.nt_xent_aam(z1, z2, scale=5.0, margin=0.3, symmetric=False))
    assert got == pytest.approx(ref_loss(z1, z2, 5.0, 0.3, False, angular=True), rel=1e-5)
    np.testing.assert_allclose(
        losses.additive_angular_margin(jnp.float32(-1.0), 0.3),
        -1.0 - 0.3 * math.sin(0.3),
        rtol=1e-6,
    )


@pytest.mark.parametrize("tau", [0.03, 0.1, 0.5])
def test_margin_zero_is_simclr_ntxent(tau):
    rng = np.random.default_rng(3)
    z1 = rng.normal(size=(9, 12)).astype(np.float32)
    z2 = (z1 + rng.normal(size=(9, 12))).astype(np.float32)
    got = float(losses.nt_xent_am(z1, z2, scale=1.0 / tau, margin=0.0))
    assert got == pytest.approx(ref_simclr_ntxent(z1, z2, tau), rel=1e-5)


def test_margin_increases_loss_and_aam_matches_am_for_small_margin():
    rng = np.random.default_rng(4)
    z1 = rng.normal(size=(8, 5)).astype(np.float32)
    z2 = z1 + 0.3 * rng.normal(size=(8, 5)).astype(np.float32)
    l0 = float(losses.nt_xent_am(z1, z2, scale=30, margin=0.0))
    l1 = float(losses.nt_xent_am(z1, z2, scale=30, margin=0.1))
    assert l1 > l0
    a0 = float(losses.nt_xent_aam(z1, z2, scale=30, margin=0.0))
    assert a0 == pytest.approx(l0, rel=1e-5)


@pytest.mark.slow
def test_numerically_stable_and_bf16():
    rng = np.random.default_rng(5)
    z1 = rng.normal(size=(6, 8)).astype(np.float32)
    # Identical views and a large scale: exp would overflow without log-sum-exp.
    for fn in (losses.nt_xent_am, losses.nt_xent_aam):
        val, grads = jax.value_and_grad(lambda a, b: fn(a, b, scale=200.0, margin=0.2), (0, 1))(
            z1, z1
        )
        assert np.isfinite(float(val))
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    z2 = z1 + rng.normal(size=(6, 8)).astype(np.float32)
    b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
    got = losses.nt_xent_am(b1, b2, scale=30.0, margin=0.1)
    assert got.dtype == jnp.float32
    ref = ref_loss(np.asarray(b1, np.float32), np.asarray(b2, np.float32), 30.0, 0.1, True)
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_moco_matches_reference_and_stops_key_gradients():
    rng = np.random.default_rng(6)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    k = (q + rng.normal(size=(5, 16))).astype(np.float32)
    queue = rng.normal(size=(40, 16)).astype(np.float32)
    for m in (0.0, 0.1):
        got = float(losses.moco_am(q, k, queue, scale=30.0, margin=m))
        assert got == pytest.approx(ref_moco(q, k, queue, 30.0, m), rel=1e-5)
        got = float(losses.moco_aam(q, k, queue, scale=30.0, margin=m))
        assert got == pytest.approx(ref_moco(q, k, queue, 30.0, m, angular=True), rel=1e-5)
    # The angular margin differs from the cosine one (beyond float error) for m > 0.
    assert (
        abs(
            float(losses.moco_aam(q, k, queue, scale=30.0, margin=0.2))
            - float(losses.moco_am(q, k, queue, scale=30.0, margin=0.2))
        )
        > 1e-3
    )
    gq, gk, gqueue = jax.grad(
        lambda a, b, c: losses.moco_am(a, b, c, scale=30.0, margin=0.1), (0, 1, 2)
    )(q, k, queue)
    assert np.abs(np.asarray(gq)).sum() > 0
    assert np.all(np.asarray(gk) == 0) and np.all(np.asarray(gqueue) == 0)


# ---------------------------------------------------------------- across devices
def _sharded(fn, mesh, n_in, **kw):
    body = lambda *xs: fn(*xs, axis_name=DATA_AXIS, **kw)  # noqa: E731
    return jax.shard_map(body, mesh=mesh, in_specs=tuple([P(DATA_AXIS)] * n_in), out_specs=P())


@pytest.mark.parametrize("fn", [losses.nt_xent_am, losses.nt_xent_aam])
@pytest.mark.parametrize("sym,drop", [(True, 0), (False, 0), (True, 2)])
def test_sharded_loss_and_grads_equal_single_device(fn, sym, drop):
    mesh = data_mesh()
    assert mesh.size == 8
    rng = np.random.default_rng(7)
    z1 = rng.normal(size=(32, 24)).astype(np.float32)
    z2 = (z1 + rng.normal(size=(32, 24))).astype(np.float32)
    kw = dict(scale=30.0, margin=0.1, symmetric=sym, drop_nearest=drop)
    single = jax.jit(jax.value_and_grad(lambda a, b: fn(a, b, **kw), (0, 1)))
    multi = jax.jit(jax.value_and_grad(_sharded(fn, mesh, 2, **kw), (0, 1)))
    (l1, g1), (l8, g8) = single(z1, z2), multi(z1, z2)
    assert float(l8) == pytest.approx(float(l1), rel=1e-5)
    assert float(l1) == pytest.approx(
        ref_loss(z1, z2, 30.0, 0.1, sym, fn is losses.nt_xent_aam, drop), rel=1e-5
    )
    for a, b in zip(g1, g8):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(g1[0])).sum() > 0


@pytest.mark.slow
def test_sharded_grads_inside_shard_map_wrt_replicated_params():
    """The train-step pattern: grad taken inside shard_map w.r.t. replicated weights."""
    mesh = data_mesh()
    rng = np.random.default_rng(8)
    x1 = rng.normal(size=(16, 10)).astype(np.float32)
    x2 = (x1 + rng.normal(size=(16, 10))).astype(np.float32)
    w = rng.normal(size=(10, 6)).astype(np.float32)

    def loss(w, a, b, axis_name=None):
        return losses.nt_xent_am(a @ w, b @ w, scale=30.0, margin=0.1, axis_name=axis_name)

    g_ref = jax.grad(loss)(w, x1, x2)
    inner = jax.shard_map(
        lambda w, a, b: jax.grad(loss)(w, a, b, axis_name=DATA_AXIS),
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)),
        out_specs=P(),
    )
    # Each element of the weight gradient sums 2 x 16 anchors' terms of the gradient's own
    # magnitude, in another order on 8 devices (psum of partial sums) than on one: float32
    # rounding bounds the difference by about 32 x 6e-8 of the largest element (2e-6), far
    # below a wiring error (a gradient 8 times too large, or one device's part only).
    g_ref = np.asarray(g_ref)
    np.testing.assert_allclose(
        np.asarray(inner(w, x1, x2)), g_ref, rtol=1e-5, atol=2e-6 * np.abs(g_ref).max()
    )


@pytest.mark.slow
def test_sharded_moco_equals_single_device():
    mesh = data_mesh()
    rng = np.random.default_rng(9)
    q = rng.normal(size=(16, 8)).astype(np.float32)
    k = rng.normal(size=(16, 8)).astype(np.float32)
    queue = rng.normal(size=(32, 8)).astype(np.float32)
    fn = jax.shard_map(
        lambda a, b, c: losses.moco_am(a, b, c, scale=30.0, margin=0.1, axis_name=DATA_AXIS),
        mesh=mesh,
        in_specs=(P(DATA_AXIS), P(DATA_AXIS), P()),
        out_specs=P(),
    )
    l8, g8 = jax.value_and_grad(fn)(q, k, queue)
    l1, g1 = jax.value_and_grad(lambda a: losses.moco_am(a, k, queue, scale=30.0, margin=0.1))(q)
    assert float(l8) == pytest.approx(float(l1), rel=1e-5)
    np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-7)


def test_per_device_logits_are_local_by_global():
    """No [B_global, B_global] array exists inside the sharded loss."""
    mesh = data_mesh()
    n_global, d = 64, 16
    z = np.zeros((n_global, d), np.float32)
    jaxpr = jax.make_jaxpr(
        _sharded(losses.nt_xent_am, mesh, 2, scale=30.0, margin=0.1, symmetric=True)
    )(z, z)

    sizes = []

    def walk(jpr):
        for eqn in jpr.eqns:
            for v in eqn.outvars:
                shape = getattr(v.aval, "shape", ())
                sizes.append(int(np.prod(shape)) if shape else 1)
            for p in eqn.params.values():
                inner = getattr(p, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    walk(inner)
                elif hasattr(p, "eqns"):
                    walk(p)

    walk(jaxpr.jaxpr)
    n_local = n_global // 8
    assert max(sizes) == (2 * n_local) * (2 * n_global)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        losses.nt_xent_am(Z1, Z2[:3], scale=30, margin=0.1)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        losses.nt_xent_am(Z1[0], Z2[0], scale=30, margin=0.1)
    with pytest.raises(ValueError, match="at least 2 utterances"):
        losses.nt_xent_am(Z1[:1], Z2[:1], scale=30, margin=0.1)
    with pytest.raises(ValueError, match="empty"):
        losses.nt_xent_aam(Z1[:0], Z2[:0], scale=30, margin=0.1)
    with pytest.raises(ValueError, match="queue must be"):
        losses.moco_am(Z1, Z2, np.zeros((5, 4), np.float32), scale=30, margin=0.1)
    # 4 utterances: 6 negatives per symmetric anchor, 3 per one-sided anchor, 5 queue keys
    with pytest.raises(ValueError, match=r"drop_nearest must be in \[0, 5\].*6 negatives"):
        losses.nt_xent_am(Z1, Z2, scale=30, margin=0.1, drop_nearest=6)
    with pytest.raises(ValueError, match=r"drop_nearest must be in \[0, 2\]"):
        losses.nt_xent_am(Z1, Z2, scale=30, margin=0.1, symmetric=False, drop_nearest=3)
    with pytest.raises(ValueError, match=r"drop_nearest must be in \[0, 4\]"):
        losses.moco_am(Z1, Z2, np.ones((5, 3), np.float32), scale=30, margin=0.1, drop_nearest=5)
