"""The training run: weights, data, mesh, the step loop, logging, validation, checkpoints, export.

    result = train(TrainConfig(output=Path("runs/b"), checkpoint="sam_vit_b_01ec64.pth", data=("my_set",)))

Resumable: every ``save_every`` steps orbax writes (atomically, keeping the last ``keep``) the step,
the trainable parameters, the optimiser state and the data iterator's state; ``resume=True``
continues from the latest, and because the input pipeline is a pure function of ``(seed, step)``
(:mod:`train.data`) the run ends with the parameters of an uninterrupted one. The first start
writes ``OUTPUT/run.json`` (:mod:`train.run_record`: model, starting weights' fingerprint, data,
every recipe setting); a resume that differs in any of them is refused, naming the field, before
anything is loaded or written, and ``metrics.jsonl`` (and TensorBoard) is cut back to the restored
step. An output that already holds something is refused unless ``resume`` or ``overwrite`` (which
deletes the old run's files first). A non-finite loss stops the run with its step number before
anything is saved after it. ``final/`` appears whole or not at all (a temporary folder, renamed).

Learning rate: the official ``StepLR(optimizer, lr_drop_epoch)``, x0.1 every ``lr_drop_epoch``
epochs (with ``steps`` instead of ``epochs``: every ``round(steps * lr_drop_epoch / epochs)`` steps).

Numerics (:mod:`samhq_jax.precision`): ``precision`` (default ``"default"``, the numerics the step
always had; ``"highest"``: full float32 on GPUs / TPUs too) applies to every dot of the step and of
its validation; ``dtype`` (default ``float32``) is the frozen image encoder's compute dtype, the
validation computes in float32. ``remat`` (default off) rematerialises each image-encoder block in
the backward pass: less memory when encoder parameters train, one more encoder forward per step;
without them the encoder runs outside the gradient and it changes nothing. ``OUTPUT/run.json``
records every setting, these included.

Only process 0 writes logs, ``run.json`` and the final model; every process takes part in the
checkpoint saves and the validation (each scores its share of every set).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import shutil
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
from samhq_jax.atomic import atomic_dir, atomic_file
from samhq_jax.checkpoint import read_weights, save_checkpoint
from samhq_jax.config import PRESETS, ModelConfig
from samhq_jax.datasets import HQSEG_TRAIN, Pair, folder_pairs, hqseg_pairs
from samhq_jax.distributed import data_mesh, share
from samhq_jax.errors import InputError, RunError
from samhq_jax.hq_params import is_hq_path, merge_params
from samhq_jax.precision import TRAINING, Policy
from samhq_jax.sam_hq import init_params
from train import augment, loss, prompts, run_record
from train import data as train_data
from train.step import (
    ADAM_B1,
    ADAM_B2,
    ADAM_EPS,
    LR_GAMMA,
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
MAX_SEED = 2**32 - 1  # seeds are NumPy / JAX PRNG seeds
METRICS_FILE, TB_DIR, FINAL_DIR, CHECKPOINTS_DIR = "metrics.jsonl", "tb", "final", "checkpoints"
# What a run writes in its output folder; --overwrite deletes these (and final/'s hidden temporaries).
RUN_ENTRIES = (run_record.RUN_JSON, METRICS_FILE, TB_DIR, FINAL_DIR, CHECKPOINTS_DIR)
TENSORBOARD_PACKAGE = "tensorboardX"


class NonFiniteLossError(RunError):
    """The loss became NaN or inf; the run stopped and wrote nothing after that step."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; defaults are the official recipe (``../shared/reference`` §3).

    Checked when made (:class:`~samhq_jax.errors.InputError` naming the flag): ranges, and
    combinations that cannot work."""

    output: Path  # run folder: checkpoints/, metrics.jsonl, tb/, final/, run.json
    checkpoint: str | None = None  # anything read_weights takes (SAM-HQ or an original SAM checkpoint)
    preset: str | None = None  # or: random weights of this preset (tests, demo)
    data: tuple[str, ...] = ()  # generic folders DIR/images + DIR/masks
    data_root: str | None = None  # HQSeg-44K root (the official ./data folder) ...
    datasets: tuple[str, ...] = HQSEG_TRAIN  # ... and its training sets
    val_data: tuple[str, ...] = ()  # generic validation folders
    val_datasets: tuple[str, ...] = ()  # HQSeg validation sets under data_root (official: HQSEG_VAL)
    epochs: int = 12
    lr_drop_epoch: int = 10  # lr x 0.1 every lr_drop_epoch epochs (official StepLR(step_size=10, gamma=0.1))
    steps: int | None = None  # instead of epochs: total optimiser steps (an lr "epoch" is steps / epochs steps)
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
    resume: bool = False  # continue the run in output (nothing there: a new run)
    overwrite: bool = False  # replace the run in output (its files deleted first)
    log_every: int = 10
    val_every: int | None = None  # steps between validations (default: one epoch); 0 = never
    val_limit: int | None = None  # validate on the first N pairs of each validation set
    val_batch_size: int = 4  # validation images per device and call
    workers: int = 0  # grain worker processes for loading (0: threads in this process)
    tensorboard: bool | None = None  # TensorBoard events: None when tensorboardX is installed, True required

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.preset is None):
            raise InputError("give exactly one of --checkpoint or --preset")
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if not self.data and self.data_root is None:
            raise InputError("give training data: --data DIR (repeatable) or --data-root ROOT")
        if self.data_root is not None and not self.datasets and not self.val_datasets:
            raise InputError(f"--data-root {self.data_root}: no --datasets or --val-datasets to read from it")
        if self.val_datasets and self.data_root is None:
            raise InputError(f"--val-datasets {','.join(self.val_datasets)} needs --data-root (the HQSeg-44K root)")
        if self.output_mask not in OUTPUT_MASKS:
            raise InputError(f"--output-mask must be one of {', '.join(OUTPUT_MASKS)}, got {self.output_mask!r}")
        try:
            policy = Policy(self.precision, self.dtype)
        except ValueError as err:
            raise InputError(f"--{err}") from None  # "--precision must be one of highest, default; got .."
        object.__setattr__(self, "dtype", policy.dtype)  # by name (jnp.bfloat16 -> "bfloat16")
        self._check_ranges()
        if self.resume and self.overwrite:
            raise InputError("--resume continues the run in --output, --overwrite replaces it: give one of them")
        validating = bool(self.val_data or self.val_datasets)
        for name in ("val_limit", "val_every"):
            if getattr(self, name) and not validating:
                raise InputError(
                    f"--{name.replace('_', '-')} needs validation data: --val-data DIR, or --val-datasets and "
                    "--data-root"
                )
        trainable_regex(self.trainable)  # a bad regex is refused before anything is loaded
        if self.output_mask == "sam" and self.trainable == "hq":
            raise InputError(
                "--output-mask sam trains SAM's output, which the HQ parameters (--trainable hq) do not reach: "
                "give --trainable decoder or all"
            )

    def _check_ranges(self) -> None:
        """Every number in its range: an ``InputError`` naming the flag."""
        at_least = {"epochs": 1, "lr_drop_epoch": 1, "batch_size": 1, "log_every": 1, "keep": 1, "workers": 0}
        at_least.update(val_batch_size=1, steps=1, save_every=1, val_limit=1, val_every=0)  # None: not given
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise InputError(f"--seed must be an integer in 0 .. {MAX_SEED}, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a positive number, got {self.lr}")

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


# TrainConfig fields that decide the trained parameters: a resume must repeat them (run.json "recipe").
RECIPE_SETTINGS = (
    "preset",
    "datasets",
    "epochs",
    "lr_drop_epoch",
    "steps",
    "batch_size",
    "lr",
    "seed",
    "trainable",
    "output_mask",
    "precision",
    "dtype",
    "remat",
)
# Fields that cannot change them: where the data and the start weights lie (compared by content:
# run.json's "data" and "start_weights"), logging, saving, validation, loading; free on a resume.
FREE_SETTINGS = (
    "output",
    "checkpoint",
    "data",
    "data_root",
    "val_data",
    "val_datasets",
    "save_every",
    "keep",
    "resume",
    "overwrite",
    "log_every",
    "val_every",
    "val_limit",
    "val_batch_size",
    "workers",
    "tensorboard",
)


def recipe_constants() -> dict[str, Any]:
    """The recipe's fixed parts (augmentation, prompts, loss, optimiser), recorded so that a resume
    under code that changed them is refused."""
    return {
        "augmentation": {
            "flip_prob": augment.FLIP_PROB,
            "scale": [augment.AUG_SCALE_MIN, augment.AUG_SCALE_MAX],
            "pad": [augment.IMAGE_PAD, augment.LABEL_PAD],
        },
        "prompts": {
            "kinds": {"box": prompts.BOX, "points": prompts.POINTS, "noise_mask": prompts.NOISE_MASK},
            "points": prompts.NUM_POINTS,
            "incoherent": [prompts.INCOHERENT_FACTOR, prompts.INCOHERENT_THRESHOLD],
        },
        "loss": {
            "points": loss.NUM_POINTS,
            "oversample_ratio": loss.OVERSAMPLE_RATIO,
            "importance_sample_ratio": loss.IMPORTANCE_SAMPLE_RATIO,
        },
        "optimizer": {"adam": [ADAM_B1, ADAM_B2, ADAM_EPS], "weight_decay": 0.0, "lr_gamma": LR_GAMMA},
    }


def _settings(cfg: TrainConfig, names: tuple[str, ...]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k in names for v in (getattr(cfg, k),)}


@dataclasses.dataclass
class TrainResult:
    """What a finished run leaves: final parameters (numpy), last metrics, where the model is."""

    config: ModelConfig
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


def load_start(cfg: TrainConfig) -> tuple[ModelConfig, dict]:
    """The starting weights (numpy): a checkpoint (HQ part freshly initialised for plain SAM), or a preset."""
    if cfg.preset is not None:
        config = ModelConfig.preset(cfg.preset)
        params = jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(cfg.seed)))
        logger.info("starting from random %s weights (seed %d)", cfg.preset, cfg.seed)
        return config, params
    weights = read_weights(cfg.checkpoint, hq_seed=cfg.seed)
    if not weights.hq_trained:
        logger.info("%s is an original SAM checkpoint: HQ parameters initialised (seed %d)", cfg.checkpoint, cfg.seed)
    return weights.config, weights.params


def schedule_steps(cfg: TrainConfig, num_pairs: int) -> tuple[int, int, int]:
    """``(total steps, steps between lr drops, steps per epoch)``: the lr drops x0.1 every
    ``lr_drop_epoch`` epochs (with ``steps``: every ``round(steps * lr_drop_epoch / epochs)`` steps)."""
    per_epoch = train_data.steps_per_epoch(num_pairs, cfg.batch_size)
    if cfg.steps is None:
        return cfg.epochs * per_epoch, cfg.lr_drop_epoch * per_epoch, per_epoch
    return cfg.steps, max(1, round(cfg.steps * cfg.lr_drop_epoch / cfg.epochs)), per_epoch


def tensorboard_wanted(cfg: TrainConfig) -> bool:
    """Whether to write TensorBoard events: ``cfg.tensorboard`` True needs tensorboardX (an
    ``InputError`` naming it and the pip command when missing), None uses it when installed."""
    if cfg.tensorboard is False:
        return False
    installed = importlib.util.find_spec(TENSORBOARD_PACKAGE) is not None
    if cfg.tensorboard and not installed:
        raise InputError(
            f"--tensorboard needs the {TENSORBOARD_PACKAGE} package, which is not installed: "
            f"pip install {TENSORBOARD_PACKAGE} (or leave out --tensorboard: metrics.jsonl only)"
        )
    if not installed:
        logger.info(
            "%s is not installed: metrics.jsonl only (pip install %s)", TENSORBOARD_PACKAGE, TENSORBOARD_PACKAGE
        )
    return installed


class _Log:
    """metrics.jsonl (+ TensorBoard events with ``tensorboard``), process 0 only; a resume from step
    ``start`` first drops what was logged after it."""

    def __init__(self, output: Path, enabled: bool, tensorboard: bool, start: int | None) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if enabled:
            if start is not None:
                cut_metrics(output / METRICS_FILE, start)
            self.file = (output / METRICS_FILE).open("a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                # purge_step: TensorBoard hides the events of steps >= start + 1 written before
                self.tb = SummaryWriter(str(output / TB_DIR), purge_step=None if start is None else start + 1)

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


def cut_metrics(path: Path, step: int) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (a resume continues after it), written
    whole (temporary file, rename); a line cut off by a kill is dropped too. Returns how many went."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_file(path, overwrite=True) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))
        logger.info("%s: %d record(s) after step %d dropped", path.name, dropped, step)
    return dropped


def validate(
    config: ModelConfig,
    params: Any,
    sets: dict[str, list[Pair]],
    batch_size: int,
    policy: Policy = TRAINING,
) -> dict[str, float]:
    """mIoU / mBIoU (percent) of the HQ and SAM outputs per validation set, with the benchmark's
    protocol and metrics (:func:`eval.protocol.evaluate_pairs`), under ``policy`` (precision and
    dtype; default :data:`~samhq_jax.precision.TRAINING`; a run passes its ``validation_policy``).

    Every process scores its contiguous share of each set on its own devices (``batch_size``
    images per device and call) and the per-image rows are gathered (a collective: every process
    calls it), so each process returns the numbers of one process scoring everything."""
    from eval.protocol import evaluate_pairs, gather_records, summarize

    if jax.process_count() > 1:  # replicated global arrays -> this process's copy, placed on its own devices
        params = jax.tree.map(np.asarray, params)
    mesh = data_mesh()
    out: dict[str, float] = {}
    for name, pairs in sets.items():
        mine = evaluate_pairs(config, params, share(pairs), batch_size=batch_size, policy=policy, mesh=mesh)
        summary = summarize(gather_records(mine))[name]
        for o in ("hq", "sam"):
            for metric in ("miou", "mbiou"):
                if summary[o][metric] is not None:
                    out[f"val/{name}/{o}_{metric}"] = summary[o][metric]
    return out


def _check_finite(metrics: dict[str, jax.Array], step: int) -> dict[str, float]:
    values = {k: float(v) for k, v in metrics.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(f"loss became non-finite at step {step}: {values}; nothing saved after it")
    return values


def _sync(name: str) -> None:
    """Wait until every process got here (several processes only)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _saved_steps(output: Path) -> list[int]:
    return sorted(int(p.name) for p in (output / CHECKPOINTS_DIR).glob("*") if p.name.isdigit())


