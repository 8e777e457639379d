"""Worker subprocesses (no fork, no re-import of the caller's script).

``parallel_map("module:function", items, num_workers)`` yields ``function(item)``
in item order. Worker w gets items w, w+W, ... over its stdin and streams
pickled results back over its stdout; the parent reads them round-robin.

``WorkerPool("module:setup", inits)`` starts one long-lived worker per init
argument; each calls ``handler = setup(init)`` once, then answers every message
the parent sends it with ``handler(message)``, in order. Large results travel
through ``shared_memory`` (a file descriptor handed to the workers) rather than
the pipes: the train pipeline's workers write batches there and answer only
which step they wrote.

Unlike a multiprocessing spawn pool these never re-run the calling script (safe
from scripts without an ``if __name__ == "__main__"`` guard) and, unlike fork,
never copy a process that runs TensorFlow or JAX threads. An exception inside
``function`` (or ``setup``, or ``handler``) comes back as a ``WorkerError``
result (the caller decides).
"""

from __future__ import annotations

import importlib
import mmap
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import Any, Iterable, Iterator, Sequence

import ssv_jax


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


def _worker_env() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(ssv_jax.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def parallel_map(fn_path: str, items: Iterable[Any], num_workers: int = 2) -> Iterator[Any]:
    items = list(items)
    if num_workers <= 1 or len(items) < 2:
        fn = _resolve(fn_path)
        for it in items:
            yield _call(fn, it)
        return
    W = min(num_workers, len(items))
    env = _worker_env()
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


def shared_memory(nbytes: int) -> tuple[int, mmap.mmap]:
    """Anonymous shared memory of ``nbytes``: (file descriptor, this process's mapping). A
    memfd on Linux (RAM, not bounded by the size of /dev/shm, freed when the last descriptor
    and mapping go), else an unlinked temporary file. Hand the descriptor to workers with
    ``WorkerPool(..., pass_fd=fd)``; they map it with ``mmap.mmap(fd, nbytes)``."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ssv_jax_shared", os.MFD_CLOEXEC)
    else:
        fd, path = tempfile.mkstemp(prefix="ssv_jax_shared_")
        os.unlink(path)
    try:
        os.ftruncate(fd, nbytes)
        return fd, mmap.mmap(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise


class WorkerPool:
    """One long-lived worker subprocess per element of ``inits``.

    Worker w runs ``handler = setup(inits[w])`` (``setup_path`` = "module:function"), then
    answers each ``submit(w, message)`` with ``handler(message)``; ``result(w)`` returns worker
    w's answers in submission order (a ``WorkerError`` where ``setup`` or ``handler`` raised).
    ``pass_fd``: a file descriptor the workers inherit under the same number (shared memory).
    Messages and answers are pickled over pipes: keep them small. ``close()`` ends the
    workers (they also end by themselves when this process goes: their stdin closes).
    """

    def __init__(self, setup_path: str, inits: Sequence[Any], pass_fd: int | None = None):
        env = _worker_env()
        fds = () if pass_fd is None else (pass_fd,)
        self.procs = []
        self._ready = []
        try:
            for init in inits:
                p = subprocess.Popen(
                    [sys.executable, "-m", "ssv_jax.data.workers", "--serve", setup_path],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                    pass_fds=fds,
                )
                self.procs.append(p)
                self._ready.append(False)
                self._send(p, init)
        except BaseException:
            self.close()
            raise
        self.setup_path = setup_path

    def _send(self, p, obj):
        pickle.dump(obj, p.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        p.stdin.flush()

    def _recv(self, w: int):
        p = self.procs[w]
        try:
            return pickle.load(p.stdout)
        except EOFError:
            raise RuntimeError(
                f"data worker {w} ({self.setup_path}) died (exit code {p.wait()}); see its "
                "stderr above."
            ) from None

    def _check_ready(self, w: int):
        if not self._ready[w]:
            got = self._recv(w)
            if isinstance(got, WorkerError):
                raise RuntimeError(f"data worker {w} ({self.setup_path}) failed: {got.message}")
            self._ready[w] = True

    def submit(self, w: int, message: Any) -> None:
        try:
            self._send(self.procs[w], message)
        except BrokenPipeError:
            self._check_ready(w)  # a failed setup says why
            raise RuntimeError(f"data worker {w} ({self.setup_path}) is gone") from None

    def result(self, w: int) -> Any:
        self._check_ready(w)
        return self._recv(w)

    def close(self) -> None:
        for p in self.procs:  # workers hold no state worth keeping: no need to let them finish
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:  # BrokenPipeError flushing stdin
                    pass
        self.procs = []


def _serve(setup_path: str):
    # Ctrl-C and a preemption notice are the parent's: it finishes its step, then ends the
    # workers (or, if it dies, their input closes and they return).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # prints from the handler must not corrupt the answer stream

    def answer(obj):
        pickle.dump(obj, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    try:
        handler = _resolve(setup_path)(pickle.load(inp))
    except Exception:
        answer(WorkerError(traceback.format_exc()))
        return
    answer(None)
    while True:
        try:
            msg = pickle.load(inp)
        except EOFError:
            return
        try:
            got = handler(msg)
        except Exception:
            got = WorkerError(traceback.format_exc())
        try:
            answer(got)
        except BrokenPipeError:
            return


def _main():
    if sys.argv[1] == "--serve":
        return _serve(sys.argv[2])
    fn = _resolve(sys.argv[1])
    items = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # prints from the function must not corrupt the result stream
    for it in items:
        pickle.dump(_call(fn, it), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    # Run as ssv_jax.data.workers, not __main__, so that a WorkerError pickles under a name
    # the parent can load.
    from ssv_jax.data.workers import _main as main

    main()
