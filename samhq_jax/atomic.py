"""Outputs written whole or not at all: a temporary sibling, then a rename.

A file or folder is written under a hidden temporary name next to its target (same folder, so the
same file system and an atomic ``rename``) and renamed over the target only when the writing
finished: a killed run leaves the old output (or none) and a hidden ``.NAME.*.tmp`` sibling, never
half a model; a rerun replaces the output whole, with no stale files beside the new ones.

    check_target(Path("out"), overwrite=False, what="--output")   # at start: refuse an existing output
    with atomic_dir(Path("out"), overwrite=False, what="--output") as tmp:
        (tmp / "summary.json").write_text(...)                     # tmp: the folder to fill
    with atomic_file(Path("model.pth"), overwrite=True) as tmp:
        torch.save(state, tmp)                                      # tmp keeps the target's suffix

An existing target is refused (:class:`~samhq_jax.errors.InputError`, naming ``what`` and
``--overwrite``) unless ``overwrite``; an empty folder counts as absent. :func:`check_apart` refuses
an output whose replacement would delete an input (``--output`` = ``--data``, or a folder above it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from samhq_jax.errors import InputError

TMP_SUFFIX = ".tmp"  # a temporary sibling: .NAME.<random>.tmp[.suffix]
OLD_SUFFIX = ".old"  # a replaced output, while the new one is renamed in: .NAME.<random>.old


def _sibling(target: Path, kind: str, suffix: str = "") -> Path:
    """A fresh hidden name next to ``target``: ``.NAME.<random><kind><suffix>``."""
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}{kind}{suffix}"


def _occupied(target: Path) -> bool:
    """Whether ``target`` holds something (an empty folder does not count)."""
    if target.is_dir() and not target.is_symlink():
        return any(target.iterdir())
    return os.path.lexists(target)


def check_target(target: str | os.PathLike, overwrite: bool, what: str = "output") -> None:
    """Refuse, before any work, an output ``target`` that exists (unless ``overwrite``) or whose
    folder cannot exist (a file in the way); ``what`` names it in the one-line ``InputError``."""
    target = Path(target)
    if _occupied(target) and not overwrite:
        raise InputError(f"{what} {target}: already exists; give --overwrite to replace it")
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{what} {target}: {parent} is not a folder")
            break


def check_apart(
    target: str | os.PathLike, inputs: list[str | os.PathLike], what: str = "output", allow_same: bool = False
) -> None:
    """Refuse an output ``target`` whose replacement would delete one of the ``inputs`` (the same
    path, unless ``allow_same``: the input is read whole before the output is renamed over it; or a
    folder holding it): an ``InputError`` naming both."""
    out = Path(target).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if out in source.parents or (out == source and not allow_same):
            raise InputError(f"{what} {target}: replacing it would delete the input {given}; choose another path")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _install(tmp: Path, target: Path, overwrite: bool, what: str) -> None:
    """Rename the finished ``tmp`` to ``target``; an existing target (``overwrite`` only) is moved
    aside first and deleted after, so ``target`` is always either the old or the new output."""
    if not _occupied(target):
        if target.is_dir() and not target.is_symlink():
            target.rmdir()  # an empty folder: the rename below puts the new output in its place
        os.replace(tmp, target)
        return
    if not overwrite:
        raise InputError(f"{what} {target}: already exists; give --overwrite to replace it")
    aside = _sibling(target, OLD_SUFFIX)
    os.replace(target, aside)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)


@contextlib.contextmanager
def _replacing(target: Path, overwrite: bool, what: str, folder: bool) -> Iterator[Path]:
    """The common body of :func:`atomic_dir` / :func:`atomic_file`: check ``target``, yield its
    temporary sibling (an empty folder, or a file path with ``target``'s suffix), then install it
    over ``target``, or delete it if the block raised."""
    check_target(target, overwrite, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, TMP_SUFFIX) if folder else _sibling(target, TMP_SUFFIX, target.suffix)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        _install(tmp, target, overwrite, what)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield an empty temporary folder next to ``target`` (its parents created); when the block ends
    without an exception the folder replaces ``target`` whole, else it is deleted. An existing
    ``target`` is an ``InputError`` naming ``what`` unless ``overwrite`` (then it is replaced whole)."""
    with _replacing(Path(target), overwrite, what, folder=True) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a temporary file path next to ``target`` with the same suffix (not created: the block
    writes it); when the block ends without an exception it replaces ``target``, else it is deleted.
    An existing ``target`` is an ``InputError`` naming ``what`` unless ``overwrite``."""
    with _replacing(Path(target), overwrite, what, folder=False) as tmp:
        yield tmp
