"""Training input pipeline: grain, deterministic per global step, sharded by process.

Which example lands where depends only on ``(seed, step, slot)``, never on the number of processes,
devices or loader workers, and an example's augmentation and prompt depend only on its own seed:

* ``steps_per_epoch = N // global_batch`` (the last incomplete batch of an epoch is dropped, as the
  official ``BatchSampler(drop_last=True)``);
* at global step ``t``, slot ``j`` (``0 <= j < global_batch``): ``epoch = t // steps_per_epoch``,
  ``r = (t % steps_per_epoch) * global_batch + j``, record ``permutation(seed, epoch)[r]``, and all its
  randomness from ``np.random.default_rng([1, seed, epoch, r])`` (``train.augment`` then
  ``train.prompts`` draw from it in their documented orders);
* process ``p`` of ``P`` loads slots ``[p * L, (p + 1) * L)`` with ``L = global_batch / P``.

So the global batch at step ``t`` is the same on any mesh, and a run resumes at step ``t`` by
building the loader there: ``TrainLoader.get_state()`` is that step (plus checks), JSON-serialisable.
(grain's own iterator state would replay too, but only with the same number of worker processes;
the step replays on any number of processes, workers and threads.)

An example whose image or mask cannot be read (missing, corrupt, image and mask sizes differ) is
replaced by a zero example with ``valid=False``, logged once per loading process with its path, and
counted in ``TrainLoader.invalid_count`` (this process's examples); it is never replaced by another
pair, so the loss must weight examples by ``valid``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from samhq_jax.datasets import DatasetError, Pair, read_image, read_mask
from samhq_jax.errors import InputError
from train.augment import train_augment
from train.prompts import BOX, NOISE_MASK, NUM_POINTS, POINTS, sample_prompts

__all__ = [
    "BOX",
    "NOISE_MASK",
    "POINTS",
    "TrainLoader",
    "example_index",
    "load_example",
    "make_train_loader",
    "steps_per_epoch",
]

logger = logging.getLogger(__name__)

_PERMUTATION_STREAM, _EXAMPLE_STREAM = 0, 1  # first seed word, keeps the two kinds of stream apart


def steps_per_epoch(num_pairs: int, global_batch: int) -> int:
    """Full global batches per epoch, ``num_pairs // global_batch``; an ``InputError`` if that is 0."""
    if global_batch < 1 or num_pairs < global_batch:
        raise InputError(f"{num_pairs} training examples do not fill one global batch of {global_batch} (--batch-size)")
    return num_pairs // global_batch


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_records: int) -> np.ndarray:
    """``(num_records,)`` int64 order of the records in ``epoch``."""
    return np.random.default_rng([_PERMUTATION_STREAM, seed, epoch]).permutation(num_records)


def example_index(step: int, slot: int, *, seed: int, num_records: int, global_batch: int) -> tuple[int, int, int]:
    """``(epoch, r, record)`` of global step ``step``, slot ``slot``: see the module docstring."""
    epoch, within = divmod(step, steps_per_epoch(num_records, global_batch))
    r = within * global_batch + slot
    return epoch, r, int(_permutation(seed, epoch, num_records)[r])


def example_rng(seed: int, epoch: int, r: int) -> np.random.Generator:
    """The generator of the example at position ``r`` of ``epoch``'s permutation."""
    return np.random.default_rng([_EXAMPLE_STREAM, seed, epoch, r])


def load_example(pair: Pair, img_size: int, mask_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Read, augment and prompt one pair. Raises ``DatasetError`` when it cannot be read.

    Returns ``image`` (S, S, 3) uint8 (truncated), ``label`` (S, S) float32 0-255 soft, ``box`` (4,),
    ``points`` (10, 2), ``noise_mask`` (mask_size, mask_size) float32, ``prompt`` () int32 and
    ``valid`` () bool True; ``S = img_size``.
    """
    image, label = read_image(pair.image), read_mask(pair.mask)
    if image.shape[:2] != label.shape:
        raise DatasetError(f"image {pair.image} is {image.shape[:2]} but its mask {pair.mask} is {label.shape}")
    image, label = train_augment(image, label, img_size, rng)
    return {
        "image": image.astype(np.uint8),
        "label": label,
        **sample_prompts(label, mask_size, rng),
        "valid": np.bool_(True),
    }


def _invalid_example(img_size: int, mask_size: int) -> dict[str, np.ndarray]:
    """The zero example standing in for an unreadable pair (``valid`` False)."""
    return {
        "image": np.zeros((img_size, img_size, 3), np.uint8),
        "label": np.zeros((img_size, img_size), np.float32),
        "box": np.zeros(4, np.float32),
        "points": np.zeros((NUM_POINTS, 2), np.float32),
        "noise_mask": np.zeros((mask_size, mask_size), np.float32),
        "prompt": np.int32(BOX),
        "valid": np.bool_(False),
    }


class _LoadLocal:
    """grain map: local element index ``e`` -> the example of step ``e // L``, slot ``p * L + e % L``.

    Picklable (grain worker processes get a copy); each copy logs each unreadable pair once.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        img_size: int,
        mask_size: int,
        seed: int,
        global_batch: int,
        local_batch: int,
        process_index: int,
    ) -> None:
        self.pairs = tuple(pairs)
        self.img_size, self.mask_size, self.seed = img_size, mask_size, seed
        self.global_batch, self.local_batch, self.process_index = global_batch, local_batch, process_index
        self.warned: set[int] = set()

    def __call__(self, e: int) -> dict[str, np.ndarray]:
        step, k = divmod(e, self.local_batch)
        epoch, r, record = example_index(
            step,
            self.process_index * self.local_batch + k,
            seed=self.seed,
            num_records=len(self.pairs),
            global_batch=self.global_batch,
        )
        try:
            return load_example(self.pairs[record], self.img_size, self.mask_size, example_rng(self.seed, epoch, r))
        except DatasetError as err:
            if record not in self.warned:
                self.warned.add(record)
                logger.warning("skipping unreadable example %d (%s): %s", record, self.pairs[record].image, err)
            return _invalid_example(self.img_size, self.mask_size)


