"""Single layers against PyTorch and hand-derived identities."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert.rules import CONV_T, Rule
from eval.parity.stages import relative_error
from samhq_jax.image_encoder import Attention, relative_position_table, window_partition, window_unpartition
from samhq_jax.layers import ConvTranspose, gelu
from tests.conftest import assert_close


def test_conv_transpose_matches_torch() -> None:
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(6, 5, kernel_size=2, stride=2)
    x = torch.randn(2, 6, 3, 4)
    with torch.no_grad():
        ref = layer(x).permute(0, 2, 3, 1).numpy()
    rule = Rule("w", "k", CONV_T)
    params = {"kernel": rule.to_ours(layer.weight.detach().numpy()), "bias": layer.bias.detach().numpy()}
    ours = ConvTranspose(5).apply({"params": params}, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    assert ours.shape == (2, 6, 8, 5)
    assert_close(np.asarray(ours), ref, "ConvTranspose2d(k=2, s=2)", rtol=1e-6)


def test_gelu_is_exact_erf() -> None:
    x = np.linspace(-6, 6, 101).astype(np.float32)
    ref = torch.nn.GELU()(torch.from_numpy(x)).numpy()
    assert_close(np.asarray(gelu(jnp.asarray(x))), ref, "gelu", rtol=1e-6)


def test_window_partition_pads_with_zeros_and_round_trips() -> None:
    x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3) + 1
    windows, padded = window_partition(x, 3)
    assert windows.shape == (2 * 4, 3, 3, 3) and padded == (6, 6)
    # Window (0, 1) of image 0 holds columns 3..5; column 5 is padding, hence zero.
    np.testing.assert_array_equal(np.asarray(windows[1, :, :2]), np.asarray(x[0, :3, 3:5]))
    assert float(jnp.abs(windows[1, :, 2]).max()) == 0.0
    np.testing.assert_array_equal(np.asarray(window_unpartition(windows, 3, padded, (5, 5))), np.asarray(x))


def _official_image_encoder():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from segment_anything_hq.modeling import image_encoder
    return image_encoder


@pytest.mark.parametrize("size", [4, 10, 14])  # tiny window, tiny global grid, real window
def test_relative_position_table_equals_official_get_rel_pos(size: int) -> None:
    table = torch.randn(2 * size - 1, 6, generator=torch.Generator().manual_seed(size))
    ref = _official_image_encoder().get_rel_pos(size, size, table).numpy()
    np.testing.assert_array_equal(np.asarray(relative_position_table(jnp.asarray(table.numpy()), size)), ref)


# A windowed block's window side, a global block's grid side; query blocks of 32 split the 100 queries
# of the 10 x 10 map into 4 blocks, the last one padded (the blocked path of the real global blocks).
@pytest.mark.parametrize("size,query_block", [(4, 256), (10, 256), (10, 32)])
def test_attention_with_decomposed_rel_pos_matches_official(size: int, query_block: int) -> None:
    """Our ``Attention`` against the official module with ``use_rel_pos=True`` (which calls
    ``add_decomposed_rel_pos`` / ``get_rel_pos``), random weights and random, non-zero rel-pos tables."""
    dim, heads = 16, 2
    torch.manual_seed(size)
    ref_attn = _official_image_encoder().Attention(dim, heads, qkv_bias=True, use_rel_pos=True, input_size=(size, size))
    with torch.no_grad():
        ref_attn.rel_pos_h.normal_(0, 0.5)
        ref_attn.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(2, size, size, dim)
    with torch.no_grad():
        ref = ref_attn(x).numpy()
        ref_attn.use_rel_pos = False
        without_rel_pos = ref_attn(x).numpy()
    # Sanity of the reference: the tables move the output far more than the tolerance below.
    assert relative_error(without_rel_pos, ref) > 1e-2
    w = {k: v.detach().numpy() for k, v in ref_attn.state_dict().items()}
    params = {
        "qkv": {"kernel": w["qkv.weight"].T, "bias": w["qkv.bias"]},
        "proj": {"kernel": w["proj.weight"].T, "bias": w["proj.bias"]},
        "rel_pos_h": w["rel_pos_h"],
        "rel_pos_w": w["rel_pos_w"],
    }
    ours = Attention(dim, heads, size, query_block=query_block).apply({"params": params}, jnp.asarray(x.numpy()))
    assert_close(np.asarray(ours), ref, f"Attention with rel-pos, {size}x{size}", rtol=1e-5)


def test_rel_pos_interpolation_branch_is_refused_not_imitated() -> None:
    """The official ``get_rel_pos`` linearly resizes a table whose length is not ``2 * max(q, k) - 1``,
    and rescales coordinates when query and key sizes differ. Inside SAM's image encoder neither
    happens: ``Attention`` passes ``q_size == k_size == (H, W)`` and every map is exactly the size its
    table was built for (the window, or the grid at the model's own ``img_size``). We implement only
    that case, so a mismatched table must raise, not be silently interpolated."""
    official = _official_image_encoder()
    table = torch.randn(7, 6)  # built for size 4
    assert official.get_rel_pos(6, 6, table).shape == (6, 6, 6)  # official: interpolates
    with pytest.raises(ValueError, match="rel_pos table has 7 rows, expected 11 for size 6"):
        relative_position_table(jnp.asarray(table.numpy()), 6)
    params = {
        "qkv": {"kernel": jnp.zeros((16, 48)), "bias": jnp.zeros(48)},
        "proj": {"kernel": jnp.zeros((16, 16)), "bias": jnp.zeros(16)},
        "rel_pos_h": jnp.zeros((7, 8)),
        "rel_pos_w": jnp.zeros((7, 8)),
    }
    with pytest.raises(ValueError, match="expected 11 for size 6"):
        Attention(16, 2, 4).apply({"params": params}, jnp.zeros((1, 6, 6, 16)))


# SAM's cross-attention (256 channels, 8 heads, internal 128) between the 8 tokens of a one-point
# prompt and a 20 x 20 image map, both ways; and token self-attention (internal 256 = 8 heads x 32
# tokens, the unfolded path).
@pytest.mark.parametrize(
    "tq,tk,rate,path",
    [(8, 400, 2, "few queries"), (400, 8, 2, "few keys"), (32, 32, 1, "plain"), (15, 400, 2, "few queries")],
)
def test_decoder_attention_folds_match_official(tq: int, tk: int, rate: int, path: str) -> None:
    """The two-way transformer's ``Attention``: the folded forms (the short side's projections folded
    into the long side's weights) and the plain one give the official module's output, with a key
    mask (short key side) equal to leaving the masked keys out."""
    from segment_anything_hq.modeling.transformer import Attention as OfficialAttention

    from samhq_jax.transformer import Attention as DecoderAttention

    dim, heads = 256, 8
    internal = dim // rate
    folded = heads * min(tq, tk) < internal
    assert folded == (path != "plain") and (path == "few keys") == (folded and tk < tq)
    torch.manual_seed(tq + tk)
    ref_attn = OfficialAttention(dim, heads, downsample_rate=rate)
    q, k, v = torch.randn(2, tq, dim), torch.randn(2, tk, dim), torch.randn(2, tk, dim)
    with torch.no_grad():
        ref = ref_attn(q, k, v).numpy()
        ref_short = ref_attn(q, k[:, :5], v[:, :5]).numpy()
    w = {k_: t.detach().numpy() for k_, t in ref_attn.state_dict().items()}
    names = ("q_proj", "k_proj", "v_proj", "out_proj")
    params = {n: {"kernel": w[f"{n}.weight"].T, "bias": w[f"{n}.bias"]} for n in names}
    ours = DecoderAttention(dim, heads, rate)
    args = [jnp.asarray(t.numpy()) for t in (q, k, v)]
    assert_close(np.asarray(ours.apply({"params": params}, *args)), ref, path, rtol=1e-5)
    if tk < tq:  # keys 5.. are padding: exactly as if absent
        key_mask = jnp.arange(tk)[None].repeat(2, 0) < 5
        masked = ours.apply({"params": params}, *args, key_mask=key_mask)
        assert_close(np.asarray(masked), ref_short, f"{path}, masked keys", rtol=1e-5)
