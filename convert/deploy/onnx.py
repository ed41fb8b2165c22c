"""``encoder.onnx`` and ``decoder.onnx`` through jax2onnx (imported only here, when exporting).

* ``encoder.onnx``: :func:`~convert.deploy.signature.encoder_function` (input ``image``, outputs
  ``image_embeddings``, ``interm_embeddings``);
* ``decoder.onnx``: the official ``SamOnnxModel`` signature and semantics,
  :func:`~convert.deploy.signature.decoder_function` converted by jax2onnx (the point count a
  dynamic axis, the interm layer count too), then the official upscaling to ``orig_im_size``
  appended (:mod:`convert.deploy.onnx_postprocess`, the one step no JAX program can express).

Weights are constants in the graphs (initializers). jax2onnx's standard file mode writes every
encoder weight over 1 MB to ``encoder.onnx.data`` beside ``encoder.onnx`` (vit_b: 2 MB + 340 MB;
not for the test-size models), which onnxruntime reads from the same folder: keep the two together.
That also keeps vit_h's encoder (2.5 GB of weights) under protobuf's 2 GB limit. The decoder is one
file (vit_b: 23 MB).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from convert.deploy.signature import (
    DECODER_OUTPUTS,
    ENCODER_OUTPUTS,
    DecoderOptions,
    TensorSpec,
    decoder_function,
    decoder_inputs,
    encoder_function,
    encoder_inputs,
)
from samhq_jax.config import ModelConfig
from samhq_jax.errors import InputError

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
# 17: the official export script's default (and what older runtimes read); 23: jax2onnx's newest.
MIN_OPSET, MAX_OPSET = 17, 23
DEFAULT_OPSET = 17


def check_opset(opset: int) -> int:
    """``opset`` if this exporter writes it (:data:`MIN_OPSET` .. :data:`MAX_OPSET`), else an ``InputError``."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset {opset}: the ONNX export writes opsets {MIN_OPSET} .. {MAX_OPSET}")
    return opset


def converter() -> Callable[..., Any]:
    """jax2onnx's ``to_onnx``; an ``ImportError`` naming the extra to install when it is missing."""
    try:
        from jax2onnx import to_onnx
    except ImportError as err:
        raise ImportError(f"the ONNX export needs jax2onnx ({err}): pip install 'samhq-jax[export]'") from err
    return to_onnx


QUIET_LOGGERS = ("onnx_ir", "jax2onnx")  # their per-tensor serialisation warnings are not the user's concern


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """The converter's loggers at ERROR inside (jax2onnx 0.17 warns once per untyped shape constant)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def input_specs(specs: list[TensorSpec]) -> list[tuple[int | str, ...]]:
    """jax2onnx's input shapes (a string is a dynamic axis); every input here is float32."""
    assert all(s.dtype == "float32" for s in specs), specs
    return [s.shape for s in specs]


def drop_intermediate_shapes(model: Any) -> Any:
    """Remove the intermediate ``value_info`` of a jax2onnx graph (optional shape hints): with a
    symbolic point count they hold sums such as ``"num_points + 6"`` as dimension names, and
    onnxruntime 1.32's graph optimiser then reshapes the decoder's tokens to a wrong fixed size
    (a failed run for one point); without them the graph runs for every count."""
    del model.graph.value_info[:]
    return model


def export_encoder(config: ModelConfig, params: Any, path: Path, opset: int) -> Path:
    """Write ``encoder.onnx`` (and ``encoder.onnx.data`` with its weights over 1 MB) to ``path``."""
    to_onnx = converter()
    specs = encoder_inputs(config)
    with quiet_converter():
        to_onnx(
            functools.partial(encoder_function(config), params),
            input_specs(specs),
            model_name="samhq_encoder",
            opset=opset,
            input_names=[s.name for s in specs],
            output_names=list(ENCODER_OUTPUTS),
            return_mode="file",
            output_path=str(path),
        )
    return path


def decoder_model(config: ModelConfig, params: Any, options: DecoderOptions, opset: int) -> Any:
    """The decoder as an ``onnx.ModelProto`` with the official inputs and outputs."""
    from convert.deploy.onnx_postprocess import add_mask_postprocessing

    to_onnx = converter()
    specs = decoder_inputs(config)
    with quiet_converter():
        model = to_onnx(
            functools.partial(decoder_function(config, options), params),
            input_specs(specs),
            model_name="samhq_decoder",
            opset=opset,
            input_names=[s.name for s in specs],
            output_names=list(DECODER_OUTPUTS),
        )
    return add_mask_postprocessing(drop_intermediate_shapes(model), config.img_size)


def export_decoder(config: ModelConfig, params: Any, options: DecoderOptions, path: Path, opset: int) -> Path:
    """Write ``decoder.onnx`` to ``path``, checked by ``onnx.checker``."""
    import onnx

    model = decoder_model(config, params, options, opset)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return path


def export_onnx(
    config: ModelConfig,
    params: Any,
    folder: Path,
    options: DecoderOptions,
    opset: int = DEFAULT_OPSET,
    step: Callable[[str], None] = lambda _: None,
) -> list[Path]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` into ``folder``; ``step(what)`` is called before
    each part (a progress hook). Returns the files written."""
    check_opset(opset)
    params = jax.tree.map(jax.numpy.asarray, params)
    step(ENCODER_FILE)
    export_encoder(config, params, folder / ENCODER_FILE, opset)
    step(DECODER_FILE)
    export_decoder(config, params, options, folder / DECODER_FILE, opset)
    return sorted(p for p in folder.iterdir() if p.is_file())
