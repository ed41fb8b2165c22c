"""``SamHQPredictor``: the official ``SamPredictor`` API on the JAX model, plus batched prompts.

    predictor = SamHQPredictor.from_pretrained("sam_hq_vit_b.pth")
    predictor.set_image(image)                       # (H, W, 3) uint8 RGB; encoded once
    masks, iou, low_res = predictor.predict(box=np.array([x0, y0, x1, y1]))
    masks, iou, low_res = predictor.predict_batch(boxes=many_boxes)   # (P, 4), one compiled call

Coordinates are pixels in the original image. The image embedding and the early ViT feature are
cached at ``set_image``; prompt counts are padded to powers of two (by repeating the last prompt,
whose result is dropped) so a new count rarely recompiles, and masks are upscaled at padded sizes
(:func:`~samhq_jax.transforms.bucket_side`, cropped on the host) so a new image size rarely does.

The official ``SamPredictor`` surface is here too, so the official demo (``demo/demo_hqsam.py``)
runs with changed imports: ``transform`` (a :class:`~samhq_jax.transforms.ResizeLongestSide`),
``predict_torch`` (prompts already in the model's input frame, batched), ``set_torch_image``,
``features`` / ``interm_features``, ``device``, ``original_size`` / ``input_size`` /
``is_image_set`` / ``reset_image``. Where the official API hands out torch tensors, this one hands
out NumPy arrays of type :class:`TensorLikeArray`, whose ``.cpu()`` / ``.detach()`` / ``.numpy()``
are no-ops, so ``masks.squeeze(1).cpu().numpy()`` keeps working. The one line to change in user
code: ``torch.tensor(..., device=predictor.device)`` -- ``device`` is a JAX device, which torch
cannot place a tensor on; drop ``device=`` (or use ``np.array``): the prompts may be torch tensors
or any array-like.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from samhq_jax.checkpoint import load_pretrained
from samhq_jax.config import ModelConfig
from samhq_jax.errors import InputError
from samhq_jax.precision import LIBRARY, Policy, at_precision, check_dtype, check_precision
from samhq_jax.prompt_check import VALID_LABELS as VALID_LABELS  # the labels a prompt may have (re-exported)
from samhq_jax.prompt_check import check_boxes, check_labels, finite_array
from samhq_jax.prompt_encoder import LABEL_POSITIVE
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ
from samhq_jax.transforms import (
    MASK_THRESHOLD,
    ResizeLongestSide,
    Taps,
    apply_boxes,
    apply_coords,
    as_numpy,
    normalize_and_pad,
    output_taps,
    preprocess,
    upscale_padded,
)


def bucket_size(n: int) -> int:
    """Smallest power of two >= n: the prompt count a batch of ``n`` is padded to, so that a few
    compiled programs serve every count."""
    return 1 << max(0, (n - 1).bit_length())


class TensorLikeArray(np.ndarray):
    """A NumPy array standing in for a torch tensor of the official API: ``.cpu()`` and
    ``.detach()`` return it unchanged and ``.numpy()`` returns it as a plain ``np.ndarray``, so
    official-style code such as ``masks.squeeze(1).cpu().numpy()`` runs as it is. Everything
    else is NumPy (``squeeze``, indexing, ``shape``, ``dtype``)."""

    def cpu(self) -> TensorLikeArray:
        return self

    def detach(self) -> TensorLikeArray:
        return self

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


def _tensor_like(a: jax.Array | np.ndarray) -> TensorLikeArray:
    return np.asarray(jax.device_get(a)).view(TensorLikeArray)


def pad_prompts(a: np.ndarray | None, count: int) -> np.ndarray | None:
    """Pad axis 0 to ``count`` by repeating the last entry (padding that changes no real prompt's
    result); None stays None."""
    if a is None or a.shape[0] == count:
        return a
    return np.concatenate([a, np.repeat(a[-1:], count - a.shape[0], axis=0)], axis=0)


@partial(jax.jit, static_argnames=("long_side", "return_logits"))
def full_masks(low_res: jax.Array, rows: Taps, columns: Taps, long_side: int, return_logits: bool) -> jax.Array:
    """``(P, K, 4G, 4G)`` low-res logits -> ``(P, K, Hp, Wp)`` masks at the original size, padded, on the
    device: bool (``> MASK_THRESHOLD``), or float32 logits with ``return_logits``. ``(rows, columns)
    =`` :func:`~samhq_jax.transforms.output_taps` ``(input_size, original_size)``; the caller crops
    ``[..., :H, :W]``. The image size is data: one compile per prompt bucket and padded size
    (:func:`~samhq_jax.transforms.bucket_side` of each side), not per image size."""
    full = upscale_padded(low_res, rows, columns, long_side)
    return full if return_logits else full > MASK_THRESHOLD


def compiled_model(
    config: ModelConfig, dtype: jnp.dtype | str = jnp.float32, precision: str = LIBRARY.precision
) -> tuple[SamHQ, Callable, Callable]:
    """The Flax module with its jitted ``embed_image`` (HQ features included, computed once per image)
    and ``decode``, shared by every predictor of one ``(config, dtype, precision)``: a prompt
    signature compiles once per process, not once per predictor.

    ``dtype`` (``float32`` / ``bfloat16``, a name or a dtype) and ``precision`` (``"highest"`` /
    ``"default"``) follow the one policy of :mod:`samhq_jax.precision`: ``precision`` is the
    matmul / convolution precision of every dot in both (``jax.default_matmul_precision`` inside
    the jit); ``"highest"`` (the library default) is full float32, as PyTorch computes float32
    (use it for parity); ``"default"`` lets GPUs and TPUs use TF32 / bf16 passes (faster, errors
    near 1e-3). On CPU both are full float32. Other values raise a one-line ``ValueError``.
    """
    return _compile(config, check_dtype(dtype), check_precision(precision))


@lru_cache(maxsize=16)
def _compile(config: ModelConfig, dtype: jnp.dtype, precision: str) -> tuple[SamHQ, Callable, Callable]:
    model = SamHQ(config, dtype=dtype)

    def method(fn: Callable, **fixed: Any) -> Callable:
        return at_precision(lambda *args, **kwargs: model.apply(*args, method=fn, **fixed, **kwargs), precision)

    embed = jax.jit(method(SamHQ.embed_image, hq_features=True))
    decode = jax.jit(
        in_prompt_chunks(method(SamHQ.decode), PROMPT_CHUNK.get(jax.default_backend())),
        static_argnames=("multimask_output", "hq_token_only", "sam_only", "all_multimask"),
    )
    return model, embed, decode


# Prompts decoded per step of a compiled loop over a larger prompt batch, per platform (absent: all
# at once). Each prompt's decoder works on (4096, 256) image tokens and (256, 256, 64) HQ feature
# maps; on a CPU a few prompts at a time keep those in the cache: 64 boxes on vit_b took 0.7x the
# CPU time of one 64-prompt step, 256 boxes 0.58x (tried 1, 2, 4, 8, 16 at a time; 4 took the least).
# Accelerators keep one wide step.
PROMPT_CHUNK = {"cpu": 4}


def chunk_steps(count: Any, chunk: int | None) -> int:
    """The steps :func:`in_prompt_chunks` takes for ``count`` prompts: ``count / chunk`` where
    ``chunk`` divides ``count`` and is smaller, else 1 (one step with every prompt, also for a
    symbolic count: a program exported for any number of prompts)."""
    if not chunk or export.is_symbolic_dim(count):
        return 1
    return count // chunk if count > chunk and count % chunk == 0 else 1


def decode_steps(count: int) -> int:
    """The steps the decode of :func:`compiled_model` takes for ``count`` prompts per image on JAX's
    default backend (:data:`PROMPT_CHUNK`). XLA's cost analysis counts a loop's body once: the
    program's FLOPs are its figure times this."""
    return chunk_steps(count, PROMPT_CHUNK.get(jax.default_backend()))


