"""ssv_jax main job: train a recipe, then evaluate it on the config's trial lists.

    python main.py --config=configs/simclr_am.py[:demo] --workdir=DIR [--config.x.y=v ...]
        [--mode=train_and_evaluate|train|evaluate] [--distributed [--coordinator_address=H:P
        --num_processes=N --process_id=I]]

Writes DIR/config.json (the resolved config, when the run starts fresh: a resumed run is
compared with it and refused if its network, method or batch size changed), DIR/checkpoints/
(Orbax), TensorBoard event files, DIR/results.json ({trial list: {"eer", "min_dcf",
"n_trials"}}) and DIR/eval/ (scores, EER thresholds, DET curve, score histograms). Rerunning
with the same --workdir resumes from the latest checkpoint. SIGTERM or Ctrl-C stops training
after the current step with a checkpoint (exit status 128 + the signal's number). Evaluation
opens only the evaluation dataset (no training split, no augmentation bank). A user's mistake
(a flag, a config value, a missing dataset, a workdir) is reported in one line, exit status 2.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Huge-page malloc (re-executes once) and XLA CPU flags, before jax starts its backend:
# see ssv_jax/cpu.py.
from ssv_jax import cpu  # noqa: E402

cpu.configure()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Recipe config file, e.g. configs/simclr_am.py or configs/simclr_am.py:demo.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train_and_evaluate",
    ["train_and_evaluate", "train", "evaluate"],
    "train_and_evaluate (default): train, then evaluate; train; evaluate.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "One process of a multi-process run (a TPU VM pod slice, several GPU nodes): joins the "
    "others through jax.distributed.initialize before anything else.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "With --distributed: host:port of process 0, reachable from every process (detected on "
    "TPU VMs and under SLURM).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: how many processes (detected on TPU VMs, SLURM)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index, 0 first (detected likewise)."
)


def parse_flags(argv):
    """absl parsing; a bad flag or an unknown ``--config.*`` key is refused by name (no
    traceback)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        detail = str(e).replace("\\n", " ").replace("\\'", "'").strip("'\" ")
        _fail(
            f"unknown config key among {bad}: {detail}. Every key must exist in the recipe "
            "(fields: ssv_jax/config.py)."
        )
    except (flags.Error, ValueError, OSError) as e:
        cause = e  # config_flags wraps the recipe's own error (a bad argument, a missing file)
        while cause.__cause__ or cause.__context__:
            cause = cause.__cause__ or cause.__context__
        from ssv_jax.errors import UserError

        message = str(cause) if isinstance(cause, UserError) else str(e).splitlines()[0]
        _fail(f"{message.strip()} See python main.py --help.")


def _fail(message: str, status: int = 2):
    print(f"main.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}.")
    for name in ("config", "workdir"):
        if flags.FLAGS[name].value is None:
            _fail(
                f"--{name} is required: python main.py --config=configs/simclr_am.py:demo "
                "--workdir=runs/demo (see python main.py --help)."
            )
    try:
        _CONFIG.value.get("method")  # a config file that failed to load raises here
    except OSError as e:
        _fail(
            f"--config could not be loaded ({str(e).strip().splitlines()[-1].strip()}); the "
            "recipes are in configs/, e.g. --config=configs/simclr_am.py:demo."
        )
    detected = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not _DISTRIBUTED.value and any(v is not None for v in detected):
        _fail("--coordinator_address, --num_processes and --process_id need --distributed.")
    if _DISTRIBUTED.value:
        from ssv_jax import distributed

        distributed.initialize(*detected)
    import jax

    from ssv_jax import run as run_lib
    from ssv_jax.distributed import Interrupted
    from ssv_jax.errors import UserError
    from ssv_jax.writers import setup_console_logging

    setup_console_logging(process_index=jax.process_index())
    try:
        run_lib.run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except UserError as err:
        _fail(str(err))
    except Interrupted as err:
        if jax.process_index() == 0:
            logging.getLogger("ssv_jax").warning("%s", err)
        sys.exit(128 + err.signum)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
