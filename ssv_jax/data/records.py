"""TFDS datasets of speech records: one writer for every source, one reader.

Every dataset this project reads (the embedded synthetic corpus, VoxCeleb,
any speaker folder, MUSAN, RIRs) is a TFDS dataset in ``array_record`` format
(random access, so that batch k is a pure function of (seed, k)), with one
record per utterance:

    audio      int16 [T]   16 kHz PCM (raw bytes on disk)
    speaker    str         speaker id (or bank category for noise/RIR banks)
    session    str         session / video / room id
    utterance  str         utterance id, e.g. "id10270/x6uYqmx31kE/00001.wav"
    category   str         "" for speech corpora; noise|speech|music for noise banks
    duration   float32     seconds

Beside TFDS's own files, the version directory holds
``index/<split>.tsv`` (utterance, speaker, session, samples; written from the
generator, so ids can be checked without reading audio), ``trials/<name>.txt``
(VoxCeleb ``label a b`` lists), ``layout.json`` (the split to train on and,
per trial list, the split(s) holding its utterances: the dataset describes
itself, so a config needs only its name) and ``prep_summary.json`` (what was
written and what was skipped and why). ``ssv_jax_complete`` marks a finished build.

A build writes everything into ``DATA_DIR/.NAME.building-<pid>-<random>/`` and only
then swaps it in (the old dataset, if any, is renamed aside, the new one renamed
in, the old one deleted): a build that fails or yields a split without a usable
record leaves the old dataset as it was. The next build removes (or, when the
dataset itself is missing, restores) what an interrupted one left behind.

Shards target 100-200 MB (TFDS picks a power of two between those sizes).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets
import time
import types
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np
from etils import epath

from ssv_jax.errors import UserError

log = logging.getLogger("ssv_jax.data")

VERSION = "1.0.0"
COMPLETE_MARK = "ssv_jax_complete"
LAYOUT_FILE = "layout.json"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_BUILDING, _OLD = "building", "old"


class DatasetExistsError(UserError, FileExistsError):
    """The dataset is already built and ``overwrite`` was not asked for."""


class DatasetBuildError(UserError):
    """A build produced nothing usable (a split without records, a trial list with no trial
    left); the old dataset, if any, is unchanged."""


def _tf():
    """Import TensorFlow with the accelerator hidden from it (JAX owns it)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: nothing to hide any more
        pass
    return tf


def _tfds():
    _tf()
    import tensorflow_datasets as tfds

    return tfds


@dataclass
class Skip:
    """A source item that could not be turned into a record (counted, warned)."""

    key: str
    reason: str


@dataclass
class BuildSummary:
    """What a build wrote and skipped, per split."""

    name: str
    path: str = ""
    written: dict = field(default_factory=dict)  # split -> records
    hours: dict = field(default_factory=dict)  # split -> audio hours
    skipped: dict = field(default_factory=dict)  # split -> [(key, reason)]
    seconds: float = 0.0

    def total_hours(self) -> float:
        return float(sum(self.hours.values()))

    def reasons(self, splits=None) -> collections.Counter:
        """Skipped items per reason ("unreadable", "empty", ...), over ``splits`` (default all)."""
        return collections.Counter(
            r.split(" (")[0]
            for split, sk in self.skipped.items()
            if splits is None or split in splits
            for _, r in sk
        )

    def report(self) -> str:
        lines = [f"dataset {self.name} at {self.path}"]
        for split, n in self.written.items():
            sk = self.skipped.get(split, [])
            lines.append(
                f"  {split}: {n} records, {self.hours.get(split, 0.0):.3f} h, {len(sk)} skipped"
            )
        reasons = self.reasons()
        if reasons:
            lines.append(
                "  skipped by reason: " + ", ".join(f"{k}: {v}" for k, v in reasons.items())
            )
            for split, sk in self.skipped.items():
                for key, why in sk[:10]:
                    lines.append(f"    [{split}] {key}: {why}")
                if len(sk) > 10:
                    lines.append(
                        f"    [{split}] ... and {len(sk) - 10} more (see prep_summary.json)"
                    )
        minutes = self.seconds / 60
        lines.append(
            f"  built in {self.seconds:.1f} s ({self.total_hours() / max(minutes, 1e-9):.2f} "
            "audio hours per minute)"
        )
        return "\n".join(lines)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"dataset name {name!r} is not valid: use lower-case letters, digits and '_', starting "
            "with a letter (e.g. --name=my_speakers)."
        )
    return name


