"""One process of the multi-process evaluation test: embeddings over a mesh spanning processes."""

from multiprocess import init_worker  # this script's folder is on sys.path

a = init_worker("out")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from cases import embed_case, embed_network  # noqa: E402  (this script's folder is on sys.path)

from ssv_jax import evaluate  # noqa: E402
from ssv_jax.sharding import data_mesh  # noqa: E402

cfg, utterances = embed_case()
mesh = data_mesh()
graphdef, params, batch_stats = embed_network(cfg, mesh)
emb = evaluate.embed_utterances(cfg, graphdef, params, batch_stats, mesh, utterances)
np.savez(
    f"{a.out}.{a.process_id}.npz",
    emb=np.stack([emb[u] for u, _ in utterances]),
    devices=jax.device_count(),
    processes=jax.process_count(),
)
