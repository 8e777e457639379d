"""Neighbour expansion within the evaluated collection (average query expansion, as in image
and person retrieval), unlabeled: each unit embedding, centred on the collection's mean, is
replaced by the unit mean of itself and its k most similar others. Where the collection holds
several recordings of each speaker (a folder scored against itself), an embedding's nearest
neighbours are mostly its own speaker's, so the average keeps the voice and loses what belongs
to one recording. ``eval.neighbours`` = k (0: off); the collection is the union of the trial
lists' utterances.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from ssv_jax.backends.base import EPS, BackEnd, row_chunks, score_trials

log = logging.getLogger("ssv_jax")


@functools.partial(jax.jit, static_argnames=("k",))
def _nearest_chunk(part, emb, start, k):
    cos = part @ emb.T  # [chunk, N]
    own = (start + jnp.arange(part.shape[0]))[:, None] == jnp.arange(emb.shape[0])[None]
    return jax.lax.top_k(jnp.where(own, -jnp.inf, cos), k)[1]


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def expand_neighbours(emb, k: int, chunk: int = 4096) -> np.ndarray:
    """Embeddings ``emb`` [N, D] of a collection, expanded by their neighbours: unit-normalise,
    subtract the collection's mean, unit-normalise, then replace each by the unit mean of
    itself and its ``k`` most similar others (cosine). Returns [N, D] float32 unit vectors."""
    x = np.asarray(emb, np.float64)
    if x.ndim != 2 or not 1 <= k < x.shape[0]:
        raise ValueError(
            f"expanding by {k} neighbours needs k >= 1 and [N > {k}, D] embeddings; got {x.shape}."
        )
    # Centring in float64: embeddings of one network can be nearly parallel (cosines of 0.999
    # early in training), and subtracting their mean then cancels most of float32's digits, so
    # a float32 mean would make the result depend on the order of the rows.
    x = _unit(x)
    x = _unit(x - x.mean(0))
    x32 = x.astype(np.float32)
    nearest = np.zeros((x.shape[0], k), np.int64)
    for a, rows, block in row_chunks(x32, chunk):
        nearest[a : a + rows] = np.asarray(_nearest_chunk(block, x32, a, k))[:rows]
    return _unit(x + x[nearest].sum(1)).astype(np.float32)


def make(cfg, collection) -> BackEnd | None:
    """``eval.neighbours`` = K > 0: trials scored with every embedding expanded by its K nearest
    among the trial lists' utterances (all but one of them when there are no more than K)."""
    k = int(cfg.eval.neighbours)
    if not k:
        return None
    ids = sorted(collection.embeddings)
    if k >= len(ids):
        log.warning(
            "eval.neighbours=%d, but the trial lists name only %d utterances: expanding by %d",
            k,
            len(ids),
            len(ids) - 1,
        )
        k = len(ids) - 1
    if not k:
        return None
    expanded = expand_neighbours(np.stack([collection.embeddings[u] for u in ids]), k)
    expanded = dict(zip(ids, expanded))
    log.info("neighbour expansion: %d nearest of %d utterances", k, len(ids))
    return BackEnd(f"neighbours_{k}", lambda t, cos: score_trials(expanded, t))
