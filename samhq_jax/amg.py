"""``SamHQAutomaticMaskGenerator``: "segment everything" with the official generator's arguments,
defaults, records and order, compiled with static shapes.

    predictor = SamHQPredictor.from_pretrained("sam_hq_vit_b.pth")
    records = SamHQAutomaticMaskGenerator(predictor).generate(image)   # (H, W, 3) uint8 RGB
    records[0]["segmentation"]   # (H, W) bool; also "area", "bbox" (XYWH), "predicted_iou", ...

    generator = SamHQAutomaticMaskGenerator(MeshPredictor.from_pretrained("sam_hq_vit_b.pth"))
    per_image = generator.generate_images(images)    # one image per device, lanes at a time

Each crop of the image is encoded once; its grid points are decoded ``points_per_batch`` at a time,
each point a single positive prompt, in one compiled call per batch (the last batch padded and
masked out), and the official filters run on the device in a second compiled call
(:func:`samhq_jax.amg_ops.filter_batch`). Masks reach the host bit-packed (8x smaller); only the survivors are kept.
Box NMS within and across crops and the small-region clean-up follow the official code
(:mod:`samhq_jax.amg_ops`).

With a :class:`~samhq_jax.mesh_predictor.MeshPredictor`, :meth:`~SamHQAutomaticMaskGenerator.generate_images`
takes one image per device and runs them in lockstep: one encoder call per crop and one decoder
call per point batch for all of them, each device running the one-image program, and each image's
filters on its own device. An image's records are the same as on one device, bit for bit.

Precision and dtype: the generator has no setting of its own; every encode and decode is its
predictor's, so it runs under the predictor's :class:`~samhq_jax.precision.Policy`
(``predictor.policy``; ``SamHQPredictor(..., precision="highest", dtype="float32")`` by default,
see :mod:`samhq_jax.precision`). The filters run in float32 and do no matmul.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from samhq_jax.amg_ops import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    coco_encode_rle,
    filter_batch,
    generate_crop_boxes,
    mask_to_rle,
    nms,
    padded_size,
    pick_masks,
    remove_small_regions,
)
from samhq_jax.distributed import device_blocks
from samhq_jax.errors import InputError
from samhq_jax.mesh_predictor import MeshPredictor
from samhq_jax.predictor import SamHQPredictor, bucket_size, pad_prompts
from samhq_jax.prompt_check import check_finite
from samhq_jax.transforms import to_rgb_uint8

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class MaskSet:
    """Masks and their data, rows in one order: ``packed`` bit-packed masks of their crop's padded size
    (as :func:`~samhq_jax.amg_ops.filter_batch` packs them, zero-padded to the whole image's packed
    length),
    ``crop`` the index of that crop, ``boxes (N, 4)`` int xyxy in the image frame, ``iou (N,)`` /
    ``stability (N,)`` float32, ``points (N, 2)`` float64 xy in the image frame."""

    FIELDS = ("packed", "crop", "boxes", "iou", "stability", "points")

    def __init__(self, **fields: np.ndarray) -> None:
        self.__dict__.update(fields)

    def __len__(self) -> int:
        return len(self.iou)

    def take(self, index: np.ndarray) -> MaskSet:
        return MaskSet(**{k: getattr(self, k)[index] for k in self.FIELDS})

    @staticmethod
    def concat(parts: list[MaskSet]) -> MaskSet:
        return MaskSet(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in MaskSet.FIELDS})


def check_settings(
    points_per_side: int | None,
    points_per_batch: int,
    crop_n_layers: int,
    crop_n_points_downscale_factor: int,
    point_grids: list[np.ndarray] | None,
    output_mode: str,
) -> list[np.ndarray]:
    """Check the generator's grid, batch, crop and output settings (one-line ``InputError`` /
    ``ImportError``); return the point grid of each crop layer, ``(N_i, 2)`` float64 in ``[0, 1]``.
    ``samhq everything`` calls it before loading a checkpoint."""
    if (points_per_side is None) == (point_grids is None):
        raise InputError("give exactly one of points_per_side and point_grids")
    if output_mode not in OUTPUT_MODES:
        raise InputError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    if points_per_batch < 1 or crop_n_layers < 0 or crop_n_points_downscale_factor < 1:
        raise InputError(
            "need points_per_batch >= 1, crop_n_layers >= 0 and crop_n_points_downscale_factor >= 1, got "
            f"{points_per_batch}, {crop_n_layers}, {crop_n_points_downscale_factor}"
        )
    if output_mode == "coco_rle":
        coco_encode_rle({"size": [1, 1], "counts": [1]})  # fail now, not after the work
    if points_per_side is not None:
        if points_per_side < 1 or int(points_per_side / crop_n_points_downscale_factor**crop_n_layers) < 1:
            raise InputError(
                f"points_per_side={points_per_side} leaves no points in crop layer {crop_n_layers} "
                f"(downscale factor {crop_n_points_downscale_factor})"
            )
        return build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
    grids = [np.asarray(g, np.float64) for g in point_grids]
    if len(grids) != crop_n_layers + 1:
        raise InputError(f"point_grids needs one grid per layer ({crop_n_layers + 1}), got {len(grids)}")
    for i, g in enumerate(grids):
        if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
            raise InputError(f"point_grids[{i}] must be a non-empty (N, 2) array in [0, 1], got {g.shape}")
        check_finite(g, f"point_grids[{i}]")
        outside = np.nonzero(np.any((g < 0) | (g > 1), axis=1))[0]
        if outside.size:
            x, y = g[outside[0]]
            raise InputError(
                f"point_grids[{i}][{outside[0]}] = [{x:g}, {y:g}]: grid points are in [0, 1] (image fractions)"
            )
    return grids


class SamHQAutomaticMaskGenerator:
    """Masks for a whole image from a grid of point prompts, as the official
    ``SamAutomaticMaskGenerator`` (same arguments, defaults, filters, records and order).

    Args:
      predictor: a :class:`SamHQPredictor` (its image is replaced by each crop while generating,
        and reset after), or a :class:`~samhq_jax.mesh_predictor.MeshPredictor` (one image per
        device, see :meth:`generate_images`); its ``policy`` (precision, dtype) is the generator's.
      points_per_side: points along a side of the grid (``points_per_side^2`` in all); None when
        ``point_grids`` are given.
      points_per_batch: points decoded per compiled call.
      pred_iou_thresh: keep masks with predicted IoU above this (<= 0: no filter).
      stability_score_thresh: keep masks whose stability score is at least this (<= 0: no filter).
      stability_score_offset: the logit offset of the stability score.
      box_nms_thresh: box IoU above which a lower-scored mask of the same crop is dropped.
      crop_n_layers: extra layers of crops; layer ``i`` has ``(2^i)^2`` crops.
      crop_nms_thresh: box IoU above which a mask from a larger crop is dropped.
      crop_overlap_ratio: overlap of the first crop layer's crops, a fraction of the short side.
      crop_n_points_downscale_factor: layer ``i`` gets ``points_per_side / factor^i`` points a side.
      point_grids: explicit ``(N_i, 2)`` grids in ``[0, 1]`` xy, one per layer.
      min_mask_region_area: > 0 fills holes and removes islands smaller than this many pixels.
      output_mode: ``"binary_mask"`` (``(H, W)`` bool), ``"uncompressed_rle"`` or ``"coco_rle"``
        (needs pycocotools).
      progress: a progress bar over the point batches; None shows it when stderr is a terminal.
    """

    def __init__(
        self,
        predictor: SamHQPredictor,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        progress: bool | None = None,
    ) -> None:
        if not isinstance(predictor, (SamHQPredictor, MeshPredictor)):
            raise TypeError(f"predictor must be a SamHQPredictor or a MeshPredictor, got {type(predictor).__name__}")
        grids = check_settings(
            points_per_side, points_per_batch, crop_n_layers, crop_n_points_downscale_factor, point_grids, output_mode
        )
        self.predictor = predictor
        self.point_grids = grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.progress = progress

    def generate(
        self,
        image: np.ndarray,
        multimask_output: bool = True,
        hq_token_only: bool = False,
        image_is_set: bool = False,
    ) -> list[dict[str, Any]]:
        """Masks for the whole of ``image`` (``(H, W, 3)`` uint8 RGB; grayscale / RGBA converted).

        ``multimask_output``: each point's mask is the best of SAM's three plus the HQ mask (else
        SAM's single mask plus HQ); ``hq_token_only``: the HQ mask alone. ``image_is_set``: the
        predictor (a :class:`SamHQPredictor`) already holds ``image``'s embeddings (its
        ``set_image(image)``, or embeddings kept from it, e.g. by ``samhq serve``'s cache), so the
        whole-image crop is not encoded again; the records are the same. Only the image size is
        checked against the predictor's: giving another image's embeddings is the caller's error.

        Returns the official records, best first as the official orders them (an empty list when no
        mask survives): ``segmentation`` (``(H, W)`` bool, or an RLE dict), ``area`` int, ``bbox``
        ``[x, y, w, h]`` ints (inclusive pixel box: ``w = x1 - x0``), ``predicted_iou`` float,
        ``point_coords`` ``[[x, y]]``, ``stability_score`` float, ``crop_box`` ``[x, y, w, h]``.
        """
        if not image_is_set:
            return self.generate_images([image], multimask_output, hq_token_only)[0]
        image = to_rgb_uint8(image)
        p = self.predictor
        if not isinstance(p, SamHQPredictor):
            raise TypeError(f"image_is_set needs a SamHQPredictor, got {type(p).__name__}")
        if not p.is_image_set or tuple(p.original_size) != image.shape[:2]:
            held = f"one of {p.original_size[1]}x{p.original_size[0]}" if p.is_image_set else "none"
            raise InputError(
                f"image_is_set: the predictor must hold this {image.shape[1]}x{image.shape[0]} image's embeddings "
                f"(set_image), it holds {held}"
            )
        return self._generate([image], (multimask_output, hq_token_only), first_crop_set=True)[0]

    def generate_images(
        self, images: list[np.ndarray], multimask_output: bool = True, hq_token_only: bool = False
    ) -> list[list[dict[str, Any]]]:
        """:meth:`generate`'s records for each of ``images``, in order.

        With a :class:`~samhq_jax.mesh_predictor.MeshPredictor`, ``predictor.lanes`` images at a
        time, one per device: each crop of all of them encoded in one call, each point batch decoded
        in one call, the filters of each image on its own device. Every device runs the one-image
        programs, so an image's records do not depend on the device count or on the other images.
        With a :class:`SamHQPredictor`, one image after the other.
        """
        images = [to_rgb_uint8(image) for image in images]
        lanes = self.predictor.lanes if isinstance(self.predictor, MeshPredictor) else 1
        flags = multimask_output, hq_token_only
        return [
            records
            for start in range(0, len(images), lanes)
            for records in self._generate(images[start : start + lanes], flags)
        ]

    def _generate(
        self, images: list[np.ndarray], flags: tuple[bool, bool], first_crop_set: bool = False
    ) -> list[list[dict[str, Any]]]:
        """The records of 1 to ``lanes`` RGB images, generated in lockstep (their crops differ in
        size, not in number: crop ``i`` of every image is in the same layer). ``first_crop_set``:
        the predictor already holds the embeddings of crop 0 (the whole image, one image)."""
        crops = [generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio) for image in images]
        for image, (boxes, _) in zip(images, crops, strict=True):
            empty = next((b for b in boxes if b[2] <= b[0] or b[3] <= b[1]), None)
            if empty is not None:  # the official fails on such a crop too
                h, w = image.shape[:2]
                raise InputError(
                    f"crop_n_layers={self.crop_n_layers} cuts a {w}x{h} image into empty crops (e.g. {empty}); "
                    "use fewer crop layers for so small an image"
                )
        layers = crops[0][1]
        batches = [self._batch_size(len(self.point_grids[layer])) for layer in layers]
        total = sum(-(-len(self.point_grids[layer]) // b) for layer, b in zip(layers, batches, strict=True))
        shown = sys.stderr.isatty() if self.progress is None else self.progress
        try:
            with tqdm(total=total, desc="segment everything", unit="batch", disable=not shown, leave=False) as bar:
                parts = [
                    self._process_crops(
                        images, [boxes[i] for boxes, _ in crops], i, layer, batch, flags, bar, first_crop_set and i == 0
                    )
                    for i, (layer, batch) in enumerate(zip(layers, batches, strict=True))
                ]
        finally:
            if isinstance(self.predictor, MeshPredictor):
                self.predictor.reset_images()
            else:
                self.predictor.reset_image()
        return [
            self._image_records(image, [crop_parts[lane] for crop_parts in parts], boxes)
            for lane, (image, (boxes, _)) in enumerate(zip(images, crops, strict=True))
        ]

    def _image_records(self, image: np.ndarray, parts: list[MaskSet], crop_boxes: list[list[int]]) -> list[dict]:
        """One image's records from the masks kept in each of its crops: NMS across crops, uncrop,
        small regions."""
        data = MaskSet.concat(parts)
        if len(crop_boxes) > 1:  # duplicates between crops: the smaller crop's mask wins
            areas = np.array([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in crop_boxes], np.float32)
            data = data.take(nms(data.boxes, np.float32(1) / areas[data.crop], self.crop_nms_thresh))
        masks = _uncrop(data, crop_boxes, image.shape[:2])
        if self.min_mask_region_area > 0 and len(data):
            data, masks = self._remove_small_regions(data, masks)
        # The official concatenates each crop's ``crop_boxes`` tensor; a crop that kept no mask adds
        # ``torch.tensor([])`` (float32), which promotes the whole column: then every record's
        # ``crop_box`` holds floats (e.g. ``[0.0, 0.0, 640.0, 480.0]``), else ints.
        float_crops = len(crop_boxes) > 1 and any(len(part) == 0 for part in parts)
        return self._records(data, masks, crop_boxes, float_crops)

    def _batch_size(self, n_points: int) -> int:
        """Points per compiled call for a crop of ``n_points``: ``points_per_batch``, or fewer (a
        power of two) when the whole grid is smaller."""
        return min(self.points_per_batch, bucket_size(n_points))

    def _process_crops(
        self,
        images: list[np.ndarray],
        crop_boxes: list[list[int]],
        index: int,
        layer: int,
        batch: int,
        flags: tuple[bool, bool],
        bar: tqdm,
        encoded: bool = False,
    ) -> list[MaskSet]:
        """Crop ``index`` of each image (``crop_boxes[i]`` of ``images[i]``): encode (unless
        ``encoded``: the predictor holds it already), decode and filter its grid in batches, NMS
        within the crop; boxes and points move to the image frame. One :class:`MaskSet` per image."""
        p = self.predictor
        crops = [image[y0:y1, x0:x1] for image, (x0, y0, x1, y1) in zip(images, crop_boxes, strict=True)]
        if isinstance(p, MeshPredictor):
            p.set_images(crops)
            input_sizes = p.input_sizes
        else:
            if not encoded:
                p.set_image(crops[0])
            input_sizes = [p.input_size]
        points = [self.point_grids[layer] * np.array(crop.shape[:2])[None, ::-1] for crop in crops]
        model_points = [
            p.transform.apply_coords(pts, crop.shape[:2]).astype(np.float32)
            for pts, crop in zip(points, crops, strict=True)
        ]
        thresholds = np.array(
            [self.pred_iou_thresh, self.stability_score_thresh, self.stability_score_offset], np.float32
        )
        parts: list[list[MaskSet]] = [[] for _ in images]
        for start in range(0, len(points[0]), batch):
            chunks = [m[start : start + batch] for m in model_points]
            if isinstance(p, MeshPredictor):
                low_res, iou = p.decode_points(chunks, batch, *flags)
                blocks = device_blocks(low_res)
                places = [block.sharding for block in blocks]  # each image's filters on its device
            else:
                low_res, iou = p.decode_points(chunks[0], batch, *flags)
                blocks, places = [low_res], [None]
            k = low_res.shape[2]  # masks per point, point-major as the official flattens them
            ious = jax.device_get(iou).reshape(iou.shape[0], -1)
            pending = [  # every image's filters start, on its device, before any result is read
                self._filter(
                    blocks[i],
                    places[i],
                    ious[i],
                    len(chunks[i]),
                    crop_boxes[i],
                    images[i],
                    input_sizes[i],
                    crops[i],
                    thresholds,
                )
                for i in range(len(images))
            ]
            for i, (picks, res) in enumerate(pending):
                chunk_points = np.repeat(points[i][start : start + batch], k, axis=0)
                parts[i].append(self._kept(picks, res, ious[i], chunk_points, index, images[i].shape[:2]))
            bar.update()
        out = []
        for lane_parts, (x0, y0, _, _) in zip(parts, crop_boxes, strict=True):
            data = MaskSet.concat(lane_parts)
            data = data.take(nms(data.boxes, data.iou, self.box_nms_thresh))
            data.boxes = data.boxes + np.array([x0, y0, x0, y0])
            data.points = data.points + np.array([x0, y0])
            out.append(data)
        return out

    def _filter(
        self,
        low_res: jax.Array,
        place: jax.sharding.Sharding | None,
        iou: np.ndarray,
        n: int,
        crop_box: list[int],
        image: np.ndarray,
        input_size: tuple[int, int],
        crop: np.ndarray,
        thresholds: np.ndarray,
    ) -> tuple[np.ndarray, Any]:
        """Start the official filters of one image's point batch, ``low_res (1, B, K, 4G, 4G)``
        logits and ``iou (B * K,)`` (the first ``n`` points real), on the device ``place`` (the
        logits' sharding; None: the default device). Only the masks above ``pred_iou_thresh`` are
        upscaled (the official drops the rest first), gathered into a power-of-two count (one
        compile per count and padded crop size). Returns the picked flat indices and the device
        result (None when no mask is a candidate)."""
        batch, k = low_res.shape[1], low_res.shape[2]
        candidates = np.repeat(np.arange(batch) < n, k)
        if self.pred_iou_thresh > 0:
            candidates &= iou > self.pred_iou_thresh
        candidates = np.nonzero(candidates)[0]
        if not len(candidates):
            return candidates, None
        picks = pad_prompts(candidates, bucket_size(len(candidates)))
        orig_box = np.array([0, 0, image.shape[1], image.shape[0]], np.int32)
        on_device = jax.device_put(
            (
                picks,
                iou[picks],
                np.arange(len(picks)) < len(candidates),
                np.array(crop_box, np.int32),
                orig_box,
                thresholds,
            ),
            place,
        )
        res = filter_batch(
            pick_masks(low_res, on_device[0]),
            *on_device[1:],
            input_size,
            crop.shape[:2],
            self.predictor.config.img_size,
        )
        return picks, res

    def _kept(
        self, picks: np.ndarray, res: Any, iou: np.ndarray, points: np.ndarray, index: int, size: tuple[int, int]
    ) -> MaskSet:
        """The masks of one image's point batch that pass the filters (:meth:`_filter`'s ``picks``
        and device result ``res``; ``iou (B * K,)``, ``points (B * K, 2)`` of every mask), bit-packed
        and zero-padded to the packed length of the whole image (``size``), the longest any crop
        packs to."""
        padded_h, padded_w = padded_size(size)
        packed_width = padded_h * padded_w // 8
        keep = picks[:0]
        packed = np.zeros((0, packed_width), np.uint8)
        boxes, stability = np.zeros((0, 4), np.int64), np.zeros(0, np.float32)
        if res is not None:
            res = jax.device_get(res)
            kept = np.nonzero(res.keep)[0]
            keep = picks[kept]
            packed = np.zeros((len(keep), packed_width), np.uint8)
            packed[:, : res.packed.shape[1]] = res.packed[kept]
            boxes, stability = res.boxes[kept].astype(np.int64), res.stability[kept]
        return MaskSet(
            packed=packed,
            crop=np.full(len(keep), index),
            boxes=boxes,
            iou=iou[keep],
            stability=stability,
            points=points[keep],
        )

    def _remove_small_regions(self, data: MaskSet, masks: np.ndarray) -> tuple[MaskSet, np.ndarray]:
        """The official ``postprocess_small_regions``: fill small holes, drop small islands, then NMS
        again preferring masks that did not change."""
        masks, holes = remove_small_regions(masks, self.min_mask_region_area, "holes")
        masks, islands = remove_small_regions(masks, self.min_mask_region_area, "islands")
        boxes = batched_mask_to_box(masks).astype(np.int64)  # on the host: no compile per image size
        scores = (~(holes | islands)).astype(np.float32)
        keep = nms(boxes, scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        data = data.take(keep)
        data.boxes = boxes[keep]
        return data, masks[keep]

    def _records(
        self, data: MaskSet, masks: np.ndarray, crop_boxes: list[list[int]], float_crops: bool = False
    ) -> list[dict[str, Any]]:
        """The official record per mask, in ``data``'s order; ``crop_box`` values as floats with
        ``float_crops`` (see :meth:`_image_records`), else ints."""
        kind = float if float_crops else int
        if self.output_mode == "binary_mask":
            segmentations: list[Any] = list(masks)
        else:
            segmentations = mask_to_rle(masks)
            if self.output_mode == "coco_rle":
                segmentations = [coco_encode_rle(r) for r in segmentations]
        areas = masks.sum(axis=(1, 2))
        records = []
        for i, segmentation in enumerate(segmentations):
            x0, y0, x1, y1 = data.boxes[i].tolist()
            cx0, cy0, cx1, cy1 = crop_boxes[data.crop[i]]
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(areas[i]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(data.iou[i]),
                    "point_coords": [data.points[i].tolist()],
                    "stability_score": float(data.stability[i]),
                    "crop_box": [kind(v) for v in (cx0, cy0, cx1 - cx0, cy1 - cy0)],
                }
            )
        return records


def _uncrop(data: MaskSet, crop_boxes: list[list[int]], orig_size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W)`` bool full-image masks from ``data``'s bit-packed crop masks (zeros outside the
    crop)."""
    h, w = orig_size
    out = np.zeros((len(data), h, w), bool)
    for c in np.unique(data.crop):
        rows = np.nonzero(data.crop == c)[0]
        x0, y0, x1, y1 = crop_boxes[c]
        height, width = padded_size((y1 - y0, x1 - x0))
        bits = np.unpackbits(data.packed[rows], axis=-1, count=height * width).astype(bool)
        out[rows, y0:y1, x0:x1] = bits.reshape(-1, height, width)[:, : y1 - y0, : x1 - x0]
    return out
