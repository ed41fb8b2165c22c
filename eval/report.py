"""What ``samhq-eval`` writes: ``per_image.csv``, ``summary.json``, ``summary.md`` (the paper's table
layout, optionally next to the paper's numbers) and the best / worst pictures.

The paper's numbers live in ``eval/paper_results.json`` with their sources (:func:`paper_results`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from eval.metrics import mask_to_boundary
from eval.protocol import OUTPUTS, ImageRecord
from samhq_jax.atomic import atomic_dir
from samhq_jax.cmdkit.overlay import overlay
from samhq_jax.precision import EVALUATION, Policy

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")
CSV_COLUMNS = ("dataset", "image", *(f"{m}_{o}" for o in OUTPUTS for m in ("iou", "biou")))
ROW_TITLES = {"sam": "SAM", "hq": "HQ-SAM (HQ token)", "samhq": "SAM + HQ (predictor default)"}
SAM_TOKEN_TITLE = "SAM (SAM token of the HQ checkpoint)"
GREEN, RED = np.array([0, 220, 0], np.uint8), np.array([255, 40, 40], np.uint8)
_MAX_LISTED = 50  # problems listed per dataset in summary.md / on stderr


def paper_results() -> dict[str, Any]:
    """The paper's mIoU / mBIoU (percent) per backbone, output (``sam``, ``hq``) and dataset, with sources."""
    return json.loads(PAPER_RESULTS.read_text())


