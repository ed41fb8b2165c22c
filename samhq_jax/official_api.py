"""The official ``segment_anything_hq`` API under its own names, so official scripts run by changing
their import line only.

    from samhq_jax import sam_model_registry, SamPredictor, SamAutomaticMaskGenerator

    sam = sam_model_registry["vit_l"](checkpoint="sam_hq_vit_l.pth")   # any source load_pretrained takes
    sam.to(device="cuda")                                              # a JAX GPU; "cpu" / a jax.Device
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(box=np.array([[4, 13, 1007, 1023]]), multimask_output=False)
    records = SamAutomaticMaskGenerator(sam, points_per_side=32).generate(image)

Port of ``segment_anything_hq/build_sam.py``, ``modeling/sam.py`` (the :class:`Sam` object scripts
hold), ``predictor.py`` and ``automatic_mask_generator.py`` as adapters over :class:`SamHQPredictor`
and :class:`SamHQAutomaticMaskGenerator`: one model, one compiled path. The registry is built from
:data:`samhq_jax.config.PRESETS` (``vit_b`` / ``vit_l`` / ``vit_h`` / ``vit_tiny`` and the test-size
``tiny_*``), plus the official ``"default"`` (= ``vit_h``).

Where the official hands out torch tensors this API hands out NumPy arrays
(:class:`~samhq_jax.predictor.TensorLikeArray`: ``.cpu()`` / ``.numpy()`` work). Hence ``device``
(of the model and of the predictor) is ``torch.device("cpu")`` when PyTorch is installed, so that
``torch.tensor(x, device=predictor.device)`` keeps working, and the JAX device otherwise; the JAX
device holding the weights is ``jax_device``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.checkpoint import UntrainedHQWarning, load_pretrained
from samhq_jax.config import PRESETS, ImageEncoderConfig, ModelConfig
from samhq_jax.errors import InputError
from samhq_jax.hf_processor import jax_device
from samhq_jax.hf_vision import ENCODER, compiled_vision
from samhq_jax.mesh_predictor import MeshPredictor
from samhq_jax.precision import LIBRARY, Policy
from samhq_jax.predictor import SamHQPredictor
from samhq_jax.sam_hq import ImageEmbeddings, init_params
from samhq_jax.torch_style import OfficialTensor, host_tensor
from samhq_jax.transforms import (
    MASK_THRESHOLD,
    PIXEL_MEAN,
    PIXEL_STD,
    ResizeLongestSide,
    as_numpy,
    normalize_and_pad,
    postprocess_masks,
)

DEFAULT_MODEL_TYPE = "vit_h"  # the official registry's "default"
INIT_SEED = 0  # weights of a model built without a checkpoint


def torch_facing_device(device: jax.Device) -> Any:
    """What ``.device`` reports: ``torch.device("cpu")`` when PyTorch is installed (our outputs are
    host NumPy arrays, and torch cannot place tensors on a JAX device), else ``device`` itself."""
    if importlib.util.find_spec("torch") is None:
        return device
    import torch

    return torch.device("cpu")


class OfficialResizeLongestSide(ResizeLongestSide):
    """The predictor's ``transform``: :class:`~samhq_jax.transforms.ResizeLongestSide` whose ``*_torch``
    methods return :class:`OfficialTensor` (so ``apply_boxes_torch(...).to(device)`` works)."""

    def apply_image_torch(self, image: object) -> OfficialTensor:
        return super().apply_image_torch(image).view(OfficialTensor)

    def apply_coords_torch(self, coords: object, original_size: tuple[int, ...]) -> OfficialTensor:
        return super().apply_coords_torch(coords, original_size).view(OfficialTensor)

    def apply_boxes_torch(self, boxes: object, original_size: tuple[int, ...]) -> OfficialTensor:
        return super().apply_boxes_torch(boxes, original_size).view(OfficialTensor)


@dataclasses.dataclass(frozen=True)
class ImageEncoderInfo:
    """What scripts read from the official ``sam.image_encoder``: the input side ``img_size`` (1024),
    ``patch_size`` (16; TinyViT: its total stride) and the output channels ``out_chans`` (256)."""

    img_size: int
    patch_size: int
    out_chans: int


@dataclasses.dataclass(frozen=True)
class PromptEncoderInfo:
    """What scripts read from the official ``sam.prompt_encoder``: ``embed_dim`` (256),
    ``image_embedding_size`` ``(64, 64)``, ``input_image_size`` ``(1024, 1024)``, ``mask_input_size``
    ``(256, 256)``."""

    embed_dim: int
    image_embedding_size: tuple[int, int]
    input_image_size: tuple[int, int]
    mask_input_size: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class MaskDecoderInfo:
    """What scripts read from the official ``sam.mask_decoder``: ``transformer_dim`` (256),
    ``num_multimask_outputs`` (3), ``num_mask_tokens`` (SAM's 4, plus the HQ token: 5), ``vit_dim``."""

    transformer_dim: int
    num_multimask_outputs: int
    num_mask_tokens: int
    vit_dim: int


class Sam:
    """The official ``Sam`` object as scripts use it: built by :data:`sam_model_registry`, handed to
    :class:`SamPredictor` and :class:`SamAutomaticMaskGenerator`.

    Attributes:
      config / params: our :class:`~samhq_jax.config.ModelConfig` and the parameter tree (on
        ``jax_device``); policy: the :class:`~samhq_jax.precision.Policy` its predictors run under.
      image_encoder / prompt_encoder / mask_decoder: read-only sizes (:class:`ImageEncoderInfo`, ...).
      mask_threshold (0.0), image_format ("RGB"), pixel_mean / pixel_std ``(3, 1, 1)``: as the official.
      plain_sam: built by :data:`sam_model_registry_baseline`: its predictors decode as the original
        SAM (``sam_only``: SAM's mask decoder, no HQ token; three masks with ``multimask_output``).
    """

    mask_threshold: float = MASK_THRESHOLD
    image_format: str = "RGB"

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        dtype: jnp.dtype | str = jnp.float32,
        precision: str = LIBRARY.precision,
        plain_sam: bool = False,
    ) -> None:
        self.config = config
        self.plain_sam = plain_sam
        self.policy = Policy(precision, dtype)
        self.params = jax.device_put(params)
        self.training = False
        enc = config.image_encoder
        g, s, low = config.embedding_size, config.img_size, config.low_res_mask_size
        self.image_encoder = ImageEncoderInfo(s, s // g, enc.out_chans)
        self.prompt_encoder = PromptEncoderInfo(config.prompt_encoder.embed_dim, (g, g), (s, s), (low, low))
        dec = config.mask_decoder
        self.mask_decoder = MaskDecoderInfo(
            dec.transformer_dim, dec.num_multimask_outputs, dec.num_mask_tokens + 1, enc.early_dim
        )
        self.pixel_mean = PIXEL_MEAN.reshape(3, 1, 1).view(OfficialTensor)
        self.pixel_std = PIXEL_STD.reshape(3, 1, 1).view(OfficialTensor)
        self._predictor: SamPredictor | None = None

    # ---- torch.nn.Module manners ------------------------------------------------------------
    @property
    def jax_device(self) -> jax.Device:
        """The JAX device holding the weights."""
        return min(jax.tree.leaves(self.params)[0].devices(), key=lambda d: d.id)

    @property
    def device(self) -> Any:
        """``torch.device("cpu")`` with PyTorch installed, else :attr:`jax_device` (module docstring)."""
        return torch_facing_device(self.jax_device)

    def to(self, device: Any = None, *args: Any, **kwargs: Any) -> Sam:
        """Weights to ``device`` (``"cpu"``, ``"cuda[:i]"``, ``"gpu"``, ``"tpu"``, a ``torch.device`` or
        a ``jax.Device``; ``device=`` as keyword too); returns the model. A device JAX does not have is
        an :class:`~samhq_jax.errors.InputError` (PyTorch raises too). Dtype arguments are refused:
        build with ``Sam(config, params, dtype=...)``."""
        device = kwargs.pop("device", device)
        if args or kwargs or device is None:
            raise InputError(f"Sam.to takes a device only (dtype: Sam(..., dtype=...)), got {args} {kwargs}")
        self.params = jax.device_put(self.params, jax_device(device))
        self._predictor = None
        return self

    def cuda(self, device: int | None = None) -> Sam:
        return self.to(f"cuda:{device or 0}")

    def cpu(self) -> Sam:
        return self.to("cpu")

    def eval(self) -> Sam:
        """Inference mode, the only one (no dropout; TinyViT's batch norms use their running stats)."""
        return self.train(False)

    def train(self, mode: bool = True) -> Sam:
        """``train(False)`` is :meth:`eval`; ``train(True)`` raises: training runs through ``samhq-train``
        (``samhq_jax``'s ``train`` package), not through this object."""
        if mode:
            raise InputError("Sam.train(True): this object is for inference; fine-tune with samhq-train")
        return self

    # ---- the official Sam methods -----------------------------------------------------------
    def preprocess(self, x: Any) -> OfficialTensor:
        """``(3, h, w)`` 0-255 (resized, long side ``img_size``) -> ``(3, S, S)`` normalised, zero-padded."""
        image = as_numpy(x)
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"preprocess takes a (3, h, w) image, got {image.shape}")
        return normalize_and_pad(image.transpose(1, 2, 0), self.config.img_size).transpose(2, 0, 1).view(OfficialTensor)

    def postprocess_masks(
        self, masks: Any, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> OfficialTensor:
        """``(B, K, 4G, 4G)`` low-res logits -> ``(B, K, H, W)`` float32 logits at ``original_size``
        (bilinear to ``S x S``, crop to ``input_size``, bilinear to ``original_size``, as the official)."""
        low = jnp.asarray(as_numpy(masks), jnp.float32)
        sizes = tuple(int(v) for v in input_size), tuple(int(v) for v in original_size)
        return np.asarray(postprocess_masks(low, *sizes, self.config.img_size)).view(OfficialTensor)

    def __call__(
        self, batched_input: list[dict[str, Any]], multimask_output: bool, hq_token_only: bool = False
    ) -> list[dict[str, OfficialTensor]]:
        """The official ``Sam.forward``: per record, ``image`` ``(3, h, w)`` already resized by the
        predictor's transform, ``original_size`` ``(H, W)`` and prompts in the resized frame
        (``point_coords (B, N, 2)`` with ``point_labels (B, N)``, ``boxes (B, 4)``, ``mask_inputs
        (B, 1, 4G, 4G)``). Returns per record ``masks (B, 1, H, W)`` bool, ``iou_predictions (B, 1)``
        and ``low_res_logits (B, 1, 4G, 4G)``."""
        if self._predictor is None:
            self._predictor = SamPredictor(self)
        predictor, outputs = self._predictor, []
        for i, record in enumerate(batched_input):
            image = as_numpy(record["image"])
            if image.ndim != 3:
                raise InputError(f"batched_input[{i}]['image'] must be (3, h, w), got {image.shape}")
            predictor.set_torch_image(image[None], record["original_size"])
            masks, iou, low_res = predictor.predict_torch(
                record.get("point_coords"),
                record.get("point_labels"),
                record.get("boxes"),
                record.get("mask_inputs"),
                multimask_output=multimask_output,
                hq_token_only=hq_token_only,
            )
            outputs.append({"masks": masks, "iou_predictions": iou, "low_res_logits": low_res})
        predictor.reset_image()
        return outputs

    forward = __call__


def build_sam_from_preset(
    model_type: str,
    checkpoint: str | os.PathLike | None = None,
    dtype: jnp.dtype | str = jnp.float32,
    plain_sam: bool = False,
) -> Sam:
    """The model of preset ``model_type`` (one of :data:`sam_model_registry`'s keys): weights from
    ``checkpoint`` (anything :func:`~samhq_jax.load_pretrained` takes: official ``.pth`` /
    ``.safetensors``, a Hugging Face folder or hub id, ours), or seeded random ones without it.

    A checkpoint of another structure is an :class:`~samhq_jax.errors.InputError` naming both (the
    official fails on the first mismatched tensor); one of the same structure keeps its own numeric
    settings (e.g. a Hugging Face folder's LayerNorm eps).

    ``plain_sam``: the official ``sam_model_registry_baseline``'s model, the original SAM: a plain SAM
    checkpoint loads without the HQ parameters' warning (they are never used), an HQ one decodes
    without its HQ part.
    """
    name = DEFAULT_MODEL_TYPE if model_type == "default" else model_type
    if name not in PRESETS:
        raise InputError(f"unknown model type {model_type!r}; choose one of {', '.join(sam_model_registry)}")
    preset = ModelConfig.preset(name)
    if checkpoint is None:
        return Sam(preset, init_params(preset, jax.random.PRNGKey(INIT_SEED)), dtype=dtype, plain_sam=plain_sam)
    with warnings.catch_warnings():
        if plain_sam:  # the HQ parameters a plain SAM checkpoint lacks are never used
            warnings.simplefilter("ignore", UntrainedHQWarning)
        config, params = load_pretrained(checkpoint)
    if structure(config) != structure(preset):
        raise InputError(f"checkpoint {checkpoint} holds a {config.name} model, not {name}: pick its model type")
    return Sam(config, params, dtype=dtype, plain_sam=plain_sam)


def structure(config: ModelConfig) -> tuple:
    """``config`` without its numeric settings (LayerNorm eps, name): equal for two configs exactly
    when their parameters have the same names and shapes."""
    enc, dec = config.image_encoder, config.mask_decoder
    if isinstance(enc, ImageEncoderConfig):
        enc = dataclasses.replace(enc, layer_norm_eps=0.0)
    return (
        enc,
        dataclasses.replace(config.prompt_encoder, layer_norm_eps=0.0),
        dataclasses.replace(dec, transformer_layer_norm_eps=0.0, final_attn_layer_norm_eps=0.0, layer_norm2d_eps=0.0),
    )


def _builder(model_type: str, plain_sam: bool = False) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None) -> Sam:
        return build_sam_from_preset(model_type, checkpoint, plain_sam=plain_sam)

    kind = "original SAM" if plain_sam else "SAM-HQ"
    build.__name__ = build.__qualname__ = f"build_sam_{model_type}"
    build.__doc__ = f"The {model_type} {kind} model: weights from ``checkpoint``, or seeded random ones without it."
    return build


