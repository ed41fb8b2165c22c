"""``SamHQModel``: the Hugging Face model API (``transformers.SamHQModel``) over :class:`SamHQ`.

An adapter, not a second model: the call runs the jitted :meth:`SamHQ.embed_image` and
:meth:`SamHQ.decode` that :class:`SamHQPredictor` uses (shared per config, dtype and precision) and translates
Hugging Face's layouts (NCHW pixels and embeddings) and output semantics:

* ``multimask_output=True`` (the default, as in ``transformers``): three masks per prompt, SAM's
  three multimask outputs sorted by predicted IoU (descending), each plus the HQ mask; with
  ``hq_token_only`` the HQ mask alone, ``(B, P, 1, ...)``, with all three IoUs;
* ``multimask_output=False``: SAM's single-mask output plus the HQ mask;
* ``pred_masks`` are the correct (``transformers`` <= 4.53) masks: releases 4.54 and later feed the
  pre-transformer image tokens to the mask path (see ``shared/reference/samhq_hf.md``).

Differences, all loud: outputs are JAX arrays (host arrays answering torch's ``.cpu()`` / ``.numpy()``
/ ``.to()`` when the inputs came from ``processor(..., return_tensors="pt")``); ``image_embeddings`` without
``intermediate_embeddings`` raises (``transformers`` silently drops the HQ branch's ViT feature);
prompt labels outside {1, 0, -1, -10} raise.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samhq_jax.checkpoint import load_pretrained
from samhq_jax.config import ModelConfig, TinyViTConfig
from samhq_jax.errors import InputError
from samhq_jax.hf_config import SamHQConfig as HFSamHQConfig
from samhq_jax.hf_processor import HF_LABELS, HF_LABELS_TEXT, jax_device
from samhq_jax.hf_vision import (
    OutputFields,
    SamHQPatchEmbeddings,
    compiled_decode_attentions,
    compiled_vision,
    in_kind,
    pixels_nhwc,
)
from samhq_jax.precision import LIBRARY, Policy, at_precision
from samhq_jax.predictor import compiled_model
from samhq_jax.prompt_check import check_boxes, check_finite, check_labels
from samhq_jax.prompt_encoder import PromptEncoder
from samhq_jax.sam_hq import ImageEmbeddings
from samhq_jax.torch_style import OfficialTensor, host_tensor
from samhq_jax.transforms import as_numpy, on_device


@dataclasses.dataclass
class SamHQImageSegmentationOutput(OutputFields):
    """Model outputs; also indexable as ``outputs["pred_masks"]`` or ``outputs[0]`` (= iou_scores);
    ``keys()`` / ``to_tuple()`` hold the fields that are not None, as transformers' ``ModelOutput``.

    Attributes:
      iou_scores: ``(B, P, J)`` float32 predicted IoU, J = 3 with ``multimask_output`` else 1.
      pred_masks: ``(B, P, K, 4G, 4G)`` float32 low-res logits (``G`` the embedding grid side,
        256 x 256 for the released models); post-process with ``processor.post_process_masks``.
      vision_hidden_states: with ``output_hidden_states`` (and ``pixel_values``), the image
        encoder's ``hidden_states`` (:class:`~samhq_jax.hf_vision.SamHQVisionEncoderOutput`).
      vision_attentions: with ``output_attentions`` (and ``pixel_values``), its ``attentions``.
      mask_decoder_attentions: with ``output_attentions``, per two-way layer the image-to-token
        attention output ``(B * P, 1, G * G, C)`` (what transformers 4.53 records under this name).
    """

    iou_scores: jax.Array
    pred_masks: jax.Array
    vision_hidden_states: tuple[jax.Array, ...] | None = None
    vision_attentions: tuple[jax.Array, ...] | None = None
    mask_decoder_attentions: tuple[jax.Array, ...] | None = None


class SamHQModel:
    """SAM-HQ with ``transformers``' call signature.

    ``model = SamHQModel.from_pretrained(path)`` then ``model(**processor(image, ...))``.
    ``config`` is transformers' ``SamHQConfig`` (:mod:`samhq_jax.hf_config`; it also answers our
    dataclass's attributes; ours, a TinyViT model's, for Light HQ-SAM, which transformers cannot
    describe); ``samhq_config`` our :class:`ModelConfig` (the constructor takes either);
    ``params`` the parameter pytree; ``policy`` the
    :class:`~samhq_jax.precision.Policy` of ``dtype`` (``float32`` / ``bfloat16``) and ``precision``
    (``"highest"`` / ``"default"``) every call runs under (default ``highest`` / ``float32``, as
    :class:`SamHQPredictor`; bad values raise a one-line ``ValueError``).
    """

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        dtype: jnp.dtype | str = jnp.float32,
        precision: str = LIBRARY.precision,
    ) -> None:
        config = config.samhq_config if isinstance(config, HFSamHQConfig) else config
        self.samhq_config = config
        self.config = (
            config if isinstance(config.image_encoder, TinyViTConfig) else HFSamHQConfig.from_samhq_config(config)
        )
        self.policy = Policy(precision, dtype)  # checked before anything is placed
        self.params = jax.device_put(params)  # once: warm calls move no weights
        self.module, self._embed, self._decode = compiled_model(config, self.policy.dtype, self.policy.precision)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: jnp.dtype | str = jnp.float32, precision: str = LIBRARY.precision
    ) -> SamHQModel:
        """A hub id (through the local hub cache), an HF folder, an official checkpoint or ours;
        ``dtype`` and ``precision`` as for :meth:`SamHQPredictor.from_pretrained`."""
        config, params = load_pretrained(path)
        return cls(config, params, dtype=dtype, precision=precision)

    def to(self, device: Any) -> SamHQModel:
        """Parameters to a JAX device (a ``jax.Device``, or ``"cpu"`` / ``"gpu"`` / ``"cuda"`` / ``"tpu"``)."""
        self.params = jax.device_put(self.params, jax_device(device))
        return self

    def eval(self) -> SamHQModel:
        """No-op (there is no dropout or batch statistics); returns the model, as in PyTorch."""
        return self

    def get_image_embeddings(self, pixel_values: Any) -> tuple[jax.Array, list[jax.Array]]:
        """``(B, 3, S, S)`` pixels -> ``image_embeddings (B, C, G, G)`` and ``intermediate_embeddings``.

        ``intermediate_embeddings`` is a one-element list: the ``(B, G, G, vit_dim)`` output of the
        first global-attention block, the only one the HQ decoder uses (``transformers`` returns all
        four; pass either list back as ``intermediate_embeddings=``).
        """
        emb = self._embed({"params": self.params}, pixels_nhwc(pixel_values, self.config.img_size))
        out = emb.image_embeddings.transpose(0, 3, 1, 2), [emb.early_features]
        return jax.tree.map(host_tensor, out) if isinstance(pixel_values, OfficialTensor) else out

    def get_input_embeddings(self) -> SamHQPatchEmbeddings:
        """The image encoder's patch embedding, as transformers' ``SamHQPatchEmbeddings``:
        ``model.get_input_embeddings()(pixel_values)`` maps ``(B, 3, S, S)`` pixels to ``(B, G, G, D)``
        and ``.projection.weight`` / ``.bias`` are its parameters in torch's layout. Light HQ-SAM
        (TinyViT), which transformers cannot describe, raises an :class:`~samhq_jax.errors.InputError`."""
        encoder = self.samhq_config.image_encoder
        if isinstance(encoder, TinyViTConfig):
            raise InputError("get_input_embeddings: transformers defines the patch embedding for the ViT only")
        return SamHQPatchEmbeddings(self.params["image_encoder"]["patch_embed"], encoder, self.policy)

    def get_image_wide_positional_embeddings(self) -> jax.Array:
        """The positional encoding of the image embedding grid's cell centres, ``(1, C, G, G)`` float32
        (what the mask decoder adds to the image embedding; transformers' method of this name)."""
        pe = at_precision(self.module.apply, self.policy.precision)(
            {"params": self.params}, method=lambda m: m.prompt_encoder.get_dense_pe()
        )
        return pe.transpose(2, 0, 1)[None]

    def get_prompt_embeddings(
        self,
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        input_masks: Any = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The prompt encoder's output, as transformers' ``SamHQModel.get_prompt_embeddings``.

        Args:
          input_points: ``(B, P, N, 2)`` xy in the input frame (pixels); needs
          input_labels: ``(B, P, N)`` in {1, 0, -1, -10} (transformers requires them with points).
          input_boxes: ``(B, P, 4)`` xyxy (P the points' P when both are given).
          input_masks: ``(B_m, 1, 4G, 4G)`` low-res logits.

        Returns:
          ``sparse_embeddings (B, P, T, C)`` float32, T = N (+1 padding point when no box is given)
          (+2 corners with boxes), or ``(B, 1, 1, C)`` zeros without points and boxes (B = 1 when
          neither gives it); ``dense_embeddings (B_m, C, G, G)`` of the masks, else ``no_mask_embed``
          over the grid ``(B, C, G, G)``. JAX arrays; host arrays answering torch's methods when an
          input came from ``return_tensors="pt"``.
        """
        if input_points is not None and input_labels is None:
            raise InputError("If points are provided, labels must also be provided.")
        points, labels = self._points(input_points, input_labels)
        boxes = self._boxes(input_boxes, None if points is None else points.shape[1])
        if points is not None and boxes is not None and boxes.shape[0] != points.shape[0]:
            raise InputError(f"input_boxes are for {boxes.shape[0]} images, input_points for {points.shape[0]}")
        masks = None
        if input_masks is not None:
            low = self.config.low_res_mask_size
            masks = as_numpy(input_masks).astype(np.float32)
            if masks.ndim != 4 or masks.shape[1:] != (1, low, low):
                raise InputError(f"input_masks must be (batch, 1, {low}, {low}) low-res logits, got {masks.shape}")
            check_finite(masks, "input_masks", row=False)
        batch = points.shape[0] if points is not None else boxes.shape[0] if boxes is not None else 1

        def embed(module: Any, *prompts: Any) -> tuple[jax.Array, jax.Array]:
            return _prompt_embeddings(module.prompt_encoder, *prompts, batch=batch)

        out = at_precision(self.module.apply, self.policy.precision)(
            {"params": self.params}, *jax.device_put((points, labels, boxes, masks)), method=embed
        )
        given = (input_points, input_labels, input_boxes, input_masks)
        return jax.tree.map(host_tensor, out) if any(isinstance(x, OfficialTensor) for x in given) else out

    def __call__(
        self,
        pixel_values: Any = None,
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        input_masks: Any = None,
        image_embeddings: Any = None,
        multimask_output: bool = True,
        hq_token_only: bool = False,
        intermediate_embeddings: Any = None,
        original_sizes: Any = None,
        reshaped_input_sizes: Any = None,
        labels: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SamHQImageSegmentationOutput | tuple:
        """Segment B images with P prompts each (all coordinates in input-frame pixels).

        Args:
          pixel_values: ``(B, 3, S, S)`` float32 from the processor; or give
          image_embeddings: ``(B, C, G, G)`` with ``intermediate_embeddings`` (a list whose first
            entry is ``(B, G, G, vit_dim)``), both from :meth:`get_image_embeddings`.
          input_points: ``(B, P, N, 2)`` xy; input_labels: ``(B, P, N)`` in {1, 0, -1, -10}
            (default all 1).
          input_boxes: ``(B, P, 4)`` xyxy (P must match the points' P when both are given).
          input_masks: ``(B, 1, 4G, 4G)`` or ``(B, 4G, 4G)`` low-res logits, one per image, used for
            each of its prompts.
          multimask_output, hq_token_only: see the module docstring.
          original_sizes, reshaped_input_sizes, labels: accepted so that ``model(**inputs)`` works,
            and ignored, as ``transformers`` does (segmentation-map ``labels`` are not a prompt).
          output_attentions, output_hidden_states: also return ``vision_attentions`` and
            ``mask_decoder_attentions`` / ``vision_hidden_states`` (None: the config's, False).
          return_dict: False returns :meth:`SamHQImageSegmentationOutput.to_tuple`.

        Returns:
          :class:`SamHQImageSegmentationOutput` with ``iou_scores (B, P, 3 | 1)`` and
          ``pred_masks (B, P, 3 | 1, 4G, 4G)``.
        """
        del original_sizes, reshaped_input_sizes, labels
        if (pixel_values is None) == (image_embeddings is None):
            raise InputError("give exactly one of pixel_values and image_embeddings")
        source = pixel_values if pixel_values is not None else image_embeddings
        shape = tuple(getattr(source, "shape", None) or np.shape(source))
        if not shape:
            raise InputError(f"{'pixel_values' if pixel_values is not None else 'image_embeddings'} must be batched")
        # The prompts are checked before any image is encoded.
        points, labels_, boxes, masks = self._prompts(shape[0], input_points, input_labels, input_boxes, input_masks)
        attentions, hidden = (
            bool(getattr(self.config, name, False) if flag is None else flag)
            for name, flag in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states))
        )
        extras = {}
        if pixel_values is not None and (attentions or hidden):
            emb, extras = self._vision_outputs(pixel_values, attentions, hidden)
        elif pixel_values is not None:
            emb = self._embed({"params": self.params}, pixels_nhwc(pixel_values, self.config.img_size))
        else:
            emb = self._embeddings(image_embeddings, intermediate_embeddings)
        flags = dict(multimask_output=multimask_output, hq_token_only=hq_token_only)
        if attentions:
            decode = compiled_decode_attentions(self.samhq_config, self.policy.dtype, self.policy.precision)
            low_res, iou, extras["mask_decoder_attentions"] = decode(
                {"params": self.params}, emb, points, labels_, boxes, masks, **flags
            )
        else:
            low_res, iou = self._decode(
                {"params": self.params}, emb, points, labels_, boxes, masks, **flags, all_multimask=True
            )
        out = SamHQImageSegmentationOutput(iou_scores=iou, pred_masks=low_res, **extras)
        out = in_kind(out, isinstance(source, OfficialTensor))
        return out.to_tuple() if return_dict is False else out

    forward = __call__

    def _vision_outputs(self, pixel_values: Any, attentions: bool, hidden: bool) -> tuple[ImageEmbeddings, dict]:
        """The image encoder run for its optional outputs: the embeddings and ``{vision_*: ...}``."""
        if isinstance(self.samhq_config.image_encoder, TinyViTConfig):
            raise InputError("output_attentions / output_hidden_states: transformers defines them for the ViT only")
        run = compiled_vision(self.samhq_config.image_encoder, self.policy.dtype, self.policy.precision)
        out = run(
            self.params["image_encoder"],
            pixels_nhwc(pixel_values, self.config.img_size),
            hidden_states=hidden,
            attentions=attentions,
        )
        extras = {"vision_hidden_states": out["hidden"], "vision_attentions": out["attentions"]}
        return ImageEmbeddings(out["last"], out["intermediate"][0]), extras

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write a folder ``transformers.SamHQModel.from_pretrained`` loads (strict keys): ``config.json``
        and ``model.safetensors`` (:func:`convert.export.export_hf`). Light HQ-SAM (TinyViT) has no
        transformers format: an :class:`~samhq_jax.errors.InputError`."""
        from convert.export import export_hf

        return export_hf(self.samhq_config, jax.device_get(self.params), save_directory)

    def _embeddings(self, image_embeddings: Any, intermediate_embeddings: Any) -> ImageEmbeddings:
        if intermediate_embeddings is None:
            raise InputError(
                "image_embeddings need intermediate_embeddings (the HQ decoder fuses the early ViT feature): "
                "pass both, as returned by get_image_embeddings"
            )
        early = intermediate_embeddings[0] if isinstance(intermediate_embeddings, (list, tuple)) else None
        early = intermediate_embeddings if early is None else early
        emb, early = on_device(image_embeddings, jnp.float32), on_device(early, jnp.float32)
        g, c = self.config.embedding_size, self.config.prompt_encoder.embed_dim
        if emb.ndim != 4 or emb.shape[1:] != (c, g, g):
            raise InputError(f"image_embeddings must be (B, {c}, {g}, {g}), got {emb.shape}")
        vit = self.config.image_encoder.embed_dim
        if early.shape != (emb.shape[0], g, g, vit):
            raise InputError(f"intermediate_embeddings[0] must be ({emb.shape[0]}, {g}, {g}, {vit}), got {early.shape}")
        return ImageEmbeddings(emb.transpose(0, 2, 3, 1), early)

    def _points(self, points: Any, labels: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Checked ``(B, P, N, 2)`` float32 points and ``(B, P, N)`` int32 labels (default all 1), or Nones."""
        if points is None:
            if labels is not None:
                raise InputError("input_labels were given without input_points")
            return None, None
        points = as_numpy(points).astype(np.float32)
        if points.ndim != 4 or points.shape[-1] != 2:
            raise InputError(f"input_points must be (batch, point_batch, points, 2), got {points.shape}")
        check_finite(points, "input_points")
        labels = np.ones(points.shape[:3], np.int32) if labels is None else as_numpy(labels)
        if labels.shape != points.shape[:3]:
            raise InputError(f"input_labels must be {points.shape[:3]} to match input_points, got {labels.shape}")
        check_labels(labels, "input_labels", HF_LABELS, HF_LABELS_TEXT)
        return points, labels.astype(np.int32)

    @staticmethod
    def _boxes(boxes: Any, p: int | None) -> np.ndarray | None:
        """Checked ``(B, P, 4)`` float32 xyxy boxes (P the points' P when ``p`` is given), or None."""
        if boxes is None:
            return None
        boxes = as_numpy(boxes).astype(np.float32)
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise InputError(f"input_boxes must be (batch, boxes, 4), got {boxes.shape}")
        if p is not None and boxes.shape[1] != p:
            raise InputError(f"give as many boxes as point prompts: {boxes.shape[1]} boxes, {p} point prompts")
        check_boxes(boxes, "input_boxes")
        return boxes

    def _prompts(
        self, b: int, points: Any, labels: Any, boxes: Any, masks: Any
    ) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None, jax.Array | None]:
        """Check Hugging Face prompt tensors and return :meth:`SamHQ.decode`'s arguments."""
        points, labels = self._points(points, labels)
        boxes = self._boxes(boxes, None if points is None else points.shape[1])
        p = points.shape[1] if points is not None else boxes.shape[1] if boxes is not None else None
        for name, a in (("input_points", points), ("input_boxes", boxes)):
            if a is not None and a.shape[0] != b:
                raise InputError(f"{name} are for {a.shape[0]} images, but {b} were given")
        if masks is not None:
            low = self.config.low_res_mask_size
            masks = as_numpy(masks).astype(np.float32)
            masks = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
            if masks.shape != (b, low, low):
                raise InputError(f"input_masks must be ({b}, 1, {low}, {low}) low-res logits, got {masks.shape}")
            masks = np.broadcast_to(masks[:, None], (b, p or 1, low, low))
        return jax.device_put((points, labels, boxes, masks))


def _prompt_embeddings(
    encoder: PromptEncoder,
    points: jax.Array | None,
    labels: jax.Array | None,
    boxes: jax.Array | None,
    masks: jax.Array | None,
    batch: int,
) -> tuple[jax.Array, jax.Array]:
    """transformers' prompt encoder on ours (bound): ``(sparse (B, P, T, C), dense (B, C, G, G))``,
    shapes as :meth:`SamHQModel.get_prompt_embeddings` documents; ``masks`` ``(B_m, 1, 4G, 4G)``."""
    c, g = encoder.config.embed_dim, encoder.grid_size
    parts = []
    if points is not None:
        parts.append(encoder.embed_points(points, labels, pad=boxes is None))
    if boxes is not None:
        parts.append(encoder.embed_boxes(boxes))
    sparse = jnp.concatenate(parts, axis=2) if parts else jnp.zeros((batch, 1, 1, c), jnp.float32)
    if masks is not None:
        dense = encoder.mask_downscaling(masks[:, 0]).astype(jnp.float32)
    else:
        dense = jnp.broadcast_to(encoder.no_mask_embed.astype(jnp.float32).reshape(1, 1, 1, c), (batch, g, g, c))
    return sparse, dense.transpose(0, 3, 1, 2)


__all__ = ["SamHQImageSegmentationOutput", "SamHQModel"]
