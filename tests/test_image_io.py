"""The one image reader (``samhq_jax.image_io``): every kind of file users bring, built here with PIL
(and a minimal PNG encoder for 16-bit colour), read as ``(H, W, 3)`` uint8 RGB the way OpenCV's
``imread(path, IMREAD_COLOR)`` reads it; broken files refused with one line naming the file."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from samhq_jax.image_io import check_image, read_rgb
from samhq_jax.transforms import to_rgb_uint8

RNG = np.random.default_rng(0)
ORIENTATION = 0x0112  # the EXIF tag
# EXIF 2.3, Orientation: 3 = the 0th row is the visual bottom, 0th column the visual right (turned
# 180 degrees); 6 = 0th row visual right, 0th column visual top: shown turned 90 degrees clockwise
# (np.rot90 k=-1); 8 = 0th row visual left, 0th column visual bottom: turned 90 degrees
# counter-clockwise (k=1).
ROT90_K = {3: 2, 6: -1, 8: 1}


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG of ``(H, W)`` grey, ``(H, W, 2)`` grey + alpha, ``(H, W, 3)`` RGB or ``(H, W, 4)``
    RGBA uint16 pixels (PIL writes 16-bit grey only)."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # PNG: grey, grey + alpha, RGB, RGBA
    rows = pixels.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def blocks(h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 of flat 8x8 colour blocks: JPEG keeps them, decoders agree on them."""
    return np.kron(RNG.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))


