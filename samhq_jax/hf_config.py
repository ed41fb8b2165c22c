"""Hugging Face's SAM-HQ configuration classes under transformers' names and fields, generated from
and converted to our :class:`samhq_jax.config.ModelConfig` (the one source of truth).

    from samhq_jax.hf_config import SamHQConfig, SamHQVisionConfig
    config = SamHQConfig.from_pretrained("syscv-community/sam-hq-vit-base")   # a folder, a config.json
    config.vision_config.hidden_size            # 768, transformers' field names
    config.to_samhq_config()                    # our frozen dataclass (what the model is built from)
    config.save_pretrained("out")               # out/config.json, which transformers reads

Ports ``transformers/models/sam_hq/configuration_sam_hq.py`` (4.53): ``SamHQVisionConfig``,
``SamHQPromptEncoderConfig``, ``SamHQMaskDecoderConfig`` and ``SamHQConfig``, with ``to_dict``,
``to_json_string``, ``from_dict``, ``from_pretrained`` and ``save_pretrained``. Defaults are not
restated: they are transformers' ViT-B defaults, derived here from our ``vit_b`` preset with
transformers' LayerNorm eps. Keys of ``PretrainedConfig`` this port does not use (``torch_dtype``,
``id2label``, ...) are carried through reading and writing unchanged.

:meth:`SamHQConfig.to_samhq_config` accepts only what our model computes: ``hidden_act`` "gelu" in
the vision and prompt encoders and "relu" in the decoder, ``mlp_dim == int(hidden_size *
mlp_ratio)``, ``2 * num_pos_feats`` equal to the prompt width, the image and patch sizes and
``vit_dim`` agreeing between sections; anything else is an :class:`~samhq_jax.errors.InputError`
naming the field. ``attention_dropout`` and ``initializer_range`` matter only to training in
transformers and are carried, not used.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from samhq_jax.config import (
    HF_TRANSFORMER_LN_EPS,
    ImageEncoderConfig,
    MaskDecoderConfig,
    ModelConfig,
    PromptEncoderConfig,
    TinyViTConfig,
    read_json_object,
)
from samhq_jax.errors import InputError

CONFIG_NAME = "config.json"
HF_MODEL_TYPE = "sam_hq"
VERSION_KEY = "transformers_version"  # written by transformers; not a field
ENCODER_ACT, DECODER_ACT = "gelu", "relu"  # the activations our modules compute
VISION_INIT_RANGE = 1e-10  # transformers' SamHQVisionConfig.initializer_range default (training only)
MODEL_INIT_RANGE = 0.02  # transformers' SamHQConfig.initializer_range default (training only)
OURS = "_samhq"  # where a SamHQConfig keeps the dataclass it stands for (not a field)


# transformers' field names -> ours, one table per section; read both ways (to transformers and back)
VISION_FIELDS = {
    "hidden_size": "embed_dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "global_attn_indexes": "global_attn_indexes",
    "image_size": "img_size",
    "patch_size": "patch_size",
    "num_channels": "in_chans",
    "mlp_ratio": "mlp_ratio",
    "mlp_dim": "mlp_dim",
    "output_channels": "out_chans",
    "window_size": "window_size",
    "qkv_bias": "qkv_bias",
    "use_abs_pos": "use_abs_pos",
    "use_rel_pos": "use_rel_pos",
    "layer_norm_eps": "layer_norm_eps",
}
PROMPT_FIELDS = {
    "hidden_size": "embed_dim",
    "mask_input_channels": "mask_in_chans",
    "layer_norm_eps": "layer_norm_eps",
    "num_point_embeddings": "num_point_embeddings",
}
DECODER_FIELDS = {
    "hidden_size": "transformer_dim",
    "num_hidden_layers": "transformer_depth",
    "mlp_dim": "transformer_mlp_dim",
    "num_attention_heads": "transformer_num_heads",
    "attention_downsample_rate": "attention_downsample_rate",
    "num_multimask_outputs": "num_multimask_outputs",
    "iou_head_depth": "iou_head_depth",
    "iou_head_hidden_dim": "iou_head_hidden_dim",
    # transformers' decoder eps sets only the two-way LayerNorms 1-4: carrying ours keeps official
    # weights' numbers exactly
    "layer_norm_eps": "transformer_layer_norm_eps",
}
DERIVED_FIELDS = ("mlp_dim",)  # our properties (ImageEncoderConfig.mlp_dim): checked, not passed to the dataclass


def has_hf_form(config: ModelConfig) -> bool:
    """Whether transformers' ``SamHQModel`` can hold a model of ``config`` (not a TinyViT encoder)."""
    return not isinstance(config.image_encoder, TinyViTConfig)


