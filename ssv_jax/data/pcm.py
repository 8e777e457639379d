"""A split's audio as one flat int16 file, memory-mapped, so that a crop is a slice.

Reading a record from the array_record files costs a decompression and a parse (0.5-1.3 ms a
record); the training pipeline reads its utterances and its noise and RIR banks from a flat copy
instead. ``flat_pcm(ds, split)`` writes it once: ``pcm/<split>.int16`` (every record's audio,
back to back, in record order) and ``pcm/<split>.offsets.npy`` (int64 [N + 1]: record i is
samples [offsets[i], offsets[i+1])). It lives in the dataset's version directory, or, where that
is not a local writable directory, under ``~/.cache/ssv_jax/pcm/``. The copy costs as much disk
again as the audio; the page cache holds it once per host, shared by every worker process.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ssv_jax.errors import UserError
from ssv_jax.progress import track

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "ssv_jax", "pcm")


class DamagedRecordError(UserError, OSError):
    """A record file of a dataset cannot be read (truncated or corrupt)."""


class PCM:
    """Random access to the int16 audio of one flat copy. Pickles as its two paths; the file is
    mapped on first use."""

    def __init__(self, data_path: str, offsets_path: str):
        self.data_path, self.offsets_path = data_path, offsets_path
        self.offsets = np.load(offsets_path)
        self._map = None

    def __getstate__(self):
        return dict(self.__dict__, _map=None)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def audio(self, i: int) -> np.ndarray:
        """Record ``i``'s samples: a read-only view of the mapped file."""
        if self._map is None:
            n = int(self.offsets[-1])
            self._map = (
                np.memmap(self.data_path, np.int16, "r", shape=(n,)) if n else np.zeros(0, np.int16)
            )
        return self._map[self.offsets[i] : self.offsets[i + 1]]


def _record_files(ds, split: str) -> list[tuple[str, int, int]]:
    """(file, first record, end record) of each record file of ``split``, in record order."""
    rows, at = [], 0
    for s in ds._split_names(split):
        for fi in ds.builder.info.splits[s].file_instructions:
            rows.append((str(fi.filename), at, at + int(fi.take)))
            at += int(fi.take)
    return rows


def _damaged(ds, split: str, i: int | None, err: Exception) -> DamagedRecordError:
    files = _record_files(ds, split)
    names = [f for f, a, b in files if i is None or a <= i < b] or [f for f, _, _ in files]
    where = f"record {i} of " if i is not None else ""
    return DamagedRecordError(
        f"cannot read {where}split {split!r} of dataset {ds.name!r}: {', '.join(names)} is "
        f"damaged or truncated ({type(err).__name__}: {err}). Rebuild the dataset with its "
        "data_prep command (--overwrite)."
    )


def _location(ds) -> str:
    vdir = str(ds.dir)
    if os.path.isdir(vdir) and os.access(vdir, os.W_OK):
        return os.path.join(vdir, "pcm")
    from ssv_jax.data.records import COMPLETE_MARK

    mark = ds.dir / COMPLETE_MARK
    stamp = str(mark.stat().mtime) if mark.exists() else ""
    key = hashlib.sha256(f"{vdir}\0{stamp}".encode()).hexdigest()[:16]
    return os.path.join(CACHE_DIR, f"{ds.name}-{key}")


def flat_pcm(ds, split: str) -> PCM:
    """The flat copy of ``split`` (``'a+b'`` allowed) of dataset ``ds`` (a records.Dataset),
    written on first use from the dataset's records."""
    root = _location(ds)
    data, offsets = os.path.join(root, f"{split}.int16"), os.path.join(root, f"{split}.offsets.npy")
    if os.path.exists(offsets) and os.path.exists(data):
        return PCM(data, offsets)
    os.makedirs(root, exist_ok=True)
    n = ds.num_records(split)
    try:
        src = ds.source(split)
    except Exception as err:  # array_record reads a file's footer when it opens it
        raise _damaged(ds, split, None, err) from err
    tmp = f"{data}.tmp-{os.getpid()}"
    ends = np.zeros(n + 1, np.int64)
    with open(tmp, "wb") as f:
        for i in track(range(n), f"flat copy of {ds.name}/{split}", n, unit="record"):
            try:
                x = np.asarray(src[i]["audio"], np.int16)
            except Exception as err:
                f.close()
                os.remove(tmp)
                raise _damaged(ds, split, i, err) from err
            f.write(x.tobytes())
            ends[i + 1] = ends[i] + x.size
    os.replace(tmp, data)
    tmp = f"{offsets}.tmp-{os.getpid()}.npy"
    np.save(tmp, ends)
    os.replace(tmp, offsets)  # last: its presence marks a complete copy
    return PCM(data, offsets)
