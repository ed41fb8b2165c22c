"""ViTDet-style image encoder (port of ``segment_anything/modeling/image_encoder.py``).

Patch embedding, absolute position embedding, transformer blocks with windowed or global attention
and decomposed relative positions, and the convolutional neck. Besides the final embedding it
returns the *early* feature: the output of the first global-attention block, which SAM-HQ's
``compress_vit_feat`` fuses into the HQ features.

The attention has interchangeable forms (:data:`ATTENTION_PATHS`, chosen by the modules'
``attention`` attribute): ``"blocked"`` (:func:`rel_pos_attention`, built for XLA:CPU) and the
extended-q/k form (:func:`extended_attention`) that fused attention kernels accept.

Layout: NHWC throughout. Intermediates (``patch_embed_out``, every ``blocks_{i}_out``, ``neck_out``) are sown
into the ``"intermediates"`` collection for stage-by-stage checks; each block's attention probabilities
into ``"attentions"`` when that collection is mutable (:func:`attention_probs`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samhq_jax.config import ImageEncoderConfig
from samhq_jax.layers import MLP, Dtype, gelu, layer_norm


def window_partition(x: jax.Array, window: int, fill: jax.Array | None = None) -> tuple[jax.Array, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into ``(B * nH * nW, window, window, C)`` windows, padding H and W.

    Padding goes at the bottom / right with zeros, or with the ``(C,)`` vector ``fill``. The padded
    tokens are ordinary keys and values in the window attention (no mask), exactly as in the PyTorch
    code. Returns the windows and the padded ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    hp, wp = h + pad_h, w + pad_w
    if fill is None:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    elif pad_h or pad_w:
        x = jnp.broadcast_to(fill.astype(x.dtype), (b, hp, wp, c)).at[:, :h, :w].set(x)
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: jax.Array, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`window_partition`: ``(B * nH * nW, window, window, C)`` -> ``(B, H, W, C)``."""
    hp, wp = padded_hw
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, c)[:, : hw[0], : hw[1], :]


def relative_position_table(rel_pos: jax.Array, size: int) -> jax.Array:
    """Gather ``rel_pos[(i - j) + size - 1]`` -> ``(size, size, head_dim)`` for equal query/key sizes."""
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(f"rel_pos table has {rel_pos.shape[0]} rows, expected {2 * size - 1} for size {size}")
    idx = jnp.arange(size)[:, None] - jnp.arange(size)[None, :] + (size - 1)
    return rel_pos[idx]


QUERY_BLOCK = 256  # queries per block in the global blocks' attention (measured best on CPU, vit_b)


def rel_pos_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, rh: jax.Array | None, rw: jax.Array | None, query_block: int
) -> jax.Array:
    """Softmax attention with the decomposed relative-position bias, one block of queries at a time.

    Args:
      q, k, v: ``(B, heads, H * W, hd)``; ``q`` unscaled (the bias uses the unscaled query).
      rh, rw: ``(H, H, hd)`` / ``(W, W, hd)`` relative-position tables, or None (no bias).
      query_block: queries per block. The ``(heads, block, H * W)`` scores of one block are
        formed, biased, soft-maxed (in float32) and applied to ``v`` before the next block, so the
        full ``(heads, HW, HW)`` score matrix never exists; a map of at most ``query_block`` queries
        is done in one block.

    Returns:
      ``(B, H * W, heads, hd)``.
    """
    b, n, hw, hd = q.shape
    bias = None
    if rh is not None:
        h, w = rh.shape[0], rw.shape[0]
        r_q = q.reshape(b, n, h, w, hd)
        rel_h = jnp.einsum("bnyxc,ykc->bnyxk", r_q, rh).reshape(b, n, hw, h)
        rel_w = jnp.einsum("bnyxc,xkc->bnyxk", r_q, rw).reshape(b, n, hw, w)
        bias = (rel_h, rel_w)
    q = q * hd**-0.5

    def block(qb: jax.Array, bias_b: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        s = jnp.einsum("bnqc,bnkc->bnqk", qb, k)
        if bias_b is not None:
            bh, bw = bias_b
            s = s.reshape(*s.shape[:3], bh.shape[-1], bw.shape[-1]) + bh[..., :, None] + bw[..., None, :]
            s = s.reshape(*s.shape[:3], hw)
        p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
        return jnp.einsum("bnqk,bnkc->bnqc", p, v)

    if hw <= query_block:
        out = block(q, bias)
    else:
        nb = -(-hw // query_block)
        pad = nb * query_block - hw

        def split(a: jax.Array) -> jax.Array:  # (B, n, HW, d) -> (nb, B, n, block, d), queries padded
            a = jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0)))
            return a.reshape(b, n, nb, query_block, a.shape[-1]).transpose(2, 0, 1, 3, 4)

        blocks = jax.lax.map(
            lambda xs: block(xs[0], xs[1]), (split(q), None if bias is None else tuple(map(split, bias)))
        )
        out = blocks.transpose(1, 2, 0, 3, 4).reshape(b, n, nb * query_block, hd)[:, :, :hw]
    return out.transpose(0, 2, 1, 3)


