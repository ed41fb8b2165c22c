"""Dataset listing and file reading: the official HQSeg-44K layout and pairing, generic folders
checked at start-up, and reading as the official ``OnlineDataset`` does."""

from __future__ import annotations

import os
from glob import glob
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samhq_jax.datasets import (
    HQSEG_LAYOUT,
    HQSEG_TRAIN,
    HQSEG_VAL,
    DatasetError,
    Pair,
    folder_pairs,
    hqseg_pairs,
    read_image,
    read_mask,
)

# The official train.py's dataset dicts (train/train.py, "./data/..."), for the layout check.
OFFICIAL_DATASETS = {
    "DIS5K-TR": ("./data/DIS5K/DIS-TR/im", "./data/DIS5K/DIS-TR/gt"),
    "ThinObject5k-TR": (
        "./data/thin_object_detection/ThinObject5K/images_train",
        "./data/thin_object_detection/ThinObject5K/masks_train",
    ),
    "FSS": ("./data/cascade_psp/fss_all", "./data/cascade_psp/fss_all"),
    "DUTS-TR": ("./data/cascade_psp/DUTS-TR", "./data/cascade_psp/DUTS-TR"),
    "DUTS-TE": ("./data/cascade_psp/DUTS-TE", "./data/cascade_psp/DUTS-TE"),
    "ECSSD": ("./data/cascade_psp/ecssd", "./data/cascade_psp/ecssd"),
    "MSRA10K": ("./data/cascade_psp/MSRA_10K", "./data/cascade_psp/MSRA_10K"),
    "COIFT": ("./data/thin_object_detection/COIFT/images", "./data/thin_object_detection/COIFT/masks"),
    "HRSOD": ("./data/thin_object_detection/HRSOD/images", "./data/thin_object_detection/HRSOD/masks_max255"),
    "ThinObject5k-TE": (
        "./data/thin_object_detection/ThinObject5K/images_test",
        "./data/thin_object_detection/ThinObject5K/masks_test",
    ),
    "DIS5K-VD": ("./data/DIS5K/DIS-VD/im", "./data/DIS5K/DIS-VD/gt"),
}
OFFICIAL_TRAIN = ["DIS5K-TR", "ThinObject5k-TR", "FSS", "DUTS-TR", "DUTS-TE", "ECSSD", "MSRA10K"]
OFFICIAL_VALID = ["DIS5K-VD", "COIFT", "HRSOD", "ThinObject5k-TE"]


def official_pairs(dataset: dict) -> list[tuple[str, str]]:
    """Transcription of the official get_im_gt_name_dict for one dataset: (image, mask) paths."""
    tmp_im_list = glob(dataset["im_dir"] + os.sep + "*" + dataset["im_ext"])
    tmp_gt_list = [
        dataset["gt_dir"] + os.sep + x.split(os.sep)[-1].split(dataset["im_ext"])[0] + dataset["gt_ext"]
        for x in tmp_im_list
    ]
    return list(zip(tmp_im_list, tmp_gt_list, strict=True))


def official_read(im_path: str, gt_path: str) -> tuple[np.ndarray, np.ndarray]:
    """OnlineDataset.__getitem__'s channel rules (skimage.io.imread replaced by PIL + np.asarray)."""
    im, gt = np.asarray(Image.open(im_path)), np.asarray(Image.open(gt_path))
    if len(gt.shape) > 2:
        gt = gt[:, :, 0]
    if len(im.shape) < 3:
        im = im[:, :, np.newaxis]
    if im.shape[2] == 1:
        im = np.repeat(im, 3, axis=2)
    return im, gt


def write_pair(image: Path, mask: Path, seed: int, h: int = 12, w: int = 9) -> None:
    rng = np.random.default_rng(seed)
    image.parent.mkdir(parents=True, exist_ok=True)
    mask.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)
    Image.fromarray((rng.random((h, w)) > 0.5).astype(np.uint8) * 255).save(mask)


def make_folder(root: Path, stems: list[str], image_ext: str = ".jpg") -> Path:
    for i, stem in enumerate(stems):
        write_pair(root / "images" / f"{stem}{image_ext}", root / "masks" / f"{stem}.png", i)
    return root


