"""On-device augmentation of the two views: reverberation, additive noise, channel EQ.

Pure JAX functions of the batch (from ssv_jax.data.train_batches) and an RNG
key; jittable, batched over any leading dimensions, and usable on arrays
sharded over the batch axis (every op works along the last, time, axis).

Order per view: reverberate (if ``rir_on``) -> add noise at ``snr_db`` (if
``noise_on``; the SNR is measured against the reverberated speech) -> random
EQ / band limit (drawn from ``key``; ``eq_prob``, ``lowpass_prob``).

Level and alignment: RIRs arrive with the direct path at index 0 and unit
energy, and ``reverberate`` keeps the first T samples of the linear
convolution, so the reverberant view stays time-aligned with the dry one; it
is then rescaled to the dry view's RMS, as is the EQ output, so level is not
a cue that survives augmentation. ``add_noise`` leaves the speech as it is and
scales the noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_TINY = 1e-10


def pcm_to_float(x):
    """int16 PCM -> float32 in [-1, 1) (x / 32768 exactly); float input is only cast."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(jnp.float32) * jnp.float32(2.0**-15)
    return x.astype(jnp.float32)


def unit_energy(h):
    """RIRs [..., L] of any level (int16 from the pipeline) scaled to unit energy; a silent one
    becomes a delta (no reverberation)."""
    h = jnp.asarray(h).astype(jnp.float32)
    e = jnp.sum(jnp.square(h), axis=-1, keepdims=True)
    delta = jnp.zeros_like(h).at[..., 0].set(1.0)
    return jnp.where(e > 0, h * jax.lax.rsqrt(jnp.maximum(e, _TINY)), delta)


def _power(x):
    return jnp.mean(jnp.square(x), axis=-1, keepdims=True)


def _rescale_to(y, ref):
    """Scale ``y`` to the RMS of ``ref`` (per row); silent rows stay as they are."""
    py, pr = _power(y), _power(ref)
    return y * jnp.where(py > _TINY, jnp.sqrt(pr / jnp.maximum(py, _TINY)), 1.0)


def add_noise(x, noise, snr_db):
    """``x + g * noise`` with g chosen so that 10 log10(P(x) / P(g noise)) = snr_db.

    x, noise: [..., T]; snr_db: [...] (broadcastable). Power is the mean square
    over the last axis. All-zero noise adds nothing.
    """
    x = jnp.asarray(x)
    snr = jnp.asarray(snr_db, x.dtype)[..., None]
    px, pn = _power(x), _power(noise)
    g2 = px / (jnp.maximum(pn, _TINY) * jnp.power(10.0, snr / 10.0))
    g = jnp.where(pn > _TINY, jnp.sqrt(g2), 0.0)
    return x + g * noise


def _fft_len(n: int) -> int:
    """The smallest even 2^a 3^b 5^c >= n: as fast per point as a power of two in XLA's FFTs,
    and up to half as long (a 2 s view with a 1 s RIR: 48,000 instead of 65,536)."""

    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    m = max(2, n + n % 2)
    while not smooth(m):  # 5-smooth numbers lie close together: a few hundred steps at most
        m += 2
    return m


def reverberate(x, rir, *, rescale: bool = True):
    """Convolve each view with its RIR by FFT; keep the first T samples (aligned).

    x: [..., T]; rir: [..., L] with the direct path at index 0. With ``rescale``
    the output has the input's RMS.
    """
    T, L = x.shape[-1], rir.shape[-1]
    n = _fft_len(T + L - 1)
    y = jnp.fft.irfft(jnp.fft.rfft(x, n) * jnp.fft.rfft(rir, n), n)[..., :T].astype(x.dtype)
    return _rescale_to(y, x) if rescale else y


