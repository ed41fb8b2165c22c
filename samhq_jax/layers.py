"""Small building blocks shared by the SAM-HQ parts (``segment_anything/modeling/common.py``).

All tensors are channels-last (NHWC). ``LayerNorm2d`` of the PyTorch code normalises over channels
per pixel, which in NHWC is an ordinary LayerNorm over the last axis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype | type

# PyTorch's nn.GELU() default is the exact erf form; jax.nn.gelu defaults to the tanh approximation.
gelu = functools.partial(jax.nn.gelu, approximate=False)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm over the last axis with the two-pass variance PyTorch uses (parity at ~1e-7)."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


class LayerWeights(nn.Module):
    """The unapplied weights of an ``nn.Dense`` (``kernel_size=()``) or ``nn.Conv`` layer, cast to
    ``dtype``: ``kernel (*kernel_size, in, features)`` and ``bias (features,)``, with the names and
    initialisers of those layers, for layers whose products are refolded with other factors."""

    features: int
    kernel_size: tuple[int, ...] = ()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        shape = (*self.kernel_size, in_features, self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class ConvTranspose(nn.Module):
    """Transposed convolution whose stride equals its kernel (SAM's ``ConvTranspose2d(k=2, s=2)``).

    With stride == kernel the output patches do not overlap, so the layer is one matmul per input
    pixel: ``y[n, k*i+a, k*j+b, o] = sum_c x[n, i, j, c] * kernel[a, b, c, o] + bias[o]``. The
    kernel is PyTorch's ``(in, out, kH, kW)`` weight permuted to ``(kH, kW, in, out)``; no spatial flip
    is needed because nothing is convolved.

    Input ``(..., H, W, in)`` -> output ``(..., k*H, k*W, features)``.
    """

    features: int
    kernel_size: int = 2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        *lead, h, w, c = x.shape
        # One (in, k*k*out) matmul, then only the middle axes swap ((i, j, a) -> (i, a, j)): measured on
        # 64 decoder maps, 20-35 % faster than one einsum straight into the interleaved layout.
        y = (x @ kernel.transpose(2, 0, 1, 3).reshape(c, -1)).reshape(*lead, h, w, k, k * self.features)
        return jnp.swapaxes(y, -3, -2).reshape(*lead, k * h, k * w, self.features) + bias


class MLP(nn.Module):
    """``Linear -> act -> ... -> Linear`` with ``num_layers`` Linear layers named ``layers_{i}``.

    Used for the hypernetwork MLPs, the HQ MLP and the IoU head (ReLU between layers, none after the
    last, no sigmoid). Input ``(..., in)`` -> output ``(..., output_dim)``.
    """

    hidden_dim: int
    output_dim: int
    num_layers: int
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            width = self.output_dim if last else self.hidden_dim
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(x)
            if not last:
                x = self.activation(x)
        return x
