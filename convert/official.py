"""Mapping table for the official SysCV/sam-hq state dict (``sam_hq_vit_{b,l,h,tiny}.pth``).

Keys as written by ``segment_anything_hq.build_sam`` models (``Sam.state_dict()``); see
``../shared/reference/samhq_official.md`` sections 1.3 and 2.1. Sequential indices: ``neck.0..3``,
``mask_downscaling.0/1/3/4/6``, ``output_upscaling.0/1/3`` and the HQ fusion stacks ``0/1/3``.
The TinyViT encoder of ``vit_tiny`` (and of MobileSAM's ``mobile_sam.pt``) has its own rules
(``image_encoder.patch_embed.seq.*``, ``image_encoder.layers.*``); the neck's are shared.
"""

from __future__ import annotations

from convert.rules import Rule, conv, conv_bn, conv_transpose, flatten, linear, norm, tensor

_ENC, _PE, _DEC = "image_encoder", "prompt_encoder", "mask_decoder"
_L, _LO = f"{_ENC}.layers.{{i}}", f"{_ENC}/layers_{{i}}"  # TinyViT stages
_T = f"{_DEC}.transformer"
_TO = f"{_DEC}/transformer"
_ATTENTIONS = ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
_PROJS = ("q_proj", "k_proj", "v_proj", "out_proj")

