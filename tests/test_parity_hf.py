"""Parity with the Hugging Face ``SamHQModel`` (transformers 4.53.3), loaded from a saved folder
through our converter, and a pin on the 4.54+ mask regression so nobody "fixes" us to match it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from eval.parity import mask_agreement, relative_error, sample_images
from eval.reference import build_hf
from samhq_jax import SamHQ, SamHQConfig, load_pretrained
from tests.conftest import MASK_AGREEMENT, PARITY_RTOL, assert_close

ROOT = Path(__file__).resolve().parents[1]
REGRESSED = Path(os.environ.get("SAMHQ_HF_REGRESSED", ROOT / ".hf-regressed"))


@pytest.fixture(scope="module")
def hf_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    assert transformers.__version__.startswith("4.53."), "mask parity needs transformers 4.53.x"
    folder = tmp_path_factory.mktemp("hf") / "sam-hq-tiny"
    model = build_hf(SamHQConfig.tiny_h(), seed=7)
    model.save_pretrained(folder)
    config, params = load_pretrained(folder)
    images = sample_images(config, 2)
    return model, folder, config, params, images


def _prompts(config: SamHQConfig, b: int, p: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    s = config.img_size
    corners = np.sort(rng.uniform(0, s - 1, (b, p, 2, 2)), axis=2)
    return {
        "points": rng.uniform(0, s - 1, (b, p, 2, 2)).astype(np.float32),
        "labels": np.tile(np.array([1, 0], np.int64), (b, p, 1)),
        "boxes": np.stack(
            [corners[:, :, 0, 0], corners[:, :, 0, 1], corners[:, :, 1, 0], corners[:, :, 1, 1]], -1
        ).astype(np.float32),
    }


def _ours(config, params, images, points=None, labels=None, boxes=None, multimask=False, hq_only=False):
    arr = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
    model = SamHQ(config)
    emb = model.apply({"params": params}, jnp.asarray(images), method=SamHQ.embed_image)
    masks, iou = model.apply(
        {"params": params}, emb, arr(points), arr(labels), arr(boxes), None, multimask, hq_only, method=SamHQ.decode
    )
    return emb, np.asarray(masks), np.asarray(iou)


def test_image_embeddings_and_early_feature(hf_setup: tuple) -> None:
    model, _, config, params, images = hf_setup
    emb, _, _ = _ours(config, params, images, boxes=_prompts(config, 2, 1)["boxes"])
    with torch.no_grad():
        out = model.vision_encoder(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert_close(np.asarray(emb.image_embeddings), out.last_hidden_state.permute(0, 2, 3, 1).numpy(), "embedding")
    early = out.intermediate_embeddings[0].numpy()
    assert_close(np.asarray(emb.early_features), early, "early feature")


@pytest.mark.parametrize("multimask,hq_only", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("kind", ["points", "boxes", "points+boxes"])
def test_masks_and_iou(hf_setup: tuple, kind: str, multimask: bool, hq_only: bool) -> None:
    model, _, config, params, images = hf_setup
    pr = _prompts(config, 2, 3)
    kw = {}
    if "points" in kind:
        kw.update(points=pr["points"], labels=pr["labels"])
    if "boxes" in kind:
        kw.update(boxes=pr["boxes"])
    _, masks, iou = _ours(config, params, images, multimask=multimask, hq_only=hq_only, **kw)
    t = {}
    if "points" in kind:
        t.update(input_points=torch.from_numpy(pr["points"]), input_labels=torch.from_numpy(pr["labels"]))
    if "boxes" in kind:
        t.update(input_boxes=torch.from_numpy(pr["boxes"]))
    with torch.no_grad():
        out = model(
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
            multimask_output=multimask,
            hq_token_only=hq_only,
            **t,
        )
    # HF sorts the multimask outputs by IoU; its first one is the official (and our) choice.
    ref_masks, ref_iou = out.pred_masks[:, :, :1].numpy(), out.iou_scores[:, :, :1].numpy()
    assert_close(iou, ref_iou, "iou")
    assert_close(masks, ref_masks, "low-res masks")
    assert mask_agreement(masks, ref_masks) >= MASK_AGREEMENT


def test_transformers_mask_regression_is_pinned(hf_setup: tuple, tmp_path: Path) -> None:
    """transformers 4.54 to 5.23 feed the pre-transformer image tokens to the mask path: same IoUs,
    wrong masks. Our masks must keep matching 4.53 and keep differing from the regressed release."""
    assert REGRESSED.is_dir(), (
        f"{REGRESSED} is missing: install a regressed transformers beside the pinned one with "
        "pip install --target .hf-regressed --no-deps transformers==4.57.3 tokenizers==0.22.1"
    )
    _, folder, config, params, images = hf_setup
    pr = _prompts(config, 2, 2)
    inputs = tmp_path / "in.npz"
    np.savez(
        inputs,
        pixel_values=images.transpose(0, 3, 1, 2),
        input_points=pr["points"],
        input_labels=pr["labels"],
        multimask_output=np.array(False),
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REGRESSED), str(ROOT)]))
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hf_forward.py"), str(folder), str(inputs), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")
    major_minor = tuple(int(x) for x in str(got["version"]).split(".")[:2])
    assert (4, 54) <= major_minor <= (5, 23), f"expected a regressed release, got {got['version']}"
    _, masks, iou = _ours(config, params, images, points=pr["points"], labels=pr["labels"])
    assert_close(iou, got["iou_scores"], "iou vs regressed release (IoUs are unaffected)")
    err = relative_error(masks, got["pred_masks"])
    assert err > 100 * PARITY_RTOL, f"our masks match the regressed release ({err:.2e}): the regression leaked in"
