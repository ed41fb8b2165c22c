"""The device suite: everything the accelerator path must show, measured in one call on a lent GPU.

    bash scripts/device_suite.sh                   # on the GPU machine: $OUT/device_suite.{md,json,log}
    bash scripts/device_suite.sh --smoke           # the same sections on CPU at tiny sizes (CI)
    python -m eval.bench.device_suite --output DIR [--smoke] [--budget SECONDS] [--sections amg,train]

Sections, in this order (most wanted first), each in its own process (a crash or an out-of-memory
error costs that section alone; GPU memory is handed back between them), under one time budget
(``--budget``, default 540 s, 900 with ``--smoke``; a section with too little time left is
skipped and says so, and ``--sections`` runs only the named ones, e.g. those a lease left out):

* ``environment``: versions, the devices, the GPU's name and driver;
* ``peak``: the measured matmul ceilings: an ``n^3`` bf16 product in JAX and in PyTorch (the larger
  is the bf16 peak every figure is divided by), fp32 JAX at precision "default" and "highest";
* ``parity``: vit_b, seeded random weights, our fp32 predictor at precision "highest" on the JAX
  device against the official ``SamPredictor`` on CUDA with TF32 off (matmuls and convolutions):
  image embedding, early feature, then low-res logits and IoU of three boxes for every
  ``multimask_output`` x ``hq_token_only``; worst relative error (``max |d| / max |ref|``) against
  the 1e-4 bar, and the agreement of the binarised full-size masks;
* ``encoder_b``, ``amg``, ``encoder_h``, ``decoder``: ``samhq-bench`` (:mod:`eval.bench.speed`) at
  precision "default" (ours fp32 and bf16 against the official fp32, the official under bf16
  autocast and Hugging Face ``SamHQModel``): the vit_b encoder at batch 1 and 8; segment-everything
  32x32 on vit_b; the vit_h encoder at batch 1 and 8; the vit_b decoder at 1 / 64 / 256 boxes and
  end to end. A bench section cut short keeps the stages it finished (marked partial);
* ``train``: :mod:`train.bench`, the real HQ train step on vit_b at batch 8 (bf16 encoder);
* ``attention``: the encoder's attention paths (``samhq_jax.image_encoder.ATTENTION_PATHS``) timed
  side by side on vit_b and vit_h at batch 8 in bf16, each checked against the blocked path.

On a fresh GPU machine XLA compiles (and autotunes) every program first: on the 2026-12-04 H200
that took most of parity's 123 s, and the whole list needs more than one 10-minute call; run the
rest with ``--sections`` in the next.

Every timing is a median of warm calls waited for (``jax.block_until_ready``, CUDA synchronised).
Each figure with a FLOP count (XLA's analysis of our fp32 program of the same stage) is also given
as a fraction of the measured bf16 peak. ``--smoke`` runs every section on tiny presets on the CPU
in a few minutes, so the suite cannot rot; its bars are reported, not met.

Written to ``--output``: ``device_suite.json`` (every figure, every section's own JSON),
``device_suite.md`` (the tables) and ``device_suite.log`` (each section's output); the tables are
printed last. Exit status 0 when every section ran, 1 when one failed or was skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval.bench.report import mib

PROG = "device_suite"
PARITY_BAR = 1e-4
ENCODER_PEAK_BAR = 0.40  # ours bf16 encoder at batch 8: fraction of the measured bf16 matmul peak
ENCODER_OFFICIAL_BAR = 0.5  # ours bf16 encoder time over the official bf16-autocast encoder's
AMG_OFFICIAL_BAR = 0.3  # our segment-everything time over the official's
TIMEOUT_SLACK_S = 5.0  # a section's process is killed this long after its share of the budget
CHILD_ENV = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX and torch share the GPU within a section
    "PYTHONUNBUFFERED": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section runs: the real sizes, or tiny ones for ``--smoke``."""

    small_model: str
    large_model: str
    batches: tuple[int, ...]
    prompts: tuple[int, ...]
    amg_points: int
    repeats: int
    matmul_n: int
    parity_image: tuple[int, int]
    train_batch: int
    train_steps: int
    bench_skip: str  # samhq-bench --skip: rows left out (the official bf16 autocast crawls on most CPUs)
    budget_s: float  # default --budget


