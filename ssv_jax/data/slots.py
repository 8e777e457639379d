"""Reused shared-memory slots that carry batches from the worker processes to the trainer.

A fresh shared-memory block per batch costs as much CPU as building the batch (page faults on
every page of 78 MiB, for the paper's batch). So each worker owns a ``Ring``: one anonymous
memory file (memfd) of ``n`` slots of one batch each, behind a header of one busy byte per slot.
A batch built into a free slot crosses to the trainer as a ``Handle`` (worker pid, descriptor,
slot); the trainer's ``Reader`` maps the worker's file once (through /proc) and hands out arrays
that ARE the slot, with no copy; a finalizer clears the busy byte once the last of them is
dropped. Where no slot is free, or no memfd exists (not Linux), the worker returns plain arrays
instead, which Grain sends as it sends any element. The memory is freed with the last process
that maps it: nothing is left behind when a worker or the trainer dies.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import weakref

import numpy as np

from ssv_jax.data import batch as batch_spec

HEADER = 64  # bytes: the busy flags, so at most 64 slots


def layout(B: int, T: int, L: int) -> tuple[dict, int]:
    """{field: (byte offset, shape, dtype)} of one batch in a slot, and the slot's size (every
    field 64-byte aligned)."""
    out, off = {}, 0
    for k, shape in batch_spec.shapes(B, T, L).items():
        dt = np.dtype(batch_spec.SPEC[k].dtype)
        out[k] = (off, shape, dt)
        off += -(-int(np.prod(shape, dtype=np.int64)) * dt.itemsize // 64) * 64
    return out, off


def _arrays(base, fields: dict) -> dict:
    return {
        k: np.ndarray(shape, dt, buffer=base, offset=off) for k, (off, shape, dt) in fields.items()
    }


@dataclasses.dataclass(frozen=True)
class Handle:
    """A batch in slot ``slot`` of the ring held by worker ``pid`` as descriptor ``fd``."""

    pid: int
    fd: int
    size: int
    slot: int
    shape: tuple  # (B, T, L)


class Ring:
    """A worker's slots (see the module docstring)."""

    def __init__(self, n_slots: int, B: int, T: int, L: int):
        if not 0 < n_slots <= HEADER:
            raise ValueError(f"n_slots must be in [1, {HEADER}], got {n_slots}.")
        self.n, self.shape = int(n_slots), (int(B), int(T), int(L))
        self.fields, self.slot_bytes = layout(B, T, L)
        self.size = HEADER + self.n * self.slot_bytes
        self.fd = os.memfd_create("ssv_jax-batches")
        os.ftruncate(self.fd, self.size)
        self.buf = mmap.mmap(self.fd, self.size)
        self.busy = np.ndarray((self.n,), np.uint8, buffer=self.buf)

    def acquire(self) -> tuple[Handle, dict] | None:
        """A free slot, marked busy: (its handle, its arrays); None if every slot is busy."""
        free = np.flatnonzero(self.busy == 0)
        if not free.size:
            return None
        s = int(free[0])
        self.busy[s] = 1
        base = HEADER + s * self.slot_bytes
        arrays = _arrays(memoryview(self.buf)[base : base + self.slot_bytes], self.fields)
        return Handle(os.getpid(), self.fd, self.size, s, self.shape), arrays


class Reader:
    """The trainer's side: maps each worker's ring once and hands out its slots as arrays."""

    def __init__(self):
        self._maps: dict = {}

    def take(self, h: Handle) -> dict:
        key = (h.pid, h.fd)
        if key not in self._maps:
            try:
                fd = os.open(f"/proc/{h.pid}/fd/{h.fd}", os.O_RDWR)
            except OSError as err:
                raise RuntimeError(
                    f"data worker {h.pid} died (terminated) before its batch was read ({err})."
                ) from err
            try:
                self._maps[key] = (mmap.mmap(fd, h.size), *layout(*h.shape))
            finally:
                os.close(fd)
        buf, fields, slot_bytes = self._maps[key]
        base = np.frombuffer(buf, np.uint8, slot_bytes, HEADER + h.slot * slot_bytes)
        busy = np.frombuffer(buf, np.uint8, 1, h.slot)
        weakref.finalize(base, busy.fill, 0)  # the slot is free once no array of it is left
        return _arrays(base, fields)


def supported() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
