"""Self-supervised methods. Each module provides the same four functions, which the trainer
drives identically:

  init_extra(cfg, params, rest, rng)                 -> method state (pytree) beside the network
  loss_and_updates(cfg, mesh, apply, params, rest, extra, feats, margin)
                                                     -> loss, (new rest, new extra, aux)
  after_update(cfg, params, extra, aux)              -> method state after the optimiser step

``apply(params, rest, feats) -> (embeddings, new rest)`` runs the network in train mode.
"""
from ssv_jax.methods import moco, simclr
from ssv_jax.methods.common import SSLNetwork, margin_at

METHODS = {"simclr": simclr, "moco": moco}


def get(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; use one of {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "SSLNetwork", "get", "margin_at", "moco", "simclr"]
