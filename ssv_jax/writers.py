"""Metric writers: TensorBoard event files (clu) plus concise console lines."""

from __future__ import annotations

import logging
import sys

import jax
from clu import metric_writers
from clu.metric_writers.logging_writer import LoggingWriter


class ConsoleWriter(LoggingWriter):
    """Scalars as one line per step on stdout (through tqdm.write, so a progress bar survives)."""

    def write_scalars(self, step, scalars):
        from tqdm import tqdm

        parts = [f"{k} {float(v):.4g}" for k, v in sorted(scalars.items())]
        tqdm.write(f"step {step:>6} | " + " | ".join(parts), file=sys.stdout)
        sys.stdout.flush()

    def write_hparams(self, hparams):
        del hparams  # the resolved config is in WORKDIR/config.json


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """Process 0: TensorBoard + console; other processes: nothing written."""
    if jax.process_index() > 0:
        return metric_writers.MultiWriter([])
    return metric_writers.MultiWriter([metric_writers.SummaryWriter(workdir), ConsoleWriter()])


def setup_console_logging(level=logging.INFO, process_index: int = 0) -> None:
    """ssv_jax's own messages to stderr; library chatter (Orbax, TF, absl INFO) stays quiet.
    Processes other than 0 log only warnings and errors, marked with their index."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    log = logging.getLogger("ssv_jax")
    tag = f" [process {process_index}]" if process_index else ""
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"%(asctime)s ssv_jax{tag}: %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    log.setLevel(level if process_index == 0 else max(level, logging.WARNING))
    log.propagate = False
