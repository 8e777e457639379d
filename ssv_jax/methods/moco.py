"""MoCo with NT-Xent-AM or NT-Xent-AAM (docs/method.md#moco; sslsv's symmetric form).

Query network trained; key network = EMA of the query network (momentum 0.999, parameters
only; its BatchNorm running statistics follow its own forward passes, as in MoCo). One queue
per view, [K, D]; loss = (L(q1, k2, queue2) + L(q2, k1, queue1)) / 2; after the loss the keys
of the whole global batch are enqueued (k1 -> queue1, k2 -> queue2), oldest entries replaced.

Shuffle-BN: MoCo shuffles the key batch across GPUs so that per-GPU BatchNorm statistics
cannot tell a query's positive apart. Here BatchNorm statistics are those of the GLOBAL batch
(the train step is one jit over the batch sharded on 'data': synchronized BN), so every sample
is normalised with the same statistics and no per-device signature exists; shuffling would
not change any number, so none is done.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssv_jax import losses
from ssv_jax.losses import l2_normalize
from ssv_jax.methods import ssps


def init_state(cfg, params, batch_stats, rng):
    """Key network (a copy of the query network) and one queue of random unit keys per view."""
    k, d = cfg.method.queue_size, ssps.embedding_dims(cfg)[1]  # what the loss compares
    r1, r2, r3 = jax.random.split(rng, 3)
    out = {
        "key_params": jax.tree.map(jnp.copy, params),
        "key_batch_stats": jax.tree.map(jnp.copy, batch_stats),
        "queue1": l2_normalize(jax.random.normal(r1, (k, d))),
        "queue2": l2_normalize(jax.random.normal(r2, (k, d))),
        "queue_ptr": jnp.zeros((), jnp.int32),
    }
    if cfg.method.ssps.enabled:
        out["ssps"] = ssps.init_memory(cfg, *ssps.embedding_dims(cfg), 2, r3)
    return out


def ema(key_params, params, momentum):
    return jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * q, key_params, params)


def loss_and_updates(
    cfg, mesh, apply, params, batch_stats, method_state, feats, margin, ssps_ctx=None
):
    """With SSPS (``ssps_ctx``) both keys of an anchor give way to a sampled recording's keys,
    which are also what is enqueued."""
    del mesh  # keys of the global batch are a global array; no explicit gather needed
    b = feats.shape[0]
    flat = feats.reshape((2 * b,) + feats.shape[2:])
    # Momentum update of the key network from the current query network (MoCo's order).
    st = method_state
    key_params = ema(st["key_params"], jax.lax.stop_gradient(params), cfg.method.momentum)
    k, key_stats = apply(key_params, st["key_batch_stats"], flat)
    k = jax.lax.stop_gradient(l2_normalize(k)).reshape(b, 2, -1)
    q, new_stats = apply(params, batch_stats, flat)
    q = q.reshape(b, 2, -1)
    extra = {}
    if ssps_ctx is not None:
        stored = [k[:, 0], k[:, 1]]
        sampled, replaced = ssps_ctx.positives(st["ssps"], stored)
        k = jnp.stack(sampled, axis=1)
        extra = {"stored": stored, "replaced": replaced}
    fn = losses.moco_aam if cfg.method.loss == "nt_xent_aam" else losses.moco_am
    kw = dict(scale=cfg.method.scale, margin=margin, drop_nearest=cfg.method.drop_nearest)
    loss = 0.5 * (
        fn(q[:, 0], k[:, 1], st["queue2"], **kw) + fn(q[:, 1], k[:, 0], st["queue1"], **kw)
    )
    pos, neg = losses.similarity_stats(q[:, 0], k[:, 1])
    new_state = dict(st, key_params=key_params, key_batch_stats=key_stats)
    return loss, (new_stats, new_state, {"pos_cos": pos, "neg_cos": neg, "keys": k, **extra})


def enqueue(queue, ptr, keys):
    return jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, 0))


def after_update(cfg, params, method_state, aux):
    """Enqueue this global batch's keys (after the loss)."""
    del params
    k = aux["keys"]
    ptr = method_state["queue_ptr"]
    out = dict(method_state)
    out["queue1"] = enqueue(method_state["queue1"], ptr, k[:, 0])
    out["queue2"] = enqueue(method_state["queue2"], ptr, k[:, 1])
    out["queue_ptr"] = (ptr + k.shape[0]) % cfg.method.queue_size
    return out
