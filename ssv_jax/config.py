"""Recipe configs: every hyperparameter in one ConfigDict, the paper's values by default.

configs/simclr_am.py states the paper's values on :func:`base_config` and the other recipes
are short variants of it (:func:`recipe`). Recipe arguments compose, comma-separated: ``demo``
shrinks any recipe to the embedded synthetic corpus on a laptop CPU (:func:`apply_demo`);
``ecapa`` swaps Fast ResNet-34 for ECAPA-TDNN with that encoder's defaults (model fields:
``ssv_jax.models.default_model_config``), e.g. ``--config=configs/simclr_am.py:demo,ecapa``.
Fields:

  seed                 model init / augmentation RNG seed (the data order uses data.seed)
  data                 see ssv_jax.data.default_data_config()
  frontend             see ssv_jax.frontend.default_frontend_config()
  model                see ssv_jax.models.default_model_config() (the encoder: recipe argument)
  method.name          "simclr" | "moco"
  method.loss          "nt_xent_am" (additive margin) | "nt_xent_aam" (angular margin), for
                       SimCLR and MoCo alike (docs/method.md#nt-xent-aam)
  method.scale         s = 1 / temperature (30)
  method.margin        m (0.1; 0 = plain NT-Xent)
  method.symmetric     SimCLR: all 2N views are anchors (the paper's symmetric form)
  method.margin_schedule  ramp m from 0 along a cosine over the first half of training
  method.projector     add the 512-2048-2048-128 projector head for the loss
                       (docs/method.md#projector)
  method.projector_hidden / projector_out
  method.drop_nearest  leave each anchor's k most similar negatives out of its loss (0: the
                       paper's loss; in a small set they are often its own speaker)
  method.momentum      MoCo: EMA momentum of the key encoder (0.999)
  method.queue_size    MoCo: entries per view queue (65536); a multiple of the batch size
  method.ssps.*        positives from other recordings (docs/method.md#ssps; off by default):
    enabled            replace each anchor's positive from ``start_step`` on (SimCLR: the
                       second view; MoCo: both keys)
    start_step         first step with sampled positives; the memories fill just before it
    refresh_every      steps between k-means refits (0: one pass over the reference memory,
                       an epoch when ref_size is the training split's size)
    sampling           "kmeans" (a queue entry of the anchor's cluster or a nearby one) |
                       "knn" (one of the anchor's nearest queue entries)
    ref_size           reference embeddings k-means runs on (the paper: the training split)
    queue_size         positive queue entries (50000), at least the batch size
    prototypes         k-means clusters K (50000), at most ref_size
    kmeans_iters       k-means iterations per refit (10)
    inter_size / inter_prob / inter_lambda   kmeans: 0 = the anchor's own cluster; M > 0 =
                       one of its M nearest other clusters, drawn "uniform" or "exp"
                       (probability lambda * exp(-lambda * rank), lambda 0.7)
    intra_size / intra_prob / intra_lambda   the window of queue entries drawn from, nearest
                       to the anchor first (kmeans: within the cluster; knn: the queue);
                       10**7 = all, "uniform" or "exp", lambda 0.7
  optim.name           "adam" | "adamw" | "sgd"
  optim.lr             1e-3
  optim.weight_decay   0 (decoupled for adamw, L2 for adam/sgd)
  optim.schedule       "step" (lr x decay_rate every decay_epochs) | "constant" | "cosine"
  optim.decay_rate / decay_epochs   0.95 / 5
  optim.warmup_steps   linear warm-up steps (0)
  optim.clip_grad_norm global-norm clipping (0 = off)
  train.batch_size     GLOBAL batch of utterances (2 views each); divisible by the device count
  train.epochs         epochs over data.train_split; train.num_steps > 0 overrides it
  train.log_every      steps between console/TensorBoard scalars
  train.checkpoint_every  steps between checkpoints (and at the end)
  train.keep_checkpoints  checkpoints kept on disk
  train.average_last   evaluate the average of the last N checkpoints (0/1 = the last one)
  train.eval_every     steps between validation EERs on the eval trials (0 = only at the end)
  train.val_max_trials cap on validation trials (0 = all)
  train.progress_bar   progress: a bar on a terminal, else a line with the ETA every 30 s
  train.init_from      a trained workdir to start from: its network (the one its evaluation
                       uses) with a fresh optimiser, step 0 and fresh method state; the
                       architecture must match (None: random initialisation). "embedded": the
                       network pretrained on the embedded corpus with this architecture,
                       trained once and cached (ssv_jax/pretrained.py). Ignored once this run
                       has a checkpoint of its own (it resumes from that).
  eval.batch_size      utterances per embedding batch
  eval.bucket_seconds  utterance lengths are padded up to a multiple of this (fewer compiles)
  eval.max_seconds     crop evaluation utterances longer than this (0 = full length)
  eval.protocol        "segments" (the reference framework's: eval.num_frames evenly spaced
                       frames of eval.frame_seconds per utterance, shorter ones wrap-padded;
                       trial score = mean of the K x K frame cosines) | "full" (one embedding
                       of the whole utterance)
  eval.num_frames / frame_seconds   10 / 4.0
  eval.score_norm      "none" | "z-norm" | "t-norm" | "s-norm" | "as-norm": results.json then
                       also holds "LIST/<score_norm>" entries (ssv_jax/backends/score_norm.py)
  eval.cohort_size     cohort utterances taken from the training split (300), evenly spaced
  eval.asnorm_top_n    AS-norm: each side's statistics over its top-N cohort cosines (100)
  eval.neighbours      K > 0: results.json also holds "LIST/neighbours_K" entries, scored with
                       each trial utterance's embedding averaged with its K nearest among the
                       trial lists' utterances (ssv_jax/backends/neighbours.py; 0 = off)
"""

