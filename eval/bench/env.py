"""Measurement primitives of ``samhq-bench`` (:mod:`eval.bench.speed`): wall-clock timing, XLA's compile
analyses, memory probes, the device's peak FLOP/s and the environment header.

Nothing here knows about SAM-HQ; :mod:`eval.bench.impls` wraps each implementation's calls into
the zero-argument callables timed here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MIB = 1 << 20
RSS_SAMPLE_S = 0.0005  # the RSS sampler's period
# Dense peak TFLOP/s (bf16, fp32) by ``jax.devices()[0].device_kind`` substring, lower case.
KNOWN_GPU_PEAKS_TFLOPS: dict[str, tuple[float, float]] = {
    "h200": (989.0, 67.0),  # same compute as H100 SXM
    "h100": (989.0, 67.0),  # H100 SXM dense
    "a100": (312.0, 19.5),
}
PACKAGES = ("jax", "jaxlib", "flax", "torch", "transformers", "segment-anything-hq")


# ---- timing -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of one callable: its first (cold) call and the warm ones after warm-up;
    ``cut``: fewer calls than asked for, the calls being over the time budget."""

    first_s: float
    times_s: list[float]
    cut: bool = False

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    def scaled(self, factor: float) -> Timing:
        """Every time multiplied by ``factor`` (a per-call time extrapolated to ``factor`` calls)."""
        return Timing(self.first_s * factor, [t * factor for t in self.times_s], self.cut)


