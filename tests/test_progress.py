"""Progress reporting: the periodic line (count, rate, ETA), its cadence, builds using it."""

import logging
import re

import pytest

from ssv_jax import progress
from ssv_jax.progress import Progress, clock_time, track


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="ssv_jax.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "ssv_jax.progress"]


def test_clock_time():
    assert clock_time(0) == "00:00" and clock_time(89.6) == "01:30"
    assert clock_time(3 * 3600 + 61) == "3:01:01" and clock_time(-5) == "00:00"


def test_periodic_lines_with_rate_and_eta(lines):
    clock = Clock()
    p = Progress("embed", 400, unit="utt", bar=False, every_s=30, clock=clock)
    clock.t += 10
    p.update(100)  # 10 s < 30 s: nothing yet
    assert lines() == []
    clock.t += 30
    p.update(100, loss=0.123456)
    # 200 utt in 40 s: 5 utt/s, 200 left -> 40 s
    assert lines() == ["embed: 200/400 utt (50%), 5 utt/s, ETA 00:40, 00:40 elapsed, loss 0.1235"]
    clock.t += 5
    p.update(100)  # 5 s after the last line: nothing
    assert len(lines()) == 1
    clock.t += 5
    p.update(100)
    p.close()
    assert lines()[1:] == ["embed: 400 utt done in 00:50"]


def test_resumed_count_rate_and_unknown_total(lines):
    clock = Clock()
    p = Progress("train", 1000, unit="step", initial=600, bar=False, every_s=0, clock=clock)
    clock.t += 20
    p.update(100)  # rate counts only this run's steps
    assert lines() == ["train: 700/1000 step (70%), 5 step/s, ETA 01:00, 00:20 elapsed"]
    q = Progress("read", unit="file", bar=False, every_s=0, clock=clock)
    clock.t += 4
    q.update(2)
    assert lines()[-1] == "read: 2 file, 0.5 file/s, 00:04 elapsed"


def test_quiet_when_short_or_disabled(lines, monkeypatch):
    clock = Clock()
    with Progress("export", 3, bar=False, clock=clock) as p:  # default cadence, quick job
        p.update(3)
    off = Progress("train", 10, enabled=False, bar=False, every_s=0, clock=clock)
    clock.t += 1
    off.update(5)
    off.close()
    assert lines() == [] and off.n == 5
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # the default cadence is read at run time
    assert list(track(iter("abc"), "read", 3, unit="file")) == ["a", "b", "c"]
    assert [m.split(",")[0] for m in lines()] == [
        "read: 1/3 file (33%)",
        "read: 2/3 file (67%)",
        "read: 3/3 file (100%)",
        "read: 3 file done in 00:00",
    ]


def test_tty_bar(monkeypatch):
    import io

    from tqdm import tqdm

    out = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", out)
    bars = []
    real = tqdm.__init__

    def init(self, *a, **k):
        real(self, *a, file=out, **k)
        bars.append(self)

    monkeypatch.setattr(tqdm, "__init__", init)
    with Progress("train", 8, unit="step", initial=2, bar=True) as p:
        p.update(3, loss=1.5)
    assert bars[0].n == 5 and bars[0].total == 8
    assert "train" in out.getvalue() and "5/8" in out.getvalue()


def test_dataset_build_reports_files(tmp_path, lines, monkeypatch):
    import numpy as np
    import soundfile as sf

    from ssv_jax.data import prep

    for s in range(2):
        for u in range(3):
            d = tmp_path / "audio" / f"spk{s}" / "sess0"
            d.mkdir(parents=True, exist_ok=True)
            sf.write(d / f"u{u}.wav", np.full(3200, 1000 * (s + 1), np.int16), 16000)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    prep.build_folder(str(tmp_path / "audio"), str(tmp_path / "tfds"), "tiny", num_workers=1)
    done = [m for m in lines() if re.match(r"tiny/train: \d+/\d+ file \(100%\)", m)]
    assert len(done) == 1 and done[0].startswith("tiny/train: 6/6 file")
