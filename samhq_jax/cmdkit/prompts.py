"""Box and point prompts in image pixels, from flags or from the JSON-lines prompts file: the one
parser every command reads that file with (``samhq predict --prompts``, ``samhq parity --prompts``).

A prompts file holds one JSON object per line, e.g. :data:`PROMPTS_EXAMPLE`: ``"boxes"`` (rows
``[x0, y0, x1, y1]``) and ``"points"`` (rows ``[x, y, label]``, label 1 foreground, 0 background,
-1 ignore), at least one of them, and ``"image"``, a file name. Blank lines are skipped; an error
names ``FILE:LINE``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from samhq_jax.errors import InputError

PROMPT_KEYS = ("image", "boxes", "points")
PROMPTS_EXAMPLE = '{"image": "dog.jpg", "boxes": [[100, 200, 900, 1200]], "points": [[500, 600, 1], [200, 100, 0]]}'
# Point labels a user may give: 1 foreground, 0 background, -1 ignore (a padding point); the
# core's samhq_jax.prompt_check.VALID_LABELS (tests/test_architecture.py keeps them equal).
PROMPT_LABELS = (1, 0, -1)


@dataclasses.dataclass(frozen=True)
class PromptLine:
    """One checked line of a prompts file: its number, ``"image"`` (None when the line has none),
    boxes ``[x0, y0, x1, y1]`` and points ``[x, y, label]`` (labels as ints), in image pixels."""

    line: int
    image: str | None
    boxes: list[list[float]]
    points: list[list[Any]]


def _number_rows(rows: Any, fields: str, name: str) -> list[list[float]]:
    """``rows`` as a list of rows of finite numbers, each with the ``fields`` (``"x0 y0 x1 y1"``)."""
    width = len(fields.split())
    if not isinstance(rows, list) or not all(
        isinstance(r, list)
        and len(r) == width
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
        for r in rows
    ):
        shown = json.dumps(rows)
        raise InputError(f"{name}: expected a list of [{fields.replace(' ', ', ')}] rows, got {shown[:80]}")
    for r in rows:
        if not all(math.isfinite(v) for v in r):
            raise InputError(f"{name} {_shown(r)}: every number must be finite")
    return [[float(v) for v in r] for r in rows]


def _shown(row: list[float]) -> str:
    return " ".join(f"{v:g}" for v in row)


def check_prompts(boxes: Any, points: Any, where: str | None = None) -> tuple[list[list[float]], list[list[Any]]]:
    """The prompts of one image, checked: ``(boxes, points)``, rows ``[x0, y0, x1, y1]`` and ``[x, y, label]``.

    Numbers finite, boxes with ``x1 >= x0`` and ``y1 >= y0``, labels 1 (foreground), 0 (background)
    or -1 (ignore; returned as ints), at least one box or point; otherwise an ``InputError`` starting
    with ``where`` (``FILE:LINE`` of a prompts file; None: the ``--box`` / ``--point`` flags).
    """
    prefix = "" if where is None else f"{where}: "
    box, point = ("--box", "--point") if where is None else ("box", "point")
    boxes = _number_rows(boxes, "x0 y0 x1 y1", prefix + box)
    points = _number_rows(points, "x y label", prefix + point)
    for b in boxes:
        if b[2] < b[0] or b[3] < b[1]:
            raise InputError(f"{prefix}{box} {_shown(b)}: need x1 >= x0 and y1 >= y0 (x0 y0 x1 y1)")
    for p in points:
        if p[2] not in PROMPT_LABELS:
            raise InputError(
                f"{prefix}{point} {_shown(p)}: the label must be 1 (foreground), 0 (background) or -1 (ignore)"
            )
    if not boxes and not points:
        raise InputError(f"{prefix}give at least one {box} or {point}")
    return boxes, [[x, y, int(label)] for x, y, label in points]


def read_prompt_lines(path: Path, images: Path | None = None) -> Iterator[PromptLine]:
    """Each line of the prompts file ``path``, checked, as it is read (a caller's own checks of a
    line come before the next line is read).

    ``images``: the folder the lines' ``"image"`` names are in, which makes ``"image"`` required;
    None: ``"image"`` is optional (the command says what a line without one applies to). Raises
    ``InputError`` starting with ``FILE:LINE`` for a bad line, and naming ``FILE`` for a file without
    any prompts (or one that is not text); ``OSError`` when the file cannot be read.
    """
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a JSON-lines text file ({err})") from err
    count = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(
                f"{where}: not valid JSON ({err.msg}, column {err.colno}); e.g. {PROMPTS_EXAMPLE}"
            ) from err
        image = record.get("image") if isinstance(record, dict) else None
        if images is not None and (not isinstance(image, str) or not image):
            raise InputError(
                f'{where}: expected an object with "image": a file name in {images}; e.g. {PROMPTS_EXAMPLE}'
            )
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object; e.g. {PROMPTS_EXAMPLE}")
        if image is not None and (not isinstance(image, str) or not image):
            raise InputError(f'{where}: "image" must be a file name')
        unknown = sorted(set(record) - set(PROMPT_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(PROMPT_KEYS)}")
        boxes, points = check_prompts(record.get("boxes", []), record.get("points", []), where)
        count += 1
        yield PromptLine(n, image, boxes, points)
    if not count:
        raise InputError(f"{path}: no prompts; one JSON object per line, e.g. {PROMPTS_EXAMPLE}")


def prompt_arrays(boxes: list, points: list) -> dict[str, np.ndarray]:
    """``predict_batch`` keyword arguments for P prompts: P boxes (or 1 if none), the points in each."""
    out = {}
    p = max(len(boxes), 1)
    if boxes:
        out["boxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
    if points:
        pts = np.asarray(points, np.float32).reshape(-1, 3)
        out["point_coords"] = np.repeat(pts[None, :, :2], p, axis=0)
        out["point_labels"] = np.repeat(pts[None, :, 2].astype(np.int32), p, axis=0)
    if not out:
        raise InputError("give at least one --box or --point")
    return out