def in_prompt_chunks(decode: Callable, chunk: int | None) -> Callable:
    """``decode(variables, embeddings, points, labels, boxes, mask_inputs, **flags)`` (prompts
    ``(B, P, ...)``, each optional; outputs ``(B, P, ...)``) computed ``chunk`` prompts at a time in
    one ``jax.lax.map`` when ``chunk`` divides P and is smaller. Each prompt's result depends on
    that prompt and the image only, so the outputs equal the one-step decode up to XLA's choice of
    summation order (measured on vit_b: 1e-6 of the largest logit). ``chunk`` None: ``decode`` itself."""
    if chunk is None:
        return decode

    def run(
        variables: Any,
        embeddings: ImageEmbeddings,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        **flags: Any,
    ) -> tuple[jax.Array, jax.Array]:
        prompts = (points, labels, boxes, mask_inputs)
        b, p = next(a.shape[:2] for a in prompts if a is not None)
        if chunk_steps(p, chunk) == 1:
            return decode(variables, embeddings, *prompts, **flags)

        def split(a: jax.Array | None) -> jax.Array | None:  # (B, P, ...) -> (P / chunk, B, chunk, ...)
            return None if a is None else jnp.swapaxes(a.reshape(b, p // chunk, chunk, *a.shape[2:]), 0, 1)

        def step(part: tuple[jax.Array | None, ...]) -> tuple[jax.Array, jax.Array]:
            return decode(variables, embeddings, *part, **flags)

        outputs = jax.lax.map(step, tuple(split(a) for a in prompts))
        return tuple(jnp.swapaxes(o, 0, 1).reshape(b, p, *o.shape[3:]) for o in outputs)

    return run


class SamHQPredictor:
    """Encode an image once, then predict HQ masks for any number of prompts.

    Attributes:
      config: the model's :class:`ModelConfig`; ``params`` its weights; ``model`` the Flax module.
      transform: ``ResizeLongestSide(config.img_size)``, the official ``predictor.transform``.
      original_size / input_size: ``(H, W)`` of the image set, and of it resized into the model's
        input frame (longest side ``config.img_size``); None before an image is set.
      policy: the :class:`~samhq_jax.precision.Policy` (``precision``, ``dtype``) every compiled call
        runs under; default :data:`~samhq_jax.precision.LIBRARY` (``highest`` / ``float32``).
    """

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        dtype: jnp.dtype | str = jnp.float32,
        precision: str = LIBRARY.precision,
    ) -> None:
        self.config = config
        self.policy = Policy(precision, dtype)  # checked before anything is placed
        self.params = jax.device_put(params)  # once: warm calls move no weights
        self.model, self._embed, self._decode = compiled_model(config, self.policy.dtype, self.policy.precision)
        self.transform = ResizeLongestSide(config.img_size)
        self.reset_image()

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: jnp.dtype | str = jnp.float32, precision: str = LIBRARY.precision
    ) -> SamHQPredictor:
        """Anything :func:`samhq_jax.load_pretrained` accepts.

        ``dtype``: compute dtype, ``float32`` or ``bfloat16`` (by name or ``jnp.bfloat16``: bf16
        matmuls, float32 parameters, softmax and LayerNorm statistics); ``precision``:
        ``"highest"`` (default) or ``"default"``, see :func:`compiled_model`.
        """
        config, params = load_pretrained(path)
        return cls(config, params, dtype=dtype, precision=precision)

    # ---- image ---------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode ``image`` (``(H, W, 3)`` uint8, grayscale / RGBA converted) and cache its embeddings."""
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format == "BGR":
            image = np.asarray(image)[..., ::-1]
        net_input, input_size, original_size = preprocess(image, self.config.img_size)
        self._set_embeddings(net_input, input_size, original_size)

    def set_torch_image(self, transformed_image: object, original_image_size: tuple[int, ...]) -> None:
        """The official ``set_torch_image``: encode an image already resized by :attr:`transform`.

        Args:
          transformed_image: ``(1, 3, h, w)`` NCHW, 0-255 (uint8 or float; a torch tensor or any
            array-like), RGB, with ``max(h, w) == config.img_size``, e.g.
            ``transform.apply_image(image)`` moved to channels-first with a batch axis.
          original_image_size: ``(H, W)`` of the image before resizing (prompts are in its pixels).
        """
        image = as_numpy(transformed_image)
        s = self.config.img_size
        if image.ndim != 4 or image.shape[:2] != (1, 3) or max(image.shape[2:]) != s or min(image.shape[2:]) < 1:
            raise InputError(f"set_torch_image input must be (1, 3, h, w) with long side {s}, got {image.shape}")
        if len(original_image_size) != 2:
            raise InputError(f"original_image_size must be (H, W), got {original_image_size}")
        net_input = normalize_and_pad(image[0].transpose(1, 2, 0), s)
        self._set_embeddings(net_input, image.shape[2:], original_image_size)

    def _set_embeddings(
        self, net_input: np.ndarray, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> None:
        """Encode ``(S, S, 3)`` float32 normalised, padded ``net_input`` and cache it with its sizes."""
        self.input_size = tuple(int(v) for v in input_size)
        self.original_size = tuple(int(v) for v in original_size)
        self.encoded_input: jax.Array | None = jax.device_put(net_input[None])
        self.embeddings: ImageEmbeddings | None = self._embed({"params": self.params}, self.encoded_input)

    def reset_image(self) -> None:
        """Forget the current image."""
        self.embeddings = None
        self.encoded_input = None  # (1, S, S, 3) float32: the normalised, padded input set_image encoded
        self.input_size: tuple[int, int] | None = None
        self.original_size: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        """Whether an image has been set (and not reset)."""
        return self.embeddings is not None

    @property
    def device(self) -> jax.Device:
        """The JAX device holding the cached embedding (the default device before an image is set).

        The official attribute is a ``torch.device``; torch cannot place tensors on a JAX device,
        so ``torch.tensor(x, device=predictor.device)`` in ported code becomes ``torch.tensor(x)``
        (or ``np.array(x)``): every prompt argument takes torch tensors or any array-like.
        """
        if self.embeddings is None:
            return jax.devices()[0]
        return min(self.embeddings.image_embeddings.devices(), key=lambda d: d.id)

    @property
    def features(self) -> TensorLikeArray | None:
        """The image embedding in the official layout: ``(1, C, G, G)`` NCHW (C = 256, G = 64 for the
        real models; float32 unless the predictor computes in another dtype), a host copy of
        ``get_image_embedding().image_embeddings`` (NHWC) transposed; None before an image is set."""
        if self.embeddings is None:
            return None
        return _tensor_like(self.embeddings.image_embeddings).transpose(0, 3, 1, 2)

    @property
    def interm_features(self) -> list[TensorLikeArray] | None:
        """``[early_feature]``: ``(1, G, G, vit_dim)`` NHWC output of the ViT's first global-attention
        block, the official layout (a host copy of ``get_image_embedding().early_features``); None
        before an image is set.

        The official list holds every global-attention block's output (4 for ViT-B/L/H), but the HQ
        decoder reads only ``interm_features[0]``; this encoder keeps only that one, so the list has
        length 1.
        """
        if self.embeddings is None:
            return None
        return [_tensor_like(self.embeddings.early_features)]

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
          point_labels: ``(N,)`` 1 foreground, 0 background, -1 ignore (ints, or floats such as the
            official demo's ``np.ones(N)``). Other values raise ``InputError`` (the official
            truncates fractions and gives 2 / 3 no label embedding).
          box: one xyxy box in pixels of the original image: ``(4,)`` or ``(1, 4)`` (as the official,
            any array of exactly 4 numbers). Several boxes raise ``InputError``: use
            :meth:`predict_batch` (the official silently returns the first box's mask).
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
            point_coords = finite_array(point_coords, "point_coords", (None, 2))[None]
        if point_labels is not None:
            point_labels = np.asarray(point_labels)
            check_labels(point_labels, "point_labels")
            point_labels = point_labels[None]
        if box is not None:
            box = as_numpy(box)
            if box.size != 4:
                raise InputError(
                    f"box must be one x0 y0 x1 y1 box, shape (4,) or (1, 4), got {box.shape}; "
                    "several boxes go to predict_batch"
                )
            box = box.reshape(4).astype(np.float32)
            check_boxes(box, "box")
            box = box[None]
        if mask_input is not None:
            mask_input = finite_array(mask_input, "mask_input", (1, None, None), row=False)[None]
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
        flags = multimask_output, return_logits, hq_token_only, sam_only
        return self._predict_set_image((point_coords, point_labels, boxes, mask_input), self.original_size, flags)

    def predict_torch(
        self,
        point_coords: object | None,
        point_labels: object | None,
        boxes: object | None = None,
        mask_input: object | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        sam_only: bool = False,
    ) -> tuple[TensorLikeArray, TensorLikeArray, TensorLikeArray]:
        """The official ``predict_torch``: B prompts already in the model's input frame.

        Same compiled decode as :meth:`predict_batch`; only the coordinate frame differs. Prompts are
        torch tensors (any device) or any array-like, e.g. the NumPy output of
        ``transform.apply_boxes_torch``.

        Args:
          point_coords: ``(B, N, 2)`` xy in the resized input frame (``transform.apply_coords_torch``).
          point_labels: ``(B, N)`` in {1, 0, -1}.
          boxes: ``(B, 4)`` xyxy in the resized input frame (``(B, 1, 4)`` / ``(B, 2, 2)``, read
            row by row as the official does, are accepted too).
          mask_input: ``(B, 1, 256, 256)`` low-res logits; with B = 1 it is used for every prompt,
            as torch broadcasting does in the official.
          Flags as in :meth:`predict`.

        Returns:
          ``masks (B, K, H, W)`` bool (float32 logits with ``return_logits``), ``iou_predictions
          (B, K)`` float32, ``low_res_logits (B, K, 256, 256)`` float32, as :class:`TensorLikeArray`
          (NumPy, where the official returns torch tensors; ``.cpu()`` / ``.numpy()`` still work).
        """
        prompts = [None if a is None else as_numpy(a) for a in (point_coords, point_labels, boxes, mask_input)]
        point_coords, point_labels, boxes, mask_input = prompts
        if boxes is not None and boxes.ndim > 2:
            boxes = boxes.reshape(boxes.shape[0], -1)
        if mask_input is not None and mask_input.ndim == 4 and mask_input.shape[0] == 1:
            count = next((a.shape[0] for a in (point_coords, boxes) if a is not None and a.ndim > 0), 1)
            mask_input = np.repeat(mask_input, count, axis=0)
        flags = multimask_output, return_logits, hq_token_only, sam_only
        outputs = self._predict_set_image((point_coords, point_labels, boxes, mask_input), None, flags)
        return tuple(_tensor_like(a) for a in outputs)

    def _predict_set_image(
        self, prompts: tuple[np.ndarray | None, ...], prompt_frame: tuple[int, int] | None, flags: tuple[bool, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The one path of :meth:`predict_batch` and :meth:`predict_torch`: check, decode and
        post-process ``prompts = (point_coords, point_labels, boxes, mask_input)`` for the image set.
        Coordinates are pixels of an image of size ``prompt_frame``, or already in the input frame
        when it is None; ``flags = (multimask_output, return_logits, hq_token_only, sam_only)``."""
        self._require_image()
        checked = prepare_prompts(self.config, *prompts, prompt_frame)
        return self._decode_padded(self.embeddings, [checked], [(self.input_size, self.original_size)], *flags)[0]

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
            raise InputError(f"need one prompt dict per image, got {len(images)} images and {len(prompts)}")
        keys = {frozenset(k for k, v in pr.items() if v is not None) for pr in prompts}
        if len(keys) != 1:
            raise InputError(f"every image must use the same prompt kinds, got {sorted(map(sorted, keys))}")
        inputs, sizes, checked = [], [], []
        for i, (image, pr) in enumerate(zip(images, prompts, strict=True)):
            net_input, input_size, original_size = preprocess(image, self.config.img_size)
            inputs.append(net_input)
            sizes.append((input_size, original_size))
            checked.append(
                prepare_prompts(
                    self.config,
                    pr.get("point_coords"),
                    pr.get("point_labels"),
                    pr.get("boxes"),
                    pr.get("mask_input"),
                    original_size,
                    where=f"prompts[{i}]: ",
                )
            )
        n_points = {c[0].shape[1] for c in checked if c[0] is not None}
        if len(n_points) > 1:
            raise InputError(f"point prompts must have the same number of points in every image, got {n_points}")
        embeddings = self._embed({"params": self.params}, jax.device_put(np.stack(inputs)))
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
        size = bucket_size(max(counts))
        stacked = [
            None if checked[0][k] is None else jax.device_put(np.stack([pad_prompts(c[k], size) for c in checked]))
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
        low_res_host, iou_host = jax.device_get((low_res, iou))
        results = []
        # Iterating a device array splits it with static slices (indexing by a Python int uploads the index).
        for b, (low, p, (input_size, original_size)) in enumerate(zip(low_res, counts, sizes, strict=True)):
            # On the device at the padded (bucketed) count and padded size: one compile per prompt
            # bucket and size bucket; only boolean masks (or the logits asked for) cross to the host,
            # where the size padding is cropped.
            rows, columns = jax.device_put(output_taps(input_size, original_size))
            full = full_masks(low, rows, columns, self.config.img_size, return_logits)
            masks = np.ascontiguousarray(jax.device_get(full)[:p, :, : original_size[0], : original_size[1]])
            results.append((masks, iou_host[b, :p], low_res_host[b, :p]))
        return results

    def decode_points(
        self, points: np.ndarray, count: int, multimask_output: bool, hq_token_only: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Decode one positive point per prompt on the image set, padded to ``count`` prompts.

        ``points``: ``(N, 2)`` float32 xy in the model's input frame (:meth:`transform`'s
        ``apply_coords``), ``N <= count``; they are padded to ``count`` (:func:`pad_prompts`) so that
        one compiled program serves every batch of that size. Returns the device arrays
        ``low_res (1, count, K, 4G, 4G)`` logits and ``iou (1, count, K)``, K = 3 with
        ``multimask_output`` else 1; rows past N repeat the last point. The automatic mask
        generator's batch step.
        """
        self._require_image()
        padded = pad_prompts(np.asarray(points, np.float32), count)
        return self._decode(
            {"params": self.params},
            self.embeddings,
            *jax.device_put((padded[None, :, None], np.full((1, count, 1), LABEL_POSITIVE, np.int32))),
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
        )


def prepare_prompts(
    config: ModelConfig,
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    boxes: np.ndarray | None,
    mask_input: np.ndarray | None,
    original_size: tuple[int, int] | None,
    where: str = "",
) -> tuple[np.ndarray | None, ...]:
    """Check batched prompts for a model of ``config`` and map their coordinates from an image of
    ``original_size`` into the resized input frame (None: they are in that frame already, as
    ``predict_torch`` takes them).

    Shapes as :meth:`SamHQPredictor.predict_batch` takes them: ``point_coords (P, N, 2)``,
    ``point_labels (P, N)``, ``boxes (P, 4)``, ``mask_input (P, 1, 4G, 4G)``, each optional, at least
    one given, the same P. Returns ``(points (P, N, 2) float32, labels (P, N) int32, boxes (P, 4)
    float32, masks (P, 4G, 4G) float32)``, None where not given; a one-line
    :class:`~samhq_jax.errors.InputError` (a ``ValueError``) naming the prompt, after ``where``, for
    a bad shape, a NaN / inf, a label not in {1, 0, -1} or a box with x1 < x0 or y1 < y0.
    """
    s, low = config.img_size, config.low_res_mask_size
    counts = {}
    points = labels = masks = None
    if (point_coords is None) != (point_labels is None):
        raise InputError(f"{where}point_coords and point_labels must be given together")
    if point_coords is not None:
        coords = finite_array(point_coords, f"{where}point_coords", (None, None, 2))
        labels = np.asarray(point_labels)
        if labels.shape != coords.shape[:2]:
            raise InputError(
                f"{where}point_labels must have shape {coords.shape[:2]} to match point_coords, got {labels.shape}"
            )
        check_labels(labels, f"{where}point_labels")
        points = coords if original_size is None else apply_coords(coords, original_size, s)
        labels = labels.astype(np.int32)
        counts["point_coords"] = coords.shape[0]
    if boxes is not None:
        raw = finite_array(boxes, f"{where}boxes", (None, 4))
        check_boxes(raw, f"{where}boxes")
        boxes = raw if original_size is None else apply_boxes(raw, original_size, s)
        counts["boxes"] = raw.shape[0]
    if mask_input is not None:
        masks = finite_array(mask_input, f"{where}mask_input", (None, 1, low, low), row=False)[:, 0]
        counts["mask_input"] = masks.shape[0]
    if not counts:
        raise InputError(f"{where}give at least one prompt: point_coords, boxes or mask_input")
    if len(set(counts.values())) > 1:
        raise InputError(f"{where}prompt counts disagree: {counts}")
    return points, labels, boxes, masks
