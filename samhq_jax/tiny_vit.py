"""TinyViT image encoder of Light HQ-SAM (``vit_tiny``; port of ``segment_anything_hq/modeling/tiny_vit_sam.py``,
MobileSAM's encoder).

Stages: a convolutional patch embedding (stride 4), MBConv blocks, then windowed-attention TinyViT
blocks with learned per-offset attention biases; a patch merging after every stage but the last; the
SAM neck. Besides the image embedding it returns the HQ decoder's early feature: the output of stage
``config.early_stage`` (vit_tiny: ``(B, 64, 64, 160)``).

BatchNorm is in inference form only: every ``Conv2d_BN`` normalises with the checkpoint's running
statistics (``running_mean`` / ``running_var``, leaves named as in PyTorch). They are parameters of
the tree so that loading, conversion and placement treat them like any tensor, but they are
constants: the forward pass stops their gradient and :data:`BATCH_STATS_REGEX` marks them for the
training code, which never trains them (``train/trainable.py``).

Layout: NHWC throughout. Intermediates (``patch_embed_out``, ``layers_{i}_out``, each stage's
``blocks_{j}_out`` under ``layers_{i}``, ``neck_out``) are sown into ``"intermediates"`` for
stage-by-stage checks.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from samhq_jax.config import TinyViTConfig
from samhq_jax.image_encoder import (
    AUTO,
    DOT_PRODUCT_IMPLEMENTATION,
    Neck,
    auto_attention_path,
    check_attention_path,
    check_cudnn_attention,
    check_images,
    window_partition,
    window_unpartition,
)
from samhq_jax.layers import Dtype, gelu, layer_norm

BATCH_STATS_REGEX = re.compile(r"/running_(mean|var)$")
"""Paths of the BatchNorm running statistics: constants of the model, never trained."""


def is_batch_stat(path: str) -> bool:
    """Whether a ``/``-joined parameter path is a BatchNorm running statistic."""
    return BATCH_STATS_REGEX.search(path) is not None


def attention_bias_index(window: int) -> np.ndarray:
    """``(w*w, w*w)`` int: the column of ``attention_biases`` for each query / key pair of a window.

    The official code numbers the offsets ``(|dy|, |dx|)`` in the order it first meets them, walking
    query and key over the window row-major; the first query (0, 0) meets every offset, in row-major
    order, so the number of ``(|dy|, |dx|)`` is ``|dy| * w + |dx|``.
    """
    y, x = np.divmod(np.arange(window * window), window)
    return np.abs(y[:, None] - y[None, :]) * window + np.abs(x[:, None] - x[None, :])


class BatchNorm(nn.Module):
    """``BatchNorm2d`` in eval mode over the last axis: ``x * alpha + beta`` with ``alpha = scale /
    sqrt(running_var + eps)``, ``beta = bias - running_mean * alpha`` (PyTorch's CPU inference form).

    Input / output ``(..., C)``. The running statistics get no gradient.
    """

    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        mean = jax.lax.stop_gradient(self.param("running_mean", nn.initializers.zeros, (c,), self.param_dtype))
        var = jax.lax.stop_gradient(self.param("running_var", nn.initializers.ones, (c,), self.param_dtype))
        alpha = scale.astype(jnp.float32) / jnp.sqrt(var.astype(jnp.float32) + self.eps)
        beta = bias.astype(jnp.float32) - mean.astype(jnp.float32) * alpha
        return x.astype(self.dtype) * alpha.astype(self.dtype) + beta.astype(self.dtype)


class DepthwiseConv(nn.Module):
    """A bias-free depthwise ``k x k`` convolution, zero-padded by ``k // 2``, as the sum of its ``k * k``
    shifted, channel-scaled inputs. ``(B, H, W, C)`` -> ``(B, ceil(H / stride), ceil(W / stride), C)``.

    The same values and kernel (``(k, k, 1, C)``, named ``kernel`` as ``nn.Conv``'s) as a grouped
    ``nn.Conv``; XLA fuses the sum into one loop, where its CPU convolution for one channel per group
    ran 14-50x slower (e.g. 427 ms against 59 ms for a 256 x 256 x 256 map, measured 2026-12-07).
    """

    kernel_size: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, c = self.kernel_size, self.stride, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        pad = k // 2
        h_out, w_out = (x.shape[1] + 2 * pad - k) // s + 1, (x.shape[2] + 2 * pad - k) // s + 1
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        out = jnp.zeros((x.shape[0], h_out, w_out, c), self.dtype)
        for i in range(k):
            for j in range(k):
                window = xp[:, i : i + s * (h_out - 1) + 1 : s, j : j + s * (w_out - 1) + 1 : s]
                out = out + window * kernel[i, j, 0]
        return out


class Conv2dBN(nn.Module):
    """``Conv2d_BN``: a bias-free convolution ``c`` ('same'-padded, optionally strided / depthwise)
    followed by the inference BatchNorm ``bn``. ``(B, H, W, in)`` -> ``(B, H/stride, W/stride, features)``."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    depthwise: bool = False
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        k, pad = self.kernel_size, self.kernel_size // 2
        if self.depthwise:
            if self.features != x.shape[-1]:
                raise ValueError(f"a depthwise Conv2d_BN keeps its {x.shape[-1]} channels, asked for {self.features}")
            x = DepthwiseConv(k, self.stride, name="c", **kw)(x)
        else:
            x = nn.Conv(
                self.features,
                (k, k),
                strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                use_bias=False,
                name="c",
                **kw,
            )(x)
        return BatchNorm(self.eps, name="bn", **kw)(x)


class MBConv(nn.Module):
    """``1x1 -> BN -> GELU -> depthwise 3x3 -> BN -> GELU -> 1x1 -> BN``, plus the input, then GELU.
    ``(B, H, W, C)`` -> same."""

    expand_ratio: float
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(eps=self.eps, dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        hidden = int(c * self.expand_ratio)
        y = gelu(Conv2dBN(hidden, name="conv1", **kw)(x))
        y = gelu(Conv2dBN(hidden, 3, depthwise=True, name="conv2", **kw)(y))
        y = Conv2dBN(c, name="conv3", **kw)(y)
        return gelu(y + x)


class PatchMerging(nn.Module):
    """``1x1 -> BN -> GELU -> depthwise 3x3 (stride) -> BN -> GELU -> 1x1 -> BN``.
    ``(B, H, W, C)`` -> ``(B, H/stride, W/stride, out_dim)``."""

    out_dim: int
    stride: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(eps=self.eps, dtype=self.dtype, param_dtype=self.param_dtype)
        x = gelu(Conv2dBN(self.out_dim, name="conv1", **kw)(x))
        x = gelu(Conv2dBN(self.out_dim, 3, self.stride, depthwise=True, name="conv2", **kw)(x))
        return Conv2dBN(self.out_dim, name="conv3", **kw)(x)


class WindowAttention(nn.Module):
    """TinyViT's (LeViT-style) attention in ``window`` x ``window`` windows of a ``(B, H, W, C)`` map.

    The map is zero-padded bottom / right to whole windows and *then* layer-normalised, as in the
    official code, so a padded token is ``LayerNorm(0) = norm.bias``. Here only the real tokens are
    normalised and projected, and the projected map is padded with the projection of ``norm.bias``;
    the output projection runs after the padding is cropped. ``qkv`` rows are per head
    ``[q (hd) | k (hd) | v (hd)]``; scores ``q . k * hd**-0.5 + attention_biases[head, offset]``.

    ``attention``: ``"auto"``, ``"blocked"`` (plain einsum softmax, the CPU path), ``"extended"`` /
    ``"cudnn"`` (``jax.nn.dot_product_attention`` with the bias, XLA / cuDNN). Output ``(B, H, W, C)``.
    """

    num_heads: int
    window: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_attention_path(self.attention)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c, n, w = x.shape[-1], self.num_heads, self.window
        hd = c // n
        norm = layer_norm(self.eps, name="norm", **kw)
        qkv_layer = nn.Dense(3 * c, name="qkv", **kw)
        qkv = qkv_layer(norm(x))
        ln_bias = norm.variables["params"]["bias"]
        fill = qkv_layer(ln_bias.astype(x.dtype)[None])[0]
        hw = x.shape[1:3]
        windows, padded_hw = window_partition(qkv, w, fill=fill)  # (nW, w, w, 3C)
        q, k, v = jnp.split(windows.reshape(-1, w * w, n, 3 * hd), 3, axis=-1)  # (nW, w*w, heads, hd) each
        biases = self.param("attention_biases", nn.initializers.zeros, (n, w * w), self.param_dtype)
        bias = biases[:, attention_bias_index(w)].astype(q.dtype)  # (heads, w*w, w*w)
        attention = self.attention
        if attention == AUTO:
            attention = auto_attention_path(q.dtype, hd)
        if attention == "blocked":
            s = jnp.einsum("bqnc,bknc->bnqk", q * hd**-0.5, k) + bias
            p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
            out = jnp.einsum("bnqk,bknc->bqnc", p, v)
        else:
            if attention == "cudnn":
                check_cudnn_attention(q.dtype, hd)
            out = jax.nn.dot_product_attention(
                q, k, v, bias=bias[None], scale=hd**-0.5, implementation=DOT_PRODUCT_IMPLEMENTATION[attention]
            )
        out = window_unpartition(out.reshape(-1, w, w, c), w, padded_hw, hw)
        return nn.Dense(c, name="proj", **kw)(out)


class TinyViTMlp(nn.Module):
    """``LayerNorm -> fc1 -> GELU -> fc2``: ``(..., C)`` -> ``(..., C)``."""

    hidden_dim: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x = layer_norm(self.eps, name="norm", **kw)(x)
        x = gelu(nn.Dense(self.hidden_dim, name="fc1", **kw)(x))
        return nn.Dense(c, name="fc2", **kw)(x)


class TinyViTBlock(nn.Module):
    """``x + attn(x)``, then the depthwise ``local_conv`` (no residual), then ``x + mlp(x)``.
    ``(B, H, W, C)`` -> same."""

    config: TinyViTConfig
    stage: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, i = self.config, self.stage
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        attn = WindowAttention(
            cfg.num_heads[i], cfg.window_sizes[i], cfg.layer_norm_eps, attention=self.attention, name="attn", **kw
        )
        x = x + attn(x)
        x = Conv2dBN(c, cfg.local_conv_size, depthwise=True, eps=cfg.batch_norm_eps, name="local_conv", **kw)(x)
        return x + TinyViTMlp(int(c * cfg.mlp_ratio), cfg.layer_norm_eps, name="mlp", **kw)(x)


class TinyViTStage(nn.Module):
    """Stage ``stage``: its blocks (MBConv for stage 0, :class:`TinyViTBlock` after), then the patch
    merging unless it is the last. ``(B, R, R, embed_dims[i])`` -> ``(B, R', R', stage_out_dim(i))``."""

    config: TinyViTConfig
    stage: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, i = self.config, self.stage
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(cfg.depths[i]):
            if i == 0:
                block = (nn.remat(MBConv) if self.remat else MBConv)(
                    cfg.mbconv_expand_ratio, cfg.batch_norm_eps, name=f"blocks_{j}", **kw
                )
            else:
                block_cls = nn.remat(TinyViTBlock) if self.remat else TinyViTBlock
                block = block_cls(cfg, i, attention=self.attention, name=f"blocks_{j}", **kw)
            x = block(x)
            self.sow("intermediates", f"blocks_{j}_out", x)
        if i < cfg.num_stages - 1:
            merge = PatchMerging(
                cfg.embed_dims[i + 1], cfg.merge_strides[i], cfg.batch_norm_eps, name="downsample", **kw
            )
            x = merge(x)
        return x


class PatchEmbed(nn.Module):
    """``Conv2d_BN 3x3 s2 (-> C/2) -> GELU -> Conv2d_BN 3x3 s2 (-> C)``, named ``seq_0`` / ``seq_2`` as
    the PyTorch ``Sequential``. ``(B, S, S, 3)`` -> ``(B, S/4, S/4, C)``."""

    embed_dim: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(eps=self.eps, dtype=self.dtype, param_dtype=self.param_dtype)
        x = gelu(Conv2dBN(self.embed_dim // 2, 3, 2, name="seq_0", **kw)(x))
        return Conv2dBN(self.embed_dim, 3, 2, name="seq_2", **kw)(x)


class TinyViT(nn.Module):
    """The TinyViT image encoder with Light HQ-SAM's early-feature output.

    Args:
      images: ``(B, img_size, img_size, in_chans)`` normalised, padded pixels, NHWC.

    Returns:
      ``(embedding, early_feature)``: ``(B, G, G, out_chans)`` and ``(B, G, G, early_dim)``
      (vit_tiny: G = 64, early_dim = 160), the output of stage ``config.early_stage``.

    ``attention``: the window attention's form (see :class:`WindowAttention`; a speed knob, same
    parameters). ``remat``: each block under ``jax.checkpoint`` (same parameters and values).
    """

    config: TinyViTConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO
    remat: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        check_images(images, cfg.img_size, cfg.in_chans)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = PatchEmbed(cfg.embed_dims[0], cfg.batch_norm_eps, name="patch_embed", **kw)(images)
        self.sow("intermediates", "patch_embed_out", x)
        early = None
        for i in range(cfg.num_stages):
            x = TinyViTStage(cfg, i, attention=self.attention, remat=self.remat, name=f"layers_{i}", **kw)(x)
            self.sow("intermediates", f"layers_{i}_out", x)
            if i == cfg.early_stage:
                early = x
        out = Neck(cfg.out_chans, cfg.neck_layer_norm_eps, name="neck", **kw)(x)
        self.sow("intermediates", "neck_out", out)
        return out, early
