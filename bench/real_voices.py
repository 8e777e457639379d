"""A small development set of real recorded voices, from what the package registries ship.

Not shipped, not used by the tests: a check of how the small-data recipes do on people's
voices, as opposed to the embedded procedural corpus. It fetches (once, into --cache):

  speakerbox 1.2.0 (PyPI wheel, its test data): 9 council members in 3-5 meetings each, 16 kHz
  asterisk-core-sounds-{en,es,fr,it,ru}-wav, asterisk-prompt-{it-menardi-wav,fr-armelle,es-co}
      (Debian): telephone prompts (8 kHz) of 7 voice actors (en and es: the same speaker)
  fillets-ng-data-{cs,nl} (Debian): the two main characters' dialogue in two languages

and lays out CACHE/audio/SPEAKER/SESSION/UTT.wav (16 kHz mono, utterances of at least 2 s, at
most 60 per speaker) with a trial list of 2,000 trials, half targets, drawn within each source
(sources differ in channel, so cross-source impostors would be trivial). Needs apt-get (run as
root; `apt-get update` first) and sox for the GSM prompts (`apt-get install sox`).

    .venv/bin/python bench/real_voices.py --cache=/tmp/real_voices
    .venv/bin/python data_prep/folder.py --audio_dir=/tmp/real_voices/audio \
        --data_dir=/tmp/real_voices/data --name=real_voices --trials=/tmp/real_voices/trials.txt

    .venv/bin/python bench/real_voices.py --baselines_of=/tmp/real_voices/data

The last prints the mean and mean+std log-mel cosine baselines; `--scores_of=WORKDIR` prints a
run's EER on the same trials. Both give the pooled EER and the EER within each source.
`--positives_of=WORKDIR` (an SSPS run) prints, per source, how often the positives its queue
offers at its last checkpoint (or `--step`'s) are of the anchor's speaker and of its session.
Figures: bench/README.md.
"""

import argparse
import collections
import glob
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEBS = {  # package: (speaker, session) for the asterisk prompts; None: fillets dialogue
    "asterisk-core-sounds-en-wav": ("ast_allison_smith", "en"),
    "asterisk-core-sounds-es-wav": ("ast_allison_smith", "es"),
    "asterisk-core-sounds-fr-wav": ("ast_june_wallack", "fr"),
    "asterisk-core-sounds-it-wav": ("ast_carlo_flora", "it"),
    "asterisk-core-sounds-ru-wav": ("ast_ru_voice", "ru"),
    "asterisk-prompt-it-menardi-wav": ("ast_paola_dal_zot", "it"),
    "asterisk-prompt-fr-armelle": ("ast_armelle_desjardins", "fr"),
    "asterisk-prompt-es-co": ("ast_july_jimenez", "es"),
    "fillets-ng-data-cs": None,
    "fillets-ng-data-nl": None,
}
TRIALS_PER_SOURCE = {"sbx": 500, "ast": 750, "fil": 750}


def fetch(cache):
    """Download and unpack the packages (skipped when already there)."""
    pkgs = os.path.join(cache, "packages")
    os.makedirs(pkgs, exist_ok=True)
    wheel = os.path.join(pkgs, "speakerbox")
    if not os.path.isdir(wheel):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                pkgs,
                "speakerbox==1.2.0",
            ],
            check=True,
        )
        with zipfile.ZipFile(glob.glob(os.path.join(pkgs, "speakerbox-*.whl"))[0]) as z:
            z.extractall(wheel)
        data = os.path.join(wheel, "speakerbox", "tests", "data")
        with zipfile.ZipFile(os.path.join(data, "diarized.zip")) as z:
            z.extractall(data)
    for name in DEBS:
        out = os.path.join(pkgs, name)
        if not os.path.isdir(out):
            subprocess.run(["apt-get", "download", "-q", name], check=True, cwd=pkgs)
            deb = sorted(glob.glob(os.path.join(pkgs, f"{name}_*.deb")))[-1]
            subprocess.run(["dpkg-deb", "-x", deb, out], check=True)
    return pkgs


