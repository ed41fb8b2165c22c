"""Pre/post-processing against the Hugging Face processor (transformers 4.53.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SamHQProcessor, SamImageProcessor

from eval.parity.samples import IMAGES_DIR
from samhq_jax.transforms import apply_boxes, apply_coords, postprocess_masks, preprocess

SIZES = {"landscape": None, "portrait": (601, 1365), "small": (23, 37)}  # (W, H) resizes of dog.jpg


def _image(name: str) -> np.ndarray:
    img = Image.open(IMAGES_DIR / "dog.jpg").convert("RGB")
    return np.asarray(img if SIZES[name] is None else img.resize(SIZES[name], Image.BILINEAR))


@pytest.mark.parametrize("name", list(SIZES))
def test_processor_parity(name: str) -> None:
    image = _image(name)
    h, w = image.shape[:2]
    points = [[[[0.3 * w, 0.6 * h], [0.9 * w, 0.1 * h]]]]
    boxes = [[[0.1 * w, 0.2 * h, 0.8 * w, 0.9 * h]]]
    ref = SamHQProcessor(image_processor=SamImageProcessor())(
        images=image, input_points=points, input_boxes=boxes, return_tensors="np"
    )
    pixels, input_size, original_size = preprocess(image, 1024)
    assert tuple(ref["original_sizes"][0]) == original_size == (h, w)
    assert tuple(ref["reshaped_input_sizes"][0]) == input_size
    # HF rescales by 1/255 then normalises with ImageNet statistics: the same map up to rounding.
    np.testing.assert_allclose(pixels, ref["pixel_values"][0].transpose(1, 2, 0), atol=2e-5, rtol=0)
    np.testing.assert_allclose(apply_coords(np.array(points), (h, w), 1024), ref["input_points"], rtol=1e-6)
    np.testing.assert_allclose(apply_boxes(np.array(boxes), (h, w), 1024), ref["input_boxes"], rtol=1e-6)
    low = np.random.default_rng(0).normal(0, 5, (1, 2, 256, 256)).astype(np.float32)
    ref_masks = (
        SamImageProcessor()
        .post_process_masks(
            torch.from_numpy(low[None]), ref["original_sizes"], ref["reshaped_input_sizes"], binarize=False
        )[0]
        .numpy()
    )
    ours = np.asarray(postprocess_masks(low, input_size, original_size, 1024))
    np.testing.assert_allclose(ours, ref_masks, atol=1e-5 * np.abs(ref_masks).max(), rtol=0)
    assert np.mean((ours > 0) == (ref_masks > 0)) >= 0.9999
