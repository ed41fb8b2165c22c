"""Our checkpoint format, and the one place that reads weights of every format.

A checkpoint is a directory with ``config.json`` (``{"format": "samhq_jax", "config": ...,
"hq_trained": bool}``) and ``model.safetensors`` keyed by ``/``-joined parameter paths
(``mask_decoder/hq_token``), float32.

:func:`read_weights` dispatches on what ``path`` is (our directory, an official ``.pth`` /
``.safetensors`` file, a Hugging Face folder, a hub repo id) and accepts original SAM checkpoints,
whose HQ parameters it initialises as PyTorch would. :func:`load_pretrained` (predictor, CLI) and the
training entry point both go through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file

from samhq_jax.config import SamHQConfig
from samhq_jax.hq_params import init_hq_params, merge_params

FORMAT = "samhq_jax"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class UntrainedHQWarning(UserWarning):
    """An original SAM checkpoint was loaded: the HQ parameters are freshly initialised, not trained."""


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    """What :func:`read_weights` found.

    Attributes:
      config: the model structure.
      params: full parameter tree, float32 numpy leaves.
      hq_trained: False when the source was an original SAM checkpoint (or our conversion of one)
        and the HQ parameters are a fresh initialisation.
      source_format: ``"samhq_jax"``, ``"official"`` or ``"hf"``.
    """

    config: SamHQConfig
    params: dict
    hq_trained: bool
    source_format: str


def save_checkpoint(
    path: str | os.PathLike, config: SamHQConfig, params: Any, source: str = "", hq_trained: bool = True
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into directory ``path`` (created if needed).

    ``hq_trained=False`` records that the HQ parameters are untrained (a converted plain SAM).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten_dict(params, sep="/").items()}
    save_file(flat, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "source": source,
        "hq_trained": hq_trained,
    }
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


def read_weights(path: str | os.PathLike, hq_seed: int = 0) -> LoadedWeights:
    """Read weights of any supported format (numpy float32 leaves, no device transfer).

    ``path``: one of our checkpoint directories, an official SysCV file (``.pth`` /
    ``.safetensors``), a Hugging Face ``SamHQModel`` folder, a hub repo id such as
    ``syscv-community/sam-hq-vit-base`` (through the local hub cache; ``HF_HUB_OFFLINE=1`` stays
    offline), or any of these for an *original SAM* model (``segment-anything``'s
    ``sam_vit_b_01ec64.pth``, a Hugging Face ``SamModel`` folder such as ``facebook/sam-vit-base``).
    For the latter, SAM's tensors are imported and the HQ parameters initialised from ``hq_seed``
    with PyTorch's distributions (:func:`samhq_jax.hq_params.init_hq_params`);
    ``hq_trained`` is then False.
    """
    from convert.sources import load_torch_checkpoint

    local = Path(path)
    if not local.exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/")):
        local = _resolve_hub(str(path))
    if local.is_dir() and is_checkpoint_dir(local):
        config, params = load_checkpoint(local)
        hq_trained = json.loads((local / CONFIG_FILE).read_text()).get("hq_trained", True)
        return LoadedWeights(config, params, hq_trained, FORMAT)
    config, params = load_torch_checkpoint(local, allow_plain_sam=True)
    fmt = "hf" if local.is_dir() else "official"
    if "hq_token" in params["mask_decoder"]:
        return LoadedWeights(config, params, True, fmt)
    return LoadedWeights(config, merge_params(params, init_hq_params(config, hq_seed)), False, fmt)


def untrained_hq_message(path: str | os.PathLike) -> str:
    return (
        f"{path} is an original SAM checkpoint: its HQ parameters (HQ token, HQ MLP, fusion layers) are "
        "freshly initialised, NOT trained, so HQ and SAM+HQ masks are meaningless. Fine-tune them with "
        "samhq-train, or decode with sam_only=True for SAM's own masks."
    )


def load_numpy(path: str | os.PathLike) -> tuple[SamHQConfig, dict]:
    """:func:`load_pretrained` with numpy float32 leaves (no device transfer), for conversion tools."""
    weights = read_weights(path)
    if not weights.hq_trained:
        warnings.warn(untrained_hq_message(path), UntrainedHQWarning, stacklevel=2)
    return weights.config, weights.params


def load_pretrained(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32) -> tuple[SamHQConfig, dict]:
    """Load SAM-HQ weights from any supported source and return ``(config, params)``.

    Accepts everything :func:`read_weights` does; foreign formats are converted on the fly.
    Parameters are returned as jax arrays of ``dtype``. An original SAM checkpoint loads with an
    :class:`UntrainedHQWarning` (its HQ part is a fresh initialisation).
    """
    config, params = load_numpy(path)
    return config, jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
