"""A deterministic synthetic thin-structure segmentation dataset, for the offline demo and the tests.

One object per image, of one of five kinds (``KINDS``): wires (thin curved polylines), meshes (warped
grids in a frame), rings (ellipses, some with an inner ring and spokes), branching trees and brush
strokes (tapering to 1 px, with dry-brush bristles). Thin parts are 1-4 px wide at any image size, so
boundary quality decides the score, which is what SAM-HQ improves over SAM. Objects lie on textured
backgrounds (smooth noise, gradients or stripes) with clutter that is not part of the mask.

Written in the generic folder layout that ``--data`` reads: ``OUT/images/<stem>.png`` (RGB uint8) and
``OUT/masks/<stem>.png`` (L, 0 / 255), stems ``<index:05d>_<kind>``. Image ``i`` depends only on
``(seed, i, size)``: files are byte-identical across runs and independent of ``count``.

    python -m train.synthetic data/synthetic --count 200 --size 256 --seed 0
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from samhq_jax.cmdkit.args import COUNT, POSITIVE_INT, OneLineParser, int_at_least
from samhq_jax.cmdkit.guard import run_guarded
from samhq_jax.errors import InputError

KINDS = ("wire", "mesh", "ring", "tree", "stroke")
BACKGROUNDS = ("noise", "gradient", "stripes")
# Foreground bounds every mask satisfies: a fraction of the image and an absolute pixel count.
MIN_FRACTION, MAX_FRACTION, MIN_PIXELS = 0.005, 0.5, 10
MIN_SIZE = 32
PROG = "train.synthetic"  # python -m train.synthetic
_MAX_ATTEMPTS = 100  # redraws of an object whose mask misses the bounds (rare; deterministic)

Points = list[tuple[float, float]]


def _chaikin(points: np.ndarray, iterations: int) -> np.ndarray:
    """Smooth an open ``(K, 2)`` polyline by Chaikin corner cutting (end points kept)."""
    for _ in range(iterations):
        a, b = points[:-1], points[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


def _as_points(xy: np.ndarray) -> Points:
    """``(K, 2)`` float array -> PIL's list of ``(x, y)`` tuples."""
    return [(float(x), float(y)) for x, y in xy]


def _smooth_curve(rng: np.random.Generator, size: int, num_controls: int, margin: float) -> np.ndarray:
    """A smooth random ``(K, 2)`` curve through ``num_controls`` points spread over the image (+margin)."""
    lo, hi = -margin * size, (1 + margin) * size
    controls = rng.uniform(lo, hi, size=(num_controls, 2))
    # Order the controls along a random direction so the curve sweeps across instead of knotting.
    direction = rng.normal(size=2)
    controls = controls[np.argsort(controls @ direction)]
    return _chaikin(controls, 5)


