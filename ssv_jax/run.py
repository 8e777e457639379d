"""Starting runs, as ``main.py`` does: validate the config, prepare the workdir, resolve
``train.init_from`` (another run's network, or the one pretrained on the embedded corpus),
train, then evaluate. Resolving the starting network here keeps the trainer and the checkpoint
code free of anything that starts a run of its own."""

from __future__ import annotations

import os

import jax

from ssv_jax import checkpoints, pretrained
from ssv_jax import config as config_lib
from ssv_jax import train as train_lib
from ssv_jax import workdir as workdir_lib
from ssv_jax.evaluate import evaluate_workdir, summary_table
from ssv_jax.sharding import data_mesh

MODES = ("train_and_evaluate", "train", "evaluate")


def train(cfg, workdir: str, *, mesh=None, max_steps: int | None = None):
    """``train.train`` from the network ``train.init_from`` names when the run has no
    checkpoint yet (a run that has one resumes from it); returns (graphdef, state, mesh)."""
    config_lib.validate(cfg)
    mesh = mesh or data_mesh()
    init = None
    if cfg.train.init_from and checkpoints.manager(workdir, cfg).latest_step() is None:
        init = pretrained.init_network(cfg, mesh)
    return train_lib.train(cfg, workdir, mesh=mesh, max_steps=max_steps, init=init)


def run(cfg, workdir: str, mode: str) -> dict | None:
    """``mode`` (one of MODES) in ``workdir``; returns the results of the evaluation, if any."""
    config_lib.validate(cfg)
    workdir = workdir_lib.resolve(workdir)
    workdir_lib.prepare(cfg, workdir, mode=mode)
    if jax.process_index() == 0:
        print(
            f"ssv_jax: {jax.device_count()} {jax.devices()[0].platform} device(s), "
            f"{jax.process_count()} process(es); workdir {workdir}",
            flush=True,
        )
    graphdef = state = mesh = None
    if mode in ("train_and_evaluate", "train"):
        graphdef, state, mesh = train(cfg, workdir)
    if mode not in ("train_and_evaluate", "evaluate"):
        return None
    results = evaluate_workdir(cfg, workdir, mesh=mesh, graphdef=graphdef, state=state)
    if jax.process_index() == 0:
        print(f"results ({os.path.join(workdir, 'results.json')}):")
        print(summary_table(results), flush=True)
    return results
