"""``samhq everything``: automatic mask generation ("segment everything") from the command line.

One image (``--image``) or every image of a folder (``--images``, with a progress bar); per image,
mask PNGs and a records JSON (``--format png``) or one JSON with RLE masks (``--format rle``), and
an overlay of all masks. Every image is checked before the checkpoint is loaded; :data:`EVERYTHING_HELP`
is the ``--help`` text (the written files, examples).

The images are shared out over every local device (one image per device at a time,
:class:`~samhq_jax.mesh_predictor.MeshPredictor`) and, with ``--coordinator`` / ``--num-processes`` /
``--process-id``, over processes: each takes its contiguous share of the sorted images and writes
their files to its ``--output``; the files are those of a one-device run, bit for bit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from samhq_jax.cmdkit.args import (
    CHECKPOINT_HELP,
    COUNT,
    POSITIVE_INT,
    PROBABILITY,
    SCALE_OUT_HELP,
    add_distributed_flags,
    help_layout,
)
from samhq_jax.cmdkit.guard import doing
from samhq_jax.cmdkit.images import IMAGE_SUFFIXES
from samhq_jax.cmdkit.overlay import overlay_all
from samhq_jax.commands.launch import launch
from samhq_jax.errors import InputError
from samhq_jax.image_io import check_image, read_rgb

# Generator arguments taken from the flags of the same name and recorded in <stem>_masks.json.
GENERATOR_FLAGS = (
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_n_layers",
    "min_mask_region_area",
)

EVERYTHING_HELP = (
    """\
written to --output for each image, <stem> being its file name without the extension:
  --format png (default):
    <stem>_mask<i>.png   mask i (i = 0, 1, ...: best first, the official generator's order): an
                         8-bit PNG at the image's size, 255 on the mask, 0 elsewhere
    <stem>_masks.json    {"image": path, "size": [H, W], "settings": {...}, "masks": [{"file":
                         "<stem>_mask<i>.png", "area", "bbox" [x, y, w, h], "predicted_iou",
                         "point_coords", "stability_score", "crop_box"}, ...]}
  --format rle: <stem>_masks.json only, each mask's "segmentation" an uncompressed RLE
                         {"size": [H, W], "counts": [...]} (column-major, as pycocotools reads it)
  <stem>_overlay.png     the image with every mask tinted in its own colour (small masks on top)

"""
    + SCALE_OUT_HELP
    + """
  Each process writes the files of its own images to its --output.

examples:
  samhq everything --checkpoint sam_hq_vit_b.pth --image dog.jpg --output out/
  samhq everything --checkpoint ckpt/ --images photos/ --points-per-side 16 --format rle --output out/
  samhq everything --checkpoint ckpt/ --images photos/ --output out/ --coordinator 10.0.0.1:1234 \\
      --num-processes 2 --process-id 0   # on the first host; --process-id 1 on the second"""
)


def add_parser(sub: Any) -> None:
    """Register ``everything`` on the ``samhq`` subparsers ``sub``."""
    p = sub.add_parser(
        "everything",
        help="segment everything in an image (or a folder): automatic mask generation",
        description="Masks for every object of an image (--image) or of each image of a folder (--images), "
        "from a grid of point prompts, filtered as the official SamAutomaticMaskGenerator.",
        **help_layout(EVERYTHING_HELP),
    )
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--image", help="one image file")
    p.add_argument("--images", help="a folder of images (" + ", ".join(IMAGE_SUFFIXES) + ")")
    p.add_argument("--output", required=True, help="output folder (created; see below for what is written)")
    p.add_argument("--format", choices=("png", "rle"), default="png", help="mask PNGs, or RLE in the JSON")
    p.add_argument("--points-per-side", type=POSITIVE_INT, default=32, help="grid points a side (default 32)")
    p.add_argument("--points-per-batch", type=POSITIVE_INT, default=64, help="points per compiled call (default 64)")
    p.add_argument("--pred-iou-thresh", type=PROBABILITY, default=0.88, help="in [0, 1], default 0.88; 0 keeps all")
    p.add_argument(
        "--stability-score-thresh", type=PROBABILITY, default=0.95, help="in [0, 1], default 0.95; 0 keeps all"
    )
    p.add_argument("--box-nms-thresh", type=PROBABILITY, default=0.7, help="in [0, 1], default 0.7; 1 keeps all")
    p.add_argument("--crop-n-layers", type=COUNT, default=0, help="extra layers of image crops (default 0)")
    p.add_argument(
        "--min-mask-region-area", type=COUNT, default=0, help="fill holes / drop islands below this (default 0)"
    )
    p.add_argument("--hq-token-only", action="store_true", help="the HQ mask alone for each point")
    p.add_argument("--single-mask", action="store_true", help="SAM's single-mask output (no multimask choice)")
    add_distributed_flags(p)


