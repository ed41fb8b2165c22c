"""Automatic mask generation equals the official ``SamAutomaticMaskGenerator``.

Seeded random weights give masks that barely depend on the point (one record survives NMS), so
the proof has two parts:

* the whole generator logic (IoU and stability filters, upscaling, thresholding, boxes, crop-edge
  filter, uncrop, NMS within and across crops, small-region clean-up, RLE) on a synthetic scene:
  both generators get the same fake decoder, which returns for each point the low-res logits of
  the coloured object under it (dozens of overlapping objects with holes and specks), so every
  filter has work to do;
* end to end, with the same seeded random weights on a real photo, thresholds off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from segment_anything_hq import SamAutomaticMaskGenerator
from segment_anything_hq.utils import amg as official_amg

from eval.parity.samples import IMAGES_DIR
from samhq_jax import amg_ops
from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.predictor import SamHQPredictor
from tests.conftest import official_model_and_params

PRESET = "tiny_h"
SCORE_ATOL = 1e-4
# End-to-end runs compare at least this many records, one by one. Random weights give every point a
# whole-image mask, so box NMS (threshold 0.7) leaves one record; box_nms_thresh=1 keeps them all.
MANY_RECORDS = 16
N_OBJECTS = 40


def synthetic_scene(seed: int = 0, size: tuple[int, int] = (300, 420)) -> np.ndarray:
    """``(H, W, 3)`` uint8: overlapping rectangles and ellipses, later ones on top, each its own
    colour; every fifth with a small hole, every third with a small speck of its colour just
    outside it (an island)."""
    rng = np.random.default_rng(seed)
    h, w = size
    labels = np.zeros((h, w), np.int64)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, N_OBJECTS + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(8, h / 7), rng.uniform(8, w / 7)
        if k % 2:
            shape = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        else:
            shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        if k % 5 == 0:
            shape &= ~((np.abs(yy - cy) < 2) & (np.abs(xx - cx) < 3))
        if k % 3 == 0:
            y, x = int(np.clip(cy + ry + 4, 0, h - 2)), int(np.clip(cx, 0, w - 3))
            shape[y : y + 2, x : x + 3] = True
        labels[shape] = k
    palette = rng.permutation(256**3)[: N_OBJECTS + 1]
    colours = np.stack([palette >> 16, (palette >> 8) & 255, palette & 255], -1).astype(np.uint8)
    return colours[labels]


class FakeDecoder:
    """For a point, the low-res logits of the coloured region under it, in the model's input
    frame, from the image last set; a predicted IoU per colour. ``set_image`` / ``decode`` take
    NumPy and return NumPy; the adapters below plug it into either generator."""

    def __init__(self, img_size: int) -> None:
        self.img_size = img_size
        self.image: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
        self.image = image
        h, w = image.shape[:2]
        scale = self.img_size / max(h, w)
        self.input_size = int(h * scale + 0.5), int(w * scale + 0.5)
        self.original_size = h, w
        return self.input_size, self.original_size

    def decode(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, 2)`` xy in the input frame -> ``(B, 1, 4G, 4G)`` float32 logits, ``(B, 1)`` IoU."""
        points = np.asarray(points, np.float32)  # the official passes float64, ours float32
        h, w = self.original_size
        colours = self.image.reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1])
        colours = colours.reshape(h, w)
        low = self.img_size // 4
        out = np.zeros((len(points), 1, low, low), np.float32)
        ious = np.zeros((len(points), 1), np.float32)
        scale = self.img_size / max(h, w)
        for i, (x, y) in enumerate(points):
            px = min(int(x / scale), w - 1)
            py = min(int(y / scale), h - 1)
            colour = colours[py, px]
            same = colours == colour
            parts, _ = ndimage.label(same, np.ones((3, 3)))
            ys, xs = np.nonzero(parts == parts[py, px])
            near = np.zeros_like(same)  # the point's region and same-coloured specks around it
            near[max(ys.min() - 12, 0) : ys.max() + 13, max(xs.min() - 12, 0) : xs.max() + 13] = True
            region = (same & near).astype(np.float32)
            # logits of varying sharpness: larger magnitudes give steadier masks
            sharp = 8.0 + 6.0 * (colour % 7)
            logits = torch.from_numpy(region * 2 * sharp - sharp)[None, None]
            frame = F.interpolate(logits, self.input_size, mode="bilinear", align_corners=False)
            pad = (0, self.img_size - self.input_size[1], 0, self.img_size - self.input_size[0])
            frame = F.pad(frame, pad, value=-sharp)
            out[i, 0] = F.interpolate(frame, (low, low), mode="bilinear", align_corners=False)[0, 0].numpy()
            ious[i, 0] = 0.8 + 0.2 * ((colour * 2654435761) % 1000) / 1000
        return out, ious


