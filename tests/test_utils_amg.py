"""``samhq_jax.utils.amg`` equals ``segment_anything_hq.utils.amg`` function by function, on the same
inputs (torch tensors in, as scripts pass them): values, dtypes and Python types."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything_hq.utils import amg as official

from samhq_jax.errors import InputError
from samhq_jax.torch_style import OfficialTensor
from samhq_jax.utils import amg as ours
from tests.test_amg import random_masks


def same_tensor(a: object, b: torch.Tensor) -> None:
    """``a`` (ours) answers torch's methods and equals the official tensor ``b`` in shape, dtype, values."""
    assert isinstance(a, OfficialTensor)
    ref = b.numpy()
    assert a.cpu().numpy().dtype == ref.dtype and a.shape == ref.shape
    np.testing.assert_array_equal(a.numpy(), ref)


@pytest.fixture(scope="module")
def masks() -> torch.Tensor:
    return torch.from_numpy(random_masks(np.random.default_rng(7), 9, 37, 52))


def test_rle_functions_equal_official(masks: torch.Tensor) -> None:
    rles = ours.mask_to_rle_pytorch(masks)
    assert rles == official.mask_to_rle_pytorch(masks)
    assert all(type(c) is int for r in rles for c in r["counts"])
    for i, rle in enumerate(rles):
        m = ours.rle_to_mask(rle)
        assert m.dtype == official.rle_to_mask(rle).dtype and np.array_equal(m, official.rle_to_mask(rle))
        np.testing.assert_array_equal(m, masks[i].numpy())
        assert ours.area_from_rle(rle) == official.area_from_rle(rle) == int(masks[i].sum())
        assert ours.coco_encode_rle(rle) == official.coco_encode_rle(rle)


def test_boxes_and_stability_equal_official(masks: torch.Tensor) -> None:
    same_tensor(ours.batched_mask_to_box(masks), official.batched_mask_to_box(masks))
    stacked = masks.reshape(3, 3, *masks.shape[1:])
    same_tensor(ours.batched_mask_to_box(stacked), official.batched_mask_to_box(stacked))
    empty = torch.zeros((0, 5, 6), dtype=torch.bool)
    same_tensor(ours.batched_mask_to_box(empty), official.batched_mask_to_box(empty))
    logits = torch.from_numpy(np.random.default_rng(1).normal(0, 3, (2, 4, 30, 40)).astype(np.float32))
    logits[0, 0] = -10  # 0 / 0: NaN in both
    for threshold, offset in [(0.0, 1.0), (0.5, 0.25)]:
        a, b = (
            ours.calculate_stability_score(logits, threshold, offset),
            official.calculate_stability_score(logits, threshold, offset),
        )
        assert a.dtype == b.numpy().dtype and a.shape == tuple(b.shape)
        np.testing.assert_array_equal(a, b.numpy())


def test_grids_and_crop_boxes_equal_official() -> None:
    for n, layers, scale in [(32, 0, 1), (32, 2, 2), (10, 2, 3)]:
        for a, b in zip(
            ours.build_all_layer_point_grids(n, layers, scale),
            official.build_all_layer_point_grids(n, layers, scale),
            strict=True,
        ):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    np.testing.assert_array_equal(ours.build_point_grid(7), official.build_point_grid(7))
    for size, layers, ratio in [((480, 640), 1, 512 / 1500), ((1365, 2048), 2, 0.3), ((37, 900), 3, 0.1)]:
        assert ours.generate_crop_boxes(size, layers, ratio) == official.generate_crop_boxes(size, layers, ratio)


