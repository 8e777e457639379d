"""Log-mel front-end: exact against an independent float64 numpy reference, librosa, masks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssv_jax import frontend


def _signal(rng, n, sr=16000):
    """Noise plus a few tones: band energies well above float32 rounding of the spectrum."""
    t = np.arange(n) / sr
    x = 0.05 * rng.standard_normal(n)
    for f, a in [(220.0, 0.3), (1250.0, 0.2), (3900.0, 0.1), (7000.0, 0.05)]:
        x += a * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))
    return x


def ref_log_mel(
    x,
    sr=16000,
    n_fft=512,
    win=400,
    hop=160,
    n_mels=40,
    f_min=0.0,
    f_max=8000.0,
    window="hamming",
    eps=1e-6,
):
    """float64 numpy: torchaudio MelSpectrogram(center, reflect, power 2, htk, norm None) + log."""
    x = np.asarray(x, np.float64)
    pad = n_fft // 2
    xp = np.pad(x, (pad, pad), mode="reflect")
    n = np.arange(win)
    a = 0.54 if window == "hamming" else 0.5
    w = a - (1 - a) * np.cos(2 * np.pi * n / win)  # periodic window
    wfull = np.zeros(n_fft)
    left = (n_fft - win) // 2
    wfull[left : left + win] = w
    n_frames = 1 + len(x) // hop
    frames = np.stack([xp[i * hop : i * hop + n_fft] * wfull for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    imel = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    pts = imel(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= c:
                fb[k, m] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[k, m] = (hi - f) / (hi - c)
    return np.log(power @ fb + eps)


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(0)
    return np.stack([_signal(rng, 16000 + 37), _signal(rng, 16000 + 37)])


@pytest.mark.parametrize("window,dft", [("hamming", "fft"), ("hann", "fft"), ("hamming", "matmul")])
def test_log_mel_matches_float64_reference(waves, window, dft):
    out = np.asarray(frontend.log_mel(jnp.asarray(waves, jnp.float32), window=window, dft=dft))
    assert out.dtype == np.float32
    assert out.shape == (2, 1 + waves.shape[1] // 160, 40)
    for b in range(2):
        ref = ref_log_mel(waves[b], window=window)
        np.testing.assert_allclose(out[b], ref, atol=1e-4, rtol=0)


def test_log_mel_other_settings_and_1d_input(waves):
    kw = dict(n_fft=400, win_length=320, hop_length=100, n_mels=24, f_min=50.0, f_max=7000.0)
    out = np.asarray(frontend.log_mel(jnp.asarray(waves[0], jnp.float32), **kw))
    ref = ref_log_mel(waves[0], win=320, hop=100, n_mels=24, n_fft=400, f_min=50.0, f_max=7000.0)
    assert out.shape == ref.shape == (1 + waves.shape[1] // 100, 24)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n", [257, 16000, 16159, 16160, 32000])
def test_frame_count(n):
    assert frontend.log_mel(jnp.zeros((1, n)) + 0.1).shape == (1, 1 + n // 160, 40)
    assert frontend.num_frames(n) == 1 + n // 160


@pytest.mark.slow
def test_close_to_librosa(waves):
    librosa = pytest.importorskip("librosa")
    x = waves[0].astype(np.float32)
    # librosa: centre-padded window, periodic Hann, HTK mel without norm, reflect padding.
    mel = librosa.feature.melspectrogram(
        y=x,
        sr=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=40,
        fmin=0.0,
        fmax=8000.0,
        htk=True,
        norm=None,
    )
    ref = np.log(mel.T + 1e-6)
    out = np.asarray(frontend.log_mel(jnp.asarray(x[None]), window="hann"))[0]
    assert out.shape == ref.shape
    # librosa places mel bins at np.fft.rfftfreq (identical here) -> agreement to float32 noise.
    np.testing.assert_allclose(out, ref, atol=2e-3)


@pytest.mark.parametrize("norm, axes", [("instance_norm", (1,)), ("utterance_norm", (1, 2))])
def test_norms_against_float64_and_with_a_mask(norm, axes):
    """instance_norm: per band over time; utterance_norm: over frames and bands at once, so the
    bands' levels (the spectral envelope) stay. Masked = each utterance alone, padding 0."""
    fn = getattr(frontend, norm)
    rng = np.random.default_rng(1)
    # Bands at different levels: the envelope that utterance_norm keeps and instance_norm removes.
    f = rng.standard_normal((3, 50, 8)).astype(np.float32) * 3 + np.arange(8, dtype=np.float32) * 4
    out = np.asarray(fn(jnp.asarray(f)))
    f64 = f.astype(np.float64)
    ref = (f64 - f64.mean(axes, keepdims=True)) / np.sqrt(f64.var(axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    band_means = out.mean(1)
    if norm == "instance_norm":
        np.testing.assert_allclose(band_means, 0.0, atol=1e-5)
    else:
        assert np.all(np.diff(band_means, axis=1) > 0.2)  # band levels still rise (by 0.41)
    lens = np.array([50, 20, 33])
    mask = np.arange(50)[None] < lens[:, None]
    outm = np.asarray(fn(jnp.asarray(f), jnp.asarray(mask)))
    for b, n in enumerate(lens):
        alone = np.asarray(fn(jnp.asarray(f[b : b + 1, :n])))[0]
        np.testing.assert_allclose(outm[b, :n], alone, atol=1e-5)
        assert np.all(outm[b, n:] == 0)


def test_features_norm_choice():
    rng = np.random.default_rng(5)
    x = np.stack([_signal(rng, 4000), 3.0 * _signal(rng, 4000)]).astype(np.float32)
    cfg = frontend.default_frontend_config()
    assert cfg.norm == "instance"
    logmel = frontend.log_mel(jnp.asarray(x))
    inst, _ = frontend.features(jnp.asarray(x), cfg)
    np.testing.assert_array_equal(inst, frontend.instance_norm(logmel))
    cfg.norm = "utterance"
    utt, _ = frontend.features(jnp.asarray(x), cfg)
    np.testing.assert_array_equal(utt, frontend.utterance_norm(logmel))
    # Level-free: the same signal 3x louder gives the same features (up to log_eps).
    same, _ = frontend.features(jnp.asarray(x[:1] * 3.0), cfg)
    np.testing.assert_allclose(same[0], utt[0], atol=1e-3)
    cfg.norm = "batch"
    with pytest.raises(ValueError, match=r"frontend.norm='batch' is not one of \('instance'"):
        frontend.features(jnp.asarray(x), cfg)


@pytest.mark.slow
def test_padded_batch_features_equal_each_alone():
    rng = np.random.default_rng(2)
    lens = [4000, 5555, 8000]
    batch = np.zeros((3, 8000), np.float32)
    for i, n in enumerate(lens):
        batch[i, :n] = _signal(rng, n)
    feats, mask = frontend.features(jnp.asarray(batch), None, lengths=jnp.asarray(lens))
    np.testing.assert_array_equal(np.asarray(mask).sum(1), [1 + n // 160 for n in lens])
    np.testing.assert_array_equal(frontend.frame_mask(jnp.asarray(lens), 51), mask)
    for i, n in enumerate(lens):
        alone, m = frontend.features(jnp.asarray(batch[i : i + 1, :n]))
        assert m is None
        np.testing.assert_allclose(np.asarray(feats[i, : alone.shape[1]]), alone[0], atol=1e-4)


def test_features_config_and_jit():
    cfg = frontend.default_frontend_config()
    assert set(cfg.keys()) >= {
        "sample_rate",
        "n_fft",
        "win_length",
        "hop_length",
        "n_mels",
        "f_min",
        "f_max",
        "window",
        "log_eps",
    }
    cfg.n_mels = 24
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3200)), jnp.float32)
    feats, _ = jax.jit(lambda w: frontend.features(w, cfg))(x)
    assert feats.shape == (2, 21, 24)
    with pytest.raises(ValueError, match="unknown front-end config field"):
        frontend.features(x, ml_collections.ConfigDict({"n_melz": 3}))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="too short"):
        frontend.log_mel(jnp.zeros((1, 200)))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        frontend.log_mel(jnp.zeros((1, 1, 2000)))
    with pytest.raises(ValueError, match="unknown window"):
        frontend.log_mel(jnp.zeros((1, 2000)), window="kaiser")
    with pytest.raises(ValueError, match="f_max"):
        frontend.log_mel(jnp.zeros((1, 2000)), f_max=9000.0)
