"""Mapping table for Hugging Face ``SamHQModel`` weights (``model.safetensors`` in a hub folder).

Key names as in transformers' ``modeling_sam_hq.py``; see ``../shared/reference/samhq_hf.md``
section 2. The random-Fourier matrix is stored twice (tied): both keys map to our single
``prompt_encoder/pe_gaussian_matrix``, and export writes both. HF's 3-layer MLPs are named
``proj_in`` / ``layers.0`` / ``proj_out``.
"""

from __future__ import annotations

from convert.rules import Rule, conv, conv_transpose, flatten, linear, norm, tensor

_ENC, _PE, _DEC = "vision_encoder", "prompt_encoder", "mask_decoder"
_OE = "image_encoder"
_T = f"{_DEC}.transformer"
_TO = f"{_DEC}/transformer"
_ATTENTIONS = ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
_PROJS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _feed_forward(torch: str, ours: str) -> list[Rule]:
    """HF ``SamHQFeedForward`` with 3 layers: proj_in, layers.0, proj_out."""
    return [
        *linear(f"{torch}.proj_in", f"{ours}/layers_0"),
        *linear(f"{torch}.layers.0", f"{ours}/layers_1"),
        *linear(f"{torch}.proj_out", f"{ours}/layers_2"),
    ]


RULES: tuple[Rule, ...] = flatten(
    [
        tensor("shared_image_embedding.positional_embedding", f"{_PE}/pe_gaussian_matrix"),
        tensor(f"{_PE}.shared_embedding.positional_embedding", f"{_PE}/pe_gaussian_matrix"),
        conv(f"{_ENC}.patch_embed.projection", f"{_OE}/patch_embed"),
        tensor(f"{_ENC}.pos_embed", f"{_OE}/pos_embed"),
        norm(f"{_ENC}.layers.{{i}}.layer_norm1", f"{_OE}/blocks_{{i}}/norm1"),
        linear(f"{_ENC}.layers.{{i}}.attn.qkv", f"{_OE}/blocks_{{i}}/attn/qkv"),
        linear(f"{_ENC}.layers.{{i}}.attn.proj", f"{_OE}/blocks_{{i}}/attn/proj"),
        tensor(f"{_ENC}.layers.{{i}}.attn.rel_pos_h", f"{_OE}/blocks_{{i}}/attn/rel_pos_h"),
        tensor(f"{_ENC}.layers.{{i}}.attn.rel_pos_w", f"{_OE}/blocks_{{i}}/attn/rel_pos_w"),
        norm(f"{_ENC}.layers.{{i}}.layer_norm2", f"{_OE}/blocks_{{i}}/norm2"),
        linear(f"{_ENC}.layers.{{i}}.mlp.lin1", f"{_OE}/blocks_{{i}}/mlp/layers_0"),
        linear(f"{_ENC}.layers.{{i}}.mlp.lin2", f"{_OE}/blocks_{{i}}/mlp/layers_1"),
        conv(f"{_ENC}.neck.conv1", f"{_OE}/neck/conv1", bias=False),
        norm(f"{_ENC}.neck.layer_norm1", f"{_OE}/neck/norm1"),
        conv(f"{_ENC}.neck.conv2", f"{_OE}/neck/conv2", bias=False),
        norm(f"{_ENC}.neck.layer_norm2", f"{_OE}/neck/norm2"),
        tensor(f"{_PE}.point_embed.{{i}}.weight", f"{_PE}/point_embeddings_{{i}}"),
        tensor(f"{_PE}.not_a_point_embed.weight", f"{_PE}/not_a_point_embed"),
        tensor(f"{_PE}.no_mask_embed.weight", f"{_PE}/no_mask_embed"),
        conv(f"{_PE}.mask_embed.conv1", f"{_PE}/mask_downscaling/conv1"),
        norm(f"{_PE}.mask_embed.layer_norm1", f"{_PE}/mask_downscaling/norm1"),
        conv(f"{_PE}.mask_embed.conv2", f"{_PE}/mask_downscaling/conv2"),
        norm(f"{_PE}.mask_embed.layer_norm2", f"{_PE}/mask_downscaling/norm2"),
        conv(f"{_PE}.mask_embed.conv3", f"{_PE}/mask_downscaling/conv3"),
        *[
            linear(f"{_T}.layers.{{i}}.{attn}.{proj}", f"{_TO}/layers_{{i}}/{attn}/{proj}")
            for attn in _ATTENTIONS
            for proj in _PROJS
        ],
        *[norm(f"{_T}.layers.{{i}}.layer_norm{n}", f"{_TO}/layers_{{i}}/norm{n}") for n in range(1, 5)],
        linear(f"{_T}.layers.{{i}}.mlp.lin1", f"{_TO}/layers_{{i}}/mlp_lin1"),
        linear(f"{_T}.layers.{{i}}.mlp.lin2", f"{_TO}/layers_{{i}}/mlp_lin2"),
        *[
            linear(f"{_T}.final_attn_token_to_image.{proj}", f"{_TO}/final_attn_token_to_image/{proj}")
            for proj in _PROJS
        ],
        norm(f"{_T}.layer_norm_final_attn", f"{_TO}/norm_final_attn"),
        tensor(f"{_DEC}.iou_token.weight", f"{_DEC}/iou_token"),
        tensor(f"{_DEC}.mask_tokens.weight", f"{_DEC}/mask_tokens"),
        tensor(f"{_DEC}.hq_token.weight", f"{_DEC}/hq_token"),
        conv_transpose(f"{_DEC}.upscale_conv1", f"{_DEC}/output_upscaling/conv1"),
        norm(f"{_DEC}.upscale_layer_norm", f"{_DEC}/output_upscaling/norm"),
        conv_transpose(f"{_DEC}.upscale_conv2", f"{_DEC}/output_upscaling/conv2"),
        _feed_forward(f"{_DEC}.output_hypernetworks_mlps.{{i}}", f"{_DEC}/output_hypernetworks_mlps_{{i}}"),
        _feed_forward(f"{_DEC}.iou_prediction_head", f"{_DEC}/iou_prediction_head"),
        _feed_forward(f"{_DEC}.hq_mask_mlp", f"{_DEC}/hq_mlp"),
        conv_transpose(f"{_DEC}.compress_vit_conv1", f"{_DEC}/compress_vit_feat/conv1"),
        norm(f"{_DEC}.compress_vit_norm", f"{_DEC}/compress_vit_feat/norm"),
        conv_transpose(f"{_DEC}.compress_vit_conv2", f"{_DEC}/compress_vit_feat/conv2"),
        conv_transpose(f"{_DEC}.encoder_conv1", f"{_DEC}/embedding_encoder/conv1"),
        norm(f"{_DEC}.encoder_norm", f"{_DEC}/embedding_encoder/norm"),
        conv_transpose(f"{_DEC}.encoder_conv2", f"{_DEC}/embedding_encoder/conv2"),
        conv(f"{_DEC}.mask_conv1", f"{_DEC}/embedding_maskfeature/conv1"),
        norm(f"{_DEC}.mask_norm", f"{_DEC}/embedding_maskfeature/norm"),
        conv(f"{_DEC}.mask_conv2", f"{_DEC}/embedding_maskfeature/conv2"),
    ]
)

IGNORED_KEYS: frozenset[str] = frozenset()
