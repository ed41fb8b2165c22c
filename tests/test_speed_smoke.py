"""Smoke test of ``samhq-bench`` (:mod:`eval.bench.speed`): one in-process ``--quick`` run on the tiny
preset, fp32 rows only (each bf16 row costs three more compilations). It checks that every
expected row is measured and written, not how fast anything is."""

from __future__ import annotations

import json

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
