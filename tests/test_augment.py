"""On-device augmentation: SNR mixing, FFT reverberation, random EQ, the composed augment,
sharding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ssv_jax import augment as aug
from ssv_jax.data import default_data_config

SR = 16000


def _cfg(**kw):
    c = default_data_config().augment
    c.update(dict(eq_prob=0.0, lowpass_prob=0.0))
    c.update(kw)
    return c


def _batch(B=8, T=4000, L=300, seed=0):
    r = np.random.default_rng(seed)
    t = np.arange(L)
    rir = r.standard_normal((B, 2, L)) * np.exp(-t / 60.0)
    rir[..., 0] = 3.0
    rir /= np.sqrt(np.sum(rir**2, -1, keepdims=True))
    return {
        "views": (r.standard_normal((B, 2, T)) * r.uniform(0.01, 0.5, (B, 2, 1))).astype(
            np.float32
        ),
        "noise": (r.standard_normal((B, 2, T)) * r.uniform(0.01, 2.0, (B, 2, 1))).astype(
            np.float32
        ),
        "snr_db": r.uniform(-5, 20, (B, 2)).astype(np.float32),
        "noise_on": r.random((B, 2)) < 0.6,
        "rir": rir.astype(np.float32),
        "rir_on": r.random((B, 2)) < 0.6,
    }


def _snr(clean, mixed):
    clean, mixed = np.asarray(clean, np.float64), np.asarray(mixed, np.float64)
    with np.errstate(divide="ignore"):  # views without noise: infinite SNR
        return 10 * np.log10(np.mean(clean**2, -1) / np.mean((mixed - clean) ** 2, -1))


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_add_noise_measured_snr(snr):
    b = _batch()
    y = aug.add_noise(b["views"], b["noise"], np.full((8, 2), snr, np.float32))
    np.testing.assert_allclose(_snr(b["views"], y), snr, atol=2e-3)


def test_add_noise_matches_float64_and_zero_noise_is_identity():
    b = _batch(seed=1)
    x, n, s = (b[k].astype(np.float64) for k in ("views", "noise", "snr_db"))
    g = np.sqrt(np.mean(x**2, -1) / (np.mean(n**2, -1) * 10 ** (s / 10)))
    np.testing.assert_allclose(
        aug.add_noise(b["views"], b["noise"], b["snr_db"]),
        x + g[..., None] * n,
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_array_equal(
        aug.add_noise(b["views"], np.zeros_like(b["noise"]), b["snr_db"]), b["views"]
    )


def test_fft_length_is_the_shortest_even_5_smooth_length():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in list(range(2, 3000)) + [25024, 47999, 48000, 48001]:
        m = aug._fft_len(n)
        assert m >= n and m % 2 == 0 and smooth(m), (n, m)
        assert not any(k % 2 == 0 and smooth(k) for k in range(n, m)), (n, m)
    assert aug._fft_len(32000 + 16000 - 1) == 48000  # a 2 s view with a 1 s RIR


def test_reverberate_is_linear_convolution_head():
    b = _batch(B=2, T=1000, L=257)
    ref = np.stack(
        [
            [
                np.convolve(b["views"][i, v].astype(np.float64), b["rir"][i, v].astype(np.float64))[
                    :1000
                ]
                for v in range(2)
            ]
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(
        aug.reverberate(b["views"][:2], b["rir"], rescale=False), ref, atol=2e-5
    )
    y = np.asarray(aug.reverberate(b["views"][:2], b["rir"]))
    np.testing.assert_allclose(
        np.std(y, -1),
        np.std(
            ref
            / np.sqrt(np.mean(ref**2, -1, keepdims=True))
            * np.sqrt(np.mean(b["views"][:2] ** 2, -1, keepdims=True)),
            -1,
        ),
        rtol=1e-4,
    )
    delta = np.zeros((2, 2, 257), np.float32)
    delta[..., 0] = 1
    np.testing.assert_allclose(aug.reverberate(b["views"][:2], delta), b["views"][:2], atol=1e-6)


def test_augment_composition_against_numpy():
    b = _batch(seed=2)
    out = np.asarray(aug.augment(b, jax.random.key(0), _cfg(), SR))
    x = b["views"].astype(np.float64)
    T = x.shape[-1]
    ref = np.empty_like(x)
    for i in range(x.shape[0]):
        for v in range(2):
            y = x[i, v]
            if b["rir_on"][i, v]:
                y = np.convolve(y, b["rir"][i, v].astype(np.float64))[:T]
                y *= np.sqrt(np.mean(x[i, v] ** 2) / np.mean(y**2))
            if b["noise_on"][i, v]:
                n = b["noise"][i, v].astype(np.float64)
                y = y + n * np.sqrt(np.mean(y**2) / np.mean(n**2) / 10 ** (b["snr_db"][i, v] / 10))
            ref[i, v] = y
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    # measured SNR of the noised views is the requested one (reverberated speech as the reference)
    clean = np.asarray(
        aug.augment({k: b[k] for k in ("views", "rir", "rir_on")}, jax.random.key(0), _cfg(), SR)
    )
    on = b["noise_on"]
    np.testing.assert_allclose(_snr(clean, out)[on], b["snr_db"][on], atol=2e-3)
    np.testing.assert_array_equal(
        np.asarray(aug.augment(b, jax.random.key(0), _cfg(enabled=False), SR)), b["views"]
    )


def test_random_eq():
    b = _batch(seed=3)
    x = b["views"]
    np.testing.assert_allclose(aug.random_eq(x, jax.random.key(1), prob=0.0), x, atol=1e-5)
    y = np.asarray(aug.random_eq(x, jax.random.key(1), prob=1.0, max_db=10.0, lowpass_prob=0.5))
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, -1)), np.sqrt(np.mean(x**2, -1)), rtol=1e-4)
    assert np.max(np.abs(y - x)) > 0.1 * np.max(np.abs(x))
    np.testing.assert_array_equal(
        y, aug.random_eq(x, jax.random.key(1), prob=1.0, max_db=10.0, lowpass_prob=0.5)
    )
    # the two views of an utterance get different channels
    Y = np.abs(np.fft.rfft(y, axis=-1)) / (np.abs(np.fft.rfft(x, axis=-1)) + 1e-6)
    assert not np.allclose(Y[:, 0, 100:1500], Y[:, 1, 100:1500], rtol=0.1)


def test_sharded_equals_unsharded():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    b = _batch(B=8, seed=4)
    cfg = _cfg(eq_prob=0.5, lowpass_prob=0.3)
    f = jax.jit(lambda batch, key: aug.augment(batch, key, cfg, SR))
    key = jax.random.key(7)
    ref = np.asarray(aug.augment(b, key, cfg, SR))
    out = f({k: jax.device_put(v, sh) for k, v in b.items()}, key)
    assert out.sharding.spec[0] == "data" or len(out.sharding.device_set) == len(jax.devices())
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


def test_int16_batch_is_the_float_batch():
    """The pipeline's int16 batch (views as PCM, noise and RIR at any level, a silent RIR) gives
    what the float batch does: views / 32768, the RIR at unit energy, a silent RIR a delta."""
    b = _batch()
    r = np.random.default_rng(5)
    views = (r.standard_normal(b["views"].shape) * 3000).astype(np.int16)
    noise = (r.standard_normal(b["noise"].shape) * 9000).astype(np.int16)
    rir = (b["rir"] * 20000).astype(np.int16)
    rir[0, 0] = 0  # silent: no reverberation
    pcm = dict(b, views=views, noise=noise, rir=rir)
    h = rir.astype(np.float64)
    e = np.sum(h**2, -1, keepdims=True)
    h = np.where(e > 0, h / np.sqrt(np.maximum(e, 1e-30)), np.eye(h.shape[-1])[0])
    flt = dict(
        b,
        views=views.astype(np.float32) / 32768,
        noise=noise.astype(np.float32),
        rir=h.astype(np.float32),
    )
    np.testing.assert_array_equal(np.asarray(aug.pcm_to_float(views)), flt["views"])
    np.testing.assert_allclose(np.asarray(aug.unit_energy(rir)), flt["rir"], atol=1e-6)
    key = jax.random.key(0)
    np.testing.assert_allclose(
        np.asarray(aug.augment(pcm, key, _cfg(), SR)),
        np.asarray(aug.augment(flt, key, _cfg(), SR)),
        atol=1e-5,
    )
