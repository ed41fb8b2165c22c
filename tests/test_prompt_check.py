"""Bad prompts through the Python API: NaN / inf, unknown labels and flipped boxes are an
``InputError`` (a ``ValueError``) naming the prompt and its value at every entry point, checked
before any image is encoded. (``SamHQPredictor``'s are in tests/test_predictor.py; the command line's
in tests/test_fuzz.py and tests/test_cli_errors.py.) No model runs here: the weights are zeros."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from samhq_jax.amg import check_settings
from samhq_jax.config import ModelConfig
from samhq_jax.distributed import data_mesh
from samhq_jax.errors import InputError
from samhq_jax.hf_model import SamHQModel
from samhq_jax.hf_processor import SamHQImageProcessor, SamHQProcessor
from samhq_jax.mesh_predictor import MeshPredictor
from samhq_jax.prompt_check import check_boxes, check_finite, check_labels
from samhq_jax.sam_hq import param_shapes

CONFIG = ModelConfig.preset("tiny_b")
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def zero_params() -> dict:
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(CONFIG))


def test_the_checks_name_the_prompt_and_its_value() -> None:
    with pytest.raises(InputError, match=r"^boxes\[1\] = \[1, 2, nan, 4\]: every number must be finite"):
        check_finite(np.array([[0, 0, 1, 1], [1, 2, NAN, 4]]), "boxes")
    with pytest.raises(InputError, match=r"^mask\[0, 2\] = -inf: every number"):
        check_finite(np.array([[0.0, 1.0, -INF]]), "mask", row=False)
    with pytest.raises(InputError, match=r"^labels\[1, 0\] = 7: a point label must be 1 \(foreground\), 0"):
        check_labels(np.array([[1, 0], [7, 1]]), "labels")
    for bad in (0.5, NAN, -2):
        with pytest.raises(InputError, match="a point label must be"):
            check_labels(np.array([1.0, bad]), "labels")
    check_labels(np.array([1.0, 0.0, -1.0]), "labels")  # the official demo's float labels
    with pytest.raises(InputError, match=r"^b\[0, 1\] = \[5, 0, 4, 9\]: a box is x0, y0, x1, y1 with x1 >= x0"):
        check_boxes(np.array([[[0, 0, 1, 1], [5, 0, 4, 9]]], np.float32), "b")
    with pytest.raises(InputError, match=r"^b\[0\] = \[0, 9, 4, 8\]"):
        check_boxes(np.array([[0, 9, 4, 8]], np.float32), "b")
    check_boxes(np.array([[3, 3, 3, 3]], np.float32), "b")  # a point-sized box is a box
    assert issubclass(InputError, ValueError)


def test_hf_processor_refuses_bad_prompts() -> None:
    processor = SamHQProcessor(SamHQImageProcessor(longest_edge=CONFIG.img_size))
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(InputError, match=r"^input_points\[0\]\[1\] = \[nan, 5\]: every number must be finite"):
        processor(image, input_points=[[[1, 2], [NAN, 5]]])
    with pytest.raises(InputError, match=r"^input_boxes\[0\]\[0\] = \[1, 2, inf, 4\]"):
        processor(image, input_boxes=[[[1, 2, INF, 4]]])
    with pytest.raises(InputError, match=r"^input_boxes\[0\]\[1\] = \[9, 2, 3, 4\]: a box is"):
        processor(image, input_boxes=[[[1, 2, 3, 4], [9, 2, 3, 4]]])
    with pytest.raises(InputError, match=r"^input_labels\[0, 0, 1\] = 7: a point label must be .* the pad value -10"):
        processor(image, input_points=[[[1, 2], [3, 4]]], input_labels=[[1, 7]])


def test_hf_model_refuses_bad_prompts_before_encoding(zero_params: dict) -> None:
    model = SamHQModel(CONFIG, zero_params)
    pixels = np.zeros((1, 3, CONFIG.img_size, CONFIG.img_size), np.float32)
    points = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(InputError, match=r"^input_labels\[0, 0, 1\] = 3: a point label must be"):
        model(pixels, input_points=points, input_labels=np.array([[[1, 3]]]))
    points[0, 0, 1] = [INF, 1]
    with pytest.raises(InputError, match=r"^input_points\[0, 0, 1\] = \[inf, 1\]: every number must be finite"):
        model(pixels, input_points=points)
    with pytest.raises(InputError, match=r"^input_boxes\[0, 0\] = \[8, 0, 2, 2\]: a box is"):
        model(pixels, input_boxes=np.array([[[8, 0, 2, 2]]], np.float32))


def test_mesh_predictor_refuses_bad_prompts_before_encoding(zero_params: dict) -> None:
    predictor = MeshPredictor(CONFIG, zero_params, data_mesh(jax.local_devices()[:1]))
    image = np.zeros((30, 40, 3), np.uint8)
    bad = {"point_coords": np.zeros((1, 1, 2)), "point_labels": np.array([[7]])}
    with pytest.raises(InputError, match=r"^prompts\[0\]: point_labels\[0, 0\] = 7"):
        predictor.predict_images([image], [bad])
    with pytest.raises(InputError, match=r"^prompts\[0\]: boxes\[0\] = \[nan, 0, 4, 4\]"):
        predictor.predict_images([image], [{"boxes": np.array([[NAN, 0, 4, 4]])}])
    assert predictor.embeddings is None  # nothing was encoded


def test_user_point_grids_are_checked() -> None:
    grid = np.array([[0.5, 0.5], [0.25, NAN]])
    with pytest.raises(InputError, match=r"^point_grids\[0\]\[1\] = \[0.25, nan\]: every number must be finite"):
        check_settings(None, 64, 0, 1, [grid], "binary_mask")
    with pytest.raises(InputError, match=r"^point_grids\[0\]\[1\] = \[1.5, 0.2\]: grid points are in \[0, 1\]"):
        check_settings(None, 64, 0, 1, [np.array([[0.5, 0.5], [1.5, 0.2]])], "binary_mask")
    assert len(check_settings(None, 64, 0, 1, [np.array([[0.0, 1.0]])], "binary_mask")) == 1


def test_crop_layers_too_many_for_a_tiny_image(zero_params: dict) -> None:
    from samhq_jax.amg import SamHQAutomaticMaskGenerator
    from samhq_jax.predictor import SamHQPredictor

    generator = SamHQAutomaticMaskGenerator(SamHQPredictor(CONFIG, zero_params), points_per_side=2, crop_n_layers=2)
    with pytest.raises(InputError, match=r"crop_n_layers=2 cuts a 5x3 image into empty crops \(e.g. \[0, 3, 2, 3\]\)"):
        generator.generate(np.zeros((3, 5, 3), np.uint8))
