"""Read PyTorch SAM-HQ weights from disk: official ``.pth`` / ``.safetensors`` files and Hugging Face
folders (``config.json`` + ``model.safetensors``, as in a hub snapshot).

``.pth`` files are read with ``torch.load(..., weights_only=True)``: tensors only, never arbitrary
pickled code. torch is needed for ``.pth`` files only. A file or folder that is none of these, an
unreadable file and a ``config.json`` with keys of the wrong type are a :class:`ConversionError` /
``ValueError`` naming the file, never a ``KeyError`` or ``TypeError`` from deep inside.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from convert.core import HF, ConversionError, state_dict_to_params
from samhq_jax.config import ModelConfig, checked_value, read_json_object

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as float32 numpy arrays (bf16 / fp16 are upcast)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in f.keys()}
    except SafetensorError as err:  # truncated, or not a safetensors file at all
        raise ConversionError(f"cannot read {path} as a safetensors file: {err}") from err
    except (TypeError, ValueError):
        # numpy cannot hold bfloat16; go through torch, which can.
        import_torch(path)
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k).float().numpy() for k in f.keys()}


def import_torch(path: Path) -> ModuleType:
    """The torch module, or a ConversionError saying that reading ``path`` needs it."""
    try:
        import torch
    except ImportError as err:
        raise ConversionError(f"reading {path} needs PyTorch: pip install torch") from err
    return torch


def read_pth(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved with ``torch.save`` (optionally wrapped in ``{"model": ...}``), safely."""
    torch = import_torch(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickled code, not a torch file at all
        raise ConversionError(f"cannot read {path} as a PyTorch tensor file: {err}") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return {k: v.detach().float().numpy() for k, v in obj.items()}


HF_MODEL_TYPES = ("sam_hq", "sam")  # SamHQModel, and the plain SamModel (no HQ tensors)
HF_CONFIG = "config.json"
# The keys of mask_decoder_config the import reads, with their types and defaults.
HF_DECODER_KEYS = {"num_attention_heads": (int, 8), "layer_norm_eps": (float, HF.transformer_layer_norm_eps)}


def is_hf_folder(path: Path) -> bool:
    """Whether folder ``path`` has a ``config.json`` with ``model_type`` ``sam_hq`` or ``sam``.

    A ``config.json`` that is not a JSON object is a ``ValueError`` naming it.
    """
    cfg = path / HF_CONFIG
    return cfg.is_file() and read_json_object(cfg).get("model_type") in HF_MODEL_TYPES


def hf_decoder_options(hf_config: dict, where: str) -> dict[str, Any]:
    """The ``mask_decoder_config`` values the import uses (defaults filled in), each type-checked.

    ``where`` names the file in a ``ValueError``: ``.../config.json: mask_decoder_config.layer_norm_eps:
    expected a positive number, got "1e-6"``.
    """
    decoder = checked_value(hf_config.get("mask_decoder_config", {}), dict, f"{where}: mask_decoder_config")
    return {
        key: checked_value(decoder.get(key, default), kind, f"{where}: mask_decoder_config.{key}")
        for key, (kind, default) in HF_DECODER_KEYS.items()
    }


def read_hf_folder(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """``(state dict, config.json)`` of a Hugging Face ``SamHQModel`` folder (single file or shards).

    The ``config.json`` keys the import reads are checked (:func:`hf_decoder_options`) before any
    weights are.
    """
    hf_config = read_json_object(path / HF_CONFIG)
    hf_decoder_options(hf_config, str(path / HF_CONFIG))
    if (path / HF_WEIGHTS).is_file():
        return read_safetensors(path / HF_WEIGHTS), hf_config
    if (path / HF_INDEX).is_file():
        weight_map = read_json_object(path / HF_INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{path / HF_INDEX}: weight_map must be an object mapping tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(read_safetensors(path / shard))
        return state, hf_config
    raise ConversionError(f"{path} has a SamHQ config.json but neither {HF_WEIGHTS} nor {HF_INDEX}")


def load_torch_checkpoint(path: str | Path, allow_plain_sam: bool = False) -> tuple[ModelConfig, dict]:
    """Import official (``.pth``, ``.pt``, ``.bin``, ``.safetensors``) or Hugging Face weights.

    Returns ``(config, params)`` with numpy float32 leaves. With ``allow_plain_sam`` an original SAM
    checkpoint (``segment-anything`` file, Hugging Face ``SamModel`` folder) is accepted and returned
    without HQ parameters.
    """
    path = Path(path)
    if path.is_dir():
        if not is_hf_folder(path):
            found = "no config.json" if not (path / HF_CONFIG).is_file() else "a config.json of another kind"
            raise ConversionError(
                f"unknown checkpoint format: folder {path} has {found}; expected one of our checkpoint folders "
                f'("format": "samhq_jax") or a Hugging Face SAM-HQ / SAM folder ("model_type": "sam_hq" or "sam")'
            )
        state, hf_config = read_hf_folder(path)
        decoder = hf_decoder_options(hf_config, str(path / HF_CONFIG))
        return state_dict_to_params(
            state,
            fmt=HF,
            decoder_heads=decoder["num_attention_heads"],
            transformer_eps=decoder["layer_norm_eps"],
            allow_plain_sam=allow_plain_sam,
        )
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        return state_dict_to_params(read_safetensors(path), allow_plain_sam=allow_plain_sam)
    if path.suffix in (".pth", ".pt", ".bin"):
        return state_dict_to_params(read_pth(path), allow_plain_sam=allow_plain_sam)
    raise ConversionError(
        f"unknown checkpoint format: {path} (suffix {path.suffix!r}); expected an official .pth / .pt / .bin / "
        ".safetensors file, one of our checkpoint folders or a Hugging Face folder"
    )
