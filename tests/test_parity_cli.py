"""``samhq parity`` (``eval.parity.cli.main``) on a user's checkpoint, photos and prompts.

The figures must be the preset-based report's (the ``official_*`` / ``jax_*`` stage functions,
``compare`` and ``mask_agreement``) computed on the same pixels and prompts, and the exit status
must say whether the bar held. Everything is the tiny_b structure (160-px input) so the compiled
decoders are shared between tests (one compile per prompt structure, all four flag pairs at once).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.parity import cli as parity_cli
from eval.parity import official as parity_official
from eval.parity import ours as parity_ours
from eval.parity.official import official_decode_stages, official_image_stages
from eval.parity.ours import jax_decode_all, jax_image_stages
from eval.parity.samples import IMAGES_DIR
from eval.parity.scenarios import Scenario, frame_prompts, photo_scenarios
from eval.parity.stages import FLAGS, MIN_MASK_AGREEMENT, PARITY_RTOL, compare, mask_agreement
from eval.reference import build_hf, build_official
from samhq_jax.config import ModelConfig
from samhq_jax.transforms import preprocess, to_rgb_uint8
from tests.conftest import official_model_and_params

DOG = IMAGES_DIR / "dog.jpg"
PRESET = "tiny_b"


def dog() -> np.ndarray:
    return to_rgb_uint8(Image.open(DOG))


def point_and_box_line(rgb: np.ndarray) -> dict:
    """A centred box with the centre point: the structure of the default ``point+box`` set."""
    h, w = rgb.shape[:2]
    return {"boxes": [[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], "points": [[w / 2, h / 2, 1]]}


def scenario_of(line: dict, name: str) -> Scenario:
    """The :class:`Scenario` of a prompts-file line (as ``samhq parity --prompts`` reads it)."""
    as_tuples = lambda rows: tuple(map(tuple, rows))  # noqa: E731
    return Scenario(name, boxes=as_tuples(line.get("boxes", ())), points=as_tuples(line.get("points", ())))


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def preset_figures(
    model: torch.nn.Module,
    config: ModelConfig,
    params: dict,
    rgb: np.ndarray,
    scenarios: list[Scenario],
    image_stages: tuple[dict, dict] | None = None,
) -> dict:
    """The preset-based report's figures for one photo and its scenarios (pixel prompts).

    ``image_stages``: ``(reference, ours)`` encoder stages already computed for these weights and
    pixels (shared work); by default both encoders run here.
    """
    pixels = preprocess(rgb, config.img_size)[0][None]
    if image_stages is None:
        image_stages = official_image_stages(model, pixels), jax_image_stages(config, params, pixels)
    ref_img, our_img = image_stages
    figures = {"image_encoder": compare(our_img, ref_img), "decoder": []}
    fed_back = {}
    for s in scenarios:
        prompts = frame_prompts(s, rgb.shape[:2], config, fed_back.get(s.mask_from))
        ours_all = jax_decode_all(config, params, ref_img, prompts)  # what jax_decode_stages picks from
        for flags in FLAGS:
            ref = official_decode_stages(model, ref_img, prompts, *flags)
            ours = ours_all[flags]
            if flags == (False, False):
                fed_back[s.name] = ref["low_res_masks"][:, :1, 0]
            figures["decoder"].append(
                {
                    "prompts": s.name,
                    "multimask_output": flags[0],
                    "hq_token_only": flags[1],
                    "errors": compare(ours, ref),
                    "mask_agreement": mask_agreement(ours["low_res_masks"], ref["low_res_masks"]),
                }
            )
    return figures


def record_encoders(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Record what the CLI's encoders are given and return: ``{"official": [(model, images, stages)],
    "ours": [(config, params, images, stages)]}``."""
    calls: dict = {"official": [], "ours": []}
    official, ours = parity_official.official_image_stages, parity_ours.jax_image_stages

    def official_spy(model, images):
        out = official(model, images)
        calls["official"].append((model, images, out))
        return out

    def ours_spy(config, params, images, *args):
        out = ours(config, params, images, *args)
        calls["ours"].append((config, params, images, out))
        return out

    monkeypatch.setattr(parity_official, "official_image_stages", official_spy)
    monkeypatch.setattr(parity_ours, "jax_image_stages", ours_spy)
    return calls


