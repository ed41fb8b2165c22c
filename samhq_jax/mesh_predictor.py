"""``MeshPredictor``: the one-image programs of :class:`~samhq_jax.predictor.SamHQPredictor` on every
device of a data mesh at once, one image per device.

    mesh = data_mesh()                                    # this process's devices, axis "data"
    predictor = MeshPredictor.from_pretrained("sam_hq_vit_b.pth", mesh)
    results = predictor.predict_images(images, prompts)   # up to predictor.lanes images
    SamHQAutomaticMaskGenerator(predictor).generate_images(many_images)   # lanes at a time

A call takes up to ``lanes = mesh.size`` images, one per device (a *lane*), under ``jax.shard_map``
over the ``"data"`` axis with the parameters replicated: each device runs the encoder and decoder
programs ``SamHQPredictor`` compiles for one image (batch 1, the same prompt count), on its own image.
So an image's results are the same, bit for bit, on one device, on eight, or spread over several
processes, whatever else the call holds. A call with fewer images repeats the last one (its lanes'
results are dropped). The masks are upscaled on the device that holds the image.

Compilation: one encoder and one decoder program per prompt signature for the whole mesh (not one
per device), shared by every ``MeshPredictor`` of one model, policy and mesh; the small upscaling
programs compile once per device they run on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from samhq_jax.checkpoint import load_pretrained
from samhq_jax.config import ModelConfig
from samhq_jax.distributed import DATA_AXIS, data_mesh, device_blocks, replicate, shard_rows
from samhq_jax.errors import InputError
from samhq_jax.precision import LIBRARY, Policy
from samhq_jax.predictor import bucket_size, compiled_model, full_masks, pad_prompts, prepare_prompts
from samhq_jax.prompt_encoder import LABEL_POSITIVE
from samhq_jax.sam_hq import ImageEmbeddings
from samhq_jax.transforms import ResizeLongestSide, output_taps, preprocess

ROWS, WHOLE = PartitionSpec(DATA_AXIS), PartitionSpec()
EMBEDDING_SPECS = ImageEmbeddings(ROWS, ROWS, ROWS, WHOLE)  # image_pe depends on the weights alone


@functools.lru_cache(maxsize=16)
def sharded_embed(config: ModelConfig, dtype: str, precision: str, mesh: Mesh) -> Callable:
    """Jitted ``(variables, images (lanes, S, S, 3)) -> ImageEmbeddings`` (split over ``mesh``): the
    one-image encoder of :func:`~samhq_jax.predictor.compiled_model` on every device."""
    _, embed, _ = compiled_model(config, dtype, precision)
    return jax.jit(jax.shard_map(embed, mesh=mesh, in_specs=(WHOLE, ROWS), out_specs=EMBEDDING_SPECS))


@functools.lru_cache(maxsize=64)
def sharded_decode(
    config: ModelConfig,
    dtype: str,
    precision: str,
    mesh: Mesh,
    kinds: tuple[bool, ...],
    multimask_output: bool,
    hq_token_only: bool,
) -> Callable:
    """Jitted ``(variables, embeddings, *prompts) -> (low_res, iou)`` (split over ``mesh``): the
    one-image decoder of :func:`~samhq_jax.predictor.compiled_model` on every device, for the prompt
    kinds present (``kinds``: points, labels, boxes, mask inputs) and the flags."""
    _, _, decode = compiled_model(config, dtype, precision)

    def one_image(variables: Any, embeddings: ImageEmbeddings, *given: jax.Array) -> tuple[jax.Array, ...]:
        supplied = iter(given)
        args = [next(supplied) if present else None for present in kinds]
        return decode(variables, embeddings, *args, multimask_output=multimask_output, hq_token_only=hq_token_only)

    specs = (WHOLE, EMBEDDING_SPECS, *([ROWS] * sum(kinds)))
    return jax.jit(jax.shard_map(one_image, mesh=mesh, in_specs=specs, out_specs=(ROWS, ROWS)))


class MeshPredictor:
    """Encode and decode up to :attr:`lanes` images at once, one per device of ``mesh``.

    Attributes:
      config / policy / transform: as :class:`~samhq_jax.predictor.SamHQPredictor`'s.
      mesh: the 1-D ``"data"`` mesh (default :func:`~samhq_jax.distributed.data_mesh`: this
        process's devices); ``params`` replicated on it.
      input_sizes / original_sizes: per image set, ``(h, w)`` in the model's input frame and ``(H, W)``.
    """

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        mesh: Mesh | None = None,
        dtype: jnp.dtype | str = jnp.float32,
        precision: str = LIBRARY.precision,
    ) -> None:
        self.config = config
        self.mesh = data_mesh() if mesh is None else mesh
        self.policy = Policy(precision, dtype)
        self.transform = ResizeLongestSide(config.img_size)
        self.params = replicate(params, self.mesh)
        self.reset_images()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        mesh: Mesh | None = None,
        dtype: jnp.dtype | str = jnp.float32,
        precision: str = LIBRARY.precision,
    ) -> MeshPredictor:
        """Anything :func:`samhq_jax.load_pretrained` accepts; ``dtype`` / ``precision`` as
        :meth:`SamHQPredictor.from_pretrained`."""
        config, params = load_pretrained(path)
        return cls(config, params, mesh, dtype=dtype, precision=precision)

    @property
    def lanes(self) -> int:
        """Images per call: the devices of the mesh."""
        return self.mesh.size

    def set_images(self, images: Sequence[np.ndarray]) -> None:
        """Encode 1 to :attr:`lanes` images (each ``(H, W, 3)`` uint8, grayscale / RGBA converted),
        image ``i`` on device ``i``, and keep their embeddings (``(lanes, G, G, C)``, split over the
        mesh) and sizes."""
        if not 1 <= len(images) <= self.lanes:
            raise InputError(f"need 1 to {self.lanes} images (one per device), got {len(images)}")
        prepared = [preprocess(image, self.config.img_size) for image in images]
        inputs = [p[0] for p in prepared]
        inputs += [inputs[-1]] * (self.lanes - len(inputs))
        self.input_sizes = [tuple(int(v) for v in p[1]) for p in prepared]
        self.original_sizes = [tuple(int(v) for v in p[2]) for p in prepared]
        embed = sharded_embed(self.config, self.policy.dtype, self.policy.precision, self.mesh)
        self.embeddings: ImageEmbeddings | None = embed(
            {"params": self.params}, shard_rows(np.stack(inputs), self.mesh)
        )

    def reset_images(self) -> None:
        """Forget the images set."""
        self.embeddings = None
        self.input_sizes: list[tuple[int, int]] = []
        self.original_sizes: list[tuple[int, int]] = []

    def decode_points(
        self, points: Sequence[np.ndarray], count: int, multimask_output: bool, hq_token_only: bool
    ) -> tuple[jax.Array, jax.Array]:
        """:meth:`SamHQPredictor.decode_points` for each image set: ``points[i]`` ``(N_i, 2)``
        float32 xy in image ``i``'s input frame, ``N_i <= count``, one positive point per prompt,
        padded to ``count``. Returns ``low_res (lanes, count, K, 4G, 4G)`` logits and ``iou (lanes,
        count, K)``, split over the mesh (:func:`~samhq_jax.distributed.device_blocks`); lanes past
        ``len(points)`` repeat the last image's."""
        self._require_images(len(points))
        padded = [pad_prompts(np.asarray(p, np.float32), count) for p in points]
        padded += [padded[-1]] * (self.lanes - len(padded))
        coords = np.stack(padded)[:, :, None]
        labels = np.full((self.lanes, count, 1), LABEL_POSITIVE, np.int32)
        return self._decode((coords, labels, None, None), multimask_output, hq_token_only)

    def predict_images(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[dict[str, np.ndarray]],
        multimask_output: bool = True,
        hq_token_only: bool = False,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Up to :attr:`lanes` images, each with its own prompts, one image per device.

        ``prompts[i]`` holds :meth:`SamHQPredictor.predict_batch` keyword arguments for ``images[i]``
        (``point_coords`` / ``point_labels`` / ``boxes`` / ``mask_input``, in its pixels; any kinds
        and counts). The images are encoded in one call; the prompts are decoded in one call per
        signature (kinds, power-of-two count, points per prompt), the other lanes of that call
        decoding a stand-in whose result is dropped, so every image gets the one-image program of
        its own prompts. Returns, per image, ``(masks (P_i, K, H_i, W_i) bool, iou (P_i, K),
        low_res (P_i, K, 4G, 4G))`` as :meth:`SamHQPredictor.predict_batch` does.
        """
        if len(images) != len(prompts):
            raise InputError(f"need one prompt dict per image, got {len(images)} images and {len(prompts)}")
        checked = [  # every prompt checked before any image is encoded
            prepare_prompts(
                self.config,
                p.get("point_coords"),
                p.get("point_labels"),
                p.get("boxes"),
                p.get("mask_input"),
                tuple(np.shape(image)[:2]),
                where=f"prompts[{i}]: ",
            )
            for i, (image, p) in enumerate(zip(images, prompts, strict=True))
        ]
        self.set_images(images)
        counts = [next(a.shape[0] for a in c if a is not None) for c in checked]
        groups: dict[tuple, list[int]] = {}
        for lane, (c, count) in enumerate(zip(checked, counts, strict=True)):
            signature = tuple(None if a is None else (bucket_size(count), *a.shape[1:]) for a in c)
            groups.setdefault(signature, []).append(lane)
        results: list[Any] = [None] * len(images)
        for signature, members in groups.items():
            size = next(s[0] for s in signature if s is not None)
            padded = {lane: [pad_prompts(a, size) for a in checked[lane]] for lane in members}
            rows = [padded.get(lane, padded[members[0]]) for lane in range(self.lanes)]
            stacked = tuple(None if s is None else np.stack([r[k] for r in rows]) for k, s in enumerate(signature))
            low_res, iou = self._decode(stacked, multimask_output, hq_token_only)
            blocks = device_blocks(low_res)
            full = {}  # dispatched on every member's device before any result is read
            for lane in members:
                taps = jax.device_put(
                    output_taps(self.input_sizes[lane], self.original_sizes[lane]), blocks[lane].sharding
                )
                full[lane] = full_masks(blocks[lane], *taps, self.config.img_size, False)
            low_res_host, iou_host = jax.device_get((low_res, iou))
            for lane in members:
                p, (h, w) = counts[lane], self.original_sizes[lane]
                masks = np.ascontiguousarray(jax.device_get(full[lane])[0, :p, :, :h, :w])
                results[lane] = (masks, iou_host[lane, :p], low_res_host[lane, :p])
        return results

    def _require_images(self, count: int) -> None:
        if self.embeddings is None or count != len(self.input_sizes):
            raise InputError(f"prompts for {count} image(s), but {len(self.input_sizes)} set with set_images")

    def _decode(
        self, prompts: tuple[np.ndarray | None, ...], multimask_output: bool, hq_token_only: bool
    ) -> tuple[jax.Array, jax.Array]:
        """The decoder on every lane: ``prompts = (points, labels, boxes, mask_inputs)``, each None or
        ``(lanes, P, ...)`` in the input frame -> ``low_res (lanes, P, K, 4G, 4G)``, ``iou (lanes, P,
        K)``, split over the mesh (:func:`sharded_decode`)."""
        kinds = tuple(a is not None for a in prompts)
        policy = self.policy
        decode = sharded_decode(
            self.config, policy.dtype, policy.precision, self.mesh, kinds, multimask_output, hq_token_only
        )
        given = [shard_rows(a, self.mesh) for a in prompts if a is not None]
        return decode({"params": self.params}, self.embeddings, *given)
