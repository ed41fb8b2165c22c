"""Image pre-processing and mask post-processing, numerically equal to the official pipeline
(``segment_anything/utils/transforms.py`` ``ResizeLongestSide`` and ``Sam.preprocess`` /
``Sam.postprocess_masks``).

* Resize so the longest side is ``long_side`` with PIL's bilinear filter (what torchvision's
  ``resize`` does with a PIL image), new sides ``int(side * scale + 0.5)``.
* Normalise with SAM's pixel mean / std, then zero-pad bottom / right to ``long_side`` squared.
* Prompt coordinates are scaled from the original frame by ``new / old`` per axis (float64).
* Low-res logits go back by bilinear resizing (half-pixel centres, no antialias) to
  ``long_side`` squared, cropping the padding, and bilinear resizing to the original size.

Bounded compilation: :func:`postprocess_masks` compiles one program per image size. The predictor
and the mask generator use :func:`upscale_padded` instead, where the size is data: the taps of the
last resize (:func:`output_taps`, computed on the host with PyTorch's arithmetic) are arguments,
padded to :func:`bucket_side` lengths, so one program serves every image whose sides fall in the
same buckets (at most 4 programs for every image up to 768 px a side, 49 up to 2048) and gives the
same numbers to the last bit; the caller crops the padding on the host.

:class:`ResizeLongestSide` gathers the resize and coordinate maps under the official class's
method names, so code written against ``segment_anything_hq.utils.transforms`` ports unchanged
(its ``*_torch`` methods take torch tensors or any array-like and return NumPy arrays).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from samhq_jax.errors import InputError
from samhq_jax.image_io import pil_to_rgb

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB, 0-255 scale
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
MASK_THRESHOLD = 0.0


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``(new_h, new_w)`` with the longest side ``long_side``, rounded as the reference does."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def to_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """Return ``(H, W, 3)`` uint8 RGB; grayscale ``(H, W)`` / ``(H, W, 1)`` and RGBA are converted.

    A PIL image is converted by the image reader's rules (:func:`samhq_jax.image_io.pil_to_rgb`:
    16 bits to their high byte, palettes, CMYK; no EXIF rotation, the image is taken as it is).
    Raises ``ValueError`` for anything else (float images, other channel counts, empty images):
    a silent guess would give a silently wrong mask.
    """
    if isinstance(image, Image.Image):
        image = pil_to_rgb(image)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"images must be uint8 in [0, 255], got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"images must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image is empty: {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` uint8 with ``max(h, w) == long_side`` (PIL bilinear).

    An image so elongated that its short side rounds to 0 pixels is an ``InputError`` (the official
    ``ResizeLongestSide`` fails on it too)."""
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if min(new_h, new_w) < 1:
        h, w = image.shape[:2]
        raise InputError(
            f"a {w}x{h} image is too elongated for the model's {long_side}-pixel input: its short side would "
            f"be resized to 0 pixels (at most {2 * long_side}:1 fits)"
        )
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def normalize_and_pad(image: np.ndarray, size: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 -> ``(size, size, 3)`` float32: ``(x - mean) / std``, zero-padded after."""
    out = np.zeros((size, size, 3), np.float32)
    h, w = image.shape[:2]
    out[:h, :w] = (image.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    return out


def preprocess(image: np.ndarray | Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Image -> ``(network input (size, size, 3) float32, input_size (h, w), original_size (H, W))``."""
    rgb = to_rgb_uint8(image)
    resized = resize_longest_side(rgb, size)
    return normalize_and_pad(resized, size), resized.shape[:2], rgb.shape[:2]


def apply_coords(
    coords: np.ndarray, original_size: tuple[int, int], long_side: int, dtype: np.dtype = np.float32
) -> np.ndarray:
    """``(..., 2)`` xy pixels in the original image -> the resized frame (computed in float64,
    returned as ``dtype``, float32 by default)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] *= new_w / old_w
    out[..., 1] *= new_h / old_h
    return out.astype(dtype)


def apply_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], long_side: int, dtype: np.dtype = np.float32
) -> np.ndarray:
    """``(..., 4)`` xyxy boxes in the original image -> the resized frame (``dtype``, float32 by default)."""
    boxes = np.asarray(boxes)
    corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
    return apply_coords(corners, original_size, long_side, dtype).reshape(boxes.shape)


def untorch(x: object) -> object:
    """A torch tensor (any device, also one that requires grad) as a NumPy array, duck-typed through
    its ``detach`` / ``cpu`` / ``numpy`` methods so torch is never imported; anything else as is."""
    if all(hasattr(x, m) for m in ("detach", "cpu", "numpy")):
        return x.detach().cpu().numpy()
    return x


def as_numpy(x: object) -> np.ndarray:
    """Any array-like as a NumPy array: NumPy, JAX (copied to the host explicitly), nested lists, or
    a torch tensor."""
    return np.asarray(jax.device_get(untorch(x)))


def on_device(x: object, dtype: Any = None) -> jax.Array:
    """Any array-like as a JAX array on the default device, converted to ``dtype`` (None: kept).

    A JAX array stays where it is (no host round trip); anything else (NumPy, lists, a torch tensor
    on any device) is converted on the host and uploaded with one explicit ``jax.device_put``, so
    the call also runs under ``jax.transfer_guard("disallow")``.
    """
    if isinstance(x, jax.Array):
        return x if dtype is None else x.astype(dtype)
    return jax.device_put(np.asarray(untorch(x), dtype))


class ResizeLongestSide:
    """The official ``ResizeLongestSide`` (``segment_anything_hq.utils.transforms``) on this module's
    functions: resize images so the longest side is ``target_length`` and map prompt coordinates
    from the original image into that resized frame.

    The NumPy methods return what the official ones return (``apply_image`` bit-identically,
    ``apply_coords`` / ``apply_boxes`` as float64). The ``*_torch`` methods accept torch tensors
    (on any device) or any array-like, and return **NumPy** arrays (float32, as the official
    returns ``torch.float``); torch is not imported. :meth:`SamHQPredictor.predict_torch` takes
    those arrays as they are.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """``(new_h, new_w)`` with the longest side ``long_side_length`` (sides rounded half up)."""
        return preprocess_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` uint8 -> ``(h, w, C)`` uint8, longest side ``target_length`` (PIL bilinear)."""
        return resize_longest_side(np.asarray(image), self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``(..., 2)`` xy in an image of ``original_size = (H, W)`` -> the resized frame, float64."""
        return apply_coords(coords, tuple(original_size), self.target_length, np.float64)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Boxes (``(B, 4)``, or anything of 4 numbers per box) -> ``(B, 4)`` xyxy, float64."""
        return apply_boxes(np.reshape(boxes, (-1, 4)), tuple(original_size), self.target_length, np.float64)

    def apply_image_torch(self, image: object) -> np.ndarray:
        """``(B, C, H, W)`` float images -> ``(B, C, h, w)`` float32 NumPy, longest side
        ``target_length``: bilinear with antialiasing (the official ``F.interpolate(...,
        antialias=True)``; as there, not exactly :meth:`apply_image`, which the model expects)."""
        image = as_numpy(image).astype(np.float32)
        if image.ndim != 4:
            raise InputError(f"apply_image_torch expects (B, C, H, W) images, got {image.shape}")
        size = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return np.asarray(_resize_antialiased(jnp.asarray(image), size))

    def apply_coords_torch(self, coords: object, original_size: tuple[int, ...]) -> np.ndarray:
        """``(..., 2)`` xy (torch tensor or array-like) -> the resized frame, float32 NumPy."""
        return apply_coords(as_numpy(coords), tuple(original_size), self.target_length, np.float32)

    def apply_boxes_torch(self, boxes: object, original_size: tuple[int, ...]) -> np.ndarray:
        """``(B, 4)`` xyxy boxes (torch tensor or array-like) -> ``(B, 4)`` float32 NumPy."""
        return apply_boxes(as_numpy(boxes).reshape(-1, 4), tuple(original_size), self.target_length, np.float32)


@partial(jax.jit, static_argnames=("size",))
def _resize_antialiased(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``(B, C, H, W)`` -> ``(B, C, *size)``: bilinear, half-pixel centres, antialiased when shrinking."""
    return jax.image.resize(images, (*images.shape[:2], *size), "bilinear", antialias=True)


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``(i0, i1)`` and weight of ``i1`` for each output index, as PyTorch computes them
    for ``F.interpolate(mode="bilinear", align_corners=False)`` given an output size (no antialias):
    ``src = (dst + 0.5) * in / out - 0.5``, clamped below at 0."""
    scale = np.float64(np.float32(in_size / out_size))
    # PyTorch evaluates scale * (dst + 0.5) - 0.5 as a fused multiply-add: one rounding to float32.
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_axis(x: np.ndarray | jax.Array, size: int, axis: int, xp: object) -> np.ndarray | jax.Array:
    """Resize one axis of ``x`` (a NumPy or a JAX array, ``xp`` its module) to ``size`` with
    PyTorch's two bilinear taps (:func:`linear_taps`), as ``(1 - l) * a + l * b``."""
    i0, i1, wt = linear_taps(x.shape[axis], size)
    wt = wt.reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    return xp.take(x, i0, axis=axis, mode="clip") * (1 - wt) + xp.take(x, i1, axis=axis, mode="clip") * wt


def bilinear(x: np.ndarray | jax.Array, size: tuple[int, int], axis: int, xp: object) -> np.ndarray | jax.Array:
    """Resize axes ``axis`` and ``axis + 1`` of ``x`` to ``size``, as PyTorch's
    ``F.interpolate(mode="bilinear", align_corners=False)`` CPU kernel: separable two-tap gathers
    (cost linear in the output), along W first, then H."""
    return resize_axis(resize_axis(x, size[1], axis + 1, xp), size[0], axis, xp)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize axes 0 and 1 of ``(H, W, ...)`` to ``size = (h, w)``: bilinear, half-pixel centres, no
    antialias (PyTorch ``F.interpolate(mode="bilinear", align_corners=False)``). Returns float32.

    The official training and evaluation resize images, labels and logits this way.
    """
    x = np.asarray(x, dtype=np.float32)
    h, w = size
    if x.ndim < 2 or min(x.shape[:2]) < 1 or h < 1 or w < 1:
        raise InputError(f"cannot resize an array of shape {x.shape} to {size}")
    return bilinear(x, size, 0, np)


@partial(jax.jit, static_argnames=("input_size", "original_size", "long_side"))
def postprocess_masks(
    low_res: jax.Array, input_size: tuple[int, int], original_size: tuple[int, int], long_side: int
) -> jax.Array:
    """``(..., 4G, 4G)`` low-res logits -> ``(..., H, W)`` float32 logits at the original size.

    Bilinear to ``long_side`` squared, crop to ``input_size``, bilinear to ``original_size``; both
    resizes use half-pixel centres without antialiasing, with PyTorch's taps and order of operations
    (``F.interpolate(align_corners=False)``: equal to the official to the last bit on CPU).
    One program per size: the predictor and the mask generator use :func:`upscale_padded`.
    """
    return bilinear(to_input_frame(low_res, input_size, long_side), original_size, low_res.ndim - 2, jnp)


def to_input_frame(low_res: jax.Array, input_size: tuple[int, int], long_side: int) -> jax.Array:
    """The first half of :func:`postprocess_masks`: ``(..., 4G, 4G)`` -> ``(..., h, w)`` float32
    logits, bilinear to ``long_side`` squared and cropped to ``input_size``."""
    return to_square_frame(low_res, long_side)[..., : input_size[0], : input_size[1]]


MIN_SIDE = 512  # smallest padded side: every image under 512 x 512 shares one padded size
SIDE_STEP = 256  # padded sides are multiples of this (and of amg_ops.COUNT_CHUNK)


def bucket_side(n: int) -> int:
    """The padded length of an output side of ``n`` pixels: at least :data:`MIN_SIDE`, rounded up to
    a multiple of :data:`SIDE_STEP` up to 2048 and of an eighth of the next power of two above
    (2560, 3072, 3584, 4096, 5120, ...). Past 512 the padding is at most 255 px, and 25 % past
    2048; 2 buckets up to 768, 7 up to 2048, 4 more per doubling after. The upscaling costs what
    the padded size does (a 50 x 70 image what a 512 x 512 one does: a few ms a mask on a CPU)."""
    if n < 1:
        raise InputError(f"a side must be at least 1 pixel, got {n}")
    step = max(SIDE_STEP, 1 << max(0, (n - 1).bit_length() - 3))
    return max(MIN_SIDE, -(-n // step) * step)


class Taps(NamedTuple):
    """One axis of a bilinear resize as data: ``index (2, n)`` int32, the two source indices of each
    output index, and ``weight (2, n)`` float32, theirs (``1 - l``, ``l``). Padding entries past the
    real output repeat the last indices (both rows stay sorted) with weights 0."""

    index: np.ndarray
    weight: np.ndarray


def padded_taps(in_size: int, out_size: int, padded: int) -> Taps:
    """:func:`linear_taps` from ``in_size`` to ``out_size``, padded to ``padded`` entries."""
    i0, i1, wt = linear_taps(in_size, out_size)
    index, weight = np.zeros((2, padded), np.int32), np.zeros((2, padded), np.float32)
    index[0, :out_size], index[1, :out_size] = i0, i1
    index[:, out_size:] = index[:, out_size - 1 : out_size]  # repeat the last: indices stay sorted
    weight[0, :out_size], weight[1, :out_size] = 1 - wt, wt  # 1 - wt in float32, as resize_axis
    return Taps(index, weight)


def output_taps(input_size: tuple[int, int], original_size: tuple[int, int]) -> tuple[Taps, Taps]:
    """The taps ``(rows, columns)`` of the last resize of :func:`postprocess_masks` (the input frame
    ``input_size`` to ``original_size``), each padded to :func:`bucket_side` of its side."""
    (h, w), (big_h, big_w) = input_size, original_size
    return padded_taps(h, big_h, bucket_side(big_h)), padded_taps(w, big_w, bucket_side(big_w))


def apply_taps(x: jax.Array, taps: Taps, axis: int) -> jax.Array:
    """Resize axis ``axis`` of ``x`` with ``taps`` (arrays, traced or not): ``x[i0] * (1 - l) + x[i1] * l``,
    the arithmetic of :func:`resize_axis`. The indices are in bounds by construction, so the
    gathers neither clamp nor wrap them."""
    shape = [-1 if d == axis else 1 for d in range(x.ndim)]
    (i0, i1), (w0, w1) = taps.index, taps.weight

    def take(index: jax.Array) -> jax.Array:
        where = (slice(None),) * axis + (index,)
        return x.at[where].get(mode="promise_in_bounds", indices_are_sorted=True, wrap_negative_indices=False)

    return take(i0) * w0.reshape(shape) + take(i1) * w1.reshape(shape)


def to_square_frame(low_res: jax.Array, long_side: int) -> jax.Array:
    """``(..., 4G, 4G)`` -> ``(..., long_side, long_side)`` float32: the first resize of
    :func:`postprocess_masks`, the same for every image size."""
    return bilinear(low_res.astype(jnp.float32), (long_side, long_side), low_res.ndim - 2, jnp)


def upscale_padded(low_res: jax.Array, rows: Taps, columns: Taps, long_side: int) -> jax.Array:
    """:func:`postprocess_masks` with the image size as data: ``(..., 4G, 4G)`` -> ``(..., Hp, Wp)``
    float32 logits, ``(rows, columns) =`` :func:`output_taps` ``(input_size, original_size)``
    (``Hp, Wp`` their padded lengths). ``[..., :H, :W]`` equals :func:`postprocess_masks` to the bit
    (the crop to ``input_size`` is in the taps: they read no row or column past it); the padding
    holds zeros (of either sign). Under ``jax.jit`` it compiles once per low-res shape and padded
    size."""
    x = to_square_frame(low_res, long_side)
    return apply_taps(apply_taps(x, columns, x.ndim - 1), rows, x.ndim - 2)
