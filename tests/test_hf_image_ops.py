"""``SamHQImageProcessor.resize`` and ``pad_image`` equal transformers 4.53.3's ``SamImageProcessor``
methods on the real photos (bit for bit), in both channel layouts and for [0, 1] float images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import SamImageProcessor
from transformers.image_utils import ChannelDimension, PILImageResampling

from eval.parity.samples import IMAGES_DIR
from samhq_jax import SamHQImageProcessor
from samhq_jax.errors import InputError

PHOTOS = ["dog.jpg", "example6.png", "example7.png", "example8.png"]


@pytest.fixture(scope="module")
def processors() -> tuple[SamImageProcessor, SamHQImageProcessor]:
    return SamImageProcessor(), SamHQImageProcessor()


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(IMAGES_DIR / name).convert("RGB"))


@pytest.mark.parametrize("name", PHOTOS)
def test_resize_and_pad_equal_transformers_on_photos(processors: tuple, name: str) -> None:
    ref, ours = processors
    image = photo(name)
    for size in ({"longest_edge": 1024}, {"longest_edge": 333}):
        r, o = ref.resize(image, size), ours.resize(image, size)
        assert o.dtype == r.dtype and o.shape == r.shape and max(o.shape) == size["longest_edge"]
        np.testing.assert_array_equal(o, r, err_msg=f"{name} {size}")
    bilinear = ours.resize(image, {"longest_edge": 1024}, resample=PILImageResampling.BILINEAR)
    np.testing.assert_array_equal(bilinear, ref.resize(image, {"longest_edge": 1024}, resample=2))
    assert not np.array_equal(bilinear, ours.resize(image, {"longest_edge": 1024})), "the filter must matter"
    pad = {"height": 1024, "width": 1024}
    resized = ref.resize(image, {"longest_edge": 1024})
    r, o = ref.pad_image(resized, pad), ours.pad_image(resized, pad)
    assert o.dtype == r.dtype and o.shape == r.shape == (1024, 1024, 3)
    np.testing.assert_array_equal(o, r)


def test_channels_first_float_and_data_format_equal_transformers(processors: tuple) -> None:
    ref, ours = processors
    image = photo("example7.png")[::3, ::3]
    chw = image.transpose(2, 0, 1).copy()
    unit = (image / 255).astype(np.float32)  # values in [0, 1]: scaled to 255 around PIL and back
    size = {"longest_edge": 200}
    for args in [
        (chw, {}),
        (unit, {}),
        (image, {"data_format": "channels_first"}),
        (chw, {"data_format": ChannelDimension.LAST}),
    ]:
        r, o = ref.resize(args[0], size, **args[1]), ours.resize(args[0], size, **args[1])
        assert o.dtype == r.dtype and o.shape == r.shape, args[1]
        np.testing.assert_array_equal(o, r)
    pad = {"height": 300, "width": 280}
    for arr, kw in [(chw, {}), (unit, {}), (image, {"data_format": "channels_first"}), (chw, {"constant_values": 7})]:
        r, o = ref.pad_image(arr, pad, **kw), ours.pad_image(arr, pad, **kw)
        assert o.dtype == r.dtype and o.shape == r.shape, kw
        np.testing.assert_array_equal(o, r)


def test_bad_inputs_raise_input_errors(processors: tuple) -> None:
    _, ours = processors
    image = photo("example7.png")[:50, :60]
    with pytest.raises(InputError, match="longest_edge"):
        ours.resize(image, {"height": 10, "width": 10})
    with pytest.raises(InputError, match="smaller than"):
        ours.pad_image(image, {"height": 40, "width": 100})
    with pytest.raises(InputError, match="channel axis"):
        ours.resize(np.zeros((50, 60, 5), np.uint8), {"longest_edge": 10})
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        ours.resize(np.full((50, 60, 3), 1.5, np.float32), {"longest_edge": 10})
    with pytest.raises(InputError, match="resampling"):
        ours.resize(image, {"longest_edge": 10}, resample=9)
