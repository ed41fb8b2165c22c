"""Stage-by-stage numerical parity between samhq-jax and the PyTorch SAM-HQ references.

Two modes, one report::

    python -m eval.parity --preset vit_b            # seeded random weights, every tensor randomised
    samhq parity --checkpoint sam_hq_vit_l.pth --image dog.jpg [--image cat.png ...]
                 [--prompts prompts.jsonl] [--dtype float32|bfloat16] [--precision default|highest]
                 [--json figures.json]

The checkpoint goes through :func:`samhq_jax.checkpoint.read_weights` on our side; the reference is
chosen by what the checkpoint is: an official ``.pth`` / ``.safetensors`` file is loaded into the
official ``segment_anything_hq`` ``Sam`` (tensors straight from the file); a Hugging Face folder
into transformers' ``SamHQModel.from_pretrained``; one of our directories is exported back
(:func:`convert.core.params_to_state_dict`) to the official model, or to ``SamHQModel`` when its
two-way LayerNorm eps is Hugging Face's. Original SAM checkpoints (no HQ tensors in the file) are
refused: convert one with ``samhq convert`` (its HQ part is then initialised and saved) and compare
that directory.

Each photo is pre-processed once with :func:`samhq_jax.transforms.preprocess` and the same
normalised pixels go to both models. Errors are ``max |ours - ref| / max |ref|`` per stage: the
image encoder's (patch embedding, every block, neck, embeddings, early feature), then for each
prompt set x ``multimask_output`` x ``hq_token_only`` the decoder's (prompt embeddings, two-way
transformer, all masks and IoUs, the selected low-res masks and IoU), each decoder fed the
reference's image embeddings, and the agreement of the binarised low-res masks. For photos, also
end to end: the reference's own pre-processing against ours, and the full-size masks of each
side's whole chain (own embeddings, own decoder, own post-processing). Prompts are
``--prompts`` JSON lines in image pixels (the ``samhq predict --prompts`` format) or, by default,
derived from each photo's size: two centred boxes, a centre point with a background point, point +
box, and point + the reference's low-res mask for the first box fed back.

Exit status: 0 when every figure is within the bar (:data:`PARITY_RTOL`, :data:`MIN_MASK_AGREEMENT`),
1 when not, 2 for usage errors (missing files, unreadable checkpoint / image / prompts line, missing
references).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from samhq_jax.cli import OneLineParser, one_line
from samhq_jax.config import HF_TRANSFORMER_LN_EPS, PRESETS, SamHQConfig
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ
from samhq_jax.transforms import normalize_and_pad, resize_longest_side, to_rgb_uint8

if TYPE_CHECKING:
    import torch

    from samhq_jax.checkpoint import LoadedWeights

Arrays = dict[str, np.ndarray]
Flags = tuple[bool, bool]  # (multimask_output, hq_token_only)
Size = tuple[int, int]  # (H, W)
IMAGES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "images"

# The parity bar: every stage within 1e-4 of the reference's largest magnitude (fp32), and the
# binarised masks agreeing on at least 99.99 % of pixels.
PARITY_RTOL = 1e-4
MIN_MASK_AGREEMENT = 0.9999
FLAGS: tuple[Flags, ...] = tuple((m, h) for m in (False, True) for h in (False, True))
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
INSTALL_HINT = "pip install 'samhq-jax[test]'"
# What each reference needs installed (import names).
REFERENCE_MODULES = {"official": ("torch", "segment_anything_hq"), "hf": ("torch", "transformers")}
REFERENCE_NAMES = {"official": "official PyTorch reference", "hf": "Hugging Face PyTorch reference"}
PROG = "samhq parity"


class UsageError(Exception):
    """A problem with what the user gave (files, prompts, installation): one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Prompts for B images, P prompts each, coordinates in the padded input frame (pixels)."""

    points: np.ndarray | None = None  # (B, P, N, 2) float32 xy
    labels: np.ndarray | None = None  # (B, P, N) int32
    boxes: np.ndarray | None = None  # (B, P, 4) float32 xyxy
    masks: np.ndarray | None = None  # (B, P, 4G, 4G) float32 logits

    def for_image(self, b: int) -> Prompts:
        pick = lambda a: None if a is None else a[b]  # noqa: E731
        return Prompts(pick(self.points), pick(self.labels), pick(self.boxes), pick(self.masks))


def sample_images(config: SamHQConfig, count: int, seed: int = 0) -> np.ndarray:
    """``(count, S, S, 3)`` normalised, zero-padded real photos from ``shared/images`` at input size S.

    SAM's pre-processing (longest-side resize, normalise, pad) with a little seeded noise added
    before normalising, so that every index is a distinct image.
    """
    from PIL import Image

    s = config.img_size
    paths = sorted(IMAGES_DIR.glob("*.*"))
    if not paths:
        raise FileNotFoundError(f"no test photos in {IMAGES_DIR} (the shared/ folder beside the repository)")
    rng = np.random.default_rng(seed)
    out = np.zeros((count, s, s, 3), np.float32)
    for i in range(count):
        resized = resize_longest_side(to_rgb_uint8(Image.open(paths[i % len(paths)])), s).astype(np.float32)
        out[i] = normalize_and_pad(resized + rng.normal(0, 1, resized.shape).astype(np.float32), s)
    return out


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max |ours - ref| / max |ref|``."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"shape mismatch: ours {ours.shape}, reference {ref.shape}")
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def compare(ours: Arrays, ref: Arrays) -> dict[str, float]:
    """Relative error per stage present in both."""
    return {k: relative_error(ours[k], ref[k]) for k in ref if k in ours}


def mask_agreement(ours: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of pixels where ``ours > 0`` equals ``ref > 0``."""
    return float(np.mean((np.asarray(ours) > 0) == (np.asarray(ref) > 0)))


