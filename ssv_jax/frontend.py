"""Log-mel front-end (torchaudio ``MelSpectrogram`` semantics) and per-utterance normalisation.

Pipeline (docs/method.md#front-end): 16 kHz waveform -> centred frames (reflect padding of
n_fft // 2, so an utterance of T samples has ``1 + T // hop_length`` frames) -> window of
``win_length`` samples (periodic Hamming or Hann) zero-padded to ``n_fft`` at the centre ->
power spectrum -> HTK mel filterbank (no area normalisation) -> ``log(x + log_eps)`` ->
a per-utterance normalisation (``norm``): ``instance_norm`` (per band, over time: the paper's,
which removes each band's mean level, hence the channel's and the voice's long-term spectral
envelope) or ``utterance_norm`` (one mean and one standard deviation over all the utterance's
frames and bands: removes its level and keeps that envelope). Everything is jittable and runs on
any backend.

Output layout is ``[B, frames, n_mels]`` (time-major; torchaudio returns ``[B, n_mels, frames]``).

Typical use in a train step::

    feats, mask = features(waves, frontend_cfg)                  # fixed-length crops, mask None
    feats, mask = features(waves, frontend_cfg, lengths=lens)    # padded evaluation batch
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

WINDOWS = ("hamming", "hann")


def default_frontend_config() -> ml_collections.ConfigDict:
    """ConfigDict holding every keyword of ``log_mel`` at its default, plus the normalisation:
    ``norm`` (``"instance"`` or ``"utterance"``, see ``NORMS``) and its ``instance_norm_eps``."""
    return ml_collections.ConfigDict(
        dict(
            sample_rate=16000,
            n_fft=512,
            win_length=400,
            hop_length=160,
            n_mels=40,
            f_min=0.0,
            f_max=8000.0,
            window="hamming",
            log_eps=1e-6,
            dft="auto",
            instance_norm_eps=1e-5,
            norm="instance",
        )
    )


def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def mel_filterbank(
    sample_rate: int = 16000,
    n_fft: int = 512,
    n_mels: int = 40,
    f_min: float = 0.0,
    f_max: float = 8000.0,
) -> np.ndarray:
    """Triangular HTK-scale mel filters, ``[n_fft // 2 + 1, n_mels]`` float64, no normalisation.

    Bin frequencies are ``linspace(0, sample_rate // 2, n_fft // 2 + 1)`` as in torchaudio.
    """
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, "
            f"f_max={f_max}, sample_rate={sample_rate}; fix the front-end config."
        )
    n_bins = n_fft // 2 + 1
    freqs = np.linspace(0.0, sample_rate // 2, n_bins)
    hz = mel_to_hz_htk(np.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2))
    lo, centre, hi = hz[:-2], hz[1:-1], hz[2:]
    rising = (freqs[:, None] - lo[None]) / (centre - lo)[None]
    falling = (hi[None] - freqs[:, None]) / (hi - centre)[None]
    fb = np.maximum(0.0, np.minimum(rising, falling))
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=32)
def window_fn(name: str, win_length: int) -> np.ndarray:
    """Periodic window (``torch.hamming_window`` / ``torch.hann_window`` defaults), float64."""
    n = np.arange(win_length, dtype=np.float64)
    phase = np.cos(2.0 * np.pi * n / win_length)
    if name == "hamming":
        w = 0.54 - 0.46 * phase
    elif name == "hann":
        w = 0.5 - 0.5 * phase
    else:
        raise ValueError(f"unknown window {name!r}; use one of {WINDOWS}.")
    w.setflags(write=False)
    return w


@functools.lru_cache(maxsize=32)
def _dft_matrices(name: str, win_length: int, n_fft: int):
    """Windowed real-DFT matrices ``[win_length, n_fft // 2 + 1]`` (cos, -sin), float32.

    The window sits at offset ``(n_fft - win_length) // 2`` of the n_fft buffer; a circular shift
    only changes the phase, so the power spectrum is that of the window-length frame itself.
    """
    n = np.arange(win_length, dtype=np.float64)[:, None]
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[None]
    ang = 2.0 * np.pi * n * k / n_fft
    w = window_fn(name, win_length)[:, None]
    return (w * np.cos(ang)).astype(np.float32), (-w * np.sin(ang)).astype(np.float32)


def num_frames(n_samples: int, hop_length: int = 160) -> int:
    """Frames of a centred STFT of ``n_samples`` samples: ``1 + n_samples // hop_length``."""
    return 1 + n_samples // hop_length


def frame_mask(lengths, n_frames: int, hop_length: int = 160) -> jax.Array:
    """``[B, n_frames]`` bool, True for frames an utterance of ``lengths[b]`` samples has alone.

    Rule: frame ``i`` (centred on sample ``i * hop_length``) is valid iff ``i * hop_length <=
    length``, i.e. ``i < 1 + length // hop_length`` -- exactly the frames of ``log_mel`` on that
    utterance alone (the last one is centred on, or just after, the final sample).
    """
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be [B] sample counts, got shape {lengths.shape}.")
    idx = jnp.arange(n_frames)[None, :]
    return idx < (1 + lengths[:, None] // hop_length)


def _reflect_pad(wave, pad, lengths):
    """Reflect-pad ``pad`` samples on each side; with ``lengths``, reflect at each utterance's
    end."""
    if lengths is None:
        return jnp.pad(wave, ((0, 0), (pad, pad)), mode="reflect")
    b, t = wave.shape
    lengths = jnp.asarray(lengths, jnp.int32)[:, None]
    j = jnp.arange(t + 2 * pad, dtype=jnp.int32)[None, :] - pad
    j = jnp.abs(j)  # left edge: x[-j] -> x[j]
    j = jnp.where(j >= lengths, 2 * (lengths - 1) - j, j)  # right edge of each utterance
    j = jnp.clip(j, 0, t - 1)
    return jnp.take_along_axis(wave, j, axis=1)


def _frames(padded, n_frames, win_length, hop, offset):
    """``[B, n_frames, win_length]`` with frame i = padded[:, offset + i*hop : ... + win_length].

    Built from reshapes and slices only (no gather): ceil(win / hop) shifted hop-sized pieces.
    """
    b, length = padded.shape
    pieces = -(-win_length // hop)
    need = offset + hop * (n_frames + pieces - 1)
    short = need - length
    if not isinstance(short, int):  # symbolic length (export): pad by an upper bound
        padded = jnp.pad(padded, ((0, 0), (0, offset + hop * pieces)))
    elif short > 0:
        padded = jnp.pad(padded, ((0, 0), (0, short)))
    chunks = padded[:, offset:need].reshape(b, n_frames + pieces - 1, hop)
    frames = jnp.concatenate([chunks[:, k : k + n_frames] for k in range(pieces)], axis=-1)
    return frames[..., :win_length]


def log_mel(
    wave,
    *,
    sample_rate: int = 16000,
    n_fft: int = 512,
    win_length: int = 400,
    hop_length: int = 160,
    n_mels: int = 40,
    f_min: float = 0.0,
    f_max: float = 8000.0,
    window: str = "hamming",
    log_eps: float = 1e-6,
    lengths=None,
    dft: str = "auto",
) -> jax.Array:
    """Log-mel spectrogram: ``[B, T]`` (or ``[T]``) float waveform -> ``[B, 1 + T // hop, n_mels]``.

    Args:
      wave: float waveform(s) at ``sample_rate``; ``[T]`` gives ``[frames, n_mels]``.
      lengths: optional ``[B]`` true sample counts of a zero-padded batch: each utterance is then
        reflect-padded at its own end, so its first ``1 + lengths[b] // hop`` frames equal those of
        the utterance alone (see ``frame_mask``); later frames are meaningless (mask them).
      dft: "fft" (``jnp.fft.rfft``), "matmul" (windowed DFT matrix, HIGHEST precision; suits TPUs)
        or "auto" (matmul on TPU, fft elsewhere).
    Returns float32 ``log(mel_power + log_eps)``.
    """
    wave = jnp.asarray(wave)
    if wave.ndim == 1:
        return log_mel(
            wave[None],
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            window=window,
            log_eps=log_eps,
            lengths=lengths,
            dft=dft,
        )[0]
    if wave.ndim != 2:
        raise ValueError(
            f"wave must be [B, T] or [T] samples, got shape {wave.shape}; "
            "squeeze any channel axis (mono audio) first."
        )
    if win_length > n_fft:
        raise ValueError(f"win_length ({win_length}) must be <= n_fft ({n_fft}).")
    t = wave.shape[1]
    pad = n_fft // 2
    if t <= pad:
        raise ValueError(
            f"waveform of {t} samples is too short for reflect padding of {pad} "
            f"(n_fft // 2): use at least {pad + 1} samples ({(pad + 1) / sample_rate:.3f}"
            " s) or wrap-pad short audio first."
        )
    if dft == "auto":
        dft = "matmul" if jax.default_backend() == "tpu" else "fft"
    if dft not in ("fft", "matmul"):
        raise ValueError(f"unknown dft {dft!r}; use 'fft', 'matmul' or 'auto'.")
    n_frames = num_frames(t, hop_length)
    wave = wave.astype(jnp.float32)
    padded = _reflect_pad(wave, pad, lengths)
    frames = _frames(padded, n_frames, win_length, hop_length, (n_fft - win_length) // 2)
    if dft == "fft":
        win = jnp.asarray(window_fn(window, win_length), jnp.float32)
        spec = jnp.fft.rfft(frames * win, n=n_fft, axis=-1)
        power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    else:
        cos_m, sin_m = _dft_matrices(window, win_length, n_fft)
        hi = jax.lax.Precision.HIGHEST
        re = jnp.einsum("bfw,wk->bfk", frames, cos_m, precision=hi)
        im = jnp.einsum("bfw,wk->bfk", frames, sin_m, precision=hi)
        power = re * re + im * im
    fb = jnp.asarray(
        mel_filterbank(sample_rate, n_fft, n_mels, float(f_min), float(f_max)), jnp.float32
    )
    mel = jnp.einsum("bfk,km->bfm", power, fb, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(mel + log_eps)


def _normalise(feats, mask, eps: float, axes: tuple[int, ...]) -> jax.Array:
    """Subtract the mean and divide by sqrt(biased variance + eps), both over ``axes`` of
    ``[B, frames, n_mels]`` features; with ``mask`` ``[B, frames]`` (True = valid) over valid
    frames only, invalid frames set to 0."""
    feats = jnp.asarray(feats, jnp.float32)
    if feats.ndim != 3:
        raise ValueError(f"feats must be [B, frames, n_mels], got shape {feats.shape}.")
    if mask is None:
        mean = jnp.mean(feats, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(feats - mean), axis=axes, keepdims=True)
        return (feats - mean) * jax.lax.rsqrt(var + eps)
    m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32)[:, :, None], feats.shape)
    count = jnp.maximum(jnp.sum(m, axis=axes, keepdims=True), 1.0)
    mean = jnp.sum(feats * m, axis=axes, keepdims=True) / count
    var = jnp.sum(jnp.square(feats - mean) * m, axis=axes, keepdims=True) / count
    return (feats - mean) * jax.lax.rsqrt(var + eps) * m


def instance_norm(feats, mask=None, eps: float = 1e-5) -> jax.Array:
    """Per-utterance, per-band normalisation over time (``torch.nn.InstanceNorm1d``, no affine).

    feats ``[B, frames, n_mels]``; biased variance. With ``mask`` ``[B, frames]`` (True = valid),
    statistics use valid frames only and invalid frames are set to 0.
    """
    return _normalise(feats, mask, eps, (1,))


def utterance_norm(feats, mask=None, eps: float = 1e-5) -> jax.Array:
    """Per-utterance normalisation over all frames and bands at once: one mean and one (biased)
    variance per utterance, so the level goes and the spectral envelope stays. ``mask`` as for
    ``instance_norm``."""
    return _normalise(feats, mask, eps, (1, 2))


# ``frontend.norm`` -> its normalisation.
NORM_FNS = {"instance": instance_norm, "utterance": utterance_norm}
NORMS = tuple(NORM_FNS)


def features(wave, frontend_cfg=None, lengths=None):
    """``log_mel`` + the ``norm`` normalisation in one call -> (feats ``[B, frames, n_mels]``,
    mask or None).

    ``wave``: ``[B, T]`` (a single utterance needs ``wave[None]``).

    ``frontend_cfg``: a ConfigDict like ``default_frontend_config()`` (None = defaults). With
    ``lengths`` (true sample counts of a zero-padded batch) also returns the ``frame_mask``.
    """
    cfg = default_frontend_config()
    if frontend_cfg is not None:
        unknown = set(frontend_cfg.keys()) - set(cfg.keys())
        if unknown:
            raise ValueError(
                f"unknown front-end config field(s) {sorted(unknown)}; known: {sorted(cfg.keys())}."
            )
        cfg.update(dict(frontend_cfg))
    if jnp.ndim(wave) != 2:
        raise ValueError(
            f"features needs wave [B, T], got shape {jnp.shape(wave)}; "
            "use wave[None] for one utterance."
        )
    if cfg.norm not in NORMS:
        raise ValueError(f"frontend.norm={cfg.norm!r} is not one of {NORMS}.")
    kw = {k: v for k, v in cfg.items() if k not in ("instance_norm_eps", "norm")}
    logmel = log_mel(wave, lengths=lengths, **kw)
    mask = None
    if lengths is not None:
        mask = frame_mask(lengths, logmel.shape[-2], cfg.hop_length)
    return NORM_FNS[cfg.norm](logmel, mask, eps=cfg.instance_norm_eps), mask