build_sam_vit_h = _builder("vit_h")
build_sam = build_sam_vit_h
build_sam_vit_l = _builder("vit_l")
build_sam_vit_b = _builder("vit_b")
build_sam_vit_t = _builder("vit_tiny")

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    **{name: _builder(name) for name in PRESETS},
}
"""``model_type -> build(checkpoint=None)``, as the official ``sam_model_registry``: ``default``
(= ``vit_h``) and every preset of :data:`samhq_jax.config.PRESETS`."""

sam_model_registry_baseline: dict[str, Callable[..., Sam]] = {
    "default": _builder(DEFAULT_MODEL_TYPE, plain_sam=True),
    **{name: _builder(name, plain_sam=True) for name in PRESETS},
}
"""The official ``sam_model_registry_baseline``: the same keys, models that decode as the original SAM
(the SAM-vs-HQ baseline; ``segment-anything``'s ``sam_vit_*.pth`` load here)."""


class SamPredictor(SamHQPredictor):
    """The official ``SamPredictor(sam_model)``: :class:`SamHQPredictor` on a :class:`Sam`'s weights,
    with the official's ``model``, ``device`` and ``get_image_embedding``.

    ``model`` is the :class:`Sam`; ``device`` as :attr:`Sam.device`; :meth:`get_image_embedding`
    returns the official ``(1, C, G, G)`` layout (:attr:`features`); what the official returns as
    torch tensors (``predict_torch``, ``transform.apply_*_torch``) is :class:`OfficialTensor`. Everything else is
    :class:`SamHQPredictor`'s: ``set_image``, ``set_torch_image``, ``predict``, ``predict_torch``,
    ``transform``, ``features``, ``interm_features``, ``original_size``, ``input_size``,
    ``is_image_set``, ``reset_image``, and our ``predict_batch`` / ``predict_images``.
    """

    def __init__(self, sam_model: Sam) -> None:
        if not isinstance(sam_model, Sam):
            raise TypeError(
                f"SamPredictor takes a model from sam_model_registry, got {type(sam_model).__name__} "
                "(SamHQPredictor.from_pretrained takes a path)"
            )
        super().__init__(
            sam_model.config, sam_model.params, dtype=sam_model.policy.dtype, precision=sam_model.policy.precision
        )
        self.model = sam_model
        self.transform = OfficialResizeLongestSide(sam_model.config.img_size)
        self.interm_of: ImageEmbeddings | None = None  # the embeddings interm_list belongs to
        self.interm_list: list[OfficialTensor] = []

    def predict(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`SamHQPredictor.predict`; the original SAM's decoding for a baseline model
        (``hq_token_only`` then ignored, as by the official baseline's decoder)."""
        return super().predict(*args, **self._baseline(kwargs))

    def predict_torch(self, *args: Any, **kwargs: Any) -> tuple[OfficialTensor, OfficialTensor, OfficialTensor]:
        """:meth:`SamHQPredictor.predict_torch`, its outputs :class:`OfficialTensor` (baseline: as
        :meth:`predict`)."""
        return tuple(a.view(OfficialTensor) for a in super().predict_torch(*args, **self._baseline(kwargs)))

    def _baseline(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not self.model.plain_sam:
            return kwargs
        return {**kwargs, "sam_only": True, "hq_token_only": False}

    @property
    def device(self) -> Any:
        """``torch.device("cpu")`` with PyTorch installed, else the JAX device (:attr:`jax_device`)."""
        return torch_facing_device(self.jax_device)

    @property
    def jax_device(self) -> jax.Device:
        """The JAX device of the cached embedding (:attr:`SamHQPredictor.device`)."""
        return SamHQPredictor.device.fget(self)

    @property
    def interm_features(self) -> list[OfficialTensor] | None:
        """The official list: each global-attention block's ``(1, G, G, vit_dim)`` NHWC output, in
        order (4 for ViT-B/L/H; the HQ decoder reads ``[0]``); for Light HQ-SAM the one stage-1 map
        the official TinyViT returns. None before an image is set.

        The predictor keeps only the first (what decoding needs), so for a ViT the list is computed
        on first access per image by one more encoder pass over the input it encoded.
        """
        if self.embeddings is None or not isinstance(self.config.image_encoder, ImageEncoderConfig):
            return super().interm_features
        if self.interm_of is not self.embeddings:
            run = compiled_vision(self.config.image_encoder, self.policy.dtype, self.policy.precision)
            out = run(self.params[ENCODER], self.encoded_input, hidden_states=False, attentions=False)
            self.interm_list = [host_tensor(x) for x in out["intermediate"]]
            self.interm_of = self.embeddings
        return self.interm_list

    def get_image_embedding(self) -> OfficialTensor:
        """The cached image embedding, ``(1, C, G, G)`` (``(1, 256, 64, 64)`` for the released models)."""
        self._require_image()
        return self.features.view(OfficialTensor)


class SamAutomaticMaskGenerator(SamHQAutomaticMaskGenerator):
    """The official ``SamAutomaticMaskGenerator(model, **settings)``: ``model`` a :class:`Sam` (or a
    predictor); ``settings`` the official keywords with the official defaults (``points_per_side``,
    ``points_per_batch``, ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``,
    ``box_nms_thresh``, ``crop_n_layers``, ``crop_nms_thresh``, ``crop_overlap_ratio``,
    ``crop_n_points_downscale_factor``, ``point_grids``, ``min_mask_region_area``, ``output_mode``),
    see :class:`SamHQAutomaticMaskGenerator`. ``generate(image, multimask_output=True)`` returns the
    official records."""

    def __init__(self, model: Sam | SamHQPredictor | MeshPredictor, **settings: Any) -> None:
        if isinstance(model, Sam) and model.plain_sam:
            raise InputError(
                "SamAutomaticMaskGenerator generates SAM-HQ masks: build the model with sam_model_registry, "
                "not sam_model_registry_baseline"
            )
        super().__init__(SamPredictor(model) if isinstance(model, Sam) else model, **settings)


__all__ = [
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "build_sam_from_preset",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
    "sam_model_registry_baseline",
]
