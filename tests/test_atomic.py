"""samhq_jax.atomic: outputs appear whole or not at all, existing ones only with overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from samhq_jax.atomic import atomic_dir, atomic_file, check_apart, check_target
from samhq_jax.errors import InputError


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_dir_appears_only_when_the_block_finishes(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not target.exists() and tmp.parent == target.parent and tmp.name.startswith(".out.")
    assert _siblings(target) == ["a.txt"] and _siblings(target.parent) == ["out"]


def test_dir_failure_leaves_the_old_output_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert _siblings(tmp_path) == ["out"] and _siblings(target) == ["old.txt"]


def test_dir_replaced_whole_with_overwrite_refused_without(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with pytest.raises(InputError, match=r"--output .*out: already exists; give --overwrite"):
        with atomic_dir(target, what="--output"):
            pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _siblings(target) == ["new.txt"] and _siblings(tmp_path) == ["out"]


def test_an_empty_folder_counts_as_absent(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    check_target(target, overwrite=False)
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("x")
    assert _siblings(target) == ["x"]


def test_file_keeps_its_suffix_and_replaces_a_folder_or_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pth"
    with atomic_file(target) as tmp:
        assert tmp.suffix == ".pth" and not tmp.exists()
        tmp.write_bytes(b"1")
    with pytest.raises(InputError, match="already exists"), atomic_file(target):
        pass
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_bytes(b"2")
    assert target.read_bytes() == b"2" and _siblings(tmp_path) == ["model.pth"]
    with pytest.raises(OSError), atomic_file(target, overwrite=True) as tmp:
        tmp.write_bytes(b"3")
        raise OSError("disk full")
    assert target.read_bytes() == b"2" and _siblings(tmp_path) == ["model.pth"]


def test_a_file_in_the_way_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        check_target(tmp_path / "f" / "out", overwrite=True)


def test_an_output_that_would_delete_an_input_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "set" / "images"
    for target in (tmp_path / "set", tmp_path, data):
        with pytest.raises(InputError, match="replacing it would delete the input"):
            check_apart(target, [data], "--output")
    check_apart(data, [data], "DST", allow_same=True)  # the input itself, read whole first, may be rewritten
    check_apart(tmp_path / "out", [data, tmp_path / "model.pth"])
