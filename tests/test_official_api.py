"""The official API under its own names (``sam_model_registry``, ``SamPredictor(sam)``,
``SamAutomaticMaskGenerator(sam, ...)``, the ``Sam`` object) against ``segment_anything_hq`` on
the same seeded random tiny model, loaded from one official checkpoint file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import samhq_jax
from eval.parity.samples import IMAGES_DIR
from eval.parity.stages import mask_agreement
from samhq_jax import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from samhq_jax.errors import InputError
from samhq_jax.predictor import SamHQPredictor
from tests.conftest import MASK_AGREEMENT, assert_close, official_model_and_params

PRESET = "tiny_h"
OFFICIAL_TYPES = ("default", "vit_h", "vit_l", "vit_b", "vit_tiny")  # segment_anything_hq 0.3's registry
BOXES = [[45, 260, 515, 470], [310, 228, 424, 296]]  # the demo's example 7


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``(official Sam, ours from the registry, checkpoint path)`` with the same weights."""
    model = official_model_and_params(PRESET)[0]
    path = tmp_path_factory.mktemp("official_api") / "sam_hq_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, sam_model_registry[PRESET](checkpoint=path), path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.asarray(Image.open(IMAGES_DIR / "example7.png").convert("RGB"))


def test_registry_builds_the_official_model_object(models: tuple) -> None:
    import segment_anything_hq

    ref, sam, path = models
    assert set(OFFICIAL_TYPES) <= set(sam_model_registry) and set(segment_anything_hq.sam_model_registry) <= set(
        sam_model_registry
    )
    assert samhq_jax.build_sam is samhq_jax.build_sam_vit_h and sam_model_registry["default"] is samhq_jax.build_sam
    assert sam.to(device="cpu") is sam and sam.to(torch.device("cpu")) is sam and sam.eval() is sam
    assert sam.train(False) is sam
    with pytest.raises(InputError, match="samhq-train"):
        sam.train()
    assert sam.image_encoder.img_size == ref.image_encoder.img_size
    assert (sam.mask_threshold, sam.image_format) == (ref.mask_threshold, ref.image_format)
    pe, dec = ref.prompt_encoder, ref.mask_decoder
    assert sam.prompt_encoder.embed_dim == pe.embed_dim
    assert sam.prompt_encoder.image_embedding_size == tuple(pe.image_embedding_size)
    assert sam.prompt_encoder.input_image_size == tuple(pe.input_image_size)
    assert sam.prompt_encoder.mask_input_size == tuple(pe.mask_input_size)
    assert sam.mask_decoder.transformer_dim == dec.transformer_dim
    assert sam.mask_decoder.num_multimask_outputs == dec.num_multimask_outputs
    assert sam.mask_decoder.num_mask_tokens == dec.num_mask_tokens
    np.testing.assert_array_equal(sam.pixel_mean, ref.pixel_mean.numpy())
    np.testing.assert_array_equal(sam.pixel_std, ref.pixel_std.numpy())
    assert sam.device == ref.device == torch.device("cpu") and sam.jax_device == jax.devices()[0]
    # The official fails on the first misshaped tensor; we name the checkpoint and the model types.
    with pytest.raises(InputError, match=rf"{path.name} holds a {PRESET} model, not vit_b"):
        sam_model_registry["vit_b"](checkpoint=path)
    with pytest.raises(InputError, match="unknown model type"):
        samhq_jax.official_api.build_sam_from_preset("vit_x")


