"""``encoder.stablehlo`` and ``decoder.stablehlo``: the deployed programs as ``jax.export`` artifacts.

Serialized :class:`jax.export.Exported` modules (portable StableHLO, no custom call but
``jax.export``'s own shape checks) of the same functions the ONNX files hold
(:mod:`convert.deploy.signature`), lowered for every platform asked for (``cpu``, ``cuda``,
``rocm``, ``tpu``; all from any machine). The weights are the first argument of both, not
constants: a flat dict of parameter paths -> float32 arrays, exactly what ``model.safetensors``
beside them holds (the folder is also a samhq-jax checkpoint), so the artifacts stay small and
vit_h fits (its 2.6 GB of weights would not fit one serialized module). ``stablehlo.json`` lists
inputs, outputs, the model config and the platforms.

The decoder has symbolic prompt, point and interm-layer counts: one artifact for every count. It
returns the low-resolution masks: the official decoder's full-size ``masks`` have the shape that
``orig_im_size`` holds as data, which no JAX program can have; ``stablehlo.json`` says so and how
to upscale (:data:`POSTPROCESS`). Use::

    from jax import export
    from safetensors.numpy import load_file

    weights = load_file("DIR/model.safetensors")
    encoder = export.deserialize(open("DIR/encoder.stablehlo", "rb").read())
    embeddings, interm = encoder.call(weights, image)               # image (1, 3, S, S), preprocessed
    decoder = export.deserialize(open("DIR/decoder.stablehlo", "rb").read())
    low_res, iou = decoder.call(weights, embeddings, interm, coords, labels, mask_input, has_mask)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax import export

from convert.deploy.signature import (
    LAYERS,
    POINTS,
    PROMPTS,
    DecoderOptions,
    TensorSpec,
    decoder_function,
    decoder_inputs,
    decoder_outputs,
    encoder_function,
    encoder_inputs,
    encoder_outputs,
)
from samhq_jax.checkpoint import WEIGHTS_FILE, save_checkpoint
from samhq_jax.config import ModelConfig
from samhq_jax.errors import InputError

ENCODER_FILE = "encoder.stablehlo"
DECODER_FILE = "decoder.stablehlo"
MANIFEST_FILE = "stablehlo.json"
MANIFEST_FORMAT = "samhq_jax.stablehlo"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
SEP = "/"  # parameter paths in the weights dict: "mask_decoder/hq_token"
POSTPROCESS = (
    "low_res_masks only: the masks at the original (H, W) have a shape given by data. Upscale as the official "
    "SamOnnxModel.mask_postprocessing: bilinear (half-pixel centres, align_corners=False, no antialias) to S x S, "
    "crop to [:floor(H * s + 0.5), :floor(W * s + 0.5)] with s = S / max(H, W) (float32), bilinear to (H, W); "
    "mask = logits > 0"
)


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    """``platforms`` (one or more of :data:`PLATFORMS`, no repeats), else an ``InputError``."""
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms or len(set(platforms)) != len(platforms):
        raise InputError(
            f"--platforms {','.join(platforms)}: give one or more of {', '.join(PLATFORMS)}, comma-separated, each once"
        )
    return tuple(platforms)


def flat_weights(params: Any) -> dict[str, np.ndarray]:
    """The parameter tree as the artifacts' first argument: ``{"a/b/c": float32 array}``."""
    return {k: np.asarray(v, np.float32) for k, v in flatten_dict(params, sep=SEP).items()}


def symbolic(specs: list[TensorSpec], dims: dict[str, Any]) -> list[jax.ShapeDtypeStruct]:
    """``jax.ShapeDtypeStruct`` of each spec, its named dimensions taken from ``dims``."""
    return [
        jax.ShapeDtypeStruct(tuple(dims[d] if isinstance(d, str) else d for d in s.shape), jnp.dtype(s.dtype))
        for s in specs
    ]


