"""The front door of every command: one line on stderr and an exit status for each error path, never a
traceback; prompts checked before the checkpoint is loaded; paths never mistaken for hub ids;
``--version`` and ``--help``. In-process (``main(argv)`` with capsys), no model is built."""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from pathlib import Path

import jax
import pytest
from PIL import Image

from convert.cli import main as convert_main
from eval.cli import main as eval_main
from samhq_jax import checkpoint
from samhq_jax.checkpoint import is_hub_id, read_weights
from samhq_jax.cli import main as samhq_main
from samhq_jax.cmdkit.args import package_version
from samhq_jax.cmdkit.guard import DEBUG_ENV
from samhq_jax.cmdkit.prompts import PROMPTS_EXAMPLE
from samhq_jax.config import ModelConfig
from samhq_jax.errors import RunError
from samhq_jax.mesh_predictor import MeshPredictor
from train.cli import main as train_main

OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes.\nBufferAssignment OOM Debugging."


def _run(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``main(argv)``, argparse's SystemExit included."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _fails(main: Callable, argv: list[str], capsys: pytest.CaptureFixture, code: int, *texts: str) -> str:
    """Run ``main(argv)``: exit ``code``, stderr exactly one line holding every one of ``texts``."""
    got, _, err = _run(main, argv, capsys)
    assert got == code, (argv, err)
    assert err.endswith("\n") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in texts:
        assert text in err, (text, err)
    return err.strip()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (120, 60, 30)).save(path)
    return path


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a checkpoint fails the test: whatever is checked must be checked before."""

    def load(*_args: object, **_kwargs: object) -> None:
        pytest.fail("the checkpoint was loaded before the prompts were checked")

    monkeypatch.setattr(MeshPredictor, "from_pretrained", load)


def _ours(folder: Path, meta: object) -> Path:
    """A folder whose config.json holds ``meta`` (no weights: a bad config.json fails before them)."""
    folder.mkdir()
    (folder / "config.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return folder


def _meta(change: Callable[[dict], None] = lambda c: None) -> dict:
    """Our config.json content for tiny_b, with ``change`` applied to its "config"."""
    config = json.loads(json.dumps(ModelConfig.tiny_b().to_dict()))
    change(config)
    return {"format": "samhq_jax", "format_version": 1, "config": config, "hq_trained": True}


# ---- unknown formats and bad config.json: a ValueError naming the file, exit 2 ----------------------


def test_unknown_checkpoint_format(tmp_path: Path, image: Path, capsys) -> None:
    (tmp_path / "weights.npz").write_bytes(b"PK\x03\x04")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    _ours(tmp_path / "bert", {"model_type": "bert"})
    out = str(tmp_path / "out")
    _fails(
        convert_main, [str(tmp_path / "weights.npz"), out], capsys, 2, "samhq-convert: error: unknown checkpoint format"
    )
    _fails(convert_main, [str(tmp_path / "garbage.safetensors"), out], capsys, 2, "as a safetensors file")
    _fails(convert_main, [str(tmp_path / "bert"), out], capsys, 2, "unknown checkpoint format", "config.json")
    predict = ["predict", "--image", str(image), "--box", "1", "2", "30", "20", "--output", out]
    _fails(
        samhq_main, [*predict, "--checkpoint", str(tmp_path / "empty")], capsys, 2, "samhq: error: unknown checkpoint"
    )


@pytest.mark.parametrize(
    "meta,problem",
    [
        (_meta(lambda c: c["image_encoder"].pop("depth")), "config.image_encoder: missing key(s) depth"),
        (_meta(lambda c: c.pop("mask_decoder")), "config: missing key(s) mask_decoder"),
        (
            _meta(lambda c: c["image_encoder"].update(depth="4")),
            'config.image_encoder.depth: expected a positive integer, got "4"',
        ),
        (
            _meta(lambda c: c["mask_decoder"].update(layer_norm2d_eps=None)),
            "layer_norm2d_eps: expected a positive number",
        ),
        (_meta(lambda c: c["image_encoder"].update(num_heads=0)), "num_heads: expected a positive integer, got 0"),
        (_meta(lambda c: c["prompt_encoder"].update(size=3)), "config.prompt_encoder: unknown key(s) size"),
        (_meta(lambda c: c.update(image_encoder=[32, 4])), "config.image_encoder: expected an object"),
        (_meta(lambda c: c["image_encoder"].update(num_heads=3)), "embed_dim 32 is not divisible by num_heads 3"),
        ({"format": "samhq_jax", "format_version": 1}, "missing key config"),
        ({**_meta(), "hq_trained": "yes"}, 'hq_trained: expected true or false, got "yes"'),
        ({**_meta(), "format_version": 9}, "unsupported checkpoint format_version 9"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object {...}, got a list"),
        ({"model_type": "sam_hq", "mask_decoder_config": []}, "mask_decoder_config: expected an object"),
        (
            {"model_type": "sam_hq", "mask_decoder_config": {"layer_norm_eps": "1e-6"}},
            'mask_decoder_config.layer_norm_eps: expected a positive number, got "1e-6"',
        ),
    ],
)
def test_bad_config_json_is_one_clear_line(tmp_path: Path, capsys, meta: object, problem: str) -> None:
    folder = _ours(tmp_path / "ckpt", meta)
    with pytest.raises(ValueError, match=r"config\.json: ") as err:
        read_weights(folder)
    assert str(folder / "config.json") in str(err.value) and problem in str(err.value)
    _fails(convert_main, [str(folder), str(tmp_path / "out")], capsys, 2, f"{folder / 'config.json'}: ", problem)


def test_bad_config_json_in_eval_and_predict(tmp_path: Path, image: Path, capsys) -> None:
    folder = _ours(tmp_path / "ckpt", _meta(lambda c: c["image_encoder"].update(depth=4.5)))
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.open(image).save(data / "images" / "a.png")
    Image.new("L", (40, 30), 255).save(data / "masks" / "a.png")
    argv = ["--checkpoint", str(folder), "--data", str(data), "--output", str(tmp_path / "o")]
    _fails(eval_main, argv, capsys, 2, "samhq-eval: error: --checkpoint", "config.image_encoder.depth")
    argv = ["predict", "--checkpoint", str(folder), "--image", str(image), "--point", "3", "4", "1"]
    _fails(samhq_main, [*argv, "--output", str(tmp_path / "o")], capsys, 2, "samhq: error:", "config.json")


# ---- runtime failures: exit 1 (XLA), 130 (Ctrl-C); SAMHQ_DEBUG re-raises --------------------------


def _raising(err: BaseException) -> Callable[..., None]:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise err

    return fail


def _patch_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, image: Path, err: BaseException) -> dict:
    """Every command with its work replaced by ``err``: ``{prog: (main, argv)}``."""
    monkeypatch.setattr("convert.cli.read_weights", _raising(err))
    monkeypatch.setattr("eval.cli.run", _raising(err))
    monkeypatch.setattr("train.cli.train", _raising(err))
    monkeypatch.setattr(
        MeshPredictor,
        "from_pretrained",
        lambda _path, _mesh: types.SimpleNamespace(lanes=1, predict_images=_raising(err)),
    )
    out = str(tmp_path / "out")
    return {
        "samhq": (
            samhq_main,
            ["predict", "--checkpoint", "ck", "--image", str(image), "--box", "1", "2", "9", "9", "--output", out],
        ),
        "samhq-convert": (convert_main, ["src.pth", out]),
        "samhq-eval": (eval_main, ["--checkpoint", "ck", "--data", str(tmp_path), "--output", out]),
        "samhq-train": (train_main, ["--preset", "tiny_b", "--data", str(tmp_path), "--output", out]),
    }


def test_xla_runtime_error_is_one_line_exit_1(tmp_path: Path, image: Path, monkeypatch, capsys) -> None:
    for prog, (main, argv) in _patch_each(monkeypatch, tmp_path, image, jax.errors.JaxRuntimeError(OOM)).items():
        err = _fails(
            main, argv, capsys, 1, f"{prog}: error: XLA runtime error", "RESOURCE_EXHAUSTED", "out of device memory"
        )
        assert "BufferAssignment" not in err  # the first line of XLA's message only
    # The step that failed is named.
    main, argv = _patch_each(monkeypatch, tmp_path, image, jax.errors.JaxRuntimeError(OOM))["samhq"]
    _fails(main, argv, capsys, 1, f"XLA runtime error while segmenting {image}: RESOURCE_EXHAUSTED")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(jax.errors.JaxRuntimeError):
        main(argv)


@pytest.mark.parametrize(
    "err,code,texts",
    [
        (KeyboardInterrupt(), 130, (": interrupted",)),
        (RunError("loss is nan at step 3"), 1, (": error: ", "loss is nan at step 3")),
        (TypeError("unsupported operand"), 1, (": error: internal error", "TypeError: unsupported operand", DEBUG_ENV)),
        # Our own ValueError / KeyError / RuntimeError is a bug, not bad input: exit 1, never 2.
        (ValueError("operands could not be broadcast"), 1, (": error: internal error", "ValueError", DEBUG_ENV)),
        (KeyError("hq_token"), 1, (": error: internal error", "KeyError: 'hq_token'", DEBUG_ENV)),
        (RuntimeError("bad state"), 1, (": error: internal error", "RuntimeError: bad state", DEBUG_ENV)),
        (MemoryError(), 1, (": error: out of host memory",)),
    ],
)
def test_other_failures_one_line(tmp_path: Path, image: Path, monkeypatch, capsys, err, code: int, texts) -> None:
    for prog, (main, argv) in _patch_each(monkeypatch, tmp_path, image, err).items():
        line = _fails(main, argv, capsys, code, prog + texts[0], *texts[1:])
        assert ("internal error" in line) == (DEBUG_ENV in texts), line


# ---- samhq predict: every prompt and image checked before the checkpoint is loaded ---------------


@pytest.mark.parametrize(
    "flags,text",
    [
        (["--point", "1", "2", "7"], "--point 1 2 7: the label must be 1 (foreground), 0 (background) or -1 (ignore)"),
        (["--point", "1", "2", "0.5"], "--point 1 2 0.5: the label must be"),
        (["--box", "9", "2", "3", "4"], "--box 9 2 3 4: need x1 >= x0 and y1 >= y0"),
        (["--box", "1", "8", "3", "4"], "--box 1 8 3 4: need x1 >= x0 and y1 >= y0"),
        (["--box", "nan", "2", "3", "4"], "--box nan 2 3 4: every number must be finite"),
        (["--point", "inf", "2", "1"], "--point inf 2 1: every number must be finite"),
        ([], "give at least one --box or --point"),
        (["--prompts", "p.jsonl", "--box", "1", "2", "3", "4"], "--prompts goes with --images"),
    ],
)
def test_bad_flags_before_load(tmp_path: Path, image: Path, no_load, capsys, flags: list, text: str) -> None:
    argv = ["predict", "--checkpoint", str(tmp_path / "missing.pth"), "--image", str(image), *flags]
    _fails(samhq_main, [*argv, "--output", str(tmp_path / "o")], capsys, 2, f"samhq: error: {text}")


def test_bad_prompt_wins_over_a_missing_checkpoint(tmp_path: Path, image: Path, capsys) -> None:
    argv = ["predict", "--checkpoint", "no/such.pth", "--image", str(image), "--point", "1", "2", "3"]
    _fails(samhq_main, [*argv, "--output", str(tmp_path / "o")], capsys, 2, "--point 1 2 3: the label")


@pytest.mark.parametrize(
    "lines,text",
    [
        (['{"image": "photo.png", "boxes": [[1, 2, 3, 4]]}', "{oops"], ":2: not valid JSON"),
        (['{"boxes": [[1, 2, 3, 4]]}'], ':1: expected an object with "image"'),
        (['["photo.png"]'], ':1: expected an object with "image"'),
        (['{"image": "photo.png", "box": [[1, 2, 3, 4]]}'], ":1: unknown key(s) box"),
        (['{"image": "photo.png", "boxes": [1, 2, 3, 4]}'], ":1: box: expected a list of [x0, y0, x1, y1] rows"),
        (['{"image": "photo.png", "points": [[1, 2]]}'], ":1: point: expected a list of [x, y, label] rows"),
        (['{"image": "photo.png", "points": [[1, 2, "1"]]}'], ":1: point: expected a list"),
        (["", '{"image": "photo.png", "points": [[1, 2, 2]]}'], ":2: point 1 2 2: the label must be 1 (foreground)"),
        (['{"image": "photo.png", "boxes": [[5, 2, 3, 4]]}'], ":1: box 5 2 3 4: need x1 >= x0"),
        (['{"image": "photo.png"}'], ":1: give at least one box or point"),
        (['{"image": "gone.jpg", "points": [[1, 2, 1]]}'], ":1: no image at"),
        (['{"image": "broken.png", "points": [[1, 2, 1]]}'], ":1: cannot read image"),
        (
            ['{"image": "photo.png", "points": [[1, 2, 1]]}', '{"image": "photo.jpg", "points": [[1, 2, 1]]}'],
            ":2: photo.jpg would overwrite the outputs of line 1",
        ),
        (["", "  "], ": no prompts; one JSON object per line, e.g. " + PROMPTS_EXAMPLE),
    ],
)
def test_bad_prompts_file_names_file_and_line(tmp_path: Path, image: Path, no_load, capsys, lines, text) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.open(image).save(tmp_path / "photo.jpg")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    argv = ["predict", "--checkpoint", "ck", "--images", str(tmp_path), "--prompts", str(prompts)]
    _fails(samhq_main, [*argv, "--output", str(tmp_path / "o")], capsys, 2, f"samhq: error: {prompts}{text}")


def test_bad_folder_flags_before_load(tmp_path: Path, image: Path, no_load, capsys) -> None:
    base = ["predict", "--checkpoint", "ck", "--output", str(tmp_path / "o")]
    cases = [
        (["--images", str(tmp_path)], "--images needs --prompts"),
        (["--images", str(tmp_path / "nope"), "--prompts", "p.jsonl"], "no such folder"),
        (["--images", str(tmp_path), "--prompts", str(tmp_path / "none.jsonl")], "none.jsonl"),
        (["--images", str(tmp_path), "--prompts", "p", "--point", "1", "2", "1"], "--box / --point go with --image"),
        (["--image", str(image), "--images", str(tmp_path)], "exactly one of --image or --images"),
        (["--image", str(tmp_path / "nope.jpg"), "--point", "1", "2", "1"], "no image at"),
    ]
    for flags, text in cases:
        _fails(samhq_main, [*base, *flags], capsys, 2, "samhq: error:", text)


# ---- checkpoint paths: never a mistyped path sent to the hub ---------------------------------------


@pytest.mark.parametrize(
    "text,hub",
    [
        ("syscv-community/sam-hq-vit-base", True),
        ("facebook/sam-vit-base", True),
        ("owner/model.v2", True),
        ("checkpoints/sam_hq_vit_b.pth", False),
        ("checkpoints/sam_hq_vit_b.safetensors", False),
        ("ckpt/model.bin", False),
        ("./owner/name", False),
        ("/owner/name", False),
        ("~/name", False),
        (".hidden/name", False),
        ("a/b/c", False),
        ("owner/na me", False),
        ("owner/--x", False),
        ("name", False),
    ],
)
def test_hub_id_form(text: str, hub: bool) -> None:
    assert is_hub_id(text) is hub


def test_mistyped_relative_path_is_not_a_hub_id(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint, "_resolve_hub", _raising(AssertionError("looked up on the hub")))
    for path in ("checkpoints/sam_hq_vit_b.pth", "./ckpt/vit_b", "sam_hq_vit_b.pth"):
        with pytest.raises(FileNotFoundError, match=f"no checkpoint at {path} "):
            read_weights(path)
    text = f"no checkpoint at checkpoints/sam_hq_vit_b.pth ({tmp_path / 'checkpoints' / 'sam_hq_vit_b.pth'})"
    _fails(convert_main, ["checkpoints/sam_hq_vit_b.pth", "out"], capsys, 2, f"samhq-convert: error: {text}")


def test_unknown_hub_id_offline(tmp_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fails(
        convert_main,
        ["someone/sam-hq-missing", "out"],
        capsys,
        2,
        "samhq-convert: error: 'someone/sam-hq-missing' is no local path, so it was looked up as a hub repo id",
        f"not in the local hub cache ({tmp_path / 'hub'})",
        "the hub is offline (HF_HUB_OFFLINE=1)",
        f"pass an existing path (./someone/sam-hq-missing is {tmp_path / 'someone' / 'sam-hq-missing'})",
    )


# ---- --version, --help, samhq parity -------------------------------------------------------------


def test_version(capsys) -> None:
    assert package_version().startswith("samhq-jax 0.")
    for main in (samhq_main, convert_main, eval_main, train_main):
        code, out, err = _run(main, ["--version"], capsys)
        assert (code, out, err) == (0, f"{package_version()}\n", "")


def test_help_says_labels_prompts_file_and_outputs(capsys) -> None:
    code, out, _ = _run(samhq_main, ["predict", "--help"], capsys)
    assert code == 0
    for text in (
        "1 (foreground",
        "0 (background",
        "-1 (ignore",
        PROMPTS_EXAMPLE,
        "JSON lines",
        "<stem>_mask<i>.png",
        "<stem>_overlay.png",
        "<stem>_scores.json",
        '"iou"',
        "examples:",
        "samhq predict --checkpoint",
        f"{DEBUG_ENV}=1",
    ):
        assert text in out, text
    code, out, _ = _run(samhq_main, ["--help"], capsys)
    words = " ".join(out.split())  # argparse wraps the subcommands' help to the terminal's width
    assert code == 0 and "stage-by-stage parity of a checkpoint against the PyTorch reference" in words
    for main in (convert_main, eval_main, train_main):
        code, out, _ = _run(main, ["--help"], capsys)
        assert code == 0 and "exit status:" in out and f"{DEBUG_ENV}=1" in out and "--version" in out


def test_samhq_parity_dispatches(monkeypatch) -> None:
    import eval.parity.cli

    seen = []
    monkeypatch.setattr(eval.parity.cli, "main", lambda argv: seen.append(argv) or 0)
    assert samhq_main(["parity", "--preset", "tiny_b", "--images", "2"]) == 0
    assert seen == [["--preset", "tiny_b", "--images", "2"]]
