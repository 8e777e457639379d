"""Training: state, the jitted sharded train step, and the loop (checkpoints, metrics, resume).

The train step is one ``jax.jit`` over a batch sharded on mesh axis 'data' with the state
replicated and donated: on-device augmentation (RNG ``fold_in(seed key, step)``, so a resumed
run draws the same augmentations) -> log-mel front-end -> network (BatchNorm statistics of the
global batch) -> the method's loss (SimCLR: ``shard_map`` + all_gather of negatives) ->
gradients -> optax update.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from ssv_jax import augment as augment_lib
from ssv_jax import config as config_lib
from ssv_jax import data as data_lib
from ssv_jax import methods
from ssv_jax.evaluate import (evaluate_trials, make_embed_fn, score_trial_lists, trial_metrics,
                              write_results, write_scores)
from ssv_jax.frontend import features
from ssv_jax.optim import lr_schedule, make_optimizer
from ssv_jax.sharding import batch_sharding, data_mesh, global_batch, replicated
from ssv_jax.writers import create_writer

log = logging.getLogger("ssv_jax")

# Batch fields the device needs (the others are host-side bookkeeping).
DEVICE_FIELDS = ("views", "noise", "snr_db", "noise_on", "rir", "rir_on")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def total_steps(cfg, steps_per_epoch: int) -> int:
    return int(cfg.train.num_steps) if cfg.train.num_steps > 0 else int(
        cfg.train.epochs * steps_per_epoch)


def init_state(cfg):
    """(graphdef, state): the network split into params / other variables, optimiser and
    method state, RNG key and step, all host values (place them with ``jax.device_put``)."""
    key = jax.random.PRNGKey(cfg.seed)
    init_key, extra_key, aug_key = jax.random.split(key, 3)
    net = methods.SSLNetwork(cfg, rngs=nnx.Rngs(params=init_key))
    net.train()
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    method = methods.get(cfg.method.name)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "rest": rest,
        "extra": method.init_extra(cfg, params, rest, extra_key),
        "rng": aug_key,
    }
    return graphdef, state


def make_train_step(cfg, graphdef, mesh, tx, schedule, n_total: int):
    """The jitted train step: (state, batch) -> (new state, scalar metrics)."""
    method = methods.get(cfg.method.name)

    def apply(params, rest, feats):
        net = nnx.merge(graphdef, params, rest, copy=True)
        z = net(feats)
        _, _, new_rest = nnx.split(net, nnx.Param, ...)
        return z, new_rest

    def step_fn(state, batch):
        step = state["step"]
        key = jax.random.fold_in(state["rng"], step)
        views = augment_lib.augment(batch, key, cfg.data.augment)  # [B, 2, T]
        b, _, t = views.shape
        feats, _ = features(views.reshape(2 * b, t), cfg.frontend)
        feats = feats.reshape((b, 2) + feats.shape[1:])
        margin = methods.margin_at(step, n_total, cfg.method)

        def loss_fn(params):
            return method.loss_and_updates(cfg, mesh, apply, params, state["rest"],
                                           state["extra"], feats, margin)

        (loss, (rest, extra, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        extra = method.after_update(cfg, params, extra, aux)
        out = {
            "loss": loss, "lr": schedule(step), "margin": margin,
            "grad_norm": optax.tree.norm(grads),
            "pos_cos": aux["pos_cos"], "neg_cos": aux["neg_cos"],
        }
        new_state = dict(state, step=step + 1, params=params, rest=rest, opt_state=opt_state,
                         extra=extra)
        return new_state, out

    return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def checkpoint_manager(workdir: str, cfg) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=int(max(cfg.train.keep_checkpoints, cfg.train.average_last, 1)),
            create=True, enable_async_checkpointing=True),
    )


def restore(mgr, step: int, abstract_state):
    """The checkpoint at ``step``, placed like ``abstract_state`` (ShapeDtypeStructs with
    shardings for this run's mesh: a checkpoint saved by another process/device layout restores
    onto this one). None: as saved, which needs the saving run's devices."""
    if abstract_state is None:
        return mgr.restore(step)
    return mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def averaged_network(mgr, abstract_state, n_last: int):
    """Mean params and BatchNorm statistics of the last ``n_last`` checkpoints (as sslsv
    averages checkpoints before evaluation), or None when fewer than 2 exist."""
    steps = sorted(mgr.all_steps())[-n_last:]
    if n_last < 2 or len(steps) < 2:
        return None
    acc = None
    for s in steps:
        st = restore(mgr, s, abstract_state)
        cur = (st["params"], st["rest"])
        acc = cur if acc is None else jax.tree.map(jnp.add, acc, cur)
    return jax.tree.map(lambda x: x / len(steps) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        acc), steps


