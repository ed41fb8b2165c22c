"""``pipeline("mask-generation", model=...)``: transformers' mask-generation pipeline, run by our
:class:`~samhq_jax.amg.SamHQAutomaticMaskGenerator` (port of ``transformers/pipelines/mask_generation.py``,
4.53, for its call and output structure).

    from samhq_jax import pipeline
    generator = pipeline("mask-generation", model="syscv-community/sam-hq-vit-base")
    outputs = generator(image, points_per_batch=64)
    outputs["masks"]    # list of (H, W) bool, best first; outputs["scores"] (N,) float32

The masks are the official generator's (each grid point's best SAM mask plus the HQ mask; the
official filters, crops and NMS) in transformers' output structure; transformers' pipeline keeps all
three SAM masks of each point and handles only the first crop (its crop layers are broken).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np

from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.amg_ops import rle_to_mask
from samhq_jax.errors import InputError
from samhq_jax.hf_model import SamHQModel
from samhq_jax.image_io import read_rgb
from samhq_jax.predictor import SamHQPredictor
from samhq_jax.transforms import MASK_THRESHOLD

TASK = "mask-generation"


class MaskGenerationPipeline:
    """``pipeline("mask-generation", model=...)``: ``generator(image, **settings)`` -> ``{"masks",
    "scores"[, "rle_mask"][, "bounding_boxes"]}`` per image (a list for a list of images), with
    transformers' keywords: ``points_per_batch``, ``points_per_crop``, ``crops_n_layers``,
    ``crop_overlap_ratio``, ``crop_n_points_downscale_factor``, ``pred_iou_thresh``,
    ``stability_score_thresh``, ``stability_score_offset``, ``mask_threshold`` (0 only),
    ``crops_nms_thresh`` (the NMS within and across crops), ``output_rle_mask``, ``output_bboxes_mask``.
    ``image``: a path, a PIL image or an ``(H, W, 3)`` array. ``defaults``: keywords given to
    :func:`pipeline`, used where a call does not give them. Unknown keywords are refused."""

    task = TASK

    def __init__(self, model: Any, **defaults: Any) -> None:
        check_settings(defaults)
        self.model = model
        self.defaults = defaults
        self.predictor = SamHQPredictor(model.samhq_config, model.params, model.policy.dtype, model.policy.precision)

    def __call__(self, image: Any, **settings: Any) -> dict[str, Any] | list[dict[str, Any]]:
        check_settings(settings)
        if isinstance(image, list):
            return [self(one, **settings) for one in image]
        rgb = read_rgb(image) if isinstance(image, (str, os.PathLike)) else image
        return self._generate(rgb, **{**self.defaults, **settings})

    def _generate(
        self,
        image: Any,
        points_per_batch: int = 64,
        points_per_crop: int = 32,
        crops_n_layers: int = 0,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = MASK_THRESHOLD,
        crops_nms_thresh: float = 0.7,
        output_rle_mask: bool = False,
        output_bboxes_mask: bool = False,
    ) -> dict[str, Any]:
        if mask_threshold != MASK_THRESHOLD:
            raise InputError(f"mask_threshold: the mask generator binarises at {MASK_THRESHOLD}, got {mask_threshold}")
        records = SamHQAutomaticMaskGenerator(
            self.predictor,
            points_per_side=points_per_crop,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=crops_nms_thresh,
            crop_n_layers=crops_n_layers,
            crop_nms_thresh=crops_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            output_mode="uncompressed_rle",
        ).generate(image)
        rles = [r["segmentation"] for r in records]
        out = {
            "masks": [rle_to_mask(r) for r in rles],
            "scores": np.array([r["predicted_iou"] for r in records], np.float32),
        }
        if output_rle_mask:
            out["rle_mask"] = rles
        if output_bboxes_mask:
            xywh = np.array([r["bbox"] for r in records], np.int64).reshape(-1, 4)
            out["bounding_boxes"] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return out


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse keywords the pipeline does not know (an :class:`~samhq_jax.errors.InputError` naming them)."""
    known = set(inspect.signature(MaskGenerationPipeline._generate).parameters) - {"self", "image"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"mask-generation pipeline: unknown arguments {unknown}; known: {sorted(known)}")


def pipeline(task: str, model: Any = None, device: Any = None, **defaults: Any) -> MaskGenerationPipeline:
    """transformers' ``pipeline`` for ``task="mask-generation"``.

    ``model``: a :class:`~samhq_jax.SamHQModel` or anything its ``from_pretrained`` takes (a hub id, a
    folder, a checkpoint file). ``device``: as transformers', an int (-1 the CPU, ``i`` GPU ``i``), a
    name (``"cpu"``, ``"cuda:0"``) or a JAX device; the weights go there. ``defaults``: the call's
    keywords (``points_per_batch``, ...), used where a call does not give them. Other tasks are refused.
    """
    if task != TASK:
        raise InputError(f"pipeline: only the {TASK!r} task is available, got {task!r}")
    if model is None:
        raise InputError("pipeline: give model= (a SamHQModel, a hub id, a folder or a checkpoint)")
    model = model if isinstance(model, SamHQModel) else SamHQModel.from_pretrained(model)
    if device is not None:
        model.to(("cpu" if device < 0 else f"cuda:{device}") if isinstance(device, int) else device)
    return MaskGenerationPipeline(model, **defaults)


__all__ = ["MaskGenerationPipeline", "pipeline"]