def shared_image_stages(calls: dict, model: torch.nn.Module, config: ModelConfig, params: dict, pixels) -> tuple:
    """The CLI's encoder stages, after checking that they are what the preset-based computation
    would get: the same pixels, and the preset's reference model and parameters to the bit."""
    from flax.traverse_util import flatten_dict

    [(cli_model, ref_pixels, ref_img)] = calls["official"]
    [(cli_config, cli_params, our_pixels, our_img)] = calls["ours"]
    np.testing.assert_array_equal(ref_pixels, pixels)
    np.testing.assert_array_equal(our_pixels, pixels)
    assert cli_model is not model and cli_config == config
    cli_state, state = cli_model.state_dict(), model.state_dict()
    assert cli_state.keys() == state.keys() and all(torch.equal(cli_state[k], state[k]) for k in state)
    flat, cli_flat = flatten_dict(params, sep="/"), flatten_dict(cli_params, sep="/")
    assert flat.keys() == cli_flat.keys() and all(np.array_equal(flat[k], np.asarray(cli_flat[k])) for k in flat)
    return ref_img, our_img


def assert_same_figures(reported: dict, expected: dict) -> None:
    """``reported``: one image of the ``--json`` output; ``expected``: :func:`preset_figures`."""
    assert reported["image_encoder"] == pytest.approx(expected["image_encoder"], rel=1e-6, abs=1e-12)
    assert len(reported["decoder"]) == len(expected["decoder"])
    for got, want in zip(reported["decoder"], expected["decoder"], strict=True):
        where = f"{want['prompts']} multimask={want['multimask_output']} hq_token_only={want['hq_token_only']}"
        assert [got[k] for k in ("prompts", "multimask_output", "hq_token_only")] == [
            want[k] for k in ("prompts", "multimask_output", "hq_token_only")
        ]
        assert got["errors"] == pytest.approx(want["errors"], rel=1e-6, abs=1e-12), where
        assert got["mask_agreement"] == pytest.approx(want["mask_agreement"], rel=1e-6), where


