"""``samhq``: segment images from the command line.

    samhq predict --checkpoint sam_hq_vit_b.pth --image dog.jpg --box 100 200 900 1200 --output out/
    samhq predict --checkpoint ckpt/ --image dog.jpg --point 500 600 1 --point 200 100 0 --output out/
    samhq predict --checkpoint ckpt/ --images photos/ --prompts prompts.jsonl --output out/
    samhq convert SRC DST [--to ours|official|hf]
    samhq demo --output demo/     # offline: synthetic data, stand-in SAM, HQ fine-tuning, SAM vs HQ evaluation

Each ``--box`` is one prompt (all boxes are decoded in one call); the ``--point x y label`` triples
form one point set, added to every box (or used alone). For a folder, each line of the JSON-lines
prompts file is ``{"image": "name.jpg", "boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, label],
...]}``. Written per image: ``<stem>_mask<i>.png`` (the mask at the image's size), ``<stem>_overlay.png``
(masks tinted over the image, prompts drawn) and ``<stem>_scores.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

if TYPE_CHECKING:
    from samhq_jax.predictor import SamHQPredictor

COLORS = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [238, 130, 238], [255, 215, 0]], np.float32)


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit 2), never a usage dump or a traceback.

    Shared by every command of the project (``samhq``, ``samhq-train``, ``samhq-eval``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: error: {message}\n")


def _prompt_arrays(boxes: list, points: list) -> dict:
    """``predict_batch`` keyword arguments for P prompts: P boxes (or 1 if none), the points in each."""
    out = {}
    p = max(len(boxes), 1)
    if boxes:
        out["boxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
    if points:
        pts = np.asarray(points, np.float32).reshape(-1, 3)
        out["point_coords"] = np.repeat(pts[None, :, :2], p, axis=0)
        out["point_labels"] = np.repeat(pts[None, :, 2].astype(np.int32), p, axis=0)
    if not out:
        raise ValueError("give at least one --box or --point")
    return out


def overlay(image: np.ndarray, masks: np.ndarray, boxes: list, points: list) -> Image.Image:
    """``(H, W, 3)`` uint8 image with ``(P, H, W)`` bool masks tinted (alpha 0.5) and prompts drawn."""
    out = image.astype(np.float32)
    for i, m in enumerate(masks):
        out[m] = 0.5 * out[m] + 0.5 * COLORS[i % len(COLORS)]
    pic = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    width = max(2, max(image.shape[:2]) // 300)
    for i, b in enumerate(boxes):
        draw.rectangle(list(map(float, b)), outline=tuple(int(c) for c in COLORS[i % len(COLORS)]), width=width)
    r = 2 * width
    for x, y, label in points:
        fill = (0, 255, 0) if int(label) == 1 else (255, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    return pic


def segment_one(
    predictor: SamHQPredictor, image_path: Path, boxes: list, points: list, out_dir: Path, args: argparse.Namespace
) -> dict:
    """Run one image and write its masks, overlay and scores; returns the scores record."""
    image = np.asarray(Image.open(image_path).convert("RGB"))
    predictor.set_image(image)
    masks, iou, _ = predictor.predict_batch(
        **_prompt_arrays(boxes, points), multimask_output=args.multimask, hq_token_only=args.hq_token_only
    )
    masks = masks[:, 0]
    stem = image_path.stem
    for i, m in enumerate(masks):
        Image.fromarray((m * 255).astype(np.uint8)).save(out_dir / f"{stem}_mask{i}.png")
    overlay(image, masks, boxes, points).save(out_dir / f"{stem}_overlay.png")
    record = {
        "image": str(image_path),
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


def _predict(args: argparse.Namespace) -> int:
    from samhq_jax.predictor import SamHQPredictor

    if (args.image is None) == (args.images is None):
        raise ValueError("give exactly one of --image or --images")
    if args.images is not None and args.prompts is None:
        raise ValueError("--images needs --prompts (a JSON-lines file)")
    jobs = []
    if args.image is not None:
        jobs.append((Path(args.image), args.box or [], args.point or []))
    else:
        for n, line in enumerate(Path(args.prompts).read_text().splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    jobs.append((Path(args.images) / rec["image"], rec.get("boxes", []), rec.get("points", [])))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{args.prompts} line {n}: {err!r}") from err
    for path, _, _ in jobs:
        if not path.is_file():
            raise FileNotFoundError(f"no image at {path}")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = SamHQPredictor.from_pretrained(args.checkpoint)
    for path, boxes, points in tqdm(jobs, desc="samhq predict", unit="image", disable=len(jobs) == 1):
        record = segment_one(predictor, path, boxes, points, out_dir, args)
        if len(jobs) == 1:
            scores = ", ".join(f"{m['iou']:.3f}" for m in record["masks"])
            print(f"{path.name}: {len(record['masks'])} mask(s), predicted IoU {scores} -> {out_dir}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from train.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            output=Path(args.output),
            preset=args.preset,
            train_images=args.train_images,
            val_images=args.val_images,
            sam_steps=args.sam_steps,
            hq_steps=args.hq_steps,
            seed=args.seed,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="samhq", description="SAM-HQ in JAX")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("predict", help="segment an image (or a folder) with box / point prompts")
    p.add_argument("--checkpoint", required=True, help="anything samhq_jax.load_pretrained accepts")
    p.add_argument("--image", help="one image file")
    p.add_argument("--images", help="a folder of images (with --prompts)")
    p.add_argument("--prompts", help="JSON-lines prompts file for --images")
    p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"))
    p.add_argument("--point", nargs=3, type=float, action="append", metavar=("X", "Y", "LABEL"))
    p.add_argument("--hq-token-only", action="store_true", help="HQ mask alone (best for single objects)")
    p.add_argument("--multimask", action="store_true", help="add the best of SAM's three masks")
    p.add_argument("--output", required=True, help="output folder")
    sub.add_parser("convert", help="convert weights between formats (see samhq-convert --help)", add_help=False)
    d = sub.add_parser("demo", help="offline: train a stand-in SAM and its HQ part on synthetic data, evaluate")
    d.add_argument("--output", required=True, help="output folder (data, runs, evaluation, pictures)")
    d.add_argument("--preset", default="tiny_b", help="model size (a preset name)")
    d.add_argument("--train-images", type=int, default=240)
    d.add_argument("--val-images", type=int, default=24)
    d.add_argument("--sam-steps", type=int, default=400, help="steps of the stand-in SAM (every parameter)")
    d.add_argument("--hq-steps", type=int, default=300, help="steps of HQ fine-tuning (SAM frozen)")
    d.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        from convert.cli import main as convert_main

        return convert_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        return _predict(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"samhq: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
