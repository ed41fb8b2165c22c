"""``segment_anything_hq.utils.amg`` under its official path, so that a script's
``from segment_anything_hq.utils.amg import ...`` ports by its prefix alone (``samhq_jax.utils.amg``).

Where our :mod:`samhq_jax.amg_ops` function has the official signature and types it is re-exported
(``build_point_grid``, ``build_all_layer_point_grids``, ``generate_crop_boxes``, ``rle_to_mask``,
``area_from_rle``, ``coco_encode_rle``); the rest are thin adapters that take what the official takes
(torch tensors, or NumPy / JAX arrays and lists) and hand out host arrays answering torch's
``.cpu()`` / ``.numpy()`` / ``.to()`` (:class:`~samhq_jax.torch_style.OfficialTensor`) where the
official hands out tensors, with the official dtypes (int64 boxes, float32 scores)::

    from samhq_jax.utils.amg import batched_mask_to_box, mask_to_rle_pytorch, rle_to_mask
    rles = mask_to_rle_pytorch(masks)             # (N, H, W) bool tensor or array -> uncompressed RLEs
    boxes = batched_mask_to_box(masks)            # (N, 4) int64 xyxy, inclusive
    assert (rle_to_mask(rles[0]) == masks[0].cpu().numpy()).all()

``MaskData`` is the official container (lists, NumPy arrays, host arrays and torch tensors, each
kept as it is). Not here: ``is_box_near_crop_edge`` with an ``atol`` other than the generator's 20
pixels (an :class:`~samhq_jax.errors.InputError` says so).
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from typing import Any

import jax.numpy as jnp
import numpy as np

from samhq_jax import amg_ops
from samhq_jax.amg_ops import (
    EDGE_ATOL,
    area_from_rle,
    build_all_layer_point_grids,
    build_point_grid,
    coco_encode_rle,
    generate_crop_boxes,
    mask_to_rle,
    rle_to_mask,
)
from samhq_jax.errors import InputError
from samhq_jax.torch_style import OfficialTensor, host_tensor
from samhq_jax.transforms import as_numpy


def _is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


class MaskData:
    """The official ``MaskData``: named per-mask columns (lists, NumPy / host arrays or torch
    tensors, each kept in its own type) filtered and concatenated together.

        data = MaskData(rles=rles, boxes=batched_mask_to_box(masks))
        data.filter(keep)   # a bool mask or indices (array, list or tensor)
        data.cat(other)     # append another MaskData's rows
        data.to_numpy()     # tensors and host arrays -> NumPy
    """

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            self._check(key, value)
        self._stats = dict(**kwargs)

    @staticmethod
    def _check(key: str, value: Any) -> None:
        if not isinstance(value, (list, np.ndarray)) and not _is_torch(value):
            raise InputError(f"MaskData only supports list, numpy arrays, and torch tensors ({key}: {type(value)})")

    def __setitem__(self, key: str, item: Any) -> None:
        self._check(key, item)
        self._stats[key] = item

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def items(self) -> Any:
        return self._stats.items()

    def filter(self, keep: Any) -> None:
        """Keep the rows ``keep`` selects (a bool mask or indices) in every column."""
        keep_np = as_numpy(keep)
        for key, value in self._stats.items():
            if value is None:
                continue
            if _is_torch(value):
                import torch

                self._stats[key] = value[torch.as_tensor(keep_np, device=value.device)]
            elif isinstance(value, np.ndarray):
                self._stats[key] = value[keep_np]
            elif keep_np.dtype == bool:
                self._stats[key] = [a for a, k in zip(value, keep_np, strict=True) if k]
            else:
                self._stats[key] = [value[int(i)] for i in keep_np]

    def cat(self, new_stats: MaskData) -> None:
        """Append ``new_stats``'s rows (a column this one lacks is copied)."""
        for key, value in new_stats.items():
            mine = self._stats.get(key)
            if mine is None:
                self._stats[key] = copy.deepcopy(value)
            elif _is_torch(value):
                import torch

                self._stats[key] = torch.cat([mine, value], dim=0)
            elif isinstance(value, np.ndarray):
                joined = np.concatenate([mine, value], axis=0)
                self._stats[key] = joined.view(type(mine)) if isinstance(mine, OfficialTensor) else joined
            elif isinstance(value, list):
                self._stats[key] = mine + copy.deepcopy(value)
            else:
                raise InputError(f"MaskData key {key} has an unsupported type {type(value)}.")

    def to_numpy(self) -> None:
        """Torch tensors and host arrays as plain NumPy arrays."""
        for key, value in self._stats.items():
            if _is_torch(value):
                self._stats[key] = value.detach().cpu().numpy()
            elif isinstance(value, OfficialTensor):
                self._stats[key] = np.asarray(value)


def _bool_masks(masks: Any, name: str = "masks") -> np.ndarray:
    """Any array-like (torch tensor included) of ``(..., H, W)`` masks as a NumPy bool array."""
    arr = as_numpy(masks)
    if arr.ndim < 2:
        raise InputError(f"{name} must be (..., H, W), got shape {arr.shape}")
    return arr.astype(bool)


def mask_to_rle_pytorch(tensor: Any) -> list[dict[str, Any]]:
    """``(B, H, W)`` bool masks (a torch tensor or any array) -> uncompressed RLEs
    ``{"size": [H, W], "counts": [...]}`` (column-major, starting with a run of zeros), as the official."""
    masks = _bool_masks(tensor, "tensor")
    if masks.ndim != 3:
        raise InputError(f"tensor must be (B, H, W) masks, got shape {masks.shape}")
    return mask_to_rle(masks)


