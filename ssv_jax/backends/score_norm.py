"""Score normalisation against a cohort of impostor embeddings (z-, t-, s- and AS-norm).

For a trial (enroll e, test t) with raw cosine score s = e . t and a cohort C (unit embeddings
of utterances that are not in the trials, one per cohort utterance), each side's statistics
are the mean and standard deviation of its cosines with the cohort:

    z-norm   (s - mu_e) / sd_e                         (enroll side)
    t-norm   (s - mu_t) / sd_t                         (test side)
    s-norm   ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2
    as-norm  s-norm with each side's statistics taken over its top_n highest cohort cosines

Statistics are computed once per utterance (jitted, in chunks of utterances), not per trial,
so a million trials cost a gather, never a trials x cohort matrix. Standard deviations are the
population ones (ddof 0), as the reference toolkits compute them. The cohort is
``eval.cohort_size`` utterances of the training split (``eval.score_norm``; "none": off).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from ssv_jax import data as data_lib
from ssv_jax.backends.base import EPS, BackEnd, row_chunks, trial_rows

METHODS = ("none", "z-norm", "t-norm", "s-norm", "as-norm")
log = logging.getLogger("ssv_jax")


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
    for a, rows, block in row_chunks(emb, chunk):
        f, t = _stats_chunk(block, cohort, top_n)
        full[a : a + rows] = np.asarray(f)[:rows]
        top[a : a + rows] = np.asarray(t)[:rows]
    return full, top


@functools.partial(jax.jit, static_argnames=("method",))
def _normalize(scores, enroll_stats, test_stats, method):
    ze = (scores - enroll_stats[:, 0]) / jnp.maximum(enroll_stats[:, 1], EPS)
    zt = (scores - test_stats[:, 0]) / jnp.maximum(test_stats[:, 1], EPS)
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


def make(cfg, collection) -> BackEnd | None:
    """``eval.score_norm`` against a cohort of the training split, embedded here."""
    method = cfg.eval.score_norm
    if method == "none":
        return None
    exclude = set(collection.embeddings)
    cohort = collection.embed(
        data_lib.cohort_utterances(cfg.data, int(cfg.eval.cohort_size), exclude=exclude)
    )
    ids = list(collection.embeddings)
    pos = {u: i for i, u in enumerate(ids)}
    stats = cohort_stats(
        np.stack([collection.embeddings[u] for u in ids]),
        np.stack(list(cohort.values())),
        top_n=min(int(cfg.eval.asnorm_top_n), len(cohort)),
    )
    log.info("score normalisation %s against a cohort of %d utterances", method, len(cohort))
    return BackEnd(method, lambda t, cos: normalize(cos, *trial_rows(pos, t), stats, method))
