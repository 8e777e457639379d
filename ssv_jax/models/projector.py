"""Optional projector head (docs/method.md#projector): Linear-BN-ReLU-Linear-BN-ReLU-Linear,
512-2048-2048-128."""

from __future__ import annotations

import jax
from flax import nnx

from ssv_jax.models.layers import BatchNorm, Linear


class Projector(nnx.Module):
    """``[B, in_dim]`` -> ``[B, out_dim]``; BatchNorm1d (PyTorch semantics) after each hidden
    layer."""

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        in_dim: int = 512,
        hidden: int = 2048,
        out_dim: int = 128,
        n_hidden: int = 2,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ):
        dims = [in_dim] + [hidden] * n_hidden
        self.hidden = nnx.List([Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.bns = nnx.List(
            [BatchNorm(hidden, momentum=bn_momentum, eps=bn_eps) for _ in range(n_hidden)]
        )
        self.out = Linear(dims[-1], out_dim, rngs=rngs)

    def __call__(self, x):
        for linear, bn in zip(self.hidden, self.bns):
            x = jax.nn.relu(bn(linear(x)))
        return self.out(x)
