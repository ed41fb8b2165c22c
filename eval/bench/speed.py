"""``samhq-bench`` (also ``python -m eval.bench``): samhq-jax timed side by side with the official
``segment-anything-hq`` and Hugging Face ``SamHQModel``, in one process, one run, on the same
seeded random weights and the same inputs.

    samhq-bench                                     # vit_b: batch 1, 4; 1/16/64/256 prompts; AMG 16, 32
    samhq-bench --model vit_b --batch 1 --prompts 1,16,64 --repeats 3 --output bench/
    samhq-bench --quick --output bench/             # tiny_b smoke run: 2 repeats, 1 and 16 prompts
    samhq-bench --skip hf,bf16 --cold               # + first mask of a fresh process, twice
    samhq-bench --memory --model vit_b,vit_l,vit_h  # compile only: XLA's memory analysis, no weights

Stages: the image encoder (--batch images per call); the decoder on an image encoded beforehand
for each --prompts count P of boxes (ours: one predict_batch call; the official: one
SamPredictor.predict per box, k of them timed and the time extrapolated to P, and predict_torch
batched; HF: one model(image_embeddings=...) call + post_process_masks); end to end, set_image + one
predict; automatic mask generation for each --amg grid (ours and the official fp32 generators,
official defaults otherwise, encoding included). Rows: ours fp32, ours bf16 compute, the official
fp32 and under torch.autocast (bf16 on CPU; bf16, else fp16, on CUDA), HF fp32. torch runs on CUDA
when it sees a GPU.

Figures: the warm median and min-max of --repeats calls after --warmup calls (JAX outputs blocked
on, torch under inference_mode), the rows of a stage timed round-robin so that other work on the
machine slows them alike; a row whose calls would exceed --row-budget seconds gets fewer, noted;
our compile time (first call minus warm median; a load from JAX's persistent compilation cache when
that is on and holds the program); XLA's FLOP count
of the stage (cost_analysis of our fp32 program, credited to every row of the stage) as achieved
GFLOP/s and the fraction of the device's peak (--peak-gflops; a known GPU's dense peak; on CPU a
4096^3 fp32 XLA matmul measured in the same run); memory: XLA's buffer plan of our programs
(memory_analysis: temp + arguments + outputs) and, for every row, the peak RSS rise of one call
sampled by a thread on CPU (crude), or the CUDA peak; ratios: each row's median over the official
fp32 and official low-precision rows of its stage (for P > 1 prompts: over predict_torch batched,
the faster official path). Written to --output: speed.md (the table and its header) and
speed.json (every figure).

--memory: nothing is timed and no weights exist; every program (our encoder at each --batch, the
decoder at each --prompts count, the train step at each --train-batch for each --trainable rule with
and without remat; fp32 and bf16; each --model) is compiled on abstract inputs and XLA's memory
analysis read: arguments, outputs, aliased, temp, generated code, XLA's peak where reported
(:mod:`eval.bench.memory`). Written to --output: memory.md and memory.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from samhq_jax.cmdkit.args import command_parser, docstring_help
from samhq_jax.cmdkit.guard import doing, run_guarded
from samhq_jax.config import PRESETS
from samhq_jax.errors import InputError

PROG = "samhq-bench"
QUICK = {"model": "tiny_b", "repeats": 2, "prompts": "1,16", "batch": "1", "amg": "4"}
DEFAULTS = {"model": "vit_b", "repeats": 5, "prompts": "1,16,64,256", "batch": "1,4", "amg": "16,32"}
# --memory: compile only (eval.bench.memory); the train batch 4 is the official recipe's per GPU (32 over 8)
MEMORY_QUICK = {"model": "tiny_b", "prompts": "1,16", "batch": "1", "train_batch": "2", "trainable": "decoder,all"}
MEMORY_DEFAULTS = {
    "model": "vit_b,vit_l,vit_h",
    "prompts": "1,64",
    "batch": "1,8",
    "train_batch": "1,4",
    "trainable": "decoder,all",
}
PEAK_MATMUL = {False: 4096, True: 1024}  # side of the measured peak's matmul (--quick: smaller)
PHOTO = (1200, 1600)  # default image (H, W) for a 1024 px model, scaled with the model's input size
PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"  # set to false (unless set) so torch has GPU memory too
BASELINES = {"fp32": "official-fp32", "bf16": "official-bf16"}


@dataclasses.dataclass
class Row:
    """One implementation on one stage; times in seconds (the stage's whole work)."""

    stage: str  # "encoder b=1", "decoder 16 prompts", "end-to-end"
    kind: str  # "encoder", "decoder", "end_to_end"
    size: int  # images (encoder) or prompts (decoder) per call; 1 end to end
    impl: str  # "ours-fp32", "official-bf16", "hf-fp32", ...
    label: str
    family: str
    dtype: str
    mode: str
    median_s: float
    min_s: float
    max_s: float
    times_s: list[float]
    first_call_s: float
    extrapolated: bool
    baseline: bool
    note: str = ""
    compile_s: float | None = None
    flops: float | None = None
    achieved_flops_per_s: float | None = None
    peak_fraction: float | None = None
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    ratio_official_fp32: float | None = None
    ratio_official_bf16: float | None = None

    @property
    def per_prompt_s(self) -> float | None:
        return self.median_s / self.size if self.kind == "decoder" else None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "per_prompt_s": self.per_prompt_s}


