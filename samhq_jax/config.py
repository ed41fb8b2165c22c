"""Model configurations: frozen dataclasses with named presets.

Every numeric choice that differs between the official SysCV/sam-hq checkpoints and the Hugging Face
``SamHQModel`` ones is a field here, never a branch in a module. The presets follow
``segment_anything_hq/build_sam.py`` (official) and ``convert_samhq_to_hf.py`` (Hugging Face).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from typing import Any

OFFICIAL_TRANSFORMER_LN_EPS = 1e-5  # nn.LayerNorm default in the official TwoWayTransformer
HF_TRANSFORMER_LN_EPS = 1e-6  # mask_decoder_config.layer_norm_eps in transformers' SamHQ


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
    """ViTDet-style image encoder (``ImageEncoderViT``)."""

    embed_dim: int  # ViT width C
    depth: int  # number of transformer blocks
    num_heads: int  # attention heads per block
    global_attn_indexes: tuple[int, ...]  # blocks with full (non-windowed) attention
    img_size: int = 1024  # side of the square, padded network input
    patch_size: int = 16  # patch embedding kernel and stride
    in_chans: int = 3
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * embed_dim
    out_chans: int = 256  # neck output channels (= prompt embedding dim)
    window_size: int = 14  # side of the attention window of non-global blocks
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    layer_norm_eps: float = 1e-6  # block LayerNorms and the neck's LayerNorm2d

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad or not self.global_attn_indexes:
            raise ValueError(
                f"global_attn_indexes {self.global_attn_indexes} must be non-empty and within [0, {self.depth})"
            )

    @property
    def grid_size(self) -> int:
        """Side of the patch grid (64 for 1024 / 16)."""
        return self.img_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def early_block(self) -> int:
        """Index of the block whose output feeds the HQ decoder (the first global-attention block)."""
        return min(self.global_attn_indexes)


@dataclasses.dataclass(frozen=True)
class PromptEncoderConfig:
    """Sparse (points, boxes) and dense (mask) prompt encoder."""

    embed_dim: int = 256  # prompt / transformer dimension
    mask_in_chans: int = 16  # hidden channels of the mask downscaling stack
    layer_norm_eps: float = 1e-6  # LayerNorm2d in the mask downscaling stack
    num_point_embeddings: int = 4  # negative point, positive point, box top-left, box bottom-right

    def __post_init__(self) -> None:
        if self.embed_dim % 2:
            raise ValueError(f"prompt embed_dim must be even (sin and cos halves), got {self.embed_dim}")

    @property
    def num_pos_feats(self) -> int:
        """Columns of the random-Fourier matrix (2, num_pos_feats)."""
        return self.embed_dim // 2


@dataclasses.dataclass(frozen=True)
class MaskDecoderConfig:
    """Two-way transformer and HQ mask decoder (``MaskDecoderHQ``)."""

    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2  # cross-attention internal dim = transformer_dim / rate
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    hypernetwork_depth: int = 3  # layers of every hypernetwork MLP, the HQ one included
    transformer_layer_norm_eps: float = OFFICIAL_TRANSFORMER_LN_EPS  # norm1..norm4 of each two-way block
    final_attn_layer_norm_eps: float = 1e-5  # norm_final_attn (1e-5 in both references)
    layer_norm2d_eps: float = 1e-6  # LayerNorm2d in upscaling and the HQ fusion layers

    def __post_init__(self) -> None:
        if self.transformer_dim % 8:
            raise ValueError(f"transformer_dim must be a multiple of 8, got {self.transformer_dim}")
        internal = self.transformer_dim // self.attention_downsample_rate
        if internal % self.transformer_num_heads:
            raise ValueError(f"cross-attention width {internal} is not divisible by {self.transformer_num_heads} heads")

    @property
    def num_mask_tokens(self) -> int:
        """SAM mask tokens (single-mask token + multimask tokens), without the HQ token."""
        return self.num_multimask_outputs + 1


@dataclasses.dataclass(frozen=True)
class SamHQConfig:
    """Whole SAM-HQ model. ``name`` is informational (the preset it came from, if any)."""

    image_encoder: ImageEncoderConfig
    prompt_encoder: PromptEncoderConfig = PromptEncoderConfig()
    mask_decoder: MaskDecoderConfig = MaskDecoderConfig()
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.image_encoder.out_chans != self.prompt_encoder.embed_dim:
            raise ValueError(
                f"image_encoder.out_chans ({self.image_encoder.out_chans}) must equal "
                f"prompt_encoder.embed_dim ({self.prompt_encoder.embed_dim})"
            )
        if self.prompt_encoder.embed_dim != self.mask_decoder.transformer_dim:
            raise ValueError(
                f"prompt_encoder.embed_dim ({self.prompt_encoder.embed_dim}) must equal "
                f"mask_decoder.transformer_dim ({self.mask_decoder.transformer_dim})"
            )

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the real models)."""
        return self.image_encoder.grid_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the low-resolution mask logits (4x the embedding grid: 256)."""
        return 4 * self.image_encoder.grid_size

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def vit_b(cls, **decoder_overrides: Any) -> SamHQConfig:
        """HQ-SAM ViT-B: 768 wide, 12 blocks, 12 heads, global attention at 2, 5, 8, 11."""
        enc = ImageEncoderConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
        return cls(enc, mask_decoder=MaskDecoderConfig(**decoder_overrides), name="vit_b")

    @classmethod
    def vit_l(cls, **decoder_overrides: Any) -> SamHQConfig:
        """HQ-SAM ViT-L: 1024 wide, 24 blocks, 16 heads, global attention at 5, 11, 17, 23."""
        enc = ImageEncoderConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
        return cls(enc, mask_decoder=MaskDecoderConfig(**decoder_overrides), name="vit_l")

    @classmethod
    def vit_h(cls, **decoder_overrides: Any) -> SamHQConfig:
        """HQ-SAM ViT-H: 1280 wide, 32 blocks, 16 heads (head dim 80), global attention at 7, 15, 23, 31."""
        enc = ImageEncoderConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))
        return cls(enc, mask_decoder=MaskDecoderConfig(**decoder_overrides), name="vit_h")

    @classmethod
    def _tiny(
        cls, name: str, width: int, depth: int, heads: int, global_blocks: tuple[int, ...], overrides: dict[str, Any]
    ) -> SamHQConfig:
        # 160 px input, 16 px patches -> 10x10 grid; window 4 pads it to 12 (3x3 windows), so the
        # padded-window path, rel-pos tables of both sizes and every HQ layer are exercised.
        dim = 32
        enc = ImageEncoderConfig(
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            global_attn_indexes=global_blocks,
            img_size=160,
            window_size=4,
            out_chans=dim,
        )
        decoder = dict(transformer_dim=dim, transformer_mlp_dim=64, iou_head_hidden_dim=dim)
        decoder.update(overrides)
        return cls(
            enc,
            prompt_encoder=PromptEncoderConfig(embed_dim=dim, mask_in_chans=4),
            mask_decoder=MaskDecoderConfig(**decoder),
            name=name,
        )

    @classmethod
    def tiny_b(cls, **decoder_overrides: Any) -> SamHQConfig:
        """Test-size model with ViT-B structure: 4 blocks, global at 1 and 3, head dim 16."""
        return cls._tiny("tiny_b", 32, 4, 2, (1, 3), decoder_overrides)

    @classmethod
    def tiny_l(cls, **decoder_overrides: Any) -> SamHQConfig:
        """Test-size model with ViT-L structure: 6 blocks, global at 2 and 5, 4 heads."""
        return cls._tiny("tiny_l", 48, 6, 4, (2, 5), decoder_overrides)

    @classmethod
    def tiny_h(cls, **decoder_overrides: Any) -> SamHQConfig:
        """Test-size model with ViT-H structure: 8 blocks, global at 3 and 7, head dim 20 (not a power of 2)."""
        return cls._tiny("tiny_h", 40, 8, 2, (3, 7), decoder_overrides)

    @classmethod
    def preset(cls, name: str, **decoder_overrides: Any) -> SamHQConfig:
        """Build a preset by name: one of :data:`PRESETS`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return getattr(cls, name)(**decoder_overrides)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> SamHQConfig:
        """The inverse of :meth:`to_dict`, checked: ``ValueError`` naming the first bad key.

        Every section and field must be there (``name`` may be left out), with its type (an int
        where an int is due, ...; ints and floats positive), and nothing else; a message reads
        ``config.image_encoder.depth: expected a positive integer, got "12"`` (``where`` is the
        prefix). Callers reading a file put its name in front.
        """
        hints = typing.get_type_hints(cls)
        values = _checked_fields(cls, d, where, optional=("name",))  # every section present
        for key, value in values.items():
            if dataclasses.is_dataclass(hints[key]):
                section = f"{where}.{key}"
                values[key] = _build(hints[key], _checked_fields(hints[key], value, section), section)
        return _build(cls, values, where)


