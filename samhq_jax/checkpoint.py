"""Our checkpoint format, and the one place that reads weights of every format.

A checkpoint is a directory with ``config.json`` (``{"format": "samhq_jax", "config": ...,
"hq_trained": bool}``) and ``model.safetensors`` keyed by ``/``-joined parameter paths
(``mask_decoder/hq_token``), float32.

:func:`read_weights` dispatches on what ``path`` is (our directory, an official ``.pth`` /
``.safetensors`` file, a Hugging Face folder, a hub repo id) and accepts original SAM checkpoints,
whose HQ parameters it initialises as PyTorch would. :func:`load_pretrained` (predictor, CLI) and the
training entry point both go through it. A path that does not exist is a hub repo id only when it has
the form ``owner/name`` (:func:`is_hub_id`). Every bad source is an exception with a one-line-able
message naming the file: ``FileNotFoundError`` (no such path, a hub id not in the cache),
:class:`~samhq_jax.errors.InputError` (a ``ValueError``: a ``config.json`` that is not JSON or lacks
a key or has one of the wrong type) or its subclass ``ConversionError`` (unknown format, unreadable
file, tensors not fitting the model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import save_file

from samhq_jax.config import ModelConfig, checked_value, read_json_object
from samhq_jax.errors import InputError
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

    config: ModelConfig
    params: dict
    hq_trained: bool
    source_format: str


def save_checkpoint(
    path: str | os.PathLike, config: ModelConfig, params: Any, source: str = "", hq_trained: bool = True
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
    """Whether folder ``path`` is one of ours: its ``config.json`` says ``"format": "samhq_jax"``.

    A ``config.json`` that is not a JSON object is a ``ValueError`` naming it.
    """
    cfg = path / CONFIG_FILE
    return cfg.is_file() and read_json_object(cfg).get("format") == FORMAT


@contextlib.contextmanager
def reading_checkpoint() -> Iterator[None]:
    """Inside, a plain ``ValueError`` (the ``config.json`` checks of :mod:`samhq_jax.config`, a
    Hugging Face shard index) is about the checkpoint being read: it leaves as an
    :class:`~samhq_jax.errors.InputError` with the same message."""
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from err


def _read_ours(path: Path) -> LoadedWeights:
    """Our checkpoint folder ``path``: ``config.json`` checked key by key (a ``ValueError`` naming the
    file and the key), then every tensor of ``model.safetensors`` against that config."""
    from convert.core import ConversionError, check_params
    from convert.sources import read_safetensors

    cfg = path / CONFIG_FILE
    with reading_checkpoint():
        meta = read_json_object(cfg)
        if meta.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"{cfg}: unsupported checkpoint format_version {meta.get('format_version')!r} "
                f"(expected {FORMAT_VERSION})"
            )
        if "config" not in meta:
            raise InputError(f"{cfg}: missing key config (the model structure)")
        hq_trained = checked_value(meta.get("hq_trained", True), bool, f"{cfg}: hq_trained")
        try:
            config = ModelConfig.from_dict(meta["config"])
        except ValueError as err:
            raise InputError(f"{cfg}: {err}") from err
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path}: {CONFIG_FILE} is there but not {WEIGHTS_FILE}")
    flat = read_safetensors(path / WEIGHTS_FILE)
    problems = check_params(flat, config, None)
    if problems:
        raise ConversionError(f"{path} does not fit its own config ({config.name}):\n" + "\n".join(problems))
    return LoadedWeights(config, unflatten_dict(flat, sep="/"), hq_trained, FORMAT)


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """Read a directory written by :func:`save_checkpoint`; checks every tensor against the config."""
    weights = _read_ours(Path(path))
    return weights.config, weights.params


# owner/name as the hub spells repo ids: letters, digits, "-", "_", "." (not first or last).
HUB_ID = re.compile(r"([A-Za-z0-9]([\w.-]*[A-Za-z0-9])?)/([A-Za-z0-9]([\w.-]*[A-Za-z0-9])?)", re.ASCII)
# A name ending like this is a mistyped file path, never a repo id.
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".json", ".npz", ".msgpack")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a hub repo id ``owner/name``.

    Exactly one ``/``, hub characters only (so nothing starting with ``.``, ``/`` or ``~``), no
    ``--`` or ``..``, and no checkpoint file extension (``.pth``, ``.safetensors``, ...).
    """
    return (
        HUB_ID.fullmatch(text) is not None
        and "--" not in text
        and ".." not in text
        and not text.lower().endswith(FILE_SUFFIXES)
    )


