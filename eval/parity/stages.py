"""What both sides of ``samhq parity`` produce and how it is compared: per-stage arrays, the prompts
they decode, the bar, and the PyTorch hooks shared by the references."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

Arrays = dict[str, np.ndarray]
Flags = tuple[bool, bool]  # (multimask_output, hq_token_only)
Size = tuple[int, int]  # (H, W)

# The parity bar: every stage within 1e-4 of the reference's largest magnitude (fp32), and the
# binarised masks agreeing on at least 99.99 % of pixels.
PARITY_RTOL = 1e-4
MIN_MASK_AGREEMENT = 0.9999
FLAGS: tuple[Flags, ...] = tuple((m, h) for m in (False, True) for h in (False, True))


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


NHWC, NCHW, TOKENS = "nhwc", "nchw", "tokens"  # layouts of a captured stage output
Stages = dict[str, tuple["torch.nn.Module", str]]  # stage name -> (module, layout of its output)


def vit_stages(encoder: torch.nn.Module, blocks: list[torch.nn.Module]) -> Stages:
    """A ViT encoder's stages: ``patch_embed``, ``blocks_i`` (NHWC) and ``neck`` (NCHW)."""
    stages = {"patch_embed": (encoder.patch_embed, NHWC)}
    stages.update({f"blocks_{i}": (blk, NHWC) for i, blk in enumerate(blocks)})
    stages["neck"] = (encoder.neck, NCHW)
    return stages


def tiny_vit_stages(encoder: torch.nn.Module) -> Stages:
    """The official TinyViT's stages, named as our sown intermediates: ``patch_embed``, every block
    ``layers_{i}_blocks_{j}``, every stage ``layers_{i}`` (after its patch merging) and ``neck``.
    Stage 0's blocks work on NCHW maps, every later output is a ``(B, L, C)`` token list."""
    stages = {"patch_embed": (encoder.patch_embed, NCHW)}
    for i, layer in enumerate(encoder.layers):
        stages.update(
            {f"layers_{i}_blocks_{j}": (blk, NCHW if i == 0 else TOKENS) for j, blk in enumerate(layer.blocks)}
        )
        stages[f"layers_{i}"] = (layer, TOKENS)
    stages["neck"] = (encoder.neck, NCHW)
    return stages


def _to_nhwc(t: torch.Tensor, layout: str) -> np.ndarray:
    """A captured output as an NHWC numpy array (a square token list is reshaped row-major)."""
    if layout == NCHW:
        t = t.permute(0, 2, 3, 1)
    elif layout == TOKENS:
        side = math.isqrt(t.shape[1])
        t = t.reshape(t.shape[0], side, side, t.shape[2])
    return t.detach().numpy().copy()


def capture_encoder_stages(
    stages: Stages,
    images: np.ndarray,
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> Arrays:
    """Run a PyTorch image encoder on ``(B, S, S, 3)`` NHWC ``images`` with a hook on each module of
    ``stages`` (:func:`vit_stages`, :func:`tiny_vit_stages`); ``forward(NCHW images)`` returns the
    embeddings ``(B, C, G, G)`` and the early feature ``(B, G, G, D)``.

    Returns per-stage NHWC arrays under the stage names, plus ``image_embeddings`` ``(B, G, G, C)``
    and ``early_features`` ``(B, G, G, D)``.
    """
    import torch

    captured: Arrays = {}

    def keep(name: str, layout: str) -> Callable:
        def hook(_m: torch.nn.Module, _i: tuple, out: torch.Tensor | tuple) -> None:
            t = out[0] if isinstance(out, tuple) else out  # transformers' layers return tuples
            captured[name] = _to_nhwc(t, layout)

        return hook

    handles = [module.register_forward_hook(keep(name, layout)) for name, (module, layout) in stages.items()]
    try:
        with torch.no_grad():
            emb, early = forward(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    finally:
        for h in handles:
            h.remove()
    captured["image_embeddings"] = emb.permute(0, 2, 3, 1).numpy()
    captured["early_features"] = early.numpy()
    return captured


def to_tensor(a: np.ndarray | None) -> torch.Tensor | None:
    """``a`` as a torch tensor sharing its memory (made contiguous first); None stays None."""
    import torch

    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))
