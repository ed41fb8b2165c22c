"""``samhq-eval`` (also ``python -m eval``): mIoU and boundary IoU of SAM-HQ on the HQ benchmarks,
SAM vs HQ side by side, with the official protocol (:mod:`eval.protocol`).

    # the paper's table: the four HQSeg-44K validation sets below the official ./data folder
    samhq-eval --checkpoint sam_hq_vit_l.pth --sam-checkpoint sam_vit_l_0b3195.pth \\
        --data-root data --paper vit_l --output eval_out/
    # your own folders (DIR/images/<stem>.jpg + DIR/masks/<stem>.png), a fine-tuned checkpoint
    samhq-eval --checkpoint ckpt/ --data my_set/ --data other_set/ --output eval_out/ --limit 100

Written to ``--output``: ``per_image.csv`` (``dataset,image,iou_hq,biou_hq,iou_samhq,biou_samhq,
iou_sam,biou_sam``, IoUs in [0, 1], scored images only), ``summary.json`` (per dataset: count,
skipped, mIoU / mBIoU per output in percent, data problems; ``"mean"`` over datasets; ``"run"``: the
checkpoints, what the SAM row is, the matmul ``precision`` and compute ``dtype``), ``summary.md``
(the paper's table layout; with ``--paper`` the paper's numbers and the differences) and
``pictures/`` (the ``--pictures`` images where HQ gains least and most over SAM).

``--precision`` (``highest``, the default: full float32 on every device, so the numbers do not
depend on it; ``default``: the device's TF32 / bf16 matmul passes) and ``--dtype`` (``float32``,
the default, or ``bfloat16``) reach every compiled call (:mod:`samhq_jax.precision`); both are
recorded in ``summary.json`` and the header of ``summary.md``.

Without ``--sam-checkpoint`` the SAM row is the HQ checkpoint's own SAM decoder with the HQ token
left out. Bad data (a dataset folder that cannot be listed, an unreadable file, an image / mask size
mismatch, a mask without foreground, a non-binary mask) is reported on stderr and in
``summary.json`` and does not stop the run. Bad flags, missing folders and unreadable checkpoints
are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from samhq_jax.cmdkit.args import CHECKPOINT_HELP, command_parser, docstring_help
from samhq_jax.cmdkit.guard import doing, run_guarded
from samhq_jax.datasets import HQSEG_LAYOUT, HQSEG_VAL
from samhq_jax.precision import DTYPES, EVALUATION, PRECISIONS

if TYPE_CHECKING:
    from samhq_jax.checkpoint import LoadedWeights

PROG = "samhq-eval"
RESERVED = ("mean", "run")  # summary.json keys that are not datasets


def _count(minimum: int) -> Callable[[str], int]:
    """argparse type: an int >= ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def parser() -> argparse.ArgumentParser:
    """The ``samhq-eval`` parser."""
    p = command_parser(
        PROG, "mIoU / boundary IoU of SAM-HQ vs SAM on HQ segmentation benchmarks", docstring_help(__doc__)
    )
    p.add_argument("--checkpoint", required=True, help=f"SAM-HQ weights: {CHECKPOINT_HELP}")
    p.add_argument(
        "--sam-checkpoint", help="original SAM weights for the SAM row (default: the HQ checkpoint's SAM part)"
    )
    p.add_argument("--data", action="append", help="a folder DIR/images + DIR/masks (repeatable)")
    p.add_argument("--data-root", help="the official data folder holding DIS5K/ and thin_object_detection/")
    p.add_argument("--datasets", help=f"with --data-root, comma-separated (default {','.join(HQSEG_VAL)})")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--batch-size", type=_count(1), default=4, help="images encoded per compiled call (default 4)")
    p.add_argument("--limit", type=_count(1), help="only the first N images of each dataset")
    p.add_argument("--paper", choices=("vit_b", "vit_l", "vit_h"), help="add the paper's numbers for this backbone")
    p.add_argument(
        "--pictures", type=_count(0), default=5, help="pictures of the N worst and N best images (default 5)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=EVALUATION.precision,
        help=f"matmul / convolution precision (default {EVALUATION.precision}: full float32 on any device; "
        "default: the device's fast path, TF32 / bf16 passes)",
    )
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=EVALUATION.dtype,
        help=f"compute dtype of the model (default {EVALUATION.dtype})",
    )
    return p


