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
import types
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

    @property
    def early_dim(self) -> int:
        """Channels of the early feature the HQ decoder fuses (the decoder's ``vit_dim``)."""
        return self.embed_dim


PATCH_EMBED_STRIDE = 4  # TinyViT's patch embedding: two stride-2 3x3 convolutions


@dataclasses.dataclass(frozen=True)
class TinyViTConfig:
    """TinyViT image encoder (MobileSAM's, Light HQ-SAM ``vit_tiny``; ``tiny_vit_sam.py``).

    Stage 0 is MBConv blocks, stages 1.. are windowed-attention TinyViT blocks; a patch merging
    follows every stage but the last. The HQ decoder fuses the output of stage ``early_stage``.
    """

    embed_dims: tuple[int, ...]  # channels of each stage
    depths: tuple[int, ...]  # blocks of each stage
    num_heads: tuple[int, ...]  # attention heads of each stage (stage 0's entry is unused)
    window_sizes: tuple[int, ...]  # attention window side of each stage (stage 0's entry is unused)
    # stride of the patch merging after each stage but the last; the official code picks 1 when the
    # merged width is 320, 448 or 576 and 2 otherwise, so vit_tiny's last merge keeps 64x64
    merge_strides: tuple[int, ...]
    early_stage: int = 1  # stage whose output feeds the HQ decoder
    img_size: int = 1024  # side of the square, padded network input
    in_chans: int = 3
    mlp_ratio: float = 4.0  # TinyViT-block MLP hidden width = mlp_ratio * stage width
    mbconv_expand_ratio: float = 4.0  # MBConv hidden width = ratio * stage-0 width
    local_conv_size: int = 3  # depthwise convolution between attention and MLP
    out_chans: int = 256  # neck output channels (= prompt embedding dim)
    batch_norm_eps: float = 1e-5  # every Conv2d_BN
    layer_norm_eps: float = 1e-5  # attention and MLP LayerNorms
    neck_layer_norm_eps: float = 1e-6  # the neck's LayerNorm2d

    def __post_init__(self) -> None:
        n = len(self.embed_dims)
        lengths = {len(self.depths), len(self.num_heads), len(self.window_sizes), len(self.merge_strides) + 1}
        if n < 2 or lengths != {n}:
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage (at least 2) "
                f"and merge_strides one fewer, got {n}, {len(self.depths)}, {len(self.num_heads)}, "
                f"{len(self.window_sizes)} and {len(self.merge_strides)}"
            )
        bad = [i for i in range(1, n) if self.embed_dims[i] % self.num_heads[i]]
        if bad:
            raise ValueError(f"embed_dims of stage(s) {bad} not divisible by their num_heads")
        if any(s not in (1, 2) for s in self.merge_strides):
            raise ValueError(f"merge_strides must be 1 or 2, got {self.merge_strides}")
        if self.img_size % (PATCH_EMBED_STRIDE * math.prod(self.merge_strides)):
            raise ValueError(f"img_size {self.img_size} does not divide by the total stride")
        if not 1 <= self.early_stage < n or math.prod(self.merge_strides[self.early_stage + 1 :]) != 1:
            raise ValueError(
                f"early_stage {self.early_stage} must be a stage >= 1 whose output has the final grid size"
            )

    @property
    def num_stages(self) -> int:
        return len(self.embed_dims)

    def stage_resolution(self, i: int) -> int:
        """Side of the token map stage ``i`` runs on (before its patch merging)."""
        return self.img_size // PATCH_EMBED_STRIDE // math.prod(self.merge_strides[:i])

    def stage_out_dim(self, i: int) -> int:
        """Channels after stage ``i`` (after its patch merging, if it has one)."""
        return self.embed_dims[min(i + 1, self.num_stages - 1)]

    @property
    def grid_size(self) -> int:
        """Side of the final token map and of the image embedding (64 for vit_tiny)."""
        return self.stage_resolution(self.num_stages - 1)

    @property
    def early_dim(self) -> int:
        """Channels of the early feature the HQ decoder fuses (the decoder's ``vit_dim``: 160)."""
        return self.stage_out_dim(self.early_stage)


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
class ModelConfig:
    """Whole SAM-HQ model: what every module, checkpoint and tool here is built from. ``name`` is
    informational (the preset it came from, if any).

    transformers' field names live in :class:`samhq_jax.SamHQConfig` (:mod:`samhq_jax.hf_config`),
    made from and converted to this class, so there is one source of truth.
    """

    image_encoder: ImageEncoderConfig | TinyViTConfig
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
    def vit_b(cls, **decoder_overrides: Any) -> ModelConfig:
        """HQ-SAM ViT-B: 768 wide, 12 blocks, 12 heads, global attention at 2, 5, 8, 11."""
        enc = ImageEncoderConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
        return cls(enc, mask_decoder=MaskDecoderConfig(**decoder_overrides), name="vit_b")

    @classmethod
    def vit_l(cls, **decoder_overrides: Any) -> ModelConfig:
        """HQ-SAM ViT-L: 1024 wide, 24 blocks, 16 heads, global attention at 5, 11, 17, 23."""
        enc = ImageEncoderConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
        return cls(enc, mask_decoder=MaskDecoderConfig(**decoder_overrides), name="vit_l")

    @classmethod
    def vit_h(cls, **decoder_overrides: Any) -> ModelConfig:
        """HQ-SAM ViT-H: 1280 wide, 32 blocks, 16 heads (head dim 80), global attention at 7, 15, 23, 31."""
        enc = ImageEncoderConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))
        return cls(enc, mask_decoder=MaskDecoderConfig(**decoder_overrides), name="vit_h")

    @classmethod
    def vit_tiny(cls, **decoder_overrides: Any) -> ModelConfig:
        """Light HQ-SAM: MobileSAM's TinyViT (widths 64/128/160/320, depths 2/2/6/2, windows 7/7/14/7)."""
        enc = TinyViTConfig(
            embed_dims=(64, 128, 160, 320),
            depths=(2, 2, 6, 2),
            num_heads=(2, 4, 5, 10),
            window_sizes=(7, 7, 14, 7),
            merge_strides=(2, 2, 1),
        )
        return cls(enc, mask_decoder=MaskDecoderConfig(**decoder_overrides), name="vit_tiny")

    @classmethod
    def _tiny(
        cls, name: str, width: int, depth: int, heads: int, global_blocks: tuple[int, ...], overrides: dict[str, Any]
    ) -> ModelConfig:
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
    def tiny_b(cls, **decoder_overrides: Any) -> ModelConfig:
        """Test-size model with ViT-B structure: 4 blocks, global at 1 and 3, head dim 16."""
        return cls._tiny("tiny_b", 32, 4, 2, (1, 3), decoder_overrides)

    @classmethod
    def tiny_l(cls, **decoder_overrides: Any) -> ModelConfig:
        """Test-size model with ViT-L structure: 6 blocks, global at 2 and 5, 4 heads."""
        return cls._tiny("tiny_l", 48, 6, 4, (2, 5), decoder_overrides)

    @classmethod
    def tiny_h(cls, **decoder_overrides: Any) -> ModelConfig:
        """Test-size model with ViT-H structure: 8 blocks, global at 3 and 7, head dim 20 (not a power of 2)."""
        return cls._tiny("tiny_h", 40, 8, 2, (3, 7), decoder_overrides)

    @classmethod
    def tiny_t(cls, **decoder_overrides: Any) -> ModelConfig:
        """Test-size Light HQ-SAM (TinyViT structure, tiny_b's prompt encoder and decoder): widths
        16/16/24/32, depths 1/1/2/1, head dim 8. As in vit_tiny, windows 7, 4 and 3 pad the 20x20 and
        10x10 maps, the last merge keeps 10x10, and the early feature (24 channels) is narrower than
        the decoder (32)."""
        enc = TinyViTConfig(
            embed_dims=(16, 16, 24, 32),
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 3, 4),
            window_sizes=(7, 7, 4, 3),
            merge_strides=(2, 2, 1),
            img_size=160,
            out_chans=32,
        )
        return dataclasses.replace(cls.tiny_b(**decoder_overrides), image_encoder=enc, name="tiny_t")

    @classmethod
    def preset(cls, name: str, **decoder_overrides: Any) -> ModelConfig:
        """Build a preset by name: one of :data:`PRESETS`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return getattr(cls, name)(**decoder_overrides)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> ModelConfig:
        """The inverse of :meth:`to_dict`, checked: ``ValueError`` naming the first bad key.

        Every section and field must be there (``name`` may be left out), with its type (an int
        where an int is due, ...; ints and floats positive), and nothing else; a message reads
        ``config.image_encoder.depth: expected a positive integer, got "12"`` (``where`` is the
        prefix). Callers reading a file put its name in front.
        """
        hints = typing.get_type_hints(cls)
        values = _checked_fields(cls, d, where, optional=("name",))  # every section present
        for key, value in values.items():
            kind = _section_class(hints[key], value)
            if dataclasses.is_dataclass(kind):
                section = f"{where}.{key}"
                values[key] = _build(kind, _checked_fields(kind, value, section), section)
        return _build(cls, values, where)


PRESETS = ("vit_b", "vit_l", "vit_h", "vit_tiny", "tiny_b", "tiny_l", "tiny_h", "tiny_t")
RENAMED = {"SamHQConfig": "ModelConfig"}  # old names of this module -> new (an error names both)


def __getattr__(name: str) -> Any:
    """A clear error for a name this module used to have (``ImportError``, so that ``from ...
    import`` shows it)."""
    if name in RENAMED:
        raise ImportError(
            f"samhq_jax.config.{name} is now samhq_jax.config.{RENAMED[name]} (also samhq_jax.{RENAMED[name]}); "
            "samhq_jax.SamHQConfig is transformers' SamHQConfig (samhq_jax.hf_config)"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    elif kind is dict or dataclasses.is_dataclass(_section_class(kind, value)):  # a section: its reader checks it
        ok, want = isinstance(value, dict), "an object {...}"
    else:
        raise TypeError(f"{where}: no JSON check for fields of type {kind}")
    if not ok:
        raise ValueError(f"{where}: expected {want}, got {json.dumps(value, default=str)[:60]}")
    return value


def _section_class(hint: Any, value: Any) -> Any:
    """The type a config field of type ``hint`` reads ``value`` as. For a union of dataclasses (the
    image encoder: ViT or TinyViT), the member whose fields hold every key of ``value``, else the first
    (whose checks then name the offending keys)."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    members = typing.get_args(hint)
    if isinstance(value, dict):
        for member in members:
            if set(value) <= {f.name for f in dataclasses.fields(member)}:
                return member
    return members[0]


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
