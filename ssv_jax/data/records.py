"""Datasets on disk: the record format, where a dataset lives, and its two readers.

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
``writer.write_dataset`` writes them all (``builder`` holds the TFDS builder).

The reader is ``Dataset`` (TFDS: decoded records, the index, the trial lists); the training
pipeline reads flat int16 copies of its splits instead (``ssv_jax.data.pcm``, written from
``Dataset.source``). Importing this module loads no TensorFlow: ``_tf`` does, when a dataset is
opened or written.
"""

from __future__ import annotations

import json
import re

import numpy as np
from etils import epath

from ssv_jax.errors import UserError

VERSION = "1.0.0"
COMPLETE_MARK = "ssv_jax_complete"
LAYOUT_FILE = "layout.json"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class DatasetExistsError(UserError, FileExistsError):
    """The dataset is already built and ``overwrite`` was not asked for."""


def _tf():
    """Import TensorFlow with the accelerator hidden from it (JAX owns it)."""
    import tensorflow as tf  # not at import: worker processes import this module, must not load TF

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: nothing to hide any more
        pass
    return tf


def _tfds():
    _tf()
    import tensorflow_datasets as tfds  # not at import, as in _tf

    return tfds


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