# ---- the command line ---------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. ``1,16,64``."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError
    return values


_int_list.__name__ = "comma-separated positive integers"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


_positive.__name__ = "positive integer"


def _size(text: str) -> tuple[int, int]:
    """argparse type: ``HxW``, e.g. ``1200x1600``."""
    h, w = (int(v) for v in text.lower().split("x"))
    if h < 1 or w < 1:
        raise ValueError
    return h, w


_size.__name__ = "HxW image size"


def _presets(text: str) -> list[str]:
    """argparse type: comma-separated model presets, e.g. ``vit_b,vit_h``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - set(PRESETS):
        raise ValueError
    return names


_presets.__name__ = f"comma-separated presets of {', '.join(PRESETS)}"


def _names(text: str) -> list[str]:
    """argparse type: a comma-separated list of names."""
    return [n.strip() for n in text.split(",") if n.strip()]


# How parse_args reads a default of QUICK / DEFAULTS / MEMORY_*: as the flag's own type does (else int).
PARSERS = {
    "model": _presets,
    "batch": _int_list,
    "prompts": _int_list,
    "amg": _int_list,
    "train_batch": _int_list,
    "trainable": _names,
}


def parser() -> argparse.ArgumentParser:
    """The ``samhq-bench`` parser (defaults of ``--model`` / ``--batch`` / ``--prompts`` /
    ``--repeats`` are None here and resolved by :func:`parse_args`, ``--quick`` aware)."""
    from eval.bench.impls import SKIPPABLE

    p = command_parser(PROG, "samhq-jax vs official SAM-HQ vs HF SamHQModel, side by side", docstring_help(__doc__))
    p.add_argument(
        "--model",
        type=_presets,
        help=f"preset (default {DEFAULTS['model']}; --quick {QUICK['model']}); with --memory a comma-separated "
        f"list (default {MEMORY_DEFAULTS['model']})",
    )
    p.add_argument("--batch", type=_int_list, help=f"images per encoder call (default {DEFAULTS['batch']})")
    p.add_argument("--prompts", type=_int_list, help=f"boxes per decoder call (default {DEFAULTS['prompts']})")
    p.add_argument(
        "--amg",
        type=_int_list,
        help=f"automatic mask generation, points per side (default {DEFAULTS['amg']}; --skip amg leaves it out)",
    )
    p.add_argument("--repeats", type=_positive, help=f"timed calls per row (default {DEFAULTS['repeats']})")
    p.add_argument("--warmup", type=_positive, default=1, help="untimed calls first, the first included (default 1)")
    p.add_argument("--skip", default="", help=f"comma-separated rows or stages to leave out: {', '.join(SKIPPABLE)}")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny_b, 2 repeats, prompts 1,16, batch 1")
    p.add_argument("--output", help="folder for speed.md and speed.json")
    p.add_argument("--peak-gflops", type=float, help="the device's peak GFLOP/s (default: known GPU, or measured)")
    p.add_argument("--image-size", type=_size, help="HxW of the test image (default 1200x1600 scaled to the model)")
    p.add_argument(
        "--per-prompt-calls",
        type=_positive,
        default=4,
        help="official predict calls timed per repeat, extrapolated to P prompts (default 4)",
    )
    p.add_argument(
        "--row-budget",
        type=float,
        default=300.0,
        help="seconds a row's calls after the first may take: slower rows get fewer timed calls, noted (default 300)",
    )
    p.add_argument(
        "--precision",
        choices=("highest", "default"),
        default="highest",
        help="our matmul / conv precision (SamHQPredictor's; default highest: full fp32; default: TF32 on GPUs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, images and boxes (default 0)")
    p.add_argument("--cold", action="store_true", help="also time the first mask of two fresh processes")
    p.add_argument(
        "--memory",
        action="store_true",
        help="compile only, time nothing: XLA's memory analysis of every program, abstract weights "
        "(--skip then takes encoder, decoder, train, fp32, bf16)",
    )
    p.add_argument(
        "--train-batch",
        type=_int_list,
        help=f"--memory: global batches of the train step (default {MEMORY_DEFAULTS['train_batch']})",
    )
    p.add_argument(
        "--trainable",
        type=_names,
        help=f"--memory: samhq-train --trainable rules of the train step (default {MEMORY_DEFAULTS['trainable']})",
    )
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and resolve defaults: ``--quick`` supplies those not given, then :data:`DEFAULTS`
    (with ``--memory``: :data:`MEMORY_QUICK`, :data:`MEMORY_DEFAULTS`). ``model`` is a list of presets."""
    from eval.bench import memory
    from eval.bench.impls import SKIPPABLE
    from train.trainable import TRAINABLE_PRESETS

    p = parser()
    args = p.parse_args(argv)
    if args.memory:
        defaults, skippable = (MEMORY_QUICK if args.quick else MEMORY_DEFAULTS), memory.SKIPPABLE
    else:
        defaults, skippable = (QUICK if args.quick else DEFAULTS), SKIPPABLE
        if args.train_batch is not None or args.trainable is not None:
            p.error("--train-batch and --trainable go with --memory")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, PARSERS.get(name, int)(value))
    if not args.memory and len(args.model) > 1:
        p.error(f"--model {','.join(args.model)}: one preset (several go with --memory)")
    unknown_rules = sorted(set(args.trainable or ()) - set(TRAINABLE_PRESETS))
    if unknown_rules:
        p.error(f"--trainable {','.join(unknown_rules)}: choose from {', '.join(TRAINABLE_PRESETS)}")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = sorted(args.skip - set(skippable))
    if unknown:
        p.error(f"--skip {','.join(unknown)}: choose from {', '.join(skippable)}")
    if not args.row_budget > 0:
        p.error("--row-budget must be positive")
    if args.peak_gflops is not None and not args.peak_gflops > 0:
        p.error("--peak-gflops must be positive")
    return args


