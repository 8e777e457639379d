"""Data benchmarks: build speed (audio hours per minute), pipeline throughput, baseline EER.

    python bench/bench_data.py [--data_dir=DIR] [--batches=40] [--skip_folder]

Prints:
  * embedded corpus build time and audio hours per minute (synthesis + TFDS write);
  * data_prep/folder.py speed on generated wav files (decode + resample + write);
  * pipeline throughput in views/s (crops + noise/babble crops + SNRs + RIRs, the
    full train_batches output) against what the train step consumes: 64 views per
    --step_seconds (scaled to the crop length), the time of a Fast ResNet-34 step of
    32 utterances x 2 views x 2 s (measure it with bench/bench_train.py; the default
    is an earlier measurement, see bench/README.md);
  * on-device augmentation time for one batch (jit, CPU);
  * the mean-log-mel cosine baseline EER on the default test trials.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def mean_logmel_baseline(cfg, with_std: bool = False) -> dict:
    """EER (%) of cosine scoring of per-utterance mean log-mel vectors (numpy STFT, librosa mel
    filters), with the per-band standard deviation appended when ``with_std``:
    {trial list: (EER, n_trials)}."""
    import librosa

    from ssv_jax import data
    from ssv_jax.metrics import eer

    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, htk=True, norm=None)
    win = np.hamming(401)[:-1]
    emb = {}
    for u, w in data.eval_utterances(cfg):
        n = 1 + (w.size - 400) // 160
        fr = w[np.arange(400)[None] + 160 * np.arange(n)[:, None]] * win
        lm = np.log(np.abs(np.fft.rfft(fr, 512)) ** 2 @ mel.T + 1e-6)
        emb[u] = np.concatenate([lm.mean(0), lm.std(0)]) if with_std else lm.mean(0)
    out = {}
    for name, t in data.load_trials(cfg).items():
        E = np.stack([emb[u] for u in t.enroll])
        T = np.stack([emb[u] for u in t.test])
        s = np.sum(E * T, 1) / np.linalg.norm(E, axis=1) / np.linalg.norm(T, axis=1)
        out[name] = (float(eer(s, t.labels)), len(t))
    return out


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data_dir", default=None, help="where to build (default: a fresh temporary folder)"
    )
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--global_batch", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument(
        "--step_seconds", type=float, default=1.8, help="train step time for 32x2 views of 2 s"
    )
    p.add_argument("--skip_folder", action="store_true")
    a = p.parse_args()

    from ssv_jax import data
    from ssv_jax.data import datasets, prep

    tmp = tempfile.mkdtemp(prefix="bench_data_")
    data_dir = a.data_dir or os.path.join(tmp, "tfds")
    cfg = data.default_data_config()
    cfg.data_dir = data_dir
    cfg.num_workers = a.num_workers
    print(f"cores: {os.cpu_count()}; data_dir {data_dir}")

    t = time.time()
    summaries = datasets.build_synthetic(data_dir, datasets.size_from_config(cfg), num_workers=2)
    dt = time.time() - t
    hours = sum(s.total_hours() for s in summaries)
    print(
        f"embedded corpus + banks: {dt:.1f} s for {hours:.2f} audio hours "
        f"({hours / (dt / 60):.2f} audio hours per minute, 2 workers)"
    )
    for s in summaries:
        print("  " + s.report().replace("\n", "\n  "))

    if not a.skip_folder:
        import soundfile as sf

        audio_dir = os.path.join(tmp, "folder")
        r = np.random.default_rng(0)
        for spk in range(20):
            for u in range(10):
                d = os.path.join(audio_dir, f"s{spk}", "v0")
                os.makedirs(d, exist_ok=True)
                rate = 16000 if u % 2 else 44100
                sf.write(
                    os.path.join(d, f"{u}.flac" if u % 3 else f"{u}.wav"),
                    (r.standard_normal(8 * rate) * 0.1).astype(np.float32),
                    rate,
                )
        t = time.time()
        s = prep.build_folder(
            audio_dir, os.path.join(tmp, "folder_tfds"), "bench_folder", num_workers=2
        )
        dt = time.time() - t
        print(
            "data_prep/folder.py on 200 files x 8 s (half 44.1 kHz -> resampled, wav+flac): "
            f"{dt:.1f} s, "
            f"{s.total_hours() / (dt / 60):.2f} audio hours per minute (2 workers)"
        )

    T = int(cfg.crop_seconds * 16000)
    it = data.train_batches(cfg, global_batch=a.global_batch, seed=0)
    for _ in range(3):
        b = next(it)
    t = time.time()
    for _ in range(a.batches):
        b = next(it)
    dt = time.time() - t
    views = a.batches * a.global_batch * 2
    need = 64 / a.step_seconds * (cfg.crop_seconds / 2.0)
    print(
        f"pipeline: {views / dt:.0f} views/s ({dt / a.batches * 1e3:.0f} ms per batch of "
        f"{a.global_batch}x2 "
        f"views of {cfg.crop_seconds} s + noise/babble crops + RIRs; {a.num_workers} tf.data "
        "workers); "
        f"train step eats ~{need:.0f} views/s -> {views / dt / need:.1f}x"
    )

    import jax

    from ssv_jax import augment
    from ssv_jax.data.batch import device_part

    f = jax.jit(lambda batch, key: augment.augment(batch, key, cfg.augment, cfg.sample_rate))
    dev = device_part(b)
    f(dev, jax.random.key(0)).block_until_ready()
    t = time.time()
    for i in range(5):
        f(dev, jax.random.key(i)).block_until_ready()
    print(
        f"augment (jit, CPU, reverb + noise + EQ) on [{a.global_batch}, 2, {T}]: "
        f"{(time.time() - t) / 5 * 1e3:.0f} ms per batch"
    )

    t = time.time()
    res = mean_logmel_baseline(cfg)
    for name, (e, n) in res.items():
        print(
            f"mean-log-mel cosine baseline: {name} EER {e:.2f}% on {n} trials "
            f"({time.time() - t:.0f} s)"
        )
    if a.data_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
