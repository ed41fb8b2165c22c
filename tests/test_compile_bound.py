"""Bounded compilation (issue 18, item 3): a folder of images of many sizes compiles a few programs,
not one per size, and the masks stay what the per-size program (and PyTorch) gives, to the bit.

The post-processing takes the image size as data (:func:`samhq_jax.transforms.output_taps`) at
shapes padded to :func:`~samhq_jax.transforms.bucket_side` of each side, so its programs are one per
padded size (and prompt bucket): every image up to 768 px a side falls in one of 4 padded sizes.
Compilations are counted with ``jax.monitoring``'s backend-compile events (every XLA compile of the
process, eager operations included) and with the jitted functions' cache sizes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samhq_jax import amg_ops
from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.config import ModelConfig
from samhq_jax.predictor import SamHQPredictor, full_masks
from samhq_jax.sam_hq import init_params
from samhq_jax.transforms import (
    MIN_SIDE,
    SIDE_STEP,
    bucket_side,
    output_taps,
    postprocess_masks,
    preprocess_shape,
    upscale_padded,
)

CONFIG = ModelConfig.preset("tiny_b")
# Ten distinct sizes between 50 and 700 px, portrait and landscape; padded, they fall in 4 sizes.
SIZES = [(50, 70), (70, 50), (120, 333), (333, 120), (480, 640), (640, 480), (700, 525), (525, 700)]
SIZES += [(512, 513), (700, 700)]
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles() -> Iterator[list[int]]:
    """Count every XLA backend compile of the process inside the block: ``[n]``."""
    count = [0]

    def listen(event: str, duration: float, **kwargs: object) -> None:
        count[0] += event == BACKEND_COMPILE

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def padded(size: tuple[int, int]) -> tuple[int, int]:
    return bucket_side(size[0]), bucket_side(size[1])


@pytest.fixture(scope="module")
def predictor() -> SamHQPredictor:
    return SamHQPredictor(CONFIG, init_params(CONFIG, jax.random.PRNGKey(0)))


def test_bucket_side_bounds_padding_and_bucket_count() -> None:
    sides = np.arange(1, 10_001)
    buckets = np.array([bucket_side(int(n)) for n in sides])
    assert (buckets >= sides).all() and (buckets >= MIN_SIDE).all() and (np.diff(buckets) >= 0).all()
    assert (buckets % SIDE_STEP == 0).all() and SIDE_STEP % amg_ops.COUNT_CHUNK == 0
    # padding: up to MIN_SIDE, then at most 255 px (up to 2048) or 25 %
    assert (buckets - sides <= np.maximum(np.maximum(MIN_SIDE - sides, SIDE_STEP - 1), sides // 4)).all()
    assert len(set(buckets[sides <= 768])) == 2 and len(set(buckets[sides <= 2048])) == 7
    assert len(set(buckets[sides <= 8192])) == 15
    assert bucket_side(512) == 512 and bucket_side(513) == 768 and bucket_side(2049) == 2560
    with pytest.raises(ValueError, match="at least 1"):
        bucket_side(0)


def official_postprocess(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
) -> np.ndarray:
    """The official ``Sam.postprocess_masks`` (PyTorch, CPU)."""
    x = F.interpolate(torch.from_numpy(low_res), (1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False).numpy()


@pytest.mark.parametrize(
    "size",
    [(1, 700), (700, 1), (1, 1), (50, 70), (333, 500), (512, 512), (512, 768), (513, 511), (768, 769), (2049, 3)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
def test_padded_upscaling_equals_the_per_size_program_and_pytorch(size: tuple[int, int]) -> None:
    """Extremes (one pixel wide or tall), sizes on and just past a bucket boundary: the padded
    program's ``[..., :H, :W]`` is the per-size program's output bit for bit, and PyTorch's as the
    other tests hold it (1e-5 of the largest logit: strong downscales such as 731 x 1024 -> 50 x 70
    differ from PyTorch's kernel in the last bit or two, as the per-size program always has); the
    padding is zero (no mask pixel)."""
    h, w = size
    rng = np.random.default_rng(h * 10_000 + w)
    low = (rng.standard_normal((2, 3, 256, 256)) * 8).astype(np.float32)
    input_size = preprocess_shape(h, w, 1024)
    rows, columns = output_taps(input_size, size)
    assert rows.index.shape == (2, bucket_side(h)) and columns.index.shape == (2, bucket_side(w))
    full = np.asarray(jax.jit(upscale_padded, static_argnums=3)(jnp.asarray(low), rows, columns, 1024))
    assert full.shape == (2, 3, *padded(size))
    ours = full[..., :h, :w]
    np.testing.assert_array_equal(ours, np.asarray(postprocess_masks(jnp.asarray(low), input_size, size, 1024)))
    ref = official_postprocess(low, input_size, size)
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    if min(size) >= 333 or max(size) >= 700:  # no strong downscale: PyTorch's bits too
        np.testing.assert_array_equal(ours, ref)
    assert (full[..., h:, :] == 0).all() and (full[..., :, w:] == 0).all()
    masks = np.asarray(full_masks(jnp.asarray(low), rows, columns, 1024, False))
    np.testing.assert_array_equal(masks[..., :h, :w], ours > 0)
    assert not masks[..., h:, :].any() and not masks[..., :, w:].any()


def test_predictor_compiles_per_padded_size_not_per_image_size(predictor: SamHQPredictor) -> None:
    """``set_image`` + ``predict`` (one box) + ``predict_batch`` (three boxes, bucket 4) over ten
    sizes: after one warm-up image (the encoder, the decoder at both prompt buckets), the only
    compiles are ``full_masks``', at most one per padded size and prompt bucket: at most 2 x 4 = 8,
    where one program per size made 20. The masks equal the per-size program's."""
    rng = np.random.default_rng(0)
    touched = {padded(s) for s in SIZES}
    assert len(touched) == 4
    warm_up = (300, 400)  # padded (512, 512), one of the four
    predictor.set_image(rng.integers(0, 256, (*warm_up, 3), np.uint8))
    predictor.predict(box=np.array([10, 10, 200, 150.0]))
    predictor.predict_batch(boxes=np.array([[10, 10, 200, 150.0]] * 3))
    cache_before = full_masks._cache_size()
    outputs = []
    with count_compiles() as compiles:
        for h, w in SIZES:
            predictor.set_image(rng.integers(0, 256, (h, w, 3), np.uint8))
            one = predictor.predict(box=np.array([0, 0, w / 2, h / 2]), return_logits=False)
            boxes = np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w - 1, h - 1], [0, 0, w, h]])
            batch = predictor.predict_batch(boxes=boxes)
            assert one[0].shape == (1, h, w) and batch[0].shape == (3, 1, h, w) and batch[0].flags.c_contiguous
            outputs.append(((h, w), predictor.input_size, one, batch))
    new_programs = full_masks._cache_size() - cache_before
    assert compiles[0] == new_programs <= 2 * (len(touched) - 1)  # the warm-up's padded size is compiled
    # The masks are the per-size program's (which compiles per size: checked after the count).
    for size, input_size, one, batch in outputs:
        for masks, _, low_res in (one, batch):
            ref = np.asarray(postprocess_masks(jnp.asarray(low_res), input_size, size, CONFIG.img_size)) > 0
            np.testing.assert_array_equal(masks, ref)


