"""The HQ benchmark protocol of the official ``train/train.py --eval``, and the dataset scoring loop
shared by ``samhq-eval`` and the training's validation.

Per image (``Pair`` from :mod:`samhq_jax.datasets`):

1. image and label resized to ``img_size`` x ``img_size`` (bilinear, half-pixel centres, no
   antialias, aspect ratio *not* kept: the official ``Resize`` with ``F.interpolate``); the image
   truncated to uint8 (``astype``), normalised with SAM's mean / std (no padding is needed);
2. the prompt is the box of the resized label ``> 128`` (official ``masks_to_boxes``: inclusive
   pixel indices ``[x_min, y_min, x_max, y_max]``), no noise, single-mask mode;
3. the ``(4G, 4G)`` low-res logits are resized straight to the original label size (same bilinear)
   and scored with :func:`eval.metrics.mask_iou` / :func:`eval.metrics.boundary_iou`.

Three outputs are scored side by side (:data:`OUTPUTS`):

* ``hq``: the HQ token's mask alone (``hq_token_only=True``), what the paper reports;
* ``samhq``: SAM's mask plus the HQ mask (``hq_token_only=False``), the predictor's default;
* ``sam``: plain SAM (``sam_only=True``: the HQ token is left out of the two-way transformer),
  from separate SAM weights when given, else the SAM part of the HQ weights.

Bad data never stops a run: an unreadable file, an image / mask size mismatch or a label with no
foreground (no box) makes the image *skipped* with the reason recorded; a non-binary mask is scored
binarised at 128 and the fact recorded (:class:`ImageRecord`).

    records = evaluate_pairs(config, params, folder_pairs(Path("my_set")), batch_size=4)
    summary = summarize(records)   # {"my_set": {"count": .., "hq": {"miou": .., "mbiou": ..}, ..}, "mean": ..}
    # the device's fast matmul path and bf16 compute (default Policy("highest", "float32"): samhq_jax.precision)
    fast = evaluate_pairs(config, params, pairs, policy=Policy(precision="default", dtype="bfloat16"))
    # every local device, batch_size images each per call (samhq_jax.distributed.data_mesh)
    records = evaluate_pairs(config, params, pairs, batch_size=4, mesh=data_mesh())

With a ``mesh``, each device runs the one-device program on its own ``batch_size`` images
(``jax.shard_map``), so an image's scores are those of one device whatever the device count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from tqdm import tqdm

from eval.metrics import binary_iou, mask_to_boundary
from samhq_jax.config import ModelConfig
from samhq_jax.datasets import FG_THRESHOLD, DatasetError, Pair, is_empty_box, label_to_box, read_image, read_mask
from samhq_jax.distributed import DATA_AXIS, allgather_bytes, replicate, shard_rows
from samhq_jax.precision import EVALUATION, Policy
from samhq_jax.sam_hq import SamHQ
from samhq_jax.transforms import MASK_THRESHOLD, normalize_and_pad, resize_bilinear

OUTPUTS = ("hq", "samhq", "sam")  # scored outputs, in this order everywhere (CSV columns, logits axis)


@dataclasses.dataclass
class ImageRecord:
    """The result for one image.

    Attributes:
      dataset: ``Pair.dataset``.
      image: ``Pair.stem``.
      iou: output name (:data:`OUTPUTS`) -> mask IoU in [0, 1]; empty when skipped.
      biou: output name -> boundary IoU in [0, 1]; empty when skipped.
      problems: bad-data notes that did not stop scoring (a non-binary mask).
      skipped: why the image was not scored (unreadable file, size mismatch, no foreground), or None.
      masks: with ``keep_masks``, output name -> ``(H, W)`` bool predicted mask at the label's size.
    """

    dataset: str
    image: str
    iou: dict[str, float] = dataclasses.field(default_factory=dict)
    biou: dict[str, float] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None
    masks: dict[str, np.ndarray] | None = None


@dataclasses.dataclass
class _Sample:
    """A loaded image ready for the network, and what scoring needs."""

    record: ImageRecord
    net_input: np.ndarray  # (S, S, 3) float32, normalised
    box: np.ndarray  # (4,) float32 xyxy in the S frame
    gt: np.ndarray  # (H, W) bool, label > 128 at the original size


# ---- protocol steps --------------------------------------------------------------------------------
def resize_pair(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The official validation ``Resize([size, size])`` followed by the evaluation's uint8 cast.

    Args:
      image: ``(H, W, 3)`` uint8 RGB.
      label: ``(H, W)`` uint8 mask, 0-255.
      size: network input side ``S``.

    Returns:
      ``(S, S, 3)`` uint8 image (bilinear values truncated, as ``.astype(np.uint8)``) and the
      ``(S, S)`` float32 label (kept float, as the official box computation sees it).
    """
    resized = resize_bilinear(image, (size, size)).astype(np.uint8)
    return resized, resize_bilinear(label, (size, size))


