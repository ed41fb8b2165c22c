"""Training-step throughput on this machine: examples/s and the share of the frozen image encoder.

    python -m train.bench                                  # tiny_b and real vit_b, float32 encoder
    python -m train.bench --presets vit_b --batch-size 4 --steps 5 --encoder-dtype bfloat16 --json bench.json

For each preset: random weights, one synthetic batch in the layout :mod:`train.data` produces (a
textured image with a soft disc, its label, all three prompts, the prompt kinds mixed), and the real
training step (:func:`train.step.make_train_step`, HQ parameters trainable, jitted on the data mesh
with the state donated). Measured side by side in one run:

* compile: ``lower`` + ``compile`` of the train step (ahead of time, so no step runs in it);
* step: the median (min, max) of ``--steps`` warm steps after a first step kept out of the statistics
  (its time is in the JSON), each ended by ``jax.block_until_ready`` on its outputs (dispatch is
  asynchronous); examples/s = batch / median;
* memory: XLA's memory analysis of the compiled step (arguments, outputs, aliased, temp, XLA's
  peak where reported: :func:`eval.bench.env.analyse_compiled`) and, on a GPU, the device's peak
  bytes in use after the steps (the process's high-water mark);
* encoder: the frozen image encoder alone (``SamHQ.embed_image`` on the normalised batch, in
  ``--encoder-dtype``, as inside the step), jitted and timed the same way, as a fraction of the step.

The first and the last loss are printed as a sanity check (finite; every step trains on the same
batch, but the loss's point sampling is redrawn each step, so a few steps need not lower it).

Defaults keep the real model affordable on a 2-core CPU: batch 2 and 3 warm steps for the real
presets (a vit_b step is then ~35 s and the vit_b row ~6 minutes; batch 4 measured about the same
examples/s at twice the time per step, and 5 warm steps add ~2 minutes), batch 8 and 20 warm steps
for the tiny ones. ``--batch-size`` / ``--steps`` override both. The first step is kept apart because
on vit_b it takes about twice a warm one (first touch of the large buffers).
Progress goes to stderr; the environment line and the table to stdout. Errors are one line (bad flags
exit 2); ``python -m train.bench`` leaves the commands' persistent compilation cache off, so the
compile column measures XLA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib.version
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from eval.bench.env import analyse_compiled, blocking, jax_device_peak, load_average, time_interleaved
from eval.bench.report import mib
from samhq_jax.cmdkit.args import COUNT, POSITIVE_INT, OneLineParser
from samhq_jax.cmdkit.guard import CACHE_ENV, run_guarded
from samhq_jax.config import PRESETS, ModelConfig
from samhq_jax.errors import InputError
from samhq_jax.sam_hq import init_params
from train.prompts import BOX, NOISE_MASK, POINTS, sample_prompts
from train.step import (
    ENCODER_DTYPES,
    global_batch,
    init_state,
    jit_train_step,
    make_embed,
    make_mesh,
    make_optimizer,
    make_train_step,
    replicate,
)
from train.trainable import count, partition

PROG = "train.bench"  # python -m train.bench
DEFAULT_PRESETS = ("tiny_b", "vit_b")


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """One preset's numbers (seconds unless named otherwise)."""

    preset: str
    img_size: int
    encoder_dtype: str
    batch_size: int
    warm_steps: int
    trainable_params: int
    frozen_params: int
    compile_s: float
    first_step_s: float  # first execution after compiling (not in the statistics)
    step_median_s: float
    step_min_s: float
    step_max_s: float
    examples_per_s: float
    encoder_compile_s: float
    encoder_median_s: float
    encoder_min_s: float
    encoder_max_s: float
    encoder_fraction: float  # encoder median / step median
    loss_first: float
    loss_last: float
    xla_memory: dict[str, Any]  # XlaAnalysis.to_json() of the compiled step (bytes)
    device_peak_bytes: int | None  # the device's peak bytes in use after the steps (None on CPU)


def default_batch_size(preset: str) -> int:
    return 8 if preset.startswith("tiny") else 2


def default_steps(preset: str) -> int:
    return 20 if preset.startswith("tiny") else 3


