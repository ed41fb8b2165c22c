"""jit behaviour, batching and input validation of the model API."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samhq_jax import ImageEncoderConfig, ModelConfig, SamHQ, init_params
from samhq_jax.image_encoder import ImageEncoderViT
from samhq_jax.transformer import TwoWayTransformer

CONFIG = ModelConfig.tiny_b()


@pytest.fixture(scope="module")
def params() -> dict:
    return init_params(CONFIG, jax.random.PRNGKey(0))


def _images(n: int) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(1), (n, CONFIG.img_size, CONFIG.img_size, 3))


def test_embedding_is_compiled_once_and_reused_for_any_prompt_count(params: dict) -> None:
    model = SamHQ(CONFIG)
    traces = {"embed": 0, "decode": 0}

    @jax.jit
    def embed(params, images):
        traces["embed"] += 1
        return model.apply({"params": params}, images, method=SamHQ.embed_image)

    @jax.jit
    def decode(params, emb, boxes):
        traces["decode"] += 1
        return model.apply({"params": params}, emb, boxes=boxes, method=SamHQ.decode)

    emb = embed(params, _images(1))
    outs = {}
    for p in (1, 4, 1, 4, 7):
        boxes = jnp.tile(jnp.array([[[10.0, 20.0, 90.0, 120.0]]]), (1, p, 1)) + jnp.arange(p)[None, :, None]
        outs[p] = decode(params, emb, boxes)
        assert outs[p][0].shape == (1, p, 1, CONFIG.low_res_mask_size, CONFIG.low_res_mask_size)
    embed(params, _images(1) + 1)
    assert traces == {"embed": 1, "decode": 3}
    # Batched prompts give the same masks as one prompt at a time.
    boxes = jnp.tile(jnp.array([[[10.0, 20.0, 90.0, 120.0]]]), (1, 4, 1)) + jnp.arange(4)[None, :, None]
    for i in range(4):
        single, _ = decode(params, emb, boxes[:, i : i + 1])
        np.testing.assert_allclose(np.asarray(outs[4][0][:, i]), np.asarray(single[:, 0]), rtol=1e-5, atol=1e-5)


def test_predictor_compiles_once_per_bucket_and_image_size(params: dict) -> None:
    """Prompt counts 1..4 on one image: the decoder and the on-device upscaling compile once per
    power-of-two bucket (1, 2, 4) at most, not once per count; the HQ features come with the embedding."""
    from samhq_jax.predictor import SamHQPredictor, compiled_model, full_masks

    config = dataclasses.replace(CONFIG, name="compile-count")  # compiled by no other test of this process
    predictor = SamHQPredictor(config, params)
    _, embed, decode = compiled_model(config, jnp.float32)
    upscale_before = full_masks._cache_size()
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)
    predictor.set_image(image)
    assert predictor.embeddings.hq_features.shape == (
        1,
        *(2 * [config.low_res_mask_size]),
        config.mask_decoder.transformer_dim // 8,
    )
    for p in (1, 2, 3, 4, 3):
        masks, iou, low = predictor.predict_batch(
            boxes=np.tile([[5.0, 6.0, 40.0, 30.0]], (p, 1)) + np.arange(p)[:, None]
        )
        assert masks.shape == (p, 1, 50, 70) and masks.dtype == bool and iou.shape == (p, 1)
        assert low.shape == (p, 1, config.low_res_mask_size, config.low_res_mask_size)
    # the upscaling's image size is data: at most one program per prompt bucket and padded size (other
    # tests may already have compiled this padded size's)
    assert decode._cache_size() == 3 and full_masks._cache_size() - upscale_before <= 3
    predictor.set_image(image[::-1])
    assert embed._cache_size() == 1


def test_precision_reaches_every_dot_and_convolution(params: dict) -> None:
    """``precision="highest"`` marks every dot_general and convolution of the compiled encoder and
    decoder HIGHEST (full float32 on GPUs / TPUs too); ``"default"`` leaves them to the backend."""
    from samhq_jax.predictor import compiled_model

    images = _images(1)
    boxes = jnp.array([[[10.0, 20.0, 90.0, 120.0]]])
    for precision, marked in (("highest", True), ("default", False)):
        _, embed, decode = compiled_model(CONFIG, jnp.float32, precision)
        emb = jax.eval_shape(embed, {"params": params}, images)
        for text in (
            embed.lower({"params": params}, images).as_text(),
            decode.lower({"params": params}, emb, None, None, boxes).as_text(),
        ):
            ops = [line for line in text.splitlines() if "dot_general" in line or "convolution" in line]
            assert ops and all(("HIGHEST" in line) == marked for line in ops), precision
    with pytest.raises(ValueError, match="precision must be one of"):
        compiled_model(CONFIG, jnp.float32, "fast")


def test_several_images_with_their_own_prompts(params: dict) -> None:
    model = SamHQ(CONFIG)
    images = _images(2)
    emb = model.apply({"params": params}, images, method=SamHQ.embed_image)
    points = jnp.array([[[[30.0, 40.0]], [[100.0, 60.0]]], [[[50.0, 50.0]], [[10.0, 150.0]]]])
    labels = jnp.ones((2, 2, 1), jnp.int32)
    both, iou = model.apply({"params": params}, emb, points, labels, method=SamHQ.decode)
    for b in range(2):
        one = jax.tree.map(lambda a, b=b: a[b : b + 1], emb)
        single, single_iou = model.apply(
            {"params": params}, one, points[b : b + 1], labels[b : b + 1], method=SamHQ.decode
        )
        np.testing.assert_allclose(np.asarray(both[b]), np.asarray(single[0]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(iou[b]), np.asarray(single_iou[0]), rtol=1e-5, atol=1e-6)


def test_every_part_jit_compiles(params: dict) -> None:
    enc = ImageEncoderViT(CONFIG.image_encoder)
    emb, early = jax.jit(enc.apply)({"params": params["image_encoder"]}, _images(1))
    g = CONFIG.embedding_size
    assert emb.shape == (1, g, g, 32) and early.shape == (1, g, g, CONFIG.image_encoder.embed_dim)
    tr = TwoWayTransformer(CONFIG.mask_decoder)
    q, k = jax.jit(tr.apply)(
        {"params": params["mask_decoder"]["transformer"]},
        jnp.ones((2, g * g, 32)),
        jnp.ones((1, g * g, 32)),
        jnp.ones((2, 9, 32)),
    )
    assert q.shape == (2, 9, 32) and k.shape == (2, g * g, 32)
    model = SamHQ(CONFIG)
    fn = jax.jit(lambda p, x, m: model.apply({"params": p}, x, mask_inputs=m, multimask_output=True))
    masks, iou = fn(params, _images(1), jnp.zeros((1, 1, 4 * g, 4 * g)))
    assert masks.shape == (1, 1, 1, 4 * g, 4 * g) and iou.shape == (1, 1, 1)
    assert bool(jnp.isfinite(masks).all())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(points=jnp.zeros((1, 1, 2)), labels=jnp.ones((1, 1))), r"points must be \(B, P, N, 2\)"),
        (dict(points=jnp.zeros((1, 1, 2, 2)), labels=jnp.ones((1, 1, 3))), "labels must be"),
        (dict(points=jnp.zeros((1, 1, 2, 2))), "labels must be"),
        (dict(boxes=jnp.zeros((1, 4))), r"boxes must be \(B, P, 4\)"),
        (dict(boxes=jnp.zeros((1, 2, 4)), points=jnp.zeros((1, 3, 1, 2)), labels=jnp.ones((1, 3, 1))), "disagree"),
        (dict(boxes=jnp.zeros((3, 1, 4))), "prompts are for 3 images"),
    ],
)
def test_bad_prompts_raise(params: dict, kwargs: dict, match: str) -> None:
    model = SamHQ(CONFIG)
    emb = model.apply({"params": params}, _images(1), method=SamHQ.embed_image)
    with pytest.raises(ValueError, match=match):
        model.apply({"params": params}, emb, method=SamHQ.decode, **kwargs)


def test_bad_image_and_config_raise(params: dict) -> None:
    with pytest.raises(ValueError, match="images must be"):
        SamHQ(CONFIG).apply({"params": params}, jnp.zeros((1, 64, 64, 3)), method=SamHQ.embed_image)
    with pytest.raises(ValueError, match="not divisible"):
        ImageEncoderConfig(embed_dim=30, depth=2, num_heads=4, global_attn_indexes=(1,))
    with pytest.raises(ValueError, match="global_attn_indexes"):
        ImageEncoderConfig(embed_dim=32, depth=2, num_heads=4, global_attn_indexes=(2,))
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("vit_x")


def test_presets_match_the_paper_table() -> None:
    for name, width, depth, heads, glob in [
        ("vit_b", 768, 12, 12, (2, 5, 8, 11)),
        ("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
        ("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    ]:
        enc = ModelConfig.preset(name).image_encoder
        assert (enc.embed_dim, enc.depth, enc.num_heads, enc.global_attn_indexes) == (width, depth, heads, glob)
        assert (enc.window_size, enc.img_size, enc.patch_size, enc.out_chans) == (14, 1024, 16, 256)
    assert ModelConfig.from_dict(ModelConfig.vit_h().to_dict()) == ModelConfig.vit_h()
