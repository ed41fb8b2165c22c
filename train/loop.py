"""The training run: weights, data, mesh, the step loop, logging, validation, checkpoints, export.

    result = train(TrainConfig(output=Path("runs/b"), checkpoint="sam_vit_b_01ec64.pth", data=("my_set",)))

Resumable: every ``save_every`` steps orbax writes (atomically, keeping the last ``keep``) the step,
the trainable parameters, the optimiser state and the data iterator's state; ``resume=True``
continues from the latest, and because the input pipeline is a pure function of ``(seed, step)``
(:mod:`train.data`) the run ends with the parameters of an uninterrupted one. A non-finite loss
stops the run with its step number before anything is saved after it.

Numerics (:mod:`samhq_jax.precision`): ``precision`` (default ``"default"``, the numerics the step
always had; ``"highest"``: full float32 on GPUs / TPUs too) applies to every dot of the step and of
its validation; ``dtype`` (default ``float32``) is the frozen image encoder's compute dtype, the
validation computes in float32. ``remat`` (default off) rematerialises each image-encoder block in
the backward pass: less memory when encoder parameters train, one more encoder forward per step;
without them the encoder runs outside the gradient and it changes nothing. ``OUTPUT/run.json``
records every setting, these included.

Only process 0 writes logs, ``run.json`` and the final model; every process takes part in the
checkpoint saves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import save_file
from tqdm import tqdm

from convert.core import OFFICIAL, params_to_state_dict
from samhq_jax.checkpoint import read_weights, save_checkpoint
from samhq_jax.config import SamHQConfig
from samhq_jax.datasets import HQSEG_TRAIN, Pair, folder_pairs, hqseg_pairs
from samhq_jax.hq_params import is_hq_path, merge_params
from samhq_jax.precision import TRAINING, Policy
from samhq_jax.sam_hq import init_params
from train import data as train_data
from train.step import (
    global_batch,
    init_state,
    jit_train_step,
    lr_schedule,
    make_mesh,
    make_optimizer,
    make_train_step,
    replicate,
)
from train.trainable import count, partition, touches_encoder, trainable_regex

logger = logging.getLogger("samhq.train")

OUTPUT_MASKS = ("hq", "sam")  # the trained output: the HQ mask, or SAM's (a stand-in SAM)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped and wrote nothing after that step."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; defaults are the official recipe (``../shared/reference`` §3)."""

    output: Path  # run folder: checkpoints/, metrics.jsonl, tb/, final/
    checkpoint: str | None = None  # anything read_weights takes (SAM-HQ or an original SAM checkpoint)
    preset: str | None = None  # or: random weights of this preset (tests, demo)
    data: tuple[str, ...] = ()  # generic folders DIR/images + DIR/masks
    data_root: str | None = None  # HQSeg-44K root (the official ./data folder) ...
    datasets: tuple[str, ...] = HQSEG_TRAIN  # ... and its training sets
    val_data: tuple[str, ...] = ()  # generic validation folders
    val_datasets: tuple[str, ...] = ()  # HQSeg validation sets under data_root (official: HQSEG_VAL)
    epochs: int = 12
    lr_drop_epoch: int = 10  # lr x 0.1 from this epoch on (StepLR step 10, gamma 0.1)
    steps: int | None = None  # instead of epochs: total optimiser steps (lr drop at the same fraction)
    batch_size: int = 32  # global batch (official: 4 per GPU x 8 GPUs)
    lr: float = 1e-3
    seed: int = 42
    trainable: str = "hq"  # hq | decoder | all | a regex over parameter paths
    output_mask: str = "hq"  # trained output: "hq" (official) or "sam" (pre-training a stand-in SAM)
    precision: str = TRAINING.precision  # matmul precision of the step and its validation: default | highest
    dtype: str = TRAINING.dtype  # compute dtype of the frozen image encoder (--dtype, alias --encoder-dtype)
    remat: bool = False  # rematerialise each image-encoder block in the backward pass (memory for time)
    save_every: int | None = None  # steps between checkpoints (default: one epoch)
    keep: int = 3  # checkpoints kept
    resume: bool = False
    log_every: int = 10
    val_every: int | None = None  # steps between validations (default: one epoch); 0 = never
    val_limit: int | None = None  # validate on the first N pairs of each validation set
    val_batch_size: int = 4
    workers: int = 0  # grain worker processes for loading (0: threads in this process)

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.preset is None):
            raise ValueError("give exactly one of --checkpoint or --preset")
        if not self.data and self.data_root is None:
            raise ValueError("give training data: --data DIR (repeatable) or --data-root ROOT")
        if self.output_mask not in OUTPUT_MASKS:
            raise ValueError(f"output_mask must be one of {OUTPUT_MASKS}, got {self.output_mask!r}")
        try:
            policy = Policy(self.precision, self.dtype)
        except ValueError as err:
            raise ValueError(f"--{err}") from None  # "--precision must be one of highest, default; got .."
        object.__setattr__(self, "dtype", policy.dtype)  # by name (jnp.bfloat16 -> "bfloat16")
        for name in ("epochs", "batch_size", "log_every", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")

    @property
    def policy(self) -> Policy:
        """The step's :class:`~samhq_jax.precision.Policy`: ``precision`` for every dot, ``dtype`` the
        frozen encoder's compute dtype."""
        return Policy(self.precision, self.dtype)

    @property
    def validation_policy(self) -> Policy:
        """Validation: the run's precision, the whole model in float32 (the numbers ``samhq-eval
        --precision P`` gives for the checkpoint, whatever the encoder's training dtype)."""
        return Policy(self.precision, "float32")


@dataclasses.dataclass
class TrainResult:
    """What a finished run leaves: final parameters (numpy), last metrics, where the model is."""

    config: SamHQConfig
    params: dict
    final_dir: Path
    last_metrics: dict[str, float]
    steps: int


def _pairs(folders: tuple[str, ...], root: str | None, names: tuple[str, ...]) -> list[Pair]:
    pairs = [p for folder in folders for p in folder_pairs(Path(folder))]
    if root is not None and names:
        pairs += hqseg_pairs(Path(root), names)
    return pairs


def _val_sets(cfg: TrainConfig) -> dict[str, list[Pair]]:
    sets: dict[str, list[Pair]] = {}
    for p in _pairs(cfg.val_data, cfg.data_root, cfg.val_datasets):
        sets.setdefault(p.dataset, []).append(p)
    return {k: v[: cfg.val_limit] for k, v in sets.items()}


def load_start(cfg: TrainConfig) -> tuple[SamHQConfig, dict]:
    """The starting weights (numpy): a checkpoint (HQ part freshly initialised for plain SAM), or a preset."""
    if cfg.preset is not None:
        config = SamHQConfig.preset(cfg.preset)
        params = jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(cfg.seed)))
        logger.info("starting from random %s weights (seed %d)", cfg.preset, cfg.seed)
        return config, params
    weights = read_weights(cfg.checkpoint, hq_seed=cfg.seed)
    if not weights.hq_trained:
        logger.info("%s is an original SAM checkpoint: HQ parameters initialised (seed %d)", cfg.checkpoint, cfg.seed)
    return weights.config, weights.params


