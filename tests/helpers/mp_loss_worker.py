"""One process of the multi-process loss test: global batch from local slices, sharded loss."""

from multiprocess import init_worker  # this script's folder is on sys.path

a = init_worker("out")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from ssv_jax import losses  # noqa: E402
from ssv_jax.sharding import DATA_AXIS, data_mesh, global_batch, local_batch_size  # noqa: E402

rng = np.random.default_rng(0)
z1 = rng.normal(size=(16, 12)).astype(np.float32)
z2 = (z1 + rng.normal(size=(16, 12))).astype(np.float32)
mesh = data_mesh()
n_local = local_batch_size(16, mesh)
sl = slice(a.process_id * n_local, (a.process_id + 1) * n_local)
batch = global_batch({"z1": z1[sl], "z2": z2[sl]}, mesh)
fn = jax.jit(
    jax.value_and_grad(
        jax.shard_map(
            lambda x, y: losses.nt_xent_am(x, y, scale=30.0, margin=0.1, axis_name=DATA_AXIS),
            mesh=mesh,
            in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
            out_specs=P(),
        )
    )
)
loss, grad = fn(batch["z1"], batch["z2"])
local_grad = np.concatenate(
    [np.asarray(s.data) for s in sorted(grad.addressable_shards, key=lambda s: s.index[0].start)]
)
np.savez(
    f"{a.out}.{a.process_id}.npz",
    loss=float(loss),
    grad=local_grad,
    n_local=n_local,
    devices=jax.device_count(),
    processes=jax.process_count(),
)
