"""The evaluations the multi-process evaluation test runs on one process and on two."""

import contextlib

import jax
import numpy as np
from flax import nnx

from ssv_jax import data as data_lib
from ssv_jax import embedding, evaluate, methods
from ssv_jax.data import datasets
from ssv_jax.sharding import replicated

try:
    from tests.helpers.cases import tiny_config
except ImportError:  # in a worker, this script's folder is on sys.path
    from cases import tiny_config


def eval_config(data_dir):
    """The tiny config, with AS-norm against a cohort of 8, neighbour expansion by 3 and 3
    segments of 0.5 s."""
    cfg = tiny_config(data_dir)
    cfg.eval.score_norm, cfg.eval.cohort_size, cfg.eval.asnorm_top_n = "as-norm", 8, 4
    cfg.eval.neighbours = 3
    cfg.eval.num_frames, cfg.eval.frame_seconds = 3, 0.5
    return cfg


def save_network(net, path):
    """Write the parameters and statistics of ``net`` ((graphdef, params, batch_stats))."""
    np.savez(path, *(np.asarray(x) for x in jax.tree.leaves(net[1:])))


def load_network(cfg, mesh, path):
    """(graphdef, params, batch_stats) of ``cfg``'s network with the values ``save_network``
    wrote to ``path``, replicated on ``mesh`` (nothing is initialised)."""
    abstract = nnx.eval_shape(lambda: methods.SSLNetwork(cfg, rngs=nnx.Rngs(params=0)))
    graphdef, *state = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    with np.load(path) as z:
        leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
    state = jax.tree.unflatten(jax.tree.structure(state), leaves)
    return graphdef, *jax.device_put(state, replicated(mesh))


@contextlib.contextmanager
def counting_decodes():
    """Yield a list that collects the id of every dataset utterance decoded meanwhile."""
    decoded, real = [], datasets.Utterances.__iter__

    def counted(self):
        for u, w in real(self):
            decoded.append(u)
            yield u, w

    datasets.Utterances.__iter__ = counted
    try:
        yield decoded
    finally:
        datasets.Utterances.__iter__ = real


def evaluations(cfg, net, mesh) -> dict:
    """Per protocol ("full", "segments"): embeddings of in-memory waves (``emb``), the trial
    list's raw and AS-norm scores and EERs, and the dataset utterances decoded here
    (``decoded``: trial utterances and cohort), with ``net`` (graphdef, params, batch_stats)."""
    fn = embedding.make_embed_fn(cfg, net[0], mesh)
    utterances = list(data_lib.eval_utterances(cfg.data))[:11]
    out = {}
    for protocol in ("full", "segments"):
        cfg.eval.protocol = protocol
        emb = embedding.embed_utterances(cfg, *net, mesh, utterances, embed_fn=fn)
        out[f"{protocol}/emb"] = np.stack([emb[u] for u, _ in utterances])
        with counting_decodes() as decoded:
            scored = evaluate.score_trial_lists(cfg, *net, mesh, embed_fn=fn)
        out[f"{protocol}/decoded"] = len(decoded)
        for name, r in evaluate.trial_metrics(scored).items():
            out[f"{protocol}/{name}/scores"] = scored[name].scores
            out[f"{protocol}/{name}/eer"] = r["eer"]
    return out
