"""SSPS: k-means against a float64 reference, the sampler's rules, sharding, resume, bad sizes."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssv_jax import config as config_lib
from ssv_jax import data as data_lib
from ssv_jax import train as train_lib
from ssv_jax.methods import ssps
from ssv_jax.sharding import data_mesh
from tests.helpers.cases import ROOT, run_steps, tiny_config


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _kmeans64(x, valid, init, iters, k_used):
    """Spherical k-means in float64, the textbook loop."""
    x, c = x.astype(np.float64), init.astype(np.float64).copy()

    def assign(c):
        sims = x @ c.T
        sims[:, k_used:] = -np.inf
        return sims.argmax(1)

    for _ in range(iters):
        a = assign(c)
        for j in range(c.shape[0]):
            rows = x[valid & (a == j)]
            if len(rows):
                c[j] = _unit(rows.sum(0))
    return c, np.where(valid, assign(c), -1)


def _blobs(rng, n, d, centres, spread=0.35):
    mu = _unit(rng.normal(size=(centres, d)))
    lab = rng.integers(0, centres, n)
    return _unit(mu[lab] + spread * rng.normal(size=(n, d))).astype(np.float32), lab


def test_kmeans_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    x, _ = _blobs(rng, 300, 16, 6)
    valid = rng.random(300) > 0.1  # empty slots take no part
    init = x[rng.choice(np.flatnonzero(valid), 8, replace=False)].copy()
    init[7] = -init[6]  # a centroid far from everything ends with no rows: it stays put
    for k_used in (8, 6):  # 6: the last two centroids are not in use (capped K)
        c, a = ssps.kmeans(jnp.asarray(x), jnp.asarray(valid), jnp.asarray(init), 5, k_used)
        c64, a64 = _kmeans64(x, valid, init, 5, k_used)
        np.testing.assert_array_equal(np.asarray(a), a64)
        np.testing.assert_allclose(np.asarray(c), c64, atol=2e-6)
        assert (np.asarray(a)[~valid] == -1).all() and np.asarray(a).max() < k_used
    # blocks of rows (large memories) give the same assignment as one block
    big, _ = _blobs(rng, 2 * ssps._CHUNK + 5, 8, 5)  # and a size that is not whole blocks
    cents = jnp.asarray(big[:5])
    np.testing.assert_array_equal(
        np.asarray(ssps.nearest(jnp.asarray(big), cents)),
        np.argmax(big.astype(np.float64) @ big[:5].T.astype(np.float64), 1),
    )


def _memory(cfg, rng, q=64, d=8, k=4):
    """A fitted memory: ``q`` queue entries of 16 recordings (4 copies each) in ``k`` clusters."""
    x, lab = _blobs(rng, q, d, k, spread=0.2)
    mem = ssps.init_memory(cfg, d, d, 1, jax.random.PRNGKey(0))
    c = np.stack([_unit(x[lab == j].sum(0)) for j in range(k)])
    idx = np.arange(q) % 16
    return (
        dict(
            mem,
            pos=jnp.asarray(x[None]),
            pos_ref=jnp.asarray(x),
            pos_idx=jnp.asarray(idx, jnp.int32),
            pos_cluster=jnp.asarray(np.argmax(x @ c.T, 1), jnp.int32),
            centroids=jnp.asarray(c, jnp.float32),
            fitted=jnp.ones((), jnp.bool_),
        ),
        x,
        idx,
    )


def _ssps_cfg(**kw):
    cfg = config_lib.base_config()
    cfg.train.batch_size = 8
    cfg.method.ssps.update({**dict(enabled=True, ref_size=64, queue_size=64, prototypes=4), **kw})
    return cfg


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"intra_size": 3, "intra_prob": "exp"},
        {"inter_size": 2, "inter_prob": "exp"},
        {"sampling": "knn", "intra_size": 5},
    ],
)
def test_sampler_never_returns_the_anchor_and_keeps_to_its_window(kw):
    cfg = _ssps_cfg(**kw)
    config_lib.validate(cfg)
    s = cfg.method.ssps
    rng = np.random.default_rng(1)
    mem, x, idx = _memory(cfg, rng)
    sz = ssps.sizes(cfg)
    anchors = np.arange(16)  # the reference embedding of recording i: its first queue entry
    ref = jnp.asarray(x[anchors])
    own = np.argmax(x[anchors] @ np.asarray(mem["centroids"]).T, 1)
    csim = np.asarray(mem["centroids"]) @ np.asarray(mem["centroids"]).T
    clusters = np.asarray(mem["pos_cluster"])
    pick = jax.jit(lambda key: ssps.sample(cfg, mem, jnp.asarray(anchors), ref, key, sz))
    ranks = []
    for t in range(200):
        slot, ok = map(np.asarray, pick(jax.random.PRNGKey(t)))
        for i in np.flatnonzero(ok):
            j = slot[i]
            assert idx[j] != anchors[i], "the anchor's own recording"
            live = idx != anchors[i]
            if s.sampling == "knn":
                cand = np.flatnonzero(live)
            else:
                if s.inter_size == 0:
                    assert clusters[j] == own[i]
                else:
                    order = [c for c in np.argsort(-csim[own[i]]) if c != own[i]]
                    assert clusters[j] in order[: s.inter_size]
                cand = np.flatnonzero(live & (clusters == clusters[j]))
            by_sim = cand[np.argsort(-(x[cand] @ x[anchors[i]]), kind="stable")]
            rank = int(np.flatnonzero(by_sim == j)[0])
            assert rank < s.intra_size
            ranks.append(rank)
        assert ok.mean() > 0.5
    if s.intra_prob == "exp":  # lambda 0.7 by rank: the nearest drawn most, then the next
        counts = np.bincount(ranks, minlength=3)
        assert counts[0] > counts[1] > counts[2] > 0
    # an anchor whose only candidates are its own recording keeps its positive (not found)
    lone = dict(mem, pos_idx=jnp.zeros_like(mem["pos_idx"]))
    _, ok = ssps.sample(cfg, lone, jnp.zeros((1,), jnp.int32), ref[:1], jax.random.PRNGKey(0), sz)
    assert not bool(ok[0])


def test_bad_sizes_are_refused_or_capped(caplog):
    for kw, field in [
        ({"queue_size": 4}, "queue_size"),
        ({"prototypes": 65}, "prototypes"),
        ({"sampling": "dbscan"}, "sampling"),
        ({"intra_prob": "gauss"}, "intra_prob"),
        ({"inter_size": 4}, "inter_size"),
    ]:
        with pytest.raises(config_lib.ConfigError, match=field):
            config_lib.validate(_ssps_cfg(**kw))
    cfg = _ssps_cfg(start_step=30, prototypes=32)
    with caplog.at_level(logging.WARNING, logger="ssv_jax"):
        sz = ssps.sizes(cfg, n_train=20)  # fewer utterances than the memories and K
    assert (sz.ref, sz.queue, sz.prototypes) == (16, 16, 16)
    assert "method.ssps.ref_size=64 is more than the 20 training utterances" in caplog.text
    assert sz.fill_start == 28 and sz.refresh_every == 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    data_lib.ensure_dataset(tiny_config(d).data)
    return d


def _tiny_ssps(data_dir, method):
    cfg = tiny_config(data_dir, method)
    # 32 training utterances, batches of 16: step 0 fills half the memories, SSPS from step 1
    # on, k-means refitted at every step; 48 > 32 entries asked for: capped, with a warning.
    cfg.method.ssps.update(
        enabled=True, start_step=1, refresh_every=1, ref_size=48, queue_size=32, prototypes=4
    )
    cfg.optim.name, cfg.optim.lr = "sgd", 0.05  # see test_sharded_step_equals_single_device
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_sharded_ssps_equals_single_device(data_dir, method):
    cfg = _tiny_ssps(data_dir, method)
    # Two steps, as test_sharded_step_equals_single_device: beyond them this tiny network's
    # float32 rounding differences grow with or without SSPS.
    s8, m8 = run_steps(cfg, data_mesh(), n_steps=2)
    s1, m1 = run_steps(cfg, data_mesh(jax.devices()[:1]), n_steps=2)
    assert m8[0]["ssps_replaced"] == 0.0 and m8[1]["ssps_replaced"] > 0.5
    for a, b in zip(m8, m1):
        assert a["ssps_replaced"] == b["ssps_replaced"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    mem8, mem1 = s8.method_state["ssps"], s1.method_state["ssps"]
    for k in ("pos_idx", "ref_idx", "pos_cluster"):
        np.testing.assert_array_equal(mem8[k], mem1[k])
    np.testing.assert_allclose(mem8["centroids"], mem1["centroids"], atol=1e-5)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # both batches are in the memories: every recording of the data once
    assert sorted(np.asarray(mem8["ref_idx"])[:32]) == list(range(32))
    assert sorted(np.asarray(mem8["pos_idx"])) == list(range(32))


@pytest.mark.slow
def test_resume_inside_the_ssps_phase_equals_uninterrupted(data_dir, tmp_path):
    cfg = _tiny_ssps(data_dir, "simclr")
    _, full, _ = train_lib.train(cfg, str(tmp_path / "full"))
    train_lib.train(cfg, str(tmp_path / "cut"), max_steps=3)  # stops (saved) at step 3
    _, resumed, _ = train_lib.train(cfg, str(tmp_path / "cut"))
    full, resumed = jax.device_get((full, resumed))
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def _recipe(name, arg=None):
    return config_lib.sibling_recipe(os.path.join(ROOT, "configs", "x.py"), name, arg)


def test_ssps_recipes_continue_the_papers():
    for name in ("simclr_am", "moco_am"):
        for arg in (None, "demo", "small"):
            base, cont = _recipe(name, arg), _recipe(f"{name}_ssps", arg)
            config_lib.validate(cont)
            s = cont.method.ssps
            assert s.enabled and s.sampling == "kmeans" and s.kmeans_iters == 10
            # the same recipe, then SSPS: only the schedule's length and method.ssps differ
            cont.method.ssps, cont.train.epochs = base.method.ssps, base.train.epochs
            assert cont.to_dict() == base.to_dict()
    paper = _recipe("simclr_am_ssps").method.ssps
    assert _recipe("simclr_am_ssps").train.epochs == 110 and paper.start_step == 100 * 4265
    assert (paper.prototypes, paper.queue_size, paper.ref_size) == (25000, 25000, 4265 * 256)
    assert paper.inter_size == 0 and paper.intra_prob == "uniform"
    assert _recipe("simclr_am_ssps", "small").method.ssps.start_step == 540
    assert _recipe("moco_am_ssps", "demo").method.ssps.start_step == 180
    assert not config_lib.base_config().method.ssps.enabled  # off unless a recipe sets it