RULES: tuple[Rule, ...] = flatten(
    [
        conv(f"{_ENC}.patch_embed.proj", f"{_ENC}/patch_embed"),
        tensor(f"{_ENC}.pos_embed", f"{_ENC}/pos_embed"),
        norm(f"{_ENC}.blocks.{{i}}.norm1", f"{_ENC}/blocks_{{i}}/norm1"),
        linear(f"{_ENC}.blocks.{{i}}.attn.qkv", f"{_ENC}/blocks_{{i}}/attn/qkv"),
        linear(f"{_ENC}.blocks.{{i}}.attn.proj", f"{_ENC}/blocks_{{i}}/attn/proj"),
        tensor(f"{_ENC}.blocks.{{i}}.attn.rel_pos_h", f"{_ENC}/blocks_{{i}}/attn/rel_pos_h"),
        tensor(f"{_ENC}.blocks.{{i}}.attn.rel_pos_w", f"{_ENC}/blocks_{{i}}/attn/rel_pos_w"),
        norm(f"{_ENC}.blocks.{{i}}.norm2", f"{_ENC}/blocks_{{i}}/norm2"),
        linear(f"{_ENC}.blocks.{{i}}.mlp.lin1", f"{_ENC}/blocks_{{i}}/mlp/layers_0"),
        linear(f"{_ENC}.blocks.{{i}}.mlp.lin2", f"{_ENC}/blocks_{{i}}/mlp/layers_1"),
        conv_bn(f"{_ENC}.patch_embed.seq.{{i}}", f"{_ENC}/patch_embed/seq_{{i}}"),
        conv_bn(f"{_L}.blocks.{{j}}.conv{{n}}", f"{_LO}/blocks_{{j}}/conv{{n}}"),
        conv_bn(f"{_L}.downsample.conv{{n}}", f"{_LO}/downsample/conv{{n}}"),
        norm(f"{_L}.blocks.{{j}}.attn.norm", f"{_LO}/blocks_{{j}}/attn/norm"),
        linear(f"{_L}.blocks.{{j}}.attn.qkv", f"{_LO}/blocks_{{j}}/attn/qkv"),
        linear(f"{_L}.blocks.{{j}}.attn.proj", f"{_LO}/blocks_{{j}}/attn/proj"),
        tensor(f"{_L}.blocks.{{j}}.attn.attention_biases", f"{_LO}/blocks_{{j}}/attn/attention_biases"),
        conv_bn(f"{_L}.blocks.{{j}}.local_conv", f"{_LO}/blocks_{{j}}/local_conv"),
        norm(f"{_L}.blocks.{{j}}.mlp.norm", f"{_LO}/blocks_{{j}}/mlp/norm"),
        linear(f"{_L}.blocks.{{j}}.mlp.fc1", f"{_LO}/blocks_{{j}}/mlp/fc1"),
        linear(f"{_L}.blocks.{{j}}.mlp.fc2", f"{_LO}/blocks_{{j}}/mlp/fc2"),
        conv(f"{_ENC}.neck.0", f"{_ENC}/neck/conv1", bias=False),
        norm(f"{_ENC}.neck.1", f"{_ENC}/neck/norm1"),
        conv(f"{_ENC}.neck.2", f"{_ENC}/neck/conv2", bias=False),
        norm(f"{_ENC}.neck.3", f"{_ENC}/neck/norm2"),
        tensor(f"{_PE}.pe_layer.positional_encoding_gaussian_matrix", f"{_PE}/pe_gaussian_matrix"),
        tensor(f"{_PE}.point_embeddings.{{i}}.weight", f"{_PE}/point_embeddings_{{i}}"),
        tensor(f"{_PE}.not_a_point_embed.weight", f"{_PE}/not_a_point_embed"),
        tensor(f"{_PE}.no_mask_embed.weight", f"{_PE}/no_mask_embed"),
        conv(f"{_PE}.mask_downscaling.0", f"{_PE}/mask_downscaling/conv1"),
        norm(f"{_PE}.mask_downscaling.1", f"{_PE}/mask_downscaling/norm1"),
        conv(f"{_PE}.mask_downscaling.3", f"{_PE}/mask_downscaling/conv2"),
        norm(f"{_PE}.mask_downscaling.4", f"{_PE}/mask_downscaling/norm2"),
        conv(f"{_PE}.mask_downscaling.6", f"{_PE}/mask_downscaling/conv3"),
        *[
            linear(f"{_T}.layers.{{i}}.{attn}.{proj}", f"{_TO}/layers_{{i}}/{attn}/{proj}")
            for attn in _ATTENTIONS
            for proj in _PROJS
        ],
        *[norm(f"{_T}.layers.{{i}}.norm{n}", f"{_TO}/layers_{{i}}/norm{n}") for n in range(1, 5)],
        linear(f"{_T}.layers.{{i}}.mlp.lin1", f"{_TO}/layers_{{i}}/mlp_lin1"),
        linear(f"{_T}.layers.{{i}}.mlp.lin2", f"{_TO}/layers_{{i}}/mlp_lin2"),
        *[
            linear(f"{_T}.final_attn_token_to_image.{proj}", f"{_TO}/final_attn_token_to_image/{proj}")
            for proj in _PROJS
        ],
        norm(f"{_T}.norm_final_attn", f"{_TO}/norm_final_attn"),
        tensor(f"{_DEC}.iou_token.weight", f"{_DEC}/iou_token"),
        tensor(f"{_DEC}.mask_tokens.weight", f"{_DEC}/mask_tokens"),
        tensor(f"{_DEC}.hf_token.weight", f"{_DEC}/hq_token"),
        conv_transpose(f"{_DEC}.output_upscaling.0", f"{_DEC}/output_upscaling/conv1"),
        norm(f"{_DEC}.output_upscaling.1", f"{_DEC}/output_upscaling/norm"),
        conv_transpose(f"{_DEC}.output_upscaling.3", f"{_DEC}/output_upscaling/conv2"),
        linear(
            f"{_DEC}.output_hypernetworks_mlps.{{i}}.layers.{{j}}",
            f"{_DEC}/output_hypernetworks_mlps_{{i}}/layers_{{j}}",
        ),
        linear(f"{_DEC}.iou_prediction_head.layers.{{j}}", f"{_DEC}/iou_prediction_head/layers_{{j}}"),
        linear(f"{_DEC}.hf_mlp.layers.{{j}}", f"{_DEC}/hq_mlp/layers_{{j}}"),
        conv_transpose(f"{_DEC}.compress_vit_feat.0", f"{_DEC}/compress_vit_feat/conv1"),
        norm(f"{_DEC}.compress_vit_feat.1", f"{_DEC}/compress_vit_feat/norm"),
        conv_transpose(f"{_DEC}.compress_vit_feat.3", f"{_DEC}/compress_vit_feat/conv2"),
        conv_transpose(f"{_DEC}.embedding_encoder.0", f"{_DEC}/embedding_encoder/conv1"),
        norm(f"{_DEC}.embedding_encoder.1", f"{_DEC}/embedding_encoder/norm"),
        conv_transpose(f"{_DEC}.embedding_encoder.3", f"{_DEC}/embedding_encoder/conv2"),
        conv(f"{_DEC}.embedding_maskfeature.0", f"{_DEC}/embedding_maskfeature/conv1"),
        norm(f"{_DEC}.embedding_maskfeature.1", f"{_DEC}/embedding_maskfeature/norm"),
        conv(f"{_DEC}.embedding_maskfeature.3", f"{_DEC}/embedding_maskfeature/conv2"),
    ]
)

# Non-persistent buffers some re-saved checkpoints carry; they are constants, not weights.
IGNORED_KEYS = frozenset({"pixel_mean", "pixel_std"})

# Tensors the released files carry but no model uses: skipped by name on import, counted in the log.
UNUSED_KEYS = (
    # TinyViT's ImageNet classifier (sam_hq_vit_tiny.pth, mobile_sam.pt): built, never called
    ("classifier head", r"^image_encoder\.(norm_head|head)\.(weight|bias)$"),
    # BatchNorm's batch counter (training-time bookkeeping; inference uses the running statistics)
    ("BatchNorm num_batches_tracked", r"\.bn\.num_batches_tracked$"),
)

# The official PatchMerging strides 1 (not 2) when its output width is one of these (tiny_vit_sam.py);
# the weights do not show the stride, so an imported TinyViT gets it by this rule.
STRIDE_ONE_MERGE_DIMS = (320, 448, 576)
TINY_VIT_IMG_SIZE = 1024  # the official builds TinyViT for 1024 px only (its forward hard-codes the 64x64 grid)
