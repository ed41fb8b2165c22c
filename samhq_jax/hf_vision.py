"""transformers' ``SamHQVisionModel`` and the optional outputs of ``SamHQModel`` (hidden states and
attentions), over our image encoder and decoder (port of ``modeling_sam_hq.py``, 4.53).

    model = SamHQVisionModel.from_pretrained("syscv-community/sam-hq-vit-base")  # any weights source
    out = model(pixel_values, output_hidden_states=True, output_attentions=True)
    out.last_hidden_state          # (B, C, G, G) neck output, NCHW
    out.intermediate_embeddings    # [(B, G, G, D)] * global blocks: each global-attention block's output
    out.hidden_states              # (B, G, G, D) * (depth + 1): embeddings + position, then each block
    out.attentions                 # per block (B * windows * heads, n, n) float32 softmax probabilities
    model.save_pretrained("vision")  # config.json + model.safetensors: transformers' SamHQVisionModel loads it

The outputs are the ones transformers 4.53 defines, in its layouts (``image_embeds`` is None, as there:
SAM-HQ has no projection). The extra outputs come from what the modules sow: each block's output
(``"intermediates"``) and, only when asked for, its attention probabilities (``"attentions"``); the
decoder's image-to-token attention outputs are transformers' ``mask_decoder_attentions``.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from samhq_jax.checkpoint import load_pretrained, resolve_source
from samhq_jax.config import ImageEncoderConfig, ModelConfig, read_json_object
from samhq_jax.errors import InputError
from samhq_jax.hf_config import CONFIG_NAME, SamHQVisionConfig, hf_sections
from samhq_jax.image_encoder import ImageEncoderViT
from samhq_jax.precision import LIBRARY, Policy, at_precision
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ
from samhq_jax.torch_style import OfficialTensor, host_tensor
from samhq_jax.transforms import on_device

ENCODER = "image_encoder"  # the encoder's subtree in our parameter tree


class OutputFields:
    """transformers' ``ModelOutput`` manners for a dataclass: ``out["name"]``, ``out[0]``, ``keys()``
    and ``to_tuple()`` over the fields that are not None, in order."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: str | int) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


@dataclasses.dataclass
class SamHQVisionEncoderOutput(OutputFields):
    """transformers' ``SamHQVisionEncoderOutput``.

    Attributes:
      image_embeds: None (SAM-HQ has no projection; kept for the field order).
      last_hidden_state: ``(B, C, G, G)`` the neck's output, NCHW.
      hidden_states: with ``output_hidden_states``, ``depth + 1`` arrays ``(B, G, G, D)``: the patch
        embedding plus the position embedding, then each block's output.
      attentions: with ``output_attentions``, per block ``(B * windows * heads, n, n)`` float32
        probabilities (``n`` = window side squared, or G * G for a global block).
      intermediate_embeddings: ``(B, G, G, D)`` outputs of the global-attention blocks, in order.
    """

    image_embeds: jax.Array | None = None
    last_hidden_state: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None
    intermediate_embeddings: list[jax.Array] | None = None


def in_kind(out: OutputFields, torch_style: bool) -> OutputFields:
    """``out`` as is, or with ``torch_style`` (the inputs came from ``return_tensors="pt"``) every
    array (also inside tuples and lists) as a host :class:`~samhq_jax.torch_style.OfficialTensor`."""
    if not torch_style:
        return out
    return type(out)(**{f.name: jax.tree.map(host_tensor, getattr(out, f.name)) for f in dataclasses.fields(out)})


