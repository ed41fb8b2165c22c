"""``samhq predict``: segment an image, or a folder with a prompts file, with box / point prompts.

Every prompt and image is checked before the checkpoint is loaded; :data:`PREDICT_HELP` is the
``--help`` text (prompts, the JSON-lines prompts file, the written files, examples).

The images are shared out over every local device (one image per device at a time,
:class:`~samhq_jax.mesh_predictor.MeshPredictor`) and, with ``--coordinator`` / ``--num-processes`` /
``--process-id``, over processes: each takes its contiguous share of the prompts file's lines and
writes their files to its ``--output``; the files are those of a one-device run, bit for bit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from samhq_jax.cmdkit.args import CHECKPOINT_HELP, SCALE_OUT_HELP, add_distributed_flags, help_layout
from samhq_jax.cmdkit.guard import doing
from samhq_jax.cmdkit.overlay import overlay
from samhq_jax.cmdkit.prompts import PROMPTS_EXAMPLE, check_prompts, prompt_arrays, read_prompt_lines
from samhq_jax.commands.launch import launch
from samhq_jax.errors import InputError
from samhq_jax.image_io import check_image, read_rgb

PREDICT_HELP = f"""\
prompts (in the image's pixels):
  --box X0 Y0 X1 Y1  one box, top-left and bottom-right corner (X1 >= X0, Y1 >= Y0); repeat it for
                     several objects: one mask per box
  --point X Y LABEL  one point; LABEL is 1 (foreground: on the object), 0 (background: not on it)
                     or -1 (ignore: a padding point). All --point triples form one point set, added
                     to every box (or used alone: one mask)

prompts file (--images DIR --prompts FILE): JSON lines, one object per image of DIR, e.g.
  {PROMPTS_EXAMPLE}
  "boxes" (rows [x0, y0, x1, y1]) and "points" (rows [x, y, label]) work as --box and --point; give
  at least one of them. Blank lines are skipped. Every line and every image is checked before the
  checkpoint is loaded; an error names FILE:LINE.

written to --output for each image, <stem> being its file name without the extension:
  <stem>_mask<i>.png  mask i (i = 0, 1, ...: one per box, or one for points alone): an 8-bit PNG at
                      the image's size, 255 on the object, 0 elsewhere
  <stem>_overlay.png  the image with each mask tinted in its own colour, the boxes drawn and the
                      points as dots (green: foreground, red: background)
  <stem>_scores.json  {{"image": path, "size": [H, W], "hq_token_only": bool, "multimask_output": bool,
                      "masks": [{{"file": "<stem>_mask<i>.png", "box": [x0, y0, x1, y1] or null,
                      "points": [[x, y, label], ...], "iou": the model's predicted IoU}}, ...]}}

{SCALE_OUT_HELP} With --images the images are the
  prompts file's lines; each process writes the files of its own to its --output.

examples:
  samhq predict --checkpoint sam_hq_vit_b.pth --image dog.jpg --box 100 200 900 1200 --output out/
  samhq predict --checkpoint ckpt/ --image dog.jpg --point 500 600 1 --point 200 100 0 --output out/
  samhq predict --checkpoint syscv-community/sam-hq-vit-base --images photos/ \\
      --prompts prompts.jsonl --output out/
  samhq predict --checkpoint ckpt/ --images photos/ --prompts prompts.jsonl --output out/ \\
      --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0   # --process-id 1 on the second host"""


def add_parser(sub: Any) -> None:
    """Register ``predict`` on the ``samhq`` subparsers ``sub``."""
    p = sub.add_parser(
        "predict",
        help="segment an image (or a folder) with box / point prompts",
        description="Segment an image (--image) or a folder (--images with a --prompts file) with box / point prompts.",
        **help_layout(PREDICT_HELP),
    )
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--image", help="one image file")
    p.add_argument("--images", help="a folder of images (with --prompts)")
    p.add_argument("--prompts", help="JSON-lines prompts file for --images (see below)")
    p.add_argument(
        "--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"), help="a box (repeatable)"
    )
    p.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        metavar=("X", "Y", "LABEL"),
        help="a point, LABEL 1 foreground, 0 background, -1 ignore (repeatable)",
    )
    p.add_argument("--hq-token-only", action="store_true", help="HQ mask alone (best for single objects)")
    p.add_argument("--multimask", action="store_true", help="add the best of SAM's three masks")
    p.add_argument("--output", required=True, help="output folder (created; see below for what is written)")
    add_distributed_flags(p)


def folder_jobs(path: Path, images: Path) -> list[tuple[Path, list, list]]:
    """``(image, boxes, points)`` of every line of a prompts file whose images are in folder
    ``images``: each line and its image checked, no two images sharing a stem (their outputs
    would collide); errors name ``FILE:LINE``."""
    if not images.is_dir():
        raise FileNotFoundError(f"--images {images}: no such folder")
    jobs, stems = [], {}
    for record in read_prompt_lines(path, images):
        where = f"{path}:{record.line}"
        image = images / record.image
        check_image(image, f"{where}: ")
        if image.stem in stems:
            raise InputError(
                f"{where}: {record.image} would overwrite the outputs of line {stems[image.stem]} (same stem "
                f"{image.stem!r}); give each image one line"
            )
        stems[image.stem] = record.line
        jobs.append((image, record.boxes, record.points))
    return jobs


def write_image(
    path: Path,
    image: np.ndarray,
    boxes: list,
    points: list,
    result: tuple[np.ndarray, np.ndarray, np.ndarray],
    out_dir: Path,
    args: argparse.Namespace,
) -> dict:
    """Write the masks, overlay and scores of one image (``(H, W, 3)`` uint8) from its ``result``
    (``masks (P, 1, H, W)``, ``iou (P, 1)``, low-res logits); returns the scores record."""
    masks, iou, _ = result
    masks = masks[:, 0]
    stem = path.stem
    for i, m in enumerate(masks):
        Image.fromarray((m * 255).astype(np.uint8)).save(out_dir / f"{stem}_mask{i}.png")
    overlay(image, masks, boxes, points).save(out_dir / f"{stem}_overlay.png")
    record = {
        "image": str(path),
        "size": list(image.shape[:2]),
        "hq_token_only": args.hq_token_only,
        "multimask_output": args.multimask,
        "masks": [
            {"file": f"{stem}_mask{i}.png", "box": boxes[i] if boxes else None, "points": points, "iou": float(s)}
            for i, s in enumerate(iou[:, 0])
        ],
    }
    (out_dir / f"{stem}_scores.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def predict_jobs(args: argparse.Namespace) -> list[tuple[Path, list, list]]:
    """``(image, boxes, points)`` of every image of a ``samhq predict`` run, flags, prompts and images
    all checked: run before anything is loaded."""
    if (args.image is None) == (args.images is None):
        raise InputError("give exactly one of --image or --images")
    if args.images is not None:
        if args.prompts is None:
            raise InputError("--images needs --prompts (a JSON-lines file; see samhq predict --help)")
        if args.box or args.point:
            raise InputError("--box / --point go with --image; for --images put the prompts in the --prompts file")
        return folder_jobs(Path(args.prompts), Path(args.images))
    if args.prompts is not None:
        raise InputError("--prompts goes with --images (a folder); for --image give --box / --point")
    boxes, points = check_prompts(args.box or [], args.point or [])
    check_image(Path(args.image), "--image: ")
    return [(Path(args.image), boxes, points)]


def run(args: argparse.Namespace) -> int:
    """``samhq predict``: check every prompt and image, load the checkpoint, segment and write this
    process's share of the images, one per local device at a time."""
    jobs = predict_jobs(args)  # every prompt and image checked before the checkpoint is read
    work = launch("samhq predict", args, jobs)
    with tqdm(total=len(work.mine), desc=work.label, unit="image", disable=len(jobs) == 1) as bar:
        for batch in work.batches():
            with doing(f"segmenting {', '.join(str(path) for path, _, _ in batch)}"):
                images = [read_rgb(path) for path, _, _ in batch]
                results = work.predictor.predict_images(
                    images,
                    [prompt_arrays(boxes, points) for _, boxes, points in batch],
                    multimask_output=args.multimask,
                    hq_token_only=args.hq_token_only,
                )
                records = [
                    write_image(path, image, boxes, points, result, work.out_dir, args)
                    for (path, boxes, points), image, result in zip(batch, images, results, strict=True)
                ]
            bar.update(len(batch))
            if len(jobs) == 1:
                scores = ", ".join(f"{m['iou']:.3f}" for m in records[0]["masks"])
                print(
                    f"{batch[0][0].name}: {len(records[0]['masks'])} mask(s), predicted IoU {scores} -> {work.out_dir}"
                )
    return 0