def as_json(value: Any) -> Any:
    """A field value as transformers keeps it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def section(ours: Any, fields: dict[str, str]) -> dict[str, Any]:
    """``{transformers' field: value}`` of our sub-config ``ours`` through a field table."""
    return {hf: as_json(getattr(ours, name)) for hf, name in fields.items()}


def our_fields(hf: HFConfig, fields: dict[str, str]) -> dict[str, Any]:
    """``{our field: value}`` of the transformers section ``hf`` through a field table (derived fields left out)."""
    out = {name: getattr(hf, key) for key, name in fields.items() if name not in DERIVED_FIELDS}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def hf_sections(config: ModelConfig) -> dict[str, dict[str, Any]]:
    """transformers' three sub-config dicts (every field, no ``model_type``) for our ``config``; a
    TinyViT model (``vit_tiny``, Light HQ-SAM) is an :class:`~samhq_jax.errors.InputError`:
    transformers' ``SamHQModel`` has only the ViT encoder."""
    if not has_hf_form(config):
        raise InputError(
            f"no Hugging Face format exists for {config.name} (Light HQ-SAM's TinyViT encoder): transformers' "
            "SamHQModel has only the ViT encoder; use --to ours or --to official"
        )
    enc, pe, dec = config.image_encoder, config.prompt_encoder, config.mask_decoder
    vision = dict(
        section(enc, VISION_FIELDS),
        num_pos_feats=pe.num_pos_feats,
        hidden_act=ENCODER_ACT,
        attention_dropout=0.0,
        initializer_range=VISION_INIT_RANGE,
    )
    prompt = dict(
        section(pe, PROMPT_FIELDS), image_size=enc.img_size, patch_size=enc.patch_size, hidden_act=ENCODER_ACT
    )
    decoder = dict(section(dec, DECODER_FIELDS), vit_dim=enc.embed_dim, hidden_act=DECODER_ACT)
    return {"vision_config": vision, "prompt_encoder_config": prompt, "mask_decoder_config": decoder}


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """``config.json`` content of a transformers ``SamHQModel`` with the structure of ``config``
    (:func:`hf_sections` plus the model type)."""
    return dict(model_type=HF_MODEL_TYPE, architectures=["SamHQModel"], **hf_sections(config))


@functools.cache
def hf_defaults() -> dict[str, dict[str, Any]]:
    """transformers' default sections: its ViT-B, i.e. our ``vit_b`` with the two-way LayerNorm eps it
    uses (computed on first use: :mod:`convert.hf` imports this package)."""
    return hf_sections(ModelConfig.vit_b(transformer_layer_norm_eps=HF_TRANSFORMER_LN_EPS))


def check_fields(expect: dict[str, tuple[Any, Any]]) -> None:
    """``{field: (got, want)}``: an :class:`~samhq_jax.errors.InputError` naming the first field whose
    value is not the one this port computes."""
    for field, (got, want) in expect.items():
        if got != want:
            raise InputError(f"SamHQConfig.{field} = {got!r}: this port computes only {want!r} here")


class HFConfig:
    """Common part of the four classes: fields as attributes (defaults filled in, unknown keys
    kept), ``to_dict`` / ``from_dict``, ``from_pretrained`` / ``save_pretrained``, equality by
    ``to_dict``."""

    model_type: ClassVar[str] = ""
    base_config_key: ClassVar[str | None] = None  # its key inside a SamHQConfig's config.json

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """transformers' default fields: the section of :func:`hf_defaults` named ``base_config_key``."""
        return hf_defaults()[cls.base_config_key]

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)
        kwargs.pop(VERSION_KEY, None)
        for key, value in {**copy.deepcopy(self.defaults()), **kwargs}.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """Every field (and carried key), sub-configs as dicts, plus ``model_type``."""
        fields = {k: v for k, v in vars(self).items() if k != OURS}
        out = {k: v.to_dict() if isinstance(v, HFConfig) else copy.deepcopy(v) for k, v in fields.items()}
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> HFConfig:
        """``cls(**config_dict, **kwargs)``; a whole model's dict gives the section of a sub-config class."""
        if cls.base_config_key and config_dict.get("model_type") == HF_MODEL_TYPE:
            config_dict = config_dict.get(cls.base_config_key) or {}
        if not isinstance(config_dict, dict):
            raise InputError(f"{cls.__name__}: expected a JSON object, got {type(config_dict).__name__}")
        return cls(**{**config_dict, **kwargs})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> HFConfig:
        """From a folder holding ``config.json`` (a hub id through the local hub cache), or the file."""
        from samhq_jax.checkpoint import resolve_source

        source = resolve_source(path)
        file = source / CONFIG_NAME if source.is_dir() else source
        if not file.is_file():
            raise InputError(f"{cls.__name__}.from_pretrained: no {CONFIG_NAME} in {source}")
        return cls.from_dict(read_json_object(file), **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``save_directory/config.json`` (created if needed); returns the file."""
        folder = Path(save_directory)
        if folder.is_file():
            raise InputError(f"save_pretrained: {folder} is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(self.to_json_string())
        return folder / CONFIG_NAME

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, as transformers' configs

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


class SamHQVisionConfig(HFConfig):
    """transformers' ``SamHQVisionConfig``: the ViT image encoder (``mlp_dim`` None: ``int(hidden_size *
    mlp_ratio)``)."""

    model_type = "sam_hq_vision_model"
    base_config_key = "vision_config"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {**super().defaults(), "mlp_dim": None}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.mlp_dim is None:
            self.mlp_dim = int(self.hidden_size * self.mlp_ratio)

    def field_checks(self) -> dict[str, tuple[Any, Any]]:
        """``{field: (value, the one value our encoder computes)}`` for :func:`check_fields`."""
        return {
            "vision_config.hidden_act": (self.hidden_act, ENCODER_ACT),
            "vision_config.mlp_dim": (self.mlp_dim, int(self.hidden_size * self.mlp_ratio)),
        }

    def to_encoder_config(self) -> ImageEncoderConfig:
        """Our :class:`~samhq_jax.config.ImageEncoderConfig` for these fields; an
        :class:`~samhq_jax.errors.InputError` naming the first one our encoder cannot compute."""
        check_fields(self.field_checks())
        try:
            return ImageEncoderConfig(**our_fields(self, VISION_FIELDS))
        except (TypeError, ValueError) as err:
            raise InputError(f"SamHQVisionConfig: {err}") from err


class SamHQPromptEncoderConfig(HFConfig):
    """transformers' ``SamHQPromptEncoderConfig`` (``image_embedding_size`` derived: image / patch size)."""

    base_config_key = "prompt_encoder_config"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("image_embedding_size", None)
        super().__init__(**kwargs)

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "image_embedding_size": self.image_embedding_size}


