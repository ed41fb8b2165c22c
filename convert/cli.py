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

DST is written whole or not at all (a hidden temporary file or folder beside it, then a rename); an
existing DST is refused before anything is read unless ``--overwrite`` is given, and then replaced
whole (no stale files of the old one are left in a folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

from convert.export import export_hf, export_official
from samhq_jax.atomic import atomic_dir, atomic_file, check_apart, check_target
from samhq_jax.checkpoint import FILE_SUFFIXES, read_weights, save_checkpoint, untrained_hq_message
from samhq_jax.cmdkit.args import add_overwrite_flag, command_parser, docstring_help
from samhq_jax.cmdkit.guard import doing, run_guarded
from samhq_jax.errors import InputError

PROG = "samhq-convert"
OFFICIAL_SUFFIXES = (".pth", ".pt", ".safetensors")  # what export_official writes


def build_parser() -> argparse.ArgumentParser:
    """The ``samhq-convert`` parser."""
    parser = command_parser(PROG, __doc__.split("\n")[0].split(": ", 1)[1], docstring_help(__doc__))
    parser.add_argument("src", help="official .pth / .safetensors file, our or a Hugging Face folder, a hub id")
    parser.add_argument("dst", help="output: a directory (ours, hf) or a .pth / .safetensors file (official)")
    parser.add_argument("--to", choices=("ours", "official", "hf"), default="ours", help="output format")
    add_overwrite_flag(parser, "DST")
    return parser


def check_destination(dst: Path, to: str, overwrite: bool, src: str) -> None:
    """Refuse, before anything is read, a DST that does not suit ``--to`` (a file name for a folder
    format, a folder name for ``official``), that exists without ``overwrite``, or whose replacement
    would delete SRC (a folder holding it; SRC itself may be rewritten: it is read whole first)."""
    if to == "official" and dst.suffix not in OFFICIAL_SUFFIXES:
        raise InputError(f"DST {dst}: --to official writes a {' / '.join(OFFICIAL_SUFFIXES)} file; name it so")
    if to != "official" and dst.suffix.lower() in FILE_SUFFIXES:
        raise InputError(
            f"DST {dst}: --to {to} writes a folder, but the name ends in {dst.suffix} "
            "(for a state dict file: --to official)"
        )
    check_target(dst, overwrite, "DST")
    check_apart(dst, [src], "DST", allow_same=True)


def convert(args: argparse.Namespace) -> int:
    """Check ``args.dst``, read ``args.src``, write ``args.dst`` in format ``args.to`` (whole, then
    renamed into place) and say what was done."""
    dst = Path(args.dst)
    check_destination(dst, args.to, args.overwrite, args.src)
    with doing(f"reading {args.src}"):
        weights = read_weights(args.src)
    config, params = weights.config, weights.params
    if not weights.hq_trained:
        print(f"{PROG}: warning: {untrained_hq_message(args.src)}", file=sys.stderr)
    with doing(f"writing {dst}"):
        if args.to == "official":
            with atomic_file(dst, args.overwrite, "DST") as tmp:
                export_official(params, tmp)
        else:
            with atomic_dir(dst, args.overwrite, "DST") as tmp:
                if args.to == "ours":
                    save_checkpoint(tmp, config, params, source=str(args.src), hq_trained=weights.hq_trained)
                else:
                    export_hf(config, params, tmp)
    leaves = jax.tree.leaves(params)
    n = sum(v.size for v in leaves)
    print(f"converted {args.src} -> {dst} ({args.to}): {config.name}, {len(leaves)} tensors, {n:,} values")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``samhq-convert``; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`)."""
    return run_guarded(PROG, lambda: convert(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
