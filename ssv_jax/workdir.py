"""The run directory: checked before anything runs, ``config.json`` written when a run starts
fresh, read back (older runs' files migrated to today's fields) and compared with the run's
config when it resumes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket

import jax
import ml_collections

from ssv_jax import checkpoints
from ssv_jax import config as config_lib
from ssv_jax.checkpoints import RunNotFoundError
from ssv_jax.errors import UserError

log = logging.getLogger("ssv_jax")

CONFIG_FILE = "config.json"
# Fields a resumed run may not change: they fix the shapes in the checkpoint or what it means.
FIXED = (
    "method.name",
    "method.queue_size",
    "train.batch_size",
    "method.ssps.enabled",
    "method.ssps.ref_size",
    "method.ssps.queue_size",
    "method.ssps.prototypes",
)


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


# Model fields that choose how the network is computed, not what it computes.
RUNTIME_FIELDS = ("conv_impl", "compute_dtype")
# CPU speed switches of earlier versions, replaced by ``model.conv_impl``; dropped on reading.
LEGACY_FIELDS = ("s2d", "barrier", "onednn")
# Fields added later, at the value every run before them used; filled in on reading.
LATER_FIELDS = {
    ("frontend", "norm"): "instance",
    ("eval", "neighbours"): 0,
    ("method", "ssps"): config_lib.default_ssps_config().to_dict(),
}


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config that ``main.py`` wrote to ``workdir/config.json``."""
    path = os.path.join(os.path.expanduser(workdir), "config.json")
    if not os.path.isfile(path):
        raise RunNotFoundError(
            f"{path} not found: {workdir} is not a directory that `python main.py "
            "--workdir=...` trained."
        )
    with open(path) as f:
        cfg = json.load(f)
    for k in LEGACY_FIELDS:
        cfg.get("model", {}).pop(k, None)
    for (section, k), v in LATER_FIELDS.items():
        cfg.get(section, {}).setdefault(k, v)
    return ml_collections.ConfigDict(cfg)


def architecture(cfg) -> dict:
    """{field: value} of the config fields that fix the trained network: its parameters and
    what it computes from audio (encoder, front-end, projector)."""
    fields = {f"model.{k}": v for k, v in cfg.model.items() if k not in RUNTIME_FIELDS}
    fields.update({f"frontend.{k}": v for k, v in cfg.frontend.items()})
    fields["method.projector"] = cfg.method.projector
    if cfg.method.projector:
        fields["method.projector_hidden"] = cfg.method.projector_hidden
        fields["method.projector_out"] = cfg.method.projector_out
    return json.loads(json.dumps(fields))  # tuples and lists alike


def fields(cfg) -> dict:
    """{"section.field": value} of every field of ``cfg`` (tuples as lists, as config.json)."""

    def flat(d, prefix):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    return flat(json.loads(cfg.to_json_best_effort()), "")


def differences(theirs: dict, mine: dict) -> dict:
    """{key: (their value, my value)} of the keys whose values differ (or are on one side)."""
    keys = sorted(theirs.keys() | mine.keys())
    return {k: (theirs.get(k), mine.get(k)) for k in keys if theirs.get(k) != mine.get(k)}


def describe(diff: dict) -> str:
    """``differences`` as "key: X there, Y here; ..."."""
    return "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())


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
    diff = differences(fields(read_config(workdir)), fields(cfg))
    if not diff:
        return
    fixed = set(architecture(cfg)) | set(FIXED)
    refused = {k: v for k, v in diff.items() if k in fixed}
    shown = describe(refused or diff)
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
