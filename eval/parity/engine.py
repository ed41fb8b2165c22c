"""One comparison of ``samhq parity``: a reference and ours on the same images and prompt sets,
stage by stage, and (for a photo) end to end."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eval.parity.ours import Ours
from eval.parity.report import ImageReport, Reference
from eval.parity.scenarios import Scenario, frame_prompts
from eval.parity.stages import FLAGS, Arrays, Flags, Prompts, Size, compare, mask_agreement, relative_error


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
                full_ours = ours.postprocess(ours_e2e[flags]["low_res_masks"][0], input_size, report.original_size)
                full_ref = reference.postprocess(ref["low_res_masks"][0], input_size, report.original_size)
                row["full_size_error"] = relative_error(full_ours, full_ref)
                row["full_size_agreement"] = mask_agreement(full_ours, full_ref)
            report.decoder.append(row)
        tick()
    return report