def check_output(cfg: TrainConfig) -> dict[str, Any] | None:
    """Before any work: the run already in ``cfg.output`` and what this start may do with it.

    Returns the saved ``run.json`` to continue (``resume``), else None. An output that holds
    anything is refused unless ``resume`` (which then needs its ``run.json`` whenever there is a
    checkpoint) or ``overwrite``; a resume that changes a recipe setting is refused, naming it."""
    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: is a file, not a folder")
    held = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if not cfg.resume:
        if held and not cfg.overwrite:
            raise InputError(
                f"--output {output}: already holds {', '.join(held[:5])}{' ...' if len(held) > 5 else ''}; "
                "give --resume to continue the run there or --overwrite to replace it"
            )
        return None
    saved = run_record.read_record(output)
    if saved is None:
        if _saved_steps(output):
            raise InputError(
                f"--resume: {output} holds checkpoints but no {run_record.RUN_JSON}, so this start cannot be "
                "checked against the run; start a new run with another --output, or --overwrite"
            )
        logger.info("--resume: no run in %s yet; starting one", output)
        return None
    run_record.check_same_run(saved, {"settings": _settings(cfg, RECIPE_SETTINGS)}, keys=("settings",))
    run_record.check_same_run(saved, {"constants": recipe_constants()}, keys=("constants",))
    return saved


