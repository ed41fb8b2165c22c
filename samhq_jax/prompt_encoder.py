"""Prompt encoder (port of ``segment_anything/modeling/prompt_encoder.py``).

Points and boxes become sparse tokens (random-Fourier positional encoding of the pixel centre plus
a learned type embedding); a low-resolution mask becomes a dense ``(G, G, C)`` embedding, and its
absence the learned ``no_mask_embed``. Coordinates are ``(x, y)`` pixels in the padded network
input frame (``img_size`` square), i.e. after the longest-side resize.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samhq_jax.config import PromptEncoderConfig
from samhq_jax.layers import Dtype, gelu, layer_norm

LABEL_NOT_A_POINT = -1  # padding point: its PE is replaced by not_a_point_embed
LABEL_PAD = -10  # Hugging Face padding of ragged point lists: the token is all zeros (it still attends)
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1


class MaskDownscaling(nn.Module):
    """``Conv2x2/2 -> LN2d -> GELU -> Conv2x2/2 -> LN2d -> GELU -> Conv1x1``.

    ``(..., 4G, 4G)`` mask logits -> ``(..., G, G, C)`` dense embeddings.
    """

    embed_dim: int
    mask_in_chans: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, masks: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        lead = masks.shape[:-2]
        x = masks.reshape(-1, *masks.shape[-2:], 1)
        x = nn.Conv(self.mask_in_chans // 4, (2, 2), strides=(2, 2), padding="VALID", name="conv1", **kw)(x)
        x = gelu(layer_norm(self.eps, name="norm1", **kw)(x))
        x = nn.Conv(self.mask_in_chans, (2, 2), strides=(2, 2), padding="VALID", name="conv2", **kw)(x)
        x = gelu(layer_norm(self.eps, name="norm2", **kw)(x))
        x = nn.Conv(self.embed_dim, (1, 1), name="conv3", **kw)(x)
        return x.reshape(*lead, *x.shape[1:])


class PromptEncoder(nn.Module):
    """Embeds point, box and mask prompts.

    Attributes:
      config: prompt encoder config.
      img_size: side of the padded network input (1024), the frame of prompt coordinates.
      grid_size: side of the image embedding grid (64).
    """

    config: PromptEncoderConfig
    img_size: int
    grid_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        c = cfg.embed_dim
        normal = nn.initializers.normal(1.0)
        # Random-Fourier matrix; a persistent buffer in PyTorch, a (never trained) parameter here.
        self.pe_gaussian_matrix = self.param("pe_gaussian_matrix", normal, (2, cfg.num_pos_feats), self.param_dtype)
        self.point_embeddings = [
            self.param(f"point_embeddings_{i}", normal, (1, c), self.param_dtype)
            for i in range(cfg.num_point_embeddings)
        ]
        self.not_a_point_embed = self.param("not_a_point_embed", normal, (1, c), self.param_dtype)
        self.no_mask_embed = self.param("no_mask_embed", normal, (1, c), self.param_dtype)
        self.mask_downscaling = MaskDownscaling(
            c, cfg.mask_in_chans, cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        """``(..., 2)`` coordinates in [0, 1] -> ``(..., C)`` float32 ``[sin, cos]`` features."""
        g = self.pe_gaussian_matrix.astype(jnp.float32)
        proj = 2 * jnp.pi * ((2 * coords.astype(jnp.float32) - 1) @ g)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)

    def _pe_pixels(self, coords: jax.Array) -> jax.Array:
        """PE of ``(..., 2)`` xy pixel coordinates (already shifted to pixel centres)."""
        return self._pe_encoding(coords / self.img_size)

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the embedding grid's cell centres: ``(G, G, C)`` float32."""
        centres = (jnp.arange(self.grid_size, dtype=jnp.float32) + 0.5) / self.grid_size
        yy, xx = jnp.meshgrid(centres, centres, indexing="ij")
        return self._pe_encoding(jnp.stack([xx, yy], axis=-1))

    def embed_points(self, points: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        """``(..., N, 2)`` xy pixels and ``(..., N)`` int labels -> ``(..., N [+1], C)`` float32.

        Labels: 1 positive, 0 negative, -1 not-a-point (padding), -10 the Hugging Face pad of a
        ragged point list (a zero token, as ``transformers`` does). With ``pad`` a ``(0, 0)`` point
        labelled -1 is appended, as the reference does whenever no box is given.
        """
        points = points.astype(jnp.float32) + 0.5
        labels = labels.astype(jnp.int32)
        if pad:
            points = jnp.concatenate([points, jnp.zeros((*points.shape[:-2], 1, 2), points.dtype)], axis=-2)
            labels = jnp.concatenate([labels, jnp.full((*labels.shape[:-1], 1), LABEL_NOT_A_POINT)], axis=-1)
        emb = self._pe_pixels(points)
        lab = labels[..., None]
        emb = jnp.where(lab == LABEL_NOT_A_POINT, self.not_a_point_embed.astype(jnp.float32), emb)
        zero = jnp.zeros((), jnp.float32)  # not a Python 0.0: that is a float64 constant under jax_enable_x64
        emb = jnp.where(lab == LABEL_PAD, zero, emb)
        emb = emb + jnp.where(lab == LABEL_NEGATIVE, self.point_embeddings[0].astype(jnp.float32), zero)
        return emb + jnp.where(lab == LABEL_POSITIVE, self.point_embeddings[1].astype(jnp.float32), zero)

    def embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """``(..., 4)`` xyxy pixel boxes -> ``(..., 2, C)`` float32 corner tokens."""
        corners = boxes.astype(jnp.float32).reshape(*boxes.shape[:-1], 2, 2) + 0.5
        emb = self._pe_pixels(corners)
        corner_type = jnp.concatenate([self.point_embeddings[2], self.point_embeddings[3]], axis=0)
        return emb + corner_type.astype(jnp.float32)

    def __call__(
        self,
        points: jax.Array | None,
        labels: jax.Array | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
        batch_shape: tuple[int, ...],
    ) -> tuple[jax.Array, jax.Array]:
        """Embed one prompt set per ``batch_shape`` entry (typically ``(B, P)``: images, prompts).

        Args:
          points: ``(*batch_shape, N, 2)`` xy pixels, or None.
          labels: ``(*batch_shape, N)`` int labels in {1, 0, -1, -10}; required with ``points``.
          boxes: ``(*batch_shape, 4)`` xyxy pixels, or None.
          masks: ``(*batch_shape, 4G, 4G)`` low-res mask logits, or None.
          batch_shape: leading shape of the prompt batch.

        Returns:
          ``sparse (*batch_shape, T, C)`` float32 with T = N (+1 pad point without a box) + 2 per
          box, and ``dense (*batch_shape, G, G, C)``.
        """
        c = self.config.embed_dim
        parts = []
        if points is not None:
            if labels is None:
                raise ValueError("points were given without labels")
            parts.append(self.embed_points(points, labels, pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        if parts:
            sparse = jnp.concatenate(parts, axis=-2)
        else:
            sparse = jnp.zeros((*batch_shape, 0, c), jnp.float32)
        g = self.grid_size
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = jnp.broadcast_to(self.no_mask_embed.reshape(1, 1, c), (*batch_shape, g, g, c))
        return sparse, dense
