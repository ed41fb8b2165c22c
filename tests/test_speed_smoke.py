"""Smoke test of ``samhq-bench`` (:mod:`eval.bench.speed`): one in-process ``--quick`` run on the tiny
preset, fp32 rows only (each bf16 row costs three more compilations). It checks that every
expected row is measured and written, not how fast anything is."""

from __future__ import annotations

import json

import pytest

from eval.bench.memory import programs
from eval.bench.speed import main

QUICK = ["--quick", "--repeats", "1", "--skip", "hf,bf16", "--per-prompt-calls", "2"]
IMPLS = {"ours-fp32", "official-fp32"}
STAGES = {("encoder", 1), ("decoder", 1), ("decoder", 16), ("end_to_end", 1), ("amg", 4)}


def test_quick_run_writes_every_row(tmp_path):
    out = tmp_path / "bench"
    assert main([*QUICK, "--output", str(out)]) == 0
    result = json.loads((out / "speed.json").read_text())
    rows = result["rows"]
    assert {(r["kind"], r["size"]) for r in rows} == STAGES
    for stage in STAGES:
        assert {r["impl"] for r in rows if (r["kind"], r["size"]) == stage} == IMPLS, stage
    # 16 prompts: the official's one predict per prompt (extrapolated from 2 calls) and predict_torch batched.
    official16 = [r for r in rows if r["impl"] == "official-fp32" and (r["kind"], r["size"]) == ("decoder", 16)]
    assert sorted(r["extrapolated"] for r in official16) == [False, True]
    for r in rows:
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"], r
        assert r["ratio_official_fp32"] > 0, r
        if r["kind"] == "amg":  # a whole generate(): no single program to count FLOPs of
            continue
        assert r["flops"] > 0 and r["achieved_flops_per_s"] > 0, r
        if r["family"] == "ours" and r["kind"] != "end_to_end":
            assert r["compile_s"] >= 0 and r["memory"]["xla"]["flops"] > 0, r
    assert result["peak"]["fp32"] > 0
    assert result["environment"]["torch_threads"] == result["environment"]["xla_cpu_threads"]
    md = (out / "speed.md").read_text()
    assert "| stage |" in md and "| decoder 16 prompts | ours fp32 |" in md


def test_memory_mode_compiles_without_weights_or_timing(tmp_path):
    """``--memory``: the encoder and a decoder of tiny_b compiled on abstract inputs, XLA's figures
    written; the train-step programs listed with and without remat for each rule and dtype (compiling
    one takes ~40 s here: ``tests/test_remat.py`` lowers them)."""
    out = tmp_path / "memory"
    assert main(["--memory", "--quick", "--skip", "train,bf16", "--prompts", "4", "--output", str(out)]) == 0
    rows = json.loads((out / "memory.json").read_text())["rows"]
    assert [(r["program"], r["model"], r["size"], r["dtype"]) for r in rows] == [
        ("encoder", "tiny_b", 1, "fp32"),
        ("decoder", "tiny_b", 4, "fp32"),
    ]
    for r in rows:
        x = r["xla"]
        assert x["argument_bytes"] > 0 and x["output_bytes"] > 0 and x["temp_bytes"] > 0, r
        assert x["total_bytes"] == x["argument_bytes"] + x["output_bytes"] + x["temp_bytes"] - x["alias_bytes"]
    assert "| encoder | tiny_b | 1 | fp32 |" in (out / "memory.md").read_text()
    listed = programs(["tiny_b"], [1], [4], [2], ["decoder", "all"], set(), "highest")
    train = [(w["dtype"], w["trainable"], w["remat"]) for w, _ in listed if w["program"] == "train"]
    assert train == [(d, t, r) for d in ("fp32", "bf16") for t in ("decoder", "all") for r in (False, True)]


def test_memory_flags_are_checked():
    for argv in (["--train-batch", "2"], ["--model", "tiny_b,tiny_h"], ["--memory", "--skip", "amg"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--quick", *argv])
        assert exit_.value.code == 2, argv