# ---- official PyTorch ---------------------------------------------------------------------------
def capture_encoder_stages(
    encoder: torch.nn.Module,
    blocks: list[torch.nn.Module],
    images: np.ndarray,
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> Arrays:
    """Run a PyTorch ViT image encoder on ``(B, S, S, 3)`` NHWC ``images`` with hooks on its
    ``patch_embed``, each of ``blocks`` and its ``neck``; ``forward(NCHW images)`` returns the
    embeddings ``(B, C, G, G)`` and the early feature ``(B, G, G, D)``.

    Returns per-stage NHWC arrays: ``patch_embed`` / ``blocks_i`` ``(B, G, G, D)``, ``neck`` /
    ``image_embeddings`` ``(B, G, G, C)``, ``early_features`` ``(B, G, G, D)``.
    """
    import torch

    captured: Arrays = {}

    def keep(name: str, nchw: bool = False) -> Callable:
        def hook(_m: torch.nn.Module, _i: tuple, out: torch.Tensor | tuple) -> None:
            t = out[0] if isinstance(out, tuple) else out  # transformers' layers return tuples
            captured[name] = (t.permute(0, 2, 3, 1) if nchw else t).detach().numpy().copy()

        return hook

    handles = [encoder.patch_embed.register_forward_hook(keep("patch_embed"))]
    handles += [blk.register_forward_hook(keep(f"blocks_{i}")) for i, blk in enumerate(blocks)]
    handles.append(encoder.neck.register_forward_hook(keep("neck", nchw=True)))
    try:
        with torch.no_grad():
            emb, early = forward(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    finally:
        for h in handles:
            h.remove()
    captured["image_embeddings"] = emb.permute(0, 2, 3, 1).numpy()
    captured["early_features"] = early.numpy()
    return captured


def official_image_stages(model: torch.nn.Module, images: np.ndarray) -> Arrays:
    """Run the official image encoder on NHWC ``images``; per-stage NHWC arrays
    (see :func:`capture_encoder_stages`)."""
    enc = model.image_encoder

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb, interm = enc(x)
        return emb, interm[0]

    return capture_encoder_stages(enc, enc.blocks, images, forward)


def _tensor(a: np.ndarray | None) -> torch.Tensor | None:
    import torch

    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _official_decode_one(
    model: torch.nn.Module, emb: np.ndarray, early: np.ndarray, p: Prompts, multimask: bool, hq_only: bool
) -> Arrays:
    """Official prompt encoder + HQ decoder for one image ``(1, G, G, C)`` and its P prompts."""
    import torch

    dec = model.mask_decoder
    got: Arrays = {}
    points = None if p.points is None else (_tensor(p.points.astype(np.float32)), _tensor(p.labels.astype(np.int64)))
    masks = None if p.masks is None else _tensor(p.masks.astype(np.float32))[:, None]

    def keep_transformer(_m: torch.nn.Module, _i: tuple, out: tuple) -> None:
        got["transformer_queries"], got["transformer_keys"] = (o.detach().numpy().copy() for o in out)

    original = dec.predict_masks

    def predict_masks(**kw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks_all, iou_all = original(**kw)
        got["masks_all"], got["iou_all"] = masks_all.numpy().copy(), iou_all.numpy().copy()
        return masks_all, iou_all

    handle = dec.transformer.register_forward_hook(keep_transformer)
    dec.predict_masks = predict_masks
    try:
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(points=points, boxes=_tensor(p.boxes), masks=masks)
            low_res, iou = dec(
                image_embeddings=_tensor(emb).permute(0, 3, 1, 2),
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                hq_token_only=hq_only,
                interm_embeddings=[_tensor(early)],
            )
    finally:
        handle.remove()
        del dec.predict_masks
    got.update(
        sparse_embeddings=sparse.detach().numpy(),
        dense_embeddings=dense.detach().permute(0, 2, 3, 1).numpy(),
        low_res_masks=low_res.detach().numpy(),
        iou_predictions=iou.detach().numpy(),
    )
    return got


def official_decode_stages(
    model: torch.nn.Module, image_stages: Arrays, prompts: Prompts, multimask_output: bool, hq_token_only: bool
) -> Arrays:
    """Official prompt encoder + HQ decoder, one image at a time as ``Sam.forward`` does.

    Returns per-stage arrays stacked to ``(B, P, ...)``: ``low_res_masks (B, P, 1, 4G, 4G)``,
    ``iou_predictions (B, P, 1)``, ``masks_all (B, P, 5, 4G, 4G)``, ``iou_all (B, P, 4)``, ...
    """
    emb, early = image_stages["image_embeddings"], image_stages["early_features"]
    per_image = [
        _official_decode_one(
            model, emb[b : b + 1], early[b : b + 1], prompts.for_image(b), multimask_output, hq_token_only
        )
        for b in range(emb.shape[0])
    ]
    return {k: np.stack([d[k] for d in per_image]) for k in per_image[0]}


# ---- ours ---------------------------------------------------------------------------------------
@functools.cache
def _embed_fn(config: SamHQConfig, dtype: Any) -> Callable:
    """Jitted ``embed_image`` with the sown intermediates, compiled once per config and dtype."""
    model = SamHQ(config, dtype=dtype)
    return jax.jit(functools.partial(model.apply, method=SamHQ.embed_image, mutable=["intermediates"]))


@functools.cache
def _decode_fn(config: SamHQConfig, dtype: Any) -> Callable:
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


def jax_image_stages(config: SamHQConfig, params: dict, images: np.ndarray, dtype: Any = jnp.float32) -> Arrays:
    """Our image encoder with its sown intermediates, as numpy (same keys and shapes as
    :func:`official_image_stages`); ``dtype`` is the compute dtype."""
    embedded, state = _embed_fn(config, dtype)({"params": params}, jnp.asarray(images))
    inter = state["intermediates"]["image_encoder"]
    out = {k.removesuffix("_out"): np.asarray(v[0]) for k, v in inter.items()}
    out.update(
        image_embeddings=np.asarray(embedded.image_embeddings), early_features=np.asarray(embedded.early_features)
    )
    return out


def jax_decode_all(
    config: SamHQConfig, params: dict, image_stages: Arrays, prompts: Prompts, dtype: Any = jnp.float32
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
    config: SamHQConfig,
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


def default_prompts(config: SamHQConfig, b: int, seed: int = 0) -> dict[str, Prompts]:
    """Named prompt sets for ``b`` images: points, boxes, points+boxes, mask input; 3 prompts each."""
    rng = np.random.default_rng(seed)
    s, low, p = config.img_size, config.low_res_mask_size, 3
    points = rng.uniform(0, s - 1, (b, p, 3, 2)).astype(np.float32)
    labels = np.tile(np.array([1, 0, 1], np.int32), (b, p, 1))
    labels[:, 1, 2] = -1  # one explicit padding point
    corners = np.sort(rng.uniform(0, s - 1, (b, p, 2, 2)), axis=2).astype(np.float32)
    boxes = np.stack([corners[:, :, 0, 0], corners[:, :, 0, 1], corners[:, :, 1, 0], corners[:, :, 1, 1]], -1)
    masks = (4 * rng.normal(size=(b, p, low, low))).astype(np.float32)
    one_point = points[:, :, :1]
    return {
        "points": Prompts(points=points, labels=labels),
        "boxes": Prompts(boxes=boxes),
        "points+boxes": Prompts(points=one_point, labels=labels[:, :, :1], boxes=boxes),
        "mask+point": Prompts(points=one_point, labels=labels[:, :, :1], masks=masks),
    }


# ---- prompts in image pixels --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Scenario:
    """A prompt set in original-image pixels, a ``samhq predict --prompts`` record.

    ``boxes``: P boxes ``[x0, y0, x1, y1]``; ``points``: N ``[x, y, label]`` added to every box (one
    prompt of N points without boxes). ``mask_from``: feed back, as a mask prompt for every prompt,
    the reference's low-res logits for prompt 0 of that earlier scenario (single mask, SAM+HQ).
    ``image``: the file name this set is restricted to (None: every image).
    """

    name: str
    boxes: tuple = ()
    points: tuple = ()
    mask_from: str | None = None
    image: str | None = None


def photo_scenarios(original_size: Size) -> list[Scenario]:
    """Default prompts for a photo of ``(H, W)``: two centred boxes (half and 3/4 of each side), the
    centre point with a background point near the top-left corner, centre point + half box, and
    the centre point with the first box's mask fed back."""
    h, w = original_size
    half, wide = (w / 4, h / 4, 3 * w / 4, 3 * h / 4), (w / 8, h / 8, 7 * w / 8, 7 * h / 8)
    centre, corner = (w / 2, h / 2, 1), (w / 16, h / 16, 0)
    return [
        Scenario("boxes", boxes=(half, wide)),
        Scenario("points", points=(centre, corner)),
        Scenario("point+box", boxes=(half,), points=(centre,)),
        Scenario("mask+point", points=(centre,), mask_from="boxes"),
    ]


def frame_prompts(
    scenario: Scenario, original_size: Size, config: SamHQConfig, masks: np.ndarray | None = None
) -> Prompts:
    """A scenario's prompts mapped into the model's input frame for one image: ``(1, P, ...)``
    arrays (as :class:`SamHQPredictor` maps them); ``masks``: ``(1, 1, 4G, 4G)`` logits, repeated
    for each of the P prompts."""
    from samhq_jax.cli import _prompt_arrays
    from samhq_jax.transforms import apply_boxes, apply_coords

    kw = _prompt_arrays(list(scenario.boxes), list(scenario.points))
    s = config.img_size
    points = labels = boxes = None
    if "boxes" in kw:
        boxes = apply_boxes(kw["boxes"], original_size, s)[None]
    if "point_coords" in kw:
        points = apply_coords(kw["point_coords"], original_size, s)[None]
        labels = kw["point_labels"].astype(np.int32)[None]
    p = (boxes if boxes is not None else points).shape[1]
    if masks is not None:
        masks = np.repeat(np.asarray(masks, np.float32), p, axis=1)
    return Prompts(points=points, labels=labels, boxes=boxes, masks=masks)


def _check_record(rec: Any) -> Scenario:
    """Validate one JSON-lines record; raises ``ValueError`` saying what is wrong."""
    from samhq_jax.predictor import VALID_LABELS

    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - {"image", "boxes", "points"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}: use 'boxes', 'points' and optionally 'image'")
    if not rec.get("boxes") and not rec.get("points"):
        raise ValueError('give "boxes": [[x0, y0, x1, y1], ...] and/or "points": [[x, y, label], ...]')
    out = {}
    for key, width in (("boxes", 4), ("points", 3)):
        if not rec.get(key):
            continue
        try:
            a = np.asarray(rec[key], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f'"{key}" must be a list of lists of {width} numbers') from err
        if a.ndim != 2 or a.shape[1] != width or not np.isfinite(a).all():
            raise ValueError(f'"{key}" must be a list of lists of {width} finite numbers')
        out[key] = tuple(tuple(float(v) for v in row) for row in a)
    boxes = np.asarray(out.get("boxes", np.zeros((0, 4))))
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError("boxes must be [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0")
    labels = {row[2] for row in out.get("points", ())}
    if not labels <= set(VALID_LABELS):
        raise ValueError(f"point labels must be 1 (foreground), 0 (background) or -1 (ignore); got {sorted(labels)}")
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError('"image" must be a file name')
    return Scenario("", boxes=out.get("boxes", ()), points=out.get("points", ()), image=image)


def read_prompts_file(path: Path, image_names: list[str]) -> dict[str, list[Scenario]]:
    """Parse a JSON-lines prompts file into the scenarios of each image (keyed by the ``--image``
    argument as given); each line is one scenario, named ``line N``.

    Raises :class:`UsageError` naming the file and line for a bad line, an unknown image, or an
    image left without prompts.
    """
    per_image: dict[str, list[Scenario]] = {name: [] for name in image_names}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read prompts file {path}: {err}") from err
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = _check_record(json.loads(line))
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise UsageError(f"{path} line {n}: {err}") from err
        targets = image_names
        if rec.image is not None:
            targets = [a for a in image_names if rec.image in (a, Path(a).name)]
            if not targets:
                raise UsageError(f"{path} line {n}: image {rec.image!r} is not one of the --image files")
        for name in targets:
            per_image[name].append(dataclasses.replace(rec, name=f"line {n}"))
    missing = [name for name, scenarios in per_image.items() if not scenarios]
    if missing:
        raise UsageError(
            f'{path} has no prompts for {", ".join(missing)} (add a line without "image", or one naming it)'
        )
    return per_image


# ---- the report ---------------------------------------------------------------------------------
class Reference(Protocol):
    """A PyTorch reference model, with the stage arrays of :func:`official_image_stages` and
    :func:`official_decode_stages` (a reference may lack some stages; only common ones are compared)."""

    description: str

    def image_stages(self, images: np.ndarray) -> Arrays:
        """``(B, S, S, 3)`` normalised images -> NHWC stages ``(B, G, G, ...)``."""
        ...

    def decode_stages(self, image_stages: Arrays, prompts: Prompts, multimask: bool, hq_only: bool) -> Arrays:
        """Prompts ``(B, P, ...)`` on the given image stages -> decoder stages ``(B, P, ...)``."""
        ...

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """The reference's own pre-processing: ``(H, W, 3)`` uint8 -> ``(S, S, 3)`` float32."""
        ...

    def postprocess(self, low_res: np.ndarray, input_size: Size, original_size: Size) -> np.ndarray:
        """``(P, K, 4G, 4G)`` low-res logits -> ``(P, K, H, W)`` logits at the original size."""
        ...


@dataclasses.dataclass
class OfficialReference:
    """The official ``segment_anything_hq`` ``Sam`` (fp32, CPU)."""

    model: Any
    description: str = "segment_anything_hq (official PyTorch, float32)"

    def image_stages(self, images: np.ndarray) -> Arrays:
        return official_image_stages(self.model, images)

    def decode_stages(self, image_stages: Arrays, prompts: Prompts, multimask: bool, hq_only: bool) -> Arrays:
        return official_decode_stages(self.model, image_stages, prompts, multimask, hq_only)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """``SamPredictor.set_image``'s pre-processing: ``(H, W, 3)`` uint8 -> ``(S, S, 3)`` float32."""
        import torch
        from segment_anything_hq.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(self.model.image_encoder.img_size).apply_image(rgb)
        with torch.no_grad():
            x = self.model.preprocess(torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None])
        return x[0].permute(1, 2, 0).numpy()

    def postprocess(self, low_res: np.ndarray, input_size: Size, original_size: Size) -> np.ndarray:
        """``Sam.postprocess_masks``: ``(P, K, 4G, 4G)`` -> ``(P, K, H, W)`` logits."""
        import torch

        with torch.no_grad():
            return self.model.postprocess_masks(torch.from_numpy(low_res), input_size, original_size).numpy()


@dataclasses.dataclass
class Ours:
    """samhq-jax with a parameter tree (moved to the device once) and a compute dtype."""

    config: SamHQConfig
    params: dict
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        self.params = jax.device_put(self.params)

    def image_stages(self, images: np.ndarray) -> Arrays:
        return jax_image_stages(self.config, self.params, images, self.dtype)

    def decode_all(self, image_stages: Arrays, prompts: Prompts) -> dict[Flags, Arrays]:
        return jax_decode_all(self.config, self.params, image_stages, prompts, self.dtype)


@dataclasses.dataclass
class ImageReport:
    """The figures for one photo (or, in preset mode, one batch of sample images).

    ``image_encoder``: stage -> relative error. ``decoder``: one row per prompt set x flags with
    ``prompts``, ``multimask_output``, ``hq_token_only``, ``errors`` (stage -> relative error),
    ``mask_agreement`` (low-res, binarised) and, for photos, ``full_size_error`` /
    ``full_size_agreement`` (each side's whole chain, post-processed to the original size).
    ``preprocess_error``: the reference's own pre-processing against ours (photos only).
    """

    image: str
    original_size: Size | None = None
    image_encoder: dict[str, float] = dataclasses.field(default_factory=dict)
    decoder: list[dict] = dataclasses.field(default_factory=list)
    preprocess_error: float | None = None

    def errors(self) -> Iterator[tuple[str, float]]:
        """Every relative error with a label saying where it is."""
        for k, v in self.image_encoder.items():
            yield f"{self.image}: image encoder {k}", v
        if self.preprocess_error is not None:
            yield f"{self.image}: pre-processing", self.preprocess_error
        for row in self.decoder:
            where = f"{self.image}: {_row_name(row)}"
            for k, v in row["errors"].items():
                yield f"{where} {k}", v
            if "full_size_error" in row:
                yield f"{where} full-size logits", row["full_size_error"]

    def agreements(self) -> Iterator[tuple[str, float]]:
        for row in self.decoder:
            yield f"{self.image}: {_row_name(row)} low-res masks", row["mask_agreement"]
            if "full_size_agreement" in row:
                yield f"{self.image}: {_row_name(row)} full-size masks", row["full_size_agreement"]


def _row_name(row: dict) -> str:
    return f"{row['prompts']} multimask={row['multimask_output']} hq_token_only={row['hq_token_only']}"


@dataclasses.dataclass
class ParityReport:
    """Everything one run measured, and the verdict against the bar."""

    header: dict
    images: list[ImageReport] = dataclasses.field(default_factory=list)

    def worst_error(self) -> tuple[str, float]:
        """The largest relative error (NaN counts as the worst) and where it is."""
        errs = [e for im in self.images for e in im.errors()]
        return max(errs, key=lambda e: math.inf if math.isnan(e[1]) else e[1], default=("nothing compared", 0.0))

    def lowest_agreement(self) -> tuple[str, float]:
        agrees = [a for im in self.images for a in im.agreements()]
        return min(agrees, key=lambda a: a[1], default=("no masks compared", 1.0))

    @property
    def passed(self) -> bool:
        worst, lowest = self.worst_error()[1], self.lowest_agreement()[1]
        return bool(worst <= PARITY_RTOL and lowest >= MIN_MASK_AGREEMENT)  # False for NaN

    def verdict(self) -> str:
        (where, worst), (awhere, lowest) = self.worst_error(), self.lowest_agreement()
        line = (
            f"worst relative error {worst:.2e} ({where}; bar {PARITY_RTOL:.0e}), lowest mask agreement "
            f"{100 * lowest:.4f}% ({awhere}; bar {100 * MIN_MASK_AGREEMENT:.2f}%): "
        )
        if self.passed:
            return line + "PASS"
        if self.header.get("dtype") != "float32":
            return line + (
                f"FAIL, as expected: ours computes in {self.header['dtype']}, the reference in float32, "
                f"and the {PARITY_RTOL:.0e} bar is a float32 bar"
            )
        return line + "FAIL"

    def to_json(self) -> dict:
        where, worst = self.worst_error()
        awhere, lowest = self.lowest_agreement()
        return {
            **self.header,
            "bar": {"relative_error": PARITY_RTOL, "mask_agreement": MIN_MASK_AGREEMENT},
            "images": [dataclasses.asdict(im) for im in self.images],
            "worst_error": worst,
            "worst_error_at": where,
            "lowest_mask_agreement": lowest,
            "lowest_mask_agreement_at": awhere,
            "passed": self.passed,
        }


def _decode_row(name: str, flags: Flags, ours: Arrays, ref: Arrays) -> dict:
    errs = compare(ours, ref)
    return {
        "prompts": name,
        "multimask_output": flags[0],
        "hq_token_only": flags[1],
        "errors": errs,
        "mask_agreement": mask_agreement(ours["low_res_masks"], ref["low_res_masks"]),
    }


def compare_images(
    reference: Reference,
    ours: Ours,
    images: np.ndarray,
    scenarios: dict[str, Prompts] | list[Scenario],
    name: str,
    photo: tuple[np.ndarray, Size] | None = None,
    tick: Callable[[], None] = lambda: None,
) -> ImageReport:
    """Stage figures for ``(B, S, S, 3)`` normalised ``images`` and prompt sets.

    ``scenarios``: prompt sets already in the input frame (``(B, P, ...)``), or, for one photo,
    :class:`Scenario` records in its pixels; ``photo`` = ``(rgb uint8 (H, W, 3), input_size)`` adds
    the end-to-end figures. ``tick`` is called after the encoder and after each prompt set.
    """
    report = ImageReport(name)
    ref_img, our_img = reference.image_stages(images), ours.image_stages(images)
    report.image_encoder = compare(our_img, ref_img)
    if photo is not None:
        rgb, input_size = photo
        report.original_size = tuple(rgb.shape[:2])
        report.preprocess_error = relative_error(images[0], reference.preprocess(rgb))
    tick()
    ref_low: dict[str, np.ndarray] = {}  # scenario -> reference low-res logits of prompt 0, flags (False, False)
    items = scenarios.items() if isinstance(scenarios, dict) else ((s.name, s) for s in scenarios)
    for scenario_name, scenario in items:
        prompts = scenario
        if isinstance(scenario, Scenario):
            masks = None if scenario.mask_from is None else ref_low[scenario.mask_from]
            prompts = frame_prompts(scenario, report.original_size, ours.config, masks)
        ours_dec = ours.decode_all(ref_img, prompts)
        ours_e2e = ours.decode_all(our_img, prompts) if photo is not None else None
        for flags in FLAGS:
            ref = reference.decode_stages(ref_img, prompts, *flags)
            row = _decode_row(scenario_name, flags, ours_dec[flags], ref)
            if flags == (False, False):
                ref_low[scenario_name] = ref["low_res_masks"][:, :1, 0]
            if ours_e2e is not None:
                full_ours = _postprocess_ours(ours.config, ours_e2e[flags]["low_res_masks"][0], input_size, rgb)
                full_ref = reference.postprocess(ref["low_res_masks"][0], input_size, report.original_size)
                row["full_size_error"] = relative_error(full_ours, full_ref)
                row["full_size_agreement"] = mask_agreement(full_ours, full_ref)
            report.decoder.append(row)
        tick()
    return report


def _postprocess_ours(config: SamHQConfig, low_res: np.ndarray, input_size: Size, rgb: np.ndarray) -> np.ndarray:
    """Our post-processing (as :class:`SamHQPredictor`'s): ``(P, K, 4G, 4G)`` -> ``(P, K, H, W)`` logits."""
    from samhq_jax.transforms import postprocess_masks

    return np.asarray(postprocess_masks(jnp.asarray(low_res), tuple(input_size), tuple(rgb.shape[:2]), config.img_size))


def format_image_report(report: ImageReport) -> str:
    """The per-stage table of one image: encoder stages, then one row per prompt set x flags."""
    size = f" ({report.original_size[1]}x{report.original_size[0]})" if report.original_size else ""
    worst = max(report.image_encoder.values(), default=float("nan"))
    lines = [f"{report.image}{size}: image encoder, worst stage {worst:.2e}"]
    lines += [f"  {k:24s} {v:.2e}" for k, v in report.image_encoder.items()]
    if report.preprocess_error is not None:
        lines.append(f"  {'pre-processing':24s} {report.preprocess_error:.2e}  (the reference's own against ours)")
    e2e = any("full_size_error" in row for row in report.decoder)
    head = (
        f"  {'prompts':13s} {'multimask':9s} {'hq_only':7s} {'worst':8s} {'(stage)':19s} "
        f"{'low-res':8s} {'iou':8s} {'agreement':10s}"
    )
    lines.append(head + ("  full-size: logits  agreement" if e2e else ""))
    for row in report.decoder:
        stage, worst = max(row["errors"].items(), key=lambda kv: kv[1])
        line = (
            f"  {row['prompts']:13s} {row['multimask_output']!s:9s} {row['hq_token_only']!s:7s} {worst:.2e} "
            f"{stage:19s} {row['errors']['low_res_masks']:.2e} {row['errors']['iou_predictions']:.2e} "
            f"{100 * row['mask_agreement']:9.4f}%"
        )
        if "full_size_error" in row:
            line += f"             {row['full_size_error']:.2e} {100 * row['full_size_agreement']:9.4f}%"
        lines.append(line)
    return "\n".join(lines)


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=PROG, unit="step", disable=True if total < 6 else None, leave=False)


def _emit(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text)


# ---- checkpoint mode ----------------------------------------------------------------------------
def reference_kind(path: Path) -> str:
    """``"official"`` or ``"hf"``: the reference a checkpoint is compared with (see the module doc)."""
    from convert.sources import is_hf_folder
    from samhq_jax.checkpoint import CONFIG_FILE, is_checkpoint_dir

    if not path.is_dir():
        return "official"
    if is_hf_folder(path):
        return "hf"
    if is_checkpoint_dir(path):
        config = SamHQConfig.from_dict(json.loads((path / CONFIG_FILE).read_text())["config"])
        return "hf" if config.mask_decoder.transformer_layer_norm_eps == HF_TRANSFORMER_LN_EPS else "official"
    raise UsageError(f"{path} is neither one of our checkpoint folders nor a Hugging Face SAM-HQ folder")


def require_reference(kind: str) -> None:
    """Raise :class:`UsageError` (one line, with the pip command) when a reference is not installed."""
    missing = []
    for module in REFERENCE_MODULES[kind]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        needs = " and ".join(REFERENCE_MODULES[kind])
        raise UsageError(
            f"the {REFERENCE_NAMES[kind]} needs {needs}; missing here: {', '.join(missing)}: {INSTALL_HINT}"
        )


def build_reference(path: Path, kind: str, weights: LoadedWeights) -> Reference:
    """The reference model for a checkpoint, holding the same weights (see the module doc)."""
    from convert.core import OFFICIAL, params_to_state_dict

    if kind == "hf":
        from eval.hf_stages import HFReference, load_hf

        if weights.source_format == "hf":
            return HFReference(load_hf(path))
        import tempfile

        from convert.export import export_hf

        with tempfile.TemporaryDirectory() as tmp:
            return HFReference(load_hf(export_hf(weights.config, weights.params, Path(tmp) / "hf")))
    import torch

    from convert.sources import read_pth, read_safetensors
    from eval.reference import build_official

    if weights.source_format == "official":  # the file's own tensors, as the official package loads them
        state = read_safetensors(path) if path.suffix == ".safetensors" else read_pth(path)
    else:
        state = params_to_state_dict(weights.params, OFFICIAL)
    model = build_official(weights.config, seed=0)  # the structure; every tensor is overwritten below
    wanted = model.state_dict().keys()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise UsageError(f"{path} lacks {len(missing)} tensor(s) of the official model, e.g. {missing[0]}")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(state[k])) for k in wanted}, strict=True)
    return OfficialReference(model.eval())


