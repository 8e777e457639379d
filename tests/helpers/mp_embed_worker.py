"""One process of the multi-process evaluation test: embeddings over a mesh spanning processes."""
import argparse

import jax

p = argparse.ArgumentParser()
p.add_argument("--coordinator")
p.add_argument("--process_id", type=int)
p.add_argument("--num_processes", type=int)
p.add_argument("--out")
a = p.parse_args()
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)

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
