"""Two-way transformer (port of ``segment_anything/modeling/transformer.py``).

Prompt tokens and image tokens attend to each other in both directions; SAM-HQ uses it unchanged.
Tokens are ``(N, T, C)`` and image tokens ``(N, HW, C)`` row-major over the ``(H, W)`` grid.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import export

from samhq_jax.config import MaskDecoderConfig
from samhq_jax.layers import Dtype, LayerWeights, layer_norm


class Attention(nn.Module):
    """Attention with q/k/v projected to ``internal_dim = dim // downsample_rate``, then back to ``dim``.

    ``q (N, Tq, C)``, ``k (N, Tk, C)``, ``v (N, Tk, C)`` -> ``(N, Tq, C)``. Scores are
    ``q k^T / sqrt(head_dim)`` with the softmax in float32. ``key_mask (N, Tk)`` bool, if given,
    removes the keys marked False (at least one key per row must stay).

    The decoder's cross-attentions pair a few prompt tokens with thousands of image tokens. When
    ``num_heads * (shorter length) < internal_dim``, the short side's projections are folded into the
    long side's weights: the image tokens then pass through products of width ``num_heads * tokens``
    instead of ``internal_dim``-wide projections and per-head products of width ``head_dim`` (half the
    FLOPs for SAM's 8 heads, 128 internal channels and up to 15 tokens). The fold only reassociates
    sums (float32 results move by ~1e-7 relative); the parameters are those of ``nn.Dense`` layers.
    """

    dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        internal = self.dim // self.downsample_rate
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inputs = {"q": q, "k": k, "v": v}
        w = {n: LayerWeights(internal, name=f"{n}_proj", **kw)(x.shape[-1]) for n, x in inputs.items()}
        w["out"] = LayerWeights(self.dim, name="out_proj", **kw)(internal)
        q, k, v = (x.astype(self.dtype) for x in (q, k, v))
        if key_mask is not None:
            key_mask = key_mask[:, None, None, :]  # broadcast over heads and queries: (N, 1, 1, Tk)
        # A symbolic token count (a program exported for any number of points) cannot choose a form by
        # its size: the plain form serves every count.
        sized = not any(export.is_symbolic_dim(x.shape[-2]) for x in (q, k))
        if sized and self.num_heads * q.shape[-2] < internal:
            return self._few_queries(q, k, v, key_mask, w)
        if sized and self.num_heads * k.shape[-2] < internal:
            return self._few_keys(q, k, v, key_mask, w)
        return self._plain(q, k, v, key_mask, w)

    def _heads(self, t: jax.Array) -> jax.Array:
        """``(..., internal)`` -> ``(..., heads, head_dim)``; channel ``i`` is head ``i // head_dim``."""
        return t.reshape(*t.shape[:-1], self.num_heads, t.shape[-1] // self.num_heads)

    def _scaled(self, t: jax.Array) -> jax.Array:
        """``t / sqrt(head_dim)`` for ``t (..., heads, head_dim)``."""
        return t / jnp.sqrt(jnp.float32(t.shape[-1])).astype(t.dtype)

    @staticmethod
    def _softmax(scores: jax.Array, key_mask: jax.Array | None, dtype: jnp.dtype) -> jax.Array:
        """Softmax over the last axis in float32; ``key_mask`` broadcasts against ``scores``."""
        scores = scores.astype(jnp.float32)
        if key_mask is not None:  # padded keys get exactly zero weight: as if they were not there
            scores = jnp.where(key_mask, scores, -jnp.inf)
        return jax.nn.softmax(scores, axis=-1).astype(dtype)

    def _plain(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, w: dict) -> jax.Array:
        """Project q, k and v, attend per head, project back."""
        (wq, bq), (wk, bk), (wv, bv), (wo, bo) = w["q"], w["k"], w["v"], w["out"]
        qh, kh, vh = self._heads(q @ wq + bq), self._heads(k @ wk + bk), self._heads(v @ wv + bv)
        attn = self._softmax(jnp.einsum("nqhc,nkhc->nhqk", self._scaled(qh), kh), key_mask, vh.dtype)
        out = jnp.einsum("nhqk,nkhc->nqhc", attn, vh)
        return out.reshape(*out.shape[:-2], -1) @ wo + bo

    def _few_queries(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, w: dict) -> jax.Array:
        """Few queries, many keys (token -> image).

        ``scores[h, t, l] = k[l] . (W_k[:, h] q_h[t])``: the key bias adds one constant per ``(h, t)``,
        which the softmax over ``l`` removes. ``sum_l attn[h, t, l] v_h[l] = (attn[h, t] @ v) W_v[:, h]
        + b_v`` because every attention row sums to one.
        """
        (wq, bq), (wk, _), (wv, bv), (wo, bo) = w["q"], w["k"], w["v"], w["out"]
        qh = self._scaled(self._heads(q @ wq + bq))  # (N, Tq, H, hd)
        folded = jnp.einsum("dhc,nthc->nhtd", self._heads(wk), qh)  # (N, H, Tq, C)
        attn = self._softmax(jnp.einsum("nhtd,nld->nhtl", folded, k), key_mask, v.dtype)
        pooled = jnp.einsum("nhtl,nld->nhtd", attn, v)  # (N, H, Tq, C)
        out = jnp.einsum("nhtd,dhc->nthc", pooled, self._heads(wv))
        return (out.reshape(*out.shape[:-2], -1) + bv) @ wo + bo

    def _few_keys(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, w: dict) -> jax.Array:
        """Many queries, few keys (image -> token).

        ``scores[l, h, t] = q[l] . (W_q[:, h] k_h[t]) + b_q,h . k_h[t]``, and ``out_proj`` is folded into
        the projected values: ``out[l] = sum_{h,t} attn[l, h, t] (v_h[t] W_o[h]) + b_o``.
        """
        (wq, bq), (wk, bk), (wv, bv), (wo, bo) = w["q"], w["k"], w["v"], w["out"]
        kh = self._scaled(self._heads(k @ wk + bk))  # (N, Tk, H, hd)
        folded = jnp.einsum("dhc,nthc->nhtd", self._heads(wq), kh)  # (N, H, Tk, C)
        scores = jnp.einsum("nld,nhtd->nlht", q, folded) + jnp.einsum("hc,nthc->nht", self._heads(bq), kh)[:, None]
        attn = self._softmax(scores, key_mask, v.dtype)  # (N, Tq, H, Tk)
        values = jnp.einsum("nthc,hce->nhte", self._heads(v @ wv + bv), wo.reshape(self.num_heads, -1, wo.shape[-1]))
        return jnp.einsum("nlht,nhte->nle", attn, values) + bo


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
        image_to_token = Attention(dim, heads, rate, name="cross_attn_image_to_token", **kw)(k, q, queries, token_mask)
        self.sow("intermediates", "image_to_token_out", image_to_token)  # transformers' mask_decoder_attentions
        keys = layer_norm(eps, name="norm4", **kw)(keys + image_to_token)
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
