"""Every program the library runs lowers for CUDA and TPU (issue 18, item 5), from a CPU-only machine.

Each program is exported with ``jax.export.export(jitted, platforms=("cuda", "tpu"))`` on
``jax.ShapeDtypeStruct`` arguments (parameters from ``jax.eval_shape`` of the model init: nothing
real-size is allocated, nothing is compiled), and its StableHLO is checked to be portable:

* the module is for exactly ``("cuda", "tpu")`` and has its portable StableHLO bytecode
  (``Exported.mlir_module_serialized``, what ``Exported.serialize`` wraps; that wrapper needs the
  ``flatbuffers`` package, not a dependency here);
* no ``stablehlo.custom_call`` other than :data:`ALLOWED_CUSTOM_CALLS` (no CPU-only kernels such as
  LAPACK / ducc FFT, no cuDNN / Pallas kernels that TPU lacks);
* no host callback (``jax.pure_callback`` / ``io_callback`` / ``debug.callback`` lower to
  ``xla_python_cpu_callback``, ``xla_ffi_python_cpu_callback`` ...: the word ``callback`` is banned
  from the ops; ``jax.export`` already refuses to lower one for two platforms, this is a second guard);
* no float64 tensor type anywhere (TPUs have no native f64; with the default ``jax_enable_x64=False``
  none can appear, hence ``test_no_float64_under_x64`` below).

The programs, at real sizes (vit_b / vit_l / vit_h, 1024 x 1024 input):

1. the image encoder as :func:`samhq_jax.predictor.compiled_model` jits it (``embed_image`` with the
   HQ features), vit_b / l / h in float32 and bfloat16 compute; attention ``"auto"`` resolves by the
   default backend at trace time, which is CPU here (the ``"blocked"`` path), so the path a GPU / TPU
   takes, ``"extended"``, is exported too (vit_b, bfloat16, ``precision="default"``). Not covered:
   ``"cudnn"``, auto's pick on a CUDA GPU, which cannot be traced without one (the encoder refuses);
2. the prompt decoder ``compiled_model``'s ``decode``: boxes, points (multimask, all_multimask),
   points + box + mask input (HQ token only), plain SAM, each with a *symbolic* prompt count ``p``
   (one artifact for every bucket) and once with a fixed count; float32 and bfloat16;
3. the automatic mask generator's device programs (:mod:`samhq_jax.amg_ops`): the three filter
   programs ``filter_batch`` runs (column upscaling, row upscaling + thresholds, stability / boxes /
   crop-edge / bit packing), the greedy NMS loop (fixed and symbolic box count), ``batched_mask_to_box``,
   and the predictor's ``full_masks`` upscaling;
4. the evaluation step :mod:`eval.protocol` runs per batch (encoder + three decodes), with the SAM
   encoder shared and separate;
5. the whole train step of :mod:`train.step` with the Adam update, jitted by ``jit_train_step``:
   HQ parameters trainable with a float32 and a bfloat16 encoder, and everything trainable (the
   backward pass through the encoder), on this process's one-device mesh and on an 8-device abstract
   data-parallel mesh (the batch sharded on ``"data"``).

The amg / eval device programs are private names (``_filter_codes``, ``_forward`` ...): they are what
the library compiles, so they are what must lower; tests are outside the layering rules.

``test_the_checks_catch_what_they_ban`` shows the checks fail on a banned program of each kind.
``test_no_float64_under_x64`` repeats a few exports with ``jax_enable_x64`` on, where a stray Python
float or NumPy float64 would become an f64 tensor (it found one: a Python ``0.0`` in the point
embedding, now a float32 zero). The train step is left out of that one: see ``x64_programs``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from eval.protocol import _forward
from samhq_jax.amg_ops import _filter_codes, _greedy_nms, _threshold_codes, _upscale_columns, batched_mask_to_box
from samhq_jax.config import ModelConfig
from samhq_jax.predictor import compiled_model, full_masks
from samhq_jax.sam_hq import SamHQ, param_shapes
from samhq_jax.transforms import Taps
from train.bench import synthetic_batch
from train.step import DATA_AXIS, init_state, jit_train_step, make_mesh, make_optimizer, make_train_step
from train.trainable import partition, touches_encoder

PLATFORMS = ("cuda", "tpu")
# ``shape_assertion`` is jax.export's own check of symbolic dimensions (e.g. ``p >= 1``), on
# jax.export's list of custom calls guaranteed stable and resolved when the artifact is loaded
# (shape refinement); it only appears in the exports with a symbolic dimension. Nothing else is
# allowed: the fixed-shape exports must have no custom call at all.
ALLOWED_CUSTOM_CALLS = frozenset({"shape_assertion"})
CUSTOM_CALL = re.compile(r"stablehlo\.custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]+)\"")
FLOAT64 = re.compile(r"(?<![\w.])f64\b|\dxf64\b")  # tensor<f64>, tensor<4x4xf64>, complex<f64>, `: f64`

ARG_LOC = re.compile(r'loc\("[^"]*"\)')  # argument names

F32, BF16 = jnp.float32, jnp.bfloat16
SDS = jax.ShapeDtypeStruct


def portable(exported: export.Exported) -> str:
    """Assert the export is for CUDA and TPU and portable (see the module docstring); its StableHLO ops."""
    assert exported.platforms == PLATFORMS
    # The ops alone: ``#loc`` lines name Python frames (a test named *callback* must not trip this).
    lines = (line for line in exported.mlir_module().splitlines() if not line.startswith("#loc"))
    text = ARG_LOC.sub("loc()", "\n".join(lines))
    targets = {a or b for a, b in CUSTOM_CALL.findall(text)}
    assert targets <= ALLOWED_CUSTOM_CALLS, (
        f"custom calls outside the allow-list: {sorted(targets - ALLOWED_CUSTOM_CALLS)}"
    )
    assert "callback" not in text, "a host callback inside jit"
    f64 = FLOAT64.search(text)
    assert f64 is None, f"float64 in the module: ...{text[max(0, f64.start() - 120) : f64.end() + 40]}..."
    assert exported.mlir_module_serialized
    return text


def lower(fn: Callable, *args: Any, **kwargs: Any) -> export.Exported:
    return export.export(fn, platforms=PLATFORMS)(*args, **kwargs)


def sds(tree: Any) -> Any:
    return jax.tree.map(lambda x: SDS(np.shape(x), x.dtype), tree)


@functools.cache
def params(preset: str) -> dict:
    """``{"params": ...}`` of ShapeDtypeStructs for a preset (float32 parameters, as checkpoints)."""
    return {"params": param_shapes(ModelConfig.preset(preset))}


def image(preset: str, batch: int = 1) -> SDS:
    s = ModelConfig.preset(preset).img_size
    return SDS((batch, s, s, 3), F32)


@functools.cache
def embeddings(preset: str, dtype: Any) -> Any:
    """The ``ImageEmbeddings`` (as ShapeDtypeStructs) the predictor's encoder hands to ``decode``."""
    _, embed, _ = compiled_model(ModelConfig.preset(preset), dtype)
    return jax.eval_shape(embed, params(preset), image(preset))