def attention_probs(q: jax.Array, k: jax.Array, rh: jax.Array | None, rw: jax.Array | None) -> jax.Array:
    """The full ``(B, heads, H * W, H * W)`` float32 attention probabilities of :func:`rel_pos_attention`
    (``q``, ``k``: ``(B, heads, H * W, hd)``, ``q`` unscaled; ``rh`` / ``rw`` as there). Built only when
    asked for (the ``"attentions"`` collection, transformers' ``output_attentions``)."""
    b, n, hw, hd = q.shape
    s = jnp.einsum("bnqc,bnkc->bnqk", q * hd**-0.5, k)
    if rh is not None:
        h, w = rh.shape[0], rw.shape[0]
        r_q = q.reshape(b, n, h, w, hd)
        rel_h = jnp.einsum("bnyxc,ykc->bnyxk", r_q, rh)
        rel_w = jnp.einsum("bnyxc,xkc->bnyxk", r_q, rw)
        s = (s.reshape(b, n, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, hw, hw)
    return jax.nn.softmax(s.astype(jnp.float32), axis=-1)


ATTENTION_PATHS = ("blocked", "extended", "cudnn")
"""Forms of the ViT attention (the ``attention`` attribute of :class:`Attention`, :class:`Block`,
:class:`ImageEncoderViT` and ``SamHQ``); equal up to float rounding, same parameters:

* ``"blocked"``: :func:`rel_pos_attention`, queries in blocks of ``query_block`` (fastest on CPU);
* ``"extended"``: :func:`extended_attention` through ``jax.nn.dot_product_attention`` (XLA);
* ``"cudnn"``: the same through cuDNN's fused attention (CUDA GPU, bf16 / fp16 only).
"""
DOT_PRODUCT_IMPLEMENTATION = {"extended": "xla", "cudnn": "cudnn"}  # jax.nn.dot_product_attention's, per path
HEAD_DIM_MULTIPLE = 8  # cuDNN's fused attention needs head dims that are a multiple of 8
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)  # the only non-fp8 dtypes cuDNN's fused attention takes
CUDNN_MAX_HEAD_DIM = 128  # cuDNN fused attention head-dim limit before Hopper (jax 0.10.2, 0.11.2)
CUDNN_MAX_HEAD_DIM_HOPPER = 256  # ... and from Hopper (compute capability 9.0) on
HOPPER_COMPUTE_CAPABILITY = (9, 0)


AUTO = "auto"
"""The default ``attention``: the path measured fastest on the platform (:func:`auto_attention_path`)."""


def check_images(images: jax.Array, img_size: int, in_chans: int) -> None:
    """Refuse an encoder input that is not ``(B, img_size, img_size, in_chans)`` NHWC (``ValueError``)."""
    expected = (img_size, img_size, in_chans)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images must be (B, {', '.join(map(str, expected))}) NHWC, got {images.shape}")


def check_attention_path(attention: str) -> None:
    """Raise ``ValueError`` unless ``attention`` is :data:`AUTO` or one of :data:`ATTENTION_PATHS`."""
    if attention != AUTO and attention not in ATTENTION_PATHS:
        choices = ", ".join((AUTO, *ATTENTION_PATHS))
        raise ValueError(f"unknown attention {attention!r}; choose one of {choices}")


def auto_attention_path(dtype: Dtype, extended_dim: int) -> str:
    """The path :data:`AUTO` takes, by the default backend, the compute dtype and the extended head dim.

    Measured (vit_b encoder, batch 1, side by side, 2026-12-04): on an H200, bf16 blocked 8.65 ms,
    extended 7.93, cudnn 5.43; fp32 blocked 14.62, extended 11.28. On the 2-core CPU, a global vit_b
    block fp32 blocked 2.0-2.4 s, extended 3.6 s. So: CPU ``"blocked"``; GPU ``"cudnn"`` where
    cuDNN takes the dtype and head dim, else ``"extended"``; other accelerators (TPU) ``"extended"``.
    """
    backend = jax.default_backend()
    if backend == "cpu":
        return "blocked"
    if backend == "gpu" and jnp.dtype(dtype) in CUDNN_DTYPES and extended_dim <= cudnn_max_head_dim():
        return "cudnn"
    return "extended"


