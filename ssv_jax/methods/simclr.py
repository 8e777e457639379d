"""SimCLR with NT-Xent-AM (docs/method.md#nt-xent-am): both views through one network, global
negatives."""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from ssv_jax import losses
from ssv_jax.methods import ssps
from ssv_jax.sharding import DATA_AXIS


def init_state(cfg, params, batch_stats, rng):
    """SimCLR keeps no state beyond the network's, except SSPS's memories when it is on."""
    del params, batch_stats
    if not cfg.method.ssps.enabled:
        return {}
    return {"ssps": ssps.init_memory(cfg, *ssps.embedding_dims(cfg), 1, rng)}


def contrastive_loss(cfg, mesh, z1, z2, margin):
    """The configured NT-Xent variant over the global batch; per-device logits B_local x
    B_global."""
    fn = losses.nt_xent_aam if cfg.method.loss == "nt_xent_aam" else losses.nt_xent_am

    def body(a, b, m):
        loss = fn(
            a,
            b,
            scale=cfg.method.scale,
            margin=m,
            symmetric=cfg.method.symmetric,
            axis_name=DATA_AXIS,
            drop_nearest=cfg.method.drop_nearest,
        )
        pos, neg = losses.similarity_stats(a, b, axis_name=DATA_AXIS)
        return loss, pos, neg

    return jax.shard_map(
        body, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS), P()), out_specs=(P(), P(), P())
    )(z1, z2, margin)


def loss_and_updates(
    cfg, mesh, apply, params, batch_stats, method_state, feats, margin, ssps_ctx=None
):
    """feats: [B, 2, frames, n_mels]. Returns loss, (new batch_stats, method_state, aux).
    With SSPS (``ssps_ctx``) each anchor's second view gives way to a sampled positive."""
    b = feats.shape[0]
    z, new_stats = apply(params, batch_stats, feats.reshape((2 * b,) + feats.shape[2:]))
    z = z.reshape(b, 2, -1)
    positive, aux = z[:, 1], {}
    if ssps_ctx is not None:
        (positive,), replaced = ssps_ctx.positives(method_state["ssps"], [z[:, 1]])
        aux = {"stored": [z[:, 1]], "replaced": replaced}
    loss, pos, neg = contrastive_loss(cfg, mesh, z[:, 0], positive, margin)
    return loss, (new_stats, method_state, {"pos_cos": pos, "neg_cos": neg, **aux})


def after_update(cfg, params, method_state, aux):
    del cfg, params, aux
    return method_state
