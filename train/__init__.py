"""Training of the HQ parameters (SAM-HQ keeps SAM frozen).

Parameters are selected by path, so freezing, optimiser masks and sharding rules all use the same
names: the HQ token, the HQ MLP and the three fusion stacks of the mask decoder are trainable,
everything else is frozen.
"""

from __future__ import annotations

import re
from typing import Any

from flax.traverse_util import flatten_dict, unflatten_dict

# The five HQ parts of SAM-HQ (official names hf_token, hf_mlp, compress_vit_feat,
# embedding_encoder, embedding_maskfeature).
HQ_PARAM_REGEX = re.compile(
    r"^mask_decoder/(hq_token|hq_mlp|compress_vit_feat|embedding_encoder|embedding_maskfeature)(/|$)"
)
TRAIN, FROZEN = "train", "frozen"


def hq_labels(params: Any) -> Any:
    """Same tree as ``params`` with each leaf replaced by ``"train"`` (HQ parameter) or ``"frozen"``.

    Suitable for ``optax.multi_transform``.
    """
    flat = flatten_dict(params, sep="/")
    return unflatten_dict({k: TRAIN if HQ_PARAM_REGEX.match(k) else FROZEN for k in flat}, sep="/")