def _read_photo(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return to_rgb_uint8(im)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read image {path}: {one_line(err)}") from err


def run_checkpoint(args: Any) -> ParityReport:
    """Checkpoint mode: validate the inputs, load both models, compare on every photo."""
    from samhq_jax.checkpoint import read_weights
    from samhq_jax.transforms import preprocess

    path = Path(args.checkpoint)
    if not path.exists():
        raise UsageError(f"no checkpoint at {path}")
    for image in args.image:
        if not Path(image).is_file():
            raise UsageError(f"no image at {image}")
    if args.prompts is not None and not Path(args.prompts).is_file():
        raise UsageError(f"no prompts file at {args.prompts}")
    per_image = read_prompts_file(Path(args.prompts), args.image) if args.prompts else None
    try:
        kind = reference_kind(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"cannot read checkpoint {path}: {one_line(err)}") from err
    require_reference(kind)
    photos = {image: _read_photo(Path(image)) for image in args.image}
    try:
        weights = read_weights(path)
    except Exception as err:  # any unreadable or ill-fitting file: one line, never a traceback
        raise UsageError(f"cannot read checkpoint {path}: {one_line(err)}") from err
    if not weights.hq_trained and weights.source_format != "samhq_jax":
        raise UsageError(
            f"{path} is an original SAM checkpoint (no HQ tensors): samhq parity compares SAM-HQ models; "
            f"convert it first (samhq convert {path} DIR, which initialises and saves the HQ part) and compare DIR"
        )
    try:
        reference = build_reference(path, kind, weights)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"cannot load {path} into the {REFERENCE_NAMES[kind]}: {one_line(err)}") from err
    config = weights.config
    ours = Ours(config, weights.params, DTYPES[args.dtype])
    report = ParityReport(
        {
            "mode": "checkpoint",
            "checkpoint": str(path),
            "source_format": weights.source_format,
            "config": config.name,
            "hq_trained": weights.hq_trained,
            "reference": reference.description,
            "dtype": args.dtype,
            "precision": args.precision,
        }
    )
    _emit(_header_line(report.header))
    plans = {image: per_image[image] if per_image else photo_scenarios(rgb.shape[:2]) for image, rgb in photos.items()}
    steps = sum(1 + len(s) for s in plans.values())
    with _progress(steps) as bar:
        for image, rgb in photos.items():
            pixels, input_size, _ = preprocess(rgb, config.img_size)
            im = compare_images(
                reference, ours, pixels[None], plans[image], Path(image).name, (rgb, input_size), tick=bar.update
            )
            report.images.append(im)
            _emit(format_image_report(im))
    return report


