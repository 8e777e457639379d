"""One process of the multi-process evaluation test: embeddings over a mesh spanning processes."""
from multiprocess import init_worker  # this script's folder is on sys.path

a = init_worker("out")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssv_jax import evaluate, train  # noqa: E402
from ssv_jax.sharding import data_mesh, replicated  # noqa: E402
from cases import embed_case  # noqa: E402  (this script's folder is on sys.path)

cfg, utterances = embed_case()
graphdef, state = train.init_state(cfg)
mesh = data_mesh()
params, rest = jax.device_put((state["params"], state["rest"]), replicated(mesh))
emb = evaluate.embed_utterances(cfg, graphdef, params, rest, mesh, utterances)
np.savez(f"{a.out}.{a.process_id}.npz", emb=np.stack([emb[u] for u, _ in utterances]),
         devices=jax.device_count(), processes=jax.process_count())
