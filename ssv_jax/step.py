"""The train step: one ``jax.jit`` over a batch sharded on mesh axis 'data' with the state
replicated and donated: on-device augmentation (RNG ``fold_in(seed key, step)``, so a resumed
run draws the same augmentations) -> log-mel front-end -> network (BatchNorm statistics of the
global batch; activations in ``model.compute_dtype``) -> the method's loss in float32 (SimCLR:
``shard_map`` + all_gather of negatives) -> gradients -> optax update.

Imports no data pipeline (TensorFlow), so the step can be built, lowered and timed alone.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from ssv_jax import augment as augment_lib
from ssv_jax import methods
from ssv_jax import state as state_lib
from ssv_jax.frontend import features
from ssv_jax.sharding import batch_sharding, replicated


def make_train_step(cfg, graphdef, mesh, tx, schedule, n_total: int):
    """The jitted train step: (TrainState, device batch) -> (new TrainState, scalar metrics)."""
    method = methods.get(cfg.method.name)

    def apply(params, batch_stats, feats):
        net = nnx.merge(graphdef, params, batch_stats, copy=True)
        z = net(feats)
        return z, nnx.state(net, nnx.BatchStat)

    def step_fn(state: state_lib.TrainState, batch):
        step = state.step
        key = jax.random.fold_in(state.rng, step)
        views = augment_lib.augment(batch, key, cfg.data.augment, cfg.data.sample_rate)
        b, _, t = views.shape  # [B, 2, T]
        feats, _ = features(views.reshape(2 * b, t), cfg.frontend)
        feats = feats.reshape((b, 2) + feats.shape[1:])
        margin = methods.margin_at(step, n_total, cfg.method)

        def loss_fn(params):
            return method.loss_and_updates(
                cfg, mesh, apply, params, state.batch_stats, state.method_state, feats, margin
            )

        (loss, (batch_stats, method_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        method_state = method.after_update(cfg, params, method_state, aux)
        out = {
            "loss": loss,
            "lr": schedule(step),
            "margin": margin,
            "grad_norm": optax.tree.norm(grads),
            "pos_cos": aux["pos_cos"],
            "neg_cos": aux["neg_cos"],
        }
        new_state = state.replace(
            step=step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            method_state=method_state,
        )
        return new_state, out

    return jax.jit(
        step_fn,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )
