"""Fine-tuning Light HQ-SAM (TinyViT encoder, test size ``tiny_t``) as for the ViTs: a SIGKILLed
``samhq-train`` run resumed with ``--resume`` ends bit-identical to an uninterrupted one; the same run
on a mesh of 4 forced CPU devices gives the same loss curve; ``--trainable decoder`` moves exactly the
mask decoder. Every run leaves the BatchNorm running statistics bit-identical to the start.

The runs start from a seeded ``tiny_t`` checkpoint, every tensor random (BatchNorm statistics
included, not PyTorch's 0 / 1), and train the official recipe (HQ parts only) on the synthetic thin-structure set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file

from samhq_jax.checkpoint import save_checkpoint
from samhq_jax.config import ModelConfig
from samhq_jax.hq_params import is_hq_path
from samhq_jax.sam_hq import param_shapes
from samhq_jax.tiny_vit import is_batch_stat
from train.loop import TrainConfig, train
from train.synthetic import write_synthetic_dataset

PRESET = "tiny_t"
REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, SAVE_EVERY, KILL_AT = 10, 4, 2, 4
JAX_CACHE = Path(os.environ.get("SAMHQ_TEST_JAX_CACHE", "/tmp/samhq-jax-test-cache"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny_train")
    config = ModelConfig.preset(PRESET)
    # numpy from the shapes (init_params would compile the forward pass with every initialiser)
    rng = np.random.default_rng(5)
    flat = {
        k: np.abs(1 + 0.2 * rng.standard_normal(v.shape)).astype(np.float32) if k.endswith("running_var") else
        (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in flatten_dict(param_shapes(config), sep="/").items()
    }  # fmt: skip
    save_checkpoint(root / "start", config, unflatten_dict(flat, sep="/"))
    write_synthetic_dataset(root / "data", 8, size=config.img_size, seed=0)
    return {"root": root, "start": root / "start", "data": root / "data"}


def _args(setup: dict, output: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint", str(setup["start"]), "--data", str(setup["data"]), "--output", str(output),
        "--steps", str(STEPS), "--batch-size", str(BATCH), "--save-every", str(SAVE_EVERY),
        "--log-every", "1", "--val-every", "0", "--seed", "3", *extra,
    ]  # fmt: skip


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))  # the 1-device runs compile one step
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    return env


def _train(args: list[str], devices: int = 1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train", *args]
    return subprocess.run(cmd, env=_env(devices), cwd=REPO, capture_output=True, text=True, timeout=600)


def _losses(output: Path) -> np.ndarray:
    lines = [json.loads(s) for s in (output / "metrics.jsonl").read_text().splitlines()]
    return np.array([[r["step"], r["loss"], r["loss_mask"], r["loss_dice"]] for r in lines if "loss" in r])


def _final(output: Path) -> dict[str, np.ndarray]:
    return load_file(str(output / "final" / "model.safetensors"))


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
    proc = _train(_args(setup, output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_only_hq_moved(load_file(str(setup["start"] / "model.safetensors")), _final(output))
    return output


def test_sigkill_then_resume_equals_uninterrupted(setup: dict, one_device_run: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    killed = subprocess.Popen(
        [sys.executable, "-m", "train", *_args(setup, cut)],
        env=_env(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (cut / "checkpoints" / str(KILL_AT)).is_dir() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (cut / "final").exists()
    proc = _train(_args(setup, cut, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _final(one_device_run), _final(cut)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    np.testing.assert_array_equal(_losses(cut), _losses(one_device_run))
    starts = json.loads((cut / "run.json").read_text())["starts"]
    assert len(starts) == 2 and starts[1]["step"] >= KILL_AT


def test_same_loss_curve_on_4_devices(setup: dict, one_device_run: Path, tmp_path: Path) -> None:
    four = tmp_path / "four"
    proc = _train(_args(setup, four), devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [start["devices"] for start in json.loads((four / "run.json").read_text())["starts"]] == [4]
    ref, got = _losses(one_device_run), _losses(four)
    assert ref.shape == (STEPS, 4)
    np.testing.assert_array_equal(got[:, 0], ref[:, 0])
    np.testing.assert_allclose(got[:, 1:], ref[:, 1:], rtol=2e-4, atol=1e-6)
    a, b = _final(one_device_run), _final(four)
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
