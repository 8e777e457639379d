"""Finding, building and opening datasets by config: ensure_dataset, load_trials,
eval_utterances."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Iterator

import numpy as np

from ssv_jax.data import builder, records, synthetic, writer
from ssv_jax.data.pool import WorkerError, ordered_map
from ssv_jax.data.trials import Trials, parse_trials, resolve_ids
from ssv_jax.errors import UserError
from ssv_jax.progress import track

log = logging.getLogger("ssv_jax.data")

SYNTHETIC = "synthetic"
SYNTHETIC_NOISE = "synthetic_noise"
SYNTHETIC_RIRS = "synthetic_rirs"
_SIZE_FILE = "synthetic_size.json"
_lock = threading.Lock()
_open: dict = {}


def _prep_command(name: str, data_dir: str) -> str:
    if name in ("voxceleb1", "voxceleb2"):
        return (
            "python data_prep/voxceleb.py --vox1_dir=VOX1_DIR --vox2_dir=VOX2_DIR "
            "--trials_dir=TRIALS_DIR "
            f"--data_dir={data_dir}"
        )
    if name == "musan":
        return f"python data_prep/musan.py --musan_dir=MUSAN_DIR --data_dir={data_dir}"
    if name == "rirs":
        return f"python data_prep/rirs.py --rirs_dir=RIRS_NOISES_DIR --data_dir={data_dir}"
    if name in (SYNTHETIC, SYNTHETIC_NOISE, SYNTHETIC_RIRS):
        return f"python data_prep/synthetic.py --data_dir={data_dir}"
    return f"python data_prep/folder.py --audio_dir=AUDIO_DIR --data_dir={data_dir} --name={name}"


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset the config names has not been built."""


def size_from_config(data_cfg) -> synthetic.CorpusSize:
    s = data_cfg.synthetic
    fields = {f.name for f in dataclasses.fields(synthetic.CorpusSize)}
    return synthetic.CorpusSize(**{k: s[k] for k in fields if k in s})


def _results(fn, items, num_workers, desc):
    """Ordered results of ``fn`` over ``items`` in worker processes; worker errors raise."""
    results = ordered_map(fn, items, num_workers)
    for r in track(results, desc, len(items), unit="file"):
        if isinstance(r, WorkerError):
            raise RuntimeError(f"{fn.__module__}.{fn.__name__} failed: {r.message}")
        yield r


def build_synthetic(
    data_dir: str,
    size: synthetic.CorpusSize,
    *,
    num_workers: int = 2,
    overwrite: bool = True,
    names=(SYNTHETIC, SYNTHETIC_NOISE, SYNTHETIC_RIRS),
) -> list[builder.BuildSummary]:
    """Build the embedded corpus (train/test + trials) and/or its noise and RIR banks.

    Each dataset records ``size`` (``_SIZE_FILE``) and replaces its old build only once
    complete: a build that fails leaves the old one, which stays stale for the next try.
    """
    summaries = []
    stamp = {_SIZE_FILE: _fingerprint(size)}
    if SYNTHETIC in names:
        plans = {s: synthetic.utterance_plan(size, s) for s in ("train", "test")}

        def split_fn(split):
            return lambda: _results(
                synthetic.render_utterance,
                [(size, row) for row in plans[split]],
                num_workers,
                f"{SYNTHETIC}/{split}",
            )

        summaries.append(
            writer.write_dataset(
                SYNTHETIC,
                data_dir,
                {s: split_fn(s) for s in plans},
                description="Embedded procedural multi-speaker speech corpus "
                "(ssv_jax.data.synthetic).",
                trials={"synthetic_test": synthetic.make_trials(size, plans["test"])},
                overwrite=overwrite,
                extra_files=stamp,
            )
        )
    if SYNTHETIC_NOISE in names:
        counts = {"noise": size.noise_clips, "speech": size.speech_clips, "music": size.music_clips}

        def bank_fn(cat):
            return lambda: _results(
                synthetic.render_noise,
                [(size, cat, i) for i in range(counts[cat])],
                num_workers,
                f"{SYNTHETIC_NOISE}/{cat}",
            )

        summaries.append(
            writer.write_dataset(
                SYNTHETIC_NOISE,
                data_dir,
                {c: bank_fn(c) for c in counts},
                description="Procedural noise bank: noise, speech (for babble), music.",
                train_split=None,
                overwrite=overwrite,
                extra_files=stamp,
            )
        )
    if SYNTHETIC_RIRS in names:
        summaries.append(
            writer.write_dataset(
                SYNTHETIC_RIRS,
                data_dir,
                {
                    "train": lambda: _results(
                        synthetic.render_rir,
                        [(size, i) for i in range(size.rirs)],
                        num_workers,
                        f"{SYNTHETIC_RIRS}/train",
                    )
                },
                description="Procedural room impulse responses (RT60 0.15-0.9 s).",
                train_split=None,
                overwrite=overwrite,
                extra_files=stamp,
            )
        )
    return summaries


