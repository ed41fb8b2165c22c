"""The training step: frozen encoder, trainable subtree, official loss; jitted and sharded.

One code path from one CPU to a multi-host mesh: the batch is sharded on the ``"data"`` axis of a
1-D mesh over every device, parameters and optimiser state are replicated, and XLA inserts the
gradient all-reduce. The image encoder runs outside ``jax.grad`` unless a trainable parameter lives
in it, so frozen SAM costs no gradient memory. Parameters outside the trainable subtree are a
separate argument that is never updated (bit-identical after training by construction), and the
optimiser state exists only for the trainable leaves.

Numerics follow the one policy of :mod:`samhq_jax.precision`: ``precision`` (default
``"default"``, :data:`~samhq_jax.precision.TRAINING`) is set while the step is traced, so every
dot and convolution of the compiled step, forward and backward, carries it; ``encoder_dtype`` is
the frozen image encoder's compute dtype (the decoder and the loss compute in float32).

Memory: ``remat`` puts each image-encoder block under ``jax.checkpoint`` (``nn.remat``), so a
step that trains encoder parameters keeps one activation per block for the backward pass and
recomputes the rest; the same loss and gradients up to float rounding, the same parameter tree.
When the encoder runs outside the gradient (``--trainable hq`` / ``decoder``) it changes nothing.
On CPU the step then compiles with :func:`remat_compiler_options` (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from samhq_jax.config import ModelConfig
from samhq_jax.distributed import DATA_AXIS, data_mesh
from samhq_jax.distributed import replicate as replicate  # the step's placement, for train.loop / train.bench
from samhq_jax.hq_params import merge_params
from samhq_jax.precision import DTYPES, TRAINING, at_precision, check_dtype
from samhq_jax.sam_hq import ImageEmbeddings, SamHQ
from samhq_jax.transforms import PIXEL_MEAN, PIXEL_STD
from train.loss import loss_masks
from train.prompts import BOX, NOISE_MASK, NUM_POINTS, POINTS

# XLA:CPU's pass that removes jax.checkpoint's optimization barriers (before its CSE; see remat_compiler_options).
CPU_BARRIER_EXPANDER = "cse_barrier_expander"
ENCODER_DTYPES = DTYPES  # --dtype (--encoder-dtype) choices: the one policy's (samhq_jax.precision)
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """What changes during training: the step, the trainable parameters, their optimiser state."""

    step: jax.Array  # () int32
    params: Any  # trainable subtree only
    opt_state: Any


ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # the official optim.Adam (weight_decay 0)
LR_GAMMA = 0.1  # the official StepLR's gamma


def make_optimizer(lr: float, drop_step: int, gamma: float = LR_GAMMA) -> optax.GradientTransformation:
    """Adam (betas 0.9 / 0.999, eps 1e-8, no weight decay) under :func:`lr_schedule`: the official
    ``optim.Adam`` with ``StepLR(step_size=lr_drop_epoch, gamma=0.1)`` (``drop_step``: the steps of
    ``lr_drop_epoch`` epochs)."""
    return optax.adam(lr_schedule(lr, drop_step, gamma), b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)


def lr_schedule(lr: float, drop_step: int, gamma: float = LR_GAMMA) -> optax.Schedule:
    """The official ``StepLR``: ``lr * gamma ** (step // drop_step)``, a drop every ``drop_step``
    optimiser steps (every ``lr_drop_epoch`` epochs of the run, not just the first time)."""
    if drop_step < 1:
        raise ValueError(f"drop_step must be >= 1, got {drop_step}")
    return optax.exponential_decay(lr, transition_steps=drop_step, decay_rate=gamma, staircase=True)


def init_state(trainable: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable))


def normalize(images: jax.Array) -> jax.Array:
    """``(B, S, S, 3)`` uint8 -> float32 SAM input (``(x - mean) / std``; S x S needs no padding)."""
    return (images.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)


def decode_batch(module: SamHQ, emb: ImageEmbeddings, batch: Batch, output: str) -> jax.Array:
    """Decode each example with its own prompt kind in one call: ``(B, 1, 4G, 4G)`` float32 logits.

    Use as ``model.apply(variables, emb, batch, output, method=decode_batch)``. Every example carries
    all three prompts (``batch["points"]``, ``["box"]``, ``["noise_mask"]``); ``batch["prompt"]``
    picks one. The sparse tokens of both sparse kinds (10 points plus SAM's padding point, 2 box
    corners) share one sequence and the tokens of the kinds not picked are masked out of the
    two-way transformer, which gives exactly the unpadded result; the dense input is the mask
    embedding for the noisy-mask kind and the learned no-mask embedding otherwise.
    ``output``: ``"hq"`` (HQ token alone, the official training target) or ``"sam"`` (SAM's
    single-mask output without the HQ token, for pre-training a stand-in SAM).
    """
    pe = module.prompt_encoder
    kind = batch["prompt"]
    points = batch["points"]
    point_tokens = pe.embed_points(points, jnp.ones(points.shape[:-1], jnp.int32), pad=True)  # (B, N+1, C)
    box_tokens = pe.embed_boxes(batch["box"])  # (B, 2, C)
    sparse = jnp.concatenate([point_tokens, box_tokens], axis=1)
    sparse_mask = jnp.concatenate(
        [
            jnp.broadcast_to((kind == POINTS)[:, None], point_tokens.shape[:2]),
            jnp.broadcast_to((kind == BOX)[:, None], box_tokens.shape[:2]),
        ],
        axis=1,
    )
    no_mask = pe.no_mask_embed.reshape(1, 1, 1, -1).astype(jnp.float32)
    dense = jnp.where((kind == NOISE_MASK)[:, None, None, None], pe.mask_downscaling(batch["noise_mask"]), no_mask)
    masks, _ = module.mask_decoder(
        emb.image_embeddings,
        emb.early_features,
        pe.get_dense_pe(),
        sparse[:, None],
        dense[:, None],
        multimask_output=False,
        hq_token_only=output == "hq",
        sam_only=output == "sam",
        sparse_mask=sparse_mask[:, None],
    )
    return masks[:, 0]


def abstract_batch(config: ModelConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of :func:`make_train_step` as ``jax.ShapeDtypeStruct``s (to lower the step
    without data): ``image (B, S, S, 3)`` uint8, ``label (B, S, S)`` float32, ``box (B, 4)``,
    ``points (B, 10, 2)``, ``noise_mask (B, 4G, 4G)`` float32, ``prompt (B,)`` int32, ``valid (B,)`` bool."""
    b, s, m = batch_size, config.img_size, config.low_res_mask_size
    shapes = {
        "image": ((b, s, s, 3), jnp.uint8),
        "label": ((b, s, s), jnp.float32),
        "box": ((b, 4), jnp.float32),
        "points": ((b, NUM_POINTS, 2), jnp.float32),
        "noise_mask": ((b, m, m), jnp.float32),
        "prompt": ((b,), jnp.int32),
        "valid": ((b,), jnp.bool_),
    }
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}


