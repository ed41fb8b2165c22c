"""HQ mask decoder (port of ``segment_anything_hq/modeling/mask_decoder_hq.py``).

SAM's mask decoder plus the three SAM-HQ additions:

* the **HQ output token** (``hq_token``, official name ``hf_token``) with its own hypernetwork MLP
  (``hq_mlp``, official ``hf_mlp``), appended after SAM's IoU and mask tokens;
* **global-local fusion**: ``hq_features = embedding_encoder(image_embedding) +
  compress_vit_feat(early ViT feature)``, computed once per image;
* ``embedding_maskfeature``, which refines SAM's upscaled mask features per prompt before the
  fused HQ features are added.

The decoder returns one mask per prompt: the SAM mask picked by the rule below plus the HQ mask
(a logit sum), or the HQ mask alone with ``hq_token_only``. With ``multimask_output`` the SAM mask
is the one of the three multimask tokens with the highest predicted IoU, otherwise token 0; the
returned IoU is SAM's prediction for that token (there is no IoU for the HQ mask).

``all_multimask`` gives the Hugging Face ``SamHQModel`` semantics of ``multimask_output``: all
three multimask SAM masks, sorted by predicted IoU (descending), each plus the HQ mask, with their
three IoUs; the first of them is the official single choice.

``sam_only`` decodes as the original SAM ``MaskDecoder``: the HQ token does not enter the two-way
transformer (so SAM's tokens are exactly SAM's), no HQ feature is computed, and SAM's masks are
returned: the three multimask outputs with ``multimask_output``, else the single-mask output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samhq_jax.config import MaskDecoderConfig
from samhq_jax.layers import MLP, ConvTranspose, Dtype, LayerWeights, gelu, layer_norm
from samhq_jax.transformer import TwoWayTransformer


class UpscaleStack(nn.Module):
    """``ConvT2x2 -> LayerNorm2d -> GELU -> ConvT2x2 [-> GELU]``: ``(..., H, W, in)`` -> ``(..., 4H, 4W, out)``.

    ``output_upscaling`` ends with a GELU; ``compress_vit_feat`` and ``embedding_encoder`` do not.
    """

    mid_features: int
    out_features: int
    eps: float
    final_gelu: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvTranspose(self.mid_features, name="conv1", **kw)(x)
        x = gelu(layer_norm(self.eps, name="norm", **kw)(x))
        x = ConvTranspose(self.out_features, name="conv2", **kw)(x)
        return gelu(x) if self.final_gelu else x


class MaskFeatureRefiner(nn.Module):
    """``embedding_maskfeature`` (``Conv3x3 -> LayerNorm2d -> GELU -> Conv3x3``, C/8 -> C/4 -> C/8), read
    through the HQ hypernetwork weights.

    ``x (N, H, W, C/8)``, ``hyper (N, C/8)`` -> ``(N, H, W)`` float32: ``sum_c hyper[n, c] *
    embedding_maskfeature(x)[n, :, :, c]``. The decoder only ever uses that sum, and the last
    convolution is linear, so the hypernetwork weights are folded into its kernel first: one
    ``C/4 -> 1`` convolution per prompt instead of ``C/4 -> C/8`` (half the layer's FLOPs). The
    parameters are those of two ``nn.Conv`` layers named ``conv1`` / ``conv2``.
    """

    mid_features: int
    out_features: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, hyper: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(self.mid_features, (3, 3), padding=((1, 1), (1, 1)), name="conv1", **kw)(x)
        x = gelu(layer_norm(self.eps, name="norm", **kw)(x))
        kernel, bias = LayerWeights(self.out_features, (3, 3), name="conv2", **kw)(x.shape[-1])
        hyper = hyper.astype(self.dtype)
        taps = jnp.einsum("abio,no->nabi", kernel, hyper).reshape(hyper.shape[0], -1, x.shape[-1])  # (N, 9, C/4)
        per_tap = jnp.einsum("nhwi,nki->nhwk", x, taps, preferred_element_type=jnp.float32)  # (N, H, W, 9)
        return shifted_tap_sum(per_tap, kernel.shape[0]) + (hyper @ bias).astype(jnp.float32)[:, None, None]


def shifted_tap_sum(per_tap: jax.Array, k: int) -> jax.Array:
    """``(N, H, W, k*k)`` products of each pixel with each tap of a one-channel ``k x k`` kernel ->
    ``(N, H, W)``, the 'same'-padded cross-correlation: ``out[y, x] = sum_{a,b} per_tap[y + a - k//2,
    x + b - k//2, a*k + b]`` (zero outside the image)."""
    n, h, w, _ = per_tap.shape
    r = k // 2
    padded = jnp.pad(per_tap, ((0, 0), (r, r), (r, r), (0, 0)))
    out = jnp.zeros((n, h, w), per_tap.dtype)
    for a in range(k):
        for b in range(k):
            out = out + padded[:, a : a + h, b : b + w, a * k + b]
    return out


class MaskDecoderHQ(nn.Module):
    """Predicts one HQ mask and one IoU score per prompt.

    ``vit_dim`` is the channels of the early feature (``config.image_encoder.early_dim``: the ViT
    width, or 160 for TinyViT's stage-1 output).
    """

    config: MaskDecoderConfig
    vit_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        c, m = cfg.transformer_dim, cfg.num_mask_tokens
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        normal = nn.initializers.normal(1.0)
        self.iou_token = self.param("iou_token", normal, (1, c), self.param_dtype)
        self.mask_tokens = self.param("mask_tokens", normal, (m, c), self.param_dtype)
        self.hq_token = self.param("hq_token", normal, (1, c), self.param_dtype)
        self.transformer = TwoWayTransformer(cfg, **kw)
        eps = cfg.layer_norm2d_eps
        self.output_upscaling = UpscaleStack(c // 4, c // 8, eps, final_gelu=True, **kw)
        hyper = cfg.hypernetwork_depth
        self.output_hypernetworks_mlps = [MLP(c, c // 8, hyper, **kw) for _ in range(m)]
        self.iou_prediction_head = MLP(cfg.iou_head_hidden_dim, m, cfg.iou_head_depth, **kw)
        self.hq_mlp = MLP(c, c // 8, hyper, **kw)
        self.compress_vit_feat = UpscaleStack(c, c // 8, eps, final_gelu=False, **kw)
        self.embedding_encoder = UpscaleStack(c // 4, c // 8, eps, final_gelu=False, **kw)
        self.embedding_maskfeature = MaskFeatureRefiner(c // 4, c // 8, eps, **kw)

    def hq_features(self, image_embeddings: jax.Array, early_features: jax.Array) -> jax.Array:
        """Global-local fusion, once per image: ``(B, G, G, C)``, ``(B, G, G, vit_dim)`` -> ``(B, 4G, 4G, C/8)``."""
        if early_features.shape[-1] != self.vit_dim:
            raise ValueError(f"early_features must have {self.vit_dim} channels, got {early_features.shape}")
        return self.embedding_encoder(image_embeddings) + self.compress_vit_feat(early_features)

    def __call__(
        self,
        image_embeddings: jax.Array,
        early_features: jax.Array,
        image_pe: jax.Array,
        sparse_embeddings: jax.Array,
        dense_embeddings: jax.Array,
        multimask_output: bool,
        hq_token_only: bool,
        sam_only: bool = False,
        sparse_mask: jax.Array | None = None,
        all_multimask: bool = False,
        hq_features: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Decode P prompts for each of B images.

        Args:
          image_embeddings: ``(B, G, G, C)`` image encoder output.
          early_features: ``(B, G, G, vit_dim)`` the encoder's early feature.
          image_pe: ``(G, G, C)`` dense positional encoding.
          sparse_embeddings: ``(B, P, T, C)`` prompt tokens.
          dense_embeddings: ``(B, P, G, G, C)`` mask-prompt (or no-mask) embeddings.
          multimask_output: pick the best of the multimask SAM masks (static).
          hq_token_only: return the HQ mask alone instead of SAM + HQ (static).
          sam_only: decode as the original SAM, without the HQ token (static; see the module doc).
          sparse_mask: optional ``(B, P, T)`` bool; prompt tokens marked False are padding and are
            ignored exactly (see :class:`TwoWayTransformer`), so prompts of different kinds and
            lengths can share one call.
          all_multimask: with ``multimask_output``, return all three SAM masks sorted by IoU, each
            plus the HQ mask (Hugging Face semantics; static).
          hq_features: ``(B, 4G, 4G, C/8)`` from :meth:`hq_features`, if already computed for these
            images; else computed here.

        Returns:
          ``masks (B, P, K, 4G, 4G)`` float32 low-res logits and ``iou_predictions (B, P, J)`` float32.
          K = J = 1, except with ``multimask_output`` and ``sam_only`` (K = J = 3, SAM's multimask
          outputs) or ``all_multimask`` (J = 3; K = 3, or 1 with ``hq_token_only``).
        """
        cfg = self.config
        b, p, t, c = sparse_embeddings.shape
        g = image_embeddings.shape[1]
        m = cfg.num_mask_tokens
        if sam_only and hq_token_only:
            raise ValueError("sam_only and hq_token_only exclude each other")
        output_tokens = [self.iou_token, self.mask_tokens] + ([] if sam_only else [self.hq_token])
        output_tokens = jnp.concatenate(output_tokens, axis=0)
        n_out = output_tokens.shape[0]
        output_tokens = jnp.broadcast_to(output_tokens.astype(sparse_embeddings.dtype), (b, p, n_out, c))
        tokens = jnp.concatenate([output_tokens, sparse_embeddings], axis=2).reshape(b * p, n_out + t, c)
        src = (image_embeddings[:, None] + dense_embeddings).reshape(b * p, g * g, c)
        pos = image_pe.reshape(1, g * g, c)

        token_mask = None
        if sparse_mask is not None:
            token_mask = jnp.concatenate([jnp.ones((b, p, n_out), bool), sparse_mask], axis=2).reshape(b * p, -1)
        hs, src = self.transformer(src, pos, tokens, token_mask)
        self.sow("intermediates", "transformer_out", (hs, src))
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1:n_out]  # SAM mask tokens, then the HQ token (unless sam_only)

        up_sam = self.output_upscaling(src.reshape(b * p, g, g, c))  # (BP, 4G, 4G, C/8)
        hyper_sam = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )  # (BP, M, C/8)
        f32 = jnp.float32
        masks_sam = jnp.einsum("nkc,nhwc->nkhw", hyper_sam, up_sam, preferred_element_type=f32)
        iou_pred = self.iou_prediction_head(iou_token_out).astype(f32)  # (BP, M)
        self.sow("intermediates", "iou_pred", iou_pred)
        if sam_only:
            self.sow("intermediates", "masks", masks_sam)
            keep = slice(1, None) if multimask_output else slice(0, 1)
            masks, iou_out = masks_sam[:, keep], iou_pred[:, keep]
            return masks.reshape(b, p, *masks.shape[1:]), iou_out.reshape(b, p, -1)

        if hq_features is None:
            hq_features = self.hq_features(image_embeddings, early_features)  # (B, 4G, 4G, C/8)
        self.sow("intermediates", "hq_features", hq_features)
        hyper_hq = self.hq_mlp(mask_tokens_out[:, m])  # (BP, C/8)
        # hyper . (embedding_maskfeature(up_sam) + hq_features), with both sums formed per prompt
        fused = jnp.einsum("bpc,bhwc->bphw", hyper_hq.reshape(b, p, -1), hq_features, preferred_element_type=f32)
        masks_hq = (self.embedding_maskfeature(up_sam, hyper_hq) + fused.reshape(b * p, *fused.shape[2:]))[:, None]
        self.sow("intermediates", "masks", jnp.concatenate([masks_sam, masks_hq], axis=1))

        if multimask_output and all_multimask:
            order = jnp.argsort(-iou_pred[:, 1:], axis=1)  # descending, like torch.sort
            iou_out = jnp.take_along_axis(iou_pred[:, 1:], order, axis=1)
            chosen = jnp.take_along_axis(masks_sam[:, 1:], order[:, :, None, None], axis=1)
        elif multimask_output:
            best = jnp.argmax(iou_pred[:, 1:], axis=1)[:, None]  # first maximum, like torch.max
            iou_out = jnp.take_along_axis(iou_pred[:, 1:], best, axis=1)
            chosen = jnp.take_along_axis(masks_sam[:, 1:], best[:, :, None, None], axis=1)
        else:
            iou_out = iou_pred[:, :1]
            chosen = masks_sam[:, :1]
        masks = masks_hq if hq_token_only else chosen + masks_hq
        return masks.reshape(b, p, *masks.shape[1:]), iou_out.reshape(b, p, -1)
