"""The prompts of ``samhq parity`` on photos, in the photos' pixels: the default scenarios derived
from a photo's size, or the lines of a ``--prompts`` file (:mod:`samhq_jax.cmdkit.prompts`), mapped
into the model's input frame as :class:`~samhq_jax.predictor.SamHQPredictor` maps them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from eval.parity.stages import Prompts, Size
from samhq_jax.cmdkit.guard import UsageError
from samhq_jax.cmdkit.prompts import prompt_arrays, read_prompt_lines
from samhq_jax.config import ModelConfig
from samhq_jax.transforms import apply_boxes, apply_coords


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A prompt set in original-image pixels, a line of a prompts file.

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
    scenario: Scenario, original_size: Size, config: ModelConfig, masks: np.ndarray | None = None
) -> Prompts:
    """A scenario's prompts mapped into the model's input frame for one image: ``(1, P, ...)``
    arrays (as :class:`SamHQPredictor` maps them); ``masks``: ``(1, 1, 4G, 4G)`` logits, repeated
    for each of the P prompts."""
    kw = prompt_arrays(list(scenario.boxes), list(scenario.points))
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


def read_scenarios(path: Path, image_names: list[str]) -> dict[str, list[Scenario]]:
    """The scenarios of each image (keyed by the ``--image`` argument as given) in a JSON-lines
    prompts file, read with :func:`samhq_jax.cmdkit.prompts.read_prompt_lines`: each line is one
    scenario, named ``line N``, for the image it names (its file name or the argument) or, without
    ``"image"``, for every image.

    Raises :class:`UsageError` naming the file (and ``FILE:LINE``) for an unreadable file, a bad
    line, an unknown image, or an image left without prompts.
    """
    per_image: dict[str, list[Scenario]] = {name: [] for name in image_names}
    try:
        for rec in read_prompt_lines(path):
            targets = image_names
            if rec.image is not None:
                targets = [a for a in image_names if rec.image in (a, Path(a).name)]
                if not targets:
                    raise UsageError(f"{path}:{rec.line}: image {rec.image!r} is not one of the --image files")
            scenario = Scenario(
                f"line {rec.line}",
                boxes=tuple(tuple(row) for row in rec.boxes),
                points=tuple(tuple(row) for row in rec.points),
                image=rec.image,
            )
            for name in targets:
                per_image[name].append(scenario)
    except OSError as err:
        raise UsageError(f"cannot read prompts file {path}: {err}") from err
    missing = [name for name, scenarios in per_image.items() if not scenarios]
    if missing:
        raise UsageError(
            f'{path} has no prompts for {", ".join(missing)} (add a line without "image", or one naming it)'
        )
    return per_image
