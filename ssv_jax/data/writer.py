"""Writing a dataset: ``write_dataset``, one writer for every source (``prep``, the
embedded corpus).

A build writes everything into ``DATA_DIR/.NAME.building-<pid>-<random>/`` and only
then swaps it in (the old dataset, if any, is renamed aside, the new one renamed
in, the old one deleted): a build that fails or yields a split without a usable
record leaves the old dataset as it was. The next build removes (or, when the
dataset itself is missing, restores) what an interrupted one left behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Callable, Iterable, Mapping

from etils import epath

from ssv_jax.data.builder import BuildSummary, Skip, _build
from ssv_jax.data.records import DatasetExistsError, _complete_version, _tfds, check_name

log = logging.getLogger("ssv_jax.data")

_BUILDING, _OLD = "building", "old"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _clean_leftovers(base: epath.Path, name: str) -> None:
    """Remove what interrupted builds of ``name`` left in ``base`` (``.NAME.building-*``,
    ``.NAME.old-*``) unless their process still runs; a replaced dataset whose successor never
    arrived is put back instead. On a remote filesystem every leftover counts as stale."""
    local = "://" not in str(base)
    root = base / name
    for kind in (_OLD, _BUILDING):
        prefix = f".{name}.{kind}-"
        for p in sorted(base.glob(prefix + "*")):
            pid = p.name[len(prefix) :].split("-")[0]
            if local and pid.isdigit() and _pid_alive(int(pid)):
                continue
            try:
                if kind == _OLD and not root.exists() and _complete_version(p) is not None:
                    p.rename(root)
                    log.warning("restored %s from %s, left by an interrupted build", root, p)
                else:
                    p.rmtree()
            except OSError as err:
                log.warning("could not remove %s (%s); it is ignored", p, err)


def _swap(built: epath.Path, root: epath.Path, base: epath.Path, name: str) -> None:
    """Put the finished ``built`` at ``root``: the old dataset (if any) is renamed aside, the new
    one renamed in, then the old one deleted."""
    old = None
    if root.exists():
        old = base / f".{name}.{_OLD}-{os.getpid()}-{secrets.token_hex(4)}"
        root.rename(old)
    try:
        built.rename(root)
    except BaseException:
        if old is not None:
            old.rename(root)
        raise
    if old is not None:
        try:
            old.rmtree()
        except OSError as err:
            log.warning("could not delete the replaced dataset at %s (%s)", old, err)


def write_dataset(
    name: str,
    data_dir: str,
    splits: Mapping[str, Callable[[], Iterable[dict | Skip]]],
    *,
    description: str = "",
    trials: Mapping[str, Iterable[tuple[int, str, str]]] | None = None,
    train_split: str | None = "train",
    sample_rate: int = 16000,
    overwrite: bool = False,
    min_shard_mb: int = 100,
    max_shard_mb: int = 200,
    extra_files: Mapping[str, str] | None = None,
) -> BuildSummary:
    """Write ``splits`` (split -> callable yielding record dicts or ``Skip``) as a TFDS dataset.

    Records need ``audio`` (int16 16 kHz), ``utterance`` and optionally
    ``speaker``, ``session``, ``category``. ``trials`` maps a trial-list name to
    (label, utterance_a, utterance_b) rows; trials naming an utterance that is not in the
    dataset are dropped with a warning (and listed as skipped). ``train_split``: the split
    training uses by default (None: a bank or an evaluation-only dataset). ``extra_files``:
    file name -> text, written into the version directory. Returns the summary (also saved
    as prep_summary.json).

    The dataset is built aside and replaces an existing one (``overwrite``; else
    DatasetExistsError) only once complete. A split without any record, or a trial list
    with no trial left, raises DatasetBuildError; then, as on any error, nothing changes.
    """
    _tfds()
    check_name(name)
    t0 = time.time()
    base = epath.Path(data_dir).expanduser()
    root = base / name
    if base.exists():
        _clean_leftovers(base, name)
    existing = _complete_version(root)
    if existing is not None and not overwrite:
        raise DatasetExistsError(
            f"dataset {name!r} already exists at {existing}; pass --overwrite to rebuild it."
        )
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{name}.{_BUILDING}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        summary = _build(
            name,
            tmp,
            root,
            existing,
            splits,
            description=description,
            trials=trials,
            train_split=train_split,
            sample_rate=sample_rate,
            min_shard_mb=min_shard_mb,
            max_shard_mb=max_shard_mb,
            extra_files=extra_files or {},
            t0=t0,
        )
        _swap(tmp / name, root, base, name)
    finally:
        try:
            tmp.rmtree(missing_ok=True)
        except OSError as err:
            log.warning("could not remove %s (%s); the next build removes it", tmp, err)
    return summary
