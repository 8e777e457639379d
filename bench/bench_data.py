"""Data benchmarks: build speed (audio hours per minute), pipeline throughput, baseline EER.

    python bench/bench_data.py [--data_dir=DIR] [--batches=8] [--skip_folder]
    python bench/bench_data.py --pipeline_only [--data_dir=DIR] [--global_batch=256]

Prints:
  * embedded corpus build time and audio hours per minute (synthesis + TFDS write);
  * data_prep/folder.py speed on generated wav files (decode + resample + write);
  * the pipeline (crops + noise/babble crops + SNRs + RIRs, the full train_batches
    output, --global_batch x 2 views of the data config's 2 s): the bytes per batch sent to
    the device; the builder's views per CPU second in one process and a profile of where
    its time goes; per --worker_counts, views/s and views per CPU second of the trainer and
    its workers together (the median of --repeats runs); views/s with the most workers
    against what the train step consumes (--step_views_per_s); and the line
    ``pipeline: N views per host-core second (2.00 s views, noise + RIR)``, N being the
    views per CPU second of all processes with the most workers;
  * on-device augmentation time for one batch (jit, CPU);
  * the mean-log-mel cosine baseline EER on the default test trials.

--pipeline_only prints the pipeline figures alone, on the datasets in --data_dir (default:
the data config's, built there if missing).
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


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (default: this one) and its live children
    (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    pid = os.getpid() if pid is None else pid
    total = 0.0
    for d in (d for d in os.listdir("/proc") if d.isdigit()):
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except (OSError, ValueError):
            continue
        if int(d) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _run(cfg, global_batch: int, batches: int, workers: int, start: int) -> tuple[float, float]:
    """(wall-clock views/s, views per CPU second of the trainer and its workers together) of
    train_batches with ``workers`` worker processes, after a warm-up (worker start)."""
    from ssv_jax import data

    cfg = cfg.copy_and_resolve_references()
    cfg.num_workers = workers
    it = data.train_batches(cfg, global_batch=global_batch, seed=0, start_step=start)
    for _ in range(2 * max(workers, 1)):
        next(it)
    c, t = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        b = next(it)
        del b  # as a training loop drops each batch
    dt, dc = time.perf_counter() - t, _cpu_seconds() - c
    it.close()
    views = batches * global_batch * 2
    return views / dt, views / dc


def pipeline_figures(cfg, a):
    """Print the pipeline's figures (see the module docstring); returns a batch."""
    import cProfile
    import pstats

    from ssv_jax.data import pipeline
    from ssv_jax.data.batch import DEVICE_FIELDS

    G = a.global_batch
    build = pipeline.builder_for(cfg, global_batch=G, seed=0, process_index=0, process_count=1)
    b = build(0)
    per_view = sum(b[k].nbytes for k in DEVICE_FIELDS) / (2 * G)
    sizes = ", ".join(f"{k} {b[k].nbytes / (2 * G) / 1024:.1f}" for k in DEVICE_FIELDS)
    print(
        f"host -> device: {per_view * 2 * G / 2**20:.1f} MiB per batch of {G}x2 views "
        f"({per_view / 1024:.0f} KiB per view: {sizes} KiB; views of {build.T} samples, RIRs "
        f"of {build.L})"
    )
    for k in range(1, 3):  # warm-up: page cache, RIR peaks
        build(k)
    rates = []
    for r in range(a.repeats):
        c = time.process_time()
        for k in range(a.batches):
            build(1000 * (r + 1) + k)
        rates.append(a.batches * G * 2 / (time.process_time() - c))
    print(
        f"builder, in one process: {_median(rates):.0f} views per CPU second (median of "
        f"{a.repeats} x {a.batches} batches: " + ", ".join(f"{x:.0f}" for x in rates) + ")"
    )
    prof = cProfile.Profile()
    prof.enable()
    for k in range(max(a.batches // 2, 1)):
        build(5000 + k)
    prof.disable()
    print("where the builder's time goes (cProfile, top 8 by own time):")
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]
    total = sum(v[2] for v in stats.stats.values())
    for (file, line, fn), (_, calls, own, _, _) in rows:
        print(f"  {100 * own / total:5.1f}%  {calls:8d} calls  {os.path.basename(file)}:{fn}")
    counts = [int(w) for w in a.worker_counts.split(",") if w.strip()]
    res = {w: [] for w in counts}
    for r in range(a.repeats):  # interleaved, so slow spells of a shared machine hit each count
        for w in counts:
            res[w].append(_run(cfg, G, a.batches, w, 100000 * (r + 1)))
    for w in counts:
        wall, cpu = _median([x[0] for x in res[w]]), _median([x[1] for x in res[w]])
        print(
            f"pipeline, {w} worker process{'es' if w > 1 else ''}: {wall:.0f} views/s, "
            f"{cpu:.0f} views per CPU second of all processes (median of {a.repeats}: "
            + ", ".join(f"{x[0]:.0f}" for x in res[w])
            + " views/s)"
        )
    top = max(counts)
    wall, cpu = _median([x[0] for x in res[top]]), _median([x[1] for x in res[top]])
    cores = os.cpu_count()
    print(
        f"cores: {cores}, load average {os.getloadavg()[0]:.1f} (other load slows these); "
        f"with {top} workers on {cores} cores: {wall:.0f} views/s against the step's "
        f"{a.step_views_per_s:.0f} -> {wall / a.step_views_per_s:.2f}x"
    )
    print(
        f"pipeline: {cpu:.0f} views per host-core second ({cfg.crop_seconds:.2f} s views, "
        f"noise + RIR)"
    )
    return b


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data_dir", default=None, help="where to build (default: a fresh temporary folder)"
    )
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--global_batch", type=int, default=256, help="the paper's: 256")
    p.add_argument(
        "--step_views_per_s",
        type=float,
        default=27700,
        help="views/s the train step consumes (the paper step in bfloat16 on one H100)",
    )
    p.add_argument("--skip_folder", action="store_true")
    p.add_argument(
        "--worker_counts",
        default=f"1,{os.cpu_count()}",
        help="comma-separated worker counts to time (default: 1 and one per core)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--pipeline_only", action="store_true", help="the pipeline figures alone")
    a = p.parse_args()

    from ssv_jax import data
    from ssv_jax.data import datasets, prep

    cfg = data.default_data_config()
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