# ---- 1. image encoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("preset", ["vit_b", "vit_l", "vit_h"])
def test_encoder_lowers(preset: str, dtype: Any) -> None:
    config = ModelConfig.preset(preset)
    _, embed, _ = compiled_model(config, dtype)
    exported = lower(embed, params(preset), image(preset))
    portable(exported)
    g = config.embedding_size
    assert exported.out_avals[0].shape[:3] == (1, g, g)
    assert exported.out_avals[0].dtype == dtype


def test_encoder_extended_attention_lowers() -> None:
    """The attention path ``"auto"`` picks on a TPU (and a GPU without cuDNN's fused attention)."""
    model = SamHQ(ModelConfig.preset("vit_b"), dtype=BF16, attention="extended")

    @jax.jit
    def embed(variables: dict, images: jax.Array) -> Any:
        with jax.default_matmul_precision("default"):
            return model.apply(variables, images, hq_features=True, method=SamHQ.embed_image)

    portable(lower(embed, params("vit_b"), image("vit_b")))


# ---- 2. decoder ---------------------------------------------------------------------------------------
DECODE_CASES = {  # name -> (prompts given, static flags)
    "boxes": (("boxes",), dict(multimask_output=False, hq_token_only=False, sam_only=False)),
    "points-multimask": (("points",), dict(multimask_output=True, hq_token_only=False, sam_only=False)),
    "points-all-multimask": (("points",), dict(multimask_output=True, hq_token_only=False, all_multimask=True)),
    "all-prompts-hq-only": (("points", "boxes", "masks"), dict(multimask_output=False, hq_token_only=True)),
    "sam-only": (("boxes",), dict(multimask_output=True, hq_token_only=False, sam_only=True)),
}