def with_flat_weights(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(params, *xs)`` as ``f(weights, *xs)`` with ``weights`` the flat dict of :func:`flat_weights`."""

    def call(weights: dict[str, jax.Array], *xs: jax.Array) -> Any:
        return fn(unflatten_dict(weights, sep=SEP), *xs)

    return call


def weight_specs(weights: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of each weight (arrays or ``jax.ShapeDtypeStruct``: nothing is read)."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}


def lower_encoder(config: ModelConfig, weights: dict[str, Any], platforms: Sequence[str]) -> export.Exported:
    """The encoder's ``Exported`` for ``platforms`` (nothing compiled, nothing run)."""
    fn = jax.jit(with_flat_weights(encoder_function(config)))
    return export.export(fn, platforms=check_platforms(platforms))(
        weight_specs(weights), *symbolic(encoder_inputs(config), {})
    )


def lower_decoder(
    config: ModelConfig, weights: dict[str, Any], options: DecoderOptions, platforms: Sequence[str]
) -> export.Exported:
    """The decoder's ``Exported`` for ``platforms``, symbolic in the prompt, point and layer counts."""
    names = (LAYERS, PROMPTS, POINTS)
    dims = dict(zip(names, export.symbolic_shape(", ".join(names)), strict=True))
    fn = jax.jit(with_flat_weights(decoder_function(config, options)))
    return export.export(fn, platforms=check_platforms(platforms))(
        weight_specs(weights), *symbolic(decoder_inputs(config, PROMPTS), dims)
    )


def manifest(config: ModelConfig, options: DecoderOptions, platforms: Sequence[str]) -> dict[str, Any]:
    """What ``stablehlo.json`` says: files, inputs and outputs in call order, config, platforms."""
    weights = {"name": "weights", "file": WEIGHTS_FILE, "keys": f"parameter paths joined by {SEP!r}"}
    return {
        "format": MANIFEST_FORMAT,
        "jax_version": jax.__version__,
        "platforms": list(platforms),
        "config": config.to_dict(),
        "options": {"hq_token_only": options.hq_token_only, "multimask_output": options.multimask_output},
        "encoder": {
            "file": ENCODER_FILE,
            "inputs": [weights] + [s.as_dict() for s in encoder_inputs(config)],
            "outputs": [s.as_dict() for s in encoder_outputs(config)],
            "image": "RGB, resized to longest side S, (x - mean) / std, zero-padded bottom/right to S x S, NCHW",
        },
        "decoder": {
            "file": DECODER_FILE,
            "inputs": [weights] + [s.as_dict() for s in decoder_inputs(config, PROMPTS)],
            "outputs": [s.as_dict() for s in decoder_outputs(config, PROMPTS)],
            "point_labels": "-1 not a point, 0 background, 1 foreground, 2 box top-left, 3 box bottom-right",
            "masks_at_original_size": False,
            "postprocess": POSTPROCESS,
        },
        "symbolic_dimensions": {
            PROMPTS: "prompt sets decoded together (>= 1)",
            POINTS: "points per prompt set, box corners included (>= 1)",
            LAYERS: "interm_embeddings layers (>= 1; the official stack has 4, only [0] is read)",
        },
    }


def export_stablehlo(
    config: ModelConfig,
    params: Any,
    folder: Path,
    options: DecoderOptions,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    hq_trained: bool = True,
    step: Callable[[str], None] = lambda _: None,
) -> list[Path]:
    """Write the two artifacts, ``model.safetensors`` with ``config.json`` (the weights, a checkpoint
    folder) and ``stablehlo.json`` into ``folder``; ``step(what)`` is called before each part.
    Returns the files written."""
    platforms = check_platforms(platforms)
    weights = flat_weights(params)
    step(f"lowering the encoder for {', '.join(platforms)}")
    encoder = lower_encoder(config, weights, platforms)
    step(f"lowering the decoder for {', '.join(platforms)}")
    decoder = lower_decoder(config, weights, options, platforms)
    (folder / ENCODER_FILE).write_bytes(encoder.serialize())
    (folder / DECODER_FILE).write_bytes(decoder.serialize())
    save_checkpoint(folder, config, params, source="samhq export --format stablehlo", hq_trained=hq_trained)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest(config, options, platforms), indent=2) + "\n")
    return sorted(p for p in folder.iterdir() if p.is_file())
