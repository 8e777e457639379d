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

Workers: ``num_workers`` = 0 builds each batch in the calling thread when it is
asked for. ``num_workers`` = W > 0 builds them ahead in W worker subprocesses
(``prefetch``; each runs ``_batch_worker``). Batches are the same whatever W (each is a pure
function of (seed, k)). The workers read the array_record files directly,
without TensorFlow (``records.Records``), so they start in a fraction of a second.

Crops: two views per utterance, overlapping or not (``crops``).

Augmentation inputs per view (consumed by ssv_jax.augment on the device):
a noise crop of the view's length from a category drawn uniformly
(speech = babble, the sum of 3-7 speech clips each at unit RMS), the SNR drawn
from that category's range, and an RIR trimmed to start at its peak (direct
path), normalised to unit energy, truncated/zero-padded to L samples.
A bank split whose decoded audio fits ``BANK_CACHE_MB`` (the embedded banks: 25 MB
of noise clips in three splits, 13 MB of normalised RIRs) is kept in memory by each
builder process after its first read of each record; bigger ones (MUSAN: about
12 GB of int16 audio; 60,000 simulated RIRs: about 4 GB normalised) are read and
decoded on every draw, which costs a builder about three times as much per view
(bench/bench_data.py --bank_cache_mb=0).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import mmap
import os
import threading
import time
from typing import Iterator

import numpy as np

from ssv_jax.data import batch as batch_spec
from ssv_jax.data.crops import _pcm, crop_pair, wrap_pad
from ssv_jax.data.prefetch import _parallel_batches, _slot_arrays
from ssv_jax.data.records import Records

log = logging.getLogger("ssv_jax.data")

CATEGORY_IDS = {"noise": 0, "speech": 1, "music": 2}

# Per bank split and per builder process: a noise-bank split whose int16 audio, or an RIR bank
# whose normalised float32 RIRs (records x L x 4 bytes), fit this many MiB is cached in memory
# (so each worker holds at most this times the number of cached splits).
BANK_CACHE_MB = 256


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
    # Not at import: the worker processes import this module to build batches, and need none of
    # the dataset finding and building (it loads scipy and the corpus generator).
    from ssv_jax.data import datasets

    ds = datasets.open_dataset(data_cfg, data_cfg.name)
    split = datasets.train_split(data_cfg)
    n = ds.num_records(split)
    if n < global_batch:
        raise ValueError(
            f"split {split!r} of {data_cfg.name!r} has {n} utterances, fewer than one global "
            f"batch of {global_batch}; lower the batch size or use a bigger dataset."
        )
    return n // global_batch


# ----------------------------------------------------------------------------- the builder


@dataclasses.dataclass
class StreamSpec:
    """Everything a builder needs, picklable (sent to the worker processes)."""

    seed: int
    pi: int
    pc: int
    G: int
    B: int
    N: int
    steps_per_epoch: int
    T: int
    L: int
    overlap: bool
    src: Records
    noise_src: dict  # category -> Records
    noise_cache: dict  # category -> bool (cache the bank's clips)
    noise_p: float
    rir_src: Records | None
    rir_cache: bool
    rir_p: float
    snr: dict
    babble: tuple
    cats: tuple


# The builder's parts, as TrainStream.timings names them.
_PARTS = ("read utterances", "crop views", "noise clips: read", "noise: draw + crop + babble mix")
_PARTS += ("RIR: read + normalise", "rng + bookkeeping")


