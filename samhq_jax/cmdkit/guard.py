"""The top-level guard of every command: one line ``PROG: error: message`` on stderr and an exit
status (2 bad input, 1 our own failure, 130 interrupted), never a traceback, unless
``SAMHQ_DEBUG=1``; and the commands' persistent compilation cache.

Bad input is :class:`~samhq_jax.errors.InputError` (raised by the core, the kit and the features
for a bad file, prompt, flag, checkpoint or config.json), an argparse error, or an ``OSError`` about
a path the user gave (missing, a folder, not a folder, no permission, already there). Every other
exception is ours: exit 1, "internal error", and the ``SAMHQ_DEBUG=1`` hint, except the failures of
the machine (XLA runtime errors such as out of device memory, ``MemoryError``) and a missing
dependency (``ImportError``), which say what happened instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from samhq_jax.errors import InputError, RunError

DEBUG_ENV = "SAMHQ_DEBUG"  # set (not "0"): exceptions are re-raised, with their traceback
CACHE_ENV = "SAMHQ_JAX_CACHE"  # the commands' compilation cache folder; "0" or "off" disables it
DEFAULT_CACHE = Path.home() / ".cache" / "samhq-jax" / "xla"
CACHE_MIN_COMPILE_SECS = 0.5  # compiles faster than this are not worth a disk entry
EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
MAX_MESSAGE_LINES = 6  # lines of a multi-line message (a list of bad tensors) kept in the one line
_STAGE = "_samhq_stage"  # attribute naming the step an exception escaped from (see doing())


UsageError = InputError  # the kit's name for the one bad-input type (files, prompts, flags): exit status 2
# OSErrors about a path the user named (the file is missing, a folder, ...): bad input, exit 2.
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for a command; returns its folder (None: off).

    A second run of a command with the same model and shapes loads its compiled encoder and
    decoder from disk instead of compiling them again. Folder: ``$SAMHQ_JAX_CACHE``, else
    ``~/.cache/samhq-jax/xla``; ``SAMHQ_JAX_CACHE=0`` (or ``off``) disables it. A folder already
    set for JAX (``JAX_COMPILATION_CACHE_DIR``) is kept.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE)).strip()
    if folder.lower() in ("", "0", "off"):
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECS)
    return folder


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name the step run inside: a runtime failure escaping it is reported as happening ``while
    <what>`` (the innermost step wins)."""
    try:
        yield
    except Exception as err:
        if getattr(err, _STAGE, None) is None:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(err, _STAGE, what)
        raise


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: its lines joined, at most :data:`MAX_MESSAGE_LINES`."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if len(lines) > MAX_MESSAGE_LINES:
        more = len(lines) - MAX_MESSAGE_LINES
        lines = [*lines[:MAX_MESSAGE_LINES], f"... and {more} more line(s) ({DEBUG_ENV}=1 shows them)"]
    text = lines[0]
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


def _is_xla_error(err: BaseException) -> bool:
    """Whether ``err`` is XLA's runtime error (``jax.errors.JaxRuntimeError``, formerly
    ``jaxlib.xla_extension.XlaRuntimeError``); jax is not imported for the question."""
    errors = getattr(sys.modules.get("jax"), "errors", None)
    kind = getattr(errors, "JaxRuntimeError", None)
    return kind is not None and isinstance(err, kind)


def _failure(err: BaseException) -> tuple[int, str]:
    """Exit status and one-line message (after ``PROG: ``) for an exception escaping a command."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(err, (InputError, *PATH_ERRORS)):  # bad flags, files, prompts, checkpoints, config.json
        return EXIT_USAGE, f"error: {one_line(err)}"
    stage = getattr(err, _STAGE, None)
    during = f" while {stage}" if stage else ""
    if _is_xla_error(err):
        first = one_line(err).split("; ")[0]
        oom = "RESOURCE_EXHAUSTED" in first or "out of memory" in first.lower()
        hint = " (out of device memory: use fewer or smaller images, a smaller --batch-size or model)" if oom else ""
        return EXIT_RUNTIME, f"error: XLA runtime error{during}: {first}{hint}"
    if isinstance(err, MemoryError):
        return EXIT_RUNTIME, f"error: out of host memory{during}"
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return EXIT_RUNTIME, f"error: out of disk space{during}: {one_line(err)}"
    if isinstance(err, ImportError):
        return EXIT_RUNTIME, f"error: missing dependency{during}: {one_line(err)}"
    if isinstance(err, RunError):  # e.g. the training loss became NaN
        return EXIT_RUNTIME, f"error: {stage} failed: {one_line(err)}" if stage else f"error: {one_line(err)}"
    return (
        EXIT_RUNTIME,
        f"error: internal error{during}: {type(err).__name__}: {one_line(err)} "
        f"(a bug in samhq-jax; {DEBUG_ENV}=1 shows the traceback)",
    )


def run_guarded(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` and return its exit status; the top-level guard of every command.

    An exception escaping ``body`` is printed as one line ``PROG: error: message`` on stderr:
    :class:`~samhq_jax.errors.InputError` and the ``OSError`` s of :data:`PATH_ERRORS` (bad input:
    flags, files, prompts, checkpoints, config.json) exit 2; XLA runtime errors
    (``jax.errors.JaxRuntimeError``: out of memory, ...), ``MemoryError``, a full disk,
    ``ImportError`` and :class:`~samhq_jax.errors.RunError` (a NaN loss) exit 1 saying so; anything
    else (a plain ``ValueError``, ``KeyError``, ``RuntimeError``...) is an internal error, exit 1
    with the ``SAMHQ_DEBUG=1`` hint; each names the step (:func:`doing`) that failed.
    ``KeyboardInterrupt`` is ``PROG: interrupted``, exit 130. ``SystemExit`` (argparse, ``--help``)
    passes through. With
    ``SAMHQ_DEBUG`` set (not ``0``) the exception is re-raised, traceback and all. Compiled
    functions persist on disk between runs (:func:`enable_compilation_cache`).
    """
    try:
        enable_compilation_cache()
        return body()
    except (Exception, KeyboardInterrupt) as err:
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        code, message = _failure(err)
        print(f"{prog}: {message}", file=sys.stderr)
        return code
