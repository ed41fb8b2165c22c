"""Our side of ``samhq parity``: the encoder and decoder with their sown intermediates, compiled once
per config and dtype."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from eval.parity.stages import FLAGS, Arrays, Flags, Prompts, Size
from samhq_jax.config import ModelConfig
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ
from samhq_jax.transforms import postprocess_masks


@functools.cache
def _embed_fn(config: ModelConfig, dtype: Any) -> Callable:
    """Jitted ``embed_image`` with the sown intermediates, compiled once per config and dtype."""
    model = SamHQ(config, dtype=dtype)
    return jax.jit(functools.partial(model.apply, method=SamHQ.embed_image, mutable=["intermediates"]))


@functools.cache
def _decode_fn(config: ModelConfig, dtype: Any) -> Callable:
    """Jitted decode for all four :data:`FLAGS` at once (XLA shares their common work: one compile,
    not four), with the sown intermediates; returns a list in :data:`FLAGS` order."""
    model = SamHQ(config, dtype=dtype)

    def run(params: dict, emb: ImageEmbeddings, points, labels, boxes, masks) -> list:  # noqa: ANN001
        return [
            model.apply(
                {"params": params},
                emb,
                points,
                labels,
                boxes,
                masks,
                multimask,
                hq_only,
                method=SamHQ.decode,
                mutable=["intermediates"],
            )
            for multimask, hq_only in FLAGS
        ]

    return jax.jit(run)


def jax_image_stages(config: ModelConfig, params: dict, images: np.ndarray, dtype: Any = jnp.float32) -> Arrays:
    """Our image encoder with its sown intermediates, as numpy (same keys and shapes as
    :func:`official_image_stages`); ``dtype`` is the compute dtype."""
    embedded, state = _embed_fn(config, dtype)({"params": params}, jnp.asarray(images))
    inter = flatten_dict(state["intermediates"]["image_encoder"], sep="_")  # TinyViT: layers_{i}_blocks_{j}_out
    out = {k.removesuffix("_out"): np.asarray(v[0]) for k, v in inter.items()}
    out.update(
        image_embeddings=np.asarray(embedded.image_embeddings), early_features=np.asarray(embedded.early_features)
    )
    return out


def jax_decode_all(
    config: ModelConfig, params: dict, image_stages: Arrays, prompts: Prompts, dtype: Any = jnp.float32
) -> dict[Flags, Arrays]:
    """Our prompt encoder + decoder on all B images for every ``(multimask_output, hq_token_only)``;
    per flag pair the stages of :func:`official_decode_stages`, shaped ``(B, P, ...)``."""
    arr = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
    emb = ImageEmbeddings(jnp.asarray(image_stages["image_embeddings"]), jnp.asarray(image_stages["early_features"]))
    outs = _decode_fn(config, dtype)(
        params, emb, arr(prompts.points), arr(prompts.labels), arr(prompts.boxes), arr(prompts.masks)
    )
    return {flags: _decode_arrays(*out) for flags, out in zip(FLAGS, outs, strict=True)}


def _decode_arrays(outputs: tuple[jax.Array, jax.Array], state: dict) -> Arrays:
    """One decode's outputs and sown intermediates as ``(B, P, ...)`` numpy arrays."""
    low_res, iou = outputs
    inter = state["intermediates"]
    dec = inter["mask_decoder"]
    b, p = low_res.shape[:2]
    bp = lambda a: np.asarray(a).reshape(b, p, *a.shape[1:])  # noqa: E731
    queries, keys = dec["transformer_out"][0]
    return {
        "sparse_embeddings": np.asarray(inter["sparse_embeddings"][0]),
        "dense_embeddings": np.asarray(inter["dense_embeddings"][0]),
        "transformer_queries": bp(queries),
        "transformer_keys": bp(keys),
        "masks_all": bp(dec["masks"][0]),
        "iou_all": bp(dec["iou_pred"][0]),
        "low_res_masks": np.asarray(low_res),
        "iou_predictions": np.asarray(iou),
    }


def jax_decode_stages(
    config: ModelConfig,
    params: dict,
    image_stages: Arrays,
    prompts: Prompts,
    multimask_output: bool,
    hq_token_only: bool,
    dtype: Any = jnp.float32,
) -> Arrays:
    """Our prompt encoder + decoder on all images at once; stages reshaped to ``(B, P, ...)``.

    Runs the compiled all-flags decode of :func:`jax_decode_all` and returns the pair asked for.
    """
    return jax_decode_all(config, params, image_stages, prompts, dtype)[(bool(multimask_output), bool(hq_token_only))]


@dataclasses.dataclass
class Ours:
    """samhq-jax with a parameter tree (moved to the device once) and a compute dtype."""

    config: ModelConfig
    params: dict
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        self.params = jax.device_put(self.params)

    def image_stages(self, images: np.ndarray) -> Arrays:
        return jax_image_stages(self.config, self.params, images, self.dtype)

    def decode_all(self, image_stages: Arrays, prompts: Prompts) -> dict[Flags, Arrays]:
        return jax_decode_all(self.config, self.params, image_stages, prompts, self.dtype)

    def postprocess(self, low_res: np.ndarray, input_size: Size, original_size: Size) -> np.ndarray:
        """Our post-processing (as :class:`SamHQPredictor`'s): ``(P, K, 4G, 4G)`` -> ``(P, K, H, W)`` logits."""
        full = postprocess_masks(jnp.asarray(low_res), tuple(input_size), tuple(original_size), self.config.img_size)
        return np.asarray(full)
