"""A folder of new synthetic voices laid out as a user's recordings, to try folder recipes on.

    .venv/bin/python bench/synthetic_folder.py --out=/tmp/synth72
    .venv/bin/python data_prep/folder.py --audio_dir=/tmp/synth72/audio \
        --data_dir=/tmp/synth72/data --name=synth72 --trials=/tmp/synth72/trials.txt
    .venv/bin/python bench/synthetic_folder.py --baselines_of=/tmp/synth72/data --name=synth72

The first writes OUT/audio/SPEAKER/SESSION/UTT.wav (16 kHz, 16 bit) and OUT/trials.txt from
the embedded corpus's generator with another seed (default 7; the embedded corpus and the
network pretrained on it use 0), so its voices are new to that network: --speakers (72) x
--sessions (4) x --utterances (4 per session) of 3-6 s, and --trials (2,000) trials, half
targets (a tenth of those within one session), half non-targets. Its defaults match a folder
of 72 speakers with 16 utterances each, where a batch of 32 holds another utterance of an
anchor's speaker for about one anchor in three. Every speaker is in the trial list, so the
folder's dataset trains on all of them, as a user's folder would. The last prints the mean
and mean+std log-mel cosine baselines on the trial list. `main.py` reports a run's EER in
WORKDIR/results.json. Figures: bench/README.md.
"""

import argparse
import os
import sys

import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_folder(out, speakers, sessions, utterances, n_trials, seed):
    from ssv_jax.data import synthetic

    size = synthetic.CorpusSize(
        test_speakers=speakers,
        test_sessions=sessions,
        utterances_per_session=utterances,
        n_trials=n_trials,
        seed=seed,
    )
    plan = synthetic.utterance_plan(size, "test")
    for row in plan:
        path = os.path.join(out, "audio", row[0] + ".wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, synthetic.render_utterance((size, row))["audio"], 16000, subtype="PCM_16")
    trials = synthetic.make_trials(size, plan)
    with open(os.path.join(out, "trials.txt"), "w") as f:
        f.writelines(f"{label} {a}.wav {b}.wav\n" for label, a, b in trials)
    print(f"{len(plan)} utterances of {speakers} speakers, {len(trials)} trials in {out}")


def baselines(data_dir, name):
    from bench_data import mean_logmel_baseline  # this script's folder is on sys.path

    from ssv_jax import data

    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.augment.enabled = name, data_dir, False
    for label, with_std in (("mean", False), ("mean+std", True)):
        for trials, (e, n) in mean_logmel_baseline(cfg, with_std).items():
            print(f"{trials}: {label} log-mel cosine baseline EER {e:.2f}% ({n} trials)")


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="/tmp/synth72")
    p.add_argument("--speakers", type=int, default=72)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--utterances", type=int, default=4, help="per session")
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--baselines_of", default=None, help="a data_dir holding the built folder")
    p.add_argument("--name", default="synth72", help="the built folder's dataset name")
    a = p.parse_args()
    if a.baselines_of:
        baselines(a.baselines_of, a.name)
    else:
        write_folder(a.out, a.speakers, a.sessions, a.utterances, a.trials, a.seed)


if __name__ == "__main__":
    main()
