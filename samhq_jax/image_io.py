"""Image files as ``(H, W, 3)`` uint8 RGB: the one reader of the commands, evaluation and training.

What a file becomes follows OpenCV's ``cv2.imread(path, cv2.IMREAD_COLOR)`` (what the official demos
read with), flipped to RGB:

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a phone photo comes out upright,
  as OpenCV's ``imread`` gives it. Dataset images skip this (``exif=False``, see
  :mod:`samhq_jax.datasets`).
* 16-bit samples keep their high byte (``value >> 8``, libpng's ``png_set_strip_16``): 16-bit grey
  (PIL modes ``I;16``, ``I;16B``, ...), and mode ``I`` holding values in 0-65535 (how older Pillow
  versions open a 16-bit grey PNG; a 32-bit TIFF with such values is read the same way). Pillow itself
  opens 16-bit RGB, RGBA and grey + alpha PNGs as 8-bit ``RGB`` / ``RGBA``, already the high byte.
* Grey, grey + alpha, bilevel (``1``: 0 / 255), palette (its colours; transparency dropped), CMYK
  (Pillow's conversion, within 1 of OpenCV's) become RGB; alpha is dropped, not composited.
* Refused, with a ``ValueError`` naming the file: 32-bit float images (mode ``F``: no agreed 0-255
  scale; OpenCV refuses them too), mode ``I`` with values outside 0-65535, modes Pillow cannot
  convert, and files that are empty, truncated, corrupt or no image; ``FileNotFoundError`` for a
  missing file.
* Size: Pillow's decompression-bomb limit is kept and not changed here (process-wide state).
  Images up to ``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels (178,956,970 by default: a 108 MP phone
  photo, 12000 x 9000) are read; above ``MAX_IMAGE_PIXELS`` (89,478,485) Pillow warns
  (``DecompressionBombWarning``); larger images are refused. Set ``PIL.Image.MAX_IMAGE_PIXELS``
  higher (or to ``None``) to read larger ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samhq_jax.errors import InputError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # uint16 grey, as PIL names it
UINT16_MAX = 65535


def _open(path: Path, where: str) -> Image.Image:
    """``path`` opened by PIL (header read, pixels not decoded), its errors as one line naming it."""
    if not path.exists():
        raise FileNotFoundError(f"{where}no image at {path}")
    problem = None
    if not path.is_file():
        problem = "a folder, not a file" if path.is_dir() else "not a regular file"
    elif path.stat().st_size == 0:
        problem = "the file is empty"
    else:
        try:
            return Image.open(path)
        except UnidentifiedImageError:
            problem = "not an image file (unknown or corrupt format)"
        except Image.DecompressionBombError as err:
            problem = f"{err} (raise PIL.Image.MAX_IMAGE_PIXELS to read it)"
        except (OSError, ValueError, SyntaxError) as err:
            problem = str(err)
    raise InputError(f"{where}cannot read image {path}: {problem}")


def _check_mode(mode: str) -> None:
    """``ValueError`` for PIL modes that have no 0-255 scale to read them at."""
    if mode == "F":
        raise InputError("32-bit float images (PIL mode F) have no 0-255 scale; save the image as 8- or 16-bit")


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image (any mode) as ``(H, W, 3)`` uint8 RGB by the rules in the module docstring.

    No EXIF orientation is applied here (the image is taken as it is). Raises ``ValueError`` for
    mode ``F``, mode ``I`` outside 0-65535 and modes PIL cannot convert to RGB.
    """
    _check_mode(image.mode)
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > UINT16_MAX:
            raise InputError(
                f"32-bit integer image (PIL mode I) with values {values.min()}..{values.max()}, "
                "outside 16-bit 0-65535; save the image as 8- or 16-bit"
            )
        grey = (values >> 8).astype(np.uint8)  # the high byte, as OpenCV / libpng strip 16 bits
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the palette's colours (converting P to RGB directly warns)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def check_image(path: Path | str, where: str = "") -> None:
    """Check, without decoding the pixels, that ``path`` is an image :func:`read_rgb` can read.

    Reads the header (and, for PNG, verifies the chunks' checksums); a truncated JPEG passes and is
    refused by :func:`read_rgb`. Raises ``FileNotFoundError`` / ``ValueError`` (message starting
    with ``where``, naming the file) otherwise.
    """
    path = Path(path)
    with _open(path, where) as image:
        try:
            _check_mode(image.mode)
            image.verify()
        except (OSError, ValueError, SyntaxError) as err:
            raise InputError(f"{where}cannot read image {path}: {err}") from err


def read_rgb(path: Path | str, *, exif: bool = True) -> np.ndarray:
    """The image at ``path`` as ``(H, W, 3)`` uint8 RGB (module docstring: modes, 16 bits, size).

    ``exif``: apply the EXIF orientation (default, as OpenCV's ``imread``); ``False`` gives the
    stored pixels (as ``skimage.io.imread``, the official training data loader). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything else
    that cannot be read.
    """
    path = Path(path)
    with _open(path, "") as image:
        try:
            if exif:
                ImageOps.exif_transpose(image, in_place=True)  # a no-op without an orientation tag
            return pil_to_rgb(image)
        except (OSError, ValueError, SyntaxError) as err:
            raise InputError(f"cannot read image {path}: {err}") from err
