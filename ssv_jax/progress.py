"""Progress of long waits (training, dataset builds, embedding, export): a tqdm bar on a
terminal, otherwise a log line every ``every_s`` seconds with the count, the rate and the time
left, e.g. ``embed: 1200/4874 utt (25%), 41.3 utt/s, ETA 01:29``. Only process 0 reports."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

log = logging.getLogger("ssv_jax.progress")

EVERY_S = 30.0


def _process_zero() -> bool:
    jax = sys.modules.get("jax")  # never import jax (dataset builds run without it)
    return jax is None or jax.process_index() == 0


def clock_time(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour."""
    s = int(round(max(seconds, 0.0)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"


class Progress:
    """Counts ``update(n)`` towards ``total`` (None: unknown, no ETA).

    ``bar``: None picks a tqdm bar when stderr is a terminal; ``enabled=False`` reports nothing.
    ``every_s`` (default ``EVERY_S``): seconds between lines; 0 logs every update (for a few long
    stages). ``clock``: for tests.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        unit: str = "it",
        initial: int = 0,
        enabled: bool = True,
        bar: bool | None = None,
        every_s: float | None = None,
        clock=time.monotonic,
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.n = self.n0 = initial
        self.on = enabled and _process_zero()
        self.every_s, self.clock = EVERY_S if every_s is None else every_s, clock
        self.t0 = self.t_last = clock()
        self.lines = 0
        self.bar = None
        if self.on and (sys.stderr.isatty() if bar is None else bar):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def line(self) -> str:
        """The periodic line for the count so far."""
        elapsed = self.clock() - self.t0
        rate = (self.n - self.n0) / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {clock_time((self.total - self.n) / rate)}"
        return text + f", {clock_time(elapsed)} elapsed"

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if not self.on:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)
            return
        now = self.clock()
        if now - self.t_last >= self.every_s:
            extra = "".join(f", {k} {_short(v)}" for k, v in postfix.items())
            log.info("%s%s", self.line(), extra)
            self.t_last, self.lines = now, self.lines + 1

    def close(self) -> None:
        """Close the bar; without one, a last line where periodic lines were written."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.on and self.lines and self.n > self.n0:
            log.info("%s: %d %s done in %s", self.desc, self.n, self.unit, self.elapsed())
            self.lines = 0

    def elapsed(self) -> str:
        return clock_time(self.clock() - self.t0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def track(items: Iterable, desc: str, total: int | None = None, *, unit: str = "it") -> Iterator:
    """``items``, reporting progress as they are consumed (``total``: ``len(items)`` if known)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(desc, total, unit=unit) as p:
        for x in items:
            p.update(1)  # counted as handed out: a consumer that stops at the last one saw it all
            yield x


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
