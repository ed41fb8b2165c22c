"""``samhq``: segment images from the command line; and the front door every command shares.

``samhq predict``, ``samhq everything`` (:mod:`samhq_jax.everything_cli`), ``samhq demo``, and
``samhq convert`` / ``samhq parity`` (handed on to
:mod:`convert.cli` and :mod:`eval.parity`); :data:`SAMHQ_HELP` and :data:`PREDICT_HELP` are their
``--help`` texts (prompts, the JSON-lines prompts file, the written files, examples). Every prompt
and image of ``samhq predict`` is checked before the checkpoint is loaded.

Shared by ``samhq``, ``samhq-convert``, ``samhq-eval`` and ``samhq-train``: :class:`OneLineParser`
and :func:`command_parser` (one-line argument errors, ``--version``, the exit notes in ``--help``)
and :func:`run_guarded`, the top-level guard: an exception escaping a command becomes one line
``PROG: error: message`` on stderr and an exit status (2 bad input, 1 runtime failure, 130
interrupted), never a traceback, unless ``SAMHQ_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from samhq_jax import everything_cli

if TYPE_CHECKING:
    from samhq_jax.predictor import SamHQPredictor

PROG = "samhq"
COLORS = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [238, 130, 238], [255, 215, 0]], np.float32)

# ---- the front door of every command ----------------------------------------------------------------

DEBUG_ENV = "SAMHQ_DEBUG"  # set (not "0"): exceptions are re-raised, with their traceback
CACHE_ENV = "SAMHQ_JAX_CACHE"  # the commands' compilation cache folder; "0" or "off" disables it
DEFAULT_CACHE = Path.home() / ".cache" / "samhq-jax" / "xla"
CACHE_MIN_COMPILE_SECS = 0.5  # compiles faster than this are not worth a disk entry


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for a command; returns its folder (None: off).

    A second run of a command with the same model and shapes loads its compiled encoder and
    decoder from disk instead of compiling them again. Folder: ``$SAMHQ_JAX_CACHE``, else
    ``~/.cache/samhq-jax/xla``; ``SAMHQ_JAX_CACHE=0`` (or ``off``) disables it. A folder already
    set for JAX (``JAX_COMPILATION_CACHE_DIR``) is kept.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE)).strip()
    if folder.lower() in ("", "0", "off"):
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECS)
    return folder


EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
MAX_MESSAGE_LINES = 6  # lines of a multi-line message (a list of bad tensors) kept in the one line
EXIT_NOTES = f"""\
exit status: 0 done; 2 bad arguments or input (a missing or unreadable file, a bad prompt, an
unknown checkpoint format, a bad config.json); 1 a failure while running (e.g. an XLA runtime error
such as out of memory); 130 interrupted. Errors are one line on stderr, "PROG: error: message";
set {DEBUG_ENV}=1 for the Python traceback instead. Compiled models are cached on disk between
runs in ~/.cache/samhq-jax/xla (move it with {CACHE_ENV}=DIR, turn it off with {CACHE_ENV}=0)."""
_STAGE = "_samhq_stage"  # attribute naming the step an exception escaped from (see doing())


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit 2), never a usage dump or a traceback.

    Shared by every command of the project (``samhq``, ``samhq-convert``, ``samhq-train``,
    ``samhq-eval``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog.split()[0]}: error: {message}\n")


def package_version() -> str:
    """``samhq-jax <version>`` of the installed distribution."""
    try:
        return f"samhq-jax {importlib.metadata.version('samhq-jax')}"
    except importlib.metadata.PackageNotFoundError:
        return "samhq-jax (not installed: version unknown)"


def help_layout(epilog: str) -> dict[str, Any]:
    """Keyword arguments of a parser (or sub-parser) whose ``--help`` ends with ``epilog`` and the
    exit notes, laid out as written."""
    text = f"{epilog.strip(chr(10))}\n\n{EXIT_NOTES}" if epilog.strip() else EXIT_NOTES
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def docstring_help(doc: str) -> str:
    """A command module's docstring as ``--help`` text: without its summary paragraph (the
    description) and without reST quoting."""
    body = doc.split("\n\n", 1)[1] if "\n\n" in doc else ""
    return textwrap.dedent(body).replace("``", "").replace("::\n", ":\n").strip("\n")


def command_parser(prog: str, description: str, epilog: str = "") -> OneLineParser:
    """The top-level parser of a command: one-line errors, ``--version``, ``epilog`` and the exit
    notes at the end of ``--help``."""
    parser = OneLineParser(prog=prog, description=description, **help_layout(epilog))
    parser.add_argument("--version", action="version", version=package_version())
    return parser


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name the step run inside: a runtime failure escaping it is reported as happening ``while
    <what>`` (the innermost step wins)."""
    try:
        yield
    except Exception as err:
        if getattr(err, _STAGE, None) is None:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(err, _STAGE, what)
        raise


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: its lines joined, at most :data:`MAX_MESSAGE_LINES`."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if len(lines) > MAX_MESSAGE_LINES:
        more = len(lines) - MAX_MESSAGE_LINES
        lines = [*lines[:MAX_MESSAGE_LINES], f"... and {more} more line(s) ({DEBUG_ENV}=1 shows them)"]
    text = lines[0]
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