def official_generator(model: torch.nn.Module, fake: FakeDecoder, **kwargs: object) -> SamAutomaticMaskGenerator:
    """The official generator with its predictor's image encoding and decoding replaced by ``fake``
    (the rest of the official code, ``postprocess_masks`` included, runs as it is)."""
    gen = SamAutomaticMaskGenerator(model, **kwargs)
    predictor = gen.predictor

    def set_image(image: np.ndarray, image_format: str = "RGB") -> None:
        predictor.input_size, predictor.original_size = fake.set_image(image)
        predictor.is_image_set = True

    def predict_torch(point_coords, point_labels, multimask_output=True, return_logits=False):
        low_res, iou = fake.decode(point_coords[:, 0].numpy())
        low_res = torch.from_numpy(low_res)
        masks = model.postprocess_masks(low_res, predictor.input_size, predictor.original_size)
        if not return_logits:
            masks = masks > model.mask_threshold
        return masks, torch.from_numpy(iou), low_res

    predictor.set_image = set_image
    predictor.predict_torch = predict_torch
    return gen


def our_generator(config: object, params: dict, fake: FakeDecoder, **kwargs: object) -> SamHQAutomaticMaskGenerator:
    """Ours with the predictor's encoding and compiled decode replaced by ``fake``."""
    predictor = SamHQPredictor(config, params)

    def set_image(image: np.ndarray, image_format: str = "RGB") -> None:
        predictor.input_size, predictor.original_size = fake.set_image(image)
        predictor.embeddings = "fake"

    def decode(variables, embeddings, points, labels, multimask_output, hq_token_only):
        low_res, iou = fake.decode(np.asarray(points)[0, :, 0])
        return low_res[None], iou[None]

    predictor.set_image = set_image
    predictor._decode = decode
    return SamHQAutomaticMaskGenerator(predictor, **kwargs)


def assert_same_records(ours: list[dict], ref: list[dict]) -> None:
    assert len(ours) == len(ref), f"{len(ours)} records vs the official {len(ref)}"
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a.keys() == b.keys()
        assert a["bbox"] == b["bbox"], f"record {i}: bbox {a['bbox']} vs {b['bbox']}"
        assert a["crop_box"] == b["crop_box"], f"record {i}"
        assert a["area"] == b["area"], f"record {i}: area {a['area']} vs {b['area']}"
        np.testing.assert_allclose(a["point_coords"], b["point_coords"], rtol=0, atol=1e-9)
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= SCORE_ATOL, f"record {i}"
        assert abs(a["stability_score"] - b["stability_score"]) <= SCORE_ATOL, f"record {i}"
        if isinstance(a["segmentation"], dict):
            assert a["segmentation"] == b["segmentation"], f"record {i}: RLE differs"
        else:
            np.testing.assert_array_equal(a["segmentation"], b["segmentation"], err_msg=f"record {i}")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(points_per_side=12),
        dict(points_per_side=12, crop_n_layers=1, crop_n_points_downscale_factor=2),
        dict(
            points_per_side=10,
            pred_iou_thresh=0.9,
            stability_score_thresh=0.9,
            min_mask_region_area=40,
            output_mode="coco_rle",
        ),
        dict(
            points_per_side=8,
            crop_n_layers=1,
            min_mask_region_area=30,
            output_mode="uncompressed_rle",
            points_per_batch=24,
        ),
    ],
    ids=["defaults", "crops", "small-regions+coco-rle", "crops+small-regions+rle"],
)
def test_generator_logic_equals_official_on_a_synthetic_scene(kwargs: dict) -> None:
    official, _, config, params = official_model_and_params(PRESET)
    image = synthetic_scene()
    fake = FakeDecoder(config.img_size)
    with torch.inference_mode():
        ref = official_generator(official, fake, **kwargs).generate(image)
    ours = our_generator(config, params, fake, **kwargs).generate(image)
    assert len(ref) >= 10, f"the scene should leave many masks, the official kept {len(ref)}"
    assert_same_records(ours, ref)


