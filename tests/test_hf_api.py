"""The rest of the Hugging Face SAM-HQ API against transformers 4.53.3 on the same seeded random
tiny model (saved as a transformers folder): the configuration classes, ``SamHQVisionModel``, the
optional outputs of ``SamHQModel`` and ``SamHQModel.save_pretrained``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from eval.reference import build_hf
from samhq_jax import SamHQModel, hf_config
from samhq_jax.config import SamHQConfig
from samhq_jax.errors import InputError
from samhq_jax.hf_vision import SamHQVisionModel
from tests.conftest import assert_close

CONFIG = SamHQConfig.tiny_h()
PAIRS = [
    (hf_config.SamHQVisionConfig, "SamHQVisionConfig"),
    (hf_config.SamHQPromptEncoderConfig, "SamHQPromptEncoderConfig"),
    (hf_config.SamHQMaskDecoderConfig, "SamHQMaskDecoderConfig"),
]
VERSION = "transformers_version"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert transformers.__version__.startswith("4.53."), "mask parity needs transformers 4.53.x"
    path = tmp_path_factory.mktemp("hf_api") / "sam-hq-tiny"
    build_hf(CONFIG, seed=5).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def inputs() -> dict:
    rng = np.random.default_rng(0)
    s = CONFIG.img_size
    pixels = rng.standard_normal((2, 3, s, s)).astype(np.float32)
    points = np.array([[[[40.0, 50.0]], [[100.0, 30.0]]], [[[12.0, 140.0]], [[70.0, 70.0]]]], np.float32)
    return {"pixel_values": pixels, "input_points": points}


def _torch(inputs: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in inputs.items()}


def _fields(cls: type) -> set[str]:
    """The fields transformers' config class declares (its ``__init__`` parameters)."""
    return {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")}


def test_config_defaults_are_transformers(folder: Path) -> None:
    for ours, name in PAIRS:
        ref = getattr(transformers, name)().to_dict()
        mine = ours().to_dict()
        for field in _fields(getattr(transformers, name)) | {"model_type", "image_embedding_size"} & set(ref):
            assert mine[field] == ref[field], f"{name}.{field}: {mine[field]!r} != {ref[field]!r}"
    assert hf_config.SamHQConfig().initializer_range == transformers.SamHQConfig().initializer_range
    assert hf_config.SamHQConfig().model_type == transformers.SamHQConfig.model_type


def test_config_round_trips_through_both_libraries(folder: Path, tmp_path: Path) -> None:
    # transformers -> ours -> transformers: every key back, PretrainedConfig's included.
    ref = transformers.SamHQConfig.from_pretrained(folder)
    ref.output_hidden_states, ref.note = True, "a key only the file knows"
    ref.save_pretrained(tmp_path / "a")
    ours = hf_config.SamHQConfig.from_pretrained(tmp_path / "a")
    assert ours.vision_config.hidden_size == CONFIG.image_encoder.embed_dim and ours.output_hidden_states is True
    ours.save_pretrained(tmp_path / "b")
    back = transformers.SamHQConfig.from_pretrained(tmp_path / "b").to_dict()
    want = ref.to_dict()
    assert sorted(back) == sorted(want)
    for key in set(want) - {VERSION}:
        assert back[key] == want[key], key
    # ours -> transformers -> ours: equal field by field, and the same model.
    mine = hf_config.SamHQConfig.from_samhq_config(CONFIG)
    mine.save_pretrained(tmp_path / "c")
    transformers.SamHQConfig.from_pretrained(tmp_path / "c").save_pretrained(tmp_path / "d")
    again = hf_config.SamHQConfig.from_pretrained(tmp_path / "d")
    for key, value in mine.to_dict().items():
        assert again.to_dict()[key] == value, key
    assert again.to_samhq_config() == SamHQConfig.from_dict({**CONFIG.to_dict(), "name": "custom"})
    # A sub-config reads its section of a whole model's config.json, as transformers' does.
    vision = hf_config.SamHQVisionConfig.from_pretrained(folder).to_dict()
    ref_vision = transformers.SamHQVisionConfig.from_pretrained(folder).to_dict()
    assert all(vision[k] == ref_vision[k] for k in _fields(transformers.SamHQVisionConfig))
    # What our model cannot compute is refused, naming the field.
    with pytest.raises(InputError, match=r"vision_config\.hidden_act"):
        hf_config.SamHQConfig(vision_config={"hidden_act": "relu"}).to_samhq_config()
    with pytest.raises(InputError, match=r"mask_decoder_config\.vit_dim"):
        hf_config.SamHQConfig(vision_config={"hidden_size": 1024}).to_samhq_config()


def test_vision_model_equals_transformers(folder: Path, inputs: dict) -> None:
    ref = transformers.SamHQVisionModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = SamHQVisionModel.from_pretrained(folder)
    assert ours.config.to_dict()["hidden_size"] == ref.config.hidden_size
    with torch.no_grad():
        r = ref(torch.from_numpy(inputs["pixel_values"]), output_hidden_states=True, output_attentions=True)
    o = ours(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
    assert o.keys() == list(r.keys()) and o.image_embeds is None and r.image_embeds is None
    assert_close(o.last_hidden_state, r.last_hidden_state.numpy(), "last_hidden_state")
    for name in ("hidden_states", "attentions", "intermediate_embeddings"):
        assert len(o[name]) == len(r[name]), name
        for i, (a, b) in enumerate(zip(o[name], r[name], strict=True)):
            assert a.shape == tuple(b.shape), (name, i)
            assert_close(a, b.numpy(), f"{name}[{i}]")
    plain = ours(inputs["pixel_values"], return_dict=False)
    assert len(plain) == 2 and np.array_equal(plain[0], o.last_hidden_state)


def test_model_optional_outputs_and_save_pretrained(folder: Path, inputs: dict, tmp_path: Path) -> None:
    ref = transformers.SamHQModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = SamHQModel.from_pretrained(folder)
    assert ours.config.vision_config.hidden_size == ref.config.vision_config.hidden_size
    assert ours.config.mask_decoder_config.vit_dim == ref.config.mask_decoder_config.vit_dim
    with torch.no_grad():
        r = ref(**_torch(inputs), output_hidden_states=True, output_attentions=True)
    o = ours(**inputs, output_hidden_states=True, output_attentions=True)
    assert o.keys() == list(r.keys())
    assert_close(o.iou_scores, r.iou_scores.numpy(), "iou_scores")
    assert_close(o.pred_masks, r.pred_masks.numpy(), "pred_masks")
    for name in ("vision_hidden_states", "vision_attentions", "mask_decoder_attentions"):
        assert len(o[name]) == len(r[name]), name
        for i, (a, b) in enumerate(zip(o[name], r[name], strict=True)):
            assert a.shape == tuple(b.shape), (name, i)
            assert_close(a, b.numpy(), f"{name}[{i}]")
    assert len(ours(**inputs, return_dict=False)) == 2 and ours(**inputs).vision_attentions is None
    # save_pretrained: a folder transformers loads with every key matched, giving the same outputs.
    ours.save_pretrained(tmp_path / "saved")
    loaded, info = transformers.SamHQModel.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert not any(info.values()), info
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "sam_hq"
    with torch.no_grad():
        again = loaded.eval()(**_torch(inputs))
    assert_close(o.iou_scores, again.iou_scores.numpy(), "saved iou_scores")
    assert_close(o.pred_masks, again.pred_masks.numpy(), "saved pred_masks")