def _draw_wire(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """One long curved wire, 1-4 px wide, running across the image."""
    curve = _smooth_curve(rng, size, int(rng.integers(4, 8)), margin=0.05)
    width = int(rng.choice([1, 1, 2, 2, 3, 4]))
    draw.line(_as_points(curve), fill=255, width=width, joint="curve")


def _draw_mesh(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A rotated, slightly warped grid of 1-2 px lines inside a 1-4 px frame (a net or fence)."""
    centre = rng.uniform(0.35, 0.65, size=2) * size
    half = rng.uniform(0.2, 0.42, size=2) * size
    angle = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    amplitude, frequency, phase = rng.uniform(0, 0.04) * size, rng.uniform(1, 3), rng.uniform(0, 2 * np.pi)
    t = np.linspace(-1, 1, 40)

    def line(u: np.ndarray, v: np.ndarray) -> Points:
        """Local coordinates in ``[-1, 1]^2`` -> image points, warped along v."""
        local = np.stack([u, v], axis=1) * half
        local[:, 0] += amplitude * np.sin(frequency * np.pi * v + phase)
        return _as_points(local @ rotation.T + centre)

    width = int(rng.choice([1, 1, 2]))
    for u in np.linspace(-1, 1, int(rng.integers(4, 10))):
        draw.line(line(np.full_like(t, u), t), fill=255, width=width)
    for v in np.linspace(-1, 1, int(rng.integers(4, 10))):
        draw.line(line(t, np.full_like(t, v)), fill=255, width=width)
    frame = int(rng.integers(1, 5))
    for u, v in ((t, -np.ones_like(t)), (t, np.ones_like(t)), (-np.ones_like(t), t), (np.ones_like(t), t)):
        draw.line(line(u, v), fill=255, width=frame, joint="curve")


def _ellipse(centre: np.ndarray, radii: np.ndarray, angle: float, scale: float) -> Points:
    """Closed polyline of a rotated ellipse (first point repeated)."""
    t = np.linspace(0, 2 * np.pi, 181)
    local = np.stack([np.cos(t), np.sin(t)], axis=1) * radii * scale
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return _as_points(local @ rotation.T + centre)


def _draw_ring(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """An elliptic ring 2-4 px wide; half of them a wheel with a thin inner ring and spokes."""
    centre = rng.uniform(0.35, 0.65, size=2) * size
    radius = rng.uniform(0.15, 0.4) * size
    radii = np.array([radius, radius * rng.uniform(0.6, 1.0)])
    angle = rng.uniform(0, np.pi)
    draw.line(_ellipse(centre, radii, angle, 1.0), fill=255, width=int(rng.integers(2, 5)), joint="curve")
    if rng.random() < 0.5:
        inner_scale = rng.uniform(0.3, 0.7)
        inner = _ellipse(centre, radii, angle, inner_scale)
        draw.line(inner, fill=255, width=int(rng.integers(1, 4)), joint="curve")
        outer = _ellipse(centre, radii, angle, 1.0)
        spokes = int(rng.integers(3, 9))
        width = int(rng.choice([1, 2]))
        for k in range(spokes):
            i = (k * 180) // spokes
            draw.line([inner[i], outer[i]], fill=255, width=width)


def _draw_tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A branching tree (or crack, or vessel): 3-4 px trunk, branches thinning to 1 px."""
    side = int(rng.integers(4))  # grow from a random image edge towards the inside
    along = rng.uniform(0.3, 0.7) * size
    start, heading = {
        0: ((along, size - 1.0), -np.pi / 2),
        1: ((along, 0.0), np.pi / 2),
        2: ((0.0, along), 0.0),
        3: ((size - 1.0, along), np.pi),
    }[side]
    depth = int(rng.integers(4, 7))
    stack = [(np.array(start), heading + rng.uniform(-0.3, 0.3), rng.uniform(0.22, 0.32) * size, 4, depth)]
    while stack:
        origin, direction, length, width, level = stack.pop()
        # Two straight pieces with a kink so branches are not ruler-straight.
        kink = direction + rng.uniform(-0.25, 0.25)
        middle = origin + 0.5 * length * np.array([np.cos(direction), np.sin(direction)])
        end = middle + 0.5 * length * np.array([np.cos(kink), np.sin(kink)])
        draw.line(_as_points(np.stack([origin, middle, end])), fill=255, width=width, joint="curve")
        if level > 1:
            for _ in range(int(rng.integers(2, 4))):
                child = kink + rng.choice([-1, 1]) * rng.uniform(0.25, 0.8)
                stack.append((end, child, length * rng.uniform(0.55, 0.8), max(1, width - 1), level - 1))


def _draw_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A brush stroke: a curve whose width swells and tapers to 1 px, with 1 px dry-brush bristles."""
    curve = _smooth_curve(rng, size, int(rng.integers(3, 6)), margin=-0.1)
    # Resample densely (about 1 px apart) so the width can change smoothly along the stroke.
    steps = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    s = np.linspace(0, arc[-1], max(int(arc[-1]), 2))
    points = np.stack([np.interp(s, arc, curve[:, 0]), np.interp(s, arc, curve[:, 1])], axis=1)
    t = s / max(arc[-1], 1e-6)
    max_width = rng.uniform(4, 10) * max(size / 256, 1)
    widths = 1 + (max_width - 1) * np.sin(np.pi * t) ** rng.uniform(0.5, 1.5)
    for (a, b), w in zip(itertools.pairwise(points), widths[:-1], strict=True):
        r = w / 2
        draw.line([tuple(a), tuple(b)], fill=255, width=max(1, round(w)))
        if w >= 3:  # round joints, otherwise wide segments leave notches
            draw.ellipse([a[0] - r, a[1] - r, a[0] + r, a[1] + r], fill=255)
    # Bristles: thin lines leaving the tail end, parallel to the last piece of the stroke.
    tail = points[-1] - points[max(len(points) - 8, 0)]
    tail = tail / max(np.linalg.norm(tail), 1e-6)
    normal = np.array([-tail[1], tail[0]])
    tail_start = max(len(points) - int(0.15 * len(points)) - 1, 0)
    for offset in rng.uniform(-0.5, 0.5, size=int(rng.integers(2, 5))) * max_width:
        base = points[tail_start] + offset * normal
        tip = base + tail * rng.uniform(0.05, 0.15) * size
        draw.line([tuple(points[tail_start]), tuple(base), tuple(tip)], fill=255, width=1)


_DRAW = {"wire": _draw_wire, "mesh": _draw_mesh, "ring": _draw_ring, "tree": _draw_tree, "stroke": _draw_stroke}


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """``(size, size, 3)`` float32 texture in ``[0, 255]``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    if kind == "noise":
        image = np.zeros((size, size, 3), np.float32)
        for cells, weight in ((4, 0.6), (16, 0.3), (64, 0.1)):  # octaves of smooth value noise
            low = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
            image += weight * np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), np.float32)
        return image
    if kind == "gradient":
        t = (along - along.min()) / (along.max() - along.min())
        return c0 * (1 - t[..., None]) + c1 * t[..., None]
    if kind == "stripes":
        wave = np.sin(2 * np.pi * rng.uniform(3, 20) * along + rng.uniform(0, 2 * np.pi))
        return (c0 + c1) / 2 + (c1 - c0) / 2 * rng.uniform(0.2, 0.8) * wave[..., None]
    raise ValueError(f"unknown background {kind!r}; known: {', '.join(BACKGROUNDS)}")