def _is_xla_error(err: BaseException) -> bool:
    """Whether ``err`` is XLA's runtime error (``jax.errors.JaxRuntimeError``, formerly
    ``jaxlib.xla_extension.XlaRuntimeError``); jax is not imported for the question."""
    errors = getattr(sys.modules.get("jax"), "errors", None)
    kind = getattr(errors, "JaxRuntimeError", None)
    return kind is not None and isinstance(err, kind)


def _failure(err: BaseException) -> tuple[int, str]:
    """Exit status and one-line message (after ``PROG: ``) for an exception escaping a command."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(err, (ValueError, OSError)):  # bad flags, files, prompts, checkpoints, config.json
        return EXIT_USAGE, f"error: {one_line(err)}"
    stage = getattr(err, _STAGE, None)
    during = f" while {stage}" if stage else ""
    if _is_xla_error(err):
        first = one_line(err).split("; ")[0]
        oom = "RESOURCE_EXHAUSTED" in first or "out of memory" in first.lower()
        hint = " (out of device memory: use fewer or smaller images, a smaller --batch-size or model)" if oom else ""
        return EXIT_RUNTIME, f"error: XLA runtime error{during}: {first}{hint}"
    if isinstance(err, MemoryError):
        return EXIT_RUNTIME, f"error: out of host memory{during}"
    if isinstance(err, ImportError):
        return EXIT_RUNTIME, f"error: missing dependency{during}: {one_line(err)}"
    if isinstance(err, RuntimeError):  # e.g. the training loss became NaN
        return EXIT_RUNTIME, f"error: {stage} failed: {one_line(err)}" if stage else f"error: {one_line(err)}"
    return EXIT_RUNTIME, f"error: unexpected {type(err).__name__}{during}: {one_line(err)} ({DEBUG_ENV}=1 for details)"


def run_guarded(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` and return its exit status; the top-level guard of every command.

    An exception escaping ``body`` is printed as one line ``PROG: error: message`` on stderr:
    ``ValueError`` / ``OSError`` (bad input: flags, files, prompts, checkpoints, config.json) exit
    2; XLA runtime errors (``jax.errors.JaxRuntimeError``: out of memory, ...), ``MemoryError``,
    ``ImportError``, other ``RuntimeError`` and anything unexpected exit 1, naming the step
    (:func:`doing`) that failed; ``KeyboardInterrupt`` is ``PROG: interrupted``, exit 130.
    ``SystemExit`` (argparse, ``--help``) passes through. With ``SAMHQ_DEBUG`` set (not ``0``) the
    exception is re-raised, traceback and all. Compiled functions persist on disk between runs
    (:func:`enable_compilation_cache`).
    """
    try:
        enable_compilation_cache()
        return body()
    except (Exception, KeyboardInterrupt) as err:
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        code, message = _failure(err)
        print(f"{prog}: {message}", file=sys.stderr)
        return code


# ---- samhq predict ----------------------------------------------------------------------------------

SAMHQ_HELP = """\
examples:
  samhq predict --checkpoint sam_hq_vit_b.pth --image dog.jpg --box 100 200 900 1200 --output out/
  samhq predict --checkpoint ckpt/ --images photos/ --prompts prompts.jsonl --output out/
  samhq everything --checkpoint sam_hq_vit_b.pth --image dog.jpg --output out/
  samhq convert sam_hq_vit_b.pth checkpoints/vit_b
  samhq parity --preset tiny_b
  samhq demo --output demo/   # offline: synthetic data, stand-in SAM, HQ fine-tuning, SAM vs HQ evaluation"""

PROMPT_KEYS = ("image", "boxes", "points")
PROMPTS_EXAMPLE = '{"image": "dog.jpg", "boxes": [[100, 200, 900, 1200]], "points": [[500, 600, 1], [200, 100, 0]]}'
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