def non_binary_note(mask: np.ndarray) -> str | None:
    """A note when a ``(H, W)`` uint8 mask has values other than 0 and 255 (it is binarised at 128)."""
    other = np.count_nonzero((mask != 0) & (mask != 255))
    if not other:
        return None
    note = f"non-binary mask: {other} of {mask.size} pixels not 0 or 255, binarised at > {FG_THRESHOLD}"
    if mask.max() <= 1:
        note += " (looks like a 0/1 mask: it has no foreground at > 128)"
    return note


def _load(pair: Pair, size: int) -> tuple[ImageRecord, _Sample | None]:
    """Read and prepare one pair; bad data gives a skipped record (and no sample), never an exception."""
    record = ImageRecord(dataset=pair.dataset, image=pair.stem)
    try:
        image, mask = read_image(pair.image), read_mask(pair.mask)
    except DatasetError as err:
        record.skipped = str(err)
        return record, None
    if image.shape[:2] != mask.shape:
        (h, w), (mh, mw) = image.shape[:2], mask.shape
        record.skipped = f"image {pair.image} is {w}x{h} but mask {pair.mask} is {mw}x{mh} (width x height)"
        return record, None
    note = non_binary_note(mask)
    if note:
        record.problems.append(note)
    resized, label = resize_pair(image, mask, size)
    box = label_to_box(label)
    if is_empty_box(box):
        record.skipped = f"mask {pair.mask} has no foreground (> {FG_THRESHOLD}) at {size}x{size}: no box prompt"
        return record, None
    return record, _Sample(record, normalize_and_pad(resized, size), box, mask > FG_THRESHOLD)


# ---- model -------------------------------------------------------------------------------------------
@functools.cache
def _forward(
    config: ModelConfig,
    sam_config: ModelConfig,
    separate_sam_encoder: bool,
    policy: Policy = EVALUATION,
    mesh: Mesh | None = None,
) -> Any:
    """Jitted ``(params, sam_params, images (B, S, S, 3), boxes (B, 1, 4)) -> (B, 3, 4G, 4G)`` float32
    low-res logits in :data:`OUTPUTS` order, computed in ``policy.dtype`` with every dot at
    ``policy.precision``; with a ``mesh``, ``B / mesh.size`` images on each device (parameters
    replicated, the rest split on the data axis). Cached per structure, policy and mesh so repeated
    validations reuse it."""
    model, sam_model = SamHQ(config, dtype=policy.compute_dtype), SamHQ(sam_config, dtype=policy.compute_dtype)

    def forward(params: Any, sam_params: Any, images: jax.Array, boxes: jax.Array) -> jax.Array:
        emb = model.apply({"params": params}, images, method=SamHQ.embed_image)
        decode = functools.partial(model.apply, {"params": params}, emb, boxes=boxes, method=SamHQ.decode)
        hq, _ = decode(hq_token_only=True)
        samhq, _ = decode(hq_token_only=False)
        sam_emb = (
            sam_model.apply({"params": sam_params}, images, method=SamHQ.embed_image) if separate_sam_encoder else emb
        )
        sam, _ = sam_model.apply({"params": sam_params}, sam_emb, boxes=boxes, sam_only=True, method=SamHQ.decode)
        return jnp.concatenate([hq, samhq, sam], axis=2)[:, 0].astype(jnp.float32)

    if mesh is None:
        return jax.jit(policy.wrap(forward))
    whole, rows = PartitionSpec(), PartitionSpec(DATA_AXIS)
    return jax.jit(jax.shard_map(policy.wrap(forward), mesh=mesh, in_specs=(whole, whole, rows, rows), out_specs=rows))


def compiled_forward(
    config: ModelConfig,
    sam_config: ModelConfig | None = None,
    separate_sam_encoder: bool = False,
    policy: Policy = EVALUATION,
) -> Any:
    """The evaluation's one compiled call (what :func:`evaluate_pairs` runs per batch):
    ``(params, sam_params, images (B, S, S, 3) float32, boxes (B, 1, 4)) -> (B, 3, 4G, 4G)`` float32
    logits of :data:`OUTPUTS`, under ``policy`` (:mod:`samhq_jax.precision`)."""
    return _forward(config, config if sam_config is None else sam_config, separate_sam_encoder, policy)


