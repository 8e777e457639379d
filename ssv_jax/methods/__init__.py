"""Self-supervised methods. Each module provides the same three functions, which the trainer
drives identically:

  init_state(cfg, params, batch_stats, rng)          -> method state (pytree) beside the network
  loss_and_updates(cfg, mesh, apply, params, batch_stats, method_state, feats, margin,
                   ssps_ctx=None)                    -> loss, (new batch_stats, new method
                                                        state, aux)
  after_update(cfg, params, method_state, aux)       -> method state after the optimiser step

``apply(params, batch_stats, feats) -> (embeddings, new batch_stats)`` runs the network in
train mode; ``aux`` holds the logged ``pos_cos`` / ``neg_cos`` and what ``after_update`` needs.
With ``method.ssps`` on, ``ssps_ctx`` (``ssps.Context``) replaces the positives, and ``aux`` also
holds ``stored`` (this batch's positives, for the memories) and ``replaced`` (the fraction).
"""

from ssv_jax.methods import moco, simclr
from ssv_jax.methods.common import SSLNetwork, margin_at

METHODS = {"simclr": simclr, "moco": moco}


def get(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; use one of {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "SSLNetwork", "get", "margin_at", "moco", "simclr"]
