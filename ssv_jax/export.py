"""Export a trained workdir's embedding extractor for use without ssv_jax's model code.

The exported function maps float32 waveforms ``[batch, samples]`` (16 kHz, at least
``MIN_SAMPLES``; batch and length are symbolic, so one artifact takes any of either) to
L2-normalised embeddings ``[batch, D]`` of the whole utterances, with the trained parameters
and BatchNorm statistics (the network evaluation uses) inside. Two artifacts:

  OUT/embed.jax     ``jax.export`` serialisation, lowered for cpu, cuda and tpu; load with
                    ``jax.export.deserialize(open(path, "rb").read()).call(waves)``
  OUT/saved_model/  a TensorFlow SavedModel of the same function (jax2tf), signature
                    ``embed(waves)``, for TF Serving / TFLite conversion
  OUT/export.json   what the artifacts take and give, and which checkpoint they hold

The network is built with its portable settings: the CPU-only paths (oneDNN convolutions,
space-to-depth) are switched off, as they are speed rewrites of the same arithmetic.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssv_jax import checkpoints
from ssv_jax import workdir as workdir_lib
from ssv_jax.frontend import features
from ssv_jax.losses import l2_normalize
from ssv_jax.progress import Progress
from ssv_jax.sharding import data_mesh

MIN_SAMPLES = 1600  # 0.1 s: the front-end's reflect padding needs more than n_fft / 2
PLATFORMS = ("cpu", "cuda", "tpu")
# Portable: XLA's convolutions on every platform (no CPU kernels baked in), float32.
PORTABLE = {"conv_impl": "xla", "compute_dtype": "float32"}


def embedding_fn(cfg, graphdef, params, batch_stats):
    """waves [B, T] -> L2-normalised embeddings [B, D] (whole utterances, no padding)."""
    params, batch_stats = jax.device_get((params, batch_stats))

    def embed(waves):
        net = nnx.merge(graphdef, params, batch_stats, copy=True)
        net.eval()
        feats, _ = features(waves, cfg.frontend)
        return l2_normalize(net.embed(feats))

    return embed


def export(workdir: str, out: str) -> dict:
    """Write OUT/embed.jax, OUT/saved_model/ and OUT/export.json for ``workdir``'s network."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    cfg = workdir_lib.read_config(workdir)
    for k, v in PORTABLE.items():
        if k in cfg.model:
            cfg.model[k] = v
    mesh = data_mesh(jax.devices()[:1])
    progress = Progress("export", 3, unit="part", every_s=0)
    graphdef, params, batch_stats, what = checkpoints.load_network(cfg, workdir, mesh)
    progress.update(1, done="network loaded")
    fn = embedding_fn(cfg, graphdef, params, batch_stats)
    constraint = f"t >= {MIN_SAMPLES}"
    b, t = jax.export.symbolic_shape("b, t", constraints=(constraint,))
    exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(
        jax.ShapeDtypeStruct((b, t), jnp.float32)
    )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "embed.jax"), "wb") as f:
        f.write(exported.serialize())
    progress.update(1, done="embed.jax")
    module = tf.Module()
    module.embed = tf.function(
        jax2tf.convert(
            fn,
            polymorphic_shapes=["(b, t)"],
            polymorphic_constraints=(constraint,),
            with_gradient=False,
        ),
        input_signature=[tf.TensorSpec([None, None], tf.float32, name="waves")],
        autograph=False,
    )
    tf.saved_model.save(module, os.path.join(out, "saved_model"))
    progress.update(1, done="saved_model")
    progress.close()
    dim = int(exported.out_avals[0].shape[1])
    info = {
        "input": f"float32 [batch, samples] waveforms at {cfg.data.sample_rate} Hz, "
        f"samples >= {MIN_SAMPLES}",
        "output": f"float32 [batch, {dim}] L2-normalised speaker embeddings (cosine = dot)",
        "sample_rate": int(cfg.data.sample_rate),
        "embedding_dim": dim,
        "network": f"{what} of {os.path.abspath(workdir)}",
        "platforms": list(PLATFORMS),
        "files": {"jax": "embed.jax", "tensorflow": "saved_model"},
    }
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


def load(out: str):
    """The exported function from OUT/embed.jax: waves (numpy [B, T]) -> embeddings."""
    with open(os.path.join(out, "embed.jax"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return lambda waves: np.asarray(exported.call(np.asarray(waves, np.float32)))
