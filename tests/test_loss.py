"""The training loss against a PyTorch transcription of the official ``train/utils/loss_mask.py``.

The official functions below are copied (comments and asserts trimmed); their ``torch.rand`` calls
are fed the same uniform draws our functions take from their key, so both select the same points
(up to the order of candidates whose uncertainties tie in float32).
"""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.conftest import assert_close
from train.loss import (
    IMPORTANCE_SAMPLE_RATIO,
    NUM_POINTS,
    calculate_uncertainty,
    dice_loss,
    get_uncertain_point_coords_with_randomness,
    loss_masks,
    point_sample,
    sigmoid_ce_loss,
)

# Largest error relative to the reference's largest magnitude. PyTorch's CPU kernel fuses the
# bilinear sum into FMAs; we round each product, so results differ by an ulp or so.
RTOL = 1e-6


# --- official loss_mask.py (SysCV/sam-hq), transcribed ------------------------------------------
def ref_point_sample(input, point_coords, **kwargs):
    add_dim = False
    if point_coords.dim() == 3:
        add_dim = True
        point_coords = point_coords.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * point_coords - 1.0, **kwargs)
    if add_dim:
        output = output.squeeze(3)
    return output


def ref_get_uncertain_point_coords_with_randomness(
    coarse_logits, uncertainty_func, num_points, oversample_ratio, importance_sample_ratio
):
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    point_coords = torch.rand(num_boxes, num_sampled, 2, device=coarse_logits.device)
    point_logits = ref_point_sample(coarse_logits, point_coords, align_corners=False)
    point_uncertainties = uncertainty_func(point_logits)
    num_uncertain_points = int(importance_sample_ratio * num_points)
    num_random_points = num_points - num_uncertain_points
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain_points, dim=1)[1]
    shift = num_sampled * torch.arange(num_boxes, dtype=torch.long, device=coarse_logits.device)
    idx += shift[:, None]
    point_coords = point_coords.view(-1, 2)[idx.view(-1), :].view(num_boxes, num_uncertain_points, 2)
    if num_random_points > 0:
        point_coords = torch.cat(
            [point_coords, torch.rand(num_boxes, num_random_points, 2, device=coarse_logits.device)], dim=1
        )
    return point_coords


def ref_dice_loss(inputs, targets, num_masks):
    inputs = inputs.sigmoid()
    inputs = inputs.flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def ref_sigmoid_ce_loss(inputs, targets, num_masks):
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def ref_calculate_uncertainty(logits):
    return -(torch.abs(logits.clone()))


def ref_loss_masks(src_masks, target_masks, num_masks, oversample_ratio=3.0):
    with torch.no_grad():
        point_coords = ref_get_uncertain_point_coords_with_randomness(
            src_masks, lambda logits: ref_calculate_uncertainty(logits), 112 * 112, oversample_ratio, 0.75
        )
        point_labels = ref_point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
    point_logits = ref_point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
    loss_mask = ref_sigmoid_ce_loss(point_logits, point_labels, num_masks)
    loss_dice = ref_dice_loss(point_logits, point_labels, num_masks)
    return loss_mask, loss_dice


