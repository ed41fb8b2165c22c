"""The deployed programs as JAX functions with the official ONNX interface (NCHW, official names).

Port of the interface of ``segment_anything_hq/utils/onnx.py`` ``SamOnnxModel`` (the decoder) plus
an image encoder the official export never had. Both exporters (:mod:`convert.deploy.onnx`,
:mod:`convert.deploy.stablehlo`) trace these same functions, so the two formats compute the same
thing:

* :func:`encoder_function`: ``image (1, 3, S, S)`` float32, already normalised and zero-padded as
  the official ``Sam.preprocess`` returns it -> ``image_embeddings (1, C, G, G)`` and
  ``interm_embeddings (1, 1, G, G, D)``: the early feature (the first global ViT block's output,
  or TinyViT's early stage) in the official ``(layers, batch, G, G, D)`` layout with one layer. The
  official decoder reads only ``interm_embeddings[0]``, so this feeds it as its four-layer stack does.
* :func:`decoder_function`: ``SamOnnxModel.forward`` without its last step (the upscaling to the
  original image size, whose output shape is the *value* of ``orig_im_size``: no JAX program can
  have it; :mod:`convert.deploy.onnx_postprocess` adds it to the ONNX graph). Inputs
  ``image_embeddings (1, C, G, G)``, ``interm_embeddings (K, 1, G, G, D)`` (any K >= 1: the
  official ``(4, 1, 64, 64, vit_dim)`` is accepted, ``[0]`` is read), ``point_coords (P, N, 2)``
  xy in the resized ``S`` frame, ``point_labels (P, N)`` float (official semantics below),
  ``mask_input (P, 1, 4G, 4G)`` logits, ``has_mask_input (1,)`` (1: use ``mask_input``, 0: the
  learned no-mask embedding; the official blend ``h * mask + (1 - h) * no_mask``); outputs
  ``low_res_masks (P, 1, 4G, 4G)`` and ``iou_predictions (P, 1)``. The official ONNX has P = 1.

Point labels as in the official ONNX (never a pad point added): -1 not a point (its positional
encoding replaced by ``not_a_point_embed``), 0 background, 1 foreground, 2 a box's top-left and 3
its bottom-right corner; a box is two points labelled 2 and 3. Any other value adds no type
embedding (as the official arithmetic does). At least one point (a ``(0, 0)`` labelled -1 counts):
the exported decoders are not defined for none (the ONNX one fails in onnxruntime, the StableHLO
one's symbolic point count is >= 1).

Shapes, dtypes and names for both exporters: :func:`encoder_inputs`, :func:`decoder_inputs`; a
string in a shape is a symbolic (dynamic) dimension.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from samhq_jax.config import ModelConfig
from samhq_jax.precision import LIBRARY, at_precision
from samhq_jax.prompt_encoder import LABEL_NEGATIVE, LABEL_NOT_A_POINT, LABEL_POSITIVE, PromptEncoder
from samhq_jax.sam_hq import SamHQ

# The official ONNX labels of box corners (SamOnnxModel adds point_embeddings[label] for 0..3).
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3
LABEL_NO_TYPE = 2  # adds no type embedding in PromptEncoder.embed_points (not one of -10, -1, 0, 1)
# The image encoder's attention form in every export: one jax.nn.dot_product_attention (XLA's
# implementation: no custom call, so it lowers for every platform and converts to ONNX).
EXPORT_ATTENTION = "extended"

ENCODER_INPUT = "image"
ENCODER_OUTPUTS = ("image_embeddings", "interm_embeddings")
DECODER_INPUTS = (
    "image_embeddings",
    "interm_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
ORIG_IM_SIZE = "orig_im_size"  # the official decoder's last input: (2,) float32 (H, W) of the original image
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")  # what the JAX decoder returns
MASKS = "masks"  # the official decoder's first output: logits at the original size (ONNX only)
# Symbolic dimensions.
PROMPTS, POINTS, LAYERS = "num_prompts", "num_points", "num_interm"


@dataclasses.dataclass(frozen=True)
class DecoderOptions:
    """The official export options, fixed in the exported decoder.

    Attributes:
      hq_token_only: return the HQ mask alone (else SAM's mask + the HQ mask, a logit sum).
      multimask_output: SAM's mask is the best of its three multimask outputs (by predicted IoU)
        instead of its single-mask output.
    """

    hq_token_only: bool = False
    multimask_output: bool = False


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, shape (an int per fixed, a name per symbolic dimension) and dtype of one input or output."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def encoder_inputs(config: ModelConfig) -> list[TensorSpec]:
    """The encoder's one input: the preprocessed image ``(1, 3, S, S)``."""
    s = config.img_size
    return [TensorSpec(ENCODER_INPUT, (1, config.image_encoder.in_chans, s, s))]


def encoder_outputs(config: ModelConfig) -> list[TensorSpec]:
    """``image_embeddings (1, C, G, G)`` and ``interm_embeddings (1, 1, G, G, D)``."""
    g, c, d = config.embedding_size, config.prompt_encoder.embed_dim, config.image_encoder.early_dim
    return [TensorSpec(ENCODER_OUTPUTS[0], (1, c, g, g)), TensorSpec(ENCODER_OUTPUTS[1], (1, 1, g, g, d))]


def decoder_inputs(config: ModelConfig, prompts: int | str = 1) -> list[TensorSpec]:
    """The decoder's inputs (without ``orig_im_size``) for ``prompts`` prompt sets (1 in the official
    ONNX; a name: symbolic); the point count and the interm layer count are symbolic."""
    g, c, d = config.embedding_size, config.prompt_encoder.embed_dim, config.image_encoder.early_dim
    low = config.low_res_mask_size
    shapes = [(1, c, g, g), (LAYERS, 1, g, g, d), (prompts, POINTS, 2), (prompts, POINTS), (prompts, 1, low, low), (1,)]
    return [TensorSpec(name, shape) for name, shape in zip(DECODER_INPUTS, shapes, strict=True)]


def decoder_outputs(config: ModelConfig, prompts: int | str = 1) -> list[TensorSpec]:
    """``low_res_masks (P, 1, 4G, 4G)`` and ``iou_predictions (P, 1)``."""
    low = config.low_res_mask_size
    return [TensorSpec(DECODER_OUTPUTS[0], (prompts, 1, low, low)), TensorSpec(DECODER_OUTPUTS[1], (prompts, 1))]


def official_point_embeddings(prompt_encoder: PromptEncoder, coords: jax.Array, labels: jax.Array) -> jax.Array:
    """``SamOnnxModel._embed_points``: ``(..., N, 2)`` xy and ``(..., N)`` float labels -> ``(..., N, C)``.

    Built from the prompt encoder's own point and box embeddings (the same arithmetic as the
    official one): labels -1 / 0 / 1 are points, 2 / 3 box corners, anything else the bare
    positional encoding.
    """
    is_point = (labels == LABEL_NOT_A_POINT) | (labels == LABEL_NEGATIVE) | (labels == LABEL_POSITIVE)
    point_labels = jnp.where(is_point, labels, LABEL_NO_TYPE).astype(jnp.int32)
    points = prompt_encoder.embed_points(coords, point_labels, pad=False)
    corners = prompt_encoder.embed_boxes(jnp.concatenate([coords, coords], axis=-1))  # (..., N, 2, C)
    lab = labels[..., None]
    corner = jnp.where(lab == LABEL_BOX_BOTTOM_RIGHT, corners[..., 1, :], points)
    return jnp.where(lab == LABEL_BOX_TOP_LEFT, corners[..., 0, :], corner)


def decode_official(
    model: SamHQ,
    image_embeddings: jax.Array,
    early_features: jax.Array,
    point_coords: jax.Array,
    point_labels: jax.Array,
    mask_input: jax.Array,
    has_mask_input: jax.Array,
    options: DecoderOptions,
) -> tuple[jax.Array, jax.Array]:
    """``SamOnnxModel.forward`` up to the low-resolution masks, as a method of a bound ``SamHQ``.

    ``image_embeddings (1, G, G, C)`` and ``early_features (1, G, G, D)`` NHWC; the prompts as in
    the module docstring (``mask_input (P, 4G, 4G)`` without its channel axis). Returns
    ``low_res_masks (P, 1, 4G, 4G)`` and ``iou_predictions (P, 1)`` float32.
    """
    pe = model.prompt_encoder
    p = point_coords.shape[0]
    sparse = official_point_embeddings(pe, point_coords, point_labels)
    _, masked = pe(None, None, None, mask_input, (p,))
    _, unmasked = pe(None, None, None, None, (p,))
    dense = has_mask_input * masked + (1 - has_mask_input) * unmasked  # the official blend, (P, G, G, C)
    masks, iou = model.mask_decoder(
        image_embeddings,
        early_features,
        pe.get_dense_pe(),
        sparse[None].astype(model.dtype),
        dense[None].astype(model.dtype),
        options.multimask_output,
        options.hq_token_only,
    )
    return masks[0], iou[0]


def nchw_to_nhwc(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2))


