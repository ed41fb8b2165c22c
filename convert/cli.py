"""``samhq-convert SRC DST [--to ours|official|hf]``: convert SAM-HQ weights between formats.

SRC is anything ``samhq_jax.load_pretrained`` accepts: one of our checkpoint folders, an official
``.pth`` / ``.safetensors`` file, a Hugging Face folder, or a hub repo id ``owner/name`` (from the
local hub cache; a path that does not exist is looked up on the hub only when it has that form).
An original SAM checkpoint converts with a warning: its HQ part is freshly initialised. Examples::

    samhq-convert sam_hq_vit_b.pth checkpoints/vit_b                     # -> our format
    samhq-convert hf_snapshot/ checkpoints/vit_b_hf                       # HF folder -> our format
    samhq-convert checkpoints/vit_b sam_hq_vit_b_ft.pth --to official     # -> official state dict
    samhq-convert checkpoints/vit_b hf_out/ --to hf                       # -> SamHQModel folder

Written: ``--to ours`` a folder with ``config.json`` and ``model.safetensors``; ``--to official`` a
``.pth`` / ``.safetensors`` state dict as SysCV's code saves it; ``--to hf`` a folder that
transformers' ``SamHQModel.from_pretrained`` loads. ``samhq convert SRC DST ...`` is the same command.
"""

from __future__ import annotations

import argparse
import sys

import jax

from convert.export import export_hf, export_official
from samhq_jax.checkpoint import read_weights, save_checkpoint, untrained_hq_message
from samhq_jax.cmdkit.args import command_parser, docstring_help
from samhq_jax.cmdkit.guard import run_guarded

PROG = "samhq-convert"


def build_parser() -> argparse.ArgumentParser:
    """The ``samhq-convert`` parser."""
    parser = command_parser(PROG, __doc__.split("\n")[0].split(": ", 1)[1], docstring_help(__doc__))
    parser.add_argument("src", help="official .pth / .safetensors file, our or a Hugging Face folder, a hub id")
    parser.add_argument("dst", help="output: a directory (ours, hf) or a .pth / .safetensors file (official)")
    parser.add_argument("--to", choices=("ours", "official", "hf"), default="ours", help="output format")
    return parser


def convert(args: argparse.Namespace) -> int:
    """Read ``args.src``, write ``args.dst`` in format ``args.to`` and say what was done."""
    weights = read_weights(args.src)
    config, params = weights.config, weights.params
    if not weights.hq_trained:
        print(f"{PROG}: warning: {untrained_hq_message(args.src)}", file=sys.stderr)
    if args.to == "ours":
        out = save_checkpoint(args.dst, config, params, source=str(args.src), hq_trained=weights.hq_trained)
    elif args.to == "official":
        out = export_official(params, args.dst)
    else:
        out = export_hf(config, params, args.dst)
    leaves = jax.tree.leaves(params)
    n = sum(v.size for v in leaves)
    print(f"converted {args.src} -> {out} ({args.to}): {config.name}, {len(leaves)} tensors, {n:,} values")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``samhq-convert``; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`)."""
    return run_guarded(PROG, lambda: convert(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
