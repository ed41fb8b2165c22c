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
``pictures/`` (the ``--pictures`` images where HQ gains least and most over SAM). The folder is
written whole at the end (a temporary folder beside it, then a rename): a killed run leaves no
half-written report; an existing non-empty ``--output`` is refused at start unless ``--overwrite``,
and then replaced whole.

``--precision`` (``highest``, the default: full float32 on every device, so the numbers do not
depend on it; ``default``: the device's TF32 / bf16 matmul passes) and ``--dtype`` (``float32``,
the default, or ``bfloat16``) reach every compiled call (:mod:`samhq_jax.precision`); both are
recorded in ``summary.json`` and the header of ``summary.md``.

Every local device evaluates its own ``--batch-size`` images per call (a ``jax.make_mesh`` data
axis; each device runs the one-device program). With ``--coordinator HOST:PORT --num-processes N
--process-id I`` (the same command in each process, one per host) process I evaluates the I-th
contiguous share of every dataset; the per-image rows are gathered, and process 0 alone writes
``--output`` (the pictures drawn by the process that evaluated the image): the same files as a
one-process, one-device run, bit for bit.

Without ``--sam-checkpoint`` the SAM row is the HQ checkpoint's own SAM decoder with the HQ token
left out. Bad data (a dataset folder that cannot be listed, an unreadable file, an image / mask size
mismatch, a mask without foreground, a non-binary mask) is reported on stderr and in
``summary.json`` and does not stop the run. Bad flags, missing folders and unreadable checkpoints
are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from samhq_jax.atomic import check_apart, check_target
from samhq_jax.cmdkit.args import (
    CHECKPOINT_HELP,
    COUNT,
    POSITIVE_INT,
    add_distributed_flags,
    add_overwrite_flag,
    announce_share,
    command_parser,
    distributed_flags,
    docstring_help,
    progress_label,
)
from samhq_jax.cmdkit.guard import PATH_ERRORS, doing, run_guarded
from samhq_jax.datasets import HQSEG_LAYOUT, HQSEG_VAL
from samhq_jax.errors import InputError
from samhq_jax.precision import DTYPES, EVALUATION, PRECISIONS

if TYPE_CHECKING:
    from eval.protocol import ImageRecord
    from samhq_jax.checkpoint import LoadedWeights
    from samhq_jax.datasets import Pair

PROG = "samhq-eval"
RESERVED = ("mean", "run")  # summary.json keys that are not datasets


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
    p.add_argument("--output", required=True, help="output folder (written whole at the end)")
    add_overwrite_flag(p, "--output folder")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="images encoded per compiled call (default 4)")
    p.add_argument("--limit", type=POSITIVE_INT, help="only the first N images of each dataset")
    p.add_argument("--paper", choices=("vit_b", "vit_l", "vit_h"), help="add the paper's numbers for this backbone")
    p.add_argument("--pictures", type=COUNT, default=5, help="pictures of the N worst and N best images (default 5)")
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
    add_distributed_flags(p)
    return p


def _datasets(args: argparse.Namespace) -> tuple[dict[str, list], dict[str, str]]:
    """``({name: pairs}, {name: listing error})``; raises InputError / FileNotFoundError for bad flags or folders."""
    from samhq_jax.datasets import DatasetError, folder_pairs, hqseg_pairs

    if (args.data is None) == (args.data_root is None):
        raise InputError("give --data DIR (repeatable) or --data-root ROOT, not both")
    if args.datasets is not None and args.data_root is None:
        raise InputError("--datasets needs --data-root")
    if args.data is not None:
        sources = {Path(d).name: Path(d) for d in args.data}
        roots = [Path(d) for d in args.data]
        if len(sources) != len(args.data):
            raise InputError(f"--data folders must have distinct names: {args.data}")
    else:
        names = (args.datasets or ",".join(HQSEG_VAL)).split(",")
        unknown = [n for n in names if n not in HQSEG_LAYOUT]
        if unknown or len(set(names)) != len(names):
            raise InputError(f"--datasets {args.datasets!r}: choose distinct names from {', '.join(HQSEG_LAYOUT)}")
        sources, roots = dict.fromkeys(names), [Path(args.data_root)]
    for folder in roots:
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}")
    clash = [n for n in sources if n in RESERVED]
    if clash:
        raise InputError(f"dataset names {clash} are reserved in summary.json; rename the folder")
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
    except (InputError, *PATH_ERRORS) as err:
        raise InputError(f"{what} {path}: {err}") from err


def _gathered(records: list[ImageRecord], datasets: list[str]) -> list[ImageRecord]:
    """Every process's records (a collective), in the order one process would have them: dataset by
    dataset, each process's contiguous share in turn. Rows travel as JSON (floats exact)."""
    from eval.protocol import ImageRecord
    from samhq_jax.distributed import allgather_bytes

    rows = json.dumps([dataclasses.asdict(r) for r in records]).encode()
    per_process = [[ImageRecord(**row) for row in json.loads(blob)] for blob in allgather_bytes(rows)]
    return [r for name in datasets for mine in per_process for r in mine if r.dataset == name]


