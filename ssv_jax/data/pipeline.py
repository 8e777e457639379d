"""Training input pipeline: two random crops per utterance plus each view's augmentation inputs,
built on the host as int16 and handed to the device (``ssv_jax.augment`` converts them).

Determinism and resume: batch k is a pure function of (seed, k), built from scratch by
``BatchBuilder(k)``, so starting at ``start_step=s`` yields exactly batches s, s+1, ... of an
uninterrupted run, with no iterator state to save or restore:

* the record order is Grain's ``MapDataset.range(N).shuffle(seed).repeat()`` (a new permutation
  of the N records every epoch, computed per index, so nothing is materialised); global batch k
  is its positions [k*G, (k+1)*G) with k counted over whole epochs (epoch e = k // steps_per_epoch
  starts at position e*N; the last N mod G records of an epoch are left out of that epoch only);
* process p of P takes rows [p*G/P, (p+1)*G/P) of it and reads only those records;
* every random draw of the batch (crop offsets, noise on/off, category, SNR, clips and their
  offsets, babble size, RIR on/off and which) comes from one ``default_rng([seed, 11, k])``
  drawn for all G rows, then sliced: the global batch does not depend on the number of processes.

Workers: ``num_workers`` = 0 builds each batch in the calling thread when it is asked for; W > 0
builds them ahead in W spawned Grain worker processes (``mp_prefetch``: worker w builds steps
start+w, start+w+W, ...), each into a reused shared-memory slot (``ssv_jax.data.slots``). The
batches are the same whatever W. The audio is read from flat int16 copies of the splits
(``ssv_jax.data.pcm``), memory-mapped: a crop is a slice, and the page cache holds each file
once per host however many workers read it.

Augmentation inputs per view: a noise crop of the view's length from a category drawn uniformly
(speech = babble: 3-7 speech clips, each at unit RMS, summed and scaled by its peak to the int16
range), the SNR drawn from that category's range, and an RIR from its peak (the direct path)
truncated or zero-padded to L samples (the device normalises it to unit energy). Where a view has
no noise, its noise is zeros; with no RIR, its RIR is a delta.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
from typing import Iterator

import numpy as np

from ssv_jax.data import batch as batch_spec
from ssv_jax.data import pool, slots

log = logging.getLogger("ssv_jax")

CATEGORY_IDS = {"noise": 0, "speech": 1, "music": 2}


def _check_batch(global_batch: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(
            f"global_batch {global_batch} does not split over {process_count} processes; use a "
            f"positive multiple of {process_count}."
        )
    return global_batch // process_count


def steps_per_epoch(data_cfg, global_batch: int) -> int:
    """Full global batches in one epoch of the training split (the remainder is dropped)."""
    from ssv_jax.data import datasets  # not at import: it loads TFDS (the workers need none)

    ds = datasets.open_dataset(data_cfg, data_cfg.name)
    split = datasets.train_split(data_cfg)
    n = ds.num_records(split)
    if n < global_batch:
        raise ValueError(
            f"split {split!r} of {data_cfg.name!r} has {n} utterances, fewer than one global "
            f"batch of {global_batch}; lower the batch size or use a bigger dataset."
        )
    return n // global_batch


def _shuffle_seed(seed: int) -> int:
    """Grain's shuffle takes a 32-bit seed; any int seed maps to one."""
    return int(np.random.SeedSequence([int(seed), 7]).generate_state(1)[0])


def _index(u: np.ndarray, n) -> np.ndarray:
    """Uniform floats in [0, 1) -> ints in [0, n) (n broadcastable)."""
    return np.minimum((u * n).astype(np.int64), np.asarray(n, np.int64) - 1)


def _crop(x: np.ndarray, start: int, out: np.ndarray) -> None:
    """``out[:] = x[start : start + T]`` of ``x`` repeated cyclically (wrap-padding)."""
    T, n = out.shape[-1], x.size
    if n == 0:
        out[:] = 0
    elif start + T <= n:
        out[:] = x[start : start + T]
    else:
        np.take(x, np.arange(start, start + T), out=out, mode="wrap")


# Where the builder puts a batch: a worker's ring of reused shared-memory slots (set up by
# _worker_init), else new arrays.
_RING_SLOTS = 0
_RING: slots.Ring | None = None


