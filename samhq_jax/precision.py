"""One precision and dtype policy for every entry point: the predictor, ``SamHQModel``, the mask
generator (through its predictor), ``samhq-eval``, the train step and its validation.

Two settings, each named the same everywhere (keyword arguments, ``--precision`` / ``--dtype`` flags,
summaries and run records):

* ``precision``: the matmul / convolution precision of every ``dot_general`` and ``convolution``
  (:func:`jax.default_matmul_precision` around the traced function, so the lowered module carries
  it whatever the caller's global setting). ``"highest"``: full float32, as PyTorch computes
  float32 (parity, the paper's protocol); ``"default"``: the backend's fast path (TF32 on recent
  NVIDIA GPUs, one bf16 pass on TPUs; errors near 1e-3). On CPU both are full float32.
* ``dtype``: the compute dtype, ``"float32"`` or ``"bfloat16"`` (bf16 matmuls; parameters,
  softmax and LayerNorm statistics stay float32).

Defaults (:data:`LIBRARY`, :data:`EVALUATION`, :data:`TRAINING`):

* library (``SamHQPredictor``, ``SamHQModel``, the generator): ``highest`` / ``float32``;
* evaluation (``samhq-eval``): ``highest`` / ``float32``, so the benchmark numbers do not depend
  on the device;
* training (``samhq-train``, the step and its validation): ``default`` / ``float32``, today's
  numerics: the official recipe trains in float32 and PyTorch lets cuDNN use TF32 for its
  convolutions, and the step was never pinned to ``highest``. ``dtype`` is the frozen image
  encoder's compute dtype there (the trained decoder computes in float32).

    policy = Policy(precision="default", dtype="bfloat16")   # checked: a clear one-line ValueError
    fn = at_precision(fn, policy.precision)                    # every dot in fn traced at that precision
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from samhq_jax.errors import InputError

PRECISIONS = ("highest", "default")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line ``ValueError``."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def dtype_name(dtype: Any) -> str:
    """The name (``"float32"`` / ``"bfloat16"``) of a dtype given by name or as a dtype (``jnp.bfloat16``,
    ``np.dtype("float32")``); a one-line ``ValueError`` for anything else."""
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return name


def check_dtype(dtype: Any) -> jnp.dtype:
    """The compute dtype (``jnp.dtype``) for a name or dtype in :data:`DTYPES`; else a one-line ``ValueError``."""
    return jnp.dtype(DTYPES[dtype_name(dtype)])


@dataclasses.dataclass(frozen=True)
class Policy:
    """A checked ``(precision, dtype)`` pair, by name; see the module docstring for their meaning."""

    precision: str = "highest"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        object.__setattr__(self, "dtype", dtype_name(self.dtype))  # jnp.bfloat16 -> "bfloat16"

    @property
    def compute_dtype(self) -> jnp.dtype:
        return check_dtype(self.dtype)

    def wrap(self, fn: Callable) -> Callable:
        """``fn`` traced under this policy's precision (:func:`at_precision`)."""
        return at_precision(fn, self.precision)

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.precision, "dtype": self.dtype}

    def describe(self) -> str:
        return f"matmul precision {self.precision}, compute dtype {self.dtype}"


LIBRARY = Policy("highest", "float32")  # SamHQPredictor, SamHQModel, SamHQAutomaticMaskGenerator
EVALUATION = Policy("highest", "float32")  # samhq-eval: the paper's protocol on any device
TRAINING = Policy("default", "float32")  # samhq-train: today's numerics (the step never pinned precision)


def at_precision(fn: Callable, precision: str) -> Callable:
    """``fn`` run under ``jax.default_matmul_precision(precision)``. Put it *inside* ``jax.jit`` (wrap
    the function before jitting): the setting applies while tracing, so every ``dot_general`` and
    ``convolution`` of the compiled program, gradients included, carries it."""
    check_precision(precision)

    def run(*args: Any, **kwargs: Any) -> Any:
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    run.__name__ = getattr(fn, "__name__", "run")
    run.__doc__ = getattr(fn, "__doc__", None)
    return run


_DOT = re.compile(r"precision = \[(\w+), (\w+)\]")
_CONV = re.compile(r"precision_config = \[#stablehlo<precision (\w+)>, #stablehlo<precision (\w+)>\]")


def op_precisions(stablehlo_text: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every ``dot_general`` and ``convolution`` of a lowered module (``jit(f).lower(...).as_text()``)
    with its operand precisions, e.g. ``("dot_general", ("HIGHEST", "HIGHEST"))``; ``()`` where the
    op carries none. JAX 0.10 prints ``precision = [X, X]`` on dots and
    ``precision_config = [#stablehlo<precision X>, ...]`` on convolutions."""
    out = []
    for line in stablehlo_text.splitlines():
        for op, pattern in (("dot_general", _DOT), ("convolution", _CONV)):
            if f"stablehlo.{op}" in line:
                found = pattern.search(line)
                out.append((op, found.groups() if found else ()))
    return out
