"""The official side of ``samhq parity``: ``segment_anything_hq``'s stages, captured with hooks."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.parity.stages import Arrays, Prompts, Size, capture_encoder_stages, tiny_vit_stages, to_tensor, vit_stages

if TYPE_CHECKING:
    import torch


def official_image_stages(model: torch.nn.Module, images: np.ndarray) -> Arrays:
    """Run the official image encoder (ViT or TinyViT) on NHWC ``images``; per-stage NHWC arrays
    (see :func:`capture_encoder_stages`)."""
    enc = model.image_encoder
    stages = tiny_vit_stages(enc) if hasattr(enc, "layers") else vit_stages(enc, enc.blocks)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb, interm = enc(x)
        return emb, interm[0]

    return capture_encoder_stages(stages, images, forward)


def _decode_one(
    model: torch.nn.Module, emb: np.ndarray, early: np.ndarray, p: Prompts, multimask: bool, hq_only: bool
) -> Arrays:
    """Official prompt encoder + HQ decoder for one image ``(1, G, G, C)`` and its P prompts."""
    import torch

    dec = model.mask_decoder
    got: Arrays = {}
    points = (
        None if p.points is None else (to_tensor(p.points.astype(np.float32)), to_tensor(p.labels.astype(np.int64)))
    )
    masks = None if p.masks is None else to_tensor(p.masks.astype(np.float32))[:, None]

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
            sparse, dense = model.prompt_encoder(points=points, boxes=to_tensor(p.boxes), masks=masks)
            low_res, iou = dec(
                image_embeddings=to_tensor(emb).permute(0, 3, 1, 2),
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                hq_token_only=hq_only,
                interm_embeddings=[to_tensor(early)],
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
        _decode_one(model, emb[b : b + 1], early[b : b + 1], prompts.for_image(b), multimask_output, hq_token_only)
        for b in range(emb.shape[0])
    ]
    return {k: np.stack([d[k] for d in per_image]) for k in per_image[0]}


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
