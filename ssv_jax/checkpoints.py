"""Orbax checkpoints of the train state, and the trained network that evaluation uses.

A workdir holds ``checkpoints/<step>/`` (Orbax ``CheckpointManager``: asynchronous, atomic,
the last ``train.keep_checkpoints`` kept). Restoring needs only the config: the abstract state
comes from ``state.create``, so nothing here opens a dataset.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from ssv_jax import state as state_lib
from ssv_jax.errors import UserError
from ssv_jax.optim import lr_schedule, make_optimizer
from ssv_jax.sharding import replicated


class RunNotFoundError(UserError, FileNotFoundError):
    """A workdir without the checkpoint or config.json a command needs."""


class CheckpointError(UserError):
    """A checkpoint that is there but cannot be read (damaged, or of another config)."""


def manager(workdir: str, cfg) -> ocp.CheckpointManager:
    """The workdir's checkpoint manager (keeps enough checkpoints for ``train.average_last``)."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=kept(cfg),
            create=True,
            cleanup_tmp_directories=True,  # what a killed run was writing
            enable_async_checkpointing=True,
        ),
    )


def kept(cfg) -> int:
    """How many checkpoints a run keeps."""
    return int(max(cfg.train.keep_checkpoints, cfg.train.average_last, 1))


def save(mgr, step: int, state) -> None:
    """Start an asynchronous save of ``state`` at ``step`` (``mgr.wait_until_finished()`` before
    reading it or exiting)."""
    mgr.save(step, args=ocp.args.StandardSave(state))


def abstract(state, sharding):
    """``state`` as ShapeDtypeStructs placed with ``sharding`` (a restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore(mgr, step: int, abstract_state):
    """The checkpoint at ``step``, placed like ``abstract_state`` (ShapeDtypeStructs with
    shardings for this run's mesh: a checkpoint saved by another process/device layout restores
    onto this one). None: as saved (a dict), which needs the saving run's devices."""
    try:
        if abstract_state is None:
            return mgr.restore(step)
        return mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as err:  # noqa: BLE001  (Orbax/TensorStore raise many types)
        older = [s for s in mgr.all_steps() if s < step]
        fix = (
            f"move {mgr.directory / str(step)} aside to continue from checkpoint {max(older)}"
            if older
            else "move it aside to start again"
        )
        raise CheckpointError(
            f"checkpoint {step} in {mgr.directory} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}). If it is damaged (a full disk, a copy cut "
            f"short), {fix}; if it was written with another config, use that config."
        ) from err


def averaged_network(mgr, abstract_state, n_last: int):
    """((params, batch_stats), steps): the mean of the last ``n_last`` checkpoints (as sslsv
    averages checkpoints before evaluation), or None when fewer than 2 exist."""
    steps = sorted(mgr.all_steps())[-n_last:]
    if n_last < 2 or len(steps) < 2:
        return None
    acc = None
    for s in steps:
        st = restore(mgr, s, abstract_state)
        cur = (
            (st.params, st.batch_stats)
            if abstract_state is not None
            else (st["params"], st["batch_stats"])
        )
        acc = cur if acc is None else jax.tree.map(jnp.add, acc, cur)
    return jax.tree.map(
        lambda x: x / len(steps) if jnp.issubdtype(x.dtype, jnp.floating) else x, acc
    ), steps


def abstract_state(cfg, mesh):
    """(graphdef, abstract TrainState replicated on ``mesh``) for ``cfg``. The optimiser state's
    structure does not depend on the schedule's length, so no dataset is opened."""
    tx = make_optimizer(cfg.optim, lr_schedule(cfg.optim, 1, 1))
    graphdefs = []

    def build():
        graphdef, state = state_lib.create(cfg, tx)
        graphdefs.append(graphdef)  # static structure: no arrays, safe outside the trace
        return state

    shapes = jax.eval_shape(build)
    return graphdefs[0], abstract(shapes, replicated(mesh))


def load_network(cfg, workdir: str, mesh, state=None):
    """(graphdef, params, batch_stats, description) of a trained run, as evaluation uses it:
    the average of the last ``train.average_last`` checkpoints when set and available, else
    ``state`` when given, else the latest checkpoint (restored onto ``mesh``)."""
    graphdef, target = abstract_state(cfg, mesh)
    mgr = manager(workdir, cfg)
    if cfg.train.average_last > 1 and mgr.latest_step() is not None:
        avg = averaged_network(mgr, target, int(cfg.train.average_last))
        if avg is not None:
            (params, batch_stats), steps = avg
            return graphdef, params, batch_stats, f"the average of checkpoints {steps}"
    if state is not None:
        # Training saves its last step, so the trained state is that checkpoint.
        return graphdef, state.params, state.batch_stats, f"checkpoint {int(state.step)}"
    latest = mgr.latest_step()
    if latest is None:
        raise RunNotFoundError(
            f"no checkpoint in {mgr.directory}: train first (--mode=train) or point "
            "--workdir at a trained run."
        )
    restored = restore(mgr, latest, target)
    return graphdef, restored.params, restored.batch_stats, f"checkpoint {latest}"
