"""Training prompts against a PyTorch transcription of the official ``train/utils/misc.py`` and
``train/train.py``: boxes equal, points inside the mask and distinct, the noisy mask equal given the
same normal draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samhq_jax.datasets import label_to_box
from tests.conftest import official_masks_to_boxes
from train.prompts import (
    BOX,
    NOISE_MASK,
    NUM_POINTS,
    POINTS,
    noisy_mask,
    sample_points,
    sample_prompts,
)

# --- transcription of the official code (misc.masks_to_boxes, misc.masks_noise; train.py's resize) ---


def official_masks_noise(masks, mask_noise):
    """``masks_noise`` with its ``torch.randn`` replaced by the given draws."""

    def get_incoherent_mask(input_masks, sfact):
        mask = input_masks.float()
        w = input_masks.shape[-1]
        h = input_masks.shape[-2]
        mask_small = F.interpolate(mask, (h // sfact, w // sfact), mode="bilinear")
        mask_recover = F.interpolate(mask_small, (h, w), mode="bilinear")
        mask_residue = (mask - mask_recover).abs()
        mask_residue = (mask_residue >= 0.01).float()
        return mask_residue

    gt_masks_vector = masks / 255
    inc_masks = get_incoherent_mask(gt_masks_vector, 8)
    gt_masks_vector = ((gt_masks_vector + mask_noise * inc_masks) > 0.5).float()
    gt_masks_vector = gt_masks_vector * 255
    return gt_masks_vector


def official_noise_mask(labels: np.ndarray, mask_size: int, noise: np.ndarray) -> np.ndarray:
    """train.py: ``labels_256 = F.interpolate(labels, size=(256, 256), mode='bilinear')`` then ``masks_noise``."""
    labels_256 = F.interpolate(torch.from_numpy(labels)[:, None], size=(mask_size, mask_size), mode="bilinear")
    return official_masks_noise(labels_256, torch.from_numpy(noise)[:, None])[:, 0].numpy()


def soft_labels(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``(n, size, size)`` float32 0-255 labels with soft edges, thin parts and one empty label."""
    out = np.zeros((n, size, size), np.float32)
    for i in range(1, n):
        y0, x0 = rng.integers(0, size // 2, 2)
        y1, x1 = y0 + rng.integers(2, size // 2, 2)
        out[i, y0:y1, x0:x1] = 255
        out[i, rng.integers(size), :] = rng.uniform(100, 255)  # a thin line, sometimes below the threshold
        out[i] = np.clip(out[i] + rng.normal(0, 40, (size, size)) * (out[i] > 0), 0, 255)
    return out


# --- tests ---


def test_boxes_match_official_including_empty():
    labels = soft_labels(np.random.default_rng(0), 8, 160)
    labels[2] = 0
    labels[2, 5, 7] = 128.5  # a single foreground pixel
    labels[3, :, :] = np.where(labels[3] > 0, 128.0, 0)  # exactly 128 is background
    ref = official_masks_to_boxes(torch.from_numpy(labels)).numpy()
    ours = np.stack([label_to_box(label) for label in labels])
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(ours[0], [1e8, 1e8, 0, 0])  # empty mask: the official degenerate box


def test_points_are_distinct_foreground_pixels():
    labels = soft_labels(np.random.default_rng(1), 6, 160)
    for i, label in enumerate(labels[1:]):
        for k in range(5):
            pts = sample_points(label, np.random.default_rng([i, k]))
            assert pts.shape == (NUM_POINTS, 2) and pts.dtype == np.float32
            x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
            assert np.all(pts == np.round(pts))  # pixel indices, as the official meshgrid values
            assert np.all(label[y, x] > 128)
            assert len(set(zip(x.tolist(), y.tolist(), strict=True))) == NUM_POINTS


def test_points_cover_the_mask_uniformly():
    """Every foreground pixel of a 20-pixel mask is drawn, each about equally often."""
    label = np.zeros((40, 40), np.float32)
    label[10, 5:25] = 255
    rng = np.random.default_rng(2)
    counts = np.zeros(40)
    for _ in range(400):
        counts[sample_points(label, rng)[:, 0].astype(int)] += 1
    assert counts[5:25].min() > 150 and counts[5:25].max() < 250 and counts.sum() == 4000


def test_points_need_ten_foreground_pixels():
    label = np.zeros((40, 40), np.float32)
    label[3, :9] = 255
    with pytest.raises(ValueError, match="9 foreground pixels"):
        sample_points(label, np.random.default_rng(0))


@pytest.mark.parametrize(("size", "mask_size"), [(160, 40), (1024, 256)])
def test_noisy_mask_matches_official_given_same_normals(size, mask_size):
    labels = soft_labels(np.random.default_rng(3), 4, size)
    noise = np.random.default_rng(4).standard_normal((4, mask_size, mask_size), dtype=np.float32)
    ref = official_noise_mask(labels, mask_size, noise)
    ours = np.stack([noisy_mask(label, mask_size, n) for label, n in zip(labels, noise, strict=True)])
    assert ours.dtype == np.float32 and set(np.unique(ours)) <= {0.0, 255.0}
    np.testing.assert_array_equal(ours, ref)
    clean = np.stack([noisy_mask(label, mask_size, np.zeros_like(n)) for label, n in zip(labels, noise, strict=True)])
    assert np.any(ours != clean)  # the noise does act (on the incoherent region)


def test_sample_prompts_draw_order_and_shapes():
    """Reproducible from a twin generator: type, then points, then the normals."""
    label = soft_labels(np.random.default_rng(5), 2, 160)[1]
    out = sample_prompts(label, 40, np.random.default_rng(9))
    twin = np.random.default_rng(9)
    prompt = (BOX, POINTS, NOISE_MASK)[int(twin.integers(3))]
    points = sample_points(label, twin)
    noise = twin.standard_normal((40, 40), dtype=np.float32)
    assert out["prompt"] == prompt and out["prompt"].dtype == np.int32
    np.testing.assert_array_equal(out["points"], points)
    np.testing.assert_array_equal(out["box"], label_to_box(label))
    np.testing.assert_array_equal(out["noise_mask"], noisy_mask(label, 40, noise))
    assert out["noise_mask"].shape == (40, 40) and out["box"].shape == (4,)


def test_prompt_types_uniform_and_point_fallback_per_example():
    full = soft_labels(np.random.default_rng(6), 2, 64)[1]
    few = np.zeros((64, 64), np.float32)
    few[0, :9] = 255
    types_full = [int(sample_prompts(full, 16, np.random.default_rng([0, k]))["prompt"]) for k in range(600)]
    types_few = [sample_prompts(few, 16, np.random.default_rng([1, k])) for k in range(300)]
    counts = np.bincount(types_full, minlength=3)
    assert counts.min() > 150  # ~200 each
    assert {int(p["prompt"]) for p in types_few} == {BOX, NOISE_MASK}
    assert all(np.all(p["points"] == 0) for p in types_few)