def _empty(B: int, T: int, L: int):
    """(what the builder returns, the arrays it writes): a ring slot's handle and arrays where a
    slot is free, else a new batch."""
    global _RING
    if _RING_SLOTS:
        if _RING is None or _RING.shape != (B, T, L):
            _RING = slots.Ring(_RING_SLOTS, B, T, L)
        got = _RING.acquire()
        if got is not None:
            return got
    out = {k: np.empty(s, batch_spec.SPEC[k].dtype) for k, s in batch_spec.shapes(B, T, L).items()}
    return out, out


@dataclasses.dataclass
class BatchBuilder:
    """``builder(k)``: this process's part of global batch k (see the module docstring). Picklable
    (sent to the worker processes), with the flat copies of the splits it reads."""

    seed: int
    process_index: int
    process_count: int
    global_batch: int
    steps_per_epoch: int
    T: int  # samples per view
    L: int  # RIR samples (1: no RIR bank)
    overlap: bool
    utterances: object  # pcm.PCM of the training split
    noise: dict  # category -> pcm.PCM, in augment.categories order
    rirs: object  # pcm.PCM or None
    noise_prob: float
    rir_prob: float
    snr: dict  # category -> (low, high) dB
    babble: tuple  # (min, max) clips

    def __post_init__(self):
        self.B = _check_batch(self.global_batch, self.process_count)
        self._setup()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    def _setup(self):
        self._order = None  # the Grain record order, made on first use (in each process)
        self._peaks: dict = {}  # RIR index -> sample of its peak
        self._lengths = self.utterances.lengths
        self._cats = tuple(self.noise)
        # per drawn category index: its id and SNR range (one dummy entry without a noise bank)
        self._cat_ids = np.array([CATEGORY_IDS[c] for c in self._cats] or [-1])
        self._snr_lo = np.array([self.snr[c][0] for c in self._cats] or [0.0])
        self._snr_hi = np.array([self.snr[c][1] for c in self._cats] or [0.0])

    def indices(self, step: int) -> np.ndarray:
        """Record indices of this process's rows of global batch ``step``."""
        if self._order is None:
            import grain  # not at import: loading it costs a second, and a config check needs none

            n = len(self.utterances)
            self._order = grain.MapDataset.range(n).shuffle(seed=_shuffle_seed(self.seed)).repeat()
        epoch, j = divmod(int(step), self.steps_per_epoch)
        start = epoch * len(self.utterances) + j * self.global_batch + self.process_index * self.B
        return np.array([self._order[p] for p in range(start, start + self.B)], np.int64)

    def _draws(self, step: int) -> dict:
        """Every random draw of global batch ``step``, for all G rows, sliced to this process's."""
        G, nb = self.global_batch, max(self.babble[1], 1) if self._cats else 1
        rng = np.random.default_rng([self.seed, 11, int(step)])
        d = {
            "crop": rng.random((G, 3)),
            "noise_on": rng.random((G, 2)) < self.noise_prob,
            "cat": rng.integers(0, max(len(self._cats), 1), (G, 2)),
            "snr": rng.random((G, 2)),
            "babble": rng.integers(self.babble[0], self.babble[1] + 1, (G, 2)),
            "clip": rng.random((G, 2, nb)),
            "clip_at": rng.random((G, 2, nb)),
            "rir_on": rng.random((G, 2)) < self.rir_prob,
            "rir": rng.random((G, 2)),
        }
        lo = self.process_index * self.B
        return {k: v[lo : lo + self.B] for k, v in d.items()}

    def _crop_starts(self, n: np.ndarray, u: np.ndarray) -> np.ndarray:
        """[B, 2] view offsets in utterances of ``n`` samples (wrap-padded to what the crops
        need): independent draws, or (overlap=False) a non-overlapping pair in random order."""
        T = self.T
        if self.overlap:
            m = np.maximum(n, T)
            return _index(u[:, :2], (m - T + 1)[:, None])
        m = np.maximum(n, 2 * T)
        x = np.sort(_index(u[:, :2], (m - 2 * T + 1)[:, None]), axis=1)
        a, b = x[:, 0], x[:, 1] + T
        swap = u[:, 2] < 0.5
        return np.stack([np.where(swap, b, a), np.where(swap, a, b)], axis=1)

    def _clip_crop(self, bank, u_clip: float, u_at: float, out: np.ndarray) -> None:
        x = bank.audio(int(_index(np.float64(u_clip), len(bank))))
        T = out.shape[-1]
        _crop(x, int(_index(np.float64(u_at), max(x.size, T) - T + 1)), out)

    def _babble(self, bank, k: int, u_clip, u_at, scratch, out: np.ndarray) -> None:
        """The sum of k clips each at unit RMS, scaled by its peak to the int16 range."""
        clips = scratch[:k]
        for j in range(k):
            self._clip_crop(bank, u_clip[j], u_at[j], clips[j])
        rms = np.sqrt(np.einsum("kt,kt->k", clips, clips) / clips.shape[1]) + 1e-8
        mix = np.dot(1.0 / rms, clips)
        peak = float(np.max(np.abs(mix)))
        if peak > 0:
            np.multiply(mix, np.float32(32767.0 / peak), out=mix)
            out[:] = mix  # truncated towards zero
        else:
            out[:] = 0

    def _rir(self, u: float, out: np.ndarray) -> None:
        i = int(_index(np.float64(u), len(self.rirs)))
        h = self.rirs.audio(i)
        if i not in self._peaks:
            self._peaks[i] = int(np.argmax(np.abs(h))) if h.size else 0
        h = h[self._peaks[i] :][: self.L]
        out[: h.size] = h
        out[h.size :] = 0

    def __call__(self, step: int):
        """Batch ``step`` of this process: a dict of arrays (``batch.SPEC``), or in a worker a
        ``slots.Handle`` of a slot holding it. Every element is written."""
        B, T, L = self.B, self.T, self.L
        result, out = _empty(B, T, L)
        idx = self.indices(step)
        d = self._draws(step)
        out["index"][:] = idx
        starts = self._crop_starts(self._lengths[idx], d["crop"])
        out["crop_start"][:] = starts
        for s, i in enumerate(idx):
            x = self.utterances.audio(int(i))
            _crop(x, int(starts[s, 0]), out["views"][s, 0])
            _crop(x, int(starts[s, 1]), out["views"][s, 1])
        noise_on = d["noise_on"] if self._cats else np.zeros((B, 2), bool)
        out["noise_on"][:] = noise_on
        lo, hi = self._snr_lo[d["cat"]], self._snr_hi[d["cat"]]
        out["snr_db"][:] = np.where(noise_on, lo + (hi - lo) * d["snr"], 0.0)
        out["noise_category"][:] = np.where(noise_on, self._cat_ids[d["cat"]], -1)
        scratch = None
        for s, v in zip(*np.nonzero(noise_on)):
            cat, o = self._cats[d["cat"][s, v]], out["noise"][s, v]
            if cat == "speech":
                if scratch is None:
                    scratch = np.empty((self.babble[1], T), np.float32)
                k = int(d["babble"][s, v])
                self._babble(self.noise[cat], k, d["clip"][s, v], d["clip_at"][s, v], scratch, o)
            else:
                self._clip_crop(self.noise[cat], d["clip"][s, v, 0], d["clip_at"][s, v, 0], o)
        out["noise"][~noise_on] = 0
        rir_on = d["rir_on"] if self.rirs is not None else np.zeros((B, 2), bool)
        out["rir_on"][:] = rir_on
        for s, v in zip(*np.nonzero(rir_on)):
            self._rir(d["rir"][s, v], out["rir"][s, v])
        out["rir"][~rir_on] = 0
        out["rir"][..., 0][~rir_on] = 1  # a delta
        return result