class SamHQMaskDecoderConfig(HFConfig):
    """transformers' ``SamHQMaskDecoderConfig``: the two-way transformer and the HQ decoder."""

    base_config_key = "mask_decoder_config"


SECTIONS: dict[str, type[HFConfig]] = {
    "vision_config": SamHQVisionConfig,
    "prompt_encoder_config": SamHQPromptEncoderConfig,
    "mask_decoder_config": SamHQMaskDecoderConfig,
}


class SamHQConfig(HFConfig):
    """transformers' ``SamHQConfig``: ``vision_config``, ``prompt_encoder_config``,
    ``mask_decoder_config`` (dicts, config objects or None for the defaults) and ``initializer_range``.

    :meth:`to_samhq_config` / :meth:`from_samhq_config` convert to and from our dataclass. A model's
    ``config`` (:class:`samhq_jax.SamHQModel`, :class:`~samhq_jax.hf_vision.SamHQVisionModel`) is one
    of these made from the dataclass it was built with, ``samhq_config``; it also answers that
    dataclass's attributes (``config.img_size``, ``config.image_encoder``, ...).
    """

    model_type = HF_MODEL_TYPE

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"initializer_range": MODEL_INIT_RANGE}

    def __init__(
        self,
        vision_config: dict | SamHQVisionConfig | None = None,
        prompt_encoder_config: dict | SamHQPromptEncoderConfig | None = None,
        mask_decoder_config: dict | SamHQMaskDecoderConfig | None = None,
        **kwargs: Any,
    ) -> None:
        given = dict(
            vision_config=vision_config,
            prompt_encoder_config=prompt_encoder_config,
            mask_decoder_config=mask_decoder_config,
        )
        sections = {}
        for key, value in given.items():
            value = {} if value is None else value
            if isinstance(value, HFConfig):
                value = value.to_dict()
            if not isinstance(value, dict):
                raise InputError(f"SamHQConfig: {key} must be a dict or a {SECTIONS[key].__name__}, got {value!r}")
            sections[key] = SECTIONS[key](**value)
        super().__init__(**sections, **kwargs)

    @classmethod
    def from_samhq_config(cls, config: ModelConfig) -> SamHQConfig:
        """transformers' config of a model of our ``config`` (ViT encoders only: transformers has no TinyViT)."""
        out = cls(**hf_sections(config))
        out.__dict__[OURS] = config
        return out

    @property
    def samhq_config(self) -> ModelConfig:
        """Our dataclass: the one this config was made from, else :meth:`to_samhq_config`'s."""
        if OURS not in self.__dict__:
            self.__dict__[OURS] = self.to_samhq_config()
        return self.__dict__[OURS]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.samhq_config, name)

    def to_samhq_config(self) -> ModelConfig:
        """Our :class:`samhq_jax.config.ModelConfig` for these fields (see the module docstring for
        what is accepted); an :class:`~samhq_jax.errors.InputError` naming the first bad field."""
        v, p, d = self.vision_config, self.prompt_encoder_config, self.mask_decoder_config
        check_fields(
            {
                **v.field_checks(),
                "prompt_encoder_config.hidden_act": (p.hidden_act, ENCODER_ACT),
                "mask_decoder_config.hidden_act": (d.hidden_act, DECODER_ACT),
                "vision_config.num_pos_feats": (2 * v.num_pos_feats, p.hidden_size),
                "prompt_encoder_config.image_size": (p.image_size, v.image_size),
                "prompt_encoder_config.patch_size": (p.patch_size, v.patch_size),
                "mask_decoder_config.vit_dim": (d.vit_dim, v.hidden_size),
            }
        )
        encoder = v.to_encoder_config()
        try:
            return ModelConfig(
                encoder,
                PromptEncoderConfig(**our_fields(p, PROMPT_FIELDS)),
                MaskDecoderConfig(**our_fields(d, DECODER_FIELDS)),
            )
        except ValueError as err:
            raise InputError(f"SamHQConfig: {err}") from err


__all__ = [
    "SamHQConfig",
    "SamHQMaskDecoderConfig",
    "SamHQPromptEncoderConfig",
    "SamHQVisionConfig",
    "has_hf_form",
    "hf_config_dict",
    "hf_sections",
]