# ---- tables --------------------------------------------------------------------------------------------
def write_per_image_csv(path: Path, records: Sequence[ImageRecord]) -> None:
    """One row per scored image, columns :data:`CSV_COLUMNS`, IoUs in [0, 1] (skipped images are listed
    in ``summary.json`` instead)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            if r.skipped is None:
                values = [f"{d[o]:.6f}" for o in OUTPUTS for d in (r.iou, r.biou)]
                writer.writerow([r.dataset, r.image, *values])


def _cell(scores: Mapping[str, float | None] | None, digits: int) -> str:
    """``"mIoU / mBIoU"`` or a dash where there is no number."""
    if not scores or scores.get("miou") is None:
        return "-"
    return f"{scores['miou']:.{digits}f} / {scores['mbiou']:.{digits}f}"


def _diff(ours: Mapping[str, float | None] | None, paper: Mapping[str, float] | None) -> str:
    if not ours or ours.get("miou") is None or not paper:
        return "-"
    return " / ".join(f"{ours[m] - paper[m]:+.2f}" for m in ("miou", "mbiou"))


def sam_label(sam_checkpoint: str | None) -> str:
    """What the ``sam`` output is, for the outputs."""
    if sam_checkpoint is None:
        return "the HQ checkpoint's own SAM decoder, HQ token left out (no --sam-checkpoint)"
    return f"original SAM from `{sam_checkpoint}`"


def summary_markdown(
    summary: Mapping[str, dict],
    checkpoint: str,
    sam_checkpoint: str | None = None,
    paper_model: str | None = None,
    policy: Policy = EVALUATION,
) -> str:
    """``summary.md``: one row per output, one column per dataset plus the average, cells "mIoU / mBIoU"
    (the paper's layout); with ``paper_model`` (``vit_b``, ``vit_l``, ``vit_h``) the paper's rows and
    ours minus the paper's. The paper's average is compared only when exactly its four sets were scored.
    The header names the ``policy`` (matmul precision, compute dtype) the numbers were computed with."""
    names = [n for n in summary if n != "mean"]
    titles = {**ROW_TITLES, "sam": ROW_TITLES["sam"] if sam_checkpoint else SAM_TOKEN_TITLE}
    lines = [
        "# SAM-HQ evaluation",
        "",
        f"Checkpoint: `{checkpoint}`. SAM row: {sam_label(sam_checkpoint)}.",
        "",
        f"Numerics: {policy.describe()}.",
        "",
        "Official HQ protocol: image and label resized to the model's input square, box prompt from the "
        "label, single-mask output, logits resized to the label's size; mIoU / mBIoU in percent.",
        "",
        "| model | " + " | ".join(names) + " | avg |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for o in ("sam", "hq", "samhq"):
        cells = [_cell(summary[n][o], 2) for n in [*names, "mean"]]
        lines.append(f"| {titles[o]} | " + " | ".join(cells) + " |")
    if paper_model is not None:
        paper = paper_results()
        tag = paper_model.split("_")[-1].upper()
        four = sorted(summary["mean"]["datasets"]) == sorted(paper["datasets"])
        for o, title in (("sam", f"SAM-{tag}"), ("hq", f"HQ-SAM-{tag}")):
            ref = paper["results"][paper_model][o]
            cells = [_cell(ref.get(n), 1) for n in [*names, "mean"]]
            lines.append(f"| {title} (paper) | " + " | ".join(cells) + " |")
        for o, title in (("hq", "HQ-SAM"), ("sam", "SAM")):
            ref = paper["results"][paper_model][o]
            cells = [_diff(summary[n][o], ref.get(n)) for n in names]
            cells.append(_diff(summary["mean"][o], ref.get("mean")) if four else "-")
            lines.append(f"| {title}: ours - paper | " + " | ".join(cells) + " |")
        lines += ["", f"Paper numbers: {paper['sources']['paper']}; see `eval/paper_results.json` for their sources."]
    counts = ", ".join(f"{n} {summary[n]['count']} ({summary[n]['skipped']})" for n in names)
    lines += ["", f"Images scored (skipped): {counts}.", ""]
    problems = problem_lines(summary)
    if problems:
        lines += ["## Data problems", "", *(f"- {p}" for p in problems), ""]
    return "\n".join(lines)


def problem_lines(summary: Mapping[str, dict]) -> list[str]:
    """Human-readable bad-data lines: dataset errors, then up to ``_MAX_LISTED`` images per dataset."""
    lines = []
    for name, s in summary.items():
        if name == "mean":
            continue
        if "error" in s:
            lines.append(f"{name}: not evaluated: {s['error']}")
        items = [(image, note) for image, notes in s["problems"].items() for note in notes]
        lines += [f"{name}/{image}: {note}" for image, note in items[:_MAX_LISTED]]
        if len(items) > _MAX_LISTED:
            lines.append(f"{name}: ... and {len(items) - _MAX_LISTED} more (summary.json)")
    return lines


# ---- pictures ------------------------------------------------------------------------------------------
def pick_extremes(records: Sequence[ImageRecord], n: int) -> list[tuple[str, ImageRecord]]:
    """The ``n`` scored images where HQ gains least over SAM (``worst01``...) and the ``n`` where it gains
    most (``best01``...), by mask IoU (``hq - sam``), each image at most once."""
    scored = sorted((r for r in records if r.skipped is None), key=lambda r: r.iou["hq"] - r.iou["sam"])
    worst = scored[:n]
    best = [r for r in reversed(scored[len(worst) :])][:n]
    return [(f"worst{i + 1:02d}", r) for i, r in enumerate(worst)] + [
        (f"best{i + 1:02d}", r) for i, r in enumerate(best)
    ]


def comparison_picture(
    image: np.ndarray, gt: np.ndarray, sam: np.ndarray, hq: np.ndarray, caption: str, height: int = 480
) -> Image.Image:
    """Five panels side by side: image, ground truth, SAM mask, HQ mask, boundary disagreement.

    Args:
      image: ``(H, W, 3)`` uint8 RGB.
      gt, sam, hq: ``(H, W)`` bool masks (label > 128, and the two predictions).
      caption: first line of the title strip.
      height: panel height in pixels (at most ``H``).

    The last panel shows the boundary bands of all three masks (the pixels boundary IoU looks at) over
    the dimmed image: green where HQ agrees with the ground truth and SAM does not, red the reverse.
    """
    bands = mask_to_boundary(np.stack([gt, sam, hq])).any(axis=0)
    disagree = (image // 3).astype(np.uint8)
    disagree[bands] = 90
    disagree[bands & (hq == gt) & (sam != gt)] = GREEN
    disagree[bands & (sam == gt) & (hq != gt)] = RED
    panels = [Image.fromarray(image), *(overlay(image, m[None], [], []) for m in (gt, sam, hq))]
    panels.append(Image.fromarray(disagree))
    h = min(height, image.shape[0])
    w = max(1, round(image.shape[1] * h / image.shape[0]))
    strip, gap = 34, 4
    legend = (
        "image | ground truth | SAM | HQ-SAM | boundary bands: green = HQ right, SAM wrong; red = SAM right, HQ wrong"
    )
    text = f"{caption}\n{legend}"
    text_w = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text)[2]
    canvas = Image.new("RGB", (max(5 * w + 4 * gap, text_w + 8), h + strip), "white")
    for i, panel in enumerate(panels):
        canvas.paste(panel.resize((w, h), Image.Resampling.BOX), (i * (w + gap), strip))
    ImageDraw.Draw(canvas).multiline_text((4, 2), text, fill="black")
    return canvas


def picture_caption(label: str, record: ImageRecord) -> str:
    """``"worst01  DIS5K-VD/stem  IoU SAM 71.2 -> HQ 64.0  bIoU ..."`` for :func:`comparison_picture`."""
    iou = f"IoU SAM {100 * record.iou['sam']:.1f} -> HQ {100 * record.iou['hq']:.1f}"
    biou = f"bIoU SAM {100 * record.biou['sam']:.1f} -> HQ {100 * record.biou['hq']:.1f}"
    return f"{label}  {record.dataset}/{record.image}  {iou}  {biou}"


def write_outputs(
    out_dir: Path,
    records: Sequence[ImageRecord],
    summary: Mapping[str, dict],
    run: Mapping[str, Any],
    markdown: str,
    pictures: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> None:
    """Write ``out_dir`` whole: ``per_image.csv``, ``summary.json`` (the summary plus ``"run"``: what
    was evaluated how), ``summary.md`` and, when there are any, ``pictures/NAME`` (PNG bytes by
    name). The files go to a temporary folder beside ``out_dir``, renamed into place at the end
    (:func:`samhq_jax.atomic.atomic_dir`): a killed run leaves no half-written report, and an
    existing ``out_dir`` (only with ``overwrite``; else ``InputError``) is replaced, no stale file left."""
    with atomic_dir(out_dir, overwrite, "--output") as tmp:
        write_per_image_csv(tmp / "per_image.csv", records)
        (tmp / "summary.json").write_text(json.dumps({**summary, "run": dict(run)}, indent=2) + "\n")
        (tmp / "summary.md").write_text(markdown)
        if pictures:
            (tmp / "pictures").mkdir()
            for name, png in pictures.items():
                (tmp / "pictures" / name).write_bytes(png)
