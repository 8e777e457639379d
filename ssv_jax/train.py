"""Training: the loop around the train step (``ssv_jax.step``): data, checkpoints, metrics,
validation, resume."""

from __future__ import annotations

import collections
import logging
import math
import signal
import time

import jax
import numpy as np

from ssv_jax import checkpoints, distributed
from ssv_jax import config as config_lib
from ssv_jax import data as data_lib
from ssv_jax import models as models_lib
from ssv_jax import state as state_lib
from ssv_jax import step as step_lib
from ssv_jax import workdir as workdir_lib
from ssv_jax.data.batch import device_part
from ssv_jax.embedding import make_embed_fn
from ssv_jax.errors import UserError
from ssv_jax.evaluate import evaluate_trials
from ssv_jax.optim import lr_schedule, make_optimizer
from ssv_jax.progress import Progress
from ssv_jax.sharding import data_mesh, global_batch, replicated
from ssv_jax.writers import create_writer

log = logging.getLogger("ssv_jax")

# Steps dispatched to the device and not yet finished. JAX returns from a step at once; without
# a bound the loop would run ahead to the next metrics fetch, each queued step keeping its batch
# (and the data worker's slot it lives in) alive. Two keep the device busy. The loop then holds
# at most STEPS_IN_FLIGHT + 2 batches: those steps', the one it is placing on the devices, and one
# that JAX frees a little later (it keeps the host arrays it was given until a garbage collection).
STEPS_IN_FLIGHT = 2


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class InputPipelineError(UserError, RuntimeError):
    """The input pipeline failed (a data worker died, a record could not be read); the
    checkpoints are kept."""


def total_steps(cfg, steps_per_epoch: int) -> int:
    return (
        int(cfg.train.num_steps)
        if cfg.train.num_steps > 0
        else int(cfg.train.epochs * steps_per_epoch)
    )