# --- HQSeg-44K layout ---


def test_layout_is_the_official_table():
    assert HQSEG_TRAIN == tuple(OFFICIAL_TRAIN) and set(HQSEG_VAL) == set(OFFICIAL_VALID)
    assert set(HQSEG_LAYOUT) == set(OFFICIAL_DATASETS)
    for name, (im_dir, gt_dir) in OFFICIAL_DATASETS.items():
        split = HQSEG_LAYOUT[name]
        assert ("./data/" + split.im_dir, "./data/" + split.gt_dir) == (im_dir, gt_dir), name
        assert (split.im_ext, split.gt_ext) == (".jpg", ".png")


def test_hqseg_pairs_match_official_pairing(tmp_path, monkeypatch):
    data = tmp_path / "data"
    names = ["DIS5K-TR", "FSS", "HRSOD"]
    for k, name in enumerate(names):
        split = HQSEG_LAYOUT[name]
        for i, stem in enumerate(["b", "a", "c.v2", "a_b"]):
            write_pair(data / split.im_dir / f"{stem}.jpg", data / split.gt_dir / f"{stem}.png", 10 * k + i)
    (data / HQSEG_LAYOUT["FSS"].gt_dir / "orphan.png").write_bytes(b"")  # ignored, as officially
    pairs = hqseg_pairs(data, names)
    assert [p.dataset for p in pairs] == [n for n in names for _ in range(4)]
    assert [p.stem for p in pairs[:4]] == ["a", "a_b", "b", "c.v2"]  # sorted within a dataset
    monkeypatch.chdir(tmp_path)
    for name in names:
        split = HQSEG_LAYOUT[name]
        ref = official_pairs(
            {"im_dir": "./data/" + split.im_dir, "gt_dir": "./data/" + split.gt_dir, "im_ext": ".jpg", "gt_ext": ".png"}
        )
        ours = {(str(p.image), str(p.mask)) for p in pairs if p.dataset == name}
        assert ours == {(str(tmp_path / a), str(tmp_path / b)) for a, b in ref}


def test_hqseg_unknown_name_lists_known():
    with pytest.raises(DatasetError, match=r"unknown HQSeg datasets \['DIS5K'\]; known: DIS5K-TR, .*MSRA10K"):
        hqseg_pairs(Path("/nonexistent"), ["DIS5K-TR", "DIS5K"])


def test_hqseg_missing_folders_and_masks(tmp_path):
    with pytest.raises(DatasetError, match="missing dataset folders") as err:
        hqseg_pairs(tmp_path, ["ECSSD", "COIFT"])
    assert str(tmp_path / "cascade_psp/ecssd") in str(err.value)
    assert str(tmp_path / "thin_object_detection/COIFT/masks") in str(err.value)
    split = HQSEG_LAYOUT["DIS5K-VD"]
    for i in range(3):
        write_pair(tmp_path / split.im_dir / f"{i}.jpg", tmp_path / split.gt_dir / f"{i}.png", i)
    (tmp_path / split.gt_dir / "1.png").unlink()
    with pytest.raises(DatasetError, match=r"missing masks \(1\): .*DIS-VD/gt/1\.png"):
        hqseg_pairs(tmp_path, ["DIS5K-VD"])


# --- generic folders ---


def test_folder_pairs(tmp_path):
    root = make_folder(tmp_path / "wires", ["b", "a"])
    write_pair(root / "images" / "c.PNG", root / "masks" / "c.png", 5)
    write_pair(root / "images" / "d.jpeg", root / "masks" / "d.png", 6)
    (root / "images" / ".DS_Store").write_bytes(b"")
    (root / "images" / "notes.txt").write_text("not an image")
    pairs = folder_pairs(root)
    assert [(p.dataset, p.stem, p.image.name, p.mask.name) for p in pairs] == [
        ("wires", "a", "a.jpg", "a.png"),
        ("wires", "b", "b.jpg", "b.png"),
        ("wires", "c", "c.PNG", "c.png"),
        ("wires", "d", "d.jpeg", "d.png"),
    ]
    assert folder_pairs(root, name="mine")[0] == Pair("mine", "a", root / "images/a.jpg", root / "masks/a.png")