PRESETS = ("vit_b", "vit_l", "vit_h", "tiny_b", "tiny_l", "tiny_h")


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in file ``path``; ``ValueError`` naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a JSON text file ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got {_json_kind(data)}")
    return data


def checked_value(value: Any, kind: Any, where: str) -> Any:
    """``value`` (read from JSON) as a field of type ``kind``, or a ``ValueError`` naming ``where``.

    ``kind``: ``bool``, ``int`` (positive), ``float`` (positive, finite; an int is taken), ``str``,
    ``tuple[int, ...]`` (a list of non-negative ints, returned as a tuple), or ``dict`` or a config
    dataclass (an object; its fields are checked by the caller).
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool:
        ok, want = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, want = number and isinstance(value, int) and value > 0, "a positive integer"
    elif kind is float:
        ok, want = number and math.isfinite(value) and value > 0, "a positive number"
        value = float(value) if ok else value
    elif kind is str:
        ok, want = isinstance(value, str), "a string"
    elif typing.get_origin(kind) is tuple:
        want = "a list of integers >= 0"
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
        )
        value = tuple(value) if ok else value
    elif kind is dict or dataclasses.is_dataclass(kind):  # a section: its reader checks its fields
        ok, want = isinstance(value, dict), "an object {...}"
    else:
        raise TypeError(f"{where}: no JSON check for fields of type {kind}")
    if not ok:
        raise ValueError(f"{where}: expected {want}, got {json.dumps(value, default=str)[:60]}")
    return value


def _json_kind(value: Any) -> str:
    """How JSON names the type of ``value``."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _checked_fields(owner: type, d: Any, where: str, optional: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``d`` checked field by field against dataclass ``owner``: an object, no key missing or unknown,
    each value of its field's type. ``optional``: the fields that may be absent (default: those with
    a default value).
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object {{...}} of {owner.__name__} fields, got {_json_kind(d)}")
    hints = typing.get_type_hints(owner)
    kinds = {f.name: hints[f.name] for f in dataclasses.fields(owner)}
    if optional is None:
        optional = tuple(f.name for f in dataclasses.fields(owner) if f.default is not dataclasses.MISSING)
    missing = [k for k in kinds if k not in d and k not in optional]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(d) - set(kinds))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(kinds)}")
    return {k: checked_value(v, kinds[k], f"{where}.{k}") for k, v in d.items()}


def _build(owner: type, values: dict[str, Any], where: str) -> Any:
    """``owner(**values)``, its ``__post_init__`` consistency errors prefixed with ``where``."""
    try:
        return owner(**values)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