def run_cli(args: list) -> int:
    return parity_cli.main([str(a) for a in args])


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(torch model, its params as ours, saved .pth) of the seeded random tiny_b SAM-HQ."""
    model, _, config, params = official_model_and_params(PRESET)
    path = tmp_path_factory.mktemp("ckpt") / "sam_hq_tiny_b.pth"
    torch.save(model.state_dict(), path)
    return model, config, params, path


def test_checkpoint_mode_reports_the_preset_figures(tiny_pth, tmp_path, capsys) -> None:
    """A saved .pth, a photo and a prompts file: the same figures as the preset-based report on the
    same pixels and prompts, every one within the bar, exit 0."""
    model, config, params, path = tiny_pth
    rgb = dog()
    line = point_and_box_line(rgb)
    prompts = write_lines(tmp_path / "prompts.jsonl", [line])
    out = tmp_path / "figures.json"
    assert run_cli(["--checkpoint", path, "--image", DOG, "--prompts", prompts, "--json", out]) == 0
    stdout = capsys.readouterr().out
    assert "image encoder, worst stage" in stdout and stdout.strip().splitlines()[-1].endswith("PASS")
    figures = json.loads(out.read_text())
    assert figures["passed"] is True and figures["source_format"] == "official" and figures["dtype"] == "float32"
    assert figures["bar"] == {"relative_error": PARITY_RTOL, "mask_agreement": MIN_MASK_AGREEMENT}
    [image] = figures["images"]
    assert image["image"] == "dog.jpg" and image["original_size"] == list(rgb.shape[:2])
    assert_same_figures(image, preset_figures(model, config, params, rgb, [scenario_of(line, "line 1")]))
    # End to end: the official pre-processing is ours to the bit; full-size masks of each whole chain.
    assert image["preprocess_error"] == 0.0
    assert all(r["full_size_error"] <= PARITY_RTOL for r in image["decoder"])
    assert all(r["full_size_agreement"] >= MIN_MASK_AGREEMENT for r in image["decoder"])
    assert figures["worst_error"] <= PARITY_RTOL and figures["lowest_mask_agreement"] >= MIN_MASK_AGREEMENT


def test_bar_not_held_exits_1(tiny_pth, tmp_path, monkeypatch, capsys) -> None:
    """Our side alone reads a checkpoint with one tensor (the HQ token) off by 0.1 %: the reference
    still holds the file's tensors, the HQ masks drift past 1e-4, exit 1."""
    from samhq_jax import checkpoint

    read = checkpoint.read_weights

    def perturbed(path, *a, **kw):
        weights = read(path, *a, **kw)
        weights.params["mask_decoder"]["hq_token"] = weights.params["mask_decoder"]["hq_token"] * 1.001
        return weights

    monkeypatch.setattr(checkpoint, "read_weights", perturbed)
    _, _, _, path = tiny_pth
    prompts = write_lines(tmp_path / "prompts.jsonl", [point_and_box_line(dog())])
    out = tmp_path / "figures.json"
    assert run_cli(["--checkpoint", path, "--image", DOG, "--prompts", prompts, "--json", out]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("FAIL")
    figures = json.loads(out.read_text())
    assert figures["passed"] is False and figures["worst_error"] > PARITY_RTOL
    assert figures["images"][0]["image_encoder"]["image_embeddings"] <= PARITY_RTOL  # the encoder is untouched


def test_bfloat16_is_reported_not_crashed(tiny_pth, tmp_path, capsys) -> None:
    _, _, _, path = tiny_pth
    prompts = write_lines(tmp_path / "prompts.jsonl", [point_and_box_line(dog())])
    out = tmp_path / "figures.json"
    args = ["--checkpoint", path, "--image", DOG, "--prompts", prompts, "--dtype", "bfloat16", "--json", out]
    assert run_cli(args) == 1
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert "FAIL, as expected" in verdict and "bfloat16" in verdict
    figures = json.loads(out.read_text())
    assert figures["dtype"] == "bfloat16" and figures["passed"] is False
    assert PARITY_RTOL < figures["worst_error"] < 0.5  # bf16 rounding, not garbage


def test_prompts_file_and_image_restriction(tiny_pth, tmp_path) -> None:
    """Lines apply to every image unless they name one; each line is a prompt set ``line N``."""
    _, _, _, path = tiny_pth
    small = tmp_path / "small.png"
    Image.fromarray(dog()).convert("L").resize((300, 200)).save(small)  # grayscale, another size
    rgb = dog()
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [point_and_box_line(rgb), "", {"image": "small.png", "boxes": [[10, 20, 250, 180]], "points": [[150, 100, 0]]}],
    )
    out = tmp_path / "figures.json"
    assert run_cli(["--checkpoint", path, "--image", DOG, "--image", small, "--prompts", prompts, "--json", out]) == 0
    images = json.loads(out.read_text())["images"]
    assert [im["image"] for im in images] == ["dog.jpg", "small.png"]
    assert {r["prompts"] for r in images[0]["decoder"]} == {"line 1"}
    assert [r["prompts"] for r in images[1]["decoder"]] == ["line 1"] * 4 + ["line 3"] * 4
    assert images[1]["original_size"] == [200, 300]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved seeded random Hugging Face SamHQModel of the tiny_h structure."""
    folder = tmp_path_factory.mktemp("hf") / "sam-hq-tiny"
    build_hf(ModelConfig.tiny_h(), seed=7).save_pretrained(folder)
    return folder


def test_hf_folder_with_default_prompts(hf_folder, tmp_path) -> None:
    """A Hugging Face folder is compared with transformers' SamHQModel.from_pretrained, with the
    default prompts (two boxes, points, point + box, the first box's mask fed back): within the bar."""
    out = tmp_path / "figures.json"
    assert run_cli(["--checkpoint", hf_folder, "--image", DOG, "--json", out]) == 0
    figures = json.loads(out.read_text())
    assert figures["source_format"] == "hf" and "transformers" in figures["reference"]
    [image] = figures["images"]
    scenarios = photo_scenarios(tuple(image["original_size"]))
    assert [r["prompts"] for r in image["decoder"]] == [s.name for s in scenarios for _ in FLAGS]
    assert scenarios[-1].mask_from == "boxes"
    errors = image["decoder"][0]["errors"]
    assert "masks_all" not in errors  # not exposed by transformers; every other stage is compared
    assert {"sparse_embeddings", "dense_embeddings", "transformer_keys", "iou_all", "low_res_masks"} <= set(errors)
    assert len(image["image_encoder"]) == ModelConfig.tiny_h().image_encoder.depth + 4
    assert image["preprocess_error"] <= PARITY_RTOL  # SamImageProcessor rescales by 1/255 first
    assert figures["passed"] is True and figures["worst_error"] <= PARITY_RTOL


def test_our_folders_and_official_safetensors(tiny_pth, hf_folder, tmp_path) -> None:
    """Our checkpoint folders go back to the reference their two-way LayerNorm eps belongs to
    (official 1e-5, Hugging Face 1e-6); an official .safetensors file is read as it is."""
    from convert.export import export_official
    from samhq_jax.checkpoint import read_weights, save_checkpoint

    _, config, params, _ = tiny_pth
    hf = read_weights(hf_folder)
    cases = {
        save_checkpoint(tmp_path / "ours_b", config, params): ("samhq_jax", "segment_anything_hq"),
        save_checkpoint(tmp_path / "ours_h", hf.config, hf.params): ("samhq_jax", "transformers"),
        export_official(params, tmp_path / "sam_hq_tiny_b.safetensors"): ("official", "segment_anything_hq"),
    }
    prompts = write_lines(tmp_path / "prompts.jsonl", [point_and_box_line(dog())])
    for path, (source, reference) in cases.items():
        out = tmp_path / "figures.json"
        assert run_cli(["--checkpoint", path, "--image", DOG, "--prompts", prompts, "--json", out]) == 0, path
        figures = json.loads(out.read_text())
        assert figures["source_format"] == source and reference in figures["reference"], path
        assert figures["worst_error"] <= PARITY_RTOL


def test_preset_mode_keeps_working(tmp_path, capsys) -> None:
    """``python -m eval.parity --preset``: the same table (one image, to keep CI short)."""
    out = tmp_path / "preset.json"
    assert run_cli(["--preset", PRESET, "--images", 1, "--json", out]) == 0
    figures = json.loads(out.read_text())
    assert figures["mode"] == "preset" and figures["passed"] is True
    rows = figures["images"][0]["decoder"]
    assert {r["prompts"] for r in rows} == {"points", "boxes", "points+boxes", "mask+point"} and len(rows) == 16


# ---- usage errors: one line, exit 2, never a traceback --------------------------------------------
@pytest.mark.parametrize(
    "module,kind", [("segment_anything_hq", "official"), ("torch", "official"), ("transformers", "hf")]
)
def test_missing_references(tiny_pth, tmp_path, monkeypatch, capsys, module, kind) -> None:
    _, _, _, path = tiny_pth
    if kind == "hf":
        path = tmp_path / "hf"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "sam_hq"}))
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert run_cli(["--checkpoint", path, "--image", DOG]) == 2
    line = one_line_error(capsys)
    assert module in line and "pip install 'samhq-jax[test]'" in line