def prompts(config: ModelConfig, given: tuple[str, ...], count: Any) -> dict[str, SDS | None]:
    low = config.low_res_mask_size
    return {
        "points": SDS((1, count, 2, 2), F32) if "points" in given else None,
        "labels": SDS((1, count, 2), jnp.int32) if "points" in given else None,
        "boxes": SDS((1, count, 4), F32) if "boxes" in given else None,
        "mask_inputs": SDS((1, count, low, low), F32) if "masks" in given else None,
    }


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decoder_lowers_for_any_prompt_count(case: str, dtype: Any) -> None:
    config = ModelConfig.preset("vit_b")
    _, _, decode = compiled_model(config, dtype)
    given, flags = DECODE_CASES[case]
    (p,) = export.symbolic_shape("p")
    exported = lower(decode, params("vit_b"), embeddings("vit_b", dtype), **prompts(config, given, p), **flags)
    portable(exported)
    low_res, iou = exported.out_avals
    assert low_res.shape[:2] == (1, p) and low_res.dtype == F32 and iou.dtype == F32


def test_decoder_fixed_count_has_no_custom_call() -> None:
    """A bucketed (fixed) prompt count, as the predictor compiles it: not even ``shape_assertion``."""
    config = ModelConfig.preset("vit_b")
    _, _, decode = compiled_model(config, F32)
    given, flags = DECODE_CASES["all-prompts-hq-only"]
    text = portable(lower(decode, params("vit_b"), embeddings("vit_b", F32), **prompts(config, given, 8), **flags))
    assert "stablehlo.custom_call" not in text


# ---- 3. automatic mask generator -------------------------------------------------------------------
# The whole-image crop of a 1536 x 2048 photo: 64 points per batch x 3 masks = 192, bucketed to 256.
AMG_MASKS, AMG_IMAGE = 256, (1536, 2048)


def taps(n: int) -> Taps:
    """One axis of the upscaling as data (:class:`~samhq_jax.transforms.Taps`), ``n`` outputs."""
    return Taps(SDS((2, n), jnp.int32), SDS((2, n), F32))


def amg_programs() -> dict[str, tuple[Callable, tuple, dict]]:
    p, (h, w), low = AMG_MASKS, AMG_IMAGE, ModelConfig.preset("vit_b").low_res_mask_size
    (n,) = export.symbolic_shape("n")
    i32 = jnp.int32
    return {
        "upscale-columns": (_upscale_columns, (SDS((p, low, low), F32), taps(w)), dict(long_side=1024)),
        "threshold-codes": (
            _threshold_codes,
            (SDS((p, 1024, w), F32), SDS((3,), F32), taps(h), SDS((2,), i32)),
            {},
        ),
        "filter-codes": (
            _filter_codes,
            (
                SDS((p, h, w), jnp.uint8),
                SDS((p,), F32),
                SDS((p,), jnp.bool_),
                SDS((4,), i32),
                SDS((4,), i32),
                SDS((3,), F32),
            ),
            {},
        ),
        "nms": (_greedy_nms, (SDS((p, 4), F32), SDS((p,), jnp.bool_), SDS((), F32)), {}),
        "nms-any-count": (_greedy_nms, (SDS((n, 4), F32), SDS((n,), jnp.bool_), SDS((), F32)), {}),
        "mask-to-box": (jax.jit(batched_mask_to_box), (SDS((p, h, w), jnp.bool_),), {}),
        "full-masks": (
            full_masks,
            (SDS((4, 3, low, low), F32), taps(h), taps(w)),
            dict(long_side=1024, return_logits=False),
        ),
    }


@pytest.mark.parametrize("program", list(amg_programs()))
def test_mask_generator_programs_lower(program: str) -> None:
    fn, args, kwargs = amg_programs()[program]
    text = portable(lower(fn, *args, **kwargs))
    if program == "nms":
        assert "stablehlo.while" in text  # the greedy loop stays one device loop


# ---- 4. evaluation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("separate_sam_encoder", [False, True], ids=["shared-encoder", "separate-encoder"])
def test_evaluation_step_lowers(separate_sam_encoder: bool) -> None:
    config = ModelConfig.preset("vit_b")
    forward = _forward(config, config, separate_sam_encoder)
    p = params("vit_b")["params"]
    exported = lower(forward, p, p, image("vit_b", 2), SDS((2, 1, 4), F32))
    portable(exported)
    assert exported.out_avals[0].shape == (2, 3, config.low_res_mask_size, config.low_res_mask_size)