def _clear_run(output: Path) -> None:
    """Delete the files of the run in ``output`` (``--overwrite``); other files stay."""
    for name in RUN_ENTRIES:
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for path in output.glob(f".{FINAL_DIR}.*"):  # temporaries of a killed export
        shutil.rmtree(path, ignore_errors=True)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring."""
    output = Path(cfg.output)
    primary = jax.process_index() == 0
    if cfg.batch_size % jax.device_count():
        raise InputError(f"--batch-size {cfg.batch_size} is not a multiple of the {jax.device_count()} devices")
    tensorboard = tensorboard_wanted(cfg)
    saved = check_output(cfg)  # every input is checked before anything is loaded or written
    pairs = _pairs(cfg.data, cfg.data_root, cfg.datasets)
    val_sets = _val_sets(cfg)
    total, drop_step, per_epoch = schedule_steps(cfg, len(pairs))
    recipe: dict[str, Any] = {
        "settings": _settings(cfg, RECIPE_SETTINGS),
        "constants": recipe_constants(),
        "data": run_record.data_identity(pairs),
        "schedule": {"total_steps": total, "steps_per_epoch": per_epoch, "lr_drop_every_steps": drop_step},
    }
    if saved is not None:
        run_record.check_same_run(saved, recipe, keys=("data", "schedule"))
    config, params = load_start(cfg)
    recipe["model"] = config.to_dict()
    recipe["start_weights"] = run_record.weights_fingerprint(params)
    if saved is not None:
        run_record.check_same_run(saved, recipe)
    trainable, frozen = partition(params, cfg.trainable)
    if cfg.output_mask == "sam" and all(is_hq_path(k) for k in flatten_dict(trainable, sep="/")):
        raise InputError(
            f"--output-mask sam: --trainable {cfg.trainable} selects only HQ parameters, which SAM's output "
            "does not use"
        )
    save_every = cfg.save_every or per_epoch
    val_every = per_epoch if cfg.val_every is None else cfg.val_every
    _sync("samhq-train: checked")  # no process writes before every process has checked the output
    start_info = {
        "settings": _settings(cfg, FREE_SETTINGS),
        "source": str(cfg.checkpoint or cfg.preset),
        "validation": {name: len(pairs) for name, pairs in val_sets.items()},
        **run_record.process_info(),
    }
    if primary:
        if cfg.overwrite:
            _clear_run(output)
        output.mkdir(parents=True, exist_ok=True)
        if saved is None:
            record = run_record.new_record(recipe, {"step": 0, **start_info})
            record["numerics"] = {**cfg.policy.as_dict(), "validation": cfg.validation_policy.as_dict()}
            run_record.write_record(output, record)
    if cfg.overwrite:
        _sync("samhq-train: old run deleted")  # before any process writes checkpoints there

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
        (output / CHECKPOINTS_DIR).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True),
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
    if primary and saved is not None:
        saved["starts"].append({"step": start, **start_info})
        run_record.write_record(output, saved)

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

    logger.info("step: %s; validation: %s", cfg.policy.describe(), cfg.validation_policy.describe())
    if cfg.remat:
        logger.info(
            "remat: each image-encoder block recomputed in the backward pass%s",
            ""
            if touches_encoder(trainable)
            else f" (no effect: --trainable {cfg.trainable} leaves the encoder frozen)",
        )
    log = _Log(output, primary, tensorboard, start if cfg.resume else None)
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
    final_dir = output / FINAL_DIR
    if primary:
        export_final(final_dir, config, final, source=str(cfg.checkpoint or cfg.preset))
    return TrainResult(config, final, final_dir, last, int(state.step))


def export_final(final_dir: Path, config: ModelConfig, params: dict, source: str) -> None:
    """``final_dir``: one of our model directories, plus ``hq_only.safetensors`` holding the 25 HQ
    tensors under their official PyTorch names and layouts (``mask_decoder.hf_token.weight``, ...),
    loadable into the official model with ``load_state_dict(..., strict=False)``. Written whole or
    not at all: into a temporary folder next to it, then renamed over the old one (if any)."""
    hq = {k: v for k, v in flatten_dict(params, sep="/").items() if is_hq_path(k)}
    state = params_to_state_dict(unflatten_dict(hq, sep="/"), OFFICIAL)
    with atomic_dir(final_dir, overwrite=True, what="final model") as tmp:
        save_checkpoint(tmp, config, params, source=f"samhq-train from {source}")
        save_file(state, str(tmp / "hq_only.safetensors"), metadata={"format": "official", "part": "hq"})


__all__ = [
    "FREE_SETTINGS",
    "RECIPE_SETTINGS",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "check_output",
    "cut_metrics",
    "export_final",
    "recipe_constants",
    "train",
    "validate",
]
