"""Self-supervised positive sampling (SSPS; docs/method.md#ssps): each anchor's positive taken
from another recording that the model places near it, so that the loss stops rewarding what a
recording shares with itself (channel, room, session).

Two rings of past embeddings, global (every device samples from all of them) and part of the
train state, so a resumed run continues them exactly:

  reference memory  ``ref`` [R, D], ``ref_idx`` [R]: reference embeddings (the encoder's
                    L2-normalised output for the clean first crop, BatchNorm in inference mode,
                    no gradient) and their record indices; spherical k-means runs on it
  positive queue    ``pos`` [V, Q, E], ``pos_ref`` [Q, D], ``pos_idx`` [Q], ``pos_cluster`` [Q]:
                    what the loss may take as a positive (SimCLR: the second view's embedding;
                    MoCo: both views' keys), with the reference embedding and cluster of each
  prototypes        ``centroids`` [K, D] and ``fitted`` (whether k-means has run)

From ``start_step`` each anchor's positive is replaced: ``kmeans`` picks a cluster (its own,
``inter_size=0``, or one of the ``inter_size`` nearest other clusters) and a queue entry of that
cluster (uniformly, or among the ``intra_size`` nearest to the anchor); ``knn`` picks among the
``intra_size`` queue entries nearest to the anchor. Never the anchor's own recording; an anchor
with no candidate keeps its own positive. k-means is refitted every ``refresh_every`` steps.
The memories fill in the steps just before ``start_step``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp

from ssv_jax.losses import l2_normalize

log = logging.getLogger("ssv_jax")

_CHUNK = 4096  # rows per block of the N x K similarity (keeps it to a few hundred MB)
KEY_SALT = 0x5505  # SSPS draws from fold_in(step key, KEY_SALT): augmentation's draws unchanged


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The memory sizes a run uses: the config's, capped by the training data (static)."""

    ref: int  # reference entries in use (of the allocated ``ref_size``)
    queue: int  # positive queue entries in use
    prototypes: int  # k-means clusters in use
    fill_start: int  # first step whose embeddings are stored
    refresh_every: int


