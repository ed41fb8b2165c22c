"""``OUTPUT/run.json``: what a training run is, written at its first start, and the check that a
``--resume`` continues that run and no other.

    write_record(output, new_record(recipe, start))          # the first start
    check_same_run(read_record(output), recipe)               # a resume: InputError naming the field

The *recipe* is everything that decides the trained parameters: the model configuration, a
fingerprint of the starting weights (:func:`weights_fingerprint`: SHA-256 of the loaded tensors,
so the same weights match in any file format or place, and a plain SAM checkpoint's HQ part,
initialised from the seed, counts too), the training data (:func:`data_identity`: record count,
records per dataset, SHA-256 of the file list), every recipe setting (lr, epochs / steps,
lr_drop_epoch, batch, seed, trainable rule, output, precision, dtype, remat, the derived schedule)
and the constants of the augmentation, the prompts, the loss and the optimiser. A resume must
match it field by field. The *free* settings cannot change the parameters (where the data and the
checkpoint lie, logging, TensorBoard, saving, validation, loader workers) and may change; every
start appends itself (step, settings of that start, devices, versions) to ``starts``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from samhq_jax.atomic import atomic_file
from samhq_jax.datasets import Pair
from samhq_jax.errors import InputError

RUN_JSON = "run.json"
FORMAT = 1  # run.json's layout; a resume refuses any other
SHORT_HASH = 16  # hex digits of a hash shown in a refusal


def weights_fingerprint(params: Any) -> str:
    """``sha256:<hex>`` of a parameter tree: every leaf in path order, with its path, dtype and shape.

    Independent of the file format and location the weights were read from. Once per start: 308 MB/s
    measured on this project's shared 2-core CPU, so about 8 s for a vit_h's 2.5 GB."""
    digest = hashlib.sha256()
    for path, value in sorted(flatten_dict(params, sep="/").items()):
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{path}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return f"sha256:{digest.hexdigest()}"


def data_identity(pairs: Sequence[Pair]) -> dict[str, Any]:
    """The training data as a resume must find it again: ``records``, records per dataset, and
    ``files_sha256`` of the ordered list of ``dataset/image name/mask name`` (the order decides
    which record each step reads; the folders' locations do not count)."""
    per_dataset: dict[str, int] = {}
    listing = hashlib.sha256()
    for p in pairs:
        per_dataset[p.dataset] = per_dataset.get(p.dataset, 0) + 1
        listing.update(f"{p.dataset}/{p.image.name}/{p.mask.name}\n".encode())
    return {"records": len(pairs), "datasets": per_dataset, "files_sha256": listing.hexdigest()}


def new_record(recipe: Mapping[str, Any], start: Mapping[str, Any]) -> dict[str, Any]:
    """The ``run.json`` of a first start: the ``recipe`` and the first entry of ``starts``."""
    return {"format": FORMAT, "recipe": dict(recipe), "starts": [dict(start)]}


def read_record(output: Path) -> dict[str, Any] | None:
    """``OUTPUT/run.json`` (None when absent); an ``InputError`` when it is unreadable or of another format."""
    path = Path(output) / RUN_JSON
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--resume: cannot read {path}: {err}") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT or "recipe" not in record:
        raise InputError(
            f"--resume: {path} is not a run.json of format {FORMAT} (written by another version of samhq-train); "
            "start a new run with another --output, or --overwrite"
        )
    return record


def write_record(output: Path, record: Mapping[str, Any]) -> None:
    """Write ``OUTPUT/run.json`` whole or not at all (a temporary file, then a rename)."""
    with atomic_file(Path(output) / RUN_JSON, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value) or "(none)"
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[: len("sha256:") + SHORT_HASH]
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:SHORT_HASH]
    return "(none)" if value is None else str(value)


def check_same_run(saved: Mapping[str, Any], recipe: Mapping[str, Any], keys: Sequence[str] | None = None) -> None:
    """Raise an ``InputError`` naming the first field where this start's ``recipe`` differs from the
    run's (``saved``, from :func:`read_record`): ``--resume: run.json says lr_drop_epoch=10, this start
    says 12``. ``keys``: compare only the recipe's top-level keys named (a check before the weights and
    the data are read); default every key."""
    # JSON round trip: tuples become lists, as in the file
    old, new = _flat(saved["recipe"]), _flat(json.loads(json.dumps(dict(recipe))))
    names = list(dict.fromkeys([*old, *new]))
    if keys is not None:
        names = [n for n in names if n.split(".")[0] in keys]
    for name in names:
        if old.get(name, "(absent)") != new.get(name, "(absent)"):
            a, b = _shown(old.get(name, "(absent)")), _shown(new.get(name, "(absent)"))
            raise InputError(
                f"--resume: run.json says {name}={a}, this start says {b} (a resume continues the same run; "
                "start a new one with another --output, or --overwrite)"
            )


def process_info() -> dict[str, Any]:
    """Where this start runs: devices, processes, backend, versions (recorded, never compared)."""
    import jax

    return {
        "jax": jax.__version__,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
    }


__all__ = [
    "FORMAT",
    "RUN_JSON",
    "check_same_run",
    "data_identity",
    "new_record",
    "process_info",
    "read_record",
    "weights_fingerprint",
    "write_record",
]
