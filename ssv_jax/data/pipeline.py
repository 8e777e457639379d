"""Training input pipeline: two random crops per utterance plus each view's augmentation inputs.

Determinism and resume: batch k is a pure function of (seed, k), computed
from scratch, so starting at ``start_step=s`` yields exactly batches s, s+1, ...
of an uninterrupted run, with nothing to skip or restore:

* epoch e = k // steps_per_epoch uses the permutation
  ``default_rng([seed, 7, e]).permutation(N)`` of the split's N records
  (random access: the datasets are array_record);
* global batch k is positions [j*G, (j+1)*G) of that permutation
  (j = k mod steps_per_epoch, G = global batch; the last N mod G records of
  an epoch are left out of that epoch only);
* process p of P takes slots [p*G/P, (p+1)*G/P) (disjoint, and together
  complete), and reads only those records;
* every random draw for a slot (crop offsets, noise category, clips, crops,
  SNR, RIR, on/off) comes from ``default_rng([seed, 11, k, slot])`` with the
  GLOBAL slot index, so the global batch does not depend on the number of
  processes.

tf.data runs the batch builder (numpy) in ``num_workers`` parallel map calls,
keeps step order (deterministic=True) and prefetches.

Crops: ``overlap=True`` draws the two offsets independently (utterances
shorter than one crop are wrap-padded, i.e. repeated cyclically).
``overlap=False`` (paper era) wrap-pads to at least two crops and draws a
pair of non-overlapping crops uniformly over all such pairs, in random order.

Augmentation inputs per view (consumed by ssv_jax.augment on the device):
a noise crop of the view's length from a category drawn uniformly
(speech = babble, the sum of 3-7 speech clips each at unit RMS), the SNR drawn
from that category's range, and an RIR trimmed to start at its peak (direct
path), normalised to unit energy, truncated/zero-padded to L samples.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Iterator

import numpy as np

from ssv_jax.data import batch as batch_spec
from ssv_jax.data import datasets, records

log = logging.getLogger("ssv_jax.data")

CATEGORY_IDS = {"noise": 0, "speech": 1, "music": 2}


def _check_batch(global_batch: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(
            f"global_batch {global_batch} does not split over {process_count} processes; use a "
            "positive "
            f"multiple of {process_count}."
        )
    return global_batch // process_count


def steps_per_epoch(data_cfg, global_batch: int) -> int:
    """Full global batches in one epoch of the training split (the remainder is dropped)."""
    ds = datasets.open_dataset(data_cfg, data_cfg.name)
    split = datasets.train_split(data_cfg)
    n = ds.num_records(split)
    if n < global_batch:
        raise ValueError(
            f"split {split!r} of {data_cfg.name!r} has {n} utterances, fewer than one global "
            f"batch of {global_batch}; lower the batch size or use a bigger dataset."
        )
    return n // global_batch


def wrap_pad(x: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``x`` cyclically up to at least ``length`` samples (unchanged if already long
    enough)."""
    if x.size >= length:
        return x
    if x.size == 0:
        return np.zeros(length, x.dtype)
    return np.resize(x, length)


