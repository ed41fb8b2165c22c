"""Fine-tuning Light HQ-SAM (TinyViT encoder, test size ``tiny_t``) as for the ViTs: a SIGKILLed
``samhq-train`` run resumed with ``--resume`` ends bit-identical to an uninterrupted one; the same run
on a mesh of 4 forced CPU devices gives the same loss curve; ``--trainable decoder`` moves exactly the
mask decoder. Every run leaves the BatchNorm running statistics bit-identical to the start.

The runs start from a seeded ``tiny_t`` checkpoint, every tensor random (BatchNorm statistics
included, not PyTorch's 0 / 1), and train the official recipe (HQ parts only) on the synthetic thin-structure set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file

from samhq_jax.checkpoint import save_checkpoint
from samhq_jax.config import ModelConfig
from samhq_jax.hq_params import is_hq_path
from samhq_jax.tiny_vit import is_batch_stat
from tests.conftest import random_params
from tests.train_support import assert_same_weights, final_weights, kill_at_checkpoint, losses, run_train
from train.loop import TrainConfig, train
from train.synthetic import write_synthetic_dataset

PRESET = "tiny_t"
STEPS, BATCH, SAVE_EVERY, KILL_AT = 10, 4, 2, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny_train")
    config = ModelConfig.preset(PRESET)
    # NumPy from the shapes (init_params would compile the forward pass with every initialiser)
    save_checkpoint(root / "start", config, random_params(config, 5))
    write_synthetic_dataset(root / "data", 8, size=config.img_size, seed=0)
    return {"root": root, "start": root / "start", "data": root / "data"}


def _args(setup: dict, output: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint", str(setup["start"]), "--data", str(setup["data"]), "--output", str(output),
        "--steps", str(STEPS), "--batch-size", str(BATCH), "--save-every", str(SAVE_EVERY),
        "--log-every", "1", "--val-every", "0", "--seed", "3", *extra,
    ]  # fmt: skip


def _assert_only_hq_moved(start: dict[str, np.ndarray], end: dict[str, np.ndarray]) -> None:
    assert start.keys() == end.keys()
    assert sum(is_batch_stat(k) for k in start) == 36
    for k in start:
        if is_hq_path(k):
            continue
        np.testing.assert_array_equal(end[k], start[k], err_msg=f"{k} (frozen) changed")
    assert any(not np.array_equal(end[k], start[k]) for k in start if is_hq_path(k))


@pytest.fixture(scope="module")
def one_device_run(setup: dict) -> Path:
    output = setup["root"] / "one"
    proc = run_train(_args(setup, output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_only_hq_moved(load_file(str(setup["start"] / "model.safetensors")), final_weights(output))
    return output


def test_sigkill_then_resume_equals_uninterrupted(setup: dict, one_device_run: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    kill_at_checkpoint(_args(setup, cut), cut, KILL_AT)
    proc = run_train(_args(setup, cut, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(final_weights(cut), final_weights(one_device_run))
    np.testing.assert_array_equal(losses(cut), losses(one_device_run))
    starts = json.loads((cut / "run.json").read_text())["starts"]
    assert len(starts) == 2 and starts[1]["step"] >= KILL_AT


def test_same_loss_curve_on_4_devices(setup: dict, one_device_run: Path, tmp_path: Path) -> None:
    four = tmp_path / "four"
    proc = run_train(_args(setup, four), devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [start["devices"] for start in json.loads((four / "run.json").read_text())["starts"]] == [4]
    ref, got = losses(one_device_run), losses(four)
    assert ref.shape == (STEPS, 4)
    np.testing.assert_array_equal(got[:, 0], ref[:, 0])
    np.testing.assert_allclose(got[:, 1:], ref[:, 1:], rtol=2e-4, atol=1e-6)
    a, b = final_weights(one_device_run), final_weights(four)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-4
    _assert_only_hq_moved(load_file(str(setup["start"] / "model.safetensors")), b)


def test_trainable_decoder_moves_exactly_the_mask_decoder(setup: dict, tmp_path: Path) -> None:
    start = load_file(str(setup["start"] / "model.safetensors"))
    result = train(
        TrainConfig(
            output=tmp_path / "decoder",
            checkpoint=str(setup["start"]),
            data=(str(setup["data"]),),
            steps=2,
            batch_size=BATCH,
            trainable="decoder",
            save_every=2,
            log_every=1,
            val_every=0,
        )
    )
    end = flatten_dict(result.params, sep="/")
    assert end.keys() == start.keys()
    decoder = [k for k in start if k.startswith("mask_decoder/")]
    assert all(np.array_equal(end[k], start[k]) for k in start if k not in decoder)
    moved = {k for k in decoder if not np.array_equal(end[k], start[k])}
    # the HQ parts and SAM's two-way transformer (frozen by the HQ recipe) train
    assert {k for k in decoder if is_hq_path(k) and k.endswith("kernel")} <= moved
    assert any(k.startswith("mask_decoder/transformer/") and not is_hq_path(k) for k in moved)
