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

from eval.parity.samples import sample_images
from eval.parity.stages import mask_agreement, relative_error
from eval.reference import build_hf
from samhq_jax import ModelConfig, SamHQ, load_pretrained
from tests.conftest import MASK_AGREEMENT, PARITY_RTOL, assert_close

ROOT = Path(__file__).resolve().parents[1]
REGRESSED = Path(os.environ.get("SAMHQ_HF_REGRESSED", ROOT / ".hf-regressed"))


@pytest.fixture(scope="module")
def hf_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    assert transformers.__version__.startswith("4.53."), "mask parity needs transformers 4.53.x"
    folder = tmp_path_factory.mktemp("hf") / "sam-hq-tiny"
    model = build_hf(ModelConfig.tiny_h(), seed=7)
    model.save_pretrained(folder)
    config, params = load_pretrained(folder)
    images = sample_images(config, 2)
    return model, folder, config, params, images


def _prompts(config: ModelConfig, b: int, p: int) -> dict[str, np.ndarray]:
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
        {"params": params},
        emb,
        arr(points),
        arr(labels),
        arr(boxes),
        None,
        multimask,
        hq_only,
        all_multimask=True,
        method=SamHQ.decode,
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
    # all_multimask: HF's three multimask outputs sorted by IoU, each plus the HQ mask (the first is
    # the official single choice; tests/test_parity_official.py checks that one against SysCV).
    ref_masks, ref_iou = out.pred_masks.numpy(), out.iou_scores.numpy()
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    assert_close(iou, ref_iou, "iou")
    assert_close(masks, ref_masks, "low-res masks")
    assert mask_agreement(masks, ref_masks) >= MASK_AGREEMENT


def _decode_453(model: torch.nn.Module, embeddings: tuple, points: np.ndarray, labels: np.ndarray, bug: bool):
    """The pinned 4.53 ``SamHQModel`` on points, single-mask, from ``get_image_embeddings``' output; with
    ``bug`` the documented 4.54+ regression is rebuilt from 4.53's own modules
    (``../shared/reference/samhq_hf.md`` §0 finding 1, §3.4 step 4).

    The 4.53 decoder turns the transformer's updated image tokens ``keys`` ``(B*P, 1, H*W, C)`` into the
    mask path's map with ``keys.transpose(2, 3).reshape(B*P, C, H, W)``. The regressed decoder drops
    ``keys`` and applies that same line to the transformer's *input* ``src`` = image embedding + dense
    prompt, ``(B*P, C, H, W)``, which swaps H and W. A forward hook on ``mask_decoder.transformer``
    hands the decoder, in place of ``keys``, the tokens of ``src`` with H and W swapped, so the 4.53
    line yields exactly the regressed map; tokens, IoU head, hypernetworks and upscaling stay 4.53's.
    A hook rather than a copied ``forward``: nothing of the decoder is re-typed here, so the test can
    only pass if the regression is that one substitution.
    """

    def regressed_keys(module, args, kwargs, output):
        src = kwargs["image_embeddings"]  # (B*P, C, H, W), before the transformer
        swapped = src.transpose(2, 3)  # [c, i, j] = src[c, j, i]
        return (output[0], swapped.flatten(2).permute(0, 2, 1).unsqueeze(1), *output[2:])

    handle = model.mask_decoder.transformer.register_forward_hook(regressed_keys, with_kwargs=True) if bug else None
    try:
        with torch.no_grad():
            out = model(
                image_embeddings=embeddings[0],
                intermediate_embeddings=embeddings[1],
                input_points=torch.from_numpy(points),
                input_labels=torch.from_numpy(labels),
                multimask_output=False,
            )
    finally:
        if handle is not None:
            handle.remove()
    return out.pred_masks.numpy(), out.iou_scores.numpy()


def test_transformers_mask_regression_is_pinned(hf_setup: tuple, tmp_path: Path) -> None:
    """transformers 4.54 to 5.23 feed the pre-transformer image tokens, spatially transposed, to the
    mask path: same IoUs, wrong masks. Pins *what* the regression is, not only that it differs:

    * the regressed release (run in a subprocess from ``.hf-regressed/``) reproduces, to the parity
      bar, 4.53 with that one substitution rebuilt in torch (:func:`_decode_453` with ``bug``);
    * our masks and IoUs equal 4.53's on the same inputs;
    * our IoUs equal the regressed release's, and our masks are far from its masks.
    """
    assert REGRESSED.is_dir(), (
        f"{REGRESSED} is missing: install a regressed transformers beside the pinned one with "
        "pip install --target .hf-regressed --no-deps transformers==4.57.3 tokenizers==0.22.1"
    )
    model, folder, config, params, images = hf_setup
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

    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.from_numpy(images).permute(0, 3, 1, 2))
    ref_masks, ref_iou = _decode_453(model, embeddings, pr["points"], pr["labels"], bug=False)
    bug_masks, bug_iou = _decode_453(model, embeddings, pr["points"], pr["labels"], bug=True)
    np.testing.assert_array_equal(bug_iou, ref_iou)  # the substitution is downstream of the IoU head's input
    assert_close(got["pred_masks"], bug_masks, "regressed release vs 4.53 with the documented bug rebuilt")
    assert_close(got["iou_scores"], ref_iou, "regressed release IoUs vs 4.53")

    _, masks, iou = _ours(config, params, images, points=pr["points"], labels=pr["labels"])
    assert_close(masks, ref_masks, "our masks vs 4.53")
    assert_close(iou, ref_iou, "our IoUs vs 4.53")
    assert_close(iou, got["iou_scores"], "our IoUs vs the regressed release (IoUs are unaffected)")
    err = relative_error(masks, got["pred_masks"])
    assert err > 100 * PARITY_RTOL, f"our masks match the regressed release ({err:.2e}): the regression leaked in"