# ---- the run ------------------------------------------------------------------------------------
def _analysis(what: str, analyse: Any, *inputs: Any) -> Any:
    """``analyse(*inputs)`` (an :class:`~eval.bench.env.XlaAnalysis` of ``what``); a failure leaves
    the figures out with a line on stderr instead of ending the run."""
    from eval.bench.env import XlaAnalysis

    try:
        return analyse(*inputs)
    except Exception as err:
        print(f"{PROG}: warning: no XLA analysis of {what}: {type(err).__name__}: {err}", file=sys.stderr)
        return XlaAnalysis(None)


def _boxes(rng: np.random.Generator, count: int, size: tuple[int, int]) -> np.ndarray:
    """``(count, 4)`` xyxy boxes inside an image of ``size = (H, W)``, 10-50 % of each side."""
    h, w = size
    extent = rng.uniform(0.1, 0.5, (count, 2)) * (w, h)
    corner = rng.uniform(0, 1, (count, 2)) * ((w, h) - extent)
    return np.concatenate([corner, corner + extent], axis=1).astype(np.float32)


class Bench:
    """The run: implementations, inputs, and the rows measured so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from eval.bench.env import device_peak, environment, schedulable_cpus
        from eval.bench.impls import Ours, autocast_dtype, build_impls, torch_device
        from samhq_jax.config import ModelConfig

        self.args = args
        self.config = ModelConfig.preset(args.model[0])
        threads = schedulable_cpus()
        torch.set_num_threads(threads)
        device = torch_device()
        torch_info = {
            "torch_device": device,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "torch_autocast_dtype": str(autocast_dtype(device)).replace("torch.", ""),
        }
        self.env = environment(threads, torch_info)
        with doing("building the models"):
            self.impls = build_impls(self.config, args.skip, args.seed, args.precision)
        self.ours = next(i for i in self.impls if isinstance(i, Ours) and i.dtype == "fp32")
        with doing("measuring the device's peak"):
            self.peak = device_peak(args.peak_gflops, PEAK_MATMUL[args.quick])
        s = self.config.img_size
        self.image_size = args.image_size or (round(PHOTO[0] * s / 1024), round(PHOTO[1] * s / 1024))
        self.rng = np.random.default_rng(args.seed)
        self.image = self.rng.integers(0, 256, (*self.image_size, 3), dtype=np.uint8)
        self.rows: list[Row] = []
        self.flops: dict[tuple[str, int], float | None] = {}

    def _stage(self, stage: str, kind: str, size: int, entries: list[tuple[Any, Any]]) -> list[Row]:
        """Time every ``(impl, call)`` of one stage together (round-robin: see
        :func:`eval.bench.env.time_interleaved`), then probe each one's memory; their rows."""
        from eval.bench.env import time_interleaved

        a = self.args
        with doing(f"timing {stage}"):
            timings = time_interleaved([call.fn for _, call in entries], a.repeats, a.warmup, a.row_budget)
        rows = []
        for (impl, call), timing in zip(entries, timings, strict=True):
            with doing(f"probing the memory of {stage} of {impl.label}"):
                memory = {"skipped": "over --row-budget"} if timing.cut else impl.memory(call.fn)
            rows.append(self._row(stage, kind, size, impl, call, timing, memory))
        return rows

    def _row(self, stage: str, kind: str, size: int, impl: Any, call: Any, timing: Any, memory: dict) -> Row:
        """The row of ``call`` of ``impl`` (its per-call ``timing`` scaled to the whole stage)."""
        note = call.note
        if timing.cut:
            count = len(timing.times_s)
            cut = (
                f"{count} timed call{'s' if count > 1 else ''} after the first, no warm-up or memory probe: "
                f"a call takes {timing.min_s:.3g} s (the first {timing.first_s:.3g} s), over --row-budget "
                f"{self.args.row_budget:g} s"
            )
            note = f"{note}; {cut}" if note else cut
        stage_time = timing.scaled(call.scale)
        row = Row(
            stage=stage,
            kind=kind,
            size=size,
            impl=impl.key,
            label=impl.label,
            family=impl.family,
            dtype=impl.dtype,
            mode=call.mode,
            median_s=stage_time.median_s,
            min_s=stage_time.min_s,
            max_s=stage_time.max_s,
            times_s=stage_time.times_s,
            first_call_s=stage_time.first_s,
            extrapolated=call.extrapolated,
            baseline=call.baseline,
            note=note,
            memory=memory,
        )
        if impl.family == "ours" and kind != "end_to_end":
            row.compile_s = max(timing.first_s - timing.median_s, 0.0)
        self._set_flops(row, self.flops.get((kind, size)))
        self.rows.append(row)
        print(f"{PROG}: {stage:<20} {impl.label:<26} {row.median_s * 1e3:10.2f} ms  {call.mode}", file=sys.stderr)
        return row

    def encoders(self) -> None:
        """The image encoder, each ``--batch`` size."""
        s = self.config.img_size
        for b in self.args.batch:
            images = self.rng.normal(size=(b, s, s, 3)).astype(np.float32)
            stage = f"encoder b={b}"
            rows = self._stage(stage, "encoder", b, [(impl, impl.encoder(images)) for impl in self.impls])
            for impl, row in zip(self.impls, rows, strict=True):
                if impl.family == "ours":
                    self._credit(row, _analysis(f"{stage} of {impl.label}", impl.analyse_encoder, images))

    def decoders(self) -> None:
        """The decoder on an encoded image, each ``--prompts`` count."""
        for p in self.args.prompts:
            boxes = _boxes(self.rng, p, self.image_size)
            stage = f"decoder {p} prompt{'s' if p > 1 else ''}"
            entries = [
                (impl, call)
                for impl in self.impls
                for call in impl.decoder(self.image, boxes, self.args.per_prompt_calls)
            ]
            for (impl, _), row in zip(entries, self._stage(stage, "decoder", p, entries), strict=True):
                if impl.family == "ours":
                    what = f"{stage} of {impl.label}"
                    self._credit(row, _analysis(what, impl.analyse_decoder, self.image, boxes))

    def _credit(self, row: Row, xla: Any) -> None:
        """Record XLA's figures on our ``row``; our fp32 FLOP count becomes the stage's, credited to
        the rows already measured (and to those measured after)."""
        row.memory["xla"] = xla.to_json()
        if row.impl == self.ours.key and xla.flops:
            self.flops[(row.kind, row.size)] = xla.flops
            for other in self.rows:
                if (other.kind, other.size) == (row.kind, row.size):
                    self._set_flops(other, xla.flops)

    def _set_flops(self, row: Row, flops: float | None) -> None:
        """The stage's FLOP count on ``row``, as achieved FLOP/s and the fraction of the peak."""
        if flops:
            row.flops = flops
            row.achieved_flops_per_s = flops / row.median_s
            row.peak_fraction = row.achieved_flops_per_s / self.peak.for_dtype(row.dtype)

    def end_to_end(self) -> None:
        """``set_image`` + one box ``predict``; its FLOPs are our encoder's (1 image) + decoder's (1 box)."""
        box = _boxes(self.rng, 1, self.image_size)[0]
        s = self.config.img_size
        for kind, analysis, inputs in (
            ("encoder", self.ours.analyse_encoder, (np.zeros((1, s, s, 3), np.float32),)),
            ("decoder", self.ours.analyse_decoder, (self.image, box[None])),
        ):
            if (kind, 1) not in self.flops:
                self.flops[(kind, 1)] = _analysis(f"the end-to-end {kind}", analysis, *inputs).flops
        parts = self.flops[("encoder", 1)], self.flops[("decoder", 1)]
        self.flops[("end_to_end", 1)] = None if None in parts else sum(parts)
        self._stage("end-to-end", "end_to_end", 1, [(impl, impl.end_to_end(self.image, box)) for impl in self.impls])

    def amg(self) -> None:
        """Automatic mask generation on the test image, each ``--amg`` grid, official defaults otherwise
        (the image encoded inside the call: a user's whole wait)."""
        for n in self.args.amg:
            entries = [(impl, call) for impl in self.impls if (call := impl.amg(self.image, n)) is not None]
            self._stage(f"amg {n}x{n} grid", "amg", n, entries)

    def ratios(self) -> None:
        """Each row's median over its stage's official fp32 and low-precision baseline rows."""
        base = {(r.stage, r.impl): r.median_s for r in self.rows if r.family == "official" and r.baseline}
        for r in self.rows:
            fp32, low = base.get((r.stage, BASELINES["fp32"])), base.get((r.stage, BASELINES["bf16"]))
            r.ratio_official_fp32 = r.median_s / fp32 if fp32 else None
            r.ratio_official_bf16 = r.median_s / low if low else None

    def cold(self, folder: Path) -> dict[str, Any]:
        from eval.bench.cold import cold_start

        with doing("timing the first call of fresh processes"):
            return cold_start(self.config, self.ours.params, self.image_size, folder)

    def result(self, cold: dict[str, Any] | None) -> dict[str, Any]:
        """Everything measured, as written to ``speed.json``."""
        from eval.bench.env import load_average

        a = self.args
        self.env["load_average_end"] = load_average()
        settings = {
            "model": self.config.name,
            "batch": a.batch,
            "prompts": a.prompts,
            "amg_points_per_side": a.amg,
            "repeats": a.repeats,
            "warmup": a.warmup,
            "per_prompt_calls": a.per_prompt_calls,
            "row_budget_s": a.row_budget,
            "ours_precision": a.precision,
            "skip": sorted(a.skip),
            "image_size": list(self.image_size),
            "seed": a.seed,
            "implementations": [i.label for i in self.impls],
        }
        peak = dataclasses.asdict(self.peak)
        return {
            "environment": self.env,
            "settings": settings,
            "peak": peak,
            "rows": [r.to_json() for r in self.rows],
            "cold": cold,
        }


