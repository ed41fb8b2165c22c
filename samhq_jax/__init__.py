"""samhq-jax: SAM-HQ (High-Quality Segment Anything) in JAX / Flax linen."""

from samhq_jax.checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from samhq_jax.config import (
    PRESETS,
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamHQConfig,
)
from samhq_jax.predictor import SamHQPredictor
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ, init_params, param_shapes

__all__ = [
    "PRESETS",
    "ImageEmbeddings",
    "ImageEncoderConfig",
    "MaskDecoderConfig",
    "PromptEncoderConfig",
    "SamHQ",
    "SamHQConfig",
    "SamHQPredictor",
    "init_params",
    "load_checkpoint",
    "load_pretrained",
    "param_shapes",
    "save_checkpoint",
]