def same_image_encoder(config: ModelConfig, params: Any, sam_config: ModelConfig, sam_params: Any) -> bool:
    """True when both models have the same image-encoder structure and bit-identical encoder weights
    (then one encoding serves both, as for SAM-HQ and the SAM it was trained from)."""
    if params is sam_params:
        return True
    if config.image_encoder != sam_config.image_encoder:
        return False
    ours, theirs = params["image_encoder"], sam_params["image_encoder"]
    return jax.tree.structure(ours) == jax.tree.structure(theirs) and all(
        a.shape == b.shape and bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
    )


def _score(samples: Sequence[_Sample], logits: jax.Array, keep_masks: bool) -> None:
    """Fill the records of ``samples`` from their ``(B', 3, 4G, 4G)`` logits (B' >= len(samples))."""
    host = np.asarray(logits)
    for sample, low_res in zip(samples, host, strict=False):  # host has the padding rows too
        h, w = sample.gt.shape
        # (4G, 4G, 3) -> (H, W, 3) -> (3, H, W): F.interpolate(bilinear, align_corners=False) to the label size.
        pred = np.moveaxis(resize_bilinear(low_res.transpose(1, 2, 0), (h, w)) > MASK_THRESHOLD, -1, 0)
        iou = binary_iou(pred, sample.gt[None])
        biou = binary_iou(mask_to_boundary(pred), mask_to_boundary(sample.gt)[None])
        rec = sample.record
        rec.iou = {o: float(v) for o, v in zip(OUTPUTS, iou, strict=True)}
        rec.biou = {o: float(v) for o, v in zip(OUTPUTS, biou, strict=True)}
        if keep_masks:
            rec.masks = dict(zip(OUTPUTS, pred, strict=True))