@lru_cache(maxsize=8)
def compiled_vision(config: ImageEncoderConfig, dtype: jnp.dtype, precision: str) -> Callable:
    """Jitted ``run(encoder_params, images, hidden_states, attentions)`` (the flags static) of the
    ViT over ``(B, S, S, 3)`` NHWC images: a dict with ``last`` ``(B, G, G, C)``, ``intermediate``
    (global blocks' outputs), ``hidden`` (a tuple, or None) and ``attentions`` (a tuple, or None)."""
    module = ImageEncoderViT(config, dtype=dtype)

    def run(params: dict, images: jax.Array, hidden_states: bool, attentions: bool) -> dict:
        collections = ["intermediates", "attentions"] if attentions else ["intermediates"]
        (last, _), state = module.apply({"params": params}, images, mutable=collections)
        blocks = [state["intermediates"][f"blocks_{i}_out"][0] for i in range(config.depth)]
        first = state["intermediates"]["patch_embed_out"][0]
        if config.use_abs_pos:
            first = first + params["pos_embed"].astype(first.dtype)
        probs = None
        if attentions:
            sown = [state["attentions"][f"blocks_{i}"]["attn"]["probs"][0] for i in range(config.depth)]
            probs = tuple(p.reshape(-1, *p.shape[2:]) for p in sown)  # (B * windows * heads, n, n)
        return {
            "last": last,
            "intermediate": [blocks[i] for i in config.global_attn_indexes],
            "hidden": (first, *blocks) if hidden_states else None,
            "attentions": probs,
        }

    return jax.jit(at_precision(run, precision), static_argnames=("hidden_states", "attentions"))


@lru_cache(maxsize=8)
def compiled_decode_attentions(config: ModelConfig, dtype: jnp.dtype, precision: str) -> Callable:
    """Jitted :meth:`SamHQ.decode` (``all_multimask``, as ``SamHQModel``) that also returns each two-way
    layer's image-to-token attention output: ``(low_res, iou, attentions)``, ``attentions`` a tuple of
    ``(B * P, 1, G * G, C)``, transformers' ``mask_decoder_attentions``."""
    model = SamHQ(config, dtype=dtype)

    def run(variables: dict, emb: ImageEmbeddings, *prompts: Any, multimask_output: bool, hq_token_only: bool) -> tuple:
        (low_res, iou), state = model.apply(
            variables,
            emb,
            *prompts,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
            all_multimask=True,
            method=SamHQ.decode,
            mutable=["intermediates"],
        )
        layers = state["intermediates"]["mask_decoder"]["transformer"]
        outs = [layers[f"layers_{i}"]["image_to_token_out"][0] for i in range(config.mask_decoder.transformer_depth)]
        return low_res, iou, tuple(o[:, None] for o in outs)

    return jax.jit(at_precision(run, precision), static_argnames=("multimask_output", "hq_token_only"))


def pixels_nhwc(pixel_values: Any, size: int) -> jax.Array:
    """``(B, 3, S, S)`` NCHW pixels (any array-like) -> ``(B, S, S, 3)`` float32 NHWC on the device."""
    x = on_device(pixel_values, jnp.float32)
    if x.ndim != 4 or x.shape[1:] != (3, size, size):
        raise InputError(f"pixel_values must be (B, 3, {size}, {size}) from the processor, got {x.shape}")
    return x.transpose(0, 2, 3, 1)


def is_vision_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with a ``config.json`` of transformers' ``SamHQVisionModel``."""
    file = path / CONFIG_NAME
    return path.is_dir() and file.is_file() and read_json_object(file).get("model_type") == SamHQVisionConfig.model_type


