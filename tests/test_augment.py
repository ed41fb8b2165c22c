"""Training augmentation against a PyTorch transcription of the official ``train/utils/dataloader.py``.

The official transforms draw from ``random`` / ``torch`` / ``np.random``; the transcription below
takes those draws as arguments, and the test feeds it the values a twin generator produces in the
order ``train.augment`` documents. Same flip, scale and crop must give the same pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.augment import IMAGE_PAD, jitter_size, large_scale_jitter, train_augment

# 1e-5 of the 0-255 range. Both sides compute the bilinear source coordinates in float32, PyTorch's CPU
# kernel with a fused multiply-add, so they differ in the last bits; the gap grows with the output size
# (measured: 0.0019 here at 160 pixels, 0.015 at 2048; emulating the FMA in resize_bilinear gives 3e-5).
ATOL = 1e-5 * 255


# --- transcription of the official code (RandomHFlip, LargeScaleJitter, Resize), draws injected ---


def official_hflip(image: torch.Tensor, label: torch.Tensor, u: float, prob: float = 0.5):
    if u >= prob:  # random.random() >= self.prob
        image = torch.flip(image, dims=[2])
        label = torch.flip(label, dims=[2])
    return image, label


def official_lsj(image, label, u, randint, output_size=1024, aug_scale_min=0.1, aug_scale_max=2.0):
    desired_size = torch.tensor(output_size)
    image_size = torch.tensor(image.shape[-2:])
    random_scale = torch.tensor([u], dtype=torch.float32) * (aug_scale_max - aug_scale_min) + aug_scale_min
    scaled_size = (random_scale * desired_size).round()
    scale = torch.minimum(scaled_size / image_size[0], scaled_size / image_size[1])
    scaled_size = (image_size * scale).round().long()
    scaled_image = torch.squeeze(F.interpolate(torch.unsqueeze(image, 0), scaled_size.tolist(), mode="bilinear"), dim=0)
    scaled_label = torch.squeeze(F.interpolate(torch.unsqueeze(label, 0), scaled_size.tolist(), mode="bilinear"), dim=0)
    crop_size = (min(desired_size, scaled_size[0]), min(desired_size, scaled_size[1]))
    margin_h = max(scaled_size[0] - crop_size[0], 0).item()
    margin_w = max(scaled_size[1] - crop_size[1], 0).item()
    offset_h = randint(0, margin_h + 1)
    offset_w = randint(0, margin_w + 1)
    crop_y1, crop_y2 = offset_h, offset_h + crop_size[0].item()
    crop_x1, crop_x2 = offset_w, offset_w + crop_size[1].item()
    scaled_image = scaled_image[:, crop_y1:crop_y2, crop_x1:crop_x2]
    scaled_label = scaled_label[:, crop_y1:crop_y2, crop_x1:crop_x2]
    padding_h = max(desired_size - scaled_image.size(1), 0).item()
    padding_w = max(desired_size - scaled_image.size(2), 0).item()
    image = F.pad(scaled_image, [0, padding_w, 0, padding_h], value=128)
    label = F.pad(scaled_label, [0, padding_w, 0, padding_h], value=0)
    return image, label


def to_official(image: np.ndarray, label: np.ndarray):
    """As ``OnlineDataset.__getitem__``: float32 CHW image, (1, H, W) label."""
    im = torch.tensor(image.copy(), dtype=torch.float32).permute(2, 0, 1)
    return im, torch.unsqueeze(torch.tensor(label, dtype=torch.float32), 0)


def official_train(image, label, img_size, rng: np.random.Generator):
    """Official RandomHFlip + LargeScaleJitter fed the draws ``train_augment`` documents, in its order."""
    im, gt = official_hflip(*to_official(image, label), rng.random())
    im, gt = official_lsj(im, gt, rng.random(dtype=np.float32), lambda lo, hi: int(rng.integers(lo, hi)), img_size)
    return im.permute(1, 2, 0).numpy(), gt[0].numpy()


def random_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[h // 5 : h // 2, w // 3 : w - 2] = 255
    label[rng.random((h, w)) < 0.05] = 255  # thin speckles: soft edges after resizing
    return image, label


def assert_truncation_equal(ours: np.ndarray, ref: np.ndarray) -> None:
    """``astype(uint8)`` of both agree except where the reference is within float noise of an integer."""
    near_integer = np.abs(ref - np.round(ref)) < 1e-3
    diff = ours.astype(np.uint8).astype(int) - ref.astype(np.uint8).astype(int)
    assert np.all(diff[~near_integer] == 0)
    assert np.all(np.abs(diff[near_integer]) <= 1)


# --- tests ---


@pytest.mark.parametrize(
    ("h", "w", "img_size", "seed"),
    [(120, 90, 160, 0), (45, 200, 160, 1), (300, 260, 160, 2), (37, 41, 160, 3), (64, 64, 96, 4), (500, 180, 160, 5)],
)
def test_train_augment_matches_official(h, w, img_size, seed):
    image, label = random_pair(np.random.default_rng(100 + seed), h, w)
    for k in range(6):  # several draws per shape: flip / no flip, up- and down-scaling, crops
        ours_im, ours_gt = train_augment(image, label, img_size, np.random.default_rng([seed, k]))
        ref_im, ref_gt = official_train(image, label, img_size, np.random.default_rng([seed, k]))
        assert ours_im.shape == (img_size, img_size, 3) and ours_gt.shape == (img_size, img_size)
        assert ours_im.dtype == np.float32 and ours_gt.dtype == np.float32
        np.testing.assert_allclose(ours_im, ref_im, rtol=0, atol=ATOL)
        np.testing.assert_allclose(ours_gt, ref_gt, rtol=0, atol=ATOL)
        assert_truncation_equal(ours_im, ref_im)


def test_flip_crop_and_padding_are_exercised():
    """The draws above do flip, crop and pad; the padded region holds 128 / 0."""
    image, label = random_pair(np.random.default_rng(7), 80, 60)
    flips, crops, pads = 0, 0, 0
    for k in range(40):
        rng = np.random.default_rng([7, k])
        flip = rng.random() >= 0.5
        sh, _ = jitter_size(80, 60, 160, rng.random(dtype=np.float32))
        flips += flip
        crops += sh > 160
        if sh < 160:
            pads += 1
            im, gt = train_augment(image, label, 160, np.random.default_rng([7, k]))
            assert np.all(im[sh:] == IMAGE_PAD) and np.all(gt[sh:] == 0)
    assert 0 < flips < 40 and crops > 0 and pads > 0


class ScriptedRng:
    """Stands in for ``np.random.Generator``: returns the given draws in order."""

    def __init__(self, *draws: float) -> None:
        self.draws = list(draws)

    def random(self, dtype=np.float64):
        return dtype(self.draws.pop(0))

    def integers(self, low: int, high: int) -> int:
        value = int(self.draws.pop(0))
        assert low <= value < high
        return value


@pytest.mark.parametrize(("u", "flips"), [(0.75, True), (0.5, True), (0.25, False)])
def test_flip_direction(u, flips):
    """A draw >= 0.5 mirrors the width axis (official ``random.random() >= prob``) before the jitter."""
    image, label = random_pair(np.random.default_rng(8), 50, 70)
    ours = train_augment(image, label, 160, ScriptedRng(u, 0.3, 0, 0))
    src = (image[:, ::-1], label[:, ::-1]) if flips else (image, label)
    ref = large_scale_jitter(*src, 160, ScriptedRng(0.3, 0, 0))
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])


def test_jitter_size_matches_official_float32_arithmetic():
    """Sizes for many uniforms and shapes, including exact .5 roundings, against the torch expressions."""
    rng = np.random.default_rng(0)
    us = np.concatenate([rng.random(2000, dtype=np.float32), np.float32([0, 0.5, 1 - 2**-24])])
    for h, w, s in [(1024, 768, 1024), (333, 1000, 1024), (120, 90, 160), (7, 999, 160)]:
        image_size = torch.tensor([h, w])
        scale = torch.from_numpy(us) * (2.0 - 0.1) + 0.1
        target = (scale * torch.tensor(s)).round()
        factor = torch.minimum(target / image_size[0], target / image_size[1])
        ref = (image_size[None] * factor[:, None]).round().long().numpy()
        ours = np.array([jitter_size(h, w, s, u) for u in us])
        np.testing.assert_array_equal(ours, np.maximum(ref, 1))


def test_large_scale_jitter_rejects_nothing_for_tiny_sides():
    """A very elongated image keeps a side of at least 1 pixel (the official code would fail)."""
    image, label = random_pair(np.random.default_rng(9), 3, 900)
    im, gt = large_scale_jitter(image, label, 160, np.random.default_rng(0))
    assert im.shape == (160, 160, 3) and gt.shape == (160, 160)
