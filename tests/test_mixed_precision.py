"""Mixed precision (``model.compute_dtype="bfloat16"``): training follows float32, embeddings of a
trained network agree with float32, and parameters, optimiser state and BatchNorm statistics
stay float32 (checkpoints hold float32 whatever the compute dtype)."""

import jax
import numpy as np
import pytest

from ssv_jax import data as data_lib
from ssv_jax import state as state_lib
from ssv_jax.embedding import embed_utterances
from ssv_jax.optim import lr_schedule, make_optimizer
from ssv_jax.sharding import data_mesh, replicated
from tests.helpers.cases import run_steps, tiny_config

STEPS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{dtype: (cfg, host state, metrics)} after STEPS train steps on the tiny corpus."""
    d = tmp_path_factory.mktemp("tfds")
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = tiny_config(d)
        cfg.model.compute_dtype = dtype
        if not out:
            data_lib.ensure_dataset(cfg.data)
        state, metrics = run_steps(cfg, data_mesh(), n_steps=STEPS, total=STEPS)
        out[dtype] = (cfg, state, metrics)
    return out


def test_bf16_training_follows_float32(runs):
    f32 = np.array([m["loss"] for m in runs["float32"][2]])
    bf16 = np.array([m["loss"] for m in runs["bfloat16"][2]])
    assert np.all(np.isfinite(bf16))
    # Same batches, same initial weights: the loss curves agree (measured here: at most 0.06%
    # apart over 6 steps; bf16 keeps 8 significant bits, so allow 1%).
    np.testing.assert_allclose(bf16, f32, rtol=0.01)
    assert bf16[-1] < bf16[0]  # and it learns
    # Everything that is kept is float32.
    state = runs["bfloat16"][1]
    for tree in (state.params, state.batch_stats, state.opt_state):
        dtypes = {x.dtype for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype, np.floating)}
        assert dtypes == {np.dtype(np.float32)}


def test_bf16_embeddings_of_a_trained_network_match_float32(runs):
    cfg, state, _ = runs["float32"]
    mesh = data_mesh()
    utts = list(data_lib.eval_utterances(cfg.data))[:16]
    emb = {}
    for dtype in ("float32", "bfloat16"):
        c = cfg.copy_and_resolve_references()
        c.model.compute_dtype = dtype
        c.eval.protocol = "full"
        graphdef, _ = state_lib.create(c, make_optimizer(c.optim, lr_schedule(c.optim, 1, 1)))
        params, stats = jax.device_put((state.params, state.batch_stats), replicated(mesh))
        emb[dtype] = embed_utterances(c, graphdef, params, stats, mesh, utts)
    cos = np.array([float(emb["float32"][u] @ emb["bfloat16"][u]) for u, _ in utts])
    assert cos.min() > 0.999, cos  # measured here: min 0.999994


def test_auto_is_bfloat16_on_gpu_tpu_and_cpus_whose_onednn_has_amx(monkeypatch):
    import jax.numpy as jnp
    from flax import nnx

    from ssv_jax.kernels import onednn
    from ssv_jax.models import FastResNet34, activation_dtype, default_model_config, layers

    feats = jnp.zeros((2, 20, 40), jnp.float32)

    def traced_dtypes(model):
        model.eval()
        return str(jax.make_jaxpr(lambda f: model(f))(feats))

    cfg = default_model_config()
    amx = onednn.amx_bf16()
    assert activation_dtype(cfg) == ("bfloat16" if amx else "float32")
    assert ("bf16[" in traced_dtypes(FastResNet34(rngs=nnx.Rngs(0)))) == amx
    # XLA's convolutions (no oneDNN) and ECAPA-TDNN: float32 on any CPU.
    cfg.conv_impl = "xla"
    assert activation_dtype(cfg) == "float32"
    assert "bf16[" not in traced_dtypes(FastResNet34(rngs=nnx.Rngs(0), conv_impl="xla"))
    assert activation_dtype(default_model_config("ecapa_tdnn")) == "float32"
    # A CPU whose oneDNN has bf16 instructions but no AMX: float32 (not measured faster).
    if onednn.available(jnp.bfloat16):
        monkeypatch.setitem(onednn._state, "bf16_isa", "avx512_core_bf16")
        assert activation_dtype(default_model_config()) == "float32"
    # GPU / TPU: bfloat16 whatever the encoder.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.compute_dtype("auto") == jnp.bfloat16
    assert layers.compute_dtype("float32") == jnp.float32