def read_vision_folder(path: Path) -> tuple[SamHQVisionConfig, dict]:
    """``(config, encoder params)`` of a ``SamHQVisionModel`` folder (``config.json`` and
    ``model.safetensors`` or shards, ``vision_encoder.*`` keys); an
    :class:`~samhq_jax.errors.InputError` listing every unexpected, missing and misshaped tensor."""
    from convert.core import HF, rename_to_ours
    from convert.sources import read_hf_folder

    state, raw = read_hf_folder(path)
    config = SamHQVisionConfig.from_dict(raw)
    encoder = config.to_encoder_config()
    flat, problems = rename_to_ours(state, HF)
    module = ImageEncoderViT(encoder)
    images = jax.ShapeDtypeStruct((1, encoder.img_size, encoder.img_size, encoder.in_chans), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)["params"]
    want = {f"{ENCODER}/{k}": tuple(v.shape) for k, v in flatten_dict(shapes, sep="/").items()}
    problems += [f"  not a tensor of the encoder: {k}" for k in sorted(set(flat) - set(want))]
    problems += [f"  missing: {k}" for k in sorted(set(want) - set(flat))]
    problems += [
        f"  {k}: {flat[k].shape} in the file, {want[k]} in the model"
        for k in sorted(set(want) & set(flat))
        if tuple(flat[k].shape) != want[k]
    ]
    if problems:
        raise InputError(f"{path} does not fit its SamHQVisionConfig:\n" + "\n".join(problems))
    return config, unflatten_dict(flat, sep="/")[ENCODER]


class SamHQVisionModel:
    """transformers' ``SamHQVisionModel``: the image encoder alone.

    ``SamHQVisionModel(config, params)`` with our :class:`~samhq_jax.config.ModelConfig` (or
    transformers' ``SamHQVisionConfig``, :mod:`samhq_jax.hf_config`) and a whole model's parameter tree
    (or the encoder's subtree), or :meth:`from_pretrained`. ``config`` is transformers'
    ``SamHQVisionConfig``; ``encoder_config`` our :class:`~samhq_jax.config.ImageEncoderConfig`.
    ``dtype`` / ``precision`` as for :class:`~samhq_jax.SamHQModel`.
    """

    main_input_name = "pixel_values"

    def __init__(
        self,
        config: ModelConfig | SamHQVisionConfig,
        params: dict,
        dtype: jnp.dtype | str = jnp.float32,
        precision: str = LIBRARY.precision,
    ) -> None:
        if isinstance(config, SamHQVisionConfig):
            self.config, self.encoder_config = config, config.to_encoder_config()
        elif not isinstance(config.image_encoder, ImageEncoderConfig):
            raise InputError(f"SamHQVisionModel is transformers' ViT encoder; {config.name} has a TinyViT encoder")
        else:
            self.config = SamHQVisionConfig(**hf_sections(config)["vision_config"])
            self.encoder_config = config.image_encoder
        self.policy = Policy(precision, dtype)
        self.params = jax.device_put(params.get(ENCODER, params))
        self._run = compiled_vision(self.encoder_config, self.policy.dtype, self.policy.precision)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: jnp.dtype | str = jnp.float32, precision: str = LIBRARY.precision
    ) -> SamHQVisionModel:
        """From a folder :meth:`save_pretrained` (or transformers' ``SamHQVisionModel``) wrote, or anything
        :func:`~samhq_jax.load_pretrained` takes (a whole model's weights: its encoder is kept)."""
        source = resolve_source(path)
        if is_vision_folder(source):
            config, params = read_vision_folder(source)
            return cls(config, params, dtype=dtype, precision=precision)
        config, params = load_pretrained(path)
        return cls(config, params, dtype=dtype, precision=precision)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write a folder ``transformers.SamHQVisionModel.from_pretrained`` loads (strict keys) and
        :meth:`from_pretrained` reads back: ``config.json`` (``SamHQVisionConfig``) and
        ``model.safetensors`` (the ``vision_encoder.*`` tensors). Returns the folder."""
        from safetensors.numpy import save_file

        from convert.core import HF, params_to_state_dict
        from convert.sources import HF_WEIGHTS

        state = params_to_state_dict({ENCODER: jax.device_get(self.params)}, HF)
        folder = self.config.save_pretrained(save_directory).parent
        save_file(state, str(folder / HF_WEIGHTS), metadata={"format": "pt"})
        return folder

    def eval(self) -> SamHQVisionModel:
        return self

    def __call__(
        self,
        pixel_values: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SamHQVisionEncoderOutput | tuple:
        """``(B, 3, S, S)`` processor pixels -> :class:`SamHQVisionEncoderOutput` (a tuple with
        ``return_dict=False``: last_hidden_state, intermediate_embeddings, then the optional ones).
        Flags left at None take the config's ``output_attentions`` / ``output_hidden_states`` (False)."""
        if pixel_values is None:
            raise InputError("You have to specify pixel_values")
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        out = self._run(
            self.params,
            pixels_nhwc(pixel_values, self.encoder_config.img_size),
            hidden_states=bool(output_hidden_states),
            attentions=bool(output_attentions),
        )
        result = SamHQVisionEncoderOutput(
            last_hidden_state=out["last"].transpose(0, 3, 1, 2),
            hidden_states=out["hidden"],
            attentions=out["attentions"],
            intermediate_embeddings=out["intermediate"],
        )
        result = in_kind(result, isinstance(pixel_values, OfficialTensor))
        if return_dict is False:
            optional = tuple(x for x in (result.hidden_states, result.attentions) if x is not None)
            return (result.last_hidden_state, result.intermediate_embeddings, *optional)
        return result

    forward = __call__

    def get_input_embeddings(self) -> SamHQPatchEmbeddings:
        """The patch embedding, as transformers' ``SamHQPatchEmbeddings`` (:class:`SamHQPatchEmbeddings`)."""
        return SamHQPatchEmbeddings(self.params["patch_embed"], self.encoder_config, self.policy)


