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
                  queues; empty for SimCLR; plus SSPS's memories under "ssps" when it is on)
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
    run's trained network; the optimiser and method state are then built from it). Place the
    result with ``jax.device_put``."""
    init_key, method_key, aug_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    graphdef, params, batch_stats = _initialise(cfg, init_key)
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


_COMPILED_INITS: dict = {}


def _initialise(cfg, key):
    """(graphdef, params, batch_stats) of a freshly initialised network, by one compiled
    function per config (initialising op by op would compile every op on its own). XLA's
    backend optimisation is a waste on a function run once: level 0 compiles about 3x faster."""
    cache_key = cfg.to_json_best_effort(sort_keys=True)
    if cache_key not in _COMPILED_INITS:
        graphdefs = []

        def init(key):
            net = methods.SSLNetwork(cfg, rngs=nnx.Rngs(params=key))
            net.train()
            graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
            graphdefs.append(graphdef)  # static structure, no arrays: safe outside the trace
            return params, batch_stats

        jitted = jax.jit(init)
        compiled = jitted.lower(key).compile({"xla_backend_optimization_level": 0})
        _COMPILED_INITS[cache_key] = (graphdefs[-1], jitted, compiled)
    graphdef, jitted, compiled = _COMPILED_INITS[cache_key]
    fn = jitted if isinstance(key, jax.core.Tracer) else compiled  # traced: e.g. eval_shape
    return (graphdef, *fn(key))


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