def sizes(cfg, n_train: int | None = None) -> Sizes:
    """``cfg.method.ssps``'s sizes for a training split of ``n_train`` utterances: a memory
    larger than the data would hold stale copies of the same recordings, and more prototypes
    than utterances cannot all be filled, so each is capped at the data with a warning."""
    s, bsz = cfg.method.ssps, int(cfg.train.batch_size)
    ref, queue, k = int(s.ref_size), int(s.queue_size), int(s.prototypes)
    if n_train is not None:
        cap = max(bsz, (n_train // bsz) * bsz)
        for name, v in (("ref_size", ref), ("queue_size", queue), ("prototypes", k)):
            if v > cap:
                log.warning(
                    "method.ssps.%s=%d is more than the %d training utterances: using %d",
                    name,
                    v,
                    n_train,
                    cap,
                )
        ref, queue, k = min(ref, cap), min(queue, cap), min(k, cap)
    fill = max(math.ceil(ref / bsz), math.ceil(queue / bsz))
    every = int(s.refresh_every) or max(1, ref // bsz)
    return Sizes(ref, queue, k, max(0, int(s.start_step) - fill), every)


def init_memory(cfg, ref_dim: int, emb_dim: int, views: int, rng) -> dict:
    """Empty memories of the configured sizes (the record index -1 marks an empty slot)."""
    s = cfg.method.ssps
    r = _padded(int(s.ref_size))
    q, k = int(s.queue_size), int(s.prototypes)
    return {
        "ref": jnp.zeros((r, ref_dim), jnp.float32),
        "ref_idx": jnp.full((r,), -1, jnp.int32),
        "ref_ptr": jnp.zeros((), jnp.int32),
        "pos": jnp.zeros((views, q, emb_dim), jnp.float32),
        "pos_ref": jnp.zeros((q, ref_dim), jnp.float32),
        "pos_idx": jnp.full((q,), -1, jnp.int32),
        "pos_cluster": jnp.full((q,), -1, jnp.int32),
        "pos_ptr": jnp.zeros((), jnp.int32),
        "centroids": l2_normalize(jax.random.normal(rng, (k, ref_dim))),
        "fitted": jnp.zeros((), jnp.bool_),
    }


def _padded(n: int) -> int:
    """Rows allocated for ``n`` entries: whole blocks of the chunked similarity."""
    return n if n <= _CHUNK else math.ceil(n / _CHUNK) * _CHUNK


# ----------------------------------------------------------------------------- k-means


def nearest(x, centroids, k_used: int | None = None):
    """Index of each row's most similar centroid (cosine; rows and centroids unit vectors), in
    blocks of rows; only the first ``k_used`` centroids compete."""
    k = centroids.shape[0]
    live = jnp.arange(k) < (k if k_used is None else k_used)

    def block(xb):
        sims = jnp.dot(xb, centroids.T, precision=jax.lax.Precision.HIGHEST)
        return jnp.argmax(jnp.where(live, sims, -jnp.inf), axis=1).astype(jnp.int32)

    n = x.shape[0]
    if n <= _CHUNK:
        return block(x)
    padded = _padded(n)  # the ring is allocated so; a queue of any size is padded here
    xp = x if padded == n else jnp.pad(x, ((0, padded - n), (0, 0)))
    return jax.lax.map(block, xp.reshape(padded // _CHUNK, _CHUNK, -1)).reshape(padded)[:n]


def kmeans(x, valid, init, iters: int, k_used: int | None = None):
    """Spherical k-means: ``iters`` rounds of (each valid row to its most similar centroid; each
    centroid the normalised sum of its rows; a centroid with no rows stays). Returns
    (centroids [K, D], assignment [N], -1 for invalid rows)."""
    k = init.shape[0]
    w = valid.astype(x.dtype)

    def update(_, c):
        a = nearest(x, c, k_used)
        sums = jax.ops.segment_sum(x * w[:, None], a, num_segments=k)
        counts = jax.ops.segment_sum(w, a, num_segments=k)
        return jnp.where(counts[:, None] > 0, l2_normalize(sums), c)

    c = jax.lax.fori_loop(0, iters, update, init)
    return c, jnp.where(valid, nearest(x, c, k_used), -1)


def _initial_centroids(key, x, valid, k: int, k_used: int):
    """``k_used`` distinct valid rows drawn at random (the rest of the K rows unused)."""
    score = jnp.where(valid, jax.random.gumbel(key, valid.shape), -jnp.inf)
    _, rows = jax.lax.top_k(score, k)
    return jnp.where((jnp.arange(k) < k_used)[:, None], x[rows], 0.0)


def refresh(cfg, mem: dict, key, sz: Sizes) -> dict:
    """Refit the prototypes on the reference memory; re-cluster the positive queue."""
    valid = mem["ref_idx"] >= 0
    k = mem["centroids"].shape[0]
    init = _initial_centroids(key, mem["ref"], valid, k, sz.prototypes)
    c, _ = kmeans(mem["ref"], valid, init, int(cfg.method.ssps.kmeans_iters), sz.prototypes)
    cluster = jnp.where(mem["pos_idx"] >= 0, nearest(mem["pos_ref"], c, sz.prototypes), -1)
    return dict(mem, centroids=c, pos_cluster=cluster, fitted=jnp.ones((), jnp.bool_))


# ----------------------------------------------------------------------------- sampling


def _rank_logits(n: int, prob: str, lam: float):
    """Log-probabilities of ranks 0..n-1: uniform, or exponential decay lam * exp(-lam r)."""
    r = jnp.arange(n, dtype=jnp.float32)
    return jnp.zeros_like(r) if prob == "uniform" else -lam * r


def _pick(key, scores, cand, window: int, prob: str, lam: float):
    """Per row, one column among the candidates: the ``window`` best-scoring ones, drawn
    uniformly or by exponentially decaying rank. Returns (column, found)."""
    n = cand.shape[1]
    if window >= n and prob == "uniform":  # every candidate alike: no ranking needed
        g = jnp.where(cand, jax.random.gumbel(key, cand.shape), -jnp.inf)
        return jnp.argmax(g, axis=1).astype(jnp.int32), cand.any(axis=1)
    vals, cols = jax.lax.top_k(jnp.where(cand, scores, -jnp.inf), min(window, n))
    ok = vals > -jnp.inf
    logits = jnp.where(ok, _rank_logits(vals.shape[1], prob, lam), -jnp.inf)
    r = jax.random.categorical(key, jnp.where(ok.any(axis=1, keepdims=True), logits, 0.0))
    return jnp.take_along_axis(cols, r[:, None], axis=1)[:, 0].astype(jnp.int32), ok[:, 0]


def sample(cfg, mem: dict, index, ref, key, sz: Sizes):
    """For each anchor (record ``index`` [B], reference embedding ``ref`` [B, D]): a slot of the
    positive queue holding another recording, and whether one was found ([B] int32, [B] bool)."""
    s = cfg.method.ssps
    k_inter, k_intra = jax.random.split(key)
    live = (mem["pos_idx"] >= 0) & (mem["pos_idx"][None, :] != index[:, None])
    scores = jnp.dot(ref, mem["pos_ref"].T, precision=jax.lax.Precision.HIGHEST)
    if s.sampling == "knn":
        return _pick(k_intra, scores, live, int(s.intra_size), s.intra_prob, s.intra_lambda)
    c = mem["centroids"]
    own = nearest(ref, c, sz.prototypes)
    if int(s.inter_size) == 0:
        chosen = own
    else:
        csim = jnp.dot(c[own], c.T, precision=jax.lax.Precision.HIGHEST)
        other = (jnp.arange(c.shape[0])[None, :] != own[:, None]) & (
            jnp.arange(c.shape[0]) < sz.prototypes
        )[None, :]
        chosen, _ = _pick(k_inter, csim, other, int(s.inter_size), s.inter_prob, s.inter_lambda)
    cand = live & (mem["pos_cluster"][None, :] == chosen[:, None])
    slot, ok = _pick(k_intra, scores, cand, int(s.intra_size), s.intra_prob, s.intra_lambda)
    return slot, ok & mem["fitted"]


def positives(cfg, mem: dict, step, index, ref, key, targets, sz: Sizes):
    """``targets`` (a list of [B, E] positives, one per view) with each anchor's replaced by
    the sampled queue entry from ``start_step`` on; also the fraction of anchors replaced."""
    slot, ok = sample(cfg, mem, index, ref, key, sz)
    on = ok & (step >= int(cfg.method.ssps.start_step))
    out = [jnp.where(on[:, None], mem["pos"][v][slot], t) for v, t in enumerate(targets)]
    return out, jnp.mean(on.astype(jnp.float32))


# ----------------------------------------------------------------------------- memory writes


def write(mem: dict, index, ref, views, sz: Sizes) -> dict:
    """This global batch's entries into both rings (oldest replaced)."""
    b = index.shape[0]
    r = (mem["ref_ptr"] + jnp.arange(b)) % sz.ref
    q = (mem["pos_ptr"] + jnp.arange(b)) % sz.queue
    cluster = jnp.where(mem["fitted"], nearest(ref, mem["centroids"], sz.prototypes), -1)
    pos = jnp.stack([jax.lax.stop_gradient(v) for v in views]).astype(mem["pos"].dtype)
    return dict(
        mem,
        ref=mem["ref"].at[r].set(ref),
        ref_idx=mem["ref_idx"].at[r].set(index),
        ref_ptr=(mem["ref_ptr"] + b) % sz.ref,
        pos=mem["pos"].at[:, q].set(pos),
        pos_ref=mem["pos_ref"].at[q].set(ref),
        pos_idx=mem["pos_idx"].at[q].set(index),
        pos_cluster=mem["pos_cluster"].at[q].set(cluster),
        pos_ptr=(mem["pos_ptr"] + b) % sz.queue,
    )


@dataclasses.dataclass(frozen=True)
class Context:
    """One step's SSPS inputs, handed to the method: the record indices and reference
    embeddings of the global batch and the step's sampling key."""

    cfg: Any
    sizes: Sizes
    step: Any
    index: Any
    ref: Any
    key: Any

    def positives(self, mem: dict, targets):
        """``targets`` with the sampled positives in place, and the fraction replaced."""
        c = self
        return positives(c.cfg, mem, c.step, c.index, c.ref, c.key, targets, c.sizes)

    def store(self, mem: dict, views) -> dict:
        """``mem`` with this batch written, from ``fill_start`` on."""
        return jax.lax.cond(
            self.step >= self.sizes.fill_start,
            lambda m: write(m, self.index, self.ref, views, self.sizes),
            lambda m: m,
            mem,
        )


def embedding_dims(cfg) -> tuple[int, int]:
    """(reference dim: the encoder's, positive dim: what the loss sees)."""
    d = int(cfg.model.embed_dim)
    return d, int(cfg.method.projector_out) if cfg.method.projector else d
