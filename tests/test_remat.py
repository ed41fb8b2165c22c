"""Rematerialisation of the image-encoder blocks (``remat``, ``samhq-train --remat``): the same
parameter tree, the same loss and gradients, the recomputation in the program only where the encoder
is differentiated, and what it does to XLA's memory plan on this backend.

Imports neither torch nor grain, so it also runs on a GPU machine (where the memory relation is the
one remat is for)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from eval.bench.env import analyse_compiled
from eval.bench.memory import train_program
from samhq_jax.config import ModelConfig
from samhq_jax.sam_hq import SamHQ, param_shapes
from train.step import make_embed, remat_compiler_options

CONFIG = ModelConfig.tiny_b()
BARRIER = "optimization_barrier"  # how jax.checkpoint keeps XLA from merging the recomputation away


def encoder_loss_and_grad(remat: bool) -> jax.stages.Wrapped:
    """``(encoder params, images (B, S, S, 3) uint8) -> (loss, grads)`` through the train step's image
    encoder (:func:`train.step.make_embed`), with the blocks rematerialised or not."""
    embed = make_embed(CONFIG, remat=remat)

    def loss(params: dict, images: jax.Array) -> jax.Array:
        emb = embed(params, images)
        return jnp.mean(emb.image_embeddings**2) + jnp.mean(jnp.sin(emb.early_features))

    return jax.jit(jax.value_and_grad(loss), compiler_options=remat_compiler_options(remat))


def test_remat_keeps_every_parameter_name_and_shape() -> None:
    images = jax.ShapeDtypeStruct((1, CONFIG.img_size, CONFIG.img_size, 3), jnp.float32)
    trees = [
        jax.eval_shape(partial(SamHQ(CONFIG, remat=remat).init, method="embed_image"), jax.random.PRNGKey(0), images)
        for remat in (False, True)
    ]
    assert trees[0] == trees[1]
    assert "blocks_0" in trees[1]["params"]["image_encoder"]


def test_remat_gives_the_same_loss_and_gradients_and_this_memory_plan() -> None:
    rng = np.random.default_rng(0)
    shapes = {"image_encoder": param_shapes(CONFIG)["image_encoder"]}  # every leaf random, rel-pos tables too
    params = jax.tree.map(lambda x: (0.1 * rng.standard_normal(x.shape)).astype(x.dtype), shapes)
    images = rng.integers(0, 256, (2, CONFIG.img_size, CONFIG.img_size, 3), dtype=np.uint8)
    results, temp = {}, {}
    for remat in (False, True):
        lowered = encoder_loss_and_grad(remat).lower(params, images)
        assert (BARRIER in lowered.as_text()) == remat
        compiled = lowered.compile()
        results[remat] = compiled(params, images)
        temp[remat] = analyse_compiled(compiled).temp_bytes
    (loss, grads), (loss_remat, grads_remat) = results[False], results[True]
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    for g, g_remat in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat), strict=True):
        assert np.abs(g_remat - g).max() <= 1e-6 * max(np.abs(g).max(), 1e-30)
    # Measured on the CPU: 0.41x (4.9 -> 2.0 MB; without remat_compiler_options XLA:CPU merged the
    # recomputation away and the plan grew by 8 %). Not measured on a GPU yet: there, smaller at all.
    assert temp[True] < (0.6 if jax.default_backend() == "cpu" else 1.0) * temp[False], temp


def test_remat_reaches_the_step_only_through_a_trained_encoder() -> None:
    """``--trainable decoder`` runs the encoder outside the gradient: remat leaves no trace there."""
    for trainable, barriers in (("decoder", False), ("all", True)):
        text = train_program(CONFIG, 2, trainable, True, jnp.float32).as_text()
        assert (BARRIER in text) == barriers, trainable