def train(cfg, workdir: str, *, mesh=None, max_steps: int | None = None, init=None):
    """Train (resuming from the latest checkpoint in ``workdir``); returns (graphdef, state, mesh).

    ``init``: (params, batch_stats, description) of the network a fresh run starts from, what
    ``train.init_from`` names (``ssv_jax.run.train`` resolves it); ignored once the run has a
    checkpoint. ``max_steps``: stop after this many steps of this call (tests: interrupted runs).
    """
    config_lib.validate(cfg)
    data_lib.ensure_dataset(cfg.data)
    mesh = mesh or data_mesh()
    bsz = int(cfg.train.batch_size)
    spe = data_lib.steps_per_epoch(cfg.data, bsz)
    n_total = total_steps(cfg, spe)
    schedule = lr_schedule(cfg.optim, spe, n_total)
    tx = make_optimizer(cfg.optim, schedule)

    mgr = checkpoints.manager(workdir, cfg)
    start = mgr.latest_step()
    network = None
    if start is None and cfg.train.init_from:
        if init is None:
            raise ValueError(
                f"train.init_from={cfg.train.init_from!r}: start the run with ssv_jax.run.train "
                "(main.py does), which resolves it."
            )
        network, what = init[:2], init[2]
        log.info("starting from %s", what)
    graphdef, state = state_lib.create(cfg, tx, network)
    repl = replicated(mesh)
    if start is not None:
        state = checkpoints.restore(mgr, start, checkpoints.abstract(state, repl))
        log.info("resumed from checkpoint step %d in %s", start, mgr.directory)
    else:
        start = 0
        state = jax.device_put(state, repl)
    workdir_lib.check_space(workdir, state, checkpoints.kept(cfg))
    step_fn = step_lib.make_train_step(cfg, graphdef, mesh, tx, schedule, n_total, spe * bsz)

    writer = create_writer(workdir)
    if start == 0:
        writer.write_hparams(
            {
                k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in workdir_lib.fields(cfg).items()
            }
        )
    stop = n_total if max_steps is None else min(n_total, start + max_steps)
    log.info(
        "training %s (%s, s=%g, m=%g) with %s in %s: steps %d -> %d of %d, global batch %d x 2 "
        "views of %.2f s, %d steps per epoch, %d device(s)",
        cfg.method.name,
        cfg.method.loss,
        cfg.method.scale,
        cfg.method.margin,
        cfg.model.name,
        models_lib.activation_dtype(cfg.model),
        start,
        stop,
        n_total,
        bsz,
        cfg.data.crop_seconds,
        spe,
        mesh.size,
    )
    batches = data_lib.train_batches(
        cfg.data,
        global_batch=bsz,
        seed=cfg.data.seed,
        start_step=start,
        consumer_holds=STEPS_IN_FLIGHT + 2,
    )
    pending, last_good = [], start if mgr.latest_step() is not None else None
    in_flight = collections.deque()  # the losses of the steps dispatched, oldest first
    progress = Progress(
        "train", n_total, unit="step", initial=start, enabled=cfg.train.progress_bar
    )
    t_last, step = time.perf_counter(), start
    data_wait = 0.0  # seconds since the last flush the device may have idled waiting for input

    def flush(step):
        """Fetch the metrics since the last flush, stop on NaN, write their means."""
        nonlocal pending, t_last, data_wait
        if not pending:
            return
        host = jax.device_get(pending)
        for i, m in enumerate(host):
            if not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"]))):
                bad = step - len(host) + i
                mgr.wait_until_finished()
                kept = "none yet" if last_good is None else f"step {last_good}"
                raise TrainingDiverged(
                    f"loss {float(m['loss'])}, gradient norm {float(m['grad_norm'])} at step "
                    f"{bad}: training stopped before the update reached a checkpoint. The last "
                    f"good checkpoint ({kept}) is kept in {mgr.directory}; lower optim.lr or set "
                    "optim.clip_grad_norm and run again to resume from it."
                )
        now = time.perf_counter()
        scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        scalars["views_per_s"] = 2 * bsz * len(host) / max(now - t_last, 1e-9)
        scalars["data_wait"] = data_wait / len(host)
        writer.write_scalars(step, scalars)
        progress.update(len(host), loss=scalars["loss"], views_s=scalars["views_per_s"])
        pending, t_last, data_wait = [], now, 0.0

    embed_fn = make_embed_fn(cfg, graphdef, mesh)  # one jit for every validation

    def validate(step):
        res = evaluate_trials(
            cfg,
            graphdef,
            state.params,
            state.batch_stats,
            mesh,
            max_trials=cfg.train.val_max_trials,
            embed_fn=embed_fn,
        )
        writer.write_scalars(step, {f"val_eer/{k}": v["eer"] for k, v in res.items()})
        return res

    try:
        with distributed.StopRequest() as requests:
            if cfg.train.eval_every and start == 0:
                validate(0)  # the network at initialisation, for comparison
            while step < stop:
                t0 = time.perf_counter()
                try:
                    local = next(batches)
                except UserError:
                    raise
                except Exception as err:
                    mgr.wait_until_finished()
                    kept = "none yet" if last_good is None else f"step {last_good}"
                    raise InputPipelineError(
                        f"the input pipeline failed before step {step}: {err} The last "
                        f"checkpoint ({kept}) is kept in {mgr.directory}; run the same command "
                        "again to resume from it."
                    ) from err
                # Time blocked on the input pipeline counts as data_wait only where the device
                # had nothing left to run (the previous step was done): an upper bound on its
                # idle time.
                if not pending or pending[-1]["loss"].is_ready():
                    data_wait += time.perf_counter() - t0
                batch = global_batch(device_part(local), mesh)
                state, m = step_fn(state, batch)
                del local, batch  # the step holds the batch until it has run
                pending.append(m)
                in_flight.append(m["loss"])
                if len(in_flight) > STEPS_IN_FLIGHT:
                    in_flight.popleft().block_until_ready()
                step += 1
                stopping = step < stop and requests.due(step)
                if step % cfg.train.log_every == 0 or step == stop or stopping:
                    flush(step)
                if step % cfg.train.checkpoint_every == 0 or step == stop or stopping:
                    flush(step)  # never save a diverged state
                    checkpoints.save(mgr, step, state)
                    last_good = step
                if stopping:
                    mgr.wait_until_finished()
                    name = signal.Signals(requests.signum).name
                    raise distributed.Interrupted(
                        f"stopped by {name} at step {step} of {n_total}; checkpoint saved in "
                        f"{mgr.directory}. Run the same command again to resume from it.",
                        requests.signum,
                    )
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < n_total:
                    validate(step)
                    t_last = time.perf_counter()  # validation time is not training throughput
            if requests.after_last_step():
                raise distributed.Interrupted(
                    f"stopped by {signal.Signals(requests.signum).name} after the last step "
                    f"({step}), whose checkpoint is saved in {mgr.directory}: run the same "
                    "command again to evaluate it.",
                    requests.signum,
                )
    finally:
        batches.close()  # stops the data workers
        progress.close()
        mgr.wait_until_finished()
        writer.flush()
    return graphdef, state, mesh