def _jobs(args: argparse.Namespace) -> list[Path]:
    """The images to segment, each checked readable, their stems distinct; the generator's
    settings checked too."""
    from samhq_jax.amg import check_settings

    if (args.image is None) == (args.images is None):
        raise InputError("give exactly one of --image or --images")
    if args.image is not None:
        paths = [Path(args.image)]
    else:
        folder = Path(args.images)
        if not folder.is_dir():
            raise FileNotFoundError(f"--images {folder}: no such folder")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        stems = [p.stem for p in paths]
        clash = sorted({s for s in stems if stems.count(s) > 1})
        if clash:
            raise InputError(f"--images {folder}: several files share the stem(s) {clash}; outputs would collide")
    for p in paths:
        check_image(p, "--image: " if args.image is not None else "--images: ")
    check_settings(args.points_per_side, args.points_per_batch, args.crop_n_layers, 1, None, "binary_mask")
    return paths


def write_image(path: Path, image: np.ndarray, records: list[dict], out_dir: Path, args: argparse.Namespace) -> int:
    """Write the files of one image (``(H, W, 3)`` uint8) from its generator ``records``; returns the
    number of masks."""
    from samhq_jax.amg_ops import mask_to_rle

    masks = [r.pop("segmentation") for r in records]
    stem = path.stem
    if args.format == "png":
        for i, (m, r) in enumerate(zip(masks, records, strict=True)):
            name = f"{stem}_mask{i}.png"
            Image.fromarray((m * 255).astype(np.uint8)).save(out_dir / name)
            records[i] = {"file": name, **r}
    else:
        for r, rle in zip(records, mask_to_rle(np.asarray(masks).reshape(-1, *image.shape[:2])), strict=True):
            r["segmentation"] = rle
    settings = {k: getattr(args, k) for k in GENERATOR_FLAGS}
    settings.update(multimask_output=not args.single_mask, hq_token_only=args.hq_token_only)
    doc = {"image": str(path), "size": list(image.shape[:2]), "settings": settings, "masks": records}
    (out_dir / f"{stem}_masks.json").write_text(json.dumps(doc, indent=1) + "\n")
    overlay_all(image, masks).save(out_dir / f"{stem}_overlay.png")
    return len(records)


def run(args: argparse.Namespace) -> int:
    """``samhq everything``: check every image, load the checkpoint, generate and write this
    process's share of the images, one per local device at a time."""
    from samhq_jax.amg import SamHQAutomaticMaskGenerator

    paths = _jobs(args)
    work = launch("samhq everything", args, paths)
    generator = SamHQAutomaticMaskGenerator(
        work.predictor,
        points_per_batch=args.points_per_batch,
        progress=None if len(paths) == 1 else False,  # one image: a bar over its point batches
        **{k: getattr(args, k) for k in GENERATOR_FLAGS},
    )
    with tqdm(total=len(work.mine), desc=work.label, unit="image", disable=len(paths) == 1) as bar:
        for batch in work.batches():
            with doing(f"segmenting everything in {', '.join(map(str, batch))}"):
                images = [read_rgb(path) for path in batch]
                per_image = generator.generate_images(
                    images, multimask_output=not args.single_mask, hq_token_only=args.hq_token_only
                )
                counts = [
                    write_image(path, image, records, work.out_dir, args)
                    for path, image, records in zip(batch, images, per_image, strict=True)
                ]
            bar.update(len(batch))
            if len(paths) == 1:
                print(f"{batch[0].name}: {counts[0]} mask(s) -> {work.out_dir}")
    return 0
