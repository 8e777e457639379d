"""One process of the multi-process evaluation test: each process embeds its share of the
utterances on its own devices, then every process holds every embedding."""

from multiprocess import init_worker  # this script's folder is on sys.path

a = init_worker("data_dir", "network", "out")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from eval_case import eval_config, evaluations, load_network  # noqa: E402  (same folder)

from ssv_jax.sharding import data_mesh  # noqa: E402

cfg, mesh = eval_config(a.data_dir), data_mesh()
np.savez(
    f"{a.out}.{a.process_id}.npz",
    devices=jax.device_count(),
    processes=jax.process_count(),
    **evaluations(cfg, load_network(cfg, mesh, a.network), mesh),
)
