"""What every method shares: the trained network (encoder + optional projector), margin schedule."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from ssv_jax.models import Projector, build_encoder


class SSLNetwork(nnx.Module):
    """Encoder, plus the projector (docs/method.md#projector) when ``method.projector`` is set.

    ``__call__`` gives what the loss sees (projected if there is a projector);
    ``embed`` gives the speaker embedding used for verification (the encoder's).
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.encoder = build_encoder(cfg.model, rngs=rngs)
        self.projector = (
            Projector(
                rngs=rngs,
                in_dim=cfg.model.embed_dim,
                hidden=cfg.method.projector_hidden,
                out_dim=cfg.method.projector_out,
            )
            if cfg.method.projector
            else None
        )

    def embed(self, feats, mask=None):
        return self.encoder(feats, mask)

    def __call__(self, feats, mask=None):
        z = self.encoder(feats, mask)
        return z if self.projector is None else self.projector(z)


def margin_at(step, total_steps: int, method_cfg):
    """The additive margin at ``step``: constant, or (margin_schedule) a cosine ramp 0 -> m
    over the first half of training."""
    m = float(method_cfg.margin)
    if not method_cfg.margin_schedule:
        return jnp.float32(m)
    half = max(total_steps // 2, 1)
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / half, 1.0)
    return jnp.float32(m) * (1.0 - jnp.cos(math.pi * frac)) / 2.0