def _datasets(args: argparse.Namespace) -> tuple[dict[str, list], dict[str, str]]:
    """``({name: pairs}, {name: listing error})``; raises ValueError / FileNotFoundError for bad flags or folders."""
    from samhq_jax.datasets import DatasetError, folder_pairs, hqseg_pairs

    if (args.data is None) == (args.data_root is None):
        raise ValueError("give --data DIR (repeatable) or --data-root ROOT, not both")
    if args.datasets is not None and args.data_root is None:
        raise ValueError("--datasets needs --data-root")
    if args.data is not None:
        sources = {Path(d).name: Path(d) for d in args.data}
        roots = [Path(d) for d in args.data]
        if len(sources) != len(args.data):
            raise ValueError(f"--data folders must have distinct names: {args.data}")
    else:
        names = (args.datasets or ",".join(HQSEG_VAL)).split(",")
        unknown = [n for n in names if n not in HQSEG_LAYOUT]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"--datasets {args.datasets!r}: choose distinct names from {', '.join(HQSEG_LAYOUT)}")
        sources, roots = dict.fromkeys(names), [Path(args.data_root)]
    for folder in roots:
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}")
    clash = [n for n in sources if n in RESERVED]
    if clash:
        raise ValueError(f"dataset names {clash} are reserved in summary.json; rename the folder")
    pairs, errors = {}, {}
    for name, folder in sources.items():
        try:
            found = (
                folder_pairs(folder, strict=False)
                if folder is not None
                else hqseg_pairs(Path(args.data_root), [name], strict=False)
            )
        except DatasetError as err:
            errors[name] = str(err)
            continue
        pairs[name] = found[: args.limit]
    return pairs, errors


def _read(path: str, what: str) -> LoadedWeights:
    """:func:`samhq_jax.checkpoint.read_weights`, with errors naming the flag."""
    from samhq_jax.checkpoint import read_weights

    try:
        with doing(f"reading {what} {path}"):
            return read_weights(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"{what} {path}: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the outputs; returns the exit status."""
    import jax

    from eval import report
    from eval.protocol import evaluate_pairs, summarize
    from samhq_jax.checkpoint import untrained_hq_message
    from samhq_jax.config import SamHQConfig
    from samhq_jax.datasets import FG_THRESHOLD
    from samhq_jax.precision import Policy

    policy = Policy(args.precision, args.dtype)
    pairs, dataset_errors = _datasets(args)
    for name, message in dataset_errors.items():
        print(f"{PROG}: {name}: not evaluated: {message}", file=sys.stderr)
    if not pairs:
        raise ValueError("no dataset could be listed")
    weights = _read(args.checkpoint, "--checkpoint")
    if not weights.hq_trained:
        print(f"{PROG}: warning: {untrained_hq_message(args.checkpoint)}", file=sys.stderr)
    config = weights.config
    if args.paper and config.image_encoder != SamHQConfig.preset(args.paper).image_encoder:
        raise ValueError(f"--paper {args.paper}: the checkpoint's image encoder is not the {args.paper} structure")
    sam = _read(args.sam_checkpoint, "--sam-checkpoint") if args.sam_checkpoint else None
    if sam is not None and sam.config.img_size != config.img_size:
        raise ValueError(f"--sam-checkpoint has img_size {sam.config.img_size}, the checkpoint {config.img_size}")
    params = jax.device_put(weights.params)  # once, for every dataset and the pictures
    sam_kwargs = {} if sam is None else {"sam_params": jax.device_put(sam.params), "sam_config": sam.config}
    sam_kwargs["policy"] = policy

    records = []
    for name, found in pairs.items():
        with doing(f"evaluating {name}"):
            records += evaluate_pairs(config, params, found, args.batch_size, desc=name, **sam_kwargs)
    summary = summarize(records, dataset_errors)
    for line in report.problem_lines({n: s for n, s in summary.items() if n not in dataset_errors}):
        print(f"{PROG}: {line}", file=sys.stderr)
    out = Path(args.output)
    run_info = {
        "checkpoint": args.checkpoint,
        "structure": config.name,
        "sam": report.sam_label(args.sam_checkpoint),
        "sam_checkpoint": args.sam_checkpoint,
        "img_size": config.img_size,
        "limit": args.limit,
        **policy.as_dict(),
    }
    markdown = report.summary_markdown(summary, args.checkpoint, args.sam_checkpoint, args.paper, policy)
    report.write_outputs(out, records, summary, run_info, markdown)

    picks = report.pick_extremes(records, args.pictures)
    if picks:
        from samhq_jax.datasets import read_image, read_mask

        (out / "pictures").mkdir(exist_ok=True)
        by_key = {(p.dataset, p.stem): p for found in pairs.values() for p in found}
        chosen = [by_key[(r.dataset, r.image)] for _, r in picks]
        with doing("evaluating the pictures' images again"):
            redo = evaluate_pairs(config, params, chosen, args.batch_size, keep_masks=True, **sam_kwargs)
        for (label, _), pair, rec in tqdm(list(zip(picks, chosen, redo, strict=True)), desc="pictures", unit="image"):
            gt = read_mask(pair.mask) > FG_THRESHOLD
            pic = report.comparison_picture(
                read_image(pair.image), gt, rec.masks["sam"], rec.masks["hq"], report.picture_caption(label, rec)
            )
            pic.save(out / "pictures" / f"{label}_{pair.dataset}_{pair.stem}.png")
    print(markdown)
    print(f"-> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``samhq-eval``; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`)."""
    return run_guarded(PROG, lambda: run(parser().parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
