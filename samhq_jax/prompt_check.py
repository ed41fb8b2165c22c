"""The checks every prompt entry point shares (:class:`~samhq_jax.predictor.SamHQPredictor`,
:class:`~samhq_jax.mesh_predictor.MeshPredictor`, the Hugging Face processor and model, the mask
generator's point grids): a NaN / inf, an unknown point label or a box with ``x1 < x0`` /
``y1 < y0`` is an :class:`~samhq_jax.errors.InputError` naming the prompt (``boxes[1] = [10, nan,
30, 40]``) and the rule it breaks, never a silent wrong mask.

The command kit parses the prompts of the command line and of prompts files with its own copy of
these rules (:mod:`samhq_jax.cmdkit.prompts`, which imports no model code); a test keeps the two
label lists equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from samhq_jax.errors import InputError
from samhq_jax.prompt_encoder import LABEL_NEGATIVE, LABEL_NOT_A_POINT, LABEL_POSITIVE

# Point labels a user may give: 1 foreground, 0 background, -1 ignore (a padding point).
VALID_LABELS = (LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_NOT_A_POINT)
LABELS_TEXT = "1 (foreground), 0 (background) or -1 (ignore)"


def _named(arr: np.ndarray, name: str, index: tuple[int, ...], row: bool) -> str:
    """``name[i, j] = value`` of element ``index`` of ``arr``; with ``row`` the whole last-axis row
    holding it (a point's ``[x, y]``, a box's ``[x0, y0, x1, y1]``)."""
    at = index[:-1] if row else index
    value = arr[at]
    shown = "[" + ", ".join(f"{v:g}" for v in np.ravel(value)) + "]" if row else f"{value:g}"
    return f"{name}[{', '.join(map(str, at))}] = {shown}" if at else f"{name} = {shown}"


def check_finite(arr: np.ndarray, name: str, row: bool = True) -> None:
    """``InputError`` naming the first prompt of ``arr`` that holds a NaN or inf (``row``: the last
    axis holds one prompt's numbers, named together)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{_named(arr, name, index, row)}: every number must be finite (no NaN or inf)")


def check_labels(labels: np.ndarray, name: str, allowed: Sequence[int] = VALID_LABELS, text: str = LABELS_TEXT) -> None:
    """``InputError`` naming the first point label of ``labels`` not in ``allowed`` (a NaN, 7, 0.5...)."""
    arr = np.asarray(labels)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name} must be numbers, got dtype {arr.dtype}")
    bad = ~np.isin(arr, np.asarray(allowed, np.float64))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{_named(arr, name, index, row=False)}: a point label must be {text}")


def check_boxes(boxes: np.ndarray, name: str) -> None:
    """``InputError`` naming the first box of ``boxes (..., 4)`` (finite, checked first) with
    ``x1 < x0`` or ``y1 < y0``."""
    check_finite(boxes, name)
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bad.any():
        index = (*(int(i) for i in np.argwhere(bad)[0]), 0)
        raise InputError(f"{_named(boxes, name, index, row=True)}: a box is x0, y0, x1, y1 with x1 >= x0 and y1 >= y0")


def finite_array(a: object, name: str, shape: tuple[int | None, ...], row: bool = True) -> np.ndarray:
    """``a`` as a float32 array of ``shape`` (None: any size), every number finite; an
    ``InputError`` naming ``name`` otherwise."""
    try:
        arr = np.asarray(a, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be an array of numbers: {err}") from err
    if arr.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
    ):
        want = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
        raise InputError(f"{name} must have shape {want}, got {arr.shape}")
    check_finite(arr, name, row)
    return arr
