"""Lowering for GPU and TPU without the hardware (``jax.export`` cross-platform lowering on this
CPU): the paper recipe's train step and embedding function, sharded over 8 simulated devices,
carry none of the CPU speed paths (no oneDNN custom call, no fusion-barrier identity matmul)
and compute in bfloat16 where asked, with float32 parameters and optimiser state."""

import re

import jax
import numpy as np
import pytest
from jax import export

from configs import moco_am, simclr_am
from ssv_jax import state as state_lib
from ssv_jax import step as step_lib
from ssv_jax.data import batch as batch_spec
from ssv_jax.embedding import make_embed_fn
from ssv_jax.kernels import onednn
from ssv_jax.models import resnet
from ssv_jax.optim import lr_schedule, make_optimizer
from ssv_jax.sharding import data_mesh

_T = r"tensor<[\dx]*?(\d+)x(?:f32|bf16)>"
_SQUARE_HIGHEST_DOT = re.compile(
    r"stablehlo\.dot_general .*precision = \[HIGHEST, HIGHEST\] : \("
    + _T
    + r", tensor<(\d+)x(\d+)x(?:f32|bf16)>\)"
)
_CONV = re.compile(
    r"stablehlo\.convolution.*: \(tensor<[\dx]*(f32|bf16)>, tensor<[\dx]*(f32|bf16)>"
)


def cpu_only_calls(text: str) -> set:
    """Custom calls of the oneDNN kernels: their FFI targets, or the partitioning wrapper
    (``custom_partitioning``) they are lowered in under a sharded jit."""
    targets = set(re.findall(r"custom_call @(\w+)", text))
    targets |= set(re.findall(r'call_target_name = "(\w+)"', text))
    return {t for t in targets if t.startswith("ssv_onednn") or t == "CustomSPMDPartitioning"}


def identity_matmuls(text: str) -> int:
    """HIGHEST-precision [N, C] x [C, C] matmuls: the fusion barrier's ``x @ I``."""
    return sum(
        1 for m in _SQUARE_HIGHEST_DOT.finditer(text) if m.group(1) == m.group(2) == m.group(3)
    )


def conv_dtypes(text: str) -> set:
    return {m.groups() for m in _CONV.finditer(text)}


def paper_step(recipe=simclr_am, arg=None, *, compute_dtype, batch=16, seconds=0.5):
    """The recipe's jitted train step over 8 devices and abstract (state, batch) arguments."""
    cfg = recipe.get_config(arg)
    cfg.model.compute_dtype = compute_dtype
    cfg.train.batch_size = batch
    cfg.data.crop_seconds = seconds
    mesh = data_mesh()
    sched = lr_schedule(cfg.optim, 10, 1000)
    tx = make_optimizer(cfg.optim, sched)
    graphdef, state = state_lib.create(cfg, tx)
    step = step_lib.make_train_step(cfg, graphdef, mesh, tx, sched, 1000)
    sr = cfg.data.sample_rate
    L = int(cfg.data.augment.rir_seconds * sr)
    shapes = batch_spec.shapes(batch, int(seconds * sr), L)
    args = (
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state),
        {
            k: jax.ShapeDtypeStruct(shapes[k], batch_spec.SPEC[k].dtype)
            for k in batch_spec.DEVICE_FIELDS
        },
    )
    return cfg, graphdef, mesh, step, args


@pytest.fixture(scope="module")
def bf16_step():
    return paper_step(compute_dtype="bfloat16")


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_train_step_lowers_for_accelerators_without_cpu_paths(bf16_step, platform):
    _, _, mesh, step, args = bf16_step
    exp = export.export(step, platforms=[platform])(*args)
    text = exp.mlir_module()
    assert exp.nr_devices == mesh.size == 8
    assert cpu_only_calls(text) == set()
    assert identity_matmuls(text) == 0
    # Every convolution of the encoder (forward and both gradients) runs in bfloat16.
    assert conv_dtypes(text) == {("bf16", "bf16")}
    # Parameters, optimiser state and BatchNorm statistics stay float32.
    state_out = exp.out_avals[: len(jax.tree.leaves(args[0]))]
    floats = {str(a.dtype) for a in state_out if np.issubdtype(a.dtype, np.floating)}
    assert floats == {"float32"}


def test_embedding_lowers_for_accelerators_without_cpu_paths(bf16_step):
    cfg, graphdef, mesh, _, (state, _) = bf16_step
    embed = make_embed_fn(cfg, graphdef, mesh)
    waves = jax.ShapeDtypeStruct((16, 16000), np.float32)
    lengths = jax.ShapeDtypeStruct((16,), np.int32)
    for platform in ("tpu", "cuda"):
        exp = export.export(embed, platforms=[platform])(
            state.params, state.batch_stats, waves, lengths
        )
        text = exp.mlir_module()
        assert cpu_only_calls(text) == set() and identity_matmuls(text) == 0, platform
        assert conv_dtypes(text) == {("bf16", "bf16")}, platform
        assert exp.out_avals[0].dtype == np.float32


@pytest.mark.slow
def test_float32_and_moco_steps_lower_in_float32_for_tpu():
    *_, step, args = paper_step(moco_am, compute_dtype="float32")
    text = export.export(step, platforms=["tpu"])(*args).mlir_module()
    assert cpu_only_calls(text) == set() and identity_matmuls(text) == 0
    assert conv_dtypes(text) == {("f32", "f32")}


@pytest.mark.slow
def test_cpu_lowering_keeps_the_cpu_paths(monkeypatch):
    """The checks above can fail: lowered for the CPU, the same trace holds the oneDNN calls
    (where the kernels build) or, without them, the 16 blocks' fusion barriers."""
    if onednn.available():
        *_, step, args = paper_step(compute_dtype="float32")
        assert cpu_only_calls(step.lower(*args).as_text()) == {"CustomSPMDPartitioning"}
    monkeypatch.setattr(resnet, "_onednn_ready", lambda: False)
    *_, step, args = paper_step(compute_dtype="float32")
    text = step.lower(*args).as_text()
    assert cpu_only_calls(text) == set()
    assert identity_matmuls(text) == 16
