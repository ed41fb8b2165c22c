"""Light HQ-SAM (``vit_tiny``): the TinyViT encoder against the official ``segment_anything_hq`` one,
stage by stage and through the predictor, with every tensor randomised (BatchNorm running statistics
and attention biases included); its weights (``sam_hq_vit_tiny.pth`` layout, MobileSAM's
``mobile_sam.pt`` as a plain-SAM start) and conversions; the frozen BatchNorm statistics.

One real-size official model is built per session (``official_model_and_params("vit_tiny")``); the
official encoder takes ~10 s per 1024 px image on two CPU cores, so each photo is encoded once. The
decoder's stages are those of the ViT models (tests/test_parity_official.py) but for the 160-channel
early feature, which the predictor test checks end to end (HQ mask alone and summed, all four flag
pairs); ``samhq parity --preset vit_tiny`` lists them stage by stage.
"""

from __future__ import annotations

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict, unflatten_dict
from PIL import Image

from convert.core import ConversionError, state_dict_to_params
from eval.parity.official import official_image_stages
from eval.parity.ours import jax_image_stages
from eval.parity.samples import IMAGES_DIR, sample_images
from eval.parity.stages import FLAGS, compare, mask_agreement
from samhq_jax.checkpoint import UntrainedHQWarning, read_weights
from samhq_jax.config import ModelConfig, TinyViTConfig
from samhq_jax.hq_params import hq_paths, is_hq_path
from samhq_jax.predictor import SamHQPredictor
from samhq_jax.sam_hq import param_shapes
from samhq_jax.tiny_vit import Conv2dBN, WindowAttention, attention_bias_index, is_batch_stat
from tests.conftest import MASK_AGREEMENT, PARITY_RTOL, assert_close, official_model_and_params

PRESET = "vit_tiny"
UNUSED_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")
HQ_TORCH_PARTS = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


def _unused(key: str) -> bool:
    """The official file's tensors no model uses: the classifier head and the BatchNorm counters."""
    return key.startswith(UNUSED_PREFIXES) or key.endswith(".num_batches_tracked")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return official_model_and_params(PRESET)


@pytest.fixture(scope="module")
def encoded(tiny: tuple) -> tuple:
    """Both encoders' stages on one photo (dog.jpg, SAM's pre-processing)."""
    model, _, config, params = tiny
    images = sample_images(config, 1)
    return official_image_stages(model, images), jax_image_stages(config, params, images)


# ---- structure -------------------------------------------------------------------------------------


def test_preset_counts_equal_the_official_model(tiny: tuple) -> None:
    _, state, config, params = tiny
    assert config == ModelConfig.vit_tiny() and config.name == PRESET
    assert ModelConfig.from_dict(config.to_dict()) == config
    flat = flatten_dict(params, sep="/")
    used = {k: v for k, v in state.items() if not _unused(k)}
    assert len(flat) == len(used) and sum(v.size for v in flat.values()) == sum(v.size for v in used.values())
    hq = hq_paths(config)
    official_hq = sum(v.size for k, v in state.items() if k.split(".")[1] in HQ_TORCH_PARTS)
    assert len(hq) == 25 and sum(flat[k].size for k in hq) == official_hq == 448_512
    # the decoder's early feature is stage 1's output: 64 x 64 x 160 (compress_vit_feat takes 160 channels)
    assert config.image_encoder.early_dim == 160 and config.image_encoder.grid_size == 64
    assert state["mask_decoder.compress_vit_feat.0.weight"].shape[0] == 160


@pytest.mark.parametrize("window", [7, 14])
def test_attention_bias_index_equals_the_official_buffer(window: int) -> None:
    from segment_anything_hq.modeling.tiny_vit_sam import Attention

    official = Attention(dim=64, key_dim=32, num_heads=2, attn_ratio=1, resolution=(window, window))
    assert np.array_equal(attention_bias_index(window), official.attention_bias_idxs.numpy())


def test_config_checks() -> None:
    enc = ModelConfig.vit_tiny().image_encoder
    with pytest.raises(ValueError, match="one entry per stage"):
        dataclasses.replace(enc, depths=(2, 2, 6))
    with pytest.raises(ValueError, match="early_stage"):
        dataclasses.replace(enc, early_stage=0)