def extended_head_dim(head_dim: int, h: int, w: int, use_rel_pos: bool) -> int:
    """Head dim of the extended q / k / v: ``head_dim (+ H + W with rel-pos)``, rounded up to a
    multiple of :data:`HEAD_DIM_MULTIPLE` (window 14, hd 64: 96; 64 x 64 grid: hd 64 -> 192, hd 80 -> 208)."""
    size = head_dim + (h + w if use_rel_pos else 0)
    return -(-size // HEAD_DIM_MULTIPLE) * HEAD_DIM_MULTIPLE


def cudnn_max_head_dim() -> int:
    """The largest head dim cuDNN's fused attention takes on the default GPU (mirrors
    ``check_is_flash_attention`` in ``jax/_src/cudnn/fused_attention_stablehlo.py``)."""
    capability = tuple(int(part) for part in jax.devices()[0].compute_capability.split("."))
    return CUDNN_MAX_HEAD_DIM_HOPPER if capability >= HOPPER_COMPUTE_CAPABILITY else CUDNN_MAX_HEAD_DIM


def check_cudnn_attention(dtype: Dtype, head_dim: int) -> None:
    """Raise ``ValueError`` unless cuDNN's fused attention can run an extended ``head_dim`` in ``dtype``
    here: the default backend is a GPU, the dtype one of :data:`CUDNN_DTYPES`, the head dim within
    :func:`cudnn_max_head_dim`."""
    backend = jax.default_backend()
    if backend != "gpu":
        raise ValueError(f'attention="cudnn" needs a CUDA GPU, the default backend is {backend!r}; use "extended"')
    if jnp.dtype(dtype) not in CUDNN_DTYPES:
        raise ValueError(f'attention="cudnn" needs bfloat16 or float16 compute, got {jnp.dtype(dtype).name}')
    limit = cudnn_max_head_dim()
    if head_dim > limit:
        raise ValueError(
            f'attention="cudnn": the extended head dim {head_dim} is over cuDNN\'s limit {limit} on this GPU; '
            'use "extended"'
        )


def key_position_codes(h: int, w: int, dtype: Dtype) -> jax.Array:
    """``(H * W, H + W)``: for each key of a row-major ``(H, W)`` map, one-hot of its row then of its column."""
    rows = jnp.broadcast_to(jnp.eye(h, dtype=dtype)[:, None, :], (h, w, h))
    cols = jnp.broadcast_to(jnp.eye(w, dtype=dtype)[None, :, :], (h, w, w))
    return jnp.concatenate([rows, cols], axis=-1).reshape(h * w, h + w)


def _pad_head_dim(x: jax.Array, size: int) -> jax.Array:
    """Zero-pad the last axis of ``x`` to ``size``."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def extend_qkv(
    q: jax.Array, k: jax.Array, v: jax.Array, rh: jax.Array | None, rw: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The extended ``q', k', v'`` whose plain scale-1 attention is SAM's rel-pos-biased attention.

    The bias ``q . R_h[h_q, h_k] + q . R_w[w_q, w_k]`` (unscaled ``q``) is the dot product of
    ``[rel_h, rel_w]`` (``rel_h[t, j] = q_t . R_h[h_t, j]``, likewise ``rel_w``) with the key's row and
    column one-hots, so ``q' = [q * hd**-0.5, rel_h, rel_w]``, ``k' = [k, onehot(h_k), onehot(w_k)]``
    give ``q' . k' = q . k * hd**-0.5 + bias``. All three are zero-padded to
    :func:`extended_head_dim` (zeros change neither scores nor outputs).

    Args:
      q, k, v: ``(B, H * W, heads, hd)``, row-major tokens of an ``(H, W)`` map; ``q`` unscaled.
      rh, rw: ``(H, H, hd)`` / ``(W, W, hd)`` relative-position tables, or both None (no bias).

    Returns:
      ``q', k', v'``: ``(B, H * W, heads, hd_ext)`` in ``q``'s dtype.
    """
    b, hw, n, hd = q.shape
    scaled = q * hd**-0.5
    if rh is None:
        size = extended_head_dim(hd, 0, 0, use_rel_pos=False)
        q = scaled
    else:
        h, w = rh.shape[0], rw.shape[0]
        size = extended_head_dim(hd, h, w, use_rel_pos=True)
        r_q = q.reshape(b, h, w, n, hd)
        rel_h = jnp.einsum("byxnc,ykc->byxnk", r_q, rh).reshape(b, hw, n, h)
        rel_w = jnp.einsum("byxnc,xkc->byxnk", r_q, rw).reshape(b, hw, n, w)
        q = jnp.concatenate([scaled, rel_h, rel_w], axis=-1)
        codes = jnp.broadcast_to(key_position_codes(h, w, k.dtype)[None, :, None, :], (b, hw, n, h + w))
        k = jnp.concatenate([k, codes], axis=-1)
    return _pad_head_dim(q, size), _pad_head_dim(k, size), _pad_head_dim(v, size)


def extended_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rh: jax.Array | None,
    rw: jax.Array | None,
    implementation: str | None,
) -> jax.Array:
    """SAM's rel-pos attention as one ``jax.nn.dot_product_attention`` over :func:`extend_qkv`'s inputs.

    No ``(tokens, tokens)`` bias is built; the XLA implementation forms the scores of all queries at
    once, the cuDNN one (``implementation="cudnn"``) never stores them.

    Args:
      q, k, v: ``(B, H * W, heads, hd)``; ``q`` unscaled.
      rh, rw: ``(H, H, hd)`` / ``(W, W, hd)`` relative-position tables, or both None.
      implementation: ``jax.nn.dot_product_attention``'s ``implementation`` (None, "xla", "cudnn").

    Returns:
      ``(B, H * W, heads, hd)`` in ``q``'s dtype.
    """
    hd = q.shape[-1]
    q, k, v = extend_qkv(q, k, v, rh, rw)
    return jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation=implementation)[..., :hd]


