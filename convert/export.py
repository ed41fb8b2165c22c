"""Export our parameters back to PyTorch: an official SysCV state dict (``.pth`` or
``.safetensors``) or a Hugging Face ``SamHQModel`` folder, e.g. after HQ fine-tuning.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.numpy import save_file

from convert.core import HF, OFFICIAL, ConversionError, params_to_state_dict
from convert.sources import HF_WEIGHTS, import_torch
from samhq_jax.config import ModelConfig
from samhq_jax.hf_config import hf_config_dict


def export_official(params: dict, dst: str | Path) -> Path:
    """Write an official state dict: ``.pth`` (``torch.save`` of tensors) or ``.safetensors``."""
    dst = Path(dst)
    state = params_to_state_dict(params, OFFICIAL)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        save_file(state, str(dst))
    elif dst.suffix in (".pth", ".pt"):
        torch = import_torch(dst)
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, str(dst))
    else:
        raise ConversionError(f"official export needs a .pth, .pt or .safetensors path, got {dst}")
    return dst


def export_hf(config: ModelConfig, params: dict, dst: str | Path) -> Path:
    """Write a folder ``SamHQModel.from_pretrained`` loads: ``config.json`` + ``model.safetensors``."""
    dst = Path(dst)
    hf_config = hf_config_dict(config)  # refuses a model transformers cannot hold before anything is written
    dst.mkdir(parents=True, exist_ok=True)
    save_file(params_to_state_dict(params, HF), str(dst / HF_WEIGHTS), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return dst