def _fingerprint(size: synthetic.CorpusSize) -> str:
    return json.dumps(
        dict(dataclasses.asdict(size), generator_version=synthetic.GENERATOR_VERSION),
        sort_keys=True,
    )


def _synthetic_current(data_dir: str, size: synthetic.CorpusSize, name: str) -> bool:
    vdir = records.find_version_dir(data_dir, name)
    return (
        vdir is not None
        and (vdir / _SIZE_FILE).exists()
        and (vdir / _SIZE_FILE).read_text() == _fingerprint(size)
    )


def _names(data_cfg) -> list[str]:
    names = [data_cfg.name, data_cfg.eval_name or data_cfg.name]
    aug = data_cfg.augment
    if aug.enabled:
        names += [n for n in (aug.noise_bank, aug.rir_bank) if n]
    return list(dict.fromkeys(names))


def ensure_dataset(data_cfg, names=None) -> dict:
    """Make sure every dataset ``data_cfg`` names exists; return name -> records.Dataset.

    The embedded corpus (and its banks) is built on first use, and rebuilt when
    ``data_cfg.synthetic`` (or the generator) changed. Any other missing dataset
    raises DatasetNotFoundError naming the path and the data_prep command that builds it.
    ``names``: only these (default: every dataset the config names, banks included).
    """
    data_dir = data_cfg.data_dir
    out = {}
    with _lock:
        names = _names(data_cfg) if names is None else list(names)
        size = size_from_config(data_cfg)
        stale = [
            n
            for n in names
            if n in (SYNTHETIC, SYNTHETIC_NOISE, SYNTHETIC_RIRS)
            and not _synthetic_current(data_dir, size, n)
        ]
        if stale:
            log.warning(
                "building the embedded %s in %s (one-off, cached)", ", ".join(stale), data_dir
            )
            for n in stale:
                _open.pop((str(records.dataset_root(data_dir, n)), n), None)
            for s in build_synthetic(
                data_dir, size, names=stale, num_workers=int(data_cfg.synthetic.num_workers)
            ):
                log.warning("%s", s.report())
        for name in names:
            key = (str(records.dataset_root(data_dir, name)), name)
            if key not in _open:
                vdir = records.find_version_dir(data_dir, name)
                if vdir is None:
                    raise DatasetNotFoundError(
                        f"dataset {name!r} not found at {records.dataset_root(data_dir, name)} "
                        "(no complete build); "
                        f"build it with: {_prep_command(name, data_dir)}"
                    )
                _open[key] = records.Dataset(vdir)
            out[name] = _open[key]
    return out


def open_dataset(data_cfg, name: str) -> records.Dataset:
    return ensure_dataset(data_cfg, [name])[name]


def ensure_eval_dataset(data_cfg) -> records.Dataset:
    """The dataset holding the evaluation utterances and trial lists, and nothing else: no
    training split or augmentation bank is opened or built."""
    return _eval_dataset(data_cfg)


def _eval_dataset(data_cfg) -> records.Dataset:
    return open_dataset(data_cfg, data_cfg.eval_name or data_cfg.name)


def train_split(data_cfg) -> str:
    """``data.train_split``, or (None) the training split the dataset records."""
    if data_cfg.train_split:
        return data_cfg.train_split
    ds = open_dataset(data_cfg, data_cfg.name)
    split = ds.layout["train_split"]
    if not split:
        raise ValueError(
            f"dataset {ds.name!r} ({ds.dir}) records no training split; it has splits "
            f"{ds.splits}: name one with --config.data.train_split=SPLIT."
        )
    return split


def trial_lists(data_cfg) -> tuple[str, ...]:
    """``data.trials``, or (None) every trial list the evaluation dataset stores."""
    if data_cfg.trials is not None:
        return tuple(data_cfg.trials)
    ds = _eval_dataset(data_cfg)
    names = tuple(ds.layout["trials"]) or tuple(ds.trial_names())
    if not names:
        raise ValueError(
            f"dataset {ds.name!r} ({ds.dir}) stores no trial list, so there is nothing to "
            "evaluate: "
            f"rebuild it with one (data_prep/folder.py --trials=FILE) or name a dataset that has "
            f"one with --config.data.eval_name=NAME."
        )
    return names


def eval_split(data_cfg) -> str:
    """``data.eval_split``, or (None) the split(s) holding the trial lists' utterances."""
    if data_cfg.eval_split:
        return data_cfg.eval_split
    ds = _eval_dataset(data_cfg)
    used = set()
    for name in trial_lists(data_cfg):
        used.update(ds.trial_split(name).split("+"))
    split = "+".join(s for s in ds.splits if s in used)
    if not split:
        raise ValueError(
            f"dataset {ds.name!r} ({ds.dir}) does not say which split holds the "
            f"utterances of {trial_lists(data_cfg)}; set --config.data.eval_split."
        )
    return split


