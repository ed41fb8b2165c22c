"""``samhq export --format onnx``: the encoder and the official-signature decoder against the official
PyTorch package, in onnxruntime (issue 21).

The model is the seeded random ``tiny_b`` of :func:`tests.conftest.official_model_and_params` (the
official classes at test size; the official export script hard-codes vit_b/l/h sizes, so the ONNX
files are compared with the official ``SamOnnxModel`` forward in PyTorch, which is what that script
traces). Exported once (``samhq export``), plus the decoder of the second option set:

* ``decoder.onnx`` equals ``SamOnnxModel`` (same weights, the official ``(4, 1, G, G, D)`` interm
  stack) on random inputs: 1 to 6 points with every label -1..3, with and without a mask input,
  original sizes smaller and larger than the model's input, both option sets; every output within
  1e-4 of the reference's largest magnitude (per output over the cases of an option set);
* ``encoder.onnx`` equals the official image encoder on a real photo (embedding and early feature);
* encoder.onnx then decoder.onnx on a photo and a box (``examples/onnx_segment.py``'s functions)
  give the official ``SamPredictor``'s mask, >= 99.99 % of the pixels;
* ``examples/onnx_segment.py`` runs with jax and torch unimportable and writes that mask;
* bad flags and an occupied output are refused before any work (exit 2);
* ``-m slow``: the same checks at vit_b size (random weights; minutes).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from convert.deploy.onnx import DEFAULT_OPSET, export_decoder
from convert.deploy.signature import DecoderOptions
from eval.parity.samples import IMAGES_DIR
from samhq_jax.checkpoint import save_checkpoint
from samhq_jax.cli import main as samhq_main
from samhq_jax.image_io import read_rgb
from tests.conftest import MASK_AGREEMENT, assert_close, official_model_and_params

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "onnx_segment.py"
PRESET = "tiny_b"
PHOTO = IMAGES_DIR / "dog.jpg"
OPTION_SETS = {"default": [], "hq_multimask": ["--hq-token-only", "--multimask-output"]}
# (points, has_mask_input, orig_im_size): sizes below and above the input side S = 160, both aspects
CASES = [(1, 0.0, (150, 97)), (3, 1.0, (300, 451)), (6, 0.0, (37, 160)), (2, 1.0, (1500, 2250))]
BLOCKER = """
import importlib.abc, runpy, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax", "torch", "torchvision"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocked())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("imported:", sorted(m for m in ("jax", "torch", "flax") if m in sys.modules))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """``{option set: folder with encoder.onnx and decoder.onnx}``: the default set through ``samhq
    export`` from a checkpoint folder; the other's decoder through the library (the encoder does not
    depend on the options: the same file; ``python -m convert.deploy`` is run in the StableHLO tests)."""
    _, _, config, params = official_model_and_params(PRESET)
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = save_checkpoint(root / "ckpt", config, params)
    default = root / "default"
    assert samhq_main(["export", "--checkpoint", str(checkpoint), "--output", str(default), "--format", "onnx"]) == 0
    assert sorted(p.name for p in default.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    other = root / "hq_multimask"
    other.mkdir()
    (other / "encoder.onnx").symlink_to(default / "encoder.onnx")
    options = DecoderOptions(hq_token_only=True, multimask_output=True)
    export_decoder(config, params, options, other / "decoder.onnx", DEFAULT_OPSET)
    return {"default": default, "hq_multimask": other}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def example_module():
    spec = importlib.util.spec_from_file_location("onnx_segment", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_signature_is_the_official_one(exported):
    _, _, config, _ = official_model_and_params(PRESET)
    g, low, d = config.embedding_size, config.low_res_mask_size, config.image_encoder.early_dim
    c, s = config.prompt_encoder.embed_dim, config.img_size
    decoder = session(exported["default"] / "decoder.onnx")
    assert [i.name for i in decoder.get_inputs()] == [
        "image_embeddings",
        "interm_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "orig_im_size",
    ]
    assert [o.name for o in decoder.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    shapes = [i.shape for i in decoder.get_inputs()]
    assert shapes[0] == [1, c, g, g] and shapes[1][1:] == [1, g, g, d] and shapes[4:] == [[1, 1, low, low], [1], [2]]
    assert isinstance(shapes[2][1], str) and shapes[2][1] == shapes[3][1]  # the dynamic point count
    encoder = session(exported["default"] / "encoder.onnx")
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("image", [1, 3, s, s])]
    assert [(o.name, o.shape) for o in encoder.get_outputs()] == [
        ("image_embeddings", [1, c, g, g]),
        ("interm_embeddings", [1, 1, g, g, d]),
    ]


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_decoder_equals_official_onnx_model(exported, option_set):
    from segment_anything_hq.utils.onnx import SamOnnxModel

    model, _, config, _ = official_model_and_params(PRESET)
    flags = OPTION_SETS[option_set]
    reference = SamOnnxModel(
        model, hq_token_only="--hq-token-only" in flags, multimask_output="--multimask-output" in flags
    ).eval()
    decoder = session(exported[option_set] / "decoder.onnx")
    s, g, low = config.img_size, config.embedding_size, config.low_res_mask_size
    c, d = config.prompt_encoder.embed_dim, config.image_encoder.early_dim
    rng = np.random.default_rng(21)
    ours, refs = {}, {}
    for n, has_mask, orig in CASES:
        labels = np.resize(rng.permutation(np.arange(-1, 4)), n)  # -1..3, each once from 5 points on
        feeds = {
            "image_embeddings": rng.normal(size=(1, c, g, g)).astype(np.float32),
            "interm_embeddings": rng.normal(size=(4, 1, g, g, d)).astype(np.float32),
            "point_coords": rng.uniform(0, s, (1, n, 2)).astype(np.float32),
            "point_labels": labels[None].astype(np.float32),
            "mask_input": rng.normal(0, 3, (1, 1, low, low)).astype(np.float32),
            "has_mask_input": np.array([has_mask], np.float32),
            "orig_im_size": np.array(orig, np.float32),
        }
        got = decoder.run(None, feeds)
        with torch.no_grad():
            want = [t.numpy() for t in reference(**{k: torch.from_numpy(v) for k, v in feeds.items()})]
        for name, a, b in zip(("masks", "iou_predictions", "low_res_masks"), got, want, strict=True):
            assert a.shape == b.shape, f"{name}, {n} points, size {orig}: {a.shape} != {b.shape}"
            ours.setdefault(name, []).append(a.ravel())
            refs.setdefault(name, []).append(b.ravel())
    for name in ours:
        assert_close(np.concatenate(ours[name]), np.concatenate(refs[name]), f"decoder.onnx {name} ({option_set})")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_rgb(PHOTO)


def test_encoder_equals_official_encoder_on_a_photo(exported, photo):
    from segment_anything_hq.utils.transforms import ResizeLongestSide

    model, _, config, _ = official_model_and_params(PRESET)
    resized = ResizeLongestSide(config.img_size).apply_image(photo)
    with torch.no_grad():
        image = model.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())
        embedding, interm = model.image_encoder(image)
    assert np.array_equal(image[0].numpy(), example_module().preprocess(photo, config.img_size)[0])
    got_embedding, got_interm = session(exported["default"] / "encoder.onnx").run(None, {"image": image.numpy()})
    assert_close(got_embedding, embedding.numpy(), "encoder.onnx image_embeddings")
    assert_close(got_interm[0], interm[0].numpy(), "encoder.onnx interm_embeddings (early feature)")


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_encoder_then_decoder_give_the_official_predictor_mask(exported, photo, option_set):
    from segment_anything_hq import SamPredictor

    model, _, _, _ = official_model_and_params(PRESET)
    h, w = photo.shape[:2]
    box = [0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h]
    flags = OPTION_SETS[option_set]
    predictor = SamPredictor(model)
    predictor.set_image(photo)
    want, _, _ = predictor.predict(
        box=np.array(box),
        multimask_output="--multimask-output" in flags,
        hq_token_only="--hq-token-only" in flags,
    )
    folder = exported[option_set]
    got, _ = example_module().segment(
        session(folder / "encoder.onnx"), session(folder / "decoder.onnx"), photo, [box], []
    )
    agreement = float((got == want[0]).mean())
    assert got.shape == (h, w) and agreement >= MASK_AGREEMENT, f"{option_set}: {agreement:.6f} of the pixels agree"


def test_example_runs_without_jax_or_torch(exported, photo, tmp_path):
    folder = exported["default"]
    h, w = photo.shape[:2]
    box = [round(0.2 * w), round(0.15 * h), round(0.8 * w), round(0.9 * h)]
    out = tmp_path / "mask.png"
    argv = ["--encoder", str(folder / "encoder.onnx"), "--decoder", str(folder / "decoder.onnx")]
    argv += ["--image", str(PHOTO), "--box", *map(str, box), "--output", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(EXAMPLE), *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported: []" in done.stdout
    mask = np.asarray(Image.open(out))
    want, _ = example_module().segment(
        session(folder / "encoder.onnx"), session(folder / "decoder.onnx"), photo, [box], []
    )
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, want) and want.any()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--format", "onnx", "--platforms", "cpu"], "--platforms goes with --format stablehlo"),
        (["--format", "onnx", "--opset", "12"], "--opset 12"),
        (["--format", "stablehlo", "--opset", "17"], "--opset goes with --format onnx"),
        (["--format", "stablehlo", "--platforms", "cpu,gpu"], "--platforms cpu,gpu"),
    ],
)
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    argv = ["export", "--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "out"), *flags]
    assert samhq_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_occupied_output_and_missing_checkpoint_are_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", "--checkpoint", str(tmp_path), "--output", str(out), "--format", "onnx"]
    assert samhq_main(argv) == 2
    assert "--output" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    argv = ["export", "--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "new"), "--format", "onnx"]
    assert samhq_main(argv) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_help_names_the_files_the_signature_and_the_entry_points(capsys):
    from convert.deploy.__main__ import main as deploy_main

    for entry, argv in ((samhq_main, ["export", "--help"]), (deploy_main, ["--help"])):
        with pytest.raises(SystemExit) as done:
            entry(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert done.value.code == 0
        for text in ("encoder.onnx", "decoder.onnx", "orig_im_size", "encoder.stablehlo", "stablehlo.json"):
            assert text in out, text
        assert "--overwrite" in out and "examples:" in out and "exit status:" in out


@pytest.mark.slow
def test_vit_b_onnx_equals_official(tmp_path, photo):
    """Real size (seeded random vit_b; minutes, ~3 GB): the encoder on a photo, the decoder on 1 and
    30 points, the chain on a box, against the official model as above."""
    from segment_anything_hq import SamPredictor
    from segment_anything_hq.utils.onnx import SamOnnxModel
    from segment_anything_hq.utils.transforms import ResizeLongestSide

    from convert.deploy.onnx import export_onnx

    model, _, config, params = official_model_and_params("vit_b")
    export_onnx(config, params, tmp_path, DecoderOptions(), DEFAULT_OPSET)
    encoder, decoder = session(tmp_path / "encoder.onnx"), session(tmp_path / "decoder.onnx")
    resized = ResizeLongestSide(config.img_size).apply_image(photo)
    with torch.no_grad():
        image = model.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())
        embedding, interm = model.image_encoder(image)
    got_embedding, got_interm = encoder.run(None, {"image": image.numpy()})
    assert_close(got_embedding, embedding.numpy(), "vit_b encoder.onnx image_embeddings")
    assert_close(got_interm[0], interm[0].numpy(), "vit_b encoder.onnx interm_embeddings")
    reference = SamOnnxModel(model).eval()
    rng = np.random.default_rng(0)
    for n in (1, 30):
        feeds = {
            "image_embeddings": got_embedding,
            "interm_embeddings": torch.stack(interm).numpy(),
            "point_coords": rng.uniform(0, config.img_size, (1, n, 2)).astype(np.float32),
            "point_labels": np.resize(np.arange(-1, 4), n)[None].astype(np.float32),
            "mask_input": rng.normal(0, 3, (1, 1, 256, 256)).astype(np.float32),
            "has_mask_input": np.array([n % 2], np.float32),
            "orig_im_size": np.array(photo.shape[:2], np.float32),
        }
        with torch.no_grad():
            want = reference(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        for name, a, b in zip(("masks", "iou", "low_res"), decoder.run(None, feeds), want, strict=True):
            assert_close(a, b.numpy(), f"vit_b decoder.onnx {name}, {n} points")
    h, w = photo.shape[:2]
    box = [0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h]
    predictor = SamPredictor(model)
    predictor.set_image(photo)
    want, _, _ = predictor.predict(box=np.array(box), multimask_output=False)
    got, _ = example_module().segment(encoder, decoder, photo, [box], [])
    assert float((got == want[0]).mean()) >= MASK_AGREEMENT
