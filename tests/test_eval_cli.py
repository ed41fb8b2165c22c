"""``samhq-eval`` end to end: a seeded random official vit_b against the official evaluation transcribed
in PyTorch; the written files, bad-data reporting and exit status 2 on a tiny model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convert.core import state_dict_to_params
from eval.cli import main
from eval.protocol import OUTPUTS, ImageRecord, evaluate_pairs
from eval.reference import build_official
from eval.report import CSV_COLUMNS, paper_results, summary_markdown
from samhq_jax import save_checkpoint
from samhq_jax.config import ModelConfig
from samhq_jax.datasets import HQSEG_VAL, folder_pairs
from tests.conftest import official_model_and_params
from tests.test_eval_protocol import BATCH, assert_records_match_official, synthetic_pair, write_folder


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _records(rows: list[dict]) -> list[ImageRecord]:
    """CSV rows as records (IoUs only)."""
    return [
        ImageRecord(
            r["dataset"],
            r["image"],
            iou={o: float(r[f"iou_{o}"]) for o in OUTPUTS},
            biou={o: float(r[f"biou_{o}"]) for o in OUTPUTS},
        )
        for r in rows
    ]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    _, _, config, params = official_model_and_params("tiny_b")
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_b", config, params))


@pytest.mark.slow  # real vit_b runs once in CI: tests/test_parity_official.py::test_vit_b_checkpoint_cli
def test_end_to_end_vit_b_equals_official(tmp_path, capsys) -> None:
    """Real vit_b structure: the official .pth through the converter, two small non-square images (a
    vit_b encoding takes ~20 s per image and framework on a 2-core CI machine), per-image IoU and
    boundary IoU of all three outputs within 1e-3 of the official evaluation."""
    model = official_model_and_params("vit_b")[0]
    ckpt = tmp_path / "sam_hq_vit_b_random.pth"
    torch.save(model.state_dict(), ckpt)
    arrays = write_folder(tmp_path / "synth", [(180, 240), (260, 150)], seed=11)
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "synth"), "--output", str(out)]
    # Batch size 1 keeps the peak memory near 5 GB; batching is covered with the tiny model.
    assert main([*args, "--batch-size", "1", "--pictures", "0"]) == 0
    rows = _csv(out / "per_image.csv")
    assert [r["image"] for r in rows] == ["im0", "im1"]

    assert "| HQ-SAM (HQ token) |" in capsys.readouterr().out
    worst = assert_records_match_official(_records(rows), arrays, model)
    with capsys.disabled():
        print(f"\nvit_b end to end: max |ours - official| per-image IoU / bIoU = {worst:.2e}")
    assert len({r["iou_hq"] for r in rows} | {r["iou_sam"] for r in rows}) == 4  # not a constant mask


def test_tiny_outputs_and_bad_data(tiny_checkpoint, tmp_path, capsys) -> None:
    good = tmp_path / "good"
    write_folder(good, [(100, 150), (150, 90), (120, 120), (90, 200)], seed=3)
    image, mask = synthetic_pair(80, 110, 9)
    (good / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.fromarray(mask).save(good / "masks" / "broken.png")
    Image.fromarray(image).save(good / "images" / "mismatch.png")
    Image.fromarray(mask[:, :-3]).save(good / "masks" / "mismatch.png")
    Image.fromarray(image).save(good / "images" / "empty.png")
    Image.fromarray(np.zeros_like(mask)).save(good / "masks" / "empty.png")
    unlisted = tmp_path / "unlisted"  # an image without a mask: that image is reported, not the folder
    write_folder(unlisted, [(50, 60)])
    (unlisted / "masks" / "im0.png").unlink()

    out = tmp_path / "out"
    argv = ["--checkpoint", tiny_checkpoint, "--data", str(good), "--data", str(unlisted), "--output", str(out)]
    assert main([*argv, "--batch-size", str(BATCH), "--pictures", "1"]) == 0
    err = capsys.readouterr().err
    for text in (
        "unlisted/im0: skipped: cannot read mask",
        "good/broken: skipped: cannot read image",
        "good/mismatch: skipped",
    ):
        assert text in err

    rows = _csv(out / "per_image.csv")
    header = ("dataset", "image", "iou_hq", "biou_hq", "iou_samhq", "biou_samhq", "iou_sam", "biou_sam")
    assert tuple(rows[0]) == CSV_COLUMNS == header
    assert [(r["dataset"], r["image"]) for r in rows] == [("good", f"im{i}") for i in range(4)]
    config, params = ModelConfig.preset("tiny_b"), official_model_and_params("tiny_b")[3]
    records = evaluate_pairs(config, params, folder_pairs(good), BATCH)
    scored = [r for r in records if r.skipped is None]
    for row, rec in zip(rows, scored, strict=True):
        for o in OUTPUTS:
            assert float(row[f"iou_{o}"]) == pytest.approx(rec.iou[o], abs=1e-6)
            assert float(row[f"biou_{o}"]) == pytest.approx(rec.biou[o], abs=1e-6)

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["good", "unlisted", "mean", "run"]
    g = summary["good"]
    assert g["count"] == 4 and g["skipped"] == 3 and set(g["problems"]) == {"broken", "mismatch", "empty"}
    for o in OUTPUTS:
        assert g[o]["miou"] == pytest.approx(100 * np.mean([float(r[f"iou_{o}"]) for r in rows]), abs=1e-3)
        assert summary["mean"][o] == g[o]
    u = summary["unlisted"]
    assert (u["count"], u["skipped"], set(u["problems"]), u["hq"]["miou"]) == (0, 1, {"im0"}, None)
    assert "SAM decoder, HQ token left out" in summary["run"]["sam"]
    assert (summary["run"]["precision"], summary["run"]["dtype"]) == ("highest", "float32")  # the defaults

    md = (out / "summary.md").read_text()
    assert "| model | good | unlisted | avg |" in md and "## Data problems" in md
    assert "| SAM (SAM token of the HQ checkpoint) |" in md
    assert "Numerics: matmul precision highest, compute dtype float32." in md
    assert f"| HQ-SAM (HQ token) | {g['hq']['miou']:.2f} / {g['hq']['mbiou']:.2f} | - |" in md
    pictures = sorted(p.name for p in (out / "pictures").iterdir())
    assert len(pictures) == 2 and pictures[0].startswith("best01_good_") and pictures[1].startswith("worst01_good_")
    gains = {r["image"]: float(r["iou_hq"]) - float(r["iou_sam"]) for r in rows}
    assert pictures[0] == f"best01_good_{max(gains, key=gains.get)}.png"
    assert pictures[1] == f"worst01_good_{min(gains, key=gains.get)}.png"
    assert Image.open(out / "pictures" / pictures[0]).size[0] >= 5 * 90


def test_plain_sam_checkpoint_for_the_sam_row(tiny_checkpoint, tmp_path) -> None:
    """An original SAM (segment-anything, other weights) as ``--sam-checkpoint``: the SAM row is that
    model as the official evaluation runs it, the HQ rows are unchanged."""
    config = ModelConfig.preset("tiny_b")
    sam = build_official(config, seed=4, plain_sam=True)
    # Converted to our format with a stand-in HQ part (unused by the SAM row), as samhq-convert stores a
    # plain SAM; read_weights' own initialisation of the HQ part is tested with the import.
    _, sam_params = state_dict_to_params({k: v.numpy() for k, v in sam.state_dict().items()}, allow_plain_sam=True)
    hq_params = official_model_and_params("tiny_b")[3]
    sam_params["mask_decoder"] = {**hq_params["mask_decoder"], **sam_params["mask_decoder"]}
    sam_path = save_checkpoint(tmp_path / "sam_tiny", config, sam_params, hq_trained=False)
    arrays = write_folder(tmp_path / "set", [(100, 120), (130, 100)], seed=21)
    base = ["--checkpoint", tiny_checkpoint, "--data", str(tmp_path / "set"), "--batch-size", str(BATCH)]
    assert main([*base, "--output", str(tmp_path / "a"), "--pictures", "0"]) == 0
    assert main([*base, "--output", str(tmp_path / "b"), "--pictures", "0", "--sam-checkpoint", str(sam_path)]) == 0
    a, b = _csv(tmp_path / "a" / "per_image.csv"), _csv(tmp_path / "b" / "per_image.csv")
    assert [r["iou_hq"] for r in a] == [r["iou_hq"] for r in b]
    assert [r["iou_sam"] for r in a] != [r["iou_sam"] for r in b]
    assert_records_match_official(_records(b), arrays, official_model_and_params("tiny_b")[0], sam_model=sam)
    run = json.loads((tmp_path / "b" / "summary.json").read_text())["run"]
    assert run["sam_checkpoint"] == str(sam_path) and "original SAM" in run["sam"]
    assert "\n| SAM | " in (tmp_path / "b" / "summary.md").read_text()


def test_paper_table_next_to_ours() -> None:
    paper = paper_results()
    assert paper["datasets"] == list(HQSEG_VAL)
    for model, outputs in paper["results"].items():
        for o, by_set in outputs.items():
            sets = [by_set[n] for n in paper["datasets"] if n in by_set]
            if sets:  # per-dataset numbers average to the published 4-set mean (to its rounding)
                for m in ("miou", "mbiou"):
                    assert abs(np.mean([s[m] for s in sets]) - by_set["mean"][m]) <= 0.05, (model, o, m)
    ours = {
        n: {o: {"miou": 80.0, "mbiou": 70.0} for o in OUTPUTS} | {"count": 1, "skipped": 0, "problems": {}}
        for n in HQSEG_VAL
    }
    ours["mean"] = {o: {"miou": 80.0, "mbiou": 70.0} for o in OUTPUTS} | {"datasets": list(HQSEG_VAL)}
    md = summary_markdown(ours, "ckpt", "sam.pth", "vit_l")
    # DIS5K-VD: HQ-SAM-L 78.6 / 70.4 -> +1.40 / -0.40; average 89.1 / 81.8 -> -9.10 / -11.80.
    assert "| HQ-SAM-L (paper) | 78.6 / 70.4 | 94.8 / 90.1 | 93.6 / 86.9 | 89.5 / 79.9 | 89.1 / 81.8 |" in md
    assert (
        "| HQ-SAM: ours - paper | +1.40 / -0.40 | -14.80 / -20.10 | -13.60 / -16.90 | -9.50 / -9.90 | -9.10 / -11.80 |"
        in md
    )
    md_b = summary_markdown(ours, "ckpt", None, "vit_b")
    assert (
        "| SAM-B (paper) | - | - | - | - | 70.6 / 62.3 |" in md_b
        and "| SAM: ours - paper | - | - | - | - | +9.40 / +7.70 |" in md_b
    )


def _exit(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def test_errors_are_one_line_and_exit_2(tiny_checkpoint, tmp_path, capsys) -> None:
    data = tmp_path / "set"
    write_folder(data, [(60, 70)])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    ok = ["--checkpoint", tiny_checkpoint, "--output", str(tmp_path / "out")]
    cases = {
        "batch size 0": ([*ok, "--data", str(data), "--batch-size", "0"], "--batch-size"),
        "no data": (ok, "give --data"),
        "both data flags": ([*ok, "--data", str(data), "--data-root", str(tmp_path)], "not both"),
        "missing folder": ([*ok, "--data", str(tmp_path / "nope")], "no folder"),
        "missing root": ([*ok, "--data-root", str(tmp_path / "nope")], "no folder"),
        "unknown dataset": ([*ok, "--data-root", str(tmp_path), "--datasets", "COIFT,Foo"], "Foo"),
        "datasets without root": ([*ok, "--data", str(data), "--datasets", "COIFT"], "--datasets needs --data-root"),
        "nothing listable": ([*ok, "--data-root", str(tmp_path), "--datasets", "COIFT"], "no dataset could be listed"),
        "unreadable checkpoint": (["--checkpoint", str(garbage), "--data", str(data), "--output", "x"], "--checkpoint"),
        "missing checkpoint": (
            ["--checkpoint", str(tmp_path / "none.pth"), "--data", str(data), "--output", "x"],
            "none",
        ),
        "paper vs tiny": ([*ok, "--data", str(data), "--paper", "vit_l"], "not the vit_l structure"),
        "bad sam checkpoint": ([*ok, "--data", str(data), "--sam-checkpoint", str(garbage)], "--sam-checkpoint"),
    }
    for what, (argv, text) in cases.items():
        code, err = _exit(argv, capsys)
        lines = err.splitlines()
        assert code == 2, (what, err)
        assert lines[-1].startswith("samhq-eval: error:") and text in lines[-1] and "Traceback" not in err, (what, err)
        assert len([x for x in lines if x.startswith("samhq-eval: error")]) == 1, (what, err)


def test_python_m_eval() -> None:
    argv = [sys.executable, "-m", "eval", "--checkpoint", "x", "--output", "y", "--limit", "0"]
    run = subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("samhq-eval: error: argument --limit")