def run(args: argparse.Namespace) -> int:
    """Measure everything asked for, print the Markdown report, write ``--output``; exit status 0."""
    from eval.bench.env import quiet_warnings
    from eval.bench.report import markdown

    # On a GPU, JAX would otherwise take 75 % of its memory up front and leave torch too little.
    os.environ.setdefault(PREALLOCATE_ENV, "false")
    out = Path(args.output) if args.output else None
    if args.memory:
        from eval.bench.memory import run_memory

        keys = ("batch", "prompts", "train_batch", "trainable", "precision")
        settings = {"models": args.model, **{k: getattr(args, k) for k in keys}, "skip": sorted(args.skip)}
        return run_memory(settings, out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    with quiet_warnings():
        bench = Bench(args)
        for name, stage in (
            ("encoder", bench.encoders),
            ("decoder", bench.decoders),
            ("end-to-end", bench.end_to_end),
            ("amg", bench.amg),
        ):
            if name in args.skip:
                continue
            stage()
            if out is not None:  # the stages so far, kept should a later one be cut short
                bench.ratios()
                partial = {**bench.result(None), "partial": True}
                (out / "speed.json").write_text(json.dumps(partial, indent=2) + "\n")
        bench.ratios()
        cold = bench.cold(out or Path(_tempdir())) if args.cold else None
    result = bench.result(cold)
    text = markdown(result)
    print(text)
    if out is not None:
        (out / "speed.md").write_text(text)
        (out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="samhq-bench-")


def main(argv: list[str] | None = None) -> int:
    """``samhq-bench``; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`).
    An ``--output`` that cannot be a folder is refused before anything is measured."""

    def body() -> int:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.output is not None and Path(args.output).exists() and not Path(args.output).is_dir():
            raise InputError(f"--output {args.output}: not a folder")
        return run(args)

    return run_guarded(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
