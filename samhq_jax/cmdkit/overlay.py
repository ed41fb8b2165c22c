"""Masks and prompts drawn over an image: the ``*_overlay.png`` pictures of the commands."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLORS = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [238, 130, 238], [255, 215, 0]], np.float32)


def overlay(
    image: np.ndarray, masks: Sequence[np.ndarray], boxes: list, points: list, colors: np.ndarray = COLORS
) -> Image.Image:
    """``(H, W, 3)`` uint8 image with ``(P, H, W)`` bool masks tinted (alpha 0.5) in ``colors`` (RGB
    rows, cycled; mask i and box i share one) and prompts drawn."""
    out = image.astype(np.float32)
    for i, m in enumerate(masks):
        out[m] = 0.5 * out[m] + 0.5 * colors[i % len(colors)]
    pic = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    width = max(2, max(image.shape[:2]) // 300)
    for i, b in enumerate(boxes):
        draw.rectangle(list(map(float, b)), outline=tuple(int(c) for c in colors[i % len(colors)]), width=width)
    r = 2 * width
    for x, y, label in points:
        fill = (0, 255, 0) if int(label) == 1 else (255, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    return pic


def overlay_all(image: np.ndarray, masks: list[np.ndarray], seed: int = 0) -> Image.Image:
    """``(H, W, 3)`` uint8 with each ``(H, W)`` bool mask tinted a random colour, largest first so
    small masks stay visible."""
    colours = np.random.default_rng(seed).integers(40, 256, size=(len(masks), 3)).astype(np.float32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    return overlay(image, [masks[i] for i in order], [], [], colours[order])
