"""Networks pretrained on the embedded corpus: computed once per architecture, then cached.

``train.init_from="embedded"`` starts a run from a network trained on the embedded synthetic
corpus with the run's own encoder, front-end and projector settings: SimCLR with symmetric
NT-Xent-AM, the demo recipe (``config.apply_demo``). The first run that asks for it trains it
into ``~/.cache/ssv_jax/pretrained/<encoder>-<key>`` (``$SSV_JAX_PRETRAINED_DIR`` overrides the
folder; the key hashes the architecture and this recipe's version), building the corpus first
if needed, like the demo; later runs, and other folders, reuse it. An interrupted pretraining
resumes from its checkpoints on the next try.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from ssv_jax import checkpoints
from ssv_jax import config as config_lib
from ssv_jax import train as train_lib
from ssv_jax import workdir as workdir_lib

EMBEDDED = "embedded"
RECIPE_VERSION = 1  # bump when pretrain_config changes what it trains
_DONE = "pretrained.json"

log = logging.getLogger("ssv_jax")


def cache_root() -> str:
    return os.path.expanduser(
        os.environ.get(
            "SSV_JAX_PRETRAINED_DIR", os.path.join("~", ".cache", "ssv_jax", "pretrained")
        )
    )


def pretrain_config(cfg):
    """The pretraining run for ``cfg``'s architecture: the demo recipe of SimCLR + symmetric
    NT-Xent-AM on the embedded corpus, with ``cfg``'s model, front-end and projector."""
    pre = config_lib.recipe(
        "demo", name="simclr", loss="nt_xent_am", scale=30.0, margin=0.1, symmetric=True
    )
    pre.model = cfg.model.copy_and_resolve_references()
    pre.frontend = cfg.frontend.copy_and_resolve_references()
    for k in ("projector", "projector_hidden", "projector_out"):
        pre.method[k] = cfg.method[k]
    pre.train.eval_every = 0
    pre.train.progress_bar = cfg.train.progress_bar
    return pre


def cache_dir(cfg) -> str:
    key = json.dumps(
        {"architecture": workdir_lib.architecture(cfg), "version": RECIPE_VERSION}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return os.path.join(cache_root(), f"{cfg.model.name}-{digest}")


def ensure(cfg) -> str:
    """The cached pretrained workdir for ``cfg``'s architecture, trained here if missing."""
    final = cache_dir(cfg)
    if os.path.isfile(os.path.join(final, _DONE)):
        return final
    pre = pretrain_config(cfg)
    work = final + ".partial"
    os.makedirs(work, exist_ok=True)
    log.info(
        "pretraining %s on the embedded corpus (%d steps, once; cached in %s)",
        cfg.model.name,
        pre.train.num_steps,
        final,
    )
    with open(os.path.join(work, "config.json"), "w") as f:
        f.write(pre.to_json_best_effort(indent=2))
    train_lib.train(pre, work)
    with open(os.path.join(work, _DONE), "w") as f:
        json.dump({"steps": int(pre.train.num_steps), "version": RECIPE_VERSION}, f)
    os.replace(work, final)
    return final


def init_network(cfg, mesh):
    """(params, batch_stats, description) of the run ``cfg.train.init_from`` names: the network
    its evaluation uses (``checkpoints.load_network``); "embedded": the cached network
    pretrained on the embedded corpus (trained first if missing). Refused when its
    architecture differs from ``cfg``'s, naming the fields."""
    if cfg.train.init_from == EMBEDDED:
        src = ensure(cfg)
    else:
        src = os.path.abspath(os.path.expanduser(cfg.train.init_from))
    other = workdir_lib.read_config(src)
    diff = workdir_lib.differences(workdir_lib.architecture(other), workdir_lib.architecture(cfg))
    if diff:
        raise config_lib.ConfigError(
            f"train.init_from={src} trained another network than this config's "
            f"({workdir_lib.describe(diff)}). "
            "Use the same encoder, front-end and projector settings, or start from scratch."
        )
    _, params, batch_stats, what = checkpoints.load_network(other, src, mesh)
    return params, batch_stats, f"{what} of {src}"
