"""One precision and dtype policy (issue 18, item 1): the lowered predictor encoder and decoder, the
evaluation step and the train step carry the requested precision on every dot_general and
convolution (and compute in the requested dtype); ``samhq-eval`` / ``samhq-train`` take
``--precision`` / ``--dtype``, reject bad values with one line and exit 2, and record them.

Everything lowers on ``jax.ShapeDtypeStruct`` arguments (tiny presets): nothing is compiled except
the one short CLI runs. JAX 0.10 prints ``precision = [HIGHEST, HIGHEST]`` on a dot_general and
``precision_config = [#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]`` on a
convolution; under ``"default"`` both say ``DEFAULT`` (JAX writes it even when nothing is set).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval.cli import main as eval_main
from eval.protocol import ImageRecord, compiled_forward
from samhq_jax import SamHQModel, SamHQPredictor, save_checkpoint
from samhq_jax.config import ModelConfig
from samhq_jax.precision import (
    DTYPES,
    EVALUATION,
    LIBRARY,
    PRECISIONS,
    TRAINING,
    Policy,
    at_precision,
    check_dtype,
    op_precisions,
)
from samhq_jax.predictor import compiled_model
from samhq_jax.sam_hq import param_shapes
from tests.conftest import official_model_and_params
from tests.test_eval_protocol import write_folder
from train.cli import build_parser
from train.cli import main as train_main
from train.loop import TrainConfig, train, validate
from train.step import init_state, jit_train_step, make_mesh, make_optimizer, make_train_step
from train.synthetic import write_synthetic_dataset
from train.trainable import partition

PRESET = "tiny_b"
CONFIG = ModelConfig.preset(PRESET)
SDS = jax.ShapeDtypeStruct
F32 = jnp.float32
LOSSES = ("loss", "loss_mask", "loss_dice")
CASES = [("highest", "float32"), ("default", "float32"), ("highest", "bfloat16"), ("default", "bfloat16")]


def assert_every_op_at(text: str, precision: str, dtype: str | None = None, convolutions: bool = True) -> None:
    """Every dot_general / convolution of ``text`` carries ``precision`` on both operands; with
    ``dtype``, some dot computes in it (the dtype reached the program)."""
    ops = op_precisions(text)
    assert any(op == "dot_general" for op, _ in ops)
    assert any(op == "convolution" for op, _ in ops) == convolutions
    want = (precision.upper(), precision.upper())
    wrong = [(op, p) for op, p in ops if p != want]
    assert not wrong, f"{len(wrong)} of {len(ops)} ops not at {precision}: {wrong[:5]}"
    if dtype is not None:
        short = {"float32": "f32", "bfloat16": "bf16"}[dtype]
        dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
        assert any(f"x{short}>, tensor<" in line for line in dots), dtype


# ---- the policy ----------------------------------------------------------------------------------------
def test_policy_names_defaults_and_one_line_errors() -> None:
    assert PRECISIONS == ("highest", "default") and tuple(DTYPES) == ("float32", "bfloat16")
    assert LIBRARY == EVALUATION == Policy() == Policy("highest", "float32")
    assert TRAINING == Policy("default", "float32")
    assert Policy("default", jnp.bfloat16).dtype == "bfloat16"  # a dtype or its name
    assert Policy(dtype=np.dtype("float32")).compute_dtype == jnp.float32
    assert check_dtype("bfloat16") == jnp.bfloat16
    assert Policy("highest", "bfloat16").as_dict() == {"precision": "highest", "dtype": "bfloat16"}
    for kwargs, text in (
        ({"precision": "fast"}, "precision must be one of highest, default; got 'fast'"),
        ({"precision": "high"}, "precision must be one of highest, default; got 'high'"),
        ({"dtype": "float16"}, "dtype must be one of float32, bfloat16; got 'float16'"),
        ({"dtype": jnp.float16}, "dtype must be one of float32, bfloat16"),
        ({"dtype": "fp8"}, "dtype must be one of float32, bfloat16; got 'fp8'"),
    ):
        with pytest.raises(ValueError, match="must be one of") as err:
            Policy(**kwargs)
        assert text in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="precision must be one of"):
        at_precision(lambda: None, "tf32")


def test_at_precision_overrides_the_global_setting() -> None:
    """The test session runs with ``jax_default_matmul_precision="highest"`` (conftest); a function
    wrapped at ``"default"`` still lowers DEFAULT: the policy does not depend on the caller."""
    x = SDS((4, 4), F32)
    for precision in PRECISIONS:
        text = jax.jit(at_precision(lambda a, b: a @ b, precision)).lower(x, x).as_text()
        assert_every_op_at(text, precision, convolutions=False)


# ---- predictor, SamHQModel, generator -------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "dtype"), CASES)
def test_predictor_encoder_and_decoder(precision: str, dtype: str) -> None:
    params = {"params": param_shapes(CONFIG)}
    _, embed, decode = compiled_model(CONFIG, dtype, precision)
    images = SDS((1, CONFIG.img_size, CONFIG.img_size, 3), F32)
    emb = jax.eval_shape(embed, params, images)
    assert_every_op_at(embed.lower(params, images).as_text(), precision, dtype)
    boxes = SDS((1, 2, 4), F32)
    points, labels = SDS((1, 2, 3, 2), F32), SDS((1, 2, 3), jnp.int32)
    for args, kwargs in (((None, None, boxes), {}), ((points, labels, None), {"multimask_output": True})):
        assert_every_op_at(decode.lower(params, emb, *args, **kwargs).as_text(), precision, dtype)


def test_predictor_model_and_generator_carry_the_policy() -> None:
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(CONFIG))  # placed, never run
    assert SamHQPredictor(CONFIG, params).policy == LIBRARY
    predictor = SamHQPredictor(CONFIG, params, dtype=jnp.bfloat16, precision="default")
    assert predictor.policy == Policy("default", "bfloat16")
    assert predictor.model is compiled_model(CONFIG, "bfloat16", "default")[0]  # one compiled pair per policy
    assert SamHQModel(CONFIG, params).policy == LIBRARY
    assert SamHQModel(CONFIG, params, dtype="bfloat16", precision="default").policy == Policy("default", "bfloat16")
    for cls in (SamHQPredictor, SamHQModel):
        with pytest.raises(ValueError, match="precision must be one of highest, default"):
            cls(CONFIG, params, precision="fastest")
        with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
            cls(CONFIG, params, dtype=jnp.float16)


# ---- evaluation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "dtype"), CASES)
def test_evaluation_step(precision: str, dtype: str) -> None:
    params = param_shapes(CONFIG)
    images, boxes = SDS((2, CONFIG.img_size, CONFIG.img_size, 3), F32), SDS((2, 1, 4), F32)
    for separate in (False, True):  # one encoder for both models, or the SAM row's own
        forward = compiled_forward(CONFIG, CONFIG, separate, Policy(precision, dtype))
        lowered = forward.lower(params, params, images, boxes)
        assert_every_op_at(lowered.as_text(), precision, dtype)
        assert lowered.out_info.dtype == jnp.float32  # scored in float32 whatever the compute dtype


def test_evaluation_default_is_highest() -> None:
    params = param_shapes(CONFIG)
    images, boxes = SDS((1, CONFIG.img_size, CONFIG.img_size, 3), F32), SDS((1, 1, 4), F32)
    with jax.default_matmul_precision("default"):  # the caller's setting does not leak in
        text = compiled_forward(CONFIG).lower(params, params, images, boxes).as_text()
    assert_every_op_at(text, "highest", "float32")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    _, _, config, params = official_model_and_params(PRESET)  # cached for the session, shared with the eval tests
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / PRESET, config, params))


def _exit_code(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


def test_eval_cli_flags_reach_the_summary(tiny_checkpoint, tmp_path, capsys) -> None:
    write_folder(tmp_path / "set", [(90, 120), (110, 80)], seed=5)
    base = ["--checkpoint", tiny_checkpoint, "--data", str(tmp_path / "set"), "--pictures", "0", "--batch-size", "2"]
    out = tmp_path / "out"
    assert eval_main([*base, "--output", str(out), "--precision", "default", "--dtype", "bfloat16"]) == 0
    run = json.loads((out / "summary.json").read_text())["run"]
    assert (run["precision"], run["dtype"]) == ("default", "bfloat16")
    assert "Numerics: matmul precision default, compute dtype bfloat16." in (out / "summary.md").read_text()
    capsys.readouterr()
    for flag, value in (("--precision", "high"), ("--precision", "HIGHEST"), ("--dtype", "float16")):
        code = _exit_code(eval_main, [*base, "--output", str(tmp_path / "x"), flag, value])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"samhq-eval: error: argument {flag}: invalid choice: '{value}'"), err
    assert not (tmp_path / "x").exists()


# ---- training ------------------------------------------------------------------------------------------
def _train_lowering(precision: str, dtype: str, trainable: str) -> str:
    params = param_shapes(CONFIG)
    tx = make_optimizer(1e-3, 10)
    train_part, frozen = partition(params, trainable)
    state = jax.eval_shape(lambda t: init_state(t, tx), train_part)
    step = make_train_step(
        CONFIG, tx, seed=0, encoder_dtype=dtype, precision=precision, train_encoder=trainable == "all"
    )
    b, s, g4 = 2, CONFIG.img_size, CONFIG.low_res_mask_size
    batch = {
        "image": SDS((b, s, s, 3), jnp.uint8),
        "label": SDS((b, s, s), F32),
        "box": SDS((b, 4), F32),
        "points": SDS((b, 10, 2), F32),
        "noise_mask": SDS((b, g4, g4), F32),
        "prompt": SDS((b,), jnp.int32),
        "valid": SDS((b,), jnp.bool_),
    }
    return jit_train_step(step, make_mesh()).lower(state, frozen, batch).as_text()


@pytest.mark.parametrize(("precision", "dtype"), CASES)
def test_train_step(precision: str, dtype: str) -> None:
    """Forward and backward: the frozen encoder (in ``dtype``), the decoder and every gradient dot."""
    assert_every_op_at(_train_lowering(precision, dtype, "hq"), precision, dtype)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_train_step_through_the_encoder(precision: str) -> None:
    """Every parameter trained: the encoder's convolution and its gradients carry the precision too."""
    text = _train_lowering(precision, "float32", "all")
    assert_every_op_at(text, precision)
    assert sum(op == "convolution" for op, _ in op_precisions(text)) >= 3  # patch embed, and its transposes