class Attention(nn.Module):
    """Multi-head self-attention over a ``(H, W)`` token map with decomposed rel-pos, global or in
    ``window_size`` windows (``0``: global).

    ``input_size`` is the side of the map the attention runs over (the window side, or the full grid
    for global blocks); it fixes the rel-pos table length ``2 * input_size - 1``.
    Input / output ``(B, H, W, C)``.

    Windowed, the reference pads the normalised map with zeros to a multiple of the window and
    projects every padded token. Here only the real tokens are projected: a zero token's q / k / v is
    the ``qkv`` bias, so the projected map is padded with that bias; and the output projection runs
    after the padding is cropped (vit_b: 4096 instead of 4900 tokens through both). The padded
    tokens are ordinary keys in every attention path.

    ``attention``: :data:`AUTO` or one of :data:`ATTENTION_PATHS` (``query_block`` matters to
    ``"blocked"`` only).
    """

    dim: int
    num_heads: int
    input_size: int
    qkv_bias: bool = True
    use_rel_pos: bool = True
    query_block: int = QUERY_BLOCK
    window_size: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_attention_path(self.attention)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hd = self.dim // self.num_heads
        qkv_layer = nn.Dense(3 * self.dim, use_bias=self.qkv_bias, name="qkv", **kw)
        qkv = qkv_layer(x)
        hw = x.shape[1:3]
        if self.window_size:
            zero_token = qkv_layer(jnp.zeros((1, x.shape[-1]), x.dtype))[0]
            qkv, padded_hw = window_partition(qkv, self.window_size, fill=zero_token)
        b, h, w, _ = qkv.shape
        # Torch rows of qkv.weight are [q; k; v], each head-major: (B, HW, 3, heads, hd).
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, hd)
        rh = rw = None
        if self.use_rel_pos:
            size = self.input_size
            init = nn.initializers.zeros
            rel_pos_h = self.param("rel_pos_h", init, (2 * size - 1, hd), self.param_dtype)
            rel_pos_w = self.param("rel_pos_w", init, (2 * size - 1, hd), self.param_dtype)
            rh = relative_position_table(rel_pos_h, h).astype(qkv.dtype)
            rw = relative_position_table(rel_pos_w, w).astype(qkv.dtype)
        # transformers' output_attentions (probabilities); never at init, whose variables are the parameters
        if self.is_mutable_collection("attentions") and not self.is_initializing():
            q, k = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(2))
            self.sow("attentions", "probs", attention_probs(q, k, rh, rw))
        attention = self.attention
        if attention == AUTO:
            attention = auto_attention_path(qkv.dtype, extended_head_dim(hd, h, w, self.use_rel_pos))
        if attention == "blocked":
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # (B, heads, HW, hd) each
            out = rel_pos_attention(q, k, v, rh, rw, self.query_block)
        else:
            if attention == "cudnn":
                check_cudnn_attention(qkv.dtype, extended_head_dim(hd, h, w, self.use_rel_pos))
            q, k, v = (qkv[:, :, i] for i in range(3))  # (B, HW, heads, hd) each
            out = extended_attention(q, k, v, rh, rw, DOT_PRODUCT_IMPLEMENTATION[attention])
        out = out.reshape(b, h, w, self.dim)
        if self.window_size:
            out = window_unpartition(out, self.window_size, padded_hw, hw)
        return nn.Dense(self.dim, name="proj", **kw)(out)


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size == 0`` means global attention.

    Input / output ``(B, H, W, C)``. ``attention``: :data:`AUTO` or one of :data:`ATTENTION_PATHS`.
    """

    config: ImageEncoderConfig
    window_size: int
    query_block: int = QUERY_BLOCK
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        shortcut = x
        x = layer_norm(cfg.layer_norm_eps, name="norm1", **kw)(x)
        attn_size = self.window_size or cfg.grid_size
        x = Attention(
            cfg.embed_dim,
            cfg.num_heads,
            attn_size,
            cfg.qkv_bias,
            cfg.use_rel_pos,
            self.query_block,
            self.window_size,
            attention=self.attention,
            name="attn",
            **kw,
        )(x)
        x = shortcut + x
        y = layer_norm(cfg.layer_norm_eps, name="norm2", **kw)(x)
        return x + MLP(cfg.mlp_dim, cfg.embed_dim, 2, activation=gelu, name="mlp", **kw)(y)


class Neck(nn.Module):
    """``Conv1x1 (no bias) -> LayerNorm2d -> Conv3x3 (no bias) -> LayerNorm2d``: C -> out_chans.

    Input ``(B, H, W, C)`` -> output ``(B, H, W, out_chans)``.
    """

    out_chans: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(self.out_chans, (1, 1), use_bias=False, name="conv1", **kw)(x)
        x = layer_norm(self.eps, name="norm1", **kw)(x)
        x = nn.Conv(self.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv2", **kw)(x)
        return layer_norm(self.eps, name="norm2", **kw)(x)


class ImageEncoderViT(nn.Module):
    """The SAM ViT image encoder with SAM-HQ's early-feature output.

    Args:
      images: ``(B, img_size, img_size, in_chans)`` normalised, padded pixels, NHWC.

    Returns:
      ``(embedding, early_feature)``: ``(B, G, G, out_chans)`` and ``(B, G, G, embed_dim)`` with
      ``G = img_size // patch_size``; ``early_feature`` is the output of block
      ``config.early_block`` (the first global-attention block).

    ``query_block``: queries per block in the attention (:func:`rel_pos_attention`); a speed knob
    that changes results only by float rounding. ``attention``: the attention's form, :data:`AUTO`
    (the platform's fastest) or one of :data:`ATTENTION_PATHS` (likewise a speed knob; same parameters).
    ``remat``: each block under ``jax.checkpoint`` (``nn.remat``): differentiated, a block keeps only
    its input and recomputes the rest in the backward pass (memory for time); same parameter names
    (``blocks_{i}``) and the same values. Outside differentiation it changes nothing.
    """

    config: ImageEncoderConfig
    query_block: int = QUERY_BLOCK
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = AUTO
    remat: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        check_images(images, cfg.img_size, cfg.in_chans)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = cfg.patch_size
        x = nn.Conv(cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed", **kw)(images)
        self.sow("intermediates", "patch_embed_out", x)
        if cfg.use_abs_pos:
            g = cfg.grid_size
            pos = self.param("pos_embed", nn.initializers.zeros, (1, g, g, cfg.embed_dim), self.param_dtype)
            x = x + pos.astype(x.dtype)
        block = nn.remat(Block) if self.remat else Block
        early = None
        for i in range(cfg.depth):
            window = 0 if i in cfg.global_attn_indexes else cfg.window_size
            x = block(cfg, window, self.query_block, attention=self.attention, name=f"blocks_{i}", **kw)(x)
            self.sow("intermediates", f"blocks_{i}_out", x)
            if i == cfg.early_block:
                early = x
        out = Neck(cfg.out_chans, cfg.layer_norm_eps, name="neck", **kw)(x)
        self.sow("intermediates", "neck_out", out)
        return out, early
