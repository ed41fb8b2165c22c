"""The Hugging Face model page's examples, with ``transformers`` imports swapped for ours, against
transformers 4.53.3 on the same seeded random ``SamHQModel`` saved as a folder (tiny_h size)."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import samhq_jax
from eval.parity.samples import IMAGES_DIR
from eval.parity.stages import mask_agreement
from eval.reference import build_hf
from samhq_jax import ModelConfig
from tests.conftest import MASK_AGREEMENT, assert_close

CONFIG = ModelConfig.tiny_h()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    assert transformers.__version__.startswith("4.53."), "mask parity needs transformers 4.53.x"
    path = tmp_path_factory.mktemp("hf") / "sam-hq-tiny"
    build_hf(CONFIG, seed=3).save_pretrained(path)
    s, low = CONFIG.img_size, CONFIG.low_res_mask_size
    image_processor = transformers.SamImageProcessor(
        size={"longest_edge": s},
        pad_size={"height": s, "width": s},
        mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low},
    )
    transformers.SamHQProcessor(image_processor=image_processor).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def apis(folder: str) -> dict:
    return {
        "hf": (
            transformers.SamHQModel.from_pretrained(folder).eval(),
            transformers.SamHQProcessor.from_pretrained(folder),
        ),
        "ours": (samhq_jax.SamHQModel.from_pretrained(folder), samhq_jax.SamHQProcessor.from_pretrained(folder)),
    }


def _photo(name: str = "dog.jpg") -> Image.Image:
    return Image.open(IMAGES_DIR / name).convert("RGB")


def _run(api: str, apis: dict, call: dict, **model_kwargs) -> tuple[dict, object, list]:
    """processor(**call) -> model(**inputs) -> post_process_masks, as on the model page."""
    model, processor = apis[api]
    tensors = "pt" if api == "hf" else "np"
    if api == "hf":
        call = {"point_pad_value": -10, **call}  # transformers' SamHQProcessor defaults to None and fails
    inputs = processor(**call, return_tensors=tensors)
    with torch.no_grad():
        outputs = model(**inputs, **model_kwargs)
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    return inputs, outputs, masks


def _compare(apis: dict, call: dict, **model_kwargs) -> None:
    ref_in, ref_out, ref_masks = _run("hf", apis, call, **model_kwargs)
    our_in, our_out, our_masks = _run("ours", apis, call, **model_kwargs)
    assert set(our_in) == set(ref_in)
    np.testing.assert_allclose(our_in["pixel_values"], ref_in["pixel_values"].numpy(), atol=2e-5, rtol=0)
    for key in ("original_sizes", "reshaped_input_sizes", "input_labels", "labels"):
        if key in ref_in:
            np.testing.assert_array_equal(our_in[key], ref_in[key].numpy(), err_msg=key)
            assert our_in[key].dtype == np.int64
    for key in ("input_points", "input_boxes"):
        if key in ref_in:
            np.testing.assert_allclose(our_in[key], ref_in[key].numpy(), rtol=1e-6, err_msg=key)
    assert our_out.pred_masks.shape == ref_out.pred_masks.shape
    assert our_out.iou_scores.shape == ref_out.iou_scores.shape
    assert_close(np.asarray(our_out.iou_scores), ref_out.iou_scores.numpy(), "iou_scores")
    assert_close(np.asarray(our_out.pred_masks), ref_out.pred_masks.numpy(), "pred_masks")
    assert len(our_masks) == len(ref_masks)
    for ours, ref in zip(our_masks, ref_masks, strict=True):
        assert ours.dtype == bool and ours.shape == tuple(ref.shape)
        assert mask_agreement(ours, ref.numpy()) >= MASK_AGREEMENT


def test_model_page_example_points(apis: dict) -> None:
    _compare(apis, {"images": _photo(), "input_points": [[[450, 600]]]})


def test_model_page_example_segmentation_maps(apis: dict) -> None:
    photo = _photo("example7.png")
    seg = Image.fromarray((np.asarray(photo.convert("L")) > 120).astype(np.uint8) * 255).convert("1")
    _compare(apis, {"images": photo, "input_points": [[[450, 300]]], "segmentation_maps": seg})


# (True, False) is the model page's default above, (False, False) in test_boxes_and_several_prompts_per_image.
@pytest.mark.parametrize("multimask,hq_token_only", [(True, True)])
def test_batched_images_ragged_points_and_flags(apis: dict, multimask: bool, hq_token_only: bool) -> None:
    call = {
        "images": [_photo("example8.png"), _photo("example7.png")],
        "input_points": [[[450, 600], [900, 300]], [[200, 100]]],
        "input_labels": [[1, 0], [1]],
    }
    _compare(apis, call, multimask_output=multimask, hq_token_only=hq_token_only)


def test_ragged_by_more_than_one_point(apis: dict) -> None:
    """transformers 4.53 pads labels by a single value whatever the gap (a ValueError for a gap of 2);
    ours pads each list fully, which equals transformers given the padded lists."""
    points = [[[450, 600], [900, 300], [1200, 700]], [[200, 100]]]
    images = [_photo("example8.png"), _photo("example7.png")]
    ours = _run("ours", apis, {"images": images, "input_points": points})
    padded = {
        "images": images,
        "input_points": [points[0], [[200, 100], [-10, -10], [-10, -10]]],
        "input_labels": [[1, 1, 1], [1, -10, -10]],
    }
    ref = _run("hf", apis, padded)
    np.testing.assert_array_equal(ours[0]["input_labels"], ref[0]["input_labels"].numpy())
    np.testing.assert_allclose(ours[0]["input_points"][1, 0, 1:], -10)
    assert_close(np.asarray(ours[1].pred_masks), ref[1].pred_masks.numpy(), "pred_masks")
    assert_close(np.asarray(ours[1].iou_scores), ref[1].iou_scores.numpy(), "iou_scores")


def test_boxes_and_several_prompts_per_image(apis: dict) -> None:
    call = {
        "images": [_photo("example8.png"), _photo("example7.png")],
        "input_boxes": [[[100, 50, 700, 600], [300, 200, 1200, 700]], [[10, 20, 300, 400], [50, 60, 600, 470]]],
        "input_points": [[[[400, 300]], [[800, 500]]], [[[150, 200]], [[400, 300]]]],
    }
    _compare(apis, call)
    _compare(apis, {k: v for k, v in call.items() if k != "input_points"}, multimask_output=False)


def test_image_embeddings_path_equals_pixel_path(apis: dict) -> None:
    model, processor = apis["ours"]
    inputs = processor(_photo("example7.png"), input_points=[[[450, 300]]])
    emb, inter = model.get_image_embeddings(inputs["pixel_values"])
    ref_model = apis["hf"][0]
    with torch.no_grad():
        ref_emb, ref_inter = ref_model.get_image_embeddings(torch.from_numpy(inputs["pixel_values"]))
    assert_close(np.asarray(emb), ref_emb.numpy(), "image_embeddings")
    assert_close(np.asarray(inter[0]), ref_inter[0].numpy(), "intermediate_embeddings[0]")
    direct = model(**inputs)
    cached = model(image_embeddings=emb, intermediate_embeddings=inter, input_points=inputs["input_points"])
    np.testing.assert_array_equal(np.asarray(cached.pred_masks), np.asarray(direct.pred_masks))
    with pytest.raises(ValueError, match="intermediate_embeddings"):
        model(image_embeddings=emb, input_points=inputs["input_points"])


def test_hf_pad_label_zeroes_the_token(apis: dict) -> None:
    """A -10 point is a zero token that still attends, a -1 point gets ``not_a_point_embed``: both as
    transformers, and they differ."""
    ref_model = apis["hf"][0]
    model, processor = apis["ours"]
    inputs = processor(_photo("example7.png"), input_points=[[[450, 300], [10, 10]]], input_labels=[[1, -10]])
    results = {}
    for label in (-10, -1):
        call = {**inputs, "input_labels": np.array([[[1, label]]])}
        with torch.no_grad():
            ref = ref_model(**{k: torch.from_numpy(v) for k, v in call.items() if k.startswith(("pixel", "input"))})
        ours = model(**call)
        assert_close(np.asarray(ours.pred_masks), ref.pred_masks.numpy(), f"pred_masks with a {label} point")
        assert_close(np.asarray(ours.iou_scores), ref.iou_scores.numpy(), f"iou_scores with a {label} point")
        results[label] = ref.pred_masks.numpy()
    assert not np.allclose(results[-10], results[-1], atol=1e-3)


@pytest.mark.parametrize(
    "call,match",
    [
        ({"input_points": [[[1, 2]], [[3, 4]]]}, "2 images, but 1"),
        ({"input_points": [[[1, 2]]], "input_labels": [[2]]}, r"input_labels\[0, 0, 0\] = 2: a point label must be"),
        ({"input_points": [[1, 2]]}, "nested as"),
        ({"input_boxes": [[[1, 2, 3]]]}, "nested as"),
        ({"input_points": [[[np.nan, 2]]]}, "NaN"),
        ({"input_labels": [[1]]}, "without input_points"),
    ],
)
def test_processor_refuses_what_it_would_misread(apis: dict, call: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apis["ours"][1](_photo("example7.png"), **call)


def test_processor_return_tensors_and_sizes(folder: str, apis: dict, tmp_path: Path) -> None:
    processor = apis["ours"][1]
    assert processor.image_processor.longest_edge == CONFIG.img_size
    out = processor(_photo("example7.png"), input_boxes=[[[1, 2, 30, 40]]], return_tensors="jax")
    assert all(isinstance(v, jax.Array) for v in out.values())
    # "pt": host arrays answering torch's .to(device) / .to(dtype) / .cpu() / .numpy(), values as "np".
    pt = processor(_photo("example7.png"), input_boxes=[[[1, 2, 30, 40]]], return_tensors="pt").to("cpu")
    ref = processor(_photo("example7.png"), input_boxes=[[[1, 2, 30, 40]]], return_tensors="np")
    for key, value in pt.items():
        assert type(value.cpu().numpy()) is np.ndarray and value.dtype == ref[key].dtype, key
        np.testing.assert_array_equal(value.to(torch.float64).numpy(), ref[key].astype(np.float64))
    again = processor.image_processor.preprocess(_photo("example7.png"), return_tensors="np")
    np.testing.assert_array_equal(again["pixel_values"], ref["pixel_values"])
    with pytest.raises(ValueError, match="'np', 'jax' or 'pt'"):
        processor(_photo("example7.png"), return_tensors="tf")
    # Without a preprocessor_config.json the input size comes from the model config.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((Path(folder) / "config.json").read_text())
    assert samhq_jax.SamHQProcessor.from_pretrained(bare).target_size == CONFIG.img_size
    (tmp_path / "sam_hq_vit_b.pth").touch()  # official files: every released model takes 1024 px
    assert samhq_jax.SamHQProcessor.from_pretrained(tmp_path / "sam_hq_vit_b.pth").target_size == 1024
    with pytest.raises(FileNotFoundError):
        samhq_jax.SamHQProcessor.from_pretrained(tmp_path / "missing.pth")


def test_hub_id_through_an_offline_cache(folder: str, apis: dict, tmp_path: Path, monkeypatch) -> None:
    """``from_pretrained("owner/name")`` reads a cache laid out like a hub snapshot, offline."""
    import huggingface_hub.constants as hc

    repo = "syscv-community/sam-hq-tiny-test"
    snap = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("b" * 40)
    shutil.copytree(folder, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("b" * 40)
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(tmp_path / "hub"))):
        monkeypatch.setenv(name, str(int(value)) if value is True else value)
        monkeypatch.setattr(hc, name, value)
    model, processor = samhq_jax.SamHQModel.from_pretrained(repo), samhq_jax.SamHQProcessor.from_pretrained(repo)
    ours, ref = processor.image_processor, apis["ours"][1].image_processor
    assert (ours.longest_edge, ours.mask_size, ours.mask_pad_size) == (
        ref.longest_edge,
        ref.mask_size,
        ref.mask_pad_size,
    )
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), model.params, apis["ours"][0].params)
    assert all(jax.tree.leaves(same)) and model.config == apis["ours"][0].config


# The model card's example (syscv-community/sam-hq-vit-base, transformers' sam_hq docs) with the
# download replaced by local files: return_tensors="pt", .to(device), torch.no_grad(), .cpu(); then
# the card's image-embeddings variant.
MODEL_CARD = """
import torch
from PIL import Image
from transformers import SamHQModel, SamHQProcessor

