"""One process of the multi-process training test: ssv_jax.train.train over 2 processes."""

from multiprocess import init_worker  # this script's folder is on sys.path

a = init_worker("data_dir", "method", "workdir", "out")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from cases import tiny_config  # noqa: E402  (this script's folder is on sys.path)

from ssv_jax import train  # noqa: E402

cfg = tiny_config(a.data_dir, a.method)
cfg.optim.name, cfg.optim.lr = "sgd", 0.05
_, state, _ = train.train(cfg, a.workdir, max_steps=2)
leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
np.savez(
    f"{a.out}.{a.process_id}.npz",
    *leaves,
    step=int(state.step),
    devices=jax.device_count(),
    processes=jax.process_count(),
)
