"""The train step: one ``jax.jit`` over a batch sharded on mesh axis 'data' with the state
replicated and donated: on-device augmentation (RNG ``fold_in(seed key, step)``, so a resumed
run draws the same augmentations) -> log-mel front-end -> network (BatchNorm statistics of the
global batch; activations in ``model.compute_dtype``) -> the method's loss in float32 (SimCLR:
``shard_map`` + all_gather of negatives) -> gradients -> optax update.

With ``method.ssps`` on, the step also refits the k-means prototypes when due, embeds the clean
first crops (the reference embeddings) and lets the method replace positives from the memories,
then stores this batch in them (ssv_jax/methods/ssps.py).

Imports no data pipeline (TensorFlow), so the step can be built, lowered and timed alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssv_jax import augment as augment_lib
from ssv_jax import methods
from ssv_jax import state as state_lib
from ssv_jax.frontend import features
from ssv_jax.losses import l2_normalize
from ssv_jax.methods import ssps as ssps_lib
from ssv_jax.sharding import batch_sharding, replicated


def make_train_step(cfg, graphdef, mesh, tx, schedule, n_total: int, n_train: int | None = None):
    """The jitted train step: (TrainState, device batch) -> (new TrainState, scalar metrics).
    ``n_train``: training utterances (caps the SSPS memories; ``ssps.sizes``)."""
    method = methods.get(cfg.method.name)
    sizes = ssps_lib.sizes(cfg, n_train) if cfg.method.ssps.enabled else None

    def apply(params, batch_stats, feats):
        net = nnx.merge(graphdef, params, batch_stats, copy=True)
        z = net(feats)
        return z, nnx.state(net, nnx.BatchStat)

    def reference(params, batch_stats, wave):
        """SSPS reference embeddings: the encoder's, BatchNorm in inference mode, no gradient."""
        net = nnx.merge(graphdef, params, batch_stats, copy=True)
        net.eval()
        feats, _ = features(wave, cfg.frontend)
        return l2_normalize(jax.lax.stop_gradient(net.embed(feats)).astype(jnp.float32))

    def ssps_context(state, batch, key):
        """(method state with the prototypes refitted when due, the step's SSPS inputs)."""
        s, step = cfg.method.ssps, state.step
        k_fit, k_pick = jax.random.split(jax.random.fold_in(key, ssps_lib.KEY_SALT))
        mem = state.method_state["ssps"]
        due = (step >= s.start_step) & ((step - s.start_step) % sizes.refresh_every == 0)
        mem = jax.lax.cond(due, lambda m: ssps_lib.refresh(cfg, m, k_fit, sizes), lambda m: m, mem)
        wave = augment_lib.pcm_to_float(batch["views"][:, 0])
        dim = mem["ref"].shape[1]
        ref = jax.lax.cond(
            step >= sizes.fill_start,
            lambda: reference(state.params, state.batch_stats, wave),
            lambda: jnp.zeros((wave.shape[0], dim), jnp.float32),
        )
        ctx = ssps_lib.Context(cfg, sizes, step, batch["index"], ref, k_pick)
        return dict(state.method_state, ssps=mem), ctx

    def step_fn(state: state_lib.TrainState, batch):
        step = state.step
        key = jax.random.fold_in(state.rng, step)
        views = augment_lib.augment(batch, key, cfg.data.augment, cfg.data.sample_rate)
        b, _, t = views.shape  # [B, 2, T]
        feats, _ = features(views.reshape(2 * b, t), cfg.frontend)
        feats = feats.reshape((b, 2) + feats.shape[1:])
        margin = methods.margin_at(step, n_total, cfg.method)
        method_state, ctx = state.method_state, None
        if sizes is not None:
            method_state, ctx = ssps_context(state, batch, key)

        def loss_fn(params):
            return method.loss_and_updates(
                cfg, mesh, apply, params, state.batch_stats, method_state, feats, margin, ctx
            )

        (loss, (batch_stats, method_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        method_state = method.after_update(cfg, params, method_state, aux)
        if ctx is not None:
            method_state = dict(method_state, ssps=ctx.store(method_state["ssps"], aux["stored"]))
        out = {
            "loss": loss,
            "lr": schedule(step),
            "margin": margin,
            "grad_norm": optax.tree.norm(grads),
            "pos_cos": aux["pos_cos"],
            "neg_cos": aux["neg_cos"],
        }
        if ctx is not None:
            out["ssps_replaced"] = aux["replaced"]
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
