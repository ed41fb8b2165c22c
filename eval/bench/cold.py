"""``samhq-bench --cold``: the first call of a fresh process, twice.

A checkpoint is saved; then two fresh ``python -c`` processes in turn load it with
:meth:`SamHQPredictor.from_pretrained` and run ``set_image`` + one box ``predict`` (what
``samhq predict`` does), each timing its imports, the load, the first (compiling) call and a second
call. Both processes share one JAX persistent compilation cache folder (``JAX_COMPILATION_CACHE_DIR``,
fresh unless the environment names one), so the second process shows what that cache saves, if the
installed samhq-jax / JAX use it; whatever is measured is reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from samhq_jax.config import ModelConfig

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
COLD_TIMEOUT_S = 1800
SCRIPT = """
import time
start = time.perf_counter()
import json, sys
import numpy as np
from samhq_jax.predictor import SamHQPredictor
imported = time.perf_counter()
predictor = SamHQPredictor.from_pretrained(sys.argv[1])
loaded = time.perf_counter()
h, w = int(sys.argv[2]), int(sys.argv[3])
image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
box = np.array([w * 0.2, h * 0.2, w * 0.7, h * 0.8])
predictor.set_image(image)
predictor.predict(box=box, multimask_output=False)
first = time.perf_counter()
predictor.set_image(image)
predictor.predict(box=box, multimask_output=False)
second = time.perf_counter()
import jax
print(json.dumps({
    "import_s": imported - start, "load_s": loaded - imported, "first_call_s": first - loaded,
    "second_call_s": second - first, "total_to_first_mask_s": first - start,
    "cache_dir": jax.config.jax_compilation_cache_dir,
}))
"""


def _files(folder: str | None) -> int | None:
    """Files below ``folder`` (the persistent cache's entries), None without a folder."""
    if not folder or not Path(folder).is_dir():
        return None
    return sum(1 for p in Path(folder).rglob("*") if p.is_file())


def _one_process(checkpoint: Path, size: tuple[int, int], env: dict[str, str]) -> dict[str, Any]:
    """Run :data:`SCRIPT` once in a fresh interpreter; its figures plus the process's wall time."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(checkpoint), str(size[0]), str(size[1])],
        capture_output=True,
        text=True,
        env=env,
        timeout=COLD_TIMEOUT_S,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit status {done.returncode}: {tail}", "process_wall_s": wall}
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "process_wall_s": wall}


def cold_start(config: ModelConfig, params: dict, size: tuple[int, int], folder: Path) -> dict[str, Any]:
    """Save ``(config, params)`` below ``folder`` and time two fresh processes' first mask on an
    image of ``size = (H, W)``; returns ``{"cache_dir", "runs": [first, second]}``."""
    from samhq_jax.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(folder / "checkpoint", config, host_params(params), source="samhq-bench --cold")
    env = dict(os.environ)
    cache = env.get(CACHE_ENV) or tempfile.mkdtemp(prefix="jax-cache-", dir=folder)
    env[CACHE_ENV] = cache
    runs = []
    for _ in range(2):
        before = _files(cache)
        run = _one_process(checkpoint, size, env)
        run["cache_files_before"], run["cache_files_after"] = before, _files(cache)
        runs.append(run)
    return {"cache_dir": cache, "runs": runs}


def host_params(params: dict) -> dict:
    """``params`` with NumPy leaves (device arrays copied to the host)."""
    import jax

    return jax.tree.map(np.asarray, params)


def describe(result: dict[str, Any]) -> str:
    """The first-call line(s) of the report."""
    lines = [f"first call in a fresh process (JAX persistent cache folder {result['cache_dir']}):"]
    for n, run in enumerate(result["runs"], 1):
        if "error" in run:
            lines.append(f"- process {n}: failed ({run['error']})")
            continue
        lines.append(
            f"- process {n}: {run['total_to_first_mask_s']:.2f} s to the first mask (imports {run['import_s']:.2f} s, "
            f"load {run['load_s']:.2f} s, first set_image + predict {run['first_call_s']:.2f} s; second call "
            f"{run['second_call_s']:.3f} s); process wall {run['process_wall_s']:.2f} s; cache files "
            f"{run['cache_files_before']} -> {run['cache_files_after']}; the process saw cache dir {run['cache_dir']}"
        )
    return "\n".join(lines)
