"""Tiny configs and inputs shared by the tests and their multi-process workers."""

import os
import subprocess
import sys

import jax
import numpy as np

from ssv_jax import config as config_lib
from ssv_jax import state as state_lib
from ssv_jax.optim import lr_schedule, make_optimizer
from ssv_jax.sharding import replicated


def tiny_config(data_dir, method="simclr", **method_kw):
    cfg = config_lib.recipe("demo", name=method)
    cfg.method.update(method_kw)  # after the demo's own method settings (e.g. MoCo's EMA)
    cfg.data.data_dir = str(data_dir)
    s = cfg.data.synthetic
    s.train_speakers, s.test_speakers = 8, 4
    s.train_sessions, s.test_sessions, s.utterances_per_session = 2, 2, 2
    s.min_seconds, s.max_seconds = 1.0, 1.5
    s.n_trials = 40
    s.noise_clips, s.speech_clips, s.music_clips, s.rirs = 4, 4, 4, 4
    s.bank_seconds = 1.0
    cfg.data.crop_seconds = 0.5
    cfg.data.num_workers = 0
    cfg.model.channels = (8, 16, 16, 16)
    cfg.model.blocks = (1, 1, 1, 1)
    cfg.model.embed_dim = 32
    # float32 for the exact comparisons ("auto" is bfloat16 on a CPU with AMX)
    cfg.model.compute_dtype = "float32"
    cfg.train.batch_size = 16
    cfg.train.num_steps = 4
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 2
    cfg.train.eval_every = 0
    cfg.train.progress_bar = False
    cfg.method.queue_size = 64
    cfg.eval.batch_size = 8
    return cfg


def batch_at(cfg, step, mesh):
    """Global batch ``step`` of ``cfg``'s training split, placed on ``mesh``."""
    from ssv_jax import data as data_lib
    from ssv_jax.data.batch import device_part
    from ssv_jax.sharding import global_batch

    local = next(
        data_lib.train_batches(
            cfg.data, global_batch=cfg.train.batch_size, seed=cfg.data.seed, start_step=step
        )
    )
    return global_batch(device_part(local), mesh)


def run_steps(cfg, mesh, n_steps=1, total=4):
    """``n_steps`` train steps from ``cfg``'s initial state on ``mesh`` -> (host state, metrics
    per step)."""
    from ssv_jax import data as data_lib
    from ssv_jax import step as step_lib

    spe = data_lib.steps_per_epoch(cfg.data, cfg.train.batch_size)
    sched = lr_schedule(cfg.optim, spe, total)
    tx = make_optimizer(cfg.optim, sched)
    graphdef, state = state_lib.create(cfg, tx)
    state = jax.device_put(state, replicated(mesh))
    n_train = spe * cfg.train.batch_size
    step = step_lib.make_train_step(cfg, graphdef, mesh, tx, sched, total, n_train)
    metrics = []
    for k in range(n_steps):
        state, m = step(state, batch_at(cfg, k, mesh))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def embed_case():
    cfg = config_lib.recipe("demo", name="simclr")
    cfg.model.channels = (8, 16, 16, 16)
    cfg.model.blocks = (1, 1, 1, 1)
    cfg.model.embed_dim = 32
    cfg.model.compute_dtype = "float32"  # exact comparisons ("auto": bfloat16 with AMX)
    cfg.eval.batch_size = 8
    rng = np.random.default_rng(3)
    sr = cfg.data.sample_rate
    utterances = [
        (
            f"u{i:02d}",
            (0.1 * rng.standard_normal(int(sr * rng.uniform(0.6, 2.1)))).astype(np.float32),
        )
        for i in range(13)
    ]
    return cfg, utterances


def embed_network(cfg, mesh):
    """(graphdef, params, batch_stats) of ``cfg``'s freshly initialised network on ``mesh``."""
    tx = make_optimizer(cfg.optim, lr_schedule(cfg.optim, 1, 1))
    graphdef, state = state_lib.create(cfg, tx)
    params, batch_stats = jax.device_put((state.params, state.batch_stats), replicated(mesh))
    return graphdef, params, batch_stats


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_RESNET = [
    "--config.model.channels=(8,16,16,16)",
    "--config.model.blocks=(1,1,1,1)",
    "--config.model.embed_dim=32",
]


def tiny_main_overrides(data_dir):
    """Command-line overrides that shrink the demo corpus to ``tiny_config``'s."""
    cfg = tiny_config(data_dir)
    overrides = [f"--config.data.data_dir={data_dir}"]
    for k in (
        "train_speakers",
        "test_speakers",
        "train_sessions",
        "test_sessions",
        "utterances_per_session",
        "min_seconds",
        "max_seconds",
        "n_trials",
        "noise_clips",
        "speech_clips",
        "music_clips",
        "rirs",
        "bank_seconds",
    ):
        overrides.append(f"--config.data.synthetic.{k}={cfg.data.synthetic[k]}")
    return overrides + [
        "--config.data.crop_seconds=0.5",
        "--config.train.batch_size=8",
        "--config.train.num_steps=2",
        "--config.train.progress_bar=False",
        "--config.model.compute_dtype=float32",
    ]


def main_command(config, workdir, overrides):
    """argv of ``python main.py --config=configs/CONFIG --workdir=WORKDIR OVERRIDES``."""
    return [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        "--config=" + os.path.join(ROOT, "configs", config),
        f"--workdir={workdir}",
        *overrides,
    ]


def main_env(devices=2):
    """The environment of a main.py subprocess with ``devices`` simulated CPU devices."""
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )


def run_main(config, workdir, overrides, *, check=True):
    """main.py (``main_command``) on 2 devices; asserts success unless ``check`` is False."""
    proc = subprocess.run(
        main_command(config, workdir, overrides),
        capture_output=True,
        text=True,
        timeout=600,
        env=main_env(2),
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
