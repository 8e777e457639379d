"""The embedded corpus: utterances of synthetic voices (``voices``), its trial list, and the
noise and RIR banks; no download.

Deterministic: each draw is seeded by (seed, role, ids), as in ``voices``.
The ``render_*`` functions are worker entries (``datasets.build_synthetic`` runs them in
worker subprocesses by their path).

Banks for the augmentation path with no download: ``noise`` (white/pink/brown,
band-limited, hum, clicks), ``speech`` (single synthetic speakers not in the
corpus; the pipeline sums several into babble), ``music`` (harmonic notes,
chords, percussion), and RIRs (exponentially decaying noise, RT60 0.15-0.9 s,
sparse early reflections, direct path at index 0, unit energy).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from ssv_jax.data.voices import SR, _rng, make_session, make_speaker, synth_speech

GENERATOR_VERSION = 4  # bump when the generator's output changes: cached corpora are rebuilt


@dataclasses.dataclass(frozen=True)
class CorpusSize:
    """How big the embedded corpus is (the ``synthetic`` sub-config holds these)."""

    train_speakers: int = 200
    test_speakers: int = 40
    train_sessions: int = 4
    test_sessions: int = 4
    utterances_per_session: int = 3
    min_seconds: float = 3.0
    max_seconds: float = 6.0
    n_trials: int = 4000
    same_session_target_fraction: float = 0.1
    noise_clips: int = 48
    speech_clips: int = 48
    music_clips: int = 32
    bank_seconds: float = 6.0
    rirs: int = 200
    seed: int = 0


# ----------------------------------------------------------------------------- corpus


def _speaker_ids(size: CorpusSize):
    train = [(f"spk{i:04d}", i) for i in range(size.train_speakers)]
    test = [(f"tst{i:04d}", 100000 + i) for i in range(size.test_speakers)]
    return train, test


def utterance_plan(size: CorpusSize, split: str):
    """(utterance id, speaker id, session id, speaker index, session index, utt index) per
    utterance."""
    train, test = _speaker_ids(size)
    spk, n_sess = (train, size.train_sessions) if split == "train" else (test, size.test_sessions)
    out = []
    for sid, si in spk:
        for e in range(n_sess):
            for u in range(size.utterances_per_session):
                out.append((f"{sid}/sess{e}/utt{u:02d}", sid, f"{sid}/sess{e}", si, e, u))
    return out


def render_utterance(args) -> dict:
    """Worker entry: (size, plan row) -> record dict with int16 audio."""
    size, (utt, sid, sess_id, si, e, u) = args
    spk = make_speaker(size.seed, si)
    sess = make_session(size.seed, si, e)
    r = _rng(size.seed, 3, si, e, u)
    seconds = r.uniform(size.min_seconds, size.max_seconds)
    y = synth_speech(spk, sess, r, seconds)
    return {
        "audio": (y * 32767).astype(np.int16),
        "speaker": sid,
        "session": sess_id,
        "utterance": utt,
    }


def make_trials(size: CorpusSize, plan) -> list[tuple[int, str, str]]:
    """Balanced trial list: half targets (mostly cross-session), half non-targets."""
    r = _rng(size.seed, 4)
    by_spk: dict = {}
    for utt, sid, sess, *_ in plan:
        by_spk.setdefault(sid, []).append((utt, sess))
    cross, same = [], []
    for sid, utts in by_spk.items():
        for (a, sa), (b, sb) in itertools.combinations(utts, 2):
            (same if sa == sb else cross).append((1, a, b))
    n_t = size.n_trials // 2
    n_same = min(len(same), int(round(n_t * size.same_session_target_fraction)))
    n_cross = min(len(cross), n_t - n_same)
    targets = [cross[i] for i in r.choice(len(cross), n_cross, replace=False)]
    targets += [same[i] for i in r.choice(len(same), n_same, replace=False)]
    utts = [(u, s) for u, s, *_ in plan]
    nontargets, seen = [], set()
    for _ in range(100 * len(targets) + 1000):
        if len(nontargets) >= len(targets):
            break
        i, j = r.integers(len(utts), size=2)
        if utts[i][1] == utts[j][1] or (i, j) in seen:
            continue
        seen.add((i, j))
        nontargets.append((0, utts[i][0], utts[j][0]))
    trials = targets + nontargets
    order = r.permutation(len(trials))
    return [trials[i] for i in order]


# ----------------------------------------------------------------------------- banks


def render_noise(args) -> dict:
    """Worker entry for the noise bank: (size, category, index) -> record."""
    size, cat, i = args
    r = _rng(size.seed, 5, ["noise", "speech", "music"].index(cat), i)
    T = int(size.bank_seconds * SR)
    if cat == "speech":
        si = 500000 + i
        y = synth_speech(make_speaker(size.seed, si), None, r, size.bank_seconds)
    elif cat == "noise":
        kind = i % 5
        x = r.standard_normal(T).astype(np.float32)
        X = np.fft.rfft(x)
        f = np.fft.rfftfreq(T, 1 / SR)
        if kind == 1:  # pink
            X /= np.sqrt(np.maximum(f, 20))
        elif kind == 2:  # brown
            X /= np.maximum(f, 20)
        elif kind == 3:  # band-limited
            c, w = r.uniform(300, 5000), r.uniform(200, 2000)
            X *= np.exp(-0.5 * ((f - c) / w) ** 2)
        y = np.fft.irfft(X, T).astype(np.float32)
        if kind == 4:  # clicks / keyboard-like bursts over a hum
            y = 0.05 * y
            hum = r.choice([50.0, 60.0])
            y += 0.2 * np.sin(2 * np.pi * hum * np.arange(T) / SR).astype(np.float32)
            for p in r.integers(0, T - 400, int(r.integers(5, 30))):
                y[p : p + 400] += r.standard_normal(400).astype(np.float32) * np.exp(
                    -np.arange(400) / 60
                )
        y *= 1 + 0.5 * np.sin(
            2 * np.pi * r.uniform(0.1, 2) * np.arange(T) / SR + r.uniform(0, 6)
        )  # slow level wander
    else:  # music: notes of harmonic tones with envelopes, chords, percussion
        y = np.zeros(T, np.float32)
        bpm = r.uniform(70, 160)
        beat = int(60 / bpm * SR)
        t_note = np.arange(beat * 2) / SR
        root = r.uniform(40, 60)
        scale = np.array([0, 2, 4, 5, 7, 9, 11])
        n_harm = int(r.integers(3, 10))
        decay = r.uniform(1.0, 6.0)
        for start in range(0, T, beat):
            for _ in range(int(r.integers(1, 4))):
                midi = root + scale[int(r.integers(7))] + 12 * int(r.integers(0, 2))
                f0 = 440 * 2 ** ((midi - 69) / 12)
                harm = sum(
                    np.sin(2 * np.pi * f0 * h * t_note) / h ** r.uniform(0.8, 2)
                    for h in range(1, n_harm + 1)
                    if f0 * h < 7500
                )
                env = np.minimum(t_note / 0.01, 1) * np.exp(-decay * t_note)
                seg = (harm * env).astype(np.float32)[: T - start]
                y[start : start + seg.size] += seg * r.uniform(0.3, 1.0)
            if r.random() < 0.5:
                n = min(2000, T - start)
                y[start : start + n] += (
                    0.5 * r.standard_normal(n).astype(np.float32) * np.exp(-np.arange(n) / 300)
                )
    y = y / (np.max(np.abs(y)) + 1e-9) * 0.5
    return {
        "audio": (y * 32767).astype(np.int16),
        "speaker": cat,
        "session": cat,
        "category": cat,
        "utterance": f"{cat}/{i:05d}",
    }


def render_rir(args) -> dict:
    """Worker entry for the RIR bank: (size, index) -> unit-energy RIR, direct path at index 0."""
    size, i = args
    r = _rng(size.seed, 6, i)
    rt60 = r.uniform(0.15, 0.9)
    L = int(min(rt60 * 1.2, 1.0) * SR)
    t = np.arange(L) / SR
    # Late tail: noise with an exponential decay, faster at high frequency.
    tail = r.standard_normal(L).astype(np.float32) * np.exp(-6.9 * t / rt60)
    lp = np.exp(-6.9 * t / (rt60 * 0.6))
    smooth = np.convolve(tail, np.ones(4) / 4, mode="same")
    tail = smooth * (1 - lp) + tail * lp
    onset = int(r.uniform(0.002, 0.01) * SR)
    tail[:onset] = 0
    h = tail * r.uniform(0.1, 0.6)
    for _ in range(int(r.integers(3, 10))):  # early reflections
        h[int(r.uniform(0.002, 0.05) * SR)] += r.uniform(-0.6, 0.6)
    h[0] = 1.0  # direct path
    h /= np.sqrt(np.sum(h**2))
    return {
        "audio": (h / max(1.0, np.max(np.abs(h))) * 32767).astype(np.int16),
        "speaker": "rir",
        "session": f"rt60_{rt60:.2f}",
        "category": "rir",
        "utterance": f"rir/{i:05d}",
    }