def stored_pixels(path: Path) -> np.ndarray:
    """The decoded pixels as stored in the file, no orientation applied."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def exif_jpeg(orientation: int) -> Callable[[Path], tuple[Path, np.ndarray]]:
    def make(tmp: Path) -> tuple[Path, np.ndarray]:
        path = tmp / f"phone_{orientation}.jpg"
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        Image.fromarray(blocks(16, 32)).save(path, exif=exif, quality=95)
        return path, np.rot90(stored_pixels(path), ROT90_K[orientation])

    return make


def png16(channels: int) -> Callable[[Path], tuple[Path, np.ndarray]]:
    def make(tmp: Path) -> tuple[Path, np.ndarray]:
        shape = (5, 7) if channels == 1 else (5, 7, channels)
        values = RNG.integers(0, 65536, shape, dtype=np.uint16)
        path = tmp / f"deep{channels}.png"
        write_png16(path, values)
        high = (values >> 8).astype(np.uint8)  # OpenCV: value / 256, the high byte
        return path, as_rgb(high) if channels == 1 else as_rgb(high[..., 0]) if channels == 2 else high[..., :3]

    return make


def tiff16_big_endian(tmp: Path) -> tuple[Path, np.ndarray]:
    values = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    path = tmp / "deep.tif"
    Image.frombytes("I;16B", (6, 4), values.astype(">u2").tobytes()).save(path)
    return path, as_rgb((values >> 8).astype(np.uint8))


def int32_with_16bit_values(tmp: Path) -> tuple[Path, np.ndarray]:
    values = RNG.integers(0, 65536, (4, 6)).astype(np.int32)
    path = tmp / "int32.tif"
    Image.fromarray(values).save(path)  # PIL mode I, as old Pillow opens a 16-bit grey PNG
    return path, as_rgb((values >> 8).astype(np.uint8))


def palette_transparent(tmp: Path) -> tuple[Path, np.ndarray]:
    colours = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0], [5, 5, 250]], np.uint8)
    index = RNG.integers(0, 4, (5, 6), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(colours.ravel().tolist())
    path = tmp / "palette.png"
    image.save(path, transparency=bytes([255, 0, 128, 255]))  # per-colour alpha (tRNS), dropped
    return path, colours[index]


def grey_alpha(tmp: Path) -> tuple[Path, np.ndarray]:
    pixels = RNG.integers(0, 256, (5, 6, 2), dtype=np.uint8)
    path = tmp / "la.png"
    Image.fromarray(pixels, "LA").save(path)
    return path, as_rgb(pixels[..., 0])


def rgba(tmp: Path) -> tuple[Path, np.ndarray]:
    pixels = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    path = tmp / "rgba.png"
    Image.fromarray(pixels).save(path)
    return path, pixels[..., :3]  # alpha dropped, not composited


def cmyk(suffix: str) -> Callable[[Path], tuple[Path, np.ndarray]]:
    def make(tmp: Path) -> tuple[Path, np.ndarray]:
        pixels = blocks(16, 16)
        path = tmp / f"cmyk{suffix}"
        Image.fromarray(pixels).convert("CMYK").save(path)  # C = 255 - R, ..., K = 0
        return path, pixels

    return make


def bilevel(tmp: Path) -> tuple[Path, np.ndarray]:
    on = RNG.random((5, 9)) > 0.5
    path = tmp / "bilevel.png"
    Image.fromarray(on).save(path)
    return path, as_rgb(on.astype(np.uint8) * 255)


def one_pixel(tmp: Path) -> tuple[Path, np.ndarray]:
    path = tmp / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    return path, np.array([[[1, 2, 3]]], np.uint8)


KINDS = {
    "exif3": exif_jpeg(3),
    "exif6": exif_jpeg(6),
    "exif8": exif_jpeg(8),
    "grey16_png": png16(1),
    "grey_alpha16_png": png16(2),
    "rgb16_png": png16(3),
    "rgba16_png": png16(4),
    "grey16_tiff_big_endian": tiff16_big_endian,
    "int32_16bit_values": int32_with_16bit_values,
    "palette_transparent": palette_transparent,
    "grey_alpha": grey_alpha,
    "rgba": rgba,
    "cmyk_tiff": cmyk(".tif"),
    "cmyk_jpeg": cmyk(".jpg"),
    "bilevel": bilevel,
    "one_pixel": one_pixel,
}
ATOL = {"cmyk_jpeg": 2}  # lossy; flat blocks come back within 2
OPENCV_ATOL = {"cmyk_jpeg": 1, "cmyk_tiff": 1}  # OpenCV's CMYK formula rounds differently
NOT_OPENCV = {"int32_16bit_values"}  # OpenCV refuses 32-bit integer TIFFs


@pytest.mark.parametrize("kind", KINDS)
def test_reads_every_kind_as_rgb(tmp_path, kind):
    path, expected = KINDS[kind](tmp_path)
    check_image(path)
    ours = read_rgb(path)
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=ATOL.get(kind, 0), rtol=0)


@pytest.mark.parametrize("kind", sorted(set(KINDS) - NOT_OPENCV))
def test_matches_opencv_imread(tmp_path, kind):
    path, _ = KINDS[kind](tmp_path)
    golden = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_allclose(read_rgb(path), golden, atol=OPENCV_ATOL.get(kind, 0), rtol=0)


def test_exif_off_gives_the_stored_pixels(tmp_path):
    path, _ = exif_jpeg(6)(tmp_path)
    np.testing.assert_array_equal(read_rgb(path, exif=False), stored_pixels(path))


def test_large_phone_photo(tmp_path):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.new("RGB", (6000, 4000), (90, 140, 200)).save(path, exif=exif, quality=80)
    image = read_rgb(path)
    assert image.shape == (6000, 4000, 3) and np.abs(image[::500, ::500].astype(int) - [90, 140, 200]).max() <= 2


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("L", (12, 12)).save(tmp_path / "warned.png")  # 144 px: over the limit, under twice it
    Image.new("L", (20, 20)).save(tmp_path / "bomb.png")  # 400 px: over twice the limit
    with pytest.warns(Image.DecompressionBombWarning):
        assert read_rgb(tmp_path / "warned.png").shape == (12, 12, 3)
    for read in (check_image, read_rgb):
        with pytest.raises(ValueError, match=r"cannot read image .*bomb\.png: .*MAX_IMAGE_PIXELS"):
            read(tmp_path / "bomb.png")


def refused_values(tmp: Path) -> Path:
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp / "int32.tif")
    return tmp / "int32.tif"


def refused_float(tmp: Path) -> Path:
    Image.fromarray(np.zeros((2, 3), np.float32)).save(tmp / "float.tif")
    return tmp / "float.tif"


@pytest.mark.parametrize(("make", "message"), [(refused_values, "0..70000"), (refused_float, "mode F")])
def test_32bit_images_are_refused(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=rf"cannot read image {path}: .*{message}"):
        read_rgb(path)
    if message == "mode F":  # the mode is in the header; mode I's values are only known when decoded
        with pytest.raises(ValueError, match=rf"cannot read image {path}: .*{message}"):
            check_image(path)


def good_files(tmp: Path) -> tuple[bytes, bytes]:
    """The bytes of a valid 64x64 JPEG and PNG."""
    pixels = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp / "good.jpg")
    Image.fromarray(pixels).save(tmp / "good.png")
    return (tmp / "good.jpg").read_bytes(), (tmp / "good.png").read_bytes()


BROKEN = {
    "empty": "empty.jpg",
    "cut_jpg": "cut.jpg",
    "cut_png": "cut.png",
    "text": "notes.png",
    "folder": "album.jpg",
    "missing": "gone.jpg",
}


def make_broken(tmp: Path, kind: str) -> Path:
    jpeg, png = good_files(tmp)
    path = tmp / BROKEN[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "cut_jpg":
        path.write_bytes(jpeg[: len(jpeg) // 2])
    elif kind == "cut_png":
        path.write_bytes(png[: len(png) // 2])
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_files_are_refused_in_one_line(tmp_path, kind):
    path = make_broken(tmp_path, kind)
    error = FileNotFoundError if kind == "missing" else ValueError
    readers = [(read_rgb, "")]
    if kind != "cut_jpg":  # check_image reads headers only: a JPEG cut in its coded data passes it
        readers.append((lambda p: check_image(p, "--image: "), "--image: "))
    for read, prefix in readers:
        with pytest.raises(error) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(prefix) and str(path) in message and "\n" not in message, message


def test_to_rgb_uint8_converts_pil_images_by_the_same_rules():
    values = RNG.integers(0, 65536, (3, 4), dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(values)), as_rgb((values >> 8).astype(np.uint8)))
    with pytest.raises(ValueError, match="mode F"):
        to_rgb_uint8(Image.fromarray(np.zeros((2, 2), np.float32)))
