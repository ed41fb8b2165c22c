"""A corpus of broken images, prompts, checkpoints and flags sent through every command: each case is
refused with exactly one line on stderr, exit status 2, no traceback, and before a model is used.

The commands run in-process (``main(argv)``, capsys); the model never loads (the predictor the
commands would load is a stub that fails the test if it is asked for masks). Two real processes
check that the ``python -m`` entry points sit behind the same guard.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert.cli import main as convert_main
from eval.bench.speed import main as bench_main
from eval.cli import main as eval_main
from eval.parity.cli import main as parity_main
from samhq_jax.cli import main as samhq_main
from samhq_jax.mesh_predictor import MeshPredictor

ROOT = Path(__file__).resolve().parents[1]
BROKEN_IMAGES = ("empty.jpg", "truncated.png", "truncated.jpg", "text.png", "folder.jpg", "float32.tif")
BROKEN_CHECKPOINTS = ("empty.pth", "text.pth", "garbage.safetensors", "weights.npz", "emptydir", "missing.pth")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``good.png``, each broken image alone in ``dir_<name>/`` (and beside good.png), broken
    checkpoints, a non-empty folder, a plain file."""
    root = tmp_path_factory.mktemp("fuzz")
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "good.png")
    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    Image.fromarray(rgb).save(jpg, format="JPEG")
    for name in BROKEN_IMAGES:
        folder = root / f"dir_{name}"
        folder.mkdir()
        path = folder / name
        if name == "empty.jpg":
            path.write_bytes(b"")
        elif name == "truncated.png":
            path.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
        elif name == "truncated.jpg":
            path.write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
        elif name == "text.png":
            path.write_text("this is not an image\n")
        elif name == "folder.jpg":
            path.mkdir()
        else:  # 32-bit float TIFF (PIL mode F): no 0-255 scale
            Image.fromarray(rgb[..., 0].astype(np.float32) / 255, mode="F").save(path)
    (root / "empty.pth").write_bytes(b"")
    (root / "text.pth").write_text("hello\n")
    (root / "garbage.safetensors").write_bytes(b"garbage")
    (root / "weights.npz").write_bytes(b"PK\x03\x04")
    (root / "emptydir").mkdir()
    (root / "full").mkdir()
    (root / "full" / "old.txt").write_text("an earlier output")
    (root / "afile").write_text("a file, not a folder")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(rgb).save(data / "images" / "a.png")
    Image.new("L", (40, 30), 255).save(data / "masks" / "a.png")
    return root


@pytest.fixture(autouse=True)
def stub_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The predictor the commands load is a stub: asking it for masks fails the test (the case
    should have been refused before)."""

    def used(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model was used: the input should have been refused before")

    stub = types.SimpleNamespace(lanes=1, predict_images=used)
    monkeypatch.setattr(MeshPredictor, "from_pretrained", lambda *_a, **_k: stub)
    monkeypatch.setenv("SAMHQ_JAX_CACHE", "0")


def _refused(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture, *texts: str) -> None:
    """``main(argv)`` exits 2 with exactly one line on stderr holding every one of ``texts``."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert err.endswith("\n") and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    for text in texts:
        assert text in err, (argv, text, err)