def test_train_config_and_flags() -> None:
    argv = ["--preset", PRESET, "--data", "d", "--output", "o"]
    args = build_parser().parse_args(argv)
    assert {"precision": args.precision, "dtype": args.dtype} == TRAINING.as_dict()
    args = build_parser().parse_args([*argv, "--precision", "highest", "--encoder-dtype", "bfloat16"])
    assert (args.precision, args.dtype) == ("highest", "bfloat16")  # --encoder-dtype: the old name of --dtype
    assert build_parser().parse_args([*argv, "--dtype", "bfloat16"]).dtype == "bfloat16"
    cfg = TrainConfig(output=Path("o"), preset=PRESET, data=("d",), precision="highest", dtype="bfloat16")
    assert cfg.policy == Policy("highest", "bfloat16") and cfg.validation_policy == Policy("highest", "float32")
    assert TrainConfig(output=Path("o"), preset=PRESET, data=("d",)).policy == TRAINING
    assert TrainConfig(output=Path("o"), preset=PRESET, data=("d",), dtype=jnp.bfloat16).dtype == "bfloat16"
    for kwargs, text in (({"precision": "x"}, "--precision must be one of"), ({"dtype": "int8"}, "--dtype must be")):
        with pytest.raises(ValueError, match=text):
            TrainConfig(output=Path("o"), preset=PRESET, data=("d",), **kwargs)


