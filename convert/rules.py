"""Name-mapping rules between PyTorch state-dict keys and our parameter paths, usable both ways.

A rule pairs a PyTorch key template with one of our ``/``-separated parameter paths and the axis
permutation that turns the PyTorch tensor into ours. Templates may hold ``{i}``-style integer
placeholders, e.g. ``image_encoder.blocks.{i}.attn.qkv.weight`` <->
``image_encoder/blocks_{i}/attn/qkv/kernel``. Several PyTorch keys may map to one of ours when the
source stores a tensor twice (Hugging Face ties the positional-encoding matrix).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable

import numpy as np

Perm = tuple[int, ...] | None

LINEAR: Perm = (1, 0)  # torch (out, in) -> flax (in, out)
CONV: Perm = (2, 3, 1, 0)  # torch (out, in, kh, kw) -> flax (kh, kw, in, out)
CONV_T: Perm = (2, 3, 0, 1)  # torch ConvTranspose (in, out, kh, kw) -> ours (kh, kw, in, out); no flip
AS_IS: Perm = None

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@functools.cache
def _template_regex(template: str) -> re.Pattern[str]:
    """``a.{i}.b`` -> a regex matching the whole key with a named integer group per placeholder."""
    parts = _PLACEHOLDER.split(template)
    pattern = "".join(f"(?P<{part}>\\d+)" if k % 2 else re.escape(part) for k, part in enumerate(parts))
    return re.compile(pattern + r"\Z")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One PyTorch key template <-> one of our parameter-path templates, with the permutation."""

    torch: str
    ours: str
    perm: Perm = AS_IS

    def __post_init__(self) -> None:
        if set(_PLACEHOLDER.findall(self.torch)) != set(_PLACEHOLDER.findall(self.ours)):
            raise ValueError(f"placeholders differ between {self.torch!r} and {self.ours!r}")

    def match_torch(self, key: str) -> str | None:
        m = _template_regex(self.torch).match(key)
        return self.ours.format(**m.groupdict()) if m else None

    def match_ours(self, path: str) -> str | None:
        m = _template_regex(self.ours).match(path)
        return self.torch.format(**m.groupdict()) if m else None

    def to_ours(self, tensor: np.ndarray) -> np.ndarray:
        return tensor if self.perm is None else np.ascontiguousarray(tensor.transpose(self.perm))

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        if self.perm is None:
            return array
        return np.ascontiguousarray(array.transpose(tuple(np.argsort(self.perm))))


def linear(torch: str, ours: str, bias: bool = True) -> list[Rule]:
    """``nn.Linear`` at ``torch`` -> ``nn.Dense`` at ``ours``."""
    rules = [Rule(f"{torch}.weight", f"{ours}/kernel", LINEAR)]
    return rules + ([Rule(f"{torch}.bias", f"{ours}/bias")] if bias else [])


def conv(torch: str, ours: str, bias: bool = True) -> list[Rule]:
    """``nn.Conv2d`` -> ``nn.Conv``."""
    rules = [Rule(f"{torch}.weight", f"{ours}/kernel", CONV)]
    return rules + ([Rule(f"{torch}.bias", f"{ours}/bias")] if bias else [])


def conv_transpose(torch: str, ours: str) -> list[Rule]:
    """``nn.ConvTranspose2d`` (stride == kernel) -> :class:`samhq_jax.layers.ConvTranspose`."""
    return [Rule(f"{torch}.weight", f"{ours}/kernel", CONV_T), Rule(f"{torch}.bias", f"{ours}/bias")]


def norm(torch: str, ours: str) -> list[Rule]:
    """``nn.LayerNorm`` / ``LayerNorm2d`` -> ``nn.LayerNorm`` (weight -> scale)."""
    return [Rule(f"{torch}.weight", f"{ours}/scale"), Rule(f"{torch}.bias", f"{ours}/bias")]


def conv_bn(torch: str, ours: str) -> list[Rule]:
    """TinyViT's ``Conv2d_BN`` (bias-free ``c`` + ``BatchNorm2d`` ``bn``) -> :class:`samhq_jax.tiny_vit.Conv2dBN`;
    the running statistics keep their names (``num_batches_tracked`` is not a weight: see the formats'
    unused keys)."""
    stats = [Rule(f"{torch}.bn.{name}", f"{ours}/bn/{name}") for name in ("running_mean", "running_var")]
    return conv(f"{torch}.c", f"{ours}/c", bias=False) + norm(f"{torch}.bn", f"{ours}/bn") + stats


def tensor(torch: str, ours: str) -> list[Rule]:
    """A bare tensor (embedding weight, position table) copied as is."""
    return [Rule(torch, ours)]


def flatten(groups: Iterable[list[Rule]]) -> tuple[Rule, ...]:
    return tuple(rule for group in groups for rule in group)
