"""``samhq export``: the whole model as ONNX (encoder and decoder) or as StableHLO artifacts.

--format onnx: DIR/encoder.onnx (input "image" (1, 3, S, S): the image normalised and zero-padded
  as the official Sam.preprocess returns it; outputs image_embeddings (1, 256, 64, 64) and
  interm_embeddings (1, 1, 64, 64, vit_dim); its weights in DIR/encoder.onnx.data beside it, for
  the real models: keep the two together) and DIR/decoder.onnx, the official SamOnnxModel's
  signature and semantics (inputs image_embeddings, interm_embeddings (the official (4, 1, 64, 64,
  vit_dim) too), point_coords (1, N, 2), point_labels (1, N), mask_input (1, 1, 256, 256),
  has_mask_input (1,), orig_im_size (2,); outputs masks (1, 1, H, W), iou_predictions (1, 1),
  low_res_masks (1, 1, 256, 256); labels -1 / 0 / 1 / 2 / 3, any N >= 1). Converted by jax2onnx
  (pip install 'samhq-jax[export]'); --opset 17 (default, as the official script) .. 23.
--format stablehlo: DIR/encoder.stablehlo and DIR/decoder.stablehlo (jax.export, serialized;
  the same inputs, the weights as a first argument from DIR/model.safetensors; any number of prompt
  sets and points), DIR/stablehlo.json (inputs, outputs, config, platforms) and DIR/config.json;
  lowered for every platform of --platforms (default cpu,cuda,tpu; all from any machine). The
  decoder returns low_res_masks and iou_predictions: masks at the original size have a shape that
  is data (stablehlo.json says how to upscale).

--hq-token-only and --multimask-output are the official export options, fixed in the decoder.
DIR is written whole (a hidden temporary folder, then a rename); an existing non-empty DIR is
refused before anything is read unless --overwrite. An original SAM checkpoint exports with a
warning: its HQ part is freshly initialised.

examples:
  samhq export --checkpoint sam_hq_vit_b.pth --output onnx_vit_b/ --format onnx
  samhq export --checkpoint sam_hq_vit_l.pth --output onnx_vit_l/ --format onnx --hq-token-only
  samhq export --checkpoint ckpt/ --output hlo/ --format stablehlo --platforms cpu,tpu
  python examples/onnx_segment.py --encoder onnx_vit_b/encoder.onnx --decoder onnx_vit_b/decoder.onnx \\
      --image dog.jpg --box 100 200 900 1200 --output dog_mask.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from samhq_jax.cmdkit.args import CHECKPOINT_HELP, add_overwrite_flag, docstring_help, help_layout, int_at_least
from samhq_jax.cmdkit.guard import doing
from samhq_jax.errors import InputError

FORMATS = ("onnx", "stablehlo")


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """The checked flags of one export."""

    checkpoint: str
    output: Path
    format: str
    hq_token_only: bool
    multimask_output: bool
    platforms: tuple[str, ...]  # stablehlo only
    opset: int  # onnx only
    overwrite: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The export flags (shared by ``samhq export`` and ``python -m convert.deploy``)."""
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--output", required=True, help="output folder DIR (see below for what is written)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (encoder + decoder) or stablehlo")
    parser.add_argument("--hq-token-only", action="store_true", help="the decoder returns the HQ mask alone")
    parser.add_argument(
        "--multimask-output", action="store_true", help="SAM's mask is the best of its three multimask outputs"
    )
    parser.add_argument(
        "--platforms", help="stablehlo: comma-separated, of cpu, cuda, rocm, tpu (default cpu,cuda,tpu)"
    )
    parser.add_argument("--opset", type=int_at_least(1), help="onnx: the ONNX opset, 17 (default) .. 23")
    add_overwrite_flag(parser, "DIR")


def add_parser(sub: Any) -> None:
    """Register ``export`` on the ``samhq`` subparsers ``sub``."""
    p = sub.add_parser(
        "export",
        help="export the model to ONNX (encoder + decoder) or StableHLO",
        description=__doc__.split("\n")[0].split(": ", 1)[1].capitalize(),
        **help_layout(docstring_help(__doc__)),
    )
    add_arguments(p)


def plan(args: argparse.Namespace) -> ExportPlan:
    """Every flag checked against the others, the checkpoint found and the output free (or
    ``--overwrite``), and the converter importable: before anything is read or converted."""
    from convert.deploy.onnx import DEFAULT_OPSET, check_opset, converter
    from convert.deploy.stablehlo import DEFAULT_PLATFORMS, check_platforms
    from samhq_jax.atomic import check_target
    from samhq_jax.checkpoint import resolve_source

    if args.format == "onnx":
        if args.platforms is not None:
            raise InputError("--platforms goes with --format stablehlo (an ONNX file runs wherever its runtime does)")
        opset, platforms = check_opset(DEFAULT_OPSET if args.opset is None else args.opset), ()
    else:
        if args.opset is not None:
            raise InputError("--opset goes with --format onnx")
        given = DEFAULT_PLATFORMS if args.platforms is None else tuple(p.strip() for p in args.platforms.split(","))
        opset, platforms = 0, check_platforms(given)
    check_target(Path(args.output), args.overwrite, "--output")
    resolve_source(args.checkpoint)
    if args.format == "onnx":
        converter()
    return ExportPlan(
        args.checkpoint,
        Path(args.output),
        args.format,
        args.hq_token_only,
        args.multimask_output,
        platforms,
        opset,
        args.overwrite,
    )


def size_text(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.1f} kB"


def run(args: argparse.Namespace) -> int:
    """``samhq export``: check the flags, read the checkpoint, convert, write DIR whole; one summary line."""
    job = plan(args)
    from convert.deploy.onnx import export_onnx
    from convert.deploy.signature import DecoderOptions
    from convert.deploy.stablehlo import export_stablehlo
    from samhq_jax.atomic import atomic_dir
    from samhq_jax.checkpoint import read_weights, untrained_hq_message

    options = DecoderOptions(job.hq_token_only, job.multimask_output)
    with tqdm(total=3, desc="samhq export", unit="step") as bar:

        def step(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)

        bar.set_postfix_str("reading the checkpoint")
        with doing(f"reading the checkpoint {job.checkpoint}"):
            weights = read_weights(job.checkpoint)
        if not weights.hq_trained:
            tqdm.write(f"samhq export: warning: {untrained_hq_message(job.checkpoint)}", file=sys.stderr)
        with atomic_dir(job.output, job.overwrite, "--output") as tmp, doing(f"exporting to {job.format}"):
            if job.format == "onnx":
                files = export_onnx(weights.config, weights.params, tmp, options, job.opset, step)
                settings = f"opset {job.opset}"
            else:
                files = export_stablehlo(
                    weights.config, weights.params, tmp, options, job.platforms, weights.hq_trained, step
                )
                settings = f"platforms {','.join(job.platforms)}"
            names = [(f.name, size_text(f)) for f in files]
        bar.update(bar.total - bar.n)
    written = ", ".join(f"{name} ({size})" for name, size in names)
    print(
        f"samhq export: {weights.config.name} -> {job.output}: {written}; {settings}, "
        f"hq_token_only={job.hq_token_only}, multimask_output={job.multimask_output}"
    )
    return 0