# ---- parity ------------------------------------------------------------------------------------------


def test_image_encoder_stages(tiny: tuple, encoded: tuple) -> None:
    _, _, config, _ = tiny
    ref, ours = encoded
    enc = config.image_encoder
    blocks = {f"layers_{i}_blocks_{j}" for i in range(enc.num_stages) for j in range(enc.depths[i])}
    stages = {f"layers_{i}" for i in range(enc.num_stages)}
    assert set(ref) == set(ours) == blocks | stages | {"patch_embed", "neck", "image_embeddings", "early_features"}
    assert ours["early_features"].shape == (1, 64, 64, 160) and ours["image_embeddings"].shape == (1, 64, 64, 256)
    errs = compare(ours, ref)
    print("\nvit_tiny encoder stages:", ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    bad = {k: v for k, v in errs.items() if v > PARITY_RTOL}
    assert not bad, f"stages over {PARITY_RTOL}: {bad}"


@pytest.fixture(scope="module")
def predictors(tiny: tuple) -> tuple:
    from segment_anything_hq import SamPredictor

    model, _, config, params = tiny
    return SamPredictor(model), SamHQPredictor(config, params)


PHOTOS = sorted(p.name for p in IMAGES_DIR.glob("*.*"))
CI_PHOTOS = 2  # the others are marked slow (a real-size encoding per photo and framework)


@pytest.mark.parametrize(
    "photo", [p if i < CI_PHOTOS else pytest.param(p, marks=pytest.mark.slow) for i, p in enumerate(PHOTOS)]
)
def test_predictor_matches_official(predictors: tuple, photo: str) -> None:
    ref, ours = predictors
    image = np.asarray(Image.open(IMAGES_DIR / photo).convert("RGB"))
    ref.set_image(image)
    ours.set_image(image)
    h, w = image.shape[:2]
    rng = np.random.default_rng(h)
    points = np.stack([rng.uniform(0, w - 1, 2), rng.uniform(0, h - 1, 2)], -1)
    box = np.array([0.2 * w, 0.2 * h, 0.7 * w, 0.8 * h])
    prompts = {"points+box": dict(point_coords=points, point_labels=np.array([1, 0]), box=box)}
    for name, prompt in prompts.items():
        for multimask, hq_only in FLAGS:
            what = f"{photo} {name} {multimask=} {hq_only=}"
            r = ref.predict(**prompt, multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
            o = ours.predict(**prompt, multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
            assert o[0].shape == r[0].shape == (1, h, w), what
            assert_close(o[2], r[2], f"{what}: low-res logits")
            assert_close(o[1], r[1], f"{what}: iou")
            assert mask_agreement(o[0], r[0]) >= MASK_AGREEMENT, what


def test_mask_generator_matches_official(tiny: tuple) -> None:
    """``SamHQAutomaticMaskGenerator`` against the official ``SamAutomaticMaskGenerator`` on the official
    vit_tiny model: thresholds off and box NMS at 1 keep every record (random weights give near-equal
    masks; the filters themselves are proven model-independent in tests/test_amg.py)."""
    from segment_anything_hq import SamAutomaticMaskGenerator

    from samhq_jax.amg import SamHQAutomaticMaskGenerator

    model, _, config, params = tiny
    image = np.asarray(Image.open(IMAGES_DIR / "example7.png").convert("RGB"))
    kwargs = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    with torch.inference_mode():
        ref = SamAutomaticMaskGenerator(model, **kwargs).generate(image)
    ours = SamHQAutomaticMaskGenerator(SamHQPredictor(config, params), **kwargs).generate(image)
    assert len(ours) == len(ref) == 6 * 6  # one mask per point (multimask: the best of three)
    pairs = list(zip(ours, ref, strict=True))
    agree = [mask_agreement(a["segmentation"], b["segmentation"]) for a, b in pairs]
    d_iou = [abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in pairs]
    d_stab = [abs(a["stability_score"] - b["stability_score"]) for a, b in pairs]
    print(f"\nvit_tiny generator: pixels {min(agree):.6f}, predicted_iou {max(d_iou):.1e}, stability {max(d_stab):.1e}")
    for i, (a, b) in enumerate(pairs):
        assert a.keys() == b.keys()
        assert a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"], f"record {i}"
        assert agree[i] >= MASK_AGREEMENT and d_iou[i] <= 1e-4 and d_stab[i] <= 1e-4, f"record {i}"
        # a pixel whose logit sits at the threshold may flip: areas and boxes follow the masks
        differ = int(np.sum(a["segmentation"] != b["segmentation"]))
        assert abs(a["area"] - b["area"]) <= differ and np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 1, i


# ---- weights -----------------------------------------------------------------------------------------


def test_checkpoint_files_load_and_skip_the_classifier_head(tiny: tuple, tmp_path, caplog) -> None:
    from safetensors.numpy import save_file

    _, state, config, params = tiny
    pth, st = tmp_path / "sam_hq_vit_tiny.pth", tmp_path / "sam_hq_vit_tiny.safetensors"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
    save_file({k: v.astype(np.float32) for k, v in state.items()}, str(st))
    expected = flatten_dict(params, sep="/")
    for path in (pth, st):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="convert.core"):
            weights = read_weights(path)
        assert weights.hq_trained and weights.config == config
        got = flatten_dict(weights.params, sep="/")
        assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
        assert "skipped 31 tensor(s) no model uses: 4 classifier head, 27 BatchNorm num_batches_tracked" in caplog.text


def test_every_tensor_is_mapped_or_named(tiny: tuple) -> None:
    _, state, _, _ = tiny
    bad = dict(state)
    del bad["image_encoder.layers.2.blocks.3.attn.attention_biases"]
    bad["image_encoder.layers.1.blocks.0.attn.qkv.weight"] = np.zeros((5, 5), np.float32)
    bad["image_encoder.layers.1.blocks.0.attn.ab"] = np.zeros((4, 49, 49), np.float32)
    with pytest.raises(ConversionError) as err:
        state_dict_to_params(bad)
    msg = str(err.value)
    assert "vit_tiny" in msg
    assert "missing keys (1):\n    image_encoder.layers.2.blocks.3.attn.attention_biases" in msg
    assert "unexpected keys (1):\n    image_encoder.layers.1.blocks.0.attn.ab" in msg
    assert "image_encoder.layers.1.blocks.0.attn.qkv.weight: checkpoint (5, 5), model (384, 128)" in msg


def test_convert_both_ways_is_bit_identical_and_hf_is_refused(tiny: tuple, tmp_path, capsys) -> None:
    from convert.cli import main as convert_main

    _, state, _, params = tiny
    src = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, src)
    assert convert_main([str(src), str(tmp_path / "ours")]) == 0
    assert convert_main([str(tmp_path / "ours"), str(tmp_path / "back.pth"), "--to", "official"]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(back) == {k for k in state if not _unused(k)}
    assert all(np.array_equal(back[k].numpy(), state[k]) for k in back)
    again = flatten_dict(read_weights(tmp_path / "back.pth").params, sep="/")
    assert all(np.array_equal(again[k], v) for k, v in flatten_dict(params, sep="/").items())
    capsys.readouterr()
    assert convert_main([str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert "no Hugging Face format exists for vit_tiny" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_mobile_sam_loads_as_the_plain_sam_start(tiny: tuple, tmp_path) -> None:
    """``mobile_sam.pt``: the same TinyViT and SAM's decoder, no HQ tensors."""
    _, state, config, params = tiny
    mobile = {k: v for k, v in state.items() if not k.startswith(tuple(f"mask_decoder.{p}" for p in HQ_TORCH_PARTS))}
    path = tmp_path / "mobile_sam.pt"
    torch.save({k: torch.from_numpy(v) for k, v in mobile.items()}, path)
    weights = read_weights(path)
    assert not weights.hq_trained and weights.config == config
    got, sam = flatten_dict(weights.params, sep="/"), flatten_dict(params, sep="/")
    assert sorted(k for k in got if is_hq_path(k)) == hq_paths(config)
    assert all(np.array_equal(got[k], v) for k, v in sam.items() if not is_hq_path(k))
    with pytest.warns(UntrainedHQWarning):
        SamHQPredictor.from_pretrained(path)


# ---- BatchNorm statistics are constants ----------------------------------------------------------------


def _random_params(module: nn.Module, *inputs: jax.Array) -> dict:
    """``module``'s parameters, every one ~ |1 + 0.1 N| (positive: valid variances), from numpy."""
    shapes = flatten_dict(jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"], sep="/")
    rng = np.random.default_rng(1)
    return unflatten_dict(
        {k: np.abs(1 + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in shapes.items()}, sep="/"
    )


def test_batch_norm_statistics_get_no_gradient() -> None:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 6, 4)), jnp.float32)
    module = Conv2dBN(4, 3, 2, depthwise=True)
    params = _random_params(module, x)
    grads = flatten_dict(jax.jit(jax.grad(lambda p: jnp.sum(module.apply({"params": p}, x) ** 2)))(params), sep="/")
    assert sorted(k for k in grads if is_batch_stat(k)) == ["bn/running_mean", "bn/running_var"]
    assert all(not np.any(v) if is_batch_stat(k) else np.all(v != 0) for k, v in grads.items())


def test_window_attention_paths_agree() -> None:
    """A 5 x 5 map in 3 x 3 windows (padded): ``jax.nn.dot_product_attention`` with the bias equals the einsum."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 5, 5, 8)), jnp.float32)
    params = _random_params(WindowAttention(2, 3, 1e-5), x)
    apply = {a: WindowAttention(2, 3, 1e-5, attention=a).apply for a in ("blocked", "extended")}
    blocked, extended = jax.jit(lambda p: [f({"params": p}, x) for f in apply.values()])(params)
    assert_close(np.asarray(extended), np.asarray(blocked), "extended vs blocked", rtol=1e-5)


# ---- fine-tuning Light HQ-SAM --------------------------------------------------------------------------


def test_hq_recipe_trains_448512_values_and_never_the_batch_stats() -> None:
    from train.trainable import count, partition

    shapes = param_shapes(ModelConfig.vit_tiny())
    hq, _ = partition(shapes, "hq")
    assert count(hq) == 448_512
    everything, frozen = partition(shapes, "all")
    frozen = flatten_dict(frozen, sep="/")
    assert frozen and all(is_batch_stat(k) for k in frozen)
    assert not any(is_batch_stat(k) for k in flatten_dict(everything, sep="/"))


def test_training_all_leaves_batch_stats_bit_identical(tmp_path) -> None:
    """A small TinyViT model (160 px, the stand-in decoder of tiny_b) trained with ``--trainable all``:
    every BatchNorm statistic stays bit-identical, the other encoder tensors move."""
    from samhq_jax.checkpoint import save_checkpoint
    from train.loop import TrainConfig, train
    from train.synthetic import write_synthetic_dataset

    encoder = TinyViTConfig(
        embed_dims=(8, 16, 24, 32),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 3, 4),
        window_sizes=(3, 3, 5, 3),
        merge_strides=(2, 2, 1),
        img_size=160,
        out_chans=32,
    )
    config = dataclasses.replace(ModelConfig.tiny_b(), image_encoder=encoder, name="custom")
    rng = np.random.default_rng(0)
    start = {
        k: np.abs(1 + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) if is_batch_stat(k) else
        (0.2 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in flatten_dict(param_shapes(config), sep="/").items()
    }  # fmt: skip
    save_checkpoint(tmp_path / "start", config, unflatten_dict(start, sep="/"))
    write_synthetic_dataset(tmp_path / "data", 4, size=160, seed=0)
    result = train(
        TrainConfig(
            output=tmp_path / "run",
            checkpoint=str(tmp_path / "start"),
            data=(str(tmp_path / "data"),),
            steps=2,
            batch_size=2,
            trainable="all",
            save_every=2,
            log_every=1,
            val_every=0,
        )
    )
    end = flatten_dict(result.params, sep="/")
    assert end.keys() == start.keys()
    stats = [k for k in start if is_batch_stat(k)]
    assert len(stats) == 34 and all(np.array_equal(end[k], start[k]) for k in stats)  # 17 BatchNorms
    moved = [k for k in start if k.startswith("image_encoder/") and not np.array_equal(end[k], start[k])]
    assert len(moved) == sum(k.startswith("image_encoder/") for k in start) - len(stats)
