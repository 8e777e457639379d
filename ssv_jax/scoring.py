"""Score back-ends: normalisation against a cohort of impostor embeddings (z-, t-, s- and
AS-norm), and neighbour expansion within the evaluated collection.

For a trial (enroll e, test t) with raw cosine score s = e . t and a cohort C (unit embeddings
of utterances that are not in the trials, one per cohort utterance), each side's statistics
are the mean and standard deviation of its cosines with the cohort:

    z-norm   (s - mu_e) / sd_e                         (enroll side)
    t-norm   (s - mu_t) / sd_t                         (test side)
    s-norm   ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2
    as-norm  s-norm with each side's statistics taken over its top_n highest cohort cosines

Statistics are computed once per utterance (jitted, in chunks of utterances), not per trial,
so a million trials cost a gather, never a trials x cohort matrix. Standard deviations are the
population ones (ddof 0), as the reference toolkits compute them.

Neighbour expansion (``expand_neighbours``; average query expansion, as in image and person
retrieval) uses the evaluated utterances themselves, unlabeled: each unit embedding, centred on
the collection's mean, is replaced by the unit mean of itself and its k most similar others.
Where the collection holds several recordings of each speaker (a folder scored against itself),
an embedding's nearest neighbours are mostly its own speaker's, so the average keeps the voice
and loses what belongs to one recording.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("none", "z-norm", "t-norm", "s-norm", "as-norm")
_EPS = 1e-8


def _row_chunks(x, chunk: int):
    """(start, rows, block) for each block of ``chunk`` rows of ``x`` (fewer when ``x`` has
    fewer), the last padded with zero rows: one compiled shape for every block."""
    size = max(1, min(chunk, x.shape[0]))
    for a in range(0, x.shape[0], size):
        part = x[a : a + size]
        pad = np.zeros((size - part.shape[0],) + x.shape[1:], x.dtype)
        yield a, part.shape[0], np.concatenate([part, pad])


@functools.partial(jax.jit, static_argnames=("top_n",))
def _stats_chunk(emb, cohort, top_n):
    cos = emb @ cohort.T  # [chunk, Nc]
    full = jnp.stack([cos.mean(1), cos.std(1)], 1)
    top = jax.lax.top_k(cos, top_n)[0]
    return full, jnp.stack([top.mean(1), top.std(1)], 1)


def cohort_stats(emb, cohort, *, top_n: int, chunk: int = 4096):
    """Per-utterance cohort statistics of unit embeddings ``emb`` [N, D] against ``cohort``
    [Nc, D]: (full [N, 2], top [N, 2]), each row (mean, std) of the cosines with the whole
    cohort, and with its ``top_n`` highest cosines (AS-norm)."""
    emb, cohort = np.asarray(emb, np.float32), np.asarray(cohort, np.float32)
    if cohort.ndim != 2 or cohort.shape[0] < 2 or cohort.shape[1] != emb.shape[1]:
        raise ValueError(
            f"cohort must be [Nc >= 2, {emb.shape[1]}] embeddings; got {cohort.shape}."
        )
    if not 1 <= top_n <= cohort.shape[0]:
        raise ValueError(f"top_n must be in [1, {cohort.shape[0]}] (the cohort size); got {top_n}.")
    n = emb.shape[0]
    full, top = np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32)
    for a, rows, block in _row_chunks(emb, chunk):
        f, t = _stats_chunk(block, cohort, top_n)
        full[a : a + rows] = np.asarray(f)[:rows]
        top[a : a + rows] = np.asarray(t)[:rows]
    return full, top


@functools.partial(jax.jit, static_argnames=("method",))
def _normalize(scores, enroll_stats, test_stats, method):
    ze = (scores - enroll_stats[:, 0]) / jnp.maximum(enroll_stats[:, 1], _EPS)
    zt = (scores - test_stats[:, 0]) / jnp.maximum(test_stats[:, 1], _EPS)
    if method == "z-norm":
        return ze
    if method == "t-norm":
        return zt
    return 0.5 * (ze + zt)


def normalize(scores, idx_enroll, idx_test, stats, method: str):
    """Normalised scores of trials (rows ``idx_enroll`` / ``idx_test`` of the utterances whose
    ``cohort_stats`` are ``stats`` = (full, top)); ``method`` one of METHODS."""
    if method not in METHODS:
        raise ValueError(f"eval.score_norm {method!r} is not one of {METHODS}.")
    if method == "none":
        return np.asarray(scores)
    table = stats[1] if method == "as-norm" else stats[0]
    table = jnp.asarray(table)
    e, t = jnp.asarray(idx_enroll), jnp.asarray(idx_test)
    return np.asarray(_normalize(jnp.asarray(scores), table[e], table[t], method))


@functools.partial(jax.jit, static_argnames=("k",))
def _nearest_chunk(part, emb, start, k):
    cos = part @ emb.T  # [chunk, N]
    own = (start + jnp.arange(part.shape[0]))[:, None] == jnp.arange(emb.shape[0])[None]
    return jax.lax.top_k(jnp.where(own, -jnp.inf, cos), k)[1]


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


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
    for a, rows, block in _row_chunks(x32, chunk):
        nearest[a : a + rows] = np.asarray(_nearest_chunk(block, x32, a, k))[:rows]
    return _unit(x + x[nearest].sum(1)).astype(np.float32)
