"""Bad input to data_prep/folder.py and dataset rebuilds: bad files are skipped and reported, bad
trial lists and builds with nothing usable stop with a one-line message (exit status 2), and a
dataset that was there is never lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from data_prep import _cli, folder
from ssv_jax.data import audio, datasets, prep, records, synthetic
from ssv_jax.errors import UserError
from tests.test_data import tiny_cfg

NAME = "voices"


def _tone(seconds, sr, f0=220.0):
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def _write(path, x, sr=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, sr, subtype="PCM_16")


def _folder(root, speakers=2, utts=2):
    """spkS/sess0/uU.wav, 0.5 s each at 16 kHz."""
    for s in range(speakers):
        for u in range(utts):
            _write(str(root / f"spk{s}" / "sess0" / f"u{u}.wav"), _tone(0.5, 16000, 150 + 40 * s))


def _corrupt(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(3000))


def _build(audio_dir, data_dir, *flags):
    return folder.main(
        [f"--audio_dir={audio_dir}", f"--data_dir={data_dir}", f"--name={NAME}", "--num_workers=1"]
        + list(flags)
    )


def _run(capsys, audio_dir, data_dir, *flags):
    """folder.py as its command line runs it: (exit status, the lines starting with "error:")."""
    capsys.readouterr()
    try:
        _cli.run(lambda: _build(audio_dir, data_dir, *flags))
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("error:")]


def _dataset(data_dir):
    return records.Dataset(records.find_version_dir(str(data_dir), NAME))


def _leftovers(data_dir):
    return sorted(p for p in os.listdir(data_dir) if p.startswith("."))


def _stored(data_dir):
    """{utterance id: int16 audio} of split "train"."""
    ds = _dataset(data_dir)
    src = ds.source("train")
    return {r[0]: src[i]["audio"] for i, r in enumerate(ds.index("train"))}


# ----------------------------------------------------------------------------- bad files


def test_corrupt_file_is_skipped_and_reported(tmp_path):
    _folder(tmp_path / "audio")
    _corrupt(str(tmp_path / "audio" / "spk0" / "sess0" / "broken.wav"))
    s = _build(tmp_path / "audio", tmp_path / "data")
    assert s.written == {"train": 4}
    assert "broken.wav: unreadable" in s.report()
    saved = json.loads(
        (records.find_version_dir(str(tmp_path / "data"), NAME) / "prep_summary.json").read_text()
    )
    [(key, why)] = saved["skipped"]["train"]
    assert key.endswith("broken.wav") and why.startswith("unreadable")
    assert len(_stored(tmp_path / "data")) == 4


def test_zero_length_file_is_skipped_and_reported(tmp_path):
    _folder(tmp_path / "audio")
    _write(str(tmp_path / "audio" / "spk1" / "sess0" / "silent.wav"), np.zeros(0, np.float32))
    s = _build(tmp_path / "audio", tmp_path / "data")
    assert s.written == {"train": 4}
    assert [why for _, why in s.skipped["train"]] == ["empty (0 samples)"]
    assert "empty: 1" in s.report()


def test_other_sample_rates_are_resampled_to_16k(tmp_path):
    _folder(tmp_path / "audio")
    _write(str(tmp_path / "audio" / "spk0" / "sess0" / "low.wav"), _tone(1.0, 8000, 440), 8000)
    _write(str(tmp_path / "audio" / "spk1" / "sess0" / "cd.wav"), _tone(0.5, 44100, 440), 44100)
    s = _build(tmp_path / "audio", tmp_path / "data")
    assert s.written == {"train": 6} and not s.skipped["train"]
    stored = _stored(tmp_path / "data")
    for utt, seconds in (("spk0/sess0/low.wav", 1.0), ("spk1/sess0/cd.wav", 0.5)):
        x = stored[utt].astype(np.float64)
        assert abs(x.size - seconds * 16000) <= 1
        assert abs(np.argmax(np.abs(np.fft.rfft(x))) * 16000 / x.size - 440) < 3


def test_stereo_is_averaged_to_mono(tmp_path):
    _folder(tmp_path / "audio")
    left = _tone(0.5, 16000, 300)
    path = tmp_path / "audio" / "spk0" / "sess0" / "stereo.wav"
    sf.write(path, np.stack([left, 0.5 * left], axis=1), 16000, subtype="FLOAT")
    _build(tmp_path / "audio", tmp_path / "data")
    got = _stored(tmp_path / "data")["spk0/sess0/stereo.wav"]
    assert got.ndim == 1
    np.testing.assert_allclose(got, audio.to_pcm16(0.75 * left), atol=1)


# ----------------------------------------------------------------------------- trial lists


@pytest.mark.parametrize("line", ["1 spk1/sess0/u0.wav", "yes spk1/sess0/u0.wav spk1/sess0/u1.wav"])
def test_malformed_trial_line_stops_before_building(tmp_path, capsys, line):
    _folder(tmp_path / "audio")
    _build(tmp_path / "audio", tmp_path / "data")
    before = _dataset(tmp_path / "data")
    trials = tmp_path / "my_trials.txt"
    trials.write_text(f"1 spk1/sess0/u0.wav spk1/sess0/u1.wav\n{line}\n")
    with pytest.raises(UserError, match="line 2"):
        _build(tmp_path / "audio", tmp_path / "data", f"--trials={trials}", "--overwrite")
    code, [msg] = _run(
        capsys, tmp_path / "audio", tmp_path / "data", f"--trials={trials}", "--overwrite"
    )
    assert code == 2
    assert str(trials) in msg and "line 2" in msg and "'label enroll test'" in msg
    assert _dataset(tmp_path / "data").dir == before.dir
    assert _dataset(tmp_path / "data").num_records("train") == 4
    assert _leftovers(tmp_path / "data") == []


def test_trial_naming_a_missing_utterance_is_dropped(tmp_path):
    _folder(tmp_path / "audio")
    trials = tmp_path / "my_trials.txt"
    trials.write_text(
        "1 spk1/sess0/u0.wav spk1/sess0/u1.wav\n0 spk1/sess0/u0.wav spk1/sess0/nope.wav\n"
    )
    s = _build(tmp_path / "audio", tmp_path / "data", f"--trials={trials}")
    assert "spk1/sess0/nope.wav: missing utterance" in s.report()
    stored = _dataset(tmp_path / "data").trial_path("my_trials").read_text()
    assert stored == "1 spk1/sess0/u0.wav spk1/sess0/u1.wav\n"


def test_trial_list_with_every_trial_dropped_fails(tmp_path, capsys):
    _folder(tmp_path / "audio")
    trials = tmp_path / "my_trials.txt"
    trials.write_text("1 spk1/sess0/u0.wav spk1/sess0/gone.wav\n")
    code, [msg] = _run(capsys, tmp_path / "audio", tmp_path / "data", f"--trials={trials}")
    assert code == 2 and "my_trials" in msg and "spk1/sess0/gone.wav" in msg
    assert records.find_version_dir(str(tmp_path / "data"), NAME) is None
    assert os.listdir(tmp_path / "data") == []


# ----------------------------------------------------------------------------- rebuilds


def test_existing_dataset_is_refused_without_overwrite(tmp_path, capsys):
    _folder(tmp_path / "audio")
    _build(tmp_path / "audio", tmp_path / "data")
    code, [msg] = _run(capsys, tmp_path / "audio", tmp_path / "data")
    assert code == 2 and "already exists" in msg and "--overwrite" in msg
    with pytest.raises(records.DatasetExistsError):
        _build(tmp_path / "audio", tmp_path / "data")


def test_failed_overwrite_keeps_the_old_dataset(tmp_path, capsys):
    _folder(tmp_path / "audio")
    _build(tmp_path / "audio", tmp_path / "data")
    for k in range(3):
        _corrupt(str(tmp_path / "bad" / "spk0" / "sess0" / f"x{k}.wav"))
    code, [msg] = _run(capsys, tmp_path / "bad", tmp_path / "data", "--overwrite")
    assert code == 2
    assert "no usable record" in msg and "3 files skipped" in msg and "unreadable: 3" in msg
    assert "unchanged" in msg
    assert sorted(_stored(tmp_path / "data")) == [
        f"spk{s}/sess0/u{u}.wav" for s in (0, 1) for u in (0, 1)
    ]
    assert os.listdir(tmp_path / "data") == [NAME]


def test_interrupted_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    _folder(tmp_path / "audio")
    _build(tmp_path / "audio", tmp_path / "data")
    _folder(tmp_path / "audio", speakers=3)
    decode, calls = prep.decode_item, []

    def interrupted(args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return decode(args)

    monkeypatch.setattr(prep, "decode_item", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "audio", tmp_path / "data", "--overwrite")
    assert len(_stored(tmp_path / "data")) == 4
    assert os.listdir(tmp_path / "data") == [NAME]


def test_overwrite_replaces_the_dataset_and_leaves_nothing_behind(tmp_path):
    _folder(tmp_path / "audio")
    _build(tmp_path / "audio", tmp_path / "data")
    _folder(tmp_path / "audio", speakers=3, utts=3)
    s = _build(tmp_path / "audio", tmp_path / "data", "--overwrite")
    assert s.written == {"train": 9} and s.path == str(_dataset(tmp_path / "data").dir)
    assert len(_stored(tmp_path / "data")) == 9
    assert os.listdir(tmp_path / "data") == [NAME]


def test_next_build_cleans_up_after_an_interrupted_swap(tmp_path, capsys):
    """A build killed between moving the old dataset aside and moving the new one in: the next
    build puts the old one back (and is then refused without --overwrite) and removes the rest."""
    _folder(tmp_path / "audio")
    _build(tmp_path / "audio", tmp_path / "data")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    data = tmp_path / "data"
    os.rename(data / NAME, data / f".{NAME}.old-{pid}-0a1b")
    os.makedirs(data / f".{NAME}.building-{pid}-2c3d" / NAME / "1.0.0")
    code, [msg] = _run(capsys, tmp_path / "audio", data)
    assert code == 2 and "already exists" in msg
    assert os.listdir(data) == [NAME] and len(_stored(data)) == 4


def test_failed_synthetic_rebuild_keeps_the_old_corpus(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    cfg.synthetic.num_workers = 1
    old = datasets.ensure_dataset(cfg, ["synthetic"])["synthetic"]
    old_size, old_rows = datasets.size_from_config(cfg), old.index("train")
    cfg.synthetic.train_speakers = 5
    render, calls = synthetic.render_utterance, []

    def failing(args):
        calls.append(args)
        if len(calls) == 4:
            raise RuntimeError("renderer broke")
        return render(args)

    monkeypatch.setattr(synthetic, "render_utterance", failing)
    with pytest.raises(Exception, match="renderer broke"):
        datasets.ensure_dataset(cfg, ["synthetic"])
    assert datasets._synthetic_current(str(tmp_path), old_size, "synthetic")
    again = records.Dataset(records.find_version_dir(str(tmp_path), "synthetic"))
    assert again.index("train") == old_rows
    assert os.listdir(tmp_path) == ["synthetic"]
