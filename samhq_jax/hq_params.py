"""The HQ parameters of SAM-HQ, named by path, and their PyTorch-equal initialisation.

SAM-HQ adds five parts to SAM's mask decoder (official names ``hf_token``, ``hf_mlp``,
``compress_vit_feat``, ``embedding_encoder``, ``embedding_maskfeature``; ours ``hq_token``,
``hq_mlp`` and the same three). Everything else is SAM. Freezing, optimiser masks, the import of
plain SAM checkpoints and sharding rules all select parameters with :data:`HQ_PARAM_REGEX`.

An original SAM checkpoint has no HQ tensors; :func:`init_hq_params` gives them the distributions
PyTorch gives the freshly built official modules (what the official training starts from):
``nn.Embedding`` N(0, 1); ``nn.Linear`` / ``nn.Conv2d`` / ``nn.ConvTranspose2d`` weights
kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases from the same
bound; LayerNorm scale 1, bias 0. PyTorch's ``fan_in`` of a ``ConvTranspose2d`` weight
``(in, out, kh, kw)`` is ``out * kh * kw`` (it reads dimension 1), and that is what is reproduced.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from samhq_jax.config import ModelConfig

HQ_PARTS = ("hq_token", "hq_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
HQ_PARAM_REGEX = re.compile(rf"^mask_decoder/({'|'.join(HQ_PARTS)})(/|$)")

# (path regex within the HQ parts, how PyTorch initialises it). Our kernels are (kh, kw, in, out)
# for convolutions (transposed ones included) and (in, out) for Dense layers.
_INIT_RULES = (
    (re.compile(r"/hq_token$"), "normal"),
    (re.compile(r"/(norm)/scale$"), "ones"),
    (re.compile(r"/(norm)/bias$"), "zeros"),
    (re.compile(r"^mask_decoder/(compress_vit_feat|embedding_encoder)/conv\d/(kernel|bias)$"), "conv_transpose"),
    (re.compile(r"^mask_decoder/embedding_maskfeature/conv\d/(kernel|bias)$"), "conv"),
    (re.compile(r"^mask_decoder/hq_mlp/layers_\d+/(kernel|bias)$"), "linear"),
)


def is_hq_path(path: str) -> bool:
    """Whether a ``/``-joined parameter path belongs to one of the five HQ parts."""
    return HQ_PARAM_REGEX.match(path) is not None


def hq_paths(config: ModelConfig) -> list[str]:
    """Every HQ parameter path of a model with ``config`` (25 tensors for every size)."""
    from samhq_jax.sam_hq import param_shapes

    return sorted(k for k in flatten_dict(param_shapes(config), sep="/") if is_hq_path(k))


def _fan_in(kind: str, kernel_shape: tuple[int, ...]) -> int:
    if kind == "linear":
        return kernel_shape[0]
    kh, kw, cin, cout = kernel_shape
    return kh * kw * (cout if kind == "conv_transpose" else cin)


def init_hq_params(config: ModelConfig, seed: int = 0) -> dict:
    """Fresh HQ parameters (a tree holding only the 25 HQ tensors, float32 numpy), seeded.

    Distributions as PyTorch's defaults for the official modules; see the module docstring.
    """
    from samhq_jax.sam_hq import param_shapes

    shapes = {k: tuple(v.shape) for k, v in flatten_dict(param_shapes(config), sep="/").items()}
    out = {}
    for i, path in enumerate(sorted(k for k in shapes if is_hq_path(k))):
        kinds = [kind for pattern, kind in _INIT_RULES if pattern.search(path)]
        if len(kinds) != 1:
            raise AssertionError(f"HQ parameter {path} matches {len(kinds)} init rules")
        kind, shape = kinds[0], shapes[path]
        rng = np.random.default_rng([seed, i])  # one stream per tensor, in path order
        if kind == "normal":
            value = rng.standard_normal(shape)
        elif kind in ("ones", "zeros"):
            value = np.full(shape, 1.0 if kind == "ones" else 0.0)
        else:
            kernel_shape = shapes[path.rsplit("/", 1)[0] + "/kernel"]
            bound = 1.0 / np.sqrt(_fan_in(kind, kernel_shape))
            value = rng.uniform(-bound, bound, shape)
        out[path] = value.astype(np.float32)
    return unflatten_dict(out, sep="/")


def merge_params(base: Any, extra: Any) -> dict:
    """Union of two parameter trees with disjoint leaves (``extra`` fills what ``base`` lacks)."""
    flat = flatten_dict(base, sep="/")
    for k, v in flatten_dict(extra, sep="/").items():
        if k in flat:
            raise ValueError(f"parameter {k} is in both trees")
        flat[k] = v
    return unflatten_dict(flat, sep="/")