def sources(pkgs):
    """(source, speaker, session, utterance, path) of every candidate recording."""
    data = os.path.join(pkgs, "speakerbox", "speakerbox", "tests", "data")
    for f in sorted(glob.glob(os.path.join(data, "*", "*", "*.wav"))):
        meeting, spk, name = f.split(os.sep)[-3:]
        yield "sbx", f"sbx_{spk}", meeting, name[:-4], f
    for name, who in DEBS.items():
        if who is None:
            lang = name.rsplit("-", 1)[1]
            pattern = os.path.join(pkgs, name, "usr/share/games/fillets-ng/sound/**/*.ogg")
            for f in sorted(glob.glob(pattern, recursive=True)):
                parts = os.path.basename(f)[:-4].split("-")
                if len(parts) >= 3 and parts[1] in ("m", "v"):  # small fish, big fish
                    level = f.split(os.sep)[-3]
                    yield "fil", f"fil_{lang}_{parts[1]}", level, os.path.basename(f)[:-4], f
            continue
        root = os.path.join(pkgs, name, "usr/share/asterisk/sounds")
        files = glob.glob(f"{root}/**/*.wav", recursive=True)
        files += glob.glob(f"{root}/**/*.gsm", recursive=True)
        for f in sorted(files):
            rel = os.path.relpath(f, root)
            if "silence" not in rel.split(os.sep):
                yield "ast", who[0], who[1], rel.rsplit(".", 1)[0].replace(os.sep, "__"), f


def read_mono_16k(path):
    if path.endswith(".gsm"):  # raw GSM 6.10 prompts
        with tempfile.NamedTemporaryFile(suffix=".wav") as t:
            subprocess.run(["sox", path, t.name], check=True)
            x, sr = sf.read(t.name, dtype="float32", always_2d=True)
    else:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != 16000:
        import soxr

        x = soxr.resample(x, sr, 16000).astype(np.float32)
    return x