@pytest.mark.parametrize(
    "bad,says",
    [
        ("{not json", "not valid JSON"),
        ({"boxes": [[1, 2, 3]]}, "box: expected a list of [x0, y0, x1, y1] rows"),
        ({"boxes": [[10, 10, 5, 20]]}, "x1 >= x0"),
        ({"points": [[1, 2, 7]]}, "the label must be 1 (foreground)"),
        ({"box": [[1, 2, 3, 4]]}, "unknown key"),
        ({"image": "cat.jpg", "points": [[1, 2, 1]]}, "not one of the --image"),
        ({}, "give at least one box or point"),
    ],
)
def test_bad_prompts_line(tiny_pth, tmp_path, capsys, bad, says) -> None:
    _, _, _, path = tiny_pth
    prompts = write_lines(tmp_path / "prompts.jsonl", [{"points": [[1, 2, 1]]}, bad])
    assert run_cli(["--checkpoint", path, "--image", DOG, "--prompts", prompts]) == 2
    line = one_line_error(capsys)
    assert f"{prompts}:2: " in line and says in line


def test_unusable_inputs(tiny_pth, tmp_path, capsys) -> None:
    _, _, _, path = tiny_pth
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    plain = tmp_path / "sam_tiny_b.pth"
    torch.save(build_official(ModelConfig.tiny_b(), seed=1, plain_sam=True).state_dict(), plain)
    prompts = write_lines(tmp_path / "p.jsonl", [{"points": [[1, 2, 1]]}])
    cases = [
        (["--checkpoint", path, "--image", tmp_path / "missing.jpg"], "no image at"),
        (["--checkpoint", tmp_path / "missing.pth", "--image", DOG], "no checkpoint at"),
        (["--checkpoint", path, "--image", garbage], "cannot read image"),
        (["--checkpoint", broken, "--image", DOG], "cannot read checkpoint"),
        (["--checkpoint", plain, "--image", DOG], "original SAM checkpoint"),
        (["--checkpoint", path, "--image", DOG, "--prompts", tmp_path / "none.jsonl"], "no prompts file"),
        (["--checkpoint", path, "--image", DOG, "--image", garbage, "--prompts", prompts], "cannot read image"),
        (["--checkpoint", path], "needs at least one --image"),
        (["--image", DOG], "need --checkpoint"),
        (["--checkpoint", path, "--image", DOG, "--dtype", "float16"], "invalid choice"),
        (["--preset", "vit_q"], "unknown preset"),
    ]
    for args, says in cases:
        assert run_cli(args) == 2, args
        assert says in one_line_error(capsys), args