def encoder_function(config: ModelConfig) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``(params, image (1, 3, S, S))`` -> ``(image_embeddings (1, C, G, G), interm_embeddings (1, 1, G,
    G, D))``; ``params`` is the parameter tree (without the ``{"params": ...}`` wrapper). At
    ``"highest"`` matmul precision, as the library computes float32."""
    model = SamHQ(config, attention=EXPORT_ATTENTION)

    def encode(params: Any, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = model.apply({"params": params}, nchw_to_nhwc(image), method=SamHQ.embed_image)
        return nhwc_to_nchw(out.image_embeddings), out.early_features[None]

    return at_precision(encode, LIBRARY.precision)


def decoder_function(config: ModelConfig, options: DecoderOptions) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The decoder of the module docstring with ``options`` fixed: ``(params, image_embeddings,
    interm_embeddings, point_coords, point_labels, mask_input, has_mask_input)`` -> ``(low_res_masks,
    iou_predictions)``, at ``"highest"`` matmul precision."""
    model = SamHQ(config, attention=EXPORT_ATTENTION)

    def decode(
        params: Any,
        image_embeddings: jax.Array,
        interm_embeddings: jax.Array,
        point_coords: jax.Array,
        point_labels: jax.Array,
        mask_input: jax.Array,
        has_mask_input: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        return model.apply(
            {"params": params},
            nchw_to_nhwc(image_embeddings),
            interm_embeddings[0],
            point_coords,
            point_labels,
            mask_input[:, 0],
            has_mask_input,
            options,
            method=decode_official,
        )

    return at_precision(decode, LIBRARY.precision)