def test_folder_pairs_lists_missing_files(tmp_path):
    root = make_folder(tmp_path / "d", [f"im{i:03d}" for i in range(40)])
    for i in range(35):
        (root / "masks" / f"im{i:03d}.png").unlink()
    write_pair(root / "x.jpg", root / "masks" / "lonely.png", 0)
    with pytest.raises(DatasetError) as err:
        folder_pairs(root)
    msg = str(err.value)
    assert "images without a mask; missing masks (35)" in msg and str(root / "masks" / "im000.png") in msg
    assert "... and 5 more" in msg and "im034.png" not in msg
    assert "masks without an image" in msg and str(root / "masks" / "lonely.png") in msg


def test_folder_pairs_duplicate_stem_missing_and_empty_folders(tmp_path):
    root = make_folder(tmp_path / "dup", ["a"])
    write_pair(root / "images" / "a.png", root / "masks" / "a.png", 1)
    with pytest.raises(DatasetError, match=r"more than one image file .*a\.jpg.*a\.png"):
        folder_pairs(root)
    (tmp_path / "half" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"missing dataset folders \(1\): .*half/masks"):
        folder_pairs(tmp_path / "half")
    (tmp_path / "half" / "masks").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        folder_pairs(tmp_path / "half")


# --- reading ---


@pytest.mark.parametrize(
    ("mode", "ext"), [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("RGB", ".png"), ("L", ".jpg")]
)
def test_read_image_as_official(tmp_path, mode, ext):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (13, 7, channels), dtype=np.uint8)
    path = tmp_path / f"im{ext}"
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    ours = read_image(path)
    assert ours.shape == (13, 7, 3) and ours.dtype == np.uint8
    ref = np.asarray(Image.open(path))
    if ref.ndim == 2:
        ref = np.repeat(ref[..., None], 3, axis=2)
    np.testing.assert_array_equal(ours, ref[..., :3])  # RGBA: alpha dropped (the official code would keep 4)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_read_mask_channel_zero(tmp_path, mode):
    rng = np.random.default_rng(1)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    pixels = rng.integers(0, 256, (9, 11, channels), dtype=np.uint8)
    write_pair(tmp_path / "im.jpg", tmp_path / "unused.png", 0, 9, 11)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(tmp_path / "gt.png")
    ours = read_mask(tmp_path / "gt.png")
    _, ref = official_read(str(tmp_path / "im.jpg"), str(tmp_path / "gt.png"))
    assert ours.shape == (9, 11) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)


def test_read_mask_palette_and_bilevel(tmp_path):
    index = np.zeros((6, 6), np.uint8)
    index[2:4, 1:5] = 1
    pal = Image.fromarray(index).convert("P")
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), index * 200)  # colours, then channel 0
    Image.fromarray(index.astype(bool)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), index * 255)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"cannot read image .*junk\.jpg"):
        read_image(tmp_path / "junk.jpg")
    with pytest.raises(DatasetError, match=r"cannot read mask .*gone\.png"):
        read_mask(tmp_path / "gone.png")
    write_pair(tmp_path / "ok.jpg", tmp_path / "ok.png", 0, 64, 64)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG: decoding fails
    with pytest.raises(DatasetError, match=r"cut\.jpg"):
        read_image(tmp_path / "cut.jpg")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DatasetError, match="not 8-bit"):
        read_mask(tmp_path / "deep.png")


def test_read_image_keeps_the_stored_pixels(tmp_path):
    """Dataset images skip the EXIF orientation (skimage.io.imread does; the masks are drawn on the
    stored pixels) but share the reader's other rules: 16 bits keep their high byte."""
    stored = np.random.default_rng(2).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "phone.png"), stored)
    deep = np.random.default_rng(3).integers(0, 65536, (4, 5), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "deep.png"), np.repeat((deep >> 8).astype(np.uint8)[..., None], 3, 2)
    )
