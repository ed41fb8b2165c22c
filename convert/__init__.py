"""Import PyTorch SAM-HQ weights (official SysCV and Hugging Face) and export them back."""

from convert.core import (
    FORMATS,
    HF,
    OFFICIAL,
    ConversionError,
    SourceFormat,
    infer_config,
    params_to_state_dict,
    state_dict_to_params,
)
from convert.sources import load_torch_checkpoint

__all__ = [
    "FORMATS",
    "HF",
    "OFFICIAL",
    "ConversionError",
    "SourceFormat",
    "infer_config",
    "load_torch_checkpoint",
    "params_to_state_dict",
    "state_dict_to_params",
]
