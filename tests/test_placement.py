"""Weights are placed on the device once: warm calls of every entry point move nothing implicitly.

Each entry point runs once to compile, then again under ``jax.transfer_guard("disallow")``, which
refuses every implicit transfer between host and device in either direction: parameters left as
NumPy (what ``read_weights`` and a training result hold) would be uploaded again by every call
and fail it. Inputs go up and results come back through explicit ``jax.device_put`` /
``jax.device_get``, which the guard allows.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from eval.protocol import compiled_forward
from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.config import ModelConfig
from samhq_jax.hf_model import SamHQModel
from samhq_jax.hf_processor import SamHQImageProcessor, SamHQProcessor
from samhq_jax.predictor import SamHQPredictor
from tests.conftest import official_model_and_params
from train.bench import synthetic_batch
from train.step import global_batch, init_state, jit_train_step, make_mesh, make_optimizer, make_train_step, replicate
from train.trainable import partition

PRESET = "tiny_h"  # the size other tests convert: shared per session


@pytest.fixture(scope="module")
def setup() -> tuple[ModelConfig, dict]:
    """A tiny config and its seeded parameters as NumPy, as ``read_weights`` returns them (the
    session's shared conversion of the official model)."""
    _, _, config, params = official_model_and_params(PRESET)
    return config, params


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)


def warm(call) -> object:
    """``call()`` once to compile, then again with every implicit transfer refused."""
    call()
    with jax.transfer_guard("disallow"):
        return call()


def on_device(tree: object) -> bool:
    return all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(tree))


def test_predictor_places_weights_once(setup, image) -> None:
    config, params = setup
    predictor = SamHQPredictor(config, params)
    assert on_device(predictor.params)

    def calls() -> None:
        predictor.set_image(image)
        predictor.predict(point_coords=np.array([[20.0, 10.0]]), point_labels=np.array([1]))
        predictor.predict_batch(boxes=np.array([[1.0, 2, 30, 30], [3, 3, 20, 40]]), hq_token_only=True)
        predictor.predict_torch(None, None, boxes=np.array([[5.0, 5, 90, 60]]))
        _ = predictor.features, predictor.interm_features
        predictor.predict_images([image, image[:30]], [{"boxes": np.array([[1.0, 2, 30, 30]])}] * 2)

    warm(calls)
    # The guard is what catches weights left on the host: the same calls with NumPy weights fail.
    predictor.params = params
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        warm(lambda: predictor.set_image(image))


def test_mask_generator_warm_call_moves_no_weights(setup, image) -> None:
    config, params = setup
    generator = SamHQAutomaticMaskGenerator(
        SamHQPredictor(config, params),
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=1,
        min_mask_region_area=4,
    )
    records = warm(lambda: generator.generate(image))
    assert records, "nothing to compare: the thresholds are off, every grid point should give a mask"


def test_hf_model_and_processor_warm_calls(setup, image) -> None:
    config, params = setup
    model = SamHQModel(config, params)
    assert on_device(model.params)
    processor = SamHQProcessor(SamHQImageProcessor(longest_edge=config.img_size))

    def calls() -> None:
        for kind in ("np", "jax"):
            inputs = processor(image, input_points=[[[20.0, 10.0]]], return_tensors=kind)
            outputs = model(**inputs, multimask_output=False)
            emb, early = model.get_image_embeddings(inputs["pixel_values"])
            model(image_embeddings=emb, intermediate_embeddings=early, input_boxes=[[[1.0, 2, 30, 30]]])
            processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])

    warm(calls)


def test_warm_train_step_moves_nothing(setup) -> None:
    config, params = setup
    trainable, frozen = partition(params, "hq")
    tx = make_optimizer(1e-3, drop_step=100)
    mesh = make_mesh()
    state, frozen_dev = replicate(init_state(trainable, tx), mesh), replicate(frozen, mesh)
    step = jit_train_step(make_train_step(config, tx, seed=0), mesh)
    batch = global_batch(synthetic_batch(config, 2, seed=0), mesh)
    state, _ = step(state, frozen_dev, batch)
    with jax.transfer_guard("disallow"):
        state, metrics = step(state, frozen_dev, global_batch(synthetic_batch(config, 2, seed=1), mesh))
        loss = jax.device_get(metrics["loss"])
    assert np.isfinite(loss)


def test_warm_evaluation_step_moves_nothing(setup) -> None:
    config, params = setup
    forward = compiled_forward(config)
    placed = jax.device_put(params)  # what evaluate_pairs does once per call, for every batch
    s = config.img_size
    rng = np.random.default_rng(0)

    def call() -> np.ndarray:
        images = rng.normal(size=(2, s, s, 3)).astype(np.float32)
        boxes = np.array([[[4.0, 6, 60, 50]], [[10, 10, 100, 120]]], np.float32)
        return jax.device_get(forward(placed, placed, *jax.device_put((images, boxes))))

    assert np.isfinite(warm(call)).all()
