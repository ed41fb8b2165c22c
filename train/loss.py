"""SAM-HQ's training loss: PointRend-style point sampling, BCE + Dice on the sampled points.

Port of the official ``train/utils/loss_mask.py`` (SysCV/sam-hq, itself from Mask2Former), with the
same function names and argument order. Differences from PyTorch:

* Randomness comes from an explicit JAX PRNG ``key`` (last argument, keyword-only) instead of the
  global torch generator.
* ``loss_masks`` (and the two losses) take an optional ``valid`` ``(B,)`` bool mask: examples with
  ``False`` (e.g. a corrupt file replaced by a dummy) contribute exactly 0 to the loss and its gradient.
  ``num_masks`` stays the caller's choice.

Coordinates are ``(x, y)`` in ``[0, 1]``, sampled like ``F.grid_sample(input, 2 * c - 1,
align_corners=False)``: bilinear, pixel centres at ``(i + 0.5) / size``, zero padding outside.
Sampling gathers only the four neighbours of each point, so memory is ``O(B * points)``, not the
size of the target (B x 37,632 points from a ``(B, 1, 1024, 1024)`` target).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

NUM_POINTS = 112 * 112  # points per mask the official recipe trains on
IMPORTANCE_SAMPLE_RATIO = 0.75  # fraction of those picked by uncertainty, the rest uniform
OVERSAMPLE_RATIO = 3.0  # candidates drawn per point picked


def point_sample(input: jax.Array, point_coords: jax.Array) -> jax.Array:
    """Bilinear samples of ``input`` at normalised points, as ``F.grid_sample(input, 2 * c - 1)``.

    Args:
      input: ``(N, C, H, W)`` float feature maps (NCHW, as the official code).
      point_coords: ``(N, P, 2)`` or ``(N, Hg, Wg, 2)`` float ``(x, y)`` in ``[0, 1] x [0, 1]``; points
        outside read zeros beyond the border pixels (grid_sample's ``padding_mode="zeros"``).

    Returns:
      ``(N, C, P)`` or ``(N, C, Hg, Wg)`` in ``input``'s dtype. Differentiable w.r.t. ``input``
      (not w.r.t. the coordinates, which the loss never needs).
    """
    n, c, h, w = input.shape
    grid_shape = point_coords.shape[1:-1]
    coords = point_coords.reshape(n, -1, 2)
    # grid_sample's own arithmetic, ((g + 1) * size - 1) / 2 on g = 2c - 1: exact for power-of-two sizes
    # (256 logits, 1024 targets), leaving only PyTorch's FMA-fused bilinear sum, 1e-7 relative. The
    # algebraically equal c * size - 0.5 rounds differently: 1e-5 relative on a 1024 x 1024 target.
    grid = 2.0 * coords - 1.0
    ix = ((grid[..., 0] + 1.0) * w - 1.0) / 2.0  # (N, P) source x in pixels
    iy = ((grid[..., 1] + 1.0) * h - 1.0) / 2.0
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    dx = ix - x0  # distance to the west neighbour
    dy = iy - y0  # distance to the north neighbour
    flat = input.reshape(n, c, h * w)

    def corner(xi: jax.Array, yi: jax.Array) -> jax.Array:
        """``(N, C, P)`` values at integer pixels ``(xi, yi)``, zero outside the map."""
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        values = jax.vmap(lambda f, i: f[:, i])(flat, idx)
        return jnp.where(inside[:, None, :], values, 0)

    # Same weights and order of terms as PyTorch's CPU kernel: nw, ne, sw, se.
    out = (
        corner(x0, y0) * ((1 - dx) * (1 - dy))[:, None]
        + corner(x0 + 1, y0) * (dx * (1 - dy))[:, None]
        + corner(x0, y0 + 1) * ((1 - dx) * dy)[:, None]
        + corner(x0 + 1, y0 + 1) * (dx * dy)[:, None]
    )
    return out.reshape(n, c, *grid_shape).astype(input.dtype)


def calculate_uncertainty(logits: jax.Array) -> jax.Array:
    """Uncertainty ``-|logit|`` (highest where the prediction is closest to 0).

    Args:
      logits: ``(R, 1, ...)`` float class-agnostic mask logits.

    Returns:
      Same shape and dtype.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty expects class-agnostic logits (R, 1, ...), got {logits.shape}")
    return -jnp.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: jax.Array,
    uncertainty_func: Callable[[jax.Array], jax.Array],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    *,
    key: jax.Array,
) -> jax.Array:
    """PointRend point selection: the most uncertain of oversampled uniform points, plus uniform ones.

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per mask, keeps the
    ``int(importance_sample_ratio * num_points)`` with the highest ``uncertainty_func`` of their
    bilinearly sampled logits (most uncertain first, as ``torch.topk``), then appends the remaining
    points drawn uniformly. ``key`` is split in two: ``jax.random.split(key)[0]`` draws the candidates
    ``(N, num_sampled, 2)``, ``[1]`` the fresh points ``(N, num_random, 2)``, both with
    ``jax.random.uniform`` in float32. No gradient flows through the result.

    Args:
      coarse_logits: ``(N, 1, Hmask, Wmask)`` float mask logits.
      uncertainty_func: ``(N, 1, P) -> (N, 1, P)`` uncertainty of sampled logits, higher = less certain.
      num_points: points per mask ``P`` (Python int, static under jit).
      oversample_ratio: ``>= 1``; candidates are ``int(num_points * oversample_ratio)``.
      importance_sample_ratio: in ``[0, 1]``, fraction of ``P`` chosen by uncertainty.
      key: JAX PRNG key.

    Returns:
      ``(N, P, 2)`` float32 ``(x, y)`` coordinates in ``[0, 1]``.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain_points = int(importance_sample_ratio * num_points)
    num_random_points = num_points - num_uncertain_points
    key_candidates, key_random = jax.random.split(key)
    coarse_logits = jax.lax.stop_gradient(coarse_logits)
    candidates = jax.random.uniform(key_candidates, (num_boxes, num_sampled, 2), jnp.float32)
    point_uncertainties = uncertainty_func(point_sample(coarse_logits, candidates))
    # Sampled logits, not coarse ones: a point between logits -1 and 1 reads 0, the most uncertain.
    _, idx = jax.lax.top_k(point_uncertainties[:, 0, :], num_uncertain_points)
    point_coords = jnp.take_along_axis(candidates, idx[:, :, None], axis=1)
    random_coords = jax.random.uniform(key_random, (num_boxes, num_random_points, 2), jnp.float32)
    return jnp.concatenate([point_coords, random_coords], axis=1)


def _sum_over_masks(per_mask: jax.Array, num_masks: float | jax.Array, valid: jax.Array | None) -> jax.Array:
    """``sum(per_mask[valid]) / num_masks``; ``per_mask`` is ``(N,)``, ``valid`` ``(N,)`` bool or None."""
    if valid is not None:
        per_mask = jnp.where(valid, per_mask, 0.0)
    return per_mask.sum() / num_masks


def dice_loss(
    inputs: jax.Array, targets: jax.Array, num_masks: float | jax.Array, *, valid: jax.Array | None = None
) -> jax.Array:
    """Dice loss with +1 smoothing, summed over masks and divided by ``num_masks``.

    Args:
      inputs: ``(N, ...)`` float logits, one row per mask.
      targets: same shape, float in ``[0, 1]`` (soft labels allowed).
      num_masks: divisor (the official code passes the batch size).
      valid: optional ``(N,)`` bool; masks with ``False`` contribute 0.

    Returns:
      ``()`` float32: ``sum_n [1 - (2 sum(s * t) + 1) / (sum(s) + sum(t) + 1)] / num_masks``, ``s = sigmoid(inputs)``.
    """
    probs = jax.nn.sigmoid(inputs.astype(jnp.float32)).reshape(inputs.shape[0], -1)
    targets = targets.astype(jnp.float32).reshape(targets.shape[0], -1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return _sum_over_masks(1 - (numerator + 1) / (denominator + 1), num_masks, valid)


def sigmoid_ce_loss(
    inputs: jax.Array, targets: jax.Array, num_masks: float | jax.Array, *, valid: jax.Array | None = None
) -> jax.Array:
    """Binary cross-entropy with logits, averaged per mask, summed over masks, divided by ``num_masks``.

    Args:
      inputs: ``(N, ...)`` float logits, one row per mask.
      targets: same shape, float in ``[0, 1]`` (soft labels allowed).
      num_masks: divisor (the official code passes the batch size).
      valid: optional ``(N,)`` bool; masks with ``False`` contribute 0.

    Returns:
      ``()`` float32.
    """
    inputs = inputs.astype(jnp.float32).reshape(inputs.shape[0], -1)
    targets = targets.astype(jnp.float32).reshape(targets.shape[0], -1)
    # PyTorch's binary_cross_entropy_with_logits: (1 - t) * x - log_sigmoid(x), stable for large |x|.
    loss = (1 - targets) * inputs - jax.nn.log_sigmoid(inputs)
    return _sum_over_masks(loss.mean(1), num_masks, valid)


def loss_masks(
    src_masks: jax.Array,
    target_masks: jax.Array,
    num_masks: float | jax.Array,
    oversample_ratio: float = OVERSAMPLE_RATIO,
    *,
    key: jax.Array,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The official SAM-HQ mask losses on ``NUM_POINTS`` uncertainty-sampled points per mask.

    Points come from ``get_uncertain_point_coords_with_randomness`` (importance ratio 0.75) on the
    logits, without gradient; logits and targets are then sampled bilinearly at the same points.

    Args:
      src_masks: ``(B, 1, h, w)`` float mask logits (the HQ output, ``hq_token_only=True``; 256 x 256).
      target_masks: ``(B, 1, H, W)`` float in ``[0, 1]`` (label / 255, soft at edges; 1024 x 1024).
      num_masks: divisor of both losses (official: the per-device batch size).
      oversample_ratio: candidates per kept point for the uncertainty selection (static).
      key: JAX PRNG key for the point sampling.
      valid: optional ``(B,)`` bool; examples with ``False`` contribute 0 to both losses and get a zero
        gradient, whatever their logits or targets hold (NaN included).

    Returns:
      ``(loss_mask, loss_dice)``, each ``()`` float32, differentiable w.r.t. ``src_masks``.
    """
    if valid is not None:
        # Neutralise invalid rows before any arithmetic: a NaN there would otherwise leak into the
        # gradient through 0 * NaN even though its loss term is masked out.
        src_masks = jnp.where(valid[:, None, None, None], src_masks, 0)
        target_masks = jnp.where(valid[:, None, None, None], target_masks, 0)
    point_coords = get_uncertain_point_coords_with_randomness(
        src_masks, calculate_uncertainty, NUM_POINTS, oversample_ratio, IMPORTANCE_SAMPLE_RATIO, key=key
    )
    point_labels = jax.lax.stop_gradient(point_sample(target_masks, point_coords))[:, 0]
    point_logits = point_sample(src_masks, point_coords)[:, 0]
    loss_mask = sigmoid_ce_loss(point_logits, point_labels, num_masks, valid=valid)
    loss_dice = dice_loss(point_logits, point_labels, num_masks, valid=valid)
    return loss_mask, loss_dice
