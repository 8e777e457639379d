"""Data: TFDS builders (folder round trip, bad files), trials, the embedded corpus, and the train
pipeline."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from ssv_jax import data
from ssv_jax.data import datasets, pipeline, records, synthetic
from ssv_jax.data.trials import parse_trials
from tests.helpers.procs import gone, worker_pids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers


def tiny_cfg(data_dir, **kw):
    c = data.default_data_config()
    c.data_dir = str(data_dir)
    s = c.synthetic
    s.train_speakers, s.test_speakers = 6, 3
    s.train_sessions, s.test_sessions, s.utterances_per_session = 2, 2, 2
    s.min_seconds, s.max_seconds = 0.6, 1.2
    s.n_trials = 24
    s.noise_clips = s.speech_clips = s.music_clips = 3
    s.rirs = 4
    s.bank_seconds = 1.0
    c.crop_seconds = 0.25
    c.augment.rir_seconds = 0.05
    c.num_workers = 0
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def syn_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    datasets.ensure_dataset(tiny_cfg(d))
    return d


def _write_folder(root):
    """speaker/session/utt.wav files; returns {utt id: int16 audio at 16 kHz} of the good ones."""
    rng = np.random.default_rng(0)
    good = {}
    for s in range(3):
        for e in range(2):
            for u in range(2):
                x = (rng.standard_normal(8000 + 800 * u) * 3000).astype(np.int16)
                rel = f"spk{s}/sess{e}/u{u}.wav"
                os.makedirs(os.path.join(root, f"spk{s}/sess{e}"), exist_ok=True)
                sf.write(os.path.join(root, rel), x, 16000, subtype="PCM_16")
                good[rel] = x
    # a 22.05 kHz float file (resampled), a corrupt file, an empty file, a misplaced file
    t = np.arange(22050) / 22050
    sf.write(
        os.path.join(root, "spk0/sess0/hi_rate.flac"), 0.5 * np.sin(2 * np.pi * 440 * t), 22050
    )
    with open(os.path.join(root, "spk1/sess0/corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    sf.write(os.path.join(root, "spk1/sess1/empty.wav"), np.zeros(0, np.int16), 16000)
    sf.write(os.path.join(root, "stray.wav"), np.zeros(1600, np.int16), 16000)
    return good


# ----------------------------------------------------------------------------- builders


def test_folder_round_trip_with_bad_files(tmp_path, capsys, monkeypatch):
    audio_dir, out = tmp_path / "audio", tmp_path / "tfds"
    good = _write_folder(str(audio_dir))
    trials = tmp_path / "my_trials.txt"
    trials.write_text(
        "1 spk2/sess0/u0.wav spk2/sess1/u1.wav\n0 spk2/sess0/u0.wav spk1/sess0/u0.wav\n"
        "1 spk1/sess0/u1.wav spk1/sess1/u0\n"
    )  # last id without extension: resolved
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "folder.py",
            f"--audio_dir={audio_dir}",
            f"--data_dir={out}",
            "--name=my_spk",
            f"--trials={trials}",
            "--num_workers=2",
        ],
    )
    summary = runpy.run_path(os.path.join(REPO, "data_prep", "folder.py"), run_name="__not_main__")[
        "main"
    ]()
    printed = summary.report()
    # Trial speakers (spk1, spk2) are the test split; spk0 trains.
    assert summary.written == {"train": 5, "test": 8}
    reasons = {os.path.basename(k): r for sk in summary.skipped.values() for k, r in sk}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "stray.wav"}
    assert reasons["corrupt.wav"].startswith("unreadable") and reasons["empty.wav"].startswith(
        "empty"
    )
    assert "3 skipped" in printed.replace("0 skipped", "") or "skipped by reason" in printed
    ds = records.Dataset(records.find_version_dir(str(out), "my_spk"))
    for split in ("train", "test"):
        rows = ds.index(split)
        src = ds.source(split)
        assert len(src) == len(rows)
        for i, (utt, spk, sess, n) in enumerate(rows):
            rec = src[i]
            assert rec["utterance"].decode() == utt and rec["speaker"].decode() == spk
            assert rec["session"].decode() == sess and rec["audio"].size == n
            if utt in good:
                np.testing.assert_array_equal(rec["audio"], good[utt])
    # resampled 22.05 kHz file: 1 s of audio -> 16000 samples, still a 440 Hz tone
    hi = [r for r in ds.index("train") if r[0].endswith("hi_rate.flac")][0]
    assert abs(hi[3] - 16000) <= 1
    x = ds.source("train")[[r[0] for r in ds.index("train")].index(hi[0])]["audio"].astype(
        np.float64
    )
    assert abs(np.argmax(np.abs(np.fft.rfft(x))) * 16000 / x.size - 440) < 2
    # trials and evaluation utterances through the config API
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.augment.enabled = "my_spk", str(out), False
    # The dataset describes itself: training split, its trial list and the split holding it.
    assert ds.layout == {"train_split": "train", "trials": {"my_trials": "test"}}
    saved = (ds.dir / records.LAYOUT_FILE).read_text()  # a build from before layout.json:
    (ds.dir / records.LAYOUT_FILE).unlink()  # the same layout, found from the index
    assert records.Dataset(ds.dir).layout == ds.layout
    (ds.dir / records.LAYOUT_FILE).write_text(saved)
    assert data.train_split(cfg) == "train" and data.eval_split(cfg) == "test"
    assert data.trial_lists(cfg) == ("my_trials",)
    cfg.trials = ("my_trials",)
    t = data.load_trials(cfg)["my_trials"]
    np.testing.assert_array_equal(t.labels, [1, 0, 1])
    assert t.test[2] == "spk1/sess1/u0.wav"
    waves = dict(data.eval_utterances(cfg))
    assert set(waves) == {r[0] for r in ds.index("test")}
    np.testing.assert_allclose(waves["spk2/sess0/u0.wav"], good["spk2/sess0/u0.wav"] / 32768.0)
    # a trial naming an utterance that is not in the data: the error names it
    (ds.dir / "trials" / "bad.txt").write_text("1 spk2/sess0/u0.wav spk9/nowhere/x.wav\n")
    cfg.trials = ("bad",)
    with pytest.raises(ValueError, match="spk9/nowhere/x.wav"):
        data.load_trials(cfg)
    cfg.trials = ("absent",)
    with pytest.raises(FileNotFoundError, match="absent"):
        data.load_trials(cfg)


def test_missing_dataset_names_path_and_command(tmp_path):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir = "voxceleb2", str(tmp_path)
    cfg.augment.enabled = False
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.ensure_dataset(cfg)
    assert str(tmp_path / "voxceleb2") in str(e.value) and "data_prep/voxceleb.py" in str(e.value)
    cfg.name = "my_corpus"
    with pytest.raises(FileNotFoundError, match=r"data_prep/folder.py .*--name=my_corpus"):
        data.steps_per_epoch(cfg, 8)
    with pytest.raises(ValueError, match="not valid"):
        records.check_name("Bad-Name")


def test_voxceleb_layout(tmp_path):
    """VoxCeleb1 released layout (dev/test wav folders) + cleaned trial list names."""
    from ssv_jax.data import prep

    rng = np.random.default_rng(1)
    for part, spk in (
        ("vox1_dev_wav", "id10001"),
        ("vox1_test_wav", "id10270"),
        ("vox1_test_wav", "id10271"),
    ):
        d = tmp_path / "vox1" / part / "wav" / spk / "abcDEF"
        d.mkdir(parents=True)
        for u in (1, 2):
            sf.write(d / f"{u:05d}.wav", (rng.standard_normal(4000) * 1000).astype(np.int16), 16000)
    (tmp_path / "vox1" / "veri_test2.txt").write_text(
        "1 id10270/abcDEF/00001.wav id10270/abcDEF/00002.wav\n0 id10270/abcDEF/00001.wav "
        "id10271/abcDEF/00001.wav\n"
    )
    [s] = prep.build_voxceleb(
        str(tmp_path / "tfds"), vox1_dir=str(tmp_path / "vox1"), num_workers=1
    )
    assert s.written == {"dev": 2, "test": 4}
    cfg = data.default_data_config()
    cfg.data_dir, cfg.name, cfg.trials, cfg.augment.enabled = (
        str(tmp_path / "tfds"),
        "voxceleb1",
        ("voxceleb1_o",),
        False,
    )
    t = data.load_trials(cfg)["voxceleb1_o"]
    assert t.enroll[0] == "id10270/abcDEF/00001.wav" and list(t.labels) == [1, 0]
    both = [
        u for u, _ in data.eval_utterances(cfg, "dev+test")
    ]  # VoxCeleb1-E/H evaluate over both splits
    assert len(both) == 6 and both[0].startswith("id10001/")


def test_parse_trials_rejects_bad_lines():
    with pytest.raises(ValueError, match="line 2"):
        parse_trials("1 a b\n2 a b\n", "x")


# ----------------------------------------------------------------------------- embedded corpus


def test_synthetic_corpus(syn_dir):
    cfg = tiny_cfg(syn_dir)
    size = datasets.size_from_config(cfg)
    ds = datasets.ensure_dataset(cfg)
    train, test = ds["synthetic"].index("train"), ds["synthetic"].index("test")
    assert len(train) == 6 * 2 * 2 and len(test) == 3 * 2 * 2
    assert not {r[1] for r in train} & {r[1] for r in test}  # disjoint speakers
    assert all(0.6 * 16000 - 1 <= r[3] <= 1.2 * 16000 + 1 for r in train + test)
    # deterministic: the stored audio equals a fresh render
    plan = synthetic.utterance_plan(size, "test")
    rec = ds["synthetic"].source("test")[0]
    row = [p for p in plan if p[0] == rec["utterance"].decode()][0]
    np.testing.assert_array_equal(rec["audio"], synthetic.render_utterance((size, row))["audio"])
    t = data.load_trials(cfg)["synthetic_test"]
    assert 0.4 <= t.labels.mean() <= 0.6
    sess = lambda u: u.rsplit("/", 1)[0]  # noqa: E731
    tgt = [(a, b) for lab, a, b in zip(t.labels, t.enroll, t.test) if lab]
    assert sum(sess(a) != sess(b) for a, b in tgt) >= 0.75 * len(tgt)
    assert all(a.split("/")[0] == b.split("/")[0] for a, b in tgt)
    non = [(a, b) for lab, a, b in zip(t.labels, t.enroll, t.test) if not lab]
    assert all(a.split("/")[0] != b.split("/")[0] for a, b in non)
    # banks: three noise categories and RIRs
    assert set(ds["synthetic_noise"].splits) == {"noise", "speech", "music"}
    assert ds["synthetic_rirs"].num_records("train") == 4
    # the cache is current for every part; a size change makes it stale
    for name in ("synthetic", "synthetic_noise", "synthetic_rirs"):
        assert datasets._synthetic_current(str(syn_dir), size, name)
    bigger = dataclasses.replace(size, rirs=size.rirs + 1)
    assert not datasets._synthetic_current(str(syn_dir), bigger, "synthetic_rirs")
    # layout: the corpus trains on "train" and keeps its list in "test"; banks train on nothing
    assert ds["synthetic"].layout == {"train_split": "train", "trials": {"synthetic_test": "test"}}
    assert ds["synthetic_rirs"].layout["train_split"] is None


# ----------------------------------------------------------------------------- pipeline


def _batches(cfg, n, **kw):
    kw.setdefault("global_batch", 4)
    kw.setdefault("seed", 3)
    return [b for b, _ in zip(data.train_batches(cfg, **kw), range(n))]


def _eq(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("overlap", [False, True])
def test_crops_in_bounds_and_distinct(syn_dir, overlap):
    cfg = tiny_cfg(syn_dir, overlap=overlap)
    src = datasets.open_dataset(cfg, "synthetic").source("train")
    T = int(cfg.crop_seconds * 16000)
    for b in _batches(cfg, 3):
        assert b["views"].shape == (4, 2, T) and b["views"].dtype == np.int16
        assert b["noise"].shape == (4, 2, T) and b["rir"].shape == (4, 2, 800)
        for s, i in enumerate(b["index"]):
            x = src[int(i)]["audio"]
            x = np.resize(x, max(x.size, T if overlap else 2 * T))
            a0, a1 = b["crop_start"][s]
            assert 0 <= a0 <= x.size - T and 0 <= a1 <= x.size - T
            np.testing.assert_array_equal(b["views"][s, 0], x[a0 : a0 + T])
            np.testing.assert_array_equal(b["views"][s, 1], x[a1 : a1 + T])
            if not overlap:
                assert abs(int(a0) - int(a1)) >= T
            assert not np.array_equal(b["views"][s, 0], b["views"][s, 1])


def test_short_utterances_wrap_padded(syn_dir):
    cfg = tiny_cfg(syn_dir, crop_seconds=1.0)  # 2 crops = 2 s > every utterance (<= 1.2 s)
    b = _batches(cfg, 1)[0]
    src = datasets.open_dataset(cfg, "synthetic").source("train")
    x = src[int(b["index"][0])]["audio"]
    a = b["crop_start"][0, 0]
    np.testing.assert_array_equal(b["views"][0, 0], np.resize(x, 32000)[a : a + 16000])


def _babble_reference(build, bank, d, s, v, T):
    """Float64 babble of view (s, v) from the batch's draws: unit-RMS clips summed, peak-scaled."""
    mix = np.zeros(T)
    for j in range(int(d["babble"][s, v])):
        x = bank.audio(min(int(d["clip"][s, v, j] * len(bank)), len(bank) - 1)).astype(np.float64)
        m = max(x.size, T)
        at = min(int(d["clip_at"][s, v, j] * (m - T + 1)), m - T)
        c = np.resize(x, m)[at : at + T]
        mix += c / (np.sqrt(np.mean(c**2)) + 1e-8)
    return mix * 32767.0 / np.max(np.abs(mix))


