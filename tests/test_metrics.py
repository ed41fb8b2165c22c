"""Mask IoU and boundary IoU against an OpenCV transcription of the official ``train/utils/misc.py``
(``mask_iou``, ``mask_to_boundary``, ``boundary_iou``), on random masks and hand-made special cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from eval.metrics import binary_iou, boundary_iou, boundary_width, mask_iou, mask_to_boundary

TOL = 1e-6


# ---- the official code, transcribed (SysCV/sam-hq train/utils/misc.py) ----------------------------------
def official_mask_iou(pred_label: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``pred_label``: (1, H, W) logits, ``label``: (1, H, W) 0-255."""
    pred_label = (pred_label > 0)[0].int()
    label = (label > 128)[0].int()
    intersection = ((label * pred_label) > 0).sum()
    union = ((label + pred_label) > 0).sum()
    return intersection / union


def official_mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    h, w = mask.shape
    img_diag = np.sqrt(h**2 + w**2)
    dilation = int(round(dilation_ratio * img_diag))  # noqa: RUF046 (verbatim)
    if dilation < 1:
        dilation = 1
    new_mask = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    kernel = np.ones((3, 3), dtype=np.uint8)
    new_mask_erode = cv2.erode(new_mask, kernel, iterations=dilation)
    mask_erode = new_mask_erode[1 : h + 1, 1 : w + 1]
    return mask - mask_erode


def official_boundary_iou(gt: torch.Tensor, dt: torch.Tensor, dilation_ratio: float = 0.02) -> torch.Tensor:
    """``gt``: (1, H, W) 0-255, ``dt``: (1, H, W) logits."""
    dt = (dt > 0)[0].cpu().byte().numpy()
    gt = (gt > 128)[0].cpu().byte().numpy()
    gt_boundary = official_mask_to_boundary(gt, dilation_ratio)
    dt_boundary = official_mask_to_boundary(dt, dilation_ratio)
    intersection = ((gt_boundary * dt_boundary) > 0).sum()
    union = ((gt_boundary + dt_boundary) > 0).sum()
    with np.errstate(invalid="ignore"):
        return torch.tensor(intersection / union).float()


# ---- cases ---------------------------------------------------------------------------------------------
def _random_cases(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(logits, label) pairs: sizes 1..96, i.i.d. noise of any density and smooth blobs (holes, islands)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 97, 2))
        if i % 2:
            gt = np.where(rng.random((h, w)) < rng.random(), 255, 0).astype(np.uint8)
            logits = rng.normal(size=(h, w)).astype(np.float32) + rng.normal()
        else:
            blob = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), float(rng.uniform(0.5, 6)))
            gt = np.clip(128 + 4000 * blob, 0, 255).astype(np.uint8)  # soft edges: values around 128 too
            logits = blob + np.float32(0.01) * rng.normal(size=(h, w)).astype(np.float32)
        cases.append((logits, gt))
    return cases


