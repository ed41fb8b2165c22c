"""Shared pieces of the ``samhq-train`` subprocess tests (tests/test_train.py, test_tiny_train.py):
the environment of a run on N forced CPU devices, running one, killing one at a checkpoint, and
reading its losses and final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
# The training subprocesses of one device count compile the same step: they share it through JAX's
# persistent compilation cache.
JAX_CACHE = Path(os.environ.get("SAMHQ_TEST_JAX_CACHE", "/tmp/samhq-jax-test-cache"))
RUN_TIMEOUT_S = 600  # one training subprocess
KILL_WAIT_S = 300  # the longest wait for the checkpoint a run is killed after


def train_env(devices: int, cache: bool = True) -> dict[str, str]:
    """Environment of a ``python -m train`` subprocess on ``devices`` forced CPU devices, fp32
    matmuls at "highest"; ``cache=False`` without the persistent compilation cache."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
    if not cache:  # (the commands' own cache is off in tests: SAMHQ_JAX_CACHE=0, conftest)
        env.pop("JAX_COMPILATION_CACHE_DIR")
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    return env


def run_train(args: list[str], devices: int = 1) -> subprocess.CompletedProcess:
    """``python -m train ARGS`` to the end (output captured as text)."""
    cmd = [sys.executable, "-m", "train", *args]
    return subprocess.run(cmd, env=train_env(devices), cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def kill_at_checkpoint(args: list[str], output: Path, step: int) -> None:
    """Start ``python -m train ARGS`` writing to ``output`` and SIGKILL it as soon as its checkpoint of
    ``step`` exists; asserts it was killed mid-run (no ``final/``)."""
    killed = subprocess.Popen(
        [sys.executable, "-m", "train", *args],
        env=train_env(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + KILL_WAIT_S
    while not (output / "checkpoints" / str(step)).is_dir() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (output / "final").exists()


def losses(output: Path) -> np.ndarray:
    """``(steps, 4)``: step, loss, mask loss and dice loss of each logged step of a run's metrics.jsonl."""
    lines = [json.loads(s) for s in (output / "metrics.jsonl").read_text().splitlines()]
    return np.array([[r["step"], r["loss"], r["loss_mask"], r["loss_dice"]] for r in lines if "loss" in r])


def final_weights(output: Path) -> dict[str, np.ndarray]:
    """The flat tensors of a run's ``final/model.safetensors``."""
    return load_file(str(output / "final" / "model.safetensors"))


def assert_same_weights(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Two flat weight dicts hold the same tensors, bit for bit (each named on failure)."""
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
