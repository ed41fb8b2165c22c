"""``samhq``: the dispatcher. It only hands over to the commands, and nothing imports it.

``samhq predict`` (:mod:`samhq_jax.commands.predict`), ``samhq everything``
(:mod:`samhq_jax.commands.everything`), ``samhq demo`` (:mod:`train.demo`), and ``samhq convert`` /
``samhq parity``, which get the rest of the command line (:mod:`convert.cli`,
:mod:`eval.parity.cli`). Errors are one line on stderr with an exit status
(:func:`samhq_jax.cmdkit.guard.run_guarded`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samhq_jax.cmdkit.args import COUNT, POSITIVE_INT, OneLineParser, command_parser, help_layout
from samhq_jax.cmdkit.guard import run_guarded
from samhq_jax.commands import everything, export, predict, serve
from samhq_jax.config import PRESETS

PROG = "samhq"
SAMHQ_HELP = """\
examples:
  samhq predict --checkpoint sam_hq_vit_b.pth --image dog.jpg --box 100 200 900 1200 --output out/
  samhq predict --checkpoint ckpt/ --images photos/ --prompts prompts.jsonl --output out/
  samhq everything --checkpoint sam_hq_vit_b.pth --image dog.jpg --output out/
  samhq export --checkpoint sam_hq_vit_b.pth --output onnx/ --format onnx
  samhq serve --checkpoint sam_hq_vit_b.pth   # a click-to-segment page at http://127.0.0.1:8000/
  samhq convert sam_hq_vit_b.pth checkpoints/vit_b
  samhq parity --preset tiny_b
  samhq demo --output demo/   # offline: synthetic data, stand-in SAM, HQ fine-tuning, SAM vs HQ evaluation
  samhq demo --output demo_light/ --model vit_tiny   # the same for Light HQ-SAM (TinyViT encoder)"""


def _demo(args: argparse.Namespace) -> int:
    from train.demo import DemoConfig, demo_preset, run_demo

    run_demo(
        DemoConfig(
            output=Path(args.output),
            preset=demo_preset(args.model or "vit_b") if args.preset is None else args.preset,
            train_images=args.train_images,
            val_images=args.val_images,
            sam_steps=args.sam_steps,
            hq_steps=args.hq_steps,
            seed=args.seed,
        )
    )
    return 0


def _parity(argv: list[str]) -> int:
    """``samhq parity ARGS``: :func:`eval.parity.cli.main` (imported only now: it needs PyTorch)."""
    try:
        from eval.parity.cli import main as parity_main
    except ImportError as err:
        raise ImportError(f"samhq parity needs the PyTorch references ({err}): pip install 'samhq-jax[test]'") from err
    return parity_main(argv)


def build_parser() -> OneLineParser:
    """The ``samhq`` parser (``convert`` and ``parity`` only listed: they parse their own flags)."""
    parser = command_parser(PROG, "SAM-HQ in JAX: segment images, convert weights, check parity", SAMHQ_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    predict.add_parser(sub)
    everything.add_parser(sub)
    export.add_parser(sub)
    serve.add_parser(sub)
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
    which = d.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        choices=[p for p in PRESETS if p.startswith("vit_")],
        help="structure by official name, at test size (vit_tiny: Light HQ-SAM's TinyViT); default vit_b",
    )
    which.add_argument("--preset", choices=PRESETS, help="model size (a preset name; default tiny_b)")
    d.add_argument("--train-images", type=POSITIVE_INT, default=240)
    d.add_argument("--val-images", type=POSITIVE_INT, default=24)
    d.add_argument("--sam-steps", type=POSITIVE_INT, default=400, help="steps of the stand-in SAM (every parameter)")
    d.add_argument("--hq-steps", type=POSITIVE_INT, default=300, help="steps of HQ fine-tuning (SAM frozen)")
    d.add_argument("--seed", type=COUNT, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``samhq``: ``predict``, ``everything`` and ``demo`` parsed here; ``convert`` and ``parity`` get
    the rest of ``argv``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        from convert.cli import main as convert_main

        return convert_main(argv[1:])  # guarded there
    if argv[:1] == ["parity"]:
        return run_guarded(PROG, lambda: _parity(argv[1:]))

    def run() -> int:
        args = build_parser().parse_args(argv)
        commands = {
            "demo": _demo,
            "predict": predict.run,
            "everything": everything.run,
            "export": export.run,
            "serve": serve.run,
        }
        return commands[args.command](args)

    return run_guarded(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
