"""``samhq demo --output DIR``: the whole SAM-HQ story offline, in a few minutes on a CPU.

1. writes a synthetic thin-structure dataset (wires, meshes, rings, branching trees, strokes on
   textured backgrounds; :mod:`train.synthetic`) in the generic folder layout;
2. trains a small model end to end on SAM's own output as a stand-in for SAM (no weights needed);
3. freezes it and fine-tunes only the HQ parameters with the official recipe (HQ token, HQ MLP,
   fusion layers; point-sampled BCE + Dice on the HQ mask) — exactly what ``samhq-train`` does
   from a real SAM checkpoint;
4. evaluates SAM vs HQ on held-out images with the benchmark protocol (``samhq-eval``): tables,
   per-image scores and pictures of where HQ helps most and least.

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
from samhq_jax.errors import RunError
from train.loop import TrainConfig, train, validate
from train.synthetic import write_synthetic_dataset


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults take a few minutes on 2 CPU cores."""

    output: Path
    preset: str = "tiny_b"  # 160 px input
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
    from samhq_jax.config import ModelConfig

    out = Path(cfg.output)
    size = ModelConfig.preset(cfg.preset).img_size
    started = time.perf_counter()
    print(f"[1/4] synthetic thin-structure data: {cfg.train_images} training, {cfg.val_images} held-out images")
    train_dir = write_synthetic_dataset(out / "data" / "train", cfg.train_images, size=size, seed=cfg.seed)
    val_dir = write_synthetic_dataset(out / "data" / "val", cfg.val_images, size=size, seed=cfg.seed + 1)

    # the demo's own runs: a rerun into the same --output replaces them (overwrite)
    common = dict(
        data=(str(train_dir),), batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, log_every=10, overwrite=True
    )
    print(f"[2/4] stand-in SAM: {cfg.preset} trained end to end for {cfg.sam_steps} steps (SAM's mask output)")
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
    print(f"[3/4] HQ fine-tuning: SAM frozen, HQ parameters trained for {cfg.hq_steps} steps (official recipe)")
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
