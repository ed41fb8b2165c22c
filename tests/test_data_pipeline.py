"""The grain training pipeline: contents and dtypes, the (seed, step, slot) contract, exact replay
from a saved state, per-process shards that concatenate to the global batch, and unreadable files
replaced by flagged zero examples."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from samhq_jax.datasets import folder_pairs
from train.data import (
    BOX,
    NOISE_MASK,
    POINTS,
    example_index,
    example_rng,
    load_example,
    make_train_loader,
    steps_per_epoch,
)

S, GB = 160, 4  # tiny preset's image size; global batch
KEYS = ("image", "label", "box", "points", "noise_mask", "prompt", "valid")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """10 pairs of assorted sizes: a rectangle with a thin line, on noise."""
    root = tmp_path_factory.mktemp("wires")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        h, w = (int(v) for v in rng.integers(30, 90, 2))
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 5 : w - 3] = 255
        mask[:, w // 2] = 255
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    return folder_pairs(root)


def loader(pairs, **kw):
    args = {"img_size": S, "global_batch": GB, "seed": 3, "num_steps": 6} | kw
    return make_train_loader(pairs, **args)


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(KEYS) == set(y)
        for k in KEYS:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)


def test_batch_contents_and_contract(pairs):
    """Shapes / dtypes, and every slot is the documented record with the documented generator."""
    batches = list(loader(pairs))
    assert len(batches) == 6
    b = batches[0]
    shapes = {k: (v.shape, v.dtype) for k, v in b.items()}
    assert shapes == {
        "image": ((GB, S, S, 3), np.uint8),
        "label": ((GB, S, S), np.float32),
        "box": ((GB, 4), np.float32),
        "points": ((GB, 10, 2), np.float32),
        "noise_mask": ((GB, S // 4, S // 4), np.float32),
        "prompt": ((GB,), np.int32),
        "valid": ((GB,), np.bool_),
    }
    for t in (0, 3, 5):
        for j in range(GB):
            epoch, r, record = example_index(t, j, seed=3, num_records=10, global_batch=GB)
            ref = load_example(pairs[record], S, S // 4, example_rng(3, epoch, r))
            for k in KEYS:
                np.testing.assert_array_equal(batches[t][k][j], ref[k], err_msg=f"step {t} slot {j} {k}")
    prompts = np.concatenate([b["prompt"] for b in batches])
    assert set(prompts.tolist()) == {BOX, POINTS, NOISE_MASK} and all(b["valid"].all() for b in batches)
    labels = np.concatenate([b["label"] for b in batches])
    assert np.any((labels > 0) & (labels < 255))  # soft labels


def test_epochs_drop_last_and_reshuffle(pairs):
    assert steps_per_epoch(10, GB) == 2
    with pytest.raises(ValueError, match="do not fill one global batch"):
        steps_per_epoch(3, GB)
    records = [[example_index(t, j, seed=3, num_records=10, global_batch=GB)[2] for j in range(GB)] for t in range(6)]
    for epoch in range(3):
        seen = records[2 * epoch] + records[2 * epoch + 1]
        assert len(set(seen)) == 8  # each record at most once per epoch, 2 dropped
    assert records[0:2] != records[2:4]  # a new order each epoch
    assert example_index(7, 1, seed=3, num_records=10, global_batch=GB)[:2] == (3, 5)


def test_deterministic_and_seed_dependent(pairs):
    assert_batches_equal(list(loader(pairs)), list(loader(pairs, threads=0)))
    other = next(iter(loader(pairs, seed=4)))
    assert not np.array_equal(other["image"], next(iter(loader(pairs)))["image"])


def test_replay_from_saved_state(pairs):
    reference = list(loader(pairs))
    first = loader(pairs)
    head = [next(first) for _ in range(2)]
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
    first.close()
    resumed = loader(pairs)
    resumed.set_state(state)
    assert_batches_equal(head + list(resumed), reference)
    assert_batches_equal(list(loader(pairs, start_step=2)), reference[2:])
    with pytest.raises(ValueError, match="seed=3"):
        loader(pairs, seed=5).set_state(state)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_global_batch(pairs, process_count):
    full = list(loader(pairs, num_steps=3))
    shards = [
        list(loader(pairs, num_steps=3, process_index=p, process_count=process_count)) for p in range(process_count)
    ]
    joined = [{k: np.concatenate([s[t][k] for s in shards]) for k in KEYS} for t in range(3)]
    assert_batches_equal(joined, full)
    with pytest.raises(ValueError, match="not divisible"):
        loader(pairs, process_count=3)


def test_worker_processes_give_the_same_batches(pairs):
    with_workers = loader(pairs, num_steps=3, workers=1)
    assert_batches_equal(list(with_workers), list(loader(pairs, num_steps=3)))


def test_corrupt_file_is_skipped_flagged_and_counted(pairs, tmp_path, caplog):
    bad = tmp_path / "bad.png"
    bad.write_bytes(pairs[4].image.read_bytes()[:100])  # truncated PNG
    broken = [*pairs[:4], type(pairs[4])(pairs[4].dataset, pairs[4].stem, bad, pairs[4].mask), *pairs[5:]]
    reference = list(loader(pairs))
    with caplog.at_level(logging.WARNING, logger="train.data"):
        ld = loader(broken)
        batches = list(ld)
    hits = [
        (t, j)
        for t in range(6)
        for j in range(GB)
        if example_index(t, j, seed=3, num_records=10, global_batch=GB)[2] == 4
    ]
    assert hits and ld.invalid_count == len(hits) and ld.get_state()["invalid_count"] == len(hits)
    for t, j in hits:
        assert not batches[t]["valid"][j]
        assert not batches[t]["image"][j].any() and not batches[t]["label"][j].any()
    for t in range(6):  # every other example is untouched: nothing shifted or re-paired
        keep = np.array([(t, j) not in hits for j in range(GB)])
        for k in KEYS:
            np.testing.assert_array_equal(batches[t][k][keep], reference[t][k][keep])
    logged = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(logged) == 1  # once, with its path


def test_mismatched_mask_size_is_invalid(pairs, tmp_path, caplog):
    """An image and mask of different sizes are not stretched onto each other: the example is invalid."""
    mask = tmp_path / "small.png"
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(mask)
    first = example_index(0, 0, seed=3, num_records=10, global_batch=GB)[2]
    broken = [type(p)(p.dataset, p.stem, p.image, mask) if i == first else p for i, p in enumerate(pairs)]
    with caplog.at_level(logging.WARNING, logger="train.data"):
        batch = next(iter(loader(broken, num_steps=1)))
    assert batch["valid"].tolist() == [False, True, True, True]
    assert any("(5, 5)" in r.getMessage() and str(mask) in r.getMessage() for r in caplog.records)
