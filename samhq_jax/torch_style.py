"""Host arrays that answer torch tensors' methods, handed out where the official API
(``segment_anything_hq``) or transformers with ``return_tensors="pt"`` hand out torch tensors, so code
written against them (``masks.squeeze(1).cpu().numpy()``, ``inputs.to(device)``) runs as it is."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from samhq_jax.predictor import TensorLikeArray


class OfficialTensor(TensorLikeArray):
    """What this API hands out where the official hands out torch tensors: a
    :class:`~samhq_jax.predictor.TensorLikeArray` (``.cpu()``, ``.detach()``, ``.numpy()``) that also
    answers ``.to(...)``: a device (name, ``torch.device`` or JAX device) leaves it as it is (host
    NumPy); a dtype (NumPy's, or torch's such as ``torch.float32``) converts it."""

    def to(self, *args: Any, **kwargs: Any) -> OfficialTensor:
        out = self
        for arg in (*args, *kwargs.values()):
            if type(arg).__name__ == "dtype" and str(arg).startswith("torch."):
                out = out.astype(str(arg).removeprefix("torch."))
            elif isinstance(arg, (type, np.dtype)):
                out = out.astype(arg)
        return out


def host_tensor(a: Any) -> OfficialTensor:
    """``a`` (a JAX or NumPy array) as a host :class:`OfficialTensor`."""
    return np.asarray(jax.device_get(a)).view(OfficialTensor)


__all__ = ["OfficialTensor", "host_tensor"]
