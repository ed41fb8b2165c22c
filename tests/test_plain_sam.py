"""Original SAM checkpoints: import (official ``segment-anything`` file and Hugging Face ``SamModel``
folder), the freshly initialised HQ part (PyTorch's distributions), the warning everywhere but in
training, and the SAM-only decode mode against ``segment-anything``'s ``SamPredictor``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

from convert.core import ConversionError, state_dict_to_params
from eval.parity.stages import mask_agreement
from eval.reference import build_official, randomize_
from samhq_jax.checkpoint import UntrainedHQWarning, load_pretrained, read_weights
from samhq_jax.config import ModelConfig
from samhq_jax.hq_params import HQ_PARTS, hq_paths, init_hq_params, is_hq_path
from samhq_jax.predictor import SamHQPredictor
from tests.conftest import MASK_AGREEMENT, assert_close
from tests.test_predictor import _photos, _prompts

PRESET = "tiny_h"


@pytest.fixture(scope="module")
def plain_sam(tmp_path_factory) -> tuple:
    """(torch SAM, path of its .pth file) for a randomised original SAM of the tiny_h structure."""
    model = build_official(ModelConfig.preset(PRESET), seed=3, plain_sam=True)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny_h.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_plain_sam_file_imports_with_fresh_hq_part(plain_sam) -> None:
    model, path = plain_sam
    weights = read_weights(path, hq_seed=5)
    assert not weights.hq_trained and weights.source_format == "official"
    assert weights.config == ModelConfig.preset(PRESET)
    flat = flatten_dict(weights.params, sep="/")
    assert sorted(k for k in flat if is_hq_path(k)) == hq_paths(weights.config) and len(hq_paths(weights.config)) == 25
    # SAM's tensors are the file's; the HQ tensors are the seeded initialisation.
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    _, sam_params = state_dict_to_params(state, allow_plain_sam=True)
    for k, v in flatten_dict(sam_params, sep="/").items():
        assert np.array_equal(flat[k], v), k
    for k, v in flatten_dict(init_hq_params(weights.config, 5), sep="/").items():
        assert np.array_equal(flat[k], v), k
    assert not np.array_equal(
        flat["mask_decoder/hq_token"], read_weights(path, hq_seed=6).params["mask_decoder"]["hq_token"]
    )


def test_plain_sam_warns_outside_training_and_is_recorded_on_conversion(plain_sam, tmp_path, capsys) -> None:
    _, path = plain_sam
    with pytest.warns(UntrainedHQWarning, match="NOT trained"):
        load_pretrained(path)
    with pytest.warns(UntrainedHQWarning):
        SamHQPredictor.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_weights(path)  # the training entry point: no warning, it logs the fact itself
    from convert.cli import main as convert_main

    assert convert_main([str(path), str(tmp_path / "ours")]) == 0
    assert "NOT trained" in capsys.readouterr().err
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["hq_trained"] is False
    assert read_weights(tmp_path / "ours").hq_trained is False
    with pytest.warns(UntrainedHQWarning):
        load_pretrained(tmp_path / "ours")


def test_partial_hq_part_is_refused() -> None:
    """Only a checkpoint with none of the 25 HQ tensors is a plain SAM; some of them is an error."""
    hq = build_official(ModelConfig.preset(PRESET), seed=0)
    state = {k: v.numpy() for k, v in hq.state_dict().items() if "hf_mlp" not in k}
    with pytest.raises(ConversionError, match=r"missing keys \(6\)"):
        state_dict_to_params(state, allow_plain_sam=True)


def test_hf_sam_model_folder_imports(tmp_path) -> None:
    """A Hugging Face ``SamModel`` folder (model_type "sam", the facebook/sam-vit-* layout)."""
    from transformers import SamConfig, SamModel

    from samhq_jax.hf_config import hf_config_dict

    config = ModelConfig.preset(PRESET)
    kwargs = {k: v for k, v in hf_config_dict(config).items() if k not in ("model_type", "architectures")}
    kwargs["mask_decoder_config"] = {k: v for k, v in kwargs["mask_decoder_config"].items() if k != "vit_dim"}
    model = SamModel(SamConfig(**kwargs))
    randomize_(model, 1)
    model.save_pretrained(tmp_path / "sam_hf")
    weights = read_weights(tmp_path / "sam_hf")
    assert not weights.hq_trained and weights.source_format == "hf"
    hf_state = model.state_dict()
    flat = flatten_dict(weights.params, sep="/")
    np.testing.assert_array_equal(flat["mask_decoder/iou_token"], hf_state["mask_decoder.iou_token.weight"].numpy())
    np.testing.assert_array_equal(
        flat["image_encoder/blocks_1/attn/qkv/kernel"], hf_state["vision_encoder.layers.1.attn.qkv.weight"].numpy().T
    )


def test_hq_initialisation_matches_pytorch_distributions() -> None:
    """Per tensor, our fresh HQ parameters have the mean, spread and support of PyTorch's default
    initialisation of the official modules (vit_b sizes, so the ConvTranspose fan-in rule shows)."""
    from segment_anything_hq.modeling import MaskDecoderHQ, TwoWayTransformer

    config = ModelConfig.vit_b()
    torch.manual_seed(0)
    ref = MaskDecoderHQ(
        transformer_dim=256,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        vit_dim=768,
    ).state_dict()
    ours = flatten_dict(init_hq_params(config, seed=0), sep="/")
    assert len(ours) == 25
    from convert.official import RULES

    for path, value in ours.items():
        key = next(key for rule in RULES if (key := rule.match_ours(path)))
        t = ref[key.removeprefix("mask_decoder.")].numpy().ravel()
        o = value.ravel()
        assert o.size == t.size, path
        n = o.size
        if t.std() == 0:  # LayerNorm: exactly 1 / 0
            assert np.array_equal(np.sort(o), np.sort(t)), path
            continue
        sd = t.std()
        assert abs(o.mean() - t.mean()) <= 8 * sd / np.sqrt(n), path
        assert abs(o.std() / sd - 1) <= 8 / np.sqrt(n) + 0.02, path
        if not path.endswith("hq_token"):  # uniform: same support (the fan-in rule)
            bound = np.abs(t).max()
            assert np.abs(o).max() <= bound * (1 + 6 / n + 1e-6) and np.abs(o).max() >= bound * (1 - 6 / n) - 1e-6, path
    assert set(HQ_PARTS) == {p.split("/")[1] for p in ours}


@pytest.fixture(scope="module")
def sam_predictors(plain_sam) -> tuple:
    from segment_anything import SamPredictor

    model, path = plain_sam
    with pytest.warns(UntrainedHQWarning):
        ours = SamHQPredictor.from_pretrained(path)
    return SamPredictor(model), ours


@pytest.mark.parametrize("photo", ["landscape_2048", "tiny_37x23"])
def test_sam_only_matches_segment_anything_predictor(sam_predictors, photo: str) -> None:
    ref, ours = sam_predictors
    image = _photos()[photo]
    ref.set_image(image)
    ours.set_image(image)
    h, w = image.shape[:2]
    for name, prompt in _prompts(h, w).items():
        for multimask in (False, True):
            what = f"{photo} {name} multimask={multimask}"
            r = ref.predict(**prompt, multimask_output=multimask, return_logits=True)
            o = ours.predict(**prompt, multimask_output=multimask, return_logits=True, sam_only=True)
            k = 3 if multimask else 1
            assert o[0].shape == r[0].shape == (k, h, w) and o[2].shape == r[2].shape, what
            assert_close(o[2], r[2], f"{what}: low-res logits")
            assert_close(o[1], r[1], f"{what}: iou")
            assert mask_agreement(o[0] > 0, r[0] > 0) >= MASK_AGREEMENT, what
        # mask input fed back, as the official notebooks do
        r = ref.predict(**prompt, mask_input=r[2][:1], multimask_output=False)
        o = ours.predict(**prompt, mask_input=o[2][:1], multimask_output=False, sam_only=True)
        assert_close(o[2], r[2], f"{photo} {name} + mask_input: low-res logits")
        assert mask_agreement(o[0], r[0]) >= MASK_AGREEMENT


def test_sam_only_excludes_hq_token_only(sam_predictors) -> None:
    _, ours = sam_predictors
    ours.set_image(_photos()["tiny_37x23"])
    with pytest.raises(ValueError, match="exclude each other"):
        ours.predict(box=np.array([1, 1, 10, 10]), sam_only=True, hq_token_only=True)
