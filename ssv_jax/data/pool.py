"""``ordered_map``: a function over items in spawned worker processes, results in item order.

Used by the dataset builds (decoding audio files, rendering the synthetic corpus). Spawned, not
forked: the caller may run TensorFlow or JAX threads, which a fork would copy mid-flight. Spawn
imports the calling script again in each worker, so a script that builds datasets needs an
``if __name__ == "__main__":`` guard (every script of this project has one).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator


class WorkerError:
    """``fn(item)`` raised: its message, returned in place of the result (the caller decides)."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self):
        return f"WorkerError({self.message!r})"


def _call(fn, item):
    try:
        return fn(item)
    except Exception as err:  # reported to the caller, never silently dropped
        return WorkerError(f"{type(err).__name__}: {err}")


def _init():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def ordered_map(fn: Callable, items: Iterable[Any], num_workers: int = 2) -> Iterator[Any]:
    """``fn(item)`` for each item, in order, computed in ``num_workers`` processes (in this one
    if it is 1 or less). ``fn`` must be a module-level function; at most 4 results per worker
    wait in memory."""
    items = list(items)
    if num_workers <= 1 or len(items) < 2:
        for it in items:
            yield _call(fn, it)
        return
    W = min(int(num_workers), len(items))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(W, mp_context=ctx, initializer=_init) as pool:
        pending, todo = collections.deque(), iter(items)
        try:
            for it in todo:
                pending.append(pool.submit(_call, fn, it))
                if len(pending) >= 4 * W:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