class SamHQPatchEmbeddings:
    """transformers' ``SamHQPatchEmbeddings``, what ``get_input_embeddings()`` returns: called on
    ``(B, 3, S, S)`` processor pixels it gives the ``(B, G, G, D)`` patch embeddings (channels last, as
    there; before the absolute position embedding). ``projection.weight`` ``(D, 3, p, p)`` and
    ``projection.bias`` ``(D,)`` are its parameters in torch's layout (host copies); ``image_size``,
    ``patch_size``, ``num_channels`` as there."""

    def __init__(self, params: dict, config: ImageEncoderConfig, policy: Policy) -> None:
        self.params, self.config, self.policy = params, config, policy
        self.image_size = (config.img_size, config.img_size)
        self.patch_size = (config.patch_size, config.patch_size)
        self.num_channels = config.in_chans
        self.projection = types.SimpleNamespace(
            weight=host_tensor(params["kernel"]).transpose(3, 2, 0, 1), bias=host_tensor(params["bias"])
        )

    def __call__(self, pixel_values: Any) -> jax.Array | OfficialTensor:
        out = compiled_patch_embed(self.config, self.policy.dtype, self.policy.precision)(
            self.params, pixels_nhwc(pixel_values, self.config.img_size)
        )
        return host_tensor(out) if isinstance(pixel_values, OfficialTensor) else out

    forward = __call__


@lru_cache(maxsize=8)
def compiled_patch_embed(config: ImageEncoderConfig, dtype: jnp.dtype, precision: str) -> Callable:
    """Jitted ``run(patch_embed_params, images)``: the encoder's ``patch_embed`` convolution
    (:class:`~samhq_jax.image_encoder.ImageEncoderViT`'s first layer) over ``(B, S, S, 3)`` NHWC
    images -> ``(B, G, G, D)``."""
    p = config.patch_size
    conv = nn.Conv(config.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=dtype)

    def run(params: dict, images: jax.Array) -> jax.Array:
        return conv.apply({"params": params}, images)

    return jax.jit(at_precision(run, precision))


__all__ = [
    "SamHQPatchEmbeddings",
    "SamHQVisionEncoderOutput",
    "SamHQVisionModel",
    "compiled_decode_attentions",
    "compiled_patch_embed",
    "compiled_vision",
    "in_kind",
    "is_vision_folder",
    "pixels_nhwc",
    "read_vision_folder",
]
