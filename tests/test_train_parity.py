"""The training recipe against PyTorch: the learning-rate schedule is ``torch.optim.lr_scheduler.StepLR``
itself, and one whole training step (frozen SAM forward, HQ decoder, point-sampled loss, gradients,
Adam update) equals a PyTorch transcription of the official ``train/train.py`` step on the same
weights and the same batch.

The official step (SysCV/sam-hq ``train/train.py``, ``main`` loop and ``MaskDecoderHQ.forward``),
transcribed below with the official package's modules: under ``no_grad`` SAM normalises the uint8
images, runs the image encoder (embeddings and the early ViT features) and the prompt encoder per
image (points, box or noise mask); the trainable decoder computes ``hq_features`` for the batch and
runs ``predict_masks`` image by image; the HQ token's mask goes to ``loss_masks(masks_hq, labels /
255, len(masks_hq))`` (the official loss, transcribed in ``tests/test_loss.py``, its ``torch.rand``
fed the uniform draws our step takes from its key); then ``zero_grad``, ``backward`` and
``optim.Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0).step()`` on the HQ parameters.
"""

from __future__ import annotations

import copy
from unittest import mock

import jax
import numpy as np
import torch

from convert.core import OFFICIAL, params_to_state_dict
from samhq_jax.datasets import folder_pairs
from tests.conftest import assert_close, official_model_and_params
from tests.test_loss import official_draws, ref_loss_masks
from train.data import example_rng, load_example
from train.loop import TrainConfig, schedule_steps
from train.loss import NUM_POINTS, OVERSAMPLE_RATIO
from train.prompts import BOX, NOISE_MASK, POINTS
from train.step import init_state, lr_schedule, make_optimizer, make_train_step
from train.synthetic import write_synthetic_dataset
from train.trainable import partition

PRESET, SEED, LR = "tiny_b", 5, 1e-3
LOSS_RTOL = 1e-5  # loss and updated parameters, relative to the reference's largest magnitude
# Adam's first moment is (1 - beta1) * gradient: the gradients (measured 1.1e-6 apart)
GRAD_RTOL = 1e-5


def test_lr_schedule_is_torch_steplr() -> None:
    """45 epochs, a drop every 10: x0.1 at epochs 10, 20, 30 and 40 (not only once), step by step."""
    per_epoch, epochs, drop = 7, 45, 10
    cfg = TrainConfig(output="unused", preset=PRESET, data=("d",), epochs=epochs, lr_drop_epoch=drop, batch_size=4)
    total, drop_step, steps_per_epoch = schedule_steps(cfg, per_epoch * cfg.batch_size + 3)
    assert (total, steps_per_epoch) == (epochs * per_epoch, per_epoch)
    ours = np.asarray(jax.vmap(lr_schedule(LR, drop_step))(np.arange(total)))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=drop)  # gamma 0.1, stepped once per epoch
    ref = []
    for _ in range(epochs):
        ref += [optimizer.param_groups[0]["lr"]] * per_epoch
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert len(set(np.round(np.log10(ref)).tolist())) == 5  # 1e-3 .. 1e-7


