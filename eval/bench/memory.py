"""``samhq-bench --memory``: XLA's memory analysis of our compiled programs, compile only.

    samhq-bench --memory --model vit_b,vit_l,vit_h --batch 1,8 --skip decoder,train   # encoders
    samhq-bench --memory --model vit_h --train-batch 1,4,32 --trainable hq,decoder,all \\
        --skip encoder,decoder,bf16                                                    # train steps
    samhq-bench --memory --quick --output mem/                                         # tiny_b smoke

Every program is lowered on abstract arguments (``jax.ShapeDtypeStruct``s; the parameters from
``jax.eval_shape`` of the model's init, :func:`samhq_jax.sam_hq.param_shapes`), compiled for the
default device and never run: no weights exist, so vit_h fits any machine that can compile it.
Programs, each in fp32 and bf16 compute (``--skip fp32`` / ``bf16`` leaves one out):

* ``encoder``: ``embed_image`` as the predictor compiles it (HQ features included), each
  ``--batch`` size;
* ``decoder``: ``decode`` as ``predict`` / ``predict_batch`` call it, ``--prompts`` boxes on one
  image (post-processing to the image size, outside the program, not included);
* ``train``: the jitted train step of ``samhq-train`` (Adam update, state donated, the batch on the
  data mesh of every device), each ``--train-batch`` size (the global batch), each ``--trainable``
  rule, with and without ``remat``; the dtype is the image encoder's.

Figures per program (:class:`~eval.bench.env.XlaAnalysis`, bytes; None where the backend does not
report one): arguments (parameters included), outputs, aliased (outputs in donated inputs' buffers),
temp (scratch), generated code, XLA's peak of the live buffers where reported, and their total
(arguments + outputs + temp - aliased); the compile time. Written to ``--output``: ``memory.json``
(rewritten after each program, so a run cut short keeps what it compiled) and ``memory.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from eval.bench.env import XlaAnalysis, analyse_compiled, environment, schedulable_cpus
from eval.bench.report import mib
from samhq_jax.cmdkit.guard import doing
from samhq_jax.config import ModelConfig
from samhq_jax.precision import TRAINING
from samhq_jax.predictor import compiled_model
from samhq_jax.sam_hq import param_shapes
from train.step import abstract_batch, init_state, jit_train_step, make_mesh, make_optimizer, make_train_step
from train.trainable import partition, touches_encoder

PROG = "samhq-bench --memory"
STAGES = ("encoder", "decoder", "train")
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
SKIPPABLE = (*STAGES, *DTYPES)
COLUMNS = (
    "program",
    "model",
    "batch / prompts",
    "dtype",
    "trainable",
    "remat",
    "arguments MiB",
    "outputs MiB",
    "aliased MiB",
    "temp MiB",
    "code MiB",
    "XLA peak MiB",
    "total MiB",
    "compile s",
)
SDS = jax.ShapeDtypeStruct


@dataclasses.dataclass
class MemoryRow:
    """One compiled program: what it is (``size``: images, or prompts for the decoder; ``dtype``:
    the compute dtype, the image encoder's for a train step) and XLA's figures."""

    program: str  # "encoder", "decoder", "train"
    model: str
    size: int
    dtype: str  # "fp32", "bf16"
    compile_s: float
    xla: XlaAnalysis
    trainable: str | None = None  # train rows: the --trainable rule
    remat: bool | None = None  # train rows: image-encoder blocks rematerialised

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "xla": self.xla.to_json()}


# ---- the programs, on abstract arguments -----------------------------------------------------------
def abstract_variables(config: ModelConfig) -> dict[str, Any]:
    """``{"params": ...}`` of float32 ``ShapeDtypeStruct``s, as a checkpoint loads them."""
    return {"params": param_shapes(config)}


def encoder_program(config: ModelConfig, dtype: jnp.dtype, batch: int, precision: str) -> jax.stages.Lowered:
    """The predictor's ``embed_image`` on ``(batch, S, S, 3)`` float32 images, compute ``dtype``."""
    _, embed, _ = compiled_model(config, dtype, precision)
    s = config.img_size
    return embed.lower(abstract_variables(config), SDS((batch, s, s, config.image_encoder.in_chans), jnp.float32))


def lower_decode(decode: Callable, variables: Any, embeddings: Any, boxes: Any) -> jax.stages.Lowered:
    """``decode`` (:func:`~samhq_jax.predictor.compiled_model`'s) lowered for ``boxes (1, P, 4)``
    float32 in the model's input frame on one image's ``embeddings``, one mask per box, as
    ``predict`` / ``predict_batch`` call it."""
    return decode.lower(
        variables, embeddings, None, None, boxes, None, multimask_output=False, hq_token_only=False, sam_only=False
    )


def decoder_program(config: ModelConfig, dtype: jnp.dtype, prompts: int, precision: str) -> jax.stages.Lowered:
    """The predictor's ``decode`` for ``prompts`` boxes on one encoded image, compute ``dtype``."""
    _, embed, decode = compiled_model(config, dtype, precision)
    variables = abstract_variables(config)
    s = config.img_size
    embeddings = jax.eval_shape(embed, variables, SDS((1, s, s, config.image_encoder.in_chans), jnp.float32))
    return lower_decode(decode, variables, embeddings, SDS((1, prompts, 4), jnp.float32))


def train_program(
    config: ModelConfig, batch: int, trainable: str, remat: bool, encoder_dtype: jnp.dtype
) -> jax.stages.Lowered:
    """``samhq-train``'s jitted step (:func:`train.step.make_train_step`, training precision, Adam,
    state donated; with ``remat`` as ``--remat`` compiles it) on a global ``batch`` of
    :func:`train.step.abstract_batch`, sharded on the data mesh of every device."""
    train_part, frozen = partition(param_shapes(config), trainable)
    tx = make_optimizer(1e-3, drop_step=1)
    state = jax.eval_shape(lambda t: init_state(t, tx), train_part)
    step = make_train_step(
        config,
        tx,
        seed=0,
        encoder_dtype=encoder_dtype,
        train_encoder=touches_encoder(train_part),
        precision=TRAINING.precision,
        remat=remat,
    )
    return jit_train_step(step, make_mesh(), remat).lower(state, frozen, abstract_batch(config, batch))


def compile_row(lower: Callable[[], jax.stages.Lowered], **what: Any) -> MemoryRow:
    """Lower and compile a program (timed together) and read XLA's figures; ``what``: the row's fields."""
    start = time.perf_counter()
    compiled = lower().compile()
    seconds = time.perf_counter() - start
    return MemoryRow(compile_s=seconds, xla=analyse_compiled(compiled), **what)


# ---- the run ----------------------------------------------------------------------------------------
def programs(
    models: list[str],
    batches: list[int],
    prompts: list[int],
    train_batches: list[int],
    trainables: list[str],
    skip: set[str],
    precision: str,
) -> Iterator[tuple[dict[str, Any], Callable[[], jax.stages.Lowered]]]:
    """``(row fields, lower)`` of every program asked for, model by model, in the order of :data:`STAGES`."""
    dtypes = [(name, dtype) for name, dtype in DTYPES.items() if name not in skip]
    for model in models:
        config = ModelConfig.preset(model)
        for name, dtype in dtypes:
            row = {"model": model, "dtype": name}
            if "encoder" not in skip:
                for b in batches:
                    yield (
                        {"program": "encoder", "size": b, **row},
                        partial(encoder_program, config, dtype, b, precision),
                    )
            if "decoder" not in skip:
                for p in prompts:
                    yield (
                        {"program": "decoder", "size": p, **row},
                        partial(decoder_program, config, dtype, p, precision),
                    )
            if "train" not in skip:
                for b, trainable, remat in itertools.product(train_batches, trainables, (False, True)):
                    what = {"program": "train", "size": b, **row, "trainable": trainable, "remat": remat}
                    yield what, partial(train_program, config, b, trainable, remat, dtype)


def markdown(result: dict[str, Any]) -> str:
    """The header and one table row per program."""
    env, settings = result["environment"], result["settings"]
    lines = [
        "# samhq-bench --memory: XLA's memory analysis, compile only",
        "",
        f"- date: {env['date']}; device: {env['jax_device']}; CPU: {env['cpu_model']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        f"- abstract float32 parameters (no weights); encoder / decoder at precision {settings['precision']}, "
        f"train steps at {TRAINING.precision} with Adam, the state donated",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in result["rows"]:
        x = r["xla"]
        cells = [r["program"], r["model"], str(r["size"]), r["dtype"], r["trainable"] or "", ""]
        cells[5] = "" if r["remat"] is None else ("on" if r["remat"] else "off")
        sizes = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "generated_code_bytes", "peak_bytes")
        cells += [mib(x[k]) for k in (*sizes, "total_bytes")] + [f"{r['compile_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "arguments: inputs, parameters included; aliased: outputs written into donated inputs (the train "
        "state); temp: XLA's scratch; total: arguments + outputs + temp - aliased; XLA peak: the live buffers' "
        "peak where the backend reports it (XLA:CPU's leaves its temp buffer out: arguments + outputs - aliased). "
        "Train batch: the global batch on this device count.",
    ]
    return "\n".join(lines) + "\n"


def run_memory(settings: dict[str, Any], output: Path | None) -> int:
    """Compile every program of ``settings`` (the ``--memory`` flags: ``models``, ``batch``,
    ``prompts``, ``train_batch``, ``trainable`` lists, ``skip``, ``precision``), print the Markdown,
    write ``output/memory.{json,md}``; exit status 0."""
    env = environment(schedulable_cpus(), {})
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    rows: list[MemoryRow] = []
    keys = ("models", "batch", "prompts", "train_batch", "trainable", "skip", "precision")
    for what, lower in programs(*(settings[k] for k in keys)):
        label = " ".join(f"{k}={v}" for k, v in what.items())
        with doing(f"compiling {label}"):
            rows.append(compile_row(lower, **what))
        x = rows[-1].xla
        print(
            f"{PROG}: {label}: temp {mib(x.temp_bytes)} MiB, total {mib(x.total_bytes)} MiB "
            f"({rows[-1].compile_s:.1f} s)",
            file=sys.stderr,
        )
        jax.clear_caches()  # one vit_h program's executables at a time
        if output is not None:
            partial = {"environment": env, "settings": settings, "rows": [r.to_json() for r in rows], "partial": True}
            (output / "memory.json").write_text(json.dumps(partial, indent=2, default=str) + "\n")
    result = {"environment": env, "settings": settings, "rows": [r.to_json() for r in rows]}
    text = markdown(result)
    print(text)
    if output is not None:
        (output / "memory.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (output / "memory.md").write_text(text)
    return 0