def builder_for(data_cfg, *, global_batch: int, seed: int, process_index: int, process_count: int):
    """The ``BatchBuilder`` of ``data_cfg``'s training split and banks (flat copies written on
    first use)."""
    from ssv_jax.data import datasets  # not at import (see steps_per_epoch)
    from ssv_jax.data.pcm import flat_pcm

    pi, pc = int(process_index), int(process_count)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index {pi} is not in [0, {pc}).")
    _check_batch(int(global_batch), pc)
    dsets = datasets.ensure_dataset(data_cfg)
    ds = dsets[data_cfg.name]
    sr = int(data_cfg.sample_rate)
    T = int(round(data_cfg.crop_seconds * sr))
    if T <= 0:
        raise ValueError(f"crop_seconds={data_cfg.crop_seconds} gives no samples.")
    aug = data_cfg.augment
    on = bool(aug.enabled)
    noise = {}
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
                    f"{bank.splits}. Remove {cat!r} from augment.categories or rebuild the bank."
                )
            noise[cat] = flat_pcm(bank, cat)
    rirs = flat_pcm(dsets[aug.rir_bank], "train") if on and aug.rir_bank else None
    return BatchBuilder(
        seed=int(seed),
        process_index=pi,
        process_count=pc,
        global_batch=int(global_batch),
        steps_per_epoch=steps_per_epoch(data_cfg, int(global_batch)),
        T=T,
        L=int(round(aug.rir_seconds * sr)) if rirs is not None else 1,
        overlap=bool(data_cfg.overlap),
        utterances=flat_pcm(ds, datasets.train_split(data_cfg)),
        noise=noise,
        rirs=rirs,
        noise_prob=float(aug.noise_prob) if noise else 0.0,
        rir_prob=float(aug.rir_prob) if rirs is not None else 0.0,
        snr={c: tuple(map(float, aug[f"snr_{c}"])) for c in CATEGORY_IDS},
        babble=tuple(int(b) for b in aug.babble),
    )