def test_box_and_uncrop_helpers_equal_official(masks: torch.Tensor) -> None:
    box = torch.tensor([5, 7, 30, 40])
    same_tensor(ours.box_xyxy_to_xywh(box), official.box_xyxy_to_xywh(box))
    assert ours.box_xyxy_to_xywh([5.0, 7.0, 30.0, 40.0]) == official.box_xyxy_to_xywh([5.0, 7.0, 30.0, 40.0])
    crop = [10, 20, 62, 57]
    boxes = official.batched_mask_to_box(masks)
    same_tensor(ours.uncrop_boxes_xyxy(boxes, crop), official.uncrop_boxes_xyxy(boxes, crop))
    same_tensor(ours.uncrop_boxes_xyxy(boxes[None], crop), official.uncrop_boxes_xyxy(boxes[None], crop))
    points = torch.rand(6, 2) * 50
    same_tensor(ours.uncrop_points(points, crop), official.uncrop_points(points, crop))
    same_tensor(ours.uncrop_masks(masks, crop, 80, 90), official.uncrop_masks(masks, crop, 80, 90))
    assert ours.uncrop_masks(masks, [0, 0, 52, 37], 37, 52) is masks
    near_boxes = torch.tensor([[0, 0, 10, 10], [25, 3, 50, 35], [2, 2, 40, 30], [30, 10, 40, 15]])
    for crop_box in ([0, 0, 52, 37], [100, 0, 152, 37], [10, 20, 62, 57]):
        same_tensor(
            ours.is_box_near_crop_edge(near_boxes, crop_box, [0, 0, 200, 100]),
            official.is_box_near_crop_edge(near_boxes, crop_box, [0, 0, 200, 100]),
        )
    items, letters = list(range(10)), "abcdefghij"
    assert list(ours.batch_iterator(4, items, letters)) == list(official.batch_iterator(4, items, letters))


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_equals_official(masks: torch.Tensor, mode: str) -> None:
    for m in masks.numpy():
        for thresh in (3, 40):
            a, changed = ours.remove_small_regions(m, thresh, mode)
            b, ref_changed = official.remove_small_regions(m, thresh, mode)
            assert changed is ref_changed and np.array_equal(a, b) and a.dtype == b.dtype


def test_bad_inputs_raise_input_errors(masks: torch.Tensor) -> None:
    with pytest.raises(InputError, match=r"\(B, H, W\)"):
        ours.mask_to_rle_pytorch(masks[0])
    with pytest.raises(InputError, match="same size"):
        list(ours.batch_iterator(2, [1, 2, 3], [1, 2]))
    with pytest.raises(InputError, match="atol"):
        ours.is_box_near_crop_edge(torch.zeros((1, 4)), [0, 0, 5, 5], [0, 0, 5, 5], atol=5.0)
    with pytest.raises(InputError, match="mode"):
        ours.remove_small_regions(masks[0].numpy(), 5, "specks")
    with pytest.raises(InputError, match="do not fit"):
        ours.uncrop_masks(masks, [10, 20, 30, 30], 80, 90)


def test_mask_data_equals_official(masks: torch.Tensor) -> None:
    def columns() -> dict:
        return {
            "boxes": official.batched_mask_to_box(masks),
            "iou": np.linspace(0, 1, len(masks), dtype=np.float32),
            "rles": official.mask_to_rle_pytorch(masks),
        }

    a, b = ours.MaskData(**columns()), official.MaskData(**columns())
    for data in (a, b):
        data.filter(torch.tensor([True, False, True, True, False, True, True, False, True]))
        data.cat(type(data)(**columns()))
        data.filter(torch.tensor([0, 2, 3, 7, 9]))
        data["area"] = [int(m.sum()) for m in masks[:5]]
        del data["iou"]
        data.to_numpy()
    assert [k for k, _ in a.items()] == [k for k, _ in b.items()]
    for key, value in b.items():
        mine = a[key]
        assert type(mine) is type(value), key
        if isinstance(value, np.ndarray):
            assert mine.dtype == value.dtype and np.array_equal(mine, value), key
        else:
            assert mine == value, key
    host = ours.MaskData(boxes=ours.batched_mask_to_box(masks))
    host.cat(ours.MaskData(boxes=ours.batched_mask_to_box(masks)))
    host.filter(np.arange(len(masks) * 2) % 3 == 0)
    assert isinstance(host["boxes"], OfficialTensor) and host["boxes"].shape == (6, 4)
    host.to_numpy()
    assert type(host["boxes"]) is np.ndarray
    with pytest.raises(InputError, match="MaskData only supports"):
        ours.MaskData(boxes=(1, 2))