def _special_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Thin lines, rings, border-touching, empty and full masks, single pixels (logits, label)."""
    h, w = 64, 80
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - 30, xx - 40)

    def lab(m: np.ndarray) -> np.ndarray:
        return np.where(m, 255, 0).astype(np.uint8)

    def log(m: np.ndarray) -> np.ndarray:
        return np.where(m, 3.0, -3.0).astype(np.float32)

    empty, full = np.zeros((h, w), bool), np.ones((h, w), bool)
    line_h, line_v, diag = empty.copy(), empty.copy(), np.eye(h, w, dtype=bool)
    line_h[20, 5:70] = True
    line_v[:, 33] = True  # touches top and bottom
    ring, thick_ring = (r > 14) & (r <= 15), (r > 8) & (r <= 20)
    corner = (yy < 12) & (xx < 15)
    pixel = empty.copy()
    pixel[40, 50] = True
    return {
        "empty_vs_empty": (log(empty), lab(empty)),
        "full_vs_full": (log(full), lab(full)),
        "empty_pred_full_gt": (log(empty), lab(full)),
        "full_pred_empty_gt": (log(full), lab(empty)),
        "line_vs_shifted_line": (log(np.roll(line_h, 1, axis=0)), lab(line_h)),
        "line_vs_itself": (log(line_h), lab(line_h)),
        "border_line_vs_thick": (log(line_v | np.roll(line_v, 1, axis=1)), lab(line_v)),
        "diagonal_vs_ring": (log(diag), lab(ring)),
        "ring_vs_thick_ring": (log(ring), lab(thick_ring)),
        "corner_vs_full": (log(corner), lab(full)),
        "corner_vs_disc": (log(corner), lab(r < 25)),
        "pixel_vs_pixel": (log(pixel), lab(pixel)),
        "pixel_vs_empty": (log(pixel), lab(empty)),
        "one_by_one": (np.ones((1, 1), np.float32), lab(np.ones((1, 1), bool))),
        "one_row": (log(xx[:1] % 3 == 0), lab(xx[:1] % 2 == 0)),
        "tall_thin": (log(np.ones((200, 3), bool)), lab(np.ones((200, 3), bool) & (np.arange(200) < 150)[:, None])),
        "label_at_128_and_129": (log(full), np.full((h, w), 128, np.uint8) + lab(corner).clip(0, 1)),
        "logit_at_zero": (np.where(corner, 0.0, 1e-7).astype(np.float32), lab(corner)),
    }


def _official(logits: np.ndarray, gt: np.ndarray, ratio: float = 0.02) -> tuple[float, float]:
    p, g = torch.from_numpy(logits)[None], torch.from_numpy(gt)[None]
    return float(official_mask_iou(p, g)), float(official_boundary_iou(g, p, ratio))


def _agree(ours: float, ref: float) -> bool:
    """Equal to TOL; where the official value is NaN (both masks empty) ours is the documented 1.0."""
    return ours == 1.0 if np.isnan(ref) else abs(ours - ref) <= TOL


def test_random_masks_equal_official() -> None:
    cases = _random_cases(1200)
    worst = 0.0
    for i, (logits, gt) in enumerate(cases):
        ratio = (0.02, 0.05, 0.2)[i % 3]
        ref_iou, ref_biou = _official(logits, gt, ratio)
        iou, biou = mask_iou(logits, gt), boundary_iou(gt, logits, ratio)
        assert _agree(iou, ref_iou) and _agree(biou, ref_biou), (i, logits.shape, ratio, iou, ref_iou, biou, ref_biou)
        worst = max([worst] + [abs(a - b) for a, b in ((iou, ref_iou), (biou, ref_biou)) if not np.isnan(b)])
        band = official_mask_to_boundary((logits > 0).astype(np.uint8), ratio)
        assert np.array_equal(mask_to_boundary(logits > 0, ratio), band.astype(bool)), i
    print(f"metric parity over {len(cases)} random masks: max |ours - official| = {worst:.2e}")


@pytest.mark.parametrize("name", list(_special_cases()))
def test_special_cases_equal_official(name: str) -> None:
    logits, gt = _special_cases()[name]
    ref_iou, ref_biou = _official(logits, gt)
    iou, biou = mask_iou(logits, gt), boundary_iou(gt, logits)
    assert _agree(iou, ref_iou) and _agree(biou, ref_biou), (iou, ref_iou, biou, ref_biou)
    band = official_mask_to_boundary((gt > 128).astype(np.uint8))
    assert np.array_equal(mask_to_boundary(gt > 128), band.astype(bool))


def test_large_mask_boundary_equals_official() -> None:
    """A real-size label (d = 25 erosions) with structure at every scale."""
    rng = np.random.default_rng(1)
    blob = cv2.GaussianBlur(rng.normal(size=(900, 1300)).astype(np.float32), (0, 0), 9.0)
    mask = blob > 0
    mask[100:103, :] = True  # a 3-px line across the whole image
    mask[500, 200:1000] = False  # a 1-px cut
    assert boundary_width(*mask.shape) == 32
    ref = official_mask_to_boundary(mask.astype(np.uint8))
    assert np.array_equal(mask_to_boundary(mask), ref.astype(bool))


def test_degenerate_values_are_defined_and_hand_derived() -> None:
    empty, full = np.zeros((10, 10)), np.ones((10, 10))
    assert mask_iou(-full, 0 * full) == 1.0 and boundary_iou(0 * full, -full) == 1.0  # empty vs empty
    assert mask_iou(full, 0 * full) == 0.0 and boundary_iou(0 * full, full) == 0.0
    # 10x10 full mask, d = max(1, round(0.02 * sqrt(200))) = 1: band = 36 border pixels; 8x8 square at the
    # corner: band 28 pixels, 8 + 7 = 15 of them on the big mask's border.
    corner = np.zeros((10, 10))
    corner[:8, :8] = 1
    assert boundary_width(10, 10) == 1
    assert np.count_nonzero(mask_to_boundary(full > 0)) == 36 and np.count_nonzero(mask_to_boundary(corner > 0)) == 28
    assert mask_iou(corner, 255 * full) == pytest.approx(64 / 100)
    assert boundary_iou(255 * full, corner) == pytest.approx(15 / (36 + 28 - 15))
    assert np.isfinite(binary_iou(empty > 0, empty > 0))


def test_batched_forms_equal_single_forms() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 33, 47)).astype(np.float32)
    gt = np.where(rng.random((5, 33, 47)) < 0.4, 255, 0).astype(np.uint8)
    gt[3] = 0
    logits[3] = -1  # one empty-vs-empty member
    iou, biou = mask_iou(logits, gt), boundary_iou(gt, logits)
    assert iou.shape == biou.shape == (5,) and iou.dtype == biou.dtype == np.float64
    assert iou.tolist() == [mask_iou(p, g) for p, g in zip(logits, gt, strict=True)]
    assert biou.tolist() == [boundary_iou(g, p) for p, g in zip(logits, gt, strict=True)]
    assert iou[3] == biou[3] == 1.0
    # Broadcasting one label against several predictions.
    assert np.array_equal(mask_iou(logits, gt[0]), [mask_iou(p, gt[0]) for p in logits])
    assert np.array_equal(mask_to_boundary(logits > 0), np.stack([mask_to_boundary(p > 0) for p in logits]))