def _band_weights(n_bins: int, n_fft: int, n_bands: int, sample_rate: int) -> np.ndarray:
    """[n_bins, n_bands] linear interpolation (in log frequency) from band gains to FFT bins."""
    f = np.maximum(np.arange(n_bins) * sample_rate / n_fft, 1.0)
    centres = np.geomspace(100.0, 7000.0, n_bands)
    pos = np.interp(np.log(f), np.log(centres), np.arange(n_bands))
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_bands - 1)
    w = np.zeros((n_bins, n_bands), np.float32)
    w[np.arange(n_bins), lo] += 1 - (pos - lo)
    w[np.arange(n_bins), hi] += pos - lo
    return w


def random_eq(x, key, *, prob=0.5, max_db=8.0, n_bands=6, lowpass_prob=0.0, sample_rate=16000):
    """Random smooth channel EQ (and optional band limit) per row of ``x`` [..., T], level kept.

    Each row is EQ'd with probability ``prob``: band gains uniform in
    [-max_db, max_db] at ``n_bands`` log-spaced centres (100 Hz - 7 kHz),
    interpolated in log frequency; independently band-limited with probability
    ``lowpass_prob`` (cutoff uniform in 3-7.5 kHz). Zero-phase, applied by FFT
    with padding, output rescaled to the input RMS.
    """
    T = x.shape[-1]
    n = _fft_len(T + 1024)
    n_bins = n // 2 + 1
    lead = x.shape[:-1]
    k_on, k_gain, k_lp, k_fc = jax.random.split(key, 4)
    on = jax.random.uniform(k_on, lead) < prob
    gains = jax.random.uniform(k_gain, lead + (n_bands,), minval=-max_db, maxval=max_db)
    gain_db = gains @ jnp.asarray(_band_weights(n_bins, n, n_bands, sample_rate)).T
    g = jnp.where(on[..., None], jnp.power(10.0, gain_db / 20.0), 1.0)
    lp_on = jax.random.uniform(k_lp, lead) < lowpass_prob
    fc = jax.random.uniform(k_fc, lead, minval=3000.0, maxval=7500.0)
    f = jnp.arange(n_bins) * (sample_rate / n)
    lp = jax.nn.sigmoid(-(f - fc[..., None]) / 100.0)
    g = g * jnp.where(lp_on[..., None], lp, 1.0)
    y = jnp.fft.irfft(jnp.fft.rfft(x, n) * g, n)[..., :T].astype(x.dtype)
    return _rescale_to(y, x)


def augment(batch, key, aug_cfg, sample_rate: int):
    """Augmented views float32 [B, 2, T] from a train batch (see module docstring for the order).

    batch: the device fields of ``ssv_jax.data.batch.SPEC`` (``views`` [B, 2, T]; ``rir``
    [B, 2, L], ``rir_on``, ``noise`` [B, 2, T], ``snr_db``, ``noise_on`` [B, 2] where present);
    the audio int16 as the pipeline makes it, or float.
    aug_cfg: the data config's ``augment`` section (``enabled``, ``eq_prob``, ``eq_db``,
    ``eq_bands``, ``lowpass_prob``); sample_rate: the data's.
    """
    x = pcm_to_float(batch["views"])
    if not aug_cfg.enabled:
        return x
    if "rir" in batch and batch["rir"].shape[-1] > 1:
        on = jnp.asarray(batch["rir_on"], bool)
        x = jnp.where(on[..., None], reverberate(x, unit_energy(batch["rir"])), x)
    if "noise" in batch:
        on = jnp.asarray(batch["noise_on"], bool)
        noise = jnp.asarray(batch["noise"]).astype(jnp.float32)  # level-free: scaled to the SNR
        x = jnp.where(on[..., None], add_noise(x, noise, batch["snr_db"]), x)
    prob, lp = float(aug_cfg.eq_prob), float(aug_cfg.lowpass_prob)
    if prob > 0 or lp > 0:
        x = random_eq(
            x,
            key,
            prob=prob,
            max_db=float(aug_cfg.eq_db),
            n_bands=int(aug_cfg.eq_bands),
            lowpass_prob=lp,
            sample_rate=int(sample_rate),
        )
    return x