def crop_pair(n: int, T: int, overlap: bool, rng: np.random.Generator) -> tuple[int, int]:
    """Start offsets of the two views in an utterance of ``n`` samples (already wrap-padded)."""
    if overlap:
        a, b = rng.integers(0, n - T + 1, size=2)
        return int(a), int(b)
    free = n - 2 * T
    u = np.sort(rng.integers(0, free + 1, size=2))
    a, b = int(u[0]), int(u[1]) + T
    return (a, b) if rng.random() < 0.5 else (b, a)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class TrainStream:
    """Builds batch k of this process from scratch (see the module docstring)."""

    def __init__(
        self, data_cfg, *, global_batch: int, seed: int, process_index: int, process_count: int
    ):
        self.cfg = data_cfg
        self.seed = int(seed)
        self.pi, self.pc = int(process_index), int(process_count)
        if not 0 <= self.pi < self.pc:
            raise ValueError(f"process_index {self.pi} is not in [0, {self.pc}).")
        self.G = int(global_batch)
        self.B = _check_batch(self.G, self.pc)
        dsets = datasets.ensure_dataset(data_cfg)
        self.ds = dsets[data_cfg.name]
        self.src = self.ds.source(datasets.train_split(data_cfg))
        self.N = len(self.src)
        self.steps_per_epoch = steps_per_epoch(data_cfg, self.G)
        sr = int(data_cfg.sample_rate)
        self.T = int(round(data_cfg.crop_seconds * sr))
        if self.T <= 0:
            raise ValueError(f"crop_seconds={data_cfg.crop_seconds} gives no samples.")
        self.overlap = bool(data_cfg.overlap)
        aug = data_cfg.augment
        on = bool(aug.enabled)
        self.noise_src = {}
        if on and aug.noise_bank:
            bank = dsets[aug.noise_bank]
            for cat in aug.categories:
                if cat not in CATEGORY_IDS:
                    raise ValueError(
                        f"augment.categories: unknown category {cat!r}; use noise, speech, music."
                    )
                if cat not in bank.splits:
                    raise ValueError(
                        f"noise bank {aug.noise_bank!r} ({bank.dir}) has no split {cat!r}; it has "
                        f"{bank.splits}. Remove {cat!r} from augment.categories or rebuild the "
                        "bank."
                    )
                self.noise_src[cat] = bank.source(cat)
        self.noise_p = float(aug.noise_prob) if self.noise_src else 0.0
        self.rir_src = dsets[aug.rir_bank].source("train") if on and aug.rir_bank else None
        self.rir_p = float(aug.rir_prob) if self.rir_src is not None else 0.0
        self.L = int(round(aug.rir_seconds * sr)) if self.rir_src is not None else 1
        self.snr = {c: tuple(map(float, aug[f"snr_{c}"])) for c in CATEGORY_IDS}
        self.babble = tuple(int(b) for b in aug.babble)
        self.cats = tuple(self.noise_src)
        self._orders: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- order ------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        with self._lock:
            return self._epoch_order(epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, 7, epoch]).permutation(self.N)
            while len(self._orders) > 3:
                self._orders.popitem(last=False)
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Record indices of this process's slots of global batch ``step``."""
        epoch, j = divmod(int(step), self.steps_per_epoch)
        start = j * self.G + self.pi * self.B
        return self.epoch_order(epoch)[start : start + self.B]

    # -- augmentation inputs ----------------------------------------------------------------------
    def _clip(self, src, rng, T) -> np.ndarray:
        rec = src[int(rng.integers(len(src)))]
        x = wrap_pad(rec["audio"].astype(np.float32) / 32768.0, T)
        o = int(rng.integers(0, x.size - T + 1))
        return x[o : o + T]

    def _noise(self, rng, T):
        cat = self.cats[int(rng.integers(len(self.cats)))]
        snr = rng.uniform(*self.snr[cat])
        if cat == "speech":
            k = int(rng.integers(self.babble[0], self.babble[1] + 1))
            y = np.zeros(T, np.float32)
            for _ in range(k):
                c = self._clip(self.noise_src[cat], rng, T)
                y += c / (np.sqrt(np.mean(c**2)) + 1e-8)
        else:
            y = self._clip(self.noise_src[cat], rng, T)
        return y, np.float32(snr), CATEGORY_IDS[cat]

    def _rir(self, rng) -> np.ndarray:
        rec = self.rir_src[int(rng.integers(len(self.rir_src)))]
        h = rec["audio"].astype(np.float32)
        h = h[int(np.argmax(np.abs(h))) :][: self.L] if h.size else h
        out = np.zeros(self.L, np.float32)
        out[: h.size] = h
        e = np.sqrt(np.sum(out**2))
        if e <= 0:
            out[0] = 1.0
            return out
        return out / e

    # -- one batch ------------------------------------------------------------------------------
    def batch(self, step: int) -> dict:
        B, T, L = self.B, self.T, self.L
        idx = self.indices(step)
        recs = self.src.__getitems__([int(i) for i in idx])
        out = batch_spec.empty(B, T, L)
        out["index"][:] = idx
        need = 2 * T if not self.overlap else T
        for s, rec in enumerate(recs):
            rng = np.random.default_rng([self.seed, 11, int(step), self.pi * B + s])
            x = wrap_pad(rec["audio"], need).astype(np.float32) / 32768.0
            a, b = crop_pair(x.size, T, self.overlap, rng)
            out["views"][s, 0] = x[a : a + T]
            out["views"][s, 1] = x[b : b + T]
            out["crop_start"][s] = (a, b)
            for v in range(2):
                if rng.random() < self.noise_p:
                    n, snr, cat = self._noise(rng, T)
                    out["noise"][s, v], out["snr_db"][s, v], out["noise_category"][s, v] = (
                        n,
                        snr,
                        cat,
                    )
                    out["noise_on"][s, v] = True
                if rng.random() < self.rir_p:
                    out["rir"][s, v] = self._rir(rng)
                    out["rir_on"][s, v] = True
        return out

    def _batch_tuple(self, step):
        b = self.batch(int(step))
        return tuple(b[k] for k in batch_spec.FIELDS)


def train_batches(
    data_cfg,
    *,
    global_batch: int,
    seed: int | None = None,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_steps: int | None = None,
) -> Iterator[dict]:
    """Iterator of this process's batches (dicts of numpy arrays, fixed shapes) from
    ``start_step``.

    B = global_batch // process_count; the fields, shapes and dtypes are
    ``ssv_jax.data.batch.SPEC``. Batch i of an iterator started at ``start_step=s`` equals
    batch s+i of one started at 0.
    ``num_steps``: stop after this many batches (default: endless, epoch after epoch).
    """
    import jax

    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    _check_batch(global_batch, pc)
    seed = int(data_cfg.seed if seed is None else seed)
    stream = TrainStream(
        data_cfg, global_batch=global_batch, seed=seed, process_index=pi, process_count=pc
    )
    stop = start_step + num_steps if num_steps is not None else 2**62
    workers = int(data_cfg.num_workers)
    if workers <= 0:
        for k in range(int(start_step), stop):
            yield stream.batch(k)
        return
    tf = records._tf()
    shapes = batch_spec.shapes(stream.B, stream.T, stream.L)
    dtypes = [tf.as_dtype(batch_spec.SPEC[k].dtype) for k in batch_spec.FIELDS]

    def make(step):
        outs = tf.numpy_function(stream._batch_tuple, [step], dtypes, stateful=False)
        return {k: tf.ensure_shape(o, shapes[k]) for k, o in zip(batch_spec.FIELDS, outs)}

    ds = tf.data.Dataset.range(int(start_step), stop)
    ds = ds.map(make, num_parallel_calls=workers, deterministic=True)
    ds = ds.prefetch(int(data_cfg.prefetch))
    opts = tf.data.Options()
    opts.deterministic = True
    opts.threading.private_threadpool_size = max(workers, 1)
    ds = ds.with_options(opts)
    yield from ds.as_numpy_iterator()