def schedule_steps(cfg: TrainConfig, num_pairs: int) -> tuple[int, int, int]:
    """``(total steps, lr drop step, steps per epoch)``."""
    per_epoch = train_data.steps_per_epoch(num_pairs, cfg.batch_size)
    if cfg.steps is None:
        return cfg.epochs * per_epoch, cfg.lr_drop_epoch * per_epoch, per_epoch
    return cfg.steps, max(1, round(cfg.steps * cfg.lr_drop_epoch / cfg.epochs)), per_epoch


class _Log:
    """metrics.jsonl (+ TensorBoard when tensorboardX is installed), process 0 only."""

    def __init__(self, output: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if enabled:
            self.file = (output / "metrics.jsonl").open("a")
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(output / "tb"))
            except ImportError:
                pass

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def validate(
    config: SamHQConfig,
    params: Any,
    sets: dict[str, list[Pair]],
    batch_size: int,
    policy: Policy = TRAINING,
) -> dict[str, float]:
    """mIoU / mBIoU (percent) of the HQ and SAM outputs per validation set, with the benchmark's
    protocol and metrics (:func:`eval.protocol.evaluate_pairs`), under ``policy`` (precision and
    dtype; default :data:`~samhq_jax.precision.TRAINING`; a run passes its ``validation_policy``)."""
    from eval.protocol import evaluate_pairs, summarize

    out: dict[str, float] = {}
    for name, pairs in sets.items():
        summary = summarize(evaluate_pairs(config, params, pairs, batch_size=batch_size, policy=policy))[name]
        for o in ("hq", "sam"):
            for metric in ("miou", "mbiou"):
                if summary[o][metric] is not None:
                    out[f"val/{name}/{o}_{metric}"] = summary[o][metric]
    return out