def build(cache, min_seconds=2.0, per_speaker=60, seed=0):
    rng = random.Random(seed)
    by_speaker = collections.defaultdict(list)
    for row in sources(fetch(cache)):
        by_speaker[row[1]].append(row)
    kept = []
    for spk, rows in sorted(by_speaker.items()):
        rng.shuffle(rows)
        n = 0
        for src, _, sess, utt, path in rows:
            if n == per_speaker:
                break
            x = read_mono_16k(path)
            if x.size < min_seconds * 16000:
                continue
            rel = f"{spk}/{sess}/{re.sub(r'[^A-Za-z0-9_.-]', '_', utt)}.wav"
            os.makedirs(os.path.join(cache, "audio", spk, sess), exist_ok=True)
            sf.write(os.path.join(cache, "audio", rel), np.clip(x, -1, 1), 16000, "PCM_16")
            kept.append((src, spk, rel))
            n += 1
    trials = []
    for src, n_trials in TRIALS_PER_SOURCE.items():
        utts = collections.defaultdict(list)
        for s, spk, rel in kept:
            if s == src:
                utts[spk].append(rel)
        speakers = sorted(utts)
        for _ in range(n_trials // 2):
            spk = rng.choice([s for s in speakers if len(utts[s]) > 1])
            trials.append((1, *rng.sample(utts[spk], 2)))
            a, b = rng.sample(speakers, 2)
            trials.append((0, rng.choice(utts[a]), rng.choice(utts[b])))
    with open(os.path.join(cache, "trials.txt"), "w") as f:
        f.writelines(f"{lab} {a} {b}\n" for lab, a, b in trials)
    hours = sum(sf.info(os.path.join(cache, "audio", r)).duration for *_, r in kept) / 3600
    print(
        f"{len(kept)} utterances ({hours:.2f} h), {len({k[1] for k in kept})} speakers, "
        f"{len(trials)} trials in {cache}"
    )


def by_source(enroll, scores, labels) -> str:
    """Pooled EER and the EER within each source (trials never cross sources), as one line.
    The pooled figure also depends on how the sources' score ranges line up."""
    from ssv_jax.metrics import eer

    src = np.array([str(u).split("_", 1)[0] for u in enroll])
    scores, labels = np.asarray(scores), np.asarray(labels)
    parts = [f"pooled {eer(scores, labels):.2f}%"]
    for s in TRIALS_PER_SOURCE:
        m = src == s
        parts.append(f"{s} {eer(scores[m], labels[m]):.2f}% ({m.sum()})")
    return ", ".join(parts)


def baselines(data_dir, name="real_voices"):
    """EER of cosine scoring of per-utterance mean (and mean+std) log-mel vectors, plain and
    expanded by their 3 nearest neighbours (as ``eval.neighbours=3``)."""
    from bench_data import mean_logmel_scores  # this script's folder is on sys.path

    from ssv_jax import data

    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.augment.enabled = name, data_dir, False
    for label, with_std, k in (
        ("mean", False, 0),
        ("mean+std", True, 0),
        ("mean+std, 3 neighbours", True, 3),
    ):
        for trials, (t, s) in mean_logmel_scores(cfg, with_std, k).items():
            print(
                f"{trials}: {label} log-mel cosine baseline EER {by_source(t.enroll, s, t.labels)}"
            )


def run_scores(workdir):
    """The EERs of a run's scored trials (WORKDIR/eval/trials_scores.txt)."""
    with open(os.path.join(workdir, "eval", "trials_scores.txt")) as f:
        rows = [line.split() for line in f]
    labels = [int(r[0]) for r in rows]
    print(f"{workdir}: EER {by_source([r[1] for r in rows], [float(r[3]) for r in rows], labels)}")


def run_positives(workdir, step=None):
    """Who an SSPS run's positives are (the queue of its checkpoint ``step``, by default the
    last, by its training data's labels, which training never sees): the share of each queue
    entry's candidates (the other recordings of its cluster; with ``sampling="knn"``, its
    ``intra_size`` nearest) of the same speaker and of the same session, and the candidates per
    entry; in all, and per source (the speaker id's prefix up to "_", where it has one)."""
    import orbax.checkpoint as ocp

    from ssv_jax import checkpoints
    from ssv_jax import workdir as workdir_lib
    from ssv_jax.data import datasets

    cfg = workdir_lib.read_config(workdir)
    # A plain manager: checkpoints.manager would clean up the saves a live run is writing.
    mgr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
    step = mgr.latest_step() if step is None else step
    mem = checkpoints.restore(mgr, step, None)["method_state"]["ssps"]
    rows = datasets.open_dataset(cfg.data, cfg.data.name).index(datasets.train_split(cfg.data))
    spk = np.array([r[1] for r in rows])
    sess = np.array([r[2] for r in rows])
    knn = cfg.method.ssps.sampling == "knn"
    idx, cluster = np.asarray(mem["pos_idx"]), np.asarray(mem["pos_cluster"])
    live = (idx >= 0) & ((cluster >= 0) | knn)
    idx, cluster, ref = idx[live], cluster[live], np.asarray(mem["pos_ref"])[live]
    if knn:  # the candidates: the intra_size nearest other recordings
        sims = np.where(idx[None, :] == idx[:, None], -np.inf, ref @ ref.T)
        near = np.argsort(-sims, axis=1)[:, : int(cfg.method.ssps.intra_size)]
    stats = collections.defaultdict(lambda: np.zeros(4))  # entries, same spk, same sess, cands
    for i in range(idx.size):
        cand = near[i] if knn else np.flatnonzero((cluster == cluster[i]) & (idx != idx[i]))
        if not cand.size:
            continue
        src = spk[idx[i]].split("_")[0] if "_" in spk[idx[i]] else "all"
        for key in {src, "all"}:
            stats[key] += (
                1,
                np.mean(spk[idx[cand]] == spk[idx[i]]),
                np.mean(sess[idx[cand]] == sess[idx[i]]),
                cand.size,
            )
    print(
        f"{workdir}: step {step}, {live.sum()} queue entries"
        + ("" if knn else f" in {np.unique(cluster).size} clusters")
    )
    for key in sorted(stats):
        n, same_spk, same_sess, cands = stats[key]
        print(
            f"  {key}: {int(n)} entries with candidates, same speaker {100 * same_spk / n:.0f}%, "
            f"same session {100 * same_sess / n:.0f}%, {cands / n:.1f} candidates each"
        )


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cache", default="/tmp/real_voices")
    p.add_argument(
        "--baselines_of",
        default=None,
        help="a data_dir holding the built real_voices dataset: print its baselines",
    )
    p.add_argument(
        "--scores_of",
        default=None,
        help="a run's workdir (trained or evaluated on this set): print its EERs by source",
    )
    p.add_argument(
        "--positives_of",
        default=None,
        help="an SSPS run's workdir (on this set or another): who its positives are, by source",
    )
    p.add_argument("--step", type=int, default=None, help="--positives_of's checkpoint")
    a = p.parse_args()
    if a.positives_of:
        run_positives(a.positives_of, a.step)
    elif a.scores_of:
        run_scores(a.scores_of)
    elif a.baselines_of:
        baselines(a.baselines_of)
    else:
        build(a.cache)


if __name__ == "__main__":
    main()