from __future__ import annotations

import ml_collections

from ssv_jax.backends.score_norm import METHODS as NORMS
from ssv_jax.data import default_data_config
from ssv_jax.errors import UserError
from ssv_jax.frontend import NORMS as FRONTEND_NORMS
from ssv_jax.frontend import default_frontend_config
from ssv_jax.losses import contrastive_negatives
from ssv_jax.models import default_model_config

METHODS = ("simclr", "moco")
LOSSES = ("nt_xent_am", "nt_xent_aam")
SSPS_SAMPLING = ("kmeans", "knn")
SSPS_PROBS = ("uniform", "exp")


def base_config() -> ml_collections.ConfigDict:
    """The paper's setup: VoxCeleb2-dev, Fast ResNet-34, symmetric NT-Xent-AM s=30 m=0.1."""
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0

    data = default_data_config()
    data.name = "voxceleb2"
    data.train_split = "dev"
    data.eval_name = "voxceleb1"
    data.eval_split = "dev+test"  # VoxCeleb1-E/H use dev utterances too; O only decodes its own
    data.trials = ("voxceleb1_o", "voxceleb1_e", "voxceleb1_h")
    data.crop_seconds = 2.0
    data.augment.noise_bank = "musan"
    data.augment.rir_bank = "rirs"
    data.augment.eq_prob = 0.0  # random EQ / band limits are not in the paper's augmentation
    data.augment.lowpass_prob = 0.0
    cfg.data = data

    cfg.frontend = default_frontend_config()
    cfg.model = default_model_config("fast_resnet34")

    cfg.method = ml_collections.ConfigDict(
        dict(
            name="simclr",
            loss="nt_xent_am",
            scale=30.0,
            margin=0.1,
            symmetric=True,
            margin_schedule=False,
            projector=False,
            projector_hidden=2048,
            projector_out=128,
            momentum=0.999,
            queue_size=65536,
            drop_nearest=0,
        )
    )
    cfg.method.ssps = default_ssps_config()
    cfg.optim = ml_collections.ConfigDict(
        dict(
            name="adam",
            lr=1e-3,
            weight_decay=0.0,
            schedule="step",
            decay_rate=0.95,
            decay_epochs=5,
            warmup_steps=0,
            clip_grad_norm=0.0,
        )
    )
    cfg.train = ml_collections.ConfigDict(
        dict(
            batch_size=256,
            epochs=100,
            num_steps=0,
            log_every=100,
            checkpoint_every=2000,
            keep_checkpoints=5,
            average_last=5,
            eval_every=0,
            val_max_trials=0,
            progress_bar=True,
        )
    )
    cfg.train.init_from = ml_collections.config_dict.placeholder(str)
    cfg.eval = ml_collections.ConfigDict(
        dict(
            batch_size=32,
            bucket_seconds=1.0,
            max_seconds=0.0,
            protocol="segments",
            num_frames=10,
            frame_seconds=4.0,
            score_norm="none",
            cohort_size=300,
            asnorm_top_n=100,
            neighbours=0,
        )
    )
    return cfg


