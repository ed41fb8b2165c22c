"""``SamHQProcessor``: the Hugging Face processor API (``transformers.SamHQProcessor``) in NumPy.

Code written against the Hugging Face model page ports by changing the import::

    from samhq_jax import SamHQModel, SamHQProcessor          # was: from transformers import ...

    processor = SamHQProcessor.from_pretrained("syscv-community/sam-hq-vit-base")
    inputs = processor(raw_image, input_points=[[[450, 600]]], return_tensors="np")
    outputs = model(**inputs)
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )

Same nesting, shapes, coordinate rescaling and keys as ``transformers`` 4.53, with three
deliberate differences: tensors are NumPy (``return_tensors="np"``, the default), JAX
(``"jax"``), or for ``"pt"`` host NumPy arrays that answer torch's ``.to(device)``, ``.cpu()`` and
``.numpy()`` (:class:`~samhq_jax.torch_style.OfficialTensor`; the model then answers in kind), never
torch tensors; ragged point lists are padded with label and coordinate -10 by default
(``transformers``' ``SamHQProcessor`` defaults to ``None`` and fails with a ``TypeError``), also when
no labels are given (real points get label 1); and inputs it would silently misread (prompts for
more images than given, labels outside {1, 0, -1, -10}, prompts of different lengths along an
axis other than the point axis) raise ``ValueError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from samhq_jax import hf_mask_generation
from samhq_jax.config import ModelConfig
from samhq_jax.errors import InputError
from samhq_jax.hf_mask_generation import as_tensor, check_return_tensors
from samhq_jax.prompt_check import LABELS_TEXT, VALID_LABELS, check_boxes, check_finite, check_labels
from samhq_jax.prompt_encoder import LABEL_NEGATIVE, LABEL_NOT_A_POINT, LABEL_PAD, LABEL_POSITIVE
from samhq_jax.torch_style import OfficialTensor
from samhq_jax.transforms import (
    PIXEL_MEAN,
    PIXEL_STD,
    as_numpy,
    on_device,
    postprocess_masks,
    preprocess,
    preprocess_shape,
)

HF_LABELS = (LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_NOT_A_POINT, LABEL_PAD)
HF_LABELS_TEXT = f"{LABELS_TEXT}, or {LABEL_PAD} (padding)"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
DEFAULT_IMG_SIZE = 1024  # every released SAM / SAM-HQ checkpoint
LOW_RES_FACTOR = 4  # low-res mask side = image embedding side * 4 = input side / 4
PIL_BILINEAR = 2  # transformers' "resample" code for PIL's bilinear filter
PIL_BICUBIC = 3  # the default filter of transformers' SamImageProcessor.resize (preprocessing uses bilinear)
PIL_FILTERS = (0, 1, 2, 3, 4, 5)  # PIL's Resampling codes: nearest, lanczos, bilinear, bicubic, box, hamming
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"  # transformers' ChannelDimension values
JSON_DECIMALS = 6  # PIXEL_MEAN / PIXEL_STD are float32: /255 written as ImageNet's 0.485, ... (not 0.48500001)


class BatchFeature(dict):
    """The processor's output: a dict (``model(**inputs)``) whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def to(self, device: Any) -> BatchFeature:
        """Arrays to a JAX device (a ``jax.Device``, or ``"cpu"`` / ``"gpu"`` / ``"cuda"`` / ``"tpu"``);
        those of a ``return_tensors="pt"`` call stay host arrays (as :meth:`OfficialTensor.to`)."""
        if all(isinstance(v, OfficialTensor) for v in self.values()):
            return BatchFeature({k: v.to(device) for k, v in self.items()})
        dev = jax_device(device)
        return BatchFeature({k: jax.device_put(v, dev) for k, v in self.items()})


def jax_device(device: Any) -> Any:
    """A ``jax.Device`` as is; ``"cpu"``, ``"gpu"``, ``"cuda[:i]"``, ``"tpu"`` or a ``torch.device`` of
    these -> that JAX device."""
    if isinstance(device, jax.Device):
        return device
    device = str(device)
    platform = {"cuda": "gpu"}.get(device.split(":")[0], device.split(":")[0])
    try:
        return jax.devices(platform)[int(device.split(":")[1]) if ":" in device else 0]
    except (RuntimeError, IndexError, ValueError) as err:
        raise InputError(f"no JAX {platform!r} device for {device!r}: {err}") from err