def test_augmentation_inputs(syn_dir):
    cfg = tiny_cfg(syn_dir)
    cfg.augment.rir_prob = 0.5
    bs = _batches(cfg, 6, global_batch=8)
    on = np.concatenate([b["noise_on"].ravel() for b in bs])
    cat = np.concatenate([b["noise_category"].ravel() for b in bs])
    snr = np.concatenate([b["snr_db"].ravel() for b in bs])
    assert on.all() and set(cat) == {0, 1, 2}
    for c, (lo, hi) in zip((0, 1, 2), ((0, 15), (13, 20), (5, 15))):
        assert np.all((snr[cat == c] >= lo) & (snr[cat == c] <= hi))
    rir_on = np.concatenate([b["rir_on"].ravel() for b in bs])
    rir = np.concatenate([b["rir"].reshape(-1, 800) for b in bs])
    assert 0 < rir_on.mean() < 1 and rir.dtype == np.int16
    assert np.all(np.argmax(np.abs(rir[rir_on]), 1) == 0)  # sliced from its peak
    np.testing.assert_array_equal(rir[~rir_on], np.eye(800)[[0] * int((~rir_on).sum())])
    noise = np.concatenate([b["noise"].reshape(-1, b["noise"].shape[-1]) for b in bs])
    assert np.all(np.abs(noise).max(1) > 0)
    # babble against a float64 reference, to within the int16 truncation
    build = pipeline.builder_for(cfg, global_batch=8, seed=3, process_index=0, process_count=1)
    T, n = build.T, 0
    for k, b in enumerate(bs):
        d = build._draws(k)
        for s, v in zip(*np.nonzero(b["noise_category"] == 1)):
            ref = _babble_reference(build, build.noise["speech"], d, s, v, T)
            np.testing.assert_allclose(b["noise"][s, v], ref, atol=1.01)
            n += 1
    assert n > 0