# ---- 5. train step ------------------------------------------------------------------------------------
@functools.cache
def host_batch_layout() -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-example shape and dtype of every batch field, as :mod:`train.data` yields them."""
    return {k: (v.shape[1:], v.dtype) for k, v in synthetic_batch(ModelConfig.preset("vit_b"), 1, 0).items()}


@pytest.mark.parametrize(
    ("trainable", "encoder_dtype", "devices"),
    [("hq", F32, 1), ("hq", BF16, 1), ("all", F32, 1), ("hq", BF16, 8)],
    ids=["hq-fp32-encoder", "hq-bf16-encoder", "all-trainable", "hq-bf16-encoder-8-devices"],
)
def test_train_step_lowers(trainable: str, encoder_dtype: Any, devices: int) -> None:
    """The jitted step, Adam update included, on a real one-device mesh or an abstract data mesh."""
    config = ModelConfig.preset("vit_b")
    train, frozen = partition(params("vit_b")["params"], trainable)
    tx = make_optimizer(1e-4, drop_step=10_000)
    state = jax.eval_shape(lambda t: init_state(t, tx), train)
    if devices == 1:
        mesh = make_mesh()
        assert mesh.size == 1
    else:
        mesh = jax.sharding.AbstractMesh((devices,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    batch = {k: SDS((2 * devices, *shape), dtype) for k, (shape, dtype) in host_batch_layout().items()}
    step = make_train_step(config, tx, seed=0, encoder_dtype=encoder_dtype, train_encoder=touches_encoder(train))
    exported = lower(jit_train_step(step, mesh), state, frozen, batch)
    text = portable(exported)
    assert exported.nr_devices == devices
    new_state, metrics = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
    assert set(metrics) == {"loss", "loss_mask", "loss_dice"}
    if devices > 1:
        assert '[{"data"}' in text  # the batch is sharded on the data axis, not replicated


# ---- float64 with jax_enable_x64 -------------------------------------------------------------------------
def x64_programs() -> dict[str, Callable[[], export.Exported]]:
    config = ModelConfig.preset("vit_b")

    def decode(case: str) -> export.Exported:
        _, _, fn = compiled_model(config, F32)
        given, flags = DECODE_CASES[case]
        return lower(fn, params("vit_b"), embeddings("vit_b", F32), **prompts(config, given, 4), **flags)

    def amg(name: str) -> export.Exported:
        fn, args, kwargs = amg_programs()[name]
        return lower(fn, *args, **kwargs)

    def evaluation() -> export.Exported:
        p = params("vit_b")["params"]
        return lower(_forward(config, config, False), p, p, image("vit_b", 2), SDS((2, 1, 4), F32))

    return {
        "encoder": lambda: lower(compiled_model(config, F32)[1], params("vit_b"), image("vit_b")),
        "decode-boxes": lambda: decode("boxes"),
        "decode-points": lambda: decode("points-multimask"),
        **{f"amg-{name}": functools.partial(amg, name) for name in amg_programs()},
        "evaluation": evaluation,
        # No train step here: under x64, optax keeps Adam's and the schedule's Python-float
        # hyper-parameters (b1, b2, the learning rate and its drop) as f64 scalars. Without x64 (the
        # default, and every export above) the step has no f64.
    }


@pytest.mark.parametrize("program", list(x64_programs()))
def test_no_float64_under_x64(program: str) -> None:
    with jax.enable_x64(True):
        portable(x64_programs()[program]())


# ---- the checks themselves ------------------------------------------------------------------------------
def test_the_checks_catch_what_they_ban() -> None:
    """A CUDA-only kernel (``eigh``: cuSOLVER / LAPACK custom calls) and an f64 constant fail
    :func:`portable`; a host callback cannot even be exported for CUDA and TPU."""
    x = SDS((4, 4), F32)
    with pytest.raises(AssertionError, match="custom calls outside the allow-list"):
        portable(lower(jax.jit(lambda a: jnp.linalg.eigh(a)[0]), x))
    with jax.enable_x64(True), pytest.raises(AssertionError, match="float64"):
        portable(lower(jax.jit(lambda a: a * np.float64(2.0)), x))
    callback = jax.jit(lambda a: jax.pure_callback(np.asarray, SDS((4, 4), F32), a))
    with pytest.raises(NotImplementedError, match="callback"):
        lower(callback, x)
