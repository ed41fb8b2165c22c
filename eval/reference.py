"""Build the PyTorch reference models for a :class:`ModelConfig`, with every tensor randomised.

The official init leaves ``pos_embed`` and every ``rel_pos_*`` at zero and LayerNorms at 1 / 0,
which would hide bugs in exactly the parts that are easy to get wrong, so every tensor is
overwritten with seeded values of a sensible scale. Needs ``torch`` and ``segment-anything-hq``
(official; ``segment-anything`` for plain SAM) or ``transformers`` (Hugging Face).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import torch

from convert.official import STRIDE_ONE_MERGE_DIMS
from samhq_jax.config import HF_TRANSFORMER_LN_EPS, ImageEncoderConfig, ModelConfig, TinyViTConfig
from samhq_jax.errors import InputError
from samhq_jax.hf_config import hf_config_dict

_MATRIX_LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter and persistent buffer of ``module`` with seeded random values.

    By the kind of layer that owns the tensor: Linear / Conv / ConvTranspose weights
    ~ N / sqrt(fan_in) and biases ~ 0.1 N; LayerNorm / BatchNorm weights ~ 1 + 0.1 N and biases
    ~ 0.1 N; BatchNorm ``running_mean`` ~ 0.1 N and ``running_var`` ~ exp(0.2 N) (positive);
    embeddings (output tokens, point / no-mask embeddings) and the random-Fourier matrix ~ N(0, 1);
    ``pos_embed``, ``rel_pos_*`` and TinyViT's ``attention_biases`` ~ 0.2 N. Call ``eval()`` after it:
    TinyViT's attention caches its gathered biases (``ab``) when switched to eval mode.
    """
    owner = {}
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            mod, leaf = owner.get(name), name.rsplit(".", 1)[-1]
            if isinstance(mod, _MATRIX_LAYERS) and leaf == "weight":
                fan_in = t.shape[0] if isinstance(mod, torch.nn.ConvTranspose2d) else int(np.prod(t.shape[1:]))
                value = r / np.sqrt(fan_in)
            elif leaf in ("bias", "running_mean"):
                value = 0.1 * r
            elif leaf == "running_var":
                value = torch.exp(0.2 * r)
            elif leaf == "weight" and t.ndim == 1:  # LayerNorm / LayerNorm2d scale
                value = 1 + 0.1 * r
            elif "rel_pos" in leaf or leaf in ("pos_embed", "attention_biases"):
                value = 0.2 * r
            else:  # embeddings, tokens, the random-Fourier matrix
                value = r
            t.copy_(value)