def synthetic_batch(config: ModelConfig, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """A host batch as :mod:`train.data` yields it, S = ``config.img_size``, G = the embedding grid.

    ``image (B, S, S, 3)`` uint8 (noise background, a tinted noisy disc), ``label (B, S, S)`` float32
    0-255 (the disc, one-pixel soft edge), ``box (B, 4)``, ``points (B, 10, 2)``, ``noise_mask
    (B, 4G, 4G)`` float32 {0, 255} from :func:`train.prompts.sample_prompts`, ``prompt (B,)`` int32
    cycling box / points / noisy mask, ``valid (B,)`` bool True.
    """
    s, mask_size = config.img_size, config.low_res_mask_size
    kinds = (BOX, POINTS, NOISE_MASK)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    examples = []
    for i in range(batch_size):
        rng = np.random.default_rng([seed, i])
        cx, cy = rng.uniform(0.3 * s, 0.7 * s, size=2)
        radius = rng.uniform(0.1 * s, 0.3 * s)
        inside = np.clip(radius - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0)  # (S, S) in [0, 1]
        background = rng.integers(0, 256, size=(s, s, 3)).astype(np.float32)
        tint = rng.uniform(0, 255, size=3).astype(np.float32)
        image = background * (1 - 0.7 * inside[..., None]) + 0.7 * inside[..., None] * tint
        label = (inside * 255.0).astype(np.float32)
        prompts = sample_prompts(label, mask_size, rng)
        prompts["prompt"] = np.int32(kinds[i % len(kinds)])  # every kind in the batch, whatever was drawn
        examples.append({"image": image.astype(np.uint8), "label": label, **prompts, "valid": np.bool_(True)})
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_preset(name: str, *, batch_size: int, steps: int, encoder_dtype: str, seed: int = 0) -> BenchResult:
    """Compile, then time ``steps`` warm train steps and ``steps`` encoder calls of preset ``name``."""
    config = ModelConfig.preset(name)
    if batch_size % jax.device_count():
        raise InputError(f"--batch-size {batch_size} is not a multiple of the {jax.device_count()} devices")
    dtype = ENCODER_DTYPES[encoder_dtype]
    progress(f"{name}: initialising parameters and a batch of {batch_size}")
    # jitted: the forward pass init traces is dead code for the returned parameters and is dropped
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))
    trainable, frozen = partition(params, "hq")
    tx = make_optimizer(1e-3, drop_step=10_000)
    mesh = make_mesh()
    state = replicate(init_state(trainable, tx), mesh)
    frozen_dev = replicate(frozen, mesh)
    encoder_params = replicate({"image_encoder": params["image_encoder"]}, mesh)
    del params
    batch = global_batch(synthetic_batch(config, batch_size, seed), mesh)

    step_fn = jit_train_step(make_train_step(config, tx, seed=seed, encoder_dtype=dtype), mesh)
    progress(f"{name}: compiling the train step")
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, frozen_dev, batch).compile()
    compile_s = time.perf_counter() - t0
    xla_memory = analyse_compiled(compiled).to_json()

    progress(f"{name}: 1 + {steps} train steps")
    losses, step_times = [], []
    for _ in range(steps + 1):  # the first one is reported apart, outside the statistics
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, frozen_dev, batch))
        step_times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))  # read after the timer stops
    device_peak_bytes = jax_device_peak()

    # The encoder exactly as the step runs it (train.step.make_embed), outside jax.grad.
    embed = make_embed(config, dtype)
    replicated = NamedSharding(mesh, PartitionSpec())

    progress(f"{name}: compiling the encoder, then 1 + {steps} calls")
    t0 = time.perf_counter()
    embed_c = (
        jax.jit(embed, in_shardings=(replicated, batch["image"].sharding))
        .lower(encoder_params, batch["image"])
        .compile()
    )
    encoder_compile_s = time.perf_counter() - t0
    # the first call apart, as above; then the warm ones
    (enc_timing,) = time_interleaved([blocking(lambda: embed_c(encoder_params, batch["image"]))], steps)
    enc_times = enc_timing.times_s

    first_step_s, step_times = step_times[0], step_times[1:]
    step_median, enc_median = statistics.median(step_times), statistics.median(enc_times)
    return BenchResult(
        preset=name,
        img_size=config.img_size,
        encoder_dtype=encoder_dtype,
        batch_size=batch_size,
        warm_steps=steps,
        trainable_params=count(trainable),
        frozen_params=count(frozen),
        compile_s=compile_s,
        first_step_s=first_step_s,
        step_median_s=step_median,
        step_min_s=min(step_times),
        step_max_s=max(step_times),
        examples_per_s=batch_size / step_median,
        encoder_compile_s=encoder_compile_s,
        encoder_median_s=enc_median,
        encoder_min_s=min(enc_times),
        encoder_max_s=max(enc_times),
        encoder_fraction=enc_median / step_median,
        loss_first=losses[0],
        loss_last=losses[-1],
        xla_memory=xla_memory,
        device_peak_bytes=device_peak_bytes,
    )


