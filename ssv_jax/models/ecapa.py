"""ECAPA-TDNN (Desplanques et al., Interspeech 2020), ``[B, frames, n_mels]`` -> ``[B, embed_dim]``.

Conv1D(k5) + ReLU + BN -> 3 SE-Res2Blocks (k3, dilations 2, 3, 4, Res2Net scale 8, SE bottleneck
128) -> multi-layer feature aggregation (concatenate the three block outputs, Conv1D k1 to
``mfa_channels`` + ReLU + BN) -> attentive statistics pooling with global context (attention
Conv1D k1 + ReLU + BN, tanh, Conv1D k1, softmax over time; weighted mean and std) -> BN -> Linear
to ``embed_dim``. This is the layer arrangement of sslsv's / SpeechBrain's ECAPA-TDNN, with zero
"same" padding. ``dense_residual=True`` adds the paper's summed residual inputs (block i sees the
sum of the stem and all previous block outputs); the parameter count is the same.

Parameters (``nnx.Param`` count): see ``ECAPA_PARAM_COUNTS``.
Layout: sequences ``[B, time, C]``; conv kernels ``[k, C_in, C_out]`` (PyTorch
``w.permute(2, 1, 0)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssv_jax.models import layers as layers_lib
from ssv_jax.models.layers import (
    BatchNorm,
    Linear,
    apply_mask,
    check_encoder_input,
    masked_mean,
    masked_softmax,
    scale_channels,
    torch_uniform,
)

# (n_mels, channels, embed_dim) -> parameters, checked in tests/test_models.py.
ECAPA_PARAM_COUNTS = {
    (40, 512, 192): 6_091_648,
    (40, 1024, 192): 14_455_616,
    (80, 512, 192): 6_194_048,
    (80, 1024, 192): 14_660_416,
}


class Conv1d(nnx.Module):
    """1-D conv with bias, zero 'same' padding (odd kernel), dilation; PyTorch default init."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1, *, rngs: nnx.Rngs
    ):
        init = torch_uniform(cin * kernel_size)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, cin, cout)))
        self.bias = nnx.Param(init(rngs.params(), (cout,)))
        self.dilation = dilation

    def __call__(self, x, mask=None):  # x [B, T, C]; computes in x's dtype
        k = self.kernel[...].astype(x.dtype)
        bias = self.bias[...].astype(x.dtype)
        if k.shape[0] == 1:
            return x @ k[0] + bias
        pad = self.dilation * (k.shape[0] // 2)
        y = jax.lax.conv_general_dilated(
            apply_mask(x, mask),
            k,
            (1,),
            [(pad, pad)],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + bias


class TDNNBlock(nnx.Module):
    """Conv1d -> ReLU -> BatchNorm."""

    def __init__(
        self, cin, cout, kernel_size=1, dilation=1, *, bn_momentum=0.1, bn_eps=1e-5, rngs: nnx.Rngs
    ):
        self.conv = Conv1d(cin, cout, kernel_size, dilation, rngs=rngs)
        self.bn = BatchNorm(cout, momentum=bn_momentum, eps=bn_eps)

    def __call__(self, x, mask=None):
        return self.bn(jax.nn.relu(self.conv(x, mask)), mask)


class SERes2Block(nnx.Module):
    """TDNN(k1) -> Res2Net(k, dilation, scale) -> TDNN(k1) -> SE -> + residual."""

    def __init__(
        self,
        cin,
        cout,
        *,
        kernel_size=3,
        dilation=1,
        scale=8,
        se_channels=128,
        rngs: nnx.Rngs,
        **bn,
    ):
        if cout % scale:
            raise ValueError(f"channels ({cout}) must be divisible by res2net_scale ({scale}).")
        self.scale = scale
        self.tdnn1 = TDNNBlock(cin, cout, rngs=rngs, **bn)
        width = cout // scale
        self.res2 = nnx.List(
            [
                TDNNBlock(width, width, kernel_size, dilation, rngs=rngs, **bn)
                for _ in range(scale - 1)
            ]
        )
        self.tdnn2 = TDNNBlock(cout, cout, rngs=rngs, **bn)
        self.se1 = Linear(cout, se_channels, rngs=rngs)
        self.se2 = Linear(se_channels, cout, rngs=rngs)
        self.shortcut = Conv1d(cin, cout, 1, rngs=rngs) if cin != cout else None

    def __call__(self, x, mask=None):
        res = x if self.shortcut is None else self.shortcut(x)
        h = self.tdnn1(x, mask)
        parts = jnp.split(h, self.scale, axis=-1)
        ys = [parts[0]]
        y = None
        for i, conv in enumerate(self.res2):
            inp = parts[i + 1] if y is None else parts[i + 1] + y
            y = conv(inp, mask)
            ys.append(y)
        h = self.tdnn2(jnp.concatenate(ys, axis=-1), mask)
        s = masked_mean(h.astype(jnp.float32), mask, axes=(1,))
        s = jax.nn.sigmoid(self.se2(jax.nn.relu(self.se1(s))))
        return scale_channels(h, s[:, None, :]) + res


class AttentiveStatsPool(nnx.Module):
    """Attentive statistics pooling (channel-wise attention, optional global context)."""

    def __init__(
        self, channels, attention_channels=128, global_context=True, *, rngs: nnx.Rngs, **bn
    ):
        self.global_context = global_context
        cin = 3 * channels if global_context else channels
        self.tdnn = TDNNBlock(cin, attention_channels, rngs=rngs, **bn)
        self.conv = Conv1d(attention_channels, channels, 1, rngs=rngs)

    @staticmethod
    def _stats(x, w, eps=1e-12):  # w [B, T, C] sums to 1 over time
        mean = jnp.sum(w * x, axis=1)
        var = jnp.sum(w * jnp.square(x - mean[:, None]), axis=1)
        return mean, jnp.sqrt(jnp.maximum(var, eps))

    def __call__(self, x, mask=None):  # x [B, T, C] -> [B, 2C] float32
        t = x.shape[1]
        xf = x.astype(jnp.float32)  # statistics in float32; the attention convs in x's dtype
        if self.global_context:
            if mask is None:
                w = jnp.full(x.shape[:2] + (1,), 1.0 / t, jnp.float32)
            else:
                m = mask.astype(jnp.float32)[..., None]
                w = m / jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
            mean, std = self._stats(xf, w)
            ctx = jnp.concatenate(
                [
                    x,
                    jnp.broadcast_to(mean[:, None], x.shape).astype(x.dtype),
                    jnp.broadcast_to(std[:, None], x.shape).astype(x.dtype),
                ],
                axis=-1,
            )
        else:
            ctx = x
        logits = self.conv(jnp.tanh(self.tdnn(ctx, mask))).astype(jnp.float32)
        attn = masked_softmax(logits, mask, axis=1)
        mean, std = self._stats(xf, attn)
        return jnp.concatenate([mean, std], axis=-1)


class ECAPATDNN(nnx.Module):
    """ECAPA-TDNN speaker encoder.

    Args: n_mels; channels (C of the SE-Res2Blocks, 512 or 1024); embed_dim; mfa_channels (1536);
    kernel_sizes / dilations of the stem and the three blocks ((5, 3, 3, 3), (1, 2, 3, 4));
    res2net_scale (8); se_channels (128); attention_channels (128); global_context (True);
    dense_residual (False; True = the paper's summed block inputs); compute_dtype ("auto" |
    "float32" | "bfloat16", ``layers.compute_dtype``: activations and convolutions in it;
    parameters, BatchNorm, SE and pooling statistics and the embedding in float32);
    bn_momentum / bn_eps. Its convolutions are XLA's on every platform.
    """

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        n_mels: int = 40,
        channels: int = 512,
        embed_dim: int = 192,
        mfa_channels: int = 1536,
        kernel_sizes=(5, 3, 3, 3),
        dilations=(1, 2, 3, 4),
        res2net_scale: int = 8,
        se_channels: int = 128,
        attention_channels: int = 128,
        global_context: bool = True,
        dense_residual: bool = False,
        compute_dtype: str = "auto",
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ):
        layers_lib.compute_dtype(compute_dtype)  # validates the name
        self.compute_dtype = compute_dtype
        if len(kernel_sizes) != len(dilations) or len(kernel_sizes) < 2:
            raise ValueError(
                "kernel_sizes and dilations need one entry for the stem and one per "
                f"block, got {tuple(kernel_sizes)} and {tuple(dilations)}."
            )
        bn = dict(bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.n_mels = n_mels
        self.dense_residual = dense_residual
        self.stem = TDNNBlock(n_mels, channels, kernel_sizes[0], dilations[0], rngs=rngs, **bn)
        self.blocks = nnx.List(
            [
                SERes2Block(
                    channels,
                    channels,
                    kernel_size=k,
                    dilation=d,
                    scale=res2net_scale,
                    se_channels=se_channels,
                    rngs=rngs,
                    **bn,
                )
                for k, d in zip(kernel_sizes[1:], dilations[1:])
            ]
        )
        n_blocks = len(kernel_sizes) - 1
        self.mfa = TDNNBlock(n_blocks * channels, mfa_channels, rngs=rngs, **bn)
        self.asp = AttentiveStatsPool(
            mfa_channels, attention_channels, global_context, rngs=rngs, **bn
        )
        self.asp_bn = BatchNorm(2 * mfa_channels, momentum=bn_momentum, eps=bn_eps)
        self.fc = Linear(2 * mfa_channels, embed_dim, rngs=rngs)

    def __call__(self, feats, mask=None):
        check_encoder_input(feats, mask, self.n_mels)
        x = self.stem(feats.astype(layers_lib.compute_dtype(self.compute_dtype)), mask)
        outs = []
        acc = x
        for block in self.blocks:
            x = block(acc if self.dense_residual else x, mask)
            outs.append(x)
            acc = acc + x
        h = self.mfa(jnp.concatenate(outs, axis=-1), mask)
        return self.fc(self.asp_bn(self.asp(h, mask)))  # float32 from the pooling on