def build_official(config: ModelConfig, seed: int = 0, plain_sam: bool = False) -> torch.nn.Module:
    """``segment_anything_hq`` ``Sam`` with the structure of ``config``, randomised, in eval mode.

    With ``plain_sam`` the original SAM of PyPI ``segment-anything`` (``MaskDecoder``, no HQ
    parts) is built instead; its tensors carry the same names as SAM-HQ's SAM part.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if plain_sam:
            from segment_anything import modeling
        else:
            from segment_anything_hq import modeling
    enc, pe, dec = config.image_encoder, config.prompt_encoder, config.mask_decoder
    if plain_sam and isinstance(enc, TinyViTConfig):
        raise ValueError("segment-anything has no TinyViT encoder: no plain-SAM reference for vit_tiny")
    g = enc.grid_size
    decoder_kwargs = dict(
        transformer_dim=dec.transformer_dim,
        transformer=modeling.TwoWayTransformer(
            depth=dec.transformer_depth,
            embedding_dim=dec.transformer_dim,
            num_heads=dec.transformer_num_heads,
            mlp_dim=dec.transformer_mlp_dim,
            attention_downsample_rate=dec.attention_downsample_rate,
        ),
        num_multimask_outputs=dec.num_multimask_outputs,
        iou_head_depth=dec.iou_head_depth,
        iou_head_hidden_dim=dec.iou_head_hidden_dim,
    )
    if plain_sam:
        mask_decoder = modeling.MaskDecoder(**decoder_kwargs)
    else:
        mask_decoder = modeling.MaskDecoderHQ(**decoder_kwargs, vit_dim=enc.early_dim)
    model = modeling.Sam(
        image_encoder=_official_tiny_vit(enc) if isinstance(enc, TinyViTConfig) else _official_vit(modeling, enc),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=pe.embed_dim,
            image_embedding_size=(g, g),
            input_image_size=(enc.img_size, enc.img_size),
            mask_in_chans=pe.mask_in_chans,
        ),
        mask_decoder=mask_decoder,
    )
    randomize_(model, seed)
    return model.eval()


def _official_vit(modeling: object, enc: ImageEncoderConfig) -> torch.nn.Module:
    """``ImageEncoderViT`` of ``modeling`` (``segment_anything[_hq].modeling``) with ``enc``'s structure."""
    return modeling.ImageEncoderViT(
        img_size=enc.img_size,
        patch_size=enc.patch_size,
        in_chans=enc.in_chans,
        embed_dim=enc.embed_dim,
        depth=enc.depth,
        num_heads=enc.num_heads,
        mlp_ratio=enc.mlp_ratio,
        out_chans=enc.out_chans,
        qkv_bias=enc.qkv_bias,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=enc.layer_norm_eps),
        use_abs_pos=enc.use_abs_pos,
        use_rel_pos=enc.use_rel_pos,
        window_size=enc.window_size,
        global_attn_indexes=list(enc.global_attn_indexes),
    )


def _official_tiny_vit(enc: TinyViTConfig) -> torch.nn.Module:
    """``segment_anything_hq``'s ``TinyViT`` with ``enc``'s structure, as ``build_sam_vit_t`` builds it.

    The official module fixes what our config states: merge strides by its out-width rule, a 64x64
    final grid, a 256-wide neck and the eps values; a config it cannot express is an ``InputError``
    (``samhq parity --preset tiny_t`` asks for one).
    """
    from segment_anything_hq.modeling import TinyViT

    strides = tuple(1 if d in STRIDE_ONE_MERGE_DIMS else 2 for d in enc.embed_dims[1:])
    official = dict(
        merge_strides=strides,
        grid_size=64,
        out_chans=256,
        early_stage=1,
        batch_norm_eps=1e-5,
        layer_norm_eps=1e-5,
        neck_layer_norm_eps=1e-6,
    )
    differs = {k: getattr(enc, k) for k, v in official.items() if getattr(enc, k) != v}
    if differs:
        raise InputError(
            f"the official TinyViT cannot be built with {differs} (it fixes {official}); "
            "its only structure here is vit_tiny's"
        )
    return TinyViT(
        img_size=enc.img_size,
        in_chans=enc.in_chans,
        num_classes=1000,
        embed_dims=list(enc.embed_dims),
        depths=list(enc.depths),
        num_heads=list(enc.num_heads),
        window_sizes=list(enc.window_sizes),
        mlp_ratio=enc.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=enc.mbconv_expand_ratio,
        local_conv_size=enc.local_conv_size,
        layer_lr_decay=0.8,
    )


def build_hf(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """transformers ``SamHQModel`` with the structure of ``config``, randomised, in eval mode.

    The two-way LayerNorm eps is Hugging Face's (1e-6), as in every HF checkpoint.
    """
    from transformers import SamHQConfig as HFConfig
    from transformers import SamHQModel

    decoder = dataclasses.replace(config.mask_decoder, transformer_layer_norm_eps=HF_TRANSFORMER_LN_EPS)
    config = dataclasses.replace(config, mask_decoder=decoder)
    kwargs = {k: v for k, v in hf_config_dict(config).items() if k != "model_type"}
    model = SamHQModel(HFConfig(**kwargs))
    randomize_(model, seed)
    # The random-Fourier matrix is tied in HF: keep both copies equal after randomisation.
    with torch.no_grad():
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding
        )
    return model.eval()
