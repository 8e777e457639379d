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


def create(cfg, tx: optax.GradientTransformation, network=None) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, state) at step 0 from ``cfg.seed``: the network of ``cfg.model`` (plus the
    projector of ``cfg.method``) in train mode, ``tx``'s initial state and the method's state.
    ``network``: (params, batch_stats) to start from instead of a fresh initialisation (another
    run's trained network; the optimiser and method state are then built from it). Host
    values: place them with ``jax.device_put``."""
    init_key, method_key, aug_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    net = methods.SSLNetwork(cfg, rngs=nnx.Rngs(params=init_key))
    net.train()
    graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
    if network is not None:
        params, batch_stats = _same_structure((params, batch_stats), network)
    method = methods.get(cfg.method.name)
    return graphdef, TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        method_state=method.init_state(cfg, params, batch_stats, method_key),
        rng=aug_key,
    )


def _same_structure(fresh, loaded):
    """``loaded`` as host arrays, checked leaf by leaf against ``fresh`` (shapes and dtypes)."""
    if jax.tree.structure(fresh) != jax.tree.structure(loaded):
        raise ValueError("the network to start from has other layers than this config's.")
    for path, a, b in zip(
        jax.tree.leaves_with_path(fresh), jax.tree.leaves(fresh), jax.tree.leaves(loaded)
    ):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"the network to start from has {jax.tree_util.keystr(path[0])} shaped "
                f"{b.shape} {b.dtype}; this config's is {a.shape} {a.dtype}."
            )
    return jax.tree.map(lambda x: jnp.asarray(jax.device_get(x)), loaded)