def features():
    tfds = _tfds()
    text = tfds.features.Text()
    return tfds.features.FeaturesDict(
        {
            "audio": tfds.features.Tensor(
                shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES
            ),
            "speaker": text,
            "session": text,
            "utterance": text,
            "category": text,
            "duration": tfds.features.Scalar(dtype=np.float32),
        }
    )


def _make_builder_class(
    name: str,
    description: str,
    splits: Mapping[str, Callable[[], Iterable]],
    summary: BuildSummary,
    index: dict,
    sample_rate: int,
):
    """A GeneratorBasedBuilder subclass named ``name`` (not registered globally)."""
    tfds = _tfds()

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=features(),
            disable_shuffling=True,  # record order = generator order (our pipeline shuffles)
            metadata=tfds.core.MetadataDict(sample_rate=sample_rate),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
        rows = index.setdefault(split, [])
        skipped = summary.skipped.setdefault(split, [])
        seen = set()
        samples = 0
        for item in splits[split]():
            if isinstance(item, Skip):
                log.warning("skipping %s: %s", item.key, item.reason)
                skipped.append((item.key, item.reason))
                continue
            utt = item["utterance"]
            if utt in seen:
                raise ValueError(f"duplicate utterance id {utt!r} in split {split!r}")
            seen.add(utt)
            audio = np.asarray(item["audio"], np.int16)
            samples += audio.size
            rows.append((utt, item.get("speaker", ""), item.get("session", ""), int(audio.size)))
            yield (
                utt,
                {
                    "audio": audio,
                    "speaker": item.get("speaker", ""),
                    "session": item.get("session", ""),
                    "utterance": utt,
                    "category": item.get("category", ""),
                    "duration": np.float32(audio.size / sample_rate),
                },
            )
        summary.written[split] = len(rows)
        summary.hours[split] = samples / sample_rate / 3600.0

    body = {
        "name": name,
        "VERSION": tfds.core.Version(VERSION),
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
        "__module__": __name__,
        # Built at run time, not from a dataset package: no code path, no checksums file.
        "code_path": None,
    }
    cls_name = "".join(p.capitalize() for p in name.split("_")) + "Builder"
    return types.new_class(
        cls_name,
        (tfds.core.GeneratorBasedBuilder,),
        {"skip_registration": True},
        lambda ns: ns.update(body),
    )


def dataset_root(data_dir: str, name: str) -> epath.Path:
    return epath.Path(data_dir).expanduser() / name


def _complete_version(root: epath.Path) -> epath.Path | None:
    """The newest complete version directory under ``root`` (a dataset's folder), or None."""
    if not root.exists():
        return None
    found = []
    for d in root.iterdir():
        if (d / "dataset_info.json").exists() and (d / COMPLETE_MARK).exists():
            try:
                found.append((tuple(int(p) for p in d.name.split(".")), d))
            except ValueError:
                continue
    return max(found)[1] if found else None


def find_version_dir(data_dir: str, name: str) -> epath.Path | None:
    """The newest complete version directory of ``name`` under ``data_dir``, or None."""
    return _complete_version(dataset_root(data_dir, name))


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


def _unchanged(existing: epath.Path | None) -> str:
    return f"the dataset at {existing} is unchanged" if existing else "nothing was written"