def _batches(pairs: Sequence[Pair], size: int, batch_size: int, records: list, bar: tqdm) -> Iterator[list[_Sample]]:
    """Load pairs in order (appending every record), yielding full batches of usable samples, then the rest."""
    batch: list[_Sample] = []
    for pair in pairs:
        record, sample = _load(pair, size)
        records.append(record)
        bar.update(1)
        if sample is not None:
            batch.append(sample)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_pairs(
    config: ModelConfig,
    params: Any,
    pairs: Sequence[Pair],
    batch_size: int = 1,
    sam_params: Any | None = None,
    sam_config: ModelConfig | None = None,
    keep_masks: bool = False,
    desc: str | None = None,
    policy: Policy = EVALUATION,
    mesh: Mesh | None = None,
) -> list[ImageRecord]:
    """Score ``pairs`` with the benchmark protocol; one :class:`ImageRecord` per pair, in order.

    Args:
      config: structure of the SAM-HQ model.
      params: its parameter tree (numpy or jax leaves; moved to the device once).
      pairs: images and masks (:func:`samhq_jax.datasets.folder_pairs`, :func:`~samhq_jax.datasets.hqseg_pairs`).
      batch_size: images encoded per compiled call; the last batch is padded (by repeating its last
        image, whose result is dropped), so one compilation serves the whole run.
      sam_params: weights of the ``sam`` output (e.g. the original SAM checkpoint read with
        :func:`samhq_jax.checkpoint.read_weights`); None scores the SAM part of ``params``. When the
        image encoder is the same as ``params``'s (:func:`same_image_encoder`), images are encoded once.
      sam_config: structure of ``sam_params`` (default ``config``); must have the same ``img_size``.
      keep_masks: also keep the ``(H, W)`` bool masks in each record (for pictures; memory grows
        with the number of pairs).
      desc: tqdm progress-bar label; None hides the bar.
      policy: matmul precision and compute dtype (:class:`~samhq_jax.precision.Policy`); default
        :data:`~samhq_jax.precision.EVALUATION`, ``highest`` / ``float32``: the paper's protocol,
        the same numbers on any device.
      mesh: a 1-D data mesh of this process's devices (:func:`samhq_jax.distributed.data_mesh`):
        each call takes ``batch_size`` images per device, every device running the one-device
        program; None: the default device.

    Returns:
      Records with ``iou`` / ``biou`` per output in [0, 1], or ``skipped`` with the reason.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sam_config = config if sam_config is None else sam_config
    if sam_config.img_size != config.img_size:
        raise ValueError(
            f"the SAM model's img_size {sam_config.img_size} differs from the HQ model's {config.img_size}"
        )
    place = jax.device_put if mesh is None else functools.partial(replicate, mesh=mesh)
    params = place(params)
    sam_params = params if sam_params is None else place(sam_params)
    separate = not same_image_encoder(config, params, sam_config, sam_params)
    forward = _forward(config, sam_config, separate, policy, mesh)
    size, per_call = config.img_size, batch_size * (1 if mesh is None else mesh.size)
    records: list[ImageRecord] = []
    pending = None
    with tqdm(total=len(pairs), desc=desc, unit="image", disable=desc is None) as bar:
        for batch in _batches(pairs, size, per_call, records, bar):
            fill = [batch[-1]] * (per_call - len(batch))
            images = np.stack([s.net_input for s in batch + fill])
            boxes = np.stack([s.box for s in batch + fill])[:, None]
            if mesh is not None:
                images, boxes = shard_rows(images, mesh), shard_rows(boxes, mesh)
            logits = forward(params, sam_params, images, boxes)  # dispatched asynchronously ...
            if pending is not None:
                _score(*pending, keep_masks)  # ... while the previous batch is scored on the host
            pending = (batch, logits)
        if pending is not None:
            _score(*pending, keep_masks)
    return records


# ---- summary -------------------------------------------------------------------------------------------
def _means(scored: Sequence[ImageRecord]) -> dict[str, dict[str, float | None]]:
    """Output name -> ``{"miou", "mbiou"}`` in percent over ``scored`` records (None when empty)."""
    out = {}
    for o in OUTPUTS:
        if scored:
            out[o] = {
                "miou": 100 * float(np.mean([r.iou[o] for r in scored])),
                "mbiou": 100 * float(np.mean([r.biou[o] for r in scored])),
            }
        else:
            out[o] = {"miou": None, "mbiou": None}
    return out


def gather_records(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """Every process's ``records`` (without masks), in process order: a collective, every process of
    the run calls it; one process gets its own back. Rows travel as JSON (floats exact)."""
    rows = json.dumps([dataclasses.asdict(dataclasses.replace(r, masks=None)) for r in records]).encode()
    return [ImageRecord(**row) for blob in allgather_bytes(rows) for row in json.loads(blob)]


def summarize(records: Sequence[ImageRecord], dataset_errors: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Per-dataset means and their mean over datasets, in percent (as the paper's tables).

    Returns ``{"<dataset>": {"count": scored, "skipped": k, "hq": {"miou": .., "mbiou": ..}, "samhq":
    {..}, "sam": {..}, "problems": {stem: [notes]}}, ..., "mean": {...}}``, datasets in order of first
    appearance. A dataset's mIoU / mBIoU are plain means over its scored images (every value is
    finite, see :mod:`eval.metrics`); skipped images do not count. ``"mean"`` is the mean over the
    datasets with at least one scored image (the paper's "avg" of the four sets), with summed counts
    and ``"datasets"`` naming those averaged. Metrics are None where nothing was scored.
    ``dataset_errors`` (name -> message) adds an entry with ``"error"`` for datasets that could not
    be listed at all.
    """
    by_dataset: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_dataset.setdefault(r.dataset, []).append(r)
    out: dict[str, dict] = {}
    for name, recs in by_dataset.items():
        scored = [r for r in recs if r.skipped is None]
        problems: dict[str, list[str]] = {}
        for r in recs:
            notes = r.problems + ([f"skipped: {r.skipped}"] if r.skipped else [])
            if notes:
                problems[r.image] = notes
        out[name] = {"count": len(scored), "skipped": len(recs) - len(scored), **_means(scored), "problems": problems}
    for name, message in (dataset_errors or {}).items():
        out[name] = {"count": 0, "skipped": 0, **_means([]), "problems": {}, "error": message}
    averaged = [n for n, s in out.items() if s["count"]]
    mean: dict[str, Any] = {
        "count": sum(s["count"] for s in out.values()),
        "skipped": sum(s["skipped"] for s in out.values()),
        "datasets": averaged,
    }
    for o in OUTPUTS:
        mean[o] = {m: float(np.mean([out[n][o][m] for n in averaged])) if averaged else None for m in ("miou", "mbiou")}
    out["mean"] = mean
    return out
