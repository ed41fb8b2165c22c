"""Inference over every device and every process: ``samhq predict --images``, ``samhq everything
--images`` and ``samhq-eval`` write, on 4 forced CPU devices and as 2 processes of 2 devices each,
exactly the files of a one-device run (every byte); each process writes its own contiguous share of
the images, nothing twice, nothing missing, and only process 0 writes the evaluation's summary.

The three configurations run at the same time, each process running the three commands one after
the other (:data:`RUNNER`), on a tiny seeded checkpoint and five small images of different sizes
(an odd count: uneven shares, part-filled device batches), with prompts of two signatures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from convert.core import state_dict_to_params
from eval.reference import build_official
from samhq_jax import save_checkpoint
from samhq_jax.cli import main as samhq
from samhq_jax.cmdkit.args import distributed_flags
from samhq_jax.config import ModelConfig
from samhq_jax.distributed import share
from tests.test_eval_protocol import write_folder

REPO = Path(__file__).resolve().parents[1]
SIZES = [(100, 150), (150, 90), (120, 120), (90, 200), (70, 80)]  # five images: shares of 3 and 2
# Prompt sets of two signatures (3 boxes, padded to 4; 2 points), so the images of one device batch
# are decoded in two calls, each device of a call running the one-image program of its prompts.
PROMPTS = [
    {"boxes": [[10, 10, 80, 60], [5, 5, 140, 90], [0, 0, 20, 30]]},
    {"points": [[40, 50, 1], [10, 10, 0]]},
    {"boxes": [[5, 5, 60, 100], [20, 30, 80, 110], [0, 0, 89, 119]]},
    {"points": [[100, 20, 1], [30, 60, 0]]},
    {"boxes": [[1, 1, 70, 60], [10, 10, 20, 20], [5, 30, 75, 65]]},
]
# Each process runs the three commands in turn: [[prog, argv], ...] as JSON in argv[1].
RUNNER = """
import json, sys
from eval.cli import main as samhq_eval
from samhq_jax.cli import main as samhq
for prog, argv in json.loads(sys.argv[1]):
    code = (samhq if prog == "samhq" else samhq_eval)(argv)
    if code:
        sys.exit(code)
