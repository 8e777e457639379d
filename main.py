"""ssv_jax main job: train a recipe, then evaluate it on the config's trial lists.

    python main.py --config=configs/simclr_am.py[:demo] --workdir=DIR [--config.x.y=v ...]
        [--mode=train_and_evaluate|train|evaluate]

Writes DIR/config.json (the resolved config; not in --mode=evaluate, which keeps the one
training wrote), DIR/checkpoints/ (Orbax), TensorBoard event files, DIR/results.json ({trial
list: {"eer", "min_dcf", "n_trials"}}) and DIR/eval/ (scores, EER thresholds, DET curve, score
histograms). Rerunning with the same --workdir resumes from the latest checkpoint. Evaluation
opens only the evaluation dataset (no training split, no augmentation bank).
"""

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
    "distributed", False, "Call jax.distributed.initialize() (multi-host TPU/GPU pods)."
)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl parsing, with an unknown ``--config.*`` key refused by name (no traceback)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        detail = str(e).replace("\\n", " ").replace("\\'", "'").strip("'\" ")
        sys.exit(
            f"main.py: unknown config key among {bad}: {detail}. Every key must exist in the "
            "recipe (fields: ssv_jax/config.py)."
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from ssv_jax import config as config_lib
    from ssv_jax import train as train_lib
    from ssv_jax.writers import setup_console_logging

    setup_console_logging()

    cfg = _CONFIG.value
    config_lib.validate(cfg)
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0 and _MODE.value != "evaluate":  # keep what training wrote
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    print(
        f"ssv_jax: {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es); workdir {workdir}",
        flush=True,
    )
    graphdef = state = mesh = None
    if _MODE.value in ("train_and_evaluate", "train"):
        graphdef, state, mesh = train_lib.train(cfg, workdir)
    if _MODE.value in ("train_and_evaluate", "evaluate"):
        results = train_lib.evaluate(cfg, workdir, mesh=mesh, graphdef=graphdef, state=state)
        if jax.process_index() == 0:
            from ssv_jax.evaluate import summary_table

            print(f"results ({os.path.join(workdir, 'results.json')}):")
            print(summary_table(results), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
