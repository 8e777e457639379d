"""Ordered parallel map in worker subprocesses (no fork, no re-import of the caller's script).

``parallel_map("module:function", items, num_workers)`` yields ``function(item)``
in item order. Worker w gets items w, w+W, ... over its stdin and streams
pickled results back over its stdout; the parent reads them round-robin. Unlike
a multiprocessing spawn pool this never re-runs the calling script (safe from
scripts without an ``if __name__ == "__main__"`` guard) and, unlike fork, never
copies a process that runs TensorFlow or JAX threads. An exception inside
``function`` comes back as a ``WorkerError`` result (the caller decides).
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import threading
from typing import Any, Iterable, Iterator


class WorkerError:
    """``function(item)`` raised: the message, returned in place of the result."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self):
        return f"WorkerError({self.message!r})"


def _resolve(fn_path: str):
    mod, _, name = fn_path.partition(":")
    return getattr(importlib.import_module(mod), name)


def _call(fn, item):
    try:
        return fn(item)
    except Exception as err:  # reported to the parent, never silently dropped
        return WorkerError(f"{type(err).__name__}: {err}")


def parallel_map(fn_path: str, items: Iterable[Any], num_workers: int = 2) -> Iterator[Any]:
    items = list(items)
    if num_workers <= 1 or len(items) < 2:
        fn = _resolve(fn_path)
        for it in items:
            yield _call(fn, it)
        return
    W = min(num_workers, len(items))
    import ssv_jax

    root = os.path.dirname(os.path.dirname(os.path.abspath(ssv_jax.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ssv_jax.data.workers", fn_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(W)
    ]

    def feed(p, chunk):
        try:
            pickle.dump(chunk, p.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            p.stdin.close()
        except BrokenPipeError:
            pass

    feeders = [
        threading.Thread(target=feed, args=(p, items[w::W]), daemon=True)
        for w, p in enumerate(procs)
    ]
    for t in feeders:
        t.start()
    try:
        for i in range(len(items)):
            p = procs[i % W]
            try:
                yield pickle.load(p.stdout)
            except EOFError:
                raise RuntimeError(
                    f"data worker for {fn_path} died (exit code {p.wait()}); see its stderr above."
                )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()


def _main():
    fn = _resolve(sys.argv[1])
    items = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # prints from the function must not corrupt the result stream
    for it in items:
        pickle.dump(_call(fn, it), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    _main()