def _empty_split_error(name, summary, split, existing) -> DatasetBuildError:
    skipped = summary.skipped.get(split, [])
    if skipped:
        why = ", ".join(f"{k}: {v}" for k, v in summary.reasons([split]).items())
        key, reason = skipped[0]
        n = len(skipped)
        detail = f"{n} file{'s' * (n != 1)} skipped, none kept ({why}; e.g. {key}: {reason})"
    else:
        detail = "its source yielded no item"
    return DatasetBuildError(
        f"dataset {name!r} was not built: split {split!r} has no usable record: {detail}; "
        f"{_unchanged(existing)}."
    )


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


def _build(
    name,
    tmp,
    root,
    existing,
    splits,
    *,
    description,
    trials,
    train_split,
    sample_rate,
    min_shard_mb,
    max_shard_mb,
    extra_files,
    t0,
) -> BuildSummary:
    """Build dataset ``name`` under ``tmp`` (TFDS writes ``tmp/name/VERSION``), every file of the
    finished dataset included; the summary's path is where it will be, under ``root``."""
    tfds = _tfds()
    summary = BuildSummary(name=name)
    index: dict = {}
    cls = _make_builder_class(name, description, splits, summary, index, sample_rate)
    builder = cls(data_dir=str(tmp), file_format="array_record")
    cfg = tfds.download.DownloadConfig(
        min_shard_size=min_shard_mb << 20,
        max_shard_size=max_shard_mb << 20,
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )
    # tfds 4.9's ShardConfig.calculate_number_shards is a classmethod that reads the CLASS
    # defaults (64 MiB - 1 GiB), ignoring the sizes passed above: set them for this call.
    from tensorflow_datasets.core.utils import shard_utils

    saved = (shard_utils.ShardConfig.min_shard_size, shard_utils.ShardConfig.max_shard_size)
    shard_utils.ShardConfig.min_shard_size, shard_utils.ShardConfig.max_shard_size = (
        cfg.min_shard_size,
        cfg.max_shard_size,
    )
    empty = lambda: [s for s in splits if summary.written.get(s) == 0]  # noqa: E731
    try:
        builder.download_and_prepare(download_config=cfg)
    except Exception as err:  # TFDS refuses to write a split without examples
        if empty():
            raise _empty_split_error(name, summary, empty()[0], existing) from err
        raise
    finally:
        shard_utils.ShardConfig.min_shard_size, shard_utils.ShardConfig.max_shard_size = saved
    if empty():
        raise _empty_split_error(name, summary, empty()[0], existing)
    vdir = epath.Path(builder.data_dir)
    final = root / vdir.name
    (vdir / "index").mkdir(exist_ok=True)
    for split, rows in index.items():
        with (vdir / "index" / f"{split}.tsv").open("w") as f:
            f.writelines(f"{u}\t{s}\t{e}\t{n}\n" for u, s, e, n in rows)
    layout = {"train_split": train_split if train_split in index else None, "trials": {}}
    if trials:
        known = {r[0] for rows in index.values() for r in rows}
        split_of = {r[0]: s for s, rows in index.items() for r in rows}
        (vdir / "trials").mkdir(exist_ok=True)
        for tname, rows in trials.items():
            rows = list(rows)
            missing = sorted({u for _, a, b in rows for u in (a, b) if u not in known})
            if missing:
                dropped = sum(1 for _, a, b in rows if a not in known or b not in known)
                if dropped == len(rows):
                    skipped = sum(summary.reasons().values())
                    raise DatasetBuildError(
                        f"dataset {name!r} was not built: every one of the {len(rows)} trials of "
                        f"trial list {tname!r} names an utterance that is not in the data "
                        f"({len(missing)} missing, e.g. {missing[0]!r}"
                        + (f"; {skipped} files were skipped" if skipped else "")
                        + f"); {_unchanged(existing)}."
                    )
                log.warning(
                    "trial list %s: %d trials name utterances not in the data (first: %s); "
                    "dropping them",
                    tname,
                    dropped,
                    missing[0],
                )
                rows = [r for r in rows if r[1] in known and r[2] in known]
                summary.skipped.setdefault(f"trials:{tname}", []).extend(
                    (u, "missing utterance") for u in missing
                )
            with (vdir / "trials" / f"{tname}.txt").open("w") as f:
                f.writelines(f"{int(lab)} {a} {b}\n" for lab, a, b in rows)
            used = {split_of[u] for _, a, b in rows for u in (a, b)}
            layout["trials"][tname] = "+".join(s for s in index if s in used)
    (vdir / LAYOUT_FILE).write_text(json.dumps(layout, indent=1))
    for fname, text in extra_files.items():
        (vdir / fname).write_text(text)
    summary.path = str(final)
    summary.seconds = time.time() - t0
    (vdir / "prep_summary.json").write_text(
        json.dumps(
            {
                "name": name,
                "written": summary.written,
                "hours": summary.hours,
                "skipped": {k: [list(x) for x in v] for k, v in summary.skipped.items()},
                "seconds": summary.seconds,
            },
            indent=1,
        )
    )
    (vdir / COMPLETE_MARK).write_text("ok\n")
    return summary