def run_preset(args: Any) -> ParityReport:
    """Preset mode: seeded random weights (every tensor), noisy sample photos, random prompts."""
    require_reference("official")
    from convert.core import state_dict_to_params
    from eval.reference import build_official

    config = SamHQConfig.preset(args.preset)
    torch_model = build_official(config, seed=0)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    config, params = state_dict_to_params(state)
    header = {
        "mode": "preset",
        "preset": args.preset,
        "config": config.name,
        "reference": OfficialReference(torch_model).description,
        "dtype": args.dtype,
        "precision": args.precision,
    }
    report = ParityReport(header)
    _emit(_header_line(header))
    prompts = default_prompts(config, args.images)
    with _progress(1 + len(prompts)) as bar:
        im = compare_images(
            OfficialReference(torch_model),
            Ours(config, params, DTYPES[args.dtype]),
            sample_images(config, args.images),
            prompts,
            f"{args.preset} ({args.images} sample image(s))",
            tick=bar.update,
        )
    report.images.append(im)
    _emit(format_image_report(im))
    return report


def _header_line(h: dict) -> str:
    what = (
        f"{h['checkpoint']} ({h['source_format']}, {h['config']})"
        if h["mode"] == "checkpoint"
        else (f"preset {h['preset']} (seeded random weights)")
    )
    untrained = "; HQ parameters untrained (same on both sides)" if h.get("hq_trained") is False else ""
    return (
        f"{PROG}: {what} vs {h['reference']}; ours {h['dtype']}, matmul precision {h['precision']}{untrained}; "
        f"bar: relative error <= {PARITY_RTOL:.0e}, mask agreement >= {100 * MIN_MASK_AGREEMENT:.2f}%"
    )


