"""``samhq-convert SRC DST [--to ours|official|hf]``: convert SAM-HQ weights between formats.

SRC is anything ``samhq_jax.load_pretrained`` accepts (our checkpoint directory, an official
``.pth`` / ``.safetensors`` file, a Hugging Face folder). Examples::

    samhq-convert sam_hq_vit_b.pth checkpoints/vit_b                     # -> our format
    samhq-convert hf_snapshot/ checkpoints/vit_b_hf                       # HF folder -> our format
    samhq-convert checkpoints/vit_b sam_hq_vit_b_ft.pth --to official     # -> official state dict
    samhq-convert checkpoints/vit_b hf_out/ --to hf                       # -> SamHQModel folder
"""

from __future__ import annotations

import argparse
import sys

import jax

from convert.core import ConversionError
from convert.export import export_hf, export_official
from samhq_jax.checkpoint import read_weights, save_checkpoint, untrained_hq_message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samhq-convert", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="official .pth / .safetensors file, or a Hugging Face SamHQModel folder")
    parser.add_argument("dst", help="output: a directory (ours, hf) or a .pth / .safetensors file (official)")
    parser.add_argument("--to", choices=("ours", "official", "hf"), default="ours", help="output format")
    args = parser.parse_args(argv)
    try:
        weights = read_weights(args.src)
        config, params = weights.config, weights.params
        if not weights.hq_trained:
            print(f"samhq-convert: warning: {untrained_hq_message(args.src)}", file=sys.stderr)
        if args.to == "ours":
            out = save_checkpoint(args.dst, config, params, source=str(args.src), hq_trained=weights.hq_trained)
        elif args.to == "official":
            out = export_official(params, args.dst)
        else:
            out = export_hf(config, params, args.dst)
    except (ConversionError, FileNotFoundError, ValueError) as err:
        print(f"samhq-convert: {err}", file=sys.stderr)
        return 2
    leaves = jax.tree.leaves(params)
    n = sum(v.size for v in leaves)
    print(f"converted {args.src} -> {out} ({args.to}): {config.name}, {len(leaves)} tensors, {n:,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
