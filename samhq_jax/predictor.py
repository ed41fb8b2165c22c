"""``SamHQPredictor``: the official ``SamPredictor`` API on the JAX model, plus batched prompts.

    predictor = SamHQPredictor.from_pretrained("sam_hq_vit_b.pth")
    predictor.set_image(image)                       # (H, W, 3) uint8 RGB; encoded once
    masks, iou, low_res = predictor.predict(box=np.array([x0, y0, x1, y1]))
    masks, iou, low_res = predictor.predict_batch(boxes=many_boxes)   # (P, 4), one compiled call

Coordinates are pixels in the original image. The image embedding and the early ViT feature are
cached at ``set_image``; prompt counts are padded to powers of two (by repeating the last prompt,
whose result is dropped) so a new count rarely recompiles.
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from samhq_jax.checkpoint import load_pretrained
from samhq_jax.config import SamHQConfig
from samhq_jax.prompt_encoder import LABEL_NEGATIVE, LABEL_NOT_A_POINT, LABEL_POSITIVE
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ
from samhq_jax.transforms import MASK_THRESHOLD, apply_boxes, apply_coords, postprocess_masks, preprocess

VALID_LABELS = (LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_NOT_A_POINT)


def _bucket(n: int) -> int:
    """Smallest power of two >= n."""
    return 1 << max(0, (n - 1).bit_length())


def _pad_prompts(a: np.ndarray | None, count: int) -> np.ndarray | None:
    """Pad axis 0 to ``count`` by repeating the last entry."""
    if a is None or a.shape[0] == count:
        return a
    return np.concatenate([a, np.repeat(a[-1:], count - a.shape[0], axis=0)], axis=0)


class SamHQPredictor:
    """Encode an image once, then predict HQ masks for any number of prompts."""

    def __init__(self, config: SamHQConfig, params: dict, dtype: jnp.dtype = jnp.float32) -> None:
        self.config = config
        self.params = params
        self.model = SamHQ(config, dtype=dtype)
        self._embed = jax.jit(partial(self.model.apply, method=SamHQ.embed_image))
        self._decode = jax.jit(
            partial(self.model.apply, method=SamHQ.decode),
            static_argnames=("multimask_output", "hq_token_only", "sam_only"),
        )
        self.reset_image()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: jnp.dtype = jnp.float32) -> SamHQPredictor:
        """Anything :func:`samhq_jax.load_pretrained` accepts."""
        config, params = load_pretrained(path)
        return cls(config, params, dtype=dtype)

    # ---- image ---------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode ``image`` (``(H, W, 3)`` uint8, grayscale / RGBA converted) and cache its embeddings."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format == "BGR":
            image = np.asarray(image)[..., ::-1]
        net_input, self.input_size, self.original_size = preprocess(image, self.config.img_size)
        self.embeddings: ImageEmbeddings | None = self._embed({"params": self.params}, jnp.asarray(net_input)[None])

    def reset_image(self) -> None:
        """Forget the current image."""
        self.embeddings = None
        self.input_size: tuple[int, int] | None = None
        self.original_size: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        return self.embeddings is not None

    def get_image_embedding(self) -> ImageEmbeddings:
        """The cached ``(1, G, G, C)`` embedding and ``(1, G, G, vit_dim)`` early feature."""
        self._require_image()
        return self.embeddings

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    # ---- prompts -------------------------------------------------------------------------------
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        sam_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt, as the official ``SamPredictor.predict``.

        Args:
          point_coords: ``(N, 2)`` xy pixels in the original image.
          point_labels: ``(N,)`` 1 foreground, 0 background, -1 ignore.
          box: ``(4,)`` xyxy pixels in the original image.
          mask_input: ``(1, 256, 256)`` low-res logits from an earlier call.
          multimask_output: add the best of SAM's three multimask outputs (else SAM's single mask).
          return_logits: return logits instead of boolean masks.
          hq_token_only: return the HQ-token mask alone.
          sam_only: the original SAM's output (HQ token left out): as ``segment-anything``'s
            ``SamPredictor``, three masks with ``multimask_output``.

        Returns:
          ``masks (K, H, W)`` bool (float32 logits with ``return_logits``), ``iou_predictions (K,)``
          float32 and ``low_res_logits (K, 256, 256)`` float32; K = 1 (3 with ``sam_only`` and
          ``multimask_output``).
        """
        self._require_image()
        if point_coords is not None:
            point_coords = _as_array(point_coords, "point_coords", (None, 2))[None]
        if point_labels is not None:
            point_labels = np.asarray(point_labels)[None]
        if box is not None:
            box = _as_array(box, "box", (4,))[None]
        if mask_input is not None:
            mask_input = _as_array(mask_input, "mask_input", (1, None, None))[None]
        masks, iou, low_res = self.predict_batch(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits, hq_token_only, sam_only
        )
        return masks[0], iou[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        sam_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P prompts for the current image in one compiled call.

        Args:
          point_coords: ``(P, N, 2)`` xy pixels in the original image (same N for every prompt).
          point_labels: ``(P, N)`` in {1, 0, -1}.
          boxes: ``(P, 4)`` xyxy pixels in the original image.
          mask_input: ``(P, 1, 256, 256)`` low-res logits.
          Flags as in :meth:`predict`.

        Returns:
          ``masks (P, K, H, W)``, ``iou_predictions (P, K)``, ``low_res_logits (P, K, 256, 256)``.
        """
        self._require_image()
        points, labels, boxes, masks = self._check_prompts(
            point_coords, point_labels, boxes, mask_input, self.original_size
        )
        return self._decode_padded(
            self.embeddings,
            [(points, labels, boxes, masks)],
            [(self.input_size, self.original_size)],
            multimask_output,
            return_logits,
            hq_token_only,
            sam_only,
        )[0]

    def predict_images(
        self,
        images: list[np.ndarray],
        prompts: list[dict[str, np.ndarray]],
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        sam_only: bool = False,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Several images, each with its own number of prompts, in one compiled encode + decode.

        ``prompts[i]`` holds ``predict_batch`` keyword arguments for ``images[i]``
        (``point_coords`` / ``point_labels`` / ``boxes`` / ``mask_input``, in that image's pixels).
        Every image must use the same prompt kinds and, for points, the same points per prompt;
        prompt counts may differ (they are padded to a common power of two by repeating each
        image's last prompt). Does not change the image set with :meth:`set_image`.

        Returns, per image, ``(masks (P_i, 1, H_i, W_i), iou (P_i, 1), low_res (P_i, 1, 4G, 4G))``.
        """
        if len(images) != len(prompts) or not images:
            raise ValueError(f"need one prompt dict per image, got {len(images)} images and {len(prompts)}")
        keys = {frozenset(k for k, v in pr.items() if v is not None) for pr in prompts}
        if len(keys) != 1:
            raise ValueError(f"every image must use the same prompt kinds, got {sorted(map(sorted, keys))}")
        inputs, sizes, checked = [], [], []
        for image, pr in zip(images, prompts, strict=True):
            net_input, input_size, original_size = preprocess(image, self.config.img_size)
            inputs.append(net_input)
            sizes.append((input_size, original_size))
            checked.append(
                self._check_prompts(
                    pr.get("point_coords"),
                    pr.get("point_labels"),
                    pr.get("boxes"),
                    pr.get("mask_input"),
                    original_size,
                )
            )
        n_points = {c[0].shape[1] for c in checked if c[0] is not None}
        if len(n_points) > 1:
            raise ValueError(f"point prompts must have the same number of points in every image, got {n_points}")
        embeddings = self._embed({"params": self.params}, jnp.asarray(np.stack(inputs)))
        return self._decode_padded(embeddings, checked, sizes, multimask_output, return_logits, hq_token_only, sam_only)

    def _decode_padded(
        self,
        embeddings: ImageEmbeddings,
        checked: list[tuple[np.ndarray | None, ...]],
        sizes: list[tuple[tuple[int, int], tuple[int, int]]],
        multimask_output: bool,
        return_logits: bool,
        hq_token_only: bool,
        sam_only: bool,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Decode checked prompts (one tuple per image), padded to a common power-of-two count, and
        post-process each image's masks to its own ``(input_size, original_size)``."""
        counts = [next(a.shape[0] for a in c if a is not None) for c in checked]
        size = _bucket(max(counts))
        stacked = [
            None if checked[0][k] is None else jnp.asarray(np.stack([_pad_prompts(c[k], size) for c in checked]))
            for k in range(4)
        ]
        low_res, iou = self._decode(
            {"params": self.params},
            embeddings,
            *stacked,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
            sam_only=sam_only,
        )
        results = []
        for b, (p, (input_size, original_size)) in enumerate(zip(counts, sizes, strict=True)):
            low = low_res[b, :p]  # (P, K, 4G, 4G)
            full = np.asarray(postprocess_masks(low, input_size, original_size, self.config.img_size))
            results.append((full if return_logits else full > MASK_THRESHOLD, np.asarray(iou[b, :p]), np.asarray(low)))
        return results

    def _check_prompts(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: np.ndarray | None,
        original_size: tuple[int, int],
    ) -> tuple[np.ndarray | None, ...]:
        """Validate batched prompts and map coordinates into the resized frame."""
        s, low = self.config.img_size, self.config.low_res_mask_size
        counts = {}
        points = labels = masks = None
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            coords = _as_array(point_coords, "point_coords", (None, None, 2))
            labels = np.asarray(point_labels)
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_labels must have shape {coords.shape[:2]} to match point_coords, got {labels.shape}"
                )
            bad = sorted(set(np.unique(labels).tolist()) - set(VALID_LABELS))
            if bad:
                raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 (ignore); got {bad}")
            points, labels = apply_coords(coords, original_size, s), labels.astype(np.int32)
            counts["point_coords"] = coords.shape[0]
        if boxes is not None:
            raw = _as_array(boxes, "boxes", (None, 4))
            flipped = np.nonzero((raw[:, 2] < raw[:, 0]) | (raw[:, 3] < raw[:, 1]))[0]
            if flipped.size:
                raise ValueError(f"boxes must be x0 y0 x1 y1 with x1 >= x0 and y1 >= y0; bad rows {flipped.tolist()}")
            boxes = apply_boxes(raw, original_size, s)
            counts["boxes"] = raw.shape[0]
        if mask_input is not None:
            masks = _as_array(mask_input, "mask_input", (None, 1, low, low))[:, 0]
            counts["mask_input"] = masks.shape[0]
        if not counts:
            raise ValueError("give at least one prompt: point_coords, boxes or mask_input")
        if len(set(counts.values())) > 1:
            raise ValueError(f"prompt counts disagree: {counts}")
        return points, labels, boxes, masks


def _as_array(a: np.ndarray, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Float32 array of the given shape (None = any size), finite; clear ``ValueError`` otherwise."""
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
    ):
        want = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr
