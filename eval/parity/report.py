"""The figures of ``samhq parity`` and the verdict against the bar: per photo, per stage, per prompt
set and flags; and the interface a PyTorch reference offers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from eval.parity.stages import MIN_MASK_AGREEMENT, PARITY_RTOL, Arrays, Prompts, Size


class Reference(Protocol):
    """A PyTorch reference model, with the stage arrays of :func:`official_image_stages` and
    :func:`official_decode_stages` (a reference may lack some stages; only common ones are compared)."""

    description: str

    def image_stages(self, images: np.ndarray) -> Arrays:
        """``(B, S, S, 3)`` normalised images -> NHWC stages ``(B, G, G, ...)``."""
        ...

    def decode_stages(self, image_stages: Arrays, prompts: Prompts, multimask: bool, hq_only: bool) -> Arrays:
        """Prompts ``(B, P, ...)`` on the given image stages -> decoder stages ``(B, P, ...)``."""
        ...

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """The reference's own pre-processing: ``(H, W, 3)`` uint8 -> ``(S, S, 3)`` float32."""
        ...

    def postprocess(self, low_res: np.ndarray, input_size: Size, original_size: Size) -> np.ndarray:
        """``(P, K, 4G, 4G)`` low-res logits -> ``(P, K, H, W)`` logits at the original size."""
        ...


@dataclasses.dataclass
class ImageReport:
    """The figures for one photo (or, in preset mode, one batch of sample images).

    ``image_encoder``: stage -> relative error. ``decoder``: one row per prompt set x flags with
    ``prompts``, ``multimask_output``, ``hq_token_only``, ``errors`` (stage -> relative error),
    ``mask_agreement`` (low-res, binarised) and, for photos, ``full_size_error`` /
    ``full_size_agreement`` (each side's whole chain, post-processed to the original size).
    ``preprocess_error``: the reference's own pre-processing against ours (photos only).
    """

    image: str
    original_size: Size | None = None
    image_encoder: dict[str, float] = dataclasses.field(default_factory=dict)
    decoder: list[dict] = dataclasses.field(default_factory=list)
    preprocess_error: float | None = None

    def errors(self) -> Iterator[tuple[str, float]]:
        """Every relative error with a label saying where it is."""
        for k, v in self.image_encoder.items():
            yield f"{self.image}: image encoder {k}", v
        if self.preprocess_error is not None:
            yield f"{self.image}: pre-processing", self.preprocess_error
        for row in self.decoder:
            where = f"{self.image}: {_row_name(row)}"
            for k, v in row["errors"].items():
                yield f"{where} {k}", v
            if "full_size_error" in row:
                yield f"{where} full-size logits", row["full_size_error"]

    def agreements(self) -> Iterator[tuple[str, float]]:
        for row in self.decoder:
            yield f"{self.image}: {_row_name(row)} low-res masks", row["mask_agreement"]
            if "full_size_agreement" in row:
                yield f"{self.image}: {_row_name(row)} full-size masks", row["full_size_agreement"]


def _row_name(row: dict) -> str:
    return f"{row['prompts']} multimask={row['multimask_output']} hq_token_only={row['hq_token_only']}"


@dataclasses.dataclass
class ParityReport:
    """Everything one run measured, and the verdict against the bar."""

    header: dict
    images: list[ImageReport] = dataclasses.field(default_factory=list)

    def worst_error(self) -> tuple[str, float]:
        """The largest relative error (NaN counts as the worst) and where it is."""
        errs = [e for im in self.images for e in im.errors()]
        return max(errs, key=lambda e: math.inf if math.isnan(e[1]) else e[1], default=("nothing compared", 0.0))

    def lowest_agreement(self) -> tuple[str, float]:
        agrees = [a for im in self.images for a in im.agreements()]
        return min(agrees, key=lambda a: a[1], default=("no masks compared", 1.0))

    @property
    def passed(self) -> bool:
        worst, lowest = self.worst_error()[1], self.lowest_agreement()[1]
        return bool(worst <= PARITY_RTOL and lowest >= MIN_MASK_AGREEMENT)  # False for NaN

    def verdict(self) -> str:
        (where, worst), (awhere, lowest) = self.worst_error(), self.lowest_agreement()
        line = (
            f"worst relative error {worst:.2e} ({where}; bar {PARITY_RTOL:.0e}), lowest mask agreement "
            f"{100 * lowest:.4f}% ({awhere}; bar {100 * MIN_MASK_AGREEMENT:.2f}%): "
        )
        if self.passed:
            return line + "PASS"
        if self.header.get("dtype") != "float32":
            return line + (
                f"FAIL, as expected: ours computes in {self.header['dtype']}, the reference in float32, "
                f"and the {PARITY_RTOL:.0e} bar is a float32 bar"
            )
        return line + "FAIL"

    def to_json(self) -> dict:
        where, worst = self.worst_error()
        awhere, lowest = self.lowest_agreement()
        return {
            **self.header,
            "bar": {"relative_error": PARITY_RTOL, "mask_agreement": MIN_MASK_AGREEMENT},
            "images": [dataclasses.asdict(im) for im in self.images],
            "worst_error": worst,
            "worst_error_at": where,
            "lowest_mask_agreement": lowest,
            "lowest_mask_agreement_at": awhere,
            "passed": self.passed,
        }


def format_image_report(report: ImageReport) -> str:
    """The per-stage table of one image: encoder stages, then one row per prompt set x flags."""
    size = f" ({report.original_size[1]}x{report.original_size[0]})" if report.original_size else ""
    worst = max(report.image_encoder.values(), default=float("nan"))
    lines = [f"{report.image}{size}: image encoder, worst stage {worst:.2e}"]
    lines += [f"  {k:24s} {v:.2e}" for k, v in report.image_encoder.items()]
    if report.preprocess_error is not None:
        lines.append(f"  {'pre-processing':24s} {report.preprocess_error:.2e}  (the reference's own against ours)")
    e2e = any("full_size_error" in row for row in report.decoder)
    head = (
        f"  {'prompts':13s} {'multimask':9s} {'hq_only':7s} {'worst':8s} {'(stage)':19s} "
        f"{'low-res':8s} {'iou':8s} {'agreement':10s}"
    )
    lines.append(head + ("  full-size: logits  agreement" if e2e else ""))
    for row in report.decoder:
        stage, worst = max(row["errors"].items(), key=lambda kv: kv[1])
        line = (
            f"  {row['prompts']:13s} {row['multimask_output']!s:9s} {row['hq_token_only']!s:7s} {worst:.2e} "
            f"{stage:19s} {row['errors']['low_res_masks']:.2e} {row['errors']['iou_predictions']:.2e} "
            f"{100 * row['mask_agreement']:9.4f}%"
        )
        if "full_size_error" in row:
            line += f"             {row['full_size_error']:.2e} {100 * row['full_size_agreement']:9.4f}%"
        lines.append(line)
    return "\n".join(lines)
