"""Our checkpoint format and :func:`load_pretrained`.

A checkpoint is a directory with ``config.json`` (``{"format": "samhq_jax", "config": ...}``) and
``model.safetensors`` keyed by ``/``-joined parameter paths (``mask_decoder/hq_token``), float32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file

from samhq_jax.config import SamHQConfig

FORMAT = "samhq_jax"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(path: str | os.PathLike, config: SamHQConfig, params: Any, source: str = "") -> Path:
    """Write ``config.json`` and ``model.safetensors`` into directory ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten_dict(params, sep="/").items()}
    save_file(flat, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(), "source": source}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def is_checkpoint_dir(path: Path) -> bool:
    cfg = path / CONFIG_FILE
    return cfg.is_file() and json.loads(cfg.read_text()).get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike) -> tuple[SamHQConfig, dict]:
    """Read a directory written by :func:`save_checkpoint`; checks every tensor against the config."""
    from convert.core import ConversionError, check_params

    path = Path(path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format_version {meta.get('format_version')}")
    config = SamHQConfig.from_dict(meta["config"])
    flat = load_file(str(path / WEIGHTS_FILE))
    problems = check_params(flat, config, None)
    if problems:
        raise ConversionError(f"{path} does not fit its own config ({config.name}):\n" + "\n".join(problems))
    return config, unflatten_dict(flat, sep="/")


def _resolve_hub(repo_id: str) -> Path:
    """Local snapshot folder of a hub repo (honours ``HF_HUB_OFFLINE`` and the hub cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and loading from the hub needs huggingface_hub "
            "(pip install 'samhq-jax[hub]')"
        ) from err
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.json"]))
    except Exception as err:  # offline and not cached, unknown repo, no network
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and the hub repo could not be fetched or found in the cache: {err}"
        ) from err


def load_numpy(path: str | os.PathLike) -> tuple[SamHQConfig, dict]:
    """:func:`load_pretrained` with numpy float32 leaves (no device transfer), for conversion tools."""
    from convert.sources import load_torch_checkpoint

    local = Path(path)
    if not local.exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/")):
        local = _resolve_hub(str(path))
    if local.is_dir() and is_checkpoint_dir(local):
        return load_checkpoint(local)
    return load_torch_checkpoint(local)


def load_pretrained(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32) -> tuple[SamHQConfig, dict]:
    """Load SAM-HQ weights from any supported source and return ``(config, params)``.

    ``path`` may be one of our checkpoint directories, an official SysCV checkpoint file (``.pth``
    or ``.safetensors``), a Hugging Face ``SamHQModel`` folder, or a hub repo id such as
    ``syscv-community/sam-hq-vit-base`` (resolved through the local hub cache; set
    ``HF_HUB_OFFLINE=1`` to stay offline). Foreign formats are converted on the fly. Parameters are
    returned as jax arrays of ``dtype``.
    """
    config, params = load_numpy(path)
    return config, jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
