"""transformers' automatic mask generation helpers of the image processor: ``generate_crop_boxes``,
``filter_masks`` and ``post_process_for_mask_generation`` (ports of
``transformers/models/sam/image_processing_sam.py``, 4.53, in NumPy; methods of
:class:`~samhq_jax.SamHQImageProcessor`). ``pipeline("mask-generation")`` is :mod:`samhq_jax.hf_pipeline`.

One deliberate difference from transformers, where it is wrong or fails:

* ``generate_crop_boxes`` maps each crop's points into that crop's own resized frame (the crop is
  encoded as an image of its own), as the official ``SamAutomaticMaskGenerator`` does; transformers
  uses the whole image's size, which misplaces the points of every crop layer past 0. Where the
  layers have different point counts (``crop_n_points_downscale_factor`` > 1 with crop layers),
  transformers fails building its array; here ``points`` and ``labels`` are then lists with one
  ``(1, N_i, 1, 2)`` / ``(1, N_i, 1)`` array per crop.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from samhq_jax.amg_ops import (
    EDGE_ATOL,
    batched_mask_to_box,
    build_all_layer_point_grids,
    mask_to_rle,
    nms,
    rle_to_mask,
)
from samhq_jax.amg_ops import generate_crop_boxes as official_crop_boxes
from samhq_jax.errors import InputError
from samhq_jax.torch_style import host_tensor
from samhq_jax.transforms import apply_coords, as_numpy, to_rgb_uint8

RETURN_TENSORS = ("np", "jax", "pt")


def check_return_tensors(kind: str | None) -> str:
    """``return_tensors`` checked: ``"np"`` (also for None), ``"jax"`` or ``"pt"``; anything else is an
    ``InputError``."""
    kind = "np" if kind is None else kind
    if kind not in RETURN_TENSORS:
        raise InputError(f"return_tensors must be 'np', 'jax' or 'pt', got {kind!r}")
    return kind


def as_tensor(kind: str, array: Any) -> Any:
    """``array`` as ``return_tensors=kind`` asks: ``"np"`` NumPy, ``"jax"`` a JAX array on the default
    device, ``"pt"`` a host :class:`~samhq_jax.torch_style.OfficialTensor` (NumPy answering ``.cpu()``,
    ``.numpy()``, ``.to(device)``: no torch tensor is made)."""
    if kind == "jax":
        return jax.device_put(array)
    return host_tensor(array) if kind == "pt" else np.asarray(jax.device_get(array))


def _tensors(kind: str, *arrays: np.ndarray) -> tuple:
    kind = check_return_tensors(kind)
    return tuple(as_tensor(kind, a) for a in arrays)


def generate_crop_boxes(
    image: Any,
    target_size: int,
    crop_n_layers: int = 0,
    overlap_ratio: float = 512 / 1500,
    points_per_crop: int = 32,
    crop_n_points_downscale_factor: int = 1,
    return_tensors: str = "np",
) -> tuple[Any, Any, list[np.ndarray], Any]:
    """Crops of ``image`` and the point prompts of each, as transformers' ``generate_crop_boxes``.

    Args:
      image: one ``(H, W, 3)`` image (array or PIL); a list is refused, as in transformers.
      target_size: the model's input side (the processor's ``longest_edge``).
      crop_n_layers, overlap_ratio, points_per_crop, crop_n_points_downscale_factor: the official
        generator's ``crop_n_layers``, ``crop_overlap_ratio``, ``points_per_side`` and
        ``crop_n_points_downscale_factor``.
      return_tensors: ``"np"`` or ``"jax"`` (the cropped images stay NumPy).

    Returns:
      ``crop_boxes (n_crops, 4)`` float32 XYXY; ``points (1, N, n_crops, 2)`` float64 xy in each
      crop's resized input frame; ``cropped_images`` (a list of ``(h, w, 3)`` views); ``labels (1, N,
      n_crops)`` int64 ones. With different point counts per layer, ``points`` / ``labels`` are
      lists of ``(1, N_i, 1, 2)`` / ``(1, N_i, 1)`` arrays, one per crop (module docstring).
    """
    if isinstance(image, list):
        raise InputError("Only one image is allowed for crop generation.")
    image = to_rgb_uint8(image)
    if crop_n_layers < 0 or crop_n_points_downscale_factor < 1 or points_per_crop < 1:
        raise InputError("need crop_n_layers >= 0, crop_n_points_downscale_factor >= 1 and points_per_crop >= 1")
    grids = build_all_layer_point_grids(points_per_crop, crop_n_layers, crop_n_points_downscale_factor)
    boxes, layers = official_crop_boxes(image.shape[:2], crop_n_layers, overlap_ratio)
    crops, points = [], []
    for (x0, y0, x1, y1), layer in zip(boxes, layers, strict=True):
        crop = image[y0:y1, x0:x1]
        crops.append(crop)
        size = crop.shape[:2]
        points.append(apply_coords(grids[layer] * np.array(size)[None, ::-1], size, target_size, np.float64))
    crop_boxes = np.asarray(boxes, np.float32)
    if len({len(p) for p in points}) == 1:
        grid = np.stack(points, axis=1)[None]  # (1, N, n_crops, 2)
        grid, labels = _tensors(return_tensors, grid, np.ones(grid.shape[:3], np.int64))
        (crop_boxes,) = _tensors(return_tensors, crop_boxes)
        return crop_boxes, grid, crops, labels
    grid = [_tensors(return_tensors, p[None, :, None])[0] for p in points]
    labels = [_tensors(return_tensors, np.ones((1, len(p), 1), np.int64))[0] for p in points]
    (crop_boxes,) = _tensors(return_tensors, crop_boxes)
    return crop_boxes, grid, crops, labels


def stability_scores(masks: np.ndarray, mask_threshold: float, offset: float) -> np.ndarray:
    """``(N, H, W)`` logits -> ``(N,)`` float32 ``#(x > t + offset) / #(x > t - offset)``."""
    flat = masks.reshape(len(masks), -1)
    inter = np.count_nonzero(flat > mask_threshold + offset, axis=1)
    union = np.count_nonzero(flat > mask_threshold - offset, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (inter / union).astype(np.float32)


def filter_masks(
    masks: Any,
    iou_scores: Any,
    original_size: tuple[int, int],
    cropped_box_image: Any,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    mask_threshold: float = 0.0,
    stability_score_offset: float = 1.0,
    return_tensors: str = "np",
) -> tuple[list[dict[str, Any]], Any, Any]:
    """transformers' ``filter_masks``: keep the masks of one crop that pass the thresholds and do not
    touch the crop's edge (unless that is the image's edge), padded to the image, as RLEs.

    Args:
      masks: ``(B, M, h, w)`` float logits of the crop (``post_process_masks(..., binarize=False)``).
      iou_scores: ``(B, M)`` predicted IoUs.
      original_size: ``(H, W)`` of the image the crop is part of.
      cropped_box_image: the crop's XYXY box in that image.
      pred_iou_thresh / stability_score_thresh: keep scores above these (<= 0: no filter).
      mask_threshold, stability_score_offset: the binarisation and the stability score's offset.

    Returns:
      ``(rle_masks, scores (K,), boxes (K, 4) int64)``: uncompressed RLEs of ``(H, W)``, the kept IoUs
      and the masks' XYXY boxes in the crop's frame.
    """
    height, width = (int(v) for v in original_size)
    masks = as_numpy(masks)
    iou = as_numpy(iou_scores).reshape(-1)
    masks = masks.reshape(-1, *masks.shape[-2:])
    if masks.shape[0] != iou.shape[0]:
        raise InputError("masks and iou_scores must have the same batch size.")
    keep = np.ones(len(iou), bool)
    if pred_iou_thresh > 0.0:
        keep &= iou > pred_iou_thresh
    if stability_score_thresh > 0.0:
        keep &= stability_scores(masks, mask_threshold, stability_score_offset) > stability_score_thresh
    scores, binary = iou[keep], masks[keep] > mask_threshold
    boxes = batched_mask_to_box(binary).astype(np.int64)
    x0, y0, x1, y1 = (int(v) for v in as_numpy(cropped_box_image))
    shifted = (boxes + np.array([x0, y0, x0, y0])).astype(np.float32)
    near_crop = np.abs(shifted - np.array([x0, y0, x1, y1], np.float32)) <= EDGE_ATOL
    near_image = np.abs(shifted - np.array([0, 0, width, height], np.float32)) <= EDGE_ATOL
    keep = ~np.any(near_crop & ~near_image, axis=1)
    scores, binary, boxes = scores[keep], binary[keep], boxes[keep]
    if (x0, y0, x1, y1) != (0, 0, width, height):
        binary = np.pad(binary, ((0, 0), (y0, height - y1), (x0, width - x1)))
    return (mask_to_rle(binary), *_tensors(return_tensors, scores, boxes))


def post_process_for_mask_generation(
    all_masks: list[dict[str, Any]],
    all_scores: Any,
    all_boxes: Any,
    crops_nms_thresh: float,
    return_tensors: str = "np",
) -> tuple[list[np.ndarray], Any, list[dict[str, Any]], Any]:
    """transformers' ``post_process_for_mask_generation``: box NMS (torchvision's) over the masks of
    every crop. Returns ``(masks, scores, rle_masks, boxes)`` of the kept ones, highest score first,
    ``masks`` a list of ``(H, W)`` bool."""
    scores, boxes = as_numpy(all_scores).reshape(-1), as_numpy(all_boxes).reshape(-1, 4)
    keep = nms(boxes.astype(np.float32), scores, crops_nms_thresh)
    rles = [all_masks[i] for i in keep]
    return (
        [rle_to_mask(r) for r in rles],
        *_tensors(return_tensors, scores[keep]),
        rles,
        *_tensors(return_tensors, boxes[keep]),
    )


__all__ = [
    "filter_masks",
    "generate_crop_boxes",
    "post_process_for_mask_generation",
    "stability_scores",
]
