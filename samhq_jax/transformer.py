"""Two-way transformer (port of ``segment_anything/modeling/transformer.py``).

Prompt tokens and image tokens attend to each other in both directions; SAM-HQ uses it unchanged.
Tokens are ``(N, T, C)`` and image tokens ``(N, HW, C)`` row-major over the ``(H, W)`` grid.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samhq_jax.config import MaskDecoderConfig
from samhq_jax.layers import Dtype, layer_norm


class Attention(nn.Module):
    """Attention with q/k/v projected to ``internal_dim = dim // downsample_rate``, then back to ``dim``.

    ``q (N, Tq, C)``, ``k (N, Tk, C)``, ``v (N, Tk, C)`` -> ``(N, Tq, C)``. Scores are
    ``q k^T / sqrt(head_dim)`` with the softmax in float32. ``key_mask (N, Tk)`` bool, if given,
    removes the keys marked False (at least one key per row must stay).
    """

    dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        internal = self.dim // self.downsample_rate
        hd = internal // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = nn.Dense(internal, name="q_proj", **kw)(q)
        k = nn.Dense(internal, name="k_proj", **kw)(k)
        v = nn.Dense(internal, name="v_proj", **kw)(v)
        split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, hd)  # noqa: E731
        scores = jnp.einsum("nqhc,nkhc->nhqk", split(q), split(k)) / jnp.sqrt(jnp.float32(hd)).astype(q.dtype)
        scores = scores.astype(jnp.float32)
        if key_mask is not None:  # padded keys get exactly zero weight: as if they were not there
            scores = jnp.where(key_mask[:, None, None, :], scores, -jnp.inf)
        attn = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("nhqk,nkhc->nqhc", attn, split(v)).reshape(*q.shape[:-1], internal)
        return nn.Dense(self.dim, name="out_proj", **kw)(out)


class TwoWayAttentionBlock(nn.Module):
    """Self-attention on tokens, token->image, MLP, image->token; each followed by a LayerNorm.

    The first block (``skip_first_layer_pe``) applies its self-attention without the query PE and
    *replaces* the tokens with its output (no residual), as the reference does.
    """

    config: MaskDecoderConfig
    skip_first_layer_pe: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        queries: jax.Array,
        keys: jax.Array,
        query_pe: jax.Array,
        key_pe: jax.Array,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dim, heads, rate = cfg.transformer_dim, cfg.transformer_num_heads, cfg.attention_downsample_rate
        eps = cfg.transformer_layer_norm_eps
        self_attn = Attention(dim, heads, name="self_attn", **kw)
        if self.skip_first_layer_pe:
            queries = self_attn(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries, token_mask)
        queries = layer_norm(eps, name="norm1", **kw)(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = queries + Attention(dim, heads, rate, name="cross_attn_token_to_image", **kw)(q, k, keys)
        queries = layer_norm(eps, name="norm2", **kw)(queries)

        mlp = nn.Dense(cfg.transformer_mlp_dim, name="mlp_lin1", **kw)(queries)
        queries = queries + nn.Dense(dim, name="mlp_lin2", **kw)(nn.relu(mlp))
        queries = layer_norm(eps, name="norm3", **kw)(queries)

        q, k = queries + query_pe, keys + key_pe
        keys = keys + Attention(dim, heads, rate, name="cross_attn_image_to_token", **kw)(k, q, queries, token_mask)
        keys = layer_norm(eps, name="norm4", **kw)(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token->image attention and LayerNorm.

    Args:
      image_embedding: ``(N, HW, C)`` image tokens (image embedding plus dense prompt).
      image_pe: ``(N or 1, HW, C)`` positional encoding of the image tokens.
      point_embedding: ``(N, T, C)`` output + prompt tokens (also used as their own PE).
      token_mask: optional ``(N, T)`` bool; tokens marked False are padding: no token or image
        position attends to them, so the result for the others equals that of the unpadded
        sequence (their own outputs are meaningless).

    Returns:
      ``(queries (N, T, C), keys (N, HW, C))``.
    """

    config: MaskDecoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        point_embedding: jax.Array,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        queries, keys = point_embedding, image_embedding
        for i in range(cfg.transformer_depth):
            queries, keys = TwoWayAttentionBlock(cfg, i == 0, name=f"layers_{i}", **kw)(
                queries, keys, point_embedding, image_pe, token_mask
            )
            self.sow("intermediates", f"layers_{i}_out", (queries, keys))
        q, k = queries + point_embedding, keys + image_pe
        attn = Attention(
            cfg.transformer_dim,
            cfg.transformer_num_heads,
            cfg.attention_downsample_rate,
            name="final_attn_token_to_image",
            **kw,
        )
        queries = queries + attn(q, k, keys)
        queries = layer_norm(cfg.final_attn_layer_norm_eps, name="norm_final_attn", **kw)(queries)
        return queries, keys