def make_embed(
    config: ModelConfig, encoder_dtype: jnp.dtype | str = jnp.float32, remat: bool = False
) -> Callable[[Any, jax.Array], ImageEmbeddings]:
    """``embed(params, images (B, S, S, 3) uint8) -> ImageEmbeddings`` (float32) as the train step runs
    the image encoder: normalised, computed in ``encoder_dtype`` (``float32`` / ``bfloat16``), each
    block rematerialised under differentiation with ``remat``."""
    encoder = SamHQ(config, dtype=check_dtype(encoder_dtype), remat=remat)

    def embed(params: Any, images: jax.Array) -> ImageEmbeddings:
        emb = encoder.apply({"params": params}, normalize(images), method=SamHQ.embed_image)
        return jax.tree.map(lambda x: x.astype(jnp.float32), emb)

    return embed


def make_train_step(
    config: ModelConfig,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    output: str = "hq",
    encoder_dtype: jnp.dtype | str = jnp.float32,
    train_encoder: bool = False,
    precision: str = TRAINING.precision,
    remat: bool = False,
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, frozen, batch) -> (state, metrics)`` (not jitted; see :func:`jit_train_step`).

    ``batch``: ``image (B, S, S, 3)`` uint8, ``label (B, S, S)`` float32 0-255, ``box (B, 4)``,
    ``points (B, 10, 2)``, ``noise_mask (B, 4G, 4G)``, ``prompt (B,)`` int32, ``valid (B,)`` bool
    (see :mod:`train.data`). The loss randomness is ``fold_in(PRNGKey(seed), step)``: the same on any
    mesh. ``metrics``: ``loss``, ``loss_mask``, ``loss_dice`` (float32 scalars). ``precision``
    (``"default"`` / ``"highest"``) is the matmul precision of every dot of the step, gradients
    included; ``encoder_dtype`` the image encoder's compute dtype; ``remat`` rematerialises each
    image-encoder block in the backward pass (see the module docstring).
    """
    model = SamHQ(config)
    embed = make_embed(config, encoder_dtype, remat)
    base_key = jax.random.PRNGKey(seed)

    def step(state: TrainState, frozen: Any, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(base_key, state.step)
        n = batch["image"].shape[0]
        target = (batch["label"] / 255.0)[:, None]
        outside = None if train_encoder else embed(merge_params(frozen, state.params), batch["image"])

        def loss_fn(trainable: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            params = merge_params(frozen, trainable)
            emb = embed(params, batch["image"]) if train_encoder else outside
            logits = model.apply({"params": params}, emb, batch, output, method=decode_batch)
            loss_mask, loss_dice = loss_masks(logits, target, n, key=key, valid=batch["valid"])
            return loss_mask + loss_dice, (loss_mask, loss_dice)

        (loss, (loss_mask, loss_dice)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        return new, {"loss": loss, "loss_mask": loss_mask, "loss_dice": loss_dice}

    return at_precision(step, precision)


def make_mesh() -> Mesh:
    """1-D mesh over every device of every process, axis ``"data"`` (automatic sharding propagation)."""
    return data_mesh(jax.devices())


def remat_compiler_options(remat: bool) -> dict[str, str] | None:
    """XLA options for a program with rematerialised blocks (``remat``): on CPU, XLA expands
    ``jax.checkpoint``'s optimization barriers before its CSE pass, which then merges the recomputation
    back into the forward pass, so remat would save nothing (and the plan grows a little); skipping that
    one pass keeps the recomputation (a vit_b-wide 4-block encoder's gradient: temp 3,636 -> 2,136 MiB;
    the same gradients). None without remat and on other backends, which keep the barriers."""
    if remat and jax.default_backend() == "cpu":
        return {"xla_disable_hlo_passes": CPU_BARRIER_EXPANDER}
    return None


def jit_train_step(step: Callable, mesh: Mesh, remat: bool = False) -> Callable:
    """jit with the batch sharded on ``"data"``, everything else replicated, the state donated;
    ``remat``: the step was made with ``remat=True`` (compiled with :func:`remat_compiler_options`)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.jit(
        step,
        in_shardings=(replicated, replicated, data),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=remat_compiler_options(remat),
    )


def global_batch(local: dict[str, Any], mesh: Mesh) -> Batch:
    """This process's slice of the global batch (NumPy) -> global arrays sharded on ``"data"``."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
