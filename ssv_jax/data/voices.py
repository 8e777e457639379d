"""Synthetic voices: a procedural source-filter speech generator (numpy, no download).

Deterministic: every draw comes from ``np.random.default_rng`` seeded by (seed, role, ids)
(``_rng``); vectorised numpy.

* Speaker (physiology-like, fixed per speaker): vocal-tract length (all
  formants scaled by ``alpha`` 0.8-1.25), per-vowel formant offsets (+-15%),
  formant bandwidth scale, F0 level (correlated with tract length) and range,
  declination, spectral tilt of the glottal source, jitter, shimmer,
  breathiness, speaking rate, fricative colouring, nasal murmur, and a
  piriform-sinus-like spectral notch (2.5-6 kHz, 8-24 dB).
* Content: random phone-like sequences: vowels (9 qualities, formant targets
  smoothed into each other), nasals, liquids, voiceless fricatives (noise
  through a speaker-coloured band), plosives (closure + burst), pauses.
* Session (differs per recording, so that channel is not speaker): random
  smooth EQ (3-5 bumps of +-6 dB, +-3 dB/oct tilt), optional band limits, coloured
  noise floor at 25-45 dB SNR or mains hum, level; and small within-speaker
  drift (F0 +-0.75 semitones, rate, vocal effort).

Synthesis runs in the STFT domain (512-point frames, hop 128): the glottal
pulse train is analysed once, white noise is drawn directly as STFT frames,
each frame is shaped by the cascade-formant envelope times the channel curve,
then overlap-added.

A change to what it generates needs ``synthetic.GENERATOR_VERSION`` bumped, so that cached
corpora are rebuilt.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.fft as sfft

SR = 16000
N_FFT = 512
HOP = 128
_NB = N_FFT // 2 + 1
_FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SR).astype(np.float32)
_WIN = np.sqrt(np.hanning(N_FFT + 1)[:-1]).astype(np.float32)  # periodic sqrt-Hann, COLA at hop N/4

# Vowel formant targets F1-F3 (Hz) for a reference tract; F4, F5 fixed.
_VOWELS = np.array(
    [
        [270, 2290, 3010],
        [390, 1990, 2550],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [730, 1090, 2440],
        [570, 840, 2410],
        [300, 870, 2240],
        [440, 1020, 2240],
        [640, 1190, 2390],
    ],
    np.float32,
)
_F45 = np.array([3500.0, 4500.0], np.float32)
_NASAL = np.array([250, 1100, 2300, 3500, 4500], np.float32)
_LIQUIDS = np.array([[360, 1300, 1600, 3500, 4500], [310, 1050, 2700, 3500, 4500]], np.float32)
_FRICATIVES = np.array(
    [[6200, 1500], [3300, 1000], [5000, 3500], [4200, 2500]], np.float32
)  # centre, width


def _rng(*ids) -> np.random.Generator:
    return np.random.default_rng([int(i) for i in ids])


@dataclasses.dataclass(frozen=True)
class Speaker:
    alpha: float
    formant_offsets: np.ndarray  # [9 vowels, 3]
    bw_scale: float
    f0: float
    f0_range: float  # semitones
    declination: float  # semitones over the utterance
    tilt: float  # dB per octave of the glottal source above 150 Hz (negative)
    jitter: float
    shimmer: float
    breath: float
    rate: float
    fric_shift: float
    nasal_murmur: float
    notch_f: float  # piriform-sinus-like antiresonance (Hz)
    notch_depth: float  # dB


def make_speaker(seed: int, index: int) -> Speaker:
    r = _rng(seed, 1, index)
    alpha = float(np.exp(r.uniform(np.log(0.8), np.log(1.25))))
    # Shorter tracts (higher alpha) go with higher voices, with plenty of spread.
    f0 = float(
        np.exp(
            np.log(85)
            + (np.log(alpha) - np.log(0.8)) / (np.log(1.25) - np.log(0.8)) * np.log(260 / 85)
            + r.normal(0, 0.15)
        )
    )
    return Speaker(
        alpha=alpha,
        formant_offsets=r.uniform(-0.15, 0.15, (len(_VOWELS), 3)).astype(np.float32),
        bw_scale=float(r.uniform(0.7, 1.5)),
        f0=float(np.clip(f0, 70, 320)),
        f0_range=float(r.uniform(1.0, 4.0)),
        declination=float(r.uniform(-3.0, 0.0)),
        tilt=float(r.uniform(-8.0, -2.0)),
        jitter=float(r.uniform(0.003, 0.03)),
        shimmer=float(r.uniform(0.02, 0.12)),
        breath=float(r.uniform(0.01, 0.3)),
        rate=float(r.uniform(0.75, 1.3)),
        fric_shift=float(r.uniform(0.85, 1.15)),
        nasal_murmur=float(r.uniform(0.3, 1.0)),
        notch_f=float(r.uniform(2500, 6000) * np.sqrt(alpha)),
        notch_depth=float(r.uniform(8, 24)),
    )


@dataclasses.dataclass(frozen=True)
class Session:
    eq_centres: np.ndarray
    eq_gains: np.ndarray
    eq_widths: np.ndarray
    eq_tilt: float
    lowpass: float  # Hz, 0 = none
    highpass: float
    noise_snr: float
    noise_curve: np.ndarray  # [bins] dB colour of the noise floor
    hum: float  # 0 = none, else 50/60
    level_db: float
    f0_shift: float  # semitones
    rate_scale: float
    tilt_shift: float


def make_session(seed: int, speaker_index: int, session_index: int) -> Session:
    r = _rng(seed, 2, speaker_index, session_index)
    k = int(r.integers(3, 6))
    logf = np.log(np.maximum(_FREQS, 50.0))
    nc = r.uniform(np.log(200), np.log(7000), 3)
    noise_curve = (
        r.uniform(-12, 6, 3)[:, None] * np.exp(-0.5 * ((logf[None] - nc[:, None]) / 0.6) ** 2)
    ).sum(0)
    noise_curve += r.uniform(-6, 0) * np.log2(np.maximum(_FREQS, 100) / 100)
    return Session(
        eq_centres=np.exp(r.uniform(np.log(150), np.log(7000), k)).astype(np.float32),
        eq_gains=r.uniform(-6, 6, k).astype(np.float32),
        eq_widths=r.uniform(0.2, 0.8, k).astype(np.float32),
        eq_tilt=float(r.uniform(-3, 3)),
        lowpass=float(r.uniform(4500, 7500)) if r.random() < 0.2 else 0.0,
        highpass=float(r.uniform(80, 200)) if r.random() < 0.3 else 0.0,
        noise_snr=float(r.uniform(25, 45)),
        noise_curve=noise_curve.astype(np.float32),
        hum=float(r.choice([50.0, 60.0])) if r.random() < 0.2 else 0.0,
        level_db=float(r.uniform(-32, -18)),
        f0_shift=float(r.uniform(-0.75, 0.75)),
        rate_scale=float(r.uniform(0.95, 1.05)),
        tilt_shift=float(r.uniform(-1, 1)),
    )


def channel_curve_db(s: Session) -> np.ndarray:
    """The session's EQ and band limits as gain in dB on the STFT bins."""
    logf = np.log(np.maximum(_FREQS, 50.0))
    g = (
        s.eq_gains[:, None]
        * np.exp(-0.5 * ((logf[None] - np.log(s.eq_centres)[:, None]) / s.eq_widths[:, None]) ** 2)
    ).sum(0)
    g = g + s.eq_tilt * np.log2(np.maximum(_FREQS, 100) / 1000)
    if s.lowpass:
        g = g - 60.0 / (1 + np.exp(np.clip(-(_FREQS - s.lowpass) / 120.0, -50, 50)))
    if s.highpass:
        g = g - 40.0 / (1 + np.exp(np.clip((_FREQS - s.highpass) / 30.0, -50, 50)))
    return g.astype(np.float32)


