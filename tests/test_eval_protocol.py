"""The benchmark protocol against the official evaluation (``train/train.py --eval`` with
``segment_anything_hq``'s model; plain SAM from ``segment-anything``), transcribed here in PyTorch,
on seeded random tiny models; bad data; separate SAM weights; the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval.protocol import OUTPUTS, evaluate_pairs, resize_pair, same_image_encoder, summarize
from samhq_jax.datasets import Pair, folder_pairs, is_empty_box, label_to_box
from tests.conftest import official_masks_to_boxes, official_model_and_params
from tests.test_metrics import official_boundary_iou, official_mask_iou

PRESET = "tiny_b"
IOU_TOL = 1e-3  # per-image IoU: the bilinear resizes agree to ~1e-6, a few pixels near logit 0 may flip
BATCH = 2  # one batch size for every test of the tiny model: it compiles once per session


# ---- data ----------------------------------------------------------------------------------------------
def synthetic_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour image with an object (ellipse, a thin bar, a hole) and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    cy, cx, ry, rx = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3)
    obj = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    obj |= (np.abs(yy - cy) < 0.01) & (xx > 0.1) & (xx < 0.9)  # a thin bar through the object
    obj &= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 > 0.05  # a hole
    background = rng.uniform(0, 255, 3) * (0.5 + 0.5 * np.sin(6 * xx + 3 * yy))[..., None]
    image = np.where(obj[..., None], rng.uniform(0, 255, 3), background) + rng.normal(0, 12, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), np.where(obj, 255, 0).astype(np.uint8)


def write_folder(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folder/images/im<i>.png`` + ``folder/masks/im<i>.png`` for each ``(h, w)``; returns the arrays."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    out = []
    for i, (h, w) in enumerate(sizes):
        image, mask = synthetic_pair(h, w, seed + i)
        Image.fromarray(image).save(folder / "images" / f"im{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"im{i}.png")
        out.append((image, mask))
    return out


# ---- the official evaluation, transcribed ------------------------------------------------------------------
def official_resize(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """The ``Resize`` transform (``F.interpolate(mode="bilinear")``) and the ``astype(np.uint8)`` of ``evaluate``."""
    im = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)
    gt = torch.tensor(label, dtype=torch.float32)[None]
    im = F.interpolate(im[None], [size, size], mode="bilinear")[0]
    gt = F.interpolate(gt[None], [size, size], mode="bilinear")[0]
    return im.permute(1, 2, 0).numpy().astype(np.uint8), gt


def plain_sam_decoder(hq_model: torch.nn.Module) -> torch.nn.Module:
    """``segment-anything``'s ``MaskDecoder`` holding the SAM part of ``hq_model``'s decoder."""
    from segment_anything.modeling import MaskDecoder

    hq = hq_model.mask_decoder
    decoder = MaskDecoder(
        transformer_dim=hq.transformer_dim,
        transformer=hq.transformer,
        num_multimask_outputs=hq.num_multimask_outputs,
        iou_head_depth=hq.iou_prediction_head.num_layers,
        iou_head_hidden_dim=hq.iou_prediction_head.layers[0].out_features,
    )
    hq_state = hq.state_dict()
    decoder.load_state_dict({k: hq_state[k] for k in decoder.state_dict()}, strict=True)
    return decoder.eval()


@torch.no_grad()
def official_scores(
    model: torch.nn.Module, image: np.ndarray, label: np.ndarray, sam_model: torch.nn.Module | None = None
) -> dict[str, tuple[float, float]]:
    """Output name -> (IoU, boundary IoU) as the official evaluation computes them (``Sam.forward`` split
    so the image is encoded once): box from the resized label, single-mask mode, logits bilinearly
    resized to the label size, ``misc.mask_iou`` / ``misc.boundary_iou``. ``sam``: the original SAM
    ``sam_model`` (segment-anything), by default the SAM part of ``model`` in segment-anything's decoder."""
    size = model.image_encoder.img_size
    resized, label_r = official_resize(image, label, size)
    box = official_masks_to_boxes(label_r)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()
    emb, interm = model.image_encoder(model.preprocess(x)[None])
    sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
    pe = model.prompt_encoder.get_dense_pe()
    logits = {}
    for name, hq_only in (("hq", True), ("samhq", False)):
        logits[name], _ = model.mask_decoder(emb, pe, sparse, dense, False, hq_only, interm)
    if sam_model is None:
        logits["sam"], _ = plain_sam_decoder(model)(emb, pe, sparse, dense, False)
    else:
        sam_emb = sam_model.image_encoder(sam_model.preprocess(x)[None])
        sam_sparse, sam_dense = sam_model.prompt_encoder(points=None, boxes=box, masks=None)
        pe = sam_model.prompt_encoder.get_dense_pe()
        logits["sam"], _ = sam_model.mask_decoder(sam_emb, pe, sam_sparse, sam_dense, False)
    ori = torch.tensor(label)[None]  # ori_label, uint8
    out = {}
    for name, low in logits.items():
        pred = F.interpolate(low, size=label.shape, mode="bilinear", align_corners=False)[0]
        out[name] = (float(official_mask_iou(pred, ori)), float(official_boundary_iou(ori, pred)))
    return out


