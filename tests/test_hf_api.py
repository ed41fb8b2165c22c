"""The rest of the Hugging Face SAM-HQ API against transformers 4.53.3 on the same seeded random
tiny model (saved as a transformers folder): the configuration classes, ``SamHQVisionModel``, the
optional outputs of ``SamHQModel``, ``SamHQModel.save_pretrained``, the image processor's
mask-generation helpers (and the official point grids where transformers' are wrong), the
processor's ``save_pretrained`` and ``pipeline("mask-generation")`` (against the official generator)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import samhq_jax
from eval.parity.samples import IMAGES_DIR
from eval.parity.stages import mask_agreement
from eval.reference import build_hf
from samhq_jax import SamHQImageProcessor, SamHQModel, SamHQProcessor, hf_config
from samhq_jax.config import ModelConfig
from samhq_jax.errors import InputError
from samhq_jax.hf_vision import SamHQVisionModel
from tests.conftest import MASK_AGREEMENT, assert_close, official_model_and_params

CONFIG = ModelConfig.tiny_h()
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
    assert again.to_samhq_config() == ModelConfig.from_dict({**CONFIG.to_dict(), "name": "custom"})
    # A sub-config reads its section of a whole model's config.json, as transformers' does.
    vision = hf_config.SamHQVisionConfig.from_pretrained(folder).to_dict()
    ref_vision = transformers.SamHQVisionConfig.from_pretrained(folder).to_dict()
    assert all(vision[k] == ref_vision[k] for k in _fields(transformers.SamHQVisionConfig))
    # What our model cannot compute is refused, naming the field.
    with pytest.raises(InputError, match=r"vision_config\.hidden_act"):
        hf_config.SamHQConfig(vision_config={"hidden_act": "relu"}).to_samhq_config()
    with pytest.raises(InputError, match=r"mask_decoder_config\.vit_dim"):
        hf_config.SamHQConfig(vision_config={"hidden_size": 1024}).to_samhq_config()


def test_sub_configs_round_trip_through_both_libraries(tmp_path: Path) -> None:
    # Non-default values in every section, ours -> transformers -> ours, field by field.
    changed = {
        "SamHQVisionConfig": {"hidden_size": 48, "global_attn_indexes": [1, 3], "window_size": 7},
        "SamHQPromptEncoderConfig": {"hidden_size": 64, "mask_input_channels": 8},
        "SamHQMaskDecoderConfig": {"hidden_size": 64, "num_multimask_outputs": 2, "vit_dim": 48},
    }
    for ours, name in PAIRS:
        mine = ours(**changed[name])
        mine.save_pretrained(tmp_path / name)
        ref = getattr(transformers, name).from_pretrained(tmp_path / name)
        assert all(getattr(ref, k) == v for k, v in changed[name].items()), name
        ref.save_pretrained(tmp_path / f"{name}_back")
        back = ours.from_pretrained(tmp_path / f"{name}_back").to_dict()
        for key, value in mine.to_dict().items():
            assert back[key] == value, (name, key)


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


def test_vision_model_save_pretrained_round_trip(folder: Path, inputs: dict, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    ours = SamHQVisionModel.from_pretrained(folder)
    pixels = inputs["pixel_values"][:1]
    want = ours(pixels).last_hidden_state
    assert ours.save_pretrained(tmp_path / "ours") == tmp_path / "ours"
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "sam_hq_vision_model"
    ref, info = transformers.SamHQVisionModel.from_pretrained(
        tmp_path / "ours", output_loading_info=True, attn_implementation="eager"
    )
    assert not any(info.values()), info
    assert ref.config.to_dict()["hidden_size"] == CONFIG.image_encoder.embed_dim
    with torch.no_grad():
        assert_close(want, ref.eval()(torch.from_numpy(pixels)).last_hidden_state.numpy(), "saved last_hidden_state")
    # transformers' own vision folder, read back: same fields, same weights.
    ref.save_pretrained(tmp_path / "ref")
    back = SamHQVisionModel.from_pretrained(tmp_path / "ref")
    fields = _fields(transformers.SamHQVisionConfig)
    assert {k: back.config.to_dict()[k] for k in fields} == {k: ours.config.to_dict()[k] for k in fields}
    assert back.encoder_config == CONFIG.image_encoder
    np.testing.assert_array_equal(back(pixels).last_hidden_state, want)
    # A tensor missing, another misshaped: refused, each named.
    state = load_file(tmp_path / "ours" / "model.safetensors")
    del state["vision_encoder.neck.conv1.weight"]
    state["vision_encoder.pos_embed"] = state["vision_encoder.pos_embed"][:, :-1]
    (tmp_path / "bad").mkdir()
    save_file(state, tmp_path / "bad" / "model.safetensors")
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "ours" / "config.json").read_text())
    with pytest.raises(InputError, match=r"(?s)missing: image_encoder/neck.*pos_embed: \(1, 9,"):
        SamHQVisionModel.from_pretrained(tmp_path / "bad")


def test_top_level_names_are_transformers() -> None:
    for name in ("SamHQConfig", "SamHQVisionConfig", "SamHQPromptEncoderConfig", "SamHQMaskDecoderConfig"):
        assert name in samhq_jax.__all__ and getattr(samhq_jax, name) is getattr(hf_config, name)
        assert getattr(samhq_jax, name).__name__ == getattr(transformers, name).__name__
    for name in ("SamHQModel", "SamHQProcessor", "SamHQVisionModel", "SamHQImageProcessor"):
        assert name in samhq_jax.__all__ and hasattr(transformers, name.replace("SamHQImage", "SamImage"))
    assert samhq_jax.ModelConfig is ModelConfig and "ModelConfig" in samhq_jax.__all__
    with pytest.raises(ImportError, match=r"samhq_jax\.config\.ModelConfig.*transformers' SamHQConfig"):
        from samhq_jax.config import SamHQConfig  # noqa: F401


def test_model_optional_outputs_and_save_pretrained(folder: Path, inputs: dict, tmp_path: Path) -> None:
    ref = transformers.SamHQModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = SamHQModel.from_pretrained(folder)
    assert isinstance(ours.config, samhq_jax.SamHQConfig)
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


# ---- the image processor's mask-generation helpers, the processor's save_pretrained, the pipeline ----


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(IMAGES_DIR / "example7.png").convert("RGB"))


def _official_points(image: np.ndarray, layers: int, per_side: int, factor: int) -> tuple[list, list]:
    """The official generator's crop boxes and each crop's points in its resized frame
    (``segment_anything_hq.utils.amg`` and ``ResizeLongestSide.apply_coords``, as ``_process_crop``)."""
    from segment_anything_hq.utils import amg
    from segment_anything_hq.utils.transforms import ResizeLongestSide

    boxes, layer_idxs = amg.generate_crop_boxes(image.shape[:2], layers, 512 / 1500)
    grids = amg.build_all_layer_point_grids(per_side, layers, factor)
    points = []
    for (x0, y0, x1, y1), layer in zip(boxes, layer_idxs, strict=True):
        size = (y1 - y0, x1 - x0)
        points.append(ResizeLongestSide(1024).apply_coords(grids[layer] * np.array(size)[None, ::-1], size))
    return boxes, points


def test_generate_crop_boxes_equals_transformers_and_the_official_grids(photo: np.ndarray) -> None:
    ref, ours = transformers.SamImageProcessor(), SamHQImageProcessor()
    assert ours.size == ref.size
    # No crop layers: transformers' output exactly.
    r = ref.generate_crop_boxes(photo, 1024, 0, 512 / 1500, 8, 1)
    o = ours.generate_crop_boxes(photo, 1024, 0, 512 / 1500, 8, 1)
    for a, b in zip((o[0], o[1], o[3]), (r[0], r[1], r[3]), strict=True):
        assert a.dtype == b.numpy().dtype and np.array_equal(a, b.numpy())
    assert np.array_equal(o[2][0], r[2][0])
    # Crop layers: transformers' boxes and crops; the points of the official generator (transformers
    # scales every crop's points by the whole image's size).
    r = ref.generate_crop_boxes(photo, 1024, 2, 512 / 1500, 8, 1)
    o = ours.generate_crop_boxes(photo, 1024, 2, 512 / 1500, 8, 1)
    boxes, points = _official_points(photo, 2, 8, 1)
    assert np.array_equal(o[0], r[0].numpy()) and np.array_equal(o[0], np.array(boxes, np.float32))
    assert o[1].shape == tuple(r[1].shape) and all(np.array_equal(a, b) for a, b in zip(o[2], r[2], strict=True))
    np.testing.assert_array_equal(o[1][0].transpose(1, 0, 2), np.stack(points))
    # Fewer points in deeper layers: transformers fails; ours gives one array per crop, the official grids.
    with pytest.raises(ValueError):
        ref.generate_crop_boxes(photo, 1024, 2, 512 / 1500, 8, 2)
    o = ours.generate_crop_boxes(photo, 1024, 2, 512 / 1500, 8, 2)
    boxes, points = _official_points(photo, 2, 8, 2)
    assert np.array_equal(o[0], np.array(boxes, np.float32)) and len(o[1]) == len(o[3]) == len(boxes)
    for i, want in enumerate(points):
        assert o[1][i].shape == (1, len(want), 1, 2) and o[3][i].shape == (1, len(want), 1)
        np.testing.assert_array_equal(o[1][i][0, :, 0], want)


def test_filter_masks_and_post_process_for_mask_generation_equal_transformers() -> None:
    ref, ours = transformers.SamImageProcessor(), SamHQImageProcessor()
    rng = np.random.default_rng(1)
    # Disc-shaped logits in two crops of a 90 x 120 image, some touching a crop's edge.
    size, kept = (90, 120), {"ours": [], "ref": []}
    for crop in ([0, 0, 120, 90], [10, 5, 120, 90]):
        h, w = crop[3] - crop[1], crop[2] - crop[0]
        yy, xx = np.mgrid[:h, :w]
        centres = rng.uniform(0, 1, (3, 2, 2)) * np.array([w, h])
        radii = rng.uniform(3, 10, (3, 2, 1, 1))
        dist = np.hypot(xx - centres[..., 0, None, None], yy - centres[..., 1, None, None])
        logits = (10 * (1 - dist / radii)).astype(np.float32)
        iou = rng.uniform(0.5, 1.0, (3, 2)).astype(np.float32)
        args = (size, crop, 0.6, 0.5, 0.0, 1.0)
        o = ours.filter_masks(logits, iou, *args)
        r = ref.filter_masks(torch.from_numpy(logits), torch.from_numpy(iou), *args)
        assert o[0] == r[0] and len(o[0]) > 0
        np.testing.assert_array_equal(o[1], r[1].numpy())
        np.testing.assert_array_equal(o[2], r[2].numpy())
        kept["ours"].append(o)
        kept["ref"].append(r)
    # Every mask, and the first two again with lower scores, which the NMS must drop.
    masks = [m for o in kept["ours"] for m in o[0]]
    masks += masks[:2]
    scores = np.concatenate([k[1] for k in kept["ours"]])
    scores = np.concatenate([scores, scores[:2] - 0.01])
    boxes = np.concatenate([k[2] for k in kept["ours"]])
    boxes = np.concatenate([boxes, boxes[:2]])
    o = ours.post_process_for_mask_generation(masks, scores, boxes, 0.3)
    r = ref.post_process_for_mask_generation(masks, torch.from_numpy(scores), torch.from_numpy(boxes), 0.3)
    assert len(o[0]) == len(r[0]) < len(masks) and all(np.array_equal(a, b) for a, b in zip(o[0], r[0], strict=True))
    np.testing.assert_array_equal(o[1], r[1].numpy())
    assert o[2] == r[2]
    np.testing.assert_array_equal(o[3], r[3].numpy())


def test_processor_save_pretrained_is_read_by_transformers(tmp_path: Path) -> None:
    transformers.SamHQProcessor(image_processor=transformers.SamImageProcessor()).save_pretrained(tmp_path / "ref")
    want = json.loads((tmp_path / "ref" / "preprocessor_config.json").read_text())
    assert SamHQProcessor().save_pretrained(tmp_path / "ours")[0].name == "preprocessor_config.json"
    got = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert got == want
    s = CONFIG.img_size
    SamHQProcessor(SamHQImageProcessor(longest_edge=s)).save_pretrained(tmp_path / "tiny")
    ref = transformers.SamHQProcessor.from_pretrained(tmp_path / "tiny").image_processor
    assert ref.size == {"longest_edge": s} and ref.pad_size == {"height": s, "width": s}
    assert ref.mask_size == {"longest_edge": s // 4} and ref.mask_pad_size == {"height": s // 4, "width": s // 4}
    transformers.SamHQProcessor(image_processor=ref).save_pretrained(tmp_path / "tiny_ref")
    back = SamHQImageProcessor.from_pretrained(tmp_path / "tiny_ref").save_pretrained(tmp_path / "tiny_back")
    assert json.loads(back.read_text()) == json.loads((tmp_path / "tiny_ref" / "preprocessor_config.json").read_text())


def test_mask_generation_pipeline_runs_our_generator(photo: np.ndarray, tmp_path: Path) -> None:
    from segment_anything_hq import SamAutomaticMaskGenerator

    model = official_model_and_params("tiny_h")[0]
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    # Keywords given to pipeline() are the calls' defaults, as in transformers.
    generator = samhq_jax.pipeline("mask-generation", model=str(tmp_path / "tiny.pth"), device=-1, points_per_crop=4)
    small = photo[::4, ::4].copy()
    out = generator(
        small, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_rle_mask=True, output_bboxes_mask=True
    )
    ref = SamAutomaticMaskGenerator(
        model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.7
    ).generate(small)
    assert sorted(out) == ["bounding_boxes", "masks", "rle_mask", "scores"] and len(out["masks"]) == len(ref) > 0
    assert out["scores"].dtype == np.float32 and out["bounding_boxes"].shape == (len(ref), 4)
    for i, r in enumerate(ref):
        assert out["masks"][i].shape == small.shape[:2] and out["masks"][i].dtype == np.bool_
        assert mask_agreement(out["masks"][i], r["segmentation"]) >= MASK_AGREEMENT
        assert abs(out["scores"][i] - r["predicted_iou"]) <= 1e-4 * max(1.0, abs(r["predicted_iou"]))
        x, y, w, h = r["bbox"]
        assert out["bounding_boxes"][i].tolist() == [x, y, x + w, y + h]
    with pytest.raises(InputError, match="mask-generation"):
        samhq_jax.pipeline("image-segmentation", model=str(tmp_path / "tiny.pth"))
    with pytest.raises(InputError, match="unknown arguments"):
        generator(small, points_per_side=4)