examples:
  samhq predict --checkpoint sam_hq_vit_b.pth --image dog.jpg --box 100 200 900 1200 --output out/
  samhq predict --checkpoint ckpt/ --image dog.jpg --point 500 600 1 --point 200 100 0 --output out/
  samhq predict --checkpoint syscv-community/sam-hq-vit-base --images photos/ \\
      --prompts prompts.jsonl --output out/"""
CHECKPOINT_HELP = (
    "one of our checkpoint folders, an official .pth / .safetensors file, a Hugging Face folder, or a hub "
    "repo id owner/name (from the local hub cache); a path that does not exist is never sent to the hub "
    "unless it has that form"
)


def _number_rows(rows: Any, fields: str, name: str) -> list[list[float]]:
    """``rows`` as a list of rows of finite numbers, each with the ``fields`` (``"x0 y0 x1 y1"``)."""
    width = len(fields.split())
    if not isinstance(rows, list) or not all(
        isinstance(r, list)
        and len(r) == width
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
        for r in rows
    ):
        shown = json.dumps(rows)
        raise ValueError(f"{name}: expected a list of [{fields.replace(' ', ', ')}] rows, got {shown[:80]}")
    for r in rows:
        if not all(math.isfinite(v) for v in r):
            raise ValueError(f"{name} {_shown(r)}: every number must be finite")
    return [[float(v) for v in r] for r in rows]


def _shown(row: list[float]) -> str:
    return " ".join(f"{v:g}" for v in row)


def check_prompts(boxes: Any, points: Any, where: str | None = None) -> tuple[list[list[float]], list[list[Any]]]:
    """The prompts of one image, checked: ``(boxes, points)``, rows ``[x0, y0, x1, y1]`` and ``[x, y, label]``.

    Numbers finite, boxes with ``x1 >= x0`` and ``y1 >= y0``, labels 1 (foreground), 0 (background)
    or -1 (ignore; returned as ints), at least one box or point; otherwise a ``ValueError`` starting
    with ``where`` (``FILE:LINE`` of a prompts file; None: the ``--box`` / ``--point`` flags).
    """
    from samhq_jax.predictor import VALID_LABELS

    prefix = "" if where is None else f"{where}: "
    box, point = ("--box", "--point") if where is None else ("box", "point")
    boxes = _number_rows(boxes, "x0 y0 x1 y1", prefix + box)
    points = _number_rows(points, "x y label", prefix + point)
    for b in boxes:
        if b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"{prefix}{box} {_shown(b)}: need x1 >= x0 and y1 >= y0 (x0 y0 x1 y1)")
    for p in points:
        if p[2] not in VALID_LABELS:
            raise ValueError(
                f"{prefix}{point} {_shown(p)}: the label must be 1 (foreground), 0 (background) or -1 (ignore)"
            )
    if not boxes and not points:
        raise ValueError(f"{prefix}give at least one {box} or {point}")
    return boxes, [[x, y, int(label)] for x, y, label in points]


def check_image(path: Path, where: str = "") -> None:
    """``FileNotFoundError`` / ``ValueError`` (message starting with ``where``) unless ``path`` is a
    readable image."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}no image at {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}cannot read image {path}: {err}") from err