def assert_records_match_official(records, arrays, model, sam_model=None) -> float:
    """Every record scored and within IOU_TOL of the official evaluation; returns the largest difference."""
    worst = 0.0
    for rec, (image, mask) in zip(records, arrays, strict=True):
        assert rec.skipped is None, rec.skipped
        ref = official_scores(model, image, mask, sam_model)
        for o in OUTPUTS:
            for ours, theirs, what in ((rec.iou[o], ref[o][0], "iou"), (rec.biou[o], ref[o][1], "biou")):
                assert abs(ours - theirs) <= IOU_TOL, (rec.image, o, what, ours, theirs)
                worst = max(worst, abs(ours - theirs))
    return worst


# ---- tests ---------------------------------------------------------------------------------------------
def test_resize_and_box_equal_official() -> None:
    for seed, (h, w, size) in enumerate([(123, 301, 160), (480, 250, 1024), (57, 57, 160)]):
        image, mask = synthetic_pair(h, w, seed)
        ref_image, ref_label = official_resize(image, mask, size)
        ours_image, ours_label = resize_pair(image, mask, size)
        assert ours_image.dtype == np.uint8 and ours_image.shape == (size, size, 3)
        # Truncation after a ~1e-6 float difference can move a value across an integer: at most by one.
        assert np.abs(ours_image.astype(int) - ref_image).max() <= 1
        assert np.mean(ours_image == ref_image) > 0.999
        np.testing.assert_allclose(ours_label, ref_label[0].numpy(), rtol=0, atol=1e-3)
        np.testing.assert_array_equal(label_to_box(ours_label), official_masks_to_boxes(ref_label)[0].numpy())
    label = np.zeros((20, 30), np.float32)
    label[3, 7] = 129
    label[11:15, 2] = 200
    label[0, 29] = 128  # not foreground
    assert label_to_box(label).tolist() == [2, 3, 7, 14]
    assert is_empty_box(label_to_box(np.full((5, 5), 128)))


def test_protocol_equals_official_pytorch(tmp_path) -> None:
    """Five images of different shapes in batches of two (the last one padded): all three outputs as the
    official evaluation scores them (plain SAM: segment-anything's MaskDecoder with the HQ model's SAM weights)."""
    model, _, config, params = official_model_and_params(PRESET)
    arrays = write_folder(tmp_path / "set", [(120, 200), (300, 170), (90, 90), (161, 159), (64, 500)])
    records = evaluate_pairs(config, params, folder_pairs(tmp_path / "set"), batch_size=BATCH)
    assert [r.image for r in records] == [f"im{i}" for i in range(5)]
    worst = assert_records_match_official(records, arrays, model)
    print(f"tiny protocol: max |ours - official| IoU / bIoU = {worst:.2e}")
    # The random model is not trivial here: the three outputs differ.
    assert len({round(r.iou[o], 6) for r in records for o in OUTPUTS}) > 5


