"""``samhq-train`` (also ``python -m train``): fine-tune SAM-HQ's HQ parameters.

    # the official recipe on HQSeg-44K, from an original SAM checkpoint (HQ part initialised)
    samhq-train --checkpoint sam_vit_l_0b3195.pth --data-root data --output runs/vit_l \\
        --val-datasets DIS5K-VD,COIFT,HRSOD,ThinObject5k-TE
    # your own folders (DIR/images/<stem>.jpg + DIR/masks/<stem>.png), from released HQ weights
    samhq-train --checkpoint sam_hq_vit_b.pth --data my_set --val-data my_val --steps 2000 \\
        --batch-size 8 --output runs/mine
    samhq-train ... --resume          # continue the latest checkpoint of --output
    # several hosts: the same command on each, plus
    samhq-train ... --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0

Defaults are the official recipe: Adam lr 1e-3, x0.1 every 10 epochs (StepLR) over 12, global batch
32, HQ parameters trained, everything else frozen. Writes ``OUTPUT/metrics.jsonl`` (and TensorBoard
events when tensorboardX is installed; ``--tensorboard`` requires them, ``--no-tensorboard`` skips
them), ``OUTPUT/checkpoints/``, ``OUTPUT/final/`` (a model directory ``samhq predict`` /
``samhq-eval`` / ``samhq-convert`` take, plus ``hq_only.safetensors``; written whole, then renamed)
and ``OUTPUT/run.json`` (model, starting weights' SHA-256, data, every recipe setting). An
``--output`` that holds anything is refused unless ``--resume`` (continue the run there) or
``--overwrite`` (delete its run files and start over). ``--resume`` refuses a start that differs from
run.json in any recipe setting, naming it (logging, saving, validation, worker and path flags may
change), and drops what metrics.jsonl logged after the restored step. ``--precision``
(``default``, the default, or ``highest``) is the matmul precision of the step and its validation;
``--dtype`` (``float32``, the default, or ``bfloat16``; ``--encoder-dtype`` is the same flag) the
frozen image encoder's compute dtype.
``--remat`` recomputes each image-encoder block in the backward pass (``jax.checkpoint``): less
memory with ``--trainable all`` (or any rule reaching the encoder), the same parameters; recorded in
``run.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TextIO

from samhq_jax.cmdkit.args import (
    CHECKPOINT_HELP,
    COUNT,
    POSITIVE,
    POSITIVE_INT,
    add_distributed_flags,
    add_overwrite_flag,
    command_parser,
    distributed_flags,
    docstring_help,
    int_at_least,
)
from samhq_jax.cmdkit.guard import run_guarded
from samhq_jax.datasets import HQSEG_TRAIN
from samhq_jax.distributed import initialize
from samhq_jax.errors import InputError
from samhq_jax.precision import DTYPES, PRECISIONS, TRAINING
from train.loop import MAX_SEED, OUTPUT_MASKS, TrainConfig, train

PROG = "samhq-train"


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _seed(text: str) -> int:
    value = int_at_least(0)(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer <= {MAX_SEED}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``samhq-train`` parser: every flag named like a :class:`TrainConfig` field is that field."""
    p = command_parser(PROG, __doc__.split("\n")[0].split(": ", 1)[1], docstring_help(__doc__))
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--checkpoint", help=f"SAM-HQ or original SAM weights: {CHECKPOINT_HELP}")
    start.add_argument("--preset", help="start from random weights of a preset (tests, demo)")
    p.add_argument("--data", action="append", default=[], help="generic folder DIR/images + DIR/masks (repeatable)")
    p.add_argument("--data-root", help="HQSeg-44K root: the official ./data folder")
    p.add_argument("--datasets", type=_names, help=f"training sets under --data-root (default {','.join(HQSEG_TRAIN)})")
    p.add_argument("--val-data", action="append", default=[], help="generic validation folder (repeatable)")
    p.add_argument("--val-datasets", type=_names, default=(), help="validation sets under --data-root")
    p.add_argument("--output", required=True, help="run folder")
    p.add_argument("--epochs", type=POSITIVE_INT, default=12)
    p.add_argument("--lr-drop-epoch", type=POSITIVE_INT, default=10, help="lr x0.1 every N epochs (StepLR)")
    p.add_argument(
        "--steps", type=POSITIVE_INT, help="total steps instead of --epochs (an lr epoch is then steps / epochs steps)"
    )
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="global batch, split over every device")
    p.add_argument("--lr", type=POSITIVE, default=1e-3)
    p.add_argument("--seed", type=_seed, default=42)
    p.add_argument("--trainable", default="hq", help="hq (default) | decoder | all | a regex over parameter paths")
    p.add_argument("--output-mask", default="hq", choices=OUTPUT_MASKS, help="output trained (sam: a stand-in SAM)")
    p.add_argument(
        "--precision",
        default=TRAINING.precision,
        choices=PRECISIONS,
        help=f"matmul precision of the step and its validation (default {TRAINING.precision}: the device's fast "
        "path, TF32 / bf16 passes; highest: full float32)",
    )
    p.add_argument(
        "--dtype",
        "--encoder-dtype",
        dest="dtype",
        default=TRAINING.dtype,
        choices=tuple(DTYPES),
        help=f"compute dtype of the frozen image encoder (default {TRAINING.dtype}; --encoder-dtype: the same flag)",
    )
    p.add_argument(
        "--remat",
        action="store_true",
        help="recompute each image-encoder block in the backward pass (less memory when encoder parameters train)",
    )
    p.add_argument("--save-every", type=POSITIVE_INT, help="steps between checkpoints (default: one epoch)")
    p.add_argument("--keep", type=POSITIVE_INT, default=3, help="checkpoints kept")
    p.add_argument("--resume", action="store_true", help="continue the run in --output (refused if it differs)")
    add_overwrite_flag(p, "run in --output (its run.json, metrics, checkpoints, tb/ and final/ are deleted first)")
    p.add_argument("--log-every", type=POSITIVE_INT, default=10)
    p.add_argument("--val-every", type=COUNT, help="steps between validations (default: one epoch; 0: never)")
    p.add_argument("--val-limit", type=POSITIVE_INT, help="validate on the first N images of each set")
    p.add_argument("--workers", type=COUNT, default=0, help="grain loader worker processes")
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        help="TensorBoard events in OUTPUT/tb (default: when tensorboardX is installed; --tensorboard requires it)",
    )
    add_distributed_flags(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Train as the flags say (every flag named like a :class:`TrainConfig` field is that field);
    with ``--coordinator`` / ``--num-processes`` / ``--process-id``, as one process of several."""
    processes = distributed_flags(args)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(output=Path(args.output), data=tuple(args.data), val_data=tuple(args.val_data))
    if args.datasets is None:
        del values["datasets"]  # the default, HQSeg-44K's training sets
    elif args.data_root is None:
        raise InputError(f"--datasets {','.join(args.datasets)} needs --data-root (the HQSeg-44K root)")
    cfg = TrainConfig(**values)  # every flag checked (ranges, combinations) before any work
    if processes is not None:
        initialize(*processes)  # before anything touches a device
    result = train(cfg)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.last_metrics.items())
    print(f"{PROG}: {result.steps} steps done ({metrics}); model in {result.final_dir}")
    return 0


class StderrHandler(logging.StreamHandler):
    """A log handler writing to ``sys.stderr`` as it is at each message (a caller that runs the
    command in-process may have replaced it since the handler was made)."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:  # StreamHandler.__init__ sets it
        pass


def main(argv: list[str] | None = None) -> int:
    """``samhq-train``; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`): bad input
    exit 2, a failure while training (a NaN loss, an XLA runtime error) exit 1."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # bad flags: one line already printed, exit code 2 (0 for --help)
        return int(exit_.code or 0)
    logger = logging.getLogger("samhq")
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # libraries that configure the root logger would print it twice
    return run_guarded(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
