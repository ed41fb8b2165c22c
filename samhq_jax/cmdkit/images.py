"""The commands' image files: checked readable before anything is loaded, read as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def check_image(path: Path, where: str = "") -> None:
    """``FileNotFoundError`` / ``ValueError`` (message starting with ``where``) unless ``path`` is a
    readable image."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}no image at {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}cannot read image {path}: {err}") from err


def read_rgb(path: Path) -> np.ndarray:
    """The image at ``path`` as ``(H, W, 3)`` uint8 RGB."""
    return np.asarray(Image.open(path).convert("RGB"))
