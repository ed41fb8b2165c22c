"""The whole SAM-HQ model (port of ``segment_anything/modeling/sam.py``, model part only).

Two entry points so an image is encoded once and prompted many times:

* :meth:`SamHQ.embed_image` -- ``(B, S, S, 3)`` normalised padded images -> :class:`ImageEmbeddings`;
* :meth:`SamHQ.decode` -- prompts for those images -> low-res HQ mask logits and IoU predictions.

Pre-processing (resize, normalise, pad) and post-processing (upsampling to the original size) are
not part of the model.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from samhq_jax.config import ModelConfig, TinyViTConfig
from samhq_jax.image_encoder import AUTO, ImageEncoderViT
from samhq_jax.layers import Dtype
from samhq_jax.mask_decoder_hq import MaskDecoderHQ
from samhq_jax.prompt_encoder import PromptEncoder
from samhq_jax.tiny_vit import TinyViT


class ImageEmbeddings(NamedTuple):
    """Per-image encoder outputs, cached between prompts.

    Attributes:
      image_embeddings: ``(B, G, G, C)`` neck output (G = 64, C = 256 for the real models).
      early_features: ``(B, G, G, vit_dim)`` the early feature: output of the first global-attention
        ViT block, or of TinyViT's ``early_stage``.
      hq_features: optional ``(B, 4G, 4G, C/8)`` global-local fusion of the two (depends on the image
        only, so :class:`SamHQPredictor` computes it once at ``set_image``); None: computed per decode.
      image_pe: optional ``(G, G, C)`` dense positional encoding of the image tokens (depends on the
        weights only; its sines and cosines took ~15 % of a one-prompt vit_b decode); None: computed
        per decode.
    """

    image_embeddings: jax.Array
    early_features: jax.Array
    hq_features: jax.Array | None = None
    image_pe: jax.Array | None = None


class SamHQ(nn.Module):
    """SAM-HQ: image encoder (the ViT, or TinyViT for a :class:`TinyViTConfig`: Light HQ-SAM), prompt
    encoder and HQ mask decoder.

    ``dtype`` is the compute dtype; parameters are stored in ``param_dtype``. ``attention``: the image
    encoder's attention form: ``"auto"`` (the platform's fastest) or one of
    :data:`samhq_jax.image_encoder.ATTENTION_PATHS` (same parameters). ``remat``: rematerialise each
    image-encoder block in the backward pass (:class:`~samhq_jax.image_encoder.ImageEncoderViT`; same
    parameters).
    """

    config: ModelConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO
    remat: bool = False

    def setup(self) -> None:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        encoder = TinyViT if isinstance(cfg.image_encoder, TinyViTConfig) else ImageEncoderViT
        self.image_encoder = encoder(cfg.image_encoder, attention=self.attention, remat=self.remat, **kw)
        self.prompt_encoder = PromptEncoder(cfg.prompt_encoder, cfg.img_size, cfg.embedding_size, **kw)
        self.mask_decoder = MaskDecoderHQ(cfg.mask_decoder, cfg.image_encoder.early_dim, **kw)

    def embed_image(self, images: jax.Array, hq_features: bool = False) -> ImageEmbeddings:
        """Encode ``(B, S, S, 3)`` normalised, zero-padded NHWC images (S = ``config.img_size``).

        With ``hq_features`` (static) the decoder inputs that do not depend on the prompt are computed
        here once instead of in every :meth:`decode`: the HQ decoder's global-local fusion and the
        dense positional encoding (not when training the fusion layers: the cached features would be
        constants).
        """
        embeddings, early = self.image_encoder(images)
        if not hq_features:
            return ImageEmbeddings(embeddings, early)
        fused = self.mask_decoder.hq_features(embeddings, early)
        return ImageEmbeddings(embeddings, early, fused, self.prompt_encoder.get_dense_pe())

    def decode(
        self,
        embeddings: ImageEmbeddings,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        multimask_output: bool = False,
        hq_token_only: bool = False,
        sam_only: bool = False,
        all_multimask: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Decode P prompts for each of the B encoded images.

        Args:
          embeddings: from :meth:`embed_image`, batch B.
          points: ``(B, P, N, 2)`` float xy in the padded input frame (pixels), or None.
          labels: ``(B, P, N)`` int, 1 = foreground, 0 = background, -1 = padding point, -10 = Hugging
            Face pad of a ragged point list (zero token).
          boxes: ``(B, P, 4)`` float xyxy in the padded input frame, or None.
          mask_inputs: ``(B, P, 4G, 4G)`` low-res logits from an earlier call, or None.
          multimask_output: choose the best of SAM's three multimask outputs (static).
          hq_token_only: return only the HQ-token mask (static).
          sam_only: decode as the original SAM, HQ token left out (static): SAM's masks, three with
            ``multimask_output``. The SAM-vs-HQ baseline, and the mode for a plain SAM checkpoint.
          all_multimask: with ``multimask_output``, all three SAM masks sorted by IoU, each plus the
            HQ mask, as Hugging Face ``SamHQModel`` returns them (static).

        Returns:
          ``low_res_masks (B, P, K, 4G, 4G)`` float32 logits and ``iou_predictions (B, P, J)`` float32;
          K = J = 1, or 3 with ``multimask_output`` and ``sam_only`` or ``all_multimask`` (then K = 1
          with ``hq_token_only``, J = 3).
        """
        b = embeddings.image_embeddings.shape[0]
        batch_shape = _prompt_batch_shape(b, points, labels, boxes, mask_inputs)
        sparse, dense = self.prompt_encoder(points, labels, boxes, mask_inputs, batch_shape)
        self.sow("intermediates", "sparse_embeddings", sparse)
        self.sow("intermediates", "dense_embeddings", dense)
        return self.mask_decoder(
            embeddings.image_embeddings,
            embeddings.early_features,
            self.prompt_encoder.get_dense_pe() if embeddings.image_pe is None else embeddings.image_pe,
            sparse.astype(self.dtype),
            dense.astype(self.dtype),
            multimask_output,
            hq_token_only,
            sam_only,
            all_multimask=all_multimask,
            hq_features=embeddings.hq_features,
        )

    def __call__(
        self,
        images: jax.Array,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        multimask_output: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """``embed_image`` followed by ``decode``; see those for shapes."""
        return self.decode(
            self.embed_image(images), points, labels, boxes, mask_inputs, multimask_output, hq_token_only
        )


def _prompt_batch_shape(
    b: int,
    points: jax.Array | None,
    labels: jax.Array | None,
    boxes: jax.Array | None,
    mask_inputs: jax.Array | None,
) -> tuple[int, int]:
    """Check prompt shapes against each other and return the ``(B, P)`` prompt batch shape."""
    shapes = {}
    if points is not None:
        if points.ndim != 4 or points.shape[-1] != 2:
            raise ValueError(f"points must be (B, P, N, 2), got {points.shape}")
        if labels is None or tuple(labels.shape) != tuple(points.shape[:3]):
            got = None if labels is None else labels.shape
            raise ValueError(f"labels must be (B, P, N) = {points.shape[:3]} to match points, got {got}")
        shapes["points"] = tuple(points.shape[:2])
    elif labels is not None:
        raise ValueError("labels were given without points")
    if boxes is not None:
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (B, P, 4), got {boxes.shape}")
        shapes["boxes"] = tuple(boxes.shape[:2])
    if mask_inputs is not None:
        if mask_inputs.ndim != 4:
            raise ValueError(f"mask_inputs must be (B, P, 4G, 4G), got {mask_inputs.shape}")
        shapes["mask_inputs"] = tuple(mask_inputs.shape[:2])
    distinct = set(shapes.values())
    if len(distinct) > 1:
        raise ValueError(f"prompt batch shapes disagree: {shapes}")
    bp = distinct.pop() if distinct else (b, 1)
    if bp[0] != b:
        raise ValueError(f"prompts are for {bp[0]} images but {b} image embeddings were given")
    return bp


def init_params(config: ModelConfig, rng: jax.Array, param_dtype: Dtype = jnp.float32) -> dict:
    """Randomly initialise every parameter (the mask-prompt path included).

    Returns the parameter tree (pass it as ``{"params": params}`` to ``SamHQ.apply``). Use
    :func:`param_shapes` for its shapes without allocating memory.
    """
    model = SamHQ(config, param_dtype=param_dtype)
    s, low = config.img_size, config.low_res_mask_size
    images = jnp.zeros((1, s, s, config.image_encoder.in_chans), jnp.float32)
    points = jnp.zeros((1, 1, 1, 2), jnp.float32)
    labels = jnp.ones((1, 1, 1), jnp.int32)
    boxes = jnp.zeros((1, 1, 4), jnp.float32)
    masks = jnp.zeros((1, 1, low, low), jnp.float32)
    return jax.jit(model.init)(rng, images, points, labels, boxes, masks)["params"]


def param_shapes(config: ModelConfig, param_dtype: Dtype = jnp.float32) -> dict:
    """``jax.ShapeDtypeStruct`` tree of :func:`init_params`'s output, computed without allocating.

    Traced once per ``(config, param_dtype)``; each call returns a fresh copy of the tree.
    """
    return jax.tree.map(lambda s: s, _traced_param_shapes(config, jnp.dtype(param_dtype)))


@functools.lru_cache(maxsize=32)
def _traced_param_shapes(config: ModelConfig, param_dtype: jnp.dtype) -> dict:
    return jax.eval_shape(lambda rng: init_params(config, rng, param_dtype), jax.random.PRNGKey(0))