def _draw_clutter(image: Image.Image, rng: np.random.Generator, size: int) -> None:
    """Distractors that are not part of the mask: filled shapes and short thin lines, muted colours."""
    draw = ImageDraw.Draw(image)
    mean = np.asarray(image, np.float32).mean(axis=(0, 1))
    for _ in range(int(rng.integers(2, 11))):
        colour = tuple(int(c) for c in np.clip(mean + rng.normal(0, 45, size=3), 0, 255))
        x0, y0 = rng.uniform(-0.1, 1.0, size=2) * size
        w, h = rng.uniform(0.03, 0.25, size=2) * size
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif shape == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([(x0, y0), (x0 + w, y0 + h)], fill=colour, width=int(rng.integers(1, 4)))


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """An RGB colour (float32) clearly darker or brighter than the background's mean luminance."""
    luminance = float(background.mean())
    base = rng.uniform(0, 70, size=3) if luminance > 128 else rng.uniform(185, 255, size=3)
    return base.astype(np.float32)


def synthetic_example(index: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Image ``index`` of the dataset ``seed``, in memory.

    Args:
      index: example number ``>= 0``; its kind is ``KINDS[index % len(KINDS)]``.
      size: side of the square image in pixels, ``>= MIN_SIZE``.
      seed: dataset seed; the example's generator is seeded with ``(seed, index)``.

    Returns:
      ``(image (size, size, 3) uint8 RGB, mask (size, size) uint8 in {0, 255}, kind)``; the mask's
      foreground is at least ``MIN_FRACTION`` of the image and ``MIN_PIXELS``, at most ``MAX_FRACTION``.
    """
    if size < MIN_SIZE:
        raise InputError(f"--size must be >= {MIN_SIZE}, got {size}")
    if index < 0:
        raise InputError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % len(KINDS)]
    min_pixels = max(MIN_PIXELS, MIN_FRACTION * size * size)
    for _ in range(_MAX_ATTEMPTS):
        mask_image = Image.new("L", (size, size), 0)
        _DRAW[kind](ImageDraw.Draw(mask_image), rng, size)
        mask = np.asarray(mask_image)
        foreground = int(np.count_nonzero(mask))
        if min_pixels <= foreground <= MAX_FRACTION * size * size:
            break
    else:
        raise RuntimeError(f"no {kind} within the foreground bounds after {_MAX_ATTEMPTS} draws (size {size})")

    background = _background(rng, size, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    _draw_clutter(canvas, rng, size)
    background = np.asarray(canvas, np.float32)
    # The object: a contrasting colour with mild shading, edges softened by half a pixel as a lens would.
    colour = _contrasting_colour(rng, background)
    shading = 1 + 0.15 * rng.standard_normal((size, size, 1)).astype(np.float32)
    alpha = np.asarray(mask_image.filter(ImageFilter.GaussianBlur(0.5)), np.float32)[..., None] / 255
    image = background * (1 - alpha) + colour * shading * alpha
    image += rng.normal(0, rng.uniform(2, 8), size=image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), np.where(mask > 0, 255, 0).astype(np.uint8), kind


def write_synthetic_dataset(out_dir: Path, count: int, size: int = 256, seed: int = 0) -> Path:
    """Write ``count`` examples as ``out_dir/images/<stem>.png`` and ``out_dir/masks/<stem>.png``.

    Stems are ``<index:05d>_<kind>`` (e.g. ``00003_tree``), so the kind of each example can be read
    back from its file name. Images are RGB uint8, masks L mode with values 0 / 255, both
    ``size`` x ``size``. Existing files with the same names are overwritten.

    Returns:
      ``out_dir`` (the folder to pass as ``--data``).
    """
    if count < 1:
        raise InputError(f"--count must be >= 1, got {count}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask, kind = synthetic_example(index, size, seed)
        stem = f"{index:05d}_{kind}"
        Image.fromarray(image, "RGB").save(out_dir / "images" / f"{stem}.png")
        Image.fromarray(mask, "L").save(out_dir / "masks" / f"{stem}.png")
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.synthetic OUT --count N --size S --seed K``; errors are one line on stderr
    (:func:`samhq_jax.cmdkit.guard.run_guarded`): bad flags exit 2."""
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (gets images/ and masks/)")
    parser.add_argument("--count", type=POSITIVE_INT, default=100, help="number of examples")
    parser.add_argument("--size", type=int_at_least(MIN_SIZE), default=256, help="image side in pixels")
    parser.add_argument("--seed", type=COUNT, default=0, help="dataset seed")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # bad flags: one line already printed, exit code 2 (0 for --help)
        return int(exit_.code or 0)

    def body() -> int:
        out = write_synthetic_dataset(args.out, args.count, args.size, args.seed)
        print(f"wrote {args.count} synthetic examples ({args.size}x{args.size}, seed {args.seed}) to {out}")
        return 0

    return run_guarded(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