# ---- the pieces, against the official functions -------------------------------------------------
def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``(n, h, w)`` bool masks: blobs of random rectangles and specks, some empty, some full."""
    masks = np.zeros((n, h, w), bool)
    for m in masks[2:]:
        for _ in range(rng.integers(1, 6)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            m[y : y + rng.integers(1, h // 2), x : x + rng.integers(1, w // 2)] ^= True
        m[rng.random((h, w)) < 0.01] ^= True
    masks[1] = True
    return masks


def test_grids_crop_boxes_boxes_and_rle_equal_official() -> None:
    for n, layers, scale in [(32, 0, 1), (16, 2, 2), (5, 1, 1)]:
        for ours, ref in zip(
            amg_ops.build_all_layer_point_grids(n, layers, scale),
            official_amg.build_all_layer_point_grids(n, layers, scale),
            strict=True,
        ):
            np.testing.assert_array_equal(ours, ref)
    for size, layers, ratio in [((720, 1280), 1, 512 / 1500), ((1365, 2048), 2, 0.3), ((37, 23), 1, 512 / 1500)]:
        assert amg_ops.generate_crop_boxes(size, layers, ratio) == official_amg.generate_crop_boxes(size, layers, ratio)

    rng = np.random.default_rng(0)
    masks = random_masks(rng, 40, 31, 47)
    np.testing.assert_array_equal(
        np.asarray(amg_ops.batched_mask_to_box(masks)),
        official_amg.batched_mask_to_box(torch.from_numpy(masks)).numpy(),
    )
    rles = amg_ops.mask_to_rle(masks)
    assert rles == official_amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    for m, rle in zip(masks, rles, strict=True):
        np.testing.assert_array_equal(amg_ops.rle_to_mask(rle), m)
        assert amg_ops.area_from_rle(rle) == official_amg.area_from_rle(rle) == m.sum()

    boxes = rng.integers(0, 60, size=(200, 4))
    boxes[:, 2:] += boxes[:, :2]
    crop, orig = [10, 20, 80, 90], [0, 0, 100, 90]
    np.testing.assert_array_equal(
        np.asarray(amg_ops.is_box_near_crop_edge(boxes, np.array(crop), np.array(orig))),
        official_amg.is_box_near_crop_edge(torch.from_numpy(boxes), crop, orig).numpy(),
    )


def test_nms_equals_torchvision_with_ties_zero_areas_and_borderline_ious() -> None:
    """Ties: torchvision's CPU kernel sorts scores with a stable descending sort, so equal scores
    keep their input order, and so does ours: there is no tie-breaking difference to explain (the
    synthetic scenes above are full of ties, every object giving the same IoU from several points;
    an unstable sort fails all four). Zero-area duplicates give IoU 0/0 = NaN, which suppresses
    nothing in both."""
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(1, 300))
        xy = rng.integers(0, 50, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(0, 30, size=(n, 2))], axis=1).astype(np.float32)
        boxes[rng.random(n) < 0.3] = boxes[0]  # duplicates: IoU 1, and zero-area duplicates (0 / 0)
        scores = rng.choice(np.array([0.5, 0.9, 1.0], np.float32), n) if trial % 2 else rng.random(n).astype(np.float32)
        for threshold in (0.0, 0.5, 0.7, 1.0):
            ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(n), threshold).numpy()
            np.testing.assert_array_equal(amg_ops.nms(boxes, scores, threshold), ref, err_msg=f"trial {trial}")
    assert amg_ops.nms(np.zeros((0, 4)), np.zeros(0), 0.7).shape == (0,)


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_small_regions_equal_official_opencv(mode: str) -> None:
    rng = np.random.default_rng(2)
    masks = random_masks(rng, 24, 40, 60)
    masks[0] = False
    masks[0, 3:5, 3:5] = masks[0, 20:22, 30:32] = True  # only small islands, equal sizes: keep the first
    masks[1, 10:13, 10:12] = False  # a small hole in a full mask
    for area in (3, 8, 30):
        ours, changed = amg_ops.remove_small_regions(masks, area, mode)
        for i, m in enumerate(masks):
            ref, ref_changed = official_amg.remove_small_regions(m, area, mode)
            np.testing.assert_array_equal(ours[i], ref, err_msg=f"mask {i}, area {area}")
            assert changed[i] == ref_changed, f"mask {i}, area {area}"
    with pytest.raises(ValueError, match="mode"):
        amg_ops.remove_small_regions(masks, 3, "specks")


def test_bad_arguments_fail_clearly() -> None:
    _, _, config, params = official_model_and_params(PRESET)
    predictor = SamHQPredictor(config, params)
    with pytest.raises(ValueError, match="exactly one"):
        SamHQAutomaticMaskGenerator(predictor, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamHQAutomaticMaskGenerator(predictor, output_mode="png")
    with pytest.raises(ValueError, match="one grid per layer"):
        grids = [np.full((4, 2), 0.5)]
        SamHQAutomaticMaskGenerator(predictor, points_per_side=None, point_grids=grids, crop_n_layers=1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        SamHQAutomaticMaskGenerator(predictor, points_per_side=None, point_grids=[np.full((4, 2), 2.0)])
    with pytest.raises(ValueError, match="leaves no points"):
        SamHQAutomaticMaskGenerator(predictor, points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2)
    with pytest.raises(TypeError, match="SamHQPredictor"):
        SamHQAutomaticMaskGenerator(object())
    with pytest.raises(ValueError, match="uint8"):
        SamHQAutomaticMaskGenerator(predictor).generate(np.zeros((8, 8, 3), np.float32))


def test_coco_rle_equals_the_official_encoding() -> None:
    rng = np.random.default_rng(3)
    for rle in amg_ops.mask_to_rle(random_masks(rng, 6, 33, 50)):
        assert amg_ops.coco_encode_rle(rle) == official_amg.coco_encode_rle(rle)


# ---- end to end, real (random) weights -----------------------------------------------------------
@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_end_to_end_equals_official_with_random_weights(crop_n_layers: int) -> None:
    official, _, config, params = official_model_and_params(PRESET)
    image = np.asarray(Image.open(IMAGES_DIR / "example7.png").convert("RGB"))
    kwargs = dict(
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        crop_n_layers=crop_n_layers,
    )
    with torch.inference_mode():
        ref = SamAutomaticMaskGenerator(official, **kwargs).generate(image)
    ours = SamHQAutomaticMaskGenerator(SamHQPredictor(config, params), **kwargs).generate(image)
    assert len(ours) == len(ref) >= (MANY_RECORDS if crop_n_layers == 0 else 1)  # the crops' NMS keeps one
    for a, b in zip(ours, ref, strict=True):
        iou = (a["segmentation"] & b["segmentation"]).sum() / (a["segmentation"] | b["segmentation"]).sum()
        assert iou >= 0.99
        assert a["bbox"] == b["bbox"] and a["crop_box"] == b["crop_box"]
        assert a["point_coords"] == b["point_coords"]
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= SCORE_ATOL
        assert abs(a["stability_score"] - b["stability_score"]) <= SCORE_ATOL


def test_an_image_without_surviving_masks_gives_an_empty_list() -> None:
    _, _, config, params = official_model_and_params(PRESET)
    image = np.asarray(Image.open(IMAGES_DIR / "example7.png").convert("RGB"))
    gen = SamHQAutomaticMaskGenerator(SamHQPredictor(config, params), points_per_side=4, pred_iou_thresh=1e9)
    assert gen.generate(image) == []


# ---- samhq everything ---------------------------------------------------------------------------
def test_samhq_everything_writes_masks_json_and_overlay(tmp_path, capsys) -> None:
    import json
    import shutil

    from samhq_jax import save_checkpoint
    from samhq_jax.amg_ops import rle_to_mask
    from samhq_jax.cli import main

    _, _, config, params = official_model_and_params(PRESET)
    checkpoint = str(save_checkpoint(tmp_path / "ckpt", config, params))
    loose = "--points-per-side 4 --pred-iou-thresh 0 --stability-score-thresh 0 --box-nms-thresh 1".split()
    image = IMAGES_DIR / "example7.png"
    args = ["everything", "--checkpoint", checkpoint, "--image", str(image), *loose]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    doc = json.loads((tmp_path / "a" / "example7_masks.json").read_text())
    expected = SamHQAutomaticMaskGenerator(
        SamHQPredictor(config, params),
        points_per_side=4,
        pred_iou_thresh=0,
        stability_score_thresh=0,
        box_nms_thresh=1,
    ).generate(np.asarray(Image.open(image).convert("RGB")))
    assert len(doc["masks"]) == len(expected) >= MANY_RECORDS  # every record, not only the first
    for i, (rec, exp) in enumerate(zip(doc["masks"], expected, strict=True)):
        png = np.asarray(Image.open(tmp_path / "a" / rec["file"])) > 0
        np.testing.assert_array_equal(png, exp["segmentation"])
        assert rec["bbox"] == exp["bbox"] and rec["area"] == exp["area"] and rec["file"] == f"example7_mask{i}.png"
    assert Image.open(tmp_path / "a" / "example7_overlay.png").size == Image.open(image).size

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("example6.png", "example7.png"):
        shutil.copy(IMAGES_DIR / name, folder / name)
    capsys.readouterr()
    folder_args = ["everything", "--checkpoint", checkpoint, "--images", str(folder), "--format", "rle", *loose]
    assert main([*folder_args, "--output", str(tmp_path / "b")]) == 0
    assert "samhq everything" in capsys.readouterr().err  # the progress bar over the folder
    doc = json.loads((tmp_path / "b" / "example7_masks.json").read_text())
    assert len(doc["masks"]) == len(expected)
    for rec, exp in zip(doc["masks"], expected, strict=True):
        np.testing.assert_array_equal(rle_to_mask(rec["segmentation"]), exp["segmentation"])
        assert rec["bbox"] == exp["bbox"] and rec["point_coords"] == exp["point_coords"]
    assert (tmp_path / "b" / "example6_masks.json").is_file() and not list((tmp_path / "b").glob("*_mask0.png"))

    (tmp_path / "empty").mkdir()
    assert main(["everything", "--checkpoint", checkpoint, "--images", str(tmp_path / "empty"), "--output", "o"]) == 2
    assert "samhq: error: --images" in capsys.readouterr().err
