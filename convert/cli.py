"""``samhq-convert SRC DST``: PyTorch SAM-HQ weights -> a samhq-jax checkpoint directory.

Example::

    samhq-convert sam_hq_vit_b.pth checkpoints/vit_b      # official SysCV checkpoint
    samhq-convert hf_snapshot/ checkpoints/vit_b_hf        # Hugging Face SamHQModel folder
"""

from __future__ import annotations

import argparse
import sys

from convert.core import ConversionError
from convert.sources import load_torch_checkpoint
from samhq_jax.checkpoint import save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samhq-convert", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="official .pth / .safetensors file, or a Hugging Face SamHQModel folder")
    parser.add_argument("dst", help="output directory (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    try:
        config, params = load_torch_checkpoint(args.src)
    except (ConversionError, FileNotFoundError) as err:
        print(f"samhq-convert: {err}", file=sys.stderr)
        return 2
    out = save_checkpoint(args.dst, config, params, source=str(args.src))
    n = sum(v.size for v in _leaves(params))
    print(f"converted {args.src} -> {out}: {config.name}, {len(_leaves(params))} tensors, {n:,} values")
    return 0


def _leaves(tree: dict) -> list:
    return [x for v in tree.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]


if __name__ == "__main__":
    sys.exit(main())