def default_ssps_config() -> ml_collections.ConfigDict:
    """SSPS off, with the paper's settings for when it is switched on (docs/method.md#ssps)."""
    return ml_collections.ConfigDict(
        dict(
            enabled=False,
            start_step=0,
            refresh_every=0,
            sampling="kmeans",
            ref_size=50000,
            queue_size=50000,
            prototypes=50000,
            kmeans_iters=10,
            inter_size=0,
            inter_prob="uniform",
            inter_lambda=0.7,
            intra_size=10**7,
            intra_prob="uniform",
            intra_lambda=0.7,
        )
    )


def apply_demo(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a recipe to the embedded synthetic corpus, sized for a 2-core CPU (<= 15 min)."""
    data = default_data_config()  # the embedded corpus and its procedural banks
    data.crop_seconds = 1.5
    # Additive noise (noise / babble / music) and per-view random EQ stay on; the procedural
    # reverberation (RT60 up to 0.9 s) on top made the 8-minute demo learn far more slowly.
    data.augment.rir_prob = 0.0
    cfg.data = data
    cfg.train.batch_size = 32
    cfg.train.num_steps = 360
    cfg.train.log_every = 20
    cfg.train.checkpoint_every = 120
    cfg.train.keep_checkpoints = 3
    cfg.train.average_last = 0
    cfg.train.eval_every = 120
    cfg.optim.schedule = "constant"
    cfg.method.queue_size = 1024
    # MoCo's key encoder: an EMA time constant of 100 steps (0.999: 1,000, longer than the
    # demo) let the demo's MoCo learn (bench/README.md, the demo recipes).
    cfg.method.momentum = 0.99
    cfg.eval.protocol = "full"  # whole utterances: the demo's are 3-6 s
    return cfg


def apply_small(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """For a folder of one to a few hours of real speech on a CPU: the demo's settings, starting
    from the network pretrained on the embedded corpus (``train.init_from="embedded"``, trained
    once and cached), then:

    - 1,080 steps, about 11 minutes of a 2-core CPU, validated every 360;
    - evaluated with the average of the last four checkpoints (one every 30 steps);
    - each anchor's two nearest negatives left out of its loss (``method.drop_nearest``): with
      few speakers they are often its own;
    - SimCLR's features normalised per utterance, not per band (``frontend.norm``), so the
      network keeps each voice's spectral envelope; MoCo keeps per-band normalisation;
    - trials also scored with each embedding expanded by its three nearest neighbours in the
      folder (``eval.neighbours``: results.json's ``LIST/neighbours_3`` entries).

    Set ``data.name`` and ``data.data_dir`` to the folder's dataset. What each choice was measured
    against: bench/README.md, "The own-folder recipe (:small)"."""
    apply_demo(cfg)
    cfg.frontend.norm = "utterance" if cfg.method.name == "simclr" else "instance"
    cfg.method.drop_nearest = 2
    cfg.train.init_from = "embedded"
    cfg.train.num_steps = 1080
    cfg.train.eval_every = 360
    cfg.train.checkpoint_every = 30
    cfg.train.average_last = 4
    cfg.eval.neighbours = 3
    return cfg


def sibling_recipe(path: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the recipe ``name`` beside the recipe file ``path`` (a recipe
    that continues another, e.g. configs/simclr_am_ssps.py of configs/simclr_am.py)."""
    import importlib.util
    import os

    file = os.path.join(os.path.dirname(os.path.abspath(path)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"ssv_jax_recipe_{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# VoxCeleb2-dev: 1,092,009 utterances, 4,265 steps of 256 per epoch.
VOX2_STEPS_PER_EPOCH = 4265


def with_ssps(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``cfg`` (a recipe, its arguments applied) continued with SSPS as the paper schedules it:
    the recipe's training, then SSPS switched on. On VoxCeleb2 that is 100 epochs, then 10 more
    with SSPS; k-means (10 iterations) on every training utterance's reference embedding, once
    an epoch, into 25,000 prototypes; a queue of 25,000 positives, each anchor's drawn uniformly
    from its own cluster. ``:demo`` and ``:small`` (a fixed number of steps): SSPS for the
    second half, on memories of the whole training split (capped at the data), 64 prototypes.
    On the embedded corpus ``:demo``'s network is too weak for SSPS's positives and it
    collapses: it shows the mechanics, not a gain (docs/method.md#ssps; measured:
    bench/README.md, "SSPS")."""
    s = cfg.method.ssps
    s.enabled, s.sampling, s.kmeans_iters = True, "kmeans", 10
    s.inter_size, s.inter_prob, s.intra_size, s.intra_prob = 0, "uniform", 10**7, "uniform"
    s.refresh_every = 0  # once per pass over the reference memory: an epoch
    if cfg.train.num_steps:
        s.start_step = cfg.train.num_steps // 2
        s.ref_size = s.queue_size = 4096
        s.prototypes = 64
    else:
        cfg.train.epochs = 110
        s.start_step = 100 * VOX2_STEPS_PER_EPOCH
        s.ref_size = VOX2_STEPS_PER_EPOCH * cfg.train.batch_size
        s.queue_size = s.prototypes = 25000
    return cfg


# Recipe arguments (``--config=configs/<recipe>.py:ARG[,ARG...]``), applied left to right.
ENCODER_ARGS = {"fast_resnet34": "fast_resnet34", "ecapa": "ecapa_tdnn"}
RECIPE_ARGS = ("demo", "small") + tuple(ENCODER_ARGS)


class ConfigError(UserError, ValueError):
    """A config value that is unknown or inconsistent; the message names the field."""


def recipe(arg: str | None = None, **method) -> ml_collections.ConfigDict:
    """base_config() with ``method`` fields overridden, then the recipe arguments of ``arg``
    (:func:`variants`): the short form of a recipe that differs from the paper's in its method,
    e.g. ``recipe(arg, name="moco")``."""
    cfg = base_config()
    for k, v in method.items():
        if k not in cfg.method:
            raise ConfigError(f"unknown method field {k!r}; known: {sorted(cfg.method.keys())}")
        cfg.method[k] = v
    return variants(cfg, arg)


def variants(cfg: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Apply the comma-separated recipe arguments of ``arg`` to ``cfg``, left to right: ``demo``
    (apply_demo), ``small`` (apply_small) and an encoder (``ecapa``: ECAPA-TDNN with its
    defaults; ``fast_resnet34``, the default). E.g. ``configs/simclr_am.py:demo,ecapa``."""
    for a in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        if a == "demo":
            apply_demo(cfg)
        elif a == "small":
            apply_small(cfg)
        elif a in ENCODER_ARGS:
            cfg.model = default_model_config(ENCODER_ARGS[a])
        else:
            raise ConfigError(
                f"unknown config argument {a!r}; use any of {RECIPE_ARGS}, "
                "comma-separated (e.g. --config=configs/simclr_am.py:demo,ecapa)."
            )
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Refuse inconsistent settings with a message that names the field."""
    if cfg.method.name not in METHODS:
        raise ConfigError(f"method.name {cfg.method.name!r} is not one of {METHODS}.")
    if cfg.method.loss not in LOSSES:
        raise ConfigError(f"method.loss {cfg.method.loss!r} is not one of {LOSSES}.")
    if cfg.eval.protocol not in ("full", "segments"):
        raise ConfigError(f"eval.protocol {cfg.eval.protocol!r} is not 'full' or 'segments'.")
    if cfg.eval.score_norm not in NORMS:
        raise ConfigError(f"eval.score_norm {cfg.eval.score_norm!r} is not one of {NORMS}.")
    if cfg.eval.neighbours < 0:
        raise ConfigError(f"eval.neighbours must be >= 0 (0 = off); got {cfg.eval.neighbours}.")
    if cfg.frontend.norm not in FRONTEND_NORMS:
        raise ConfigError(f"frontend.norm {cfg.frontend.norm!r} is not one of {FRONTEND_NORMS}.")
    if cfg.method.scale <= 0:
        raise ConfigError(f"method.scale must be > 0; got {cfg.method.scale}.")
    if cfg.train.batch_size < 2:
        raise ConfigError("train.batch_size must be at least 2 (negatives come from the batch).")
    if cfg.method.name == "moco" and cfg.method.queue_size % cfg.train.batch_size:
        raise ConfigError(
            f"method.queue_size ({cfg.method.queue_size}) must be a multiple of train.batch_size "
            f"({cfg.train.batch_size}) so whole batches of keys are enqueued."
        )
    m = cfg.method
    if m.name == "moco":
        n_neg, source = m.queue_size, f"method.queue_size {m.queue_size}"
    else:
        n_neg = contrastive_negatives(cfg.train.batch_size, m.symmetric)
        source = f"train.batch_size {cfg.train.batch_size}"
    if not 0 <= m.drop_nearest < n_neg:
        raise ConfigError(
            f"method.drop_nearest must be in [0, {n_neg - 1}]: each anchor has {n_neg} negatives "
            f"({source}) and needs at least one left; got {m.drop_nearest}."
        )
    _validate_ssps(cfg)
    if cfg.optim.name not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"optim.name {cfg.optim.name!r} is not one of ('adam', 'adamw', 'sgd').")
    if cfg.optim.schedule not in ("step", "constant", "cosine"):
        raise ConfigError(
            f"optim.schedule {cfg.optim.schedule!r} is not one of ('step', 'constant', 'cosine')."
        )


def _validate_ssps(cfg) -> None:
    s, bsz = cfg.method.ssps, int(cfg.train.batch_size)
    if not s.enabled:
        return
    if s.sampling not in SSPS_SAMPLING:
        raise ConfigError(f"method.ssps.sampling {s.sampling!r} is not one of {SSPS_SAMPLING}.")
    for k in ("inter_prob", "intra_prob"):
        if s[k] not in SSPS_PROBS:
            raise ConfigError(f"method.ssps.{k} {s[k]!r} is not one of {SSPS_PROBS}.")
    for k in ("ref_size", "queue_size"):
        if s[k] < bsz:
            raise ConfigError(
                f"method.ssps.{k} ({s[k]}) must be at least train.batch_size ({bsz}): each "
                "step stores the whole global batch."
            )
    if not 1 <= s.prototypes <= s.ref_size:
        raise ConfigError(
            f"method.ssps.prototypes ({s.prototypes}) must be in [1, method.ssps.ref_size = "
            f"{s.ref_size}]: k-means needs at least one reference embedding per cluster."
        )
    if s.sampling == "kmeans" and not 0 <= s.inter_size < s.prototypes:
        raise ConfigError(
            f"method.ssps.inter_size ({s.inter_size}) must be in [0, prototypes - 1 = "
            f"{s.prototypes - 1}] (0: the anchor's own cluster)."
        )
    if s.intra_size < 1 or s.kmeans_iters < 1 or s.start_step < 0 or s.refresh_every < 0:
        raise ConfigError(
            "method.ssps.intra_size and kmeans_iters must be >= 1, start_step and "
            f"refresh_every >= 0; got {s.intra_size}, {s.kmeans_iters}, {s.start_step}, "
            f"{s.refresh_every}."
        )
    if min(s.inter_lambda, s.intra_lambda) <= 0:
        raise ConfigError("method.ssps.inter_lambda and intra_lambda must be > 0.")
