"""Mesh, shardings and global-batch assembly (one process x 8 devices; two processes x 4)."""

import os

import jax
import numpy as np
import pytest

from ssv_jax import losses
from ssv_jax.sharding import batch_sharding, data_mesh, global_batch, local_batch_size, replicated
from tests.helpers.multiprocess import launch


def test_mesh_and_shardings():
    mesh = data_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count() == 8
    x = jax.device_put(np.arange(32.0).reshape(16, 2), batch_sharding(mesh))
    assert {s.data.shape for s in x.addressable_shards} == {(2, 2)}
    r = jax.device_put(np.ones(3), replicated(mesh))
    assert all(s.data.shape == (3,) for s in r.addressable_shards)
    # A plain jit over a batch-sharded array works (Auto axes; Explicit would refuse).
    y = jax.jit(lambda a: (a * 2).sum(axis=0))(x)
    np.testing.assert_allclose(np.asarray(y), np.arange(32.0).reshape(16, 2).sum(0) * 2)


def test_global_batch_single_process():
    mesh = data_mesh()
    local = {"views": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "idx": np.arange(16)}
    out = global_batch(local, mesh)
    assert out["views"].shape == (16, 3) and out["views"].sharding == batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(out["views"]), local["views"])
    assert local_batch_size(16, mesh) == 16


def test_bad_batch_sizes_are_refused():
    mesh = data_mesh()
    with pytest.raises(ValueError, match="does not divide over 8 devices"):
        local_batch_size(12, mesh)
    with pytest.raises(ValueError, match="does not split over its 8"):
        global_batch({"x": np.zeros((6, 2))}, mesh)
    with pytest.raises(ValueError, match="same leading"):
        global_batch({"x": np.zeros((8, 2)), "y": np.zeros((16,))}, mesh)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """2 processes x 4 devices: global batch from per-process slices, sharded loss + grads."""
    worker = os.path.join(os.path.dirname(__file__), "helpers", "mp_loss_worker.py")
    out = str(tmp_path / "res")
    launch(worker, [f"--out={out}"], n_proc=2, devices_per_proc=4)
    res = [np.load(f"{out}.{i}.npz") for i in range(2)]
    assert all(int(r["devices"]) == 8 and int(r["processes"]) == 2 for r in res)
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(16, 12)).astype(np.float32)
    z2 = (z1 + rng.normal(size=(16, 12))).astype(np.float32)
    loss, grad = jax.value_and_grad(lambda a: losses.nt_xent_am(a, z2, scale=30.0, margin=0.1))(z1)
    for r in res:
        assert float(r["loss"]) == pytest.approx(float(loss), rel=1e-5)
    np.testing.assert_allclose(
        np.concatenate([r["grad"] for r in res]), np.asarray(grad), rtol=1e-5, atol=1e-7
    )
