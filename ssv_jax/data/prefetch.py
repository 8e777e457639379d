"""Training batches built ahead in worker subprocesses, handed out zero-copy.

``train_batches`` with ``num_workers`` = W > 0 builds its batches in W worker subprocesses
(``ssv_jax.data.workers.WorkerPool``; processes, not threads: the builder is Python and
numpy code that holds the GIL, so threads ran one at a time). Worker w runs
``pipeline._batch_worker`` and builds steps start+w, start+w+W, ... straight into shared
memory, at most max(prefetch, W) steps ahead; batches come out in step order, zero-copy
(``_parallel_batches``). A slot of shared memory holds one batch (``_slot_layout``).
"""

from __future__ import annotations

import collections
import os
import weakref
from typing import TYPE_CHECKING

import numpy as np

from ssv_jax.data import batch as batch_spec
from ssv_jax.data import workers as workers_lib

if TYPE_CHECKING:
    from ssv_jax.data.pipeline import TrainStream


def _slot_layout(B: int, T: int, L: int) -> tuple[dict, int]:
    """{field: (byte offset, shape, dtype)} of one batch in a shared-memory slot, and the slot's
    size (fields 64-byte aligned)."""
    layout, off = {}, 0
    for k, shape in batch_spec.shapes(B, T, L).items():
        dt = np.dtype(batch_spec.SPEC[k].dtype)
        layout[k] = (off, shape, dt)
        off += -(-int(np.prod(shape, dtype=np.int64)) * dt.itemsize // 64) * 64
    return layout, off


def _slot_arrays(buf, slot: int, layout: dict, slot_bytes: int) -> dict:
    return {
        k: np.ndarray(shape, dt, buffer=buf, offset=slot * slot_bytes + off)
        for k, (off, shape, dt) in layout.items()
    }


def _lease(buf, slot: int, layout: dict, slot_bytes: int, free) -> dict:
    """Batch arrays that ARE shared-memory slot ``slot`` (no copy); the slot goes back to
    ``free`` once none of them (nor any view of them) is referenced any more."""
    base = np.frombuffer(buf, np.uint8, slot_bytes, slot * slot_bytes)
    weakref.finalize(base, free.append, slot)
    return {
        k: np.ndarray(shape, dt, buffer=base, offset=off) for k, (off, shape, dt) in layout.items()
    }


def _parallel_batches(stream: TrainStream, start: int, stop: int, workers: int, prefetch: int):
    """Batches start..stop-1 built by ``workers`` subprocesses, in step order.

    Step s goes to worker (s - start) % W, which builds it into a free shared-memory slot; at
    most ``ahead`` = max(prefetch, W) steps are submitted beyond the one being read. A finished
    batch is handed out zero-copy (its arrays are the slot, returned to the pool when the
    consumer drops them) while another slot is free for the builders; otherwise (the consumer
    keeps many batches) it is copied out and its slot freed at once. There are ahead + 2 slots:
    enough for a consumer that holds the previous batch while asking for the next one never to
    wait for a copy."""
    W = int(workers)
    ahead = max(int(prefetch), W)
    n_slots = ahead + 2
    layout, slot_bytes = _slot_layout(stream.B, stream.T, stream.L)
    size = n_slots * slot_bytes
    fd, buf = workers_lib.shared_memory(size)
    free = collections.deque(range(n_slots))  # appended to by lease finalizers (any thread)
    pending = collections.deque()  # (step, slot) submitted, in step order
    nxt = start
    pool = None

    def submit():
        nonlocal nxt
        while nxt < stop and len(pending) < ahead and free:
            slot = free.popleft()
            pool.submit((nxt - start) % W, (nxt, slot))
            pending.append((nxt, slot))
            nxt += 1

    try:
        init = (stream.spec, fd, size, layout, slot_bytes)
        # The workers' side lives beside TrainStream, which it builds from the spec.
        pool = workers_lib.WorkerPool("ssv_jax.data.pipeline:_batch_worker", [init] * W, fd)
        for s in range(start, stop):
            submit()
            step, slot = pending.popleft()
            got = pool.result((s - start) % W)
            if isinstance(got, workers_lib.WorkerError) or got != s or step != s:
                raise RuntimeError(f"data worker {(s - start) % W} failed to build step {s}: {got}")
            if free:
                out = _lease(buf, slot, layout, slot_bytes, free)
            else:
                out = {k: v.copy() for k, v in _slot_arrays(buf, slot, layout, slot_bytes).items()}
                free.append(slot)
            submit()
            yield out
    finally:
        if pool is not None:
            pool.close()
        try:
            buf.close()
        except BufferError:  # batches handed out zero-copy are still alive: they keep the map
            pass
        os.close(fd)