class SamHQImageProcessor:
    """Resize (longest side), normalise and pad images; post-process masks.

    Attributes:
      longest_edge: the network input side S (1024): images are resized so their longest side is S.
      pad_size: images are zero-padded (after normalising) to ``pad_size`` square (= S).
      mask_size: segmentation maps are resized (nearest) to this longest side (S / 4 = 256).
      mask_pad_size: and zero-padded to this square (256).
    """

    def __init__(
        self,
        longest_edge: int = DEFAULT_IMG_SIZE,
        pad_size: int | None = None,
        mask_size: int | None = None,
        mask_pad_size: int | None = None,
    ) -> None:
        self.longest_edge = longest_edge
        self.pad_size = longest_edge if pad_size is None else pad_size
        self.mask_size = longest_edge // LOW_RES_FACTOR if mask_size is None else mask_size
        self.mask_pad_size = self.mask_size if mask_pad_size is None else mask_pad_size
        if self.pad_size != self.longest_edge:
            raise InputError(f"pad_size {self.pad_size} must equal longest_edge {self.longest_edge} (square input)")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> SamHQImageProcessor:
        """From a ``preprocessor_config.json`` (HF folder or hub snapshot), else the checkpoint's input size."""
        return cls(**_processor_sizes(path))

    def __call__(
        self,
        images: Any,
        segmentation_maps: Any = None,
        return_tensors: str | None = "np",
    ) -> BatchFeature:
        """Pre-process one image or a list.

        Args:
          images: a PIL image, an ``(H, W[, C])`` / ``(C, H, W)`` uint8 array (C in 1, 3, 4), or a list.
          segmentation_maps: optional mask(s) per image (bool / integer 0..255, ``(H, W)``).
          return_tensors: ``"np"`` (default; ``None`` means the same), ``"jax"`` or ``"pt"`` (host
            arrays answering torch's ``.to(device)`` / ``.cpu()`` / ``.numpy()``; no torch tensor).

        Returns:
          ``pixel_values (B, 3, S, S)`` float32, ``original_sizes (B, 2)`` and
          ``reshaped_input_sizes (B, 2)`` int64 (H, W), and with maps ``labels (B, M, M)`` int64
          (M = ``mask_pad_size``).
        """
        kind = check_return_tensors(return_tensors)
        images = _as_list(images)
        if not images:
            raise InputError("no images given")
        pixels, original, reshaped = [], [], []
        for image in images:
            net_input, input_size, original_size = preprocess(_as_hwc(image), self.longest_edge)
            pixels.append(net_input.transpose(2, 0, 1))
            original.append(original_size)
            reshaped.append(input_size)
        out = {
            "pixel_values": np.stack(pixels),
            "original_sizes": np.asarray(original, np.int64),
            "reshaped_input_sizes": np.asarray(reshaped, np.int64),
        }
        if segmentation_maps is not None:
            maps = _as_list(segmentation_maps)
            if len(maps) != len(images):
                raise InputError(f"got {len(maps)} segmentation maps for {len(images)} images")
            out["labels"] = np.stack([self._preprocess_mask(m) for m in maps])
        return _convert(out, kind)

    preprocess = __call__  # transformers' name for the call

    def _preprocess_mask(self, mask: Any) -> np.ndarray:
        """``(H, W)`` mask -> ``(M, M)`` int64: nearest resize to the longest side, zero padding."""
        arr = np.asarray(mask)
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
        if arr.ndim != 2:
            raise InputError(f"segmentation maps must be (H, W), got {arr.shape}")
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if not np.issubdtype(arr.dtype, np.integer) or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise InputError(f"segmentation maps must hold integers in [0, 255] (or bool), got dtype {arr.dtype}")
        h, w = preprocess_shape(*arr.shape, self.mask_size)
        resized = np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((w, h), Image.NEAREST))
        out = np.zeros((self.mask_pad_size, self.mask_pad_size), np.int64)
        out[:h, :w] = resized
        return out

    def post_process_masks(
        self,
        masks: Sequence[Any],
        original_sizes: Any,
        reshaped_input_sizes: Any,
        mask_threshold: float = 0.0,
        binarize: bool = True,
        pad_size: int | dict | None = None,
        return_tensors: str | None = None,
    ) -> list:
        """Low-res logits -> masks at each image's original size (``transformers``' signature).

        Per image i: bilinear resize of ``masks[i]`` ``(P, K, 4G, 4G)`` to ``pad_size`` squared,
        crop to ``reshaped_input_sizes[i]``, bilinear resize to ``original_sizes[i]`` (half-pixel
        centres, no antialiasing), then ``> mask_threshold`` if ``binarize``.

        Returns:
          A list with one ``(P, K, H_i, W_i)`` array per image: bool with ``binarize``, else float32
          logits; NumPy (``return_tensors="np"``), JAX (``"jax"``) or host arrays answering torch's
          methods (``"pt"``); left at None, ``"pt"`` for masks from a ``"pt"`` call (transformers'
          default), else ``"np"``.
        """
        torch_style = isinstance(masks, OfficialTensor) or any(isinstance(m, OfficialTensor) for m in masks)
        kind = check_return_tensors(return_tensors or ("pt" if torch_style else "np"))
        side = self.pad_size if pad_size is None else pad_size
        if isinstance(side, dict):
            if side.get("height") != side.get("width"):
                raise InputError(f"pad_size must be square, got {side}")
            side = side["height"]
        original = np.asarray(original_sizes).reshape(-1, 2).tolist()
        reshaped = np.asarray(reshaped_input_sizes).reshape(-1, 2).tolist()
        if len(original) != len(reshaped) or len(masks) < len(original):
            raise InputError(
                f"got masks for {len(masks)} images, {len(original)} original sizes and {len(reshaped)} reshaped sizes"
            )
        out = []
        threshold = jax.device_put(np.float32(mask_threshold))
        # zip, not masks[i]: indexing a device array by a Python int would upload the index
        for i, (item, orig, resh) in enumerate(zip(masks, original, reshaped, strict=False)):
            low = on_device(item)
            if low.ndim != 4:
                raise InputError(f"masks[{i}] must be (P, K, H, W) low-res logits, got {low.shape}")
            full = postprocess_masks(low, tuple(resh), tuple(orig), side)
            full = full > threshold if binarize else full
            out.append(as_tensor(kind, full))
        return out

    # ---- transformers' SamImageProcessor surface beyond preprocessing ------------------------------
    @property
    def size(self) -> dict[str, int]:
        """transformers' ``size``: ``{"longest_edge": S}``."""
        return {"longest_edge": self.longest_edge}

    def generate_crop_boxes(
        self,
        image: Any,
        target_size: int,
        crop_n_layers: int = 0,
        overlap_ratio: float = 512 / 1500,
        points_per_crop: int = 32,
        crop_n_points_downscale_factor: int = 1,
        device: Any = None,
        input_data_format: Any = None,
        return_tensors: str = "np",
    ) -> tuple:
        """:func:`samhq_jax.hf_mask_generation.generate_crop_boxes` (``device`` / ``input_data_format``
        accepted and unused: arrays are NumPy or JAX, images channels-last)."""
        del device, input_data_format
        return hf_mask_generation.generate_crop_boxes(
            image,
            target_size,
            crop_n_layers,
            overlap_ratio,
            points_per_crop,
            crop_n_points_downscale_factor,
            return_tensors,
        )

    def resize(
        self,
        image: Any,
        size: dict[str, int],
        resample: int = PIL_BICUBIC,
        data_format: Any = None,
        input_data_format: Any = None,
        reducing_gap: float | None = None,
    ) -> np.ndarray:
        """transformers' ``SamImageProcessor.resize``: the longest side to ``size["longest_edge"]``, the
        other in proportion (rounded half up), with PIL's filter ``resample`` (default bicubic, as
        there; preprocessing itself resizes bilinearly).

        Args:
          image: ``(H, W, C)`` or ``(C, H, W)`` array (C in 1, 3 unless ``input_data_format`` says),
            uint8, or float holding integers in [0, 255] or values in [0, 1].
          size: ``{"longest_edge": L}``.
          resample: a PIL resampling code (``PILImageResampling`` / ``PIL.Image.Resampling``).
          data_format, input_data_format: ``"channels_first"`` / ``"channels_last"`` (or transformers'
            ``ChannelDimension``) of the output and the input; None keeps / infers the input's.
          reducing_gap: PIL's ``reducing_gap``.

        Returns:
          The resized image, in the input's dtype for uint8 and integer-valued images (uint8), float32
          for [0, 1] images (kept in [0, 1]).
        """
        if not isinstance(size, dict) or "longest_edge" not in size:
            raise InputError(f"The `size` dictionary must contain the key `longest_edge`. Got {size!r}")
        if int(resample) not in PIL_FILTERS:
            raise InputError(f"resample must be a PIL resampling code {PIL_FILTERS}, got {resample!r}")
        arr = as_numpy(image)
        layout = _channel_format(arr, input_data_format)
        hwc = arr.transpose(1, 2, 0) if layout == CHANNELS_FIRST else arr
        rescaled = _rescale_for_pil(hwc)
        pixels = (hwc.astype(np.float64) * 255).astype(np.float32) if rescaled else hwc
        pixels = pixels.astype(np.uint8)
        h, w = preprocess_shape(*hwc.shape[:2], int(size["longest_edge"]))
        pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        out = np.asarray(pil.resize((w, h), resample=int(resample), reducing_gap=reducing_gap))
        out = out[..., None] if out.ndim == 2 else out
        out = _to_channel_format(out, layout if data_format is None else data_format)
        return (out.astype(np.float64) * (1 / 255)).astype(np.float32) if rescaled else out

    def pad_image(
        self,
        image: Any,
        pad_size: dict[str, int],
        data_format: Any = None,
        input_data_format: Any = None,
        constant_values: float = 0.0,
    ) -> np.ndarray:
        """transformers' ``SamImageProcessor.pad_image``: pad ``image`` at the right and bottom with
        ``constant_values`` (zeros) to ``(pad_size["height"], pad_size["width"])``.

        ``image`` is ``(H, W, C)`` or ``(C, H, W)`` (inferred as :meth:`resize` does, or given by
        ``input_data_format``); ``data_format`` the output's layout (None: the input's). The dtype is
        kept. A pad size smaller than the image raises an :class:`~samhq_jax.errors.InputError`.
        """
        if not isinstance(pad_size, dict) or not {"height", "width"} <= pad_size.keys():
            raise InputError(f"pad_size must be a dict with 'height' and 'width', got {pad_size!r}")
        arr = as_numpy(image)
        layout = _channel_format(arr, input_data_format)
        h, w = arr.shape[1:] if layout == CHANNELS_FIRST else arr.shape[:2]
        out_h, out_w = int(pad_size["height"]), int(pad_size["width"])
        if out_h < h or out_w < w:
            raise InputError(f"pad_size {out_h}x{out_w} (height x width) is smaller than the {h}x{w} image")
        spatial = ((0, out_h - h), (0, out_w - w))
        widths = ((0, 0), *spatial) if layout == CHANNELS_FIRST else (*spatial, (0, 0))
        out = np.pad(arr, widths, mode="constant", constant_values=constant_values)
        if data_format is None:
            return out
        return _to_channel_format(out.transpose(1, 2, 0) if layout == CHANNELS_FIRST else out, data_format)

    def filter_masks(self, *args: Any, **kwargs: Any) -> tuple:
        """:func:`samhq_jax.hf_mask_generation.filter_masks`."""
        return hf_mask_generation.filter_masks(*args, **kwargs)

    def post_process_for_mask_generation(self, *args: Any, **kwargs: Any) -> tuple:
        """:func:`samhq_jax.hf_mask_generation.post_process_for_mask_generation`."""
        return hf_mask_generation.post_process_for_mask_generation(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` transformers' ``SamImageProcessor`` writes for these sizes."""
        return {
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_pad": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [round(float(v) / 255, JSON_DECIMALS) for v in PIXEL_MEAN],
            "image_std": [round(float(v) / 255, JSON_DECIMALS) for v in PIXEL_STD],
            "image_processor_type": "SamImageProcessor",
            "mask_pad_size": {"height": self.mask_pad_size, "width": self.mask_pad_size},
            "mask_size": {"longest_edge": self.mask_size},
            "pad_size": {"height": self.pad_size, "width": self.pad_size},
            "processor_class": "SamHQProcessor",
            "resample": PIL_BILINEAR,
            "rescale_factor": 1 / 255,
            "size": {"longest_edge": self.longest_edge},
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``save_directory/preprocessor_config.json`` (:meth:`to_dict`), which transformers'
        ``SamHQProcessor`` / ``SamImageProcessor.from_pretrained`` and ours read."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return folder / PREPROCESSOR_CONFIG


class SamHQProcessor:
    """Images and point / box prompts -> model inputs, as ``transformers.SamHQProcessor``."""

    def __init__(self, image_processor: SamHQImageProcessor | None = None) -> None:
        self.image_processor = image_processor or SamHQImageProcessor()

    @property
    def target_size(self) -> int:
        return self.image_processor.longest_edge

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> SamHQProcessor:
        """A hub id (through the local hub cache), an HF folder, an official checkpoint or ours."""
        return cls(SamHQImageProcessor.from_pretrained(path))

    def __call__(
        self,
        images: Any = None,
        segmentation_maps: Any = None,
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        return_tensors: str | None = "np",
        point_pad_value: int = LABEL_PAD,
    ) -> BatchFeature:
        """Pre-process images and rescale prompts from original-image pixels to the input frame.

        Args:
          images: one image or a list (see :class:`SamHQImageProcessor`).
          segmentation_maps: optional masks, returned as ``labels``.
          input_points: per image ``[point][x, y]`` (one prompt) or ``[prompt][point][x, y]``:
            a nested list or an array ``(B, N, 2)`` / ``(B, P, N, 2)``. Point counts may differ
            between images; shorter lists are padded with ``point_pad_value``.
          input_labels: per image ``[point]`` or ``[prompt][point]``: 1 foreground, 0 background,
            -1 ignore (-10 padding). Default: 1 for every given point.
          input_boxes: per image ``[box][x0, y0, x1, y1]``: a nested list or ``(B, nb, 4)``.
          return_tensors: ``"np"`` (default; ``None`` means the same), ``"jax"`` or ``"pt"`` (host
            arrays answering torch's ``.to(device)`` / ``.cpu()`` / ``.numpy()``; no torch tensor).
          point_pad_value: coordinate and label of padding points (-10, as ``SamProcessor``).

        Returns:
          The image processor's keys plus ``input_points (B, P, N, 2)`` float64, ``input_labels
          (B, P, N)`` int64 and ``input_boxes (B, nb, 4)`` float64, in input-frame pixels.
        """
        kind = check_return_tensors(return_tensors)
        if images is None:
            raise InputError("images are required")
        encoding = self.image_processor(images, segmentation_maps=segmentation_maps, return_tensors="np")
        sizes = [tuple(s) for s in encoding["original_sizes"].tolist()]
        points = _per_image(input_points, "input_points", sizes, (2,))
        labels = _per_image(input_labels, "input_labels", sizes, ())
        boxes = _per_image(input_boxes, "input_boxes", sizes, (4,))
        if points is not None:
            points = [self._rescale(p, s) for p, s in zip(points, sizes, strict=True)]
            if len({p.shape[-2] for p in points}) > 1:  # ragged: pad (labels 1 for given points if none)
                labels = labels or [np.ones(p.shape[:-1], np.int64) for p in points]
                points, labels = _pad_points(points, labels, point_pad_value)
            encoding["input_points"] = _stack(points, "input_points", 4)
        if labels is not None:
            if points is None:
                raise InputError("input_labels were given without input_points")
            encoding["input_labels"] = _stack(labels, "input_labels", 3).astype(np.int64)
            check_labels(
                encoding["input_labels"],
                "input_labels",
                (*VALID_LABELS, point_pad_value),
                f"{LABELS_TEXT}, or the pad value {point_pad_value}",
            )
            if encoding["input_labels"].shape != encoding["input_points"].shape[:-1]:
                raise InputError(
                    f"input_labels {encoding['input_labels'].shape} do not match input_points "
                    f"{encoding['input_points'].shape}"
                )
        if boxes is not None:
            boxes = [
                self._rescale(b.reshape(*b.shape[:-1], 2, 2), s).reshape(b.shape)
                for b, s in zip(boxes, sizes, strict=True)
            ]
            encoding["input_boxes"] = _stack(boxes, "input_boxes", 3)
        return _convert(dict(encoding), kind)

    def _rescale(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """``(..., 2)`` xy in original pixels -> float64 xy in the resized (input) frame."""
        old_h, old_w = original_size
        new_h, new_w = preprocess_shape(old_h, old_w, self.target_size)
        out = coords.astype(np.float64)
        out[..., 0] *= new_w / old_w
        out[..., 1] *= new_h / old_h
        return out

    def post_process_masks(self, *args: Any, **kwargs: Any) -> list:
        """:meth:`SamHQImageProcessor.post_process_masks`."""
        return self.image_processor.post_process_masks(*args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[Path]:
        """:meth:`SamHQImageProcessor.save_pretrained` (the processor has no other file); returns the
        files written, as transformers does."""
        return [self.image_processor.save_pretrained(save_directory)]


def _convert(arrays: dict[str, np.ndarray], kind: str) -> BatchFeature:
    return BatchFeature({k: as_tensor(kind, v) for k, v in arrays.items()})


def _as_list(x: Any) -> list:
    """One image (or map) or a list / tuple of them -> a list."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, Image.Image):
        return [x]
    arr = as_numpy(x)
    return list(arr) if arr.ndim == 4 else [arr]


def _as_hwc(image: Any) -> np.ndarray | Image.Image:
    """PIL images as they are; ``(C, H, W)`` arrays (C in 1, 3, 4) transposed to ``(H, W, C)``."""
    if isinstance(image, Image.Image):
        return image
    arr = as_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    return arr


def _format_name(data_format: Any) -> str:
    """``"channels_first"`` / ``"channels_last"`` from either string or transformers' ``ChannelDimension``."""
    name = getattr(data_format, "value", data_format)
    if name not in (CHANNELS_FIRST, CHANNELS_LAST):
        raise InputError(f"data format must be {CHANNELS_FIRST!r} or {CHANNELS_LAST!r}, got {data_format!r}")
    return name


def _channel_format(image: np.ndarray, given: Any = None) -> str:
    """The channel layout of a 3-D image: ``given``, else inferred as transformers does (a first axis of
    1 or 3 channels first, else a last axis of 1 or 3 channels last)."""
    if image.ndim != 3:
        raise InputError(f"the image must be (H, W, C) or (C, H, W), got shape {image.shape}")
    if given is not None:
        return _format_name(given)
    if image.shape[0] in (1, 3):
        return CHANNELS_FIRST
    if image.shape[-1] in (1, 3):
        return CHANNELS_LAST
    raise InputError(f"cannot tell the channel axis of an image of shape {image.shape}: pass input_data_format")


def _to_channel_format(hwc: np.ndarray, layout: str) -> np.ndarray:
    """An ``(H, W, C)`` image in ``layout``."""
    return hwc.transpose(2, 0, 1) if _format_name(layout) == CHANNELS_FIRST else hwc


def _rescale_for_pil(image: np.ndarray) -> bool:
    """Whether an image must be scaled by 255 before it becomes a PIL (uint8) image, as transformers
    decides: no for uint8 and integer values in [0, 255], yes for other values in [0, 1]; others raise."""
    if image.dtype == np.uint8:
        return False
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        raise InputError(f"the image must hold finite numbers, got dtype {image.dtype}")
    if np.allclose(image, image.astype(int)):
        if image.min(initial=0) < 0 or image.max(initial=0) > 255:
            raise InputError(f"image values must lie in [0, 255], got [{image.min()}, {image.max()}]")
        return False
    if image.min(initial=0) < 0 or image.max(initial=0) > 1:
        raise InputError(f"non-integer image values must lie in [0, 1], got [{image.min()}, {image.max()}]")
    return True


def _per_image(x: Any, name: str, sizes: list[tuple[int, int]], tail: tuple[int, ...]) -> list[np.ndarray] | None:
    """Split prompts into one array per image and check each ends in ``tail`` (finite values)."""
    if x is None:
        return None
    items = list(x) if isinstance(x, (list, tuple)) else list(as_numpy(x))
    if len(items) != len(sizes):
        raise InputError(f"{name} has entries for {len(items)} images, but {len(sizes)} image(s) were given")
    out = []
    for i, item in enumerate(items):
        try:
            arr = as_numpy(item).astype(np.float64)
        except ValueError as err:
            raise InputError(f"{name}[{i}] is ragged inside one image: {err}") from err
        if arr.ndim < 1 + len(tail) or arr.shape[arr.ndim - len(tail) :] != tail:
            want = "[point][x, y]" if tail == (2,) else "[box][x0, y0, x1, y1]" if tail == (4,) else "[point]"
            raise InputError(f"{name}[{i}] must be nested as {want} (optionally with a prompt level), got {arr.shape}")
        check_finite(arr, f"{name}[{i}]", row=tail != ())
        if tail == (4,):
            check_boxes(arr, f"{name}[{i}]")
        out.append(arr)
    return out


def _pad_points(
    points: list[np.ndarray], labels: list[np.ndarray], pad: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pad each image's point axis to the longest, with coordinate and label ``pad``."""
    for i, (p, lab) in enumerate(zip(points, labels, strict=True)):
        if lab.shape != p.shape[:-1]:
            raise InputError(f"input_labels[{i}] has shape {lab.shape}, input_points[{i}] {p.shape}")
    n = max(p.shape[-2] for p in points)
    out_p, out_l = [], []
    for p, lab in zip(points, labels, strict=True):
        extra = n - p.shape[-2]
        out_p.append(np.concatenate([p, np.full((*p.shape[:-2], extra, 2), float(pad))], axis=-2))
        out_l.append(np.concatenate([lab, np.full((*lab.shape[:-1], extra), pad)], axis=-1))
    return out_p, out_l


def _stack(items: list[np.ndarray], name: str, ndim: int) -> np.ndarray:
    """Stack per-image arrays and add the prompt axis (axis 1) when it was left out."""
    shapes = {a.shape for a in items}
    if len(shapes) > 1:
        raise InputError(f"{name} differ in shape between images: {sorted(shapes)} (only point counts are padded)")
    out = np.stack(items)
    return out[:, None] if out.ndim == ndim - 1 else out


def _processor_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Image processor sizes for a checkpoint source (reads a small JSON file at most)."""
    from samhq_jax.checkpoint import resolve_source

    local = resolve_source(path)
    pre = local / PREPROCESSOR_CONFIG if local.is_dir() else None
    if pre is not None and pre.is_file():
        cfg = json.loads(pre.read_text())
        mean = np.asarray(cfg.get("image_mean", PIXEL_MEAN / 255))
        std = np.asarray(cfg.get("image_std", PIXEL_STD / 255))
        if not (np.allclose(mean * 255, PIXEL_MEAN) and np.allclose(std * 255, PIXEL_STD)):
            raise InputError(f"{pre}: only SAM's normalisation is supported, got mean {mean}, std {std}")
        side = cfg.get("size", {}).get("longest_edge", DEFAULT_IMG_SIZE)
        return {
            "longest_edge": side,
            "pad_size": cfg.get("pad_size", {}).get("height", side),
            "mask_size": cfg.get("mask_size", {}).get("longest_edge", side // LOW_RES_FACTOR),
            "mask_pad_size": cfg.get("mask_pad_size", {}).get("height", side // LOW_RES_FACTOR),
        }
    cfg_file = local / "config.json" if local.is_dir() else None
    if cfg_file is not None and cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        if "config" in cfg:  # ours
            return {"longest_edge": ModelConfig.from_dict(cfg["config"]).img_size}
        return {"longest_edge": int(cfg.get("vision_config", {}).get("image_size", DEFAULT_IMG_SIZE))}
    return {"longest_edge": DEFAULT_IMG_SIZE}


__all__ = ["BatchFeature", "SamHQImageProcessor", "SamHQProcessor"]
