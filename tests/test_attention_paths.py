"""The ViT attention's forms (``ATTENTION_PATHS``) against each other: the extended-q/k form through
``jax.nn.dot_product_attention`` gives the blocked form's output, for the functions, one
``Attention`` (windowed with padding, global) and the whole encoder, in fp32 and bf16; it exports for
CUDA and TPU without custom calls; ``"cudnn"`` is refused where cuDNN cannot run it."""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samhq_jax.config import ModelConfig
from samhq_jax.image_encoder import (
    Attention,
    ImageEncoderViT,
    auto_attention_path,
    check_cudnn_attention,
    extended_attention,
    extended_head_dim,
    rel_pos_attention,
)
from samhq_jax.sam_hq import SamHQ
from tests.conftest import assert_close

FP32_FUNCTION_RTOL = 1e-6  # the attention functions alone, "highest" matmuls
FP32_MODEL_RTOL = 1e-5  # a module or the whole encoder
BF16_RTOL = 2e-2
PARAM_NOISE = 0.2  # spread of the random biases and LayerNorm scales


def _randn(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _random_params(module: nn.Module, x: jax.Array) -> dict:
    """Random parameters in the tree ``module.init`` gives (traced only, not run: a jitted init of
    the tiny encoder takes seconds). Non-zero rel-pos tables and biases (the zero token is the qkv
    bias); LayerNorm scales near 1; matrices scaled by their fan-in."""
    rng = np.random.default_rng(7)

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        if name == "scale":
            return 1 + PARAM_NOISE * noise
        if leaf.ndim == 1:
            return PARAM_NOISE * noise
        return noise / np.sqrt(np.prod(leaf.shape[:-1]))

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(module.init, jax.random.PRNGKey(0), x))


# Square and non-square maps, head dims padded to a multiple of 8 (20 + 6 + 10 -> 40; 20 -> 24), query
# blocks smaller than the map (the blocked path's padded last block), with and without the tables.
@pytest.mark.parametrize(
    "h,w,hd,query_block,rel_pos",
    [(8, 8, 16, 256, True), (8, 8, 16, 24, True), (6, 10, 20, 16, True), (6, 10, 20, 256, False)],
)
def test_extended_attention_equals_blocked(h: int, w: int, hd: int, query_block: int, rel_pos: bool) -> None:
    b, heads = 2, 3
    q, k, v = (_randn(i, (b, heads, h * w, hd)) for i in range(3))
    rh = _randn(3, (h, h, hd), 0.5) if rel_pos else None
    rw = _randn(4, (w, w, hd), 0.5) if rel_pos else None
    with jax.default_matmul_precision("highest"):
        ref = jax.jit(rel_pos_attention, static_argnums=5)(q, k, v, rh, rw, query_block)
        bhnd = [a.transpose(0, 2, 1, 3) for a in (q, k, v)]
        ours = jax.jit(extended_attention, static_argnums=5)(*bhnd, rh, rw, "xla")
    assert ours.shape == ref.shape == (b, h * w, heads, hd)
    assert_close(np.asarray(ours), np.asarray(ref), f"extended vs blocked {h}x{w}", rtol=FP32_FUNCTION_RTOL)


# 10 x 10 in windows of 4: padded to 12 x 12 with the zero token (the qkv bias); and the 10 x 10 map global.
@pytest.mark.parametrize("window,rel_pos", [(4, True), (4, False), (0, True)])
def test_attention_module_paths_agree(window: int, rel_pos: bool) -> None:
    dim, heads, size = 24, 3, 10
    x = _randn(10, (2, size, size, dim))
    modules = {
        path: Attention(dim, heads, window or size, use_rel_pos=rel_pos, window_size=window, attention=path)
        for path in ("blocked", "extended")
    }
    params = _random_params(modules["blocked"], x)
    assert jax.tree.structure(_random_params(modules["extended"], x)) == jax.tree.structure(params)
    with jax.default_matmul_precision("highest"):
        ref, ours = (np.asarray(jax.jit(m.apply)(params, x)) for m in modules.values())
    assert_close(ours, ref, f"Attention window={window} rel_pos={rel_pos}", rtol=FP32_MODEL_RTOL)


def _encoder_outputs(dtype: jnp.dtype) -> dict[str, tuple[jax.Array, jax.Array]]:
    """``{path: (embedding, early_feature)}`` of tiny_b's encoder (windows padded 10 -> 12, head dim
    16) under both paths, on the same random parameters; checks both paths' parameter trees agree."""
    cfg = ModelConfig.tiny_b().image_encoder
    images = _randn(11, (2, cfg.img_size, cfg.img_size, cfg.in_chans))
    models = {path: ImageEncoderViT(cfg, dtype=dtype, attention=path) for path in ("blocked", "extended")}
    shapes = {path: jax.eval_shape(m.init, jax.random.PRNGKey(0), images) for path, m in models.items()}
    assert shapes["blocked"] == shapes["extended"]  # same names, shapes and dtypes
    params = _random_params(models["blocked"], images)
    with jax.default_matmul_precision("highest"):
        return {path: jax.jit(m.apply)(params, images) for path, m in models.items()}


def test_encoder_extended_equals_blocked_fp32() -> None:
    outs = _encoder_outputs(jnp.float32)
    for name, ref, ours in zip(("embedding", "early feature"), outs["blocked"], outs["extended"], strict=True):
        assert_close(np.asarray(ours), np.asarray(ref), f"tiny_b {name}", rtol=FP32_MODEL_RTOL)


