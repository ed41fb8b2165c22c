"""The two modes of ``samhq parity``: a user's checkpoint on photos (against the reference that
checkpoint's format calls for), or a preset's seeded random weights on sample photos."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from eval.parity.engine import compare_images
from eval.parity.official import OfficialReference
from eval.parity.ours import Ours
from eval.parity.report import ParityReport, Reference, format_image_report
from eval.parity.samples import default_prompts, sample_images
from eval.parity.scenarios import photo_scenarios, read_scenarios
from eval.parity.stages import MIN_MASK_AGREEMENT, PARITY_RTOL
from samhq_jax.cmdkit.guard import UsageError, one_line
from samhq_jax.config import HF_TRANSFORMER_LN_EPS, ModelConfig
from samhq_jax.errors import InputError

if TYPE_CHECKING:
    from samhq_jax.checkpoint import LoadedWeights

PROG = "samhq parity"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
INSTALL_HINT = "pip install 'samhq-jax[test]'"
# What each reference needs installed (import names).
REFERENCE_MODULES = {"official": ("torch", "segment_anything_hq"), "hf": ("torch", "transformers")}
REFERENCE_NAMES = {"official": "official PyTorch reference", "hf": "Hugging Face PyTorch reference"}


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=PROG, unit="step", disable=True if total < 6 else None, leave=False)


def _emit(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text)


def reference_kind(path: Path) -> str:
    """``"official"`` or ``"hf"``: the reference a checkpoint is compared with (see the module doc)."""
    from convert.sources import is_hf_folder
    from samhq_jax.checkpoint import CONFIG_FILE, is_checkpoint_dir

    if not path.is_dir():
        return "official"
    if is_hf_folder(path):
        return "hf"
    if is_checkpoint_dir(path):
        config = ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text())["config"])
        return "hf" if config.mask_decoder.transformer_layer_norm_eps == HF_TRANSFORMER_LN_EPS else "official"
    raise UsageError(f"{path} is neither one of our checkpoint folders nor a Hugging Face SAM-HQ folder")


def require_reference(kind: str) -> None:
    """Raise :class:`UsageError` (one line, with the pip command) when a reference is not installed."""
    missing = []
    for module in REFERENCE_MODULES[kind]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        needs = " and ".join(REFERENCE_MODULES[kind])
        raise UsageError(
            f"the {REFERENCE_NAMES[kind]} needs {needs}; missing here: {', '.join(missing)}: {INSTALL_HINT}"
        )


def build_reference(path: Path, kind: str, weights: LoadedWeights) -> Reference:
    """The reference model for a checkpoint, holding the same weights (see the module doc)."""
    from convert.core import OFFICIAL, params_to_state_dict, unused_kind

    if kind == "hf":
        from eval.parity.hf import HFReference, load_hf

        if weights.source_format == "hf":
            return HFReference(load_hf(path))
        import tempfile

        from convert.export import export_hf

        with tempfile.TemporaryDirectory() as tmp:
            return HFReference(load_hf(export_hf(weights.config, weights.params, Path(tmp) / "hf")))
    import torch

    from convert.sources import read_pth, read_safetensors
    from eval.reference import build_official

    if weights.source_format == "official":  # the file's own tensors, as the official package loads them
        state = read_safetensors(path) if path.suffix == ".safetensors" else read_pth(path)
    else:
        state = params_to_state_dict(weights.params, OFFICIAL)
    model = build_official(weights.config, seed=0)  # the structure; every tensor is overwritten below
    own = model.state_dict()  # keeps the tensors no model uses (TinyViT's classifier head, BatchNorm counters)
    state = {**{k: v.numpy() for k, v in own.items() if unused_kind(k, OFFICIAL)}, **state}
    missing = sorted(set(own) - set(state))
    if missing:
        raise UsageError(f"{path} lacks {len(missing)} tensor(s) of the official model, e.g. {missing[0]}")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(state[k])) for k in own}, strict=True)
    return OfficialReference(model.eval())


def run_checkpoint(args: Any) -> ParityReport:
    """Checkpoint mode: validate the inputs, load both models, compare on every photo."""
    from samhq_jax.checkpoint import read_weights
    from samhq_jax.image_io import read_rgb
    from samhq_jax.transforms import preprocess

    path = Path(args.checkpoint)
    if not path.exists():
        raise UsageError(f"no checkpoint at {path}")
    for image in args.image:
        if not Path(image).is_file():
            raise UsageError(f"no image at {image}")
    if args.prompts is not None and not Path(args.prompts).is_file():
        raise UsageError(f"no prompts file at {args.prompts}")
    per_image = read_scenarios(Path(args.prompts), args.image) if args.prompts else None
    try:
        kind = reference_kind(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"cannot read checkpoint {path}: {one_line(err)}") from err
    require_reference(kind)
    photos = {image: read_rgb(image) for image in args.image}  # a bad file: InputError naming it
    try:
        weights = read_weights(path)
    except (InputError, OSError) as err:  # an unreadable or ill-fitting file (anything else is a bug of ours)
        raise UsageError(f"cannot read checkpoint {path}: {one_line(err)}") from err
    if not weights.hq_trained and weights.source_format != "samhq_jax":
        raise UsageError(
            f"{path} is an original SAM checkpoint (no HQ tensors): samhq parity compares SAM-HQ models; "
            f"convert it first (samhq convert {path} DIR, which initialises and saves the HQ part) and compare DIR"
        )
    try:
        reference = build_reference(path, kind, weights)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"cannot load {path} into the {REFERENCE_NAMES[kind]}: {one_line(err)}") from err
    config = weights.config
    ours = Ours(config, weights.params, DTYPES[args.dtype])
    report = ParityReport(
        {
            "mode": "checkpoint",
            "checkpoint": str(path),
            "source_format": weights.source_format,
            "config": config.name,
            "hq_trained": weights.hq_trained,
            "reference": reference.description,
            "dtype": args.dtype,
            "precision": args.precision,
        }
    )
    _emit(_header_line(report.header))
    plans = {image: per_image[image] if per_image else photo_scenarios(rgb.shape[:2]) for image, rgb in photos.items()}
    steps = sum(1 + len(s) for s in plans.values())
    with _progress(steps) as bar:
        for image, rgb in photos.items():
            pixels, input_size, _ = preprocess(rgb, config.img_size)
            im = compare_images(
                reference, ours, pixels[None], plans[image], Path(image).name, (rgb, input_size), tick=bar.update
            )
            report.images.append(im)
            _emit(format_image_report(im))
    return report


def run_preset(args: Any) -> ParityReport:
    """Preset mode: seeded random weights (every tensor), noisy sample photos, random prompts."""
    require_reference("official")
    from convert.core import state_dict_to_params
    from eval.reference import build_official

    config = ModelConfig.preset(args.preset)
    torch_model = build_official(config, seed=0)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    config, params = state_dict_to_params(state)
    header = {
        "mode": "preset",
        "preset": args.preset,
        "config": config.name,
        "reference": OfficialReference(torch_model).description,
        "dtype": args.dtype,
        "precision": args.precision,
    }
    report = ParityReport(header)
    _emit(_header_line(header))
    prompts = default_prompts(config, args.images)
    with _progress(1 + len(prompts)) as bar:
        im = compare_images(
            OfficialReference(torch_model),
            Ours(config, params, DTYPES[args.dtype]),
            sample_images(config, args.images),
            prompts,
            f"{args.preset} ({args.images} sample image(s))",
            tick=bar.update,
        )
    report.images.append(im)
    _emit(format_image_report(im))
    return report


def _header_line(h: dict) -> str:
    what = (
        f"{h['checkpoint']} ({h['source_format']}, {h['config']})"
        if h["mode"] == "checkpoint"
        else (f"preset {h['preset']} (seeded random weights)")
    )
    untrained = "; HQ parameters untrained (same on both sides)" if h.get("hq_trained") is False else ""
    return (
        f"{PROG}: {what} vs {h['reference']}; ours {h['dtype']}, matmul precision {h['precision']}{untrained}; "
        f"bar: relative error <= {PARITY_RTOL:.0e}, mask agreement >= {100 * MIN_MASK_AGREEMENT:.2f}%"
    )