def test_bad_data_is_recorded_not_fatal(tmp_path) -> None:
    _, _, config, params = official_model_and_params(PRESET)
    (good, good_mask) = synthetic_pair(100, 140, 7)
    files = {}

    def put(stem: str, image: np.ndarray | bytes, mask: np.ndarray | None) -> Pair:
        img_path, mask_path = tmp_path / f"{stem}.png", tmp_path / f"{stem}_mask.png"
        if isinstance(image, bytes):
            img_path.write_bytes(image)
        else:
            Image.fromarray(image).save(img_path)
        if mask is not None:
            Image.fromarray(mask).save(mask_path)
        files[stem] = (img_path, mask_path)
        return Pair("bad", stem, img_path, mask_path)

    soft = good_mask.copy()
    soft[40:60, 50:52] = 100  # a few grey pixels: scored, reported
    pairs = [
        put("good", good, good_mask),
        put("unreadable", b"not a png", good_mask),
        put("missing_mask", good, None),
        put("size_mismatch", good, good_mask[:-1]),
        put("empty", good, np.zeros_like(good_mask)),
        put("zero_one", good, (good_mask > 0).astype(np.uint8)),
        put("soft", good, soft),
    ]
    records = evaluate_pairs(config, params, pairs, batch_size=BATCH)
    by = {r.image: r for r in records}
    assert [r.image for r in records] == [p.stem for p in pairs]
    assert by["good"].skipped is None and not by["good"].problems
    assert by["soft"].skipped is None and "40 of 14000 pixels" in by["soft"].problems[0]
    assert "cannot read image" in by["unreadable"].skipped
    assert "cannot read mask" in by["missing_mask"].skipped
    assert "140x100 but mask" in by["size_mismatch"].skipped and "140x99" in by["size_mismatch"].skipped
    assert "no foreground" in by["empty"].skipped
    assert "no foreground" in by["zero_one"].skipped and "0/1 mask" in by["zero_one"].problems[0]
    for r in records:
        assert (r.skipped is None) == bool(r.iou) == bool(r.biou)
    s = summarize(records)
    assert s["bad"]["count"] == 2 and s["bad"]["skipped"] == 5
    assert set(s["bad"]["problems"]) == {"soft", "unreadable", "missing_mask", "size_mismatch", "empty", "zero_one"}
    for o in OUTPUTS:
        assert s["bad"][o]["miou"] == pytest.approx(50 * (by["good"].iou[o] + by["soft"].iou[o]))


def test_separate_sam_weights(tmp_path) -> None:
    """``sam_params`` with another image encoder: encoded separately and scored as that model's SAM; with
    the same encoder (only the decoder differs): the embeddings are shared."""
    _, _, config, params = official_model_and_params(PRESET)
    _, _, _, other = official_model_and_params(PRESET, seed=1)
    write_folder(tmp_path / "set", [(100, 130), (140, 90), (120, 120)], seed=5)
    pairs = folder_pairs(tmp_path / "set")
    mixed = evaluate_pairs(config, params, pairs, batch_size=BATCH, sam_params=other)
    alone, other_alone = evaluate_pairs(config, params, pairs, BATCH), evaluate_pairs(config, other, pairs, BATCH)
    for m, a, b in zip(mixed, alone, other_alone, strict=True):
        assert m.iou["hq"] == a.iou["hq"] and m.iou["samhq"] == a.iou["samhq"] and m.biou["hq"] == a.biou["hq"]
        assert m.iou["sam"] == pytest.approx(b.iou["sam"], abs=1e-6)
        assert m.biou["sam"] == pytest.approx(b.biou["sam"], abs=1e-6)
    assert any(m.iou["sam"] != a.iou["sam"] for m, a in zip(mixed, alone, strict=True))

    same_encoder = {**other, "image_encoder": params["image_encoder"]}
    assert same_image_encoder(config, params, config, same_encoder)
    assert not same_image_encoder(config, params, config, other)
    shared = evaluate_pairs(config, params, pairs, batch_size=BATCH, sam_params=same_encoder)
    assert [r.iou["hq"] for r in shared] == [r.iou["hq"] for r in alone]
    assert [r.iou["sam"] for r in shared] != [r.iou["sam"] for r in alone]  # the other model's SAM decoder


def test_summary_means_and_degenerate_datasets() -> None:
    from eval.protocol import ImageRecord

    def rec(ds: str, iou: float, skipped: str | None = None) -> ImageRecord:
        scores = {} if skipped else dict.fromkeys(OUTPUTS, iou)
        return ImageRecord(ds, f"{ds}{iou}", iou=scores, biou=dict(scores), skipped=skipped)

    records = [rec("a", 0.5), rec("a", 1.0), rec("b", 0.2), rec("b", 0, "no foreground"), rec("c", 0, "unreadable")]
    s = summarize(records, {"d": "missing dataset folders (1): x"})
    assert list(s) == ["a", "b", "c", "d", "mean"]
    assert s["a"]["hq"] == {"miou": 75.0, "mbiou": 75.0} and s["b"]["sam"]["miou"] == pytest.approx(20.0)
    assert s["c"]["count"] == 0 and s["c"]["skipped"] == 1 and s["c"]["hq"]["miou"] is None
    assert s["d"]["error"].startswith("missing") and s["d"]["samhq"]["mbiou"] is None
    # The mean is over datasets with scored images (the paper's "avg" of the sets), not over images.
    assert s["mean"]["datasets"] == ["a", "b"] and s["mean"]["hq"]["miou"] == pytest.approx((75 + 20) / 2)
    assert s["mean"]["count"] == 3 and s["mean"]["skipped"] == 2
    assert summarize([])["mean"]["hq"]["miou"] is None