def _resolve_hub(repo_id: str) -> Path:
    """Local snapshot folder of a hub repo (honours ``HF_HUB_OFFLINE`` and the hub cache).

    Failing, a one-line ``FileNotFoundError`` saying that ``repo_id`` was looked up as a hub id,
    why that failed, and how to name a local path instead.
    """
    local_hint = f"for a local checkpoint pass an existing path (./{repo_id} is {Path(repo_id).absolute()})"
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:
        raise FileNotFoundError(
            f"{repo_id!r} is no local path, so it was looked up as a hub repo id, which needs huggingface_hub "
            f"(pip install 'samhq-jax[hub]'); {local_hint}"
        ) from err
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.json"]))
    except Exception as err:  # offline and not cached, unknown repo, no network
        if constants.HF_HUB_OFFLINE and isinstance(err, LocalEntryNotFoundError):
            why = "the hub is offline (HF_HUB_OFFLINE=1)"
        else:
            reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            why = f"it could not be downloaded (offline, unreachable or no such repo: {reason})"
        raise FileNotFoundError(
            f"{repo_id!r} is no local path, so it was looked up as a hub repo id: it is not in the local hub "
            f"cache ({constants.HF_HUB_CACHE}) and {why}; {local_hint}"
        ) from err


def resolve_source(path: str | os.PathLike) -> Path:
    """The local file or folder behind a checkpoint source: ``path`` itself, or the hub cache's
    snapshot folder when ``path`` is a hub repo id (see :func:`read_weights`).

    ``path`` is looked up on the hub only when nothing exists at it and it has the form
    ``owner/name`` (:func:`is_hub_id`); any other missing path is a ``FileNotFoundError`` naming it
    and, when relative, where it was looked for.
    """
    text = os.fspath(path)
    local = Path(text).expanduser()
    if local.exists():
        return local
    if is_hub_id(text):
        return _resolve_hub(text)
    where = "" if local.is_absolute() else f" ({local.absolute()})"
    raise FileNotFoundError(f"no checkpoint at {text}{where}")


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

    A missing ``path`` goes to the hub only in the form ``owner/name`` (see :func:`resolve_source`):
    ``checkpoints/sam_hq_vit_b.pth`` is ``FileNotFoundError("no checkpoint at ...")``. Unknown
    formats, unreadable files and bad ``config.json`` files are ``ValueError`` /
    :class:`convert.core.ConversionError` naming the file and the problem.
    """
    from convert.sources import load_torch_checkpoint

    local = resolve_source(path)
    with reading_checkpoint():
        if local.is_dir() and is_checkpoint_dir(local):
            return _read_ours(local)
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


def load_numpy(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """:func:`load_pretrained` with numpy float32 leaves (no device transfer), for conversion tools."""
    weights = read_weights(path)
    if not weights.hq_trained:
        warnings.warn(untrained_hq_message(path), UntrainedHQWarning, stacklevel=2)
    return weights.config, weights.params


def load_pretrained(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32) -> tuple[ModelConfig, dict]:
    """Load SAM-HQ weights from any supported source and return ``(config, params)``.

    Accepts everything :func:`read_weights` does; foreign formats are converted on the fly.
    Parameters are returned as jax arrays of ``dtype``. An original SAM checkpoint loads with an
    :class:`UntrainedHQWarning` (its HQ part is a fresh initialisation).
    """
    config, params = load_numpy(path)
    return config, jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