def _pictures(picks: list[tuple[str, ImageRecord]], mine: list[Pair], evaluate: Callable) -> dict[str, bytes]:
    """PNG bytes, by file name, of the comparison pictures of the ``picks`` among this process's
    pairs ``mine``, evaluated again with their masks by ``evaluate(pairs) -> records``."""
    from eval import report
    from samhq_jax.datasets import FG_THRESHOLD, read_image, read_mask

    by_key = {(p.dataset, p.stem): p for p in mine}
    chosen = [(label, by_key[r.dataset, r.image]) for label, r in picks if (r.dataset, r.image) in by_key]
    if not chosen:
        return {}
    with doing("evaluating the pictures' images again"):
        redo = evaluate([pair for _, pair in chosen])
    pictures = {}
    for (label, pair), rec in tqdm(list(zip(chosen, redo, strict=True)), desc="pictures", unit="image"):
        gt = read_mask(pair.mask) > FG_THRESHOLD
        pic = report.comparison_picture(
            read_image(pair.image), gt, rec.masks["sam"], rec.masks["hq"], report.picture_caption(label, rec)
        )
        png = io.BytesIO()
        pic.save(png, format="PNG")
        pictures[f"{label}_{pair.dataset}_{pair.stem}.png"] = png.getvalue()
    return pictures


def run(args: argparse.Namespace) -> int:
    """Evaluate this process's share, gather every process's rows, and (process 0) write the outputs;
    returns the exit status."""
    import jax

    from eval import report
    from eval.protocol import evaluate_pairs, summarize
    from samhq_jax.checkpoint import untrained_hq_message
    from samhq_jax.config import ModelConfig
    from samhq_jax.distributed import allgather_bytes, replicate, setup, share
    from samhq_jax.precision import Policy

    processes = distributed_flags(args)
    first = processes is None or processes[2] == 0  # process 0 reports and writes
    policy = Policy(args.precision, args.dtype)
    if first:  # before any work: an output that exists, or whose replacement would delete an input
        check_target(Path(args.output), args.overwrite, "--output")
        inputs = [*(args.data or []), args.data_root, args.checkpoint, args.sam_checkpoint]
        check_apart(Path(args.output), [i for i in inputs if i is not None], "--output")
    pairs, dataset_errors = _datasets(args)
    for name, message in dataset_errors.items():
        if first:
            print(f"{PROG}: {name}: not evaluated: {message}", file=sys.stderr)
    if not pairs:
        raise InputError("no dataset could be listed")
    mesh = setup(processes)  # before anything touches a device
    weights = _read(args.checkpoint, "--checkpoint")
    if not weights.hq_trained and first:
        print(f"{PROG}: warning: {untrained_hq_message(args.checkpoint)}", file=sys.stderr)
    config = weights.config
    if args.paper and config.image_encoder != ModelConfig.preset(args.paper).image_encoder:
        raise InputError(f"--paper {args.paper}: the checkpoint's image encoder is not the {args.paper} structure")
    sam = _read(args.sam_checkpoint, "--sam-checkpoint") if args.sam_checkpoint else None
    if sam is not None and sam.config.img_size != config.img_size:
        raise InputError(f"--sam-checkpoint has img_size {sam.config.img_size}, the checkpoint {config.img_size}")
    params = replicate(weights.params, mesh)  # once, for every dataset and the pictures
    sam_kwargs = {} if sam is None else {"sam_params": replicate(sam.params, mesh), "sam_config": sam.config}
    sam_kwargs.update(policy=policy, mesh=mesh)

    mine = {name: share(found) for name, found in pairs.items()}
    process = jax.process_index(), jax.process_count()
    total, count = sum(map(len, pairs.values())), sum(map(len, mine.values()))
    announce_share(PROG, total, count, mesh.size, args.batch_size, process)
    records = []
    for name, found in mine.items():
        with doing(f"evaluating {name}"):
            desc = progress_label(name, process)
            records += evaluate_pairs(config, params, found, args.batch_size, desc=desc, **sam_kwargs)
    records = _gathered(records, list(pairs))
    summary = summarize(records, dataset_errors)
    picks = report.pick_extremes(records, args.pictures)
    evaluate = functools.partial(
        evaluate_pairs, config, params, batch_size=args.batch_size, keep_masks=True, **sam_kwargs
    )
    drawn = _pictures(picks, [p for found in mine.values() for p in found], evaluate)
    blob = json.dumps({name: base64.b64encode(png).decode() for name, png in drawn.items()}).encode()
    pictures = {name: base64.b64decode(png) for b in allgather_bytes(blob) for name, png in json.loads(b).items()}
    if not first:
        print(
            f"{PROG} [process {process[0]}]: {count} image(s) evaluated; process 0 writes the outputs", file=sys.stderr
        )
        return 0
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
    names = [f"{label}_{r.dataset}_{r.image}.png" for label, r in picks]
    with doing(f"writing {out}"):
        report.write_outputs(out, records, summary, run_info, markdown, {n: pictures[n] for n in names}, args.overwrite)
    print(markdown)
    print(f"-> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``samhq-eval``; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`)."""
    return run_guarded(PROG, lambda: run(parser().parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
