"""bfloat16 against float32 compute (``model.compute_dtype``) on this machine's backend.

    .venv/bin/python bench/bench_precision.py [--workdir runs/demo] [--steps 120]

1. The trained network in WORKDIR (the demo's by default): embeddings of its evaluation
   utterances computed in float32 and in bfloat16 from the same float32 weights (cosine between
   the two per utterance: min / mean) and the EER of each.
2. Short training runs of the demo recipe from the same initial weights on the same batches,
   float32 and bfloat16: the loss every 20 steps, the largest relative gap between the two loss
   curves, the validation EER at the end, and the step time.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ssv_jax import cpu  # noqa: E402

cpu.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssv_jax import checkpoints, evaluate  # noqa: E402
from ssv_jax import config as config_lib  # noqa: E402
from ssv_jax import data as data_lib  # noqa: E402
from ssv_jax import train as train_lib  # noqa: E402
from ssv_jax import workdir as workdir_lib  # noqa: E402
from ssv_jax.embedding import embed_utterances  # noqa: E402
from ssv_jax.evaluate import score_trials  # noqa: E402
from ssv_jax.metrics import eer  # noqa: E402
from ssv_jax.sharding import data_mesh  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--workdir", default="runs/demo")
ap.add_argument("--steps", type=int, default=120)
args = ap.parse_args()


def trained_network():
    cfg = workdir_lib.read_config(args.workdir)
    mesh = data_mesh()
    data_lib.ensure_eval_dataset(cfg.data)
    utts = list(data_lib.eval_utterances(cfg.data))
    trials = data_lib.load_trials(cfg.data)
    emb, eers = {}, {}
    for dtype in ("float32", "bfloat16"):
        c = cfg.copy_and_resolve_references()
        c.model.compute_dtype = dtype
        if "protocol" not in c.eval:  # a workdir trained before evaluation protocols existed
            c.eval.protocol = "full"
        graphdef, params, stats, what = checkpoints.load_network(c, args.workdir, mesh)
        t0 = time.perf_counter()
        emb[dtype] = embed_utterances(c, graphdef, params, stats, mesh, utts)
        dt = time.perf_counter() - t0
        eers[dtype] = {
            name: round(eer(score_trials(emb[dtype], tr), tr.labels), 2)
            for name, tr in trials.items()
        }
        print(f"{what} in {dtype}: {len(utts)} utterances in {dt:.1f} s; EER {eers[dtype]}")
    cos = np.array([float(emb["float32"][u] @ emb["bfloat16"][u]) for u, _ in utts])
    print(f"cosine(float32, bfloat16) per utterance: min {cos.min():.6f}, mean {cos.mean():.6f}")


class Capture:
    """A metric writer that keeps the scalars."""

    def __init__(self):
        self.rows = []

    def write_hparams(self, *_):
        pass

    def write_scalars(self, step, scalars):
        self.rows.append((step, dict(scalars)))

    def flush(self):
        pass


def short_runs():
    curves, eers, times = {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        for dtype in ("float32", "bfloat16"):
            cfg = config_lib.recipe("demo", name="simclr", loss="nt_xent_am", margin=0.1)
            cfg.model.compute_dtype = dtype
            cfg.train.num_steps = args.steps
            cfg.train.log_every = 20
            cfg.train.eval_every = 0
            cfg.train.progress_bar = False
            cap = Capture()
            train_lib.create_writer = lambda _: cap
            t0 = time.perf_counter()
            train_lib.train(cfg, os.path.join(d, dtype))
            times[dtype] = (time.perf_counter() - t0) / args.steps
            res = evaluate.evaluate_workdir(cfg, os.path.join(d, dtype))
            eers[dtype] = {k: v["eer"] for k, v in res.items()}
            curves[dtype] = [(s, r["loss"]) for s, r in cap.rows if "loss" in r]
    print(f"\ndemo recipe, {args.steps} steps from the same initial weights and batches:")
    print("step  " + "  ".join(f"{d:>9}" for d in curves))
    for (s, a), (_, b) in zip(curves["float32"], curves["bfloat16"]):
        print(f"{s:4d}  {a:9.4f}  {b:9.4f}")
    gap = max(abs(b / a - 1) for (_, a), (_, b) in zip(curves["float32"], curves["bfloat16"]))
    print(f"largest relative loss gap {gap:.2%}")
    for dtype in curves:
        print(f"{dtype}: EER {eers[dtype]}, {times[dtype]:.2f} s per step (compile included)")


if __name__ == "__main__":
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    if os.path.isdir(args.workdir):
        trained_network()
    else:
        print(f"{args.workdir} not found: train the demo first (README) to compare its network")
    short_runs()