# --- fixtures -------------------------------------------------------------------------------------
def logits_and_targets(batch: int, low: int, high: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random logits ``(B, 1, low, low)`` in about [-12, 12] and soft targets ``(B, 1, high, high)``."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(size=(batch, 1, low // 8, low // 8)).astype(np.float32))
    logits = 6 * F.interpolate(coarse, size=(low, low), mode="bilinear") + rng.normal(size=(batch, 1, low, low))
    shifted = coarse + torch.from_numpy(0.3 * rng.normal(size=coarse.shape).astype(np.float32))
    target = F.interpolate(shifted, size=(high, high), mode="bilinear") > 0
    target = F.avg_pool2d(target.float(), 3, stride=1, padding=1)  # soft edges, as after the official LSJ
    return logits.numpy().astype(np.float32), target.numpy().astype(np.float32)


def official_draws(key: jax.Array, batch: int, num_points: int, oversample_ratio: float) -> list[torch.Tensor]:
    """The two uniform draws our point selection makes from ``key``, as documented, for ``torch.rand``."""
    num_random = num_points - int(IMPORTANCE_SAMPLE_RATIO * num_points)
    key_candidates, key_random = jax.random.split(key)
    shapes = [(batch, int(num_points * oversample_ratio), 2), (batch, num_random, 2)]
    return [
        torch.from_numpy(np.array(jax.random.uniform(k, s)))
        for k, s in zip((key_candidates, key_random), shapes, strict=True)
    ]


def select_points(logits: jax.Array, key: jax.Array) -> jax.Array:
    """Our selection with the official settings, compiled afresh per call (a test may mock its draws)."""
    return jax.jit(
        lambda x, k: get_uncertain_point_coords_with_randomness(
            x, calculate_uncertainty, NUM_POINTS, 3.0, IMPORTANCE_SAMPLE_RATIO, key=k
        )
    )(logits, key)


# --- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "grid"), [((256, 256), False), ((1024, 1024), False), ((37, 53), True)])
def test_point_sample_matches_grid_sample(size: tuple[int, int], grid: bool) -> None:
    rng = np.random.default_rng(1)
    x = (4 * rng.normal(size=(2, 3, *size))).astype(np.float32)
    coords = rng.uniform(size=(2, 5000, 2)).astype(np.float32)
    # Exact corners and edges, and points just outside (zero padding beyond the border pixels).
    coords[:, :8] = [[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 0], [1, 0.5], [-0.001, 0.5], [0.5, 1.002]]
    if grid:
        coords = coords.reshape(2, 50, 100, 2)
    ref = ref_point_sample(torch.from_numpy(x), torch.from_numpy(coords), align_corners=False).numpy()
    ours = np.asarray(jax.jit(point_sample)(jnp.asarray(x), jnp.asarray(coords)))
    assert ours.shape == ref.shape == (2, 3, *coords.shape[1:-1])
    # Other sizes: PyTorch's kernel may fuse (g + 1) * W / 2 - 0.5 into an FMA (it depends on the code
    # path), an ulp of the source coordinate; for 256 and 1024, the loss's sizes, that product is exact.
    assert_close(ours, ref, f"point_sample {size}", rtol=RTOL if size[0] in (256, 1024) else 3e-6)


def test_point_sample_target_of_other_size() -> None:
    logits, target = logits_and_targets(2, 64, 256)
    coords = np.random.default_rng(2).uniform(size=(2, 3000, 2)).astype(np.float32)
    coords[:, :4] = [[0, 0], [1, 1], [0, 1], [1, 0]]
    for what, x in (("logits", logits), ("target", target)):
        ref = ref_point_sample(torch.from_numpy(x), torch.from_numpy(coords), align_corners=False).numpy()
        assert_close(np.asarray(jax.jit(point_sample)(jnp.asarray(x), jnp.asarray(coords))), ref, what, rtol=RTOL)


def test_sigmoid_ce_and_dice_match_official() -> None:
    rng = np.random.default_rng(3)
    inputs = (8 * rng.normal(size=(3, 2000))).astype(np.float32)
    targets = np.clip(rng.uniform(-0.5, 1.5, size=(3, 2000)), 0, 1).astype(np.float32)  # hard and soft
    ti, tt = torch.from_numpy(inputs), torch.from_numpy(targets)
    ji, jt = jnp.asarray(inputs), jnp.asarray(targets)
    assert_close(np.asarray(sigmoid_ce_loss(ji, jt, 3)), ref_sigmoid_ce_loss(ti, tt, 3).numpy(), "bce", rtol=RTOL)
    assert_close(np.asarray(dice_loss(ji, jt, 2.5)), ref_dice_loss(ti, tt, 2.5).numpy(), "dice", rtol=RTOL)


def test_uncertain_point_selection_matches_official_exactly_on_pixel_centres() -> None:
    """Candidates on pixel centres read pixels exactly in both, so the selection must be identical."""
    rng = np.random.default_rng(4)
    # Distinct |logit| everywhere (k + 1/4 or k - 1/4 over 4096), so no two pixels tie.
    logits = ((rng.permutation(2 * 256 * 256) - 256 * 256 + 0.25) / 4096).astype(np.float32).reshape(2, 1, 256, 256)
    candidates = ((rng.integers(0, 256, size=(2, 3 * NUM_POINTS, 2)) + 0.5) / 256).astype(np.float32)
    fresh = rng.uniform(size=(2, NUM_POINTS - int(IMPORTANCE_SAMPLE_RATIO * NUM_POINTS), 2)).astype(np.float32)
    with mock.patch.object(jax.random, "uniform", side_effect=[jnp.asarray(candidates), jnp.asarray(fresh)]):
        ours = select_points(jnp.asarray(logits), jax.random.key(0))
    with mock.patch("torch.rand", side_effect=[torch.from_numpy(candidates), torch.from_numpy(fresh)]):
        ref = ref_get_uncertain_point_coords_with_randomness(
            torch.from_numpy(logits), ref_calculate_uncertainty, NUM_POINTS, 3.0, IMPORTANCE_SAMPLE_RATIO
        ).numpy()
    assert ours.shape == ref.shape == (2, NUM_POINTS, 2)
    # Same points in the same order (most uncertain first), not merely the same set.
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_uncertain_point_selection_matches_official_up_to_float_ties() -> None:
    """Uniform candidates from the key: torch's FMA-fused interpolation differs from ours by an ulp, which
    may swap two candidates whose uncertainties are equal to that precision; nothing else may differ."""
    logits, _ = logits_and_targets(2, 256, 256)
    key = jax.random.key(4)
    ours = select_points(jnp.asarray(logits), key)
    with mock.patch("torch.rand", side_effect=official_draws(key, 2, NUM_POINTS, 3.0)):
        ref = ref_get_uncertain_point_coords_with_randomness(
            torch.from_numpy(logits), ref_calculate_uncertainty, NUM_POINTS, 3.0, IMPORTANCE_SAMPLE_RATIO
        )
    ours = torch.from_numpy(np.array(ours))
    assert ours.shape == ref.shape == (2, NUM_POINTS, 2)
    differ = (ours != ref).any(-1)
    assert differ.float().mean() < 1e-3, f"{int(differ.sum())} of {differ.numel()} points differ"
    # Position by position, torch's own uncertainty at our point equals the one at its point.
    torch_uncertainty = [ref_calculate_uncertainty(ref_point_sample(torch.from_numpy(logits), c)) for c in (ours, ref)]
    np.testing.assert_allclose(*[u.numpy() for u in torch_uncertainty], rtol=0, atol=1e-6)


@jax.jit
def losses_and_grad(
    src: jax.Array, target: jax.Array, num_masks: float, key: jax.Array, valid: jax.Array | None
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """``((loss_mask, loss_dice), d (loss_mask + loss_dice) / d src)`` in one compiled call."""

    def total(logits: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        parts = loss_masks(logits, target, num_masks, key=key, valid=valid)
        return parts[0] + parts[1], parts

    (_, parts), grad = jax.value_and_grad(total, has_aux=True)(src)
    return parts, grad


def test_loss_masks_matches_official() -> None:
    logits, target = logits_and_targets(3, 256, 1024, seed=5)
    key = jax.random.key(5)
    ours, grad = losses_and_grad(jnp.asarray(logits), jnp.asarray(target), 3.0, key, None)
    src = torch.from_numpy(logits).requires_grad_()
    with mock.patch("torch.rand", side_effect=official_draws(key, 3, NUM_POINTS, 3.0)):
        ref = ref_loss_masks(src, torch.from_numpy(target), 3)
    for name, a, b in zip(("loss_mask", "loss_dice"), ours, ref, strict=True):
        assert_close(np.asarray(a), b.detach().numpy(), name, rtol=RTOL)
    # The gradient w.r.t. the logits too (the only thing training uses).
    sum(ref).backward()
    assert_close(np.asarray(grad), src.grad.numpy(), "d loss / d logits", rtol=RTOL)


def test_gradient_is_finite_with_saturated_logits() -> None:
    logits, target = logits_and_targets(3, 64, 256, seed=6)
    logits[0, 0, :8] = 1e4  # saturated sigmoid: BCE and Dice must stay finite
    logits[1, 0, :8] = -1e4
    parts, grad = losses_and_grad(jnp.asarray(logits), jnp.asarray(target), 3.0, jax.random.key(0), jnp.ones(3, bool))
    assert np.isfinite(np.array(parts)).all() and np.isfinite(np.asarray(grad)).all()
    assert float(jnp.abs(grad).max()) > 0


def test_valid_mask_excludes_examples() -> None:
    logits, target = logits_and_targets(3, 64, 256, seed=7)
    key = jax.random.key(7)

    def run(src: np.ndarray, tgt: np.ndarray, valid: list[bool]) -> tuple[np.ndarray, np.ndarray]:
        parts, grad = losses_and_grad(jnp.asarray(src), jnp.asarray(tgt), 2.0, key, jnp.array(valid))
        return np.array(parts), np.asarray(grad)

    # Each example's points depend only on its own logits, so the masked sums split the full one.
    kept, _ = run(logits, target, [True, False, True])
    dropped, _ = run(logits, target, [False, True, False])
    everything, _ = run(logits, target, [True, True, True])
    np.testing.assert_allclose(kept + dropped, everything, rtol=1e-6)
    assert (dropped > 0).all()
    default, _ = losses_and_grad(jnp.asarray(logits), jnp.asarray(target), 2.0, key, None)
    np.testing.assert_allclose(np.array(default), everything, rtol=1e-6)  # valid=None: all examples count
    # The dropped example may hold garbage (a corrupt file's stand-in): same loss, finite and zero gradient.
    logits[1], target[1] = np.nan, np.inf
    garbage, grad = run(logits, target, [True, False, True])
    np.testing.assert_array_equal(garbage, kept)
    assert np.isfinite(grad).all() and (grad[1] == 0).all() and np.abs(grad[[0, 2]]).max() > 0
