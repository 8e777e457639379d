"""The run directory: checked before anything runs, ``config.json`` written when a run starts
fresh and compared with the run's config when it resumes."""

from __future__ import annotations

import logging
import os
import shutil
import socket

import jax

from ssv_jax import checkpoints
from ssv_jax.errors import UserError

log = logging.getLogger("ssv_jax")

CONFIG_FILE = "config.json"
# Fields a resumed run may not change: they fix the shapes in the checkpoint or what it means.
FIXED = ("method.name", "method.queue_size", "train.batch_size")


class WorkdirError(UserError):
    """The workdir cannot be used: unwritable, full, or holding another config's run."""


def resolve(workdir: str) -> str:
    """The absolute path of ``workdir``; a URL (gs://...) is refused: mount the bucket."""
    if "://" in workdir:
        raise WorkdirError(
            f"--workdir={workdir} is a URL; the workdir must be a directory path that every "
            "process sees: mount the bucket (e.g. with gcsfuse) and pass the mount's path."
        )
    return os.path.abspath(os.path.expanduser(workdir))


def ensure_writable(workdir: str) -> None:
    """Create ``workdir`` if needed and check that a file can be written in it."""
    probe = os.path.join(workdir, f".write-check-{socket.gethostname()}-{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise WorkdirError(
            f"cannot write in the workdir {workdir}: {err.strerror or err}. Choose a "
            "--workdir you can write to."
        ) from None


def check_space(workdir: str, state, keep: int) -> None:
    """Refuse to train when the free space in ``workdir`` cannot hold ``keep`` checkpoints of
    ``state`` plus the one being written."""
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    need = size * (keep + 1)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise WorkdirError(
            f"only {free / 2**20:.0f} MiB free in {workdir}; {keep} checkpoints of "
            f"{size / 2**20:.0f} MiB (plus one being written) need {need / 2**20:.0f} MiB. "
            "Free some space, choose another --workdir or lower train.keep_checkpoints."
        )


def prepare(cfg, workdir: str, *, mode: str) -> None:
    """Before a run: the workdir is writable; a fresh run (no checkpoint) writes
    ``config.json``; a run that continues one (resume, or ``mode="evaluate"``) is compared with
    the stored config: a different network, method, MoCo queue or batch size is refused, other
    differences are logged."""
    ensure_writable(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    latest = checkpoints.manager(workdir, cfg).latest_step()
    if latest is None and mode != "evaluate":
        if jax.process_index() == 0:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(cfg.to_json_best_effort(indent=2))
            os.replace(tmp, path)
        return
    if not os.path.isfile(path):
        return  # nothing to compare with (a checkpoint from a bare train.train call)
    diff = checkpoints.differences(
        checkpoints.fields(checkpoints.read_config(workdir)), checkpoints.fields(cfg)
    )
    if not diff:
        return
    fixed = set(checkpoints.architecture(cfg)) | set(FIXED)
    refused = {k: v for k, v in diff.items() if k in fixed}
    shown = checkpoints.describe(refused or diff)
    what = "evaluates" if mode == "evaluate" else "resumes"
    if refused:
        raise WorkdirError(
            f"{workdir} holds a run of another network, method or batch size ({shown}). Use a "
            f"new --workdir, or the settings in {path}."
        )
    if jax.process_index() == 0:
        log.warning(
            "this run %s the one in %s with changed settings (%s); %s keeps the settings it "
            "started with",
            what,
            workdir,
            shown,
            CONFIG_FILE,
        )
