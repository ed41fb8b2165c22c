"""The guard's exit statuses (samhq_jax.cmdkit.guard.run_guarded): bad input 2, our own failures 1 with
"internal error" and the SAMHQ_DEBUG=1 hint, the machine's failures 1 saying what happened."""

from __future__ import annotations

import errno

import pytest

from samhq_jax.cmdkit.guard import DEBUG_ENV, UsageError, run_guarded
from samhq_jax.errors import InputError, RunError


def _raise(err: BaseException) -> int:
    raise err


@pytest.mark.parametrize(
    "err,code,text",
    [
        (InputError("--box 1 2 nan 4: every number must be finite"), 2, "prog: error: --box 1 2 nan 4"),
        (FileNotFoundError("no image at x.jpg"), 2, "prog: error: no image at x.jpg"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "p.jsonl"), 2, "Is a directory: 'p.jsonl'"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/x"), 2, "Not a directory"),
        (PermissionError(errno.EACCES, "Permission denied", "out"), 2, "Permission denied: 'out'"),
        (FileExistsError(errno.EEXIST, "File exists", "out"), 2, "File exists"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "prog: error: out of disk space: "),
        (OSError(errno.EIO, "Input/output error"), 1, "prog: error: internal error: OSError: "),
        (ValueError("cannot reshape array"), 1, "prog: error: internal error: ValueError: cannot reshape array"),
        (IndexError("list index out of range"), 1, "internal error: IndexError"),
        (RunError("loss is nan at step 3"), 1, "prog: error: loss is nan at step 3"),
        (ImportError("No module named 'torch'"), 1, "prog: error: missing dependency: No module named 'torch'"),
        (KeyboardInterrupt(), 130, "prog: interrupted"),
    ],
)
def test_exit_status_and_one_line(err: BaseException, code: int, text: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SAMHQ_JAX_CACHE", "0")
    assert run_guarded("prog", lambda: _raise(err)) == code
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and text in stderr, stderr
    assert ("internal error" in stderr) == (f"{DEBUG_ENV}=1" in stderr)  # the hint goes with our own failures only


def test_one_bad_input_type() -> None:
    assert UsageError is InputError and issubclass(InputError, ValueError) and issubclass(RunError, RuntimeError)


def test_debug_reraises(monkeypatch) -> None:
    monkeypatch.setenv("SAMHQ_JAX_CACHE", "0")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="boom"):
        run_guarded("prog", lambda: _raise(ValueError("boom")))
