"""The device suite (``scripts/device_suite.sh``): its ``--smoke`` run end to end on the CPU (so the
one call on a lent GPU cannot rot), and the bars of its headline table on hand-made figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.bench.device_suite import FULL, SECTIONS, headline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("device-suite")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", "scripts/device_suite.sh", "--smoke", "--output", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    return proc, out


def test_smoke_runs_every_section_and_prints_the_table_last(smoke) -> None:
    proc, out = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "device_suite.json").read_text())
    assert [(o["name"], o["status"]) for o in data["outcomes"]] == [(name, "ok") for name in SECTIONS]
    table = (out / "device_suite.md").read_text()
    assert proc.stdout.endswith(table)
    assert "| figure | measured | bar | verdict |" in table
    assert "===== train =====" in (out / "device_suite.log").read_text()


def test_smoke_parity_holds_against_the_official_model(smoke) -> None:
    _, out = smoke
    parity = json.loads((out / "device_suite.json").read_text())["sections"]["parity"]
    # embedding, early feature, then logits and IoU for each of the 4 flag pairs
    assert len(parity["errors"]) == 2 + 2 * 4
    assert parity["worst_error"] <= 1e-4
    assert parity["lowest_mask_agreement"] >= 0.9999


def test_smoke_measures_each_stage(smoke) -> None:
    _, out = smoke
    data = json.loads((out / "device_suite.json").read_text())
    sections = data["sections"]
    for key in ("encoder_b", "encoder_h"):
        rows = sections[key]["rows"]
        assert {r["kind"] for r in rows} == {"encoder"}
        encoder = {(r["impl"], r["size"]) for r in rows}
        assert {("ours-bf16", 2), ("ours-fp32", 2), ("official-fp32", 2), ("hf-fp32", 2)} <= encoder
        assert all(r["median_s"] > 0 for r in rows)
    assert {r["impl"] for r in sections["amg"]["rows"]} >= {"ours-fp32", "official-fp32"}
    decoder = {(r["kind"], r["size"]) for r in sections["decoder"]["rows"]}
    assert decoder == {("decoder", 1), ("decoder", 4), ("end_to_end", 1)}
    assert sections["peak"]["bf16_peak_tflops"] > 0
    assert sections["train"]["results"][0]["examples_per_s"] > 0
    # memory: XLA's analysis of the encoder programs and of the compiled train step
    for key in ("encoder_b", "encoder_h"):
        for r in sections[key]["rows"]:
            if r["family"] == "ours":
                assert r["memory"]["xla"]["temp_bytes"] > 0 and r["memory"]["xla"]["argument_bytes"] > 0, r
    assert sections["train"]["results"][0]["xla_memory"]["temp_bytes"] > 0
    table = (out / "device_suite.md").read_text()
    assert "(temp " in table and "XLA temp " in table
    verdicts = {h["figure"]: h["verdict"] for h in data["headline"]}
    assert any(f.startswith("parity") and v == "pass" for f, v in verdicts.items())
    assert any(f.startswith("segment everything") and v in ("pass", "FAIL") for f, v in verdicts.items())


def test_smoke_attention_paths_equal_the_blocked_one(smoke) -> None:
    _, out = smoke
    attention = json.loads((out / "device_suite.json").read_text())["sections"]["attention"]
    for model, paths in attention["models"].items():
        assert "blocked" in paths and "extended" in paths, model
        for name, row in paths.items():
            if "error" in row:  # cuDNN's fused attention exists on GPUs only
                assert name == "cudnn" and attention["platform"] != "gpu"
                continue
            assert row["relative_error_vs_blocked"] <= 2e-2, (model, name)  # bf16 compute


def _encoder(model: str, ours_s: float, official_s: float, flops: float) -> dict:
    rows = [
        {"kind": "encoder", "impl": "ours-bf16", "size": 8, "baseline": True, "median_s": ours_s, "flops": flops},
        {"kind": "encoder", "impl": "official-bf16", "size": 8, "baseline": True, "median_s": official_s},
    ]
    rows[0]["ratio_official_bf16"] = ours_s / official_s
    return {"settings": {"model": model}, "rows": rows}


def test_headline_bars_by_hand() -> None:
    """Peak 100 TFLOP/s; vit_b: 50 TFLOP in 1 s is 50 % (pass), 0.4 s against 1 s is 0.4x (pass);
    vit_h: 30 TFLOP in 1 s is 30 % (fail), 1 s against 1.5 s is 0.67x (fail); AMG 0.5 / 2 = 0.25x (pass)."""
    results = {
        "peak": {"n": 8192, "jax_bf16_tflops": 90.0, "torch_bf16_tflops": 100.0, "bf16_peak_tflops": 100.0},
        "parity": {
            "model": "vit_b",
            "torch_device": "cuda",
            "worst_error": 3e-5,
            "worst_stage": "image embedding",
            "lowest_mask_agreement": 0.99995,
        },
        "encoder_b": _encoder("vit_b", 1.0, 2.5, 50e12),
        "encoder_h": _encoder("vit_h", 1.0, 1.5, 30e12),
        "amg": {
            "settings": {"model": "vit_b"},
            "rows": [
                {"kind": "amg", "impl": "ours-fp32", "size": 32, "baseline": True, "median_s": 0.5},
                {"kind": "amg", "impl": "official-fp32", "size": 32, "baseline": True, "median_s": 2.0},
            ],
        },
    }
    got = {figure: (measured, verdict) for figure, measured, _, verdict in headline(results, FULL)}
    assert got["encoder vit_b bf16 batch 8: fraction of the bf16 peak"] == ("50.0 %", "pass")
    assert got["encoder vit_b batch 8: ours bf16 / official bf16 autocast"] == ("0.40x", "pass")
    assert got["encoder vit_h bf16 batch 8: fraction of the bf16 peak"] == ("30.0 %", "FAIL")
    assert got["encoder vit_h batch 8: ours bf16 / official bf16 autocast"] == ("0.67x", "FAIL")
    assert got["segment everything 32x32: ours-fp32 / official fp32"] == ("0.25x", "pass")
    assert got["segment everything 32x32: ours-bf16 / official fp32"] == ("n/a", "not measured")
    parity = next(v for k, v in got.items() if k.startswith("parity vit_b"))
    assert parity == ("3.00e-05 (image embedding)", "pass")