def _abstract(state, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        state)


class _Progress:
    """tqdm progress bar when attached to a terminal; nothing otherwise."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled and sys.stderr.isatty() and jax.process_index() == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, n: int, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(cfg, workdir: str, *, mesh=None, max_steps: int | None = None):
    """Train (resuming from the latest checkpoint in ``workdir``); returns (graphdef, state, mesh).

    ``max_steps``: stop after this many steps of this call (tests: interrupted runs).
    """
    config_lib.validate(cfg)
    data_lib.ensure_dataset(cfg.data)
    mesh = mesh or data_mesh()
    bsz = int(cfg.train.batch_size)
    spe = data_lib.steps_per_epoch(cfg.data, bsz)
    n_total = total_steps(cfg, spe)
    schedule = lr_schedule(cfg.optim, spe, n_total)
    tx = make_optimizer(cfg.optim, schedule)

    graphdef, state = init_state(cfg)
    state["opt_state"] = tx.init(state["params"])
    repl = replicated(mesh)
    abstract = _abstract(state, repl)
    mgr = checkpoint_manager(workdir, cfg)
    start = mgr.latest_step()
    if start is not None:
        state = restore(mgr, start, abstract)
        log.info("resumed from checkpoint step %d in %s", start, mgr.directory)
    else:
        start = 0
        state = jax.device_put(state, repl)
    step_fn = make_train_step(cfg, graphdef, mesh, tx, schedule, n_total)

    writer = create_writer(workdir)
    if start == 0:
        writer.write_hparams(_flat(cfg.to_dict()))
    stop = n_total if max_steps is None else min(n_total, start + max_steps)
    log.info("training %s (%s, s=%g, m=%g) with %s: steps %d -> %d of %d, global batch %d x 2 "
             "views of %.2f s, %d steps per epoch, %d device(s)", cfg.method.name, cfg.method.loss,
             cfg.method.scale, cfg.method.margin, cfg.model.name, start, stop, n_total, bsz,
             cfg.data.crop_seconds, spe, mesh.size)
    batches = data_lib.train_batches(cfg.data, global_batch=bsz, seed=cfg.data.seed,
                                     start_step=start)
    pending, last_good = [], start if mgr.latest_step() is not None else None
    progress = _Progress(cfg.train.progress_bar, n_total, start)
    t_last, step = time.perf_counter(), start

    def flush(step):
        """Fetch the metrics since the last flush, stop on NaN, write their means."""
        nonlocal pending, t_last
        if not pending:
            return
        host = jax.device_get(pending)
        for i, m in enumerate(host):
            if not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"]))):
                bad = step - len(host) + i
                mgr.wait_until_finished()
                raise TrainingDiverged(
                    f"loss {float(m['loss'])}, gradient norm {float(m['grad_norm'])} at step "
                    f"{bad}: training stopped before the update reached a checkpoint. The last good "
                    f"checkpoint ({'step ' + str(last_good) if last_good is not None else 'none yet'}"
                    f") is kept in {mgr.directory}; lower optim.lr or set optim.clip_grad_norm and "
                    "run again to resume from it.")
        now = time.perf_counter()
        scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        scalars["views_per_s"] = 2 * bsz * len(host) / max(now - t_last, 1e-9)
        writer.write_scalars(step, scalars)
        progress.update(len(host), loss=scalars["loss"], views_s=scalars["views_per_s"])
        pending, t_last = [], now

    embed_fn = make_embed_fn(cfg, graphdef, mesh)  # one jit for every validation

    def validate(step):
        res = evaluate_trials(cfg, graphdef, state["params"], state["rest"], mesh,
                              max_trials=cfg.train.val_max_trials, embed_fn=embed_fn)
        writer.write_scalars(step, {f"val_eer/{k}": v["eer"] for k, v in res.items()})
        return res

    try:
        if cfg.train.eval_every and start == 0:
            validate(0)  # the network at initialisation, for comparison
        while step < stop:
            local = next(batches)
            batch = global_batch({k: local[k] for k in DEVICE_FIELDS}, mesh)
            state, m = step_fn(state, batch)
            pending.append(m)
            step += 1
            if step % cfg.train.log_every == 0 or step == stop:
                flush(step)
            if step % cfg.train.checkpoint_every == 0 or step == stop:
                flush(step)  # never save a diverged state
                mgr.save(step, args=ocp.args.StandardSave(state))
                last_good = step
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < n_total:
                validate(step)
                t_last = time.perf_counter()  # validation time is not training throughput
    finally:
        progress.close()
        mgr.wait_until_finished()
        writer.flush()
    return graphdef, state, mesh


def load_network(cfg, workdir: str, mesh, state=None):
    """(graphdef, params, rest, description) of a trained run, as evaluation uses it: the
    average of the last ``train.average_last`` checkpoints when set and available, else
    ``state`` when given, else the latest checkpoint (restored onto ``mesh``)."""
    graphdef, init = init_state(cfg)
    mgr = checkpoint_manager(workdir, cfg)
    spe = data_lib.steps_per_epoch(cfg.data, int(cfg.train.batch_size))
    tx = make_optimizer(cfg.optim, lr_schedule(cfg.optim, spe, total_steps(cfg, spe)))
    init["opt_state"] = tx.init(init["params"])
    abstract = _abstract(init, replicated(mesh))
    if cfg.train.average_last and cfg.train.average_last > 1 and mgr.latest_step() is not None:
        avg = averaged_network(mgr, abstract, int(cfg.train.average_last))
        if avg is not None:
            (params, rest), steps = avg
            return graphdef, params, rest, f"the average of checkpoints {steps}"
    if state is not None:
        return graphdef, state["params"], state["rest"], "the trained state"
    latest = mgr.latest_step()
    if latest is None:
        raise FileNotFoundError(
            f"no checkpoint in {mgr.directory}: train first (--mode=train) or point "
            "--workdir at a trained run.")
    state = restore(mgr, latest, abstract)
    return graphdef, state["params"], state["rest"], f"checkpoint {latest}"


def evaluate(cfg, workdir: str, *, mesh=None, graphdef=None, state=None) -> dict:
    """Evaluate the trained network (see ``load_network``) on the config's trial lists; write
    ``workdir/results.json`` and the scores, DET curve and score histograms under
    ``workdir/eval/`` (``evaluate.write_scores``)."""
    mesh = mesh or data_mesh()
    data_lib.ensure_dataset(cfg.data)
    g, params, rest, what = load_network(cfg, workdir, mesh, state)
    graphdef = graphdef or g
    log.info("evaluating %s", what)
    scored = score_trial_lists(cfg, graphdef, params, rest, mesh)
    results = trial_metrics(scored)
    path = write_results(workdir, results)
    write_scores(workdir, scored, results)
    writer = create_writer(workdir)
    step = int(checkpoint_manager(workdir, cfg).latest_step() or 0)
    writer.write_scalars(step, {f"eer/{k}": v["eer"] for k, v in results.items()}
                         | {f"min_dcf/{k}": v["min_dcf"] for k, v in results.items()})
    writer.flush()
    log.info("results written to %s: %s", path, results)
    return results


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
