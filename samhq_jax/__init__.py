"""samhq-jax: SAM-HQ (High-Quality Segment Anything) in JAX / Flax linen."""

from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from samhq_jax.config import (
    PRESETS,
    ImageEncoderConfig,
    MaskDecoderConfig,
    ModelConfig,
    PromptEncoderConfig,
)
from samhq_jax.hf_config import SamHQConfig, SamHQMaskDecoderConfig, SamHQPromptEncoderConfig, SamHQVisionConfig
from samhq_jax.hf_model import SamHQImageSegmentationOutput, SamHQModel
from samhq_jax.hf_pipeline import pipeline
from samhq_jax.hf_processor import SamHQImageProcessor, SamHQProcessor
from samhq_jax.hf_vision import SamHQVisionEncoderOutput, SamHQVisionModel
from samhq_jax.official_api import (
    Sam,
    SamAutomaticMaskGenerator,
    SamPredictor,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    sam_model_registry,
    sam_model_registry_baseline,
)
from samhq_jax.predictor import SamHQPredictor, TensorLikeArray
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ, init_params, param_shapes
from samhq_jax.transforms import ResizeLongestSide

__all__ = [
    "PRESETS",
    "ImageEmbeddings",
    "ImageEncoderConfig",
    "MaskDecoderConfig",
    "ModelConfig",
    "PromptEncoderConfig",
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamHQ",
    "SamHQAutomaticMaskGenerator",
    "SamHQConfig",
    "SamHQImageProcessor",
    "SamHQImageSegmentationOutput",
    "SamHQMaskDecoderConfig",
    "SamHQModel",
    "SamHQPredictor",
    "SamHQProcessor",
    "SamHQPromptEncoderConfig",
    "SamHQVisionConfig",
    "SamHQVisionEncoderOutput",
    "SamHQVisionModel",
    "SamPredictor",
    "TensorLikeArray",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "init_params",
    "load_checkpoint",
    "load_pretrained",
    "param_shapes",
    "pipeline",
    "sam_model_registry",
    "sam_model_registry_baseline",
    "save_checkpoint",
]