# ---- broken images, through every command that reads one ---------------------------------------
@pytest.mark.parametrize("name", BROKEN_IMAGES)
def test_broken_image_everywhere(corpus: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    image, folder, out = corpus / f"dir_{name}" / name, corpus / f"dir_{name}", str(corpus / "out_img")
    prompts = corpus / f"prompts_{name}.jsonl"
    prompts.write_text(f'{{"image": "{name}", "boxes": [[1, 2, 9, 9]]}}\n')
    ck = ["--checkpoint", str(corpus / "empty.pth")]
    box, out = ["--box", "1", "2", "9", "9"], ["--output", out]
    _refused(samhq_main, ["predict", *ck, "--image", str(image), *box, *out], capsys, name)
    _refused(samhq_main, ["predict", *ck, "--images", str(folder), "--prompts", str(prompts), *out], capsys, name)
    if name != "truncated.jpg":  # its header is whole: refused when read (by predict, above)
        _refused(samhq_main, ["everything", *ck, "--image", str(image), *out], capsys, name)
        _refused(samhq_main, ["everything", *ck, "--images", str(folder), *out], capsys, name)
    _refused(parity_main, [*ck, "--image", str(image)], capsys, name)


# ---- broken checkpoints --------------------------------------------------------------------------
@pytest.mark.parametrize("name", BROKEN_CHECKPOINTS)
def test_broken_checkpoint(corpus: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    _refused(convert_main, [str(corpus / name), str(corpus / f"out_{name}_converted")], capsys, name)
    assert not (corpus / f"out_{name}_converted").exists()  # nothing half-written
    assert not [p for p in corpus.iterdir() if p.name.startswith(".out_")]  # no temporary left


# ---- bad prompts: flags and prompts files ---------------------------------------------------------
@pytest.mark.parametrize(
    "flags,text",
    [
        (["--box", "nan", "2", "3", "4"], "--box nan 2 3 4: every number must be finite"),
        (["--box", "1", "2", "inf", "4"], "--box 1 2 inf 4: every number must be finite"),
        (["--box", "-inf", "2", "3", "4"], "--box"),  # argparse reads -inf as an option: refused all the same
        (["--point", "1", "2", "nan"], "--point 1 2 nan: every number must be finite"),
        (["--point", "1", "2", "7"], "--point 1 2 7: the label must be 1 (foreground), 0 (background) or -1"),
        (["--point", "1", "2", "0.5"], "the label must be"),
        (["--point", "1", "2", "-2"], "the label must be"),
        (["--box", "9", "2", "3", "4"], "--box 9 2 3 4: need x1 >= x0 and y1 >= y0"),
        (["--box", "1", "9", "3", "4"], "need x1 >= x0 and y1 >= y0"),
        (["--box", "1", "2", "3"], "--box: expected 4 arguments"),
        (["--point", "1", "2"], "--point: expected 3 arguments"),
        (["--box", "a", "2", "3", "4"], "invalid float value: 'a'"),
        ([], "give at least one --box or --point"),
    ],
)
def test_bad_prompt_flags(corpus: Path, flags: list, text: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["predict", "--checkpoint", str(corpus / "missing.pth"), "--image", str(corpus / "good.png"), *flags]
    _refused(samhq_main, [*argv, "--output", str(corpus / "out_p")], capsys, text)


PROMPT_LINES = [
    ("not json", "not valid JSON"),
    ('{"image": "good.png", "boxes": [[1, 2, NaN, 4]]}', "every number must be finite"),
    ('{"image": "good.png", "boxes": [[1, 2, 1e999, 4]]}', "every number must be finite"),
    ('{"image": "good.png", "points": [[1, 2, Infinity]]}', "every number must be finite"),
    ('{"image": "good.png", "points": [[1, 2, 7]]}', "the label must be 1 (foreground)"),
    ('{"image": "good.png", "points": [[1, 2, true]]}', "expected a list of [x, y, label] rows"),
    ('{"image": "good.png", "boxes": [[9, 2, 3, 4]]}', "need x1 >= x0 and y1 >= y0"),
    ('{"image": "good.png", "boxes": [[1, 2, 3]]}', "expected a list of [x0, y0, x1, y1] rows"),
    ('{"image": "good.png", "points": [[1, 2]]}', "expected a list of [x, y, label] rows"),
    ('{"image": "good.png", "boxes": "1 2 3 4"}', "expected a list of [x0, y0, x1, y1] rows"),
    ('{"image": "good.png", "box": [[1, 2, 3, 4]]}', "unknown key(s) box"),
    ('{"image": "good.png"}', "give at least one box or point"),
    ("[1, 2]", "expected"),
]


@pytest.mark.parametrize("line,text", PROMPT_LINES)
def test_bad_prompts_file_lines(corpus: Path, line: str, text: str, capsys: pytest.CaptureFixture) -> None:
    path = corpus / "bad.jsonl"
    path.write_text(f"\n{line}\n")  # line 2: a blank line first
    ck = ["--checkpoint", str(corpus / "empty.pth")]
    out = ["--output", str(corpus / "out_f")]
    where = f"{path}:2"
    _refused(samhq_main, ["predict", *ck, "--images", str(corpus), "--prompts", str(path), *out], capsys, where, text)
    _refused(parity_main, [*ck, "--image", str(corpus / "good.png"), "--prompts", str(path)], capsys, where, text)


def test_bad_prompts_files(corpus: Path, capsys: pytest.CaptureFixture) -> None:
    (corpus / "empty.jsonl").write_text("\n\n")
    (corpus / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81")
    (corpus / "dir.jsonl").mkdir(exist_ok=True)
    ck = ["--checkpoint", str(corpus / "empty.pth")]
    for name, text in [
        ("empty.jsonl", "no prompts"),
        ("binary.jsonl", "not a JSON-lines text file"),
        ("dir.jsonl", "dir.jsonl"),
        ("missing.jsonl", "missing.jsonl"),
    ]:
        argv = ["predict", *ck, "--images", str(corpus), "--prompts", str(corpus / name), "--output", str(corpus / "o")]
        _refused(samhq_main, argv, capsys, text)


# ---- bad flags, every command ---------------------------------------------------------------------
EVERYTHING_FLAGS = [
    (["--points-per-side", "0"], "argument --points-per-side: '0': need an integer >= 1"),
    (["--points-per-side", "-3"], "need an integer >= 1"),
    (["--points-per-batch", "0"], "argument --points-per-batch"),
    (["--pred-iou-thresh", "1.5"], "argument --pred-iou-thresh: '1.5': need a number >= 0 and <= 1"),
    (["--pred-iou-thresh", "nan"], "argument --pred-iou-thresh"),
    (["--pred-iou-thresh", "-0.1"], "argument --pred-iou-thresh"),
    (["--stability-score-thresh", "2"], "argument --stability-score-thresh"),
    (["--box-nms-thresh", "-1"], "argument --box-nms-thresh"),
    (["--crop-n-layers", "-1"], "argument --crop-n-layers: '-1': need an integer >= 0"),
    (["--min-mask-region-area", "-5"], "argument --min-mask-region-area"),
    (["--format", "jpg"], "argument --format: invalid choice"),
    (["--images", "DIR"], "give exactly one of --image or --images"),
    (["--num-processes", "0"], "argument --num-processes: '0': need an integer >= 1"),
    (["--process-id", "-1"], "argument --process-id"),
    (["--coordinator", "h:1"], "--num-processes and --process-id missing"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "expected HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id 2: need 0 .. 1"),
]


@pytest.mark.parametrize("flags,text", EVERYTHING_FLAGS)
def test_bad_everything_flags(corpus: Path, flags: list, text: str, capsys: pytest.CaptureFixture) -> None:
    flags = [str(corpus) if f == "DIR" else f for f in flags]
    argv = ["everything", "--checkpoint", str(corpus / "empty.pth"), "--image", str(corpus / "good.png"), *flags]
    _refused(samhq_main, [*argv, "--output", str(corpus / "out_e")], capsys, text)


def _other_commands(c: Path) -> list[tuple[Callable, list[str], str]]:
    """``(main, argv, expected text)`` of the other commands' bad flags and impossible combinations."""
    img, ck = str(c / "good.png"), str(c / "empty.pth")
    predict = ["predict", "--checkpoint", ck, "--output", str(c / "o")]
    ev = ["--checkpoint", ck, "--data", str(c / "data"), "--output", str(c / "out_eval")]
    return [
        (samhq_main, [*predict, "--image", img, "--images", str(c), "--prompts", "p"], "exactly one of --image"),
        (samhq_main, [*predict, "--images", str(c)], "--images needs --prompts"),
        (
            samhq_main,
            [*predict, "--image", img, "--box", "1", "2", "3", "4", "--num-processes", "0"],
            "need an integer",
        ),
        (samhq_main, ["demo", "--output", str(c / "d"), "--train-images", "0"], "argument --train-images"),
        (samhq_main, ["demo", "--output", str(c / "d"), "--hq-steps", "-1"], "argument --hq-steps"),
        (samhq_main, ["demo", "--output", str(c / "d"), "--preset", "vit_z"], "argument --preset: invalid choice"),
        (samhq_main, ["demo", "--output", str(c / "d"), "--seed", "-1"], "argument --seed"),
        (eval_main, [*ev, "--batch-size", "0"], "argument --batch-size: '0': need an integer >= 1"),
        (eval_main, [*ev, "--limit", "0"], "argument --limit"),
        (eval_main, [*ev, "--pictures", "-1"], "argument --pictures"),
        (eval_main, [*ev, "--precision", "bogus"], "argument --precision: invalid choice"),
        (eval_main, [*ev, "--dtype", "float16"], "argument --dtype: invalid choice"),
        (eval_main, [*ev, "--datasets", "COIFT"], "--datasets needs --data-root"),
        (eval_main, [*ev, "--data-root", str(c)], "give --data DIR (repeatable) or --data-root ROOT, not both"),
        (eval_main, [*ev, "--data", str(c / "nodata")], "no folder"),
        (eval_main, [*ev[:-1], str(c / "full")], "full: already exists; give --overwrite"),
        (eval_main, [*ev[:-1], str(c / "afile" / "out")], "is not a folder"),
        (eval_main, [*ev, "--num-processes", "2"], "--coordinator and --process-id missing"),
        (eval_main, [*ev[:-1], str(c / "data"), "--overwrite"], "replacing it would delete the input"),
        (eval_main, [*ev[:-1], str(c), "--overwrite"], "replacing it would delete the input"),
        (convert_main, [str(c / "full" / "old.txt"), str(c / "full"), "--overwrite"], "would delete the input"),
        (convert_main, [ck, str(c / "x.bin"), "--to", "official"], "--to official writes a .pth / .pt / .safetensors"),
        (convert_main, [ck, str(c / "x.pth")], "--to ours writes a folder"),
        (convert_main, [ck, str(c / "full")], "full: already exists; give --overwrite"),
        (convert_main, [ck, str(c / "o"), "--to", "onnx"], "argument --to: invalid choice"),
        (parity_main, ["--images", "0"], "argument --images: '0': need an integer >= 1"),
        (parity_main, ["--preset", "vit_z"], "unknown preset 'vit_z'"),
        (parity_main, ["--checkpoint", ck, "--preset", "tiny_b", "--image", img], "not both"),
        (parity_main, ["--image", img], "--image and --prompts need --checkpoint"),
        (parity_main, ["--checkpoint", ck], "--checkpoint needs at least one --image"),
        (parity_main, ["--checkpoint", str(c / "missing.pth"), "--image", img], "no checkpoint at"),
        (parity_main, ["--dtype", "int8"], "argument --dtype: invalid choice"),
        (bench_main, ["--batch", "0"], "argument --batch"),
        (bench_main, ["--repeats", "0"], "argument --repeats"),
        (bench_main, ["--row-budget", "-1"], "--row-budget must be positive"),
        (bench_main, ["--peak-gflops", "0"], "--peak-gflops must be positive"),
        (bench_main, ["--model", "vit_z"], "argument --model"),
        (bench_main, ["--skip", "bogus"], "--skip bogus"),
        (bench_main, ["--image-size", "0x5"], "argument --image-size"),
        (bench_main, ["--train-batch", "2"], "--train-batch and --trainable go with --memory"),
        (bench_main, ["--output", str(c / "afile")], "afile: not a folder"),
    ]


def test_bad_flags_of_every_other_command(corpus: Path, capsys: pytest.CaptureFixture) -> None:
    for main, argv, text in _other_commands(corpus):
        _refused(main, argv, capsys, text)
    assert (corpus / "full" / "old.txt").is_file()  # a refused output is left alone


# ---- python -m entry points: the same guard in a real process ----------------------------------
@pytest.mark.parametrize(
    "module,args,text",
    [
        ("eval.parity", ["--images", "0"], "samhq: error: argument --images: '0'"),
        ("convert", ["CORPUS/weights.npz", "CORPUS/out_m"], "samhq-convert: error: unknown checkpoint format"),
    ],
)
def test_python_m_entry_points_are_guarded(corpus: Path, module: str, args: list, text: str) -> None:
    args = [a.replace("CORPUS", str(corpus)) for a in args]
    env = {**os.environ, "SAMHQ_JAX_CACHE": "0", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in run.stderr, run.stderr


def test_an_image_too_elongated_for_the_model_is_bad_input() -> None:
    """A 1 x 321 image has no row left at a 160-pixel input (the official resize fails as well):
    refused as bad input, where PIL's own ValueError would be an internal error."""
    from samhq_jax.errors import InputError
    from samhq_jax.transforms import preprocess

    assert preprocess(np.zeros((1, 320, 3), np.uint8), 160)[1] == (1, 160)
    with pytest.raises(InputError, match=r"a 321x1 image is too elongated .*\(at most 320:1 fits\)"):
        preprocess(np.zeros((1, 321, 3), np.uint8), 160)