def test_deterministic_for_a_seed(syn_dir):
    cfg = tiny_cfg(syn_dir)
    a, b, c = _batches(cfg, 3), _batches(cfg, 3), _batches(cfg, 3, seed=4)
    for x, y in zip(a, b):
        _eq(x, y)
    assert not np.array_equal(a[0]["views"], c[0]["views"])


def _in_slot(batch) -> bool:
    """Whether the batch's arrays are a worker's reused shared-memory slot (no copy)."""
    import mmap

    v = batch["views"]
    mv = getattr(v.base, "base", None)
    return type(v) is np.ndarray and isinstance(mv, memoryview) and isinstance(mv.obj, mmap.mmap)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd slots and /proc")
def test_worker_processes_match_plain(syn_dir):
    """1 or 2 worker processes give the plain batches bit for bit: across an epoch boundary,
    with slots reused (every field rewritten: noise and RIR half on, half off), whether the
    consumer keeps every batch (the first ones in slots, which later builds must not touch, then
    plain arrays) or drops each one after the next (slots throughout), and for process 1 of 2.
    Closing the iterator ends the workers."""
    cfg = tiny_cfg(syn_dir)
    cfg.augment.noise_prob = cfg.augment.rir_prob = 0.5
    kw = dict(start_step=4, global_batch=4)  # 6 steps per epoch
    plain = _batches(cfg, 8, **kw)
    assert {bool(b["noise_on"].all()) for b in plain} == {False}
    kept = _batches(tiny_cfg(syn_dir, num_workers=1, prefetch=1, augment=cfg.augment), 8, **kw)
    # 1 + 2 * prefetch + consumer_holds = 5 slots, then plain arrays
    assert [_in_slot(b) for b in kept] == [True] * 5 + [False] * 3
    it = data.train_batches(
        tiny_cfg(syn_dir, num_workers=2, prefetch=2, augment=cfg.augment), seed=3, **kw
    )
    dropped = []
    for _ in range(8):
        b = next(it)  # the previous batch is dropped only now, as in a training loop
        assert _in_slot(b)
        dropped.append({k: v.copy() for k, v in b.items()})
    del b
    for x, y, z in zip(plain, kept, dropped):
        _eq(x, y)
        _eq(x, z)
    pids = worker_pids()
    assert len(pids) == 2
    it.close()
    assert gone(pids)
    kw.update(process_index=1, process_count=2)
    shard = _batches(tiny_cfg(syn_dir, num_workers=2, augment=cfg.augment), 2, **kw)
    for x, y in zip(_batches(cfg, 2, **kw), shard):
        _eq(x, y)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_dead_worker_stops_the_iterator(syn_dir):
    it = data.train_batches(tiny_cfg(syn_dir, num_workers=2), global_batch=4, seed=3)
    next(it)
    os.kill(worker_pids()[0], signal.SIGKILL)
    with pytest.raises(RuntimeError, match="terminated"):
        for _ in range(1000):
            next(it)
    it.close()