EPILOG = f"""\
examples:
  samhq parity --checkpoint sam_hq_vit_l.pth --image dog.jpg --image cat.png --json parity.json
  samhq parity --checkpoint hf-folder/ --image dog.jpg --prompts prompts.jsonl --dtype bfloat16
  samhq parity --preset vit_b          (seeded random weights, sample photos; also python -m eval.parity)

prompts file: one JSON object per line, in image pixels, as samhq predict --prompts:
  {{"image": "dog.jpg", "boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, label], ...]}}
  ("image" optional: without it the line applies to every --image). Without --prompts: two centred
  boxes, the centre point with a background point, point + box, point + the first box's mask.

reference: official .pth / .safetensors -> segment_anything_hq; Hugging Face folder -> transformers
SamHQModel; our checkpoint folder -> exported to either (by its two-way LayerNorm eps). Original SAM
checkpoints are refused (convert them first).

exit status: 0 every figure within the bar (relative error <= {PARITY_RTOL:.0e}, mask agreement
>= {100 * MIN_MASK_AGREEMENT:.2f}%); 1 the bar does not hold; 2 bad arguments or input (a missing or
unreadable file, a bad prompts line, references not installed). Errors are one line on stderr."""


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Stage-by-stage parity of samhq-jax with the PyTorch SAM-HQ (official or Hugging Face).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="a SAM-HQ checkpoint: official .pth / .safetensors, HF folder, ours")
    parser.add_argument("--image", action="append", help="a photo (repeat for more); with --checkpoint")
    parser.add_argument("--prompts", help="JSON lines in image pixels, as samhq predict --prompts; with --checkpoint")
    parser.add_argument("--preset", help="without --checkpoint: seeded random weights of a preset (default tiny_b)")
    parser.add_argument("--images", type=int, default=1, help="preset mode: how many sample images")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="our compute dtype")
    parser.add_argument("--precision", choices=("default", "highest"), default="highest", help="JAX matmul precision")
    parser.add_argument("--json", help="write the figures to this file")
    return parser


