"""Building blocks shared by the encoders: PyTorch-initialised Linear/Conv, BatchNorm, masking.

Layouts: images ``[B, time, freq, C]`` (NHWC, kernels HWIO), sequences ``[B, time, C]``.
Masks are ``[B, time]`` bool (True = valid frame) or None (all frames valid; no masking cost).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx


def torch_uniform(fan_in: int):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's default Linear/Conv weight and bias
    init."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# kaiming_normal_(mode='fan_out', nonlinearity='relu'), as sslsv initialises its ResNet convs.
kaiming_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Linear(nnx.Module):
    """Dense layer ``x @ kernel + bias`` with PyTorch's default initialisation."""

    def __init__(
        self, in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs
    ):
        init = torch_uniform(in_features)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(init(rngs.params(), (out_features,))) if use_bias else None

    def __call__(self, x):
        """Computes in ``x``'s dtype (the float32 parameters are cast to it)."""
        y = x @ self.kernel[...].astype(x.dtype)
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class BatchNorm(nnx.Module):
    """BatchNorm over every axis but the last, PyTorch semantics.

    Train mode (``use_running_average=False``): normalise with the batch's biased variance and
    update running mean / unbiased variance with ``momentum`` (PyTorch sense, 0.1). Statistics are
    one pass (E[x], E[x^2]); under ``jax.jit`` over a batch sharded on a mesh they are global-batch
    statistics (synchronised BN). With ``mask`` (broadcastable to x[..., :1]) only valid positions
    count. Eval mode uses the running averages. Scale/bias are parameters; running stats are
    ``nnx.BatchStat``. ``mask``: ``[B, T]`` bool for ``[B, T, ...]`` inputs. A bfloat16 ``x``
    (mixed precision) has its statistics summed in float32; the output is in ``x``'s dtype.
    Train mode runs ``batch_norm_train`` (its gradient in closed form).
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        eps: float = 1e-5,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = momentum
        self.eps = eps
        self.use_running_average = False

    def __call__(self, x, mask=None):
        if self.use_running_average:
            mul = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
            shift = self.bias[...] - self.mean[...] * mul
            if x.dtype != jnp.float32:
                mul, shift = (to_dtype_of(v, x) for v in (mul, shift))
            return x * mul + shift
        m = None
        if mask is not None:
            m = jnp.broadcast_to(expand_mask(mask, x).astype(jnp.float32), x.shape[:-1] + (1,))
        n = _bn_count(x, m)
        y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], m, self.eps)
        unbiased = var * (n / jnp.maximum(n - 1, 1))
        mom = self.momentum
        self.mean[...] = (1 - mom) * self.mean[...] + mom * jax.lax.stop_gradient(mean)
        self.var[...] = (1 - mom) * self.var[...] + mom * jax.lax.stop_gradient(unbiased)
        return y


def _bn_count(x, m):
    return math.prod(x.shape[:-1]) if m is None else jnp.maximum(jnp.sum(m), 1.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_norm_train(x, scale, bias, m, eps):
    """Train-mode BatchNorm over every axis but the last: ``(y, mean, var)`` with the batch's
    mean and biased variance (float32, of the positions where ``m`` is 1; ``m`` None = all).

    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` in ``x``'s dtype, computed in float32.
    Statistics are one pass (E[x], E[x^2]) summed in float32. The gradient is the closed form
    dx = a * (dy - m / n * (sum dy + xhat * sum dy * xhat)), a = scale / sqrt(var + eps): two
    float32 sums and one elementwise pass over x. Autodiff of the one-pass statistics takes
    several more passes over x (in bfloat16, each with its own casts) and rounds its large
    cancelling terms to bf16 (memory traffic of the train step: bench/README.md). ``mean`` and
    ``var`` carry no gradient (they feed the running statistics only).
    """
    return _bn_train_fwd(x, scale, bias, m, eps)[0]


def _bn_train_fwd(x, scale, bias, m, eps):
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    n = _bn_count(x, m)
    w = xf if m is None else xf * m
    mean = jnp.sum(w, axis=axes) / n
    meansq = jnp.sum(w * xf, axis=axes) / n
    var = jnp.maximum(meansq - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + eps)
    mul = scale * inv
    y = (xf * mul + (bias - mean * mul)).astype(x.dtype)
    return (y, mean, var), (x, m, mean, inv, scale)


def _bn_train_bwd(eps, res, cts):
    del eps
    x, m, mean, inv, scale = res
    dy = cts[0].astype(jnp.float32)  # mean / var: no gradient (see the docstring)
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    s1 = jnp.sum(dy, axis=axes)
    s2 = inv * (jnp.sum(dy * xf, axis=axes) - mean * s1)  # sum dy * xhat: the scale's grad
    a = scale * inv
    n = _bn_count(x, m)
    k = a * inv * s2 / n
    c = a * s1 / n - k * mean
    corr = k * xf + c
    dx = a * dy - (corr if m is None else corr * m)
    return dx.astype(x.dtype), s2, s1, None


batch_norm_train.defvjp(_bn_train_fwd, _bn_train_bwd)


@jax.custom_vjp
def fusion_barrier(x):
    """Identity on ``x`` ``[..., C]`` that XLA must compute once: ``x @ I_C`` in full fp32.

    Exact for finite x (each output is x_j * 1 plus zeros; ``Precision.HIGHEST`` keeps TF32/bf16
    passes out); subnormals flush to zero, as XLA:CPU's elementwise ops already do. A matmul is
    not an elementwise op, so XLA cannot fuse (re-compute) the ops that produce x into x's
    consumers. Without it XLA:CPU re-computes a residual stage's whole chain of
    BatchNorm/SE/add/ReLU ops inside every consumer of a block output, e.g. the transposes that
    feed the weight-gradient convolutions, giving fusions with dozens of input arrays in Fast
    ResNet-34 (figures: ``bench/README.md``).
    (``jax.lax.optimization_barrier`` does not help: XLA:CPU removes it before fusion.) The
    gradient passes straight through (d(x @ I)/dx = I), which skips a second matmul.
    """
    c = x.shape[-1]
    eye = jnp.eye(c, dtype=x.dtype)
    return jnp.matmul(x.reshape(-1, c), eye, precision=jax.lax.Precision.HIGHEST).reshape(x.shape)


fusion_barrier.defvjp(lambda x: (fusion_barrier(x), None), lambda _, g: (g,))


@jax.custom_vjp
def scale_channels(x, gate):
    """``x * gate`` in ``x``'s dtype, computed in float32: a float32 per-example channel gate
    (squeeze-excitation; ``gate`` of ``x``'s rank with 1 on the axes it is broadcast over, e.g.
    ``[B, 1, 1, C]``: the backward sums the gate's gradient over those axes). The gate's
    gradient is summed in float32 from the float32 values of x and dy, in one pass."""
    return (x.astype(jnp.float32) * gate).astype(x.dtype)


def _scale_channels_fwd(x, gate):
    return scale_channels(x, gate), (x, gate)


def _scale_channels_bwd(res, dy):
    x, gate = res
    dyf = dy.astype(jnp.float32)
    axes = tuple(i for i, (n, g) in enumerate(zip(x.shape, gate.shape)) if g == 1 and n != 1)
    dgate = jnp.sum(dyf * x.astype(jnp.float32), axis=axes, keepdims=True)
    return (dyf * gate).astype(x.dtype), dgate.astype(gate.dtype)


scale_channels.defvjp(_scale_channels_fwd, _scale_channels_bwd)


def to_dtype_of(v, x):
    """Float32 ``v`` broadcast to ``x``'s shape, then cast to ``x``'s (bf16) dtype. Broadcasting
    before the cast keeps the gradient's sum over the broadcast axes (of dy * x, batch-sized) in
    float32; XLA:CPU turns such sums in bf16 into slow reduce-window trees."""
    return jnp.broadcast_to(v, x.shape).astype(x.dtype)


COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def compute_dtype(name: str, *, cpu_bf16: bool = False):
    """The activation dtype for ``model.compute_dtype``: "float32", "bfloat16", or "auto" =
    bfloat16 on GPU and TPU (the process's default backend); on the CPU backend float32, or
    bfloat16 where the encoder says its CPU path is faster in it (``cpu_bf16``). Parameters,
    BatchNorm statistics and poolings stay float32 whatever it is."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"model.compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}.")
    if name == "auto":
        cpu = jax.default_backend() == "cpu"
        name = "bfloat16" if not cpu or cpu_bf16 else "float32"
    return jnp.dtype(name)


def check_encoder_input(feats, mask, n_mels: int) -> None:
    """Encoders take [B, frames, n_mels] features and an optional [B, frames] mask."""
    if feats.ndim != 3 or feats.shape[-1] != n_mels:
        raise ValueError(
            f"feats must be [B, frames, {n_mels}] (instance-normalised "
            f"log-mel), got shape {feats.shape}."
        )
    if mask is not None and mask.shape != feats.shape[:2]:
        raise ValueError(f"mask must be [B, frames] = {feats.shape[:2]}, got {mask.shape}.")


def expand_mask(mask, x):
    """``[B, T]`` mask -> float mask broadcastable to x (``[B, T, ...]``)."""
    return mask.astype(x.dtype).reshape(mask.shape + (1,) * (x.ndim - 2))


def apply_mask(x, mask):
    """Zero invalid frames (so a following conv sees the zero padding of the utterance alone)."""
    return x if mask is None else x * expand_mask(mask, x)


def masked_mean(x, mask, axes):
    """Mean of x over ``axes`` (must include axis 1 = time when mask is given), valid frames
    only."""
    if mask is None:
        return jnp.mean(x, axis=axes)
    m = jnp.broadcast_to(expand_mask(mask, x), x.shape[:-1] + (1,))
    return jnp.sum(x * m, axis=axes) / jnp.maximum(jnp.sum(m, axis=axes), 1.0)


def masked_softmax(logits, mask, axis=1):
    """Softmax over ``axis`` (time) with invalid frames given zero weight."""
    if mask is not None:
        logits = jnp.where(mask.reshape(mask.shape + (1,) * (logits.ndim - 2)), logits, -1e30)
    return jax.nn.softmax(logits, axis=axis)


def downsample_mask(mask, stride: int):
    """Mask after a stride-``stride`` conv with 'same'-style padding: frame j valid iff j*s
    valid."""
    return mask if mask is None or stride == 1 else mask[:, ::stride]
