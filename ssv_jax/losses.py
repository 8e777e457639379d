"""Contrastive losses with an additive margin on the positive (docs/method.md#nt-xent-am).

All logits are cosine similarities of L2-normalised embeddings times ``scale``.
Inputs may be bf16/fp16; everything is computed in float32.

With ``axis_name`` (called inside ``jax.shard_map`` over that mesh axis) the
negatives come from the GLOBAL batch: each device all-gathers the other
devices' embeddings and scores its local anchors against every global key, so
the logits per device are [B_local, B_global] and never [B_global, B_global].
The returned loss is then the mean over all anchors of all devices (identical
on every device), so it and its gradients equal the single-device loss on
the concatenated batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Normalise rows to unit L2 norm in float32 (zero rows stay zero)."""
    x = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * lax.rsqrt(jnp.maximum(sq, _EPS))


def additive_margin(cos: jax.Array, margin: float | jax.Array) -> jax.Array:
    """CosFace-style positive logit (before scaling): cos - m."""
    return cos - margin


def additive_angular_margin(cos: jax.Array, margin: float | jax.Array) -> jax.Array:
    """ArcFace-style positive logit (before scaling): cos(theta + m).

    Where theta + m > pi the function would stop decreasing, so the usual
    fallback cos(theta) - m * sin(m) is used there (th = cos(pi - m)).
    """
    cos = jnp.clip(cos, -1.0, 1.0)
    # Floor keeps the gradient finite at cos = +-1 (identical views).
    sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 1e-12))
    cos_m, sin_m = jnp.cos(margin), jnp.sin(margin)
    phi = cos * cos_m - sin * sin_m
    th = jnp.cos(jnp.pi - margin)
    mm = jnp.sin(jnp.pi - margin) * margin
    return jnp.where(cos > th, phi, cos - mm)


def _check_pair(z1, z2, name1="z1", name2="z2"):
    if z1.ndim != 2 or z2.ndim != 2:
        raise ValueError(
            f"{name1} and {name2} must be [N, D] embeddings; got shapes {z1.shape} and {z2.shape}."
        )
    if z1.shape != z2.shape:
        raise ValueError(
            f"{name1} and {name2} must have the same shape (one row per utterance, same "
            f"embedding size); got {z1.shape} and {z2.shape}."
        )
    if z1.shape[0] < 1:
        raise ValueError(f"{name1} and {name2} are empty: need at least one utterance.")


def _global_view(x: jax.Array, axis_name):
    """All-gather x over axis_name; returns (global x, offset of this device's rows)."""
    if axis_name is None:
        return x, 0
    n_local = x.shape[0]
    return (
        lax.all_gather(x, axis_name, axis=0, tiled=True),
        lax.axis_index(axis_name) * n_local,
    )


def _mean_over_devices(x: jax.Array, axis_name):
    return x if axis_name is None else lax.pmean(x, axis_name)


def contrastive_negatives(global_batch: int, symmetric: bool) -> int:
    """Negatives per anchor of NT-Xent over a global batch: both views of every other utterance
    (symmetric), or the other utterances' second views."""
    return 2 * (global_batch - 1) if symmetric else global_batch - 1


def _drop_nearest(rel: jax.Array, k: int, n_negatives: int) -> jax.Array:
    """Mask (-inf) each row's ``k`` largest entries: an anchor's k nearest negatives, whose
    logits rank as their cosines (masked positives and self are already -inf)."""
    if k < 0 or k >= n_negatives:
        raise ValueError(
            f"drop_nearest must be in [0, {n_negatives - 1}]: each anchor has {n_negatives} "
            f"negatives and needs at least one left; got {k}."
        )
    if k == 0:
        return rel
    cols = lax.top_k(lax.stop_gradient(rel), k)[1]  # [rows, k]
    return rel.at[jnp.arange(rel.shape[0])[:, None], cols].set(-jnp.inf)


def _margin_contrastive(z1, z2, *, scale, margin, symmetric, axis_name, margin_fn, drop_nearest=0):
    z1 = jnp.asarray(z1)
    z2 = jnp.asarray(z2)
    _check_pair(z1, z2)
    z1 = l2_normalize(z1)
    z2 = l2_normalize(z2)
    n = z1.shape[0]
    g1, offset = _global_view(z1, axis_name)
    g2, _ = _global_view(z2, axis_name)
    n_global = g1.shape[0]
    rows = jnp.arange(n)
    own = offset + rows  # global index of each local utterance

    if symmetric:
        if n_global < 2:
            raise ValueError(
                "symmetric NT-Xent needs at least 2 utterances in the global batch to have "
                "negatives; got 1."
            )
        anchors = jnp.concatenate([z1, z2], axis=0)  # [2n, D]
        keys = jnp.concatenate([g1, g2], axis=0)  # [2N, D]
        cos = anchors @ keys.T  # [2n, 2N]
        # View-1 anchors: positive is view 2 of the same utterance, self is view 1.
        pos_col = jnp.concatenate([n_global + own, own])
        self_col = jnp.concatenate([own, n_global + own])
    else:
        if n_global < 2:
            raise ValueError(
                "NT-Xent needs at least 2 utterances in the global batch to have negatives; got 1."
            )
        cos = z1 @ g2.T  # [n, N]
        pos_col = own
        self_col = None

    r = jnp.arange(cos.shape[0])
    pos = scale * margin_fn(cos[r, pos_col], margin)  # [rows]
    # loss = log(1 + sum_n e^{l_n - pos}) = softplus(logsumexp_n(l_n - pos)): no
    # cancellation between two large log-sum-exps when the loss is tiny.
    rel = scale * cos - pos[:, None]
    rel = rel.at[r, pos_col].set(-jnp.inf)
    if self_col is not None:
        rel = rel.at[r, self_col].set(-jnp.inf)
    rel = _drop_nearest(rel, drop_nearest, contrastive_negatives(n_global, symmetric))
    per_anchor = jax.nn.softplus(jax.nn.logsumexp(rel, axis=1))
    return _mean_over_devices(jnp.mean(per_anchor), axis_name)


