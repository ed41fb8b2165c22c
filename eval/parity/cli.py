"""The command line of ``samhq parity`` (also ``python -m eval.parity``): options, their checks, the
exit status (0 the bar holds, 1 it does not or a runtime failure, 2 usage errors), behind the
commands' guard (:func:`samhq_jax.cmdkit.guard.run_guarded`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jax

from eval.parity.modes import DTYPES, PROG, run_checkpoint, run_preset
from eval.parity.stages import MIN_MASK_AGREEMENT, PARITY_RTOL
from samhq_jax.cmdkit.args import POSITIVE_INT, OneLineParser, help_layout
from samhq_jax.cmdkit.guard import UsageError, run_guarded
from samhq_jax.config import PRESETS

EPILOG = f"""\
examples:
  samhq parity --checkpoint sam_hq_vit_l.pth --image dog.jpg --image cat.png --json parity.json
  samhq parity --checkpoint hf-folder/ --image dog.jpg --prompts prompts.jsonl --dtype bfloat16
  samhq parity --preset vit_b          (seeded random weights, sample photos; also python -m eval.parity)

prompts file: one JSON object per line, in image pixels, as samhq predict --prompts:
  {{"image": "dog.jpg", "boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, label], ...]}}
  ("image" optional: without it the line applies to every --image). Without --prompts: two centred
  boxes, the centre point with a background point, point + box, point + the first box's mask.

reference: official .pth / .safetensors -> segment_anything_hq; Hugging Face folder -> transformers
SamHQModel; our checkpoint folder -> exported to either (by its two-way LayerNorm eps). Original SAM
checkpoints are refused (convert them first).

the bar: relative error <= {PARITY_RTOL:.0e}, mask agreement >= {100 * MIN_MASK_AGREEMENT:.2f}%;
exit status 0 when every figure is within it, 1 when one is not."""


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Stage-by-stage parity of samhq-jax with the PyTorch SAM-HQ (official or Hugging Face).",
        **help_layout(EPILOG),
    )
    parser.add_argument("--checkpoint", help="a SAM-HQ checkpoint: official .pth / .safetensors, HF folder, ours")
    parser.add_argument("--image", action="append", help="a photo (repeat for more); with --checkpoint")
    parser.add_argument("--prompts", help="JSON lines in image pixels, as samhq predict --prompts; with --checkpoint")
    parser.add_argument("--preset", help="without --checkpoint: seeded random weights of a preset (default tiny_b)")
    parser.add_argument("--images", type=POSITIVE_INT, default=1, help="preset mode: how many sample images")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="our compute dtype")
    parser.add_argument("--precision", choices=("default", "highest"), default="highest", help="JAX matmul precision")
    parser.add_argument("--json", help="write the figures to this file")
    return parser


def _write_json(path: Path, figures: dict | None) -> None:
    """Write the figures (``None``: only check that ``path`` can be written, before the run)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if figures is None:
            path.touch()
        else:
            path.write_text(json.dumps(figures, indent=2) + "\n")
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err}") from err


def _parse(parser: Any, argv: list[str]) -> Any:
    """Parse and check the combination of options (``parser.error`` exits 2 with one line)."""
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        if args.preset is not None:
            parser.error("give --checkpoint or --preset, not both")
        if not args.image:
            parser.error("--checkpoint needs at least one --image")
    else:
        if args.image or args.prompts:
            parser.error("--image and --prompts need --checkpoint (without it: --preset)")
        args.preset = args.preset or "tiny_b"
        if args.preset not in PRESETS:
            parser.error(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    return args


def run(args: argparse.Namespace) -> int:
    """Compare, print the verdict, write ``--json``; 0 when the bar holds, 1 when it does not."""
    if args.json is not None:
        _write_json(Path(args.json), None)
    with jax.default_matmul_precision(args.precision):
        report = run_checkpoint(args) if args.checkpoint is not None else run_preset(args)
    if args.json is not None:
        _write_json(Path(args.json), report.to_json())
    print(report.verdict())
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    """``samhq parity``: 0 when the bar holds, 1 when it does not (or a runtime failure), 2 for usage
    errors; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`)."""
    parser = build_parser()
    try:
        args = _parse(parser, sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # argparse: --help (0) or a one-line usage error (2)
        return stop.code if isinstance(stop.code, int) else 2
    return run_guarded(PROG, lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
