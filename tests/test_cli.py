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


def test_predict_masks_are_the_predictors_masks(checkpoint: str, tmp_path, capsys) -> None:
    """The written mask PNGs hold the predictor's masks for the same prompts (content, not only names):
    two boxes sharing a foreground and a background point, in-process. The reference is the
    predictor the command runs on (``MeshPredictor``, one device; its equality to
    ``SamHQPredictor`` is tests/test_scale_out.py's), given the prompts as arrays by hand."""
    from samhq_jax.distributed import data_mesh
    from samhq_jax.mesh_predictor import MeshPredictor

    image = IMAGES_DIR / "example7.png"
    boxes = [[40.0, 60.0, 420.0, 400.0], [300.0, 20.0, 630.0, 300.0]]
    points = [[200.0, 220.0, 1], [600.0, 450.0, 0]]
    argv = ["predict", "--checkpoint", checkpoint, "--image", str(image), "--output", str(tmp_path / "o")]
    for b in boxes:
        argv += ["--box", *map(str, b)]
    for p in points:
        argv += ["--point", *map(str, p)]
    assert main(argv) == 0, capsys.readouterr().err
    predictor = MeshPredictor.from_pretrained(checkpoint, data_mesh())  # the mesh the command ran on
    coords = np.array([[[200.0, 220.0], [600.0, 450.0]]] * 2, np.float32)
    labels = np.array([[1, 0], [1, 0]], np.int32)
    prompt = {"boxes": np.array(boxes, np.float32), "point_coords": coords, "point_labels": labels}
    rgb = np.asarray(Image.open(image).convert("RGB"))
    ((masks, iou, _),) = predictor.predict_images([rgb], [prompt], multimask_output=False)
    scores = json.loads((tmp_path / "o" / "example7_scores.json").read_text())
    for i in range(2):
        png = np.asarray(Image.open(tmp_path / "o" / f"example7_mask{i}.png"))
        assert png.shape == rgb.shape[:2] and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, masks[i, 0])
        assert 0 < masks[i, 0].sum() < masks[i, 0].size  # a real mask, neither empty nor everything
        assert scores["masks"][i]["box"] == boxes[i] and scores["masks"][i]["points"] == points
        assert scores["masks"][i]["iou"] == float(iou[i, 0])
    assert not np.array_equal(masks[0, 0], masks[1, 0])  # each file is its own box's mask