def load_trials(data_cfg) -> dict[str, Trials]:
    """The trial lists (``trial_lists``) -> Trials, with ids as eval_utterances yields them.

    A list that is not stored with the eval dataset, or that names an utterance
    not in the evaluation split, raises an error saying which.
    """
    ds = _eval_dataset(data_cfg)
    names = trial_lists(data_cfg)
    for name in names:
        path = ds.trial_path(name)
        if not path.exists():
            raise FileNotFoundError(
                f"trial list {name!r} not found at {path}; {ds.name!r} has "
                f"{ds.trial_names() or 'no trial lists'}. Rebuild the dataset with its trial list "
                f"(e.g. data_prep/folder.py --trials=FILE) or fix --config.data.trials."
            )
    split = eval_split(data_cfg)
    known = {row[0] for row in ds.index(split)}
    out = {}
    for name in names:
        path = ds.trial_path(name)
        t = parse_trials(path.read_text(), name, str(path))
        out[name] = resolve_ids(t, known, f"split {split!r} of {ds.name!r} ({ds.dir})")
    return out


def eval_utterances(data_cfg, split: str | None = None, *, only=None) -> Utterances:
    """(utterance id, float32 [T] full-length wave) for every utterance of the eval split, an
    ``Utterances``: decoded as it is iterated.

    ``only``: optional collection of utterance ids; others are skipped without
    decoding their audio (e.g. only the utterances the trial lists name).
    """
    ds = _eval_dataset(data_cfg)
    split = split or eval_split(data_cfg)
    rows = ds.index(split)
    want = None if only is None else set(only)
    return Utterances(
        ds, split, rows, [i for i, r in enumerate(rows) if want is None or r[0] in want]
    )


class Utterances:
    """(utterance id, float32 wave) of records ``idx`` of ``split`` (``rows``: its index), in
    record order, decoded 32 at a time as they are iterated (a record whose id differs from the
    index's is an error). ``ids`` and ``lengths`` (samples) come from the index, without
    decoding; ``subset`` narrows to some ids."""

    def __init__(self, ds, split: str, rows, idx):
        self.ds, self.split, self.rows, self.idx = ds, split, rows, list(idx)

    @property
    def ids(self) -> list[str]:
        return [self.rows[i][0] for i in self.idx]

    @property
    def lengths(self) -> list[int]:
        return [int(self.rows[i][3]) for i in self.idx]

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, ids) -> Utterances:
        """These records restricted to ``ids`` (record order kept)."""
        keep = set(ids)
        return Utterances(
            self.ds, self.split, self.rows, [i for i in self.idx if self.rows[i][0] in keep]
        )

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        src = self.ds.source(self.split)
        for start in range(0, len(self.idx), 32):
            chunk = self.idx[start : start + 32]
            for i, rec in zip(chunk, src.__getitems__(chunk)):
                utt = (
                    rec["utterance"].decode()
                    if isinstance(rec["utterance"], bytes)
                    else str(rec["utterance"])
                )
                if utt != self.rows[i][0]:
                    raise RuntimeError(
                        f"index of {self.ds.dir} is out of step with its records at {i}; "
                        "rebuild the dataset."
                    )
                yield utt, rec["audio"].astype(np.float32) / 32768.0


def cohort_utterances(data_cfg, n: int, *, exclude=()) -> Utterances:
    """(utterance id, float32 wave) of ``n`` training-split utterances for score normalisation:
    evenly spaced over the split's records (deterministic), skipping ids in ``exclude`` (the
    trial utterances, where train and evaluation data overlap) unless too few would be left
    (a folder whose every utterance is in a trial list: then they are kept, with a warning)."""
    try:
        ds = open_dataset(data_cfg, data_cfg.name)
    except DatasetNotFoundError as err:
        raise DatasetNotFoundError(
            f"score normalisation (eval.score_norm) takes its cohort from the training split, "
            f"which is not here: {err}. Set --config.eval.score_norm=none to evaluate without it."
        ) from None
    split = train_split(data_cfg)
    rows = ds.index(split)
    excluded = set(exclude)
    candidates = [i for i, r in enumerate(rows) if r[0] not in excluded]
    if n > len(candidates) and n <= len(rows):
        log.warning(
            "only %d utterances of split %r of %r are not in the trial lists: the cohort of %d "
            "includes trial utterances",
            len(candidates),
            split,
            ds.name,
            n,
        )
        candidates = list(range(len(rows)))
    if n > len(candidates):
        raise ValueError(
            f"eval.cohort_size={n} is larger than the {len(rows)} utterances of split "
            f"{split!r} of {ds.name!r}; lower eval.cohort_size."
        )
    if n < 2:
        raise ValueError(f"eval.cohort_size must be at least 2; got {n}.")
    pick = [candidates[int(k)] for k in np.linspace(0, len(candidates) - 1, n).round()]
    return Utterances(ds, split, rows, pick)
