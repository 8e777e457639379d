"""Fast ResNet-34 (sslsv ``ResNet34`` / "ResNetSE34L"): 1,437,078 parameters with SAP pooling.

Layout: input feats ``[B, frames, n_mels]`` -> image ``[B, time, freq, 1]`` (NHWC with H = time,
W = freq; kernels ``[k_time, k_freq, C_in, C_out]``). A PyTorch weight ``[C_out, C_in, k_freq,
k_time]`` maps to ours by ``w.permute(3, 2, 1, 0)``; Linear weights are transposed.

Convolutions (``conv_impl``; numerically equivalent up to float summation order, parameters
unchanged): "auto" chooses per platform when the computation is lowered
(``jax.lax.platform_dependent``), so one trace serves every backend:
- CPU: every convolution the kernels take runs in oneDNN (``ssv_jax.kernels``), faster than
  XLA's there; elsewhere (shapes oneDNN does not take, or no kernels on this machine) XLA's
  convolution with two CPU rewrites: 3x3 stride-2 convolutions as space-to-depth + a 2x2
  stride-1 convolution over 4x the channels, the 7x7 stem (stride 2 on frequency) as a 7x4 conv
  over 2 channels (stride-1 convolutions have a much cheaper backward on XLA:CPU), and each
  block's output through ``layers.fusion_barrier`` (an exact ``x @ I``) so XLA:CPU stores it
  once instead of re-computing the residual chain in each consumer (figures: ``bench/README.md``);
- GPU and TPU: XLA's convolutions as written, none of the CPU rewrites.
"xla" uses XLA's plain convolutions on every platform (a portable export, or a comparison).
The 1x1 stride-2 shortcut is a slice + matmul and BatchNorm statistics are one pass everywhere.

Mixed precision (``compute_dtype``, see ``layers.compute_dtype``): activations and
convolutions in that dtype; parameters, BatchNorm and SE statistics, the attentive pooling and
the embedding in float32. "auto" is bfloat16 on GPU and TPU, and on a CPU whose oneDNN runs
bf16 on AMX (``cpu_bf16``); float32 on other CPUs.

Variable-length batches: with ``mask`` ``[B, frames]`` every convolution input is zeroed outside
each utterance, the SE/attention/statistics poolings use valid frames only, and train-mode
BatchNorm statistics count valid frames only, so a padded utterance gets the embedding it gets
alone (eval mode).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssv_jax.kernels import onednn
from ssv_jax.models import layers as layers_lib
from ssv_jax.models.layers import (
    BatchNorm,
    Linear,
    apply_mask,
    check_encoder_input,
    downsample_mask,
    fusion_barrier,
    kaiming_fan_out,
    masked_mean,
    masked_softmax,
)

_DN = ("NHWC", "HWIO", "NHWC")


def conv2d(x, kernel, stride=(1, 1), padding="SAME"):
    """Plain NHWC convolution; ``padding`` "SAME" means k // 2 zeros each side (odd kernels)."""
    if padding == "SAME":
        padding = [(k // 2, k // 2) for k in kernel.shape[:2]]
    return jax.lax.conv_general_dilated(x, kernel, stride, padding, dimension_numbers=_DN)


def conv_space_to_depth(x, kernel, stride=(2, 2), padding=None):
    """Strided NHWC conv (strides 1 or 2 per axis, zero padding) via space-to-depth.

    Equals ``conv2d(x, kernel, stride, padding)`` (default padding k // 2 each side): on every
    stride-2 axis, out[j] = sum_k w[k] x'[2j + k] with x' the padded input; grouping x' in pairs
    turns it into a stride-1 conv over ceil(k / 2) block taps with the 2 phases moved into the
    channels (taps beyond k get zero weight). Stride-1 convolutions have a much cheaper backward
    on CPU than strided ones.
    """
    if padding is None:
        padding = [(k // 2, k // 2) for k in kernel.shape[:2]]
    b, c = x.shape[0], x.shape[-1]
    co = kernel.shape[-1]
    pads, xshape, kshape, kpads = [(0, 0)], [b], [], []
    x_phase_axes, k_phase_axes = [], []
    for ax, (n, k, s, (lo, hi)) in enumerate(zip(x.shape[1:3], kernel.shape[:2], stride, padding)):
        if s == 1:
            pads.append((lo, hi))
            xshape.append(n + lo + hi)
            kshape.append(k)
            kpads.append((0, 0))
            continue
        if s != 2:
            raise ValueError(f"space-to-depth conv supports strides 1 and 2, got {stride}.")
        out = (n + lo + hi - k) // 2 + 1
        kb = -(-k // 2)
        total = 2 * (out + kb - 1)
        pads.append((lo, total - n - lo))
        xshape += [total // 2, 2]
        kshape += [kb, 2]
        kpads.append((0, 2 * kb - k))
        x_phase_axes.append(len(xshape) - 1)
        k_phase_axes.append(len(kshape) - 1)
    pads.append((0, 0))
    if any(hi < 0 for _, hi in pads):  # input longer than needed: crop the tail
        x = x[tuple(slice(0, x.shape[i] + min(hi, 0)) for i, (_, hi) in enumerate(pads))]
        pads = [(lo, max(hi, 0)) for lo, hi in pads]
    x = jnp.pad(x, pads).reshape(xshape + [c])
    spatial = [i for i in range(1, len(xshape)) if i not in x_phase_axes]
    x = x.transpose([0] + spatial + x_phase_axes + [len(xshape)])
    x = x.reshape(x.shape[:3] + (-1,))
    kernel = jnp.pad(kernel, kpads + [(0, 0), (0, 0)]).reshape(kshape + [c, co])
    kspatial = [i for i in range(len(kshape)) if i not in k_phase_axes]
    kernel = kernel.transpose(kspatial + k_phase_axes + [len(kshape), len(kshape) + 1])
    kernel = kernel.reshape(kernel.shape[:2] + (-1, co))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)


CONV_IMPLS = ("auto", "xla")


@functools.cache
def _onednn_ready() -> bool:
    """oneDNN kernels usable: a CPU process whose kernel library builds (warns once if not).

    ``platform_dependent`` traces the CPU branch on every backend; a GPU/TPU process does not
    build the kernels for it (lowered for the CPU there, XLA's convolutions run)."""
    if jax.default_backend() != "cpu":
        return False
    if not onednn.available():
        logging.warning(
            "oneDNN convolution kernels unavailable (%s); using XLA's convolutions, "
            "which are slower on CPU.",
            onednn.unavailable_reason(),
        )
        return False
    return True


def cpu_bf16(conv_impl: str) -> bool:
    """Whether ``compute_dtype="auto"`` picks bfloat16 on the CPU backend: with the CPU path
    (``conv_impl="auto"``) where oneDNN runs bf16 convolutions on AMX, measured faster than
    float32 there (bench/README.md); float32 on every other CPU."""
    return conv_impl == "auto" and _onednn_ready() and onednn.amx_bf16()


def _cpu_conv(x, kernel, stride, padding):
    """The CPU path: oneDNN where it takes the shapes, else XLA with space-to-depth."""
    if _onednn_ready() and onednn.supports(x.shape, kernel.shape, x.dtype):
        return onednn.conv2d(x, kernel, stride, padding)
    kernel = kernel.astype(x.dtype)
    if any(s != 1 for s in stride):
        return conv_space_to_depth(x, kernel, stride, padding)
    return conv2d(x, kernel, stride, padding)


def conv(x, kernel, stride=(1, 1), padding=None, *, impl="auto"):
    """The encoder's convolution in ``x``'s dtype (``kernel`` float32 is cast): with
    ``impl="auto"`` the CPU path above when lowered for the CPU, XLA's convolution when lowered
    for anything else; with "xla", XLA's convolution everywhere."""
    if padding is None:
        padding = [(k // 2, k // 2) for k in kernel.shape[:2]]

    def plain(x, kernel):
        return conv2d(x, kernel.astype(x.dtype), stride, padding)

    if impl == "xla":
        return plain(x, kernel)
    return jax.lax.platform_dependent(
        x, kernel, cpu=lambda x, k: _cpu_conv(x, k, stride, padding), default=plain
    )


def block_output(x, impl="auto"):
    """A residual block's output: through ``fusion_barrier`` where XLA:CPU runs the block's
    convolutions (CPU, shapes or dtype oneDNN does not take), unchanged everywhere else.
    oneDNN's kernels take the block output as stored, and with them the barrier measured no
    faster (bench_encoder; figures: bench/README.md)."""
    if impl == "xla":
        return x

    def cpu(v):
        c = v.shape[-1]
        if _onednn_ready() and onednn.supports(v.shape, (3, 3, c, c), v.dtype):
            return v
        return fusion_barrier(v)

    return jax.lax.platform_dependent(x, cpu=cpu, default=lambda v: v)


class ConvKernel(nnx.Module):
    """Bias-free conv weight ``[kh, kw, C_in, C_out]`` (kaiming normal, fan_out, as sslsv)."""

    def __init__(self, kh, kw, cin, cout, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(kaiming_fan_out(rngs.params(), (kh, kw, cin, cout)))


class SEBasicBlock(nnx.Module):
    """conv3x3 -> ReLU -> BN -> conv3x3 -> BN -> squeeze-excitation -> + shortcut -> ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        *,
        se_reduction: int = 8,
        conv_impl: str = "auto",
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        rngs: nnx.Rngs,
    ):
        bn = dict(momentum=bn_momentum, eps=bn_eps)
        self.stride = stride
        self.conv_impl = conv_impl
        self.conv1 = ConvKernel(3, 3, cin, cout, rngs=rngs)
        self.bn1 = BatchNorm(cout, **bn)
        self.conv2 = ConvKernel(3, 3, cout, cout, rngs=rngs)
        self.bn2 = BatchNorm(cout, **bn)
        self.se_fc1 = Linear(cout, cout // se_reduction, rngs=rngs)
        self.se_fc2 = Linear(cout // se_reduction, cout, rngs=rngs)
        if stride != 1 or cin != cout:
            self.down_conv = ConvKernel(1, 1, cin, cout, rngs=rngs)
            self.down_bn = BatchNorm(cout, **bn)
        else:
            self.down_conv = self.down_bn = None

    def __call__(self, x, mask=None):
        s = self.stride
        xm = apply_mask(x, mask)
        impl = self.conv_impl
        out = conv(xm, self.conv1.kernel[...], (s, s), impl=impl)
        mask = downsample_mask(mask, s)
        out = self.bn1(jax.nn.relu(out), mask)
        out = self.bn2(conv(apply_mask(out, mask), self.conv2.kernel[...], impl=impl), mask)
        se = masked_mean(out.astype(jnp.float32), mask, axes=(1, 2))
        se = jax.nn.sigmoid(self.se_fc2(jax.nn.relu(self.se_fc1(se))))
        out = layers_lib.scale_channels(out, se[:, None, None, :])
        if self.down_conv is None:
            res = x
        else:
            if all(isinstance(d, int) for d in x.shape):
                res = x[:, ::s, ::s] @ self.down_conv.kernel[0, 0].astype(x.dtype)
            else:  # symbolic sizes (export): the strided conv's own output-size formula
                res = jax.lax.conv_general_dilated(
                    x,
                    self.down_conv.kernel[...].astype(x.dtype),
                    (s, s),
                    "SAME",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
            res = self.down_bn(res, mask)
        return block_output(jax.nn.relu(out + res), impl), mask


class SelfAttentivePooling(nnx.Module):
    """w_t = tanh(W h_t + b); a = softmax_t(w_t . v); pooled = sum_t a_t h_t."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.linear = Linear(dim, dim, rngs=rngs)
        std = math.sqrt(2.0 / (dim + 1))  # xavier_normal_ of a [dim, 1] tensor
        self.attention = nnx.Param(std * jax.random.normal(rngs.params(), (dim, 1)))

    def __call__(self, h, mask=None):  # h [B, T, C]
        logits = (jnp.tanh(self.linear(h)) @ self.attention[...])[..., 0]
        a = masked_softmax(logits, mask, axis=1)
        return jnp.einsum("bt,btc->bc", a, h)


def stats_pool(h, mask=None, min_var: float = 1e-5):
    """Mean and standard deviation over time of ``h`` ``[B, T, D]`` -> ``[B, 2D]``.

    std = sqrt(max(biased var, min_var)), as sslsv's ``StatsPooling``.
    """
    mean = masked_mean(h, mask, axes=(1,))
    var = masked_mean(jnp.square(h - mean[:, None]), mask, axes=(1,))
    return jnp.concatenate([mean, jnp.sqrt(jnp.maximum(var, min_var))], axis=-1)


class FastResNet34(nnx.Module):
    """Fast ResNet-34 speaker encoder (docs/method.md#fast-resnet-34): ``[B, frames, n_mels]``
    -> ``[B, embed_dim]``.

    Args:
      n_mels: input bands. channels / blocks / strides: per stage (first-block stride, applied to
        time and frequency). embed_dim: embedding size. pooling: "sap" (self-attentive pooling of
        the frequency-averaged map, 1,437,078 parameters by default) or "stats" (mean + std over
        time of the channel x frequency map, 2,010,262). stem_kernel: stem conv size (stride 2 on
        frequency only). se_reduction: SE bottleneck ratio. last_bn: BatchNorm on the embedding
        (sslsv ``enable_last_bn``). conv_impl: "auto" | "xla" (module docstring; speed only).
        compute_dtype: "auto" | "float32" | "bfloat16" (``layers.compute_dtype``).
        bn_momentum / bn_eps: PyTorch-sense BatchNorm settings.
    Train/eval: ``model.train()`` (batch statistics) / ``model.eval()`` (running averages).
    """

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        n_mels: int = 40,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (3, 4, 6, 3),
        strides: Sequence[int] = (1, 2, 2, 1),
        embed_dim: int = 512,
        pooling: str = "sap",
        stem_kernel: int = 7,
        se_reduction: int = 8,
        last_bn: bool = False,
        conv_impl: str = "auto",
        compute_dtype: str = "auto",
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ):
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")
        layers_lib.compute_dtype(compute_dtype)  # validates the name
        if pooling not in ("sap", "stats"):
            raise ValueError(f"unknown pooling {pooling!r}; use 'sap' or 'stats'.")
        if not len(channels) == len(blocks) == len(strides):
            raise ValueError(
                "channels, blocks and strides need one entry per stage, got "
                f"{len(channels)}, {len(blocks)}, {len(strides)}."
            )
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"stage strides must be 1 or 2, got {tuple(strides)}.")
        bn = dict(bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.n_mels = n_mels
        self.pooling = pooling
        self.stem_kernel = stem_kernel
        self.conv_impl = conv_impl
        self.compute_dtype = compute_dtype
        self.stem = ConvKernel(stem_kernel, stem_kernel, 1, channels[0], rngs=rngs)
        self.stem_bn = BatchNorm(channels[0], momentum=bn_momentum, eps=bn_eps)
        layers = []
        cin = channels[0]
        freq = (n_mels + 2 * (stem_kernel // 2) - stem_kernel) // 2 + 1
        for cout, n, stride in zip(channels, blocks, strides):
            for i in range(n):
                layers.append(
                    SEBasicBlock(
                        cin,
                        cout,
                        stride if i == 0 else 1,
                        se_reduction=se_reduction,
                        conv_impl=conv_impl,
                        rngs=rngs,
                        **bn,
                    )
                )
                cin = cout
            freq = -(-freq // stride)
        self.blocks = nnx.List(layers)
        self.out_freq = freq
        if pooling == "sap":
            self.sap = SelfAttentivePooling(cin, rngs=rngs)
            pooled = cin
        else:
            self.sap = None
            pooled = 2 * cin * freq
        self.fc = Linear(pooled, embed_dim, rngs=rngs)
        self.last_bn = BatchNorm(embed_dim, momentum=bn_momentum, eps=bn_eps) if last_bn else None

    def __call__(self, feats, mask=None):
        check_encoder_input(feats, mask, self.n_mels)
        dtype = layers_lib.compute_dtype(self.compute_dtype, cpu_bf16=cpu_bf16(self.conv_impl))
        x = apply_mask(feats.astype(dtype), mask)[..., None]
        p = self.stem_kernel // 2
        x = conv(x, self.stem.kernel[...], (1, 2), [(p, p), (p, p)], impl=self.conv_impl)
        x = jax.nn.relu(self.stem_bn(x, mask))
        for block in self.blocks:
            x, mask = block(x, mask)
        x = x.astype(jnp.float32)  # poolings and the embedding in float32
        if self.pooling == "sap":
            pooled = self.sap(jnp.mean(x, axis=2), mask)
        else:
            b, t, f, c = x.shape  # flatten (channel, freq) channel-major, as PyTorch
            pooled = stats_pool(x.transpose(0, 1, 3, 2).reshape(b, t, c * f), mask)
        emb = self.fc(pooled)
        if self.last_bn is not None:
            emb = self.last_bn(emb)
        return emb