def write_run_record(output: Path, cfg: TrainConfig, start_step: int) -> None:
    """``OUTPUT/run.json``: the run's settings (every :class:`TrainConfig` field, ``remat`` included),
    its numerics (``precision``, ``dtype``, and the validation's) and the step it (re)started at;
    rewritten on every start, so after ``--resume`` it holds the settings of the latest start."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    record = {
        "settings": settings,
        "numerics": {**cfg.policy.as_dict(), "validation": cfg.validation_policy.as_dict()},
        "start_step": start_step,
        "jax": jax.__version__,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
    }
    (output / "run.json").write_text(json.dumps(record, indent=2) + "\n")


def _check_finite(metrics: dict[str, jax.Array], step: int) -> dict[str, float]:
    values = {k: float(v) for k, v in metrics.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(f"loss became non-finite at step {step}: {values}; nothing saved after it")
    return values


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring."""
    output = Path(cfg.output)
    primary = jax.process_index() == 0
    trainable_regex(cfg.trainable)  # every input is checked before anything is loaded or written
    pairs = _pairs(cfg.data, cfg.data_root, cfg.datasets)
    val_sets = _val_sets(cfg)
    total, drop_step, per_epoch = schedule_steps(cfg, len(pairs))
    save_every = cfg.save_every or per_epoch
    val_every = per_epoch if cfg.val_every is None else cfg.val_every
    if cfg.batch_size % jax.device_count():
        raise ValueError(f"--batch-size {cfg.batch_size} is not a multiple of the {jax.device_count()} devices")
    saved = sorted(int(p.name) for p in (output / "checkpoints").glob("*") if p.name.isdigit())
    if saved and not cfg.resume:
        raise ValueError(
            f"{output} already holds checkpoints (latest step {saved[-1]}); pass --resume or a new --output"
        )
    config, params = load_start(cfg)
    output.mkdir(parents=True, exist_ok=True)

    trainable, frozen = partition(params, cfg.trainable)
    logger.info("trainable %s parameters (%s), frozen %s", f"{count(trainable):,}", cfg.trainable, f"{count(frozen):,}")
    tx = make_optimizer(cfg.lr, drop_step)
    mesh = make_mesh()
    state = replicate(init_state(trainable, tx), mesh)
    frozen_dev = replicate(frozen, mesh)
    step_fn = jit_train_step(
        make_train_step(
            config,
            tx,
            seed=cfg.seed,
            output=cfg.output_mask,
            encoder_dtype=cfg.policy.compute_dtype,
            train_encoder=touches_encoder(trainable),
            precision=cfg.precision,
            remat=cfg.remat,
        ),
        mesh,
        remat=cfg.remat,
    )

    manager = ocp.CheckpointManager(
        (output / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True)
    )
    start, data_state = 0, None
    latest = manager.latest_step()
    if cfg.resume and latest is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(
            latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
        )
        state, data_state, start = restored.state, restored.data, latest
        logger.info("resumed from step %d", latest)

    loader = train_data.make_train_loader(
        pairs,
        img_size=config.img_size,
        global_batch=cfg.batch_size,
        seed=cfg.seed,
        start_step=start,
        num_steps=total,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        workers=cfg.workers,
    )
    if data_state is not None:
        loader.set_state(data_state)

    if primary:
        write_run_record(output, cfg, start)
    logger.info("step: %s; validation: %s", cfg.policy.describe(), cfg.validation_policy.describe())
    if cfg.remat:
        logger.info(
            "remat: each image-encoder block recomputed in the backward pass%s",
            ""
            if touches_encoder(trainable)
            else f" (no effect: --trainable {cfg.trainable} leaves the encoder frozen)",
        )
    log = _Log(output, primary)
    schedule = lr_schedule(cfg.lr, drop_step)
    last: dict[str, float] = {}
    pending: tuple[int, dict[str, jax.Array]] | None = None
    window_start, window_steps = time.perf_counter(), 0
    bar = tqdm(total=total, initial=start, desc="samhq-train", unit="step", disable=not primary)
    try:
        for done, local in enumerate(loader, start=start + 1):  # ``done``: steps completed after this one
            state, metrics = step_fn(state, frozen_dev, global_batch(local, mesh))
            window_steps += 1
            if pending is not None:  # check the previous step while this one runs
                last = _check_finite(pending[1], pending[0])
            pending = (done, metrics)
            step = done - 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == total:
                last = _check_finite(metrics, done)
                elapsed = time.perf_counter() - window_start
                record = {"step": done, **last, "lr": float(schedule(step)), "epoch": step // per_epoch}
                record["examples_per_s"] = window_steps * cfg.batch_size / elapsed
                record["invalid_examples"] = loader.invalid_count
                log.write(record)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                window_start, window_steps = time.perf_counter(), 0
            if done % save_every == 0 or done == total:
                last = _check_finite(metrics, done)
                manager.save(
                    done,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(loader.get_state())
                    ),
                )
            if val_sets and val_every and (done % val_every == 0 or done == total):
                full = merge_params(frozen_dev, state.params)
                log.write({"step": done, **validate(config, full, val_sets, cfg.val_batch_size, cfg.validation_policy)})
        manager.wait_until_finished()
    finally:
        bar.close()
        log.close()
        loader.close()
        manager.close()
    if pending is not None:
        last = _check_finite(pending[1], pending[0])
    final = jax.tree.map(np.asarray, merge_params(frozen_dev, state.params))
    final_dir = output / "final"
    if primary:
        export_final(final_dir, config, final, source=str(cfg.checkpoint or cfg.preset))
    return TrainResult(config, final, final_dir, last, int(state.step))


def export_final(final_dir: Path, config: SamHQConfig, params: dict, source: str) -> None:
    """``final_dir``: one of our model directories, plus ``hq_only.safetensors`` holding the 25 HQ
    tensors under their official PyTorch names and layouts (``mask_decoder.hf_token.weight``, ...),
    loadable into the official model with ``load_state_dict(..., strict=False)``."""
    save_checkpoint(final_dir, config, params, source=f"samhq-train from {source}")
    hq = {k: v for k, v in flatten_dict(params, sep="/").items() if is_hq_path(k)}
    state = params_to_state_dict(unflatten_dict(hq, sep="/"), OFFICIAL)
    save_file(state, str(final_dir / "hq_only.safetensors"), metadata={"format": "official", "part": "hq"})


__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "export_final", "train", "validate", "write_run_record"]