class TrainLoader:
    """Iterator over this process's batches for global steps ``[step, num_steps)``.

    Each batch is a dict of NumPy arrays with leading dimension ``L = global_batch / process_count``:
    ``image`` (L, S, S, 3) uint8, ``label`` (L, S, S) float32 0-255 soft, ``box`` (L, 4) float32 xyxy,
    ``points`` (L, 10, 2) float32 xy, ``noise_mask`` (L, 4G, 4G) float32 {0, 255}, ``prompt`` (L,) int32
    (``BOX`` / ``POINTS`` / ``NOISE_MASK``), ``valid`` (L,) bool.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        img_size: int,
        mask_size: int,
        global_batch: int,
        seed: int,
        start_step: int,
        num_steps: int,
        process_index: int,
        process_count: int,
        workers: int,
        threads: int,
        prefetch: int,
    ) -> None:
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        if global_batch % process_count:
            raise ValueError(f"global_batch {global_batch} is not divisible by {process_count} processes")
        if seed < 0 or start_step < 0:
            raise ValueError(f"seed ({seed}) and start_step ({start_step}) must be >= 0")
        steps_per_epoch(len(pairs), global_batch)  # raises when one batch cannot be filled
        self.local_batch = global_batch // process_count
        self.global_batch, self.seed, self.num_records = global_batch, seed, len(pairs)
        self.num_steps = num_steps
        self.step = start_step
        self.invalid_count = 0  # this process's examples replaced by zero examples, including before a resume
        self._load = _LoadLocal(
            pairs,
            img_size=img_size,
            mask_size=mask_size,
            seed=seed,
            global_batch=global_batch,
            local_batch=self.local_batch,
            process_index=process_index,
        )
        self._workers, self._threads, self._prefetch = workers, threads, prefetch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _dataset(self) -> grain.IterDataset:
        """The grain pipeline from ``self.step``: map per example, batch, threads (and worker processes)."""
        ds = grain.MapDataset.range(self.step * self.local_batch, max(self.num_steps, self.step) * self.local_batch)
        ds = ds.map(self._load).batch(self.local_batch, drop_remainder=True)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=self._prefetch))
        if self._workers > 0:
            # grain 0.2.18's mp_prefetch reads an absl flag, which fails outside absl.app once JAX is
            # imported (google/grain#1355, fixed after 0.2.18): treat the flags as parsed (defaults).
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
        return it

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iter is None:
            self._iter = iter(self._dataset())
        try:
            batch = next(self._iter)
        except StopIteration:
            self.close()
            raise
        self.invalid_count += int(np.count_nonzero(~batch["valid"]))
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next global step, the invalid count, and what must not change."""
        return {
            "step": self.step,
            "invalid_count": self.invalid_count,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "num_records": self.num_records,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``get_state()``'s output (also across process / worker counts).

        Raises :class:`~samhq_jax.errors.InputError` when the seed, global batch or number of records
        differ: the data order would not replay.
        """
        for key in ("seed", "global_batch", "num_records"):
            if state[key] != getattr(self, key):
                raise InputError(
                    f"--resume: the saved data position has {key}={state[key]}, this run {getattr(self, key)}"
                )
        self.close()
        self.step, self.invalid_count = int(state["step"]), int(state["invalid_count"])

    def close(self) -> None:
        """Stop prefetching (threads, worker processes); iteration restarts from ``step`` if resumed."""
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()
        self._iter = None


def make_train_loader(
    pairs: Sequence[Pair],
    *,
    img_size: int,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    num_steps: int,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    threads: int = 2,
    prefetch: int = 4,
    mask_size: int | None = None,
) -> TrainLoader:
    """This process's training batches for global steps ``[start_step, num_steps)``.

    Args:
      pairs: all training pairs, in a fixed order (the same on every process).
      img_size: side S of the square model input.
      global_batch: examples per step over all processes.
      seed: data seed (order, augmentation, prompts).
      start_step: first global step (a resume can use this or ``set_state``).
      num_steps: end of training, exclusive, in global steps.
      process_index, process_count: this process and how many share the global batch.
      workers: grain worker processes (0: load in threads of this process).
      threads: loading threads (per worker process when ``workers > 0``), each one batch at a time.
      prefetch: batches buffered ahead of the training step.
      mask_size: side of the dense mask prompt; default ``img_size // 4`` (4G for 16-pixel patches).
    """
    return TrainLoader(
        pairs,
        img_size=img_size,
        mask_size=img_size // 4 if mask_size is None else mask_size,
        global_batch=global_batch,
        seed=seed,
        start_step=start_step,
        num_steps=num_steps,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
        threads=threads,
        prefetch=prefetch,
    )