def time_interleaved(
    fns: list[Callable[[], Any]], repeats: int, warmup: int = 1, budget_s: float | None = None
) -> list[Timing]:
    """Time each of ``fns`` (zero-argument calls that finish their work before returning:
    ``jax.block_until_ready``, a host copy, ``torch.cuda.synchronize``): its first call alone
    (compilation included for JAX), ``warmup - 1`` further untimed calls, then ``repeats`` timed
    calls, taken round-robin (one of each in turn) so that other work on a shared machine slows
    them alike rather than whichever ran when it came.

    With ``budget_s`` (seconds for one function's calls after the first), a function whose first
    call shows that they could take longer gets no further warm-up and one call timed at once (its
    first may have been mostly compilation); by that warm call, as many timed calls in all as fit
    the budget (at least one): ``cut`` when that is fewer than ``repeats``.
    """

    def timed(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    firsts = [timed(fn) for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    plan = []
    extra = max(warmup, 1) - 1
    for fn, first, done in zip(fns, firsts, times, strict=True):
        if budget_s is None or first * (extra + repeats) <= budget_s:
            for _ in range(extra):
                fn()
            plan.append(repeats)
        else:
            done.append(timed(fn))
            plan.append(max(1, min(repeats, int(budget_s // done[0]))))
    for _ in range(repeats):
        for fn, done, wanted in zip(fns, times, plan, strict=True):
            if len(done) < wanted:
                done.append(timed(fn))
    return [Timing(f, t, cut=n < repeats) for f, t, n in zip(firsts, times, plan, strict=True)]


def blocking(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` whose JAX outputs are waited for (async dispatch would otherwise time nothing)."""
    return lambda: jax.block_until_ready(fn())


# ---- XLA's own figures --------------------------------------------------------------------------
# XlaAnalysis field <- jaxlib's CompiledMemoryStats attribute (what a backend leaves out stays None).
MEMORY_FIELDS = {
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
    "peak_bytes": "peak_memory_in_bytes",
}


@dataclasses.dataclass
class XlaAnalysis:
    """What XLA says about one compiled program: FLOPs and its buffer plan, in bytes (None: not reported).

    ``argument_bytes``: the inputs (parameters included); ``output_bytes``: the outputs;
    ``alias_bytes``: outputs that reuse a donated input's buffer; ``temp_bytes``: the scratch the
    program needs besides; ``generated_code_bytes``: the compiled code; ``peak_bytes``: XLA's own
    peak of the buffers live at once, where the backend reports one (jaxlib >= 0.4.36).
    """

    flops: float | None
    temp_bytes: int | None = None
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    generated_code_bytes: int | None = None
    peak_bytes: int | None = None

    @property
    def total_bytes(self) -> int | None:
        """Arguments + outputs + temp, aliased outputs counted once: the program's whole footprint."""
        parts = (self.temp_bytes, self.argument_bytes, self.output_bytes)
        if any(p is None for p in parts):
            return None
        return sum(parts) - (self.alias_bytes or 0)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def analyse_compiled(compiled: Any) -> XlaAnalysis:
    """``cost_analysis()["flops"]`` and ``memory_analysis()`` of a ``jax.stages.Compiled``, where this
    backend reports them (a missing or None field stays None)."""
    flops = None
    with contextlib.suppress(Exception):
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) if cost and cost.get("flops", -1) >= 0 else None
    result = XlaAnalysis(flops)
    mem = None
    with contextlib.suppress(Exception):
        mem = compiled.memory_analysis()
    for name, attribute in MEMORY_FIELDS.items():
        value = getattr(mem, attribute, None)
        if value is not None:
            setattr(result, name, int(value))
    return result


def analyse(lowered: Any) -> XlaAnalysis:
    """Compile ``jax.jit(f).lower(...)`` (a cache hit when ``f`` already ran with these shapes) and
    read its :func:`analyse_compiled` figures."""
    return analyse_compiled(lowered.compile())


# ---- memory probes ------------------------------------------------------------------------------
def _rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def sampled_rss_peak(fn: Callable[[], Any]) -> int | None:
    """Peak RSS rise (bytes) during one call of ``fn``, sampled every :data:`RSS_SAMPLE_S` by a
    thread: crude (allocator caches hide reused memory, short spikes can be missed), None where RSS
    cannot be read."""
    base = _rss_bytes()
    if base is None:
        return None
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes() or 0)
            time.sleep(RSS_SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes() or 0)
    return peak[0] - base


def torch_cuda_peak(fn: Callable[[], Any]) -> int | None:
    """Peak bytes torch allocated on CUDA above what it held before, during one call of ``fn``."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def jax_device_peak() -> int | None:
    """``peak_bytes_in_use`` of the default JAX device: the process's high-water mark so far (XLA
    cannot reset it), None on backends without memory stats (CPU)."""
    with contextlib.suppress(Exception):
        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"])
    return None


# ---- the device's peak --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Peak:
    """Peak FLOP/s to divide achieved FLOP/s by: fp32 and bf16 (the same figure where only one is known)."""

    fp32: float
    bf16: float
    source: str

    def for_dtype(self, dtype: str) -> float:
        return self.bf16 if dtype == "bf16" else self.fp32


def measured_matmul_peak(n: int = 4096, repeats: int = 3) -> float:
    """FLOP/s of the best of ``repeats`` warm ``(n, n) @ (n, n)`` fp32 XLA matmuls on the default device."""
    rng = np.random.default_rng(0)
    a, b = (jax.device_put(rng.standard_normal((n, n), np.float32)) for _ in range(2))
    matmul = jax.jit(jnp.matmul)
    (timing,) = time_interleaved([blocking(lambda: matmul(a, b))], repeats)
    return 2.0 * n**3 / timing.min_s


def device_peak(gflops: float | None, matmul_n: int) -> Peak:
    """``--peak-gflops`` when given; else a known GPU's dense peak by its kind; else (CPU, unknown
    GPUs) a large fp32 matmul measured here with XLA."""
    if gflops is not None:
        return Peak(gflops * 1e9, gflops * 1e9, f"--peak-gflops {gflops:g}")
    device = jax.devices()[0]
    kind = device.device_kind.lower()
    if device.platform == "gpu":
        for name, (bf16, fp32) in KNOWN_GPU_PEAKS_TFLOPS.items():
            if name in kind:
                return Peak(
                    fp32 * 1e12,
                    bf16 * 1e12,
                    f"known peak of {device.device_kind}: bf16 {bf16:g}, fp32 {fp32:g} TFLOP/s dense",
                )
    flops = measured_matmul_peak(matmul_n)
    shape = f"{matmul_n}x{matmul_n}x{matmul_n}"
    return Peak(flops, flops, f"measured matmul peak: {shape} fp32 XLA matmul, {flops / 1e9:.1f} GFLOP/s")


# ---- the environment ----------------------------------------------------------------------------
def schedulable_cpus() -> int:
    """CPUs this process may run on (XLA's CPU client sizes its thread pool by them)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    """``model name`` of ``/proc/cpuinfo`` (the platform's processor string elsewhere)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (``"not installed"`` for those missing)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def load_average() -> list[float] | None:
    """The 1 / 5 / 15 minute load averages (other work on a shared machine skews every time), or None."""
    with contextlib.suppress(AttributeError, OSError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def environment(xla_threads: int, torch_info: dict[str, Any]) -> dict[str, Any]:
    """The header of a run: date, hardware, versions, XLA flags and precision, thread counts."""
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_device": f"{device.platform}: {device.device_kind} (x{jax.device_count()})",
        "cpu_model": cpu_model(),
        "versions": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_client_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("XLA_PYTHON_CLIENT_")},
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "xla_cpu_threads": xla_threads,
        "load_average_start": load_average(),
        **torch_info,
    }


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Third-party warnings (timm deprecations, transformers notices) silenced inside."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
