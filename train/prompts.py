"""Training prompts, one per example, as the official ``train/train.py`` samples them.

The prompt type is a uniform choice among box, points and noisy mask (``random.choice(input_keys)``
officially), all derived from the augmented label (``(S, S)`` float32, 0-255, soft):

* box: ``masks_to_boxes(label > 128)``, ``[x_min, y_min, x_max, y_max]`` pixel indices (max inclusive),
  no noise (the official ``box_noise`` is never called);
* points: 10 distinct foreground pixels (``label > 128``) as ``(x, y)``, all positive;
* noisy mask: the label resized to the mask-prompt size ``4G x 4G`` (G = S / 16), ``/ 255``, plus
  N(0, 1) noise on its incoherent region (Mask Transfiner), thresholded at 0.5 and fed as {0, 255}.

Officially, one example with fewer than 10 foreground pixels removes the points choice for the whole
batch (``torch.stack`` fails); here it is removed for that example only.

``sample_prompts`` draws from its ``np.random.Generator`` in this order: the type
(``rng.integers(n_choices)``), the points (``rng.choice(n_fg, 10, replace=False)``, only when
``n_fg >= 10``), the normal noise (``rng.standard_normal((4G, 4G), float32)``).
"""

from __future__ import annotations

import numpy as np

from samhq_jax.datasets import FG_THRESHOLD, label_to_box
from samhq_jax.transforms import resize_bilinear

BOX, POINTS, NOISE_MASK = 0, 1, 2  # values of the batch's "prompt" field
NUM_POINTS = 10
INCOHERENT_FACTOR = 8  # incoherent region: |m - up(down(m, 1/8))| >= 0.01
INCOHERENT_THRESHOLD = 0.01


def sample_points(label: np.ndarray, rng: np.random.Generator, k: int = NUM_POINTS) -> np.ndarray:
    """``k`` distinct random foreground pixels of an ``(H, W)`` 0-255 label -> ``(k, 2)`` float32 xy.

    Uniform without replacement over ``label > 128`` (the official ``randperm(n)[:k]``). Raises
    ``ValueError`` when the mask has fewer than ``k`` foreground pixels.
    """
    fg = np.flatnonzero(label > FG_THRESHOLD)
    if fg.size < k:
        raise ValueError(f"{fg.size} foreground pixels, {k} points needed")
    y, x = np.divmod(fg[rng.choice(fg.size, size=k, replace=False)], label.shape[1])
    return np.stack([x, y], axis=-1).astype(np.float32)


def incoherent_region(mask: np.ndarray) -> np.ndarray:
    """``(h, w)`` float32 mask in [0, 1] -> bool, where ``|m - up(down(m))| >= 0.01``.

    ``down`` resizes to ``(h // 8, w // 8)``, ``up`` back to ``(h, w)``, both bilinear.
    """
    h, w = mask.shape
    small = resize_bilinear(mask, (h // INCOHERENT_FACTOR, w // INCOHERENT_FACTOR))
    return np.abs(mask - resize_bilinear(small, (h, w))) >= INCOHERENT_THRESHOLD


def noisy_mask(label: np.ndarray, mask_size: int, noise: np.ndarray) -> np.ndarray:
    """Official ``masks_noise`` of one label -> ``(mask_size, mask_size)`` float32 in {0, 255}.

    Args:
      label: ``(S, S)`` 0-255 label, resized bilinear to ``mask_size`` squared and divided by 255.
      mask_size: side of the dense mask prompt, ``4 * S / 16`` (256 for S = 1024).
      noise: ``(mask_size, mask_size)`` float32 standard normal draws (``torch.randn`` officially),
        added on the incoherent region before thresholding at 0.5.
    """
    m = resize_bilinear(label, (mask_size, mask_size)) / np.float32(255)
    return ((m + noise * incoherent_region(m)) > 0.5).astype(np.float32) * np.float32(255)


def sample_prompts(label: np.ndarray, mask_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All three prompts of one example and the type to use, drawn as the module docstring says.

    Args:
      label: ``(S, S)`` float32 0-255 augmented label.
      mask_size: side of the dense mask prompt (``S // 4`` for patch-16 models).
      rng: the example's generator.

    Returns:
      ``prompt`` () int32 (``BOX``, ``POINTS`` or ``NOISE_MASK``; never ``POINTS`` with fewer than 10
      foreground pixels), ``box`` (4,) float32 xyxy, ``points`` (10, 2) float32 xy (zeros when there
      are fewer than 10 foreground pixels), ``noise_mask`` (mask_size, mask_size) float32 {0, 255}.
    """
    has_points = np.count_nonzero(label > FG_THRESHOLD) >= NUM_POINTS
    choices = (BOX, POINTS, NOISE_MASK) if has_points else (BOX, NOISE_MASK)
    prompt = choices[int(rng.integers(len(choices)))]
    points = sample_points(label, rng) if has_points else np.zeros((NUM_POINTS, 2), np.float32)
    noise = rng.standard_normal((mask_size, mask_size), dtype=np.float32)
    return {
        "prompt": np.int32(prompt),
        "box": label_to_box(label),
        "points": points,
        "noise_mask": noisy_mask(label, mask_size, noise),
    }