def test_encoder_extended_equals_blocked_bf16() -> None:
    outs = _encoder_outputs(jnp.bfloat16)
    for name, ref, ours in zip(("embedding", "early feature"), outs["blocked"], outs["extended"], strict=True):
        assert ours.dtype == jnp.bfloat16
        ref32, ours32 = np.asarray(ref, np.float32), np.asarray(ours, np.float32)
        assert_close(ours32, ref32, f"bf16 {name}", rtol=BF16_RTOL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_extended_encoder_exports_for_cuda_and_tpu_without_custom_calls(dtype: jnp.dtype) -> None:
    cfg = ModelConfig.tiny_b().image_encoder
    model = ImageEncoderViT(cfg, dtype=dtype, attention="extended")
    images = jax.ShapeDtypeStruct((1, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    exported = jax.export.export(jax.jit(model.apply), platforms=["cuda", "tpu"])(params, images)
    assert exported.platforms == ("cuda", "tpu")
    assert "stablehlo.custom_call" not in exported.mlir_module()


def test_cudnn_is_refused_off_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine without a GPU, "cudnn" fails at trace time with a clear message. (Exporting for
    "cuda" from here is no way round it: the CPU-only jaxlib's cuDNN lowering itself raises
    ``RuntimeError: cuDNN is not detected``.)"""
    cfg = ModelConfig.tiny_b().image_encoder
    images = jnp.zeros((1, cfg.img_size, cfg.img_size, cfg.in_chans))
    model = ImageEncoderViT(cfg, dtype=jnp.bfloat16, attention="cudnn")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # as here, also where a GPU is present
    with pytest.raises(ValueError, match=r'attention="cudnn" needs a CUDA GPU, the default backend is'):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), images)


@pytest.mark.parametrize(
    "capability,dtype,head_dim,error",
    [
        ("9.0", jnp.bfloat16, extended_head_dim(64, 14, 14, True), None),  # vit_b/l window: 96
        ("9.0", jnp.float16, extended_head_dim(64, 64, 64, True), None),  # vit_b/l global: 192
        ("9.0", jnp.bfloat16, extended_head_dim(80, 64, 64, True), None),  # vit_h global: 208
        ("8.0", jnp.bfloat16, extended_head_dim(80, 14, 14, True), None),  # vit_h window: 112
        ("8.0", jnp.bfloat16, extended_head_dim(64, 64, 64, True), "head dim 192 is over cuDNN's limit 128"),
        ("9.0", jnp.float32, 96, "needs bfloat16 or float16 compute, got float32"),
    ],
)
def test_cudnn_checks_dtype_and_head_dim(
    monkeypatch: pytest.MonkeyPatch, capability: str, dtype: jnp.dtype, head_dim: int, error: str | None
) -> None:
    """The checks behind "cudnn" on a pretend GPU of the given compute capability: which SAM blocks
    cuDNN takes (all on Hopper; only the windowed ones before), and the dtype."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda: [types.SimpleNamespace(compute_capability=capability)])
    if error is None:
        check_cudnn_attention(dtype, head_dim)
    else:
        with pytest.raises(ValueError, match=error):
            check_cudnn_attention(dtype, head_dim)


def test_extended_head_dims_of_the_sam_blocks() -> None:
    assert [extended_head_dim(64, 14, 14, True), extended_head_dim(64, 64, 64, True)] == [96, 192]
    assert [extended_head_dim(80, 64, 64, True), extended_head_dim(20, 4, 4, False)] == [208, 24]


def test_unknown_attention_is_refused_through_samhq() -> None:
    model = SamHQ(ModelConfig.tiny_b(), attention="flash")
    images = jnp.zeros((1, 160, 160, 3))
    with pytest.raises(ValueError, match="unknown attention 'flash'; choose one of auto, blocked, extended, cudnn"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, method=SamHQ.embed_image))


@pytest.mark.parametrize(
    "backend,capability,dtype,head_dim,path",
    [
        ("cpu", None, jnp.bfloat16, 96, "blocked"),  # CPU: blocked, whatever the dtype
        ("gpu", "9.0", jnp.bfloat16, 208, "cudnn"),  # Hopper takes every SAM block in bf16
        ("gpu", "9.0", jnp.float32, 96, "extended"),  # cuDNN has no fp32 fused attention
        ("gpu", "8.0", jnp.bfloat16, 192, "extended"),  # over the pre-Hopper limit of 128
        ("gpu", "8.0", jnp.bfloat16, 96, "cudnn"),
        ("tpu", None, jnp.bfloat16, 96, "extended"),
    ],
)
def test_auto_takes_the_measured_fastest_path(
    monkeypatch: pytest.MonkeyPatch, backend: str, capability: str | None, dtype: jnp.dtype, head_dim: int, path: str
) -> None:
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "devices", lambda: [types.SimpleNamespace(compute_capability=capability)])
    assert auto_attention_path(dtype, head_dim) == path


def test_auto_is_the_default_and_blocked_on_cpu() -> None:
    """The modules' default ("auto") is bit-identical to "blocked" on this CPU."""
    cfg = ModelConfig.tiny_b().image_encoder
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, cfg.img_size, cfg.img_size, 3)), jnp.float32)
    params = ImageEncoderViT(cfg).init(jax.random.PRNGKey(0), images)
    default = ImageEncoderViT(cfg).apply(params, images)
    blocked = ImageEncoderViT(cfg, attention="blocked").apply(params, images)
    for a, b in zip(default, blocked, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
