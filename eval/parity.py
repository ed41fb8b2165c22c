"""Stage-by-stage numerical parity between samhq-jax and the official PyTorch SAM-HQ.

Run as a script for a report on one preset (seeded random weights, every tensor randomised)::

    python -m eval.parity --preset vit_b

Errors are ``max |ours - ref| / max |ref|`` per stage, fp32 on CPU at ``"highest"`` matmul precision.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from samhq_jax.config import SamHQConfig
from samhq_jax.sam_hq import SamHQ
from samhq_jax.transforms import normalize_and_pad, resize_longest_side, to_rgb_uint8

Arrays = dict[str, np.ndarray]
IMAGES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "images"


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


# ---- official PyTorch ---------------------------------------------------------------------------
def official_image_stages(model: torch.nn.Module, images: np.ndarray) -> Arrays:
    """Run the official image encoder on NHWC ``images``; returns per-stage NHWC arrays."""
    enc = model.image_encoder
    captured: Arrays = {}

    def keep(name: str, nchw: bool = False) -> Callable:
        def hook(_m: torch.nn.Module, _i: tuple, out: torch.Tensor) -> None:
            t = out.permute(0, 2, 3, 1) if nchw else out
            captured[name] = t.detach().numpy().copy()

        return hook

    handles = [enc.patch_embed.register_forward_hook(keep("patch_embed"))]
    handles += [blk.register_forward_hook(keep(f"blocks_{i}")) for i, blk in enumerate(enc.blocks)]
    handles.append(enc.neck.register_forward_hook(keep("neck", nchw=True)))
    try:
        with torch.no_grad():
            emb, interm = enc(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    finally:
        for h in handles:
            h.remove()
    captured["image_embeddings"] = emb.permute(0, 2, 3, 1).numpy()
    captured["early_features"] = interm[0].numpy()
    return captured


def _tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _official_decode_one(
    model: torch.nn.Module, emb: np.ndarray, early: np.ndarray, p: Prompts, multimask: bool, hq_only: bool
) -> Arrays:
    """Official prompt encoder + HQ decoder for one image ``(1, G, G, C)`` and its P prompts."""
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

    Returns per-stage arrays stacked to ``(B, P, ...)``.
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
def jax_image_stages(config: SamHQConfig, params: dict, images: np.ndarray) -> Arrays:
    """Our image encoder with its sown intermediates, as numpy."""
    model = SamHQ(config)

    @jax.jit
    def run(params: dict, images: jax.Array) -> tuple:
        return model.apply({"params": params}, images, method=SamHQ.embed_image, mutable=["intermediates"])

    (emb, early), state = run(params, jnp.asarray(images))
    inter = state["intermediates"]["image_encoder"]
    out = {k.removesuffix("_out"): np.asarray(v[0]) for k, v in inter.items()}
    out.update(image_embeddings=np.asarray(emb), early_features=np.asarray(early))
    return out


def jax_decode_stages(
    config: SamHQConfig,
    params: dict,
    image_stages: Arrays,
    prompts: Prompts,
    multimask_output: bool,
    hq_token_only: bool,
) -> Arrays:
    """Our prompt encoder + decoder on all images at once; stages reshaped to ``(B, P, ...)``."""
    from samhq_jax.sam_hq import ImageEmbeddings

    model = SamHQ(config)
    emb = ImageEmbeddings(jnp.asarray(image_stages["image_embeddings"]), jnp.asarray(image_stages["early_features"]))
    arr = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731

    @jax.jit
    def run(params: dict, emb: ImageEmbeddings, points, labels, boxes, masks) -> tuple:  # noqa: ANN001
        return model.apply(
            {"params": params},
            emb,
            points,
            labels,
            boxes,
            masks,
            multimask_output,
            hq_token_only,
            method=SamHQ.decode,
            mutable=["intermediates"],
        )

    (low_res, iou), state = run(
        params, emb, arr(prompts.points), arr(prompts.labels), arr(prompts.boxes), arr(prompts.masks)
    )
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


def mask_agreement(ours: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of pixels where ``ours > 0`` equals ``ref > 0``."""
    return float(np.mean((np.asarray(ours) > 0) == (np.asarray(ref) > 0)))


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


def main(argv: list[str] | None = None) -> int:
    from convert.core import (
        params_to_state_dict,  # noqa: F401 - imported for the round trip below
        state_dict_to_params,
    )
    from eval.reference import build_official

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny_b", help="vit_b, vit_l, vit_h or tiny_b / tiny_l / tiny_h")
    parser.add_argument("--images", type=int, default=1)
    args = parser.parse_args(argv)
    config = SamHQConfig.preset(args.preset)
    torch_model = build_official(config, seed=0)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    config, params = state_dict_to_params(state)
    images = sample_images(config, args.images)
    with jax.default_matmul_precision("highest"):
        ref_img, our_img = official_image_stages(torch_model, images), jax_image_stages(config, params, images)
        print(f"{args.preset}: image encoder, worst stage {max(compare(our_img, ref_img).values()):.2e}")
        for k, v in compare(our_img, ref_img).items():
            print(f"  {k:24s} {v:.2e}")
        for name, prompts in default_prompts(config, args.images).items():
            for multimask in (False, True):
                for hq_only in (False, True):
                    ref = official_decode_stages(torch_model, ref_img, prompts, multimask, hq_only)
                    ours = jax_decode_stages(config, params, ref_img, prompts, multimask, hq_only)
                    errs = compare(ours, ref)
                    agree = mask_agreement(ours["low_res_masks"], ref["low_res_masks"])
                    print(
                        f"  {name:13s} multimask={multimask!s:5s} hq_only={hq_only!s:5s} "
                        f"worst {max(errs.values()):.2e}  low-res {errs['low_res_masks']:.2e}  "
                        f"iou {errs['iou_predictions']:.2e}  mask agreement {100 * agree:.4f}%"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
