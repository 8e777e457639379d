"""m4a/AAC (VoxCeleb2's format) decoding through PyAV, and the VoxCeleb2 dev layout converter."""

from __future__ import annotations

import logging
import os
import runpy
import sys

import numpy as np
import pytest

from ssv_jax.data import audio, records

av = pytest.importorskip("av")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL_S = 0.1  # AAC priming / end padding tolerance on durations


def write_m4a(path, x: np.ndarray, sr: int) -> None:
    """Encode float audio ``x`` ([T] mono or [T, 2] stereo, in [-1, 1]) as AAC in an MP4 (.m4a)
    container."""
    x = np.asarray(x, np.float32)
    planar = np.ascontiguousarray(
        x[None, :] if x.ndim == 1 else x.T
    )  # [channels, T], AAC takes fltp
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        stream = c.add_stream("aac", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = sr, 0
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            c.mux(packet)


def dominant_hz(x: np.ndarray, sr: int) -> float:
    x = np.asarray(x, np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(x.size)))) * sr / x.size)


def tone(seconds: float, sr: int, hz: float = 440.0, amp: float = 1.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * hz * np.arange(int(round(seconds * sr))) / sr)


@pytest.mark.parametrize("target_sr", [16000, 8000])
def test_m4a_stereo_44k_tone_decodes_at_target_rate(tmp_path, target_sr):
    """1 s 440 Hz stereo AAC at 44.1 kHz -> mono at target_sr: duration, pitch, channel average."""
    p = tmp_path / "tone.m4a"
    t = tone(1.0, 44100)
    write_m4a(p, np.stack([0.6 * t, 0.2 * t], axis=1), 44100)
    with av.open(str(p)) as c:  # the file really is AAC in MP4 at 44.1 kHz stereo
        s = c.streams.audio[0]
        assert (s.codec_context.name, s.rate, s.channels) == (
            "aac",
            44100,
            2,
        ) and "mp4" in c.format.name
    x = audio.read_audio(str(p), target_sr)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size / target_sr - 1.0) <= TOL_S
    assert abs(dominant_hz(x, target_sr) - 440.0) < 3.0
    # Channels are averaged (as soundfile-read files are): amplitude (0.6 + 0.2) / 2 = 0.4, i.e. RMS
    # 0.283.
    # ffmpeg's default stereo->mono downmix (0.707 * (L + R)) would give RMS 0.40.
    mid = x[x.size // 4 : 3 * x.size // 4].astype(np.float64)
    np.testing.assert_allclose(np.sqrt(np.mean(mid**2)), 0.4 / np.sqrt(2), rtol=0.05)
    d = audio.decode_file(str(p), target_sr)
    assert d.error is None and d.pcm.dtype == np.int16 and d.pcm.size == x.size
    np.testing.assert_array_equal(d.pcm, audio.to_pcm16(x))


def test_m4a_16k_mono_keeps_rate_and_length(tmp_path):
    """VoxCeleb2's own format (16 kHz mono AAC): no resampling; priming dropped, end padding cut."""
    p = tmp_path / "v.m4a"
    t = tone(0.75, 16000, hz=300.0, amp=0.5)
    write_m4a(p, t, 16000)
    x = audio.read_audio(str(p), 16000)
    assert (
        x.size == t.size
    )  # priming skipped by the decoder, end padding cut to the MP4's declared duration
    assert abs(dominant_hz(x, 16000) - 300.0) < 3.0
    n = min(
        x.size, t.size
    )  # waveform matches the input (lossy codec: loose tolerance), so not shifted by priming
    mid = slice(n // 4, 3 * n // 4)
    assert np.sqrt(np.mean((x[mid] - t[mid]) ** 2)) < 0.05 * np.sqrt(np.mean(t[mid] ** 2)) + 1e-3


def test_m4a_junk_is_reported_not_raised(tmp_path):
    p = tmp_path / "junk.m4a"
    p.write_bytes(os.urandom(2000))
    d = audio.decode_file(str(p))
    assert d.pcm is None and d.error.startswith("unreadable")
    audio.check_decoder_for([str(p)])  # PyAV present: m4a builds are allowed


def test_voxceleb2_dev_layout(tmp_path, monkeypatch, caplog):
    """VoxCeleb2 dev/aac/idXXXXX/session/NNNNN.m4a -> dataset "voxceleb2" split dev; junk file
    skipped and counted."""
    root, out = tmp_path / "vox2", tmp_path / "tfds"
    aac = root / "dev" / "aac"
    lengths = {}
    k = 0
    for spk in ("id00012", "id00015"):
        for sess in ("21Uxsk56VDQ", "_z_BR0ERa9g"):
            for u in (1, 2) if spk == "id00012" else (1,):
                k += 1
                seconds = 0.4 + 0.1 * k
                rel = f"{spk}/{sess}/{u:05d}.m4a"
                write_m4a(aac / rel, tone(seconds, 16000, hz=200.0 + 50 * k, amp=0.3), 16000)
                lengths[rel] = (seconds, 200.0 + 50 * k)
    (aac / "id00015" / "_z_BR0ERa9g" / "00002.m4a").write_bytes(
        b"\x00\x00\x00\x18ftypM4A " + os.urandom(500)
    )
    monkeypatch.setattr(
        sys, "argv", ["voxceleb.py", f"--vox2_dir={root}", f"--data_dir={out}", "--num_workers=2"]
    )
    with caplog.at_level(logging.WARNING, logger="ssv_jax.data"):
        [summary] = runpy.run_path(
            os.path.join(REPO, "data_prep", "voxceleb.py"), run_name="__not_main__"
        )["main"]()
    assert summary.name == "voxceleb2" and summary.written == {"dev": 6}
    skipped = [
        (os.path.relpath(key, aac).replace(os.sep, "/"), why) for key, why in summary.skipped["dev"]
    ]
    assert len(skipped) == 1 and skipped[0][0] == "id00015/_z_BR0ERa9g/00002.m4a"
    assert skipped[0][1].startswith("unreadable")
    assert "00002.m4a" in caplog.text and "skipping" in caplog.text
    assert "1 skipped" in summary.report() and "unreadable: 1" in summary.report()

    ds = records.Dataset(records.find_version_dir(str(out), "voxceleb2"))
    rows = ds.index("dev")
    assert sorted(r[0] for r in rows) == sorted(lengths)
    assert {r[1] for r in rows} == {"id00012", "id00015"}
    assert {r[2] for r in rows} == {
        f"{s}/{e}" for s in ("id00012", "id00015") for e in ("21Uxsk56VDQ", "_z_BR0ERa9g")
    }
    src = ds.source("dev")
    for i, (utt, spk, sess, n) in enumerate(rows):
        seconds, hz = lengths[utt]
        assert abs(n / 16000 - seconds) <= TOL_S
        rec = src[i]
        assert (
            rec["utterance"].decode() == utt and rec["speaker"].decode() == spk == utt.split("/")[0]
        )
        assert rec["session"].decode() == sess == "/".join(utt.split("/")[:2])
        assert rec["audio"].dtype == np.int16 and rec["audio"].size == n
        assert (
            abs(dominant_hz(rec["audio"], 16000) - hz) < 3.0
        )  # each record holds its own file's audio
    np.testing.assert_allclose(
        summary.hours["dev"], sum(r[3] for r in rows) / 16000 / 3600, rtol=1e-6
    )
