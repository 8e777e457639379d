"""Many processes: joining the multi-controller runtime, and stopping all of them at one agreed
step when one is told to stop (preemption notice or Ctrl-C)."""

from __future__ import annotations

import logging
import signal

import jax

log = logging.getLogger("ssv_jax")


def initialize(coordinator_address=None, num_processes=None, process_id=None) -> None:
    """``jax.distributed.initialize``; arguments left None are detected from the environment
    (TPU VM metadata, SLURM, Open MPI) by JAX. Must run before any other JAX call. CPU
    processes exchange data through gloo collectives."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


class Interrupted(Exception):
    """Training stopped at a step boundary on a signal, after its checkpoint was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """While entered, SIGTERM and SIGINT ask the training loop to stop after the current step
    (a second Ctrl-C stops at once). ``due(step)`` says whether to stop after ``step``; every
    process gets the same answer at the same step.

    One process: its own signal handlers. Several processes: a SIGTERM reaches JAX's
    preemption service (started by ``jax.distributed.initialize``), which tells every process
    and picks the first step all of them can still stop at; Ctrl-C is forwarded to it as a
    SIGTERM of this process.
    """

    def __init__(self):
        self.signum = None
        self._saved = {}
        self._multi = jax.process_count() > 1

    def __enter__(self):
        handled = [signal.SIGINT] if self._multi else [signal.SIGTERM, signal.SIGINT]
        for s in handled:
            try:
                self._saved[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals are not ours to take
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._saved.items():
            signal.signal(s, h)
        self._saved.clear()

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
        self.signum = signum
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: stopping after this step with a checkpoint (again: at once)")
        else:
            log.warning("%s: stopping after this step with a checkpoint", name)
        if self._multi:
            signal.raise_signal(signal.SIGTERM)  # to JAX's preemption service

    def due(self, step: int) -> bool:
        """Whether every process is to stop after ``step`` (call once per step, in order)."""
        if not self._multi:
            return self.signum is not None
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            self.signum = self.signum or signal.SIGTERM
            return True
        return False

    def after_last_step(self) -> bool:
        """Whether this (single) process was told to stop after its loop had run its last
        step. Several processes stop together only at a step (``due``)."""
        return not self._multi and self.signum is not None