def environment() -> dict[str, Any]:
    """What the numbers depend on: versions, devices, the XLA flags in force, CPU cores."""
    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.version.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_avg_1m": (load_average() or [None])[0],  # other processes share the cores
    }


def format_table(results: Sequence[BenchResult]) -> str:
    """Markdown table, one row per preset."""
    head = (
        "| preset | S | encoder dtype | batch | warm steps | compile s | step s median (min-max) | examples/s "
        "| encoder s median (min-max) | encoder share | loss first -> last | step MiB: XLA temp / total (device peak) |"
    )
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        x = r.xla_memory
        rows.append(
            f"| {r.preset} | {r.img_size} | {r.encoder_dtype} | {r.batch_size} | {r.warm_steps} | {r.compile_s:.1f} "
            f"| {r.step_median_s:.3f} ({r.step_min_s:.3f}-{r.step_max_s:.3f}) | {r.examples_per_s:.3g} "
            f"| {r.encoder_median_s:.3f} ({r.encoder_min_s:.3f}-{r.encoder_max_s:.3f}) "
            f"| {100 * r.encoder_fraction:.0f}% | {r.loss_first:.4f} -> {r.loss_last:.4f} "
            f"| {mib(x['temp_bytes'])} / {mib(x['total_bytes'])} ({mib(r.device_peak_bytes)}) |"
        )
    return "\n".join(rows)


def run(
    presets: Sequence[str],
    *,
    batch_size: int | None,
    steps: int | None,
    encoder_dtype: str,
    seed: int,
    json_path: Path | None,
) -> list[BenchResult]:
    """Benchmark each preset in turn, print the environment and the table, optionally write JSON."""
    env = environment()
    print(
        f"jax {env['jax']} | {env['backend']}: {env['device_count']} x {env['device_kind']} | "
        f"{env['cpu_count']} CPU cores (load {env['load_avg_1m']}) | XLA_FLAGS={env['xla_flags'] or '(unset)'}",
        flush=True,
    )
    results = []
    for name in presets:
        b = default_batch_size(name) if batch_size is None else batch_size
        n = default_steps(name) if steps is None else steps
        t0 = time.perf_counter()
        results.append(bench_preset(name, batch_size=b, steps=n, encoder_dtype=encoder_dtype, seed=seed))
        elapsed = time.perf_counter() - t0
        print(f"{name}: batch {b}, {n} warm steps, {elapsed:.0f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    print()
    print(format_table(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "results": [dataclasses.asdict(r) for r in results]}
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help=f"comma-separated, of {', '.join(PRESETS)}")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="global batch (default: 2 real presets, 8 tiny)")
    p.add_argument("--steps", type=POSITIVE_INT, help="timed warm steps (default: 3 real presets, 20 tiny)")
    p.add_argument("--encoder-dtype", default="float32", choices=tuple(ENCODER_DTYPES))
    p.add_argument("--seed", type=COUNT, default=0)
    p.add_argument("--json", type=Path, help="also write the environment and the numbers here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.bench``; errors are one line on stderr (:func:`samhq_jax.cmdkit.guard.run_guarded`):
    bad flags exit 2 before any work, a failure while measuring exit 1."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # bad flags: one line already printed, exit code 2 (0 for --help)
        return int(exit_.code or 0)

    def body() -> int:
        presets = [n.strip() for n in args.presets.split(",") if n.strip()]
        unknown = [n for n in presets if n not in PRESETS]
        if not presets or unknown:
            raise InputError(f"--presets: unknown {unknown or '(none given)'}; choose from {', '.join(PRESETS)}")
        if args.batch_size is not None and args.batch_size % jax.device_count():
            raise InputError(f"--batch-size {args.batch_size} is not a multiple of the {jax.device_count()} devices")
        run(
            presets,
            batch_size=args.batch_size,
            steps=args.steps,
            encoder_dtype=args.encoder_dtype,
            seed=args.seed,
            json_path=args.json,
        )
        return 0

    return run_guarded(PROG, body)


if __name__ == "__main__":
    # the compile column times XLA, not the commands' disk cache (SAMHQ_JAX_CACHE=DIR uses one anyway)
    os.environ.setdefault(CACHE_ENV, "0")
    sys.exit(main())
