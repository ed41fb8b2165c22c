"""``crop_box`` value types equal the official generator's.

The official ``SamAutomaticMaskGenerator`` concatenates each crop's ``crop_boxes`` tensor
(``torch.tensor([crop_box] * n)``); a crop that kept no mask contributes ``torch.tensor([])``, a
float32 tensor, and ``torch.cat`` promotes the whole column: every record's ``crop_box`` then holds
floats (``[0.0, 0.0, 420.0, 300.0]``). When every crop kept a mask the values are ints.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import official_model_and_params
from tests.test_amg import PRESET, FakeDecoder, assert_same_records, official_generator, our_generator, synthetic_scene


def corner_scene() -> np.ndarray:
    """``(300, 420, 3)`` uint8: a few rectangles in the top-left corner on a plain background, so
    the lower-right crop of layer 1 sees only background, whose mask touches that crop's inner
    edges and is dropped: that crop keeps no mask."""
    image = np.zeros((300, 420, 3), np.uint8)
    for k, (y, x, h, w) in enumerate([(10, 12, 40, 50), (60, 30, 30, 70), (20, 90, 50, 25)], start=1):
        image[y : y + h, x : x + w] = (60 * k, 255 - 40 * k, 30 * k)
    return image


def records(image: np.ndarray, **kwargs: object) -> tuple[list[dict], list[dict]]:
    official, _, config, params = official_model_and_params(PRESET)
    fake = FakeDecoder(config.img_size)
    with torch.inference_mode():
        ref = official_generator(official, fake, **kwargs).generate(image)
    return our_generator(config, params, fake, **kwargs).generate(image), ref


def crop_box_types(recs: list[dict]) -> list[list[type]]:
    return [[type(v) for v in r["crop_box"]] for r in recs]


def test_a_crop_without_masks_makes_every_crop_box_float_as_the_official() -> None:
    ours, ref = records(corner_scene(), points_per_side=8, crop_n_layers=1)
    assert ref, "the official should keep masks from the crops that see the rectangles"
    assert crop_box_types(ref) == [[float] * 4] * len(ref)  # the rule this test rests on
    assert_same_records(ours, ref)
    assert crop_box_types(ours) == crop_box_types(ref)


def test_crop_boxes_stay_int_when_every_crop_keeps_a_mask() -> None:
    ours, ref = records(synthetic_scene(), points_per_side=8, crop_n_layers=1)
    assert crop_box_types(ref) == [[int] * 4] * len(ref) and ref
    assert_same_records(ours, ref)
    assert crop_box_types(ours) == crop_box_types(ref)


def test_one_crop_keeps_int_crop_boxes() -> None:
    ours, ref = records(synthetic_scene(), points_per_side=8)
    assert crop_box_types(ref) == [[int] * 4] * len(ref) and ref
    assert crop_box_types(ours) == crop_box_types(ref)
