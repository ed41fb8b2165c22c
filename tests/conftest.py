"""Shared fixtures: seeded, fully randomised PyTorch reference models and their conversions.

Everything runs in fp32 on CPU with ``jax.default_matmul_precision("highest")``.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest
import torch

from convert.core import state_dict_to_params
from eval.reference import build_official
from samhq_jax.config import ModelConfig

# Parity bar from the model issue: every stage within 1e-4 of the reference's largest magnitude.
PARITY_RTOL = 1e-4
MASK_AGREEMENT = 0.9999


# Commands called in-process must not write a compilation cache into the home folder.
os.environ.setdefault("SAMHQ_JAX_CACHE", "0")

# Test-wide: fp32 matmuls at full precision (XLA may otherwise pick faster, lower-precision passes).
jax.config.update("jax_default_matmul_precision", "highest")


@functools.cache
def official_model_and_params(preset: str, seed: int = 0) -> tuple:
    """``(torch model, state dict as numpy, our config, our params)`` for a preset, cached per session."""
    model = build_official(ModelConfig.preset(preset), seed=seed)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    config, params = state_dict_to_params(state)
    return model, state, config, params


def missing_dependency(message: str) -> None:
    """A test's optional tool (a browser, node) is missing: a failure under CI (where
    scripts/setup.sh installs everything), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def random_params(config: ModelConfig, seed: int) -> dict:
    """Every parameter of ``config`` drawn with NumPy from its shape (no compiled initialiser):
    ``0.1 * N(0, 1)``, BatchNorm running variances ``|1 + 0.2 * N(0, 1)|``; float32."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    from samhq_jax.sam_hq import param_shapes

    rng = np.random.default_rng(seed)
    flat = {
        k: np.abs(1 + 0.2 * rng.standard_normal(v.shape)).astype(np.float32) if k.endswith("running_var") else
        (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in flatten_dict(param_shapes(config), sep="/").items()
    }  # fmt: skip
    return unflatten_dict(flat, sep="/")


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str, rtol: float = PARITY_RTOL) -> float:
    """Assert ``max|ours - ref| <= rtol * max|ref|``; returns the achieved relative error."""
    from eval.parity.stages import relative_error

    err = relative_error(ours, ref)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.0e}"
    return err


def official_masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Transcription of the official ``train/utils/misc.py`` ``masks_to_boxes``: ``(N, H, W)`` 0-255
    -> ``(N, 4)`` xyxy of the pixels > 128 (inclusive; ``[1e8, 1e8, 0, 0]`` when empty)."""
    h, w = masks.shape[-2:]
    y, x = torch.meshgrid(torch.arange(0, h, dtype=torch.float), torch.arange(0, w, dtype=torch.float), indexing="ij")
    x_mask = (masks > 128) * x.unsqueeze(0)
    x_max = x_mask.flatten(1).max(-1)[0]
    x_min = x_mask.masked_fill(~(masks > 128), 1e8).flatten(1).min(-1)[0]
    y_mask = (masks > 128) * y.unsqueeze(0)
    y_max = y_mask.flatten(1).max(-1)[0]
    y_min = y_mask.masked_fill(~(masks > 128), 1e8).flatten(1).min(-1)[0]
    return torch.stack([x_min, y_min, x_max, y_max], 1)
