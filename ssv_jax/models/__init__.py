"""Speaker encoders (Flax NNX): Fast ResNet-34, ECAPA-TDNN, projector head.

Recommended use under ``jax.jit`` (train step)::

    model = build_encoder(cfg.model, rngs=nnx.Rngs(0)); model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)   # rest = BatchStat (running stats)

    @jax.jit
    def step(params, rest, feats):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest, copy=True)   # copy=True: see below
            emb = m(feats)                                       # train mode: batch statistics
            return loss(emb), nnx.state(m, nnx.BatchStat)        # updated running stats
        (l, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        ...

With ``feats`` sharded over mesh axis 'data', BatchNorm statistics are global-batch statistics
(synchronised BN) because the mean is taken over the whole (global) batch axis.
``copy=True`` matters: BatchNorm writes its running statistics into the merged module, and
without a copy those Variables belong to the outer (jit) trace, which flax refuses to mutate
inside ``jax.grad`` (TraceContextError). Eval: ``model.eval()`` before splitting, or
``nnx.merge(...)`` then ``m.eval()``.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx

from ssv_jax.models import layers, resnet
from ssv_jax.models.ecapa import ECAPA_PARAM_COUNTS, ECAPATDNN
from ssv_jax.models.layers import BatchNorm, Linear
from ssv_jax.models.projector import Projector
from ssv_jax.models.resnet import FastResNet34

_ENCODERS = {"fast_resnet34": FastResNet34, "ecapa_tdnn": ECAPATDNN}

_DEFAULTS = {
    "fast_resnet34": dict(
        n_mels=40,
        channels=(16, 32, 64, 128),
        blocks=(3, 4, 6, 3),
        strides=(1, 2, 2, 1),
        embed_dim=512,
        pooling="sap",
        stem_kernel=7,
        se_reduction=8,
        last_bn=False,
        conv_impl="auto",
        compute_dtype="auto",
        bn_momentum=0.1,
        bn_eps=1e-5,
    ),
    "ecapa_tdnn": dict(
        n_mels=40,
        channels=512,
        embed_dim=192,
        mfa_channels=1536,
        kernel_sizes=(5, 3, 3, 3),
        dilations=(1, 2, 3, 4),
        res2net_scale=8,
        se_channels=128,
        attention_channels=128,
        global_context=True,
        dense_residual=False,
        compute_dtype="auto",
        bn_momentum=0.1,
        bn_eps=1e-5,
    ),
}


def default_model_config(name: str = "fast_resnet34") -> ml_collections.ConfigDict:
    """ConfigDict with ``name`` plus every constructor keyword of that encoder at its default.

    Fields: fast_resnet34 -> n_mels, channels, blocks, strides, embed_dim, pooling, stem_kernel,
    se_reduction, last_bn, conv_impl, compute_dtype, bn_momentum, bn_eps. ecapa_tdnn -> n_mels,
    channels, embed_dim, mfa_channels, kernel_sizes, dilations, res2net_scale, se_channels,
    attention_channels, global_context, dense_residual, compute_dtype, bn_momentum, bn_eps.
    ``conv_impl`` and ``compute_dtype`` are how it runs, not what it is
    (``workdir.RUNTIME_FIELDS``): a checkpoint restores under any value of them.
    """
    if name not in _DEFAULTS:
        raise ValueError(f"unknown encoder {name!r}; use one of {sorted(_DEFAULTS)}.")
    return ml_collections.ConfigDict(dict(name=name, **_DEFAULTS[name]))


def build_encoder(model_cfg, *, rngs: nnx.Rngs) -> nnx.Module:
    """Encoder named ``model_cfg.name`` built with the config's other fields as keywords.

    Unknown fields are refused by name (see ``default_model_config`` for the accepted ones).
    """
    cfg = dict(model_cfg)
    name = cfg.pop("name", None)
    if name not in _ENCODERS:
        raise ValueError(
            f"model config name {name!r} is not an encoder; use one of {sorted(_ENCODERS)}."
        )
    unknown = set(cfg) - set(_DEFAULTS[name])
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)} for encoder {name!r}; accepted: "
            f"{sorted(_DEFAULTS[name])}."
        )
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return _ENCODERS[name](rngs=rngs, **cfg)


def activation_dtype(model_cfg) -> str:
    """The dtype ``model_cfg.compute_dtype`` resolves to in this process ("float32" or
    "bfloat16"; "auto": see ``layers.compute_dtype``)."""
    cpu_bf16 = model_cfg.name == "fast_resnet34" and resnet.cpu_bf16(model_cfg.conv_impl)
    return layers.compute_dtype(model_cfg.compute_dtype, cpu_bf16=cpu_bf16).name


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` leaves; running BN statistics excluded)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = [
    "FastResNet34",
    "ECAPATDNN",
    "Projector",
    "BatchNorm",
    "Linear",
    "build_encoder",
    "default_model_config",
    "activation_dtype",
    "count_params",
    "ECAPA_PARAM_COUNTS",
]
