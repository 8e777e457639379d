"""Where the small-data recipe's gain comes from: arms x seeds through main.py, then a table.

    python bench/bench_ablation.py --root=DIR [--data_name=NAME --data_dir=DATA]
        [--arms=small,scratch,m0,noaug,allneg] [--seeds=0,1,2] [--average_last=N] [--summarize]

Each arm is the small-data recipe with one thing changed (all other settings equal):

  small    configs/simclr_am.py:small (pretrained on the embedded corpus, m = 0.1, per-view
           channel augmentation: random EQ and band limits, each anchor's two nearest
           negatives left out of its loss; 1,080 steps, the average of the last four
           checkpoints evaluated)
  scratch  the same from random weights (``--config.train.init_from=``: no network to load)
  m0       margin 0 (plain symmetric NT-Xent)
  noaug    no per-view channel augmentation (data.augment.eq_prob = lowpass_prob = 0)
  allneg   every negative in the loss (method.drop_nearest = 0, the paper's loss)

Without ``--data_name`` the runs train and evaluate on the embedded corpus, where pretraining
on the embedded corpus is what ``scratch`` trains (so only scratch, m0 and noaug are run, each
from random weights, with the demo's loss, which keeps every negative). ``--average_last=0``
evaluates every arm's last checkpoint instead (1: the same). Each run is
``ROOT/<dataset>_<arm>_s<seed>``, seeding the model and the data order with the same seed; a
run with results.json is not run again. ``--summarize`` only prints the table: per arm, EER and
minDCF (p = 0.01) over the seeds (mean, sample standard deviation, each seed's value) and the
mean wall time of a run. Runs one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_CHANNEL_AUG = ["--config.data.augment.eq_prob=0.0", "--config.data.augment.lowpass_prob=0.0"]


def arm_args(arm: str, folder: bool) -> list[str]:
    """main.py arguments of one arm: the recipe (pretrained on a folder, else from scratch)."""
    base = ["--config=configs/simclr_am.py:" + ("small" if folder else "demo")]
    changes = {
        "small": [],
        "scratch": ["--config.train.init_from="],
        "m0": ["--config.method.margin=0.0"],
        "noaug": NO_CHANNEL_AUG,
        "allneg": ["--config.method.drop_nearest=0"],
    }
    if arm not in changes:
        raise SystemExit(f"unknown arm {arm!r}: choose from {', '.join(changes)}")
    return base + changes[arm]


def run_one(workdir: str, args: list[str], data: list[str], seed: int, average_last) -> None:
    cmd = [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        f"--workdir={workdir}",
        *args,
        *data,
        f"--config.seed={seed}",
        f"--config.data.seed={seed}",
        "--config.train.eval_every=0",
        "--config.train.progress_bar=False",
    ]
    if average_last is not None:
        cmd.append(f"--config.train.average_last={average_last}")
    print(" ".join(cmd[1:]), flush=True)
    start = time.time()
    with open(workdir + ".log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    if rc:
        raise SystemExit(f"{workdir}: main.py exited with {rc}; see {workdir}.log")
    with open(os.path.join(workdir, "wall.json"), "w") as f:
        json.dump({"wall_s": wall}, f)


def summarize(root: str, prefix: str, arms: list[str], seeds: list[int]) -> None:
    print(
        f"{'arm':8s}  {'EER % mean':>10s}  {'sd':>5s}  {'minDCF':>6s}  {'wall':>6s}  EER per seed"
    )
    for arm in arms:
        eers, dcfs, walls, each = [], [], [], []
        for s in seeds:
            wd = os.path.join(root, f"{prefix}_{arm}_s{s}")
            try:
                with open(os.path.join(wd, "results.json")) as f:
                    res = json.load(f)
            except FileNotFoundError:
                each.append(f"s{s} -")
                continue
            r = next(v for k, v in res.items() if "/" not in k)  # the list's raw scores
            eers.append(r["eer"])
            dcfs.append(r["min_dcf"])
            each.append(f"s{s} {r['eer']:.2f}")
            if os.path.exists(os.path.join(wd, "wall.json")):
                with open(os.path.join(wd, "wall.json")) as f:
                    walls.append(json.load(f)["wall_s"])
        sd = f"{statistics.stdev(eers):5.2f}" if len(eers) > 1 else "    -"
        mean = f"{statistics.mean(eers):10.2f}" if eers else f"{'-':>10s}"
        dcf = f"{statistics.mean(dcfs):6.3f}" if dcfs else f"{'-':>6s}"
        wall = f"{statistics.mean(walls) / 60:5.1f}m" if walls else f"{'-':>6s}"
        print(f"{arm:8s}  {mean}  {sd}  {dcf}  {wall}  {', '.join(each)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder of the runs' workdirs")
    p.add_argument("--data_name", help="a folder dataset (data_prep); default: embedded corpus")
    p.add_argument("--data_dir")
    p.add_argument("--arms", default=None, help="comma-separated (default: all that apply)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--average_last", type=int, help="override train.average_last of every arm")
    p.add_argument("--summarize", action="store_true", help="only print the table")
    a = p.parse_args()
    folder = a.data_name is not None
    if folder and not a.data_dir:
        p.error("--data_name needs --data_dir")
    default_arms = "small,scratch,m0,noaug,allneg" if folder else "scratch,m0,noaug"
    arms = (a.arms or default_arms).split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    prefix = a.data_name or "embedded"
    data = (
        [f"--config.data.name={a.data_name}", f"--config.data.data_dir={a.data_dir}"]
        if folder
        else []
    )
    os.makedirs(a.root, exist_ok=True)
    if not a.summarize:
        for s in seeds:  # seed-major: an interrupted sweep leaves every arm equally covered
            for arm in arms:
                wd = os.path.join(a.root, f"{prefix}_{arm}_s{s}")
                if not os.path.exists(os.path.join(wd, "results.json")):
                    run_one(wd, arm_args(arm, folder), data, s, a.average_last)
    summarize(a.root, prefix, arms, seeds)


if __name__ == "__main__":
    main()