"""
COMMANDS = ("predict", "everything", "eval")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale_out")
    # tiny_b with half its encoder blocks and one two-way block (the runs' time is mostly compilation),
    # seeded PyTorch weights through the converter as in tests/conftest.py
    config = ModelConfig.tiny_b(transformer_depth=1)
    encoder = dataclasses.replace(config.image_encoder, depth=2, global_attn_indexes=(1,))
    config = dataclasses.replace(config, image_encoder=encoder)
    state = {k: v.numpy() for k, v in build_official(config, seed=0).state_dict().items()}
    checkpoint = save_checkpoint(root / "tiny", *state_dict_to_params(state, config=config))
    write_folder(root / "a", SIZES, seed=3)
    write_folder(root / "b", SIZES[:3], seed=7)
    lines = [json.dumps({"image": f"im{i}.png", **p}) for i, p in enumerate(PROMPTS)]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return {"root": root, "checkpoint": checkpoint}


def _commands(inputs: dict[str, Path], out: Path, extra: list[str]) -> list[list]:
    root, ckpt = inputs["root"], str(inputs["checkpoint"])
    images = str(root / "a" / "images")
    return [
        ["samhq", ["predict", "--checkpoint", ckpt, "--images", images, "--prompts", str(root / "prompts.jsonl"),
                   "--output", str(out / "predict"), *extra]],
        ["samhq", ["everything", "--checkpoint", ckpt, "--images", images, "--output", str(out / "everything"),
                   "--points-per-side", "3", "--points-per-batch", "8", "--pred-iou-thresh", "0",
                   "--stability-score-thresh", "0", *extra]],
        ["eval", ["--checkpoint", ckpt, "--data", str(root / "a"), "--data", str(root / "b"), "--batch-size", "2",
                  "--pictures", "2", "--output", str(out / "eval"), *extra]],
    ]  # fmt: skip


def _start(commands: list[list], devices: int) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(commands)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(inputs: dict[str, Path]) -> dict[str, Path]:
    """One device; four devices; two processes of two devices each (all started at once)."""
    root = inputs["root"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
    procs = {
        "one": _start(_commands(inputs, root / "one", []), 1),
        "four": _start(_commands(inputs, root / "four", []), 4),
        "p0": _start(_commands(inputs, root / "p0", [*two, "0"]), 2),
        "p1": _start(_commands(inputs, root / "p1", [*two, "1"]), 2),
    }
    outs = {name: p.communicate(timeout=600) for name, p in procs.items()}
    failed = {name: outs[name][1][-3000:] for name, p in procs.items() if p.returncode}
    assert not failed, failed
    assert "process 0 takes 3, 1 on each of its 2 device(s)" in outs["p0"][1]  # process 0 says what it does
    return {name: root / name for name in procs}


@pytest.mark.parametrize("command", COMMANDS)
def test_four_devices_write_the_one_device_files(runs: dict[str, Path], command: str) -> None:
    one, four = _files(runs["one"] / command), _files(runs["four"] / command)
    assert len(one) >= 5 and list(four) == list(one)
    assert [name for name in one if four[name] != one[name]] == []


@pytest.mark.parametrize("command", ["predict", "everything"])
def test_two_processes_write_their_shares_of_the_one_device_files(runs: dict[str, Path], command: str) -> None:
    one = _files(runs["one"] / command)
    mine = [_files(runs[p] / command) for p in ("p0", "p1")]
    stems = [sorted({name.split("_")[0] for name in files}) for files in mine]
    assert stems == [["im0", "im1", "im2"], ["im3", "im4"]]  # contiguous shares, in order
    merged = {**mine[0], **mine[1]}
    assert len(merged) == len(mine[0]) + len(mine[1]) and sorted(merged) == sorted(one)
    assert [name for name in one if merged[name] != one[name]] == []


def test_two_processes_gather_the_one_device_evaluation(runs: dict[str, Path]) -> None:
    one, first = _files(runs["one"] / "eval"), _files(runs["p0"] / "eval")
    assert {"per_image.csv", "summary.json", "summary.md"} <= set(one)
    assert len([name for name in one if name.startswith("pictures/")]) == 4
    assert list(first) == list(one) and [name for name in one if first[name] != one[name]] == []
    assert not (runs["p1"] / "eval").exists()  # process 0 alone writes the outputs
    rows = (runs["one"] / "eval" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + len(SIZES) + 3  # every image of both datasets, once


def test_shares_are_contiguous_and_cover_every_item() -> None:
    for n in range(8):
        for count in range(1, 5):
            parts = [share(list(range(n)), i, count) for i in range(count)]
            assert [x for part in parts for x in part] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="not in"):
        share([1, 2], 2, 2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-processes", "2"], "--coordinator and --process-id missing"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "--process-id 2: need 0 .. 1"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "expected HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "'0': need an integer"),
    ],
)
def test_bad_process_flags_are_one_line_errors(inputs: dict[str, Path], tmp_path, capsys, flags, message) -> None:
    images = str(inputs["root"] / "a" / "images")
    argv = ["everything", "--checkpoint", str(inputs["checkpoint"]), "--images", images, "--output", str(tmp_path)]
    try:
        code = samhq([*argv, *flags])
    except SystemExit as stop:  # argparse's own one-line error (a flag out of range)
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samhq: error:") and message in err and len(err.splitlines()) == 1, err


def test_no_process_flags_is_one_process() -> None:
    assert distributed_flags(argparse.Namespace(coordinator=None, num_processes=None, process_id=None)) is None
    flags = argparse.Namespace(coordinator="10.0.0.1:1234", num_processes=2, process_id=1)
    assert distributed_flags(flags) == ("10.0.0.1:1234", 2, 1)