def _batch(tmp_path, img_size: int) -> dict[str, np.ndarray]:
    """Three augmented synthetic examples from the training pipeline, one per prompt kind."""
    pairs = folder_pairs(write_synthetic_dataset(tmp_path / "data", 3, size=img_size, seed=2))
    examples = [load_example(p, img_size, img_size // 4, example_rng(SEED, 0, r)) for r, p in enumerate(pairs)]
    for example, kind in zip(examples, (BOX, POINTS, NOISE_MASK), strict=True):
        example["prompt"] = np.int32(kind)
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def official_step(model: torch.nn.Module, batch: dict[str, np.ndarray], key: jax.Array) -> tuple[dict, dict]:
    """One official training step on ``model`` (its HQ parameters trained): ``(losses, Adam state)``."""
    hq = [p for name, p in model.named_parameters() if any(part in name for part in HQ_TORCH_PARTS)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in hq:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(hq, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    labels = torch.from_numpy(batch["label"])[:, None]
    batched_input = []
    for b in range(len(labels)):
        record = {"image": torch.as_tensor(batch["image"][b]).permute(2, 0, 1).contiguous()}
        kind = int(batch["prompt"][b])
        if kind == BOX:
            record["boxes"] = torch.from_numpy(batch["box"][b : b + 1])
        elif kind == POINTS:
            record["point_coords"] = torch.from_numpy(batch["points"][b : b + 1])
            record["point_labels"] = torch.ones(record["point_coords"].shape[1])[None, :]
        else:
            record["mask_inputs"] = torch.from_numpy(batch["noise_mask"][b : b + 1])[:, None]
        batched_input.append(record)
    # sam(batched_input, multimask_output=False) of the training package, under no_grad
    with torch.no_grad():
        images = torch.stack([model.preprocess(r["image"]) for r in batched_input])
        image_embeddings, interm_embeddings = model.image_encoder(images)
        prompts = []
        for r in batched_input:
            points = (r["point_coords"], r["point_labels"]) if "point_coords" in r else None
            prompts.append(model.prompt_encoder(points=points, boxes=r.get("boxes"), masks=r.get("mask_inputs")))
        image_pe = [model.prompt_encoder.get_dense_pe() for _ in batched_input]
    # net(...): train.py's MaskDecoderHQ.forward, hq_token_only=True
    net = model.mask_decoder
    vit_features = interm_embeddings[0].permute(0, 3, 1, 2)
    hq_features = net.embedding_encoder(image_embeddings) + net.compress_vit_feat(vit_features)
    masks = torch.cat(
        [
            net.predict_masks(
                image_embeddings=image_embeddings[i].unsqueeze(0),
                image_pe=image_pe[i],
                sparse_prompt_embeddings=prompts[i][0],
                dense_prompt_embeddings=prompts[i][1],
                hq_features=hq_features[i].unsqueeze(0),
            )[0]
            for i in range(len(batched_input))
        ]
    )
    masks_hq = masks[:, slice(net.num_mask_tokens - 1, net.num_mask_tokens)]
    with mock.patch("torch.rand", side_effect=official_draws(key, len(masks_hq), NUM_POINTS, OVERSAMPLE_RATIO)):
        loss_mask, loss_dice = ref_loss_masks(masks_hq, labels / 255.0, len(masks_hq))
    loss = loss_mask + loss_dice
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    names = {id(p): name for name, p in model.named_parameters()}
    moments = {names[id(p)]: optimizer.state[p]["exp_avg"].numpy() for p in hq}
    return {"loss": loss.item(), "loss_mask": loss_mask.item(), "loss_dice": loss_dice.item()}, moments


# The official trainable modules (train.py's MaskDecoderHQ: everything else is frozen).
HQ_TORCH_PARTS = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


def test_one_training_step_equals_official(tmp_path) -> None:
    model, state, config, params = official_model_and_params(PRESET)
    model = copy.deepcopy(model)  # the session's cached model stays untrained
    batch = _batch(tmp_path, config.img_size)
    assert sorted(batch["prompt"].tolist()) == [BOX, POINTS, NOISE_MASK] and batch["valid"].all()

    trainable, frozen = partition(params, "hq")
    tx = make_optimizer(LR, drop_step=10)
    step = jax.jit(make_train_step(config, tx, seed=SEED, precision="highest"))
    new_state, metrics = step(init_state(trainable, tx), frozen, batch)
    key = jax.random.fold_in(jax.random.PRNGKey(SEED), 0)  # the step's loss key at step 0
    ref_losses, ref_moments = official_step(model, batch, key)

    for name, value in ref_losses.items():
        assert_close(np.asarray(metrics[name]), np.asarray(value), name, rtol=LOSS_RTOL)
    updated = params_to_state_dict(jax.tree.map(np.asarray, new_state.params), OFFICIAL)
    moments = params_to_state_dict(jax.tree.map(np.asarray, new_state.opt_state[0].mu), OFFICIAL)
    ref_params = model.state_dict()
    assert set(updated) == set(ref_moments) and len(updated) == 25
    for name in sorted(updated):
        assert_close(moments[name], ref_moments[name], f"Adam first moment of {name}", rtol=GRAD_RTOL)
        assert_close(updated[name], ref_params[name].numpy(), f"updated {name}", rtol=LOSS_RTOL)
        assert not np.array_equal(updated[name], state[name]), f"{name} did not move"
