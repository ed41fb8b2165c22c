"""Single layers against PyTorch and hand-derived identities."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from convert.rules import CONV_T, Rule
from samhq_jax.image_encoder import relative_position_table, window_partition, window_unpartition
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


def test_relative_position_table_indexing() -> None:
    table = jnp.arange(5 * 2, dtype=jnp.float32).reshape(5, 2)  # size 3 -> 2*3-1 rows
    rel = np.asarray(relative_position_table(table, 3))
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(rel[i, j], np.asarray(table[i - j + 2]))
