"""The synthetic thin-structure dataset: deterministic, readable in the generic layout, bounded masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samhq_jax.datasets import folder_pairs
from train.synthetic import (
    KINDS,
    MAX_FRACTION,
    MIN_FRACTION,
    MIN_PIXELS,
    main,
    synthetic_example,
    write_synthetic_dataset,
)


def files(folder: Path) -> dict[str, bytes]:
    """Relative path -> file bytes, for every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "a", count=20, size=128, seed=0)


def test_layout_is_readable_and_masks_are_bounded(dataset: Path) -> None:
    stems = sorted(p.stem for p in (dataset / "images").glob("*.png"))
    assert len(stems) == 20 and stems == sorted(p.stem for p in (dataset / "masks").glob("*.png"))
    assert len(folder_pairs(dataset)) == 20  # what --data reads
    for stem in stems:
        image, mask = Image.open(dataset / "images" / f"{stem}.png"), Image.open(dataset / "masks" / f"{stem}.png")
        assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (128, 128)
        pixels, labels = np.asarray(image), np.asarray(mask)
        assert pixels.dtype == labels.dtype == np.uint8 and pixels.shape == (128, 128, 3)
        assert set(np.unique(labels)) <= {0, 255}
        foreground = np.count_nonzero(labels)
        assert foreground >= MIN_PIXELS and MIN_FRACTION <= foreground / labels.size <= MAX_FRACTION, stem
        # The object is visible: foreground and background pixels differ in the image.
        assert np.abs(pixels[labels > 0].mean(0) - pixels[labels == 0].mean(0)).max() > 20, stem


def test_every_kind_appears_and_is_named_in_the_stem(dataset: Path) -> None:
    kinds = [p.stem.split("_", 1)[1] for p in sorted((dataset / "masks").glob("*.png"))]
    assert set(kinds) == set(KINDS)
    assert all(synthetic_example(i, 128, 0)[2] == kind for i, kind in enumerate(kinds[:5]))


def test_deterministic_and_seed_dependent(dataset: Path, tmp_path: Path) -> None:
    again = write_synthetic_dataset(tmp_path / "b", count=20, size=128, seed=0)
    assert files(again) == files(dataset)  # byte-identical
    # Example i does not depend on how many are written.
    assert files(write_synthetic_dataset(tmp_path / "c", count=3, size=128, seed=0)).items() <= files(dataset).items()
    other = files(write_synthetic_dataset(tmp_path / "d", count=20, size=128, seed=1))
    assert other.keys() == files(dataset).keys()
    assert all(other[name] != data for name, data in files(dataset).items())


@pytest.mark.parametrize("size", [32, 512])
def test_other_sizes_stay_in_bounds(size: int) -> None:
    for index in range(len(KINDS)):
        image, mask, _ = synthetic_example(index, size, seed=3)
        assert image.shape == (size, size, 3) and mask.shape == (size, size)
        foreground = np.count_nonzero(mask)
        assert foreground >= MIN_PIXELS and MIN_FRACTION <= foreground / mask.size <= MAX_FRACTION


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out"), "--count", "2", "--size", "64", "--seed", "5"]) == 0
    assert "wrote 2" in capsys.readouterr().out
    assert files(tmp_path / "out") == files(write_synthetic_dataset(tmp_path / "ref", 2, 64, 5))
    for bad in (["--size", "8"], ["--count", "0"], ["--seed", "-1"]):  # one line, exit 2, nothing written
        assert main([str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("train.synthetic: error:") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
