"""The ``samhq`` command on a real photo: written files, folder mode, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval.parity.samples import IMAGES_DIR
from samhq_jax import save_checkpoint
from samhq_jax.cli import main
from tests.conftest import official_model_and_params


def _samhq(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "samhq_jax.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    _, _, config, params = official_model_and_params("tiny_b")
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_b", config, params))


def test_predict_writes_masks_overlay_and_scores(checkpoint: str, tmp_path) -> None:
    image = IMAGES_DIR / "dog.jpg"
    w, h = Image.open(image).size
    out = tmp_path / "out"
    run = _samhq(
        "predict",
        "--checkpoint",
        checkpoint,
        "--image",
        str(image),
        "--box",
        "100",
        "200",
        "900",
        "1200",
        "--box",
        "1000",
        "100",
        "1900",
        "1300",
        "--point",
        "500",
        "600",
        "1",
        "--hq-token-only",
        "--output",
        str(out),
        env={"SAMHQ_JAX_CACHE": str(tmp_path / "xla")},
    )
    assert run.returncode == 0, run.stderr
    assert any((tmp_path / "xla").iterdir()), "the command should keep its compiled model in SAMHQ_JAX_CACHE"
    for i in range(2):
        mask = Image.open(out / f"dog_mask{i}.png")
        assert mask.size == (w, h) and set(np.unique(np.asarray(mask))) <= {0, 255}
    overlay = Image.open(out / "dog_overlay.png")
    overlay.verify()
    assert overlay.format == "PNG" and overlay.size == (w, h)
    scores = json.loads((out / "dog_scores.json").read_text())
    assert len(scores["masks"]) == 2 and all(isinstance(m["iou"], float) for m in scores["masks"])
    assert scores["hq_token_only"] is True


def test_folder_with_prompts_file(checkpoint: str, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    names = sorted(p.name for p in IMAGES_DIR.glob("*.png"))[:2]
    prompts.write_text("".join(json.dumps({"image": n, "points": [[50, 60, 1]]}) + "\n" for n in names))
    run = _samhq(
        "predict",
        "--checkpoint",
        checkpoint,
        "--images",
        str(IMAGES_DIR),
        "--prompts",
        str(prompts),
        "--output",
        str(tmp_path / "o"),
    )
    assert run.returncode == 0, run.stderr
    assert "samhq predict" in run.stderr  # the progress bar
    for n in names:
        stem = n.rsplit(".", 1)[0]
        assert (tmp_path / "o" / f"{stem}_mask0.png").is_file() and (tmp_path / "o" / f"{stem}_scores.json").is_file()


@pytest.mark.parametrize(
    "args,match",
    [
        (["predict", "--image", "x.jpg", "--output", "o"], "--checkpoint"),
        (
            ["predict", "--checkpoint", "CKPT", "--image", "nope.jpg", "--box", "1", "2", "3", "4", "--output", "o"],
            "no image",
        ),
        (
            ["predict", "--checkpoint", "CKPT", "--image", "IMG", "--box", "9", "2", "3", "4", "--output", "o"],
            "x1 >= x0",
        ),
        (
            ["predict", "--checkpoint", "CKPT", "--image", "IMG", "--point", "1", "2", "7", "--output", "o"],
            "the label must be 1 (foreground), 0 (background) or -1 (ignore)",
        ),
        (["predict", "--checkpoint", "CKPT", "--image", "IMG", "--box", "1", "2", "--output", "o"], "--box"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_with_one_line(checkpoint: str, tmp_path, capsys, args: list, match: str) -> None:
    """In-process (no JAX start-up per case); tests/test_cli_errors.py has every other error path."""
    subst = {"CKPT": checkpoint, "IMG": str(IMAGES_DIR / "dog.jpg"), "o": str(tmp_path / "o")}
    args = [subst.get(a, a) for a in args]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("samhq: error: ") and match in lines[0]
