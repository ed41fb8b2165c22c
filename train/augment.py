"""Train-time augmentation of the official ``train/utils/dataloader.py``.

Training applies ``RandomHFlip(prob=0.5)`` then ``LargeScaleJitter(output_size=img_size,
aug_scale_min=0.1, aug_scale_max=2.0)``; validation's ``Resize([img_size, img_size])`` is the
evaluation protocol's (``eval.protocol.resize_pair``), which the training's validation uses. All
resizes are bilinear with half-pixel centres (``F.interpolate(mode="bilinear")``, whose
``align_corners`` defaults to False), computed by ``samhq_jax.transforms.resize_bilinear``. Images
and labels stay float32 on the 0-255 scale, so labels are soft near edges (never re-binarised);
the training step truncates images with ``astype(np.uint8)`` as the official loop does.

Randomness comes from an explicit ``np.random.Generator``; ``train_augment`` draws, in this order:

1. ``rng.random()``: flip when ``>= 0.5`` (the official ``random.random() >= prob``);
2. ``rng.random(dtype=np.float32)``: the jitter's uniform (``torch.rand(1)`` is float32);
3. ``rng.integers(0, margin_h + 1)``: the crop's top offset;
4. ``rng.integers(0, margin_w + 1)``: the crop's left offset.
"""

from __future__ import annotations

import numpy as np

from samhq_jax.transforms import resize_bilinear

FLIP_PROB = 0.5
AUG_SCALE_MIN, AUG_SCALE_MAX = 0.1, 2.0
IMAGE_PAD, LABEL_PAD = 128.0, 0.0  # official F.pad values for image and label


def jitter_size(h: int, w: int, img_size: int, u: np.float32) -> tuple[int, int]:
    """Resized ``(h', w')`` of an ``h x w`` image for the jitter's uniform draw ``u`` in [0, 1).

    The official float32 arithmetic: scale ``r = u * 1.9 + 0.1``, target side ``round(r * img_size)``,
    ``s = min(target / h, target / w)``, sides ``round((h, w) * s)`` (round half to even, as
    ``torch.round``). Sides are kept >= 1 (the official code would fail on a zero side).
    """
    f32 = np.float32
    scale = f32(u) * f32(AUG_SCALE_MAX - AUG_SCALE_MIN) + f32(AUG_SCALE_MIN)
    target = np.rint(scale * f32(img_size))
    s = min(target / f32(h), target / f32(w))
    return max(int(np.rint(f32(h) * s)), 1), max(int(np.rint(f32(w) * s)), 1)


def large_scale_jitter(
    image: np.ndarray, label: np.ndarray, img_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scale jitter, random crop and bottom / right padding (official ``LargeScaleJitter``).

    Args:
      image: ``(H, W, 3)`` uint8 or float32, 0-255.
      label: ``(H, W)`` uint8 or float32, 0-255.
      img_size: side of the square output.
      rng: draws the uniform, then the top and the left crop offsets.

    Returns:
      ``(img_size, img_size, 3)`` float32 image padded with 128, ``(img_size, img_size)`` float32
      label padded with 0.
    """
    sh, sw = jitter_size(image.shape[0], image.shape[1], img_size, rng.random(dtype=np.float32))
    ch, cw = min(img_size, sh), min(img_size, sw)
    top = int(rng.integers(0, sh - ch + 1))
    left = int(rng.integers(0, sw - cw + 1))
    out_image = np.full((img_size, img_size, 3), IMAGE_PAD, np.float32)
    out_label = np.full((img_size, img_size), LABEL_PAD, np.float32)
    out_image[:ch, :cw] = resize_bilinear(image, (sh, sw))[top : top + ch, left : left + cw]
    out_label[:ch, :cw] = resize_bilinear(label, (sh, sw))[top : top + ch, left : left + cw]
    return out_image, out_label


def train_augment(
    image: np.ndarray, label: np.ndarray, img_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Official training transforms: horizontal flip with p = 0.5, then ``large_scale_jitter``.

    ``image`` ``(H, W, 3)`` and ``label`` ``(H, W)``, 0-255 -> float32 ``(img_size, img_size, 3)`` and
    ``(img_size, img_size)``. Draw order in the module docstring.
    """
    if rng.random() >= FLIP_PROB:
        image, label = image[:, ::-1], label[:, ::-1]
    return large_scale_jitter(image, label, img_size, rng)