_CALLER = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.test_data import tiny_cfg, _square
from ssv_jax import data
from ssv_jax.data.pool import ordered_map
if __name__ == "__main__":
    if {what!r} == "pipeline":
        it = data.train_batches(tiny_cfg({d!r}, num_workers=2), global_batch=4, seed=3)
    else:  # a dataset build's decoding pool
        it = ordered_map(_square, range(100), 2)
    next(it)
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@pytest.mark.parametrize("what", ["pipeline", "ordered_map"])
def test_workers_exit_when_their_caller_is_killed(syn_dir, tmp_path, what):
    script = tmp_path / "caller.py"
    script.write_text(_CALLER.format(repo=REPO, d=str(syn_dir), what=what))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        assert p.stdout.readline().strip() == "ready"
        pids = worker_pids(p.pid)
        assert len(pids) == 2
        p.kill()
        p.wait(timeout=30)
        assert gone(pids)
    finally:
        if p.poll() is None:
            p.kill()
        for pid in pids if not gone(pids, 0.1) else []:  # left by a failure
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_flat_copy_is_what_tfds_decodes(syn_dir, tmp_path, monkeypatch):
    from ssv_jax.data import pcm

    cfg = tiny_cfg(syn_dir)
    for name, split in (("synthetic", "train+test"), ("synthetic_noise", "speech")):
        ds = datasets.open_dataset(cfg, name)
        flat, src = pcm.flat_pcm(ds, split), ds.source(split)
        assert len(flat) == len(src) > 0 and flat.data_path.startswith(str(ds.dir))
        for i in range(len(src)):
            a = flat.audio(i)
            assert a.dtype == np.int16
            np.testing.assert_array_equal(a, src[i]["audio"])
    # a dataset directory that cannot be written to: the copy goes to the cache
    monkeypatch.setattr(pcm.os, "access", lambda *a: False)
    monkeypatch.setattr(pcm, "CACHE_DIR", str(tmp_path / "cache"))
    ds = datasets.open_dataset(cfg, "synthetic")
    flat = pcm.flat_pcm(ds, "test")
    assert flat.data_path.startswith(str(tmp_path / "cache"))
    np.testing.assert_array_equal(flat.audio(3), ds.source("test")[3]["audio"])


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_record_file_is_named(syn_dir, tmp_path, damage):
    from ssv_jax.data import pcm

    shutil.copytree(
        syn_dir / "synthetic", tmp_path / "synthetic", ignore=shutil.ignore_patterns("pcm")
    )
    (f,) = (tmp_path / "synthetic").glob("*/synthetic-train.array_record*")
    raw = bytearray(f.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 4 : len(raw) // 2] = bytes(
            b ^ 0x5A for b in raw[len(raw) // 4 : len(raw) // 2]
        )
    f.write_bytes(bytes(raw))
    ds = records.Dataset(records.find_version_dir(str(tmp_path), "synthetic"))
    with pytest.raises(pcm.DamagedRecordError, match=re.escape(str(f))):
        pcm.flat_pcm(ds, "train")
    assert not list((tmp_path / "synthetic").glob("*/pcm/train.*"))  # nothing half-written


def _square(x):
    return x * x


def _start_env(_):
    """The environment this process was started with (not os.environ, which code may change)."""
    with open("/proc/self/environ", "rb") as f:
        pairs = [kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv]
    return {k.decode(): v.decode() for k, v in pairs}


def test_ordered_map(monkeypatch):
    from ssv_jax.data.pool import WorkerError, ordered_map

    assert list(ordered_map(_square, range(20), 2)) == [x * x for x in range(20)]
    if sys.platform.startswith("linux"):  # one BLAS thread per worker from its start
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")  # the user's choice is kept
        envs = list(ordered_map(_start_env, range(4), 2))
        assert all(e["OMP_NUM_THREADS"] == "1" for e in envs), envs[0]
        assert all(e["OPENBLAS_NUM_THREADS"] == "3" for e in envs)
        assert "OMP_NUM_THREADS" not in os.environ  # the caller's environment as it was
    got = list(ordered_map(_square, [2, "a", 3], 2))
    assert got[0] == 4 and got[2] == 9
    assert isinstance(got[1], WorkerError) and "TypeError" in got[1].message


def test_process_sharding_disjoint_and_complete(syn_dir):
    cfg = tiny_cfg(syn_dir)
    spe = data.steps_per_epoch(cfg, 4)
    assert spe == 24 // 4
    whole = _batches(cfg, spe, global_batch=4, process_index=0, process_count=1)
    parts = [_batches(cfg, spe, global_batch=4, process_index=p, process_count=2) for p in range(2)]
    seen = []
    for k in range(spe):
        merged = {f: np.concatenate([parts[0][k][f], parts[1][k][f]]) for f in whole[k]}
        _eq(merged, whole[k])  # the global batch does not depend on the process count
        assert not set(parts[0][k]["index"]) & set(parts[1][k]["index"])
        seen += list(parts[0][k]["index"]) + list(parts[1][k]["index"])
    assert sorted(seen) == list(range(24))  # one epoch covers every record exactly once
    with pytest.raises(ValueError, match="multiple of 3"):
        _batches(cfg, 1, global_batch=4, process_index=0, process_count=3)


def test_resume_equals_uninterrupted(syn_dir):
    cfg = tiny_cfg(syn_dir)
    full = _batches(cfg, 10)  # 6 steps per epoch: crosses an epoch boundary
    for k in (0, 4, 7):
        for x, y in zip(_batches(cfg, 10 - k, start_step=k), full[k:]):
            _eq(x, y)
    e0 = np.concatenate([b["index"] for b in full[:6]])
    e1 = np.concatenate([b["index"] for b in full[6:10]])
    assert sorted(e0) == list(range(24)) and not np.array_equal(e0[:16], e1)  # reshuffled per epoch


def test_decode_reports_instead_of_raising(tmp_path):
    from ssv_jax.data import audio

    (tmp_path / "x.m4a").write_bytes(b"\x00" * 100)
    (tmp_path / "short.wav").write_bytes(b"")
    sf.write(tmp_path / "tiny.wav", np.ones(100, np.float32) * 0.1, 16000)
    sf.write(tmp_path / "ok8k.wav", np.sin(np.arange(8000) * 0.3).astype(np.float32) * 0.5, 8000)
    assert audio.decode_file(str(tmp_path / "x.m4a")).error.startswith("unreadable")
    assert audio.decode_file(str(tmp_path / "short.wav")).error.startswith("unreadable")
    assert audio.decode_file(str(tmp_path / "tiny.wav")).error.startswith("too short")
    assert audio.decode_file(str(tmp_path / "nope.wav")).error.startswith("unreadable")
    if not audio.shutil.which("ffmpeg"):
        try:
            import av  # noqa: F401
        except (
            ImportError
        ):  # no decoder: a build of m4a files stops before any work, saying what to install
            with pytest.raises(RuntimeError, match="ffmpeg"):
                audio.check_decoder_for([str(tmp_path / "x.m4a")])
    ok = audio.decode_file(str(tmp_path / "ok8k.wav"))
    assert ok.error is None and ok.pcm.dtype == np.int16 and abs(ok.pcm.size - 16000) <= 1


def test_musan_and_rir_banks_feed_the_pipeline(syn_dir, tmp_path):
    from ssv_jax.data import prep

    rng = np.random.default_rng(2)
    for cat, secs in (("noise", 14.0), ("speech", 3.0), ("music", 7.0)):
        d = tmp_path / "musan" / cat / "src"
        d.mkdir(parents=True)
        sf.write(
            d / f"{cat}-0001.wav",
            (rng.standard_normal(int(secs * 16000)) * 0.1).astype(np.float32),
            16000,
        )
    (tmp_path / "musan" / "noise" / "src" / "broken.wav").write_bytes(b"not a wav")
    s = prep.build_musan(str(tmp_path / "musan"), str(syn_dir), name="musan_t", num_workers=1)
    assert s.written == {
        "noise": 3,
        "speech": 1,
        "music": 1,
    }  # 14 s -> 6 + 6 + 2; 7 s -> 7 (short tail joins)
    ds = records.Dataset(records.find_version_dir(str(syn_dir), "musan_t"))
    assert [r[3] for r in ds.index("music")] == [7 * 16000] and sum(
        r[3] for r in ds.index("noise")
    ) == 14 * 16000
    assert len(s.skipped["noise"]) == 1
    room = tmp_path / "RIRS_NOISES" / "simulated_rirs" / "smallroom" / "Room001"
    room.mkdir(parents=True)
    for i in range(3):
        h = np.zeros(4000, np.float32)
        h[100 + i] = 0.8  # direct path after a delay: the pipeline trims to it
        h[150:] = (
            rng.standard_normal(3850).astype(np.float32) * 0.05 * np.exp(-np.arange(3850) / 500)
        )
        sf.write(room / f"Room001-0000{i}.wav", h, 8000)  # 8 kHz: resampled
    r = prep.build_rirs(str(tmp_path / "RIRS_NOISES"), str(syn_dir), name="rirs_t", num_workers=1)
    assert r.written == {"train": 3}
    cfg = tiny_cfg(syn_dir)
    cfg.augment.noise_bank, cfg.augment.rir_bank = "musan_t", "rirs_t"
    bs = _batches(cfg, 4, global_batch=8)
    cat = np.concatenate([b["noise_category"].ravel() for b in bs])
    assert set(cat) == {0, 1, 2}
    rir = np.concatenate([b["rir"].reshape(-1, 800) for b in bs])
    assert np.all(np.argmax(np.abs(rir), 1) == 0) and np.all(np.abs(rir).max(1) > 1)
    cfg.augment.categories = ("noise", "applause")
    with pytest.raises(ValueError, match="applause"):
        _batches(cfg, 1)