# ----------------------------------------------------------------- worker processes, the iterator


def _worker_init(trainer: int, n_slots: int, worker_index: int, worker_count: int) -> None:
    """In each worker: leave SIGINT/SIGTERM to the trainer (pid ``trainer``: it stops the workers
    itself), build into ``n_slots`` reused slots, and exit when the trainer is gone, even if it
    was killed."""
    global _RING_SLOTS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _RING_SLOTS = int(n_slots) if slots.supported() else 0
    pool.exit_with_parent(trainer)


def _mark_flags_parsed() -> None:
    """Grain reads its absl flags when it starts workers; outside an absl app (tests, scripts)
    they are unparsed, and their defaults are what is meant."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def train_batches(
    data_cfg,
    *,
    global_batch: int,
    seed: int | None = None,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_steps: int | None = None,
    consumer_holds: int = 2,
) -> Iterator[dict]:
    """Iterator of this process's batches (dicts of numpy arrays, ``batch.SPEC``) from
    ``start_step``.

    B = global_batch // process_count. Batch i of an iterator started at ``start_step=s``
    equals batch s+i of one started at 0, whatever ``data_cfg.num_workers``. ``num_steps``: stop
    after this many batches (default: endless, epoch after epoch). Close the iterator (or let it
    end) to stop its workers. A worker that dies raises ``RuntimeError``. ``consumer_holds``: how
    many batches the caller keeps alive at once; each worker keeps that many slots spare for them
    (a slot's memory is only touched once it is used).
    """
    import jax  # not at import: the worker processes import this module and need no JAX

    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    seed = int(data_cfg.seed if seed is None else seed)
    build = builder_for(
        data_cfg, global_batch=global_batch, seed=seed, process_index=pi, process_count=pc
    )
    start = int(start_step)
    stop = start + int(num_steps) if num_steps is not None else 2**62
    W = int(data_cfg.num_workers)
    if W <= 0:
        for k in range(start, stop):
            yield build(k)
        return
    import grain

    _mark_flags_parsed()
    ahead = max(int(data_cfg.prefetch), 1)
    # A worker's slots: the batch it builds, its queue and as many read ahead on the trainer's
    # side of it (Grain's), and those the consumer holds. Unused slots cost no memory.
    n_slots = 1 + 2 * ahead + int(consumer_holds)
    ds = (
        grain.MapDataset.range(start, stop)
        .map(build)
        .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        .mp_prefetch(
            grain.MultiprocessingOptions(num_workers=W, per_worker_buffer_size=ahead),
            worker_init_fn=functools.partial(_worker_init, os.getpid(), n_slots),
        )
    )
    it = iter(ds)
    reader, warned = slots.Reader(), not slots.supported()
    try:
        for got in it:
            if isinstance(got, slots.Handle):
                yield reader.take(got)
                continue
            if not warned:
                warned = True
                log.warning(
                    "the consumer holds every batch slot of the data workers (%d each): "
                    "batches now come through Grain's shared memory, one copy more each. "
                    "Release batches sooner, or pass a larger consumer_holds.",
                    n_slots,
                )
            yield got
    finally:
        it.close()