def test_train_cli_bad_values_exit_2(tmp_path, capsys) -> None:
    base = ["--preset", PRESET, "--data", str(tmp_path), "--output", str(tmp_path / "o"), "--steps", "1"]
    for flag, value, named in (
        ("--precision", "high", "--precision"),
        ("--dtype", "float16", "--dtype/--encoder-dtype"),
        ("--encoder-dtype", "fp8", "--dtype/--encoder-dtype"),
    ):
        assert train_main([*base, flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"samhq-train: error: argument {named}: invalid choice: '{value}'"), err
    assert not (tmp_path / "o").exists()


def test_validation_runs_under_the_given_policy(monkeypatch) -> None:
    seen = []

    def evaluate_pairs(config, params, pairs, batch_size, policy, mesh=None):
        seen.append(policy)
        return [ImageRecord("v", "a", skipped="not run")]

    monkeypatch.setattr("eval.protocol.evaluate_pairs", evaluate_pairs)
    validate(CONFIG, {}, {"v": []}, 2)
    validate(CONFIG, {}, {"v": []}, 2, Policy("highest", "bfloat16"))
    assert seen == [TRAINING, Policy("highest", "bfloat16")]


def test_train_run_records_its_numerics(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """A run at ``highest`` with a bf16 encoder: the step is made with both, the validation is handed
    the run's precision in float32, ``run.json`` records them. (The step and the validation are
    stand-ins here, so nothing compiles: their real programs are checked above.)"""
    handed, made = [], []
    monkeypatch.setattr("train.loop.validate", lambda *args: handed.append(args[4]) or {"val/x": 1.0})

    def make_train_step(config, tx, **kwargs):
        made.append(kwargs)
        zero = jnp.zeros((), jnp.float32)
        return lambda state, frozen, batch: (state.replace(step=state.step + 1), dict.fromkeys(LOSSES, zero))

    monkeypatch.setattr("train.loop.make_train_step", make_train_step)
    data = write_synthetic_dataset(tmp_path / "data", 2, size=CONFIG.img_size, seed=0)
    out = tmp_path / "run"
    cfg = TrainConfig(
        output=out,
        checkpoint=tiny_checkpoint,
        data=(str(data),),
        val_data=(str(data),),
        steps=1,
        batch_size=2,
        val_batch_size=2,
        precision="highest",
        dtype="bfloat16",
    )
    result = train(cfg)
    assert result.steps == 1
    record = json.loads((out / "run.json").read_text())
    assert record["numerics"] == {
        "precision": "highest",
        "dtype": "bfloat16",
        "validation": {"precision": "highest", "dtype": "float32"},
    }
    settings, first = record["recipe"]["settings"], record["starts"][0]
    assert settings["precision"] == "highest" and settings["dtype"] == "bfloat16"
    assert first["settings"]["output"] == str(out) and first["step"] == 0
    assert handed == [Policy("highest", "float32")]
    assert made[0]["precision"] == "highest" and made[0]["encoder_dtype"] == jnp.bfloat16