def test_mask_generator_compiles_per_padded_size_not_per_image_size(predictor: SamHQPredictor) -> None:
    """``generate`` with a 4 x 4 grid over the ten sizes (every filter on, thresholds 0 so the device
    filters run for every image): the three filter programs compile once per padded size (64
    masks a batch) and NMS once per power-of-two box count, where one program per size made 30."""
    generator = SamHQAutomaticMaskGenerator(
        predictor, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, progress=False
    )
    rng = np.random.default_rng(1)
    generator.generate(rng.integers(0, 256, (300, 400, 3), np.uint8))  # warm-up, padded (512, 512)
    programs = (amg_ops._upscale_columns, amg_ops._threshold_codes, amg_ops._filter_codes, amg_ops._greedy_nms)
    before = [p._cache_size() for p in programs]
    with count_compiles() as compiles:
        for h, w in SIZES:
            records = generator.generate(rng.integers(0, 256, (h, w, 3), np.uint8))
            assert all(r["segmentation"].shape == (h, w) for r in records)
    grown = [p._cache_size() - b for p, b in zip(programs, before, strict=True)]
    padded_widths = {padded(s)[1] for s in SIZES} - {512}
    assert grown[0] <= len(padded_widths) <= 1  # columns: one per padded width
    assert grown[1] <= 3 and grown[2] <= 3  # rows / filters: one per padded size (4, less the warm-up's)
    assert grown[3] <= 7  # NMS: box counts 1 .. 48 in power-of-two buckets
    assert compiles[0] == sum(grown) <= 14


def test_mask_generator_masks_are_unchanged_by_padding(predictor: SamHQPredictor) -> None:
    """The padded filters give the masks, boxes and scores the unpadded arithmetic gives: each kept
    mask is the per-size upscaled logits > 0, inside its box, and its stability score is recomputed
    from those logits."""
    generator = SamHQAutomaticMaskGenerator(
        predictor,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        progress=False,
    )
    image = np.random.default_rng(2).integers(0, 256, (333, 120, 3), np.uint8)
    records = generator.generate(image)
    assert records
    predictor.set_image(image)
    grid = generator.point_grids[0] * np.array([120, 333])
    points = predictor.transform.apply_coords(grid, (333, 120)).astype(np.float32)
    low_res, _ = predictor.decode_points(points, 16, True, False)
    logits = np.asarray(postprocess_masks(low_res[0], predictor.input_size, (333, 120), CONFIG.img_size))
    per_point = logits.shape[1]  # masks per point
    for r in records:
        i = int(np.argmin(np.abs(grid - np.array(r["point_coords"][0])).sum(1)))
        candidates = logits[i]
        match = [k for k in range(per_point) if (r["segmentation"] == (candidates[k] > 0)).all()]
        assert match, "a kept mask is not one of its point's upscaled masks"
        x = candidates[match[0]]
        assert np.float32((x > 1).sum()) / np.float32((x > -1).sum()) == np.float32(r["stability_score"])
        ys, xs = np.nonzero(r["segmentation"])
        box = [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()] if len(xs) else [0, 0, 0, 0]
        assert r["bbox"] == box
