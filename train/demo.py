"""``samhq demo --output DIR [--model vit_tiny]``: the whole SAM-HQ story offline, in a few minutes on a CPU.

1. writes a synthetic thin-structure dataset (wires, meshes, rings, branching trees, strokes on
   textured backgrounds; :mod:`train.synthetic`) in the generic folder layout;
2. trains a small model end to end on SAM's own output as a stand-in for SAM (no weights needed);
3. freezes it and fine-tunes only the HQ parameters with the official recipe (HQ token, HQ MLP,
   fusion layers; point-sampled BCE + Dice on the HQ mask) — exactly what ``samhq-train`` does
   from a real SAM checkpoint;
4. evaluates SAM vs HQ on held-out images with the benchmark protocol (``samhq-eval``): tables,
   per-image scores and pictures of where HQ helps most and least.

``--model`` picks the structure by its official name, at the test size of :data:`DEMO_PRESETS`
(160 px input): ``vit_tiny`` runs it for Light HQ-SAM, a TinyViT encoder whose BatchNorm running
statistics stay constant in both trainings (stage 3 trains the same five HQ parts as for the ViTs).

Everything lands in ``DIR``: ``data/``, ``sam/`` and ``hq/`` (training runs; ``hq/final`` is a model
``samhq predict`` takes), ``eval/`` (``summary.md``, ``summary.json``, ``per_image.csv``,
``pictures/``); a rerun into the same ``DIR`` replaces them (the runs and the evaluation are the
demo's own).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from samhq_jax.datasets import folder_pairs
from samhq_jax.errors import InputError, RunError
from train.loop import TrainConfig, train, validate
from train.synthetic import write_synthetic_dataset

DEMO_PRESETS = {"vit_b": "tiny_b", "vit_l": "tiny_l", "vit_h": "tiny_h", "vit_tiny": "tiny_t"}
"""``samhq demo --model``: an official model name -> the test-size preset with its structure."""


def demo_preset(model: str) -> str:
    """The test-size preset the demo trains for official model ``model`` (``vit_tiny`` -> ``tiny_t``)."""
    if model not in DEMO_PRESETS:
        raise InputError(f"--model {model!r}: choose one of {', '.join(DEMO_PRESETS)}")
    return DEMO_PRESETS[model]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults take a few minutes on 2 CPU cores."""

    output: Path
    preset: str = "tiny_b"  # 160 px input; tiny_t: Light HQ-SAM's structure (demo_preset("vit_tiny"))
    train_images: int = 240
    val_images: int = 24
    sam_steps: int = 400  # stage 2: the stand-in SAM, every parameter trained
    hq_steps: int = 300  # stage 3: HQ parameters only, SAM frozen
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    pictures: int = 3


def run_demo(cfg: DemoConfig) -> dict:
    """Run the four stages; returns the evaluation summary (``eval/summary.json`` content)."""
    from eval.cli import main as eval_main
    from samhq_jax.config import ModelConfig, TinyViTConfig
    from samhq_jax.sam_hq import param_shapes
    from train.trainable import count, partition

    out = Path(cfg.output)
    model = ModelConfig.preset(cfg.preset)
    size = model.img_size
    encoder = "TinyViT encoder, Light HQ-SAM" if isinstance(model.image_encoder, TinyViTConfig) else "ViT encoder"
    hq_values = count(partition(param_shapes(model), "hq")[0])
    started = time.perf_counter()
    print(f"[1/4] synthetic thin-structure data: {cfg.train_images} training, {cfg.val_images} held-out images")
    train_dir = write_synthetic_dataset(out / "data" / "train", cfg.train_images, size=size, seed=cfg.seed)
    val_dir = write_synthetic_dataset(out / "data" / "val", cfg.val_images, size=size, seed=cfg.seed + 1)

    # the demo's own runs: a rerun into the same --output replaces them (overwrite)
    common = dict(
        data=(str(train_dir),), batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, log_every=10, overwrite=True
    )
    print(
        f"[2/4] stand-in SAM: {cfg.preset} ({encoder}) trained end to end for {cfg.sam_steps} steps (SAM's mask output)"
    )
    sam = train(
        TrainConfig(
            output=out / "sam",
            preset=cfg.preset,
            steps=cfg.sam_steps,
            trainable="all",
            output_mask="sam",
            save_every=cfg.sam_steps,
            val_every=0,
            **common,
        )
    )
    before = validate(sam.config, sam.params, {"val": folder_pairs(val_dir)}, batch_size=cfg.batch_size)
    print(
        f"      held-out mIoU before HQ training: SAM {before['val/val/sam_miou']:.1f}, "
        f"HQ (untrained) {before['val/val/hq_miou']:.1f}"
    )
    print(
        f"[3/4] HQ fine-tuning: SAM frozen, the {hq_values:,} HQ values trained for {cfg.hq_steps} steps "
        "(official recipe)"
    )
    hq = train(
        TrainConfig(
            output=out / "hq",
            checkpoint=str(sam.final_dir),
            steps=cfg.hq_steps,
            save_every=cfg.hq_steps,
            val_data=(str(val_dir),),
            val_every=max(1, cfg.hq_steps // 3),
            **common,
        )
    )
    records = [json.loads(s) for s in (out / "hq" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    print(f"      HQ training loss {first:.3f} -> {last:.3f} (mean of the first / last 3 logged values)")
    print("[4/4] evaluation, SAM vs HQ on the held-out images (samhq-eval protocol)")
    status = eval_main(
        [
            "--checkpoint",
            str(hq.final_dir),
            "--data",
            str(val_dir),
            "--output",
            str(out / "eval"),
            "--pictures",
            str(cfg.pictures),
            "--overwrite",
        ]
    )
    if status:
        raise RunError(f"the evaluation failed (exit status {status})")
    summary = json.loads((out / "eval" / "summary.json").read_text())
    mean = summary["mean"]
    print(
        f"demo done in {time.perf_counter() - started:.0f} s: held-out mIoU SAM {mean['sam']['miou']:.1f} -> "
        f"HQ {mean['hq']['miou']:.1f}, mBIoU SAM {mean['sam']['mbiou']:.1f} -> HQ {mean['hq']['mbiou']:.1f}; "
        f"see {out / 'eval' / 'summary.md'} and {out / 'eval' / 'pictures'}"
    )
    return summary
