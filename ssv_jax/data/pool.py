"""``ordered_map``: a function over items in spawned worker processes, results in item order.

Used by the dataset builds (decoding audio files, rendering the synthetic corpus). Spawned, not
forked: the caller may run TensorFlow or JAX threads, which a fork would copy mid-flight. Spawn
imports the calling script again in each worker, so a script that builds datasets needs an
``if __name__ == "__main__":`` guard (every script of this project has one).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
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


def exit_with_parent(parent: int) -> None:
    """Make this worker process exit when its parent (pid ``parent``) is gone, even if it was
    killed: nobody would read what the worker makes, and a worker blocked writing to a queue
    that nobody reads would never exit by itself."""
    if sys.platform.startswith("linux"):  # the kernel kills this process when its parent dies
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before that call
            os._exit(0)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


# One BLAS / OpenMP thread per worker: the workers already use every core between them. Read
# when those libraries load, i.e. while a spawned worker imports the caller's modules, so the
# variables must be in the environment it starts with, not set by an initializer.
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _worker_env():
    """The workers' thread limits in this process's environment (which spawned children copy)
    while the pool is alive, then the environment as it was; a limit the user set is kept."""
    added = [k for k in _ONE_THREAD if k not in os.environ]
    os.environ.update({k: "1" for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


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
    with (
        _worker_env(),
        ProcessPoolExecutor(
            W, mp_context=ctx, initializer=exit_with_parent, initargs=(os.getpid(),)
        ) as pool,
    ):
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
