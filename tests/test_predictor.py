"""End-to-end parity of ``SamHQPredictor`` with the official ``SamPredictor`` on real photos of odd
sizes (landscape > 2000 px, portrait, tiny), fully randomised weights; batching and input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.parity.samples import IMAGES_DIR
from eval.parity.stages import mask_agreement
from samhq_jax.errors import InputError
from samhq_jax.predictor import SamHQPredictor
from samhq_jax.transforms import preprocess_shape, resize_longest_side
from tests.conftest import MASK_AGREEMENT, assert_close, official_model_and_params

PRESET = "tiny_h"


def _photos() -> dict[str, np.ndarray]:
    dog = np.asarray(Image.open(IMAGES_DIR / "dog.jpg").convert("RGB"))  # 1365 x 2048, landscape
    other = np.asarray(Image.open(sorted(Path(IMAGES_DIR).glob("*.png"))[0]).convert("RGB"))
    return {
        "landscape_2048": dog,
        "portrait": np.ascontiguousarray(dog[:, 700:1301]),  # 1365 x 601
        "tiny_37x23": np.asarray(Image.fromarray(other).resize((23, 37), Image.BILINEAR)),
    }


@pytest.fixture(scope="module")
def predictors() -> tuple:
    from segment_anything_hq import SamPredictor

    model, _, config, params = official_model_and_params(PRESET)
    return SamPredictor(model), SamHQPredictor(config, params)


def _prompts(h: int, w: int) -> dict[str, dict]:
    rng = np.random.default_rng(h * 31 + w)
    pts = np.stack([rng.uniform(0, w - 1, 3), rng.uniform(0, h - 1, 3)], -1)
    x0, x1 = sorted(rng.uniform(0, w - 1, 2))
    y0, y1 = sorted(rng.uniform(0, h - 1, 2))
    box = np.array([x0, y0, x1, y1])
    return {
        "points": dict(point_coords=pts, point_labels=np.array([1, 0, 1])),
        "box": dict(box=box),
        "point+box": dict(point_coords=pts[:1], point_labels=np.array([1]), box=box),
    }


@pytest.mark.parametrize("photo", ["landscape_2048", "portrait", "tiny_37x23"])
def test_matches_official_predictor(predictors: tuple, photo: str) -> None:
    ref, ours = predictors
    image = _photos()[photo]
    ref.set_image(image)
    ours.set_image(image)
    assert ours.input_size == tuple(ref.input_size) and ours.original_size == tuple(ref.original_size)
    h, w = image.shape[:2]
    for name, prompt in _prompts(h, w).items():
        for multimask in (False, True):
            for hq_only in (False, True):
                what = f"{photo} {name} multimask={multimask} hq_token_only={hq_only}"
                r = ref.predict(**prompt, multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
                o = ours.predict(**prompt, multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
                assert o[0].shape == r[0].shape == (1, h, w) and o[2].shape == r[2].shape
                assert_close(o[2], r[2], f"{what}: low-res logits")
                assert_close(o[1], r[1], f"{what}: iou")
                assert mask_agreement(o[0], r[0]) >= MASK_AGREEMENT, what
        # Mask input: feed the previous low-res logits back, as the official notebooks do.
        previous = r[2]
        for multimask in (False, True):
            for hq_only in (False, True):
                what = f"{photo} {name} + mask_input multimask={multimask} hq_token_only={hq_only}"
                r = ref.predict(**prompt, mask_input=previous, multimask_output=multimask, hq_token_only=hq_only)
                o = ours.predict(**prompt, mask_input=previous, multimask_output=multimask, hq_token_only=hq_only)
                assert o[0].dtype == np.bool_ and o[0].shape == (1, h, w)
                assert_close(o[2], r[2], f"{what}: low-res logits")
                assert_close(o[1], r[1], f"{what}: iou")
                assert mask_agreement(o[0], r[0]) >= MASK_AGREEMENT, what


def test_resize_is_bit_identical_to_official(predictors: tuple) -> None:
    from segment_anything_hq.utils.transforms import ResizeLongestSide

    for image in _photos().values():
        ref = ResizeLongestSide(1024).apply_image(image)
        ours = resize_longest_side(image, 1024)
        assert ours.shape == ref.shape and np.array_equal(ours, ref)
    assert preprocess_shape(30, 400, 1024) == (77, 1024)  # hand-derived: 30 * 1024 / 400 = 76.8


def test_batched_equals_one_prompt_at_a_time(predictors: tuple) -> None:
    _, ours = predictors
    image = _photos()["portrait"]
    ours.set_image(image)
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    boxes = np.sort(rng.uniform(0, [w, h, w, h], (5, 4)).reshape(5, 2, 2), axis=1).reshape(5, 4)
    masks, iou, low = ours.predict_batch(boxes=boxes, multimask_output=True)
    assert masks.shape == (5, 1, h, w) and iou.shape == (5, 1) and low.shape[:2] == (5, 1)
    for i in range(5):
        m1, i1, l1 = ours.predict(box=boxes[i], multimask_output=True)
        np.testing.assert_allclose(low[i], l1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(iou[i], i1, rtol=1e-5, atol=1e-6)
        assert mask_agreement(masks[i], m1) >= MASK_AGREEMENT


def test_input_errors(predictors: tuple) -> None:
    _, ours = predictors
    ours.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        ours.predict(box=np.array([0, 0, 5, 5]))
    with pytest.raises(ValueError, match="uint8"):
        ours.set_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        ours.set_image(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match="image_format"):
        ours.set_image(np.zeros((10, 10, 3), np.uint8), image_format="HSV")
    ours.set_image(np.zeros((20, 30, 4), np.uint8))  # RGBA is converted
    ours.set_image(np.zeros((20, 30), np.uint8))  # grayscale is converted
    with pytest.raises(ValueError, match=r"point_coords must have shape \(N, 2\)"):
        ours.predict(point_coords=np.zeros((3,)), point_labels=np.ones(3))
    with pytest.raises(InputError, match=r"point_labels\[1\] = 2: a point label must be 1 \(foreground\)"):
        ours.predict(point_coords=np.zeros((2, 2)), point_labels=np.array([1, 2]))
    with pytest.raises(ValueError, match="point_labels must have shape"):
        ours.predict(point_coords=np.zeros((2, 2)), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="together"):
        ours.predict(point_coords=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="x1 >= x0"):
        ours.predict(box=np.array([10, 0, 5, 5]))
    with pytest.raises(ValueError, match="mask_input must have shape"):
        ours.predict(box=np.array([0, 0, 5, 5]), mask_input=np.zeros((1, 64, 64)))
    with pytest.raises(InputError, match=r"box = \[0, 0, nan, 5\]: every number must be finite"):
        ours.predict(box=np.array([0, 0, np.nan, 5]))
    # Every entry point names the bad prompt and its value (issue 19): NaN / inf, unknown labels, flipped boxes.
    boxes = np.array([[0, 0, 5, 5], [1, 2, np.inf, 4]])
    with pytest.raises(InputError, match=r"boxes\[1\] = \[1, 2, inf, 4\]: every number must be finite"):
        ours.predict_batch(boxes=boxes)
    with pytest.raises(InputError, match=r"boxes\[1\] = \[9, 2, 3, 4\]: a box is x0, y0, x1, y1 with x1 >= x0"):
        ours.predict_torch(None, None, boxes=np.array([[0, 0, 5, 5], [9, 2, 3, 4]]))
    coords, labels = np.zeros((2, 3, 2)), np.ones((2, 3))
    coords[1, 2, 0] = np.nan
    with pytest.raises(InputError, match=r"point_coords\[1, 2\] = \[nan, 0\]"):
        ours.predict_batch(point_coords=coords, point_labels=labels)
    labels[0, 1] = 7
    with pytest.raises(InputError, match=r"point_labels\[0, 1\] = 7: a point label must be"):
        ours.predict_batch(point_coords=np.zeros((2, 3, 2)), point_labels=labels)
    with pytest.raises(InputError, match=r"point_labels\[0\] = nan"):
        ours.predict(point_coords=np.zeros((1, 2)), point_labels=np.array([np.nan]))
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(InputError, match=r"prompts\[1\]: boxes\[0\] = \[3, 1, 2, 4\]: a box is"):
        ours.predict_images([image, image], [{"boxes": np.array([[0, 0, 4, 4]])}, {"boxes": np.array([[3, 1, 2, 4]])}])
    with pytest.raises(ValueError, match="at least one prompt"):
        ours.predict()
    # The official argument shapes: one box as (4,), (1, 4) (the official demo's) or any 4 numbers,
    # labels as floats (the demo's np.ones(N)); what the official fails on or misreads is refused.
    box = np.array([2, 3, 20, 15])
    low = ours.predict(box=box)[2]
    for shape in ((1, 4), (2, 2), (1, 1, 4)):
        np.testing.assert_array_equal(ours.predict(box=box.reshape(shape))[2], low)
    points = np.array([[3, 4], [10, 12], [25, 5]])
    np.testing.assert_array_equal(
        ours.predict(point_coords=points, point_labels=np.ones(3))[2],
        ours.predict(point_coords=points, point_labels=np.array([1, 1, 1]))[2],
    )
    with pytest.raises(ValueError, match="one x0 y0 x1 y1 box"):  # the official returns box 0's mask
        ours.predict(box=np.stack([box, box]))
    with pytest.raises(ValueError, match=r"point_coords must have shape \(N, 2\)"):
        ours.predict(point_coords=points[None], point_labels=np.ones((1, 3)))
    for labels in (np.ones((1, 3)), np.ones((3, 1))):
        with pytest.raises(ValueError, match="point_labels must have shape"):
            ours.predict(point_coords=points, point_labels=labels)
    for mask in (np.zeros((40, 40)), np.zeros((1, 1, 40, 40))):
        with pytest.raises(ValueError, match="mask_input must have shape"):
            ours.predict(box=box, mask_input=mask)


def test_several_images_with_different_prompt_counts(predictors: tuple) -> None:
    _, ours = predictors
    photos = _photos()
    images = [photos["landscape_2048"], photos["tiny_37x23"], photos["portrait"]]
    rng = np.random.default_rng(3)
    prompts = []
    for image, p in zip(images, (3, 1, 2), strict=True):
        h, w = image.shape[:2]
        prompts.append(
            dict(
                point_coords=rng.uniform(0, [w, h], (p, 2, 2)),
                point_labels=np.tile(np.array([1, 0]), (p, 1)),
                boxes=np.sort(rng.uniform(0, [w, h, w, h], (p, 4)).reshape(p, 2, 2), axis=1).reshape(p, 4),
            )
        )
    results = ours.predict_images(images, prompts, multimask_output=False, hq_token_only=True)
    for image, pr, (masks, iou, low) in zip(images, prompts, results, strict=True):
        ours.set_image(image)
        m1, i1, l1 = ours.predict_batch(**pr, multimask_output=False, hq_token_only=True)
        assert masks.shape == m1.shape == (len(iou), 1, *image.shape[:2])
        np.testing.assert_allclose(low, l1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(iou, i1, rtol=1e-5, atol=1e-6)
        assert mask_agreement(masks, m1) >= MASK_AGREEMENT
    with pytest.raises(ValueError, match="same prompt kinds"):
        ours.predict_images(images[:2], [dict(boxes=np.array([[0, 0, 5, 5]])), prompts[1]])
    with pytest.raises(ValueError, match="same number of points"):
        ours.predict_images(
            images[:2],
            [
                dict(point_coords=np.zeros((1, 1, 2)), point_labels=np.ones((1, 1))),
                dict(point_coords=np.zeros((1, 2, 2)), point_labels=np.ones((1, 2))),
            ],
        )


@pytest.mark.slow  # real vit_b runs once in CI: tests/test_parity_official.py::test_vit_b_checkpoint_cli
def test_vit_b_real_size_predictor_matches_official() -> None:
    """The full 1024-pixel path (resize, pad, encoder, decoder, upsampling) at real size."""
    from segment_anything_hq import SamPredictor

    model, _, config, params = official_model_and_params("vit_b")
    ref, ours = SamPredictor(model), SamHQPredictor(config, params)
    image = _photos()["landscape_2048"]
    ref.set_image(image)
    ours.set_image(image)
    h, w = image.shape[:2]
    prompts = _prompts(h, w)
    for name, multimask, hq_only in [("box", False, False), ("points", True, True)]:
        r = ref.predict(**prompts[name], multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
        o = ours.predict(**prompts[name], multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
        err = assert_close(o[2], r[2], f"vit_b {name}: low-res logits")
        assert_close(o[1], r[1], f"vit_b {name}: iou")
        agree = mask_agreement(o[0], r[0])
        assert agree >= MASK_AGREEMENT
        print(f"\nvit_b predictor {name}: low-res {err:.2e}, full-res mask agreement {100 * agree:.4f}%")


def test_prompt_chunks_keep_each_prompt_in_place() -> None:
    """``in_prompt_chunks`` (the CPU decode's loop over prompt chunks) hands each prompt to the
    decode with its own image and puts its result back in its place; counts it cannot split run in
    one step."""
    import jax.numpy as jnp
    from jax import export

    from samhq_jax.predictor import chunk_steps, in_prompt_chunks

    calls = []

    def decode(
        variables: None,
        embeddings: jnp.ndarray,
        points: jnp.ndarray,
        labels: None,
        boxes: jnp.ndarray,
        masks: None,
        **flags: float,
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        calls.append(boxes.shape)
        low = (boxes.sum(-1) + embeddings[:, None] + points[..., 0, 0])[..., None, None, None] * jnp.ones((1, 2, 3))
        return low, boxes[..., :1] * flags["scale"]

    b, p = 2, 8
    rng = np.random.default_rng(0)
    boxes = jnp.asarray(rng.normal(size=(b, p, 4)), jnp.float32)
    points = jnp.asarray(rng.normal(size=(b, p, 1, 2)), jnp.float32)
    embeddings = jnp.asarray([10.0, 20.0])
    want = decode(None, embeddings, points, None, boxes, None, scale=3.0)
    # the boxes one traced step sees: a chunk of every image, or all prompts where chunk cannot split P
    for chunk, step in ((4, (b, 4, 4)), (2, (b, 2, 4)), (8, (b, p, 4)), (3, (b, p, 4))):
        calls.clear()
        got = in_prompt_chunks(decode, chunk)(None, embeddings, points, None, boxes, None, scale=3.0)
        assert calls == [step], (chunk, calls)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert in_prompt_chunks(decode, None) is decode
    (symbolic,) = export.symbolic_shape("p")  # a program exported for any prompt count: one step
    assert chunk_steps(symbolic, 4) == 1 and chunk_steps(64, 4) == 16 and chunk_steps(4, 4) == 1
