"""The train state: one typed pytree, built complete by :func:`create`.

Checkpoints hold exactly this structure (Orbax restores it into the abstract state of
``create``), and the jitted train step maps one ``TrainState`` to the next.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ssv_jax import methods


@struct.dataclass
class TrainState:
    """Everything training carries from one step to the next.

    step:         int32 scalar, steps taken so far
    params:       the network's trainable parameters (``nnx.Param``)
    batch_stats:  BatchNorm running statistics (``nnx.BatchStat``)
    opt_state:    the optax optimiser state of ``params``
    method_state: the method's own state (``methods.<name>.init_state``: MoCo's key network and
                  queues; empty for SimCLR)
    rng:          augmentation key; step k draws from ``fold_in(rng, k)``, so a resumed run
                  draws the same augmentations as an uninterrupted one
    """

    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    method_state: Any
    rng: jax.Array


def create(cfg, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, state) at step 0 from ``cfg.seed``: the network of ``cfg.model`` (plus the
    projector of ``cfg.method``) in train mode, ``tx``'s initial state and the method's state.
    Host values: place them with ``jax.device_put``."""
    init_key, method_key, aug_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    net = methods.SSLNetwork(cfg, rngs=nnx.Rngs(params=init_key))
    net.train()
    graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
    method = methods.get(cfg.method.name)
    return graphdef, TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        method_state=method.init_state(cfg, params, batch_stats, method_key),
        rng=aug_key,
    )
