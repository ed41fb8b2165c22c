"""Convert between PyTorch state dicts (official SysCV or Hugging Face) and our parameter trees.

Import refuses, in one error listing every offending key, state dicts with missing, unexpected or
mis-shaped tensors; nothing is ever loaded partially. The model size is inferred from the tensor
shapes alone (the number of attention heads of the encoder comes from the rel-pos tables).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from convert import hf, official
from convert.rules import Rule
from samhq_jax.config import (
    HF_TRANSFORMER_LN_EPS,
    OFFICIAL_TRANSFORMER_LN_EPS,
    PRESETS,
    ImageEncoderConfig,
    MaskDecoderConfig,
    ModelConfig,
    PromptEncoderConfig,
    TinyViTConfig,
)
from samhq_jax.errors import InputError
from samhq_jax.hq_params import is_hq_path
from samhq_jax.sam_hq import param_shapes

MAX_LISTED = 20  # keys listed per category in an error message
log = logging.getLogger(__name__)


class ConversionError(InputError):
    """A checkpoint does not fit the model (bad input: exit status 2 in the commands); the message
    lists every offending key."""


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """A PyTorch key layout and the numeric choices that come with its weights."""

    name: str
    rules: tuple[Rule, ...]
    ignored_keys: frozenset[str]
    transformer_layer_norm_eps: float
    marker_prefix: str  # every state dict of this format has keys starting with it
    # (what, key regex): tensors the files carry but no model uses, skipped on import and logged
    unused_keys: tuple[tuple[str, str], ...] = ()


OFFICIAL = SourceFormat(
    "official",
    official.RULES,
    official.IGNORED_KEYS,
    OFFICIAL_TRANSFORMER_LN_EPS,
    "image_encoder.",
    official.UNUSED_KEYS,
)
HF = SourceFormat("hf", hf.RULES, hf.IGNORED_KEYS, HF_TRANSFORMER_LN_EPS, "vision_encoder.")
FORMATS = {f.name: f for f in (OFFICIAL, HF)}

StateDict = Mapping[str, np.ndarray]
FlatParams = dict[str, np.ndarray]


def detect_format(keys: list[str] | set[str]) -> SourceFormat:
    """Tell the official layout (``image_encoder.*``) from the Hugging Face one (``vision_encoder.*``)."""
    found = [f for f in FORMATS.values() if any(k.startswith(f.marker_prefix) for k in keys)]
    if len(found) != 1:
        sample = sorted(keys)[:5]
        raise ConversionError(
            "cannot tell the checkpoint format: expected keys starting with 'image_encoder.' (official "
            f"SysCV/sam-hq) or 'vision_encoder.' (Hugging Face SamHQModel); first keys: {sample}"
        )
    return found[0]


def _listing(title: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def unused_kind(key: str, fmt: SourceFormat) -> str | None:
    """What an unused tensor of ``fmt`` is ("classifier head", ...), or None for any other key."""
    return next((what for what, pattern in fmt.unused_keys if re.search(pattern, key)), None)


def rename_to_ours(state_dict: StateDict, fmt: SourceFormat) -> tuple[FlatParams, list[str]]:
    """Map every tensor to our path and layout. Returns ``(flat params, problems)``.

    Tensors matching ``fmt.unused_keys`` (TinyViT's classifier head, BatchNorm batch counters) are
    skipped and their count per kind logged (``logging``, INFO, logger ``convert.core``).
    """
    flat: FlatParams = {}
    source_of: dict[str, str] = {}
    unexpected, problems = [], []
    skipped = {what: 0 for what, _ in fmt.unused_keys}
    for key, value in state_dict.items():
        if key in fmt.ignored_keys:
            continue
        unused = unused_kind(key, fmt)
        if unused is not None:
            skipped[unused] += 1
            continue
        hits = [(rule, path) for rule in fmt.rules if (path := rule.match_torch(key))]
        if not hits:
            unexpected.append(key)
            continue
        if len(hits) > 1:
            raise AssertionError(f"mapping table of {fmt.name!r} matches {key!r} more than once")
        rule, path = hits[0]
        array = rule.to_ours(np.asarray(value, dtype=np.float32))
        if path in flat:
            if flat[path].shape != array.shape or not np.array_equal(flat[path], array):
                problems.append(f"{key} should equal its tied copy {source_of[path]} but differs")
            continue
        flat[path], source_of[path] = array, key
    if unexpected:
        problems.insert(0, _listing("unexpected keys", sorted(unexpected)))
    counts = ", ".join(f"{n} {what}" for what, n in skipped.items() if n)
    if counts:
        log.info("skipped %d tensor(s) no model uses: %s", sum(skipped.values()), counts)
    return flat, problems


def _count(flat: FlatParams, prefix: str, suffix: str) -> int:
    """Number of consecutive indices ``i`` for which ``{prefix}{i}{suffix}`` exists."""
    n = 0
    while f"{prefix}{n}{suffix}" in flat:
        n += 1
    return n


def infer_config(
    flat: FlatParams, fmt: SourceFormat, decoder_heads: int = 8, transformer_eps: float | None = None
) -> ModelConfig:
    """Read the model structure off our flat parameter shapes.

    ``decoder_heads`` (8 in every released SAM) is the only structural number not visible in the
    weights; ``transformer_eps`` defaults to the format's two-way LayerNorm eps. A TinyViT encoder
    (``patch_embed/seq_0``) is read by :func:`infer_tiny_vit`. Raises :class:`ConversionError`
    naming the tensor it needed when one is absent.
    """
    tiny = TINY_VIT_MARKER in flat
    encoder_needed = (
        [TINY_VIT_MARKER, f"{_LAYERS}0/blocks_0/conv1/c/kernel"]
        if tiny
        else [
            "image_encoder/patch_embed/kernel",
            "image_encoder/pos_embed",
            "image_encoder/blocks_0/attn/rel_pos_h",
            "image_encoder/blocks_0/mlp/layers_0/kernel",
        ]
    )
    needed = [
        *encoder_needed,
        "image_encoder/neck/conv1/kernel",
        "prompt_encoder/mask_downscaling/conv2/kernel",
        "mask_decoder/mask_tokens",
        "mask_decoder/transformer/layers_0/mlp_lin1/kernel",
        "mask_decoder/transformer/layers_0/cross_attn_token_to_image/q_proj/kernel",
        "mask_decoder/iou_prediction_head/layers_0/kernel",
    ]
    absent = [k for k in needed if k not in flat]
    if absent:
        names = [_torch_name(k, fmt) for k in absent]
        raise ConversionError("cannot infer the model size; tensors missing:\n" + _listing("missing", names))
    try:
        encoder = infer_tiny_vit(flat, fmt) if tiny else _infer_vit(flat)
        dim = flat["mask_decoder/mask_tokens"].shape[1]
        cross = flat["mask_decoder/transformer/layers_0/cross_attn_token_to_image/q_proj/kernel"].shape[1]
        decoder = MaskDecoderConfig(
            transformer_dim=dim,
            transformer_depth=_count(flat, "mask_decoder/transformer/layers_", "/norm1/scale"),
            transformer_mlp_dim=flat["mask_decoder/transformer/layers_0/mlp_lin1/kernel"].shape[1],
            transformer_num_heads=decoder_heads,
            attention_downsample_rate=dim // cross,
            num_multimask_outputs=flat["mask_decoder/mask_tokens"].shape[0] - 1,
            iou_head_depth=_count(flat, "mask_decoder/iou_prediction_head/layers_", "/kernel"),
            iou_head_hidden_dim=flat["mask_decoder/iou_prediction_head/layers_0/kernel"].shape[1],
            hypernetwork_depth=_count(flat, "mask_decoder/output_hypernetworks_mlps_0/layers_", "/kernel"),
            transformer_layer_norm_eps=transformer_eps or fmt.transformer_layer_norm_eps,
        )
        prompt = PromptEncoderConfig(
            embed_dim=dim, mask_in_chans=flat["prompt_encoder/mask_downscaling/conv2/kernel"].shape[-1]
        )
        config = ModelConfig(encoder, prompt, decoder)
    except ValueError as err:
        raise ConversionError(f"the tensor shapes do not describe a valid SAM-HQ model: {err}") from err
    return _name_preset(config)


TINY_VIT_MARKER = "image_encoder/patch_embed/seq_0/c/kernel"  # only a TinyViT encoder has it
_LAYERS = "image_encoder/layers_"


def _infer_vit(flat: FlatParams) -> ImageEncoderConfig:
    """The ViT encoder's structure from its tensor shapes."""
    p, _, in_chans, width = flat["image_encoder/patch_embed/kernel"].shape
    grid = flat["image_encoder/pos_embed"].shape[1]
    depth = _count(flat, "image_encoder/blocks_", "/attn/rel_pos_h")
    rel_lengths = [flat[f"image_encoder/blocks_{i}/attn/rel_pos_h"].shape[0] for i in range(depth)]
    global_blocks = tuple(i for i, n in enumerate(rel_lengths) if n == 2 * grid - 1)
    windowed = {(n + 1) // 2 for n in rel_lengths if n != 2 * grid - 1}
    if len(windowed) > 1:
        raise ConversionError(f"blocks disagree on the attention window size: rel_pos lengths {rel_lengths}")
    head_dim = flat["image_encoder/blocks_0/attn/rel_pos_h"].shape[1]
    return ImageEncoderConfig(
        embed_dim=width,
        depth=depth,
        num_heads=width // head_dim,
        global_attn_indexes=global_blocks,
        img_size=grid * p,
        patch_size=p,
        in_chans=in_chans,
        mlp_ratio=flat["image_encoder/blocks_0/mlp/layers_0/kernel"].shape[1] / width,
        out_chans=flat["image_encoder/neck/conv1/kernel"].shape[-1],
        window_size=windowed.pop() if windowed else 14,
    )


def infer_tiny_vit(flat: FlatParams, fmt: SourceFormat | None = None) -> TinyViTConfig:
    """A TinyViT encoder's structure from its tensor shapes (our flat paths).

    Widths from the stage-0 blocks and the patch mergings, depths by counting blocks, heads and
    windows from ``attention_biases`` ``(heads, window**2)``, the MLP / MBConv ratios and the local
    conv size from their kernels. Two numbers are not in the weights and follow the official code:
    the merge strides (:data:`convert.official.STRIDE_ONE_MERGE_DIMS`) and the 1024 px input.
    Raises :class:`ConversionError` naming (as ``fmt`` does) a tensor it needs that is absent.
    """

    def shape(path: str) -> tuple[int, ...]:
        if path not in flat:
            raise ConversionError(
                "cannot infer the TinyViT size; tensors missing:\n" + _listing("missing", [_torch_name(path, fmt)])
            )
        return flat[path].shape

    stages = 0
    while any(k.startswith(f"{_LAYERS}{stages}/") for k in flat):
        stages += 1
    dims = [shape(f"{_LAYERS}0/blocks_0/conv1/c/kernel")[2]]
    dims += [shape(f"{_LAYERS}{i}/downsample/conv1/c/kernel")[-1] for i in range(stages - 1)]
    depths = [len({k.split("/")[2] for k in flat if k.startswith(f"{_LAYERS}{i}/blocks_")}) for i in range(stages)]
    heads, windows = [1], [1]  # stage 0 (MBConv) has neither
    for i in range(1, stages):
        n, offsets = shape(f"{_LAYERS}{i}/blocks_0/attn/attention_biases")
        heads.append(n)
        windows.append(math.isqrt(offsets))
    first = f"{_LAYERS}1/blocks_0"
    return TinyViTConfig(
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_sizes=tuple(windows),
        merge_strides=tuple(1 if d in official.STRIDE_ONE_MERGE_DIMS else 2 for d in dims[1:]),
        img_size=official.TINY_VIT_IMG_SIZE,
        in_chans=shape(TINY_VIT_MARKER)[2],
        mlp_ratio=shape(f"{first}/mlp/fc1/kernel")[1] / dims[1],
        mbconv_expand_ratio=shape(f"{_LAYERS}0/blocks_0/conv1/c/kernel")[-1] / dims[0],
        local_conv_size=shape(f"{first}/local_conv/c/kernel")[0],
        out_chans=shape("image_encoder/neck/conv1/kernel")[-1],
    )


def _name_preset(config: ModelConfig) -> ModelConfig:
    """Give the config the name of the preset it equals (decoder eps aside), if any."""
    for name in PRESETS:
        preset = ModelConfig.preset(name, transformer_layer_norm_eps=config.mask_decoder.transformer_layer_norm_eps)
        if dataclasses.replace(preset, name=config.name) == config:
            return preset
    return config


def check_params(
    flat: FlatParams, config: ModelConfig, fmt: SourceFormat | None, allow_plain_sam: bool = False
) -> list[str]:
    """Compare flat params with what ``config`` needs; returns missing / extra / mis-shaped listings.

    Keys are named as in ``fmt`` (our own paths when ``fmt`` is None). With ``allow_plain_sam``, a
    tree without any of the HQ tensors (an original SAM checkpoint) is complete; one with only some
    of them is not.
    """
    expected = {k: tuple(v.shape) for k, v in flatten_dict(param_shapes(config), sep="/").items()}
    if allow_plain_sam and not any(is_hq_path(k) for k in flat):
        expected = {k: v for k, v in expected.items() if not is_hq_path(k)}
    missing = sorted(_torch_name(k, fmt) for k in expected if k not in flat)
    extra = sorted(_torch_name(k, fmt) for k in flat if k not in expected)
    shapes = sorted(
        f"{_torch_name(k, fmt)}: checkpoint {_torch_shape(k, flat[k], fmt)}, "
        f"model {_torch_shape(k, np.empty(expected[k]), fmt)}"
        for k in expected
        if k in flat and flat[k].shape != expected[k]
    )
    problems = []
    if missing:
        problems.append(_listing("missing keys", missing))
    if extra:
        problems.append(_listing(f"keys a {config.name} model does not have", extra))
    if shapes:
        problems.append(_listing("mis-shaped tensors (PyTorch layout)", shapes))
    return problems


def _closest_preset(inferred: ModelConfig) -> ModelConfig:
    """The preset a non-preset structure was most likely cut from (same ViT width and image size)."""
    eps = inferred.mask_decoder.transformer_layer_norm_eps
    for name in PRESETS:
        preset = ModelConfig.preset(name, transformer_layer_norm_eps=eps)
        enc, got = preset.image_encoder, inferred.image_encoder
        if (type(enc), enc.early_dim, enc.img_size) == (type(got), got.early_dim, got.img_size):
            return preset
    raise ConversionError(
        "the weights describe a SAM-HQ structure that matches no preset "
        f"({inferred.image_encoder}); pass an explicit config to convert a custom model"
    )


def state_dict_to_params(
    state_dict: StateDict,
    config: ModelConfig | None = None,
    fmt: SourceFormat | None = None,
    decoder_heads: int = 8,
    transformer_eps: float | None = None,
    allow_plain_sam: bool = False,
) -> tuple[ModelConfig, dict]:
    """Import a PyTorch state dict (numpy arrays) into ``(config, params)``.

    ``config`` defaults to the structure inferred from the weights, which must be one of the presets
    (a checkpoint missing whole blocks is reported against the preset of the same width, never
    loaded as a smaller model); ``fmt`` defaults to the detected format.
    With ``allow_plain_sam`` an original SAM state dict (``segment-anything``'s ``sam_vit_*.pth``,
    Hugging Face ``SamModel``) is accepted and returned *without* the HQ parameters; otherwise the
    25 HQ tensors are required.
    Raises :class:`ConversionError` listing every missing, unexpected and mis-shaped tensor.
    """
    fmt = fmt or detect_format(set(state_dict))
    flat, problems = rename_to_ours(state_dict, fmt)
    if config is None:
        try:
            config = infer_config(flat, fmt, decoder_heads, transformer_eps)
            if config.name == "custom":
                config = _closest_preset(config)
        except ConversionError as err:
            problems.append(str(err))
    if config is not None:
        problems += check_params(flat, config, fmt, allow_plain_sam)
    if problems:
        what = f"a {config.name} SAM-HQ model" if config else "a SAM-HQ model"
        raise ConversionError(f"{fmt.name} checkpoint does not fit {what}:\n" + "\n".join(problems))
    return config, unflatten_dict(flat, sep="/")


def _rule_for_ours(path: str, fmt: SourceFormat | None) -> list[tuple[Rule, str]]:
    if fmt is None:
        return []
    return [(rule, key) for rule in fmt.rules if (key := rule.match_ours(path))]


def _torch_name(path: str, fmt: SourceFormat | None) -> str:
    hits = _rule_for_ours(path, fmt)
    return hits[0][1] if hits else path


def _torch_shape(path: str, array: np.ndarray, fmt: SourceFormat | None) -> tuple[int, ...]:
    hits = _rule_for_ours(path, fmt)
    return tuple(hits[0][0].to_torch(array).shape) if hits else tuple(array.shape)


def params_to_state_dict(params: dict, fmt: SourceFormat) -> dict[str, np.ndarray]:
    """Export our parameter tree as a PyTorch-layout state dict (numpy float32) of format ``fmt``."""
    out: dict[str, np.ndarray] = {}
    for path, value in flatten_dict(params, sep="/").items():
        hits = _rule_for_ours(path, fmt)
        if not hits:
            raise ConversionError(f"parameter {path!r} has no {fmt.name} name")
        for rule, key in hits:
            out[key] = rule.to_torch(np.asarray(value, dtype=np.float32))
    return out
