"""The Markdown report of ``samhq-bench`` (:mod:`eval.bench.speed`), from its JSON result."""

from __future__ import annotations

from typing import Any

MIB = 1 << 20
COLUMNS = (
    "stage",
    "implementation",
    "called as",
    "median ms",
    "min-max ms",
    "ms / prompt",
    "compile s",
    "GFLOP",
    "GFLOP/s",
    "% peak",
    "memory",
    "÷ official fp32",
    "÷ official bf16",
)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "" if value is None else format(value * scale, fmt)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def mib(n: int | None) -> str:
    """``n`` bytes as whole MiB with thousands separators (no unit); ``"n/a"`` for None."""
    return "n/a" if n is None else f"{n / MIB:,.0f}"


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{mib(n)} MiB"


def memory_text(memory: dict[str, Any]) -> str:
    """The memory cell: XLA's buffer plan (ours), then the probe of one call."""
    parts = []
    xla = memory.get("xla")
    if xla and xla.get("total_bytes") is not None:
        parts.append(f"XLA {_mib(xla['total_bytes'])} (temp {_mib(xla['temp_bytes'])})")
    if "rss_peak_delta_bytes" in memory:
        parts.append(f"RSS +{_mib(memory['rss_peak_delta_bytes'])}")
    if "cuda_peak_delta_bytes" in memory:
        parts.append(f"CUDA +{_mib(memory['cuda_peak_delta_bytes'])}")
    if "skipped" in memory:
        parts.append(f"not probed ({memory['skipped']})")
    if "device_process_peak_bytes" in memory:
        parts.append(f"device peak {_mib(memory['device_process_peak_bytes'])} (process)")
    return "; ".join(parts) or "n/a"


def _cells(row: dict[str, Any], mark: str) -> list[str]:
    star = "*" if row["extrapolated"] else ""
    return [
        row["stage"],
        row["label"] + mark,
        row["mode"],
        _ms(row["median_s"]) + star,
        f"{_ms(row['min_s'])}-{_ms(row['max_s'])}",
        _ms(row["per_prompt_s"]),
        _num(row["compile_s"], ".2f"),
        _num(row["flops"], ".3g", 1e-9),
        _num(row["achieved_flops_per_s"], ".3g", 1e-9),
        _num(row["peak_fraction"], ".1f", 100.0),
        memory_text(row["memory"]),
        _ratio(row["ratio_official_fp32"]),
        _ratio(row["ratio_official_bf16"]),
    ]


def table(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The Markdown table and its footnotes (each distinct row note, numbered)."""
    notes: list[str] = []
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        mark = ""
        if row["note"]:
            if row["note"] not in notes:
                notes.append(row["note"])
            mark = f" [{notes.index(row['note']) + 1}]"
        lines.append("| " + " | ".join(_cells(row, mark)) + " |")
    return "\n".join(lines), [f"[{n}] {note}" for n, note in enumerate(notes, 1)]


def _load(values: list[float] | None) -> str:
    return "n/a" if not values else "/".join(f"{v:.2f}" for v in values)


def _header(result: dict[str, Any]) -> list[str]:
    env, settings, peak = result["environment"], result["settings"], result["peak"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    h, w = settings["image_size"]
    client = ", ".join(f"{k}={v}" for k, v in env["xla_client_env"].items()) or "no XLA_PYTHON_CLIENT_* set"
    return [
        f"# samhq-bench: {settings['model']}",
        "",
        f"- date: {env['date']}",
        f"- JAX device: {env['jax_device']}; CPU: {env['cpu_model']}; torch device: {env['torch_device']}",
        f"- versions: {versions}",
        f"- XLA_FLAGS: `{env['xla_flags'] or '(unset)'}`; {client}; jax_default_matmul_precision: "
        f"{env['jax_default_matmul_precision']} (ours: SamHQPredictor precision={settings.get('ours_precision')}); "
        f"JAX compilation cache: {env['jax_compilation_cache_dir'] or 'off'}",
        f"- threads: XLA CPU {env['xla_cpu_threads']} (the schedulable CPUs, XLA's default); torch intra-op "
        f"{env['torch_threads']}, inter-op {env['torch_interop_threads']}; official low-precision rows: "
        f"torch.autocast({env['torch_device']!r}, {env['torch_autocast_dtype']})",
        f"- load average (1/5/15 min) at start {_load(env.get('load_average_start'))}, at end "
        f"{_load(env.get('load_average_end'))}, on {env['xla_cpu_threads']} CPUs (above that, other work shared them)",
        f"- peak: {peak['source']}",
        f"- inputs: seed {settings['seed']} random weights (same in every implementation), a {h}x{w} random "
        f"image, random boxes; {settings['repeats']} timed calls after {settings['warmup']} warm-up; "
        f"implementations: {', '.join(settings['implementations'])}",
    ]


def _decoder_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per prompt count, our fp32 single call against the official one-predict-per-prompt loop."""
    lines = []
    for p in sorted({r["size"] for r in rows if r["kind"] == "decoder"}):
        stage = [r for r in rows if r["kind"] == "decoder" and r["size"] == p]
        ours = next((r for r in stage if r["impl"] == "ours-fp32"), None)
        loop = next((r for r in stage if r["impl"] == "official-fp32" and not r["baseline"]), None)
        if ours and loop:
            lines.append(
                f"- {p} prompts: ours fp32 in one call {_ms(ours['median_s'])} ms vs the official's predict per "
                f"prompt {_ms(loop['median_s'])} ms{' (extrapolated)' if loop['extrapolated'] else ''}: "
                f"{loop['median_s'] / ours['median_s']:.1f}x faster"
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The whole report: header, table, how to read it, notes, first-call lines."""
    rows = result["rows"]
    body, notes = table(rows)
    text = [
        *_header(result),
        "",
        body,
        "",
        "Times are the whole stage per call, the rows of a stage timed round-robin; `*`: extrapolated from the "
        "calls timed (official predict per prompt). compile s: our first call minus the warm median (with the "
        "JAX compilation cache on, a cache load where it holds the program). GFLOP: XLA's cost_analysis of our fp32 "
        "program for the stage (decoder: prompt encoder + HQ decoder, without post-processing to the image "
        "size), credited to every row of the stage; % peak against the peak above (bf16 rows on CPU against "
        "the fp32 matmul peak). memory: XLA = our compiled program's buffer plan (memory_analysis: temp + "
        "arguments incl. weights + outputs); RSS + = the peak rise of the process's resident memory during one "
        "call, sampled every 0.5 ms (crude: allocator caches hide reused memory). ÷ official: this row's "
        "median over the official row of the stage (for P > 1 prompts over its predict_torch batched call), "
        "< 1 is faster. HF's decoder and end-to-end rows include its processor's post_process_masks. amg rows: "
        "one whole generate() (the image encoded inside it), official defaults but the grid; the official "
        "generator is timed in fp32 only (under bf16 autocast its predict path meets bf16 tensors).",
    ]
    summary = _decoder_summary(rows)
    if summary:
        text += ["", *summary]
    if notes:
        text += ["", *notes]
    if result.get("cold"):
        from eval.bench.cold import describe

        text += ["", describe(result["cold"])]
    return "\n".join(text) + "\n"
