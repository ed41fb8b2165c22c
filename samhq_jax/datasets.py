"""Image / mask pairs for training and evaluation, and reading them as the official loader does.

Two layouts:

* HQSeg-44K exactly as the official ``train/train.py`` reads it (``HQSEG_LAYOUT``): the seven
  training sets ``HQSEG_TRAIN`` and the four validation sets ``HQSEG_VAL``, below a data root that
  holds the unzipped ``DIS5K/``, ``cascade_psp/`` and ``thin_object_detection/`` (the official
  ``./data``). Images are ``<im_dir>/<stem>.jpg``, masks ``<gt_dir>/<stem>.png``.
* A generic folder ``DIR/images/<stem>.{jpg,jpeg,png}`` with ``DIR/masks/<stem>.png``.

Pairs are checked when they are listed, so a missing mask is a start-up error naming the files, not
a crash hours into training. Files are read with PIL (the official code uses ``skimage.io.imread``):
grey images become 3 channels and a mask with channels keeps channel 0, as the official loader does.

Images go through the library's one reader (:func:`samhq_jax.image_io.read_rgb`) with
``exif=False``: the stored pixels, EXIF orientation not applied. ``skimage.io.imread`` does not
apply it either, and the masks (PNG, no EXIF) are drawn on the stored pixels, so rotating a photo
that carries an orientation tag would turn it away from its mask. 16-bit images keep their high
byte (the official loader would pass 0-65535 values on as if they were 0-255); alpha is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from samhq_jax.errors import InputError
from samhq_jax.image_io import read_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # generic folders; matched case-insensitively
MASK_EXT = ".png"
_MAX_LISTED = 30  # missing files named in one error before "... and N more"


class DatasetError(InputError):
    """A dataset that cannot be used: unknown name, missing folder or file, unreadable image."""


@dataclass(frozen=True)
class Pair:
    """One example: an image and its mask, and the dataset it belongs to."""

    dataset: str
    stem: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class HQSegSplit:
    """Where one HQSeg-44K dataset lives, relative to the data root (official ``train.py`` dicts)."""

    im_dir: str
    gt_dir: str
    im_ext: str = ".jpg"
    gt_ext: str = ".png"


# The official train.py's dataset dicts, with its "./data/" prefix removed.
HQSEG_LAYOUT: dict[str, HQSegSplit] = {
    "DIS5K-TR": HQSegSplit(im_dir="DIS5K/DIS-TR/im", gt_dir="DIS5K/DIS-TR/gt"),
    "ThinObject5k-TR": HQSegSplit(
        im_dir="thin_object_detection/ThinObject5K/images_train",
        gt_dir="thin_object_detection/ThinObject5K/masks_train",
    ),
    "FSS": HQSegSplit(im_dir="cascade_psp/fss_all", gt_dir="cascade_psp/fss_all"),
    "DUTS-TR": HQSegSplit(im_dir="cascade_psp/DUTS-TR", gt_dir="cascade_psp/DUTS-TR"),
    "DUTS-TE": HQSegSplit(im_dir="cascade_psp/DUTS-TE", gt_dir="cascade_psp/DUTS-TE"),
    "ECSSD": HQSegSplit(im_dir="cascade_psp/ecssd", gt_dir="cascade_psp/ecssd"),
    "MSRA10K": HQSegSplit(im_dir="cascade_psp/MSRA_10K", gt_dir="cascade_psp/MSRA_10K"),
    "DIS5K-VD": HQSegSplit(im_dir="DIS5K/DIS-VD/im", gt_dir="DIS5K/DIS-VD/gt"),
    "COIFT": HQSegSplit(im_dir="thin_object_detection/COIFT/images", gt_dir="thin_object_detection/COIFT/masks"),
    "HRSOD": HQSegSplit(im_dir="thin_object_detection/HRSOD/images", gt_dir="thin_object_detection/HRSOD/masks_max255"),
    "ThinObject5k-TE": HQSegSplit(
        im_dir="thin_object_detection/ThinObject5K/images_test",
        gt_dir="thin_object_detection/ThinObject5K/masks_test",
    ),
}
FG_THRESHOLD = 128  # masks are 0-255 images; foreground is > 128 (official training and evaluation)
EMPTY_BOX_MIN = 1e8  # official masks_to_boxes gives [1e8, 1e8, 0, 0] for an empty mask


def label_to_box(label: np.ndarray) -> np.ndarray:
    """Official ``masks_to_boxes`` of one ``(H, W)`` 0-255 label: ``(4,)`` float32
    ``[x_min, y_min, x_max, y_max]`` of ``label > 128``, inclusive pixel indices. An empty mask gives
    the official ``[1e8, 1e8, 0, 0]`` (``x_min > x_max``: test with :func:`is_empty_box`)."""
    fg = np.asarray(label) > FG_THRESHOLD
    cols, rows = np.flatnonzero(fg.any(axis=0)), np.flatnonzero(fg.any(axis=1))
    if cols.size == 0:
        return np.array([EMPTY_BOX_MIN, EMPTY_BOX_MIN, 0, 0], np.float32)
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def is_empty_box(box: np.ndarray) -> bool:
    """Whether :func:`label_to_box` found no foreground."""
    return bool(box[0] > box[2])


HQSEG_TRAIN = ("DIS5K-TR", "ThinObject5k-TR", "FSS", "DUTS-TR", "DUTS-TE", "ECSSD", "MSRA10K")
HQSEG_VAL = ("DIS5K-VD", "COIFT", "HRSOD", "ThinObject5k-TE")


def _listing(what: str, paths: Sequence[Path | str]) -> str:
    """``"<what> (n): a, b, ... and k more"`` with at most ``_MAX_LISTED`` names."""
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    more = f" ... and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return f"{what} ({len(paths)}): {shown}{more}"


def _check_dirs(dirs: Iterable[Path]) -> None:
    """Raise ``DatasetError`` naming every folder of ``dirs`` that does not exist."""
    missing = sorted({str(d) for d in dirs if not d.is_dir()})
    if missing:
        raise DatasetError(_listing("missing dataset folders", missing))


def hqseg_pairs(root: Path, names: Sequence[str], strict: bool = True) -> list[Pair]:
    """Pairs of the HQSeg-44K datasets ``names`` below ``root`` (the official ``./data`` folder).

    As the official ``get_im_gt_name_dict``: every ``<im_dir>/*<im_ext>`` is an image, its mask is
    ``<gt_dir>/<stem><gt_ext>``; masks without an image are ignored (in the cascade_psp sets images
    and masks share one folder). Pairs are sorted by stem within a dataset, datasets kept in the
    order given (the official ``glob`` order is the filesystem's). Raises ``DatasetError`` for an
    unknown name (listing the known ones), missing folders, an empty dataset, or images whose mask
    is missing (listing them). With ``strict=False`` (evaluation, where bad data is reported per
    image) an image without a mask is returned with its absent mask path instead.
    """
    root = Path(root)
    unknown = [n for n in names if n not in HQSEG_LAYOUT]
    if unknown:
        raise DatasetError(f"unknown HQSeg datasets {unknown}; known: {', '.join(HQSEG_LAYOUT)}")
    splits = {n: HQSEG_LAYOUT[n] for n in names}
    _check_dirs(root / d for s in splits.values() for d in (s.im_dir, s.gt_dir))
    pairs: list[Pair] = []
    missing: list[Path] = []
    for name, split in splits.items():
        images = sorted((root / split.im_dir).glob(f"*{split.im_ext}"))
        if not images:
            raise DatasetError(f"{name}: no *{split.im_ext} images in {root / split.im_dir}")
        for image in images:
            stem = image.name[: -len(split.im_ext)]
            mask = root / split.gt_dir / f"{stem}{split.gt_ext}"
            if mask.is_file() or not strict:
                pairs.append(Pair(dataset=name, stem=stem, image=image, mask=mask))
            else:
                missing.append(mask)
    if missing:
        raise DatasetError(_listing("images without a mask; missing masks", missing))
    return pairs


def folder_pairs(folder: Path, name: str | None = None, strict: bool = True) -> list[Pair]:
    """Pairs of a generic folder: ``folder/images/<stem>.{jpg,jpeg,png}`` with ``folder/masks/<stem>.png``.

    ``name`` (default: the folder's name) becomes ``Pair.dataset``. Pairs are sorted by stem.
    Hidden files are skipped; other files with unsupported extensions are skipped with a warning.
    Raises ``DatasetError`` for missing folders, an empty folder, a stem with two image files
    (``a.jpg`` and ``a.png``), and images without a mask or masks without an image (listing them).
    With ``strict=False`` (evaluation) an image without a mask is returned with its absent mask
    path, so the caller reports that one image, and masks without an image are only logged.
    """
    folder = Path(folder)
    name = folder.name if name is None else name
    im_dir, gt_dir = folder / "images", folder / "masks"
    _check_dirs((im_dir, gt_dir))
    images: dict[str, list[Path]] = {}
    skipped: list[str] = []
    for path in sorted(p for p in im_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() in IMAGE_EXTS:
            images.setdefault(path.stem, []).append(path)
        else:
            skipped.append(path.name)
    if skipped:
        logger.warning("%s: %s", im_dir, _listing("skipped files that are not .jpg/.jpeg/.png", skipped))
    masks = {
        p.stem: p
        for p in gt_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == MASK_EXT
    }
    duplicates = [p for paths in images.values() if len(paths) > 1 for p in paths]
    if duplicates:
        raise DatasetError(_listing(f"{im_dir}: stems with more than one image file", duplicates))
    no_mask = [gt_dir / f"{stem}{MASK_EXT}" for stem in images if stem not in masks]
    no_image = sorted(masks[stem] for stem in masks if stem not in images)
    if not strict:
        if no_image:
            logger.warning("%s", _listing(f"masks without an image in {im_dir}, ignored", no_image))
        masks.update({p.stem: p for p in no_mask})
    elif no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(_listing("images without a mask; missing masks", no_mask))
        if no_image:
            parts.append(_listing(f"masks without an image in {im_dir}", no_image))
        raise DatasetError(f"{folder}: " + "; ".join(parts))
    if not images:
        raise DatasetError(f"{folder}: no images in {im_dir}")
    return [Pair(dataset=name, stem=stem, image=paths[0], mask=masks[stem]) for stem, paths in images.items()]


def read_image(path: Path | str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, the stored pixels (no EXIF rotation; module docstring): grey is
    repeated to 3 channels, alpha dropped, palettes applied, 16 bits cut to their high byte.

    Raises ``DatasetError`` naming the file when it is missing, unreadable or corrupt.
    """
    try:
        return read_rgb(path, exif=False)
    except (OSError, ValueError) as e:
        raise DatasetError(str(e)) from e


def read_mask(path: Path) -> np.ndarray:
    """``(H, W)`` uint8 mask, 0-255: channel 0 when the file has channels (the official loader's rule).

    Palette files are expanded to their colours first (as ``skimage.io.imread`` does), 1-bit files
    read as 0 / 255. Raises ``DatasetError`` naming the file when it is missing, unreadable, corrupt
    or not 8-bit.
    """
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read mask {path}: {e}") from e
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    mask = np.asarray(im)
    if mask.dtype != np.uint8:
        raise DatasetError(f"mask {path} is not 8-bit (PIL mode {im.mode})")
    return mask if mask.ndim == 2 else np.ascontiguousarray(mask[..., 0])
