"""Which parameters train: chosen by path, every parameter covered by an explicit rule.

``--trainable hq`` (default, the paper's recipe) trains the five HQ parts; ``decoder`` the whole mask
decoder (the maintainers' advice for task-specific fine-tuning, SysCV/sam-hq #140); ``all`` the whole
model (only for pre-training a stand-in SAM, as ``samhq demo`` does); anything else is a regular
expression matched against ``/``-joined paths such as ``mask_decoder/hq_mlp/layers_0/kernel``.
A parameter that is not trainable must be matched by one of :data:`FROZEN_RULES`; one matched by
neither is an error, so a new parameter can never be silently frozen or trained. BatchNorm running
statistics (TinyViT, :data:`samhq_jax.tiny_vit.BATCH_STATS_REGEX`) are constants: never trainable,
whatever the rule (with ``all`` too).
"""

from __future__ import annotations

import re
from typing import Any

from flax.traverse_util import flatten_dict, unflatten_dict

from samhq_jax.errors import InputError
from samhq_jax.hq_params import HQ_PARAM_REGEX
from samhq_jax.tiny_vit import is_batch_stat

TRAINABLE_PRESETS = {
    "hq": HQ_PARAM_REGEX.pattern,
    "decoder": r"^mask_decoder/",
    "all": r".",
}
# SAM's three parts: frozen unless the trainable rule claims them.
FROZEN_RULES = (r"^image_encoder/", r"^prompt_encoder/", r"^mask_decoder/")


def trainable_regex(spec: str) -> re.Pattern[str]:
    """The regex of a preset name (``hq``, ``decoder``, ``all``) or of a user pattern."""
    try:
        return re.compile(TRAINABLE_PRESETS.get(spec, spec))
    except re.error as err:
        raise InputError(
            f"--trainable {spec!r} is neither {', '.join(TRAINABLE_PRESETS)} nor a valid regex: {err}"
        ) from err


def partition(params: Any, spec: str) -> tuple[dict, dict]:
    """Split ``params`` into ``(trainable, frozen)`` trees by path.

    Raises :class:`~samhq_jax.errors.InputError` when the rule selects nothing (or is no regex), and
    ``ValueError`` (our bug) when a parameter is matched neither by the trainable rule nor by a frozen rule.
    """
    pattern = trainable_regex(spec)
    flat = flatten_dict(params, sep="/")
    trainable = {k: v for k, v in flat.items() if pattern.search(k) and not is_batch_stat(k)}
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    uncovered = sorted(k for k in frozen if not any(re.search(r, k) for r in FROZEN_RULES))
    if uncovered:
        raise ValueError(f"parameters matched by no trainable or frozen rule: {uncovered[:10]}")
    if not trainable:
        raise InputError(f"--trainable {spec!r} selects no parameter")
    return unflatten_dict(trainable, sep="/"), unflatten_dict(frozen, sep="/")


def touches_encoder(trainable: dict) -> bool:
    """Whether any trainable parameter is in the image encoder (then it runs inside the gradient)."""
    return "image_encoder" in trainable


def count(tree: Any) -> int:
    """Number of values in a parameter tree."""
    return sum(int(v.size) for v in flatten_dict(tree, sep="/").values())