def read_prompts_file(path: Path, images: Path) -> list[tuple[Path, list, list]]:
    """``(image, boxes, points)`` of every line of a JSON-lines prompts file (images below folder
    ``images``), each line and image checked; errors name ``FILE:LINE``."""
    if not images.is_dir():
        raise FileNotFoundError(f"--images {images}: no such folder")
    jobs, stems = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{where}: not valid JSON ({err.msg}, column {err.colno}); e.g. {PROMPTS_EXAMPLE}"
            ) from err
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
            raise ValueError(
                f'{where}: expected an object with "image": a file name in {images}; e.g. {PROMPTS_EXAMPLE}'
            )
        unknown = sorted(set(record) - set(PROMPT_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(PROMPT_KEYS)}")
        boxes, points = check_prompts(record.get("boxes", []), record.get("points", []), where)
        image = images / record["image"]
        check_image(image, f"{where}: ")
        if image.stem in stems:
            raise ValueError(
                f"{where}: {record['image']} would overwrite the outputs of line {stems[image.stem]} (same stem "
                f"{image.stem!r}); give each image one line"
            )
        stems[image.stem] = n
        jobs.append((image, boxes, points))
    if not jobs:
        raise ValueError(f"{path}: no prompts; one JSON object per line, e.g. {PROMPTS_EXAMPLE}")
    return jobs


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


def overlay(
    image: np.ndarray, masks: np.ndarray, boxes: list, points: list, colors: np.ndarray = COLORS
) -> Image.Image:
    """``(H, W, 3)`` uint8 image with ``(P, H, W)`` bool masks tinted (alpha 0.5) in ``colors`` (RGB
    rows, cycled; mask i and box i share one) and prompts drawn."""
    out = image.astype(np.float32)
    for i, m in enumerate(masks):
        out[m] = 0.5 * out[m] + 0.5 * colors[i % len(colors)]
    pic = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    width = max(2, max(image.shape[:2]) // 300)
    for i, b in enumerate(boxes):
        draw.rectangle(list(map(float, b)), outline=tuple(int(c) for c in colors[i % len(colors)]), width=width)
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


def predict_jobs(args: argparse.Namespace) -> list[tuple[Path, list, list]]:
    """``(image, boxes, points)`` of every image of a ``samhq predict`` run, flags, prompts and images
    all checked: run before anything is loaded."""
    if (args.image is None) == (args.images is None):
        raise ValueError("give exactly one of --image or --images")
    if args.images is not None:
        if args.prompts is None:
            raise ValueError("--images needs --prompts (a JSON-lines file; see samhq predict --help)")
        if args.box or args.point:
            raise ValueError("--box / --point go with --image; for --images put the prompts in the --prompts file")
        return read_prompts_file(Path(args.prompts), Path(args.images))
    if args.prompts is not None:
        raise ValueError("--prompts goes with --images (a folder); for --image give --box / --point")
    boxes, points = check_prompts(args.box or [], args.point or [])
    check_image(Path(args.image), "--image: ")
    return [(Path(args.image), boxes, points)]


def _predict(args: argparse.Namespace) -> int:
    from samhq_jax.predictor import SamHQPredictor

    jobs = predict_jobs(args)  # every prompt and image checked before the checkpoint is read
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    with doing(f"loading the checkpoint {args.checkpoint}"):
        predictor = SamHQPredictor.from_pretrained(args.checkpoint)
    with tqdm(jobs, desc="samhq predict", unit="image", disable=len(jobs) == 1) as bar:
        for path, boxes, points in bar:
            with doing(f"segmenting {path}"):
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


def _parity(argv: list[str]) -> int:
    """``samhq parity ARGS``: :func:`eval.parity.main` (imported only now: it needs PyTorch)."""
    try:
        from eval.parity import main as parity_main
    except ImportError as err:
        raise ImportError(f"samhq parity needs the PyTorch references ({err}): pip install 'samhq-jax[test]'") from err
    return parity_main(argv)


def build_parser() -> OneLineParser:
    """The ``samhq`` parser (``convert`` and ``parity`` only listed: they parse their own flags)."""
    parser = command_parser(PROG, "SAM-HQ in JAX: segment images, convert weights, check parity", SAMHQ_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
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
    everything_cli.add_parser(sub, CHECKPOINT_HELP, help_layout(everything_cli.EVERYTHING_HELP))
    sub.add_parser("convert", help="convert weights between formats (see samhq convert --help)", add_help=False)
    sub.add_parser(
        "parity",
        help="stage-by-stage parity of a checkpoint against the PyTorch reference (see samhq parity --help)",
        add_help=False,
    )
    d = sub.add_parser(
        "demo", help="offline: train a stand-in SAM and its HQ part on synthetic data, evaluate", **help_layout("")
    )
    d.add_argument("--output", required=True, help="output folder (data, runs, evaluation, pictures)")
    d.add_argument("--preset", default="tiny_b", help="model size (a preset name)")
    d.add_argument("--train-images", type=int, default=240)
    d.add_argument("--val-images", type=int, default=24)
    d.add_argument("--sam-steps", type=int, default=400, help="steps of the stand-in SAM (every parameter)")
    d.add_argument("--hq-steps", type=int, default=300, help="steps of HQ fine-tuning (SAM frozen)")
    d.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``samhq``: ``predict``, ``everything`` and ``demo`` here; ``convert`` and ``parity`` get the rest of ``argv``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        from convert.cli import main as convert_main

        return convert_main(argv[1:])  # guarded there
    if argv[:1] == ["parity"]:
        return run_guarded(PROG, lambda: _parity(argv[1:]))

    def run() -> int:
        args = build_parser().parse_args(argv)
        commands = {"demo": _demo, "predict": _predict, "everything": everything_cli.run}
        return commands[args.command](args)

    return run_guarded(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