def batched_mask_to_box(masks: Any) -> OfficialTensor:
    """``(C1, ..., H, W)`` masks -> ``(C1, ..., 4)`` int64 xyxy boxes (inclusive pixel indices;
    ``[0, 0, 0, 0]`` for an empty mask); an input with no elements gives float32 zeros, as the official."""
    arr = _bool_masks(masks)
    if arr.size == 0:
        return host_tensor(np.zeros((*arr.shape[:-2], 4), np.float32))
    return host_tensor(np.asarray(amg_ops.batched_mask_to_box(arr)).astype(np.int64))


def calculate_stability_score(masks: Any, mask_threshold: float, threshold_offset: float) -> OfficialTensor:
    """``(..., H, W)`` mask logits -> ``(...)`` float32 stability scores: the IoU of the masks
    thresholded at ``mask_threshold + threshold_offset`` and ``mask_threshold - threshold_offset``
    (0 / 0 gives NaN, as the official)."""
    logits = as_numpy(masks)
    if logits.ndim < 2:
        raise InputError(f"masks must be (..., H, W) logits, got shape {logits.shape}")
    inter = (logits > (mask_threshold + threshold_offset)).sum(axis=(-2, -1)).astype(np.float32)
    union = (logits > (mask_threshold - threshold_offset)).sum(axis=(-2, -1)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return host_tensor(np.asarray(inter / union, np.float32))


def box_xyxy_to_xywh(box_xyxy: Any) -> Any:
    """``[x0, y0, x1, y1]`` -> ``[x0, y0, w, h]`` (a copy; entries 2 and 3 minus entries 0 and 1, as
    the official indexes the first axis). A list gives a list, an array or tensor a host array."""
    if isinstance(box_xyxy, list):
        box = copy.deepcopy(box_xyxy)
    else:
        box = np.array(as_numpy(box_xyxy))
    if len(box) != 4:
        raise InputError(f"box_xyxy must hold 4 entries along its first axis, got {len(box)}")
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    return box if isinstance(box, list) else host_tensor(box)


def batch_iterator(batch_size: int, *args: Any) -> Generator[list[Any], None, None]:
    """Yield ``[arg[i:i + batch_size] for arg in args]`` over equal-length ``args`` (the last batch
    shorter)."""
    if not args or any(len(a) != len(args[0]) for a in args):
        raise InputError("Batched iteration must have inputs of all the same size.")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    n_batches = len(args[0]) // batch_size + int(len(args[0]) % batch_size != 0)
    for b in range(n_batches):
        yield [arg[b * batch_size : (b + 1) * batch_size] for arg in args]


def _offset(values: Any, offset: list[int]) -> OfficialTensor:
    """``values (..., k)`` plus the int ``offset`` (k entries), in torch's result dtype (a float
    input keeps its dtype, an integer one becomes int64)."""
    arr = as_numpy(values)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.int64
    return host_tensor(arr.astype(dtype) + np.asarray(offset, dtype))


def uncrop_boxes_xyxy(boxes: Any, crop_box: list[int]) -> OfficialTensor:
    """``(..., 4)`` xyxy boxes in a crop's frame -> the image frame (plus the crop's ``x0, y0``)."""
    x0, y0, _, _ = crop_box
    return _offset(boxes, [x0, y0, x0, y0])


def uncrop_points(points: Any, crop_box: list[int]) -> OfficialTensor:
    """``(..., 2)`` xy points in a crop's frame -> the image frame."""
    x0, y0, _, _ = crop_box
    return _offset(points, [x0, y0])


def uncrop_masks(masks: Any, crop_box: list[int], orig_h: int, orig_w: int) -> Any:
    """``(..., h, w)`` crop masks -> ``(..., orig_h, orig_w)``, zero outside the crop (the input as it
    is when the crop is the whole image)."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    arr = as_numpy(masks)
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    if pad_x - x0 < 0 or pad_y - y0 < 0 or arr.shape[-2:] != (y1 - y0, x1 - x0):
        raise InputError(f"masks {arr.shape} do not fit crop_box {crop_box} in a {orig_h}x{orig_w} image")
    widths = [(0, 0)] * (arr.ndim - 2) + [(y0, pad_y - y0), (x0, pad_x - x0)]
    return host_tensor(np.pad(arr, widths))


def is_box_near_crop_edge(boxes: Any, crop_box: list[int], orig_box: list[int], atol: float = EDGE_ATOL) -> Any:
    """``(N, 4)`` boxes in the crop's frame -> ``(N,)`` bool: a side within ``atol`` pixels of the
    crop's edge that is not also the image's edge (:func:`samhq_jax.amg_ops.is_box_near_crop_edge`)."""
    if atol != EDGE_ATOL:
        raise InputError(f"is_box_near_crop_edge takes the generator's atol={EDGE_ATOL} only, got {atol}")
    near = amg_ops.is_box_near_crop_edge(
        jnp.asarray(as_numpy(boxes)), jnp.asarray(crop_box, jnp.int32), jnp.asarray(orig_box, jnp.int32)
    )
    return host_tensor(near)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh`` pixels
    in one ``(H, W)`` bool mask (8-connectivity; a mask whose islands are all small keeps its largest).
    Returns ``(mask, changed)``; the mask as it was when nothing changed, as the official."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"mask must be (H, W), got shape {arr.shape}")
    out, changed = amg_ops.remove_small_regions(arr.astype(bool)[None], area_thresh, mode)
    return (out[0], True) if changed[0] else (mask, False)


__all__ = [
    "MaskData",
    "area_from_rle",
    "batch_iterator",
    "batched_mask_to_box",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle_pytorch",
    "remove_small_regions",
    "rle_to_mask",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]