device = "cuda" if torch.cuda.is_available() else "cpu"
model = SamHQModel.from_pretrained(FOLDER).to(device)
processor = SamHQProcessor.from_pretrained(FOLDER)

raw_image = Image.open(IMAGE).convert("RGB")
input_points = [[[450, 600]]]  # 2D location of a window in the image

inputs = processor(raw_image, input_points=input_points, return_tensors="pt").to(device)
with torch.no_grad():
    outputs = model(**inputs)

masks = processor.image_processor.post_process_masks(
    outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
)
scores = outputs.iou_scores

inputs = processor(raw_image, return_tensors="pt").to(device)
image_embeddings, intermediate_embeddings = model.get_image_embeddings(inputs["pixel_values"])
inputs.pop("pixel_values", None)
inputs.update({"image_embeddings": image_embeddings, "intermediate_embeddings": intermediate_embeddings})
inputs["input_points"] = torch.tensor([[[[450, 600]]]], dtype=torch.float32, device=device)
with torch.no_grad():
    outputs = model(**inputs, multimask_output=False)
masks2 = processor.image_processor.post_process_masks(
    outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
)
result = (masks[0].numpy(), scores.cpu().numpy(), masks2[0].numpy(), outputs.iou_scores.cpu().numpy())
"""


def test_model_card_example_runs_with_only_the_import_changed(folder: str) -> None:
    """The card's code as it is (torch tensors on transformers' side; host arrays answering
    ``.to`` / ``.cpu()`` / ``.numpy()`` on ours): the same masks and scores."""
    results = {}
    for name, module in (("hf", "transformers"), ("ours", "samhq_jax")):
        source = MODEL_CARD.replace("from transformers import", f"from {module} import")
        scope = {"FOLDER": folder, "IMAGE": str(IMAGES_DIR / "dog.jpg")}
        exec(compile(source, f"model_card_{name}.py", "exec"), scope)
        results[name] = scope["result"]
    for what, ours, ref in zip(("masks", "scores", "masks2", "scores2"), results["ours"], results["hf"], strict=True):
        assert type(ours) is np.ndarray and ours.shape == ref.shape and ours.dtype == ref.dtype, what
        if ours.dtype == bool:
            assert mask_agreement(ours, ref) >= MASK_AGREEMENT, what
        else:
            assert_close(ours, ref, what)


def test_model_to_takes_torch_devices(apis: dict) -> None:
    model, processor = apis["ours"]
    assert model.to(torch.device("cpu")) is model and model.to("cpu") is model
    assert all(leaf.devices() == {jax.devices("cpu")[0]} for leaf in jax.tree.leaves(model.params))
    inputs = processor(_photo("example7.png"), return_tensors="np").to(torch.device("cpu"))
    assert all(v.devices() == {jax.devices("cpu")[0]} for v in inputs.values())
    with pytest.raises(ValueError, match="no JAX 'gpu' device for 'cuda:99'"):
        model.to(torch.device("cuda:99"))