def test_prompts_must_cover_every_image(tiny_pth, tmp_path, capsys) -> None:
    _, _, _, path = tiny_pth
    other = tmp_path / "other.png"
    Image.fromarray(dog()).resize((64, 48)).save(other)
    prompts = write_lines(tmp_path / "p.jsonl", [{"image": "dog.jpg", "points": [[1, 2, 1]]}])
    assert run_cli(["--checkpoint", path, "--image", DOG, "--image", other, "--prompts", prompts]) == 2
    assert "no prompts for" in one_line_error(capsys)


def test_scenarios_map_like_the_predictor() -> None:
    """Pixel prompts reach the model frame as SamHQPredictor maps them (points added to every box)."""
    from samhq_jax.transforms import apply_boxes, apply_coords

    config = ModelConfig.tiny_b()
    s = Scenario("x", boxes=((0, 0, 100, 50), (10, 10, 20, 20)), points=((5, 6, 1), (7, 8, 0)))
    p = frame_prompts(s, (500, 1000), config, np.ones((1, 1, 40, 40), np.float32))
    assert p.boxes.shape == (1, 2, 4) and p.points.shape == (1, 2, 2, 2) and p.masks.shape == (1, 2, 40, 40)
    np.testing.assert_array_equal(p.boxes[0], apply_boxes(np.array(s.boxes), (500, 1000), 160))
    np.testing.assert_array_equal(p.points[0, 1], apply_coords(np.array([[5, 6], [7, 8]]), (500, 1000), 160))
    np.testing.assert_array_equal(p.labels[0], [[1, 0], [1, 0]])
