"""``python -m convert.deploy --format stablehlo`` (= ``samhq export``): the ``jax.export`` artifacts
(issue 21).

Exported once from a ``tiny_b`` checkpoint folder for cpu, cuda and tpu (all lowered on this CPU
machine); then, as a user would (``export.deserialize`` and ``model.safetensors``, no model code):

* both artifacts and ``stablehlo.json`` list cpu, cuda and tpu, the JSON carries the config and says
  the decoder returns low-resolution masks only;
* deserialized and called here, the encoder equals the library's compiled ``SamHQ.embed_image``
  and the decoder its compiled ``SamHQ.decode`` (:func:`samhq_jax.predictor.compiled_model`) on
  the same prompts given the library's way (boxes as boxes, a point set padded by the library, a
  mask input), for several prompt and point counts through one artifact (symbolic dimensions) and
  the official four-layer interm stack; the other option set (``hq_token_only``,
  ``multimask_output``) is lowered for cpu and checked the same way on points and boxes;
* the vit_b decoder lowers with its symbolic point count (shapes only).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax import export
from safetensors.numpy import load_file

from convert.deploy.__main__ import main as deploy_main
from convert.deploy.signature import DecoderOptions
from convert.deploy.stablehlo import lower_decoder
from eval.parity.samples import sample_images
from samhq_jax.checkpoint import save_checkpoint
from samhq_jax.config import ModelConfig
from samhq_jax.predictor import compiled_model
from samhq_jax.sam_hq import ImageEmbeddings, param_shapes
from tests.conftest import assert_close, official_model_and_params

PRESET = "tiny_b"
PLATFORMS = ["cpu", "cuda", "tpu"]
# The artifacts run the "extended" attention form, the reference here the CPU's "blocked" one: equal
# up to float rounding.
RTOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    _, _, config, params = official_model_and_params(PRESET)
    root = tmp_path_factory.mktemp("stablehlo")
    checkpoint = save_checkpoint(root / "ckpt", config, params)
    out = root / "hlo"
    argv = ["--checkpoint", str(checkpoint), "--output", str(out), "--format", "stablehlo"]
    assert deploy_main([*argv, "--platforms", ",".join(PLATFORMS)]) == 0
    return out


def load(folder: Path, name: str) -> export.Exported:
    return export.deserialize(bytearray((folder / name).read_bytes()))


@pytest.fixture(scope="module")
def encoded(exported) -> tuple:
    """``(image NHWC, our image embeddings NHWC, early NHWC, artifact outputs)`` on a photo."""
    _, _, config, params = official_model_and_params(PRESET)
    image = sample_images(config, 1)
    _, embed, _ = compiled_model(config)
    ref = embed({"params": params}, jnp.asarray(image))
    weights = load_file(exported / "model.safetensors")
    got = load(exported, "encoder.stablehlo").call(weights, np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    return image, np.asarray(ref.image_embeddings), np.asarray(ref.early_features), got


def test_artifacts_name_their_platforms_config_and_outputs(exported):
    _, _, config, _ = official_model_and_params(PRESET)
    manifest = json.loads((exported / "stablehlo.json").read_text())
    assert manifest["platforms"] == PLATFORMS
    assert ModelConfig.from_dict(manifest["config"]) == config
    assert manifest["options"] == {"hq_token_only": False, "multimask_output": False}
    for part in ("encoder", "decoder"):
        artifact = load(exported, manifest[part]["file"])
        assert list(artifact.platforms) == PLATFORMS
        assert (
            len(artifact.in_avals) == len(load_file(exported / "model.safetensors")) + len(manifest[part]["inputs"]) - 1
        )
    decoder = manifest["decoder"]
    assert decoder["masks_at_original_size"] is False and "low_res_masks" in decoder["postprocess"]
    assert [o["name"] for o in decoder["outputs"]] == ["low_res_masks", "iou_predictions"]
    coords = load(exported, "decoder.stablehlo").in_avals[-4]  # point_coords (num_prompts, num_points, 2)
    assert [str(d) for d in coords.shape] == ["num_prompts", "num_points", "2"]


def test_encoder_equals_the_model(encoded):
    _, embeddings, early, (got_embeddings, got_interm) = encoded
    assert got_embeddings.shape == embeddings.transpose(0, 3, 1, 2).shape and got_interm.shape == (1, *early.shape)
    assert_close(np.asarray(got_embeddings), embeddings.transpose(0, 3, 1, 2), "encoder.stablehlo embeddings", RTOL)
    assert_close(np.asarray(got_interm[0]), early, "encoder.stablehlo interm_embeddings", RTOL)


def prompt_cases(config: ModelConfig, rng: np.random.Generator) -> list[tuple[dict, dict]]:
    """``(official-decoder inputs, SamHQ.decode keyword arguments)`` pairs asking for the same thing."""
    s, low = config.img_size, config.low_res_mask_size
    cases = []
    # 3 prompt sets of 2 points and a box: the box as corners labelled 2, 3 after the points
    points, labels = rng.uniform(0, s, (3, 2, 2)), rng.integers(0, 2, (3, 2))
    boxes = np.sort(rng.uniform(0, s, (3, 2, 2)), axis=1).reshape(3, 4)
    coords = np.concatenate([points, boxes.reshape(3, 2, 2)], axis=1)
    cases.append(
        (
            {"coords": coords, "labels": np.concatenate([labels, np.tile([2, 3], (3, 1))], axis=1)},
            {"points": points[None], "labels": labels[None], "boxes": boxes[None]},
        )
    )
    # 2 single points: the library pads each with (0, 0) labelled -1, the official decoder is given it
    points, labels = rng.uniform(0, s, (2, 1, 2)), np.ones((2, 1), np.int64)
    coords = np.concatenate([points, np.zeros((2, 1, 2))], axis=1)
    cases.append(
        (
            {"coords": coords, "labels": np.concatenate([labels, -np.ones((2, 1), np.int64)], axis=1)},
            {"points": points[None], "labels": labels[None]},
        )
    )
    # 2 boxes with a mask input each
    boxes = np.sort(rng.uniform(0, s, (2, 2, 2)), axis=1).reshape(2, 4)
    masks = rng.normal(0, 3, (2, low, low))
    cases.append(
        (
            {"coords": boxes.reshape(2, 2, 2), "labels": np.tile([2, 3], (2, 1)), "mask_input": masks},
            {"boxes": boxes[None], "mask_inputs": masks[None]},
        )
    )
    return cases


@pytest.mark.parametrize("options", [DecoderOptions(), DecoderOptions(True, True)], ids=["default", "hq_multimask"])
def test_decoder_equals_the_model(exported, encoded, options):
    _, _, config, params = official_model_and_params(PRESET)
    weights = load_file(exported / "model.safetensors")
    if options == DecoderOptions():
        decoder = load(exported, "decoder.stablehlo")
    else:
        decoder = lower_decoder(config, weights, options, ("cpu",))
    _, embeddings, early, _ = encoded
    rng = np.random.default_rng(21)
    low = config.low_res_mask_size
    interm = rng.normal(size=(4, *early.shape)).astype(np.float32)  # the official stack: only [0] is read
    interm[0] = early
    _, _, decode = compiled_model(config)
    cases = prompt_cases(config, rng)
    for inputs, library in cases if options == DecoderOptions() else cases[:1]:  # compiles are the cost here
        p = inputs["coords"].shape[0]
        mask = inputs.get("mask_input", np.zeros((p, low, low)))
        low_res, iou = decoder.call(
            weights,
            embeddings.transpose(0, 3, 1, 2),
            interm,
            inputs["coords"].astype(np.float32),
            inputs["labels"].astype(np.float32),
            mask[:, None].astype(np.float32),
            np.array([float("mask_input" in inputs)], np.float32),
        )
        want_masks, want_iou = decode(
            {"params": params},
            ImageEmbeddings(jnp.asarray(embeddings), jnp.asarray(early)),
            **{k: jnp.asarray(v) for k, v in library.items()},
            multimask_output=options.multimask_output,
            hq_token_only=options.hq_token_only,
        )
        what = f"decoder.stablehlo {sorted(library)} x {p} ({options})"
        assert low_res.shape == (p, 1, low, low) and iou.shape == (p, 1), what
        assert_close(np.asarray(low_res), np.asarray(want_masks[0]), f"{what} low_res_masks", RTOL)
        assert_close(np.asarray(iou), np.asarray(want_iou[0]), f"{what} iou_predictions", RTOL)


def test_real_size_decoder_lowers_for_any_point_count():
    """vit_b's widths: a symbolic point count must not meet a size-dependent choice (the decoder's
    attention picks its form by the token count; an exported program takes the plain one)."""
    config = ModelConfig.vit_b()
    weights = flatten_dict(param_shapes(config), sep="/")  # shapes only: nothing allocated
    decoder = lower_decoder(config, weights, DecoderOptions(), PLATFORMS)
    assert list(decoder.platforms) == PLATFORMS
    assert [str(d) for d in decoder.out_avals[0].shape] == ["num_prompts", "1", "256", "256"]