def test_predictor_takes_the_model_and_answers_as_the_official(
    models: tuple, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segment_anything_hq import SamPredictor as OfficialPredictor

    ref_model, sam, _ = models
    ref, ours = OfficialPredictor(ref_model), SamPredictor(sam)
    assert ours.model is sam and not ours.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        ours.get_image_embedding()
    ref.set_image(image)
    ours.set_image(image)
    embedding = ours.get_image_embedding()
    assert embedding.shape == tuple(ref.get_image_embedding().shape)  # (1, C, G, G)
    assert_close(embedding, ref.get_image_embedding().numpy(), "get_image_embedding")
    assert (ours.original_size, ours.input_size) == (tuple(ref.original_size), tuple(ref.input_size))
    # interm_features: every global block's output, NHWC, as the official list (the first is the decoder's)
    assert len(ours.interm_features) == len(ref.interm_features) == len(sam.config.image_encoder.global_attn_indexes)
    for i, (o, f) in enumerate(zip(ours.interm_features, ref.interm_features, strict=True)):
        assert_close(o, f.numpy(), f"interm_features[{i}]")
    early = SamHQPredictor.get_image_embedding(ours).early_features  # what the decoder reads
    assert_close(ours.interm_features[0], np.asarray(early), "interm_features[0] vs the decoder's early feature")
    # The demo's batched boxes, torch tensors placed on predictor.device, on both.
    ref_boxes = ref.transform.apply_boxes_torch(torch.tensor(BOXES), image.shape[:2])
    r = ref.predict_torch(None, None, ref_boxes, None, False)
    boxes = torch.tensor(BOXES, device=ours.device)
    o = ours.predict_torch(None, None, ours.transform.apply_boxes_torch(boxes, image.shape[:2]), None, False)
    assert mask_agreement(o[0], r[0].numpy()) >= MASK_AGREEMENT
    assert_close(o[1], r[1].numpy(), "predict_torch iou")
    ref.set_image(image[::-1])
    ours.set_image(image[::-1])  # a new image: its own interm_features, not the cached list
    assert_close(ours.interm_features[-1], ref.interm_features[-1].numpy(), "interm_features[-1], second image")
    ours.reset_image()
    assert not ours.is_image_set and ours.features is None
    # Without PyTorch, device is the JAX device.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name))
    assert ours.device == jax.devices()[0] and sam.device == sam.jax_device
    with pytest.raises(TypeError, match="sam_model_registry"):
        SamPredictor(ours)


def test_sam_forward_preprocess_postprocess_equal_official(models: tuple, image: np.ndarray) -> None:
    ref, sam, _ = models
    transform = SamPredictor(sam).transform
    resized = torch.as_tensor(transform.apply_image(image).copy()).permute(2, 0, 1)
    boxes = torch.as_tensor(transform.apply_boxes(np.array(BOXES), image.shape[:2]))
    record = {"image": resized, "original_size": image.shape[:2], "boxes": boxes}
    with torch.no_grad():
        r = ref([record], multimask_output=False)[0]
        low = torch.randn(2, 1, sam.config.low_res_mask_size, sam.config.low_res_mask_size)
        r_post = ref.postprocess_masks(low, tuple(resized.shape[-2:]), image.shape[:2])
        r_pre = ref.preprocess(resized.float())
    o = sam([record], multimask_output=False)[0]
    assert sorted(o) == sorted(r) and all(o[k].shape == tuple(r[k].shape) for k in r)
    assert mask_agreement(o["masks"], r["masks"].numpy()) >= MASK_AGREEMENT
    assert_close(o["iou_predictions"], r["iou_predictions"].numpy(), "forward iou")
    assert_close(o["low_res_logits"], r["low_res_logits"].numpy(), "forward low-res logits")
    assert_close(sam.postprocess_masks(low, tuple(resized.shape[-2:]), image.shape[:2]), r_post.numpy(), "post")
    assert_close(sam.preprocess(resized), r_pre.numpy(), "preprocess", 1e-6)


def test_mask_generator_takes_the_model_with_official_keywords(models: tuple, image: np.ndarray) -> None:
    from segment_anything_hq import SamAutomaticMaskGenerator as Official

    ref_model, sam, _ = models
    # The settings and image of test_hf_api.py's pipeline test: the same compiled programs serve both.
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    small = image[::4, ::4].copy()
    ref = Official(ref_model, **settings).generate(small)
    generator = SamAutomaticMaskGenerator(sam, **settings)
    assert isinstance(generator.predictor, SamPredictor) and generator.predictor.model is sam
    ours = generator.generate(small)
    assert len(ours) == len(ref) > 0
    for o, r in zip(ours, ref, strict=True):
        assert o["bbox"] == r["bbox"] and o["point_coords"] == r["point_coords"]
        assert abs(o["predicted_iou"] - r["predicted_iou"]) <= 1e-4 * max(1.0, abs(r["predicted_iou"]))
        assert mask_agreement(o["segmentation"], r["segmentation"]) >= MASK_AGREEMENT


def test_official_names_are_exported() -> None:
    for name in ("sam_model_registry", "SamPredictor", "SamAutomaticMaskGenerator", "build_sam_vit_b", "Sam"):
        assert name in samhq_jax.__all__ and getattr(samhq_jax, name) is getattr(samhq_jax.official_api, name)
    assert Path(samhq_jax.official_api.__file__).name == "official_api.py"


def test_baseline_registry_decodes_as_the_original_sam(models: tuple, image: np.ndarray) -> None:
    """``sam_model_registry_baseline``: an HQ checkpoint decoded by SAM's part alone, as the official
    baseline (``build_sam_baseline``: the plain ``MaskDecoder``, the checkpoint loaded non-strictly)."""
    from segment_anything_hq import SamPredictor as OfficialPredictor
    from segment_anything_hq import modeling

    hq, _, path = models
    dec = hq.mask_decoder
    plain = modeling.MaskDecoder(
        transformer_dim=dec.transformer_dim,
        transformer=dec.transformer,
        num_multimask_outputs=dec.num_multimask_outputs,
        iou_head_depth=3,
        iou_head_hidden_dim=dec.iou_prediction_head.layers[0].out_features,
    )
    assert not plain.load_state_dict(hq.mask_decoder.state_dict(), strict=False).missing_keys
    baseline = modeling.Sam(image_encoder=hq.image_encoder, prompt_encoder=hq.prompt_encoder, mask_decoder=plain).eval()
    ref, ours = OfficialPredictor(baseline), SamPredictor(samhq_jax.sam_model_registry_baseline[PRESET](path))
    ref.set_image(image)
    ours.set_image(image)
    box = np.array(BOXES[0])
    r = ref.predict(box=box, multimask_output=True, hq_token_only=True)  # the plain decoder ignores the flag
    o = ours.predict(box=box, multimask_output=True, hq_token_only=True)
    assert o[0].shape == r[0].shape and o[0].shape[0] == 3  # SAM's three masks
    assert mask_agreement(o[0], r[0]) >= MASK_AGREEMENT
    assert_close(o[1], r[1], "baseline iou")
    assert_close(o[2], r[2], "baseline low-res logits")
    with pytest.raises(InputError, match="sam_model_registry_baseline"):
        SamAutomaticMaskGenerator(ours.model)


def test_transform_and_predict_torch_outputs_answer_to() -> None:
    """What the official returns as tensors takes ``.to(device)`` (kept) and ``.to(dtype)`` (converted)."""
    transform = samhq_jax.official_api.OfficialResizeLongestSide(160)
    boxes = transform.apply_boxes_torch(torch.tensor([[10, 20, 300, 200]]), (240, 320))
    assert boxes.to("cpu") is boxes and boxes.to(device=torch.device("cpu")) is boxes
    assert boxes.to(torch.float64).dtype == np.float64 and boxes.to(torch.int32).dtype == np.int32
    np.testing.assert_array_equal(boxes.cpu().numpy(), [[5, 10, 150, 100]])
