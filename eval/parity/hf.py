"""The Hugging Face side of ``samhq parity``: transformers 4.53 ``SamHQModel``'s stages, shaped as the
official ones (:mod:`eval.parity.official`) so the same report compares either reference.

transformers computes the selected masks inline, so ``masks_all`` (every mask before selection) is
not exposed and not compared; every other stage is. Its multimask output is the three SAM masks
sorted by IoU (plus the HQ mask): the first is the official choice, and is the one compared. It
takes one mask prompt per image (the dense embedding is shared by the image's prompts), so mask
prompts are decoded one prompt at a time.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.parity.stages import Arrays, Prompts, Size, capture_encoder_stages, to_tensor, vit_stages

HF_VERSION = "4.53"  # the release whose masks match the official package (4.54+ regressed)


def load_hf(folder: str | Path) -> torch.nn.Module:
    """``SamHQModel.from_pretrained(folder)`` in float32, eval mode; raises ``ValueError`` when any
    tensor of the model is not in the folder (transformers would silently initialise it)."""
    import transformers
    from transformers import SamHQModel

    if not transformers.__version__.startswith(HF_VERSION + "."):
        warnings.warn(
            f"transformers {transformers.__version__}: mask parity holds with {HF_VERSION}.x only", stacklevel=2
        )
    model, info = SamHQModel.from_pretrained(str(folder), torch_dtype=torch.float32, output_loading_info=True)
    tied = set(SamHQModel._keys_to_ignore_on_load_missing or ())
    problems = [k for k in info["missing_keys"] if k not in tied] + list(info["mismatched_keys"])
    if problems:
        raise ValueError(f"{folder}: transformers could not load {len(problems)} tensor(s), e.g. {problems[0]}")
    return model.eval()


def hf_image_stages(model: torch.nn.Module, images: np.ndarray) -> Arrays:
    """transformers' vision encoder on ``(B, S, S, 3)`` NHWC images; the keys and NHWC shapes of
    :func:`eval.parity.official.official_image_stages`."""
    enc = model.vision_encoder

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = enc(x, return_dict=True)
        return out.last_hidden_state, out.intermediate_embeddings[0]

    return capture_encoder_stages(vit_stages(enc, enc.layers), images, forward)


def _hf_decode_one(
    model: torch.nn.Module, emb: np.ndarray, early: np.ndarray, p: Prompts, multimask: bool, hq_only: bool
) -> Arrays:
    """transformers' prompt encoder + HQ decoder for one image ``(1, G, G, C)`` and its P prompts
    (``p`` without the image axis); arrays with a leading P axis."""
    dec = model.mask_decoder
    got: dict[str, torch.Tensor] = {}

    def keep_transformer(_m: torch.nn.Module, _i: tuple, out: tuple) -> None:
        got["transformer_queries"], got["transformer_keys"] = out[0], out[1]

    def keep_iou(_m: torch.nn.Module, _i: tuple, out: torch.Tensor) -> None:
        got["iou_all"] = out

    batch = lambda a: None if a is None else to_tensor(a)[None]  # noqa: E731
    handles = [
        dec.transformer.register_forward_hook(keep_transformer),
        dec.iou_prediction_head.register_forward_hook(keep_iou),
    ]
    try:
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(
                input_points=batch(None if p.points is None else p.points.astype(np.float32)),
                input_labels=batch(None if p.labels is None else p.labels.astype(np.int64)),
                input_boxes=batch(p.boxes),
                input_masks=batch(p.masks),  # (1, 1, 4G, 4G): one mask for the image
            )
            low_res, iou, _ = dec(
                image_embeddings=to_tensor(emb).permute(0, 3, 1, 2),
                image_positional_embeddings=model.get_image_wide_positional_embeddings(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                hq_token_only=hq_only,
                intermediate_embeddings=[to_tensor(early)],
            )
    finally:
        for h in handles:
            h.remove()
    n = sparse.shape[1]
    dense = dense.detach().permute(0, 2, 3, 1).expand(n, -1, -1, -1)  # (1, G, G, C) shared by the image's prompts
    channels = sparse.shape[-1]
    return {
        "sparse_embeddings": sparse[0].numpy(),
        "dense_embeddings": dense.numpy().copy(),
        "transformer_queries": got["transformer_queries"].reshape(n, -1, channels).numpy(),
        "transformer_keys": got["transformer_keys"].reshape(n, -1, channels).numpy(),
        "iou_all": got["iou_all"][0].numpy(),
        "low_res_masks": low_res[0, :, :1].numpy(),
        "iou_predictions": iou[0, :, :1].numpy(),
    }


def hf_decode_stages(
    model: torch.nn.Module, image_stages: Arrays, prompts: Prompts, multimask_output: bool, hq_token_only: bool
) -> Arrays:
    """transformers' prompt encoder + HQ decoder, per image (and per prompt with mask prompts);
    stages stacked to ``(B, P, ...)`` as :func:`eval.parity.official.official_decode_stages`."""
    emb, early = image_stages["image_embeddings"], image_stages["early_features"]
    per_image = []
    for b in range(emb.shape[0]):
        p = prompts.for_image(b)
        count = next(a.shape[0] for a in (p.points, p.boxes, p.masks) if a is not None)
        groups = [slice(i, i + 1) for i in range(count)] if p.masks is not None else [slice(0, count)]
        parts = [
            _hf_decode_one(
                model,
                emb[b : b + 1],
                early[b : b + 1],
                Prompts(*(None if a is None else a[g] for a in (p.points, p.labels, p.boxes, p.masks))),
                multimask_output,
                hq_token_only,
            )
            for g in groups
        ]
        per_image.append({k: np.concatenate([d[k] for d in parts]) for k in parts[0]})
    return {k: np.stack([d[k] for d in per_image]) for k in per_image[0]}


@dataclasses.dataclass
class HFReference:
    """transformers' ``SamHQModel`` (fp32, CPU), with ``SamImageProcessor``'s pre/post-processing."""

    model: Any
    description: str = "transformers SamHQModel (Hugging Face PyTorch, float32)"

    def __post_init__(self) -> None:
        import transformers

        self.description = self.description.replace("transformers", f"transformers {transformers.__version__}")

    @property
    def _processor(self) -> Any:
        from transformers import SamImageProcessor

        s = self.model.config.vision_config.image_size
        return SamImageProcessor(size={"longest_edge": s}, pad_size={"height": s, "width": s})

    def image_stages(self, images: np.ndarray) -> Arrays:
        return hf_image_stages(self.model, images)

    def decode_stages(self, image_stages: Arrays, prompts: Prompts, multimask: bool, hq_only: bool) -> Arrays:
        return hf_decode_stages(self.model, image_stages, prompts, multimask, hq_only)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """``SamImageProcessor``: ``(H, W, 3)`` uint8 -> ``(S, S, 3)`` float32."""
        return self._processor(images=rgb, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)

    def postprocess(self, low_res: np.ndarray, input_size: Size, original_size: Size) -> np.ndarray:
        """``SamImageProcessor.post_process_masks``: ``(P, K, 4G, 4G)`` -> ``(P, K, H, W)`` logits."""
        out = self._processor.post_process_masks(
            [torch.from_numpy(low_res)], [tuple(original_size)], [tuple(input_size)], binarize=False
        )
        return out[0].numpy()