FULL = Sizes("vit_b", "vit_h", (1, 8), (1, 64, 256), 32, 5, 8192, (768, 1024), 8, 5, "", 540.0)
SMOKE = Sizes("tiny_b", "tiny_h", (1, 2), (1, 4), 4, 1, 256, (96, 128), 2, 1, "official-bf16", 900.0)


def _join(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


# ---- the sections (each runs in its own process: ``--section NAME``) ---------------------------
def section_environment(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Versions, devices and the GPU's own description."""
    import importlib.metadata
    import platform

    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "segment-anything-hq"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    gpu = None
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": versions,
        "jax_backend": jax.default_backend(),
        "jax_devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "nvidia_smi": gpu,
        "cpu_count": os.cpu_count(),
    }


def _tflops(n: int, seconds: float) -> float:
    return 2.0 * n**3 / seconds / 1e12


def section_peak(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The matmul ceilings of this device, measured on random data (never zeros)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from eval.bench.env import blocking, time_interleaved

    n = sizes.matmul_n
    rng = np.random.default_rng(0)
    host = [rng.standard_normal((n, n), np.float32) for _ in range(2)]
    calls: dict[str, Callable[[], Any]] = {}
    for name, dtype, precision in (
        ("jax_bf16", jnp.bfloat16, "default"),
        ("jax_fp32_default", jnp.float32, "default"),
        ("jax_fp32_highest", jnp.float32, "highest"),
    ):
        a, b = (jax.device_put(x.astype(dtype)) for x in host)
        product = jax.jit(lambda x, y, p=precision: jnp.matmul(x, y, precision=p))
        calls[name] = blocking(lambda f=product, x=a, y=b: f(x, y))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ta, tb = (torch.from_numpy(x).to(device=device, dtype=torch.bfloat16) for x in host)

    def torch_bf16() -> Any:
        out = ta @ tb
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    calls["torch_bf16"] = torch_bf16
    timings = time_interleaved(list(calls.values()), repeats=max(3, 2 * sizes.repeats), warmup=3)
    result = {f"{k}_tflops": _tflops(n, t.median_s) for k, t in zip(calls, timings, strict=True)}
    result["n"] = n
    result["torch_device"] = device
    result["bf16_peak_tflops"] = max(result["jax_bf16_tflops"], result["torch_bf16_tflops"])
    return result


def _parity_image(size: tuple[int, int]) -> Any:
    """A seeded ``(H, W, 3)`` uint8 image with smooth structure and texture (no photo travels)."""
    import numpy as np

    h, w = size
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(9 * x + 3 * y), np.cos(7 * y - 2 * x), np.sin(5 * (x + y))], -1)
    image = 127.5 + 90 * base + rng.normal(0, 20, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def section_parity(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Ours (JAX device, fp32, "highest") against the official ``SamPredictor`` (CUDA, TF32 off)."""
    import jax
    import numpy as np
    import torch

    from convert.core import state_dict_to_params
    from eval.bench.env import quiet_warnings
    from eval.parity.stages import mask_agreement, relative_error
    from eval.reference import build_official
    from samhq_jax.config import ModelConfig
    from samhq_jax.predictor import SamHQPredictor

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = ModelConfig.preset(sizes.small_model)
    official = build_official(config, seed=0)
    _, params = state_dict_to_params({k: v.numpy() for k, v in official.state_dict().items()}, config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    official = official.to(device).eval()
    with quiet_warnings():
        from segment_anything_hq import SamPredictor

    image = _parity_image(sizes.parity_image)
    h, w = sizes.parity_image
    boxes = np.array([[w * 0.1, h * 0.1, w * 0.6, h * 0.7], [w * 0.4, h * 0.3, w * 0.9, h * 0.9], [0, 0, w - 1, h - 1]])
    ref = SamPredictor(official)
    ours = SamHQPredictor(config, jax.device_put(params), precision="highest")
    with torch.inference_mode():
        ref.set_image(image)
    ours.set_image(image)
    emb = ours.get_image_embedding()
    errors = {
        "image embedding": relative_error(
            np.asarray(emb.image_embeddings), ref.features.permute(0, 2, 3, 1).float().cpu().numpy()
        ),
        "early feature": relative_error(np.asarray(emb.early_features), ref.interm_features[0].float().cpu().numpy()),
    }
    agreements = {}
    frame = torch.as_tensor(ref.transform.apply_boxes(boxes, ref.original_size), dtype=torch.float32, device=device)
    for multimask in (False, True):
        for hq_only in (False, True):
            flags = f"multimask={multimask}, hq_token_only={hq_only}"
            with torch.inference_mode():
                r_masks, r_iou, r_low = ref.predict_torch(
                    None, None, boxes=frame, multimask_output=multimask, return_logits=True, hq_token_only=hq_only
                )
            o_masks, o_iou, o_low = ours.predict_batch(
                boxes=boxes, multimask_output=multimask, return_logits=True, hq_token_only=hq_only
            )
            errors[f"low-res logits ({flags})"] = relative_error(o_low, r_low.float().cpu().numpy())
            errors[f"IoU ({flags})"] = relative_error(o_iou, r_iou.float().cpu().numpy())
            agreements[f"full-size masks ({flags})"] = mask_agreement(o_masks, r_masks.float().cpu().numpy())
    worst = max(errors, key=errors.get)
    return {
        "model": config.name,
        "jax_device": str(jax.devices()[0]),
        "torch_device": device,
        "tf32": False,
        "image_size": list(sizes.parity_image),
        "errors": errors,
        "mask_agreement": agreements,
        "worst_stage": worst,
        "worst_error": errors[worst],
        "lowest_mask_agreement": min(agreements.values()),
    }


def _bench(name: str, model: str, argv: list[str], skip: str, sizes: Sizes, work: Path) -> dict[str, Any]:
    """``samhq-bench`` on ``model`` with ``argv``, leaving out the stages in ``skip`` (and
    ``sizes.bench_skip``), writing to ``work/NAME`` (its ``speed.json`` is rewritten after each stage,
    so a section cut short keeps the stages it finished); that JSON."""
    from eval.bench.speed import main as bench_main

    out = work / name
    skip = ",".join(s for s in (skip, sizes.bench_skip) if s)
    common = ["--repeats", str(sizes.repeats), "--row-budget", "20", "--precision", "default", "--output", str(out)]
    code = bench_main(["--model", model, *argv, *common, "--skip", skip])
    if code != 0:
        raise RuntimeError(f"samhq-bench --model {model} exited {code}")
    return json.loads((out / "speed.json").read_text())


def section_encoder_b(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The small model's encoder at each batch size."""
    argv = ["--batch", _join(sizes.batches)]
    return _bench("encoder_b", sizes.small_model, argv, "decoder,end-to-end,amg", sizes, work)


def section_encoder_h(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The large model's encoder at each batch size."""
    argv = ["--batch", _join(sizes.batches)]
    return _bench("encoder_h", sizes.large_model, argv, "decoder,end-to-end,amg", sizes, work)


def section_amg(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Segment everything (encoding included) on the small model; ours fp32 / bf16 and the official fp32."""
    argv = ["--batch", "1", "--amg", str(sizes.amg_points)]
    return _bench("amg", sizes.small_model, argv, "encoder,decoder,end-to-end", sizes, work)


def section_decoder(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The small model's decoder at each prompt count, then set_image + one predict."""
    argv = ["--batch", "1", "--prompts", _join(sizes.prompts)]
    return _bench("decoder", sizes.small_model, argv, "encoder,amg", sizes, work)


def section_train(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The HQ train step of the small model, bf16 encoder."""
    from train.bench import main as train_main

    path = work / "train.json"
    argv = ["--presets", sizes.small_model, "--batch-size", str(sizes.train_batch), "--steps", str(sizes.train_steps)]
    code = train_main([*argv, "--encoder-dtype", "bfloat16", "--json", str(path)])
    if code != 0:
        raise RuntimeError(f"train.bench exited {code}")
    return json.loads(path.read_text())


def section_attention(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Each attention path of the image encoder, bf16, batch ``max(batches)``, against the blocked one."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from eval.bench.env import analyse, blocking, time_interleaved
    from eval.parity.stages import relative_error
    from samhq_jax import image_encoder
    from samhq_jax.config import ModelConfig

    paths = getattr(image_encoder, "ATTENTION_PATHS", None)
    if paths is None:
        return {"skipped": "this checkout has one attention path"}
    platform = jax.devices()[0].platform
    batch = max(sizes.batches)
    result: dict[str, Any] = {"batch": batch, "dtype": "bf16", "platform": platform, "models": {}}
    for model in (sizes.small_model, sizes.large_model):
        cfg = ModelConfig.preset(model).image_encoder
        images = jax.device_put(np.random.default_rng(0).normal(size=(batch, cfg.img_size, cfg.img_size, 3)))
        images = images.astype(jnp.float32)
        init_module = image_encoder.ImageEncoderViT(cfg)
        params = jax.jit(init_module.init)(jax.random.key(0), images[:1])
        # rel-pos tables are zeros at init: randomise every leaf so the bias paths are exercised
        leaves, tree = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        params = tree.unflatten(
            [0.02 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
        )
        rows: dict[str, Any] = {}
        runnable: dict[str, Callable[[], Any]] = {}
        outputs: dict[str, Any] = {}
        for path in paths:
            module = image_encoder.ImageEncoderViT(cfg, dtype=jnp.bfloat16, attention=path)
            fn = jax.jit(lambda p, x, m=module: m.apply(p, x))
            try:
                outputs[path] = np.asarray(fn(params, images)[0], np.float32)
            except Exception as err:  # a path this platform cannot take (cuDNN off GPU, head dims)
                rows[path] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
                continue
            runnable[path] = blocking(lambda f=fn, p=params, x=images: f(p, x))
            rows[path] = {"xla_flops": analyse(fn.lower(params, images)).flops}
        timings = time_interleaved(list(runnable.values()), repeats=max(3, sizes.repeats), warmup=2)
        useful = rows.get("blocked", {}).get("xla_flops")  # the extended paths' padding is no useful work
        for path, timing in zip(runnable, timings, strict=True):
            rows[path].update(median_s=timing.median_s, min_s=timing.min_s, flops=useful)
            if "blocked" in outputs:
                rows[path]["relative_error_vs_blocked"] = relative_error(outputs[path], outputs["blocked"])
        result["models"][model] = rows
        save_section(work, "attention", {**result, "partial": True})  # kept if the next model runs out of time
        print(f"{PROG}: attention {model}: {json.dumps(rows, default=str)}", flush=True)
    return result


SECTIONS: dict[str, Callable[[Sizes, Path], dict[str, Any]]] = {
    "environment": section_environment,
    "peak": section_peak,
    "parity": section_parity,
    "encoder_b": section_encoder_b,
    "amg": section_amg,
    "encoder_h": section_encoder_h,
    "train": section_train,
    "attention": section_attention,
    "decoder": section_decoder,
}
BENCH_SECTIONS = ("encoder_b", "encoder_h", "amg", "decoder")  # samhq-bench's speed.json each
# Seconds a section may take at most (real sizes, a fresh GPU machine: XLA compiles and autotunes
# every program first; the 2026-12-04 H200 run took 123 s for parity, ~100 s for the vit_b encoders).
SECTION_CAPS_S = {"environment": 60, "peak": 60, "parity": 180, "encoder_b": 150, "amg": 150, "encoder_h": 200}
SECTION_CAPS_S |= {"train": 180, "attention": 150, "decoder": 180}
MIN_START_S = 20.0


def section_file(work: Path, name: str) -> Path:
    """Where a section's figures are: ``work/NAME.json``, or, for a bench section cut short, the
    ``speed.json`` its finished stages left (marked partial)."""
    done = work / f"{name}.json"
    return done if done.exists() or name not in BENCH_SECTIONS else work / name / "speed.json"


def save_section(work: Path, name: str, result: dict[str, Any]) -> None:
    """Write a section's figures to ``work/NAME.json`` (also its partial figures, as it goes)."""
    (work / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


def run_section(name: str, smoke: bool, work: Path) -> int:
    """Child process: run one section, write ``work/NAME.json``."""
    sizes = SMOKE if smoke else FULL
    started = time.perf_counter()
    result = SECTIONS[name](sizes, work)
    result["section_s"] = time.perf_counter() - started
    save_section(work, name, result)
    return 0


# ---- the parent: one process per section, under one budget --------------------------------------
@dataclasses.dataclass
class Outcome:
    """How one section ended: ``ok``, ``failed`` (exit status or timeout) or ``skipped`` (no time left)."""

    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-400:]


def run_sections(names: list[str], smoke: bool, budget_s: float, work: Path, log: Path) -> list[Outcome]:
    """Run each section in a child process while the budget lasts; their output goes to ``log``."""
    deadline = time.monotonic() + budget_s
    env = {**os.environ, **CHILD_ENV}
    env.setdefault("SAMHQ_JAX_CACHE", str(work / "xla-cache"))  # shared by the sections
    outcomes = []
    with log.open("w") as out:
        for name in names:
            left = deadline - time.monotonic()
            cap = SECTION_CAPS_S[name] * (1 if not smoke else 3)  # tiny models, but a 2-core CPU
            if left < MIN_START_S:
                outcomes.append(Outcome(name, "skipped", detail=f"{left:.0f} s of the budget left"))
                print(f"{PROG}: {name}: skipped, {left:.0f} s left", file=sys.stderr)
                continue
            timeout = min(cap, left) + TIMEOUT_SLACK_S
            print(f"{PROG}: {name} (at most {timeout:.0f} s) ...", file=sys.stderr, flush=True)
            out.write(f"\n===== {name} =====\n")
            out.flush()
            argv = [sys.executable, "-m", "eval.bench.device_suite", "--section", name, "--work", str(work)]
            started = time.monotonic()
            try:
                proc = subprocess.run(
                    argv + (["--smoke"] if smoke else []),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                )
                text, code = proc.stdout, proc.returncode
            except subprocess.TimeoutExpired as err:
                raw = err.stdout or ""
                text, code = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw), None
            seconds = time.monotonic() - started
            out.write(text)
            out.flush()
            if code == 0 and not json.loads(section_file(work, name).read_text()).get("partial"):
                outcomes.append(Outcome(name, "ok", seconds))
            else:
                why = f"timed out after {timeout:.0f} s" if code is None else f"exit {code}"
                outcomes.append(Outcome(name, "failed", seconds, f"{why}: {_tail(text)}"))
            print(f"{PROG}: {name}: {outcomes[-1].status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return outcomes


# ---- the report ---------------------------------------------------------------------------------
def _rows(bench: dict[str, Any] | None, kind: str) -> list[dict[str, Any]]:
    return [r for r in (bench or {}).get("rows", []) if r["kind"] == kind]


def _find(rows: list[dict[str, Any]], impl: str, size: int, baseline: bool | None = None) -> dict[str, Any] | None:
    for r in rows:
        if r["impl"] == impl and r["size"] == size and (baseline is None or r["baseline"] == baseline):
            return r
    return None


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def _peak_fraction(row: dict[str, Any] | None, peak_flops: float | None) -> float | None:
    if not row or not row.get("flops") or not peak_flops:
        return None
    return row["flops"] / row["median_s"] / peak_flops


def _memory_mib(row: dict[str, Any]) -> str:
    """A row's memory in MiB: XLA's plan of our program (total, temp, XLA's peak where reported), then
    the peak measured (the device's process peak, torch's CUDA peak or the RSS rise)."""
    mem = row.get("memory") or {}
    xla = mem.get("xla") or {}
    measured = (
        mem.get("device_process_peak_bytes") or mem.get("cuda_peak_delta_bytes") or mem.get("rss_peak_delta_bytes")
    )
    parts = []
    if xla.get("total_bytes"):
        plan = f"plan {mib(xla['total_bytes'])} (temp {mib(xla.get('temp_bytes'))}"
        parts.append(plan + (f", XLA peak {mib(xla['peak_bytes'])})" if xla.get("peak_bytes") else ")"))
    if measured:
        parts.append(f"peak {mib(measured)}")
    return ", ".join(parts) or "n/a"


def _verdict(value: float | None, bar: float, at_most: bool) -> str:
    if value is None:
        return "not measured"
    return "pass" if (value <= bar if at_most else value >= bar) else "FAIL"


def headline(results: dict[str, Any], sizes: Sizes) -> list[tuple[str, str, str, str]]:
    """``(figure, measured, bar, verdict)`` for each bar of the accelerators issue."""
    peak = results.get("peak") or {}
    peak_flops = peak.get("bf16_peak_tflops", 0) * 1e12 or None
    lines = []
    parity = results.get("parity")
    if parity:
        err = parity["worst_error"]
        lines.append(
            (
                f"parity {parity['model']} fp32 'highest' vs official on {parity['torch_device']} (TF32 off), worst",
                f"{err:.2e} ({parity['worst_stage']})",
                f"<= {PARITY_BAR:.0e}",
                _verdict(err, PARITY_BAR, True),
            )
        )
        lines.append(
            ("parity: lowest full-size mask agreement", f"{100 * parity['lowest_mask_agreement']:.3f} %", "", "")
        )
    if peak:
        lines.append(
            (
                f"bf16 matmul {peak['n']}^3: JAX / torch",
                f"{peak['jax_bf16_tflops']:.3g} / {peak['torch_bf16_tflops']:.3g} TFLOP/s",
                "the peak below",
                "",
            )
        )
    big = max(sizes.batches)
    for model, key in ((sizes.small_model, "encoder_b"), (sizes.large_model, "encoder_h")):
        enc = _rows(results.get(key), "encoder")
        ours = _find(enc, "ours-bf16", big)
        frac = _peak_fraction(ours, peak_flops)
        lines.append(
            (
                f"encoder {model} bf16 batch {big}: fraction of the bf16 peak",
                _fmt(None if frac is None else 100 * frac, ".1f", " %"),
                f">= {100 * ENCODER_PEAK_BAR:.0f} %",
                _verdict(frac, ENCODER_PEAK_BAR, False),
            )
        )
        ratio = ours.get("ratio_official_bf16") if ours else None
        lines.append(
            (
                f"encoder {model} batch {big}: ours bf16 / official bf16 autocast",
                _fmt(ratio, ".2f", "x"),
                f"<= {ENCODER_OFFICIAL_BAR}x",
                _verdict(ratio, ENCODER_OFFICIAL_BAR, True),
            )
        )
    amg = _rows(results.get("amg"), "amg")
    official_amg = _find(amg, "official-fp32", sizes.amg_points)
    for impl in ("ours-fp32", "ours-bf16"):
        ours = _find(amg, impl, sizes.amg_points)
        ratio = ours["median_s"] / official_amg["median_s"] if ours and official_amg else None
        lines.append(
            (
                f"segment everything {sizes.amg_points}x{sizes.amg_points}: {impl} / official fp32",
                _fmt(ratio, ".2f", "x"),
                f"<= {AMG_OFFICIAL_BAR}x",
                _verdict(ratio, AMG_OFFICIAL_BAR, True),
            )
        )
    train = (results.get("train") or {}).get("results") or []
    for r in train:
        x = r.get("xla_memory") or {}
        memory = f"XLA temp {mib(x.get('temp_bytes'))} / total {mib(x.get('total_bytes'))} MiB"
        if r.get("device_peak_bytes"):
            memory += f", device peak {mib(r['device_peak_bytes'])} MiB"
        lines.append(
            (
                f"train step {r['preset']} batch {r['batch_size']} ({r['encoder_dtype']} encoder)",
                f"{r['examples_per_s']:.1f} examples/s (encoder {100 * r['encoder_fraction']:.0f} %); {memory}",
                "",
                "",
            )
        )
    return lines


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def stage_tables(results: dict[str, Any], sizes: Sizes) -> list[str]:
    """Encoder, decoder / end-to-end / AMG and attention tables."""
    peak_flops = (results.get("peak") or {}).get("bf16_peak_tflops", 0) * 1e12 or None
    out: list[str] = []
    enc_rows = []
    for key in ("encoder_b", "encoder_h"):
        bench = results.get(key)
        if not bench:
            continue
        model = bench["settings"]["model"]
        for r in _rows(bench, "encoder"):
            frac = _peak_fraction(r, peak_flops)
            enc_rows.append(
                (
                    model,
                    str(r["size"]),
                    r["label"],
                    f"{1e3 * r['median_s']:.1f}",
                    f"{r['size'] / r['median_s']:.1f}",
                    _fmt(None if frac is None else 100 * frac, ".1f"),
                    _fmt(r.get("ratio_official_fp32"), ".2f"),
                    _fmt(r.get("ratio_official_bf16"), ".2f"),
                    _memory_mib(r),
                    _fmt(r.get("compile_s"), ".1f"),
                )
            )
    if enc_rows:
        head = ("model", "batch", "implementation", "ms", "images/s", "% bf16 peak", "x off. fp32", "x off. bf16")
        out += ["", "Encoder:", "", *_table((*head, "memory MiB", "compile s"), enc_rows)]
    other = []
    for key in ("decoder", "amg"):
        bench = results.get(key)
        if not bench:
            continue
        for kind in ("decoder", "end_to_end", "amg"):
            for r in _rows(bench, kind):
                other.append(
                    (
                        bench["settings"]["model"],
                        r["stage"],
                        r["label"],
                        r["mode"],
                        f"{1e3 * r['median_s']:.2f}",
                        _fmt(r.get("ratio_official_fp32"), ".2f"),
                        _fmt(r.get("ratio_official_bf16"), ".2f"),
                    )
                )
    if other:
        head = ("model", "stage", "implementation", "called as", "ms", "x off. fp32", "x off. bf16")
        out += ["", "Decoder, end to end, segment everything:", "", *_table(head, other)]
    attention = results.get("attention") or {}
    att_rows = []
    for model, paths in (attention.get("models") or {}).items():
        for path, r in paths.items():
            if "error" in r:
                att_rows.append((model, path, "n/a", "n/a", "n/a", r["error"]))
                continue
            frac = _peak_fraction({"flops": r.get("flops"), "median_s": r["median_s"]}, peak_flops)
            att_rows.append(
                (
                    model,
                    path,
                    f"{1e3 * r['median_s']:.1f}",
                    _fmt(None if frac is None else 100 * frac, ".1f"),
                    _fmt(r.get("relative_error_vs_blocked"), ".1e"),
                    "",
                )
            )
    if att_rows:
        batch = attention["batch"]
        head = ("model", "attention path", f"encoder bf16 b={batch} ms", "% bf16 peak", "rel. err vs blocked", "note")
        out += ["", "Attention paths:", "", *_table(head, att_rows)]
    return out


def report(results: dict[str, Any], outcomes: list[Outcome], sizes: Sizes, smoke: bool) -> str:
    """The Markdown the suite prints last and writes to ``device_suite.md``."""
    env = results.get("environment") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines = [
        f"# device suite{' (smoke: tiny presets)' if smoke else ''}",
        "",
        f"- date: {env.get('date', 'n/a')}; device: {env.get('nvidia_smi') or ', '.join(env.get('jax_devices', []))}",
        f"- versions: {versions or 'n/a'}",
        "- sections: " + ", ".join(f"{o.name} {o.status} ({o.seconds:.0f} s)" for o in outcomes),
    ]
    lines += [f"- {o.name}: {o.status}: {o.detail}" for o in outcomes if o.status != "ok"]
    lines += ["", *_table(("figure", "measured", "bar", "verdict"), headline(results, sizes))]
    lines += stage_tables(results, sizes)
    return "\n".join(lines) + "\n"


def run_suite(output: Path, smoke: bool, budget_s: float, names: list[str]) -> int:
    """Run the sections, gather their JSON, write and print the report; 0 when every section ran."""
    output.mkdir(parents=True, exist_ok=True)
    sizes = SMOKE if smoke else FULL
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="samhq-device-suite-") as tmp:
        work = Path(tmp)
        outcomes = run_sections(names, smoke, budget_s, work, output / "device_suite.log")
        # a section cut short may have saved its figures so far (``"partial": true``)
        saved = [o.name for o in outcomes if section_file(work, o.name).exists()]
        results = {name: json.loads(section_file(work, name).read_text()) for name in saved}
    text = report(results, outcomes, sizes, smoke)
    payload = {
        "smoke": smoke,
        "sizes": dataclasses.asdict(sizes),
        "budget_s": budget_s,
        "total_s": time.monotonic() - started,
        "outcomes": [dataclasses.asdict(o) for o in outcomes],
        "headline": [
            dict(zip(("figure", "measured", "bar", "verdict"), r, strict=True)) for r in headline(results, sizes)
        ],
        "sections": results,
    }
    (output / "device_suite.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (output / "device_suite.md").write_text(text)
    print(text, end="")
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def build_parser() -> argparse.ArgumentParser:
    from samhq_jax.cmdkit.args import OneLineParser

    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--output", help="folder for device_suite.json / .md / .log (default $OUT, else ./device_suite)")
    p.add_argument("--smoke", action="store_true", help="tiny presets on whatever device there is (CI)")
    p.add_argument(
        "--budget", type=float, help=f"seconds for all sections (default {FULL.budget_s:g}; --smoke {SMOKE.budget_s:g})"
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--section", choices=tuple(SECTIONS), help=argparse.SUPPRESS)  # a child's one section
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)  # where a child writes its JSON
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.section is not None:
        if args.work is None:
            parser.error("--section needs --work")
        return run_section(args.section, args.smoke, args.work)
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        parser.error(f"--sections: unknown {unknown or '(none given)'}; choose from {', '.join(SECTIONS)}")
    budget = args.budget if args.budget is not None else (SMOKE if args.smoke else FULL).budget_s
    if not budget > 0:
        parser.error("--budget must be positive")
    output = Path(args.output or os.environ.get("OUT") or "device_suite")
    return run_suite(output, args.smoke, budget, names)


if __name__ == "__main__":
    sys.exit(main())
