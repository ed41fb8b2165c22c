"""The pieces of automatic mask generation, with the official ``segment_anything_hq.utils.amg``
semantics: point grids, crop boxes, the per-batch filters (on the device), box NMS
(torchvision's ``batched_nms`` with one category), uncompressed RLE and the small-region clean-up.

Boxes are ``xyxy`` with inclusive pixel indices (a one-pixel mask has the box ``[x, y, x, y]``),
as the official ``batched_mask_to_box`` makes them. Nothing here loops over masks in Python: the
filters run on a whole point batch in one compiled call, NMS is one compiled loop over the boxes,
connected components are labelled for many masks in one ``scipy.ndimage.label`` call.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import product
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samhq_jax.errors import InputError
from samhq_jax.transforms import MASK_THRESHOLD, Taps, apply_taps, bucket_side, output_taps, to_square_frame

EDGE_ATOL = 20.0  # pixels: a box this close to a crop edge (not an image edge) is dropped
REGION_CHUNK = 16  # masks labelled per scipy.ndimage.label call in remove_small_regions


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n^2, 2)`` float64 xy points at the centres of an ``n x n`` grid on ``[0, 1]^2``, x fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer: layer ``i`` has ``int(n_per_side / scale_per_layer**i)`` points a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """The whole image, then for layer ``i`` (1-based) a ``2^i x 2^i`` set of overlapping crops.

    Returns ``(crop_boxes, layer_idxs)``: ``[x0, y0, x1, y1]`` int boxes (x1 / y1 exclusive) in
    the official order (the whole image first; within a layer, x0 outer, y0 inner).
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops)

    for i_layer in range(n_layers):
        n_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_side))
        crop_w, crop_h = crop_len(im_w, n_side, overlap), crop_len(im_h, n_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def batched_mask_to_box(masks: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """``(..., H, W)`` bool masks -> ``(..., 4)`` int32 xyxy boxes (inclusive); ``[0, 0, 0, 0]`` for an
    empty mask. NumPy masks are boxed in NumPy (nothing compiled per mask size), JAX arrays in JAX."""
    xp = np if isinstance(masks, np.ndarray) else jnp
    return _box_from_projections(masks.any(axis=-1), masks.any(axis=-2), xp)


def _box_from_projections(rows: jax.Array, cols: jax.Array, xp: object = jnp) -> jax.Array:
    """Boxes from ``(..., H)`` / ``(..., W)`` bool: whether each row / column holds a mask pixel."""
    h, w = rows.shape[-1], cols.shape[-1]
    ys, xs = xp.arange(h, dtype=np.int32), xp.arange(w, dtype=np.int32)
    bottom = xp.max(xp.where(rows, ys, 0), axis=-1)
    top = xp.min(xp.where(rows, ys, h), axis=-1)
    right = xp.max(xp.where(cols, xs, 0), axis=-1)
    left = xp.min(xp.where(cols, xs, w), axis=-1)
    empty = (right < left) | (bottom < top)
    return (xp.stack([left, top, right, bottom], axis=-1) * ~empty[..., None]).astype(np.int32)


def is_box_near_crop_edge(boxes: jax.Array, crop_box: jax.Array, orig_box: jax.Array) -> jax.Array:
    """``(N, 4)`` boxes in the crop's frame -> ``(N,)`` bool: a side within ``EDGE_ATOL`` pixels of
    the crop's edge that is not also the image's edge."""
    x0, y0 = crop_box[0], crop_box[1]
    boxes = (boxes + jnp.stack([x0, y0, x0, y0])).astype(jnp.float32)
    near_crop = jnp.abs(boxes - crop_box.astype(jnp.float32)) <= EDGE_ATOL
    near_image = jnp.abs(boxes - orig_box.astype(jnp.float32)) <= EDGE_ATOL
    return jnp.any(near_crop & ~near_image, axis=-1)


class BatchResult(NamedTuple):
    """One point batch after the filters (device arrays; P = the padded batch size).

    keep: ``(P,)`` bool, the masks that pass every filter (padding never does); boxes: ``(P, 4)``
    int32 xyxy in the crop's frame; stability: ``(P,)`` float32; packed: ``(P, Hp * Wp / 8)``
    uint8, the ``(h, w)`` crop-size masks zero-padded to ``(Hp, Wp) =`` :func:`padded_size`,
    flattened row-major and bit-packed (``np.packbits``).
    """

    keep: jax.Array
    boxes: jax.Array
    stability: jax.Array
    packed: jax.Array


COUNT_CHUNK = 128  # row pixels counted in uint8 before widening (<= 255): XLA CPU's fast path
BIT_OUTER, BIT_MASK, BIT_INNER = 1, 2, 4  # x > t - offset, x > t, x > t + offset (t = MASK_THRESHOLD)


@jax.jit
def pick_masks(low_res: jax.Array, picks: jax.Array) -> jax.Array:
    """``(1, B, K, 4G, 4G)`` logits of a point batch (:meth:`SamHQPredictor.decode_points`) ->
    ``(P, 4G, 4G)``, the masks at the flat (point-major) indices ``picks (P,)`` int."""
    return low_res.reshape(-1, *low_res.shape[-2:])[picks]


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """The padded ``(Hp, Wp)`` a crop of ``size = (h, w)`` is filtered and packed at
    (:func:`~samhq_jax.transforms.bucket_side` of each side; ``Wp`` a multiple of :data:`COUNT_CHUNK`)."""
    return bucket_side(size[0]), bucket_side(size[1])


def filter_batch(
    low_res: jax.Array,
    iou: jax.Array,
    valid: jax.Array,
    crop_box: jax.Array,
    orig_box: jax.Array,
    thresholds: jax.Array,
    input_size: tuple[int, int],
    crop_size: tuple[int, int],
    long_side: int,
) -> BatchResult:
    """The official ``_process_batch`` filters for P masks of one crop, on the device.

    Args:
      low_res: ``(P, 4G, 4G)`` low-res mask logits; iou: ``(P,)`` predicted IoUs; valid: ``(P,)``
        bool, False for padding.
      crop_box / orig_box: ``(4,)`` int32 xyxy of the crop and of the whole image.
      thresholds: ``(3,)`` float32 ``(pred_iou_thresh, stability_score_thresh,
        stability_score_offset)``; a threshold <= 0 disables its filter, as the official.
      input_size / crop_size: the crop resized into the model's input frame, and its own size.

    The masks are upscaled to the crop size as logits (the official ``postprocess_masks``, to the
    bit), compared with the three thresholds, scored for stability, boxed and dropped when near a
    crop edge. Three compiled calls with their outputs materialised between them: fused into one
    program, XLA CPU recomputes the upscaling inside every reduction that reads it (measured, 64
    masks to 1365 x 2048: 16 s as one program, 1.4 s as three). The crop size is data (the
    upscaling taps of :func:`~samhq_jax.transforms.output_taps` and ``(h, w)``), the shapes are
    :func:`padded_size`: the three compile once per batch bucket and padded size, not per crop size.
    """
    rows, columns, size = jax.device_put((*output_taps(input_size, crop_size), np.asarray(crop_size, np.int32)))
    codes = _threshold_codes(_upscale_columns(low_res, columns, long_side), thresholds, rows, size)
    return _filter_codes(codes, iou, valid, crop_box, orig_box, thresholds)


@partial(jax.jit, static_argnames=("long_side",))
def _upscale_columns(low_res: jax.Array, columns: Taps, long_side: int) -> jax.Array:
    """``upscale_padded`` but its last step (rows): ``(P, 4G, 4G)`` -> ``(P, long_side, Wp)`` float32."""
    return apply_taps(to_square_frame(low_res, long_side), columns, 2)


@jax.jit
def _threshold_codes(columns: jax.Array, thresholds: jax.Array, rows: Taps, size: jax.Array) -> jax.Array:
    """The rows step of the upscaling and the three comparisons: ``(P, Hp, Wp)`` uint8 of
    ``BIT_OUTER | BIT_MASK | BIT_INNER`` flags, zero outside the crop's ``size = (h, w)``; the
    stability offset is ``thresholds[2]`` (:func:`filter_batch`)."""
    offset = thresholds[2]
    x = apply_taps(columns, rows, 1)
    codes = (
        (x > MASK_THRESHOLD - offset).astype(jnp.uint8) * BIT_OUTER
        + (x > MASK_THRESHOLD).astype(jnp.uint8) * BIT_MASK
        + (x > MASK_THRESHOLD + offset).astype(jnp.uint8) * BIT_INNER
    )
    inside = (jnp.arange(x.shape[1]) < size[0])[:, None] & (jnp.arange(x.shape[2]) < size[1])[None, :]
    return jnp.where(inside, codes, jnp.uint8(0))


def _count(flags: jax.Array) -> jax.Array:
    """``(P, h, W)`` bool (W a multiple of COUNT_CHUNK) -> ``(P,)`` int32 set pixels: uint8 sums
    over row chunks first (XLA CPU sums narrow integers far faster than wide ones)."""
    p, h, w = flags.shape
    chunks = flags.astype(jnp.uint8).reshape(p, h, w // COUNT_CHUNK, COUNT_CHUNK)
    return jnp.sum(jnp.sum(chunks, axis=-1, dtype=jnp.uint8), axis=(1, 2), dtype=jnp.int32)


@jax.jit
def _filter_codes(
    codes: jax.Array,
    iou: jax.Array,
    valid: jax.Array,
    crop_box: jax.Array,
    orig_box: jax.Array,
    thresholds: jax.Array,
) -> BatchResult:
    """:func:`filter_batch` from the threshold codes ``(P, Hp, Wp)`` (the zero padding changes no
    count and no box: it holds no mask pixel)."""
    iou_thresh, stability_thresh = thresholds[0], thresholds[1]
    stability = _count(codes & BIT_INNER > 0) / _count(codes & BIT_OUTER > 0)
    masks = codes & BIT_MASK
    rows, cols = masks.max(axis=-1) > 0, masks.max(axis=-2) > 0
    boxes = _box_from_projections(rows, cols)
    keep = valid & ((iou > iou_thresh) | (iou_thresh <= 0))
    keep &= (stability >= stability_thresh) | (stability_thresh <= 0)
    keep &= ~is_box_near_crop_edge(boxes, crop_box, orig_box)
    packed = jnp.packbits((masks > 0).reshape(masks.shape[0], -1), axis=-1)
    return BatchResult(keep, boxes, stability, packed)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy box NMS as torchvision's ``nms`` / ``batched_nms`` with one category.

    Args:
      boxes: ``(N, 4)`` xyxy (compared in float32, area ``(x1 - x0) * (y1 - y0)``).
      scores: ``(N,)``; the order is a stable descending sort (ties keep the input order, as
        torchvision's CPU kernel sorts).
      iou_threshold: a box goes when its IoU with a kept, higher-scored box is above this.

    Returns:
      ``(K,)`` int64 indices of the kept boxes, highest score first.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    size = 1 << (n - 1).bit_length()  # bucketed: one compile per power of two
    padded = np.zeros((size, 4), np.float32)
    padded[:n] = np.asarray(boxes, np.float32)[order]
    kept = jax.device_get(_greedy_nms(*jax.device_put((padded, np.arange(size) < n, np.float32(iou_threshold)))))
    return order[kept[:n]]


@jax.jit
def _greedy_nms(boxes: jax.Array, valid: jax.Array, threshold: jax.Array) -> jax.Array:
    """``(N, 4)`` boxes sorted by score -> ``(N,)`` bool kept, torchvision's arithmetic: a box is
    suppressed by an earlier kept box when ``inter / (area_i + area_j - inter) > threshold`` (a
    0/0 IoU of two zero-area boxes is NaN and suppresses nothing)."""
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0) * (y1 - y0)
    later = jnp.arange(boxes.shape[0])

    def step(i: jax.Array, suppressed: jax.Array) -> jax.Array:
        w = jnp.maximum(0.0, jnp.minimum(x1[i], x1) - jnp.maximum(x0[i], x0))
        h = jnp.maximum(0.0, jnp.minimum(y1[i], y1) - jnp.maximum(y0[i], y0))
        inter = w * h
        over = inter / (area[i] + area - inter) > threshold
        return suppressed | (~suppressed[i] & over & (later > i))

    return ~jax.lax.fori_loop(0, boxes.shape[0], step, ~valid)


def mask_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """``(N, H, W)`` bool masks -> uncompressed RLEs ``{"size": [H, W], "counts": [...]}`` in
    column-major order, starting with a run of zeros (length 0 when the first pixel is set), as
    pycocotools expects."""
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    if n == 0:
        return []
    # The changes of the column-major order, found without transposing the masks (a transposing
    # copy cost more than the rest): pixel (y, x) is at x * h + y; a run ends between (y, x) and
    # (y + 1, x), and between the last pixel of column x - 1 and the first of column x.
    # (np.flatnonzero and divmod: np.nonzero of a 3-d array took 100x longer than of a flat one)
    mask, pixel = np.divmod(np.flatnonzero(masks[:, 1:] != masks[:, :-1]), max((h - 1) * w, 1))
    y, x = np.divmod(pixel, w)
    inside = mask * (h * w) + x * h + y + 1
    mask_b, x_b = np.divmod(np.flatnonzero(masks[:, 0, 1:] != masks[:, -1, :-1]), max(w - 1, 1))
    between = mask_b * (h * w) + (x_b + 1) * h
    changes = np.sort(np.concatenate([inside, between]))
    per_mask = np.split(changes, np.searchsorted(changes, np.arange(1, n) * (h * w)))
    out = []
    for i, positions in enumerate(per_mask):
        counts = np.diff(np.concatenate([[0], positions - i * h * w, [h * w]])).tolist()
        out.append({"size": [h, w], "counts": ([0] if masks[i, 0, 0] else []) + counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """An uncompressed RLE -> ``(H, W)`` bool mask (the inverse of :func:`mask_to_rle`)."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], np.int64)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Set pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """An uncompressed RLE -> COCO's compressed RLE (``counts`` a str), through pycocotools."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:
        raise ImportError("output_mode='coco_rle' needs pycocotools: pip install pycocotools") from err
    h, w = rle["size"]
    coco = mask_utils.frPyObjects(rle, h, w)
    coco["counts"] = coco["counts"].decode("utf-8")
    return coco


def remove_small_regions(masks: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``
    pixels in each of ``(N, H, W)`` bool masks, with 8-connectivity, as the official
    ``remove_small_regions`` does with OpenCV (a mask whose islands are all small keeps its largest,
    the first in raster order on a tie).

    Returns ``(masks, changed)``: the new masks and ``(N,)`` bool, whether each one changed.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise InputError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connectivity inside a mask, none across masks
    out, changed = masks.copy(), np.zeros(len(masks), bool)
    for start in range(0, len(masks), REGION_CHUNK):
        chunk = masks[start : start + REGION_CHUNK]
        regions, count = ndimage.label(chunk ^ holes, structure)
        sizes = np.bincount(regions.ravel(), minlength=count + 1)
        owner = np.zeros(count + 1, np.int64)  # which mask of the chunk each region lies in
        owner[regions.ravel()] = np.repeat(np.arange(len(chunk)), chunk[0].size)
        small = sizes < area_thresh
        small[0] = False
        has_small = np.bincount(owner[small], minlength=len(chunk)) > 0
        flip = small.copy()
        if not holes:  # a mask whose islands are all small keeps its largest (first on a tie)
            ids = np.arange(1, count + 1)
            own, size = owner[1:], sizes[1:]
            order = np.lexsort((ids, -size, own))
            first = order[np.r_[True, own[order][1:] != own[order][:-1]]] if count else order
            regions_per_mask = np.bincount(own, minlength=len(chunk))
            all_small = has_small & (np.bincount(owner[small], minlength=len(chunk)) == regions_per_mask)
            flip[ids[first][all_small[own[first]]]] = False
        new = np.where(flip[regions], holes, chunk)
        out[start : start + REGION_CHUNK] = new
        changed[start : start + REGION_CHUNK] = has_small
    return out, changed