def _write_json(path: Path, figures: dict | None) -> None:
    """Write the figures (``None``: only check that ``path`` can be written, before the run)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if figures is None:
            path.touch()
        else:
            path.write_text(json.dumps(figures, indent=2) + "\n")
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err}") from err


def _parse(parser: Any, argv: list[str]) -> Any:
    """Parse and check the combination of options (``parser.error`` exits 2 with one line)."""
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        if args.preset is not None:
            parser.error("give --checkpoint or --preset, not both")
        if not args.image:
            parser.error("--checkpoint needs at least one --image")
    else:
        if args.image or args.prompts:
            parser.error("--image and --prompts need --checkpoint (without it: --preset)")
        args.preset = args.preset or "tiny_b"
        if args.images < 1:
            parser.error("--images must be at least 1")
        if args.preset not in PRESETS:
            parser.error(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """``samhq parity``: 0 when the bar holds, 1 when it does not, 2 for usage errors."""
    parser = build_parser()
    try:
        args = _parse(parser, sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # argparse: --help (0) or a one-line usage error (2)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        if args.json is not None:
            _write_json(Path(args.json), None)
        with jax.default_matmul_precision(args.precision):
            report = run_checkpoint(args) if args.checkpoint is not None else run_preset(args)
        if args.json is not None:
            _write_json(Path(args.json), report.to_json())
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(report.verdict())
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
