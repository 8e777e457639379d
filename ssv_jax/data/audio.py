"""Audio file decoding and resampling (no TensorFlow; safe in worker processes).

``decode_file`` returns 16 kHz int16 PCM or a reason it could not: unreadable,
corrupt, empty or too-short files are reported, never raised, so that data
preparation can skip them with a warning and count them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from math import gcd
from typing import NamedTuple

import numpy as np
import soundfile as sf

AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".m4a",
    ".aac",
    ".mp3",
    ".mp4",
    ".opus",
    ".aiff",
    ".aif",
    ".sph",
)


class Decoded(NamedTuple):
    """Result of decoding one file: ``pcm`` (int16 [T] at the target rate) or ``error``."""

    pcm: np.ndarray | None
    error: str | None


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample float32 mono audio from ``sr_in`` to ``sr_out`` Hz (soxr, else polyphase)."""
    if sr_in == sr_out:
        return x
    try:
        import soxr  # optional: the fallback below works without it

        return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)
    except ImportError:  # pragma: no cover - soxr is a librosa dependency
        from scipy.signal import resample_poly  # only here: scipy.signal is slow to import

        g = gcd(sr_in, sr_out)
        return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def _read_pyav(av, path: str, sample_rate: int) -> np.ndarray:
    """Decode with PyAV: channels averaged (as for soundfile files), then ``resample``.

    AAC's encoder priming is dropped by the decoder; its end padding (< 1 frame) is
    cut to the duration the MP4 container declares.
    """
    with av.open(path) as container:
        if not container.streams.audio:
            raise RuntimeError("no audio stream")
        stream = container.streams.audio[0]
        resampler, sr_in, chunks = None, 0, []
        for frame in container.decode(stream):
            if resampler is None:  # planar float, first frame's layout and rate for the whole file
                sr_in = frame.sample_rate
                resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=sr_in)
            chunks += [out.to_ndarray() for out in resampler.resample(frame)]
        if resampler is not None:
            chunks += [out.to_ndarray() for out in resampler.resample(None)]  # flush
        if not chunks:
            return np.zeros(0, np.float32)
        x = np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)
        if stream.duration and stream.time_base and "mp4" in container.format.name:
            declared = int(round(float(stream.duration * stream.time_base) * sr_in))
            if 0 < x.size - declared <= 4096:  # encoder end padding only, never a real cut
                x = x[:declared]
    return resample(np.ascontiguousarray(x, np.float32), sr_in, sample_rate)


def _read_ffmpeg(path: str, sample_rate: int) -> np.ndarray:
    """Decode any format ffmpeg reads (m4a/AAC) to mono float32 at ``sample_rate`` (PyAV, else the
    ffmpeg command)."""
    try:
        import av  # optional (PyAV bundles ffmpeg's libraries), else the ffmpeg command
    except ImportError:
        av = None
    if av is not None:
        return _read_pyav(av, path, sample_rate)
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError(
            "this format needs ffmpeg: install the ffmpeg command (e.g. apt-get install ffmpeg) "
            "or PyAV (pip install av)"
        )
    proc = subprocess.run(
        [
            exe,
            "-v",
            "error",
            "-nostdin",
            "-i",
            path,
            "-f",
            "f32le",
            "-ac",
            "1",
            "-ar",
            str(sample_rate),
            "-",
        ],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace").strip()[-300:] or "ffmpeg failed")
    return np.frombuffer(proc.stdout, np.float32).copy()


FFMPEG_EXTENSIONS = (".m4a", ".aac", ".mp4", ".opus")


def check_decoder_for(paths) -> None:
    """Raise (before any work) if ``paths`` include formats that need ffmpeg and none is
    installed."""
    need = sorted({os.path.splitext(p)[1].lower() for p in paths} & set(FFMPEG_EXTENSIONS))
    if not need:
        return
    try:
        import av  # noqa: F401  (optional: as in _read_ffmpeg)

        return
    except ImportError:
        pass
    if shutil.which("ffmpeg") is None:
        raise RuntimeError(
            f"{', '.join(need)} files need an ffmpeg decoder and none is installed: install the "
            "ffmpeg command "
            "(e.g. apt-get install ffmpeg) or PyAV (pip install av), then rerun."
        )


def read_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
    """Read ``path`` as mono float32 in [-1, 1] at ``sample_rate`` (raises on failure)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in FFMPEG_EXTENSIONS:
        return _read_ffmpeg(path, sample_rate)
    try:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile cannot read it: try ffmpeg if present, else report
        if ext in (".wav", ".flac", ".ogg") or (shutil.which("ffmpeg") is None):
            raise RuntimeError(f"{type(err).__name__}: {err}") from None
        return _read_ffmpeg(path, sample_rate)
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return resample(np.ascontiguousarray(x, np.float32), int(sr), sample_rate)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> int16 (clipped)."""
    return np.clip(np.round(np.asarray(x, np.float32) * 32767.0), -32768, 32767).astype(np.int16)


def decode_file(
    path: str, sample_rate: int = 16000, min_seconds: float = 0.1, peak_normalise: bool = False
) -> Decoded:
    """Decode ``path`` to int16 PCM at ``sample_rate``; failures come back as
    ``Decoded(None, why)``.

    ``peak_normalise`` scales the audio to a peak of 1 first (RIRs: their scale is arbitrary).
    """
    try:
        x = read_audio(path, sample_rate)
    except Exception as err:  # corrupt / unreadable: reported, not raised
        return Decoded(
            None,
            f"unreadable ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})",
        )
    if x.size == 0:
        return Decoded(None, "empty (0 samples)")
    if not np.all(np.isfinite(x)):
        return Decoded(None, "corrupt (non-finite samples)")
    if x.size < min_seconds * sample_rate:
        return Decoded(
            None, f"too short ({x.size / sample_rate:.3f} s < min_seconds={min_seconds})"
        )
    if peak_normalise:
        x = x / max(float(np.max(np.abs(x))), 1e-9)
    return Decoded(to_pcm16(x), None)