def _stft(x: np.ndarray) -> np.ndarray:
    """[T] -> [frames, bins]; frame j covers x[j*HOP : j*HOP + N_FFT] (x padded by the caller)."""
    n = (x.size - N_FFT) // HOP + 1
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    return sfft.rfft(x[idx] * _WIN, axis=1).astype(np.complex64)


def _istft(X: np.ndarray, length: int) -> np.ndarray:
    frames = sfft.irfft(X, n=N_FFT, axis=1).astype(np.float32) * _WIN
    n = frames.shape[0]
    out = np.zeros((n + 3) * HOP, np.float32)
    r = N_FFT // HOP
    for j in range(r):  # overlap-add: frame i's j-th hop block lands at block i + j
        out[j * HOP : j * HOP + n * HOP] += frames[:, j * HOP : (j + 1) * HOP].reshape(-1)
    return out[:length] / 2.0  # sum of the squared sqrt-Hann windows at hop N/4 is 2


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average along axis 0 with edge padding."""
    if width <= 1:
        return x
    k = np.ones(width, np.float32) / width
    pad = width // 2
    xp = np.concatenate([np.repeat(x[:1], pad, 0), x, np.repeat(x[-1:], width - 1 - pad, 0)], 0)
    if x.ndim == 1:
        return np.convolve(xp, k, mode="valid").astype(np.float32)
    c = np.cumsum(np.concatenate([np.zeros((1,) + x.shape[1:], np.float32), xp], 0), 0)
    return ((c[width:] - c[:-width]) / width).astype(np.float32)


def _phone_tracks(spk: Speaker, r: np.random.Generator, n_frames: int, rate: float):
    """Frame-level control tracks: formants [n,5], voiced amp, noise amp, fricative centre/width."""
    F = np.zeros((n_frames, 5), np.float32)
    av = np.zeros(n_frames, np.float32)
    an = np.zeros(n_frames, np.float32)
    fc = np.full(n_frames, 4000.0, np.float32)
    fw = np.full(n_frames, 2000.0, np.float32)
    nasal = np.zeros(n_frames, np.float32)
    ms = SR / HOP / 1000.0  # frames per ms
    pos = int(r.integers(5, 25))  # leading silence
    last_vowel = _VOWELS[4]
    F[:pos] = np.concatenate([last_vowel, _F45]) * spk.alpha
    kinds = ("vowel", "nasal", "liquid", "fric", "plosive", "pause")
    probs = np.array([0.45, 0.09, 0.1, 0.15, 0.14, 0.07])
    while pos < n_frames:
        kind = kinds[int(r.choice(6, p=probs))]
        if kind == "vowel":
            v = int(r.integers(len(_VOWELS)))
            dur = r.uniform(70, 200)
            target = np.concatenate([_VOWELS[v] * (1 + spk.formant_offsets[v]), _F45]) * spk.alpha
            amp_v, amp_n = r.uniform(0.7, 1.0), 0.0
        elif kind == "nasal":
            dur = r.uniform(50, 90)
            target = _NASAL * spk.alpha
            amp_v, amp_n = 0.45 * spk.nasal_murmur + 0.1, 0.0
        elif kind == "liquid":
            dur = r.uniform(40, 80)
            target = _LIQUIDS[int(r.integers(2))] * spk.alpha
            amp_v, amp_n = 0.6, 0.0
        elif kind == "fric":
            dur = r.uniform(70, 150)
            target = F[pos - 1]
            amp_v, amp_n = (0.25 if r.random() < 0.3 else 0.0), r.uniform(0.3, 0.6)
            c, w = _FRICATIVES[int(r.integers(len(_FRICATIVES)))]
            n = int(dur / rate * ms) + 1
            fc[pos : pos + n] = min(c * spk.fric_shift * np.sqrt(spk.alpha), 7600)
            fw[pos : pos + n] = w
        elif kind == "plosive":
            closure = int(r.uniform(30, 60) / rate * ms) + 1
            burst = int(r.uniform(10, 25) / rate * ms) + 1
            target = F[pos - 1]
            F[pos : pos + closure + burst] = target
            fc[pos + closure : pos + closure + burst] = r.uniform(1500, 4500)
            fw[pos + closure : pos + closure + burst] = 3000
            an[pos + closure : pos + closure + burst] = r.uniform(0.5, 1.0)
            pos += closure + burst
            continue
        else:
            dur = r.uniform(100, 350)
            target = F[pos - 1]
            amp_v, amp_n = 0.0, 0.0
        n = int(dur / rate * ms) + 1
        F[pos : pos + n] = target
        av[pos : pos + n] = amp_v
        an[pos : pos + n] = np.maximum(an[pos : pos + n], amp_n)
        nasal[pos : pos + n] = 1.0 if kind == "nasal" else 0.0
        pos += n
    F = np.exp(_smooth(np.log(F[:n_frames]), 7))  # coarticulation: glide between targets
    return F, _smooth(av, 3), _smooth(an, 2), fc, fw, _smooth(nasal, 3)


def _formant_envelope(F: np.ndarray, spk: Speaker, nasal: np.ndarray) -> np.ndarray:
    """Magnitude of 5 cascaded resonators per frame: [frames, bins]."""
    f = _FREQS[None, None, :]
    Fk = F[:, :, None]
    B = spk.bw_scale * (50.0 + 0.05 * F) * (1 + 2.0 * nasal[:, None])
    B = B[:, :, None]
    logm = 2 * np.log(Fk) - 0.5 * np.log((Fk**2 - f**2) ** 2 + (B * f) ** 2 + 1e-6)
    return np.exp(logm.sum(1)).astype(np.float32)


def synth_speech(
    spk: Speaker, sess: Session | None, r: np.random.Generator, seconds: float
) -> np.ndarray:
    """One utterance of ``seconds`` from speaker ``spk`` through session ``sess`` (None = clean)."""
    T = int(round(seconds * SR))
    n_frames = (T + N_FFT) // HOP + 1
    Tp = (n_frames - 1) * HOP + N_FFT  # padded length covered by the frames
    rate = spk.rate * (sess.rate_scale if sess else 1.0)
    F, av, an, fc, fw, nasal = _phone_tracks(spk, r, n_frames, rate)
    # F0 contour: level + declination + accent bumps + slow wander (semitones).
    t = np.arange(n_frames, dtype=np.float32) / n_frames
    st = spk.declination * t + (sess.f0_shift if sess else 0.0)
    for c in r.uniform(0, 1, max(1, int(seconds * 2))):
        st += r.uniform(0.3, 1.0) * spk.f0_range * np.exp(-0.5 * ((t - c) * seconds / 0.12) ** 2)
    st += _smooth(r.normal(0, 0.6, n_frames).astype(np.float32), 25) * spk.f0_range
    f0 = spk.f0 * 2 ** (st / 12)
    f0_s = np.interp(np.arange(Tp) / HOP, np.arange(n_frames), f0).astype(np.float32)
    jit = 1 + spk.jitter * r.standard_normal(Tp // 40 + 2).astype(np.float32)
    f0_s *= np.repeat(jit, 40)[:Tp]
    phase = np.cumsum(f0_s / SR)
    pulses = np.diff(np.floor(phase), prepend=0.0).astype(np.float32)
    k = np.flatnonzero(pulses)
    pulses[k] *= 1 + spk.shimmer * r.standard_normal(k.size).astype(np.float32)
    pulses *= np.sqrt(150 / f0_s)  # loudness independent of F0 (power ~ pulses per frame)
    Ev = _stft(pulses)
    # STFT of white noise (std 0.1) drawn directly: complex Gaussian, E|X|^2 = 0.01 * sum(win^2) =
    # 2.56.
    En = r.standard_normal((n_frames, _NB), np.float32) + 1j * r.standard_normal(
        (n_frames, _NB), np.float32
    )
    En *= np.float32(np.sqrt(0.01 * np.sum(_WIN**2) / 2))
    tilt = spk.tilt + (sess.tilt_shift if sess else 0.0)
    src = (np.maximum(_FREQS, 150) / 150) ** (tilt / 6.02)
    notch = 1 - (1 - 10 ** (-spk.notch_depth / 20)) * np.exp(
        -0.5 * ((_FREQS - spk.notch_f) / (0.06 * spk.notch_f)) ** 2
    )
    H = _formant_envelope(F, spk, nasal) * (src * notch)[None, :]
    H /= np.sqrt(np.mean(H**2, axis=1, keepdims=True)) + 1e-9  # shape per frame; loudness from av
    fric = np.exp(-0.5 * ((_FREQS[None, :] - fc[:, None]) / fw[:, None]) ** 2)
    fric *= 1 / (1 + np.exp(-(_FREQS[None, :] - 1200) / 150))
    fric /= np.sqrt(np.mean(fric**2, axis=1, keepdims=True)) + 1e-9
    Y = Ev * (H * av[:, None]) + En * (H * (spk.breath * av[:, None]) + fric * (an[:, None] * 0.6))
    if sess is not None:
        Y *= (10 ** (channel_curve_db(sess) / 20))[None, :]
    y = _istft(Y, Tp)[N_FFT // 2 : N_FFT // 2 + T]
    rms = np.sqrt(np.mean(y**2)) + 1e-9
    level = 10 ** ((sess.level_db if sess else -24.0) / 20)
    y *= level / rms
    if sess is not None:  # noise floor (coloured) or hum at the session SNR
        if sess.hum:
            tt = np.arange(T) / SR
            nf = sum(
                np.sin(2 * np.pi * sess.hum * h * tt + r.uniform(0, 6.3)) / h for h in (1, 2, 3, 5)
            )
            nf = nf + 0.1 * r.standard_normal(T)
        else:
            # Stationary coloured noise: white noise filtered over its whole length by the session
            # curve.
            nz = sfft.rfft(r.standard_normal(T).astype(np.float32))
            curve = np.interp(np.arange(nz.size) * (SR / T), _FREQS, sess.noise_curve)
            nf = sfft.irfft(nz * (10 ** (curve / 20)).astype(np.float32), T)
        nf = nf.astype(np.float32)
        nf *= level / (np.sqrt(np.mean(nf**2)) + 1e-9) * 10 ** (-sess.noise_snr / 20)
        y = y + nf
    return np.clip(y, -1, 1).astype(np.float32)