class TrainStream:
    """Builds batch k of this process from scratch (see the module docstring).

    ``timings``: set it to a dict to accumulate the builder's seconds per part (``_PARTS``)."""

    def __init__(
        self, data_cfg, *, global_batch: int, seed: int, process_index: int, process_count: int
    ):
        pi, pc = int(process_index), int(process_count)
        if not 0 <= pi < pc:
            raise ValueError(f"process_index {pi} is not in [0, {pc}).")
        G = int(global_batch)
        B = _check_batch(G, pc)
        from ssv_jax.data import datasets  # not at import (see steps_per_epoch)

        dsets = datasets.ensure_dataset(data_cfg)
        ds = dsets[data_cfg.name]
        split = datasets.train_split(data_cfg)
        sr = int(data_cfg.sample_rate)
        T = int(round(data_cfg.crop_seconds * sr))
        if T <= 0:
            raise ValueError(f"crop_seconds={data_cfg.crop_seconds} gives no samples.")
        aug = data_cfg.augment
        on = bool(aug.enabled)
        budget = BANK_CACHE_MB * 2**20
        noise_src, noise_cache = {}, {}
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
                noise_src[cat] = Records(bank, cat)
                noise_cache[cat] = 2 * sum(r[3] for r in bank.index(cat)) <= budget
        rir_src = Records(dsets[aug.rir_bank], "train") if on and aug.rir_bank else None
        L = int(round(aug.rir_seconds * sr)) if rir_src is not None else 1
        self.spec = StreamSpec(
            seed=int(seed),
            pi=pi,
            pc=pc,
            G=G,
            B=B,
            N=ds.num_records(split),
            steps_per_epoch=steps_per_epoch(data_cfg, G),
            T=T,
            L=L,
            overlap=bool(data_cfg.overlap),
            src=Records(ds, split),
            noise_src=noise_src,
            noise_cache=noise_cache,
            noise_p=float(aug.noise_prob) if noise_src else 0.0,
            rir_src=rir_src,
            rir_cache=rir_src is not None and len(rir_src) * L * 4 <= budget,
            rir_p=float(aug.rir_prob) if rir_src is not None else 0.0,
            snr={c: tuple(map(float, aug[f"snr_{c}"])) for c in CATEGORY_IDS},
            babble=tuple(int(b) for b in aug.babble),
            cats=tuple(noise_src),
        )
        self._setup()

    @classmethod
    def from_spec(cls, spec: StreamSpec) -> TrainStream:
        self = cls.__new__(cls)
        self.spec = spec
        self._setup()
        return self

    def _setup(self):
        s = self.spec
        self.seed, self.pi, self.pc, self.G, self.B = s.seed, s.pi, s.pc, s.G, s.B
        self.N, self.steps_per_epoch, self.T, self.L = s.N, s.steps_per_epoch, s.T, s.L
        self.overlap = s.overlap
        self.src, self.noise_src, self.rir_src = s.src, s.noise_src, s.rir_src
        self.noise_p, self.rir_p, self.snr, self.babble, self.cats = (
            s.noise_p,
            s.rir_p,
            s.snr,
            s.babble,
            s.cats,
        )
        self._noise_cache = {c: {} for c, on in s.noise_cache.items() if on}
        self._rir_cache = {} if s.rir_cache else None
        self._scratch = None
        self._orders: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.timings: dict | None = None

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
    def _tick(self, part: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[part] = self.timings.get(part, 0.0) + t - t0
        return t

    def _noise_audio(self, cat: str, i: int) -> np.ndarray:
        cache = self._noise_cache.get(cat)
        if cache is None:
            return self.noise_src[cat].audio(i)
        if i not in cache:
            cache[i] = np.array(self.noise_src[cat].audio(i))
        return cache[i]

    def _clip(self, cat, rng, T, out: np.ndarray) -> np.ndarray:
        """A random crop of T samples of a random clip of ``cat``, into ``out``."""
        t0 = time.perf_counter() if self.timings is not None else 0.0
        x = self._noise_audio(cat, int(rng.integers(len(self.noise_src[cat]))))
        if self.timings is not None:
            self._tick(_PARTS[2], t0)
        x = wrap_pad(x, T)
        o = int(rng.integers(0, x.size - T + 1))
        return _pcm(x[o : o + T], out)

    def _noise(self, rng, T, out: np.ndarray):
        """Draw a noise crop into ``out``; returns (SNR, category id)."""
        cat = self.cats[int(rng.integers(len(self.cats)))]
        snr = rng.uniform(*self.snr[cat])
        if cat == "speech":
            k = int(rng.integers(self.babble[0], self.babble[1] + 1))
            if self._scratch is None or self._scratch.shape[1] != T:
                self._scratch = np.empty((2, T), np.float32)
            c, sq = self._scratch
            out[:] = 0.0
            for _ in range(k):  # out += c / (rms(c) + 1e-8), without temporaries
                self._clip(cat, rng, T, c)
                c /= np.sqrt(np.mean(np.square(c, out=sq))) + 1e-8
                out += c
        else:
            self._clip(cat, rng, T, out)
        return np.float32(snr), CATEGORY_IDS[cat]

    def _rir_of(self, i: int) -> np.ndarray:
        h = self.rir_src.audio(i).astype(np.float32)
        h = h[int(np.argmax(np.abs(h))) :][: self.L] if h.size else h
        out = np.zeros(self.L, np.float32)
        out[: h.size] = h
        e = np.sqrt(np.sum(out**2))
        if e <= 0:
            out[0] = 1.0
            return out
        return out / e

    def _rir(self, rng) -> np.ndarray:
        i = int(rng.integers(len(self.rir_src)))
        if self._rir_cache is None:
            return self._rir_of(i)
        if i not in self._rir_cache:
            self._rir_cache[i] = self._rir_of(i)
        return self._rir_cache[i]

    # -- one batch ------------------------------------------------------------------------------
    def batch(self, step: int, out: dict | None = None) -> dict:
        """Batch ``step`` of this process: a new dict of arrays (``batch.SPEC``), or written into
        ``out`` (arrays of those shapes, whatever they hold: every element is written)."""
        B, T, L = self.B, self.T, self.L
        timed = self.timings is not None
        t0 = time.perf_counter() if timed else 0.0
        idx = self.indices(step)
        if out is None:
            out = batch_spec.empty(B, T, L)
        out["index"][:] = idx
        need = 2 * T if not self.overlap else T
        for s, i in enumerate(idx):
            rng = np.random.default_rng([self.seed, 11, int(step), self.pi * B + s])
            if timed:
                t0 = self._tick(_PARTS[5], t0)
            x = self.src.audio(int(i))
            if timed:
                t0 = self._tick(_PARTS[0], t0)
            x = wrap_pad(x, need)
            a, b = crop_pair(x.size, T, self.overlap, rng)
            _pcm(x[a : a + T], out["views"][s, 0])
            _pcm(x[b : b + T], out["views"][s, 1])
            out["crop_start"][s] = (a, b)
            if timed:
                t0 = self._tick(_PARTS[1], t0)
            for v in range(2):
                read0 = self.timings.get(_PARTS[2], 0.0) if timed else 0.0  # noise reads
                if rng.random() < self.noise_p:
                    snr, cat = self._noise(rng, T, out["noise"][s, v])
                    out["snr_db"][s, v], out["noise_category"][s, v] = snr, cat
                    out["noise_on"][s, v] = True
                else:
                    out["noise"][s, v] = 0.0
                    out["snr_db"][s, v], out["noise_category"][s, v] = 0.0, -1
                    out["noise_on"][s, v] = False
                if timed:  # the noise section less its reads (counted inside)
                    t0 = self._tick(_PARTS[3], t0 + self.timings.get(_PARTS[2], 0.0) - read0)
                if rng.random() < self.rir_p:
                    out["rir"][s, v] = self._rir(rng)
                    out["rir_on"][s, v] = True
                else:
                    out["rir"][s, v] = 0.0
                    out["rir"][s, v, 0] = 1.0
                    out["rir_on"][s, v] = False
                if timed:
                    t0 = self._tick(_PARTS[4], t0)
        return out


# ----------------------------------------------------------------- worker processes, the iterator


def _batch_worker(init):
    """Worker process setup (``WorkerPool``): a TrainStream from its spec, mapped onto the shared
    slots; each message (step, slot) builds that batch into that slot and answers the step."""
    spec, fd, size, layout, slot_bytes = init
    stream = TrainStream.from_spec(spec)
    buf = mmap.mmap(fd, size)
    os.close(fd)
    slots = {}

    def build(msg):
        step, slot = msg
        if slot not in slots:
            slots[slot] = _slot_arrays(buf, slot, layout, slot_bytes)
        stream.batch(step, out=slots[slot])
        return step

    return build


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
    batch s+i of one started at 0, whatever ``data_cfg.num_workers``.
    ``num_steps``: stop after this many batches (default: endless, epoch after epoch).
    """
    import jax  # not at import: the worker processes import this module and must not load JAX

    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    _check_batch(global_batch, pc)
    seed = int(data_cfg.seed if seed is None else seed)
    stream = TrainStream(
        data_cfg, global_batch=global_batch, seed=seed, process_index=pi, process_count=pc
    )
    start = int(start_step)
    stop = start + int(num_steps) if num_steps is not None else 2**62
    workers = int(data_cfg.num_workers)
    if workers <= 0:
        for k in range(start, stop):
            yield stream.batch(k)
        return
    yield from _parallel_batches(stream, start, stop, workers, int(data_cfg.prefetch))
