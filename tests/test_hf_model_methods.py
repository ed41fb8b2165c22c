"""``SamHQModel.get_prompt_embeddings``, ``get_image_wide_positional_embeddings`` and
``get_input_embeddings`` equal transformers 4.53.3's on the same seeded random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from eval.reference import build_hf
from samhq_jax import SamHQModel
from samhq_jax.config import ModelConfig
from samhq_jax.errors import InputError
from samhq_jax.hf_vision import SamHQVisionModel
from samhq_jax.torch_style import OfficialTensor

CONFIG = ModelConfig.tiny_h()
ATOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, SamHQModel]:
    assert transformers.__version__.startswith("4.53."), "the reference is transformers 4.53.x"
    path = tmp_path_factory.mktemp("hf_methods") / "model"
    ref = build_hf(CONFIG, seed=11)
    ref.save_pretrained(path)
    return ref, SamHQModel.from_pretrained(path)


def prompts() -> dict[str, np.ndarray]:
    """Two images, two prompts each: points with every label (1, 0, -1, -10), boxes, masks."""
    rng = np.random.default_rng(4)
    s, low = CONFIG.img_size, CONFIG.embedding_size * 4
    return {
        "input_points": rng.uniform(0, s, (2, 2, 4, 2)).astype(np.float32),
        "input_labels": np.array([[[1, 0, -1, -10], [1, 1, 0, -10]], [[0, 1, 1, 1], [1, -1, -10, -10]]]),
        "input_boxes": np.array(
            [[[5, 10, 60, 90], [0, 0, s - 1, s - 1]], [[30, 2, 31, 40], [100, 50, 120, 55]]], np.float32
        ),
        "input_masks": rng.standard_normal((2, 1, low, low)).astype(np.float32) * 5,
    }


CASES = {
    "points": ("input_points", "input_labels"),
    "boxes": ("input_boxes",),
    "points+boxes": ("input_points", "input_labels", "input_boxes"),
    "points+masks": ("input_points", "input_labels", "input_masks"),
    "boxes+masks": ("input_boxes", "input_masks"),
    "masks": ("input_masks",),
    "nothing": (),
}


@pytest.mark.parametrize("case", list(CASES))
def test_get_prompt_embeddings_equals_transformers(models: tuple, case: str) -> None:
    ref, ours = models
    given = {k: v for k, v in prompts().items() if k in CASES[case]}
    with torch.no_grad():
        r_sparse, r_dense = ref.get_prompt_embeddings(**{k: torch.from_numpy(v) for k, v in given.items()})
    o_sparse, o_dense = ours.get_prompt_embeddings(**given)
    assert o_sparse.shape == tuple(r_sparse.shape) and o_dense.shape == tuple(r_dense.shape)
    np.testing.assert_allclose(np.asarray(o_sparse), r_sparse.detach().numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(o_dense), r_dense.detach().numpy(), rtol=0, atol=ATOL)


def test_get_prompt_embeddings_answers_torch_style_inputs_in_kind(models: tuple) -> None:
    _, ours = models
    p = prompts()
    sparse, dense = ours.get_prompt_embeddings(p["input_points"].view(OfficialTensor), p["input_labels"])
    assert isinstance(sparse, OfficialTensor) and isinstance(dense, OfficialTensor)


def test_get_prompt_embeddings_refuses_bad_prompts(models: tuple) -> None:
    _, ours = models
    p = prompts()
    with pytest.raises(InputError, match="labels must also be provided"):
        ours.get_prompt_embeddings(p["input_points"])
    with pytest.raises(InputError, match="as many boxes as point prompts"):
        ours.get_prompt_embeddings(p["input_points"], p["input_labels"], p["input_boxes"][:, :1])
    with pytest.raises(InputError, match="input_labels"):
        ours.get_prompt_embeddings(p["input_points"], np.full((2, 2, 4), 7))
    with pytest.raises(InputError, match="input_masks must be"):
        ours.get_prompt_embeddings(input_masks=p["input_masks"][:, 0])


def test_get_image_wide_positional_embeddings_equals_transformers(models: tuple) -> None:
    ref, ours = models
    with torch.no_grad():
        r = ref.get_image_wide_positional_embeddings().numpy()
    o = np.asarray(ours.get_image_wide_positional_embeddings())
    g = CONFIG.embedding_size
    assert o.shape == r.shape == (1, CONFIG.prompt_encoder.embed_dim, g, g)
    np.testing.assert_allclose(o, r, rtol=0, atol=ATOL)


def test_get_input_embeddings_equals_transformers(models: tuple) -> None:
    ref, ours = models
    s = CONFIG.img_size
    pixels = np.random.default_rng(2).standard_normal((2, 3, s, s)).astype(np.float32)
    r_embed, o_embed = ref.get_input_embeddings(), ours.get_input_embeddings()
    with torch.no_grad():
        r = r_embed(torch.from_numpy(pixels)).detach().numpy()
    o = np.asarray(o_embed(pixels))
    assert o.shape == r.shape
    np.testing.assert_allclose(o, r, rtol=0, atol=ATOL * np.abs(r).max())
    np.testing.assert_array_equal(o_embed.projection.weight, r_embed.projection.weight.detach().numpy())
    np.testing.assert_array_equal(o_embed.projection.bias, r_embed.projection.bias.detach().numpy())
    assert (o_embed.image_size, o_embed.patch_size, o_embed.num_channels) == (
        tuple(r_embed.image_size),
        tuple(r_embed.patch_size),
        r_embed.num_channels,
    )
    with pytest.raises(InputError, match="pixel_values must be"):
        o_embed(pixels[:, :, :-16])
    vision = SamHQVisionModel(CONFIG, ours.params).get_input_embeddings()
    np.testing.assert_array_equal(np.asarray(vision(pixels)), o)
    assert isinstance(vision(pixels.view(OfficialTensor)), OfficialTensor)
