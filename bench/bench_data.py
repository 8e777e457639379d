"""Data benchmarks: build speed (audio hours per minute), pipeline throughput, baseline EER.

    python bench/bench_data.py [--data_dir=DIR] [--batches=40] [--skip_folder]
    python bench/bench_data.py --pipeline_only [--data_dir=DIR] [--bank_cache_mb=0]

Prints:
  * embedded corpus build time and audio hours per minute (synthesis + TFDS write);
  * data_prep/folder.py speed on generated wav files (decode + resample + write);
  * the pipeline (crops + noise/babble crops + SNRs + RIRs, the full train_batches
    output): the bytes per batch sent to the device; the builder's rate per host core
    (views per CPU second of one process, which other load on the machine barely
    changes) and where its time goes; views/s with each of --worker_counts (1,2) worker
    processes (the median of --repeats runs) and per worker; then views/s with
    --num_workers against what the train step consumes: 64 views per --step_seconds
    (scaled to the crop length), the time of a Fast ResNet-34 step of 32 utterances x
    2 views x 2 s (measure it with bench/bench_train.py; the default is an earlier
    measurement, see bench/README.md);
  * on-device augmentation time for one batch (jit, CPU);
  * the mean-log-mel cosine baseline EER on the default test trials.

--pipeline_only prints the pipeline figures alone, on the datasets in --data_dir (default:
the data config's, built there if missing). --bank_cache_mb sets
ssv_jax.data.pipeline.BANK_CACHE_MB (0: every noise clip and RIR read from disk on every
draw, as for banks too big to cache, e.g. MUSAN).
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


def mean_logmel_scores(cfg, with_std: bool = False, neighbours: int = 0) -> dict:
    """Cosine scores of per-utterance mean log-mel vectors (numpy STFT, librosa mel filters),
    with the per-band standard deviation appended when ``with_std``, and expanded by their
    ``neighbours`` nearest among the trial utterances as evaluation's ``eval.neighbours`` does
    when > 0: {trial list: Trials, scores}."""
    import librosa

    from ssv_jax import data

    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, htk=True, norm=None)
    win = np.hamming(401)[:-1]
    emb = {}
    for u, w in data.eval_utterances(cfg):
        n = 1 + (w.size - 400) // 160
        fr = w[np.arange(400)[None] + 160 * np.arange(n)[:, None]] * win
        lm = np.log(np.abs(np.fft.rfft(fr, 512)) ** 2 @ mel.T + 1e-6)
        emb[u] = np.concatenate([lm.mean(0), lm.std(0)]) if with_std else lm.mean(0)
    lists = data.load_trials(cfg)
    if neighbours:  # over the trial utterances, as evaluation
        from ssv_jax.backends.neighbours import expand_neighbours

        ids = sorted({u for t in lists.values() for u in t.utterances})
        emb = dict(zip(ids, expand_neighbours(np.stack([emb[u] for u in ids]), neighbours)))
    out = {}
    for name, t in lists.items():
        E = np.stack([emb[u] for u in t.enroll])
        T = np.stack([emb[u] for u in t.test])
        out[name] = t, np.sum(E * T, 1) / np.linalg.norm(E, axis=1) / np.linalg.norm(T, axis=1)
    return out


def mean_logmel_baseline(cfg, with_std: bool = False) -> dict:
    """EER (%) of :func:`mean_logmel_scores`: {trial list: (EER, n_trials)}."""
    from ssv_jax.metrics import eer

    return {
        name: (float(eer(s, t.labels)), len(t))
        for name, (t, s) in mean_logmel_scores(cfg, with_std).items()
    }


def _median(xs):
    return float(np.median(np.asarray(xs)))


def _views_per_s(cfg, global_batch: int, batches: int, workers: int, start: int) -> float:
    """Wall-clock views/s of train_batches with ``workers`` worker processes, after a warm-up
    (worker start, bank caches)."""
    from ssv_jax import data

    cfg = cfg.copy_and_resolve_references()
    cfg.num_workers = workers
    it = data.train_batches(cfg, global_batch=global_batch, seed=0, start_step=start)
    for _ in range(6 * max(workers, 1)):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    it.close()
    return batches * global_batch * 2 / dt


def pipeline_figures(cfg, a):
    """Print the pipeline's figures (see the module docstring); returns a batch."""
    from ssv_jax import data
    from ssv_jax.data import pipeline
    from ssv_jax.data.batch import DEVICE_FIELDS

    G = a.global_batch
    stream = pipeline.TrainStream(cfg, global_batch=G, seed=0, process_index=0, process_count=1)
    b = stream.batch(0)
    per_view = sum(b[k].nbytes for k in DEVICE_FIELDS) / (2 * G)
    sizes = ", ".join(f"{k} {b[k].nbytes / (2 * G) / 1024:.1f}" for k in DEVICE_FIELDS)
    print(
        f"host -> device: {per_view * 2 * G / 2**20:.1f} MiB per batch of {G}x2 views "
        f"({per_view / 1024:.0f} KiB per view: {sizes} KiB; views of {stream.T} samples, RIRs "
        f"of {stream.L}); {per_view * 512 / 2**20:.0f} MiB per step of 256x2 views"
    )
    print(
        f"bank caches (BANK_CACHE_MB={pipeline.BANK_CACHE_MB}): noise "
        f"{dict(stream.spec.noise_cache)}, RIRs {stream.spec.rir_cache}"
    )
    for k in range(1, 6 + 200 // G):  # warm-up: bank caches
        stream.batch(k)
    rates, parts = [], {}
    for r in range(a.repeats):
        stream.timings = {}
        c, t = time.process_time(), time.perf_counter()
        for k in range(a.batches):
            stream.batch(1000 * (r + 1) + k)
        rates.append(a.batches * G * 2 / (time.process_time() - c))
        for part, sec in stream.timings.items():
            parts.setdefault(part, []).append(sec)
    per_core = _median(rates)
    print(
        f"builder, one process: {per_core:.0f} views per CPU second = views/s per host core "
        f"(median of {a.repeats} x {a.batches} batches: "
        + ", ".join(f"{x:.0f}" for x in rates)
        + ")"
    )
    total = sum(_median(v) for v in parts.values())
    n = a.batches * G * 2
    for part in pipeline._PARTS:
        if part in parts:
            sec = _median(parts[part])
            print(f"  {part:<34} {sec / n * 1e6:7.1f} us per view  {100 * sec / total:5.1f}%")
    print(f"  {'total (timed)':<34} {total / n * 1e6:7.1f} us per view")
    counts = [int(w) for w in a.worker_counts.split(",") if w.strip()]
    res = {w: [] for w in counts}
    for r in range(a.repeats):  # interleaved, so slow spells of a shared machine hit each count
        for w in counts:
            res[w].append(_views_per_s(cfg, G, a.batches, w, 100000 * (r + 1)))
    one = _median(res[counts[0]])
    for w in counts:
        v = _median(res[w])
        print(
            f"pipeline, {w} worker process{'es' if w > 1 else ''}: {v:.0f} views/s, "
            f"{v / max(w, 1):.0f} per worker, {v / one:.2f}x {counts[0]} "
            f"(median of {a.repeats}: " + ", ".join(f"{x:.0f}" for x in res[w]) + ")"
        )
    print(
        f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (other load slows these)"
    )

    it = data.train_batches(cfg, global_batch=G, seed=0)
    for _ in range(6 * max(a.num_workers, 1)):
        b = next(it)
    t = time.time()
    for _ in range(a.batches):
        b = next(it)
    dt = time.time() - t
    it.close()
    views = a.batches * G * 2
    need = 64 / a.step_seconds * (cfg.crop_seconds / 2.0)
    print(
        f"pipeline: {views / dt:.0f} views/s ({dt / a.batches * 1e3:.0f} ms per batch of "
        f"{G}x2 "
        f"views of {cfg.crop_seconds} s + noise/babble crops + RIRs; {a.num_workers} worker "
        "processes); "
        f"train step eats ~{need:.0f} views/s -> {views / dt / need:.1f}x"
    )
    return b


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
    p.add_argument("--worker_counts", default="1,2", help="comma-separated worker counts to time")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--pipeline_only", action="store_true", help="the pipeline figures alone")
    p.add_argument(
        "--bank_cache_mb", type=int, default=None, help="override pipeline.BANK_CACHE_MB"
    )
    a = p.parse_args()

    from ssv_jax import data
    from ssv_jax.data import datasets, pipeline, prep

    if a.bank_cache_mb is not None:
        pipeline.BANK_CACHE_MB = a.bank_cache_mb
    cfg = data.default_data_config()
    cfg.num_workers = a.num_workers
    if a.pipeline_only:
        if a.data_dir:
            cfg.data_dir = a.data_dir
        print(f"cores: {os.cpu_count()}; data_dir {cfg.data_dir}")
        datasets.ensure_dataset(cfg)
        pipeline_figures(cfg, a)
        return
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    data_dir = a.data_dir or os.path.join(tmp, "tfds")
    cfg.data_dir = data_dir
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
    b = pipeline_figures(cfg, a)
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
