"""Sample inputs of ``samhq parity --preset``: real photos made distinct by seeded noise, and named
sets of random prompts in the model's input frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.parity.stages import Prompts
from samhq_jax.config import ModelConfig
from samhq_jax.transforms import normalize_and_pad, resize_longest_side, to_rgb_uint8

IMAGES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "images"


def sample_images(config: ModelConfig, count: int, seed: int = 0) -> np.ndarray:
    """``(count, S, S, 3)`` normalised, zero-padded real photos from ``shared/images`` at input size S.

    SAM's pre-processing (longest-side resize, normalise, pad) with a little seeded noise added
    before normalising, so that every index is a distinct image.
    """
    from PIL import Image

    s = config.img_size
    paths = sorted(IMAGES_DIR.glob("*.*"))
    if not paths:
        raise FileNotFoundError(f"no test photos in {IMAGES_DIR} (the shared/ folder beside the repository)")
    rng = np.random.default_rng(seed)
    out = np.zeros((count, s, s, 3), np.float32)
    for i in range(count):
        resized = resize_longest_side(to_rgb_uint8(Image.open(paths[i % len(paths)])), s).astype(np.float32)
        out[i] = normalize_and_pad(resized + rng.normal(0, 1, resized.shape).astype(np.float32), s)
    return out


def default_prompts(config: ModelConfig, b: int, seed: int = 0) -> dict[str, Prompts]:
    """Named prompt sets for ``b`` images: points, boxes, points+boxes, mask input; 3 prompts each."""
    rng = np.random.default_rng(seed)
    s, low, p = config.img_size, config.low_res_mask_size, 3
    points = rng.uniform(0, s - 1, (b, p, 3, 2)).astype(np.float32)
    labels = np.tile(np.array([1, 0, 1], np.int32), (b, p, 1))
    labels[:, 1, 2] = -1  # one explicit padding point
    corners = np.sort(rng.uniform(0, s - 1, (b, p, 2, 2)), axis=2).astype(np.float32)
    boxes = np.stack([corners[:, :, 0, 0], corners[:, :, 0, 1], corners[:, :, 1, 0], corners[:, :, 1, 1]], -1)
    masks = (4 * rng.normal(size=(b, p, low, low))).astype(np.float32)
    one_point = points[:, :, :1]
    return {
        "points": Prompts(points=points, labels=labels),
        "boxes": Prompts(boxes=boxes),
        "points+boxes": Prompts(points=one_point, labels=labels[:, :, :1], boxes=boxes),
        "mask+point": Prompts(points=one_point, labels=labels[:, :, :1], masks=masks),
    }
