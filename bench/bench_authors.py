"""Train-step time of the authors' own PyTorch code (``sslsv`` 0.0.1 from PyPI), for comparison
with ``bench_train.py`` on the same machine.

Needs its own environment (torch is not a dependency of this project)::

    python3 -m venv /tmp/sslsv_env && cd /tmp/sslsv_env
    bin/pip install torch torchaudio numpy && bin/pip install --no-deps sslsv==0.0.1
    bin/python PATH/TO/bench/bench_authors.py [--batch 32] [--seconds 2.0] [--steps 10]
        [--threads 2]

The model is sslsv's ``SimCLRCustom`` with the additive-margin loss (``SNTXENTAM``, margin 0.1,
scale 30, the paper's values; sslsv's defaults are 0.2 and 5) around its ``ResNet34`` (Fast
ResNet-34, 1,437,078 parameters, its torchaudio log-mel front-end inside the encoder), every
other setting at sslsv's defaults (its projector included), and Adam at sslsv's default learning
rate (1e-3, no weight decay). One step runs as sslsv's trainer runs it: forward of both views,
loss, backward, optimiser step, on random waveforms of batch x 2 views x seconds. sslsv augments
its views in the data loader, so its step has no augmentation; ours has it in the step.
Prints each step's time and ``median_step_s``. Figures: bench/README.md.
"""

import argparse
import ast
import os
import statistics
import time
from types import SimpleNamespace

import sslsv
import torch
from sslsv.encoders.ResNet34 import ResNet34, ResNet34Config
from sslsv.methods.SimCLRCustom.SimCLRCustom import SimCLRCustom, SimCLRCustomConfig
from sslsv.methods.SimCLRCustom.SimCLRCustomLoss import SimCLRCustomLossEnum


def trainer_default(field):
    """A ``TrainerConfig`` default, read from sslsv's source (importing its trainer needs wandb)."""
    path = os.path.join(os.path.dirname(sslsv.__file__), "trainer", "Trainer.py")
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ClassDef) and node.name == "TrainerConfig":
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and st.target.id == field:
                    return ast.literal_eval(st.value)
    raise KeyError(field)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    enc_cfg = ResNet34Config()
    method_cfg = SimCLRCustomConfig(
        loss=SimCLRCustomLossEnum.SNTXENTAM, loss_margin=0.1, loss_scale=30
    )
    model = SimCLRCustom(method_cfg, lambda: ResNet34(enc_cfg))
    model.train()
    lr, wd = trainer_default("learning_rate"), trainer_default("weight_decay")
    opt = torch.optim.Adam(model.get_learnable_params(), lr=lr, weight_decay=wd)
    model.update_optim(
        opt, SimpleNamespace(learning_rate=lr), step=0, nb_steps=1, nb_steps_per_epoch=1
    )
    x = torch.randn(args.batch, 2, int(args.seconds * enc_cfg.mel_sample_rate))
    labels = torch.zeros(args.batch, dtype=torch.long)
    n_params = sum(q.numel() for q in model.encoder.parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; input {tuple(x.shape)}; "
        f"encoder {n_params:,} parameters; lr {lr}, weight decay {wd}"
    )

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss, _ = model.train_step(model(x, training=True), labels=labels, step=i, samples=None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
            print(f"step {i - args.warmup}: {dt:.3f} s, loss {loss.item():.3f}")
    med = statistics.median(times)
    print(
        f"median_step_s={med:.4f} min_step_s={min(times):.4f} "
        f"views_per_s={2 * args.batch / med:.1f}"
    )


if __name__ == "__main__":
    main()