def nt_xent_am(z1, z2, *, scale, margin, symmetric=True, axis_name=None, drop_nearest=0):
    """NT-Xent with an additive (cosine) margin m on the positive logit.

    loss = -log(e^{s(cos_p - m)} / (e^{s(cos_p - m)} + sum_n e^{s cos_n})),
    averaged over anchors. ``margin=0`` is SimCLR's NT-Xent with temperature 1/s.

    Args:
      z1, z2: [N, D] embeddings of the two views (row i = utterance i).
      scale: s = 1 / temperature.
      margin: additive margin m (float or traced scalar, e.g. from a schedule).
      symmetric: all 2N views are anchors with 2(N_global - 1) negatives (both
        views of every other utterance); otherwise only view-1 anchors against
        view 2 of the other utterances.
      axis_name: mesh axis to gather negatives over (inside ``jax.shard_map``).
      drop_nearest: leave each anchor's k most similar negatives out of its loss (in a
        small set they are often the same speaker); 0 = the loss above.
    Returns:
      scalar float32 loss.
    """
    return _margin_contrastive(
        z1,
        z2,
        scale=scale,
        margin=margin,
        symmetric=symmetric,
        axis_name=axis_name,
        margin_fn=additive_margin,
        drop_nearest=drop_nearest,
    )


def nt_xent_aam(z1, z2, *, scale, margin, symmetric=True, axis_name=None, drop_nearest=0):
    """NT-Xent with an additive angular margin: positive logit s * cos(theta_p + m).

    Same arguments as :func:`nt_xent_am`.
    """
    return _margin_contrastive(
        z1,
        z2,
        scale=scale,
        margin=margin,
        symmetric=symmetric,
        axis_name=axis_name,
        margin_fn=additive_angular_margin,
        drop_nearest=drop_nearest,
    )


def _moco(q, k, queue, *, scale, margin, axis_name, margin_fn, drop_nearest=0):
    q = jnp.asarray(q)
    k = jnp.asarray(k)
    queue = jnp.asarray(queue)
    _check_pair(q, k, "q", "k")
    if queue.ndim != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] < 1:
        raise ValueError(
            f"queue must be [K, D] with K >= 1 and D = {q.shape[1]} (the embedding size); "
            f"got {queue.shape}."
        )
    q = l2_normalize(q)
    k = lax.stop_gradient(l2_normalize(k))
    queue = lax.stop_gradient(l2_normalize(queue))
    cos_pos = jnp.sum(q * k, axis=1)  # [N]
    cos_neg = q @ queue.T  # [N, K]
    pos = scale * margin_fn(cos_pos, margin)
    rel = _drop_nearest(scale * cos_neg - pos[:, None], drop_nearest, queue.shape[0])
    per_query = jax.nn.softplus(jax.nn.logsumexp(rel, axis=1))
    return _mean_over_devices(jnp.mean(per_query), axis_name)


def moco_am(q, k, queue, *, scale, margin, axis_name=None, drop_nearest=0):
    """MoCo InfoNCE with an additive margin on the query-key positive.

    For each query q_i the positive is its key k_i (cos - m) and the negatives
    are the queue's K entries; no in-batch negatives. ``k`` and ``queue`` are
    treated as constants (stop_gradient), as in MoCo.

    Args:
      q, k: [N, D] query and key embeddings (normalised inside).
      queue: [K, D] past keys (normalised inside).
      axis_name: optional mesh axis; the loss is then averaged over all devices.
      drop_nearest: leave each query's k most similar queue entries out of its loss.
    Returns:
      scalar float32 loss.
    """
    return _moco(
        q,
        k,
        queue,
        scale=scale,
        margin=margin,
        axis_name=axis_name,
        margin_fn=additive_margin,
        drop_nearest=drop_nearest,
    )


def moco_aam(q, k, queue, *, scale, margin, axis_name=None, drop_nearest=0):
    """MoCo InfoNCE with an additive angular margin: positive logit s * cos(theta_p + m).

    Same arguments as :func:`moco_am`.
    """
    return _moco(
        q,
        k,
        queue,
        scale=scale,
        margin=margin,
        axis_name=axis_name,
        margin_fn=additive_angular_margin,
        drop_nearest=drop_nearest,
    )


def similarity_stats(z1, z2, *, axis_name=None):
    """Mean positive cosine and mean negative cosine (cross-view, global batch).

    For logging: the positive is cos(z1_i, z2_i); negatives are cos(z1_i, z2_j), j != i.
    """
    z1 = l2_normalize(z1)
    z2 = l2_normalize(z2)
    g2, offset = _global_view(z2, axis_name)
    n, n_global = z1.shape[0], g2.shape[0]
    cos = z1 @ g2.T
    own = offset + jnp.arange(n)
    pos_mask = jnp.arange(n_global)[None, :] == own[:, None]
    pos = jnp.sum(jnp.where(pos_mask, cos, 0.0)) / n
    neg = jnp.sum(jnp.where(pos_mask, 0.0, cos)) / max(n * (n_global - 1), 1)
    return _mean_over_devices(pos, axis_name), _mean_over_devices(neg, axis_name)