class Dataset:
    """Read side of one built dataset: random-access splits, index, trial lists."""

    def __init__(self, version_dir: epath.Path):
        tfds = _tfds()
        self.dir = epath.Path(version_dir)
        self.builder = tfds.builder_from_directory(str(self.dir))
        self.name = self.builder.name
        self._sources: dict = {}

    @property
    def splits(self) -> list[str]:
        return list(self.builder.info.splits.keys())

    def _split_names(self, split: str) -> list[str]:
        names = [s.strip() for s in split.split("+") if s.strip()]
        for s in names:
            if s not in self.splits:
                raise ValueError(
                    f"dataset {self.name!r} at {self.dir} has no split {s!r}; it has {self.splits}."
                )
        return names

    def source(self, split: str):
        """Random-access sequence of decoded records (dicts of numpy) for ``split`` ('a+b'
        allowed)."""
        if split not in self._sources:
            self._sources[split] = self.builder.as_data_source(split=split)
        return self._sources[split]

    def num_records(self, split: str) -> int:
        return sum(self.builder.info.splits[s].num_examples for s in self._split_names(split))

    def index(self, split: str) -> list[tuple[str, str, str, int]]:
        """(utterance, speaker, session, samples) rows of ``split`` in record order."""
        rows = []
        for s in self._split_names(split):
            text = (self.dir / "index" / f"{s}.tsv").read_text()
            for line in text.splitlines():
                u, spk, sess, n = line.split("\t")
                rows.append((u, spk, sess, int(n)))
        return rows

    @property
    def layout(self) -> dict:
        """{"train_split": split or None, "trials": {list name: split(s) of its utterances}}.
        Datasets built before layout.json existed: "train" (or VoxCeleb's "dev") if present,
        and each list's splits found from the index."""
        if "_layout" not in self.__dict__:
            path = self.dir / LAYOUT_FILE
            if path.exists():
                self._layout = json.loads(path.read_text())
            else:
                train = next((s for s in ("train", "dev") if s in self.splits), None)
                self._layout = {
                    "train_split": train,
                    "trials": {name: self._splits_holding(name) for name in self.trial_names()},
                }
        return self._layout

    def trial_split(self, name: str) -> str:
        """The split(s) ("a+b") holding the utterances of trial list ``name`` ("" if none)."""
        return self.layout["trials"].get(name) or self._splits_holding(name)

    def _splits_holding(self, name: str) -> str:
        if "_split_of" not in self.__dict__:
            self._split_of = {r[0]: s for s in self.splits for r in self.index(s)}
        used = set()
        if self.trial_path(name).exists():
            for line in self.trial_path(name).read_text().split("\n"):
                used.update(self._split_of[u] for u in line.split()[1:3] if u in self._split_of)
        return "+".join(s for s in self.splits if s in used)

    def trial_names(self) -> list[str]:
        d = self.dir / "trials"
        return sorted(p.stem for p in d.iterdir()) if d.exists() else []

    def trial_path(self, name: str) -> epath.Path:
        return self.dir / "trials" / f"{name}.txt"
